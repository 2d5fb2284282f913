#!/usr/bin/env bash
# Soak: one engine for a long run at 70% of its knee, checking that nothing drifts.
#
#   scripts/soak.sh ENGINE KNEE_RPS            e.g. scripts/soak.sh epoll 80000
#   DURATION=600 SHARE=0.7 SAMPLE=10 SERVER_CPU=0 LOAD_CPU=1 scripts/soak.sh uring 150000
#
# The knee is the engine's highest rate with p99 within the SLO: `iolab knee DIR` of a sweep
# (or the demo's table) gives it. The load is iolab's open-loop generator, 64 B echo over 64
# connections, one run of DURATION seconds; every SAMPLE seconds the server's resident memory
# (VmRSS) and open descriptors are read from /proc. It passes when
#   - no reply is lost: the generator reports no error, every request sent was answered;
#   - resident memory and descriptors stay flat: every sample from the first minute to the end
#     of the load's run within ±5% of their median.
# Exit 0 on pass, 1 on a failed check; the samples and both sides' output stay in $OUT.
# Not in CI: it takes its DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${1:?usage: scripts/soak.sh ENGINE KNEE_RPS}
KNEE=${2:?usage: scripts/soak.sh ENGINE KNEE_RPS (the knee of the engine, from iolab knee DIR)}
DURATION=${DURATION:-600}; SHARE=${SHARE:-0.7}; SAMPLE=${SAMPLE:-10}
SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$(mktemp -d /tmp/iolab-soak.XXXX)}; mkdir -p "$OUT"
command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null; }
cargo build --release -q
BIN=target/release/iolab
RATE=$(python3 -c "print(round($KNEE * $SHARE))")
echo "soak: $ENGINE at $RATE rps ($SHARE of $KNEE) for ${DURATION}s, sampled every ${SAMPLE}s;" \
  "server on CPU $SERVER_CPU, load on CPU $LOAD_CPU; output in $OUT"

taskset -c "$SERVER_CPU" "$BIN" serve --engine "$ENGINE" --addr 127.0.0.1:0 > "$OUT/server.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q '^listening on' "$OUT/server.log" && break; sleep 0.05; done
addr=$(awk '/^listening on/ {print $3}' "$OUT/server.log")
[ -n "$addr" ] || { echo "soak.sh: the $ENGINE server did not start" >&2; cat "$OUT/server.log" >&2; exit 1; }

taskset -c "$LOAD_CPU" "$BIN" load --addr "$addr" --rate "$RATE" --duration "${DURATION}s" --warmup 5s \
  --connections 64 --log-interval "${SAMPLE}s" --json "$OUT/load.json" > "$OUT/load.log" 2>&1 &
load=$!
echo "t_s rss_kib fds" > "$OUT/samples.txt"
began=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  echo "$(( $(date +%s) - began )) $rss $fds" | tee -a "$OUT/samples.txt" | awk '{printf "  t=%4ss  rss %8s KiB  fds %5s\n", $1, $2, $3}'
  for _ in $(seq "$SAMPLE"); do kill -0 "$load" 2>/dev/null || break; sleep 1; done
done
load_rc=0; wait "$load" || load_rc=$?
kill -TERM "$pid"; wait "$pid" || true
trap - EXIT
grep '^summary:' "$OUT/server.log" || true

python3 - "$OUT" "$load_rc" "$DURATION" <<'PY'
import json, statistics, sys
out, load_rc, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = [list(map(int, l.split())) for l in open(f"{out}/samples.txt").read().splitlines()[1:]]
d = json.load(open(f"{out}/load.json"))
ok = True
lost = d["sent"] - d["completed"]
print(f'load: sent {d["sent"]}, completed {d["completed"]}, errors {d["errors"]}, error {d["error"]}, '
      f'achieved {d["achieved_rps"]:.0f} rps, p99 {d["latency_us"]["p99"]:.0f} us, exit {load_rc}')
if load_rc != 0 or d["error"] is not None or d["errors"] != 0 or lost != 0:
    print(f"FAIL: replies lost or errors ({lost} unanswered)"); ok = False
# From the first minute to the end of the measured run (a last sample may find the load gone).
steady = [r for r in rows if 60 <= r[0] <= duration] or rows
for col, name in ((1, "resident memory (KiB)"), (2, "open descriptors")):
    vals = [r[col] for r in steady]
    med = statistics.median(vals)
    worst = max(abs(v - med) / med for v in vals) if med else 0.0
    verdict = "flat" if worst <= 0.05 else "FAIL: drifts"
    print(f"{name}: {len(vals)} samples from 60 s to {duration:.0f} s, median {med:.0f}, min {min(vals)}, max {max(vals)}, "
          f"worst deviation {worst * 100:.1f}% ({verdict})")
    ok &= worst <= 0.05
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
