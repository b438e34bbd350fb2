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
    let out = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_live_mls_in_two_worker_processes() {
    let s = smoke(&["mls=live", "workers=2", "fanout.groups=4"]).await;
    assert_every_message_delivered_once(&s);
}
