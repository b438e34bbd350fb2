#!/usr/bin/env bash
# Starts the local three-node cluster of cluster.toml (release build), with
# each node's output prefixed by its name; Ctrl-C stops all three cleanly
# (SIGTERM: each node leaves the mesh and closes its clients with 4004).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hush-node
bin=target/release/hush-node
pids=()
stop() {
  trap - INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM
for n in n1 n2 n3; do
  # $! must be the node itself (not a pipe's last command) for the trap.
  "$bin" --config cluster.toml --node "$n" > >(sed -u "s/^/[$n] /") 2>&1 &
  pids+=($!)
done
wait
