#!/usr/bin/env bash
# usersvc as its user set grows, on SQLite and PostgreSQL: for each size in SIZES (default
# "10000 100000 1000000") and each store in STORES (default "sqlite postgres"):
#   import    `usersvc import` of the users (files of 100k, ~110 bytes each), seconds
#   start     from exec until it serves (/health/ready), seconds; copy_s: from the local copy alone
#   rss       resident memory after start, and after the write load, MiB
#   get_user  wrk, 32 connections, random ids: req/s and p99
#   put_user  wrk, 1 and 32 connections, random existing ids: req/s, p50, p99; hot_p99/max: one
#             connection's p99 and worst, for HOT (3s) right after the start (the local copy still
#             being written, the import's pages still going to disk: no sync); the p99 is the
#             median of HOT_RUNS (3) starts, the max the first's
#   disk      bytes the process wrote per minute during the write load (/proc/PID/io), MiB/min:
#             on PostgreSQL the journal and the local copy alone, on SQLite the database's too
#   page      median ms of a keyset page of 100 (get_users limit/after) at the start and the end
# The figure that matters is the growth from the smallest size to the largest: memory linear
# with a small constant, everything per request flat. DURATION (default 10s) per wrk run.
set -euo pipefail
cd "$(dirname "$0")"
SIZES=${SIZES:-"10000 100000 1000000"}
STORES=${STORES:-"sqlite postgres"}
DURATION=${DURATION:-10s}
command -v wrk >/dev/null || { echo "wrk missing: make peers" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -n "${USERSVC_BIN:-}" ]; then bin=$USERSVC_BIN; else
  cargo build -q --release --manifest-path ../Cargo.toml -p service --bin usersvc
  bin=$PWD/../target/release/usersvc
fi

tmp=$(mktemp -d); chmod 755 "$tmp"
declare -A hot_of start_of
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pids=()
pg_up=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$pg_up" ] && as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null; rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }

# Starts the server and waits until it serves (/health/ready 200): sets $pid and $took (seconds).
# Not in a $(…) subshell: the EXIT trap would run there and tear everything down.
start() {
  local url=$1 port=$2 t0
  t0=$(date +%s.%N)
  (cd "$tmp" && exec "$bin" --listen "127.0.0.1:$port" --database-url "$url" \
     --journal "$tmp/$store.journal" --log error 2>>"$tmp/usersvc.log") &
  pid=$!; pids+=("$pid")
  until curl -sf -o /dev/null "http://127.0.0.1:$port/health/ready"; do
    kill -0 "$pid" 2>/dev/null || { echo "usersvc died at start:" >&2; tail -5 "$tmp/usersvc.log" >&2; exit 1; }
    sleep 0.02
  done
  took=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

# Prints "req/s p50_ms p99_ms max_ms" (DURATION, or $4).
wrk_run() {
  local port=$1 conns=$2 script=$3 out
  out=$(wrk -t1 -c"$conns" -d"${4:-$DURATION}" --latency -s "$script" "http://127.0.0.1:$port/")
  echo "$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}') \
$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')") \
$(to_ms "$(echo "$out" | awk '$1 == "Latency" {print $4}')")"
}

lua() { # $1: method, $2: params template with ID for a random existing id
  cat > "$tmp/$1.lua" <<LUA
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local id = string.format("user-%07d", math.random(0, N - 1))
  return wrk.format(nil, nil, nil, string.gsub('{"jsonrpc":"2.0","method":"$1","params":$2,"id":1}', "ID", id))
end
LUA
}
lua get_user '["ID"]'
lua put_user '{"user":{"id":"ID","name":"Renamed","email":"x@example.com"}}'

if [[ " $STORES " == *" postgres "* ]]; then
  [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL missing: make peers" >&2; exit 1; }
  mkdir -p "$tmp/pg"; [ "$(id -u)" = 0 ] && chown postgres "$tmp/pg"
  pg_port=$(free_port)
  as_pg "$PGBIN/initdb" -D "$tmp/pg/data" -A trust -U postgres >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/log" -w start -o "-p $pg_port -k $tmp/pg -c listen_addresses=127.0.0.1" >/dev/null
  pg_up=1
fi

printf '%-8s %8s %7s %7s %7s %7s %9s %8s %9s %8s %8s %8s %9s %8s %8s %8s %8s %8s\n' store users import_s start_s copy_s \
  rss_MiB get_rps get_p99 hot_p99 hot_max put1_rps put1_p50 put1_p99 put32_rps put32_p99 rss2_MiB disk_MiB/min page0_ms pageN_ms
for n in $SIZES; do
  # Files of at most 100k users, ~110 bytes each.
  python3 - "$tmp/users" "$n" <<'PY'
import json, os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
for f in os.listdir(d): os.remove(os.path.join(d, f))
for start in range(0, n, 100_000):
    users = [{"id": "user-%07d" % i, "name": "User number %d" % i, "email": "user%d@example.com" % i,
              "team": "t%d" % (i % 97)} for i in range(start, min(n, start + 100_000))]
    with open(os.path.join(d, "part-%07d.json" % start), "w") as f: json.dump(users, f)
PY
  for g in get_user put_user; do sed -i "1i N = $n" "$tmp/$g.lua"; done
  for store in $STORES; do
    case $store in
      sqlite) url="sqlite://$tmp/scale-$n.db" ;;
      postgres)
        psql -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "DROP DATABASE IF EXISTS scale" -c "CREATE DATABASE scale" >/dev/null
        url="postgres://postgres@127.0.0.1:$pg_port/scale" ;;
    esac
    rm -f "$tmp/$store".journal*  "$tmp/$store".snapshot
    t0=$(date +%s.%N)
    for f in "$tmp"/users/part-*.json; do
      (cd "$tmp" && "$bin" --database-url "$url" --journal "$tmp/$store.journal" --log error import "$f" >/dev/null)
    done
    import_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
    # The import's WAL flushed and its vacuum done now, so the write load below measures steady
    # state, not the store catching up on the import.
    if [ "$store" = postgres ]; then
      psql -q -h 127.0.0.1 -p "$pg_port" -U postgres -d scale -c "VACUUM ANALYZE users" -c CHECKPOINT >/dev/null
    fi
    port=$(free_port)
    start "$url" "$port"; start_s=$took
    # Right after the start, as an operator's clients would: one writer while the start writes
    # the local copy (the whole set) and the import's pages are still going to disk; no sync.
    read -r _ _ hot_p99 hot_max < <(wrk_run "$port" 1 "$tmp/put_user.lua" "${HOT:-3s}")
    # HOT_RUNS starts in all (default 3), each writing the local copy again: the median p99.
    hots=("$hot_p99")
    copy="$tmp/$store.snapshot"; before=none
    for _ in $(seq 2 "${HOT_RUNS:-3}"); do
      before=$(stat -c %i "$copy" 2>/dev/null || echo none)
      stop; start "$url" "$port"
      read -r _ _ p _ < <(wrk_run "$port" 1 "$tmp/put_user.lua" "${HOT:-3s}")
      hots+=("$p")
    done
    hot_p99=$(printf '%s\n' "${hots[@]}" | sort -g |
      awk '{v[NR] = $1} END {m = int((NR + 1) / 2); print (NR % 2 ? v[m] : (v[m] + v[m + 1]) / 2)}')
    hot_of["$store $n"]=$hot_p99; start_of["$store $n"]=$start_s
    # Then wait for the copy to be written, so the loads below measure steady state.
    # (the last start's: a new file, no temp or retired file beside it, its size settled).
    last=-1
    for _ in $(seq 600); do
      size=$(stat -c %s "$copy" 2>/dev/null || echo 0)
      ino=$(stat -c %i "$copy" 2>/dev/null || echo none)
      busy=$(find "$tmp" -maxdepth 1 -name ".$store.snapshot.*" | head -1)
      [ "$size" -gt 0 ] && [ "$size" = "$last" ] && [ "$ino" != "$before" ] && [ -z "$busy" ] && break
      last=$size; sleep 0.5
    done
    # And on disk: the import's and the copy's dirty pages, flushed by the kernel in the
    # background, would otherwise land in the middle of the write loads' fsyncs.
    sync
    rss1=$(rss_mib "$pid")
    read -r g_rps _ g_p99 _ < <(wrk_run "$port" 32 "$tmp/get_user.lua")
    w0=$(written "$pid"); t0=$(date +%s.%N)
    read -r p1_rps p1_p50 p1_p99 _ < <(wrk_run "$port" 1 "$tmp/put_user.lua")
    read -r p32_rps _ p32_p99 _ < <(wrk_run "$port" 32 "$tmp/put_user.lua")
    w1=$(written "$pid")
    disk=$(python3 -c "import time; print(round(($w1 - $w0) / 1048576 / ((time.time() - $t0) / 60), 1))")
    rss2=$(rss_mib "$pid")
    # A page of 100 (keyset: after an id) at the start and near the end: the same cost.
    read -r page0 pagen < <(python3 - "$port" "$n" <<'PY'
import http.client, json, statistics, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
def median_ms(after):
    params = {"limit": 100} if after is None else {"limit": 100, "after": after}
    body = json.dumps({"jsonrpc": "2.0", "method": "get_users", "params": params, "id": 1})
    times = []
    for _ in range(200):
        t = time.perf_counter()
        c.request("POST", "/", body, {"Content-Type": "application/json"})
        c.getresponse().read()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
print("%.3f %.3f" % (median_ms(None), median_ms("user-%07d" % max(0, n - 150))))
PY
)
    stop
    # A cold start from the local copy alone: the database unreachable.
    start "postgres://nobody@127.0.0.1:1/none" "$(free_port)"; copy_s=$took
    stop
    printf '%-8s %8s %7s %7s %7s %7s %9s %8s %8s %8s %9s %8s %8s %9s %8s %8s %8s %8s %8s\n' "$store" "$n" "$import_s" "$start_s" \
      "$copy_s" "$rss1" "$g_rps" "$g_p99" "$hot_p99" "$hot_max" "$p1_rps" "$p1_p50" "$p1_p99" "$p32_rps" "$p32_p99" "$rss2" "$disk" "$page0" "$pagen"
  done
  for g in get_user put_user; do sed -i '1d' "$tmp/$g.lua"; done
done
# The rows of issue 36: a writer right after a start, largest size against smallest, and the
# start at the largest size.
sizes=($SIZES); small=${sizes[0]}; large=${sizes[-1]}
for store in $STORES; do
  python3 -c "import sys; s, a, b, t = sys.argv[1:]; r = f'{float(b) / float(a):.2f}x' if float(a) else '-'; print(f'{s}: hot put p99 {b} ms at $large users vs {a} ms at $small: {r}; start at $large: {t} s')" \
    "$store" "${hot_of[$store $small]}" "${hot_of[$store $large]}" "${start_of[$store $large]}"
done
