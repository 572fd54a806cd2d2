#!/usr/bin/env bash
# CPU work per request of two usersvc builds, counted in instructions under valgrind
# (cachegrind), not timed: on a shared, noisy machine an A/A wrk run here spreads ±30%, while
# instruction counts repeat within ~1%. Each build answers N and 3N keep-alive pings with one
# worker; (Ir(3N) - Ir(N)) / 2N is the work of one request, start-up cancelled out.
#   bench/usersvc_cost.sh OLD_BIN NEW_BIN [N]      e.g. the previous commit's build against this one
# LIMIT=1 also counts the limit, bench/peer-hyper answering NEW's own bytes for the same call:
# what usersvc spends beyond it is its own work (JSON-RPC, routing, middleware, the store).
set -euo pipefail
cd "$(dirname "$0")"
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install valgrind" >&2; exit 1; }
OLD=${1:?usage: usersvc_cost.sh OLD_BIN NEW_BIN [N]}; NEW=${2:?usage: usersvc_cost.sh OLD_BIN NEW_BIN [N]}
N=${3:-2000}
METHOD=${METHOD:-ping}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Total instructions of one server run answering $2 calls; $1 "limit" runs peer-hyper.
instructions() {
  local bin=$1 n=$2 tmp port pid
  tmp=$(mktemp -d); port=$(free_port)
  if [ "$bin" = limit ]; then
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$tmp/cg.out" \
      target/release/peer-hyper "127.0.0.1:$port" "$answers/ping" "$answers/get_users" 2>"$tmp/valgrind.log" &
  else
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$tmp/cg.out" \
      "$bin" --listen "127.0.0.1:$port" --database-url "sqlite://$tmp/a.db" --journal "$tmp/a.journal" \
      --log warn --workers 1 2>"$tmp/valgrind.log" &
  fi
  pid=$!
  python3 - "$port" "$n" "$METHOD" <<'PY'
import http.client, sys, time
port, n, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port); c.connect(); break
    except OSError:
        time.sleep(0.1)
body = ('{"jsonrpc":"2.0","method":"%s","id":1}' % method).encode()
for _ in range(n):
    c.request("POST", "/", body, {"Content-Type": "application/json"})
    c.getresponse().read()
PY
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/I +refs/ {gsub(",", "", $4); print $4}' "$tmp/valgrind.log"
  rm -rf "$tmp"
}

per_request() {
  local a b
  a=$(instructions "$1" "$N"); b=$(instructions "$1" $((3 * N)))
  echo $(( (b - a) / (2 * N) ))
}

old=$(per_request "$OLD"); new=$(per_request "$NEW")
echo "usersvc $METHOD: instructions per request old $old, new $new, ratio new/old $(python3 -c "print(round($new/$old, 4))")"
if [ "${LIMIT:-0}" = 1 ]; then
  cargo build -q --release --manifest-path Cargo.toml -p peer-hyper
  # NEW's own answers (an empty store, as measured above), for the limit to send.
  answers=$(mktemp -d); port=$(free_port)
  "$NEW" --listen "127.0.0.1:$port" --database-url "sqlite://$answers/a.db" --journal "$answers/a.journal" --log warn &
  npid=$!
  for m in ping get_users; do
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$port/" -H 'content-type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"method\":\"$m\",\"id\":1}" > "$answers/$m" && break
      sleep 0.1
    done
  done
  kill "$npid"; wait "$npid" 2>/dev/null || true
  limit=$(per_request limit)
  rm -rf "$answers"
  echo "limit (bare hyper, NEW's bytes) $METHOD: instructions per request $limit, ratio new/limit $(python3 -c "print(round($new/$limit, 2))")"
fi
