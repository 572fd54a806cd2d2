#!/usr/bin/env bash
# usersvc's stores side by side in one run: get_users and put_user throughput on PostgreSQL vs
# SQLite (wrk, 32 connections), and the latency of a write while the breaker is open (queued to
# the fsync'd journal) next to a normal committed write on the same machine.
set -euo pipefail
cd "$(dirname "$0")"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "wrk missing: make peers" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL missing: make peers" >&2; exit 1; }
cargo build -q --release --manifest-path ../Cargo.toml -p service --bin usersvc
bin=../target/release/usersvc

tmp=$(mktemp -d); chmod 755 "$tmp"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null; rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

mkdir -p "$tmp/pg"; [ "$(id -u)" = 0 ] && chown postgres "$tmp/pg"
pg_port=$(free_port)
as_pg "$PGBIN/initdb" -D "$tmp/pg/data" -A trust -U postgres >/dev/null
# Durable settings (fsync on), as in production: the comparison with SQLite is about commits.
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/log" -w start -o "-p $pg_port -k $tmp/pg -c listen_addresses=127.0.0.1" >/dev/null

sq_port=$(free_port); pgs_port=$(free_port)
(cd "$tmp" && exec "$OLDPWD/$bin" --listen "127.0.0.1:$sq_port" --database-url "sqlite://$tmp/b.db" --journal "$tmp/sq.journal" --log error 2>/dev/null) &
pids+=($!)
(cd "$tmp" && exec "$OLDPWD/$bin" --listen "127.0.0.1:$pgs_port" --database-url "postgres://postgres@127.0.0.1:$pg_port/postgres" \
   --journal "$tmp/pg.journal" --breaker-failures 1 --store-timeout 300ms --log error 2>/dev/null) &
pids+=($!)
wait_port "$sq_port"; wait_port "$pgs_port"

users=$(python3 -c 'import json; print(json.dumps([{"id": "user-%03d" % i, "name": "User %d" % i} for i in range(100)]))')
for port in "$sq_port" "$pgs_port"; do
  curl -sf "http://127.0.0.1:$port/" -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"method\":\"put_users\",\"params\":{\"users\":$users},\"id\":1}" >/dev/null
done

cat > "$tmp/get.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","method":"get_users","id":1}'
LUA
# Each put_user goes to a fresh id (thread-local counter), like new sign-ups.
cat > "$tmp/put.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"jsonrpc":"2.0","method":"put_user","params":{"user":{"id":"w-%d-%d","name":"x"}},"id":%d}', math.random(1, 1e9), n, n)
  return wrk.format("POST", "/", {["Content-Type"] = "application/json"}, body)
end
LUA
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
run_wrk() {  # port script connections -> "req/s p50 p99"
  local out; out=$(wrk -t1 -c"$3" -d"$DURATION" --latency -s "$tmp/$2" "http://127.0.0.1:$1/")
  echo "$out" | grep -q 'Non-2xx' && { echo "$out" >&2; exit 1; }
  echo "$(echo "$out" | awk '/^Requests\/sec/ {print $2}') $(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
}
row() { printf '%-26s %-10s %12s %10s %10s\n' "$@"; }
row case store req/s p50_ms p99_ms
for script in get.lua put.lua; do
  read -r a b c < <(run_wrk "$sq_port" "$script" "$CONNECTIONS"); row "${script%.lua} (${CONNECTIONS} conns)" sqlite "$a" "$b" "$c"; sq=$a
  read -r a b c < <(run_wrk "$pgs_port" "$script" "$CONNECTIONS"); row "${script%.lua} (${CONNECTIONS} conns)" postgres "$a" "$b" "$c"; pg=$a
  awk -v p="$pg" -v s="$sq" -v n="${script%.lua}" 'BEGIN { printf "%-26s ratio postgres/sqlite = %.2f\n", n, p / s }'
done

# Breaker open: stop PostgreSQL; writes are queued (journal append + fsync) instead of committed.
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -m fast -w stop >/dev/null
curl -s "http://127.0.0.1:$pgs_port/" -H 'content-type: application/json' \
  -d '{"jsonrpc":"2.0","method":"put_user","params":{"user":{"id":"trip"}},"id":1}' | grep -q '"queued":true' \
  || { echo "breaker did not open" >&2; exit 1; }
read -r a b c < <(run_wrk "$pgs_port" put.lua 1); row "put (1 conn)" journal "$a" "$b" "$c"; j=$b
read -r a b c < <(run_wrk "$sq_port" put.lua 1); row "put (1 conn)" sqlite "$a" "$b" "$c"; s=$b
awk -v j="$j" -v s="$s" 'BEGIN { printf "%-26s ratio p50 journal/sqlite = %.2f\n", "queued write latency", j / s }'
