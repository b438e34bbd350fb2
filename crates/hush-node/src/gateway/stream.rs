//! The transport-independent half of a client stream, shared by the
//! WebSocket (`ws.rs`) and SSE (`sse.rs`) transports: attaching to the
//! user's SessionActor, the Sync backlog from cursors, live delivery with
//! gap fill, and exactly-once per stream by remembering the last seq sent
//! per group. A transport supplies only a [`Sink`] that writes one encoded
//! `ServerFrame` (bounded in time, so a reader that does not drain is cut
//! off).
//!
//! The last seq per group lives in the connection's [`Live`], which the
//! fan-out shares: on a transport with a
//! [`DirectSink`](crate::conns::DirectSink) (WebSocket) it writes a
//! group's next entry itself once the stream has synced, and the stream's
//! own entry writes check and record under the same lock
//! ([`Sink::write_entry`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hush_proto::{server_frame::Body as S, v1, ErrorCode};

use super::AppState;
use crate::conns::{Live, LocalConn, QueueTx};
use crate::error::{ApiError, ApiResult};
use crate::wire::{encode, inbox_frame, mark, Caller, EntryRef, Frame, Outbound};

/// Where a written frame puts the stream: the group entry it carries (if
/// any) and the inbox position after it. The SSE transport turns this into
/// the event id.
#[derive(Clone, Copy, Debug)]
pub struct Position<'a> {
    pub group: Option<(&'a [u8], u64)>,
    pub inbox_seq: u64,
}

/// Writes one encoded ServerFrame to the client.
// Streams run as local tasks on the actix worker that accepted them, so the
// futures need not be Send.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// Why the stream must end (a transport close reason).
    type Stop;
    async fn write(&mut self, frame: Frame, pos: Position<'_>) -> Result<(), Self::Stop>;

    /// Writes entry `seq` of a group unless `live` says it was written
    /// already, and records it there. This default checks, writes, then
    /// records: right for a transport nobody else writes to (no
    /// [`DirectSink`](crate::conns::DirectSink)); one that the fan-out
    /// writes to directly must check and write under one lock.
    async fn write_entry(
        &mut self,
        live: &Live,
        group_id: &[u8],
        seq: u64,
        frame: Frame,
        pos: Position<'_>,
    ) -> Result<(), Self::Stop> {
        if live.lock().has(group_id, seq) {
            return Ok(());
        }
        self.write(frame, pos).await?;
        live.lock().record(group_id, seq);
        Ok(())
    }
}

/// Why a delivery step failed: the sink stopped, or a request error to
/// report to the client.
pub enum Halt<T> {
    Sink(T),
    Api(ApiError),
}

impl<T> From<hush_store::StoreError> for Halt<T> {
    fn from(e: hush_store::StoreError) -> Self {
        Halt::Api(e.into())
    }
}

impl<T> From<ApiError> for Halt<T> {
    fn from(e: ApiError) -> Self {
        Halt::Api(e)
    }
}

/// Per-stream delivery state.
pub struct Stream<K: Sink> {
    pub app: Arc<AppState>,
    pub sink: K,
    pub caller: Option<Caller>,
    /// Per group, the last seq sent on this stream (shared with the
    /// fan-out, see the module docs).
    pub live: Arc<Live>,
    /// Last inbox_seq sent.
    pub inbox_sent: u64,
    pub synced: bool,
    /// The [`mark`] taken when the last completed Sync began reading the
    /// store.
    pub sync_mark: u64,
}

/// How long a new stream waits for its attach before it is served anyway.
/// An attach normally completes in a few ms, and a refusal (e.g.
/// `TOO_MANY_CONNECTIONS`) then comes before `AuthOk`; one that takes
/// longer (the session's node just died: until failure detection) goes on
/// in the background, so a resume's Sync is served from the store at once.
const ATTACH_INLINE_WAIT: Duration = Duration::from_millis(250);

/// Registers a stream in this node's connection table and attaches it to
/// its user's session, wherever that lives (see `ATTACH_INLINE_WAIT`). Once
/// attached, the stream reads what it may have missed from the store; a
/// refusal that comes later reaches it as `Outbound::Refused`.
pub async fn attach(
    app: &AppState,
    conn_id: u64,
    caller: &Caller,
    tx: QueueTx,
    overflowed: Arc<AtomicBool>,
    live: Arc<Live>,
) -> ApiResult<()> {
    let sessions = &app.sessions;
    // In the table first, so nothing the session sends once attached is
    // missed.
    sessions.conns().insert(
        conn_id,
        LocalConn {
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            tx,
            overflowed,
            session_node: app.route.me().to_owned(),
            depth: Default::default(),
            live,
        },
    );
    let outcome =
        sessions.attach_in_background(conn_id, caller.user_id.clone(), caller.device_id.clone());
    match tokio::time::timeout(ATTACH_INLINE_WAIT, outcome).await {
        Ok(Ok(Err(e))) => Err(e),
        Ok(_) => Ok(()),
        Err(_) => {
            metrics::counter!("hush_attach_deferred_total").increment(1);
            Ok(())
        }
    }
}

/// The stream ended: its session forgets it.
pub async fn close(app: &AppState, conn_id: u64) {
    app.sessions.close_conn(conn_id).await;
}

impl<K: Sink> Stream<K> {
    pub fn new(app: Arc<AppState>, sink: K, live: Arc<Live>) -> Self {
        Self {
            app,
            sink,
            caller: None,
            live,
            inbox_sent: 0,
            synced: false,
            sync_mark: 0,
        }
    }

    /// Writes a frame that carries no timeline entry.
    pub async fn send_frame(&mut self, request_id: u64, body: S) -> Result<(), K::Stop> {
        let pos = Position {
            group: None,
            inbox_seq: self.inbox_sent,
        };
        self.sink.write(encode(request_id, body), pos).await
    }

    /// Sends the backlog from the cursors (the client's, else the stored
    /// ones, never before the join), the inbox after `inbox_after`, then
    /// SyncCaughtUp; afterwards live events flow. SyncStarted carries
    /// `request_id`.
    pub async fn sync(
        &mut self,
        request_id: u64,
        client: HashMap<Vec<u8>, u64>,
        inbox_after: u64,
    ) -> Result<(), Halt<K::Stop>> {
        let Some(caller) = self.caller.clone() else {
            return Err(Halt::Api(ApiError::new(
                ErrorCode::Unauthenticated,
                "not authenticated",
            )));
        };
        let store = self.app.store.clone();
        // No direct writes from SyncStarted until SyncCaughtUp is out: the
        // backlog comes first, then live entries, as the client expects.
        self.live.lock().open = false;
        self.send_frame(request_id, S::SyncStarted(v1::SyncStarted {}))
            .await
            .map_err(Halt::Sink)?;
        // Cursors, groups, departures and the inbox's first page: one read,
        // which sees everything stored before this mark (it counts once
        // the Sync completed: a failed one covers nothing).
        let sync_mark = mark();
        let start = store
            .sync_start(
                &caller.device_id,
                inbox_after,
                self.app.config.limits.sync_page,
            )
            .await?;
        let stored: HashMap<Vec<u8>, u64> = start.cursors.into_iter().collect();
        self.live.lock().sent.clear();
        let cursor = |group_id: &[u8], joined_seq: u64| {
            client
                .get(group_id)
                .or_else(|| stored.get(group_id))
                .copied()
                .unwrap_or(0)
                .max(joined_seq)
        };
        let current = start.groups;
        for g in &current {
            self.live
                .lock()
                .sent
                .insert(g.group_id.clone(), cursor(&g.group_id, g.joined_seq));
            self.send_backlog(&g.group_id, None).await?;
        }
        // Groups the device was removed from: up to the removing commit, so
        // the client learns it is out. Live traffic for them stops there.
        for d in start.departed {
            if current.iter().any(|g| g.group_id == d.group_id) {
                continue;
            }
            self.live
                .lock()
                .sent
                .insert(d.group_id.clone(), cursor(&d.group_id, d.joined_seq));
            self.send_backlog(&d.group_id, Some(d.left_seq)).await?;
        }
        self.inbox_sent = inbox_after;
        let more = start.inbox.len() >= self.app.config.limits.sync_page as usize;
        for item in start.inbox {
            self.send_inbox(item.inbox_seq, inbox_frame(&item)).await?;
        }
        if more {
            self.send_new_inbox().await?;
        }
        self.synced = true;
        self.sync_mark = sync_mark;
        self.send_frame(0, S::SyncCaughtUp(v1::SyncCaughtUp {}))
            .await
            .map_err(Halt::Sink)?;
        self.live.lock().open = true;
        Ok(())
    }

    /// Sends stored entries of a group after what this stream sent, up to
    /// `upto` (or the head).
    async fn send_backlog(
        &mut self,
        group_id: &[u8],
        upto: Option<u64>,
    ) -> Result<(), Halt<K::Stop>> {
        let page = self.app.config.limits.sync_page;
        loop {
            let after = self.live.lock().sent.get(group_id).copied().unwrap_or(0);
            if upto.is_some_and(|u| after >= u) {
                return Ok(());
            }
            let entries = self.app.store.read_timeline(group_id, after, page).await?;
            if entries.is_empty() {
                return Ok(());
            }
            for e in entries {
                if upto.is_some_and(|u| e.seq > u) {
                    return Ok(());
                }
                let frame = EntryRef::stored(group_id, &e).frame();
                self.write_entry(group_id, e.seq, frame).await?;
            }
        }
    }

    async fn write_entry(
        &mut self,
        group_id: &[u8],
        seq: u64,
        frame: Frame,
    ) -> Result<(), Halt<K::Stop>> {
        let pos = Position {
            group: Some((group_id, seq)),
            inbox_seq: self.inbox_sent,
        };
        self.sink
            .write_entry(&self.live, group_id, seq, frame, pos)
            .await
            .map_err(Halt::Sink)
    }

    /// Sends the inbox items stored after what this stream sent.
    async fn send_new_inbox(&mut self) -> Result<(), Halt<K::Stop>> {
        let Some(caller) = self.caller.clone() else {
            return Ok(());
        };
        loop {
            let items = self
                .app
                .store
                .read_inbox(
                    &caller.device_id,
                    self.inbox_sent,
                    self.app.config.limits.sync_page,
                )
                .await?;
            if items.is_empty() {
                return Ok(());
            }
            for item in items {
                self.send_inbox(item.inbox_seq, inbox_frame(&item)).await?;
            }
        }
    }

    async fn send_inbox(&mut self, inbox_seq: u64, frame: Frame) -> Result<(), Halt<K::Stop>> {
        if inbox_seq <= self.inbox_sent {
            return Ok(());
        }
        let pos = Position {
            group: None,
            inbox_seq,
        };
        self.sink.write(frame, pos).await.map_err(Halt::Sink)?;
        self.inbox_sent = inbox_seq;
        Ok(())
    }

    /// The session moved: what it delivered meanwhile may be lost, the
    /// store has it.
    async fn resync(&mut self) -> Result<(), Halt<K::Stop>> {
        let groups: Vec<Vec<u8>> = self.live.lock().sent.keys().cloned().collect();
        for g in groups {
            Box::pin(self.send_backlog(&g, None)).await?;
        }
        self.send_new_inbox().await
    }

    /// A live item from the session: dropped if already sent, written if
    /// next, or preceded by the gap read from the store.
    ///
    /// The common case (the next seq of a group, an inbox item, a live-only
    /// frame) is awaited in place; the rare ones that read the store (a
    /// group joined after Sync, a gap, a resync) are boxed, so that every
    /// connection's task does not carry their futures' size while idle.
    pub async fn on_outbound(&mut self, item: Outbound) -> Result<(), Halt<K::Stop>> {
        match item {
            Outbound::Resync { mark } => {
                // Every attach queues one, and the client's Sync follows: a
                // Sync not begun yet, or one that began reading after the
                // resync was queued, reads (or read) all of it, and the live
                // queue has the rest.
                let covered = !self.synced || mark < self.sync_mark;
                let label = if covered { "true" } else { "false" };
                metrics::counter!("hush_resyncs_total", "covered" => label).increment(1);
                if covered {
                    Ok(())
                } else {
                    Box::pin(self.resync()).await
                }
            }
            Outbound::Answer { frame } => {
                let pos = Position {
                    group: None,
                    inbox_seq: self.inbox_sent,
                };
                self.sink.write(frame, pos).await.map_err(Halt::Sink)
            }
            // Not syncing yet: the backlog read at Sync time will include it.
            _ if !self.synced => Ok(()),
            Outbound::Group {
                group_id,
                seq,
                frame,
                ..
            } => {
                let known = self.live.lock().sent.get(group_id.as_ref()).copied();
                let last = match known {
                    Some(l) => l,
                    None => {
                        // A group joined after Sync: start after the join.
                        match Box::pin(self.joined_seq(&group_id)).await? {
                            Some(j) => *self.live.lock().sent.entry(group_id.to_vec()).or_insert(j),
                            None => return Ok(()),
                        }
                    }
                };
                if seq <= last {
                    Ok(())
                } else if seq == last + 1 {
                    self.write_entry(&group_id, seq, frame).await
                } else {
                    metrics::counter!("hush_gap_fills_total").increment(1);
                    Box::pin(self.send_backlog(&group_id, Some(seq))).await
                }
            }
            Outbound::Inbox {
                inbox_seq,
                group_id,
                commit_seq,
                frame,
            } => {
                let sent = if !frame.is_empty() {
                    self.send_inbox(inbox_seq, frame).await
                } else if inbox_seq > self.inbox_sent {
                    // From another node, without its frame: the store has it
                    // (it was stored before it was pushed). Boxed: rare.
                    Box::pin(self.send_new_inbox()).await
                } else {
                    Ok(())
                };
                // The device's timeline for this group starts after the
                // commit; known only once the Welcome is out, so that the
                // fan-out writes none of the group's entries before it.
                self.live
                    .lock()
                    .sent
                    .entry(group_id.to_vec())
                    .or_insert(commit_seq);
                sent
            }
            Outbound::Refused(e) => Err(Halt::Api(e)),
            Outbound::Ephemeral { frame } => {
                // Live only: no position of its own, never replayed.
                let pos = Position {
                    group: None,
                    inbox_seq: self.inbox_sent,
                };
                self.sink.write(frame, pos).await.map_err(Halt::Sink)
            }
        }
    }

    async fn joined_seq(&self, group_id: &[u8]) -> ApiResult<Option<u64>> {
        let Some(caller) = &self.caller else {
            return Ok(None);
        };
        Ok(self
            .app
            .store
            .groups_of_device(&caller.device_id)
            .await?
            .into_iter()
            .find(|g| g.group_id == group_id)
            .map(|g| g.joined_seq))
    }
}
