//! The ScyllaDB backend against the shared conformance suite.
//!
//! Runs only when `HUSH_SCYLLA_URI` names a reachable cluster
//! ("host:port[,host:port...]"); each test gets a fresh keyspace
//! (`hush_test_<pid>_<n>`, replication factor 1, left behind for
//! inspection: drop `hush_test_*` keyspaces to clean up). Without the
//! variable every test prints that it was SKIPPED and passes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hush_store::conformance::Harness;
use hush_store::{ScyllaConfig, ScyllaStore};

const URI_VAR: &str = "HUSH_SCYLLA_URI";

async fn scylla_harness() -> Option<Harness> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Ok(uri) = std::env::var(URI_VAR) else {
        eprintln!("SKIPPED: {URI_VAR} is not set; the ScyllaDB conformance suite did not run");
        return None;
    };
    let points: Vec<String> = uri
        .split(',')
        .map(|p| p.trim().trim_start_matches("scylla://").to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let mut config = ScyllaConfig::new(points);
    config.keyspace = format!(
        "hush_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    config.replication_factor = 1;
    // Small buckets so the suite's timelines cross partition boundaries.
    config.bucket_size = 3;
    config.page_size = 2;
    let store = ScyllaStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{URI_VAR} is set but ScyllaDB is not usable: {e}"));
    Some(Harness::new(Arc::new(store)))
}

hush_store::store_conformance_suite!(optional: scylla_harness());
