//! The chaos part of a report ([`ChaosReport`], in `summary.json`): the
//! seed and the schedule as planned, the checker's verdict (with the
//! faults as they happened and the anomalies in their context), and a
//! timeline by second computed from the history: acknowledgements,
//! deliveries, refusals, lost sockets, and the end-to-end latency of the
//! deliveries (from the message's due time).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::chaos::schedule::FaultSpec;
use crate::checker::Verdict;
use crate::history::{Event, Mark};

/// The chaos run's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChaosReport {
    pub seed: u64,
    /// Generated from the seed (else written out in the scenario).
    pub generated: bool,
    pub nodes: Vec<String>,
    /// Nodes in network namespaces (partitions possible).
    pub netns: bool,
    pub lease_ttl_ms: u64,
    pub probe_ms: u64,
    /// The schedule as planned (node indexes; `verdict.faults` has what
    /// happened, with wall times).
    pub planned: Vec<FaultSpec>,
    pub verdict: Verdict,
    /// Why the store could not be read (then it was not checked).
    pub store_error: Option<String>,
    pub timeline: Vec<Second>,
    /// Events in `history.jsonl`.
    pub history_events: u64,
}

/// One second of the measured window (and the drain after it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds after the phase start.
    pub t: f64,
    pub acked: u64,
    /// First receipts (a member's repeat of a seq is not counted).
    pub delivered: u64,
    pub refused: u64,
    pub disconnects: u64,
    /// Due time -> delivered, over this second's first receipts (ms).
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
}

impl ChaosReport {
    /// Before the verdict: what was planned.
    pub fn planned(
        seed: u64,
        generated: bool,
        nodes: Vec<String>,
        netns: bool,
        planned: Vec<FaultSpec>,
        lease_ttl_ms: u64,
        probe_ms: u64,
    ) -> Self {
        Self {
            seed,
            generated,
            nodes,
            netns,
            lease_ttl_ms,
            probe_ms,
            planned,
            verdict: Verdict::default(),
            store_error: None,
            timeline: Vec::new(),
            history_events: 0,
        }
    }

    /// The checker's verdict, and the timeline from the history.
    pub fn judged(&mut self, verdict: Verdict, store_error: Option<String>, history: &[Event]) {
        self.verdict = verdict;
        self.store_error = store_error;
        self.timeline = timeline(history);
        self.history_events = history.len() as u64;
    }
}

/// Percentile `q` (0..=1) of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The history by second from the phase start (the `phase-start` mark,
/// else the first event); nothing before it.
pub fn timeline(history: &[Event]) -> Vec<Second> {
    let start = history
        .iter()
        .find_map(|e| match e {
            Event::Mark {
                t,
                what: Mark::PhaseStart,
            } => Some(*t),
            _ => None,
        })
        .or_else(|| history.first().map(Event::t))
        .unwrap_or(0);
    let mut due: HashMap<(u32, u64), u64> = HashMap::new();
    for e in history {
        if let Event::Send { g, c, due: d, .. } = e {
            due.entry((*g, *c)).or_insert(*d);
        }
    }
    let mut secs: Vec<Second> = Vec::new();
    let mut lat: Vec<Vec<f64>> = Vec::new();
    let mut seen: HashSet<(u32, u32, u64)> = HashSet::new();
    for e in history {
        let t = e.t();
        if t < start {
            continue;
        }
        let i = ((t - start) / 1_000_000_000) as usize;
        if secs.len() <= i {
            secs.resize_with(i + 1, Second::default);
            lat.resize_with(i + 1, Vec::new);
        }
        let s = &mut secs[i];
        match e {
            Event::Ack { .. } => s.acked += 1,
            Event::Refused { .. } => s.refused += 1,
            Event::Disconnect { .. } => s.disconnects += 1,
            Event::Deliver {
                g, m, s: seq, c, ..
            } if seen.insert((*g, *m, *seq)) => {
                s.delivered += 1;
                if let Some(d) = c.and_then(|c| due.get(&(*g, c))) {
                    lat[i].push(t.saturating_sub(*d) as f64 / 1e6);
                }
            }
            _ => {}
        }
    }
    for (i, (s, mut l)) in secs.iter_mut().zip(lat).enumerate() {
        s.t = i as f64;
        l.sort_by(f64::total_cmp);
        s.e2e_p50_ms = pct(&l, 0.5);
        s.e2e_p99_ms = pct(&l, 0.99);
        s.e2e_max_ms = l.last().copied().unwrap_or(0.0);
    }
    secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_count_first_receipts_and_their_latency() {
        let s = 1_000_000_000u64;
        let h = vec![
            Event::Mark {
                t: 10 * s,
                what: Mark::PhaseStart,
            },
            Event::Send {
                t: 10 * s,
                g: 0,
                m: 0,
                c: 0,
                id: "a".into(),
                due: 10 * s,
            },
            Event::Ack {
                t: 10 * s + 5_000_000,
                g: 0,
                m: 0,
                c: 0,
                s: 2,
                dup: false,
            },
            Event::Deliver {
                t: 10 * s + 20_000_000,
                g: 0,
                m: 1,
                s: 2,
                e: 1,
                c: Some(0),
            },
            Event::Deliver {
                t: 11 * s + 500_000_000,
                g: 0,
                m: 1,
                s: 2,
                e: 1,
                c: Some(0),
            },
            Event::Deliver {
                t: 12 * s,
                g: 0,
                m: 2,
                s: 2,
                e: 1,
                c: Some(0),
            },
        ];
        let tl = timeline(&h);
        assert_eq!(tl.len(), 3);
        assert_eq!((tl[0].acked, tl[0].delivered), (1, 1));
        assert!((tl[0].e2e_max_ms - 20.0).abs() < 1e-9);
        assert_eq!(tl[1].delivered, 0, "a repeat is not a delivery");
        assert!((tl[2].e2e_p50_ms - 2000.0).abs() < 1e-9);
    }
}
