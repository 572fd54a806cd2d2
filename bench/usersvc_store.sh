#!/usr/bin/env bash
# usersvc's stores side by side in one run: get_users throughput on PostgreSQL vs SQLite (wrk,
# 32 connections); put_user with 1, 8 and 32 concurrent writers on each store (group commit: the
# aim is 32 writers >= 5x one writer); the first 10 writes after PostgreSQL crashes (each must be
# queued at once, not wait for a timeout); and a queued write next to a committed one.
set -euo pipefail
cd "$(dirname "$0")"
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "wrk missing: make peers" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL missing: make peers" >&2; exit 1; }
# USERSVC_BIN: another build to measure (e.g. the previous release, to compare one writer).
if [ -n "${USERSVC_BIN:-}" ]; then bin=$USERSVC_BIN; else
  cargo build -q --release --manifest-path ../Cargo.toml -p service --bin usersvc
  bin=$PWD/../target/release/usersvc
fi

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
(cd "$tmp" && exec "$bin" --listen "127.0.0.1:$sq_port" --database-url "sqlite://$tmp/b.db" --journal "$tmp/sq.journal" --log error 2>/dev/null) &
pids+=($!)
(cd "$tmp" && exec "$bin" --listen "127.0.0.1:$pgs_port" --database-url "postgres://postgres@127.0.0.1:$pg_port/postgres" \
   --journal "$tmp/pg.journal" --log error 2>/dev/null) &
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
read -r a b c < <(run_wrk "$sq_port" get.lua "$CONNECTIONS"); row "get (${CONNECTIONS} conns)" sqlite "$a" "$b" "$c"; sq=$a
read -r a b c < <(run_wrk "$pgs_port" get.lua "$CONNECTIONS"); row "get (${CONNECTIONS} conns)" postgres "$a" "$b" "$c"; pg=$a
awk -v p="$pg" -v s="$sq" 'BEGIN { printf "%-26s ratio postgres/sqlite = %.2f\n", "get", p / s }'
for store in sqlite postgres; do
  port=$sq_port; [ "$store" = postgres ] && port=$pgs_port
  one=
  for writers in 1 8 32; do
    read -r a b c < <(run_wrk "$port" put.lua "$writers"); row "put ($writers writers)" "$store" "$a" "$b" "$c"
    [ -z "$one" ] && one=$a
    [ "$writers" = 1 ] || awk -v n="$a" -v o="$one" -v w="$writers" -v st="$store" \
      'BEGIN { printf "%-26s ratio %s writers/1 writer = %.2f\n", "put " st, w, n / o }'
  done
done

# PostgreSQL crashes (no shutdown): the first 10 writes after it, one at a time.
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -m immediate -w stop >/dev/null
for i in $(seq 10); do
  out=$(curl -s -w ' %{time_total}' "http://127.0.0.1:$pgs_port/" -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"method\":\"put_user\",\"params\":{\"user\":{\"id\":\"outage-$i\"}},\"id\":$i}")
  echo "$out" | grep -q '"queued":true' || { echo "write $i during the outage was not queued: $out" >&2; exit 1; }
  echo "${out##* }"
done | sort -n | awk '{ t[NR] = $1 * 1000 } END { printf "%-26s p50 %.2f ms  p99 %.2f ms  (of %d; all queued)\n", "first writes after crash", (t[5] + t[6]) / 2, t[NR], NR }'

# Breaker open: writes are queued (journal append + fsync) instead of committed.
read -r a b c < <(run_wrk "$pgs_port" put.lua 1); row "put (1 conn)" journal "$a" "$b" "$c"; j=$b
read -r a b c < <(run_wrk "$sq_port" put.lua 1); row "put (1 conn)" sqlite "$a" "$b" "$c"; s=$b
awk -v j="$j" -v s="$s" 'BEGIN { printf "%-26s ratio p50 journal/sqlite = %.2f\n", "queued write latency", j / s }'
