//! The fresh-machine walkthrough on CQL, as a test: `scripts/cql.sh up 1`
//! (any `scripts/cql.sh` cluster works; CI runs it on its 3 nodes), then a
//! hush-node with `[store] kind = "scylla"` pointed at `HUSH_SCYLLA_URI`:
//!
//! 1. users register and chat (real openmls clients);
//! 2. the node is killed with `kill -9` and started again: everything
//!    acknowledged is still there, in order;
//! 3. the CQL cluster goes away mid-run (every node SIGKILLed): `/readyz`
//!    turns 503 while `/healthz` stays 200, and a send fails with the
//!    retryable UNAVAILABLE, never an acknowledgement;
//! 4. the node is killed and started again while the cluster is still down:
//!    it starts at once, logs why it cannot connect (naming the contact
//!    points) and is not ready;
//! 5. the cluster comes back: the node becomes ready by itself, and chat
//!    goes on; every acknowledged message is there exactly once, in order,
//!    and nothing unacknowledged is;
//! 6. the canary sent in every message and in the group name never appears
//!    in the CQL folder (data, commitlog, Cassandra's logs) or in the node's
//!    log at debug level, while a handle the server stores in clear is
//!    found there (the search reads raw bytes).
//!
//! Without a `scripts/cql.sh` cluster named by `HUSH_SCYLLA_URI` it prints
//! SKIPPED; with `HUSH_REQUIRE_CQL=1` (CI) it fails instead. It stops and
//! starts CQL nodes, so it has its own test binary.

mod cql_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cql_common::{
    files_containing, free_tcp_port, get, store_section, wait_readyz, NodeProc, PATIENCE,
};
use hush_client::client::Client;
use hush_store::conformance::{cql_test_store, LocalCqlCluster};
use hush_store::{EntryKind, Store};

/// (seq, text) of every text line a client has for a group, by seq.
fn texts_of(client: &Client, gid: &[u8]) -> Vec<(u64, String)> {
    let mut rows: Vec<_> = client
        .db()
        .recent_log(gid, 100_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "text")
        .map(|r| (r.seq, r.body))
        .collect();
    rows.sort();
    rows
}

/// Sends a text; records it under its acknowledged seq.
async fn send(acked: &mut BTreeMap<u64, String>, c: &mut Client, g: &str, text: String) {
    let seq = c.send_text(g, &text).await.expect("send");
    assert!(
        acked.insert(seq, text).is_none(),
        "seq {seq} acknowledged twice"
    );
}

async fn reconnect(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        c.close().await;
        c.connect().await.expect("reconnect");
        c.sync().await.expect("sync");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_cql_keeps_everything_acknowledged_and_never_the_plaintext() {
    let Some(cql) = LocalCqlCluster::find("the CQL walkthrough", 1) else {
        return;
    };
    let cql = Arc::new(cql);
    let started = Instant::now();
    let (store, keyspace) = cql_test_store(&cql.contact_points, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = store_section(&cql.contact_points, &keyspace.name, 1);
    toml.push_str(&format!(
        "[node]\nid = \"n1\"\ndata = \"{}\"\n[gateway]\nlisten = \"127.0.0.1:{}\"\n",
        dir.path().join("data").display(),
        free_tcp_port()
    ));
    let config = dir.path().join("node.toml");
    std::fs::write(&config, toml).unwrap();
    let log = dir.path().join("node.log");
    let mut node = NodeProc::start(&config, "n1", &[], &[("RUST_LOG", "debug")], &log);
    wait_readyz(&node, 200).await;

    // 1. Register and chat. Unique names: the positive control below looks
    //    for a handle in the CQL files, which keep earlier runs' data.
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    let canary = format!("CANARY-{tag}");
    let name = |who: &str| format!("{who}_{tag}");
    let mut alice = Client::open(&dir.path().join("alice"), Some(&node.url)).unwrap();
    alice.register(&name("alice")).await.unwrap();
    let mut bob = Client::open(&dir.path().join("bob"), Some(&node.url)).unwrap();
    bob.register(&name("bob")).await.unwrap();
    let gid = alice
        .create_group(&format!("{canary} room"))
        .await
        .unwrap()
        .group_id;
    let g = hex::encode(&gid);
    alice.add_members(&g, &[name("bob")]).await.unwrap();
    bob.sync().await.unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        send(&mut acked, &mut alice, &g, format!("{canary} alice {i}")).await;
        send(&mut acked, &mut bob, &g, format!("{canary} bob {i}")).await;
    }
    let want = |acked: &BTreeMap<u64, String>| -> Vec<(u64, String)> {
        acked.iter().map(|(s, t)| (*s, t.clone())).collect()
    };

    // 2. kill -9 and restart: everything acknowledged is still there.
    node.kill9();
    node.restart();
    wait_readyz(&node, 200).await;
    reconnect(&mut [&mut alice, &mut bob]).await;
    for c in [&alice, &bob] {
        assert_eq!(texts_of(c, &gid), want(&acked), "after the restart");
    }
    send(
        &mut acked,
        &mut alice,
        &g,
        format!("{canary} after the restart"),
    )
    .await;

    // 3. The CQL cluster goes away mid-run.
    let c = cql.clone();
    tokio::task::spawn_blocking(move || (1..=c.size).for_each(|k| c.kill(k)))
        .await
        .expect("kill every CQL node");
    let body = wait_readyz(&node, 503).await;
    assert!(body.contains("store"), "{body}");
    assert_eq!(
        get(&format!("{}/healthz", node.url)).await.map(|r| r.0),
        Some(200),
        "live while its store is away"
    );
    let failed = format!("{canary} while the store is away");
    match alice.send_text(&g, &failed).await {
        Err(hush_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, hush_proto::v1::ErrorCode::Unavailable)
        }
        other => panic!("a send while the store is away: {other:?}"),
    }

    // 4. A start while the cluster is down: at once, not ready, and the
    //    log says why, naming the contact points.
    node.kill9();
    let logged_before = node.log_text().len();
    let t = Instant::now();
    node.restart();
    eprintln!("restarted with the CQL cluster down in {:?}", t.elapsed());
    let body = wait_readyz(&node, 503).await;
    assert!(body.contains("store"), "{body}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = node.log_text();
        let run = &text[logged_before.min(text.len())..];
        if let Some(line) = run.lines().find(|l| l.contains("cql store cannot connect")) {
            for point in &cql.contact_points {
                assert!(line.contains(point.as_str()), "{line}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connect failure logged:\n{run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 5. The cluster comes back: the node becomes ready by itself.
    let c = cql.clone();
    let t = Instant::now();
    tokio::task::spawn_blocking(move || c.up())
        .await
        .expect("start the CQL cluster again");
    eprintln!("CQL cluster back in {:?}", t.elapsed());
    let t = Instant::now();
    wait_readyz(&node, 200).await;
    eprintln!("node ready {:?} after its cluster", t.elapsed());
    reconnect(&mut [&mut alice, &mut bob]).await;
    send(
        &mut acked,
        &mut bob,
        &g,
        format!("{canary} bob after the outage"),
    )
    .await;
    send(
        &mut acked,
        &mut alice,
        &g,
        format!("{canary} alice after the outage"),
    )
    .await;
    reconnect(&mut [&mut alice, &mut bob]).await;
    for c in [&alice, &bob] {
        assert_eq!(
            texts_of(c, &gid),
            want(&acked),
            "every acknowledged message once, in order, and nothing else"
        );
    }
    let entries = store.read_timeline(&gid, 0, 100_000).await.expect("read");
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    // From the first text on (before it: the group's set-up, e.g. the
    // application message naming it), the stored messages are exactly the
    // acknowledged texts: the send refused while the store was away is not.
    let first = acked.keys().next().copied().expect("texts were sent");
    let stored: BTreeSet<u64> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Application && e.seq >= first)
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        stored,
        acked.keys().copied().collect::<BTreeSet<u64>>(),
        "the stored messages are exactly the acknowledged ones"
    );
    // A user registered now is in the commitlog as written (cleartext
    // server data): the positive control of the search below.
    let mut carol = Client::open(&dir.path().join("carol"), Some(&node.url)).unwrap();
    carol.register(&name("carol")).await.unwrap();

    // 6. The canary: nowhere in the CQL folder or the logs.
    node.kill9();
    let t = Instant::now();
    let (hits, files, bytes) = files_containing(cql.dir(), canary.as_bytes());
    eprintln!(
        "searched {files} files, {bytes} bytes under {} in {:?}",
        cql.dir().display(),
        t.elapsed()
    );
    assert!(hits.is_empty(), "canary found in CQL files: {hits:?}");
    let cassandra_logs = (1..=cql.size)
        .map(|k| cql.dir().join(format!("node{k}/logs")))
        .filter(|d| d.is_dir())
        .count();
    assert_eq!(
        cassandra_logs, cql.size,
        "Cassandra's logs are in the folder searched"
    );
    let (control, _, _) = files_containing(cql.dir(), name("carol").as_bytes());
    assert!(
        !control.is_empty(),
        "the search finds no cleartext server data: it cannot see the canary either"
    );
    let text = node.log_text();
    assert!(
        text.lines().filter(|l| l.contains("DEBUG")).count() > 0,
        "the node logged nothing at debug level"
    );
    assert!(!text.contains(&canary), "canary found in the node's log");
    eprintln!("walkthrough took {:?}", started.elapsed());
}
