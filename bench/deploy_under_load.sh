#!/usr/bin/env bash
# Deploy under load: usersvc replaced while wrk calls it, twice with the same load in one run.
#   ours: `usersvc upgrade` (the socket is handed to the new server; the old one drains);
#   peer: what `systemctl restart` does: SIGTERM the old server, wait for it to exit, start
#         the new one.
# Reports requests answered and failed (wrk's socket errors and non-2xx) during the deploy
# window, and the deploy window's p99 against a steady-state run (ratio). Medians of RUNS.
# The store holds USERS users so a start really loads a snapshot.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-3}
USERS=${USERS:-20000}
CONNECTIONS=${CONNECTIONS:-16}
command -v wrk >/dev/null || { echo "wrk missing: make peers (apt-get install wrk)" >&2; exit 1; }

cargo build -q --release --manifest-path ../Cargo.toml -p service --bin usersvc
tmp=$(mktemp -d)
mkdir -p "$tmp/bin"
ln -s "$(realpath ../target/release/usersvc)" "$tmp/bin/usersvc"
svc="$tmp/bin/usersvc"
pids=()
cleanup() {
  [ -f "$tmp/u.pid" ] && kill "$(cat "$tmp/u.pid")" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/usersvc.toml" <<TOML
listen = "127.0.0.1:$port"
database_url = "sqlite://$tmp/bench.db"
journal = "$tmp/usersvc.journal"
pid_file = "$tmp/u.pid"
log = "warn"
body_limit = 67108864
TOML
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0; sleep 0.02; done; echo "port $port never opened" >&2; return 1; }

"$svc" --config "$tmp/usersvc.toml" upgrade --start >/dev/null
python3 -c "
import json
users = [{'id': 'user-%06d' % i, 'name': 'User %d' % i, 'email': 'u%d@example.com' % i} for i in range($USERS)]
print(json.dumps({'jsonrpc': '2.0', 'method': 'put_users', 'params': {'users': users}, 'id': 1}))" > "$tmp/seed.json"
curl -sf "http://127.0.0.1:$port/" -H 'content-type: application/json' --data-binary "@$tmp/seed.json" >/dev/null \
  || { echo "seeding $USERS users failed (body limit?)" >&2; exit 1; }

cat > "$tmp/get.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","method":"get_user","params":{"id":"user-000042"},"id":1}'
LUA
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
# "answered failed p99_ms" of one wrk output.
parse() {
  local out=$1 total errors non2xx p99
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  errors=$(echo "$out" | awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  echo "$(( total - ${non2xx:-0} )) $(( ${errors:-0} + ${non2xx:-0} )) $(to_ms "$p99")"
}
wrk_run() { wrk -t1 -c"$CONNECTIONS" -d"$1" --latency -s "$tmp/get.lua" "http://127.0.0.1:$port/"; }

restart_peer() {
  local old; old=$(cat "$tmp/u.pid")
  kill -TERM "$old"
  while kill -0 "$old" 2>/dev/null; do sleep 0.01; done
  "$svc" --config "$tmp/usersvc.toml" upgrade --start >/dev/null
}
upgrade_ours() { "$svc" --config "$tmp/usersvc.toml" upgrade >/dev/null; }

# One trial: a steady run, then the same load with a deploy 1.5 s in.
trial() {
  local how=$1 steady deploy
  steady=$(parse "$(wrk_run 3s)")
  wrk_run 4s > "$tmp/deploy.out" &
  local w=$!
  sleep 1.5
  "$how"
  wait "$w"
  deploy=$(parse "$(cat "$tmp/deploy.out")")
  [ -n "${VERBOSE:-}" ] && cat "$tmp/deploy.out" >&2
  echo "$steady $deploy"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A col
for mode in ours peer; do
  fn=upgrade_ours; [ "$mode" = peer ] && fn=restart_peer
  : > "$tmp/$mode.txt"
  for _ in $(seq "$RUNS"); do trial "$fn" >> "$tmp/$mode.txt"; done
  for i in 1 2 3 4 5 6; do col[$mode.$i]=$(awk -v c="$i" '{print $c}' "$tmp/$mode.txt" | median); done
done
printf 'deploy under load: %s users, wrk -c%s get_user, medians of %s runs\n' "$USERS" "$CONNECTIONS" "$RUNS"
printf '%-5s %10s %8s %13s %14s %10s\n' how answered failed steady_p99_ms deploy_p99_ms p99_ratio
for mode in ours peer; do
  awk -v m="$mode" -v a="${col[$mode.4]}" -v f="${col[$mode.5]}" -v s="${col[$mode.3]}" -v d="${col[$mode.6]}" \
    'BEGIN { printf "%-5s %10d %8d %13.3f %14.3f %10.2f\n", m, a, f, s, d, d / s }'
done
awk -v o="${col[ours.5]}" -v p="${col[peer.5]}" \
  'BEGIN { printf "failed requests ours/peer: %d/%d\n", o, p }'
