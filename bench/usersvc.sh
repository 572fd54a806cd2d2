#!/usr/bin/env bash
# usersvc vs a jsonrpsee server (bench/peer-jsonrpsee) serving the same 100 users from memory,
# and vs the limit, a bare hyper server (bench/peer-hyper) answering usersvc's own bytes for the
# same calls, all under wrk in the same run: req/s, p50, p99, the ratios ours/peer and
# ours/limit, plus idle and loaded RSS. Each figure is the median of RUNS (default 3) rounds in
# which the four servers take turns (the order rotates), so a noisy moment on this shared machine
# lands on one round of one server, not on one server's only figure.
# DURATION (default 10s), CONNECTIONS (default 32) and RUNS can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")"
DURATION=${DURATION:-10s}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "wrk missing: make peers (apt-get install wrk)" >&2; exit 1; }

# USERSVC_BIN: another build to measure (e.g. the previous commit's, for a before/after).
if [ -n "${USERSVC_BIN:-}" ]; then ours_bin=$USERSVC_BIN; else
  cargo build -q --release --manifest-path ../Cargo.toml -p service --bin usersvc
  ours_bin=../target/release/usersvc
fi
cargo build -q --release --manifest-path Cargo.toml -p peer-jsonrpsee -p peer-hyper
peer_bin=target/release/peer-jsonrpsee
limit_bin=target/release/peer-hyper

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

ours_port=$(free_port); peer_port=$(free_port)
# Each server its own journal (one owner per journal), all under $tmp: nothing left in bench/.
"$ours_bin" --listen "127.0.0.1:$ours_port" --database-url "sqlite://$tmp/bench.db" --journal "$tmp/a.journal" --log warn &
pids+=($!); ours_pid=$!
# The same service with one worker thread: on this 2-core machine wrk holds the other core.
ours1_port=$(free_port)
"$ours_bin" --listen "127.0.0.1:$ours1_port" --database-url "sqlite://$tmp/bench.db" --journal "$tmp/b.journal" --log warn --workers 1 &
pids+=($!); ours1_pid=$!
"$peer_bin" "127.0.0.1:$peer_port" 2>/dev/null &
pids+=($!); peer_pid=$!
wait_port "$ours_port"; wait_port "$peer_port"; wait_port "$ours1_port"

# The same 100 users in both.
users=$(python3 -c 'import json; print(json.dumps([{"id": "user-%03d" % i, "name": "User %d" % i, "email": "user%d@example.com" % i} for i in range(100)]))')
curl -sf "http://127.0.0.1:$ours_port/" -H 'content-type: application/json' \
  -d "{\"jsonrpc\":\"2.0\",\"method\":\"put_users\",\"params\":{\"users\":$users},\"id\":1}" >/dev/null
# The one-worker instance loaded its snapshot before the seed: restart it on the seeded file.
kill "$ours1_pid"; wait "$ours1_pid" 2>/dev/null || true
"$ours_bin" --listen "127.0.0.1:$ours1_port" --database-url "sqlite://$tmp/bench.db" --journal "$tmp/b.journal" --log warn --workers 1 &
pids+=($!); ours1_pid=$!
wait_port "$ours1_port"
# The limit answers exactly usersvc's bytes for the calls wrk makes.
for m in ping get_users; do
  curl -sf "http://127.0.0.1:$ours_port/" -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"method\":\"$m\",\"id\":1}" > "$tmp/$m.answer"
done
limit_port=$(free_port)
"$limit_bin" "127.0.0.1:$limit_port" "$tmp/ping.answer" "$tmp/get_users.answer" 2>/dev/null &
pids+=($!)
wait_port "$limit_port"
sleep 0.5
ours_idle=$(rss_kb "$ours_pid"); peer_idle=$(rss_kb "$peer_pid")

to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

# Prints "req/s p50_ms p99_ms" for one wrk run.
run_wrk() {
  local port=$1 method=$2
  cat > "$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","method":"$method","id":1}'
LUA
  local out; out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$tmp/post.lua" "http://127.0.0.1:$port/")
  if echo "$out" | grep -q 'Non-2xx'; then echo "non-2xx answers from port $port:" >&2; echo "$out" >&2; exit 1; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

declare -A port_of=([ours]=$ours_port [ours-1w]=$ours1_port [peer]=$peer_port [limit]=$limit_port)
servers=(ours ours-1w peer limit)
for method in ping get_users; do
  for r in $(seq "$RUNS"); do
    # Round r starts with server r mod 4: each one goes first, second... in turn.
    for k in 0 1 2 3; do
      s=${servers[$(( (r + k) % 4 ))]}
      # An assignment, so that a failed run (non-2xx answers) stops the script.
      figures=$(run_wrk "${port_of[$s]}" "$method")
      echo "$method $s $figures" >> "$tmp/rounds"
    done
  done
done
python3 - "$tmp/rounds" "$RUNS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    method, server, rps, p50, p99 = line.split()
    runs[method, server].append((float(rps), float(p50), float(p99)))
print(f"medians of {sys.argv[2]} rounds")
print(f"{'method':<10} {'server':<9} {'req/s':>12} {'p50_ms':>10} {'p99_ms':>10}")
med = {}
for (method, server), rows in runs.items():
    med[method, server] = [statistics.median(col) for col in zip(*rows)]
for method in ("ping", "get_users"):
    for server in ("ours", "ours-1w", "peer", "limit"):
        rps, p50, p99 = med[method, server]
        print(f"{method:<10} {server:<9} {rps:>12.2f} {p50:>10.3f} {p99:>10.3f}")
    o, q, p, l = (med[method, s][0] for s in ("ours", "ours-1w", "peer", "limit"))
    print(f"{method:<10} ratio ours/peer = {o / p:.2f} (default workers), {q / p:.2f} (--workers 1)")
    print(f"{method:<10} ratio ours/limit = {o / l:.2f} (bare hyper, the same bytes), "
          f"{q / l:.2f} (--workers 1)")
PY
printf 'RSS idle:   ours %d KiB, peer %d KiB\n' "$ours_idle" "$peer_idle"
printf 'RSS loaded: ours %d KiB, peer %d KiB (peak)\n' "$(hwm_kb "$ours_pid")" "$(hwm_kb "$peer_pid")"
