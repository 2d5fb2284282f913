#!/usr/bin/env bash
# nginx and iolab's HTTP engines side by side, each alone on one CPU, the load on another:
#   1. wrk, closed loop, on a 1 KiB page:  wrk -t1 -c64 -d10s --latency
#   2. iolab load, open loop (Poisson at $RATE) over the corpus (pages sized like real ones)
#
#   scripts/http-compare.sh [engines...]        (default: nginx and every iolab engine)
#   RATE=20000 DURATION=10s CONNECTIONS=64 SERVER_CPU=0 LOAD_CPU=1 CORPUS=/tmp/iolab-corpus scripts/http-compare.sh
#
# Prints one row per server; every run's raw output stays in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-20000}; DURATION=${DURATION:-10s}; CONNECTIONS=${CONNECTIONS:-64}
SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
CORPUS=${CORPUS:-/tmp/iolab-corpus}
OUT=${OUT:-$(mktemp -d /tmp/iolab-http.XXXX)}
mkdir -p "$OUT"
servers=("$@"); [ ${#servers[@]} -gt 0 ] || servers=(nginx threads iovec select poll epoll pool uring tokio monoio)
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q
BIN=target/release/iolab
[ -f "$CORPUS/paths.txt" ] || $BIN corpus --out "$CORPUS" >/dev/null
PORT=18080
echo "server on CPU $SERVER_CPU, load on CPU $LOAD_CPU; corpus $CORPUS; raw output in $OUT"
printf "%-8s | %12s %9s %9s | %10s %9s %9s %9s %7s\n" server "wrk req/s" "wrk p50" "wrk p99" \
  "open rps" "p50 us" "p99 us" "p99.9 us" errors
for s in "${servers[@]}"; do
  if [ "$s" = nginx ]; then
    scripts/nginx.sh start "$CORPUS" $PORT "$SERVER_CPU" >/dev/null
    stop() { scripts/nginx.sh stop; }
  else
    taskset -c "$SERVER_CPU" $BIN serve --engine "$s" --protocol http --root "$CORPUS" \
      --addr 127.0.0.1:$PORT --quiet >"$OUT/$s.serve.out" 2>"$OUT/$s.serve.err" &
    pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/one-kib.html" && break; sleep 0.1; done
    stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  fi
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
    "http://127.0.0.1:$PORT/one-kib.html" >"$OUT/$s.wrk" 2>&1 || true
  wrk_rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$s.wrk")
  wrk_p50=$(awk '$1=="50%" {print $2}' "$OUT/$s.wrk")
  wrk_p99=$(awk '$1=="99%" {print $2}' "$OUT/$s.wrk")
  taskset -c "$LOAD_CPU" $BIN load --protocol http --addr 127.0.0.1:$PORT --paths "$CORPUS/paths.txt" \
    --rate "$RATE" --duration "$DURATION" --warmup 1s --connections "$CONNECTIONS" \
    --json "$OUT/$s.load.json" >"$OUT/$s.load.txt" 2>&1 || true
  read -r rps p50 p99 p999 errors < <(python3 -c "
import json; j = json.load(open('$OUT/$s.load.json'))
print('%.0f %.1f %.1f %.1f %d' % (j['achieved_rps'], j['latency_us']['p50'], j['latency_us']['p99'], j['latency_us']['p999'], j['errors']))")
  stop
  printf "%-8s | %12s %9s %9s | %10s %9s %9s %9s %7s\n" "$s" "${wrk_rps:-?}" "${wrk_p50:-?}" "${wrk_p99:-?}" \
    "$rps" "$p50" "$p99" "$p999" "$errors"
  sleep 0.5
done
