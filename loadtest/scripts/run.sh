#!/usr/bin/env bash
# Builds release binaries and runs one scenario:
#   loadtest/scripts/run.sh fanout [--set fanout.rates=[2000.0] ...]
# (baseline needs Redis: use loadtest/scripts/baseline.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: run.sh SCENARIO [args]}
shift
cargo build --release -p hush-node -p hush-loadtest
exec target/release/hush-loadtest run "loadtest/scenarios/$name.toml" "$@"
