#!/usr/bin/env bash
# SQLite and CQL side by side: the loadtest's fanout (one node) and cluster
# (three nodes) scenarios on the embedded SQLite store and on a local CQL
# cluster (Apache Cassandra from scripts/cql.sh, which speaks ScyllaDB's
# protocol), interleaved (one run of every configuration per round, so a
# change of load on the machine hits all of them alike), and a table of the
# medians (min-max) of deliveries/s, e2e p99, Hush node CPU per 1k
# deliveries and Cassandra CPU per 1k deliveries.
#
#   scripts/cql-bench.sh [RUNS]          (default 3 rounds)
#
# Every process (generator, Hush nodes, Cassandra) shares this machine's
# cores: the figures compare the two stores on one host, not capacities.
# Cassandra's CPU is read from /proc for the whole loadtest run (setup,
# phase and drain), so its "per 1k deliveries" includes registering the
# users and creating the groups; the Hush figure is the phase's alone.
#
# Environment:
#   HUSH_BENCH_BIN     a folder with release hush-loadtest and hush-node
#                      (default: build them into target/release)
#   HUSH_CQL_NODES     Cassandra nodes (default 1: one host, one copy,
#                      like the SQLite file; 3 gives replication factor 3
#                      on the same cores). Uses HUSH_CQL_DIR like cql.sh.
#   FANOUT_RATE        msg/s of fanout on both stores (default 1000, the
#                      scenario's: 100 groups of 10)
#   CLUSTER_RATE       msg/s of cluster on both stores (default 300)
#   CQL_FANOUT_RATE    an extra fanout-cql row at this rate (CQL's own
#                      ceiling; empty: none)
#   CQL_CLUSTER_RATE   the same for cluster-cql
#   PHASE_S            the measured phase's length in seconds, for every
#                      configuration (default: each scenario's, 20 and 10)
#   EXTRA_SET          more `--set` overrides for every configuration,
#                      space separated (e.g. "fanout.groups=30")
#   HUSH_BENCH_OUT     output folder (default target/cql-bench/<UTC time>)
# The Cassandra cluster is started if it is not running, and stopped at
# the end only if this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
runs=${1:-3}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/cql-bench.sh [RUNS]" >&2; exit 2; }
nodes=${HUSH_CQL_NODES:-1}
fanout_rate=${FANOUT_RATE:-1000}
cluster_rate=${CLUSTER_RATE:-300}
out=${HUSH_BENCH_OUT:-target/cql-bench/$(date -u +%Y%m%dT%H%M%SZ)}
cql_dir=${HUSH_CQL_DIR:-$root/target/cql}
export HUSH_CQL_DIR=$cql_dir

if [ -n "${HUSH_BENCH_BIN:-}" ]; then
  bin=$HUSH_BENCH_BIN
else
  cargo build --release -p hush-node -p hush-loadtest
  bin=${CARGO_TARGET_DIR:-target}/release
fi
bin=$(cd "$bin" && pwd)
[ -x "$bin/hush-loadtest" ] && [ -x "$bin/hush-node" ] ||
  { echo "cql-bench: no hush-loadtest and hush-node in $bin" >&2; exit 1; }

# Every configuration: label|scenario|--set overrides (space separated).
fp="${PHASE_S:+ fanout.phase_s=$PHASE_S}${EXTRA_SET:+ $EXTRA_SET}"
configs=(
  "fanout sqlite @$fanout_rate|fanout|fanout.rates=[$fanout_rate.0]$fp"
  "fanout cql @$fanout_rate|fanout-cql|fanout.rates=[$fanout_rate.0]$fp"
)
[ -z "${CQL_FANOUT_RATE:-}" ] || configs+=("fanout cql @$CQL_FANOUT_RATE|fanout-cql|fanout.rates=[$CQL_FANOUT_RATE.0]$fp")
configs+=(
  "cluster sqlite @$cluster_rate|cluster|fanout.rates=[$cluster_rate.0]$fp"
  "cluster cql @$cluster_rate|cluster-cql|fanout.rates=[$cluster_rate.0]$fp"
)
[ -z "${CQL_CLUSTER_RATE:-}" ] || configs+=("cluster cql @$CQL_CLUSTER_RATE|cluster-cql|fanout.rates=[$CQL_CLUSTER_RATE.0]$fp")

# The Cassandra cluster: ours if it was not already running.
started=0
if ! scripts/cql.sh status 2>&1 | grep -q "running"; then
  started=1
fi
uri_line=$(scripts/cql.sh up "$nodes" | tail -n 1)
export "${uri_line?}"
echo "cql-bench: $uri_line ($nodes Cassandra node(s), data in $cql_dir)" >&2
stop_cql() { if [ "$started" = 1 ]; then scripts/cql.sh down || true; fi; }
trap stop_cql EXIT

# CPU ticks (user + system) of every Cassandra JVM of the folder.
store_ticks() {
  local total=0 k pid t
  for ((k = 1; k <= nodes; k++)); do
    pid=$(cat "$cql_dir/node$k/pid" 2>/dev/null) || continue
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + t))
  done
  echo "$total"
}

mkdir -p "$out"
echo "cql-bench: $runs round(s) of ${#configs[@]} configurations into $out" >&2
for ((i = 1; i <= runs; i++)); do
  for c in "${configs[@]}"; do
    IFS='|' read -r label scenario sets <<<"$c"
    dir="$out/$(echo "$label" | tr ' @' '-_')-run$i"
    args=()
    for s in $sets; do args+=(--set "$s"); done
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    t0=$(store_ticks)
    rc=0
    "$bin/hush-loadtest" run "loadtest/scenarios/$scenario.toml" --quiet --out "$dir" \
      "${args[@]}" >"$dir.log" 2>&1 || rc=$?
    t1=$(store_ticks)
    load1=$(cut -d' ' -f1-3 /proc/loadavg)
    printf '{"label":"%s","run":%d,"rc":%d,"store_cpu_s":%s,"load_before":"%s","load_after":"%s"}\n' \
      "$label" "$i" "$rc" "$(echo "$t0 $t1 $(getconf CLK_TCK)" | awk '{printf "%.2f", ($2-$1)/$3}')" \
      "$load0" "$load1" >"$dir.run.json"
    echo "cql-bench: round $i, $label: exit $rc, load $load0 -> $load1" >&2
  done
done

python3 - "$out" "$runs" "${configs[@]}" <<'EOF'
import json, os, statistics, sys

out, runs, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def fmt(xs, digits):
    if not xs:
        return "n/a"
    m = statistics.median(xs)
    return f"{m:,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"

print(f"| configuration | runs ok | deliveries/s | e2e p99 ms | Hush CPU s per 1k deliveries | Cassandra CPU s per 1k deliveries (whole run) | lost / dup / reordered / stored twice | load avg (1 min) before |")
print("|---|---|---|---|---|---|---|---|")
for c in configs:
    label = c.split("|")[0]
    rate, p99, cpu, store, loads = [], [], [], [], []
    ok = 0
    bad = [0, 0, 0, 0]
    for i in range(1, runs + 1):
        base = os.path.join(out, label.replace(" ", "-").replace("@", "_") + f"-run{i}")
        try:
            run = json.load(open(base + ".run.json"))
            s = json.load(open(os.path.join(base, "summary.json")))
        except (OSError, ValueError):
            continue
        loads.append(float(run["load_before"].split()[0]))
        ph = s["targets"][0]["phases"][0]
        ok += 1 if s.get("ok") and run["rc"] == 0 else 0
        rate.append(ph["deliveries_per_s"])
        if "e2e" in ph["latency_ms"]:
            p99.append(ph["latency_ms"]["e2e"]["p99_ms"])
        if ph.get("target_cpu_per_1k_deliveries_s") is not None:
            cpu.append(ph["target_cpu_per_1k_deliveries_s"])
        if "cql" in label and ph["delivered"] > 0:
            store.append(run["store_cpu_s"] / (ph["delivered"] / 1000.0))
        k = s["correctness"]
        for j, f in enumerate(["lost", "duplicated", "reordered", "stored_twice"]):
            bad[j] += k.get(f, 0)
    print(f"| {label} | {ok}/{runs} | {fmt(rate, 0)} | {fmt(p99, 1)} | {fmt(cpu, 3)} | "
          f"{fmt(store, 3) if 'cql' in label else '-'} | {' / '.join(map(str, bad))} | "
          f"{fmt(loads, 2)} |")
EOF
echo "cql-bench: per-run summaries and logs in $out; uptime now: $(uptime)" >&2
