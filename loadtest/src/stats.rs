//! Measurements: HDR latency histograms (microseconds), the counters every
//! worker keeps, and the correctness tracker each receiver runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
#[derive(Clone)]
pub struct Hist(pub Histogram<u64>);

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hist(n={})", self.0.len())
    }
}

impl Default for Hist {
    fn default() -> Self {
        // Bounds are constants that hdrhistogram accepts (low >= 1,
        // high >= 2 * low, sigfig <= 5).
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant bounds"))
    }
}

impl Hist {
    /// Records `to - from` nanoseconds (clamped at 1 µs and at the bound).
    pub fn record_ns(&mut self, from_ns: u64, to_ns: u64) {
        let us = to_ns.saturating_sub(from_ns) / 1_000;
        self.0.saturating_record(us.max(1));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds everywhere, so this cannot fail; saturate if it did.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1_000.0;
        let h = &self.0;
        LatencySummary {
            count: h.len(),
            min_ms: ms(if h.is_empty() { 0 } else { h.min() }),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1_000.0,
        }
    }

    /// (percentile, ms) points for a percentile plot.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        [
            0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
        ]
        .iter()
        .map(|p| (*p, self.0.value_at_percentile(*p) as f64 / 1_000.0))
        .collect()
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| serde::de::Error::custom(format!("histogram: {e:?}")))?;
        let mut out = Hist::default();
        out.merge(&Hist(h));
        Ok(out)
    }
}

/// The histograms of a message workload (Hush fan-out, Redis pub/sub), all
/// from the intended send time.
#[derive(Debug, Default)]
pub struct MessageHists {
    /// -> the sender got the acknowledgement.
    pub ack: Hist,
    /// -> a receiver got the message (one per delivery).
    pub e2e: Hist,
    /// -> the last receiver of the group got it (one per message).
    pub completion: Hist,
    /// From the write of the attempt that was accepted (not the intended
    /// time) to its ack: what an admitted send waits for the node, without
    /// the refusals and backoff before it.
    pub ack_try: Hist,
}

impl MessageHists {
    /// By name, as a phase result carries them.
    pub fn into_named(self) -> BTreeMap<String, Hist> {
        [
            ("ack".to_string(), self.ack),
            ("e2e".to_string(), self.e2e),
            ("completion".to_string(), self.completion),
            ("ack_try".to_string(), self.ack_try),
        ]
        .into_iter()
        .collect()
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Cumulative counters of a worker (read for progress and time series).
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub send_errors: AtomicU64,
    pub delivered: AtomicU64,
    pub conns_open: AtomicU64,
    pub conn_failures: AtomicU64,
    pub closed_unexpected: AtomicU64,
    pub payload_errors: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Tick {
    pub sent: u64,
    pub acked: u64,
    pub send_errors: u64,
    pub delivered: u64,
    pub conns_open: u64,
    pub conn_failures: u64,
    pub closed_unexpected: u64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The correctness counts kept as counters (the workload's own
    /// bookkeeping adds lost, duplicated, reordered, unacked, stored twice).
    pub fn correctness(&self) -> Correctness {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Correctness {
            send_errors: g(&self.send_errors),
            payload_errors: g(&self.payload_errors),
            closed_unexpected: g(&self.closed_unexpected),
            conn_failures: g(&self.conn_failures),
            ..Correctness::default()
        }
    }

    pub fn tick(&self) -> Tick {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Tick {
            sent: g(&self.sent),
            acked: g(&self.acked),
            send_errors: g(&self.send_errors),
            delivered: g(&self.delivered),
            conns_open: g(&self.conns_open),
            conn_failures: g(&self.conn_failures),
            closed_unexpected: g(&self.closed_unexpected),
        }
    }
}

impl Tick {
    /// Element-wise sum.
    pub fn plus(self, o: Tick) -> Tick {
        Tick {
            sent: self.sent + o.sent,
            acked: self.acked + o.acked,
            send_errors: self.send_errors + o.send_errors,
            delivered: self.delivered + o.delivered,
            conns_open: self.conns_open + o.conns_open,
            conn_failures: self.conn_failures + o.conn_failures,
            closed_unexpected: self.closed_unexpected + o.closed_unexpected,
        }
    }
}

/// What one observed seq was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// At or below the start of the measured range: setup traffic.
    Setup,
    /// First time, in order.
    InOrder,
    /// First time, but a lower seq is still missing.
    Reordered,
    /// Seen before.
    Duplicate,
}

/// One receiver's view of one group's timeline: every seq after `base`
/// must arrive exactly once, in order.
#[derive(Debug, Clone)]
pub struct SeqTrack {
    base: u64,
    /// The next seq expected in order (everything below arrived).
    next: u64,
    /// Seqs that arrived above a gap.
    ahead: BTreeSet<u64>,
    pub duplicates: u64,
    pub reordered: u64,
}

impl Default for SeqTrack {
    fn default() -> Self {
        // Until the base is set, everything counts as setup traffic.
        Self {
            base: u64::MAX,
            next: u64::MAX,
            ahead: BTreeSet::new(),
            duplicates: 0,
            reordered: 0,
        }
    }
}

impl SeqTrack {
    /// Starts checking after `base` (the last setup seq).
    pub fn start_after(&mut self, base: u64) {
        self.base = base;
        self.next = base + 1;
    }

    /// Records one delivery of `seq`.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq <= self.base {
            return Seen::Setup;
        }
        if seq < self.next || self.ahead.contains(&seq) {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        if seq == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
            Seen::InOrder
        } else {
            self.ahead.insert(seq);
            self.reordered += 1;
            Seen::Reordered
        }
    }

    /// Where a resume starts (`Sync` cursor): the contiguous seq, once the
    /// measured range has started.
    pub fn cursor(&self) -> Option<u64> {
        (self.base != u64::MAX).then(|| self.contiguous())
    }

    /// The highest seq up to which everything arrived.
    pub fn contiguous(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// The highest seq seen at all.
    pub fn max_seen(&self) -> u64 {
        self.ahead
            .last()
            .copied()
            .unwrap_or(0)
            .max(self.contiguous())
    }

    /// Seqs in `(base, head]` that never arrived.
    pub fn lost(&self, head: u64) -> u64 {
        if self.base == u64::MAX || head <= self.base {
            return 0;
        }
        let got =
            (self.contiguous().min(head) - self.base) + self.ahead.range(..=head).count() as u64;
        (head - self.base).saturating_sub(got)
    }
}

/// The correctness counts of a run; any nonzero fails it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Correctness {
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Sends without an ack at the end of the drain.
    pub unacked: u64,
    /// Sends answered with an error.
    pub send_errors: u64,
    /// Payloads that did not decode or decrypt.
    pub payload_errors: u64,
    /// Connections that ended while they should have stayed open.
    pub closed_unexpected: u64,
    /// Connections that could not be opened.
    pub conn_failures: u64,
    /// Deliveries of a message (group, counter in its header) under a
    /// second seq: one send stored twice (a resend the server did not
    /// deduplicate by client_msg_id).
    #[serde(default)]
    pub stored_twice: u64,
}

impl Correctness {
    pub fn plus(self, o: Correctness) -> Correctness {
        Correctness {
            lost: self.lost + o.lost,
            duplicated: self.duplicated + o.duplicated,
            reordered: self.reordered + o.reordered,
            unacked: self.unacked + o.unacked,
            send_errors: self.send_errors + o.send_errors,
            payload_errors: self.payload_errors + o.payload_errors,
            closed_unexpected: self.closed_unexpected + o.closed_unexpected,
            conn_failures: self.conn_failures + o.conn_failures,
            stored_twice: self.stored_twice + o.stored_twice,
        }
    }

    /// Adds one group's timeline checks: each member's track against the
    /// group's head, the highest seq any member saw or the sender had
    /// acknowledged (`acked_max`).
    pub fn add_timeline(&mut self, tracks: &[SeqTrack], acked_max: u64) {
        let head = tracks
            .iter()
            .map(SeqTrack::max_seen)
            .max()
            .unwrap_or(0)
            .max(acked_max);
        for t in tracks {
            self.lost += t.lost(head);
            self.duplicated += t.duplicates;
            self.reordered += t.reordered;
        }
    }

    /// True when nothing went wrong.
    pub fn ok(&self) -> bool {
        *self == Correctness::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_track_counts_loss_duplicates_and_reordering() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(1), Seen::Setup);
        t.start_after(1);
        assert_eq!(t.observe(1), Seen::Setup);
        assert_eq!(t.observe(2), Seen::InOrder);
        assert_eq!(t.observe(4), Seen::Reordered);
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.contiguous(), 2);
        assert_eq!(t.observe(3), Seen::InOrder);
        assert_eq!(t.contiguous(), 4);
        assert_eq!(t.observe(7), Seen::Reordered);
        assert_eq!(t.lost(7), 2); // 5 and 6
        assert_eq!(t.lost(8), 3);
        assert_eq!(t.max_seen(), 7);
        assert_eq!((t.duplicates, t.reordered), (2, 2));
    }

    #[test]
    fn a_timeline_counts_against_the_groups_head() {
        let member = |seqs: &[u64]| {
            let mut t = SeqTrack::default();
            t.start_after(10);
            for s in seqs {
                t.observe(*s);
            }
            t
        };
        // One member got 11..=13, the other 11 and 13 (12 late, then again).
        let tracks = [member(&[11, 12, 13]), member(&[11, 13, 12, 12])];
        let mut c = Correctness::default();
        c.add_timeline(&tracks, 0);
        assert_eq!((c.lost, c.duplicated, c.reordered), (0, 1, 1));
        // The sender had 14 acknowledged: nobody got it.
        let mut c = Correctness::default();
        c.add_timeline(&tracks, 14);
        assert_eq!(c.lost, 2);
    }

    #[test]
    fn histograms_survive_serde_and_merge() {
        let mut a = Hist::default();
        a.record_ns(0, 2_000_000);
        let mut b = Hist::default();
        b.record_ns(0, 4_000_000);
        let json = serde_json::to_string(&a).unwrap();
        let mut back: Hist = serde_json::from_str(&json).unwrap();
        back.merge(&b);
        assert_eq!(back.0.len(), 2);
        let s = back.summary();
        assert!(s.max_ms >= 3.99 && s.max_ms <= 4.01, "{s:?}");
    }
}
