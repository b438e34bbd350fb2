//! The chaos checker, in the style of Jepsen's queue and total-order
//! checkers: a pure function from a run's history ([`crate::history`]) and
//! the store after the run ([`StoreDump`]) to a [`Verdict`]. No IO, no
//! clock: everything it knows is in its arguments.
//!
//! What it checks (each failure is an [`AnomalyKind`]):
//!
//! - **The store keeps what it acknowledged.** Every acknowledged message
//!   is in the store at the seq it was acknowledged with (`ack-lost`,
//!   `ack-mismatch`); no message is acknowledged under two seqs and no seq
//!   for two messages (`ack-conflict`); no message is stored twice
//!   (`stored-twice`); a group's seqs are exactly 1..=head (`seq-gap`,
//!   which also catches a reused seq the store overwrote); every stored
//!   application entry was sent by a client (`unknown-entry`).
//! - **Every member gets everything, once, in order.** A member must
//!   receive every seq after the one it joined at, up to the group's head
//!   in the store, exactly once (`duplicate`) and in seq order
//!   (`reordered`), live or by resume, and each with the message the store
//!   has at that seq (`delivery-mismatch`). A seq it never received is
//!   `deaf` when the member was connected from the time the seq existed
//!   (its first acknowledgement, else its first delivery to anyone) to the
//!   end of the run without losing its socket -- a connected member the
//!   cluster stopped serving -- and `missing` otherwise (the resume after a
//!   lost socket did not bring it).
//! - **The run ends whole.** All members of a group end on the store's
//!   epoch (`epoch-divergence`); every client ends connected
//!   (`disconnected-at-end`); every message sent was acknowledged by the
//!   end of the drain (`unacked`; not a safety violation by itself, but the
//!   faults heal before the drain, so the cluster should have taken it).
//!
//! Each anomaly carries when it happened, the node the member was
//! connected to then, and the faults active around it. Consecutive seqs a
//! member misses for the same reason on the same node are one record.

mod index;
mod model;

use std::collections::{BTreeMap, HashMap};

use self::index::{Index, MemberLog, MsgId};
pub use self::model::{
    Anomaly, AnomalyKind, CheckOptions, FaultSpan, StoreDump, StoredEntry, StoredGroup, Totals,
    Verdict, APPLICATION, COMMIT,
};
use crate::history::Event;

/// Checks a history against the store after the run (`None`: the store is
/// not checked, and a group's head is the highest seq acknowledged or
/// delivered).
pub fn check(history: &[Event], store: Option<&StoreDump>, opts: &CheckOptions) -> Verdict {
    let ix = Index::new(history);
    let mut f = Findings::new(&ix, *opts);
    let groups: BTreeMap<u32, GroupView> = ix
        .gids
        .iter()
        .map(|(g, gid)| {
            let stored = store.and_then(|s| s.groups.get(gid));
            (*g, GroupView::new(&ix, *g, stored, store.is_some(), &mut f))
        })
        .collect();
    check_acks(&ix, &groups, store.is_some(), &mut f);
    for ((g, m), log) in &ix.members {
        if let (Some(after), Some(view)) = (log.after, groups.get(g)) {
            check_member(&ix, (*g, *m), after, log, view, &mut f);
        }
    }
    check_epochs(&ix, &groups, &mut f);
    check_connected(&ix, &mut f);
    let mut totals = ix.totals.clone();
    totals.stored = groups.values().map(|v| v.stored_entries).sum();
    f.verdict(store.is_some(), totals)
}

/// What a seq holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// One of the generator's messages (its counter).
    Msg(u64),
    /// A commit, a proposal, or an application entry nobody sent.
    Other,
}

/// One group as the checks need it: its head, what each seq holds and
/// when each seq was first known to exist.
struct GroupView {
    head: u64,
    content: HashMap<u64, Content>,
    seen_at: HashMap<u64, u64>,
    stored_entries: u64,
    /// The store has the group.
    in_store: bool,
    /// The group's epoch in the store.
    epoch: Option<u64>,
}

impl GroupView {
    /// With `stored`, from the store (checking its seqs and contents);
    /// without, from the acknowledgements. `store_checked`: a store was
    /// given (so a group missing from it is an anomaly).
    fn new(
        ix: &Index,
        g: u32,
        stored: Option<&StoredGroup>,
        store_checked: bool,
        f: &mut Findings<'_>,
    ) -> Self {
        let mut v = GroupView {
            head: 0,
            content: HashMap::new(),
            seen_at: HashMap::new(),
            stored_entries: 0,
            in_store: false,
            epoch: None,
        };
        for ((mg, _), msg) in &ix.msgs {
            if *mg != g {
                continue;
            }
            for (t, s, _) in &msg.acks {
                let e = v.seen_at.entry(*s).or_insert(*t);
                *e = (*e).min(*t);
            }
        }
        for ((mg, _), log) in &ix.members {
            if *mg != g {
                continue;
            }
            for (t, s, _) in &log.deliveries {
                let e = v.seen_at.entry(*s).or_insert(*t);
                *e = (*e).min(*t);
            }
        }
        match stored {
            Some(sg) => v.load_store(ix, g, sg, f),
            None => {
                if store_checked {
                    let acked = ix
                        .msgs
                        .iter()
                        .filter(|((mg, _), m)| *mg == g && !m.acks.is_empty())
                        .count() as u64;
                    if acked > 0 {
                        f.add(Anomaly {
                            kind: AnomalyKind::AckLost,
                            t: ix.end_t,
                            g,
                            m: None,
                            seqs: None,
                            count: acked,
                            node: None,
                            detail: "the group is not in the store".into(),
                            faults: Vec::new(),
                        });
                    }
                }
                for ((mg, c), msg) in &ix.msgs {
                    if *mg == g {
                        for (_, s, _) in &msg.acks {
                            v.content.insert(*s, Content::Msg(*c));
                        }
                    }
                }
                v.head = v.seen_at.keys().copied().max().unwrap_or(0);
            }
        }
        v
    }

    fn load_store(&mut self, ix: &Index, g: u32, sg: &StoredGroup, f: &mut Findings<'_>) {
        self.stored_entries = sg.entries.len() as u64;
        self.epoch = Some(sg.epoch);
        self.in_store = true;
        let mut prev = 0u64;
        let mut first_seq: HashMap<u64, u64> = HashMap::new();
        for e in &sg.entries {
            if e.seq <= prev {
                f.add(Anomaly {
                    kind: AnomalyKind::SeqGap,
                    t: ix.end_t,
                    g,
                    m: None,
                    seqs: Some((e.seq, e.seq)),
                    count: 1,
                    node: None,
                    detail: format!("seq {} stored again after seq {prev}", e.seq),
                    faults: Vec::new(),
                });
            } else if e.seq != prev + 1 {
                f.add(Anomaly {
                    kind: AnomalyKind::SeqGap,
                    t: ix.end_t,
                    g,
                    m: None,
                    seqs: Some((prev + 1, e.seq - 1)),
                    count: e.seq - prev - 1,
                    node: None,
                    detail: format!("no entries {}..={}", prev + 1, e.seq - 1),
                    faults: Vec::new(),
                });
            }
            prev = prev.max(e.seq);
            let content = match ix.by_id.get(&e.id) {
                Some((mg, c)) if *mg == g => Content::Msg(*c),
                _ => {
                    if e.kind == APPLICATION {
                        f.add(Anomaly {
                            kind: AnomalyKind::UnknownEntry,
                            t: ix.end_t,
                            g,
                            m: None,
                            seqs: Some((e.seq, e.seq)),
                            count: 1,
                            node: None,
                            detail: format!("client_msg_id {} was never sent", e.id),
                            faults: Vec::new(),
                        });
                    }
                    Content::Other
                }
            };
            if let Content::Msg(c) = content {
                match first_seq.get(&c) {
                    Some(s0) => f.add(Anomaly {
                        kind: AnomalyKind::StoredTwice,
                        t: ix.end_t,
                        g,
                        m: None,
                        seqs: Some((*s0, e.seq)),
                        count: 1,
                        node: None,
                        detail: format!("message {c} stored at seq {s0} and seq {}", e.seq),
                        faults: Vec::new(),
                    }),
                    None => {
                        first_seq.insert(c, e.seq);
                    }
                }
            }
            self.content.insert(e.seq, content);
        }
        if sg.head_seq > prev {
            f.add(Anomaly {
                kind: AnomalyKind::SeqGap,
                t: ix.end_t,
                g,
                m: None,
                seqs: Some((prev + 1, sg.head_seq)),
                count: sg.head_seq - prev,
                node: None,
                detail: format!("head_seq is {} but the entries end at {prev}", sg.head_seq),
                faults: Vec::new(),
            });
        } else if sg.head_seq < prev {
            f.add(Anomaly {
                kind: AnomalyKind::SeqGap,
                t: ix.end_t,
                g,
                m: None,
                seqs: Some((sg.head_seq + 1, prev)),
                count: prev - sg.head_seq,
                node: None,
                detail: format!("entries up to {prev} beyond head_seq {}", sg.head_seq),
                faults: Vec::new(),
            });
        }
        self.head = sg.head_seq.max(prev);
    }

    /// When seq `s` was first known to exist (`end` if never).
    fn seen(&self, s: u64, end: u64) -> u64 {
        self.seen_at.get(&s).copied().unwrap_or(end)
    }
}

/// Acknowledgements against each other and against the store; messages
/// never acknowledged.
fn check_acks(ix: &Index, groups: &BTreeMap<u32, GroupView>, store: bool, f: &mut Findings<'_>) {
    let mut msgs: Vec<(&MsgId, &index::MsgLog)> = ix.msgs.iter().collect();
    msgs.sort_by_key(|(id, _)| **id);
    let mut by_seq: HashMap<(u32, u64), u64> = HashMap::new();
    let mut unacked: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for ((g, c), msg) in msgs {
        let Some(&(t, s, _)) = msg.acks.first() else {
            if msg.attempts > 0 {
                unacked.entry(*g).or_default().push((*c, msg.first_send));
            }
            continue;
        };
        if let Some(&(t2, s2, _)) = msg.acks.iter().find(|(_, s2, _)| *s2 != s) {
            f.add(Anomaly {
                kind: AnomalyKind::AckConflict,
                t: t2,
                g: *g,
                m: Some(0),
                seqs: Some((s.min(s2), s.max(s2))),
                count: 1,
                node: None,
                detail: format!("message {c} acknowledged as seq {s} and as seq {s2}"),
                faults: Vec::new(),
            });
        }
        match by_seq.get(&(*g, s)) {
            Some(other) if other != c => f.add(Anomaly {
                kind: AnomalyKind::AckConflict,
                t,
                g: *g,
                m: Some(0),
                seqs: Some((s, s)),
                count: 1,
                node: None,
                detail: format!("seq {s} acknowledged for message {other} and message {c}"),
                faults: Vec::new(),
            }),
            _ => {
                by_seq.insert((*g, s), *c);
            }
        }
        // (A group missing from the store was counted once, as a whole.)
        let Some(view) = groups.get(g).filter(|v| store && v.in_store) else {
            continue;
        };
        match view.content.get(&s) {
            None => f.add(Anomaly {
                kind: AnomalyKind::AckLost,
                t,
                g: *g,
                m: Some(0),
                seqs: Some((s, s)),
                count: 1,
                node: None,
                detail: format!("message {c} acknowledged as seq {s}; the store has no seq {s}"),
                faults: Vec::new(),
            }),
            Some(Content::Msg(c2)) if c2 == c => {}
            Some(other) => f.add(Anomaly {
                kind: AnomalyKind::AckMismatch,
                t,
                g: *g,
                m: Some(0),
                seqs: Some((s, s)),
                count: 1,
                node: None,
                detail: format!(
                    "message {c} acknowledged as seq {s}; the store has {} there",
                    match other {
                        Content::Msg(c2) => format!("message {c2}"),
                        Content::Other => "another entry".into(),
                    }
                ),
                faults: Vec::new(),
            }),
        }
    }
    for (g, list) in unacked {
        let stored = list
            .iter()
            .filter(|(c, _)| {
                groups
                    .get(&g)
                    .is_some_and(|v| v.content.values().any(|x| *x == Content::Msg(*c)))
            })
            .count();
        let (first, t) = list[0];
        let last = list[list.len() - 1].0;
        f.add(Anomaly {kind: AnomalyKind::Unacked, t, g, m: Some(0), seqs: None, count: list.len() as u64, node: None, detail: format!(
                "{} message(s) never acknowledged (counters {first}..={last}); {stored} of them stored",
                list.len()
            ), faults: Vec::new() });
    }
}

/// One member's deliveries: every seq after `after` up to the head, once,
/// in order, with the right message.
fn check_member(
    ix: &Index,
    (g, m): (u32, u32),
    after: u64,
    log: &MemberLog,
    view: &GroupView,
    f: &mut Findings<'_>,
) {
    let head = view.head;
    let span = head.saturating_sub(after) as usize;
    let mut got = vec![false; span];
    let mut next = after + 1;
    let mut dup: Option<(u64, u64, u64)> = None; // (t, seq, count)
    let mut reord: Option<(u64, u64, u64)> = None;
    let mut mismatch: Option<(u64, u64, u64, String)> = None;
    let bump = |slot: &mut Option<(u64, u64, u64)>, t: u64, s: u64| match slot {
        Some(x) => x.2 += 1,
        None => *slot = Some((t, s, 1)),
    };
    for &(t, s, c) in &log.deliveries {
        if s <= after {
            continue;
        }
        if s > head {
            let why = format!("seq {s} delivered; the group's head is {head}");
            match &mut mismatch {
                Some(x) => x.2 += 1,
                None => mismatch = Some((t, s, 1, why)),
            }
            continue;
        }
        let i = (s - after - 1) as usize;
        if got[i] {
            bump(&mut dup, t, s);
            continue;
        }
        if s > next {
            bump(&mut reord, t, s);
        }
        got[i] = true;
        while next <= head && got[(next - after - 1) as usize] {
            next += 1;
        }
        if let (Some(c), Some(stored)) = (c, view.content.get(&s)) {
            if *stored != Content::Msg(c) {
                let why = format!("seq {s} delivered as message {c}; the store has {stored:?}");
                match &mut mismatch {
                    Some(x) => x.2 += 1,
                    None => mismatch = Some((t, s, 1, why)),
                }
            }
        }
    }
    let node_at = |t: u64| log.node_at(t).map(|n| ix.node_name(n));
    // One record per kind: where it first happened, and how often.
    let mut report = |kind, (t, s, n): (u64, u64, u64), detail: String| {
        f.add(Anomaly {
            kind,
            t,
            g,
            m: Some(m),
            seqs: Some((s, s)),
            count: n,
            node: node_at(t),
            detail,
            faults: Vec::new(),
        })
    };
    if let Some((t, s, n)) = dup {
        let d = format!("{n} repeated deliveries, the first of seq {s}");
        report(AnomalyKind::Duplicate, (t, s, n), d);
    }
    if let Some((t, s, n)) = reord {
        let d = format!("{n} deliveries above a gap, the first seq {s}");
        report(AnomalyKind::Reordered, (t, s, n), d);
    }
    if let Some((t, s, n, why)) = mismatch {
        let d = format!("{n} deliveries; first: {why}");
        report(AnomalyKind::DeliveryMismatch, (t, s, n), d);
    }
    missing_runs(ix, (g, m), after, &got, log, view, f);
}

/// Consecutive seqs a member missed for one reason on one node.
struct MissRun {
    kind: AnomalyKind,
    node: Option<usize>,
    first: u64,
    last: u64,
    /// When the first and the last of them were first known to exist.
    t0: u64,
    t1: u64,
}

/// The seqs a member never got, as runs of one cause on one node.
fn missing_runs(
    ix: &Index,
    (g, m): (u32, u32),
    after: u64,
    got: &[bool],
    log: &MemberLog,
    view: &GroupView,
    f: &mut Findings<'_>,
) {
    let flush = |run: &mut Option<MissRun>, f: &mut Findings<'_>| {
        let Some(r) = run.take() else {
            return;
        };
        let rel = |t: u64| t.saturating_sub(ix.start_t) as f64 / 1e9;
        let how = match r.kind {
            AnomalyKind::Deaf => "connected throughout, never received",
            _ => "lost its socket since; not received live or by resume",
        };
        let n = r.last - r.first + 1;
        f.add(Anomaly {
            kind: r.kind,
            t: r.t0,
            g,
            m: Some(m),
            seqs: Some((r.first, r.last)),
            count: n,
            node: r.node.map(|i| ix.node_name(i)),
            detail: format!(
                "seqs {}..={} ({n} of them) stored {:.3}..{:.3} s into the run; {how}",
                r.first,
                r.last,
                rel(r.t0),
                rel(r.t1)
            ),
            faults: Vec::new(),
        });
    };
    let mut run: Option<MissRun> = None;
    for (i, ok) in got.iter().enumerate() {
        if *ok {
            flush(&mut run, f);
            continue;
        }
        let s = after + 1 + i as u64;
        let t = view.seen(s, ix.end_t);
        let node = log.node_at(t);
        let kind = if node.is_some() && !log.lost_after(t) {
            AnomalyKind::Deaf
        } else {
            AnomalyKind::Missing
        };
        match &mut run {
            Some(r) if r.kind == kind && r.node == node && r.last + 1 == s => {
                r.last = s;
                r.t1 = r.t1.max(t);
            }
            _ => {
                flush(&mut run, f);
                run = Some(MissRun {
                    kind,
                    node,
                    first: s,
                    last: s,
                    t0: t,
                    t1: t,
                });
            }
        }
    }
    flush(&mut run, f);
}

/// Every member of a group ends on the store's epoch (or, without the
/// store, on the epoch most of them end on).
fn check_epochs(ix: &Index, groups: &BTreeMap<u32, GroupView>, f: &mut Findings<'_>) {
    let mut by_group: BTreeMap<u32, Vec<(u32, Option<u64>)>> = BTreeMap::new();
    for ((g, m), log) in &ix.members {
        if log.after.is_some() {
            by_group.entry(*g).or_default().push((*m, log.epoch));
        }
    }
    for (g, members) in by_group {
        let reference = groups
            .get(&g)
            .and_then(|v| v.epoch)
            .or_else(|| most_common(&members));
        for (m, e) in &members {
            if *e != reference {
                f.add(Anomaly {
                    kind: AnomalyKind::EpochDivergence,
                    t: ix.end_t,
                    g,
                    m: Some(*m),
                    seqs: None,
                    count: 1,
                    node: None,
                    detail: format!(
                        "member ends on epoch {}, the group on {}",
                        e.map_or("none".into(), |e| e.to_string()),
                        reference.map_or("none".into(), |e| e.to_string())
                    ),
                    faults: Vec::new(),
                });
            }
        }
    }
}

fn most_common(members: &[(u32, Option<u64>)]) -> Option<u64> {
    let mut n: BTreeMap<Option<u64>, usize> = BTreeMap::new();
    for (_, e) in members {
        *n.entry(*e).or_default() += 1;
    }
    n.into_iter().max_by_key(|(_, c)| *c).and_then(|(e, _)| e)
}

/// Every client's last socket is open at the end.
fn check_connected(ix: &Index, f: &mut Findings<'_>) {
    for ((g, m), log) in &ix.members {
        let Some((t, None, why)) = log.sockets.last() else {
            continue;
        };
        let node = log
            .sockets
            .iter()
            .rev()
            .find_map(|(_, n, _)| *n)
            .map(|n| ix.node_name(n));
        f.add(Anomaly {
            kind: AnomalyKind::DisconnectedAtEnd,
            t: *t,
            g: *g,
            m: Some(*m),
            seqs: None,
            count: 1,
            node,
            detail: format!("socket lost ({why}) and not replaced by the end"),
            faults: Vec::new(),
        });
    }
}

/// The anomalies found so far, with the counts and the caps.
struct Findings<'a> {
    ix: &'a Index,
    opts: CheckOptions,
    counts: BTreeMap<AnomalyKind, u64>,
    records: Vec<Anomaly>,
    kept: BTreeMap<AnomalyKind, usize>,
    omitted: BTreeMap<AnomalyKind, u64>,
}

impl<'a> Findings<'a> {
    fn new(ix: &'a Index, opts: CheckOptions) -> Self {
        Self {
            ix,
            opts,
            counts: AnomalyKind::ALL.iter().map(|k| (*k, 0)).collect(),
            records: Vec::new(),
            kept: BTreeMap::new(),
            omitted: BTreeMap::new(),
        }
    }

    /// Counts `a` and keeps it (with its fault context) unless its kind
    /// has all the records it may keep.
    fn add(&mut self, mut a: Anomaly) {
        let (kind, t) = (a.kind, a.t);
        *self.counts.entry(kind).or_default() += a.count;
        let kept = self.kept.entry(kind).or_default();
        if *kept >= self.opts.max_records_per_kind {
            *self.omitted.entry(kind).or_default() += 1;
            return;
        }
        *kept += 1;
        a.faults = self.ix.faults_between(
            t.saturating_sub(self.opts.context_before_ns),
            t.saturating_add(self.opts.context_after_ns),
        );
        self.records.push(a);
    }

    fn verdict(mut self, store_checked: bool, totals: Totals) -> Verdict {
        self.records.sort_by_key(|a| (a.t, a.kind, a.g, a.m));
        Verdict {
            ok: self.counts.values().all(|c| *c == 0),
            store_checked,
            counts: self.counts,
            anomalies: self.records,
            omitted: self.omitted,
            faults: self.ix.faults.clone(),
            nodes: self.ix.nodes.clone(),
            totals,
            start_t: self.ix.start_t,
            end_t: self.ix.end_t,
        }
    }
}

#[cfg(test)]
mod tests;
