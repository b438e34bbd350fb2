//! What the in-process node tests share: a node on 127.0.0.1:0 with a
//! manual clock, and its URL.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use hush_node::{Clock as _, Config, ManualClock, RunningNode, SystemClock};
use hush_proto::server_frame::Body as S;
use hush_proto::{auth, Message as _};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Safety net for every wait; never reached when the node behaves.
pub const WAIT: Duration = Duration::from_secs(30);

/// Starts a node on 127.0.0.1:0 with a manual clock, after `tweak` adjusted
/// the config.
pub async fn start_node(
    tweak: impl FnOnce(&mut Config),
) -> (RunningNode, Arc<ManualClock>, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.node.data = dir.path().join("node");
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.workers = 2;
    // The manual clock moves only when a test moves it, so per-connection
    // token buckets never refill by themselves: leave room unless a test is
    // about the rate limit.
    config.limits.rate_burst = 100_000.0;
    // The same for the account endpoints' buckets (tests/abuse.rs is about
    // those and sets its own).
    config.rate_limits.ip_burst = 100_000.0;
    config.rate_limits.account_burst = 100_000.0;
    tweak(&mut config);
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let node = hush_node::start(config, clock.clone())
        .await
        .expect("node starts");
    (node, clock, dir)
}

pub fn url(node: &RunningNode) -> String {
    format!("http://{}", node.addr)
}

/// A registered SDK client for `handle` (device state under `root`), on the
/// default transport.
pub async fn client(
    root: &std::path::Path,
    url: &str,
    handle: &str,
) -> hush_client::client::Client {
    client_over(root, url, handle, hush_client::conn::Transport::default()).await
}

/// Registered clients "alice" and "bob" (device state under `root`), and
/// a group `name` alice created and added bob to, once bob has its
/// Welcome: (alice, bob, group id, the id in hex as the SDK names groups).
pub async fn alice_and_bob(
    root: &std::path::Path,
    url: &str,
    name: &str,
) -> (
    hush_client::client::Client,
    hush_client::client::Client,
    Vec<u8>,
    String,
) {
    let mut alice = client(root, url, "alice").await;
    let mut bob = client(root, url, "bob").await;
    let gid = alice.create_group(name).await.expect("group").group_id;
    let g = hex::encode(&gid);
    alice
        .add_members(&g, &["bob".to_string()])
        .await
        .expect("add")
        .expect("added");
    pump_until(&mut bob, "bob's welcome", |c| is_member(c, &gid)).await;
    (alice, bob, gid, g)
}

/// A registered SDK client for `handle` on the given transport.
pub async fn client_over(
    root: &std::path::Path,
    url: &str,
    handle: &str,
    transport: hush_client::conn::Transport,
) -> hush_client::client::Client {
    let mut c =
        hush_client::client::Client::open(&root.join(handle), Some(url)).expect("open client");
    c.set_transport(transport);
    c.register(handle).await.expect("register");
    c
}

/// Processes pushed events until `done` holds (at most [`WAIT`]).
pub async fn pump_until(
    c: &mut hush_client::client::Client,
    what: &str,
    done: impl Fn(&hush_client::client::Client) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(c) {
        let ev = tokio::time::timeout_at(deadline, c.wait_event())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        c.handle(ev)
            .await
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    }
}

/// Logs a device in over HTTP with the SDK's client; returns a fresh token.
pub async fn login(url: &str, id: &hush_client::store::Identity) -> String {
    let http = hush_client::http::Http::new(url).expect("server url");
    let challenge = http
        .login_challenge(&id.device_id)
        .await
        .expect("challenge");
    let payload = hush_proto::auth::login_payload(&challenge);
    let signature = hush_client::mls::sign_raw(&id.keys, &payload).expect("sign");
    let (token, _) = http
        .login(&id.device_id, challenge, signature)
        .await
        .expect("login");
    token.0
}

/// Whether the client is an active member of the group.
pub fn is_member(c: &hush_client::client::Client, gid: &[u8]) -> bool {
    c.db()
        .group(gid)
        .expect("db")
        .is_some_and(|g| g.status == hush_client::store::GroupStatus::Active)
}

/// Whether the client's recent log of the group has this text.
/// Whether the client has processed the group's timeline up to `seq`.
pub fn processed_to(c: &hush_client::client::Client, gid: &[u8], seq: u64) -> bool {
    c.db()
        .group(gid)
        .expect("db")
        .is_some_and(|g| g.last_seq >= seq)
}

pub fn has_text(c: &hush_client::client::Client, gid: &[u8], text: &str) -> bool {
    c.db()
        .recent_log(gid, 50)
        .expect("log")
        .iter()
        .any(|l| l.kind == "text" && l.body == text)
}

/// A free UDP port on 127.0.0.1 (for a node's QUIC endpoint).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

/// The `[[cluster.nodes]]` entries of `(id, quic)` nodes (gateways on
/// 127.0.0.1:0, data in the node's own directory).
pub fn cluster_entries(nodes: &[(&str, SocketAddr)]) -> Vec<hush_node::config::ClusterNode> {
    nodes
        .iter()
        .map(|(id, quic)| hush_node::config::ClusterNode {
            id: (*id).into(),
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic: *quic,
            data: None,
        })
        .collect()
}

/// A bare mesh peer named `name` on `bind` that joins through `seed`
/// (a node started in-process), once both see each other.
pub async fn mesh_peer(
    identity: &hush_cluster::tls::NodeIdentity,
    name: &str,
    bind: SocketAddr,
    seed: (&str, SocketAddr),
) -> hush_cluster::mesh::Mesh {
    let mesh = hush_cluster::mesh::Mesh::start(
        identity,
        hush_cluster::mesh::MeshConfig {
            name: name.into(),
            bind,
            seeds: vec![(seed.0.into(), seed.1)],
            probe_period: Duration::from_millis(100),
            cluster_size: 2,
            boot: 1,
        },
    )
    .await
    .expect("mesh");
    let mut view = mesh.view();
    tokio::time::timeout(WAIT, view.wait_for(|v| v.members.len() == 2))
        .await
        .expect("the peer and the node see each other in time")
        .expect("view");
    mesh
}

/// A node started as its own process, killed and reaped when the test ends
/// however it ends: `std::process::Child` does neither on drop, so a test
/// that failed half-way left its node running (one was found still up 40
/// minutes after a red CI rehearsal). A test that stops the node itself
/// (SIGTERM, then `wait`) is unaffected: killing a reaped child is a no-op.
pub struct NodeProcess(pub std::process::Child);

impl std::ops::Deref for NodeProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A raw WebSocket of `token`'s device over a socket with a small receive
/// buffer; it reads only when the test asks.
pub async fn raw_ws(addr: std::net::SocketAddr, token: &str, recv_buffer: Option<u32>) -> RawWs {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    let tcp = socket.connect(addr).await.expect("connect");
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    let protocols = format!("{}, {}{token}", auth::WS_PROTOCOL, auth::WS_TOKEN_PREFIX);
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).expect("header"),
    );
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake in time")
        .expect("upgrade");
    ws
}

/// [`raw_ws`] once the node has answered AuthOk.
pub async fn raw_ws_authed(
    addr: std::net::SocketAddr,
    token: &str,
    recv_buffer: Option<u32>,
) -> RawWs {
    let mut ws = raw_ws(addr, token, recv_buffer).await;
    assert!(matches!(
        next_frame(&mut ws).await.map(|f| f.body),
        Ok(Some(S::AuthOk(_)))
    ));
    ws
}

/// The next server frame, or the close code when the connection closes.
pub async fn next_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<hush_proto::ServerFrame, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                return Ok(
                    hush_proto::ServerFrame::decode(b.as_ref()).expect("server frame decodes")
                )
            }
            Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}
