//! The CQL backend (`ScyllaStore`) against the shared conformance suite, on
//! a live cluster: Cassandra from `scripts/cql.sh up` here and in CI,
//! ScyllaDB in production.
//!
//! Runs when `HUSH_SCYLLA_URI` names the cluster ("host:port[,host:port...]",
//! the last line `scripts/cql.sh up` prints); each test gets a fresh
//! keyspace (replication factor 1), dropped afterwards unless the test
//! failed. Without the variable every test prints that it was SKIPPED and
//! how to start a cluster, or fails if `HUSH_REQUIRE_CQL=1` (CI).

hush_store::store_conformance_suite!(optional: hush_store::conformance::cql_harness());
