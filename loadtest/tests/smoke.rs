//! CI smoke test: a real hush-node process, the smoke scenario for a couple
//! of seconds, real registration, WebSockets and MLS. Asserts correctness
//! counts only, never a timing.
//!
//! The node binary is chosen as for the hush-client end-to-end tests
//! (`node_bin.rs`): the workspace test build's own when fresh, so
//! `cargo test --workspace` builds nothing twice, and never a stale one.

use std::path::{Path, PathBuf};

use hush_loadtest::{run, Options};

#[path = "../../crates/hush-client/tests/common/node_bin.rs"]
mod node_bin;
use node_bin::node_bin;

async fn smoke(overrides: &[&str]) -> hush_loadtest::report::Summary {
    run_scenario("scenarios/smoke.toml", overrides).await
}

async fn run_scenario(file: &str, overrides: &[&str]) -> hush_loadtest::report::Summary {
    let out = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let o = run(Options {
        scenario,
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        out: Some(out.path().to_path_buf()),
        node_bin: Some(node_bin()),
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_hush-loadtest"))),
        progress: false,
        ..Options::default()
    })
    .await
    .expect("smoke run");
    assert!(out.path().join("summary.json").exists());
    assert!(out.path().join("report.html").exists());
    // The node's store (every entry of the run) is gone once it stopped.
    assert!(!out.path().join("node-data").exists());
    o.summary
}

fn assert_every_message_delivered_once(s: &hush_loadtest::report::Summary) {
    assert!(s.correctness.ok(), "{:?}", s.correctness);
    assert!(s.ok);
    let k = s.scenario.fanout.group_size as u64;
    let p = &s.targets[0].phases[0];
    assert!(p.sent > 0);
    assert_eq!(p.acked, p.sent, "every send acknowledged");
    assert_eq!(
        p.delivered,
        p.sent * (k - 1),
        "every receiver got every message"
    );
    assert_eq!(p.latency_ms["e2e"].count, p.delivered);
    assert_eq!(p.latency_ms["completion"].count, p.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_presealed_in_process() {
    let s = smoke(&[]).await;
    assert_every_message_delivered_once(&s);
    // The node's CPU by thread: its store writer and its gateway workers
    // are named (the kernel keeps 15 bytes of a name).
    let threads = &s.targets[0].phases[0].target_thread_cpu_s;
    assert!(threads.contains_key("hush-store-writ"), "{threads:?}");
    assert!(
        threads.keys().any(|k| k.starts_with("actix-server")),
        "{threads:?}"
    );
    assert!(threads.values().all(|&c| c >= 0.0), "{threads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_live_mls_in_two_worker_processes() {
    let s = smoke(&["mls=live", "workers=2", "fanout.groups=4"]).await;
    assert_every_message_delivered_once(&s);
}

/// The failover scenario, CI-sized: three nodes on free ports (short
/// leases and probes, as the SDK's cluster tests use), 6 groups of 4
/// spread over them (senders on every node), n2 killed with SIGKILL one
/// second into a four-second phase. Every connection to n2 must come back
/// through another node and resume; every message must be acknowledged
/// once and reach every receiver exactly once, in order. Counts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_kill9_loses_nothing() {
    let s = run_scenario(
        "scenarios/failover.toml",
        &[
            "target.cluster_config=../cluster.toml",
            "target.node_config=[actors]\nlease_ttl_ms = 1000\n[cluster]\nprobe_ms = 200\n",
            "target.kill_after_s=1.0",
            "fanout.groups=6",
            "fanout.group_size=4",
            "fanout.rates=[60.0]",
            "fanout.phase_s=4.0",
            "fanout.presealed_per_group=4",
            "fanout.ack_interval_ms=100",
        ],
    )
    .await;
    assert_every_message_delivered_once(&s);
    let f = s.targets[0].phases[0]
        .failover
        .as_ref()
        .expect("a failover report");
    assert!(f.affected_connections > 0, "{f:?}");
    assert_eq!(f.unexpected_drops, 0, "{f:?}");
    assert_eq!(f.not_reconnected, 0, "{f:?}");
    assert_eq!(f.outage_failed, 0, "{f:?}");
    assert!(f.drained_s.is_some(), "{f:?}");
    assert_eq!(f.correctness.stored_twice, 0);
}
