//! The CI-sized chaos run (`scenarios/chaos-ci.toml`): three real
//! hush-node processes, each in its own network namespace, under the
//! fan-out workload while one pause longer than the lease, one peer
//! partition and one kill -9 and restart happen one after the other; the
//! checker judges the recorded history and the store. Counts only, never a
//! timing. Needs root, `ip` (iproute2) and `nft` (nftables).
//!
//! The node binary is chosen as for the smoke test (`node_bin.rs`).

use std::path::{Path, PathBuf};

use hush_loadtest::checker::AnomalyKind;
use hush_loadtest::{run, Options};

#[path = "../../crates/hush-client/tests/common/node_bin.rs"]
mod node_bin;
use node_bin::node_bin;

/// One kill -9 and restart, one peer cut (3 s), then one pause (2.5 s,
/// lease 1 s): every acknowledged message stored, every member gets every seq once and
/// in order, nothing stored twice, every member on one epoch and connected
/// at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the ip (iproute2) and nft (nftables) commands for network namespaces, which CI does not install yet; passed 2 of 2 on main after 8d946f3, but the paused-node loss is not fully fixed (CHAOS-FINDINGS.md 1b): run with --ignored as root"]
async fn chaos_pause_partition_kill_lose_nothing() {
    let out = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/chaos-ci.toml");
    let o = run(Options {
        scenario,
        overrides: vec!["target.cluster_config=../cluster.toml".into()],
        out: Some(out.path().to_path_buf()),
        node_bin: Some(node_bin()),
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_hush-loadtest"))),
        progress: false,
        ..Options::default()
    })
    .await
    .expect("chaos run");
    assert!(out.path().join("history.jsonl").exists());
    assert!(out.path().join("report.html").exists());
    let ch = o.summary.chaos.as_ref().expect("a chaos report");
    let v = &ch.verdict;
    assert!(ch.store_error.is_none(), "{:?}", ch.store_error);
    assert!(v.store_checked);
    // Every planned fault happened and was healed.
    assert_eq!(v.faults.len(), 3, "{:?}", v.faults);
    for f in &v.faults {
        assert!(f.end.is_some(), "fault {} never ended: {f:?}", f.id);
        assert!(
            !f.notes.iter().any(|n| n.starts_with("failed")),
            "fault {} could not be applied: {f:?}",
            f.id
        );
    }
    assert!(v.totals.messages > 0);
    assert!(v.totals.acked > 0);
    assert!(v.totals.deliveries > 0);
    for (kind, n) in &v.counts {
        assert_eq!(*n, 0, "{kind:?}: {:#?}", anomalies_of(v, *kind));
    }
    assert!(v.ok);
    assert!(o.summary.ok);
}

fn anomalies_of(
    v: &hush_loadtest::checker::Verdict,
    kind: AnomalyKind,
) -> Vec<&hush_loadtest::checker::Anomaly> {
    v.anomalies.iter().filter(|a| a.kind == kind).collect()
}
