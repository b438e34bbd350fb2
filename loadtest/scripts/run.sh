#!/usr/bin/env bash
# Builds release binaries and runs one scenario:
#   loadtest/scripts/run.sh fanout [--set fanout.rates=[2000.0] ...] [--repeat 5]
# (baseline needs Redis: use loadtest/scripts/baseline.sh)
# HUSH_BENCH_BIN=DIR skips the build and runs DIR/hush-loadtest (with the
# hush-node next to it), e.g. binaries copied aside so that other builds in
# a shared target/ cannot swap them mid-measurement.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: run.sh SCENARIO [args]}
shift
if [ -n "${HUSH_BENCH_BIN:-}" ]; then
  bin=$HUSH_BENCH_BIN
else
  cargo build --release -p hush-node -p hush-loadtest
  bin=target/release
fi
echo "uptime before: $(uptime)" >&2
"$bin/hush-loadtest" run "loadtest/scenarios/$name.toml" "$@" && rc=0 || rc=$?
echo "uptime after: $(uptime)" >&2
exit "$rc"
