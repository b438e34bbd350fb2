//! The fault schedule: which fault, on which nodes, when and for how long.
//! Either written out in the scenario (`chaos.schedule`) or generated from
//! a seed by [`generate`] -- a pure function, so the same seed and
//! parameters give the same schedule on any machine, and the history's
//! meta records the seed.
//!
//! The generator draws kinds from a shuffled bag (so every enabled kind
//! comes up before any repeats), alternates long and short pauses, keeps
//! one fault per node at a time, at most `max_concurrent` at once, a
//! rolling restart alone, and always at least one node untouched. With
//! probability `overlap` the next fault starts while this one is still
//! active; otherwise after it ends plus a gap. Nothing starts after
//! `window - settle`, and everything is planned to end by then, so the run
//! ends on a healed cluster.

use serde::{Deserialize, Serialize};

use crate::history::FaultKind;

/// One planned fault. `nodes` are node indexes (0 = n1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    pub id: u32,
    /// Start, ms after the measured window starts.
    pub at_ms: u64,
    pub kind: FaultKind,
    pub nodes: Vec<usize>,
    /// Pause and partition: how long it lasts. Kill and restart: how long
    /// the node stays down. Rolling restart: the wait between nodes.
    pub duration_ms: u64,
}

/// What the generator may do.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub window_ms: u64,
    pub first_ms: u64,
    pub settle_ms: u64,
    /// Between one fault's end (or start, when overlapping) and the next.
    pub gap_ms: (u64, u64),
    pub overlap: f64,
    pub max_concurrent: usize,
    pub kinds: Vec<FaultKind>,
    pub pause_short_ms: (u64, u64),
    pub pause_long_ms: (u64, u64),
    pub down_ms: (u64, u64),
    pub partition_ms: (u64, u64),
    /// What a node's stop and start again is assumed to take on top of
    /// its down time (planning only; the run records what it took).
    pub restart_ms: u64,
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The nodes on the minority side of a split: 1 of 3, 2 of 5.
pub fn minority(nodes: usize) -> usize {
    (nodes.saturating_sub(1) / 2).max(1)
}

/// A planned fault while it is (assumed) active.
struct Active {
    until: u64,
    nodes: Vec<usize>,
    exclusive: bool,
}

/// Generates the schedule for `p` from `seed`.
pub fn generate(p: &Params, seed: u64) -> Vec<FaultSpec> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    if p.kinds.is_empty() || p.nodes < 2 {
        return out;
    }
    let end = p.window_ms.saturating_sub(p.settle_ms);
    let mut bag: Vec<FaultKind> = Vec::new();
    let mut long_pause = rng.unit() < 0.5;
    let mut active: Vec<Active> = Vec::new();
    let mut t = p.first_ms;
    let mut misses = 0;
    while t < end && misses < 4 * p.kinds.len() + 8 {
        active.retain(|a| a.until > t);
        if bag.is_empty() {
            bag = p.kinds.clone();
            rng.shuffle(&mut bag);
        }
        let kind = bag[bag.len() - 1];
        // Wait for room: a rolling restart runs alone, others share.
        let blocked = active.iter().any(|a| a.exclusive)
            || active.len() >= p.max_concurrent
            || (kind == FaultKind::RollingRestart && !active.is_empty());
        if blocked {
            t = active.iter().map(|a| a.until).min().unwrap_or(t) + p.gap_ms.0;
            continue;
        }
        let (duration_ms, busy_ms) = match kind {
            FaultKind::Pause => {
                long_pause = !long_pause;
                let d = rng.range(if long_pause {
                    p.pause_long_ms
                } else {
                    p.pause_short_ms
                });
                (d, d)
            }
            FaultKind::Kill | FaultKind::Restart => {
                let d = rng.range(p.down_ms);
                (d, d + p.restart_ms)
            }
            FaultKind::RollingRestart => {
                let d = rng.range(p.down_ms);
                (d, p.nodes as u64 * (d + p.restart_ms))
            }
            FaultKind::IsolatePeers | FaultKind::IsolateClients | FaultKind::Split => {
                let d = rng.range(p.partition_ms);
                (d, d)
            }
        };
        if t + busy_ms > end {
            // Does not fit any more: try the next kind.
            bag.pop();
            misses += 1;
            continue;
        }
        let busy: Vec<usize> = active.iter().flat_map(|a| a.nodes.clone()).collect();
        let mut free: Vec<usize> = (0..p.nodes).filter(|n| !busy.contains(n)).collect();
        let want = match kind {
            FaultKind::RollingRestart => p.nodes,
            FaultKind::Split => minority(p.nodes),
            _ => 1,
        };
        // Always leave a node untouched (a rolling restart touches one at a
        // time).
        if kind != FaultKind::RollingRestart && free.len() < want + 1 {
            t = active.iter().map(|a| a.until).min().unwrap_or(t) + p.gap_ms.0;
            continue;
        }
        bag.pop();
        rng.shuffle(&mut free);
        let mut nodes: Vec<usize> = if kind == FaultKind::RollingRestart {
            (0..p.nodes).collect()
        } else {
            free.into_iter().take(want).collect()
        };
        nodes.sort_unstable();
        out.push(FaultSpec {
            id: out.len() as u32 + 1,
            at_ms: t,
            kind,
            nodes: nodes.clone(),
            duration_ms,
        });
        active.push(Active {
            until: t + busy_ms,
            nodes,
            exclusive: kind == FaultKind::RollingRestart,
        });
        t += if kind != FaultKind::RollingRestart && rng.unit() < p.overlap {
            rng.range((p.gap_ms.0.min(busy_ms / 2), busy_ms / 2))
        } else {
            busy_ms + rng.range(p.gap_ms)
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            nodes: 3,
            window_ms: 600_000,
            first_ms: 5_000,
            settle_ms: 15_000,
            gap_ms: (2_000, 10_000),
            overlap: 0.3,
            max_concurrent: 2,
            kinds: FaultKind::ALL.to_vec(),
            pause_short_ms: (300, 1_000),
            pause_long_ms: (5_000, 9_000),
            down_ms: (1_000, 4_000),
            partition_ms: (4_000, 12_000),
            restart_ms: 3_000,
        }
    }

    fn busy_until(f: &FaultSpec, p: &Params) -> u64 {
        f.at_ms
            + match f.kind {
                FaultKind::Kill | FaultKind::Restart => f.duration_ms + p.restart_ms,
                FaultKind::RollingRestart => p.nodes as u64 * (f.duration_ms + p.restart_ms),
                _ => f.duration_ms,
            }
    }

    #[test]
    fn a_seed_gives_one_schedule() {
        let p = params();
        assert_eq!(generate(&p, 7), generate(&p, 7));
        assert_ne!(generate(&p, 7), generate(&p, 8));
    }

    #[test]
    fn every_kind_and_both_pauses_fit_the_window_without_clashing() {
        for nodes in [3, 5] {
            for seed in 1..20 {
                let p = Params { nodes, ..params() };
                let s = generate(&p, seed);
                for k in FaultKind::ALL {
                    assert!(s.iter().any(|f| f.kind == k), "seed {seed}: no {k:?}");
                }
                let pauses: Vec<u64> = s
                    .iter()
                    .filter(|f| f.kind == FaultKind::Pause)
                    .map(|f| f.duration_ms)
                    .collect();
                assert!(pauses.iter().any(|d| *d <= 1_000), "a short pause");
                assert!(pauses.iter().any(|d| *d >= 5_000), "a long pause");
                for (i, f) in s.iter().enumerate() {
                    assert_eq!(f.id as usize, i + 1);
                    assert!(f.at_ms >= p.first_ms);
                    assert!(busy_until(f, &p) <= p.window_ms - p.settle_ms, "{f:?}");
                    if f.kind == FaultKind::Split {
                        assert_eq!(f.nodes.len(), minority(nodes));
                    }
                    // Faults active at f's start: none on its nodes, fewer
                    // than the limit, and a node left untouched.
                    let at = |g: &FaultSpec| g.at_ms <= f.at_ms && busy_until(g, &p) > f.at_ms;
                    let others: Vec<&FaultSpec> = s[..i].iter().filter(|g| at(g)).collect();
                    assert!(others.len() < p.max_concurrent, "{f:?} {others:?}");
                    if f.kind == FaultKind::RollingRestart {
                        assert!(others.is_empty());
                    }
                    let mut touched: Vec<usize> = f.nodes.clone();
                    for g in &others {
                        assert!(g.kind != FaultKind::RollingRestart);
                        assert!(g.nodes.iter().all(|n| !f.nodes.contains(n)), "{f:?} {g:?}");
                        touched.extend(&g.nodes);
                    }
                    touched.sort_unstable();
                    touched.dedup();
                    if f.kind != FaultKind::RollingRestart {
                        assert!(touched.len() < nodes);
                    }
                }
                let overlapping = s.windows(2).any(|w| w[1].at_ms < busy_until(&w[0], &p));
                assert!(overlapping, "seed {seed}: some faults overlap");
            }
        }
    }

    #[test]
    fn nothing_to_do_without_kinds_or_room() {
        let p = Params {
            kinds: Vec::new(),
            ..params()
        };
        assert!(generate(&p, 1).is_empty());
        let p = Params {
            window_ms: 10_000,
            ..params()
        };
        assert!(generate(&p, 1).is_empty());
        assert_eq!((minority(3), minority(5)), (1, 2));
    }
}
