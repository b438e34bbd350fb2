//! The Server-Sent Events transport: `GET /v1/events`.
//!
//! For networks where WebSocket upgrades are blocked. The stream carries the
//! same pushed ServerFrames as the WebSocket (AuthOk, SyncStarted, the
//! backlog, InboxEvent, SyncCaughtUp, then live GroupEvent/InboxEvent), one
//! per SSE event: `data:` is the standard base64 of the encoded ServerFrame
//! (exact bytes, no JSON mapping to drift). Requests go to `POST /v1/rpc`.
//!
//! Auth is the `Authorization: Bearer` header only (never a query string:
//! URLs end up in logs); Origin is checked like the WebSocket's. Opening the
//! stream is an implicit Sync from the stored cursors.
//!
//! Resumption: every event's `id:` is the stream position in a bounded,
//! self-contained form: `v1.<inbox_seq>[.<group>:<seq>]*` where `group` is
//! the URL-safe base64 group id, and the listed groups are only those whose
//! last sent seq may be ahead of the device's stored (acknowledged) cursor,
//! i.e. what was carried over from `Last-Event-ID` and still not acknowledged
//! plus every group this stream sent an entry of. On `Last-Event-ID` the
//! stream resumes each group from max(stored cursor, id seq) and the inbox
//! after the id's inbox seq: nothing the client received is sent again, and
//! nothing after it is skipped (every group not listed was not sent past its
//! stored cursor). Acks shrink the id on the next resume. The id is capped
//! at [`MAX_ID_BYTES`]; a stream whose next event would need a longer id ends
//! cleanly before it, and the client resumes (with its acks applied).
//!
//! Bounds: the body is fed by a bounded channel (`send_buffer_frames`); a
//! write that does not fit within `write_timeout_ms` ends the stream, as does
//! a full session queue (the slow-reader rule of the WebSocket). No actix
//! worker is held: the stream is a task plus a streaming body. Keep-alive
//! comments go out every `heartbeat_interval_ms`; `retry:` is [`RETRY_MS`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use hush_proto::{server_frame::Body as S, v1, ErrorCode};
use tokio::sync::mpsc;

use super::stream::{self, Halt, Position, Sink, Stream};
use super::{bearer_claims, check_origin, error_response, AppState};
use crate::conns::{self, Live, QueueRx};
use crate::error::{ApiError, ApiResult};
use crate::wire::{check_group_id, Caller, Frame};

/// The reconnection delay suggested to EventSource clients.
pub const RETRY_MS: u64 = 2_000;
/// The longest event id (and so the longest `Last-Event-ID` accepted).
pub const MAX_ID_BYTES: usize = 8 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A resume position: the last inbox seq sent and, per group, the last seq
/// sent where it may be ahead of the stored cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeId {
    pub inbox_seq: u64,
    pub groups: BTreeMap<Vec<u8>, u64>,
}

impl ResumeId {
    pub fn encode(&self) -> String {
        let mut s = format!("v1.{}", self.inbox_seq);
        for (g, seq) in &self.groups {
            s.push('.');
            s.push_str(&B64.encode(g));
            s.push(':');
            s.push_str(&seq.to_string());
        }
        s
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.len() > MAX_ID_BYTES {
            return None;
        }
        let mut parts = s.split('.');
        if parts.next()? != "v1" {
            return None;
        }
        let inbox_seq = parts.next()?.parse().ok()?;
        let mut groups = BTreeMap::new();
        for p in parts {
            let (g, seq) = p.split_once(':')?;
            let g = B64.decode(g).ok()?;
            check_group_id(&g).ok()?;
            groups.insert(g, seq.parse().ok()?);
        }
        Some(Self { inbox_seq, groups })
    }
}

/// Why an SSE stream ends.
#[derive(Debug)]
enum Stop {
    Closed,
    Slow,
    IdTooLong,
}

impl Stop {
    /// The `hush_stream_closes_total` reason.
    fn label(&self) -> &'static str {
        match self {
            Stop::Closed => "closed",
            Stop::Slow => "slow_consumer",
            Stop::IdTooLong => "id_too_long",
        }
    }
}

struct SseSink {
    tx: mpsc::Sender<Bytes>,
    write_timeout: Duration,
    pos: ResumeId,
}

impl SseSink {
    async fn send(&mut self, bytes: Bytes) -> Result<(), Stop> {
        match tokio::time::timeout(self.write_timeout, self.tx.send(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Closed),
            Err(_) => {
                metrics::counter!("hush_slow_consumers_cut_total").increment(1);
                Err(Stop::Slow)
            }
        }
    }
}

impl Sink for SseSink {
    type Stop = Stop;

    async fn write(&mut self, frame: Frame, pos: Position<'_>) -> Result<(), Stop> {
        let mut next = self.pos.clone();
        next.inbox_seq = next.inbox_seq.max(pos.inbox_seq);
        if let Some((g, seq)) = pos.group {
            next.groups.insert(g.to_vec(), seq);
        }
        let id = next.encode();
        if id.len() > MAX_ID_BYTES {
            return Err(Stop::IdTooLong);
        }
        let data = base64::engine::general_purpose::STANDARD.encode(&frame);
        let event = format!("id: {id}\ndata: {data}\n\n");
        self.send(Bytes::from(event)).await?;
        self.pos = next;
        crate::telemetry::frame_out();
        Ok(())
    }
}

/// GET /v1/events
pub async fn events(req: HttpRequest, app: web::Data<Arc<AppState>>) -> HttpResponse {
    let app = app.get_ref().clone();
    match open(&app, &req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

async fn open(app: &Arc<AppState>, req: &HttpRequest) -> ApiResult<HttpResponse> {
    check_origin(app, req)?;
    let claims = bearer_claims(app, req).await?;
    let resume = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(ResumeId::parse)
                .ok_or_else(|| ApiError::new(ErrorCode::Malformed, "bad Last-Event-ID"))?,
        ),
    };
    let caller = Caller {
        user_id: claims.user_id,
        device_id: claims.device_id,
    };
    let limits = &app.config.limits;
    let conn_id = app.next_conn_id();
    let (out_tx, out_rx) = conns::queue(limits.send_buffer_frames);
    let overflowed = Arc::new(AtomicBool::new(false));
    // SSE has no direct writer: its frames carry a resume id only this
    // stream's task keeps.
    let live = Arc::new(Live::default());
    stream::attach(
        app,
        conn_id,
        &caller,
        out_tx,
        overflowed.clone(),
        live.clone(),
    )
    .await?;

    // Resume point: max(stored cursor, id) for listed groups; listed groups
    // the client has since acknowledged drop out of the id.
    let stored: HashMap<Vec<u8>, u64> = match app.store.cursors(&caller.device_id).await {
        Ok(c) => c.into_iter().collect(),
        Err(e) => {
            stream::close(app, conn_id).await;
            return Err(e.into());
        }
    };
    let resume = resume.unwrap_or_default();
    let mut pos = ResumeId {
        inbox_seq: resume.inbox_seq,
        groups: BTreeMap::new(),
    };
    let mut cursors = HashMap::new();
    for (g, seq) in resume.groups {
        let acked = stored.get(&g).copied().unwrap_or(0);
        if seq > acked {
            pos.groups.insert(g.clone(), seq);
            cursors.insert(g, seq);
        }
    }

    let (tx, rx) = mpsc::channel::<Bytes>(limits.send_buffer_frames);
    let sink = SseSink {
        tx,
        write_timeout: Duration::from_millis(limits.write_timeout_ms),
        pos,
    };
    let mut out = Stream::new(app.clone(), sink, live);
    out.caller = Some(caller.clone());
    let task_app = app.clone();
    actix_web::rt::spawn(async move {
        metrics::gauge!("hush_sse_streams").increment(1.0);
        let stop = serve(&task_app, &mut out, out_rx, overflowed, cursors).await;
        stream::close(&task_app, conn_id).await;
        tracing::debug!(conn = conn_id, reason = ?stop, "sse stream ended");
        crate::telemetry::stream_closed(
            "sse",
            stop.as_ref().err().map_or("going_away", Stop::label),
        );
        metrics::gauge!("hush_sse_streams").decrement(1.0);
    });

    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

async fn serve(
    app: &AppState,
    out: &mut Stream<SseSink>,
    mut rx: QueueRx,
    overflowed: Arc<AtomicBool>,
    cursors: HashMap<Vec<u8>, u64>,
) -> Result<(), Stop> {
    out.sink
        .send(Bytes::from(format!("retry: {RETRY_MS}\n\n")))
        .await?;
    let Some(caller) = out.caller.clone() else {
        return Err(Stop::Closed);
    };
    let ok = S::AuthOk(v1::AuthOk {
        user_id: caller.user_id,
        device_id: caller.device_id,
    });
    out.send_frame(0, ok).await?;
    let inbox_after = out.sink.pos.inbox_seq;
    match out.sync(0, cursors, inbox_after).await {
        Ok(()) => {}
        Err(Halt::Sink(stop)) => return Err(stop),
        Err(Halt::Api(e)) => {
            out.send_frame(0, S::Error(e.to_proto())).await?;
            return Err(Stop::Closed);
        }
    }
    let closed = out.sink.tx.clone();
    // Both waits made once, polled pinned (see `connections_closing`).
    let gone = closed.closed();
    tokio::pin!(gone);
    let mut keepalive = tokio::time::interval(app.config.heartbeat_interval());
    keepalive.tick().await;
    let closing = app.shutdown.connections_closing();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            () = &mut closing => return Ok(()),
            () = &mut gone => return Err(Stop::Closed),
            item = rx.recv() => match item {
                // `queued.counted` leaves the node's backlog once handled.
                Some(queued) => match out.on_outbound(queued.item).await {
                    Ok(()) => {}
                    Err(Halt::Sink(stop)) => return Err(stop),
                    Err(Halt::Api(e)) => out.send_frame(0, S::Error(e.to_proto())).await?,
                },
                None if overflowed.load(Ordering::SeqCst) => return Err(Stop::Slow),
                None => return Err(Stop::Closed),
            },
            _ = keepalive.tick() => out.sink.send(Bytes::from_static(b": keep-alive\n\n")).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_id_round_trips_and_rejects_junk() {
        let mut id = ResumeId {
            inbox_seq: 7,
            groups: BTreeMap::new(),
        };
        assert_eq!(ResumeId::parse(&id.encode()), Some(id.clone()));
        id.groups.insert(b"group-a".to_vec(), 42);
        id.groups.insert(vec![0xff, 0x00, 0x2e], 1);
        assert_eq!(ResumeId::parse(&id.encode()), Some(id));
        for junk in ["", "v2.1", "v1", "v1.x", "v1.1.abc", "v1.1.:3", "v1.1.YQ:x"] {
            assert_eq!(ResumeId::parse(junk), None, "{junk}");
        }
    }
}
