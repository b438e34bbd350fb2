//! A light WebSocket connection to `/v1/ws`: one task per connection that
//! reads and writes, token auth by subprotocol (as the SDK does), protobuf
//! frames. Replies go to a waiting request or to the connection's
//! [`Push`] handler; pushed frames always go to the handler, called inline
//! on the connection task with the receive time, so nothing queues between
//! the socket and the measurement.
//!
//! The client socket can be bound to a source address (127.0.0.x) before
//! connecting, which spreads connections over address pairs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hush_client::http::Token;
use hush_proto::{client_frame, server_frame, ClientFrame, Message as _, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::clock::now_ns;
use crate::sync::lock;

/// How long a request waits for its reply (and a setup step for its push:
/// `SyncCaughtUp`, a Welcome).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A failover connection that found no node answering in a whole round
/// waits this long before the next round, doubling up to
/// [`MAX_RECONNECT_BACKOFF`].
const FIRST_RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// A first connection (TCP and the WebSocket upgrade) fails after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A reconnection attempt gives up on a node after this and tries the
/// next: a paused node accepts TCP (the kernel does) but never upgrades,
/// and a partitioned one never answers the SYN.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection failure.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("server error {code:?}: {message}")]
    Server {
        code: hush_proto::ErrorCode,
        message: String,
    },
    #[error("connection closed")]
    Closed,
    #[error("request timed out")]
    Timeout,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Receives what the server sends that no request waits for.
pub trait Push: Send + Sync + 'static {
    /// A pushed frame (request_id 0), received at `at_ns` (Unix ns).
    fn on_push(&self, frame: server_frame::Body, at_ns: u64);
    /// A reply to a frame sent with [`Conn::send_with_id`].
    fn on_reply(&self, request_id: u64, frame: server_frame::Body, at_ns: u64) {
        let _ = (request_id, frame, at_ns);
    }
    /// The socket to gateway `server` (index in the failover list, else 0)
    /// ended at `at_ns`. With failover, a reconnect follows.
    fn on_closed(&self, reason: &str, server: usize, at_ns: u64) {
        let _ = (reason, server, at_ns);
    }
    /// A failover connection is up again on gateway `server` after
    /// `attempts` tries, at `at_ns`; nothing has been written on it yet.
    /// Resume here: `Sync` from the cursors, resend unacknowledged sends.
    fn on_reconnected(&self, link: &Link, server: usize, attempts: u32, at_ns: u64) {
        let _ = (link, server, attempts, at_ns);
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<server_frame::Body>>>>;

/// The write side of a connection, valid across reconnections: frames go
/// to whichever socket is current.
#[derive(Clone)]
pub struct Link {
    out: mpsc::UnboundedSender<WsMessage>,
}

impl Link {
    /// A link whose frames land in the returned receiver (unit tests).
    #[cfg(test)]
    pub fn for_test() -> (Self, mpsc::UnboundedReceiver<WsMessage>) {
        let (out, rx) = mpsc::unbounded_channel();
        (Self { out }, rx)
    }

    /// Sends a frame whose reply goes to the handler's `on_reply`.
    pub fn send_with_id(&self, request_id: u64, body: client_frame::Body) -> Result<(), ConnError> {
        let frame = ClientFrame {
            request_id,
            body: Some(body),
        };
        self.out
            .send(WsMessage::Binary(frame.encode_to_vec().into()))
            .map_err(|_| ConnError::Closed)
    }
}

/// Where a connection may go when its node goes away: every node's gateway
/// (the cluster's nodes), tried in turn after the one that failed, as the
/// SDK's `next_server()` does.
#[derive(Debug, Clone)]
pub struct Failover {
    pub addrs: Arc<Vec<SocketAddr>>,
}

/// One authenticated WebSocket connection.
pub struct Conn {
    link: Link,
    waiters: Waiters,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gateway address of a server URL (`http://host:port`).
pub async fn resolve(server: &str) -> Result<SocketAddr, ConnError> {
    let hostport = server
        .trim_end_matches('/')
        .strip_prefix("http://")
        .unwrap_or(server);
    tokio::net::lookup_host(hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConnError::Connect {
            addr: server.into(),
            detail: "cannot resolve".into(),
        })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// tungstenite zero-fills the free part of its read buffer before every
/// read (128 KiB by default); with a few hundred bytes per read that memset
/// was 34-40% of the generator's CPU (perf on the generator, fanout at
/// 3,000 msg/s), CPU the node under test then lacked. 8 KiB still holds
/// dozens of frames per read.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Opens `ws://{addr}/v1/ws` from `source` (if given) with the token as
/// subprotocol, within `timeout`.
async fn open_ws(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: &Token,
    timeout: Duration,
) -> Result<Ws, ConnError> {
    tokio::time::timeout(timeout, open_ws_now(addr, source, token))
        .await
        .map_err(|_| ConnError::Connect {
            addr: addr.to_string(),
            detail: format!("no upgrade within {timeout:?}"),
        })?
}

async fn open_ws_now(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: &Token,
) -> Result<Ws, ConnError> {
    let cerr = |detail: String| ConnError::Connect {
        addr: addr.to_string(),
        detail,
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| cerr(format!("socket: {e}")))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| cerr(format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| cerr(format!("tcp: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(|e| cerr(e.to_string()))?;
    let protocols = format!(
        "{}, {}{}",
        hush_proto::auth::WS_PROTOCOL,
        hush_proto::auth::WS_TOKEN_PREFIX,
        token.0
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).map_err(|e| cerr(e.to_string()))?,
    );
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| cerr(format!("upgrade: {e}")))?;
    Ok(ws)
}

/// Why one socket's loop ended.
enum End {
    /// The client closed (or dropped) the connection: no reconnect.
    Client(String),
    /// The server closed it or it failed.
    Lost(String),
}

/// Reads and writes one socket until it ends.
async fn run_socket(
    ws: Ws,
    out_rx: &mut mpsc::UnboundedReceiver<WsMessage>,
    waiters: &Waiters,
    handler: &Arc<dyn Push>,
    closing: &AtomicBool,
) -> End {
    let (mut sink, mut source) = ws.split();
    let lost = |r: String| {
        if closing.load(Ordering::SeqCst) {
            End::Client(r)
        } else {
            End::Lost(r)
        }
    };
    loop {
        tokio::select! {
            m = source.next() => {
                let m = match m {
                    None => return lost("closed".to_string()),
                    Some(Err(e)) => return lost(format!("read: {e}")),
                    Some(Ok(m)) => m,
                };
                let at = now_ns();
                match m {
                    WsMessage::Binary(b) => {
                        let Ok(frame) = ServerFrame::decode(b.as_ref()) else {
                            tracing::warn!("undecodable server frame");
                            continue;
                        };
                        let Some(body) = frame.body else { continue };
                        if frame.request_id == 0 {
                            handler.on_push(body, at);
                        } else {
                            let w = lock(waiters).remove(&frame.request_id);
                            match w {
                                Some(tx) => { let _ = tx.send(body); }
                                None => handler.on_reply(frame.request_id, body, at),
                            }
                        }
                    }
                    WsMessage::Ping(p) => {
                        let sent = sink.send(WsMessage::Pong(p)).await;
                        if sent.is_err() {
                            return lost("write failed".to_string());
                        }
                    }
                    WsMessage::Close(f) => {
                        return lost(match f {
                            Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                            None => "closed by server".to_string(),
                        });
                    }
                    _ => {}
                }
            }
            m = out_rx.recv() => {
                let Some(m) = m else {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    return End::Client("closed by client".to_string());
                };
                if let Err(e) = sink.send(m).await {
                    return lost(format!("write: {e}"));
                }
            }
        }
    }
}

impl Conn {
    /// Opens `ws://{addr}/v1/ws` from `source` (if given) with the token as
    /// subprotocol, and starts the connection task. The connection ends
    /// when the socket does.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        token: &Token,
        handler: Arc<dyn Push>,
    ) -> Result<Conn, ConnError> {
        Self::connect_with(addr, None, source, token, handler).await
    }

    /// Like [`Conn::connect`], but when the socket is lost (the node
    /// closed it, went away with 4004, or died) the connection reconnects
    /// to the next node of `failover` that answers (backoff 50 ms .. 1 s
    /// after a round of refusals) with the same token, and tells the
    /// handler ([`Push::on_reconnected`]) so it can resume by cursor and
    /// resend what was in flight. Frames queued for the lost socket are
    /// dropped; the handler resends what matters.
    pub async fn connect_with(
        addr: SocketAddr,
        failover: Option<Failover>,
        source: Option<IpAddr>,
        token: &Token,
        handler: Arc<dyn Push>,
    ) -> Result<Conn, ConnError> {
        let ws = open_ws(addr, source, token, CONNECT_TIMEOUT).await?;
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let link = Link { out };
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let mut server = failover
            .as_ref()
            .and_then(|f| f.addrs.iter().position(|a| *a == addr))
            .unwrap_or(0);
        let task = {
            let waiters = waiters.clone();
            let closed = closed.clone();
            let closing = closing.clone();
            let link = link.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let mut ws = ws;
                loop {
                    let end = run_socket(ws, &mut out_rx, &waiters, &handler, &closing).await;
                    lock(&waiters).clear();
                    let reason = match end {
                        End::Client(r) => {
                            closed.store(true, Ordering::SeqCst);
                            handler.on_closed(&r, server, now_ns());
                            return;
                        }
                        End::Lost(r) => r,
                    };
                    let Some(fo) = failover.as_ref().filter(|f| !f.addrs.is_empty()) else {
                        closed.store(true, Ordering::SeqCst);
                        handler.on_closed(&reason, server, now_ns());
                        return;
                    };
                    handler.on_closed(&reason, server, now_ns());
                    // Frames queued for the lost socket: the handler resends
                    // what must survive (sends) once reconnected.
                    while out_rx.try_recv().is_ok() {}
                    let n = fo.addrs.len();
                    let mut backoff = FIRST_RECONNECT_BACKOFF;
                    let mut attempts = 0u32;
                    let mut next = server;
                    ws = loop {
                        next = (next + 1) % n;
                        attempts += 1;
                        match open_ws(fo.addrs[next], source, &token, RECONNECT_TIMEOUT).await {
                            Ok(ws) => break ws,
                            Err(e) => {
                                tracing::debug!(error = %e, "reconnect attempt failed");
                                if (attempts as usize).is_multiple_of(n) {
                                    tokio::time::sleep(backoff).await;
                                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                                }
                            }
                        }
                        if closing.load(Ordering::SeqCst) {
                            closed.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    server = next;
                    handler.on_reconnected(&link, server, attempts, now_ns());
                }
            })
        };
        Ok(Conn {
            link,
            waiters,
            next_id: AtomicU64::new(1),
            closed,
            closing,
            task,
        })
    }

    /// The write side, for handlers and senders.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a frame whose reply goes to the handler's `on_reply`.
    pub fn send_with_id(&self, request_id: u64, body: client_frame::Body) -> Result<(), ConnError> {
        self.link.send_with_id(request_id, body)
    }

    /// Sends a request and waits for its reply; an `Error` reply is `Err`.
    pub async fn request(&self, body: client_frame::Body) -> Result<server_frame::Body, ConnError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id, tx);
        self.send_with_id(id, body)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Err(_) => {
                lock(&self.waiters).remove(&id);
                Err(ConnError::Timeout)
            }
            Ok(Err(_)) => Err(ConnError::Closed),
            Ok(Ok(server_frame::Body::Error(e))) => Err(ConnError::Server {
                code: e.error_code(),
                message: e.message,
            }),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// Asks for delivery: every group's backlog after the stored cursors,
    /// then live events (the handler sees `SyncCaughtUp`).
    pub fn start_sync(&self) -> Result<(), ConnError> {
        self.send_with_id(
            0,
            client_frame::Body::Sync(hush_proto::v1::Sync {
                cursors: Vec::new(),
                inbox_after: 0,
            }),
        )
    }

    /// Closes the connection (a Close frame after what is queued).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.link.out.send(WsMessage::Close(None));
    }
}
