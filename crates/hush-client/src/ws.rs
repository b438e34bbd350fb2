//! The WebSocket half of the protocol: one connection, requests correlated
//! with their responses by `request_id`, pushed events on a queue.
//!
//! Two tasks own the socket: a reader that decodes `ServerFrame`s and routes
//! them (responses to the waiting request, pushes to the event queue), and a
//! writer fed by a channel. The event queue is unbounded on purpose: a client
//! awaiting a response while many events arrive must keep reading, or the
//! response behind them would never be seen. The server bounds what it sends
//! (slow consumers are cut off), so memory stays bounded by its limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hush_proto::v1::{EphemeralEvent, GroupEvent, InboxEvent};
use hush_proto::{client_frame, server_frame, ClientFrame, Message as _, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::{ClientError, Result};
use crate::http::{ws_url, Token};
use crate::tls::Trust;

/// How long a request waits for its response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `close` waits for the server's Close frame in reply to ours.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `close` then waits for the writer to send what is queued.
const CLOSE_WRITER_TIMEOUT: Duration = Duration::from_secs(1);

/// tungstenite zero-fills the free part of its read buffer before every
/// read (128 KiB by default): with frames of a few hundred bytes that
/// memset dominated a client's CPU (measured in hush-loadtest, which reads
/// the same way). A frame larger than the buffer still arrives whole: the
/// buffer grows for it.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// A frame the server pushed (request_id 0), or the end of the connection.
#[derive(Debug)]
pub enum Pushed {
    /// A timeline entry of a group.
    Group(GroupEvent),
    /// An inbox item (a Welcome).
    Inbox(InboxEvent),
    /// The backlog of the last Sync has been sent.
    CaughtUp,
    /// A live-only, never stored message of a group (typing).
    Ephemeral(EphemeralEvent),
    /// A co-member came online or went offline.
    Presence {
        /// The user (handle).
        user_id: String,
        /// Online (any device connected) or not.
        online: bool,
    },
    /// This device's KeyPackages run out (its last-resort package was
    /// handed out): upload more.
    KeyPackagesLow,
    /// The connection ended (reason).
    Closed(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<server_frame::Body>>>>;

/// One authenticated WebSocket connection.
pub struct WsConn {
    out: mpsc::UnboundedSender<WsMessage>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    events: mpsc::UnboundedReceiver<Pushed>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for WsConn {
    fn drop(&mut self) {
        // The writer ends (and sends a Close) when `out` is dropped; the reader
        // would wait for the server's close: stop it now.
        self.reader.abort();
    }
}

fn lock(
    p: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<server_frame::Body>>> {
    // A poisoned map only means another task panicked while holding it; the
    // map itself is still consistent (single inserts/removes).
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl WsConn {
    /// Opens `GET {server}/v1/ws` authenticated by the token subprotocol
    /// (`wss://` for an `https://` server, trusting the system's roots).
    pub async fn connect(server: &str, token: &Token) -> Result<Self> {
        Self::connect_with(server, token, &Trust::System).await
    }

    /// [`WsConn::connect`], trusting `trust` over `wss://`.
    pub async fn connect_with(server: &str, token: &Token, trust: &Trust) -> Result<Self> {
        let url = ws_url(server)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::WebSocket(format!("bad url {url}: {e}")))?;
        let protocols = format!(
            "{}, {}{}",
            hush_proto::auth::WS_PROTOCOL,
            hush_proto::auth::WS_TOKEN_PREFIX,
            token.0
        );
        let value = HeaderValue::from_str(&protocols)
            .map_err(|_| ClientError::Protocol("token is not a valid header value".into()))?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
        let connector = if url.starts_with("wss://") {
            Some(tokio_tungstenite::Connector::Rustls(trust.client_config()?))
        } else {
            None
        };
        // disable_nagle: small frames go out at once.
        let (stream, _response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(ws_config()),
            true,
            connector,
        )
        .await
        .map_err(|e| connect_error(&url, &e))?;
        let (mut sink, mut source) = stream.split();

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Pushed>();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if let Err(e) = sink.send(m).await {
                    tracing::debug!(error = %e, "websocket write failed");
                    return;
                }
            }
            let _ = sink.send(WsMessage::Close(None)).await;
            let _ = sink.close().await;
        });

        let reader = {
            let pending = pending.clone();
            let closed = closed.clone();
            let out_tx = out_tx.clone();
            tokio::spawn(async move {
                let reason = loop {
                    let msg = match source.next().await {
                        None => break "connection closed".to_string(),
                        Some(Err(e)) => break format!("read error: {e}"),
                        Some(Ok(m)) => m,
                    };
                    match msg {
                        WsMessage::Binary(bytes) => {
                            let frame = match ServerFrame::decode(bytes.as_ref()) {
                                Ok(f) => f,
                                Err(e) => {
                                    tracing::warn!(error = %e, "undecodable server frame");
                                    continue;
                                }
                            };
                            route(frame, &pending, &ev_tx);
                        }
                        WsMessage::Ping(p) => {
                            // tungstenite queues the pong itself; make sure it is flushed.
                            let _ = out_tx.send(WsMessage::Pong(p));
                        }
                        WsMessage::Close(frame) => {
                            break match frame {
                                Some(f) => {
                                    format!("closed by server: {} {}", u16::from(f.code), f.reason)
                                }
                                None => "closed by server".to_string(),
                            }
                        }
                        _ => {}
                    }
                };
                closed.store(true, Ordering::SeqCst);
                // Dropping the senders wakes every waiting request.
                lock(&pending).clear();
                let _ = ev_tx.send(Pushed::Closed(reason));
            })
        };

        Ok(Self {
            out: out_tx,
            pending,
            closed,
            events: ev_rx,
            next_id: AtomicU64::new(1),
            reader,
            writer,
        })
    }

    /// Closes the connection: the writer sends what is queued (acks) and a
    /// Close frame; then we wait (at most `CLOSE_REPLY_TIMEOUT`) for the
    /// server's Close in reply, so the server has read everything before the
    /// socket goes away (it answers once the acks before the Close are
    /// stored).
    pub async fn close(mut self) {
        let _ = self.out.send(WsMessage::Close(None));
        let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, &mut self.reader).await;
        // The reader holds a sender clone (for pongs): stop it so the writer
        // sees the channel close once `out` is dropped.
        self.reader.abort();
        let (dummy, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.out, dummy));
        let _ = tokio::time::timeout(CLOSE_WRITER_TIMEOUT, &mut self.writer).await;
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.writer.is_finished()
    }

    /// Sends a request without waiting: returns its id and the receiver of
    /// its response. Call [`WsConn::forget`] if the answer may never come.
    pub fn start_request(
        &self,
        body: client_frame::Body,
    ) -> Result<(u64, oneshot::Receiver<server_frame::Body>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.is_closed() {
            lock(&self.pending).remove(&id);
            return Err(ClientError::Disconnected("connection is closed".into()));
        }
        let frame = ClientFrame {
            request_id: id,
            body: Some(body),
        };
        if self
            .out
            .send(WsMessage::binary(frame.encode_to_vec()))
            .is_err()
        {
            lock(&self.pending).remove(&id);
            return Err(ClientError::Disconnected("connection is closed".into()));
        }
        Ok((id, rx))
    }

    /// Stops waiting for the response to request `id`.
    pub fn forget(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Sends a request and waits for its response. An `Error` response is
    /// returned as [`ClientError::Server`].
    pub async fn request(&self, body: client_frame::Body) -> Result<server_frame::Body> {
        let (id, rx) = self.start_request(body)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ClientError::Disconnected("request timed out".into()))
            }
            Ok(Err(_)) => Err(ClientError::Disconnected(
                "connection closed before the answer".into(),
            )),
            Ok(Ok(server_frame::Body::Error(e))) => Err(e.into()),
            Ok(Ok(body)) => Ok(body),
        }
    }

    /// Sends a frame that expects no response (Ack, AckInbox).
    pub fn send_oneway(&self, body: client_frame::Body) -> Result<()> {
        let frame = ClientFrame {
            request_id: 0,
            body: Some(body),
        };
        self.out
            .send(WsMessage::binary(frame.encode_to_vec()))
            .map_err(|_| ClientError::Disconnected("connection is closed".into()))
    }

    /// The next pushed event (waits). `None` never happens before a
    /// [`Pushed::Closed`] was delivered.
    pub async fn next_event(&mut self) -> Option<Pushed> {
        self.events.recv().await
    }

    /// The next pushed event if one is queued.
    pub fn try_next_event(&mut self) -> Option<Pushed> {
        self.events.try_recv().ok()
    }
}

fn route(frame: ServerFrame, pending: &Pending, events: &mpsc::UnboundedSender<Pushed>) {
    let Some(body) = frame.body else {
        tracing::warn!("server frame without body");
        return;
    };
    if frame.request_id != 0 {
        match lock(pending).remove(&frame.request_id) {
            Some(tx) => {
                let _ = tx.send(body);
            }
            None => tracing::debug!(
                request_id = frame.request_id,
                "response to no pending request"
            ),
        }
        return;
    }
    if let Some(pushed) = pushed_of(body) {
        let _ = events.send(pushed);
    }
}

/// The event a pushed frame (request_id 0) means for the client, if any.
/// Shared with the SSE transport.
pub fn pushed_of(body: server_frame::Body) -> Option<Pushed> {
    Some(match body {
        server_frame::Body::GroupEvent(e) => Pushed::Group(e),
        server_frame::Body::InboxEvent(e) => Pushed::Inbox(e),
        server_frame::Body::SyncCaughtUp(_) => Pushed::CaughtUp,
        server_frame::Body::EphemeralEvent(e) => Pushed::Ephemeral(e),
        server_frame::Body::PresenceEvent(p) => Pushed::Presence {
            user_id: p.user_id,
            online: p.online,
        },
        server_frame::Body::KeyPackagesLow(_) => Pushed::KeyPackagesLow,
        // Some servers announce the start of a sync as a push rather than
        // as the Sync's response; either way it carries nothing.
        server_frame::Body::SyncStarted(_) | server_frame::Body::AuthOk(_) => return None,
        server_frame::Body::Error(e) => {
            tracing::warn!(code = e.code, message = %e.message, "server error without request");
            return None;
        }
        other => {
            tracing::debug!(?other, "ignoring unexpected pushed frame");
            return None;
        }
    })
}

fn connect_error(url: &str, e: &tokio_tungstenite::tungstenite::Error) -> ClientError {
    if let tokio_tungstenite::tungstenite::Error::Http(resp) = e {
        if let Some(err) = resp
            .body()
            .as_ref()
            .and_then(|b| hush_proto::v1::Error::decode(b.as_slice()).ok())
            .filter(|err| err.code != 0)
        {
            return err.into();
        }
    }
    ClientError::WebSocket(format!("connect {url}: {}", redact_ws_error(e)))
}

/// WebSocket errors can echo the request (with the token subprotocol) in
/// their Display: keep only the kind.
fn redact_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| hush_proto::v1::Error::decode(b.as_slice()).ok())
                .map(|err| format!(" ({}: {})", err.error_code().as_str_name(), err.message))
                .unwrap_or_default();
            format!("HTTP {}{body}", resp.status())
        }
        E::Io(io) => format!("io: {io}"),
        E::Url(u) => format!("url: {u}"),
        E::Protocol(p) => format!("protocol: {p}"),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_proto::v1;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    /// A scripted server: checks the token subprotocol, answers two requests
    /// in reverse order with a pushed event in between, then an error.
    #[tokio::test]
    async fn correlates_responses_and_routes_pushes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            #[allow(clippy::result_large_err)] // the callback signature is tungstenite's
            let check = |req: &Request, mut resp: Response| {
                let protos = req
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                assert!(protos.contains("hush.v1"), "{protos}");
                assert!(protos.contains("hush.token.sekrit"), "{protos}");
                resp.headers_mut().insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static("hush.v1"),
                );
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, check)
                .await
                .unwrap();
            let mut ids = Vec::new();
            while ids.len() < 2 {
                if let Some(Ok(WsMessage::Binary(b))) = ws.next().await {
                    let f = ClientFrame::decode(b.as_ref()).unwrap();
                    let Some(client_frame::Body::Ping(p)) = f.body else {
                        panic!("expected ping")
                    };
                    ids.push((f.request_id, p.nonce));
                }
            }
            let send = |request_id, body| {
                WsMessage::binary(
                    ServerFrame {
                        request_id,
                        body: Some(body),
                    }
                    .encode_to_vec(),
                )
            };
            ws.send(send(
                0,
                server_frame::Body::GroupEvent(v1::GroupEvent {
                    group_id: b"g".to_vec(),
                    seq: 1,
                    ..Default::default()
                }),
            ))
            .await
            .unwrap();
            for (id, nonce) in ids.iter().rev() {
                ws.send(send(
                    *id,
                    server_frame::Body::Pong(v1::Pong { nonce: *nonce }),
                ))
                .await
                .unwrap();
            }
            // Third request: answered with an error.
            if let Some(Ok(WsMessage::Binary(b))) = ws.next().await {
                let f = ClientFrame::decode(b.as_ref()).unwrap();
                let mut e = v1::Error::new(hush_proto::ErrorCode::StaleEpoch, "moved on");
                e.stale_epoch = Some(v1::StaleEpoch {
                    current_epoch: 3,
                    head_seq: 7,
                });
                ws.send(send(f.request_id, server_frame::Body::Error(e)))
                    .await
                    .unwrap();
            }
            ws.close(None).await.ok();
        });

        let mut conn = WsConn::connect(&format!("http://{addr}"), &Token("sekrit".into()))
            .await
            .unwrap();
        let ping = |nonce| client_frame::Body::Ping(v1::Ping { nonce });
        let (a, b) = tokio::join!(conn.request(ping(1)), conn.request(ping(2)));
        assert_eq!(a.unwrap(), server_frame::Body::Pong(v1::Pong { nonce: 1 }));
        assert_eq!(b.unwrap(), server_frame::Body::Pong(v1::Pong { nonce: 2 }));
        match conn.next_event().await {
            Some(Pushed::Group(e)) => assert_eq!(e.seq, 1),
            other => panic!("unexpected {other:?}"),
        }
        let err = conn.request(ping(3)).await.unwrap_err();
        assert_eq!(err.code(), "STALE_EPOCH");
        // The server closes: the event stream says so and requests fail fast.
        match conn.next_event().await {
            Some(Pushed::Closed(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(conn.is_closed());
        assert!(matches!(
            conn.request(ping(4)).await,
            Err(ClientError::Disconnected(_))
        ));
        server.await.unwrap();
    }
}
