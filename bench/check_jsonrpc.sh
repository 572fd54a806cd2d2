#!/usr/bin/env bash
# check_jsonrpc vs check_http, posting the same JSON-RPC body to the same local usersvc, in
# ROUNDS (default 3) hyperfine runs of RUNS (default 100) runs each, the two taking turns to go
# first: the median of the rounds' medians, the ratio ours/peer, p95 over all runs, and each
# one's peak RSS.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-100}
ROUNDS=${ROUNDS:-3}
CHECK_HTTP=/usr/lib/nagios/plugins/check_http
for tool in hyperfine "$CHECK_HTTP" /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool missing: make peers" >&2; exit 1; }
done
cargo build -q --release --manifest-path ../Cargo.toml -p service -p nagios-plugin
ours=../target/release/check_jsonrpc

tmp=$(mktemp -d)
cleanup() { kill "$svc" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
../target/release/usersvc --listen "127.0.0.1:$port" --database-url "sqlite://$tmp/b.db" --journal "$tmp/b.journal" --log warn &
svc=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done

body='{"jsonrpc":"2.0","method":"ping","id":1}'
ours_cmd="$ours -H 127.0.0.1 -p $port -m ping --expect '=\"pong\"' -w 0.5 -c 1"
peer_cmd="$CHECK_HTTP -H 127.0.0.1 -p $port -j POST -T application/json -P '$body' -w 0.5 -c 1"
# Runs a command line and prints its peak RSS in KiB (GNU time: a forking Python parent would
# leave its own size in the child's maxrss); fails unless the check says OK.
peak_rss() {
  eval "/usr/bin/time -f %M -o $tmp/rss $1" >/dev/null || { echo "not OK: $1" >&2; exit 1; }
  cat "$tmp/rss"
}
# Both must succeed before they are timed.
ours_rss=$(peak_rss "$ours_cmd"); peer_rss=$(peak_rss "$peer_cmd")

for r in $(seq "$ROUNDS"); do
  order=(-n check_jsonrpc "$ours_cmd" -n check_http "$peer_cmd")
  [ $((r % 2)) = 1 ] || order=(-n check_http "$peer_cmd" -n check_jsonrpc "$ours_cmd")
  hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$tmp/h$r.json" --style basic "${order[@]}" >/dev/null
done
python3 - "$ours_rss" "$peer_rss" "$tmp"/h*.json <<'PY'
import json, statistics, sys
rounds = [{r["command"]: r for r in json.load(open(f))["results"]} for f in sys.argv[3:]]
print(f"medians of {len(rounds)} rounds")
print(f"{'plugin':<14} {'median_ms':>10} {'p95_ms':>8} {'peak_rss_KiB':>13}")
median = {}
for name, rss in (("check_jsonrpc", sys.argv[1]), ("check_http", sys.argv[2])):
    median[name] = statistics.median(r[name]["median"] for r in rounds) * 1000
    times = sorted(t for r in rounds for t in r[name]["times"])
    p95 = times[int(0.95 * (len(times) - 1))] * 1000
    print(f"{name:<14} {median[name]:>10.2f} {p95:>8.2f} {int(rss):>13}")
print(f"ratio median ours/peer = {median['check_jsonrpc'] / median['check_http']:.2f}")
PY
