#!/usr/bin/env bash
# Finds, per engine, the highest offered rate whose p99 stays under an SLO, with the server
# pinned to one CPU and the load generator to another. A stop-gap until `iolab sweep` exists.
#
#   scripts/knee.sh [engines...]            (default: every engine)
#   scripts/knee.sh epoll epoll,--epoll-mode,level pool,--workers,2   (commas: extra serve args)
#   SLO_US=1000 DURATION=5s SERVER_CPU=0 LOAD_CPU=1 CONNECTIONS=16 SIZE=64 DRIVER=uring scripts/knee.sh
#
# Walks a rate ladder up until a point fails (p99 > SLO, achieved < 99% of what was scheduled,
# or any error), then bisects between the last pass and the first failure. A failure is
# measured again before it counts: saturation repeats, a one-off stall of the VM does not.
# Both runs are printed. Prints one line per point
# and a summary row per engine; every point's JSON stays in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
SLO_US=${SLO_US:-1000}; DURATION=${DURATION:-5s}; WARMUP=${WARMUP:-1s}
SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}; CONNECTIONS=${CONNECTIONS:-16}; SIZE=${SIZE:-64}
DRIVER=${DRIVER:-}
OUT=${OUT:-$(mktemp -d /tmp/iolab-knee.XXXX)}
mkdir -p "$OUT"
LADDER=${LADDER:-"1000 5000 10000 20000 30000 40000 50000 60000 70000 80000 100000 120000 150000"}
BISECT=${BISECT:-3}
engines=("$@"); [ ${#engines[@]} -gt 0 ] || engines=(threads iovec select poll epoll epoll,--epoll-mode,level pool)
cargo build --release -q
BIN=target/release/iolab
echo "results in $OUT; SLO p99 <= ${SLO_US}us; server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"

# point ENGINE ADDR RATE -> prints "pass|fail p50 p99 sendlag99 achieved"; a failure is
# re-measured once and the second run decides (both JSON files are kept).
point() {
  local first
  first=$(measure "$1" "$2" "$3" "")
  if [ "${first%% *}" = pass ]; then echo "$first"; return; fi
  echo "  (re-measuring $1 at $3 rps after: $first)" >&2
  measure "$1" "$2" "$3" ".retry"
}

measure() {
  local json="$OUT/$1-$3$4.json"
  taskset -c "$LOAD_CPU" "$BIN" load --addr "$2" --rate "$3" --duration "$DURATION" --warmup "$WARMUP" \
    --connections "$CONNECTIONS" --request-size "$SIZE" ${DRIVER:+--driver "$DRIVER"} --json "$json" > /dev/null 2>&1 || true
  python3 - "$json" "$SLO_US" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); slo = float(sys.argv[2])
ok = d["error"] is None and d["errors"] == 0 and d["latency_us"]["p99"] <= slo \
     and d["achieved_within_1pct_of_scheduled"]
print("pass" if ok else "fail", d["latency_us"]["p50"], d["latency_us"]["p99"],
      d["send_lag_us"]["p99"], round(d["achieved_rps"], 1))
PY
}

summary=()
for spec in "${engines[@]}"; do
  IFS=, read -r -a words <<< "$spec"
  engine=$(IFS=_; echo "${words[*]}" | tr -d -- '-')   # a file-safe label
  log="$OUT/$engine.server.log"
  taskset -c "$SERVER_CPU" "$BIN" serve --engine "${words[0]}" "${words[@]:1}" --addr 127.0.0.1:0 > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on' "$log" && break; sleep 0.05; done
  addr=$(awk '/^listening on/ {print $3}' "$log")
  if [ -z "$addr" ]; then
    echo "knee.sh: the $spec server did not start:" >&2; cat "$log" >&2; kill "$pid" 2>/dev/null; exit 1
  fi
  best=0; best_line="-"; fail=0; at1k="-"
  for rate in $LADDER; do
    read -r verdict p50 p99 lag achieved < <(point "$engine" "$addr" "$rate")
    printf '%-8s %8s rps  %s  p50 %8.1fus  p99 %8.1fus  send-lag p99 %6.1fus  achieved %s\n' \
      "$engine" "$rate" "$verdict" "$p50" "$p99" "$lag" "$achieved"
    [ "$rate" = 1000 ] && at1k="p50 ${p50}us p99 ${p99}us"
    if [ "$verdict" = pass ]; then best=$rate; best_line="p99 ${p99}us send-lag-p99 ${lag}us"; else fail=$rate; break; fi
  done
  if [ "$fail" != 0 ] && [ "$best" != 0 ]; then
    lo=$best; hi=$fail
    for _ in $(seq "$BISECT"); do
      mid=$(( (lo + hi) / 2 ))
      read -r verdict p50 p99 lag achieved < <(point "$engine" "$addr" "$mid")
      printf '%-8s %8s rps  %s  p50 %8.1fus  p99 %8.1fus  send-lag p99 %6.1fus  achieved %s (bisect)\n' \
        "$engine" "$mid" "$verdict" "$p50" "$p99" "$lag" "$achieved"
      if [ "$verdict" = pass ]; then lo=$mid; best=$mid; best_line="p99 ${p99}us send-lag-p99 ${lag}us"; else hi=$mid; fi
    done
  fi
  kill -TERM "$pid"; wait "$pid" || true
  summary+=("$(printf '%-8s at 1k rps: %-32s | knee: %s rps (%s)' "$engine" "$at1k" "$best" "$best_line")")
done
echo; printf '%s\n' "${summary[@]}"
