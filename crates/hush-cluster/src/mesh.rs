//! The mesh: membership running over QUIC between real endpoints.
//!
//! One task per node owns the [`Membership`] state machine and drives it:
//! packets arrive as QUIC datagrams, timers from a local queue, and its
//! outgoing packets leave as datagrams on the connection to each peer
//! (dialed on first need with mutual TLS, or the one the peer opened). Each
//! datagram is `[name length u8][sender name][foca packet]`: the name lets an
//! accepted connection be reused for replies, so a pair of nodes normally
//! shares one connection. The name is trusted because the peer's
//! certificate chains to the cluster CA (see [`crate::tls`]).
//!
//! The live view is published on a watch channel; [`Mesh::peers`] reports
//! each peer's address and QUIC RTT (for `/cluster`).
//!
//! Beside the datagrams, the same connections carry the node's own traffic
//! as QUIC streams, opaque to the mesh: [`Mesh::call`] writes a request on a
//! bidirectional stream and reads the whole answer (the whole stream, read
//! with a size limit); [`Mesh::push`] writes one message on a
//! unidirectional stream and waits until the peer has it; a [`Channel`]
//! ([`Mesh::open_channel`]) writes messages one after the other on one
//! unidirectional stream that stays open, each as soon as the stream takes
//! it. A unidirectional stream is a sequence of frames, `[length u32
//! big-endian][message]`, each read with the size limit and handed on in
//! order; a push is a stream of one frame. What arrives comes out of
//! [`Mesh::take_incoming`].
//!
//! Why channels: a push counts as sent once the peer acknowledged it, and a
//! QUIC receiver acknowledges a lone packet only after its `max_ack_delay`
//! (25 ms), so a sender that waits for each push before the next one holds
//! its next message up to 25 ms. The fan-out's batches to a peer go on a
//! channel instead: in order, without waiting, at the cost of not knowing
//! which of the last messages a connection that fails had delivered.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::Timer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::membership::{Membership, NodeId};
use crate::placement::View;
use crate::tls::{node_dns_name, NodeIdentity, TlsError};

/// How a node joins the mesh.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// This node's name (its certificate is for `<name>.hush-cluster`).
    pub name: String,
    /// Where the QUIC endpoint binds (port 0 picks one).
    pub bind: SocketAddr,
    /// Peers to announce to at start: (name, QUIC address).
    pub seeds: Vec<(String, SocketAddr)>,
    /// SWIM probe period; suspicion and failure detection scale with it.
    pub probe_period: Duration,
    /// Expected cluster size (tunes dissemination).
    pub cluster_size: u32,
    /// Distinguishes this run of the node from earlier ones (e.g. the start
    /// time in ms): a restarted node replaces its old identity.
    pub boot: u64,
}

/// A peer as `/cluster` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    pub addr: SocketAddr,
    pub live: bool,
    /// QUIC's smoothed RTT, if there is a connection.
    pub rtt: Option<Duration>,
}

type Conns = Arc<Mutex<HashMap<String, quinn::Connection>>>;

/// The largest message a stream may carry.
pub const MAX_STREAM_MESSAGE: usize = 16 << 20;

/// A stream another node opened to this one.
/// `peer` is the node id the peer's certificate names (authenticated by
/// the handshake), not anything the payload claims.
pub enum StreamMsg {
    /// A request; answer it through `reply` (dropping it resets the stream).
    Call {
        peer: String,
        payload: Vec<u8>,
        reply: Responder,
    },
    /// A one-way message.
    Push { peer: String, payload: Vec<u8> },
}

/// The answering half of a [`StreamMsg::Call`].
pub struct Responder(quinn::SendStream);

impl Responder {
    pub async fn send(mut self, answer: &[u8]) -> Result<(), MeshError> {
        self.0
            .write_all(answer)
            .await
            .map_err(|e| MeshError::Stream(e.to_string()))?;
        self.0
            .finish()
            .map_err(|e| MeshError::Stream(e.to_string()))
    }
}

/// Why a stream exchange with a peer failed. The request may or may not
/// have been acted on: callers retry only idempotent requests.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("peer {0} is not in the live view")]
    UnknownPeer(String),
    #[error("cannot connect to peer: {0}")]
    Connect(String),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("a message of {0} bytes is over the stream limit")]
    TooLarge(usize),
}

/// Messages to one peer on one unidirectional stream, in order (see the
/// module doc). A failed send leaves it useless: open another.
pub struct Channel {
    stream: quinn::SendStream,
}

impl Channel {
    /// Writes `message` as one frame. Returns once the stream has taken it
    /// (QUIC's flow control makes this wait when the peer reads slower than
    /// this node writes), not once the peer has it.
    pub async fn send(&mut self, message: Vec<u8>) -> Result<(), MeshError> {
        let len = u32::try_from(message.len())
            .ok()
            .filter(|&n| n as usize <= MAX_STREAM_MESSAGE)
            .ok_or(MeshError::TooLarge(message.len()))?;
        let mut chunks = [
            bytes::Bytes::copy_from_slice(&len.to_be_bytes()),
            bytes::Bytes::from(message),
        ];
        self.stream
            .write_all_chunks(&mut chunks)
            .await
            .map_err(|e| MeshError::Stream(e.to_string()))
    }
}

/// Reads the frames of a unidirectional stream from `peer` and hands each
/// on as a [`StreamMsg::Push`], in order, until the stream ends; a frame
/// over [`MAX_STREAM_MESSAGE`] or a stream cut inside a frame ends it.
async fn read_frames<R>(mut recv: R, peer: &str, to: &mpsc::Sender<StreamMsg>) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    loop {
        let mut len = [0u8; 4];
        // The stream may end between frames, not inside one.
        if recv.read(&mut len[..1]).await.map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        recv.read_exact(&mut len[1..])
            .await
            .map_err(|e| format!("frame header: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_STREAM_MESSAGE {
            return Err(format!("a frame of {len} bytes, over {MAX_STREAM_MESSAGE}"));
        }
        let mut payload = vec![0; len];
        recv.read_exact(&mut payload)
            .await
            .map_err(|e| format!("frame of {len} bytes: {e}"))?;
        let msg = StreamMsg::Push {
            peer: peer.to_string(),
            payload,
        };
        if to.send(msg).await.is_err() {
            return Ok(());
        }
    }
}

/// A running mesh member.
pub struct Mesh {
    me: NodeId,
    endpoint: quinn::Endpoint,
    view: watch::Receiver<View>,
    live: watch::Receiver<Vec<NodeId>>,
    conns: Conns,
    leave: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    in_tx: mpsc::Sender<Inbound>,
    streams_tx: mpsc::Sender<StreamMsg>,
    streams_rx: Mutex<Option<mpsc::Receiver<StreamMsg>>>,
}

enum Inbound {
    Packet {
        from: String,
        conn: quinn::Connection,
        packet: Vec<u8>,
    },
    Dialed {
        name: String,
        conn: quinn::Connection,
    },
    DialFailed {
        name: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mesh {
    /// Binds the endpoint, announces to the seeds and starts the driver.
    pub async fn start(identity: &NodeIdentity, config: MeshConfig) -> Result<Self, TlsError> {
        let endpoint = identity.endpoint(config.bind)?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| TlsError::Endpoint(e.to_string()))?;
        let me = NodeId {
            name: config.name.clone(),
            addr,
            boot: config.boot,
        };
        let mut membership = Membership::new(
            me.clone(),
            config.cluster_size,
            config.probe_period,
            config.boot,
        );
        let (view_tx, view_rx) = watch::channel(membership.view().clone());
        let (live_tx, live_rx) = watch::channel(Vec::new());
        let (in_tx, in_rx) = mpsc::channel(1024);
        let conns: Conns = Arc::default();
        let (leave_tx, leave_rx) = oneshot::channel();
        let (streams_tx, streams_rx) = mpsc::channel(1024);

        // Accept loop: every accepted connection gets its readers.
        tokio::spawn({
            let endpoint = endpoint.clone();
            let in_tx = in_tx.clone();
            let streams_tx = streams_tx.clone();
            async move {
                while let Some(incoming) = endpoint.accept().await {
                    let in_tx = in_tx.clone();
                    let streams_tx = streams_tx.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => serve_connection(conn, in_tx, streams_tx).await,
                            Err(e) => tracing::debug!(error = %e, "refused a cluster connection"),
                        }
                    });
                }
            }
        });

        for (name, addr) in &config.seeds {
            if *name == me.name {
                continue;
            }
            // The seed's boot is unknown: 0 loses to its real identity.
            let seed = NodeId {
                name: name.clone(),
                addr: *addr,
                boot: 0,
            };
            if let Err(e) = membership.announce(seed) {
                tracing::warn!(error = %e, "announce to seed failed");
            }
        }

        let driver = Driver {
            me: me.clone(),
            membership,
            endpoint: endpoint.clone(),
            conns: conns.clone(),
            dialing: HashSet::new(),
            in_tx: in_tx.clone(),
            streams_tx: streams_tx.clone(),
            timers: BinaryHeap::new(),
            timer_slab: BTreeMap::new(),
            next_timer: 0,
            view_tx,
            live_tx,
        };
        let task = tokio::spawn(driver.run(in_rx, leave_rx));
        Ok(Self {
            me,
            endpoint,
            view: view_rx,
            live: live_rx,
            conns,
            leave: Mutex::new(Some(leave_tx)),
            task: Mutex::new(Some(task)),
            in_tx,
            streams_tx,
            streams_rx: Mutex::new(Some(streams_rx)),
        })
    }

    /// The streams peers open to this node. The first call takes the
    /// receiver; later calls get `None`.
    pub fn take_incoming(&self) -> Option<mpsc::Receiver<StreamMsg>> {
        lock(&self.streams_rx).take()
    }

    /// Sends `request` to `peer` on a new bidirectional stream and reads its
    /// whole answer (at most [`MAX_STREAM_MESSAGE`] bytes).
    pub async fn call(&self, peer: &str, request: &[u8]) -> Result<Vec<u8>, MeshError> {
        let conn = self.connection(peer).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| self.drop_failed(peer, &conn, e))?;
        send.write_all(request)
            .await
            .map_err(|e| MeshError::Stream(e.to_string()))?;
        send.finish()
            .map_err(|e| MeshError::Stream(e.to_string()))?;
        recv.read_to_end(MAX_STREAM_MESSAGE)
            .await
            .map_err(|e| MeshError::Stream(e.to_string()))
    }

    /// Sends `message` to `peer` on a new unidirectional stream and waits
    /// until the peer has all of it.
    pub async fn push(&self, peer: &str, message: &[u8]) -> Result<(), MeshError> {
        let mut channel = self.open_channel(peer).await?;
        channel.send(message.to_vec()).await?;
        let mut send = channel.stream;
        send.finish()
            .map_err(|e| MeshError::Stream(e.to_string()))?;
        // Wait until the peer has the whole message, so that a batch counts
        // as sent only when it arrived.
        send.stopped()
            .await
            .map_err(|e| MeshError::Stream(e.to_string()))?;
        Ok(())
    }

    /// Opens a [`Channel`] to `peer`: one unidirectional stream for many
    /// messages, in order.
    pub async fn open_channel(&self, peer: &str) -> Result<Channel, MeshError> {
        let conn = self.connection(peer).await?;
        let send = conn
            .open_uni()
            .await
            .map_err(|e| self.drop_failed(peer, &conn, e))?;
        Ok(Channel { stream: send })
    }

    fn drop_failed(
        &self,
        peer: &str,
        conn: &quinn::Connection,
        e: quinn::ConnectionError,
    ) -> MeshError {
        let mut conns = lock(&self.conns);
        if conns
            .get(peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(peer);
        }
        MeshError::Stream(e.to_string())
    }

    /// The connection to a live peer, dialed if there is none.
    async fn connection(&self, peer: &str) -> Result<quinn::Connection, MeshError> {
        if let Some(c) = lock(&self.conns).get(peer) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr = self
            .live
            .borrow()
            .iter()
            .find(|p| p.name == peer)
            .map(|p| p.addr)
            .ok_or_else(|| MeshError::UnknownPeer(peer.to_string()))?;
        let conn = self
            .endpoint
            .connect(addr, &node_dns_name(peer))
            .map_err(|e| MeshError::Connect(e.to_string()))?
            .await
            .map_err(|e| MeshError::Connect(e.to_string()))?;
        lock(&self.conns).insert(peer.to_string(), conn.clone());
        tokio::spawn(serve_connection(
            conn.clone(),
            self.in_tx.clone(),
            self.streams_tx.clone(),
        ));
        Ok(conn)
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The QUIC address peers reach this node at.
    pub fn local_addr(&self) -> SocketAddr {
        self.me.addr
    }

    /// Follows the live view.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Every peer known live, with its RTT when connected.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let conns = lock(&self.conns);
        self.live
            .borrow()
            .iter()
            .map(|p| PeerStatus {
                name: p.name.clone(),
                addr: p.addr,
                live: true,
                rtt: conns.get(&p.name).map(|c| c.rtt()),
            })
            .collect()
    }

    /// Leaves the cluster (peers learn it at once), then closes the endpoint.
    pub async fn leave(&self) {
        if let Some(tx) = lock(&self.leave).take() {
            let _ = tx.send(());
        }
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.endpoint.close(0u32.into(), b"leaving");
    }
}

impl Drop for Mesh {
    /// Without [`Mesh::leave`], this is a crash as peers see it: no goodbye,
    /// the endpoint goes silent, SWIM must detect it.
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        self.endpoint.close(1u32.into(), b"gone");
    }
}

/// Everything that arrives on one connection: membership datagrams, and the
/// node's own streams.
async fn serve_connection(
    conn: quinn::Connection,
    to: mpsc::Sender<Inbound>,
    streams: mpsc::Sender<StreamMsg>,
) {
    // Who the certificate says the peer is; streams carry it to the node.
    let peer = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| crate::tls::node_id_of(&chain));
    let Some(peer) = peer else {
        tracing::warn!("a cluster peer's certificate names no node; closing");
        conn.close(0u32.into(), b"no node name in the certificate");
        return;
    };
    let bi = {
        let conn = conn.clone();
        let streams = streams.clone();
        let peer = peer.clone();
        async move {
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                let streams = streams.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    match recv.read_to_end(MAX_STREAM_MESSAGE).await {
                        Ok(payload) => {
                            let reply = Responder(send);
                            let msg = StreamMsg::Call {
                                peer,
                                payload,
                                reply,
                            };
                            let _ = streams.send(msg).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "bad cluster request stream"),
                    }
                });
            }
        }
    };
    let uni = {
        let conn = conn.clone();
        async move {
            while let Ok(mut recv) = conn.accept_uni().await {
                let streams = streams.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    if let Err(e) = read_frames(&mut recv, &peer, &streams).await {
                        tracing::debug!(%peer, error = %e, "bad cluster push stream");
                        let _ = recv.stop(1u32.into());
                    }
                });
            }
        }
    };
    tokio::join!(read_datagrams(conn, to), bi, uni);
}

async fn read_datagrams(conn: quinn::Connection, to: mpsc::Sender<Inbound>) {
    while let Ok(d) = conn.read_datagram().await {
        let Some((&len, rest)) = d.split_first() else {
            continue;
        };
        let len = usize::from(len);
        if rest.len() < len {
            continue;
        }
        let Ok(from) = std::str::from_utf8(&rest[..len]) else {
            continue;
        };
        let msg = Inbound::Packet {
            from: from.to_string(),
            conn: conn.clone(),
            packet: rest[len..].to_vec(),
        };
        if to.send(msg).await.is_err() {
            return;
        }
    }
}

struct Driver {
    me: NodeId,
    membership: Membership,
    endpoint: quinn::Endpoint,
    conns: Conns,
    /// Peers being dialed: packets to them are dropped meanwhile (SWIM
    /// tolerates loss) instead of opening more connections.
    dialing: HashSet<String>,
    in_tx: mpsc::Sender<Inbound>,
    streams_tx: mpsc::Sender<StreamMsg>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_slab: BTreeMap<u64, Timer<NodeId>>,
    next_timer: u64,
    view_tx: watch::Sender<View>,
    live_tx: watch::Sender<Vec<NodeId>>,
}

impl Driver {
    async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, mut leave: oneshot::Receiver<()>) {
        self.flush();
        loop {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                msg = inbound.recv() => match msg {
                    Some(Inbound::Packet { from, conn, packet }) => {
                        lock(&self.conns).entry(from).or_insert(conn);
                        metrics::counter!("hush_cluster_packets_in_total").increment(1);
                        if let Err(e) = self.membership.handle_data(&packet) {
                            metrics::counter!("hush_cluster_bad_packets_total").increment(1);
                            tracing::debug!(error = %e, "bad membership packet");
                        }
                    }
                    Some(Inbound::Dialed { name, conn }) => {
                        self.dialing.remove(&name);
                        lock(&self.conns).insert(name, conn);
                    }
                    Some(Inbound::DialFailed { name }) => {
                        self.dialing.remove(&name);
                    }
                    None => return,
                },
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    while let Some(Reverse((at, id))) = self.timers.peek().copied() {
                        if at > now {
                            break;
                        }
                        self.timers.pop();
                        if let Some(timer) = self.timer_slab.remove(&id) {
                            if let Err(e) = self.membership.handle_timer(timer) {
                                tracing::debug!(error = %e, "membership timer");
                            }
                        }
                    }
                }
                _ = &mut leave => {
                    let _ = self.membership.leave();
                    self.flush();
                    // Give the goodbye datagrams a moment on the wire.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
            self.flush();
        }
    }

    /// Carries out what the state machine asked for and publishes the view.
    fn flush(&mut self) {
        let effects = self.membership.take_effects();
        for (timer, after) in effects.timers {
            let id = self.next_timer;
            self.next_timer += 1;
            self.timer_slab.insert(id, timer);
            self.timers.push(Reverse((Instant::now() + after, id)));
        }
        for (to, packet) in effects.send {
            self.send(to, packet);
        }
        let view = self.membership.view();
        if *self.view_tx.borrow() != *view {
            // Peers that left the view: close their connections, so that
            // streams still waiting on them fail now, not at the idle
            // timeout.
            {
                let old = self.view_tx.borrow();
                let mut conns = lock(&self.conns);
                for gone in old.members.iter().filter(|m| !view.members.contains(*m)) {
                    if let Some(conn) = conns.remove(gone) {
                        conn.close(2u32.into(), b"left the view");
                    }
                }
            }
            metrics::counter!("hush_cluster_view_changes_total").increment(1);
            metrics::gauge!("hush_cluster_members").set(view.members.len() as f64);
            tracing::info!(epoch = view.epoch, members = ?view.members, "cluster view changed");
            self.live_tx
                .send_replace(self.membership.peers().cloned().collect());
            self.view_tx.send_replace(view.clone());
        }
    }

    fn send(&mut self, to: NodeId, packet: Vec<u8>) {
        let Ok(name_len) = u8::try_from(self.me.name.len()) else {
            return;
        };
        let mut datagram = Vec::with_capacity(1 + self.me.name.len() + packet.len());
        datagram.push(name_len);
        datagram.extend_from_slice(self.me.name.as_bytes());
        datagram.extend_from_slice(&packet);
        metrics::counter!("hush_cluster_packets_out_total").increment(1);
        let existing = lock(&self.conns).get(&to.name).cloned();
        if let Some(conn) = existing {
            if conn.close_reason().is_none() {
                if let Err(e) = conn.send_datagram(datagram.into()) {
                    tracing::debug!(peer = %to.name, error = %e, "datagram not sent");
                }
                return;
            }
            lock(&self.conns).remove(&to.name);
        }
        if !self.dialing.insert(to.name.clone()) {
            return;
        }
        // Dial; the packet goes once connected.
        let endpoint = self.endpoint.clone();
        let in_tx = self.in_tx.clone();
        let streams_tx = self.streams_tx.clone();
        tokio::spawn(async move {
            let connecting = endpoint
                .connect(to.addr, &node_dns_name(&to.name))
                .map_err(|e| e.to_string());
            let connected = match connecting {
                Ok(c) => c.await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match connected {
                Ok(conn) => {
                    let _ = conn.send_datagram(datagram.into());
                    let _ = in_tx
                        .send(Inbound::Dialed {
                            name: to.name.clone(),
                            conn: conn.clone(),
                        })
                        .await;
                    serve_connection(conn, in_tx, streams_tx).await;
                }
                Err(e) => {
                    tracing::debug!(peer = %to.name, error = %e, "dial failed");
                    let _ = in_tx.send(Inbound::DialFailed { name: to.name }).await;
                }
            }
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = (message.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(message);
        out
    }

    async fn read_all(stream: &[u8]) -> (Vec<Vec<u8>>, Result<(), String>) {
        let (tx, mut rx) = mpsc::channel(16);
        let result = read_frames(stream, "n2", &tx).await;
        drop(tx);
        let mut got = Vec::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                StreamMsg::Push { peer, payload } => {
                    assert_eq!(peer, "n2");
                    got.push(payload);
                }
                StreamMsg::Call { .. } => panic!("a frame became a call"),
            }
        }
        (got, result)
    }

    #[tokio::test]
    async fn frames_come_out_in_order_and_a_stream_may_end_between_them() {
        let mut stream = frame(b"first");
        stream.extend(frame(b""));
        stream.extend(frame(b"third"));
        let (got, result) = read_all(&stream).await;
        assert_eq!(result, Ok(()));
        assert_eq!(got, [b"first".to_vec(), Vec::new(), b"third".to_vec()]);
        assert_eq!(read_all(&[]).await, (Vec::new(), Ok(())));
    }

    #[tokio::test]
    async fn a_frame_cut_short_or_over_the_limit_ends_the_stream_with_an_error() {
        // The header cut after two bytes, then a body cut short: what came
        // before is handed on, the torn frame is not.
        let mut torn_header = frame(b"kept");
        torn_header.extend_from_slice(&[0, 0]);
        let (got, result) = read_all(&torn_header).await;
        assert_eq!(got, [b"kept".to_vec()]);
        assert!(result.unwrap_err().contains("frame header"));

        let mut torn_body = frame(b"kept");
        torn_body.extend_from_slice(&frame(b"twelve bytes")[..10]);
        let (got, result) = read_all(&torn_body).await;
        assert_eq!(got, [b"kept".to_vec()]);
        assert!(result.unwrap_err().contains("frame of 12 bytes"));

        // A length over the limit is refused before anything is allocated.
        let over = ((MAX_STREAM_MESSAGE + 1) as u32).to_be_bytes();
        let (got, result) = read_all(&over).await;
        assert!(got.is_empty());
        assert!(result.unwrap_err().contains("over"));
    }
}
