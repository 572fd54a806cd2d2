#!/usr/bin/env bash
# check_jsonrpc vs check_http, posting the same JSON-RPC body to the same local usersvc, in one
# hyperfine run: medians and the ratio ours/peer, plus each one's peak RSS.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-200}
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

hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$tmp/h.json" --style basic \
  -n check_jsonrpc "$ours_cmd" -n check_http "$peer_cmd" >/dev/null
python3 - "$tmp/h.json" "$ours_rss" "$peer_rss" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
o, p = res["check_jsonrpc"], res["check_http"]
print(f"{'plugin':<14} {'median_ms':>10} {'p95_ms':>8} {'peak_rss_KiB':>13}")
def p95(r):
    t = sorted(r["times"]); return t[int(0.95 * (len(t) - 1))] * 1000
for name, r, rss in (("check_jsonrpc", o, sys.argv[2]), ("check_http", p, sys.argv[3])):
    print(f"{name:<14} {r['median']*1000:>10.2f} {p95(r):>8.2f} {int(rss):>13}")
print(f"ratio median ours/peer = {o['median'] / p['median']:.2f}")
PY
