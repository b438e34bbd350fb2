//! Admission of group sends: the bounds that keep the send and delivery
//! path's queues finite whatever the offered load.
//!
//! A GroupActor's mailbox (ractor's is unbounded) and the store writer's
//! queue hold only what was admitted here, so they are bounded by
//! construction: every `SendMessage` and `SendEphemeral` takes a [`Permit`]
//! before it enters the group actor and gives it back when its ack or error
//! goes out (the permit is dropped). A request past a bound is refused at
//! once, before any work, with a retry hint:
//!
//! - more than `limits.max_pending_per_group` sends waiting for one group:
//!   RATE_LIMITED (the group's senders send faster than it sequences);
//! - more than `limits.max_inflight_sends` sends in flight on the node, or
//!   more than `limits.max_queued_deliveries` frames waiting in this
//!   node's connection queues, each connection counting at most
//!   `limits.max_queued_deliveries_per_conn` of its own, or deliveries
//!   waiting longer than `limits.fanout_delay_target_ms` ([`Waits`]: even
//!   the quickest delivery of the last `limits.fanout_delay_window_ms`
//!   waited that long; fan-out falls behind):
//!   UNAVAILABLE (the node is saturated; the client may also try later or
//!   elsewhere).
//!
//! Nothing acknowledged is dropped: a refused send was never stored, and the
//! client resends it with the same `client_msg_id` after `retry_after_ms`.
//!
//! The hint grows with the pressure ([`Hint`]): `limits.overload_retry_after_ms`
//! while refusals are rare, doubled after each half-second window in which
//! refusals outnumbered admissions two to one, up to
//! `limits.overload_retry_after_max_ms`, and halved again once they do not.
//! Under ten times the load a fixed hint makes the resends themselves the
//! load (every refused message comes back every few hundred ms, and the node
//! spends its time refusing while the sends it accepted wait behind the
//! refusals); a growing one keeps the resends near what the node accepts.
//! Commits and proposals are not refused here (a member must be able to
//! leave or rotate keys under load); they are few, and each connection has
//! at most `limits.max_pipelined_requests` requests in flight.
//!
//! Every request, of any kind, also takes a [`RequestPermit`] before it is
//! served ([`Admission::admit_request`]): at most
//! `limits.max_inflight_requests` requests in flight on the node, holding
//! at most `limits.max_inflight_request_bytes` of request frames, or the
//! request is refused UNAVAILABLE with the hint. The pipelining bound is
//! per connection; without a node-wide one, thousands of connections each
//! with a full pipeline of slow requests (a frozen store, a costly query)
//! hold thousands of times a connection's share of memory: requests wait
//! in tasks, and the answers they build wait with them.
//!
//! The counters are plain atomics and one small map; this module does no IO
//! and reads no clock (callers pass the time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hush_proto::ErrorCode;

use crate::error::ApiError;

/// The bounds (from `[limits]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_inflight_sends: usize,
    pub max_pending_per_group: usize,
    pub max_queued_deliveries: usize,
    /// Sends are refused while the quickest delivery of the last window
    /// waited longer than this in its connection queue, ms (see [`Waits`]).
    pub fanout_delay_target_ms: u64,
    /// That window, ms.
    pub fanout_delay_window_ms: u64,
    /// The hint a refusal carries while refusals are rare, ms.
    pub retry_after_ms: u64,
    /// The longest hint the pressure makes it grow to, ms.
    pub max_retry_after_ms: u64,
    /// Requests (of any kind) in flight on the node at once.
    pub max_inflight_requests: usize,
    /// Bytes of request frames those requests may hold at once.
    pub max_inflight_request_bytes: usize,
}

/// Why a send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The group has `max_pending_per_group` sends waiting.
    GroupBusy,
    /// The node has `max_inflight_sends` sends in flight.
    NodeBusy,
    /// The connection queues hold `max_queued_deliveries` deliveries, or
    /// deliveries wait longer than `fanout_delay_target_ms` in them.
    FanOutBehind,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::GroupBusy => "group",
            Refusal::NodeBusy => "node",
            Refusal::FanOutBehind => "fanout",
        }
    }

    /// The client's error: RATE_LIMITED for one group's senders,
    /// UNAVAILABLE for the node, each with the retry hint.
    pub fn to_error(self, retry_after_ms: u64) -> ApiError {
        let (code, what) = match self {
            Refusal::GroupBusy => (
                ErrorCode::RateLimited,
                "too many sends pending in this group",
            ),
            Refusal::NodeBusy => (
                ErrorCode::Unavailable,
                "node overloaded: too many sends in flight",
            ),
            Refusal::FanOutBehind => (ErrorCode::Unavailable, "node overloaded: deliveries behind"),
        };
        ApiError {
            retry_after_ms,
            ..ApiError::new(code, format!("{what}; retry after {retry_after_ms} ms"))
        }
    }
}

/// The highest depths seen since start (what the gauges showed at most).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peaks {
    pub inflight_sends: usize,
    pub inflight_requests: usize,
    pub pending_per_group: usize,
    pub queued_deliveries: usize,
}

#[derive(Default)]
struct Counters {
    inflight: AtomicUsize,
    requests: AtomicUsize,
    request_bytes: AtomicUsize,
    peak_requests: AtomicUsize,
    per_group: Mutex<HashMap<Vec<u8>, usize>>,
    peak_inflight: AtomicUsize,
    peak_group: AtomicUsize,
}

/// How long the window is over which admissions and refusals are weighed
/// to move the hint.
pub const HINT_WINDOW_MS: u64 = 500;

/// Fewer refusals than this in a window never raise the hint (a few refused
/// sends of one busy group are not the node's pressure).
const HINT_MIN_REFUSALS: u64 = 32;

/// The retry hint refusals carry, moved by the pressure: after each window
/// of [`HINT_WINDOW_MS`], doubled if refusals outnumbered admissions two to
/// one (and were at least [`HINT_MIN_REFUSALS`]), halved if they were fewer
/// than half of them, kept otherwise; between `retry_after_ms` and
/// `max_retry_after_ms`. A window that passed with no traffic halves it too.
#[derive(Default)]
struct Hint {
    window_start_ms: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
    /// 0 until the first window closes (then `retry_after_ms` at least).
    current_ms: AtomicU64,
}

impl Hint {
    /// Closes the window if it is over and moves the hint; one caller wins
    /// the close, the others count into the new window.
    fn roll(&self, now_ms: u64, limits: &AdmissionLimits) {
        let start = self.window_start_ms.load(Ordering::Acquire);
        let elapsed = now_ms.saturating_sub(start);
        if elapsed < HINT_WINDOW_MS {
            return;
        }
        if self
            .window_start_ms
            .compare_exchange(start, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let admitted = self.admitted.swap(0, Ordering::AcqRel);
        let refused = self.refused.swap(0, Ordering::AcqRel);
        let (base, max) = (
            limits.retry_after_ms,
            limits.max_retry_after_ms.max(limits.retry_after_ms),
        );
        let mut hint = self.current_ms.load(Ordering::Acquire).clamp(base, max);
        if refused >= HINT_MIN_REFUSALS && refused > 2 * admitted {
            hint = hint.saturating_mul(2).min(max);
        } else if refused * 2 < admitted || refused == 0 {
            hint = (hint / 2).max(base);
        }
        // Whole windows that passed with nothing counted: one halving each.
        let idle = (elapsed / HINT_WINDOW_MS).saturating_sub(1).min(32);
        for _ in 0..idle {
            hint = (hint / 2).max(base);
        }
        self.current_ms.store(hint, Ordering::Release);
    }

    fn current(&self, limits: &AdmissionLimits) -> u64 {
        self.current_ms
            .load(Ordering::Acquire)
            .max(limits.retry_after_ms)
    }
}

/// The node's admission counters. Cheap to clone (shared).
#[derive(Clone)]
pub struct Admission {
    limits: AdmissionLimits,
    counters: Arc<Counters>,
    deliveries: DeliveryQueue,
    hint: Arc<Hint>,
}

impl Admission {
    /// `deliveries` counts what waits in the SessionActor mailboxes.
    pub fn new(limits: AdmissionLimits, deliveries: DeliveryQueue) -> Self {
        Self {
            limits,
            counters: Arc::default(),
            deliveries,
            hint: Arc::default(),
        }
    }

    /// The retry hint a refusal at `now_ms` carries, ms (see [`Hint`]).
    pub fn retry_after_ms(&self, now_ms: u64) -> u64 {
        self.hint.roll(now_ms, &self.limits);
        self.hint.current(&self.limits)
    }

    /// A send refused before it reached [`Admission::admit`] (a
    /// connection's pipelining bound): it counts towards the pressure.
    /// Returns the hint to carry.
    pub fn refused_elsewhere(&self, now_ms: u64) -> u64 {
        self.hint.refused.fetch_add(1, Ordering::AcqRel);
        self.retry_after_ms(now_ms)
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Takes a place for one send to `group_id` at `now_ms`, or says why
    /// not. Checks the cheapest, most specific bound first; takes nothing
    /// when it refuses. Either way it counts towards the hint's pressure.
    pub fn admit(&self, group_id: &[u8], now_ms: u64) -> Result<Permit, Refusal> {
        self.hint.roll(now_ms, &self.limits);
        let refused = |r: Refusal| {
            metrics::counter!("hush_sends_refused_total", "bound" => r.label()).increment(1);
            self.hint.refused.fetch_add(1, Ordering::AcqRel);
            Err(r)
        };
        let l = &self.limits;
        if self.deliveries.depth() >= l.max_queued_deliveries
            || self
                .deliveries
                .behind(now_ms, l.fanout_delay_window_ms, l.fanout_delay_target_ms)
        {
            return refused(Refusal::FanOutBehind);
        }
        let c = &self.counters;
        // Node budget: increment, and undo if it went past the bound.
        let inflight = c.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        if inflight > self.limits.max_inflight_sends {
            c.inflight.fetch_sub(1, Ordering::SeqCst);
            return refused(Refusal::NodeBusy);
        }
        let pending = {
            // A poisoned lock only means another request panicked
            // mid-update; the counts are still usable.
            let mut map = c.per_group.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(group_id.to_vec()).or_insert(0);
            if *n >= self.limits.max_pending_per_group {
                drop(map);
                c.inflight.fetch_sub(1, Ordering::SeqCst);
                return refused(Refusal::GroupBusy);
            }
            *n += 1;
            *n
        };
        self.hint.admitted.fetch_add(1, Ordering::AcqRel);
        c.peak_inflight.fetch_max(inflight, Ordering::SeqCst);
        c.peak_group.fetch_max(pending, Ordering::SeqCst);
        crate::telemetry::sends_inflight(inflight);
        Ok(Permit {
            counters: c.clone(),
            group_id: group_id.to_vec(),
        })
    }

    /// Takes a place for one request whose frame is `frame_bytes` long, or
    /// refuses it (UNAVAILABLE, with the hint) when the node has
    /// `max_inflight_requests` requests in flight or their frames would
    /// pass `max_inflight_request_bytes`. Takes nothing when it refuses.
    pub fn admit_request(
        &self,
        frame_bytes: usize,
        now_ms: u64,
    ) -> Result<RequestPermit, ApiError> {
        let c = &self.counters;
        let l = &self.limits;
        let count = c.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let bytes = c.request_bytes.fetch_add(frame_bytes, Ordering::SeqCst) + frame_bytes;
        if count > l.max_inflight_requests || bytes > l.max_inflight_request_bytes {
            c.requests.fetch_sub(1, Ordering::SeqCst);
            c.request_bytes.fetch_sub(frame_bytes, Ordering::SeqCst);
            metrics::counter!("hush_requests_refused_total").increment(1);
            let hint = self.refused_elsewhere(now_ms);
            return Err(ApiError {
                retry_after_ms: hint,
                ..ApiError::new(
                    ErrorCode::Unavailable,
                    format!("node overloaded: too many requests in flight; retry after {hint} ms"),
                )
            });
        }
        c.peak_requests.fetch_max(count, Ordering::SeqCst);
        crate::telemetry::requests_inflight(count);
        Ok(RequestPermit {
            counters: c.clone(),
            bytes: frame_bytes,
        })
    }

    /// Requests in flight now.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Sends in flight now.
    pub fn inflight(&self) -> usize {
        self.counters.inflight.load(Ordering::SeqCst)
    }

    /// Groups with a send in flight now (the map holds no other).
    pub fn busy_groups(&self) -> usize {
        let map = self
            .counters
            .per_group
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.len()
    }

    pub fn peaks(&self) -> Peaks {
        let c = &self.counters;
        Peaks {
            inflight_sends: c.peak_inflight.load(Ordering::SeqCst),
            inflight_requests: c.peak_requests.load(Ordering::SeqCst),
            pending_per_group: c.peak_group.load(Ordering::SeqCst),
            queued_deliveries: self.deliveries.peak(),
        }
    }
}

/// One admitted send; dropping it (after the ack or error went out, or when
/// the request is abandoned) gives its place back.
pub struct Permit {
    counters: Arc<Counters>,
    group_id: Vec<u8>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = &self.counters;
        {
            let mut map = c.per_group.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.group_id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.group_id);
                }
            }
        }
        let left = c.inflight.fetch_sub(1, Ordering::SeqCst) - 1;
        crate::telemetry::sends_inflight(left);
    }
}

/// One request being served; dropping it (once its answer went out, or it
/// was abandoned) gives its place and its frame's bytes back.
pub struct RequestPermit {
    counters: Arc<Counters>,
    bytes: usize,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let c = &self.counters;
        c.request_bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        let left = c.requests.fetch_sub(1, Ordering::SeqCst) - 1;
        crate::telemetry::requests_inflight(left);
    }
}

/// The deliveries waiting in connection queues, counted by
/// [`DeliveryQueue::add`] and [`DeliveryQueue::sub`] (`conns.rs` counts
/// each connection's up to its share, with a token per queued item).
#[derive(Clone, Default)]
pub struct DeliveryQueue {
    inner: Arc<QueueCounts>,
}

#[derive(Default)]
struct QueueCounts {
    depth: AtomicUsize,
    peak: AtomicUsize,
    waits: Waits,
}

/// How long deliveries wait in the connection queues, in the manner of
/// CoDel: the *shortest* wait of any delivery that left a queue in the last
/// window. A count of waiting frames cannot tell a saturated node from a
/// few slow readers, and with few connections the count's bound is never
/// reached while every queue falls seconds behind (each connection counts
/// only its share). The shortest wait can: one slow reader's old frames do
/// not raise it while the other connections write theirs at once, but when
/// the node cannot keep up every delivery waits, and so does the quickest.
/// A window in which nothing left a queue says nothing (not behind).
struct Waits {
    window_start_ms: AtomicU64,
    /// The shortest wait so far in the current window, µs (`u64::MAX`:
    /// none yet).
    current_min_us: AtomicU64,
    /// The shortest wait of the last complete window, µs.
    last_min_us: AtomicU64,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            window_start_ms: AtomicU64::new(0),
            current_min_us: AtomicU64::new(u64::MAX),
            last_min_us: AtomicU64::new(u64::MAX),
        }
    }
}

impl DeliveryQueue {
    /// Counts `n` deliveries more.
    pub fn add(&self, n: usize) {
        let depth = self.inner.depth.fetch_add(n, Ordering::SeqCst) + n;
        self.inner.peak.fetch_max(depth, Ordering::SeqCst);
    }

    /// Counts `n` deliveries less (counted by [`DeliveryQueue::add`]).
    pub fn sub(&self, n: usize) {
        if n > 0 {
            self.inner.depth.fetch_sub(n, Ordering::SeqCst);
        }
    }

    pub fn depth(&self) -> usize {
        self.inner.depth.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Records how long one delivery waited in its connection's queue.
    pub fn waited(&self, wait: std::time::Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX - 1);
        let min = &self.inner.waits.current_min_us;
        // Usually a load only: the quickest is rarely beaten, and a write
        // per delivery to one shared line would cost every thread.
        if us < min.load(Ordering::Relaxed) {
            min.fetch_min(us, Ordering::Relaxed);
        }
    }

    /// Whether the quickest delivery of the last complete window of
    /// `window_ms` (ending at most `window_ms` before `now_ms`) waited
    /// longer than `target_ms`.
    pub fn behind(&self, now_ms: u64, window_ms: u64, target_ms: u64) -> bool {
        let w = &self.inner.waits;
        let start = w.window_start_ms.load(Ordering::Acquire);
        if now_ms >= start.saturating_add(window_ms)
            && w.window_start_ms
                .compare_exchange(start, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // One caller closes the window. After a quiet spell the
            // "window" spans it: its minimum can only be lower, so a stale
            // window errs towards admitting.
            let min = w.current_min_us.swap(u64::MAX, Ordering::AcqRel);
            w.last_min_us.store(min, Ordering::Release);
        }
        let last = w.last_min_us.load(Ordering::Acquire);
        last != u64::MAX && last > target_ms.saturating_mul(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_inflight_sends: 3,
            max_pending_per_group: 2,
            max_queued_deliveries: 2,
            fanout_delay_target_ms: 50,
            fanout_delay_window_ms: 200,
            retry_after_ms: 50,
            max_retry_after_ms: 400,
            max_inflight_requests: 3,
            max_inflight_request_bytes: 100,
        }
    }

    #[test]
    fn a_group_gets_its_cap_then_rate_limited() {
        let a = Admission::new(limits(), DeliveryQueue::default());
        let p1 = a.admit(b"g", 0).unwrap();
        let _p2 = a.admit(b"g", 0).unwrap();
        assert_eq!(a.admit(b"g", 0).err(), Some(Refusal::GroupBusy));
        // The refusal took nothing: another group still fits the node.
        assert_eq!(a.inflight(), 2);
        let _p3 = a.admit(b"h", 0).unwrap();
        drop(p1);
        assert!(a.admit(b"g", 0).is_ok(), "a returned place is free again");
        let e = Refusal::GroupBusy.to_error(50);
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, 50);
    }

    #[test]
    fn the_node_budget_refuses_unavailable_and_counts_return_to_zero() {
        let a = Admission::new(limits(), DeliveryQueue::default());
        let held: Vec<Permit> = [b"a", b"b", b"c"]
            .iter()
            .map(|g| a.admit(*g, 0).unwrap())
            .collect();
        assert_eq!(a.admit(b"d", 0).err(), Some(Refusal::NodeBusy));
        assert_eq!(Refusal::NodeBusy.to_error(50).code, ErrorCode::Unavailable);
        assert_eq!(a.inflight(), 3);
        drop(held);
        assert_eq!(a.inflight(), 0);
        assert_eq!(a.busy_groups(), 0, "no entry is left behind");
        assert_eq!(
            a.peaks(),
            Peaks {
                inflight_sends: 3,
                inflight_requests: 0,
                pending_per_group: 1,
                queued_deliveries: 0
            }
        );
    }

    #[test]
    fn requests_are_bounded_by_count_and_by_bytes_node_wide() {
        let a = Admission::new(limits(), DeliveryQueue::default());
        // By count: 3 in flight, the 4th refused with the hint, taking
        // nothing; a place given back is taken again.
        let held: Vec<_> = (0..3).map(|_| a.admit_request(1, 0).unwrap()).collect();
        let e = a.admit_request(1, 0).err().expect("past the count");
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.retry_after_ms >= 50, "{e:?}");
        assert!(e.message.contains("requests in flight"), "{e:?}");
        assert_eq!(a.requests(), 3);
        drop(held);
        assert_eq!(a.requests(), 0);
        // By bytes: 60 + 40 fit in 100, one byte more does not.
        let big = a.admit_request(60, 0).unwrap();
        let rest = a.admit_request(40, 0).unwrap();
        assert!(a.admit_request(1, 0).is_err(), "past the bytes");
        drop(big);
        let again = a.admit_request(60, 0).unwrap();
        assert!(
            a.admit_request(1, 0).is_err(),
            "the refused byte took nothing"
        );
        drop((rest, again));
        assert!(a.admit_request(100, 0).is_ok());
        assert_eq!(a.requests(), 0);
        assert_eq!(a.peaks().inflight_requests, 3);
    }

    #[test]
    fn queued_deliveries_refuse_sends_until_they_drain() {
        let q = DeliveryQueue::default();
        let a = Admission::new(limits(), q.clone());
        q.add(1);
        q.add(1);
        assert_eq!(a.admit(b"g", 0).err(), Some(Refusal::FanOutBehind));
        assert_eq!(a.inflight(), 0);
        q.sub(1);
        assert!(a.admit(b"g", 0).is_ok());
        q.sub(1);
        assert_eq!(q.depth(), 0);
        assert_eq!(q.peak(), 2);
    }

    #[test]
    fn sends_are_refused_while_even_the_quickest_delivery_waits_too_long() {
        use std::time::Duration;
        let q = DeliveryQueue::default();
        let a = Admission::new(limits(), q.clone());
        let ms = Duration::from_millis;
        // Window [0, 200): one slow reader's old frame and everyone else's
        // quick ones. The quickest decides: not behind.
        q.waited(ms(5_000));
        q.waited(ms(3));
        assert!(a.admit(b"g", 0).is_ok(), "the first window is open");
        assert!(a.admit(b"g", 200).is_ok(), "the quickest waited 3 ms");
        // Window [200, 400): every delivery waits at least 80 ms.
        q.waited(ms(80));
        q.waited(ms(120));
        assert!(a.admit(b"g", 399).is_ok(), "the window is not over yet");
        assert_eq!(a.admit(b"g", 400).err(), Some(Refusal::FanOutBehind));
        assert_eq!(
            Refusal::FanOutBehind.to_error(50).code,
            ErrorCode::Unavailable
        );
        assert_eq!(a.admit(b"g", 599).err(), Some(Refusal::FanOutBehind));
        // Window [400, 600): the queues caught up.
        q.waited(ms(90));
        q.waited(ms(1));
        assert!(a.admit(b"g", 600).is_ok(), "caught up: admitted again");
        // Window [600, 1000): nothing left a queue; that says nothing.
        assert!(a.admit(b"g", 1_000).is_ok());
        // The target itself is not past it.
        q.waited(ms(50));
        assert!(a.admit(b"g", 1_200).is_ok());
    }

    #[test]
    fn concurrent_admissions_never_pass_the_bounds() {
        let a = Admission::new(
            AdmissionLimits {
                max_inflight_sends: 8,
                max_pending_per_group: 3,
                max_queued_deliveries: 1_000,
                fanout_delay_target_ms: 50,
                fanout_delay_window_ms: 200,
                retry_after_ms: 1,
                max_retry_after_ms: 1,
                max_inflight_requests: 8,
                max_inflight_request_bytes: 1_000,
            },
            DeliveryQueue::default(),
        );
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let a = a.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..2_000u32 {
                        if let Ok(p) = a.admit(&[t % 3], 0) {
                            held.push(p);
                        }
                        if i % 3 == 0 {
                            held.clear();
                        }
                    }
                });
            }
        });
        let peaks = a.peaks();
        assert!(peaks.inflight_sends <= 8, "{peaks:?}");
        assert!(peaks.pending_per_group <= 3, "{peaks:?}");
        assert_eq!(a.inflight(), 0);
        assert_eq!(a.busy_groups(), 0);
    }

    #[test]
    fn the_hint_grows_while_refusals_dominate_and_comes_back_when_they_stop() {
        let a = Admission::new(limits(), DeliveryQueue::default());
        let w = HINT_WINDOW_MS;
        assert_eq!(a.retry_after_ms(0), 50, "the base hint at rest");
        // Hold the node's three places, then refuse 100 sends per window.
        let _held: Vec<Permit> = [b"a", b"b", b"c"]
            .iter()
            .map(|g| a.admit(*g, 0).unwrap())
            .collect();
        let mut t = 0;
        let mut seen = Vec::new();
        for _ in 0..6 {
            t += w;
            for _ in 0..100 {
                assert_eq!(a.admit(b"d", t).err(), Some(Refusal::NodeBusy));
            }
            seen.push(a.retry_after_ms(t));
        }
        // Each window's refusals move the hint when it closes.
        assert_eq!(
            seen,
            vec![50, 100, 200, 400, 400, 400],
            "doubles per window, up to the max"
        );
        assert_eq!(a.retry_after_ms(t + w), 400, "the last busy window closed");
        // Refusals stop: a window without any halves it, and a long quiet
        // brings it back to the base.
        assert_eq!(a.retry_after_ms(t + 2 * w), 200);
        assert_eq!(a.retry_after_ms(t + 10 * w), 50);
    }

    #[test]
    fn a_few_refusals_of_one_busy_group_do_not_raise_the_hint() {
        let a = Admission::new(limits(), DeliveryQueue::default());
        let _g: Vec<Permit> = (0..2).map(|_| a.admit(b"g", 0).unwrap()).collect();
        for i in 1..=4 {
            for _ in 0..(HINT_MIN_REFUSALS - 1) {
                assert_eq!(
                    a.admit(b"g", i * HINT_WINDOW_MS).err(),
                    Some(Refusal::GroupBusy)
                );
            }
            assert_eq!(a.retry_after_ms(i * HINT_WINDOW_MS), 50);
        }
        // Refusals elsewhere (a connection's pipelining bound) count too.
        let t = 5 * HINT_WINDOW_MS;
        a.retry_after_ms(t);
        for _ in 0..HINT_MIN_REFUSALS {
            a.refused_elsewhere(t + 1);
        }
        assert_eq!(a.retry_after_ms(t + HINT_WINDOW_MS), 100);
    }
}
