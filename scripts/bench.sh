#!/usr/bin/env bash
# The headline figures against docs/baseline.json (see scripts/bench.py for what each is):
#
#   scripts/bench.sh                      # 3 interleaved repeats of every figure
#   scripts/bench.sh --against fb10218    # the same, beside the binary of another revision
#   scripts/bench.sh --only shm_800k_p99_us,shm_1k_p50_us --repeat 5
#   scripts/bench.sh --write-baseline     # after a change that moves a figure on purpose
#
# Run it before and after a change to a hot path; not in CI (timings are not tests).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
exec python3 scripts/bench.py "$@"
