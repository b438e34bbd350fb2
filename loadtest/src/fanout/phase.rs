//! One measured phase of the fan-out worker: every group's sender runs its
//! open-loop schedule, then the phase drains (every send acknowledged,
//! every member contiguous up to the group's head) or its drain timeout
//! passes, and the result is collected: counts, histograms, correctness
//! (each member's seqs against the group's head; unacknowledged sends) and,
//! for a failover phase, the raw records of lost sockets and messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::send::{send_phase, SendPlan};
use super::setup::GroupRt;
use super::shared::Shared;
use crate::clock::Clock;
use crate::protocol::{DropRec, FailoverRaw, FanoutJob, PhaseCmd, PhaseResult};
use crate::stats::{MessageHists, SeqTrack};
use crate::sync::lock;
use crate::workload::{wait_drained, Schedule};

/// Whether every send of every group is acknowledged and every member has
/// everything up to the highest acknowledged seq.
fn drained(groups: &[GroupRt]) -> bool {
    groups.iter().all(|g| {
        let head = g.shared.acked_max.load(Ordering::Relaxed);
        g.sinks[0].pending_len() == 0 && g.sinks.iter().all(|s| lock(&s.track).contiguous() >= head)
    })
}

/// Whether no send is waiting for its answer (the server may still store
/// it) and every member has every seq up to its group's head (the highest
/// seq any member saw or the sender had acknowledged: what the check after
/// the phase counts as lost if missing).
fn caught_up(groups: &[GroupRt]) -> bool {
    groups.iter().all(|g| {
        if g.sinks[0].in_flight_len() > 0 {
            return false;
        }
        let tracks: Vec<SeqTrack> = g.sinks.iter().map(|s| lock(&s.track).clone()).collect();
        let head = tracks
            .iter()
            .map(SeqTrack::max_seen)
            .max()
            .unwrap_or(0)
            .max(g.shared.acked_max.load(Ordering::Relaxed));
        tracks.iter().all(|t| t.lost(head) == 0)
    })
}

/// How long, after a drain that timed out with sends still retrying, the
/// members are given to receive what the server took meanwhile (with no
/// send written again): a delivery on its way at the deadline is late, not
/// lost. A real loss never arrives, however long this is.
const SETTLE_TIMEOUT_S: f64 = 10.0;

/// Runs phase `p` over `groups`.
pub async fn run_phase(
    clock: &Clock,
    shared: &Arc<Shared>,
    job: &FanoutJob,
    groups: &[GroupRt],
    p: &PhaseCmd,
    run_tag: u32,
) -> PhaseResult {
    *lock(&shared.hists) = MessageHists::default();
    *lock(&shared.kill) = p.kill.clone();
    shared.chaos.store(p.chaos, Ordering::Relaxed);
    lock(&shared.drops).clear();
    lock(&shared.refusals).clear();
    let before = shared.counters.tick();
    let n = Schedule::count(p.duration_s, p.rate);
    let mut tasks = Vec::new();
    for g in groups {
        let plan = SendPlan {
            mode: job.mls,
            payload_bytes: job.payload_bytes,
            run_tag,
            schedule: Schedule::for_group(p.start_ns, p.rate, g.shared.index, job.total_groups),
            n,
        };
        tasks.push(tokio::spawn(send_phase(
            *clock,
            g.shared.clone(),
            g.sinks[0].clone(),
            g.sender.clone(),
            plan,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    wait_drained(p.drain_timeout_s, || drained(groups)).await;
    if !drained(groups) {
        shared.settling.store(true, Ordering::Relaxed);
        wait_drained(SETTLE_TIMEOUT_S, || caught_up(groups)).await;
    }
    let after = shared.counters.tick();
    let mut corr = shared.counters.correctness();
    corr.stored_twice = shared.stored_twice.load(Ordering::Relaxed);
    let mut messages = Vec::new();
    for g in groups {
        let tracks: Vec<SeqTrack> = g.sinks.iter().map(|s| lock(&s.track).clone()).collect();
        corr.add_timeline(&tracks, g.shared.acked_max.load(Ordering::Relaxed));
        corr.unacked += g.sinks[0].pending_len() as u64;
        let records = g.shared.take_records();
        if p.kill.is_some() {
            messages.extend(records);
        }
    }
    let failover = p.kill.as_ref().map(|_| FailoverRaw {
        drops: take_drops(shared, groups),
        messages,
        retries: shared.retries.load(Ordering::Relaxed),
        deduplicated: shared.deduplicated.load(Ordering::Relaxed),
    });
    // The next phase sends (and retries) again.
    shared.settling.store(false, Ordering::Relaxed);
    PhaseResult {
        correctness: corr,
        hists: std::mem::take(&mut *lock(&shared.hists)).into_named(),
        last_event_ns: shared.last_event_ns.load(Ordering::Relaxed),
        failover,
        refusals: std::mem::take(&mut *lock(&shared.refusals)),
        ..PhaseResult::between(p.index, before, after)
    }
}

/// The phase's lost sockets: those that came back and caught up, and those
/// still down (or not caught up) at the end.
fn take_drops(shared: &Shared, groups: &[GroupRt]) -> Vec<DropRec> {
    let mut drops = std::mem::take(&mut *lock(&shared.drops));
    for g in groups {
        for s in &g.sinks {
            if let Some(d) = lock(&s.resume).clone() {
                drops.push(d);
            }
        }
    }
    drops
}
