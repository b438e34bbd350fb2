//! The failover report: what a phase with a killed node cost, computed by
//! the coordinator from the workers' raw records ([`FailoverRaw`]).
//!
//! All times are seconds after the kill (the moment the coordinator sent
//! the signal). Definitions:
//!
//! - **affected connections**: sockets to the killed node lost at or after
//!   the kill; `sockets_open_s` is when the last of them had a new
//!   WebSocket open on a surviving node, `reconnected_s` when the last of
//!   them had its resume `Sync` caught up (`SyncCaughtUp`) there;
//! - **groups writable**: per group, the first acknowledgement of a message
//!   scheduled at or after the kill; `groups_writable_s` is the latest over
//!   all groups (the re-home of the killed node's groups, plus the senders'
//!   reconnects; quantized by a group's send interval);
//! - **back** = max(reconnected, groups writable): the outage window is
//!   [kill, back]; messages *scheduled* in it are counted as sent during the
//!   outage, with how many were acknowledged (eventually) and how many
//!   never were (failed);
//! - **drained_s**: when every message scheduled before `back` was
//!   acknowledged and had reached every receiver of its group: the backlog
//!   the outage built is gone. `None` if some never did.
//!
//! Lost / duplicated / reordered / stored-twice are the phase's correctness
//! counts (every seq a member should have, exactly once, in order; a
//! message never acknowledged has no seq, so it is *failed*, not lost --
//! unless some member received it, then the others' missing copies are lost).

use serde::{Deserialize, Serialize};

use crate::protocol::{FailoverRaw, MsgRec};
use crate::stats::Correctness;

/// The failover figures of one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverReport {
    pub killed_node: String,
    pub signal: String,
    /// Seconds from the phase start to the kill.
    pub kill_at_s: f64,
    /// Sockets lost to the kill.
    pub affected_connections: u64,
    /// Sockets lost otherwise (also counted as `closed_unexpected`).
    pub unexpected_drops: u64,
    /// Affected sockets that never got back (or never caught up).
    pub not_reconnected: u64,
    /// Kill -> the last affected connection had a new WebSocket open (on a
    /// surviving node; before its resume Sync caught up).
    #[serde(default)]
    pub sockets_open_s: Option<f64>,
    /// Kill -> the last affected connection resumed (caught up).
    pub reconnected_s: Option<f64>,
    /// Median of kill -> resumed over the affected connections.
    pub reconnected_p50_s: Option<f64>,
    /// Connection attempts over all reconnects (refused ones included).
    pub reconnect_attempts: u64,
    /// Kill -> every group acknowledged a message scheduled after the kill.
    pub groups_writable_s: Option<f64>,
    /// max(reconnected, groups writable): the end of the outage window.
    pub back_s: Option<f64>,
    /// Kill -> everything scheduled before `back` acknowledged and delivered.
    pub drained_s: Option<f64>,
    /// Messages scheduled during the outage window.
    pub outage_sent: u64,
    pub outage_acked: u64,
    pub outage_failed: u64,
    /// Of the phase's messages: resent at least once, and those whose
    /// accepted answer said "already stored".
    pub resent_messages: u64,
    pub deduplicated: u64,
    /// Writes of sends beyond the first.
    pub retries: u64,
    pub correctness: Correctness,
    /// (seconds after the kill, by scheduled send time in 100 ms buckets;
    /// the slowest message's completion latency in ms, or acked latency if
    /// it never completed).
    pub latency_by_send_time: Vec<(f64, f64)>,
}

/// `latency_by_send_time` buckets messages by scheduled send time, this
/// wide.
const BUCKET_NS: u64 = 100_000_000;

fn s(ns: u64, kill: u64) -> f64 {
    (ns as f64 - kill as f64) / 1e9
}

/// When every message scheduled before `until_ns` was acknowledged and
/// completed (Unix ns), or `None` if one never was.
pub fn drained_at(msgs: &[MsgRec], until_ns: u64) -> Option<u64> {
    let mut last = 0;
    for m in msgs.iter().filter(|m| m.intended_ns <= until_ns) {
        if m.acked_ns == 0 || m.completed_ns == 0 {
            return None;
        }
        last = last.max(m.acked_ns).max(m.completed_ns);
    }
    Some(last)
}

/// Per group, the first acknowledgement of a message scheduled at or after
/// `kill_ns`; the latest of those (`None` if a group never had one).
pub fn groups_writable_at(msgs: &[MsgRec], kill_ns: u64) -> Option<u64> {
    let mut first: std::collections::BTreeMap<u32, u64> = Default::default();
    let mut groups: std::collections::BTreeSet<u32> = Default::default();
    for m in msgs.iter().filter(|m| m.intended_ns >= kill_ns) {
        groups.insert(m.group);
        if m.acked_ns > 0 {
            let e = first.entry(m.group).or_insert(u64::MAX);
            *e = (*e).min(m.acked_ns);
        }
    }
    if first.len() < groups.len() {
        return None;
    }
    first.values().copied().max()
}

impl FailoverReport {
    /// `kill_ns`: when the signal was sent; `phase_start_ns`: the phase's
    /// schedule start.
    pub fn new(
        raw: &FailoverRaw,
        killed_node: &str,
        signal: &str,
        kill_ns: u64,
        phase_start_ns: u64,
        correctness: Correctness,
    ) -> Self {
        let affected: Vec<_> = raw.drops.iter().filter(|d| d.expected).collect();
        let mut resumed: Vec<f64> = affected
            .iter()
            .filter(|d| d.resumed_ns > 0)
            .map(|d| s(d.resumed_ns, kill_ns))
            .collect();
        resumed.sort_by(f64::total_cmp);
        let not_reconnected = (affected.len() - resumed.len()) as u64;
        let reconnected_s = if not_reconnected > 0 {
            None
        } else {
            Some(resumed.last().copied().unwrap_or(0.0))
        };
        let reconnected_p50_s = resumed.get(resumed.len() / 2).copied();
        let sockets_open_s = if affected.iter().any(|d| d.reconnected_ns == 0) {
            None
        } else {
            affected
                .iter()
                .map(|d| s(d.reconnected_ns, kill_ns))
                .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
        };
        let writable = groups_writable_at(&raw.messages, kill_ns);
        let groups_writable_s = writable.map(|w| s(w, kill_ns).max(0.0));
        let back_s = match (reconnected_s, groups_writable_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let back_ns = back_s.map(|b| kill_ns + (b * 1e9) as u64);
        let drained_s = back_ns
            .and_then(|b| drained_at(&raw.messages, b))
            .map(|d| s(d, kill_ns).max(0.0));
        // Without a known end, the outage window runs to the phase's end.
        let window_end = back_ns.unwrap_or(u64::MAX);
        let outage: Vec<&MsgRec> = raw
            .messages
            .iter()
            .filter(|m| m.intended_ns >= kill_ns && m.intended_ns <= window_end)
            .collect();
        let outage_acked = outage.iter().filter(|m| m.acked_ns > 0).count() as u64;
        let mut buckets: std::collections::BTreeMap<i64, f64> = Default::default();
        for m in &raw.messages {
            let done = if m.completed_ns > 0 {
                m.completed_ns
            } else {
                m.acked_ns
            };
            if done == 0 {
                continue;
            }
            let b = ((m.intended_ns as f64 - kill_ns as f64) / BUCKET_NS as f64).floor() as i64;
            let ms = (done.saturating_sub(m.intended_ns)) as f64 / 1e6;
            let e = buckets.entry(b).or_insert(0.0);
            *e = e.max(ms);
        }
        Self {
            killed_node: killed_node.to_string(),
            signal: signal.to_string(),
            kill_at_s: s(kill_ns, phase_start_ns),
            affected_connections: affected.len() as u64,
            unexpected_drops: raw.drops.iter().filter(|d| !d.expected).count() as u64,
            not_reconnected,
            sockets_open_s,
            reconnected_s,
            reconnected_p50_s,
            reconnect_attempts: raw.drops.iter().map(|d| u64::from(d.attempts)).sum(),
            groups_writable_s,
            back_s,
            drained_s,
            outage_sent: outage.len() as u64,
            outage_acked,
            outage_failed: outage.len() as u64 - outage_acked,
            resent_messages: raw.messages.iter().filter(|m| m.attempts > 1).count() as u64,
            deduplicated: raw.deduplicated,
            retries: raw.retries,
            correctness,
            latency_by_send_time: buckets
                .into_iter()
                .map(|(b, ms)| (b as f64 * BUCKET_NS as f64 / 1e9, ms))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: u32, intended: u64, acked: u64, completed: u64) -> MsgRec {
        MsgRec {
            group,
            intended_ns: intended,
            acked_ns: acked,
            completed_ns: completed,
            attempts: 1,
            dedup: false,
        }
    }

    #[test]
    fn drained_and_writable() {
        let kill = 1_000;
        let msgs = vec![
            m(0, 900, 950, 990),     // before the kill, fine
            m(1, 950, 3_000, 3_500), // in flight at the kill, resent
            m(0, 1_100, 1_120, 1_150),
            m(1, 1_100, 3_100, 3_200), // group 1 back at 3_000..3_100
            m(1, 4_000, 4_010, 4_020), // after the outage
        ];
        assert_eq!(groups_writable_at(&msgs, kill), Some(3_100));
        assert_eq!(drained_at(&msgs, 3_100), Some(3_500));
        // A message scheduled before the end that never completed.
        let mut bad = msgs.clone();
        bad.push(m(0, 2_000, 2_100, 0));
        assert_eq!(drained_at(&bad, 3_100), None);
        // A group with no ack after the kill is never writable.
        let stuck = vec![m(0, 1_100, 1_120, 1_150), m(1, 1_200, 0, 0)];
        assert_eq!(groups_writable_at(&stuck, kill), None);
    }

    #[test]
    fn report_counts_the_outage_window() {
        use crate::protocol::DropRec;
        let kill = 10_000_000_000u64;
        let ms = 1_000_000u64;
        let raw = FailoverRaw {
            drops: vec![DropRec {
                group: 1,
                member: 0,
                from: 1,
                to: 2,
                dropped_ns: kill + ms,
                reconnected_ns: kill + 5 * ms,
                resumed_ns: kill + 8 * ms,
                attempts: 1,
                expected: true,
            }],
            messages: vec![
                m(0, kill + 10 * ms, kill + 12 * ms, kill + 14 * ms),
                MsgRec {
                    attempts: 3,
                    dedup: true,
                    ..m(1, kill + 20 * ms, kill + 2_000 * ms, kill + 2_001 * ms)
                },
                m(1, kill + 3_000 * ms, kill + 3_001 * ms, kill + 3_002 * ms),
            ],
            retries: 2,
            deduplicated: 1,
        };
        let r = FailoverReport::new(
            &raw,
            "n2",
            "KILL",
            kill,
            kill - 5_000_000_000,
            Correctness::default(),
        );
        assert_eq!(r.affected_connections, 1);
        assert!((r.reconnected_s.unwrap() - 0.008).abs() < 1e-9);
        assert!((r.sockets_open_s.unwrap() - 0.005).abs() < 1e-9);
        assert!((r.groups_writable_s.unwrap() - 2.0).abs() < 1e-9);
        assert!((r.back_s.unwrap() - 2.0).abs() < 1e-9);
        assert!((r.drained_s.unwrap() - 2.001).abs() < 1e-9);
        assert_eq!((r.outage_sent, r.outage_acked, r.outage_failed), (2, 2, 0));
        assert_eq!(r.resent_messages, 1);
        assert!((r.kill_at_s - 5.0).abs() < 1e-9);
    }
}
