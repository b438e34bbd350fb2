#!/usr/bin/env bash
# One node vs a three-node local cluster on the same closed-loop workload
# (bench_send: G groups, one sender and one receiver each, M messages per
# group, live MLS). Release build; all processes share this machine's cores,
# so the numbers compare configurations, not capacities.
#
#   scripts/bench-cluster.sh [GROUPS] [MESSAGES_PER_GROUP]
set -euo pipefail
cd "$(dirname "$0")/.."
G=${1:-32}
M=${2:-100}
cargo build --release -q -p hush-node -p hush-client --example bench_send
NODE=target/release/hush-node
BENCH=target/release/examples/bench_send
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 200); do curl -fs "$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

echo "== one node"
"$NODE" --data "$WORK/single" --listen 127.0.0.1:7380 >"$WORK/single.log" 2>&1 &
PIDS+=($!)
wait_http http://127.0.0.1:7380
"$BENCH" http://127.0.0.1:7380 "$G" "$M"
kill "${PIDS[@]}"; wait 2>/dev/null || true; PIDS=()

echo "== three-node cluster (one shared SQLite store)"
sed -e "s#./hush-cluster#$WORK/cluster#g" cluster.toml >"$WORK/cluster.toml"
for n in n1 n2 n3; do
  "$NODE" --config "$WORK/cluster.toml" --node "$n" >"$WORK/$n.log" 2>&1 &
  PIDS+=($!)
done
for p in 7301 7302 7303; do wait_http "http://127.0.0.1:$p"; done
for _ in $(seq 1 200); do
  curl -fs http://127.0.0.1:7303/cluster | grep -q '"members":\["n1","n2","n3"\]' && break
  sleep 0.05
done
"$BENCH" http://127.0.0.1:7301,http://127.0.0.1:7302,http://127.0.0.1:7303 "$G" "$M"
for p in 7301 7302 7303; do
  echo "-- node :$p"
  curl -fs "http://127.0.0.1:$p/metrics" | grep -E '^hush_cluster_(messages_(in|out)_total|batch_deliveries_(sum|count)|rerouted_total|deliveries_dropped_total)' || true
done
