#!/usr/bin/env bash
# The baseline scenario: the fanout workload against Hush (one node, started
# by hush-loadtest) and against Redis pub/sub (Debian's redis-server,
# started here on loopback, no persistence; protected mode off because the
# generator connects from 127.0.0.x source addresses, which Redis does not
# count as loopback), in one run, one report.
#   loadtest/scripts/baseline.sh [extra hush-loadtest run args, e.g. --set fanout.rates=[2000.0] --repeat 3]
# HUSH_BENCH_BIN=DIR: use DIR/hush-loadtest (and DIR/hush-node), no build.
# BASELINE_REDIS=streams: Redis with Hush's promises instead of pub/sub: an
# append-only file fsynced before every reply (`appendfsync always`, in the
# same file system as the node's store), XADD to a stream per group, each
# receiver XREADs from its last id and stores it as its cursor every ack
# interval (`--redis-streams`; loadtest/src/redis.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v redis-server >/dev/null; then
  echo "baseline: installing redis-server (Debian package)" >&2
  apt-get install -y redis-server >/dev/null 2>&1 || { apt-get update && apt-get install -y redis-server; }
fi
if [ -n "${HUSH_BENCH_BIN:-}" ]; then
  bin=$HUSH_BENCH_BIN
else
  cargo build --release -p hush-node -p hush-loadtest
  bin=target/release
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
case "${BASELINE_REDIS:-pubsub}" in
  pubsub) persist=(--appendonly no); mode=() ;;
  streams) persist=(--appendonly yes --appendfsync always); mode=(--redis-streams) ;;
  *) echo "baseline: BASELINE_REDIS must be pubsub or streams" >&2; exit 2 ;;
esac
redis-server --bind 127.0.0.1 --port "$port" --save "" "${persist[@]}" --dir "$dir" --protected-mode no \
  --maxclients 20000 --daemonize no >"$dir/redis.log" 2>&1 &
rpid=$!
trap 'kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true; rm -rf "$dir"' EXIT
# redis-server has no "listening" line on stdout to wait for; ask it.
for _ in $(seq 200); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$port" ping >/dev/null
# The server's own pid (for /proc sampling), as it reports it.
spid=$(redis-cli -p "$port" info server | tr -d '\r' | sed -n 's/^process_id://p')
echo "uptime before: $(uptime)" >&2
"$bin/hush-loadtest" run loadtest/scenarios/baseline.toml \
  --redis "127.0.0.1:$port" --redis-pid "$spid" ${mode[@]+"${mode[@]}"} "$@" && rc=0 || rc=$?
echo "uptime after: $(uptime)" >&2
exit "$rc"
