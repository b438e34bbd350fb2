//! The Server-Sent Events half of the protocol, for networks that block
//! WebSocket upgrades: pushed frames arrive on `GET /v1/events`, requests go
//! to `POST /v1/rpc`. [`SseConn`] offers the surface of
//! [`crate::ws::WsConn`] (requests answered by id, pushed events on a queue,
//! close, is_closed), so the client above does not know which it holds.
//!
//! Wire (see ARCHITECTURE.md): each SSE event's `data:` is the standard
//! base64 of one encoded `ServerFrame`; its `id:` is the resume position;
//! `retry:` is the suggested reconnection delay; comment lines are
//! keep-alives. Auth is the `Authorization: Bearer` header on both paths.
//!
//! The stream is the Sync. Opening it is an implicit Sync from the device's
//! stored cursors, and `Last-Event-ID` moves that start forward per group
//! (the server resumes each listed group from max(stored cursor, listed
//! seq)). So a `Sync{cursors, inbox_after}` request (re)opens the stream
//! with a `Last-Event-ID` built from those cursors ([`resume_id`]), and is
//! answered locally with `SyncStarted` once the stream is open; the backlog,
//! `SyncCaughtUp` and live events follow on the stream as on a WebSocket.
//! No stream is open before the first Sync, just as a WebSocket receives
//! nothing live before its first Sync.
//!
//! Drops: when the stream ends or breaks, it is reopened with the last
//! event id received (`Last-Event-ID`), so nothing is missed and nothing is
//! sent twice; the first reopen after a healthy stream is immediate, later
//! ones wait the server's `retry:`. After [`RESUME_ATTEMPTS`] failed reopens
//! (or a refusal carrying a Hush error code, such as an expired token) the
//! connection reports [`Pushed::Closed`] and the client reconnects (logs in
//! again) as it would after a WebSocket close.
//!
//! The parser is a small sans-IO state machine ([`EventParser`]) rather than
//! `eventsource-stream`: that crate has no bound on a line's length, rescans
//! a partial line on every chunk (quadratic for a large frame), and drops
//! events without data, so `retry:` never reaches the caller.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hush_proto::v1::{self, Cursor};
use hush_proto::{client_frame, server_frame, ClientFrame, Message as _, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{ClientError, Result};
use crate::http::{normalize_server, Token};
use crate::tls::Trust;
use crate::ws::{pushed_of, Pushed, REQUEST_TIMEOUT};

/// Reopens tried after a stream ends before the connection reports closed.
pub const RESUME_ATTEMPTS: u32 = 3;
/// The longest SSE event (all its lines) accepted from the server. Matches
/// the WebSocket client's default message cap.
pub const MAX_EVENT_BYTES: usize = 64 << 20;
/// Reconnection delay until the server suggests one with `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// Upper bound on a server-suggested reconnection delay.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A stream silent for this long is considered dead (the server sends a
/// keep-alive comment every `heartbeat_interval_ms`, 15 s by default).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long opening the event stream may take to reach the node.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `close` waits for the queued one-way frames (acks) to be posted.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `Last-Event-ID` the server accepts.
pub const MAX_RESUME_ID_BYTES: usize = 8 * 1024;

// ---- the event-stream parser (sans-IO) ---------------------------------------

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id in effect when the event was dispatched.
    pub id: Option<String>,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// Parses `text/event-stream` bytes as they arrive: feed chunks, get whole
/// events. Handles LF, CRLF and CR line ends split anywhere; comments and
/// unknown fields are ignored; a line or event above the size cap is an
/// error (the stream is then dropped).
#[derive(Debug)]
pub struct EventParser {
    max: usize,
    line: Vec<u8>,
    /// A CR ended the previous chunk: an LF right after it is part of it.
    after_cr: bool,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<Duration>,
}

impl EventParser {
    /// A parser that refuses events larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            line: Vec::new(),
            after_cr: false,
            data: String::new(),
            has_data: false,
            last_id: None,
            retry: None,
        }
    }

    /// The last `retry:` value seen.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> std::result::Result<Vec<SseEvent>, String> {
        let mut out = Vec::new();
        if self.after_cr {
            if bytes.first() == Some(&b'\n') {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
        }
        while let Some(end) = bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.line.extend_from_slice(&bytes[..end]);
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                if bytes.is_empty() {
                    self.after_cr = true;
                } else if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(ev) = self.on_line(&line)? {
                out.push(ev);
            }
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() + self.data.len() > self.max {
            return Err(format!("event larger than {} bytes", self.max));
        }
        Ok(out)
    }

    fn on_line(&mut self, line: &[u8]) -> std::result::Result<Option<SseEvent>, String> {
        if line.is_empty() {
            if !self.has_data {
                return Ok(None);
            }
            self.has_data = false;
            let data = std::mem::take(&mut self.data);
            return Ok(Some(SseEvent {
                id: self.last_id.clone(),
                data,
            }));
        }
        if line[0] == b':' {
            return Ok(None); // a comment: keep-alive
        }
        let line = std::str::from_utf8(line).map_err(|_| "event line is not UTF-8".to_string())?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > self.max {
                    return Err(format!("event larger than {} bytes", self.max));
                }
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// The `Last-Event-ID` that starts a stream from these cursors: the
/// server's resume-id format `v1.<inbox_seq>[.<b64url group>:<seq>]*`
/// (`hush-node` `gateway/sse.rs`, where the client's and server's encodings
/// are checked against each other by a test). Groups at seq 0 add nothing and
/// are left out; if the id would exceed [`MAX_RESUME_ID_BYTES`], groups are
/// dropped from the end and the server starts them from the stored
/// (acknowledged) cursors instead, which can resend entries the client
/// then skips as duplicates, never skip any.
pub fn resume_id(inbox_after: u64, cursors: &[Cursor]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut s = format!("v1.{inbox_after}");
    for c in cursors.iter().filter(|c| c.after_seq > 0) {
        let part = format!(".{}:{}", b64.encode(&c.group_id), c.after_seq);
        if s.len() + part.len() > MAX_RESUME_ID_BYTES {
            break;
        }
        s.push_str(&part);
    }
    s
}

// ---- the connection ------------------------------------------------------------

struct Shared {
    base: String,
    token: Token,
    rpc: reqwest::Client,
    stream: reqwest::Client,
    closed: AtomicBool,
    /// The current stream's generation: events of older streams still
    /// queued are delivered, but their `CaughtUp`/`Closed` are stale.
    generation: AtomicU64,
}

type Events = mpsc::UnboundedSender<(u64, Pushed)>;

/// One authenticated SSE + HTTP connection.
pub struct SseConn {
    shared: Arc<Shared>,
    events_tx: Events,
    events: mpsc::UnboundedReceiver<(u64, Pushed)>,
    stream: Mutex<Option<JoinHandle<()>>>,
    oneway: Option<mpsc::UnboundedSender<ClientFrame>>,
    oneway_task: JoinHandle<()>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for SseConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseConn")
            .field("server", &self.shared.base)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for SseConn {
    fn drop(&mut self) {
        if let Some(t) = self.stream_slot().take() {
            t.abort();
        }
    }
}

/// Why a stream could not be opened.
enum OpenError {
    /// The server refused with a Hush error (bad token, too many
    /// connections...): reopening will not help.
    Refused(v1::Error),
    /// Anything else (network, proxy, node restarting).
    Failed(String),
}

impl SseConn {
    /// Prepares the connection to `server` and checks, with one `Ping` over
    /// `POST /v1/rpc`, that the node is reachable and takes the token. The
    /// stream itself opens with the first Sync.
    pub async fn connect(server: &str, token: &Token) -> Result<Self> {
        Self::connect_with(server, token, &Trust::System).await
    }

    /// [`SseConn::connect`], trusting `trust` over `https://`.
    pub async fn connect_with(server: &str, token: &Token, trust: &Trust) -> Result<Self> {
        let base = normalize_server(server)?;
        let rpc = trust
            .reqwest_builder(&base)?
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        // No overall timeout: the stream lives as long as the connection.
        let stream = trust
            .reqwest_builder(&base)?
            .connect_timeout(STREAM_CONNECT_TIMEOUT)
            .read_timeout(STREAM_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let shared = Arc::new(Shared {
            base,
            token: token.clone(),
            rpc,
            stream,
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        let nonce = 0x5353_4521;
        match rpc_call(&shared, 1, client_frame::Body::Ping(v1::Ping { nonce })).await? {
            Some(server_frame::Body::Pong(p)) if p.nonce == nonce => {}
            Some(server_frame::Body::Error(e)) => return Err(e.into()),
            _ => return Err(ClientError::Protocol("rpc ping: unexpected answer".into())),
        }

        let (oneway_tx, mut oneway_rx) = mpsc::unbounded_channel::<ClientFrame>();
        let oneway_task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                // One at a time, in order: acks only move cursors forward,
                // but order keeps the server's view simple to reason about.
                while let Some(frame) = oneway_rx.recv().await {
                    let Some(body) = frame.body else { continue };
                    if let Err(e) = rpc_call(&shared, 0, body).await {
                        tracing::debug!(error = %e, "one-way rpc failed");
                    }
                }
            })
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Self {
            shared,
            events_tx,
            events,
            stream: Mutex::new(None),
            oneway: Some(oneway_tx),
            oneway_task,
            next_id: AtomicU64::new(2),
        })
    }

    fn stream_slot(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        // Poisoning only means a panic elsewhere; the slot is a plain handle.
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection: stops the stream and waits (at most
    /// `CLOSE_FLUSH_TIMEOUT`) until the queued one-way frames (acks) were
    /// posted.
    pub async fn close(mut self) {
        if let Some(t) = self.stream_slot().take() {
            t.abort();
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.oneway = None;
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut self.oneway_task).await;
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// (Re)opens the stream from `resume`; `answer` hears `SyncStarted` once
    /// it is open, or the server's refusal.
    fn restart(&self, resume: String, answer: oneshot::Sender<server_frame::Body>) {
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let task = tokio::spawn(run_stream(
            self.shared.clone(),
            generation,
            resume,
            answer,
            self.events_tx.clone(),
        ));
        if let Some(old) = self.stream_slot().replace(task) {
            old.abort();
        }
    }

    /// Sends a request without waiting: returns its id and the receiver of
    /// its response. A `Sync` (re)opens the stream (see the module docs).
    /// A request that fails in transport drops the sender (the receiver
    /// sees the connection as gone).
    pub fn start_request(
        &self,
        body: client_frame::Body,
    ) -> Result<(u64, oneshot::Receiver<server_frame::Body>)> {
        if self.is_closed() {
            return Err(ClientError::Disconnected("connection is closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match body {
            client_frame::Body::Sync(s) => self.restart(resume_id(s.inbox_after, &s.cursors), tx),
            body => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    match rpc_call(&shared, id, body).await {
                        Ok(Some(answer)) => {
                            let _ = tx.send(answer);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "rpc failed"),
                    }
                });
            }
        }
        Ok((id, rx))
    }

    /// Stops waiting for the response to request `id` (nothing to do: each
    /// request is its own HTTP exchange).
    pub fn forget(&self, _id: u64) {}

    /// Sends a request and waits for its response. An `Error` response is
    /// returned as [`ClientError::Server`].
    pub async fn request(&self, body: client_frame::Body) -> Result<server_frame::Body> {
        if self.is_closed() {
            return Err(ClientError::Disconnected("connection is closed".into()));
        }
        let answer = if matches!(body, client_frame::Body::Sync(_)) {
            let (_, rx) = self.start_request(body)?;
            rx.await
                .map_err(|_| ClientError::Disconnected("stream closed before it opened".into()))?
        } else {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            rpc_call(&self.shared, id, body)
                .await?
                .ok_or_else(|| ClientError::Protocol("rpc: no answer to a request".into()))?
        };
        match answer {
            server_frame::Body::Error(e) => Err(e.into()),
            body => Ok(body),
        }
    }

    /// Sends a frame that expects no response (Ack, AckInbox): queued and
    /// posted in order by a background task.
    pub fn send_oneway(&self, body: client_frame::Body) -> Result<()> {
        let frame = ClientFrame {
            request_id: 0,
            body: Some(body),
        };
        match &self.oneway {
            Some(tx) if !self.is_closed() => tx
                .send(frame)
                .map_err(|_| ClientError::Disconnected("connection is closed".into())),
            _ => Err(ClientError::Disconnected("connection is closed".into())),
        }
    }

    fn current(&self, generation: u64, p: &Pushed) -> bool {
        generation == self.shared.generation.load(Ordering::SeqCst)
            || !matches!(p, Pushed::CaughtUp | Pushed::Closed(_))
    }

    /// The next pushed event (waits).
    pub async fn next_event(&mut self) -> Option<Pushed> {
        loop {
            let (generation, p) = self.events.recv().await?;
            if self.current(generation, &p) {
                return Some(p);
            }
        }
    }

    /// The next pushed event if one is queued.
    pub fn try_next_event(&mut self) -> Option<Pushed> {
        loop {
            let (generation, p) = self.events.try_recv().ok()?;
            if self.current(generation, &p) {
                return Some(p);
            }
        }
    }
}

/// `POST /v1/rpc` with one frame. `Ok(None)` is 204 (no reply); an `Error`
/// reply (any status) is `Ok(Some(Error))`.
async fn rpc_call(
    shared: &Shared,
    request_id: u64,
    body: client_frame::Body,
) -> Result<Option<server_frame::Body>> {
    let frame = ClientFrame {
        request_id,
        body: Some(body),
    };
    let resp = shared
        .rpc
        .post(format!("{}/v1/rpc", shared.base))
        .header("content-type", "application/x-protobuf")
        .header("authorization", format!("Bearer {}", shared.token.0))
        .body(frame.encode_to_vec())
        .send()
        .await
        .map_err(|e| transport_error("POST /v1/rpc", &e))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| transport_error("POST /v1/rpc", &e))?;
    match ServerFrame::decode(bytes.as_ref())
        .ok()
        .and_then(|f| f.body)
    {
        Some(body @ server_frame::Body::Error(_)) => Ok(Some(body)),
        Some(body) if status.is_success() => Ok(Some(body)),
        _ if status.is_success() => Err(ClientError::Protocol(
            "POST /v1/rpc: undecodable answer".into(),
        )),
        _ => Err(ClientError::Http(format!("POST /v1/rpc: status {status}"))),
    }
}

fn transport_error(what: &str, e: &reqwest::Error) -> ClientError {
    if e.is_timeout() {
        ClientError::Disconnected(format!("{what}: timed out"))
    } else {
        // reqwest's Display names the URL, never headers: no token in it.
        ClientError::Http(format!("{what}: {e}"))
    }
}

/// `GET /v1/events`, checking that it is an event stream.
async fn open_stream(
    shared: &Shared,
    resume: Option<&str>,
) -> std::result::Result<reqwest::Response, OpenError> {
    let mut rb = shared
        .stream
        .get(format!("{}/v1/events", shared.base))
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {}", shared.token.0));
    if let Some(id) = resume {
        rb = rb.header("last-event-id", id);
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| OpenError::Failed(format!("GET /v1/events: {e}")))?;
    let status = resp.status();
    let is_stream = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status.is_success() && is_stream {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let coded = ServerFrame::decode(body.as_ref())
        .ok()
        .and_then(|f| f.body)
        .and_then(|b| match b {
            server_frame::Body::Error(e) if e.code != 0 => Some(e),
            _ => None,
        })
        .or_else(|| {
            v1::Error::decode(body.as_ref())
                .ok()
                .filter(|e| e.code != 0)
        });
    match coded {
        Some(e) if !status.is_success() => Err(OpenError::Refused(e)),
        _ => Err(OpenError::Failed(format!(
            "GET /v1/events: status {status}{}",
            if is_stream {
                ""
            } else {
                ", not an event stream"
            }
        ))),
    }
}

/// One stream and its reopenings; ends by reporting `Closed`.
async fn run_stream(
    shared: Arc<Shared>,
    generation: u64,
    resume: String,
    answer: oneshot::Sender<server_frame::Body>,
    events: Events,
) {
    let mut answer = Some(answer);
    let mut last_id = Some(resume);
    let mut retry = DEFAULT_RETRY;
    let mut failures = 0u32;
    let reason = loop {
        let why = match open_stream(&shared, last_id.as_deref()).await {
            Ok(resp) => {
                if let Some(a) = answer.take() {
                    let _ = a.send(server_frame::Body::SyncStarted(v1::SyncStarted {}));
                }
                let mut parser = EventParser::new(MAX_EVENT_BYTES);
                let (why, healthy) =
                    read_stream(resp, &mut parser, generation, &events, &mut last_id).await;
                if let Some(r) = parser.retry() {
                    retry = r.min(MAX_RETRY);
                }
                if healthy {
                    failures = 0;
                }
                why
            }
            Err(OpenError::Refused(e)) => {
                let why = format!(
                    "stream refused: {} {}",
                    e.error_code().as_str_name(),
                    e.message
                );
                if let Some(a) = answer.take() {
                    let _ = a.send(server_frame::Body::Error(e));
                }
                break why;
            }
            Err(OpenError::Failed(why)) => why,
        };
        failures += 1;
        if failures > RESUME_ATTEMPTS {
            break why;
        }
        tracing::debug!(reason = %why, attempt = failures, "sse stream ended; resuming");
        if failures > 1 {
            tokio::time::sleep(retry).await;
        }
    };
    if shared.generation.load(Ordering::SeqCst) == generation {
        shared.closed.store(true, Ordering::SeqCst);
    }
    let _ = events.send((generation, Pushed::Closed(reason)));
}

/// Reads one open stream to its end. Returns why it ended and whether it
/// was healthy (reached `SyncCaughtUp`), which makes the next reopen
/// immediate. `last_id` follows every event queued for the client.
async fn read_stream(
    mut resp: reqwest::Response,
    parser: &mut EventParser,
    generation: u64,
    events: &Events,
    last_id: &mut Option<String>,
) -> (String, bool) {
    let mut healthy = false;
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return ("stream ended".into(), healthy),
            Err(e) => return (format!("stream read: {e}"), healthy),
        };
        let batch = match parser.push(&chunk) {
            Ok(b) => b,
            Err(e) => return (format!("bad event stream: {e}"), healthy),
        };
        for ev in batch {
            let frame = b64
                .decode(ev.data.trim())
                .ok()
                .and_then(|b| ServerFrame::decode(b.as_slice()).ok());
            match frame.and_then(|f| f.body) {
                Some(body) => {
                    if let Some(p) = pushed_of(body) {
                        healthy |= matches!(p, Pushed::CaughtUp);
                        if events.send((generation, p)).is_err() {
                            return ("connection dropped".into(), healthy);
                        }
                    }
                }
                None => tracing::warn!("undecodable sse event"),
            }
            if ev.id.is_some() {
                *last_id = ev.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, data: &str) -> SseEvent {
        SseEvent {
            id: Some(id.into()),
            data: data.into(),
        }
    }

    #[test]
    fn parses_events_split_anywhere() {
        let wire = b"retry: 1500\n\n: keep-alive\n\nid: v1.0\ndata: AAA\n\nid: v1.1\r\ndata: a\r\ndata: b\r\r\nevent: x\ndata\n\n";
        let expected = vec![ev("v1.0", "AAA"), ev("v1.1", "a\nb"), ev("v1.1", "")];
        // Every split point, including between CR and LF.
        for cut in 0..wire.len() {
            let mut p = EventParser::new(1024);
            let mut got = p.push(&wire[..cut]).unwrap();
            got.extend(p.push(&wire[cut..]).unwrap());
            assert_eq!(got, expected, "cut at {cut}");
            assert_eq!(p.retry(), Some(Duration::from_millis(1500)));
        }
        // One byte at a time.
        let mut p = EventParser::new(1024);
        let got: Vec<_> = wire
            .iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)).unwrap())
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn refuses_oversized_events() {
        let mut p = EventParser::new(16);
        assert!(p.push(b"data: 0123456789").is_ok());
        assert!(p.push(b"abcdefgh").is_err());
        let mut p = EventParser::new(16);
        assert!(p.push(b"data: 0123456789\n").is_ok());
        assert!(p.push(b"data: 0123456789\n").is_err());
        let mut p = EventParser::new(64);
        assert!(p.push(b"data: \xff\xfe\n").is_err());
    }

    #[test]
    fn resume_ids_list_cursors_and_stay_bounded() {
        let c = |g: &[u8], s| Cursor {
            group_id: g.to_vec(),
            after_seq: s,
        };
        assert_eq!(resume_id(3, &[]), "v1.3");
        assert_eq!(
            resume_id(0, &[c(b"g1", 5), c(b"g2", 0), c(&[0xff, 0x2e], 9)]),
            "v1.0.ZzE:5._y4:9"
        );
        let many: Vec<Cursor> = (0u32..2000)
            .map(|i| c(&[i.to_be_bytes(), [7; 4], [8; 4], [9; 4]].concat(), 1))
            .collect();
        let id = resume_id(1, &many);
        assert!(id.len() <= MAX_RESUME_ID_BYTES, "{}", id.len());
        assert!(id.matches(':').count() > 100);
    }
}
