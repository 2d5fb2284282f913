#!/usr/bin/env bash
# The O(n) story: p99 at a fixed rate with few vs many open connections, most of them idle.
# 10 connections carry the load; --idle-connections adds silent ones. select stops at its
# FD_SETSIZE limit (1000 connections in all); poll and epoll go to 5000.
#
#   scripts/idle.sh            RATE=10000 DURATION=10s SERVER_CPU=0 LOAD_CPU=1 scripts/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}; DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-1s}
SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$(mktemp -d /tmp/iolab-idle.XXXX)}; mkdir -p "$OUT"
cargo build --release -q
BIN=target/release/iolab
echo "results in $OUT; $RATE rps, 64 B echo over 10 active connections; server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
printf '%-7s %7s %10s %10s %10s %12s %10s\n' engine total p50_us p99_us p999_us server_cpu_s achieved
for case in select:0 select:990 poll:0 poll:4990 epoll:0 epoll:4990; do
  engine=${case%%:*}; idle=${case##*:}
  log="$OUT/$engine-$idle.server.log"
  taskset -c "$SERVER_CPU" "$BIN" serve --engine "$engine" --addr 127.0.0.1:0 --quiet > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on' "$log" && break; sleep 0.05; done
  addr=$(awk '/^listening on/ {print $3}' "$log")
  [ -n "$addr" ] || { echo "idle.sh: the $engine server did not start" >&2; cat "$log" >&2; exit 1; }
  cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  taskset -c "$LOAD_CPU" "$BIN" load --addr "$addr" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --connections 10 --idle-connections "$idle" --json "$OUT/$engine-$idle.json" > /dev/null 2>&1 || true
  cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$OUT/$engine-$idle.json" "$engine" "$((idle + 10))" "$(( cpu1 - cpu0 ))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_us"]
cpu = int(sys.argv[4]) / int(sys.argv[5])
flag = "" if d["error"] is None and d["errors"] == 0 else "  (" + (d["error"] or f'{d["errors"]} errors') + ")"
print(f'{sys.argv[2]:<7} {sys.argv[3]:>7} {l["p50"]:>10.1f} {l["p99"]:>10.1f} {l["p999"]:>10.1f} {cpu:>12.2f} {d["achieved_rps"]:>10.1f}{flag}')
PY
done
