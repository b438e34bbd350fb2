//! Three real hush-node processes in a cluster (QUIC with mutual TLS, one
//! shared SQLite store), real openmls clients connected to different nodes.
//!
//! - Cross-node chat: members on three nodes, the group sequenced by its
//!   owner; requests from the other nodes are forwarded to it, and its
//!   fan-out reaches them live. Everyone ends with one order.
//! - kill -9 of the owner of a busy group while members keep sending: the
//!   group re-homes, the clients reconnect elsewhere; every acknowledged
//!   message is stored once, at one seq, and seen once by every member.
//! - Rolling restart (SIGTERM, start again) of every node in turn under
//!   traffic: the same checks.
//!
//! Views are state in other processes: the harness reads `/cluster` until
//! it shows what is expected (bounded), never sleeping blindly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{signal, spawn_from_config, stop_outside_store_writes, stored_entries_at};
use hush_client::client::Client;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(40);
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const APPLICATION: i64 = 3;

struct Node {
    id: String,
    url: String,
    child: Option<Child>,
    /// SIGSTOPped: it answers nothing until resumed.
    paused: bool,
}

impl Node {
    fn start(config: &Path, id: &str) -> Self {
        let (child, url) = spawn_from_config(config, id, &[]);
        Self {
            id: id.into(),
            url,
            child: Some(child),
            paused: false,
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a stop-the-world pause,
    /// outside a write to the shared `store` (see
    /// [`stop_outside_store_writes`]).
    fn pause(&mut self, paused: bool, store: &Path) {
        let pid = self.child.as_ref().expect("running").id();
        if paused {
            stop_outside_store_writes(pid, store);
        } else {
            signal(pid, "-CONT");
        }
        self.paused = paused;
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                self.paused = false;
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(c.id().to_string())
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit (it hands off first).
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .expect("kill")
                .success();
            assert!(ok);
            let status = c.wait().expect("wait");
            assert!(status.success(), "{} exited with {status}", self.id);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    config: PathBuf,
    nodes: Vec<Node>,
    urls: Vec<String>,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

impl Cluster {
    /// Three nodes with fixed ports (so a restarted node is found again),
    /// fast failure detection and a short lease.
    async fn start() -> Self {
        Self::start_probing_every(200).await
    }

    /// A cluster whose failure detector probes every `probe_ms`.
    async fn start_probing_every(probe_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let mut toml = format!(
            "[store]\npath = \"{root}/hush.sqlite\"\n[actors]\nlease_ttl_ms = 1000\n\
             presence_grace_ms = 300\n\
             [cluster]\nprobe_ms = {probe_ms}\n"
        );
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
        let nodes = NODES.iter().map(|n| Node::start(&config, n)).collect();
        let cluster = Self {
            dir,
            config,
            nodes,
            urls,
        };
        cluster.wait_view(&NODES).await;
        cluster
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("hush.sqlite")
    }

    fn node(&mut self, id: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    fn restart(&mut self, id: &str) {
        let config = self.config.clone();
        let fresh = Node::start(&config, id);
        *self.node(id) = fresh;
    }

    /// Every node URL, starting with node `i` (the client's home node).
    fn urls_from(&self, i: usize) -> String {
        (0..self.urls.len())
            .map(|k| self.urls[(i + k) % self.urls.len()].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn get(url: &str) -> Option<Value> {
        hush_client::tls::use_ring(); // reqwest has no rustls provider of its own
        let body = reqwest::get(url).await.ok()?.text().await.ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The members a running node sees now.
    async fn view_of(&self, id: &str) -> Vec<String> {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        let v = Self::get(&format!("{}/cluster", node.url)).await;
        v.as_ref()
            .and_then(|v| v["members"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m.as_str().map(String::from))
            .collect()
    }

    /// Waits until every running node (not paused) shows exactly `members`.
    async fn wait_view(&self, members: &[&str]) {
        let deadline = Instant::now() + PATIENCE;
        for node in self.nodes.iter().filter(|n| n.child.is_some() && !n.paused) {
            loop {
                let v = Self::get(&format!("{}/cluster", node.url)).await;
                let seen: Vec<String> = v
                    .as_ref()
                    .and_then(|v| v["members"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|m| m.as_str().map(String::from))
                    .collect();
                if seen == members {
                    break;
                }
                assert!(Instant::now() < deadline, "{}: view {seen:?}", node.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The group's owner as a running node sees it.
    async fn owner_of(&self, gid: &[u8]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some() && !n.paused)
            .unwrap();
        let url = format!("{}/cluster?group={}", node.url, hex::encode(gid));
        let v = Self::get(&url).await.expect("/cluster");
        v["group_owner"].as_str().expect("owner").to_string()
    }

    /// The node that holds a user's session, as a running node sees it.
    async fn session_owner(&self, user: &str) -> String {
        let node = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let v = Self::get(&format!("{}/cluster?user={user}", node.url))
            .await
            .expect("/cluster");
        v["session_owner"].as_str().expect("owner").to_string()
    }

    /// A counter's total from a node's /metrics (0 when absent).
    async fn metric(&self, id: &str, name: &str, label: &str) -> f64 {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        hush_client::tls::use_ring(); // reqwest has no rustls provider of its own
        let text = reqwest::get(format!("{}/metrics", node.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn member(c: &Cluster, name: &str, home_node: usize) -> Client {
    let home = c.dir.path().join(name);
    let mut client = Client::open(&home, Some(&c.urls_from(home_node))).unwrap();
    client.register(name).await.unwrap();
    client
}

/// (seq, sender, text) of every text line a client has for a group.
fn texts_of(client: &Client, gid: &[u8]) -> Vec<(u64, String, String)> {
    let mut rows: Vec<_> = client
        .db()
        .recent_log(gid, 100_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "text")
        .map(|r| (r.seq, r.sender, r.body))
        .collect();
    rows.sort();
    rows
}

/// The store holds every acknowledged message exactly once at its seq;
/// the timeline is dense; each member saw every message once, in one order.
fn check_one_history(store: &Path, gid: &[u8], acked: &BTreeMap<String, u64>, members: &[&Client]) {
    let entries = stored_entries_at(store, gid);
    let seqs: Vec<u64> = entries.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    let acked_seqs: BTreeSet<u64> = acked.values().copied().collect();
    // From the first test message on (before it: the group's name).
    let first = acked_seqs.first().copied().unwrap_or(0);
    let app: BTreeSet<u64> = entries
        .iter()
        .filter(|e| e.1 == APPLICATION && e.0 >= first)
        .map(|e| e.0)
        .collect();
    assert_eq!(
        acked_seqs.len(),
        acked.len(),
        "a seq was acknowledged twice"
    );
    assert_eq!(
        app, acked_seqs,
        "stored application entries are exactly the acknowledged ones"
    );
    let want: Vec<(u64, String)> = {
        let mut v: Vec<_> = acked.iter().map(|(t, s)| (*s, t.clone())).collect();
        v.sort();
        v
    };
    for m in members {
        let got: Vec<(u64, String)> = texts_of(m, gid)
            .into_iter()
            .map(|(seq, _, text)| (seq, text))
            .collect();
        assert_eq!(got, want, "every member sees every message once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_nodes_converse_through_the_owner() {
    let cluster = Cluster::start().await;
    let (mut alice, mut bob, mut carol, gid) =
        group_of_three(&cluster, "three nodes", [0, 1, 2]).await;
    assert_eq!(bob.server(), cluster.urls[1]);
    let g = hex::encode(&gid);
    let owner = cluster.owner_of(&gid).await;

    let mut acked = BTreeMap::new();
    for round in 0..3 {
        for (name, c) in [
            ("alice", &mut alice),
            ("bob", &mut bob),
            ("carol", &mut carol),
        ] {
            let text = format!("{name} {round}");
            acked.insert(text.clone(), c.send_text(&g, &text).await.unwrap());
        }
    }
    // Live fan-out across nodes: carol (on n3) is caught up, so an entry
    // reaching her now is a push from the owner, whichever node that is.
    let seq = alice.send_text(&g, "live").await.unwrap();
    acked.insert("live".into(), seq);
    live_until(&mut carol, &gid, seq).await;

    // One hop: the owner hands each node the entry for that node's own
    // connections, and no other node passes it on, wherever the members'
    // sessions live. Nothing else moves meanwhile (everyone is connected
    // and caught up), so no other node sends a delivery at all.
    let sessions: Vec<String> =
        futures_util::future::join_all(["alice", "bob", "carol"].map(|u| cluster.session_owner(u)))
            .await;
    let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let out =
        |node: &'static str| cluster.metric(node, "hush_cluster_messages_out_total", "deliver");
    let mut before = Vec::new();
    for &n in &others {
        before.push(out(n).await);
    }
    let mut seq = 0;
    for round in 0..3 {
        let text = format!("one hop {round}");
        seq = bob.send_text(&g, &text).await.unwrap();
        acked.insert(text, seq);
    }
    live_until(&mut carol, &gid, seq).await;
    live_until(&mut alice, &gid, seq).await;
    for (&n, b) in others.iter().zip(before) {
        assert_eq!(
            out(n).await,
            b,
            "{n} passed deliveries on (owner {owner}, sessions on {sessions:?})"
        );
    }

    for c in [&mut alice, &mut bob, &mut carol] {
        c.sync().await.unwrap();
    }
    check_one_history(&cluster.store(), &gid, &acked, &[&alice, &bob, &carol]);

    // The owner sequenced everything sent from the other two nodes: it
    // answered forwarded calls, and they sent them.
    let calls_in = cluster
        .metric(&owner, "hush_cluster_messages_in_total", "group_call")
        .await;
    assert!(
        calls_in >= 6.0,
        "{owner} answered {calls_in} forwarded calls"
    );
    for other in NODES.iter().filter(|n| **n != owner) {
        let pushes = cluster
            .metric(other, "hush_cluster_messages_in_total", "deliver")
            .await;
        assert!(pushes >= 1.0, "{other} got {pushes} delivery batches");
    }
}

/// Handles a client's live events until it has the group's entry `seq`.
async fn live_until(client: &mut Client, gid: &[u8], seq: u64) {
    while !texts_of(client, gid).iter().any(|t| t.0 == seq) {
        let ev = tokio::time::timeout(PATIENCE, client.wait_event())
            .await
            .expect("a live event within the patience")
            .unwrap();
        client.handle(ev).await.unwrap();
    }
}

/// A Welcome pushed to a device connected to a node other than the group's
/// owner crosses as its position only; that node's connection reads it
/// from the store, and the client joins without a Sync of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_reaches_a_member_on_another_node_live() {
    let cluster = Cluster::start().await;
    let mut alice = member(&cluster, "alice", 0).await;
    let gid = alice.create_group("welcome").await.unwrap().group_id;
    let owner = cluster.owner_of(&gid).await;
    let away = NODES.iter().position(|n| *n != owner).unwrap();
    let mut bob = member(&cluster, "bob", away).await;
    bob.sync().await.unwrap();
    alice
        .add_members(&hex::encode(&gid), &["bob".into()])
        .await
        .unwrap();
    while !bob.groups().unwrap().iter().any(|g| g.row.group_id == gid) {
        let ev = tokio::time::timeout(PATIENCE, bob.wait_event())
            .await
            .expect("the Welcome arrives live within the patience")
            .unwrap();
        bob.handle(ev).await.unwrap();
    }
    let seq = alice
        .send_text(&hex::encode(&gid), "welcome, bob")
        .await
        .unwrap();
    live_until(&mut bob, &gid, seq).await;
}

/// alice, bob and carol, starting on the nodes `homes` gives (indices), in
/// a new group made by alice; everyone synced.
async fn group_of_three(
    cluster: &Cluster,
    name: &str,
    homes: [usize; 3],
) -> (Client, Client, Client, Vec<u8>) {
    let mut alice = member(cluster, "alice", homes[0]).await;
    let mut bob = member(cluster, "bob", homes[1]).await;
    let mut carol = member(cluster, "carol", homes[2]).await;
    let gid = alice.create_group(name).await.unwrap().group_id;
    alice
        .add_members(&hex::encode(&gid), &["bob".into(), "carol".into()])
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    (alice, bob, carol, gid)
}

async fn busy_group(cluster: &Cluster) -> (Client, Client, Client, Vec<u8>) {
    group_of_three(cluster, "busy", [0, 1, 2]).await
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

/// A sender's result: its client and the acknowledged (text -> seq).
type Sender = tokio::task::JoinHandle<(Client, BTreeMap<String, u64>)>;

/// A member that keeps sending from its own task until told to stop,
/// reporting how many messages were acknowledged so far; it returns its
/// client and the acknowledged (text -> seq).
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

async fn finish(
    cluster: &Cluster,
    gid: &[u8],
    stop: tokio::sync::watch::Sender<bool>,
    senders: Vec<Sender>,
    mut carol: Client,
) {
    stop.send_replace(true);
    let mut acked = BTreeMap::new();
    let mut clients = Vec::new();
    for s in senders {
        let (c, a) = s.await.expect("sender");
        acked.extend(a);
        clients.push(c);
    }
    for c in clients.iter_mut().chain(std::iter::once(&mut carol)) {
        c.close().await;
        c.connect().await.unwrap();
    }
    let all: Vec<&Client> = clients.iter().chain(std::iter::once(&carol)).collect();
    check_one_history(&cluster.store(), gid, &acked, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_of_a_busy_group_loses_nothing() {
    let mut cluster = Cluster::start().await;
    let (alice, bob, carol, gid) = busy_group(&cluster).await;
    let g = hex::encode(&gid);
    let owner = cluster.owner_of(&gid).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (a, pa) = spawn_counted(alice, &g, "alice", stop.clone());
    let (b, pb) = spawn_counted(bob, &g, "bob", stop.clone());
    traffic(&[&pa, &pb], 5).await;

    cluster.node(&owner).kill9();
    let killed = Instant::now();
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    cluster.wait_view(&survivors).await;
    traffic(&[&pa, &pb], 5).await;
    eprintln!(
        "after kill -9 of {owner}: both senders acknowledged 5 more within {:?}",
        killed.elapsed()
    );
    let new_owner = cluster.owner_of(&gid).await;
    assert_ne!(new_owner, owner);
    finish(&cluster, &gid, stop_tx, vec![a, b], carol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_traffic_loses_nothing() {
    let mut cluster = Cluster::start().await;
    let (alice, bob, carol, gid) = busy_group(&cluster).await;
    let g = hex::encode(&gid);

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (a, pa) = spawn_counted(alice, &g, "alice", stop.clone());
    let (b, pb) = spawn_counted(bob, &g, "bob", stop.clone());
    traffic(&[&pa, &pb], 3).await;
    for id in NODES {
        cluster.node(id).terminate();
        let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != id).collect();
        cluster.wait_view(&rest).await;
        traffic(&[&pa, &pb], 3).await;
        cluster.restart(id);
        cluster.wait_view(&NODES).await;
        traffic(&[&pa, &pb], 3).await;
    }
    finish(&cluster, &gid, stop_tx, vec![a, b], carol).await;
}

/// Who is online in a group, as a node answers `GetPresence` now.
async fn presence_map(client: &mut Client, group: &str) -> BTreeMap<String, bool> {
    client
        .refresh_presence(group)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until the client has a pushed presence for `user` equal to
/// `online`, handling every event on the way (the connection must stay up).
async fn wait_presence(client: &mut Client, user: &str, online: bool) {
    while client.live().presence(user) != Some(online) {
        let ev = tokio::time::timeout(PATIENCE, client.wait_event())
            .await
            .expect("a presence event within the patience")
            .expect("the connection stays up");
        client.handle(ev).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_live_on_their_owners_and_presence_spans_the_cluster() {
    let mut cluster = Cluster::start().await;
    // Every user connects to a node that does not hold its session, so
    // everything it receives crosses from its session's node to its own.
    let names = ["alice", "bob", "carol"];
    let mut owners = BTreeMap::new();
    let mut homes = BTreeMap::new();
    for name in names {
        let owner = cluster.session_owner(name).await;
        let i = NODES.iter().position(|n| *n == owner).unwrap();
        homes.insert(name, NODES[(i + 1) % NODES.len()]);
        owners.insert(name, owner);
    }
    let home = |name: &str| NODES.iter().position(|n| *n == homes[name]).unwrap();
    let (mut alice, mut bob, mut carol, gid) = group_of_three(
        &cluster,
        "spread",
        [home("alice"), home("bob"), home("carol")],
    )
    .await;
    let g = hex::encode(&gid);

    // Each node holds the sessions placement gives it and the connections
    // its clients opened (sessions of earlier, closed connections
    // passivate after the grace).
    let deadline = Instant::now() + PATIENCE;
    for node in &cluster.nodes {
        let want_sessions = owners.values().filter(|o| **o == node.id).count() as u64;
        let want_conns = homes.values().filter(|h| **h == node.id).count() as u64;
        loop {
            let v = Cluster::get(&format!("{}/cluster", node.url))
                .await
                .expect("/cluster");
            let got = (v["sessions"].as_u64(), v["connections"].as_u64());
            if got == (Some(want_sessions), Some(want_conns)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: (sessions, connections) {got:?}, want ({want_sessions}, {want_conns})",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Presence is the session's, so every node answers the same.
    let online: Vec<(String, bool)> = bob.refresh_presence(&g).await.unwrap();
    assert!(online.iter().all(|(_, on)| *on), "{online:?}");
    carol.close().await;
    wait_presence(&mut bob, "carol", false).await;
    let after = presence_map(&mut alice, &g).await;
    assert_eq!(after.get("carol"), Some(&false), "{after:?}");
    assert_eq!(after.get("bob"), Some(&true), "{after:?}");

    // Kill the node holding bob's session (bob is connected elsewhere): his
    // connection stays up, re-attaches to the new owner and misses nothing.
    let bob_owner = owners["bob"].clone();
    cluster.node(&bob_owner).kill9();
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != bob_owner).collect();
    cluster.wait_view(&survivors).await;
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        let text = format!("after the move {i}");
        acked.insert(text.clone(), alice.send_text(&g, &text).await.unwrap());
    }
    let last = *acked.values().max().unwrap();
    while !texts_of(&bob, &gid).iter().any(|t| t.0 == last) {
        let ev = tokio::time::timeout(PATIENCE, bob.wait_event())
            .await
            .expect("a live event within the patience")
            .expect("bob's connection stays up through the move");
        bob.handle(ev).await.unwrap();
    }
    let got: Vec<String> = texts_of(&bob, &gid)
        .into_iter()
        .map(|(_, _, text)| text)
        .collect();
    assert_eq!(
        got,
        acked.keys().cloned().collect::<Vec<_>>(),
        "bob got each message once, in order"
    );
    // Live entries reach bob's connection from the group's owner whether
    // or not it has re-attached yet (the fan-out writes to this node's
    // connections of his device); his new session announces him online
    // once it has.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = presence_map(&mut bob, &g).await;
        assert_eq!(seen.get("alice"), Some(&true), "{seen:?}");
        if seen.get("bob") == Some(&true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob never online again: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Presence after a crash: carol's session and her only connection are on
/// the same node, which dies with `kill -9` (her device with it: she never
/// reconnects). Nobody is left who remembers she was online but the node
/// that takes her session over, her witness: her co-members must be told
/// she is offline, as her session would have on a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_node_dies_with_her_is_announced_offline() {
    let mut cluster = Cluster::start().await;
    let carol_node = cluster.session_owner("carol").await;
    let c = NODES.iter().position(|n| *n == carol_node).unwrap();
    let other = (c + 1) % NODES.len();
    let mut alice = member(&cluster, "alice", other).await;
    let mut bob = member(&cluster, "bob", other).await;
    // carol knows only her session's node: no failover to another one.
    let mut carol =
        Client::open(&cluster.dir.path().join("carol"), Some(&cluster.urls[c])).unwrap();
    carol.register("carol").await.unwrap();
    let gid = alice.create_group("witnessed").await.unwrap().group_id;
    let g = hex::encode(&gid);
    alice
        .add_members(&g, &["bob".into(), "carol".into()])
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let seen = presence_map(&mut bob, &g).await;
    if seen.get("carol") != Some(&true) {
        wait_presence(&mut bob, "carol", true).await;
    }

    cluster.node(&carol_node).kill9();
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != carol_node).collect();
    cluster.wait_view(&survivors).await;
    wait_presence(&mut bob, "carol", false).await;
    let now = presence_map(&mut alice, &g).await;
    assert_eq!(now.get("carol"), Some(&false), "{now:?}");
    assert_eq!(now.get("bob"), Some(&true), "{now:?}");
    drop(carol);
}

/// A node paused (SIGSTOP) for longer than the failure detector's patience
/// and the lease is declared down: the others forget the connections it had
/// attached to their sessions, and place its users' sessions elsewhere
/// meanwhile. When it resumes, a client connected to it must not stay
/// connected and deaf: it gets what was acknowledged during the pause
/// without anything sent after it (no later entry to trigger a gap fill)
/// and without a reconnect of its own making. Both cases: carol's session
/// lives on another node, or on the paused node itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_a_paused_node_misses_nothing_after_it_resumes() {
    paused_node_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_session_on_a_paused_node_misses_nothing_after_it_resumes() {
    paused_node_case(true).await;
}

async fn paused_node_case(session_on_paused_node: bool) {
    let mut cluster = Cluster::start().await;
    // carol connects to the node to be paused; alice and bob to the other
    // two.
    let carol_owner = cluster.session_owner("carol").await;
    let i = NODES.iter().position(|n| *n == carol_owner).unwrap();
    let paused = if session_on_paused_node {
        i
    } else {
        (i + 1) % NODES.len()
    };
    let others: Vec<usize> = (0..NODES.len()).filter(|k| *k != paused).collect();
    let (mut alice, _bob, mut carol, gid) =
        group_of_three(&cluster, "paused", [others[0], others[1], paused]).await;
    let g = hex::encode(&gid);
    let paused_id = NODES[paused];

    let store = cluster.store();
    cluster.node(paused_id).pause(true, &store);
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != paused_id).collect();
    cluster.wait_view(&rest).await;
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        let text = format!("during the pause {i}");
        acked.insert(text.clone(), alice.send_text(&g, &text).await.unwrap());
    }
    cluster.node(paused_id).pause(false, &store);
    cluster.wait_view(&NODES).await;

    let last = *acked.values().max().unwrap();
    while !texts_of(&carol, &gid).iter().any(|t| t.0 == last) {
        let ev = tokio::time::timeout(PATIENCE, carol.wait_event())
            .await
            .expect("carol gets a live event within the patience (not a deaf connection)");
        let handled = match ev {
            Ok(ev) => carol.handle(ev).await,
            Err(e) => Err(e),
        };
        if handled.is_err() {
            // The node may close her connection instead: the client
            // reconnects and resumes, as it would after any cut.
            carol.connect().await.unwrap();
        }
    }
    let got: Vec<(u64, String)> = texts_of(&carol, &gid)
        .into_iter()
        .filter(|(_, _, t)| t.contains("the pause"))
        .map(|(s, _, t)| (s, t))
        .collect();
    let mut want: Vec<(u64, String)> = acked.into_iter().map(|(t, s)| (s, t)).collect();
    want.sort();
    assert_eq!(
        got, want,
        "carol has every acknowledged message once, in order"
    );
}

/// A client whose node died reconnects to a survivor and reads its backlog
/// at once: the Sync is served from the store while the connection's attach
/// to its session still waits for the failure detector to drop the dead
/// node that held the session (slow here on purpose: 5 s probes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_does_not_wait_for_failure_detection() {
    let mut cluster = Cluster::start_probing_every(5_000).await;
    let carol_owner = cluster.session_owner("carol").await;
    let dead = NODES.iter().position(|n| *n == carol_owner).unwrap();
    let others: Vec<usize> = (0..NODES.len()).filter(|k| *k != dead).collect();
    let (mut alice, _bob, mut carol, gid) =
        group_of_three(&cluster, "resume", [others[0], others[1], dead]).await;
    let g = hex::encode(&gid);
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        let text = format!("before the crash {i}");
        acked.insert(text.clone(), alice.send_text(&g, &text).await.unwrap());
    }

    cluster.node(&carol_owner).kill9();
    carol.close().await;
    carol.connect().await.unwrap();
    assert_ne!(carol.server(), cluster.urls[dead]);
    carol.sync().await.unwrap();
    // Resumed while the survivors still count the dead node in (its session
    // is not re-homed yet).
    let survivor = NODES[others[0]];
    assert!(
        cluster.view_of(survivor).await.contains(&carol_owner),
        "the failure detector was faster than this test assumes"
    );
    let got: Vec<(u64, String)> = texts_of(&carol, &gid)
        .into_iter()
        .filter(|(_, _, t)| t.contains("before the crash"))
        .map(|(s, _, t)| (s, t))
        .collect();
    let mut want: Vec<(u64, String)> = acked.iter().map(|(t, s)| (*s, t.clone())).collect();
    want.sort();
    assert_eq!(got, want, "carol read her backlog before the view changed");

    // Once the detector drops the dead node, carol's connection (or a new
    // one, if its attach timed out meanwhile) gets new messages live.
    let survivors: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| *n != carol_owner)
        .collect();
    cluster.wait_view(&survivors).await;
    let seq = alice.send_text(&g, "after the crash").await.unwrap();
    while !texts_of(&carol, &gid).iter().any(|t| t.0 == seq) {
        let ev = tokio::time::timeout(PATIENCE, carol.wait_event())
            .await
            .expect("carol gets a live event within the patience");
        let handled = match ev {
            Ok(ev) => carol.handle(ev).await,
            Err(e) => Err(e),
        };
        if handled.is_err() {
            // Its attach was refused (UNAVAILABLE after the forward
            // timeout) and the connection ended: the client reconnects.
            carol.connect().await.unwrap();
        }
    }
}
