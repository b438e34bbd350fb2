//! Split ownership, forced: two hush-node processes share one SQLite store,
//! and both come to believe they own one group. n1 sequences it; n1 is
//! frozen (SIGSTOP, the classic long GC pause) until its lease expires; n2
//! takes the group over; n1 is thawed with its old state and its old fence
//! token and is asked to sequence again. The store's fence lets exactly one
//! of them assign seqs: no seq is handed out twice, no acknowledged message
//! is lost, and the stale owner's request is refused as UNAVAILABLE.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::{signal, spawn_from_config, stop_outside_store_writes, stored_entries_at};
use hush_client::client::Client;
use hush_proto::ErrorCode;

const LEASE_TTL_MS: u64 = 1_000;

struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path, node: &str, data: &Path) -> Proc {
    let (child, url) = spawn_from_config(
        config,
        node,
        &[
            "--data".as_ref(),
            data.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
    );
    Proc { child, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fence_lets_exactly_one_owner_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shared.sqlite");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[actors]\nlease_ttl_ms = {LEASE_TTL_MS}\n",
            store.display()
        ),
    )
    .unwrap();
    let n1 = start(&config, "n1", &dir.path().join("n1"));
    let n2 = start(&config, "n2", &dir.path().join("n2"));

    // alice talks to n1, bob to n2; one store, so one set of accounts.
    let mut alice = Client::open(&dir.path().join("alice"), Some(&n1.url)).unwrap();
    alice.register("alice").await.unwrap();
    let mut bob = Client::open(&dir.path().join("bob"), Some(&n2.url)).unwrap();
    bob.register("bob").await.unwrap();
    // This test wants to see each refusal, not the SDK retrying past it.
    alice.set_transient_retries(0);
    bob.set_transient_retries(0);
    let gid = alice.create_group("fenced").await.unwrap().group_id;
    let g = hex::encode(&gid);
    alice.add_members(&g, &["bob".into()]).await.unwrap();
    bob.sync().await.unwrap();

    let mut acked = vec![alice.send_text(&g, "n1 owns the group").await.unwrap()];

    // While n1 holds the lease, n2 may not sequence the group.
    let refused = bob.send_text(&g, "via n2, too early").await.unwrap_err();
    assert_eq!(
        refused.server_code(),
        Some(ErrorCode::Unavailable),
        "{refused}"
    );

    // Freeze n1 past its lease: n2 takes over with a newer fence token.
    stop_outside_store_writes(n1.child.id(), &store);
    tokio::time::sleep(Duration::from_millis(LEASE_TTL_MS + 500)).await;
    bob.sync().await.unwrap();
    acked.push(bob.send_text(&g, "n2 took over").await.unwrap());
    acked.push(bob.send_text(&g, "n2 again").await.unwrap());

    // Thaw n1: it still holds the group's state and the old token.
    signal(n1.child.id(), "-CONT");
    let stale = alice.send_text(&g, "n1 after its pause").await;
    match stale {
        Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::Unavailable), "{e}"),
        Ok(seq) => panic!("the stale owner sequenced seq {seq}"),
    }
    // n2 keeps sequencing.
    acked.push(bob.send_text(&g, "n2 still the owner").await.unwrap());

    // One timeline: dense, no seq twice, every acknowledged seq stored.
    let entries = stored_entries_at(&store, &gid);
    let seqs: Vec<u64> = entries.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let unique: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "a seq was acknowledged twice");
    for seq in &acked {
        assert!(seqs.contains(seq), "acknowledged seq {seq} missing");
    }
    // The refused sends wrote nothing: from the first acknowledged text on,
    // every application entry is an acknowledged one.
    const APPLICATION: i64 = 3;
    let stray: Vec<u64> = entries
        .iter()
        .filter(|e| e.1 == APPLICATION && e.0 >= acked[0] && !acked.contains(&e.0))
        .map(|e| e.0)
        .collect();
    assert!(stray.is_empty(), "refused sends were stored: {stray:?}");
}
