#!/usr/bin/env bash
# riemann-probe's Probe vs riemann-c-client streaming (-0) the same N events to the same sink
# (the testbed's protocol sink, standing in for Riemann), in one run: events/s each, the ratio,
# and the caller's cost of one Probe::send (median and p99, on a first pass of N events and on a
# second one), beside its limit: the same loop pushing into a bare lock-free queue that another
# thread empties. Each figure is the median of RUNS (default 3) rounds, the two senders taking
# turns to go first.
set -euo pipefail
cd "$(dirname "$0")"
N=${N:-100000}
RUNS=${RUNS:-3}
command -v riemann-client >/dev/null || { echo "riemann-client missing: make peers" >&2; exit 1; }
cargo build -q --release --manifest-path ../Cargo.toml -p testbed --bin riemann-sink
cargo build -q --release --manifest-path ../Cargo.toml -p riemann-probe --example probe_bench
tmp=$(mktemp -d)
sink=
cleanup() { exec 3>&-; [ -z "$sink" ] || kill "$sink" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
# A sink of its own for each round: it keeps every event it receives, so no round starts with
# the memory of the ones before. Sets sink, addr and port; fd 3 writes to its stdin.
start_sink() {
  rm -f "$tmp/in" "$tmp/out"; mkfifo "$tmp/in"
  ../target/release/riemann-sink < "$tmp/in" > "$tmp/out" &
  sink=$!
  exec 3> "$tmp/in"
  for _ in $(seq 100); do [ -s "$tmp/out" ] && break; sleep 0.05; done
  addr=$(sed -n 's/^tcp=\([^ ]*\).*/\1/p' "$tmp/out")
  port=${addr##*:}
}
stop_sink() { exec 3>&-; wait "$sink" 2>/dev/null || true; sink=; }

seq 1 "$N" > "$tmp/metrics"
probe() { ../target/release/examples/probe_bench "$addr" "$N" >> "$tmp/ours"; }
# riemann-c-client's events/s, streaming N events over one connection.
client() {
  local start end
  start=$(date +%s.%N)
  riemann-client send -0 -S bench -h bench-host -s ok -L 60 127.0.0.1 "$port" < "$tmp/metrics"
  end=$(date +%s.%N)
  awk -v n="$N" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f\n", n / (e - s) }' >> "$tmp/peer"
}
for r in $(seq "$RUNS"); do
  start_sink
  if [ $((r % 2)) = 1 ]; then probe; client; else client; probe; fi
  echo >&3
  sleep 0.2
  received=$(tail -1 "$tmp/out" | awk '{print $2}')
  # The probe's two passes of N, and riemann-c-client's N.
  [ "$received" -ge $((3 * N)) ] || { echo "sink got $received of $((3 * N)) events" >&2; exit 1; }
  stop_sink
done
python3 - "$tmp/ours" "$tmp/peer" "$RUNS" <<'PY'
import statistics, sys
runs = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1])]
ours = {k: statistics.median(float(r[k]) for r in runs) for k in runs[0]}
peer = statistics.median(float(line) for line in open(sys.argv[2]))
print(f"medians of {sys.argv[3]} rounds")
print(f"{'sender':<18} {'events/s':>12}")
print(f"{'riemann-probe':<18} {ours['events_per_s']:>12.0f}")
print(f"{'riemann-c-client':<18} {peer:>12.0f}")
print(f"ratio events/s ours/peer = {ours['events_per_s'] / peer:.1f}")
o = {k: round(v) for k, v in ours.items()}
print(f"Probe::send cost: median {o['send_p50_ns']} ns, p99 {o['send_p99_ns']} ns; "
      f"again: median {o['warm_p50_ns']} ns, p99 {o['warm_p99_ns']} ns; "
      f"limit (bare lock-free push): median {o['limit_p50_ns']} ns, p99 {o['limit_p99_ns']} ns")
print(f"ratio send p99 ours/limit = {ours['send_p99_ns'] / ours['limit_p99_ns']:.2f} (first pass), "
      f"{ours['warm_p99_ns'] / ours['limit_p99_ns']:.2f} (again)")
PY

# usersvc's request latency with Riemann up, down (nothing listening) and not configured at all,
# side by side under wrk: reporting must cost requests nothing.
start_sink
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
