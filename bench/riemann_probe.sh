#!/usr/bin/env bash
# riemann-probe's Probe vs riemann-c-client streaming (-0) the same N events to the same sink
# (the testbed's protocol sink, standing in for Riemann), in one run: events/s each, the ratio,
# and the caller's cost of one Probe::send (median and p99, on a first pass of N events and on a
# second one), beside its limit: the same loop pushing into a bare lock-free queue that another
# thread empties.
set -euo pipefail
cd "$(dirname "$0")"
N=${N:-100000}
command -v riemann-client >/dev/null || { echo "riemann-client missing: make peers" >&2; exit 1; }
cargo build -q --release --manifest-path ../Cargo.toml -p testbed --bin riemann-sink
cargo build -q --release --manifest-path ../Cargo.toml -p riemann-probe --example probe_bench
tmp=$(mktemp -d)
mkfifo "$tmp/in"
../target/release/riemann-sink < "$tmp/in" > "$tmp/out" &
sink=$!
exec 3> "$tmp/in"
cleanup() { exec 3>&-; kill "$sink" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$tmp/out" ] && break; sleep 0.05; done
addr=$(sed -n 's/^tcp=\([^ ]*\).*/\1/p' "$tmp/out")
port=${addr##*:}

ours=$(../target/release/examples/probe_bench "$addr" "$N")
seq 1 "$N" > "$tmp/metrics"
start=$(date +%s.%N)
riemann-client send -0 -S bench -h bench-host -s ok -L 60 127.0.0.1 "$port" < "$tmp/metrics"
end=$(date +%s.%N)
echo >&3
sleep 0.2
received=$(tail -1 "$tmp/out" | awk '{print $2}')
[ "$received" -ge $((2 * N)) ] || { echo "sink got $received of $((2 * N)) events" >&2; exit 1; }

peer_rate=$(awk -v n="$N" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }')
ours_rate=$(echo "$ours" | sed -n 's/.*events_per_s=\([0-9]*\).*/\1/p')
printf '%-18s %12s\n' sender events/s
printf '%-18s %12s\n' riemann-probe "$ours_rate" riemann-c-client "$peer_rate"
awk -v o="$ours_rate" -v p="$peer_rate" 'BEGIN { printf "ratio events/s ours/peer = %.1f\n", o / p }'
echo "$ours" | sed -n 's/.*send_p50_ns=\([0-9]*\) send_p99_ns=\([0-9]*\) warm_p50_ns=\([0-9]*\) warm_p99_ns=\([0-9]*\) limit_p50_ns=\([0-9]*\) limit_p99_ns=\([0-9]*\).*/Probe::send cost: median \1 ns, p99 \2 ns; again: median \3 ns, p99 \4 ns; limit (bare lock-free push): median \5 ns, p99 \6 ns/p'
echo "$ours" | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
  END { printf "ratio send p99 ours/limit = %.2f (first pass), %.2f (again)\n",
        v["send_p99_ns"] / v["limit_p99_ns"], v["warm_p99_ns"] / v["limit_p99_ns"] }'

# usersvc's request latency with Riemann up, down (nothing listening) and not configured at all,
# side by side under wrk: reporting must cost requests nothing.
command -v wrk >/dev/null || { echo "wrk missing: make peers" >&2; exit 1; }
cargo build -q --release --manifest-path ../Cargo.toml -p service --bin usersvc
DURATION=${DURATION:-5s}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
closed=$(free_port)
cat > "$tmp/ping.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","method":"ping","id":1}'
LUA
printf '\n%-16s %12s %10s %10s\n' riemann req/s p50_ms p99_ms
for mode in none up down; do
  port=$(free_port)
  case $mode in
    none) extra=() ;;
    up) extra=(--riemann "$addr" --riemann-interval 1s) ;;
    down) extra=(--riemann "127.0.0.1:$closed" --riemann-interval 1s) ;;
  esac
  ../target/release/usersvc --listen "127.0.0.1:$port" --database-url "sqlite://$tmp/$mode.db" \
    --journal "$tmp/$mode.journal" --log error "${extra[@]}" 2>/dev/null &
  svc=$!
  wait_port "$port"
  out=$(wrk -t1 -c32 -d"$DURATION" --latency -s "$tmp/ping.lua" "http://127.0.0.1:$port/")
  kill "$svc"; wait "$svc" 2>/dev/null || true
  printf '%-16s %12s %10s %10s\n' "$mode" "$(echo "$out" | awk '/^Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1 == "50%" {print $2}')" "$(echo "$out" | awk '$1 == "99%" {print $2}')"
done
