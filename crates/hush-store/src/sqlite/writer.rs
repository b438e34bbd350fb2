//! The writer: one `std::thread` per store owns the only write connection
//! and commits queued operations in batches (group commit). It takes
//! everything already queued (up to `max_batch`), runs it in one
//! `BEGIN IMMEDIATE` transaction with a `SAVEPOINT` per operation (a failing
//! or panicking operation rolls back alone), commits once, and only then
//! replies to every caller. Invariants: nobody hears "ok" before the batch's
//! `COMMIT` returned; if the batch fails, every operation that succeeded
//! inside it gets the batch's error instead (operations that failed on their
//! own keep their own error: they wrote nothing either way); the writer never
//! leaves a transaction open between batches.
//!
//! Two lanes. Cursor acks arrive in herds: every member of a group acks the
//! same message within a few ms, so 1,000 members put 1,000 acks in the
//! queue at once, and a send queued behind them waited for four full
//! batches of 256 (1-5 ms each, measured with the fanout scenario's 1,000
//! receivers acking together every 200 ms). Acks
//! ([`Lane::Ack`]) now wait in their own queue and go after every other
//! operation queued: a batch that carries other operations takes at most
//! `max_acks` acks beside them, so those wait for a few acks, not for the
//! herd. A batch with nothing else to write fills up with acks (up to
//! `max_batch`): one fsync per batch bounds how many acks a second a slow
//! disk takes, and capping every batch would cut that `max_batch /
//! max_acks` times. A send that arrives during such a batch waits for it:
//! one batch of acks at most. Nobody awaits an ack's commit to go on, and
//! an ack commutes with the other writes (it moves a cursor only forward, and
//! checks the group's head inside its own operation), so reordering them is
//! safe. Each lane stays FIFO.
//!
//! Group commit's delay (`SqliteConfig::commit_delay`, `store.commit_delay_us`):
//! on an idle writer each write is a commit and an fsync of its own, and at
//! 1,000 msg/s over 100 groups that was most of the writer's CPU. With a
//! delay, a write that finds the writer idle and few others queued waits
//! that long for company before its batch commits, but only while writes
//! arrive often enough that company is expected within the delay (the
//! smoothed gap between writes is shorter than it, [`Arrivals`]; as
//! PostgreSQL's `commit_siblings`): a lone write on a quiet node commits at
//! once, and a wait that gathered nothing makes the next lone writes
//! commit at once (a closed-loop client writes often, never two at a
//! time). A busy writer never waits (its batches form while it commits).
//! Nobody is answered before the commit either way.
//!
//! Acks alone gather (`SqliteConfig::ack_delay`, `store.ack_delay_us`): a
//! batch with nothing but acks to write waits for more acks, until its
//! oldest ack has waited `ack_delay` or any other write arrives (that one
//! goes at once, with the acks beside it); a batch already full of acks
//! does not wait. The acks that arrive meanwhile do not end the wait (the
//! writer does not listen for them, below): a herd waits `ack_delay`, then
//! goes in full batches. Receivers ack
//! one by one as their own timers fire (the fanout scenario's 1,000
//! receivers each ack every 200 ms, 5,000 acks a second at 3,000 msg/s), and
//! an idle writer committed each ack or two as a transaction of its own:
//! most of the writer's CPU in the large-group scenario was a transaction's
//! fixed cost (begin, WAL frames, commit) paid for ~4 acks. Nobody waits
//! on an ack's commit; what waits is the cursor's move, and with it a
//! device's join announcement and the answer to an RPC ack. Each lane has
//! a channel of its own ([`Writes`]): while acks gather, the writer
//! listens only for other writes, so the acks that queue meanwhile do not
//! wake it one by one (that wake per ack cost as much as the transactions
//! the wait saved).
//!
//! A batch of acks alone commits without an fsync of its own
//! (`synchronous=NORMAL` for that transaction, [`Durability`]); every other
//! batch commits with `synchronous=FULL`. Nobody waits on an ack's commit,
//! and the WAL is one file written in order: the next batch's fsync (or the
//! checkpoint's, which syncs the WAL first) makes the acks' frames durable
//! with its own. What a power loss can take is an ack the server never
//! answered with anything but the cursor's move: its cursor falls back and
//! the device is sent again what it already has (clients drop a seq they
//! hold, and an inbox item at or below their inbox seq). A process crash
//! takes nothing (the frames are in the OS's cache). Sends, commits and
//! everything else someone waits on are durable before the writer replies,
//! as before.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::error::{map_err, replicate};
use super::stmt;
use crate::{Result, StoreError};

/// A write that finds the writer idle waits `commit_delay` only when
/// fewer than this many writes are queued with it (see `Queue::linger`).
pub(super) const COMMIT_DELAY_BELOW: usize = 4;

/// How the writes' arrival rate is smoothed for group commit's delay: each
/// gap between two urgent writes moves the estimate by this fraction.
const GAP_WEIGHT: f64 = 1.0 / 8.0;

/// A gap counts as at most this many delays: after an idle minute the
/// estimate needs a few writes in quick succession, not hundreds, to show
/// that they arrive together again.
const GAP_CAP_DELAYS: u32 = 8;

/// After a wait that gathered no other write, this many lone writes at
/// most commit at once before the writer tries waiting again (the count
/// doubles with each fruitless wait, from 1).
const MAX_FRUITLESS_SKIP: u32 = 64;

/// The urgent writes' arrivals, smoothed: whether another write is expected
/// within group commit's delay. Only the writer thread touches it.
#[derive(Debug)]
pub(super) struct Arrivals {
    delay: std::time::Duration,
    last: Option<Instant>,
    /// The smoothed gap between two writes, in seconds; starts at the cap
    /// (no company expected until writes show it).
    gap_s: f64,
    /// Lone writes left to commit at once after a fruitless wait.
    skip: u32,
    /// What the next fruitless wait sets `skip` to.
    next_skip: u32,
}

impl Arrivals {
    pub(super) fn new(delay: std::time::Duration) -> Self {
        Self {
            delay,
            last: None,
            gap_s: (delay * GAP_CAP_DELAYS).as_secs_f64(),
            skip: 0,
            next_skip: 1,
        }
    }

    /// An urgent write queued at `at`.
    pub(super) fn arrived(&mut self, at: Instant) {
        let previous = self.last;
        // Writers queue concurrently: one may carry an instant a little
        // before the last one seen (its gap counts as zero).
        self.last = Some(previous.map_or(at, |p| p.max(at)));
        if let Some(previous) = previous {
            let cap = self.delay * GAP_CAP_DELAYS;
            let gap = at.saturating_duration_since(previous).min(cap);
            self.gap_s += (gap.as_secs_f64() - self.gap_s) * GAP_WEIGHT;
        }
    }

    /// Whether writes arrive often enough that one more is expected within
    /// the delay (never with no delay).
    pub(super) fn expect_company(&self) -> bool {
        !self.delay.is_zero() && self.gap_s < self.delay.as_secs_f64()
    }

    /// How long to wait for `more` writes: as long as they are expected to
    /// take to arrive, at most the delay; `None` when not even one is
    /// expected within it, or while lone writes commit at once after a
    /// fruitless wait ([`Arrivals::waited`]).
    pub(super) fn wait_for(&mut self, more: usize) -> Option<std::time::Duration> {
        if !self.expect_company() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let expected = std::time::Duration::from_secs_f64(self.gap_s * more as f64);
        Some(expected.min(self.delay))
    }

    /// A wait ended; `gathered`: another write came during it. Writes can
    /// come often and still never together: one client sending its next
    /// message only after the last one's ack (a closed loop) is a write
    /// every round trip, and its writes wait for company that its own wait
    /// holds back. So each fruitless wait lets the next 1, 2, 4 ... (at
    /// most [`MAX_FRUITLESS_SKIP`]) lone writes commit at once, and a wait
    /// that gathers one starts over.
    pub(super) fn waited(&mut self, gathered: bool) {
        if gathered {
            self.next_skip = 1;
        } else {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_FRUITLESS_SKIP);
        }
    }
}

/// Which queue of the writer an operation waits in (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// Someone waits on it: sends, commits, accounts, leases.
    Urgent,
    /// A cursor or inbox ack: nobody waits on it, and it comes in herds.
    /// A batch of acks alone commits without its own fsync ([`Durability`]).
    Ack,
}

/// A queued write: runs once inside the batch, replies once after it.
pub(super) trait PendingOp: Send {
    fn name(&self) -> &'static str;
    fn lane(&self) -> Lane;
    /// When it was queued.
    fn queued_at(&self) -> Instant;
    /// Runs the operation; `true` if it succeeded (its savepoint is kept).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Replies to the caller. `batch_error` is set when the batch did not
    /// commit.
    fn finish(self: Box<Self>, batch_error: Option<&StoreError>);
}

/// Wraps `f` as a queued write in the urgent lane; the receiver gets its
/// reply after the batch.
#[cfg(test)]
pub(super) fn op<T, F>(
    name: &'static str,
    f: F,
) -> (Box<dyn PendingOp>, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    op_in(Lane::Urgent, name, f)
}

/// Wraps `f` as a queued write in `lane`; the receiver gets its reply after
/// the batch.
pub(super) fn op_in<T, F>(
    lane: Lane,
    name: &'static str,
    f: F,
) -> (Box<dyn PendingOp>, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    (Box::new(Op::new(lane, name, f, Reply::Channel(reply))), rx)
}

/// Wraps `f` as a queued write in `lane` whose outcome goes to `then`, on
/// the writer thread after the batch: nobody is woken to hear it.
pub(super) fn op_then<T, F>(
    lane: Lane,
    name: &'static str,
    f: F,
    then: Box<dyn FnOnce(Result<T>) + Send>,
) -> Box<dyn PendingOp>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    Box::new(Op::new(lane, name, f, Reply::Then(then)))
}

/// Where an operation's outcome goes.
enum Reply<T> {
    /// To a caller awaiting it.
    Channel(oneshot::Sender<Result<T>>),
    /// To a function run on the writer thread.
    Then(Box<dyn FnOnce(Result<T>) + Send>),
}

struct Op<T, F> {
    name: &'static str,
    lane: Lane,
    queued_at: Instant,
    f: Option<F>,
    result: Option<Result<T>>,
    reply: Reply<T>,
}

impl<T, F> Op<T, F> {
    fn new(lane: Lane, name: &'static str, f: F, reply: Reply<T>) -> Self {
        Self {
            name,
            lane,
            queued_at: Instant::now(),
            f: Some(f),
            result: None,
            reply,
        }
    }
}

impl<T, F> PendingOp for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn lane(&self) -> Lane {
        self.lane
    }

    fn queued_at(&self) -> Instant {
        self.queued_at
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let result = match self.f.take() {
            Some(f) => f(conn),
            None => Err(StoreError::Backend("write operation ran twice".into())),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, batch_error: Option<&StoreError>) {
        let reply = match (self.result, batch_error) {
            // An operation that failed on its own wrote nothing either way.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), None) => Ok(value),
            (_, Some(batch)) => Err(replicate(batch)),
            (None, None) => Err(StoreError::Backend(
                "write operation panicked or never ran".into(),
            )),
        };
        match self.reply {
            // The caller may have gone away (its future was dropped); the
            // write is committed regardless, like any request whose ack
            // was lost.
            Reply::Channel(tx) => {
                let _ = tx.send(reply);
            }
            // The caller's code, on this thread: a panic in it must not
            // end the writer (and with it every write of the node).
            Reply::Then(then) => {
                let name = self.name;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(reply))).is_err() {
                    tracing::error!(op = name, "a write's completion panicked");
                }
            }
        }
    }
}

pub(super) fn writer_loop(conn: Connection, mut queue: Queue) {
    // Every connection opens with `synchronous=FULL`.
    let mut sync = Durability::Full;
    while let Some(batch) = queue.next_batch() {
        BATCH_METRICS.with(|m| m.record_waits(&batch));
        run_batch(&conn, &mut sync, batch);
    }
    tracing::debug!("sqlite writer stopped");
}

/// How a batch's `COMMIT` reaches the disk (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced before `COMMIT` returns.
    Full,
    /// `synchronous=NORMAL`: written to the WAL, fsynced by the next `Full`
    /// commit or checkpoint. Only for batches of acks alone.
    Deferred,
}

impl Durability {
    /// What `ops` need: `Full` unless every one is an ack.
    fn needed_by(ops: &[Box<dyn PendingOp>]) -> Self {
        if ops.iter().all(|op| op.lane() == Lane::Ack) {
            Durability::Deferred
        } else {
            Durability::Full
        }
    }

    /// Sets the connection's `synchronous` to `needed` unless it is
    /// already (outside a transaction: SQLite refuses the change inside
    /// one). On error `self` still names the connection's mode.
    fn switch_to(&mut self, conn: &Connection, needed: Durability) -> Result<()> {
        if *self != needed {
            let pragma = match needed {
                Durability::Full => "PRAGMA synchronous=FULL",
                Durability::Deferred => "PRAGMA synchronous=NORMAL",
            };
            stmt::execute(conn, pragma, []).map_err(|e| map_err("set synchronous", e))?;
            *self = needed;
        }
        Ok(())
    }

    fn label(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Deferred => "deferred",
        }
    }
}

/// Where callers queue writes: a bounded channel per lane, so that acks
/// can queue without waking the writer while it gathers them (see the
/// module docs). Closed (dropped) together.
pub(super) struct Writes {
    urgent: mpsc::Sender<Box<dyn PendingOp>>,
    acks: mpsc::Sender<Box<dyn PendingOp>>,
}

impl Writes {
    /// Queues `op` in its lane's channel, waiting for room; gives it back
    /// if the writer is gone.
    pub(super) async fn send(
        &self,
        op: Box<dyn PendingOp>,
    ) -> std::result::Result<(), Box<dyn PendingOp>> {
        self.lane(op.lane()).send(op).await.map_err(|e| e.0)
    }

    /// Queues `op` if its lane's channel has room.
    #[cfg(test)]
    pub(super) fn try_send(&self, op: Box<dyn PendingOp>) -> bool {
        self.lane(op.lane()).try_send(op).is_ok()
    }

    fn lane(&self, lane: Lane) -> &mpsc::Sender<Box<dyn PendingOp>> {
        match lane {
            Lane::Urgent => &self.urgent,
            Lane::Ack => &self.acks,
        }
    }
}

/// The receiving ends of [`Writes`], for one [`Queue`].
pub(super) struct Receivers {
    urgent: mpsc::Receiver<Box<dyn PendingOp>>,
    acks: mpsc::Receiver<Box<dyn PendingOp>>,
}

/// The writer's channels, each holding up to `capacity` operations.
pub(super) fn channels(capacity: usize) -> (Writes, Receivers) {
    let (urgent, urgent_rx) = mpsc::channel(capacity.max(1));
    let (acks, acks_rx) = mpsc::channel(capacity.max(1));
    let receivers = Receivers {
        urgent: urgent_rx,
        acks: acks_rx,
    };
    (Writes { urgent, acks }, receivers)
}

/// The writer's two lanes: the channels callers send to, and the
/// operations taken off them that wait for a batch, one queue per lane.
pub(super) struct Queue {
    rx: Receivers,
    urgent: VecDeque<Box<dyn PendingOp>>,
    acks: VecDeque<Box<dyn PendingOp>>,
    /// When the urgent writes arrived, smoothed: whether, and how long, to
    /// wait with group commit's delay (`SqliteConfig::commit_delay`).
    arrivals: Arrivals,
    /// The most operations in one batch.
    max_batch: usize,
    /// The most acks in a batch that carries other operations.
    max_acks: usize,
    /// The most operations of a lane held off its channel: the channel's
    /// own capacity, so the writer holds at most twice what the channels
    /// bound.
    max_held: usize,
    /// How long acks alone wait for more acks (see the module docs).
    ack_delay: std::time::Duration,
}

impl Queue {
    pub(super) fn new(
        rx: Receivers,
        max_batch: usize,
        max_acks: usize,
        commit_delay: std::time::Duration,
        ack_delay: std::time::Duration,
    ) -> Self {
        let max_batch = max_batch.max(1);
        Self {
            max_held: rx.urgent.max_capacity().max(max_batch),
            rx,
            urgent: VecDeque::new(),
            acks: VecDeque::new(),
            arrivals: Arrivals::new(commit_delay),
            max_batch,
            max_acks: max_acks.clamp(1, max_batch),
            ack_delay,
        }
    }

    fn held(&self) -> usize {
        self.urgent.len() + self.acks.len()
    }

    fn hold(&mut self, op: Box<dyn PendingOp>) {
        match op.lane() {
            Lane::Urgent => {
                self.arrivals.arrived(op.queued_at());
                self.urgent.push_back(op)
            }
            Lane::Ack => self.acks.push_back(op),
        }
    }

    /// Takes what is queued on the channels, up to `max_held` a lane.
    fn take_queued(&mut self) {
        while self.urgent.len() < self.max_held {
            match self.rx.urgent.try_recv() {
                Ok(op) => self.hold(op),
                Err(_) => break,
            }
        }
        while self.acks.len() < self.max_held {
            match self.rx.acks.try_recv() {
                Ok(op) => self.hold(op),
                Err(_) => break,
            }
        }
    }

    /// Group commit's delay: a write that found the writer idle, with fewer
    /// than [`COMMIT_DELAY_BELOW`] writes beside it, waits for others to
    /// share its commit (its fsync) if writes arrive often enough that one
    /// is expected within `commit_delay` ([`Arrivals`]): as long as the
    /// missing writes are expected to take, at most `commit_delay`. Acks
    /// alone never wait (nobody waits on them), nor does a writer that is
    /// busy (its batches form while it commits).
    /// Returns whether it waited.
    fn linger(&mut self) -> bool {
        if self.urgent.is_empty() {
            return false;
        }
        self.take_queued();
        let held = self.urgent.len();
        let missing = COMMIT_DELAY_BELOW.saturating_sub(held);
        if missing == 0 {
            return false;
        }
        let Some(wait) = self.arrivals.wait_for(missing) else {
            return false;
        };
        metrics::counter!("hush_store_commit_delays_total").increment(1);
        std::thread::sleep(wait);
        self.take_queued();
        self.arrivals.waited(self.urgent.len() > held);
        true
    }

    /// Acks alone wait for more: until the oldest held ack has waited
    /// `ack_delay`, any other write arrives, or the channels close; a full
    /// batch of acks does not wait. Only other writes wake the writer
    /// meanwhile; the acks that come are taken at the end. Returns whether
    /// it waited.
    fn gather_acks(&mut self) -> bool {
        self.take_queued();
        let full = self.acks.len() >= self.max_batch;
        let Some(oldest) = self.acks.front() else {
            return false;
        };
        if self.ack_delay.is_zero() || !self.urgent.is_empty() || full {
            return false;
        }
        let deadline = oldest.queued_at() + self.ack_delay;
        if Instant::now() >= deadline {
            return false;
        }
        let urgent = &mut self.rx.urgent;
        if let Some(Some(op)) = block_on_until(poll_fn(|cx| urgent.poll_recv(cx)), Some(deadline)) {
            self.hold(op);
        }
        self.take_queued();
        true
    }

    /// The next operation of either lane, an urgent one first; `None` once
    /// both channels are closed.
    fn recv_any(&mut self) -> Option<Box<dyn PendingOp>> {
        let Receivers { urgent, acks } = &mut self.rx;
        let next = poll_fn(|cx| {
            let urgent = match urgent.poll_recv(cx) {
                Poll::Ready(Some(op)) => return Poll::Ready(Some(op)),
                Poll::Ready(None) => true,
                Poll::Pending => false,
            };
            match acks.poll_recv(cx) {
                Poll::Ready(Some(op)) => Poll::Ready(Some(op)),
                Poll::Ready(None) if urgent => Poll::Ready(None),
                _ => Poll::Pending,
            }
        });
        block_on_until(next, None).flatten()
    }

    /// Waits for an operation (unless some are held), takes whatever else is
    /// queued, then makes a batch: up to `max_acks` acks (up to `max_batch`
    /// when nothing else is held), and as many other operations as fit in
    /// `max_batch` beside them, each lane in its order. `None` once the
    /// channel is closed and nothing is held.
    pub(super) fn next_batch(&mut self) -> Option<Vec<Box<dyn PendingOp>>> {
        if self.held() == 0 {
            let first = self.recv_any()?;
            self.hold(first);
            self.linger();
        }
        self.take_queued();
        if self.urgent.is_empty() && self.gather_acks() {
            metrics::counter!("hush_store_ack_waits_total").increment(1);
        }
        let ack_room = if self.urgent.is_empty() {
            self.max_batch
        } else {
            self.max_acks
        };
        let acks = self.acks.len().min(ack_room);
        let urgent = self.urgent.len().min(self.max_batch - acks);
        let mut batch = Vec::with_capacity(urgent + acks);
        batch.extend(self.urgent.drain(..urgent));
        batch.extend(self.acks.drain(..acks));
        Some(batch)
    }
}

/// Polls `fut` on this thread until it is ready (`Some`) or `deadline`
/// passes (`None`; no deadline: until ready), parking the thread in
/// between; the future's waker unparks it. The writer is a plain thread:
/// this is tokio's `blocking_recv` with a deadline, which tokio does not
/// offer outside a runtime.
fn block_on_until<F: Future>(fut: F, deadline: Option<Instant>) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        // A spurious unpark (or one meant for an earlier wait) only polls
        // again.
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                std::thread::park_timeout(left);
            }
        }
    }
}

/// Runs `ops` in one transaction, one savepoint each, commits, then replies.
/// `sync` is the connection's current `synchronous` setting; it is switched
/// before `BEGIN` when the batch needs the other one, and a batch whose
/// switch fails fails as a whole (a batch never commits less durably than
/// it needs).
pub(super) fn run_batch(
    conn: &Connection,
    sync: &mut Durability,
    mut ops: Vec<Box<dyn PendingOp>>,
) {
    let started = Instant::now();
    let size = ops.len();
    let needed = Durability::needed_by(&ops);
    let batch_error = match sync.switch_to(conn, needed) {
        Ok(()) => run_ops(conn, &mut ops),
        Err(e) => Some(e),
    };
    BATCH_METRICS.with(|m| {
        if let Some(e) = &batch_error {
            tracing::warn!(error = %e, size, "sqlite write batch failed");
        } else {
            m.commits(needed).increment(1);
        }
        m.size.record(size as f64);
        m.seconds.record(started.elapsed().as_secs_f64());
        for op in ops {
            m.count_op(op.name());
            op.finish(batch_error.as_ref());
        }
    });
}

thread_local! {
    /// The writer thread's handles, taken at its first batch (after the
    /// node installed its recorder): no key lookup (hash, registry lock)
    /// per operation, one of the writer's costs at speed.
    static BATCH_METRICS: BatchMetrics = BatchMetrics::new();
}

/// `hush_store_write_wait_seconds{lane}` (each operation's wait from its
/// queueing to its batch), `hush_store_commits_total{sync}`,
/// `hush_store_batch_size`, `hush_store_batch_seconds` and
/// `hush_store_ops_total{op}`.
struct BatchMetrics {
    wait_urgent: metrics::Histogram,
    wait_ack: metrics::Histogram,
    full: metrics::Counter,
    deferred: metrics::Counter,
    size: metrics::Histogram,
    seconds: metrics::Histogram,
    /// By operation name (a few dozen, each `'static`).
    ops: std::cell::RefCell<std::collections::HashMap<&'static str, metrics::Counter>>,
}

impl BatchMetrics {
    fn new() -> Self {
        Self {
            wait_urgent: metrics::histogram!("hush_store_write_wait_seconds", "lane" => "urgent"),
            wait_ack: metrics::histogram!("hush_store_write_wait_seconds", "lane" => "ack"),
            full: metrics::counter!("hush_store_commits_total", "sync" => Durability::Full.label()),
            deferred: metrics::counter!(
                "hush_store_commits_total",
                "sync" => Durability::Deferred.label()
            ),
            size: metrics::histogram!("hush_store_batch_size"),
            seconds: metrics::histogram!("hush_store_batch_seconds"),
            ops: Default::default(),
        }
    }

    fn record_waits(&self, batch: &[Box<dyn PendingOp>]) {
        let now = Instant::now();
        for op in batch {
            let lane = match op.lane() {
                Lane::Urgent => &self.wait_urgent,
                Lane::Ack => &self.wait_ack,
            };
            lane.record(now.saturating_duration_since(op.queued_at()).as_secs_f64());
        }
    }

    fn commits(&self, sync: Durability) -> &metrics::Counter {
        match sync {
            Durability::Full => &self.full,
            Durability::Deferred => &self.deferred,
        }
    }

    fn count_op(&self, name: &'static str) {
        self.ops
            .borrow_mut()
            .entry(name)
            .or_insert_with(|| metrics::counter!("hush_store_ops_total", "op" => name))
            .increment(1);
    }
}

/// The transaction part of [`run_batch`]: `None` when the batch committed.
fn run_ops(conn: &Connection, ops: &mut [Box<dyn PendingOp>]) -> Option<StoreError> {
    if let Err(e) = stmt::execute(conn, "BEGIN IMMEDIATE", []) {
        return Some(map_err("begin write batch", e));
    }
    let mut failure = None;
    for op in ops.iter_mut() {
        if let Err(e) = stmt::execute(conn, "SAVEPOINT op", []) {
            failure = Some(map_err("savepoint", e));
            break;
        }
        // A panicking operation is a bug; it fails alone instead of taking
        // the writer thread (and every later write) down with it.
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn)))
            .unwrap_or(false);
        let end = if ok {
            stmt::execute(conn, "RELEASE op", []).map(drop)
        } else {
            stmt::execute(conn, "ROLLBACK TO op", [])
                .and_then(|_| stmt::execute(conn, "RELEASE op", []))
                .map(drop)
        };
        if let Err(e) = end {
            failure = Some(map_err(&format!("end savepoint of {}", op.name()), e));
            break;
        }
    }
    if failure.is_none() {
        match stmt::execute(conn, "COMMIT", []) {
            Ok(_) => return None,
            Err(e) => failure = Some(map_err("commit write batch", e)),
        }
    }
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
    }
    failure
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::OptionalExtension;

    use super::super::accounts::op_get_or_create_secret;
    use super::super::connection::open_connection;
    use super::super::groups::{op_acquire_lease, op_create_group};
    use super::super::schema::test_db;
    use super::super::timeline::{op_append_commit, op_append_message, read_timeline};
    use super::*;
    use crate::{AppendOutcome, CommitWrite, EntryKind, GroupRecord, NewEntry};

    fn reply<T>(mut rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.try_recv().expect("replied after the batch")
    }

    fn entry(id: &str) -> NewEntry {
        NewEntry {
            kind: EntryKind::Application,
            epoch: 1,
            sender: "a/a-1".into(),
            client_msg_id: id.as_bytes().to_vec(),
            message: id.as_bytes().to_vec(),
            server_time_ms: 0,
        }
    }

    /// A migrated database with group `g` leased to `node-a` (token 1).
    fn setup(dir: &tempfile::TempDir) -> Connection {
        let conn = test_db(dir);
        let group = GroupRecord {
            group_id: b"g".to_vec(),
            epoch: 1,
            state: vec![],
            group_info: vec![],
            ratchet_tree: vec![],
            head_seq: 0,
            members: vec![],
        };
        op_create_group(&conn, &group).expect("create group");
        let lease = op_acquire_lease(&conn, b"g", "node-a", 0, 1_000).expect("lease");
        assert_eq!(lease.token, 1);
        conn
    }

    #[test]
    fn a_failing_op_rolls_back_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let (a1, r1) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        let (a2, r2) = op("append", |c| op_append_message(c, b"g", 7, &entry("x")));
        let stale = CommitWrite {
            group_id: b"g".to_vec(),
            fence: 1,
            expected_epoch: 5,
            new_epoch: 6,
            state: vec![],
            group_info: vec![],
            ratchet_tree: vec![],
            members: vec![],
            entry: entry("c"),
            welcome: None,
        };
        let (a3, r3) = op("commit", move |c| op_append_commit(c, &stale));
        // The same id again within the same batch: sees the first insert.
        let (a4, r4) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        // Writes, then fails: its write must not survive.
        let (a5, r5) = op("partial", |c| {
            op_get_or_create_secret(c, "half-done", b"x")?;
            op_append_message(c, b"g", 1, &entry("half"))?;
            Err::<(), _>(StoreError::Backend("injected".into()))
        });
        let (a6, r6) = op("append", |c| op_append_message(c, b"g", 1, &entry("m2")));

        run_batch(&conn, &mut Durability::Full, vec![a1, a2, a3, a4, a5, a6]);

        assert_eq!(reply(r1).expect("m1"), AppendOutcome::Appended { seq: 1 });
        assert!(matches!(
            reply(r2),
            Err(StoreError::Fenced { token: 1, .. })
        ));
        assert!(matches!(
            reply(r3),
            Err(StoreError::EpochConflict {
                current_epoch: 1,
                head_seq: 1
            })
        ));
        assert_eq!(reply(r4).expect("dup"), AppendOutcome::Duplicate { seq: 1 });
        assert!(matches!(reply(r5), Err(StoreError::Backend(_))));
        assert_eq!(reply(r6).expect("m2"), AppendOutcome::Appended { seq: 2 });

        let ids: Vec<Vec<u8>> = read_timeline(&conn, b"g", 0, 100)
            .expect("read")
            .into_iter()
            .map(|e| e.client_msg_id)
            .collect();
        assert_eq!(ids, vec![b"m1".to_vec(), b"m2".to_vec()]);
        let secret: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM secrets WHERE name = 'half-done'",
                [],
                |r| r.get(0),
            )
            .optional()
            .expect("query");
        assert_eq!(secret, None);
        assert!(conn.is_autocommit(), "batch left a transaction open");
    }

    #[test]
    fn a_batch_that_cannot_begin_fails_every_op_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        // Another "process" holds the write lock; busy_timeout is zero.
        let other = open_connection(&dir.path().join("t.db"), Duration::ZERO, false).expect("open");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");

        let (a1, r1) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        let (a2, r2) = op("secret", |c| op_get_or_create_secret(c, "k", b"v"));
        run_batch(&conn, &mut Durability::Full, vec![a1, a2]);
        assert!(matches!(reply(r1), Err(StoreError::Unavailable(_))));
        assert!(matches!(reply(r2), Err(StoreError::Unavailable(_))));

        other.execute_batch("ROLLBACK").expect("unlock");
        assert!(read_timeline(&conn, b"g", 0, 10).expect("read").is_empty());
        assert!(conn.is_autocommit());
    }

    /// The `synchronous` setting an operation's transaction commits with.
    fn sync_probe(lane: Lane) -> (Box<dyn PendingOp>, oneshot::Receiver<Result<i64>>) {
        op_in(lane, "probe", |c| {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .map_err(|e| map_err("probe", e))
        })
    }

    const NORMAL: i64 = 1;
    const FULL: i64 = 2;

    #[test]
    fn acks_alone_commit_without_their_own_fsync_and_anything_else_with_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let mut sync = Durability::Full;

        // Acks alone: NORMAL (the WAL is not fsynced at this commit).
        let (a1, r1) = sync_probe(Lane::Ack);
        let (a2, r2) = sync_probe(Lane::Ack);
        run_batch(&conn, &mut sync, vec![a1, a2]);
        assert_eq!(reply(r1).expect("ack 1"), NORMAL);
        assert_eq!(reply(r2).expect("ack 2"), NORMAL);
        assert_eq!(sync, Durability::Deferred);

        // One urgent operation among acks: the whole batch is FULL, the
        // acks' earlier frames included.
        let (u, ru) = sync_probe(Lane::Urgent);
        let (a3, r3) = sync_probe(Lane::Ack);
        run_batch(&conn, &mut sync, vec![u, a3]);
        assert_eq!(reply(ru).expect("urgent"), FULL);
        assert_eq!(reply(r3).expect("ack 3"), FULL);
        assert_eq!(sync, Durability::Full);

        // Urgent alone stays FULL without switching.
        let (u, ru) = sync_probe(Lane::Urgent);
        run_batch(&conn, &mut sync, vec![u]);
        assert_eq!(reply(ru).expect("urgent again"), FULL);
        assert!(conn.is_autocommit());
    }

    #[test]
    fn a_batch_whose_mode_cannot_be_set_fails_instead_of_committing_less_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        // The writer believes the connection is NORMAL; an urgent batch must
        // switch to FULL first. Inside an open transaction SQLite refuses the
        // switch, so the batch fails as a whole and writes nothing.
        conn.execute_batch("PRAGMA synchronous=NORMAL; BEGIN")
            .expect("begin");
        let mut sync = Durability::Deferred;
        let (u, ru) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        run_batch(&conn, &mut sync, vec![u]);
        assert!(reply(ru).is_err(), "committed without FULL");
        assert_eq!(sync, Durability::Deferred);
        conn.execute_batch("ROLLBACK").expect("rollback");

        // Once it can switch, the same batch commits with FULL.
        let (u, ru) = sync_probe(Lane::Urgent);
        run_batch(&conn, &mut sync, vec![u]);
        assert_eq!(reply(ru).expect("urgent"), FULL);
        assert_eq!(sync, Durability::Full);
    }

    /// A no-op operation named `name` (`a…` in the ack lane).
    fn named_op(name: &'static str) -> Box<dyn PendingOp> {
        let lane = if name.starts_with('a') {
            Lane::Ack
        } else {
            Lane::Urgent
        };
        op_in(lane, name, |_| Ok(())).0
    }

    /// A writer queue holding `names` (see [`named_op`]), and the channel's
    /// sender for more.
    fn queue_with(
        names: &[&'static str],
        max_batch: usize,
        max_acks: usize,
        delay: Duration,
    ) -> (Queue, Writes) {
        let (tx, rx) = channels(16);
        for name in names {
            assert!(tx.try_send(named_op(name)));
        }
        (
            Queue::new(rx, max_batch, max_acks, delay, Duration::ZERO),
            tx,
        )
    }

    /// Acks alone wait for more acks, up to `ack_delay` after the oldest:
    /// the ones that come meanwhile share the batch.
    #[test]
    fn acks_alone_gather_the_acks_that_arrive_meanwhile() {
        let delay = Duration::from_millis(300);
        let (tx, rx) = channels(16);
        let mut queue = Queue::new(rx, 8, 2, Duration::ZERO, delay);
        let sender = send_from_thread(tx, &["a1", "a2"]);
        let began = Instant::now();
        // Both in one batch (a batch of acks alone fills up to max_batch,
        // not max_acks), after the wait ran out: the channel stays open.
        assert_eq!(next_names(&mut queue), ["a1", "a2"]);
        assert!(began.elapsed() >= delay / 2, "the acks did not wait");
        drop(sender.join().expect("sender"));
    }

    /// Any other write ends acks' wait at once and goes first, the acks
    /// beside it; a full batch of acks, or a closed channel, does not wait.
    #[test]
    fn another_write_or_a_full_batch_ends_the_acks_wait() {
        let long = Duration::from_secs(600);
        let (tx, rx) = channels(16);
        let mut queue = Queue::new(rx, 8, 8, Duration::ZERO, long);
        assert!(tx.try_send(named_op("a1")));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            assert!(tx.try_send(named_op("u1")));
            tx
        });
        let began = Instant::now();
        assert_eq!(next_names(&mut queue), ["u1", "a1"]);
        assert!(began.elapsed() < long / 2, "the write waited with the acks");
        let tx = sender.join().expect("sender");

        // max_batch acks already held: no wait.
        let (_tx, rx) = channels(16);
        let mut full = Queue::new(rx, 2, 2, Duration::ZERO, long);
        for name in ["a1", "a2", "a3"] {
            full.hold(named_op(name));
        }
        let began = Instant::now();
        assert_eq!(next_names(&mut full), ["a1", "a2"]);
        assert!(began.elapsed() < long / 2, "a full batch of acks waited");

        // The channel closed (the store is closing): what is held goes.
        for name in ["a1", "a2", "a3"] {
            assert!(tx.try_send(named_op(name)));
        }
        drop(tx);
        let began = Instant::now();
        assert_eq!(next_names(&mut queue), ["a1", "a2", "a3"]);
        assert!(queue.next_batch().is_none());
        assert!(
            began.elapsed() < long / 2,
            "acks waited on a closed channel"
        );
    }

    /// Sends `names` in order from another thread; its handle gives the
    /// channels back, so they stay open until the test drops them.
    fn send_from_thread(
        tx: Writes,
        names: &'static [&'static str],
    ) -> std::thread::JoinHandle<Writes> {
        std::thread::spawn(move || {
            for name in names {
                assert!(tx.try_send(named_op(name)));
            }
            tx
        })
    }

    /// Queues `names` (no more can come) with no commit delay.
    fn queue_of(names: &[&'static str], max_batch: usize, max_acks: usize) -> Queue {
        queue_with(names, max_batch, max_acks, Duration::ZERO).0
    }

    fn batches(mut queue: Queue) -> Vec<Vec<&'static str>> {
        std::iter::from_fn(|| queue.next_batch())
            .map(|b| b.iter().map(|op| op.name()).collect())
            .collect()
    }

    /// The names in the next batch of a queue whose channel may still be
    /// open (`batches` would wait for more).
    fn next_names(queue: &mut Queue) -> Vec<&'static str> {
        let batch = queue.next_batch().expect("batch");
        batch.iter().map(|op| op.name()).collect()
    }

    /// Group commit's delay: a write that found the writer idle waits for
    /// the ones that arrive meanwhile, and they commit together; with
    /// enough writes queued, or acks alone, nobody waits.
    #[test]
    fn a_commit_delay_gathers_the_writes_that_arrive_meanwhile() {
        // Long enough that the sender thread's second write lands inside
        // it however loaded the machine.
        let delay = Duration::from_secs(3);
        let (mut queue, tx) = queue_with(&[], 8, 8, delay);
        // Writes have been arriving within the delay of each other, slowly
        // enough that the three missing ones would take all of it.
        busy_spell(&mut queue.arrivals, delay / 2);
        // u2 is sent while the writer waits (or before it took u1: the
        // same batch either way).
        let sender = send_from_thread(tx, &["u1", "u2"]);
        let began = Instant::now();
        assert_eq!(next_names(&mut queue), ["u1", "u2"]);
        // It waits as long as the missing writes are expected to take:
        // over a second here whether u2 came before the wait or in it.
        assert!(began.elapsed() >= delay / 2, "it did not wait for company");
        drop(sender.join().expect("sender"));

        // Enough writes already queued, or acks alone (nobody waits on
        // them): no wait, with a delay long enough that a wait would show.
        let long = Duration::from_secs(600);
        for (names, alone) in [
            (&["u1", "u2", "u3", "u4"][..], COMMIT_DELAY_BELOW),
            (&["a1"][..], 1),
        ] {
            let (mut queue, _tx) = queue_with(names, 8, 8, long);
            busy_spell(&mut queue.arrivals, long / 10);
            let began = Instant::now();
            assert_eq!(next_names(&mut queue).len(), alone, "{names:?}");
            assert!(began.elapsed() < long / 2, "{names:?} waited");
        }
    }

    /// `Arrivals` sees 64 writes `gap` apart, from now on (a write queued
    /// after this, at an earlier instant, counts as no gap).
    fn busy_spell(arrivals: &mut Arrivals, gap: Duration) {
        let now = Instant::now();
        for i in 0..64 {
            arrivals.arrived(now + gap * i);
        }
        assert!(arrivals.expect_company());
    }

    /// A lone write on a quiet writer commits at once, whatever the delay:
    /// nobody is expected to share it.
    #[test]
    fn a_lone_write_does_not_wait_for_company_that_is_not_coming() {
        let long = Duration::from_secs(600);
        let (mut queue, _tx) = queue_with(&["u1"], 8, 8, long);
        let began = Instant::now();
        assert_eq!(next_names(&mut queue), ["u1"]);
        assert!(began.elapsed() < long / 2, "a lone write waited");
    }

    /// A closed loop (a client that sends its next message only after the
    /// last one's ack) writes often but never two at a time: its waits
    /// gather nothing, so fewer and fewer of its writes wait.
    #[test]
    fn waits_that_gather_nothing_let_the_next_lone_writes_commit_at_once() {
        let delay = Duration::from_millis(5);
        let (mut queue, _tx) = queue_with(&[], 8, 8, delay);
        busy_spell(&mut queue.arrivals, delay / 2);
        let waited: Vec<bool> = (0..12)
            .map(|_| {
                queue.hold(named_op("u"));
                let waited = queue.linger();
                queue.urgent.clear();
                waited
            })
            .collect();
        let (w, o) = (true, false);
        // Waits; 1 at once; waits; 2 at once; waits; 4 at once; waits.
        assert_eq!(waited, [w, o, w, o, o, w, o, o, o, o, w, o]);

        // A wait that gathers a write starts over; the skips stop doubling
        // at the cap.
        let a = &mut queue.arrivals;
        a.waited(true);
        a.waited(false);
        assert_eq!(a.skip, 1);
        for _ in 0..20 {
            a.waited(false);
        }
        assert_eq!(a.skip, MAX_FRUITLESS_SKIP);
    }

    #[test]
    fn the_arrival_rate_decides_whether_company_is_expected() {
        let delay = Duration::from_millis(1);
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);

        // No history: nobody expected.
        let mut a = Arrivals::new(delay);
        assert!(!a.expect_company());
        a.arrived(at(0));
        assert!(!a.expect_company());

        // Writes 100 us apart: after a few, company is expected within
        // 1 ms (the estimate starts at the cap, 8 ms, and moves 1/8 a gap).
        let mut t = 0;
        let mut expected_after = None;
        for n in 1..=64 {
            t += 100;
            a.arrived(at(t));
            if expected_after.is_none() && a.expect_company() {
                expected_after = Some(n);
            }
        }
        assert_eq!(expected_after, Some(17));

        // It waits about as long as the missing writes take to come (the
        // estimate is near 100 us by now), never longer than the delay.
        let three = a.wait_for(3).expect("company");
        assert!(three > Duration::from_micros(250) && three < Duration::from_micros(400));
        assert_eq!(a.wait_for(1_000), Some(delay));

        // A quiet spell (one write a second): one gap, capped at 8 ms,
        // is enough to stop waiting.
        t += 1_000_000;
        a.arrived(at(t));
        assert!(!a.expect_company());
        assert_eq!(a.wait_for(1), None);

        // An instant a little before the last one seen (writers queue
        // concurrently) counts as no gap and does not move time back.
        let mut b = Arrivals::new(delay);
        b.arrived(at(500));
        b.arrived(at(400));
        assert_eq!(b.last, Some(at(500)));
        assert!(b.gap_s < (delay * GAP_CAP_DELAYS).as_secs_f64());

        // No delay: never.
        let mut z = Arrivals::new(Duration::ZERO);
        for us in 0..64 {
            z.arrived(at(us));
        }
        assert!(!z.expect_company());
    }

    #[test]
    fn the_writer_takes_everything_queued_up_to_max_batch() {
        let queue = queue_of(&["u1", "u2", "u3", "u4", "u5"], 3, 3);
        assert_eq!(
            batches(queue),
            vec![vec!["u1", "u2", "u3"], vec!["u4", "u5"]]
        );
    }

    #[test]
    fn writes_queued_behind_a_herd_of_acks_go_first_and_idle_batches_fill_with_acks() {
        let names = [
            "a1", "a2", "a3", "a4", "a5", "a6", "a7", "u1", "a8", "u2", "u3",
        ];
        let queue = queue_of(&names, 4, 2);
        assert_eq!(
            batches(queue),
            vec![
                vec!["u1", "u2", "a1", "a2"],
                vec!["u3", "a3", "a4"],
                // Nothing else waits: acks fill the batch.
                vec!["a5", "a6", "a7", "a8"],
            ]
        );
    }

    #[test]
    fn acks_are_never_starved_by_a_stream_of_writes() {
        let names = ["u1", "u2", "u3", "a1", "u4", "u5", "u6", "a2"];
        let queue = queue_of(&names, 3, 1);
        assert_eq!(
            batches(queue),
            vec![
                vec!["u1", "u2", "a1"],
                vec!["u3", "u4", "a2"],
                vec!["u5", "u6"],
            ]
        );
    }

    #[test]
    fn a_panicking_op_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let (a1, r1) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        let (a2, r2) = op("bug", |c| {
            op_append_message(c, b"g", 1, &entry("m2"))?;
            if c.is_autocommit() {
                return Ok(());
            }
            panic!("injected bug")
        });
        let (a3, r3) = op("append", |c| op_append_message(c, b"g", 1, &entry("m3")));
        run_batch(&conn, &mut Durability::Full, vec![a1, a2, a3]);
        assert_eq!(reply(r1).expect("m1"), AppendOutcome::Appended { seq: 1 });
        assert!(matches!(reply(r2), Err(StoreError::Backend(_))));
        assert_eq!(reply(r3).expect("m3"), AppendOutcome::Appended { seq: 2 });
    }

    /// A completion (`op_then`) runs on the writer thread after the commit;
    /// one that panics takes nothing else with it: its own write stays
    /// committed, and the others in its batch are answered.
    #[test]
    fn a_completion_that_panics_hurts_no_other_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let a1 = op_then(
            Lane::Urgent,
            "append",
            |c| op_append_message(c, b"g", 1, &entry("m1")),
            Box::new(|_| panic!("injected bug in a completion")),
        );
        let a2 = op_then(
            Lane::Urgent,
            "append",
            |c| op_append_message(c, b"g", 1, &entry("m2")),
            Box::new(move |r| {
                let _ = seen_tx.send(r);
            }),
        );
        let (a3, r3) = op("append", |c| op_append_message(c, b"g", 1, &entry("m3")));
        run_batch(&conn, &mut Durability::Full, vec![a1, a2, a3]);
        let m2 = seen_rx.try_recv().expect("the completion ran in the batch");
        assert_eq!(m2.expect("m2"), AppendOutcome::Appended { seq: 2 });
        assert_eq!(reply(r3).expect("m3"), AppendOutcome::Appended { seq: 3 });
        assert_eq!(read_timeline(&conn, b"g", 0, 100).expect("read").len(), 3);
    }
}
