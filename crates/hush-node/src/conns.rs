//! The client connections of this node (WebSocket and SSE streams), by
//! connection id: the only place that holds their outbound queues.
//!
//! A connection is served by its user's SessionActor, which lives on the
//! node that owns the user (in a cluster, often another node). The session
//! remembers *where* each connection is (node, id) and writes to it through
//! this table: directly when the connection is here, through a
//! [`Delivery`](hush_proto::cluster::v1::Delivery) addressed to connection
//! ids when it is on another node.
//!
//! Bounds: each queue holds `limits.send_buffer_frames`. A write never
//! waits: a full queue means a slow reader, and that connection is cut off
//! (its queue ends, it closes itself with 4001) while every other
//! connection keeps going.
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

use crate::admission::DeliveryQueue;
use crate::wire::Outbound;

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
}

/// A connection that must attach again: its user's session moved to
/// another node, or the session's node may have forgotten it.
pub struct Moved {
    pub conn_id: u64,
    pub user_id: String,
    pub device_id: String,
}

pub struct Connections {
    inner: Mutex<HashMap<u64, LocalConn>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LocalConn>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames waiting in this node's connection queues (see the module
    /// doc).
    pub fn backlog(&self) -> &DeliveryQueue {
        &self.backlog
    }

    pub fn insert(&self, conn_id: u64, conn: LocalConn) {
        self.lock().insert(conn_id, conn);
        metrics::gauge!("hush_connections_attached").increment(1.0);
    }

    /// Forgets a connection; dropping its queue's sender ends the
    /// connection (with 4001 if it was cut off as slow).
    pub fn remove(&self, conn_id: u64) -> Option<LocalConn> {
        let conn = self.lock().remove(&conn_id);
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

    /// Queues `item` for each of `conn_ids` (a fan-out's connections on
    /// this node) and returns those found gone: unknown, closed, or cut off
    /// now because their queue is full.
    ///
    /// One lock of the table, one clock reading and one change of the
    /// node's backlog for them all, not one per connection: at 1,000
    /// recipients these were a tenth of the fan-out. The backlog counts the
    /// batch before any item is queued (a reader could take an item and
    /// give its count back before the batch added it), then gives back
    /// what its connections' shares left uncounted: it may read a little
    /// high meanwhile, never low.
    pub fn write_many<I>(&self, conn_ids: I, item: &Outbound) -> Vec<u64>
    where
        I: IntoIterator<Item = u64>,
        I::IntoIter: ExactSizeIterator,
    {
        let conn_ids = conn_ids.into_iter();
        let mut gone = Vec::new();
        if conn_ids.len() == 0 {
            return gone;
        }
        let queued_at = tokio::time::Instant::now();
        let mut cut = Vec::new();
        let mut queued = 0usize;
        let share = self.counted_per_conn;
        self.backlog.add(conn_ids.len());
        let mut uncounted = conn_ids.len();
        {
            let table = self.lock();
            for conn_id in conn_ids {
                let Some(conn) = table.get(&conn_id) else {
                    gone.push(conn_id);
                    continue;
                };
                if conn.depth.fetch_add(1, Ordering::AcqRel) < share {
                    uncounted -= 1;
                }
                let counted = Counted::new(&conn.depth, &self.backlog, share, queued_at);
                let queued_item = Box::new(QueuedItem {
                    item: item.clone(),
                    counted,
                });
                match conn.tx.try_send(queued_item) {
                    Ok(()) => queued += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        conn.overflowed.store(true, Ordering::SeqCst);
                        cut.push(conn_id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push(conn_id),
                }
            }
        }
        self.backlog.sub(uncounted);
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
        for &conn_id in &cut {
            metrics::counter!("hush_slow_consumers_cut_total").increment(1);
            tracing::info!(conn_id, "cut off slow reader");
        }
        gone.extend(cut);
        for &conn_id in &gone {
            self.remove(conn_id);
        }
        gone
    }

    /// How many connections this node has.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Records which node's session a connection is attached to now.
    /// False when the connection is gone meanwhile (its session must then
    /// be told to forget it).
    pub fn attached_to(&self, conn_id: u64, node: &str) -> bool {
        match self.lock().get_mut(&conn_id) {
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
        self.lock().keys().copied().collect()
    }

    /// Every connection on this node, to attach again (see
    /// `Sessions::follow_view`: this node was declared down meanwhile).
    pub fn all(&self) -> Vec<Moved> {
        self.lock()
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
        let (tx, rx) = queue(8);
        table.insert(
            id,
            LocalConn {
                user_id: "u".into(),
                device_id: "d".into(),
                tx,
                overflowed: Arc::default(),
                session_node: "n".into(),
                depth: Arc::default(),
            },
        );
        rx
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
}
