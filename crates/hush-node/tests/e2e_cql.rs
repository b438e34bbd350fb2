//! Three hush-node processes on the 3-node CQL cluster of `scripts/cql.sh up
//! 3` (CI starts it), with replication factor 3, QUORUM writes and SERIAL
//! LWTs for seq allocation and fencing; real openmls clients on different
//! nodes send through all three while:
//!
//! 1. one Cassandra node is killed with SIGKILL (writes go on with two of
//!    three replicas);
//! 2. then, with that node still down, the Hush node that owns the group is
//!    killed with SIGKILL: the group re-homes, its new owner takes the lease
//!    by LWT with a higher fence token, and a write under the old token is
//!    refused by the store (fenced);
//! 3. the Cassandra node is started again, then the Hush node.
//!
//! At the end: every acknowledged message is stored once, at the seq it was
//! acknowledged with, the timeline is dense (no seq reused or skipped), and
//! every member saw every message once, in one order.
//!
//! Without a 3-node `scripts/cql.sh` cluster named by `HUSH_SCYLLA_URI` it
//! prints SKIPPED; with `HUSH_REQUIRE_CQL=1` (CI) it fails instead. It stops
//! and starts CQL nodes, so it has its own test binary.

mod cql_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use cql_common::{
    cluster_status, free_tcp_port, free_udp_port, store_section, wait_readyz, wait_view, NodeProc,
    PATIENCE,
};
use hush_client::client::Client;
use hush_store::conformance::{cql_test_store, LocalCqlCluster};
use hush_store::{EntryKind, NewEntry, ScyllaStore, Store, StoreError};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<NodeProc>,
    urls: Vec<String>,
}

impl Cluster {
    /// Three nodes with fixed ports (a restarted node is found again), fast
    /// failure detection and a short lease, on the keyspace `keyspace`.
    async fn start(points: &[String], keyspace: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let mut toml = store_section(points, keyspace, 3);
        toml.push_str(
            "[actors]\nlease_ttl_ms = 2000\npresence_grace_ms = 300\n[cluster]\nprobe_ms = 200\n",
        );
        // One dev CA for the three: its default is next to the SQLite file,
        // which a node on CQL has in its own data folder.
        toml.push_str(&format!("ca_dir = \"{root}/cluster-ca\"\n"));
        let mut urls = Vec::new();
        for n in NODES {
            let gateway = free_tcp_port();
            urls.push(format!("http://127.0.0.1:{gateway}"));
            toml.push_str(&format!(
                "[[cluster.nodes]]\nid = \"{n}\"\ngateway = \"127.0.0.1:{gateway}\"\n\
                 quic = \"127.0.0.1:{}\"\ndata = \"{root}/{n}\"\n",
                free_udp_port()
            ));
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).unwrap();
        let nodes = NODES
            .iter()
            .map(|n| NodeProc::start(&config, n, &[], &[], &dir.path().join(format!("{n}.log"))))
            .collect();
        let cluster = Self { dir, nodes, urls };
        wait_view(&cluster.nodes, &NODES).await;
        for node in &cluster.nodes {
            wait_readyz(node, 200).await;
        }
        cluster
    }

    fn node(&mut self, id: &str) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    /// Every node URL, starting with node `i` (the client's home node).
    fn urls_from(&self, i: usize) -> String {
        (0..self.urls.len())
            .map(|k| self.urls[(i + k) % self.urls.len()].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The group's owner as a running node sees it.
    async fn owner_of(&self, gid: &[u8]) -> String {
        let node = self.nodes.iter().find(|n| n.running()).unwrap();
        let v = cluster_status(&node.url, &format!("?group={}", hex::encode(gid)))
            .await
            .expect("/cluster");
        v["group_owner"].as_str().expect("owner").to_string()
    }
}

async fn member(c: &Cluster, name: &str, home_node: usize) -> Client {
    let home = c.dir.path().join(name);
    let mut client = Client::open(&home, Some(&c.urls_from(home_node))).unwrap();
    // A send keeps retrying with the same message id through the outages
    // (a Cassandra node rejoining on 2 busy cores stalls the others for
    // tens of seconds): it ends acknowledged, once, or the test times out.
    client.set_transient_retries(1_000);
    client.register(name).await.unwrap();
    client
}

/// The group's lease as stored: (owner, fence token), read at QUORUM.
async fn lease(store: &ScyllaStore, gid: &[u8]) -> (String, u64) {
    let session = store.session().expect("connected");
    let rows = session
        .query_unpaged(
            format!(
                "SELECT lease_owner, lease_token FROM {}.groups WHERE group_id = ?",
                store.config().keyspace
            ),
            (gid,),
        )
        .await
        .expect("read the lease")
        .into_rows_result()
        .expect("rows");
    let (owner, token) = rows
        .first_row::<(Option<String>, Option<i64>)>()
        .expect("the group's row");
    (
        owner.unwrap_or_default(),
        u64::try_from(token.unwrap_or(0)).expect("token"),
    )
}

/// Waits until every sender has at least `n` more acknowledged messages.
async fn traffic(progress: &[&tokio::sync::watch::Receiver<usize>], n: usize) {
    for p in progress {
        let start = *p.borrow();
        let mut p = (*p).clone();
        tokio::time::timeout(PATIENCE, p.wait_for(|v| *v >= start + n))
            .await
            .expect("traffic keeps flowing")
            .unwrap();
    }
}

type Sender = tokio::task::JoinHandle<(Client, BTreeMap<String, u64>)>;

/// A member that keeps sending until told to stop, counting its
/// acknowledged messages; returns its client and (text -> acknowledged seq).
fn spawn_counted(
    client: Client,
    g: &str,
    name: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Sender, tokio::sync::watch::Receiver<usize>) {
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let g = g.to_string();
    let handle = tokio::spawn(async move {
        let mut client = client;
        let mut acked = BTreeMap::new();
        let mut i = 0;
        while !*stop.borrow() {
            let text = format!("{name} {i}");
            let seq = client
                .send_text(&g, &text)
                .await
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            acked.insert(text, seq);
            i += 1;
            tx.send_replace(i);
        }
        (client, acked)
    });
    (handle, rx)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hush_nodes_on_three_cql_nodes_lose_nothing_when_one_of_each_dies() {
    let Some(cql) = LocalCqlCluster::find("the 3-node end-to-end CQL test", 3) else {
        return;
    };
    let cql = Arc::new(cql);
    let started = Instant::now();
    let (store, keyspace) = cql_test_store(&cql.contact_points, 3).await;
    let mut cluster = Cluster::start(&cql.contact_points, &keyspace.name).await;
    eprintln!(
        "keyspace {} and 3 ready nodes after {:?}",
        keyspace.name,
        started.elapsed()
    );

    let mut alice = member(&cluster, "alice", 0).await;
    let mut bob = member(&cluster, "bob", 1).await;
    let mut carol = member(&cluster, "carol", 2).await;
    let gid = alice.create_group("cql").await.unwrap().group_id;
    let g = hex::encode(&gid);
    alice
        .add_members(&g, &["bob".into(), "carol".into()])
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let owner = cluster.owner_of(&gid).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (a, pa) = spawn_counted(alice, &g, "alice", stop.clone());
    let (b, pb) = spawn_counted(bob, &g, "bob", stop.clone());
    traffic(&[&pa, &pb], 5).await;

    // 1. A Cassandra node dies: two of three replicas keep QUORUM and SERIAL.
    let c = cql.clone();
    tokio::task::spawn_blocking(move || c.kill(3))
        .await
        .expect("kill CQL node 3");
    let t = Instant::now();
    traffic(&[&pa, &pb], 5).await;
    eprintln!(
        "CQL node 3 killed: 5 more acknowledged each within {:?}",
        t.elapsed()
    );

    // 2. The group's owner dies too; the group re-homes under a new lease.
    let (old_owner, old_token) = lease(&store, &gid).await;
    assert!(
        old_owner.starts_with(&format!("{owner}#")),
        "{owner} holds the lease: {old_owner}"
    );
    cluster.node(&owner).kill9();
    let t = Instant::now();
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    wait_view(&cluster.nodes, &survivors).await;
    traffic(&[&pa, &pb], 5).await;
    eprintln!(
        "owner {owner} killed: 5 more acknowledged each within {:?}",
        t.elapsed()
    );
    let new_owner = cluster.owner_of(&gid).await;
    assert_ne!(new_owner, owner);
    let (holder, token) = lease(&store, &gid).await;
    assert!(
        holder.starts_with(&format!("{new_owner}#")),
        "{new_owner} took the lease: {holder}"
    );
    assert!(
        token > old_token,
        "the fence token grew: {old_token} -> {token}"
    );
    // The dead owner's token is fenced: its write would land nowhere.
    let stale = NewEntry {
        kind: EntryKind::Application,
        epoch: 1,
        sender: "alice/stale".into(),
        client_msg_id: b"written-under-a-stale-lease".to_vec(),
        message: b"stale".to_vec(),
        server_time_ms: 1,
    };
    match store.append_message(&gid, old_token, &stale).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("an append under the old fence token: {other:?}"),
    }

    // 3. The Cassandra node comes back (the script waits until writes at
    //    ALL pass), then the Hush node.
    let c = cql.clone();
    let t = Instant::now();
    tokio::task::spawn_blocking(move || c.up())
        .await
        .expect("restart CQL node 3");
    eprintln!("CQL node 3 back after {:?}", t.elapsed());
    traffic(&[&pa, &pb], 3).await;
    cluster.node(&owner).restart();
    wait_view(&cluster.nodes, &NODES).await;
    wait_readyz(cluster.node(&owner), 200).await;
    traffic(&[&pa, &pb], 3).await;

    // Stop, reconnect everyone (catching up by cursor), and check.
    stop_tx.send_replace(true);
    let mut acked = BTreeMap::new();
    let mut clients = Vec::new();
    for s in [a, b] {
        let (c, got) = s.await.expect("sender");
        acked.extend(got);
        clients.push(c);
    }
    clients.push(carol);
    for c in &mut clients {
        c.close().await;
        c.connect().await.unwrap();
        c.sync().await.unwrap();
    }
    let entries = store.read_timeline(&gid, 0, 100_000).await.expect("read");
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "dense: no seq skipped or reused"
    );
    let acked_seqs: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(
        acked_seqs.len(),
        acked.len(),
        "a seq was acknowledged twice"
    );
    let first = acked_seqs.first().copied().unwrap_or(0);
    let stored: BTreeSet<u64> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Application && e.seq >= first)
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        stored, acked_seqs,
        "stored application entries are exactly the acknowledged ones"
    );
    let mut want: Vec<(u64, String)> = acked.iter().map(|(t, s)| (*s, t.clone())).collect();
    want.sort();
    for c in &clients {
        assert_eq!(
            texts_of(c, &gid),
            want,
            "every member sees every message once, in order"
        );
    }
    eprintln!(
        "{} messages acknowledged and delivered exactly once; whole test {:?}",
        acked.len(),
        started.elapsed()
    );
    drop(cluster);
}
