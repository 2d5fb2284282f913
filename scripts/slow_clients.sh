#!/usr/bin/env bash
# Slow clients at scale: the normal load's p99 with and without 1,000 slowloris connections.
#
#   scripts/slow_clients.sh [engines...]      (default: select poll epoll pool uring tokio monoio threads iovec)
#   RATE=20000 DURATION=10s REPEAT=3 SLOW=1000 TIMEOUT=5s SERVER_CPU=0 LOAD_CPU=1 SLOW_CPU=1 \
#     SLOW_SCHED=nice PROTOS="frame http" ATTACKER=rust scripts/slow_clients.sh epoll
#
# For each engine and each protocol (frame: trickled frame headers; http: trickled HTTP
# heads), REPEAT rounds of the same load (64 B echo, or GET of a 1 KiB file, over 64
# connections at RATE) without and with SLOW trickling connections, interleaved
# (without, with, without, with, ...) so that a moment of machine noise falls on both. The
# server runs with --request-timeout $TIMEOUT, so trickled requests are closed (and the
# trickler reconnects) during the run; the table says how many. select holds at most 1,024
# descriptors (FD_SETSIZE), so it gets 900 slow connections.
#
# Where the slow clients run matters on a 2-core machine: they must share a core with the
# server or with the generator. SLOW_SCHED says how they are scheduled there: `nice` (nice 19)
# or `idle` (SCHED_IDLE: only the core's idle time, and any wakeup of the server or the
# generator preempts them at once). The table gives the generator's own send-lag p99 beside
# each p99, so a slow client that delays the generator, not the server, shows as such.
#
# ATTACKER says who trickles: `hold` (the Rust attacker's connections, opened and left
# silent: the control for what the trickling itself costs), `rust` (examples/slow_clients.rs: a send and a read per byte)
# or `python` (scripts/slow_clients.py: the same attack with tens of microseconds of
# interpreter per byte, which the core it shares pays for).
#
# PLACEBO=1 sends the attack to a second server of the same engine on the attacker's core
# instead: the measured server sees none of it, the machine all the rest. PLACEBO=interleave
# runs all three in each round (without, with, placebo, without, placebo, with, ...) and adds two ratios:
# placebo / without is what the attack costs the measurement (the cores it shares), and
# with / placebo what is left for the server's own handling of slow clients.
#
# The ratio is median p99 with / median p99 without. A run in which the generator's canaries
# saw more than STALL_MS of machine stalls (this VM stalls for milliseconds now and then, and
# one such stall decides a p99) is run again, up to 3 times; the table counts the reruns.
# Raw output stays in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-20000}; DURATION=${DURATION:-10s}; REPEAT=${REPEAT:-3}; SLOW=${SLOW:-1000}
TIMEOUT=${TIMEOUT:-5s}; STALL_MS=${STALL_MS:-5}; SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
SLOW_CPU=${SLOW_CPU:-$LOAD_CPU}; SLOW_SCHED=${SLOW_SCHED:-nice}; PROTOS=${PROTOS:-frame http}
ATTACKER=${ATTACKER:-rust}; PLACEBO=${PLACEBO:-0}
case $PLACEBO in
  0|1|interleave) ;;
  *) echo "slow_clients.sh: PLACEBO is 0, 1 or interleave, not '$PLACEBO'" >&2; exit 2 ;;
esac
case $ATTACKER in
  rust|hold|python) ;;
  *) echo "slow_clients.sh: ATTACKER is rust, hold or python, not '$ATTACKER'" >&2; exit 2 ;;
esac
case $SLOW_SCHED in
  nice) slow_sched=(nice -n 19) ;;
  idle) slow_sched=(chrt --idle 0) ;;
  *) echo "slow_clients.sh: SLOW_SCHED is nice or idle, not '$SLOW_SCHED'" >&2; exit 2 ;;
esac
OUT=${OUT:-$(mktemp -d /tmp/iolab-slow.XXXX)}; mkdir -p "$OUT/root"
engines=("$@"); [ ${#engines[@]} -gt 0 ] || engines=(select poll epoll pool uring tokio monoio threads iovec)
command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null; }
cargo build --release -q
[ "$ATTACKER" = python ] || cargo build --release -q --example slow_clients
BIN=target/release/iolab
head -c 1024 /dev/zero | tr '\0' 'x' > "$OUT/root/index.html"
ulimit -n 65536 2>/dev/null || true
echo "results in $OUT; load $RATE rps for $DURATION over 64 connections; $SLOW slow clients;" \
  "--request-timeout $TIMEOUT; server on CPU $SERVER_CPU, load on CPU $LOAD_CPU," \
  "slow clients ($ATTACKER$(case $PLACEBO in 1) echo ', to a placebo server';; interleave) echo ', to the server and to a placebo, interleaved';; esac)) on CPU $SLOW_CPU ($SLOW_SCHED)"

run_one() { # engine protocol slow_count round cond: measured until the machine was quiet (3 tries at most)
  local try
  for try in 1 2 3; do
    measure "$@" "$try"
    local stall; stall=$(tail -1 "$OUT/results.txt" | awk '{print $7}')
    if python3 -c "import sys; sys.exit(0 if float('$stall') <= $STALL_MS else 1)"; then return; fi
    if [ "$try" -lt 3 ]; then
      sed -i '$ d' "$OUT/results.txt"
      echo "  rerun $1 $2 $5 round $4: $stall ms of machine stalls" >&2
    fi
  done
  return 0 # kept, and counted as still noisy
}

measure() { # engine protocol slow_count round cond try -> appends "engine proto cond round p99 timeouts stall_ms try send_lag_p99 uncorrected_p99" to results
  # cond: without (slow_count is 0), with (the attack on the measured server) or placebo
  local engine=$1 proto=$2 slow=$3 round=$4 cond=$5 try=$6
  local tag="$engine-$proto-$cond-$round-$try"
  local args=(--engine "$engine" --addr 127.0.0.1:0 --quiet --request-timeout "$TIMEOUT")
  [ "$proto" = http ] && args+=(--protocol http --root "$OUT/root")
  taskset -c "$SERVER_CPU" "$BIN" serve "${args[@]}" > "$OUT/$tag.server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do grep -q '^listening on' "$OUT/$tag.server.log" && break; sleep 0.05; done
  local addr; addr=$(awk '/^listening on/ {print $3}' "$OUT/$tag.server.log")
  [ -n "$addr" ] || { echo "slow_clients.sh: $engine did not start" >&2; cat "$OUT/$tag.server.log" >&2; exit 1; }
  local trickler="" placebo="" target_port=${addr##*:}
  if [ "$cond" = placebo ]; then
    # The control: the attack goes to a second server of the same engine beside the attacker
    # (same core, same scheduling), so the measured server sees none of it while the cores
    # bear everything else the attack costs.
    taskset -c "$SLOW_CPU" "${slow_sched[@]}" "$BIN" serve "${args[@]}" > "$OUT/$tag.placebo.log" 2>&1 &
    placebo=$!
    for _ in $(seq 200); do grep -q '^listening on' "$OUT/$tag.placebo.log" && break; sleep 0.05; done
    target_port=$(awk '/^listening on/ {print $3}' "$OUT/$tag.placebo.log"); target_port=${target_port##*:}
    [ -n "$target_port" ] || { echo "slow_clients.sh: the placebo $engine did not start" >&2; exit 1; }
  fi
  if [ "$slow" -gt 0 ]; then
    rm -f "$OUT/ready"
    # At nice 19 or SCHED_IDLE: the attacker shares a core (two cores) and must not delay the
    # process it shares it with; one byte a second does not mind waiting.
    if [ "$ATTACKER" != python ]; then
      taskset -c "$SLOW_CPU" "${slow_sched[@]}" target/release/examples/slow_clients "$target_port" "$proto" \
        "$slow" 3600 "$OUT/ready" "$([ "$ATTACKER" = hold ] && echo hold)" > "$OUT/$tag.slow.json" 2>&1 &
    else
      taskset -c "$SLOW_CPU" "${slow_sched[@]}" python3 scripts/slow_clients.py --port "$target_port" --kind "$proto" \
        --connections "$slow" --seconds 3600 --ready-file "$OUT/ready" > "$OUT/$tag.slow.json" 2>&1 &
    fi
    trickler=$!
    for _ in $(seq 600); do [ -f "$OUT/ready" ] && break; sleep 0.05; done
    sleep 1
  fi
  local load=(--addr "$addr" --rate "$RATE" --duration "$DURATION" --warmup 1s --connections 64 --json "$OUT/$tag.json")
  [ "$proto" = http ] && load+=(--protocol http --path /index.html) || load+=(--request-size 64 --reply echo)
  taskset -c "$LOAD_CPU" "$BIN" load "${load[@]}" > "$OUT/$tag.load.log" 2>&1 || true
  if [ -n "$trickler" ]; then
    # The attacker's own CPU time (user + system, in clock ticks), for the record.
    awk '{print $14 + $15}' "/proc/$trickler/stat" > "$OUT/$tag.slow.ticks" 2>/dev/null || true
    kill -TERM "$trickler" 2>/dev/null || true; wait "$trickler" 2>/dev/null || true
  fi
  if [ -n "$placebo" ]; then kill -TERM "$placebo"; wait "$placebo" || true; fi
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$OUT/$tag.json" "$OUT/$tag.server.log" "$engine $proto $cond $round" "$try" >> "$OUT/results.txt" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
summary = open(sys.argv[2]).read()
m = re.search(r"request_timeouts=(\d+)", summary)
bad = "" if d["error"] is None and d["errors"] == 0 else " BAD"
stalls = d.get("machine_stalls") or {}
print(f'{sys.argv[3]} {d["latency_us"]["p99"]:.1f} {m.group(1) if m else "?"} {stalls.get("total_us", 0) / 1e3:.1f} {sys.argv[4]}'
      f' {d["send_lag_us"]["p99"]:.1f} {d["latency_uncorrected_us"]["p99"]:.1f}{bad}')
PY
}

: > "$OUT/results.txt"
for engine in "${engines[@]}"; do
  slow=$SLOW; [ "$engine" = select ] && slow=$(( SLOW < 900 ? SLOW : 900 ))
  for proto in $PROTOS; do
    for round in $(seq "$REPEAT"); do
      run_one "$engine" "$proto" 0 "$round" without
      case $PLACEBO in
        0) run_one "$engine" "$proto" "$slow" "$round" with ;;
        1) run_one "$engine" "$proto" "$slow" "$round" placebo ;;
        interleave) # the two attacked conditions swap places each round, so neither always comes first
          order=(with placebo); [ $((round % 2)) = 0 ] && order=(placebo with)
          for cond in "${order[@]}"; do run_one "$engine" "$proto" "$slow" "$round" "$cond"; done ;;
      esac
    done
    python3 - "$OUT/results.txt" "$engine" "$proto" "$STALL_MS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.split()[:2] == sys.argv[2:4]]
rows = [r for r in rows if len(r) >= 10]
conds = [c for c in ("without", "with", "placebo") if any(r[2] == c for r in rows)]
def med(cond, col=4): return statistics.median(float(r[col]) for r in rows if r[2] == cond)
def spread(cond):
    v = [float(r[4]) for r in rows if r[2] == cond]; return f"{min(v):.0f}-{max(v):.0f}"
p99s = "  ".join(f"{c} {med(c):7.1f} us [{spread(c)}]" for c in conds)
ratios = [(a, b) for a, b in (("with", "without"), ("placebo", "without"), ("with", "placebo"))
          if a in conds and b in conds]
ratio = "  ".join(f"{a}/{b} {med(a) / med(b):4.2f}" for a, b in ratios)
lags = " -> ".join(f"{med(c, 8):.0f}" for c in conds)
timeouts = [r[5] for r in rows if r[2] == "with"]
reruns = sum(int(r[7]) - 1 for r in rows)
noisy = sum(1 for r in rows if float(r[6]) > float(sys.argv[4]))
bad = " (errors in some runs)" if any(r[-1] == "BAD" for r in rows) else ""
bad += f" reruns {reruns}" + (f", {noisy} still noisy" if noisy else "")
print(f"{sys.argv[2]:<8} {sys.argv[3]:<5} p99 {p99s}  {ratio}  send-lag p99 {lags} us"
      + (f"  timeouts/run {','.join(timeouts)}" if timeouts else "") + bad)
PY
  done
done
