//! The client connections of this node (WebSocket and SSE streams), by
//! connection id and by device: the only place that holds their outbound
//! queues.
//!
//! A group's fan-out writes here by device ([`Connections::write_devices`]):
//! the owner of the group writes to its own node's connections of the
//! member devices, and hands every other node of the view the same item
//! and device list, which it writes to its connections the same way (one
//! hop, whichever node the users' sessions live on; see `session/mod.rs`).
//! A user's SessionActor (on the node that owns the user, in a cluster often
//! another one) remembers where each connection is for what only it decides
//! (how many connections, kicks, presence) and reaches a connection on
//! another node through a [`Delivery`](hush_proto::cluster::v1::Delivery)
//! addressed to connection ids.
//!
//! Bounds: each queue holds `limits.send_buffer_frames`. A write never
//! waits: a full queue means a slow reader, and that connection is cut off
//! (its queue ends, it closes itself with 4001) while every other
//! connection keeps going.
//!
//! A group's next entry for a connection that has synced skips the queue
//! (`Live::write_next`): the fan-out writes it to the transport itself
//! (a WebSocket's [`DirectSink`]) when the connection has written the
//! entry before it and the transport has room, so the connection's task
//! is not woken for it. Everything else (a gap, a Sync under way, a full
//! transport, SSE, every other kind of item) goes through the queue, and
//! the connection's task writes it with the same check under the same
//! lock: per group, entries go out in order and once. A WebSocket's direct
//! write is finished on the connection's own actix worker: the fan-out
//! leaves the frame pending for that worker's [`Pump`], so the worker is
//! woken a few times per fan-out rather than once per delivery.
//!
//! The node counts the frames waiting in all queues (and being written) for
//! admission (`admission.rs`: sends are refused while fan-out is that far
//! behind), each connection up to `limits.max_queued_deliveries_per_conn`
//! of them: a few slow readers, each about to be cut off, must not refuse
//! everyone's sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use hush_store::MemberDevice;

use crate::admission::DeliveryQueue;
use crate::wire::{Frame, Outbound};

/// A connection's outbound queue: bounded, and holding boxed items.
///
/// Boxed because a tokio channel allocates its slots 32 at a time, the
/// first 32 when it is created: unboxed, every connection, idle or not,
/// held 32 `QueuedItem`s of about 110 bytes (3.6 KiB of the 32.6 KiB a
/// connection cost, measured with heaptrack); boxed, 32 pointers. The box
/// is one small allocation per delivery.
pub fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    mpsc::channel(capacity)
}

pub type QueueTx = mpsc::Sender<Box<QueuedItem>>;
pub type QueueRx = mpsc::Receiver<Box<QueuedItem>>;

/// An item in a connection's queue; its place in the counts is given back
/// once the connection has handled it (or dropped with its queue).
#[derive(Debug)]
pub struct QueuedItem {
    pub item: Outbound,
    pub counted: Counted,
}

/// One queued item's place in the counts: its connection's depth, and the
/// node's backlog while that depth is within the connection's share. The
/// backlog holds the sum over connections of min(depth, share) exactly: it
/// grows when an item makes the depth at most the share, and shrinks when
/// an item leaves a depth that was at most the share.
///
/// It also times the item's wait, from its queueing until the connection
/// has handled it, for the backlog's delay window (`admission.rs`).
pub struct Counted {
    depth: Arc<AtomicUsize>,
    backlog: DeliveryQueue,
    share: usize,
    queued_at: tokio::time::Instant,
}

impl Counted {
    /// The place of an item already counted in `depth` and `backlog`
    /// (see [`Connections::write_many`]); given back when it drops.
    fn new(
        depth: &Arc<AtomicUsize>,
        backlog: &DeliveryQueue,
        share: usize,
        queued_at: tokio::time::Instant,
    ) -> Self {
        Self {
            depth: depth.clone(),
            backlog: backlog.clone(),
            share,
            queued_at,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.depth.fetch_sub(1, Ordering::AcqRel) <= self.share {
            self.backlog.sub(1);
        }
        self.backlog.waited(self.queued_at.elapsed());
    }
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counted")
    }
}

/// A connection on this node.
pub struct LocalConn {
    pub user_id: String,
    pub device_id: String,
    pub tx: QueueTx,
    /// Set when the connection was cut off for reading too slowly.
    pub overflowed: Arc<AtomicBool>,
    /// The node whose SessionActor the connection is attached to.
    pub session_node: String,
    /// Items in its queue or being handled (see [`Counted`]).
    pub depth: Arc<AtomicUsize>,
    /// What it has written of each group, shared with its task.
    pub live: Arc<Live>,
}

/// What a connection has written of each group's timeline, shared by the
/// connection's task and the fan-out's direct writes. Every write of a
/// group entry, by either, checks and moves `sent` under this lock, so a
/// group's entries reach the transport in order and once whoever writes
/// them. Lock order: the table's, then a connection's; never the other
/// way round.
#[derive(Default)]
pub struct Live {
    state: Mutex<LiveState>,
    /// Where the fan-out leaves its direct writes for the thread that runs
    /// the connection (`None`: it writes them itself).
    pump: Option<Arc<Pump>>,
}

#[derive(Default)]
pub struct LiveState {
    /// Per group: the last seq written to the transport.
    pub sent: HashMap<Vec<u8>, u64>,
    /// Whether the fan-out may write to the transport directly: the
    /// connection has synced and is not syncing again (its task says so).
    pub open: bool,
    /// The transport's direct writer; `None`: every item goes through the
    /// queue (SSE, whose frames carry a resume id the task keeps).
    pub direct: Option<Box<dyn DirectSink>>,
    /// A direct write the fan-out recorded in `sent` and reserved room for,
    /// not yet in the transport: the connection's [`Pump`] writes it, or the
    /// connection's task first thing on its next write ([`LiveState::flush`]),
    /// whichever comes first. While one is pending the fan-out queues.
    pending: Option<Frame>,
    /// Whether the connection is in its pump's list (until the pump has
    /// come to it): it is listed once however often its task wrote a
    /// pending frame first, so a pump's list never holds more than its
    /// worker's connections.
    listed: bool,
}

impl LiveState {
    /// Whether `seq` of the group was written already.
    pub fn has(&self, group_id: &[u8], seq: u64) -> bool {
        self.sent.get(group_id).is_some_and(|&last| seq <= last)
    }

    /// Writes the fan-out's pending direct write, if any, into the room it
    /// reserved. The connection's task calls it under the lock before each
    /// write of its own, so the transport takes frames in the order their
    /// seqs were recorded.
    pub fn flush(&mut self) {
        if let (Some(frame), Some(direct)) = (self.pending.take(), self.direct.as_mut()) {
            if direct.write(frame) {
                crate::telemetry::frame_out();
            }
        }
    }

    /// Records `seq` as the group's last written (no new key, and no
    /// allocation, for a group already known).
    pub fn record(&mut self, group_id: &[u8], seq: u64) {
        match self.sent.get_mut(group_id) {
            Some(last) => *last = seq,
            None => {
                self.sent.insert(group_id.to_vec(), seq);
            }
        }
    }
}

/// A transport the fan-out can write to without the connection's task.
pub trait DirectSink: Send {
    /// Whether a frame can be written now, without waiting; true reserves
    /// the room for the next [`DirectSink::write`].
    fn has_room(&mut self) -> bool;
    /// Writes a frame into the room [`DirectSink::has_room`] reserved
    /// (false: the transport closed meanwhile; its task ends it).
    fn write(&mut self, frame: Frame) -> bool;
}

impl Live {
    /// A connection's state, with its transport's direct writer if it has
    /// one (`None`: everything goes through its queue), and the [`Pump`] of
    /// the thread that runs the connection if the fan-out's direct writes
    /// should be handed to it (`None`: the fan-out writes them itself).
    pub fn new(direct: Option<Box<dyn DirectSink>>, pump: Option<Arc<Pump>>) -> Self {
        Self {
            state: Mutex::new(LiveState {
                direct,
                ..LiveState::default()
            }),
            pump,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes entry `seq` of a group to the transport directly if it is the
    /// group's next one there and the transport has room now; otherwise
    /// hands `counted` back for the queue. A frame written directly keeps
    /// its place in the counts until the transport has taken it (encoded
    /// it for the socket), so the backlog and the delivery waits
    /// admission reads still see it. With a pump and `pumped`, the frame
    /// is recorded and its room reserved here, and left pending for the
    /// pump (`Ok(true)`: the caller lists this connection with its pump,
    /// where it is not yet).
    fn write_next(
        &self,
        group_id: &[u8],
        seq: u64,
        frame: &Frame,
        counted: Counted,
        pumped: bool,
    ) -> Result<bool, Counted> {
        let mut live = self.lock();
        let LiveState {
            sent,
            open,
            direct,
            pending,
            listed,
        } = &mut *live;
        let Some(direct) = direct.as_mut() else {
            return Err(counted);
        };
        let Some(last) = sent.get_mut(group_id) else {
            return Err(counted);
        };
        if !*open || pending.is_some() || last.checked_add(1) != Some(seq) || !direct.has_room() {
            return Err(counted);
        }
        *last = seq;
        let frame = Frame::from_owner(Counting {
            frame: frame.clone(),
            _counted: counted,
        });
        if pumped && self.pump.is_some() {
            *pending = Some(frame);
            return Ok(!std::mem::replace(listed, true));
        }
        if direct.write(frame) {
            crate::telemetry::frame_out();
        }
        Ok(false)
    }

    /// The pump's turn: writes the pending direct write, if the
    /// connection's task has not, and takes the connection off the list.
    fn flush_listed(&self) {
        let mut live = self.lock();
        live.listed = false;
        live.flush();
    }
}

/// The fewest connections a fan-out hands to their workers' pumps; to
/// fewer it writes directly. A pump saves the wakes of a worker's second
/// and later connections in one fan-out and costs a task poll of its own:
/// with a connection or two per worker (a cluster's nodes at 1,000 msg/s
/// over groups of 10 see ~3 per fan-out) it saves nothing.
const PUMP_FROM: usize = 4;

/// The fan-out's direct writes for the connections one thread runs (an
/// actix worker), written on that thread.
///
/// The fan-out runs on the actor runtime; a connection's transport wakes
/// the connection's writer (actix's dispatcher) on its worker, and a wake
/// from another thread is a syscall (tokio's remote schedule writes the
/// worker's eventfd): one per delivery, a sixth of the actor runtime's
/// profile at 3,000 msg/s. So the fan-out records the entry and reserves
/// the room (`Live::write_next`), leaves the frame pending in the
/// connection's [`Live`] and the connection in the pump's list, and wakes
/// the pump only when that list was empty; the pump, on the worker, writes
/// every pending frame listed, and those wakes are the worker's own. A
/// fan-out to 1,000 connections wakes each worker's pump a few times, not
/// 500 (at once, not after the loop: the worker starts writing while the
/// fan-out goes on). Order holds because a pending frame is written before
/// anything else the connection writes ([`LiveState::flush`]) and the
/// fan-out writes no other directly until it is.
#[derive(Default)]
pub struct Pump {
    due: Mutex<Vec<Arc<Live>>>,
    wake: tokio::sync::Notify,
    /// Set when [`Pump::run`] ended (its runtime stopped): a thread asks for
    /// a new pump then (`Pump::run`'s caller keeps one per thread).
    stopped: AtomicBool,
}

impl Pump {
    /// Whether the pump's task has ended.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Leaves a connection with a pending write; true when the pump must
    /// be woken for it (nothing was due before: whoever makes the list
    /// non-empty wakes the pump; it takes everything listed by then).
    fn push(&self, live: Arc<Live>) -> bool {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        due.push(live);
        due.len() == 1
    }

    /// The pump's task: on the thread whose connections it serves.
    pub async fn run(self: Arc<Self>) {
        struct Stopped<'a>(&'a AtomicBool);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stopped = Stopped(&self.stopped);
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            while self.write_due(&mut batch) > 0 {}
        }
    }

    /// Writes the pending frame of every connection listed now (`batch`:
    /// an empty list to swap with, so that the two lists' allocations are
    /// reused); how many were listed.
    pub fn write_due(&self, batch: &mut Vec<Arc<Live>>) -> usize {
        std::mem::swap(
            batch,
            &mut *self.due.lock().unwrap_or_else(|p| p.into_inner()),
        );
        let listed = batch.len();
        for live in batch.drain(..) {
            live.flush_listed();
        }
        listed
    }
}

/// A frame written directly, holding its place in the counts while the
/// transport holds it.
struct Counting {
    frame: Frame,
    _counted: Counted,
}

impl AsRef<[u8]> for Counting {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

/// A connection that must attach again: its user's session moved to
/// another node, or the session's node may have forgotten it.
pub struct Moved {
    pub conn_id: u64,
    pub user_id: String,
    pub device_id: String,
}

/// A connection a write found gone (its reader ended, or it was cut off
/// now as a slow reader), forgotten here, with what its session needs to
/// forget it too.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone {
    pub conn_id: u64,
    pub user_id: String,
    /// Where its session is (`LocalConn::session_node`).
    pub session_node: String,
}

/// The table: connections by id, and their ids by device (a device id is
/// unique across users: the store's `devices` table says so).
#[derive(Default)]
struct Table {
    by_id: HashMap<u64, LocalConn>,
    by_device: HashMap<String, Vec<u64>>,
}

impl Table {
    fn remove(&mut self, conn_id: u64) -> Option<LocalConn> {
        let conn = self.by_id.remove(&conn_id)?;
        if let Some(ids) = self.by_device.get_mut(&conn.device_id) {
            ids.retain(|&id| id != conn_id);
            if ids.is_empty() {
                self.by_device.remove(&conn.device_id);
            }
        }
        Some(conn)
    }
}

pub struct Connections {
    inner: Mutex<Table>,
    /// The frames waiting in the queues, counted for admission.
    backlog: DeliveryQueue,
    /// How many of one queue's frames count (see the module doc).
    counted_per_conn: usize,
}

impl Connections {
    /// A table whose queues count up to `counted_per_conn` frames each
    /// towards the backlog.
    pub fn new(counted_per_conn: usize) -> Self {
        Self {
            inner: Mutex::default(),
            backlog: DeliveryQueue::default(),
            counted_per_conn,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames waiting in this node's connection queues (see the module
    /// doc).
    pub fn backlog(&self) -> &DeliveryQueue {
        &self.backlog
    }

    pub fn insert(&self, conn_id: u64, conn: LocalConn) {
        let mut table = self.lock();
        // Ids are never reused; the index stays true all the same.
        table.remove(conn_id);
        table
            .by_device
            .entry(conn.device_id.clone())
            .or_default()
            .push(conn_id);
        table.by_id.insert(conn_id, conn);
        drop(table);
        metrics::gauge!("hush_connections_attached").increment(1.0);
    }

    /// Forgets a connection; dropping its queue's sender ends the
    /// connection (with 4001 if it was cut off as slow).
    pub fn remove(&self, conn_id: u64) -> Option<LocalConn> {
        let conn = self.lock().remove(conn_id);
        if conn.is_some() {
            metrics::gauge!("hush_connections_attached").decrement(1.0);
        }
        conn
    }

    /// Queues `item` for a connection. False when the connection is gone:
    /// unknown, closed, or cut off now because its queue is full.
    pub fn write(&self, conn_id: u64, item: Outbound) -> bool {
        self.write_many([conn_id], &item).is_empty()
    }

    /// Queues `item` for each of `conn_ids` and returns those found gone:
    /// unknown, closed, or cut off now because their queue is full.
    pub fn write_many(&self, conn_ids: impl IntoIterator<Item = u64>, item: &Outbound) -> Vec<u64> {
        let conn_ids: Vec<u64> = conn_ids.into_iter().collect();
        let mut gone = Vec::new();
        let removed = self.queue_each(move |_| conn_ids, item, |conn_id| gone.push(conn_id));
        gone.extend(removed.into_iter().map(|g| g.conn_id));
        gone
    }

    /// Queues `item` for every connection on this node of `devices` (a
    /// fan-out's recipients; a device may have several connections, or
    /// none here) and returns the connections found gone (closed, or cut
    /// off now because their queue is full), forgotten here, for their
    /// sessions to forget too.
    pub fn write_devices(&self, devices: &[MemberDevice], item: &Outbound) -> Vec<Gone> {
        self.queue_each(
            |table| {
                let mut ids = Vec::with_capacity(devices.len());
                for d in devices {
                    let Some(found) = table.by_device.get(&d.device_id) else {
                        continue;
                    };
                    // The same device id under another user is not this
                    // member's (device ids are unique; this is a check).
                    ids.extend(
                        found.iter().copied().filter(|id| {
                            table.by_id.get(id).is_some_and(|c| c.user_id == d.user_id)
                        }),
                    );
                }
                ids
            },
            item,
            |_| {},
        )
    }

    /// The write of [`Connections::write_many`] and
    /// [`Connections::write_devices`]: the ids `targets` picks from the
    /// table, each queued a clone of `item`, all under one lock of the
    /// table, with one clock reading and one change of the node's backlog
    /// for them all, not one per connection (at 1,000 recipients these were
    /// a tenth of the fan-out). The backlog counts the batch before any item
    /// is queued (a reader could take an item and give its count back
    /// before the batch added it), then gives back what its connections'
    /// shares left uncounted: it may read a little high meanwhile, never
    /// low. Ids not in the table go to `unknown`; connections closed or cut
    /// off are removed from the table and returned.
    fn queue_each(
        &self,
        targets: impl FnOnce(&Table) -> Vec<u64>,
        item: &Outbound,
        mut unknown: impl FnMut(u64),
    ) -> Vec<Gone> {
        let queued_at = tokio::time::Instant::now();
        let share = self.counted_per_conn;
        let mut ended = Vec::new();
        let mut queued = 0usize;
        let mut direct = 0u64;
        let mut gone = Vec::new();
        {
            let mut table = self.lock();
            let conn_ids = targets(&table);
            if conn_ids.is_empty() {
                return gone;
            }
            let pumped = conn_ids.len() >= PUMP_FROM;
            self.backlog.add(conn_ids.len());
            let mut uncounted = conn_ids.len();
            for conn_id in conn_ids {
                let Some(conn) = table.by_id.get(&conn_id) else {
                    unknown(conn_id);
                    continue;
                };
                if conn.depth.fetch_add(1, Ordering::AcqRel) < share {
                    uncounted -= 1;
                }
                let mut counted = Counted::new(&conn.depth, &self.backlog, share, queued_at);
                if let Outbound::Group {
                    group_id,
                    seq,
                    frame,
                    ..
                } = item
                {
                    match conn.live.write_next(group_id, *seq, frame, counted, pumped) {
                        Ok(pending) => {
                            queued += 1;
                            direct += 1;
                            if let (true, Some(pump)) = (pending, &conn.live.pump) {
                                if pump.push(conn.live.clone()) {
                                    pump.wake.notify_one();
                                }
                            }
                            continue;
                        }
                        Err(back) => counted = back,
                    }
                }
                let queued_item = Box::new(QueuedItem {
                    item: item.clone(),
                    counted,
                });
                match conn.tx.try_send(queued_item) {
                    Ok(()) => queued += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        conn.overflowed.store(true, Ordering::SeqCst);
                        ended.push(conn_id);
                        metrics::counter!("hush_slow_consumers_cut_total").increment(1);
                        tracing::info!(conn_id, "cut off slow reader");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => ended.push(conn_id),
                }
            }
            self.backlog.sub(uncounted);
            for conn_id in ended {
                if let Some(conn) = table.remove(conn_id) {
                    gone.push(Gone {
                        conn_id,
                        user_id: conn.user_id,
                        session_node: conn.session_node,
                    });
                }
            }
        }
        if !gone.is_empty() {
            metrics::gauge!("hush_connections_attached").decrement(gone.len() as f64);
        }
        if direct > 0 {
            crate::telemetry::frames_direct(direct);
        }
        // Timed outside the table's lock: one sample per batch, when its
        // last item was queued.
        if queued > 0 {
            if let Outbound::Group {
                durable_at: Some(t),
                ..
            } = item
            {
                crate::telemetry::delivered_since(*t);
            }
        }
        gone
    }

    /// How many connections this node has.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().by_id.is_empty()
    }

    /// Records which node's session a connection is attached to now.
    /// False when the connection is gone meanwhile (its session must then
    /// be told to forget it).
    pub fn attached_to(&self, conn_id: u64, node: &str) -> bool {
        match self.lock().by_id.get_mut(&conn_id) {
            Some(conn) => {
                node.clone_into(&mut conn.session_node);
                true
            }
            None => false,
        }
    }

    /// The connections whose user's session `owner` places elsewhere than
    /// where they are attached.
    pub fn moved(&self, owner: impl Fn(&str) -> String) -> Vec<Moved> {
        self.lock()
            .by_id
            .iter()
            .filter(|(_, c)| owner(&c.user_id) != c.session_node)
            .map(|(id, c)| Moved {
                conn_id: *id,
                user_id: c.user_id.clone(),
                device_id: c.device_id.clone(),
            })
            .collect()
    }

    /// The ids of every connection on this node.
    pub fn ids(&self) -> Vec<u64> {
        self.lock().by_id.keys().copied().collect()
    }

    /// Every connection on this node, to attach again (see
    /// `Sessions::follow_view`: this node was declared down meanwhile).
    pub fn all(&self) -> Vec<Moved> {
        self.lock()
            .by_id
            .iter()
            .map(|(id, c)| Moved {
                conn_id: *id,
                user_id: c.user_id.clone(),
                device_id: c.device_id.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(table: &Connections, id: u64) -> QueueRx {
        conn_of(table, id, "u", "d")
    }

    fn conn_of(table: &Connections, id: u64, user: &str, device: &str) -> QueueRx {
        conn_with(table, id, user, device, Arc::default())
    }

    /// A connection with the given shared state (a transport the fan-out
    /// can write to directly, a pump); its queue's receiving end.
    fn conn_with(
        table: &Connections,
        id: u64,
        user: &str,
        device: &str,
        live: Arc<Live>,
    ) -> QueueRx {
        let (tx, rx) = queue(8);
        table.insert(
            id,
            LocalConn {
                user_id: user.into(),
                device_id: device.into(),
                tx,
                overflowed: Arc::default(),
                session_node: format!("session-of-{user}"),
                depth: Arc::default(),
                live,
            },
        );
        rx
    }

    fn member(user: &str, device: &str) -> MemberDevice {
        MemberDevice {
            user_id: user.into(),
            device_id: device.into(),
        }
    }

    fn marks(rx: &mut QueueRx) -> Vec<u64> {
        let mut got = Vec::new();
        while let Ok(q) = rx.try_recv() {
            if let Outbound::Resync { mark } = q.item {
                got.push(mark);
            }
        }
        got
    }

    /// A fan-out by device reaches every connection here of each member
    /// device (a device may have two), none of another device, and none
    /// whose user is not the member's; a full queue is cut off and named
    /// with its session's node, and forgotten by device too.
    #[test]
    fn a_fan_out_by_device_writes_to_each_connection_of_the_members() {
        let table = Connections::new(4);
        let mut alice_phone = conn_of(&table, 1, "alice", "a-phone");
        let mut alice_phone_again = conn_of(&table, 2, "alice", "a-phone");
        let mut alice_laptop = conn_of(&table, 3, "alice", "a-laptop");
        let mut bob = conn_of(&table, 4, "bob", "b-phone");
        let _carol_full = conn_of(&table, 5, "carol", "c-phone");
        for _ in 0..8 {
            assert!(table.write(5, Outbound::Resync { mark: 0 }));
        }
        let members = [
            member("alice", "a-phone"),
            member("bob", "b-phone"),
            member("carol", "c-phone"),
            member("dave", "d-phone"),
            // Not bob's laptop: the id is alice's, the user is not.
            member("bob", "a-laptop"),
        ];
        let gone = table.write_devices(&members, &Outbound::Resync { mark: 7 });
        assert_eq!(
            gone,
            [Gone {
                conn_id: 5,
                user_id: "carol".into(),
                session_node: "session-of-carol".into(),
            }]
        );
        assert_eq!(marks(&mut alice_phone), [7]);
        assert_eq!(marks(&mut alice_phone_again), [7]);
        assert_eq!(marks(&mut bob), [7]);
        assert!(marks(&mut alice_laptop).is_empty(), "not a member device");
        // The cut-off connection is gone by id and by device.
        assert_eq!(table.len(), 4);
        let again =
            table.write_devices(&[member("carol", "c-phone")], &Outbound::Resync { mark: 8 });
        assert!(again.is_empty(), "nothing left of carol's device");
        // A connection that ends leaves its device's other connection.
        table.remove(1);
        drop(alice_phone);
        let gone = table.write_devices(&members[..1], &Outbound::Resync { mark: 9 });
        assert!(gone.is_empty());
        assert_eq!(marks(&mut alice_phone_again), [9]);
    }

    /// A connection whose reader ended is found gone by the next fan-out:
    /// forgotten here and named for its session.
    #[test]
    fn a_fan_out_names_a_connection_whose_reader_ended() {
        let table = Connections::new(4);
        let reader = conn_of(&table, 1, "alice", "a-phone");
        drop(reader);
        let gone =
            table.write_devices(&[member("alice", "a-phone")], &Outbound::Resync { mark: 1 });
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].conn_id, 1);
        assert!(table.is_empty());
        assert_eq!(table.backlog().depth(), 0, "its place given back");
    }

    /// The backlog is the sum of min(depth, share) over the connections:
    /// a reader far behind counts its share, no more, and gives it back as
    /// it catches up.
    #[test]
    fn each_connection_counts_at_most_its_share() {
        let table = Connections::new(2);
        let mut slow = conn(&table, 1);
        let mut quick = conn(&table, 2);
        for _ in 0..5 {
            assert!(table.write(1, Outbound::Resync { mark: 0 }));
        }
        assert_eq!(table.backlog().depth(), 2, "5 queued, share 2");
        assert!(table.write(2, Outbound::Resync { mark: 0 }));
        assert_eq!(table.backlog().depth(), 3);
        let mut depths = Vec::new();
        while let Ok(item) = slow.try_recv() {
            drop(item);
            depths.push(table.backlog().depth());
        }
        assert_eq!(depths, [3, 3, 3, 2, 1], "4, 3, 2, 1, 0 left of 5");
        // Handling ends when the item is dropped, not when it is received.
        let item = quick.try_recv().expect("queued");
        assert_eq!(table.backlog().depth(), 1);
        drop(item);
        assert_eq!(table.backlog().depth(), 0);
        // Items still queued when a connection goes give their place back.
        for _ in 0..3 {
            assert!(table.write(2, Outbound::Resync { mark: 0 }));
        }
        assert_eq!(table.backlog().depth(), 2);
        table.remove(2);
        drop(quick);
        assert_eq!(table.backlog().depth(), 0);
    }

    /// A fan-out's batch: one call queues to every live connection, names
    /// the unknown and the cut-off ones (a full queue is cut off, and its
    /// connection forgotten), and leaves the backlog counting exactly what
    /// is queued within each connection's share.
    #[test]
    fn a_batch_queues_to_each_and_names_the_gone() {
        let table = Connections::new(2);
        let mut a = conn(&table, 1);
        let _b = conn(&table, 2);
        // Connection 2's queue (capacity 8) is full.
        for _ in 0..8 {
            assert!(table.write(2, Outbound::Resync { mark: 0 }));
        }
        assert_eq!(table.backlog().depth(), 2, "8 queued, share 2");
        let item = Outbound::Resync { mark: 1 };
        let gone = table.write_many([1, 9, 2, 1], &item);
        assert_eq!(gone, [9, 2], "unknown first, then the cut-off");
        assert_eq!(table.len(), 1, "the cut-off connection is forgotten");
        assert_eq!(
            table.backlog().depth(),
            2 + 2,
            "two for 1, 2's share as it was"
        );
        let mut got = Vec::new();
        while let Ok(q) = a.try_recv() {
            got.push(matches!(q.item, Outbound::Resync { mark: 1 }));
        }
        assert_eq!(got, [true, true]);
        assert_eq!(table.backlog().depth(), 2, "1's items handled");
        assert!(table.write_many([], &item).is_empty());
    }

    /// A transport the tests fill and drain by hand.
    #[derive(Clone, Default)]
    struct Transport(Arc<Mutex<(usize, Vec<Frame>)>>);

    impl Transport {
        fn room(&self, n: usize) {
            self.0.lock().unwrap().0 = n;
        }
        fn take(&self) -> Vec<Frame> {
            std::mem::take(&mut self.0.lock().unwrap().1)
        }
    }

    impl DirectSink for Transport {
        fn has_room(&mut self) -> bool {
            self.0.lock().unwrap().0 > 0
        }
        fn write(&mut self, frame: Frame) -> bool {
            let mut t = self.0.lock().unwrap();
            t.0 -= 1;
            t.1.push(frame);
            true
        }
    }

    fn entry(seq: u64) -> Outbound {
        Outbound::Group {
            group_id: Arc::from(&b"g"[..]),
            seq,
            frame: Frame::from(format!("entry {seq}")),
            durable_at: None,
        }
    }

    fn seqs(rx: &mut QueueRx) -> Vec<u64> {
        let mut got = Vec::new();
        while let Ok(q) = rx.try_recv() {
            if let Outbound::Group { seq, .. } = q.item {
                got.push(seq);
            }
        }
        got
    }

    /// The fan-out writes a group's next entry to the transport itself only
    /// when the connection is open for it (synced, not syncing), has
    /// written the entry before it, and the transport has room now; every
    /// other entry goes through the queue, for the connection's task (which
    /// fills gaps from the store). A frame written directly keeps its place
    /// in the counts until the transport drops it.
    #[test]
    fn the_next_entry_skips_the_queue_when_the_transport_has_room() {
        let table = Connections::new(4);
        let transport = Transport::default();
        let live = Arc::new(Live::new(Some(Box::new(transport.clone())), None));
        let mut rx = conn_with(&table, 1, "u", "d", live.clone());
        transport.room(8);
        // Not synced yet: queued.
        assert!(table.write(1, entry(1)));
        live.lock().sent.insert(b"g".to_vec(), 1);
        assert!(table.write(1, entry(2)));
        assert_eq!(seqs(&mut rx), [1, 2]);
        assert!(transport.take().is_empty());

        live.lock().open = true;
        assert!(table.write(1, entry(2)));
        assert!(table.write(1, entry(3)));
        // A repeat and a gap are the task's to judge.
        assert!(table.write(1, entry(3)));
        assert!(table.write(1, entry(5)));
        let written = transport.take();
        assert_eq!(written, [Frame::from("entry 2"), Frame::from("entry 3")]);
        assert_eq!(live.lock().sent[&b"g"[..]], 3);
        assert_eq!(table.backlog().depth(), 4, "two written, two queued");
        drop(written);
        assert_eq!(table.backlog().depth(), 2, "the transport took them");
        assert_eq!(seqs(&mut rx), [3, 5]);

        // No room: queued, and the group's later entries follow it there.
        transport.room(0);
        live.lock().record(b"g", 5);
        assert!(table.write(1, entry(6)));
        transport.room(8);
        assert!(table.write(1, entry(7)));
        assert_eq!(seqs(&mut rx), [6, 7]);
        assert!(transport.take().is_empty());
        // Another group's entries never go direct before it is known.
        let other = Outbound::Group {
            group_id: Arc::from(&b"h"[..]),
            seq: 1,
            frame: Frame::from("h 1"),
            durable_at: None,
        };
        assert!(table.write(1, other));
        assert_eq!(
            rx.try_recv()
                .map(|q| matches!(q.item, Outbound::Group { seq: 1, .. }))
                .ok(),
            Some(true)
        );
        assert_eq!(table.backlog().depth(), 0);
    }

    /// With a pump, a fan-out to enough connections records each direct
    /// write and reserves its room at once but leaves the write to the
    /// pump (on the connections' thread), or to the connection's own next
    /// write if that comes first; while one is pending, the group's next
    /// entries go through the queue. A fan-out to fewer writes directly.
    #[tokio::test]
    async fn a_pump_writes_the_fan_outs_direct_entries() {
        let table = Connections::new(4);
        let pump = Arc::new(Pump::default());
        let ids: Vec<u64> = (1..=PUMP_FROM as u64).collect();
        let mut conns = Vec::new();
        for &id in &ids {
            let transport = Transport::default();
            let live = Arc::new(Live::new(
                Some(Box::new(transport.clone())),
                Some(pump.clone()),
            ));
            let rx = conn_with(&table, id, "u", &format!("d{id}"), live.clone());
            transport.room(8);
            live.lock().open = true;
            live.lock().record(b"g", 1);
            conns.push((transport, rx, live));
        }
        let n = ids.len();

        assert!(table.write_many(ids.clone(), &entry(2)).is_empty());
        for (transport, _, live) in &conns {
            assert_eq!(live.lock().sent[&b"g"[..]], 2, "recorded at once");
            assert!(transport.take().is_empty(), "not written yet");
        }
        assert!(table.write_many(ids.clone(), &entry(3)).is_empty());
        assert_eq!(table.backlog().depth(), 2 * n, "pending frames count");
        for (_, rx, _) in &mut conns {
            assert_eq!(seqs(rx), [3], "one pending at a time");
        }
        // The connection's own write goes after the pending one.
        let (transport, _, live) = &conns[0];
        live.lock().flush();
        let written = transport.take();
        assert_eq!(written, [Frame::from("entry 2")]);
        drop(written);
        assert_eq!(table.backlog().depth(), n - 1, "the transport took it");
        // A new pending write of a connection still listed lists it once.
        live.lock().record(b"g", 3);
        assert!(table.write_many(ids.clone(), &entry(4)).is_empty());
        assert_eq!(pump.due.lock().unwrap().len(), n, "each listed once");
        for (_, rx, _) in &mut conns[1..] {
            assert_eq!(seqs(rx), [4], "behind their pending one");
        }

        // Nobody else writes: the pump does, once woken.
        let running = tokio::spawn(pump.clone().run());
        for _ in 0..100 {
            if conns
                .iter()
                .all(|(t, _, _)| t.0.lock().unwrap().1.len() == 1)
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(conns[0].0.take(), [Frame::from("entry 4")]);
        for (transport, _, live) in &conns[1..] {
            assert_eq!(transport.take(), [Frame::from("entry 2")]);
            assert!(live.lock().pending.is_none());
        }
        assert!(conns.iter().all(|(_, _, l)| !l.lock().listed));
        assert_eq!(table.backlog().depth(), 0);

        // A fan-out to fewer connections writes directly.
        let (transport, _, live) = &conns[0];
        assert!(table.write(ids[0], entry(5)));
        assert_eq!(transport.take(), [Frame::from("entry 5")]);
        assert!(live.lock().pending.is_none());

        assert!(!pump.stopped());
        running.abort();
        let _ = running.await;
        assert!(pump.stopped(), "a pump whose task ended says so");
    }
}
