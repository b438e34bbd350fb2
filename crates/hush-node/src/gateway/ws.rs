//! The WebSocket transport: one task per connection.
//!
//! Lifecycle: Origin check and (optional) header token before the upgrade;
//! otherwise an `Auth` frame within `limits.auth_deadline_ms`. Then the
//! connection attaches to its user's SessionActor and serves requests,
//! up to `limits.max_pipelined_requests` at once: it keeps reading frames
//! and writing deliveries while a send waits for the store, answers each
//! request by its `request_id` as it completes, and refuses a request past
//! the bound at once (RATE_LIMITED with `retry_after_ms`), or past the
//! node's bound over all connections, `limits.max_inflight_requests` and
//! `_bytes` (UNAVAILABLE with the hint; the place is held until the answer
//! is written, so waiting answers count too). A `Sync` is served
//! in line. After a `Sync`, it sends the backlog of every group from the
//! client's cursors, the inbox, `SyncCaughtUp`, then live events.
//!
//! Each pipelined request runs as a task of its own, never as a future
//! inside the connection's task: while the connection awaits one of its own
//! steps (a store read for a gap or a resync, a write), a request future
//! polled only by that task would stall, and one that had been handed a
//! fair (FIFO) permit meanwhile — the store's read permits — would hold it
//! unpolled while the connection's own read queues behind it: a deadlock
//! that once left every connection of a node deaf after a fault (the
//! CI-sized chaos run, 2 of 3 runs). Tasks make progress whatever the
//! connection is doing. When the connection ends, its requests still in
//! flight run to completion (a send the group accepted is stored and
//! sequenced either way; the client resends by id and is deduplicated).
//!
//! Exactly-once per connection: the connection remembers, per group, the
//! last seq it sent. A live event at or below it is dropped; one past a gap
//! first has the gap read from the store. So live delivery and backlog can
//! race freely. That logic is transport-independent and lives in
//! `stream.rs` (shared with SSE); requests go through the node's
//! [`Api`](crate::api::Api) (shared with POST /v1/rpc). Once synced, a
//! group's next entry usually does not pass through this task at all: the
//! fan-out writes it into actix-ws's queue itself (`WsDirect`, checked
//! under the same per-connection lock as this task's writes, see
//! `conns.rs`), or rather reserves the room and leaves the frame to this
//! worker's [`Pump`], which writes it on this thread (no cross-thread wake
//! per delivery); this task writes a pending frame first thing on each of
//! its own writes.
//!
//! Bounds: frames larger than `max_frame_bytes` close with 1009; requests over
//! the rate limit get RATE_LIMITED; the outbound queue is bounded and a full
//! one cuts the connection (4001); a write blocked for `write_timeout_ms` cuts
//! it too; no traffic for `heartbeat_timeout_ms` closes it (4002).

use std::future::{poll_fn, Future as _};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Session};
use futures_util::{Sink as _, StreamExt as _};
use hush_ds::TokenClaims;
use hush_proto::{client_frame::Body as C, server_frame::Body as S, v1, ErrorCode};
use hush_proto::{ClientFrame, Message as _};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use super::stream::{self, Halt, Position, Sink, Stream};
use super::{authenticate, check_origin, error_response, AppState};
use crate::admission::RequestPermit;
use crate::conns::{DirectSink, Live, Pump, QueuedItem};
use crate::error::{ApiError, ApiResult};
use crate::wire::{Caller, Outbound};

/// Requests of one connection in flight, each a task of its own that
/// yields its request id, its answer and its place in the node's request
/// bound, given back once the answer is written (see the module docs for
/// why tasks, not futures polled by the connection's task).
struct InFlight(JoinSet<(u64, ApiResult<Option<S>>, RequestPermit)>);

impl Drop for InFlight {
    /// A closed connection's requests run to completion, unanswered.
    fn drop(&mut self) {
        self.0.detach_all();
    }
}

/// How many queued items one pass of the connection's loop writes before
/// it looks at its other work again (at most actix-ws's own queue, 32
/// frames, fits before a write waits for the socket).
const OUTBOUND_BURST: usize = 32;

pub const CLOSE_AUTH_DEADLINE: u16 = 4000;
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
pub const CLOSE_HEARTBEAT: u16 = 4002;
pub const CLOSE_GOING_AWAY: u16 = 4004;

/// GET /v1/ws
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    app: web::Data<Arc<AppState>>,
) -> HttpResponse {
    let app = app.get_ref().clone();
    if let Err(e) = check_origin(&app, &req) {
        return error_response(&e);
    }
    // A token offered as a subprotocol is checked before upgrading.
    let offered: Vec<String> = req
        .headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let header_token = offered
        .iter()
        .find_map(|p| p.strip_prefix(hush_proto::auth::WS_TOKEN_PREFIX));
    let pre_auth = match header_token {
        Some(token) => match authenticate(&app, token).await {
            Ok(claims) => Some(claims),
            Err(e) => return error_response(&e),
        },
        None => None,
    };
    let (response, session, stream) =
        match actix_ws::handle_with_protocols(&req, body, &[hush_proto::auth::WS_PROTOCOL]) {
            Ok(parts) => parts,
            Err(e) => return e.error_response(),
        };
    let stream = stream
        .max_frame_size(app.config.limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(app.config.limits.max_frame_bytes);
    // The connection's future itself is the task, not a block around it
    // that would keep its own copy of what it moves in: every connection
    // holds this future while it lives.
    actix_web::rt::spawn(Connection::new(app, session).run(stream, pre_auth));
    response
}

thread_local! {
    /// This actix worker's [`Pump`] (started with its first connection).
    static PUMP: std::cell::RefCell<Option<Arc<Pump>>> = const { std::cell::RefCell::new(None) };
}

/// The pump of the worker this runs on, started on first use (and again
/// if its runtime stopped and a new one runs on the thread).
fn worker_pump() -> Arc<Pump> {
    PUMP.with_borrow_mut(|slot| {
        if let Some(pump) = slot.as_ref().filter(|p| !p.stopped()) {
            return pump.clone();
        }
        let pump = Arc::new(Pump::default());
        actix_web::rt::spawn(pump.clone().run());
        *slot = Some(pump.clone());
        pump
    })
}

/// The WebSocket side of a [`Stream`]: one binary message per frame, each
/// write bounded by `write_timeout_ms`.
struct WsSink {
    session: Session,
    write_timeout: Duration,
    /// The connection's shared state: a direct write the fan-out left
    /// pending goes out before each of this sink's writes.
    live: Arc<Live>,
}

impl WsSink {
    /// Room for one frame in actix-ws's queue, waited for at most
    /// `write_timeout_ms`: a reader that does not drain is cut off.
    ///
    /// Most writes find room at once; only one that has to wait arms the
    /// timer (no clock read and timer entry per frame).
    async fn reserve(&mut self) -> Result<(), Step> {
        let session = &mut self.session;
        let mut ready = pin!(poll_fn(|cx| Pin::new(&mut *session).poll_ready(cx)));
        let ready = match poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx))).await {
            Poll::Ready(ready) => ready,
            // Boxed: the timer is armed rarely, and in place it would size
            // every connection's task.
            Poll::Pending => {
                match Box::pin(tokio::time::timeout(self.write_timeout, ready)).await {
                    Ok(ready) => ready,
                    Err(_) => {
                        metrics::counter!("hush_slow_consumers_cut_total").increment(1);
                        return Err(close(CLOSE_SLOW_CONSUMER, "write timed out"));
                    }
                }
            }
        };
        ready.map_err(|_closed| gone())
    }
}

/// Writes into the room [`WsSink::reserve`] found (a function of the
/// session alone, so that it can run while the connection's lock is held).
fn write_reserved(session: &mut Session, bytes: Bytes) -> Result<(), Step> {
    Pin::new(session)
        .start_send(actix_ws::Message::Binary(bytes))
        .map_err(|_closed| gone())?;
    crate::telemetry::frame_out();
    Ok(())
}

/// The close of a connection whose transport is gone.
fn gone() -> Step {
    Step::Close(CloseReason::from(CloseCode::Away))
}

impl Sink for WsSink {
    type Stop = Step;

    /// One write, bounded in time (see [`WsSink::reserve`]), after the
    /// fan-out's pending one.
    async fn write(&mut self, bytes: Bytes, _pos: Position<'_>) -> Result<(), Step> {
        self.reserve().await?;
        let mut live = self.live.lock();
        live.flush();
        write_reserved(&mut self.session, bytes)
    }

    /// The fan-out writes to this transport too ([`WsDirect`]): room
    /// first, then the check and the write under the connection's lock.
    /// An entry found written meanwhile leaves the room for the next write.
    async fn write_entry(
        &mut self,
        live: &Live,
        group_id: &[u8],
        seq: u64,
        frame: Bytes,
        _pos: Position<'_>,
    ) -> Result<(), Step> {
        self.reserve().await?;
        let mut live = live.lock();
        live.flush();
        if live.has(group_id, seq) {
            return Ok(());
        }
        write_reserved(&mut self.session, frame)?;
        live.record(group_id, seq);
        Ok(())
    }
}

/// The fan-out's own handle on a connection's actix-ws queue: it writes a
/// group's next entry there without waking the connection's task, and
/// never waits (no room: the entry goes through the connection's queue).
struct WsDirect(Session);

impl DirectSink for WsDirect {
    fn has_room(&mut self) -> bool {
        // A reservation that is not ready now goes on in the background
        // (no one is woken when it completes) and is taken by a later call.
        // Outside tokio's cooperative budget: reserving counts against the
        // polling task's budget (128 per poll), and one fan-out to a group
        // of 1,000 exhausted it after the first 128 connections (measured:
        // 87% of a large group's entries found "no room" and went through
        // the queues).
        let session = &mut self.0;
        let ready =
            tokio::task::coop::unconstrained(poll_fn(|cx| Pin::new(&mut *session).poll_ready(cx)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(pin!(ready).poll(&mut cx), Poll::Ready(Ok(())))
    }

    fn write(&mut self, frame: Bytes) -> bool {
        Pin::new(&mut self.0)
            .start_send(actix_ws::Message::Binary(frame))
            .is_ok()
    }
}

struct Connection {
    app: Arc<AppState>,
    id: u64,
    rate: hush_ds::TokenBucket,
    out: Stream<WsSink>,
    last_seen: tokio::time::Instant,
    /// The connection's acks not yet finished (stored, or refused), one
    /// token each. Acks are one-way and finish apart from the connection's
    /// task (see `on_frame`), so the connection's close waits (at most
    /// `write_timeout_ms`) for their tokens before it answers the client's
    /// Close: a client that acks and then closes (the CLI after a sync)
    /// finds its cursors stored once its Close is answered.
    acks: TaskTracker,
}

enum Step {
    Continue,
    Close(CloseReason),
}

fn close(code: u16, why: &str) -> Step {
    Step::Close(CloseReason {
        code: CloseCode::Other(code),
        description: Some(why.into()),
    })
}

impl Connection {
    fn new(app: Arc<AppState>, session: Session) -> Self {
        let l = &app.config.limits;
        let rate = hush_ds::TokenBucket::new(l.rate_per_sec, l.rate_burst, app.now_ms());
        let live = Arc::new(Live::new(
            Some(Box::new(WsDirect(session.clone()))),
            Some(worker_pump()),
        ));
        let sink = WsSink {
            session,
            write_timeout: Duration::from_millis(l.write_timeout_ms),
            live: live.clone(),
        };
        Self {
            id: app.next_conn_id(),
            out: Stream::new(app.clone(), sink, live),
            app,
            rate,
            last_seen: tokio::time::Instant::now(),
            acks: TaskTracker::new(),
        }
    }

    /// Writes one item of the connection's queue; its place in the node's
    /// backlog (`counted`) is given back once it is handled.
    async fn outbound(&mut self, queued: QueuedItem) -> Step {
        let QueuedItem { item, counted } = queued;
        let step = match self.out.on_outbound(item).await {
            Ok(()) => Step::Continue,
            Err(Halt::Sink(step)) => step,
            // Rare (a resync the store refused), and boxed: unboxed, this
            // step would size every connection's task (`serve` holds this
            // future while it writes).
            Err(Halt::Api(e)) => Box::pin(self.reply_error(0, e)).await,
        };
        drop(counted);
        step
    }

    fn session(&self) -> Session {
        self.out.sink.session.clone()
    }

    async fn send_frame(&mut self, request_id: u64, body: S) -> Result<(), Step> {
        self.out.send_frame(request_id, body).await
    }

    /// The connection's task. Not an `async fn`: one with `mut` parameters
    /// keeps the arguments twice in its state (as captured, and as the
    /// locals they are moved into; 432 bytes of every connection's task),
    /// while this block uses what it captured in place. The close's steps
    /// are boxed: they run once, and unboxed they would size the state
    /// every open connection keeps.
    #[allow(clippy::manual_async_fn)] // the point: see above
    fn run(
        mut self,
        mut stream: actix_ws::AggregatedMessageStream,
        pre_auth: Option<TokenClaims>,
    ) -> impl std::future::Future<Output = ()> {
        async move {
            metrics::gauge!("hush_connections").increment(1.0);
            let reason = self.serve(&mut stream, pre_auth).await;
            crate::telemetry::ws_closed(reason.as_ref().map(|r| u16::from(r.code)));
            let limit = Duration::from_millis(self.app.config.limits.write_timeout_ms);
            // The acks the client sent before its Close are finished before
            // the Close is answered (see `acks`), bounded like a write.
            self.acks.close();
            let acks = Box::pin(tokio::time::timeout(limit, self.acks.wait()));
            let _ = acks.await;
            Box::pin(stream::close(&self.app, self.id)).await;
            tracing::debug!(conn = self.id, reason = ?reason, "connection closed");
            // Closing queues a close frame; a peer that stopped reading
            // would hold this task forever, so it is bounded like every
            // other write.
            let close = Box::pin(tokio::time::timeout(limit, self.session().close(reason)));
            let _ = close.await;
            metrics::gauge!("hush_connections").decrement(1.0);
        }
    }

    async fn serve(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
        pre_auth: Option<TokenClaims>,
    ) -> Option<CloseReason> {
        // Only the few limits it reads, not a clone of them all: this
        // future is every connection's resident state.
        let l = &self.app.config.limits;
        let auth_deadline = Duration::from_millis(l.auth_deadline_ms);
        let send_buffer = l.send_buffer_frames;
        let timeout = Duration::from_millis(l.heartbeat_timeout_ms);
        let write_limit = Duration::from_millis(l.write_timeout_ms);
        // --- authentication ---
        let claims = match pre_auth {
            Some(c) => c,
            None => {
                // Boxed, like the attach and a Sync below: steps taken once
                // (or rarely) must not size the task every idle connection
                // keeps.
                let auth = Box::pin(self.first_frame_auth(stream));
                match tokio::time::timeout(auth_deadline, auth).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(step)) => return step_reason(step),
                    Err(_) => {
                        return step_reason(close(CLOSE_AUTH_DEADLINE, "auth deadline passed"))
                    }
                }
            }
        };
        let caller = Caller {
            user_id: claims.user_id,
            device_id: claims.device_id,
        };
        // --- attach to the user's session ---
        let (tx, mut rx) = crate::conns::queue(send_buffer);
        let overflowed = Arc::new(AtomicBool::new(false));
        let live = self.out.live.clone();
        let attach = stream::attach(&self.app, self.id, &caller, tx, overflowed.clone(), live);
        if let Err(e) = Box::pin(attach).await {
            let _ = Box::pin(self.send_frame(0, S::Error(e.to_proto()))).await;
            return Some(CloseReason {
                code: CloseCode::Policy,
                description: Some(e.code_name().into()),
            });
        }
        self.out.caller = Some(caller.clone());
        let ok = S::AuthOk(v1::AuthOk {
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
        });
        // Boxed too: written once, it would otherwise size the state.
        if Box::pin(self.send_frame(0, ok)).await.is_err() {
            return None;
        }

        // --- serve ---
        let mut heartbeat = tokio::time::interval(self.app.config.heartbeat_interval());
        heartbeat.tick().await;
        let closing = self.app.shutdown.connections_closing();
        tokio::pin!(closing);
        let mut inflight = InFlight(JoinSet::new());
        loop {
            let step = tokio::select! {
                () = &mut closing => {
                    close(CLOSE_GOING_AWAY, "node shutting down; reconnect elsewhere")
                }
                msg = stream.next() => match msg {
                    None => return None,
                    Some(Err(e)) => {
                        tracing::debug!(conn = self.id, error = %e, "websocket protocol error");
                        return Some(protocol_close(e));
                    }
                    Some(Ok(msg)) => {
                        self.last_seen = tokio::time::Instant::now();
                        Box::pin(self.on_message(msg, &caller, &mut inflight)).await
                    }
                },
                Some(done) = inflight.0.join_next(), if !inflight.0.is_empty() => match done {
                    Ok((rid, result, _permit)) => Box::pin(self.answer(rid, result)).await,
                    Err(e) => {
                        // A request task that panicked: its client's
                        // request goes unanswered (and times out); the
                        // connection goes on.
                        tracing::error!(conn = self.id, error = %e, "request task failed");
                        Step::Continue
                    }
                },
                out = rx.recv() => match out {
                    Some(queued) => {
                        // What is queued behind it is written in the same
                        // turn, up to a bound (requests, the heartbeat and
                        // shutdown keep their turn): one pass through this
                        // select per burst instead of per frame, and actix
                        // sends the frames it finds queued in one write.
                        let mut step = self.outbound(*queued).await;
                        let mut drained = 1;
                        while matches!(step, Step::Continue) && drained < OUTBOUND_BURST {
                            let Ok(next) = rx.try_recv() else { break };
                            step = self.outbound(*next).await;
                            drained += 1;
                        }
                        step
                    }
                    None if overflowed.load(Ordering::SeqCst) => {
                        close(CLOSE_SLOW_CONSUMER, "send buffer full")
                    }
                    None => Step::Close(CloseReason {
                        code: CloseCode::Policy,
                        description: Some("session ended".into()),
                    }),
                },
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() >= timeout {
                        close(CLOSE_HEARTBEAT, "heartbeat timeout")
                    } else if self.app.shutdown.is_shutting_down() {
                        close(CLOSE_GOING_AWAY, "node shutting down; reconnect elsewhere")
                    } else {
                        match tokio::time::timeout(write_limit, self.session().ping(b"hb")).await {
                            Ok(Ok(())) => Step::Continue,
                            Ok(Err(_closed)) => return None,
                            Err(_) => close(CLOSE_SLOW_CONSUMER, "ping did not fit the send buffer"),
                        }
                    }
                }
            };
            if let Step::Close(reason) = step {
                return Some(reason);
            }
        }
    }
    async fn first_frame_auth(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
    ) -> Result<TokenClaims, Step> {
        loop {
            match stream.next().await {
                None => return Err(close(1000, "closed before auth")),
                Some(Err(e)) => return Err(Step::Close(protocol_close(e))),
                Some(Ok(actix_ws::AggregatedMessage::Binary(bytes))) => {
                    let frame = match ClientFrame::decode(bytes.as_ref()) {
                        Ok(f) => f,
                        Err(_) => {
                            let e = ApiError::new(ErrorCode::Malformed, "frame does not decode");
                            let _ = self.send_frame(0, S::Error(e.to_proto())).await;
                            return Err(Step::Close(CloseReason::from(CloseCode::Policy)));
                        }
                    };
                    let result = match frame.body {
                        Some(C::Auth(a)) => authenticate(&self.app, &a.token).await,
                        _ => {
                            crate::telemetry::auth_failed("no_auth_frame");
                            Err(ApiError::new(
                                ErrorCode::Unauthenticated,
                                "authenticate first (Auth frame or token subprotocol)",
                            ))
                        }
                    };
                    return match result {
                        Ok(c) => Ok(c),
                        Err(e) => {
                            metrics::counter!("hush_errors_total", "code" => e.code_name())
                                .increment(1);
                            let _ = self
                                .send_frame(frame.request_id, S::Error(e.to_proto()))
                                .await;
                            Err(Step::Close(CloseReason {
                                code: CloseCode::Policy,
                                description: Some(e.code_name().into()),
                            }))
                        }
                    };
                }
                Some(Ok(actix_ws::AggregatedMessage::Ping(p))) => {
                    let _ = self.session().pong(&p).await;
                }
                Some(Ok(actix_ws::AggregatedMessage::Close(_))) => {
                    return Err(close(1000, "closed before auth"))
                }
                Some(Ok(_)) => {}
            }
        }
    }

    async fn on_message(
        &mut self,
        msg: actix_ws::AggregatedMessage,
        caller: &Caller,
        inflight: &mut InFlight,
    ) -> Step {
        use actix_ws::AggregatedMessage as M;
        match msg {
            M::Binary(bytes) => self.on_frame(bytes, caller, inflight).await,
            M::Text(_) => {
                let e = ApiError::new(ErrorCode::Malformed, "text frames are not accepted");
                self.reply_error(0, e).await
            }
            M::Ping(p) => {
                let _ = self.session().pong(&p).await;
                Step::Continue
            }
            M::Pong(_) => Step::Continue,
            M::Close(_) => Step::Close(CloseReason::from(CloseCode::Normal)),
        }
    }

    async fn reply_error(&mut self, request_id: u64, e: ApiError) -> Step {
        metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
        match self.send_frame(request_id, S::Error(e.to_proto())).await {
            Ok(()) => Step::Continue,
            Err(step) => step,
        }
    }

    async fn on_frame(&mut self, bytes: Bytes, caller: &Caller, inflight: &mut InFlight) -> Step {
        let frame = match ClientFrame::decode(bytes.as_ref()) {
            Ok(f) => f,
            Err(_) => {
                let e = ApiError::new(ErrorCode::Malformed, "frame does not decode as ClientFrame");
                return self.reply_error(0, e).await;
            }
        };
        let rid = frame.request_id;
        let now = self.app.now_ms();
        if !self.rate.try_take(now) {
            let e = super::limits::refuse_request(&self.app, &self.rate, now);
            return self.reply_error(rid, e).await;
        }
        let Some(body) = frame.body else {
            let e = ApiError::new(ErrorCode::Malformed, "frame has no body");
            return self.reply_error(rid, e).await;
        };
        crate::telemetry::frame_in();
        let result = match body {
            // The Sync's answer is a stream: SyncStarted (carrying the
            // request id), the backlog, then SyncCaughtUp.
            C::Sync(req) => {
                let cursors = req
                    .cursors
                    .into_iter()
                    .map(|c| (c.group_id, c.after_seq))
                    .collect();
                match Box::pin(self.out.sync(rid, cursors, req.inbox_after)).await {
                    Ok(()) => Ok(None),
                    Err(Halt::Sink(step)) => return step,
                    Err(Halt::Api(e)) => Err(e),
                }
            }
            C::Ack(_) | C::AckInbox(_) => {
                let permit = match self.app.api.admission().admit_request(bytes.len(), now) {
                    Ok(p) => p,
                    Err(e) => return self.reply_error(rid, e).await,
                };
                // Answered only when refused. A task of its own, not one of
                // the connection's requests in flight: this task is not
                // woken to hear that an ack went through (receivers ack
                // about as often as they are sent to, and that wake with its
                // pass through the loop showed in the CPU per delivery), nor
                // does an ack take a place the client's sends need; a
                // refusal reaches the client through the connection's queue.
                // A group's ack is not even awaited: its task ends once the
                // ack is queued, and the store's writer finishes it (frees
                // the place in the node's request bound, queues a refusal),
                // so no thread is woken to hear it went through. The
                // connection holds a token of it until then (`acks`): its
                // close waits for it.
                let (app, caller, conn_id) = (self.app.clone(), caller.clone(), self.id);
                let unfinished = self.acks.token();
                let finish = move |result: ApiResult<()>| {
                    drop(permit);
                    if let Err(e) = result {
                        answer_refused(&app, conn_id, rid, &e);
                    }
                    drop(unfinished);
                };
                let app = self.app.clone();
                actix_web::rt::spawn(async move {
                    match body {
                        C::Ack(a) => app.api.ack_then(&caller, a.group_id, a.seq, finish).await,
                        inbox => finish(app.api.dispatch(&caller, inbox).await.map(drop)),
                    }
                });
                return Step::Continue;
            }
            other => {
                let limits = &self.app.config.limits;
                if inflight.0.len() >= limits.max_pipelined_requests {
                    metrics::counter!("hush_sends_refused_total", "bound" => "pipelined")
                        .increment(1);
                    let hint = self.app.api.admission().refused_elsewhere(now);
                    let e = ApiError::rate_limited(
                        "too many requests in flight on this connection",
                        hint,
                    );
                    return self.reply_error(rid, e).await;
                }
                let permit = match self.app.api.admission().admit_request(bytes.len(), now) {
                    Ok(p) => p,
                    Err(e) => return self.reply_error(rid, e).await,
                };
                let (app, caller) = (self.app.clone(), caller.clone());
                inflight.0.spawn(async move {
                    let result = app.api.dispatch(&caller, other).await;
                    (rid, result, permit)
                });
                return Step::Continue;
            }
        };
        self.answer(rid, result).await
    }

    /// Writes a request's answer (or its error) under its request id.
    async fn answer(&mut self, rid: u64, result: ApiResult<Option<S>>) -> Step {
        match result {
            Ok(Some(body)) => match self.send_frame(rid, body).await {
                Ok(()) => Step::Continue,
                Err(step) => step,
            },
            Ok(None) => Step::Continue,
            Err(e) => self.reply_error(rid, e).await,
        }
    }
}

/// A refusal of a request nobody awaits (an ack), answered under its
/// request id through the connection's queue, from any thread.
fn answer_refused(app: &AppState, conn_id: u64, rid: u64, e: &ApiError) {
    metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
    let frame = crate::wire::encode(rid, S::Error(e.to_proto()));
    app.sessions
        .conns()
        .write(conn_id, Outbound::Answer { frame });
}

/// The close for a WebSocket protocol error: 1009 for a frame above
/// `max_frame_bytes` (before or after auth), 1002 otherwise.
fn protocol_close(e: actix_ws::ProtocolError) -> CloseReason {
    let code = if matches!(e, actix_ws::ProtocolError::Overflow) {
        metrics::counter!("hush_errors_total", "code" => "TOO_LARGE").increment(1);
        CloseCode::Size
    } else {
        CloseCode::Protocol
    };
    CloseReason {
        code,
        description: Some(e.to_string()),
    }
}

fn step_reason(step: Step) -> Option<CloseReason> {
    match step {
        Step::Continue => None,
        Step::Close(r) => Some(r),
    }
}
