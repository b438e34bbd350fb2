#!/usr/bin/env bash
# A local CQL cluster for Hush's tests: Apache Cassandra nodes as real JVM
# processes, one per loopback address (127.0.0.1, 127.0.0.2, ...), default
# ports (CQL 9042, storage 7000).
#
#   scripts/cql.sh up [N]    start N nodes (default 1); the last line printed
#                            is HUSH_SCYLLA_URI=127.0.0.1:9042[,...]
#   scripts/cql.sh down      stop every node of the folder cleanly
#   scripts/cql.sh status    which nodes run, and the URI
#
# `up` waits for a real answer: every node answers a query, then a write at
# consistency ALL succeeds through each node (so they see each other). It is
# harmless to run twice: running nodes are left alone and a node that died
# (kill -9) is started again on its data. A folder keeps its cluster size:
# to change N, run `down` and remove the folder.
#
# The first run resolves the server's jars with Maven from scripts/cql/pom.xml
# (the pinned Cassandra version) into a cache; later runs are offline.
# Each node gets its own cassandra.yaml, tuned for tests on a 2-core machine
# (small heap, one token per node so nodes start at once, no bootstrap, no
# waiting for gossip to settle).
#
# Environment:
#   HUSH_CQL_DIR      data, logs and configs (default: target/cql)
#   HUSH_CQL_CACHE    the jar cache (default: ~/.cache/hush/cql)
#   HUSH_CQL_HEAP     heap per node (default: 768m)
#   HUSH_CQL_TIMEOUT  seconds `up` waits for the nodes (default: 240)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here="$root/scripts/cql"
dir=${HUSH_CQL_DIR:-$root/target/cql}
cache=${HUSH_CQL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hush/cql}
heap=${HUSH_CQL_HEAP:-768m}
wait_s=${HUSH_CQL_TIMEOUT:-240}
cql_port=9042
storage_port=7000

say() { echo "cql: $*" >&2; }
die() { echo "cql: error: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2"
}

sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

version=$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$here/pom.xml")
lib="$cache/cassandra-$version/lib"

# The server's jars, from the cache or (first run) from Maven.
fetch() {
  local stamp
  stamp=$(sha "$here/pom.xml")
  if [ -f "$lib/.pom-$stamp" ]; then
    return
  fi
  need mvn "Maven (apt-get install maven)"
  say "resolving Cassandra $version with Maven (first run only) into $lib"
  rm -rf "$lib.partial"
  mkdir -p "$lib.partial"
  local log="$cache/mvn.log"
  if ! mvn -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$lib.partial" -DincludeScope=runtime >"$log" 2>&1; then
    grep -E "ERROR|Could not" "$log" | head -20 >&2 || true
    die "Maven could not resolve Cassandra $version (full log: $log)"
  fi
  rm -rf "$lib"
  mv "$lib.partial" "$lib"
  touch "$lib/.pom-$stamp"
}

# The probe that waits for real CQL answers (compiled once per source).
probe_classes() {
  local out
  out="$cache/probe-$(sha "$here/CqlProbe.java")"
  if [ ! -f "$out/CqlProbe.class" ]; then
    need javac "a JDK 17 (apt-get install openjdk-17-jdk-headless)"
    rm -rf "$out.partial"
    mkdir -p "$out.partial"
    javac -nowarn -cp "$lib/*" -d "$out.partial" "$here/CqlProbe.java"
    rm -rf "$out"
    mv "$out.partial" "$out"
  fi
  echo "$out"
}

addr() { echo "127.0.0.$1"; }

# Murmur3 tokens spread evenly: node k of n gets min + (k-1) * step, added
# step by step so no intermediate value leaves the 64-bit range.
token() {
  local k=$1 n=$2 t=-9223372036854775808 step i
  if [ "$n" -gt 1 ]; then
    step=$(((9223372036854775807 / n) * 2))
    for ((i = 1; i < k; i++)); do t=$((t + step)); done
  fi
  echo "$t"
}

seeds() {
  local n=$1 k out=""
  for ((k = 1; k <= n; k++)); do out+="${out:+,}$(addr "$k"):$storage_port"; done
  echo "$out"
}

uri() {
  local n=$1 k out=""
  for ((k = 1; k <= n; k++)); do out+="${out:+,}$(addr "$k"):$cql_port"; done
  echo "$out"
}

# The pid of node k if it runs (a live CassandraDaemon with that pid).
running() {
  local pidfile="$dir/node$1/pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "CassandraDaemon" || return 1
  echo "$pid"
}

write_yaml() {
  local k=$1 n=$2 node="$dir/node$1"
  cat >"$node/conf/cassandra.yaml" <<EOF
# Written by scripts/cql.sh for node $k of a $n-node test cluster: rewritten
# on every start, edit the script instead.
cluster_name: hush-test
# One token per node, spread evenly: no token allocation, no bootstrap, so
# every node can start at once on an empty ring.
num_tokens: 1
initial_token: $(token "$k" "$n")
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$(seeds "$n")"
listen_address: $(addr "$k")
rpc_address: $(addr "$k")
storage_port: $storage_port
native_transport_port: $cql_port
start_native_transport: true
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
data_file_directories:
  - $node/data
commitlog_directory: $node/commitlog
saved_caches_directory: $node/saved_caches
hints_directory: $node/hints
cdc_raw_directory: $node/cdc_raw
# Writes are acknowledged once fsynced to the commitlog of enough replicas
# (batch: concurrent writes share one fsync). Not periodic (the default):
# a replay reads a segment only up to its last sync marker, so a kill -9
# loses what was acknowledged since the last periodic sync, up to 10 s;
# the walkthrough test (kill every node right after a send) showed it.
# Production ScyllaDB runs its own commitlog settings (see
# ARCHITECTURE.md, "Cassandra and ScyllaDB").
commitlog_sync: batch
hinted_handoff_enabled: true
# Tests drop and create many keyspaces: no snapshot of what they drop.
auto_snapshot: false
# Two cores shared by everything: small pools and caches.
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_compactors: 1
native_transport_max_threads: 32
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
key_cache_size: 8MiB
file_cache_size: 64MiB
disk_failure_policy: stop
commit_failure_policy: stop
# One machine: a message is late by what its receiver waited for it, not
# by its sender's clock. With the default (true) a node that received a
# schema push after its sender had stalled dropped it as 30 s late
# (a CI rehearsal on a slow machine: SCHEMA_PUSH_REQ dropped, that node
# kept the old schema, and every later DDL's wait for agreement timed out).
internode_timeout: false
# Schema pulls and pushes, gossip echoes: a message is dropped once older
# than this (default 10 s), and a node paused longer than that (14 s was
# logged under a CI build) lost a schema pull's answer; Cassandra never
# retried it (scripts/cql/CqlProbe.java says how the probe recovers).
request_timeout: 60000ms
EOF
}

start_node() {
  local k=$1 n=$2 node="$dir/node$1"
  mkdir -p "$node/conf" "$node/logs" "$node/data" "$node/commitlog" \
    "$node/saved_caches" "$node/hints" "$node/cdc_raw"
  write_yaml "$k" "$n"
  cp "$here/logback.xml" "$node/conf/logback.xml"
  # The JDK 17 module options are those of Cassandra's jvm17-server.options.
  # migration_delay_ms: how long a node that hears (by gossip) of a schema
  # version it lacks waits before pulling it. With the default 60 s, a
  # schema push lost on an internode connection being re-established left
  # a node without a new table for 57 s in a CI rehearsal, and the test's
  # DDL failed its wait for agreement.
  setsid java \
    -Xms"$heap" -Xmx"$heap" -Xss256k \
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
    -XX:MaxGCPauseMillis=300 -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 \
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$node/logs" -XX:+ExitOnOutOfMemoryError \
    -XX:+PerfDisableSharedMem \
    -Djava.net.preferIPv4Stack=true \
    -Djdk.attach.allowAttachSelf=true \
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
    --add-exports java.sql/java.sql=ALL-UNNAMED \
    --add-exports java.base/java.lang.ref=ALL-UNNAMED \
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
    --add-opens java.base/java.lang.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
    --add-opens java.base/java.io=ALL-UNNAMED \
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.util=ALL-UNNAMED \
    -Dio.netty.tryReflectionSetAccessible=true \
    -Dio.netty.allocator.useCacheForAllThreads=true \
    -Dio.netty.allocator.maxOrder=11 \
    -Dcassandra.config="file://$node/conf/cassandra.yaml" \
    -Dcassandra.storagedir="$node" \
    -Dcassandra.logdir="$node/logs" \
    -Dlogback.configurationFile="$node/conf/logback.xml" \
    -Dcassandra-foreground=yes \
    -Dcassandra-pidfile="$node/pid" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.ring_delay_ms=1000 \
    -Dcassandra.migration_delay_ms=2000 \
    -Dcassandra.superuser_setup_delay_ms=0 \
    -Dchronicle.analytics.disable=true \
    -cp "$node/conf:$lib/*" \
    org.apache.cassandra.service.CassandraDaemon \
    >"$node/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$node/pid"
  say "node $k ($(addr "$k")) starting, pid $!, logs in $node/logs"
}

cluster_size() {
  if [ -f "$dir/size" ]; then cat "$dir/size"; else echo 0; fi
}

up() {
  local n=${1:-1} k
  [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "N must be a number from 1 to 99, not '$n'"
  local have
  have=$(cluster_size)
  if [ "$have" != 0 ] && [ "$have" != "$n" ]; then
    die "$dir holds a $have-node cluster; run 'scripts/cql.sh down' and remove $dir to start $n nodes"
  fi
  need java "a JDK 17 (apt-get install openjdk-17-jdk-headless)"
  fetch
  local classes
  classes=$(probe_classes)
  mkdir -p "$dir"
  echo "$n" >"$dir/size"
  for ((k = 1; k <= n; k++)); do
    if pid=$(running "$k"); then
      say "node $k ($(addr "$k")) already running, pid $pid"
    else
      start_node "$k" "$n"
    fi
  done
  local points=()
  for ((k = 1; k <= n; k++)); do points+=("$(addr "$k"):$cql_port"); done
  if ! java -Dlogback.configurationFile="$here/logback-probe.xml" \
    -cp "$classes:$lib/*" CqlProbe "$wait_s" "${points[@]}"; then
    for ((k = 1; k <= n; k++)); do
      running "$k" >/dev/null || say "node $k is not running"
      say "last lines of $dir/node$k/logs/stdout.log:"
      tail -n 15 "$dir/node$k/logs/stdout.log" >&2 || true
      say "its schema traffic and dropped messages ($dir/node$k/logs/system.log):"
      grep -hE "schema (pull|push)|Schema|dropped" "$dir/node$k/logs/system.log" 2>/dev/null | tail -n 12 >&2 || true
    done
    die "the cluster did not answer CQL within ${wait_s}s"
  fi
  echo "HUSH_SCYLLA_URI=$(uri "$n")"
}

down() {
  local n k pid pids=()
  n=$(cluster_size)
  for ((k = 1; k <= n; k++)); do
    if pid=$(running "$k"); then
      say "stopping node $k, pid $pid"
      kill -TERM "$pid"
      pids+=("$k:$pid")
    fi
    rm -f "$dir/node$k/pid"
  done
  for kp in "${pids[@]}"; do
    k=${kp%%:*}
    pid=${kp#*:}
    # Cassandra drains on SIGTERM (flushes memtables, stops serving).
    if ! timeout 90 tail --pid="$pid" -f /dev/null 2>/dev/null; then
      say "node $k did not stop within 90 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  say "stopped ($dir keeps the data)"
}

status() {
  local n k pid
  n=$(cluster_size)
  [ "$n" != 0 ] || { say "no cluster in $dir"; return 0; }
  for ((k = 1; k <= n; k++)); do
    if pid=$(running "$k"); then
      say "node $k ($(addr "$k")) running, pid $pid"
    else
      say "node $k ($(addr "$k")) stopped"
    fi
  done
  echo "HUSH_SCYLLA_URI=$(uri "$n")"
}

case "${1:-}" in
  up) up "${2:-1}" ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: scripts/cql.sh up [N] | down | status" >&2
    exit 2
    ;;
esac
