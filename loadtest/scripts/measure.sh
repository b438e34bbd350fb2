#!/usr/bin/env bash
# The headline figures, each scenario repeated N times (median, min, max in
# each repeat.json), with the load average before and after every run:
#   loadtest/scripts/measure.sh [N=3] [scenario ...]
# Default scenarios: connect fanout baseline sustain cluster failover.
# Builds release binaries and copies them to target/loadtest/bin-<time>/
# first (target/ may be shared with other builds), unless HUSH_BENCH_BIN=DIR
# names binaries to use. Output: target/loadtest/measure-<time>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-3}
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(connect fanout baseline sustain cluster failover)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ -z "${HUSH_BENCH_BIN:-}" ]; then
  cargo build --release -p hush-node -p hush-loadtest
  HUSH_BENCH_BIN=target/loadtest/bin-$stamp
  mkdir -p "$HUSH_BENCH_BIN"
  cp target/release/hush-node target/release/hush-loadtest "$HUSH_BENCH_BIN/"
fi
export HUSH_BENCH_BIN
out=target/loadtest/measure-$stamp
mkdir -p "$out"
log=$out/measure.log
echo "measure: N=$n scenarios=${scenarios[*]} bin=$HUSH_BENCH_BIN commit=$(git rev-parse --short HEAD 2>/dev/null || echo -)" | tee -a "$log"
status=0
for s in "${scenarios[@]}"; do
  echo "== $s $(date -u +%H:%M:%S) uptime: $(uptime)" | tee -a "$log"
  if [ "$s" = baseline ]; then
    loadtest/scripts/baseline.sh --quiet --repeat "$n" --out "$out/$s" 2>&1 | tee -a "$log" || status=1
  else
    loadtest/scripts/run.sh "$s" --quiet --repeat "$n" --out "$out/$s" 2>&1 | tee -a "$log" || status=1
  fi
done
echo "== done $(date -u +%H:%M:%S) uptime: $(uptime)" | tee -a "$log"
echo "measure: $out (repeat.json per scenario, $log)"
exit "$status"
