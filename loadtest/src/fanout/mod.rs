//! The Hush fan-out worker: G groups of k members, every member its own
//! registered user with its own WebSocket; member 0 of each group created
//! the group through MLS and is its sender, the others receive.
//!
//! Sending is open-loop: message `i` of a group has the intended send time
//! `start + offset + i / rate`, whether or not earlier ones were answered,
//! and every latency is measured from that intended time (so a stalled
//! server shows up as latency, not as a lower send rate). Three histograms:
//! `ack` (intended -> MessageAccepted at the sender), `e2e` (intended -> a
//! receiver got the event, per delivery) and `completion` (intended -> the
//! last receiver of the group got it, per message).
//!
//! Correctness: each member (the sender included, for its own echo) checks
//! with a `SeqTrack` that every seq after the setup commit arrives exactly
//! once and in order; after the drain, seqs up to the group's head that
//! never arrived are lost. Each message's header (group, counter) is also
//! checked against the seq it was first seen or acked under: the same
//! message under a second seq was stored twice (a retry the server did not
//! deduplicate).
//!
//! Failover: every member's connection knows all gateways. When its socket
//! is lost (4004 from a node going away, or a dead node), it reconnects to
//! the next node that answers and resumes with `Sync` from the member's
//! contiguous seq; the sender resends every unacknowledged message with the
//! same `client_msg_id` (the server answers a repeat with the original
//! seq), and retries transient errors (UNAVAILABLE while a group re-homes,
//! INTERNAL, RATE_LIMITED) with backoff, until the drain deadline. A drain
//! that times out stops all sending, and the members get a few seconds to
//! receive what the server took meanwhile before they are checked (a
//! delivery on its way at the deadline is late, not lost).
//!
//! The files, by concern: `setup` (registration, connections, the MLS
//! group), `send` (the open-loop schedule), `member` (a connection's
//! handler: receiving, answers, loss and resume), `outbox` (the sender's
//! unacknowledged sends), `group` (a group's message ledger), `phase` (one
//! measured phase and its result), `shared` (what all members share).
//! This file runs the worker: setup, the background tasks, the phases.

mod group;
mod member;
mod outbox;
mod phase;
mod send;
mod setup;
mod shared;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hush_proto::client_frame::Body as C;
use hush_proto::v1;
use tokio::task::JoinHandle;

use self::member::MemberSink;
use self::phase::run_phase;
use self::setup::{setup_group, GroupRt};
use self::shared::Shared;
use crate::clock::now_ns;
use crate::conn::Conn;
use crate::endpoints::Endpoints;
use crate::history::Recorder;
use crate::protocol::{FanoutJob, Plan};
use crate::sync::lock;
use crate::workload::{Channels, WorkerRun};

/// How often the senders write what is due again (resends after a lost
/// socket, retries after a transient error's backoff).
const RESEND_INTERVAL: Duration = Duration::from_millis(10);

/// Runs the fan-out worker until `Stop`.
pub async fn run(plan: Plan, job: FanoutJob, ch: Channels) -> anyhow::Result<()> {
    let ep = Endpoints::new(&plan).await?;
    let mut run = WorkerRun::start(ch, |s: &Shared| (&s.counters, &s.stopping));
    if let Some(path) = &job.history {
        let rec = Recorder::create(path)
            .with_context(|| format!("create the history part {}", path.display()))?;
        let _ = run.shared.history.set(rec);
    }
    let groups: Vec<GroupRt> = {
        let (plan, job, ep, shared) = (&plan, &job, &ep, &run.shared);
        stream::iter(job.first_group..job.first_group + job.groups)
            .map(|g| async move { setup_group(plan, job, ep, shared, g).await })
            .buffered(job.setup_concurrency)
            .try_collect()
            .await?
    };
    run.ready((job.groups * job.group_size) as u64);
    let acker = (job.ack_interval_ms > 0).then(|| {
        let every = Duration::from_millis(job.ack_interval_ms);
        spawn_acker(&groups, every, job.ack_herd)
    });
    let poller = (job.presence_poll_ms > 0)
        .then(|| spawn_presence_poller(&groups, Duration::from_millis(job.presence_poll_ms)));
    let resender = spawn_resender(&groups);
    let run_tag = u32::from_str_radix(plan.run_id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    while let Some(p) = run.next_phase().await {
        let r = run_phase(&run.clock, &run.shared, &job, &groups, &p, run_tag).await;
        // The coordinator reads the history once every phase is done.
        if let Some(h) = run.shared.history.get() {
            h.flush().await;
        }
        run.phase_done(r);
    }
    run.finish(|| {
        if let Some(a) = acker {
            a.abort();
        }
        if let Some(p) = poller {
            p.abort();
        }
        resender.abort();
        for g in &groups {
            for c in &g.conns {
                c.close();
            }
        }
    });
    Ok(())
}

/// Receivers acknowledge what they have, contiguously, every `every` (as
/// the SDK does after processing): each at its own phase, spread evenly
/// over the interval in slices of [`ACK_SLICE`], or, with `herd`, all at
/// once.
fn spawn_acker(groups: &[GroupRt], every: Duration, herd: bool) -> JoinHandle<()> {
    let targets: Vec<(Arc<Conn>, Arc<MemberSink>)> = groups
        .iter()
        .flat_map(|g| g.conns.iter().cloned().zip(g.sinks.iter().cloned()))
        .collect();
    let slices = if herd {
        1
    } else {
        let fit = (every.as_micros() / ACK_SLICE.as_micros()).max(1);
        usize::try_from(fit)
            .unwrap_or(usize::MAX)
            .min(targets.len().max(1))
    };
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(every / u32::try_from(slices).unwrap_or(u32::MAX));
        for slice in (0..slices).cycle() {
            iv.tick().await;
            for (conn, sink) in targets.iter().skip(slice).step_by(slices) {
                let c = lock(&sink.track).contiguous();
                let Some(gid) = sink.group.group_id.get() else {
                    continue;
                };
                if c > sink.acked_to_server.load(Ordering::Relaxed) && c < u64::MAX - 1 {
                    sink.acked_to_server.store(c, Ordering::Relaxed);
                    let _ = conn.send_with_id(
                        0,
                        C::Ack(v1::Ack {
                            group_id: gid.clone(),
                            seq: c,
                        }),
                    );
                }
            }
        }
    })
}

/// The acker's step when spreading: the timer's resolution is a
/// millisecond.
const ACK_SLICE: Duration = Duration::from_millis(5);

/// Every member asks for its group's presence once per `every`, one member
/// after the other at even intervals (the answers, request id 0, are
/// ignored like any push the generator does not count).
fn spawn_presence_poller(groups: &[GroupRt], every: Duration) -> JoinHandle<()> {
    let targets: Vec<(Arc<Conn>, Arc<MemberSink>)> = groups
        .iter()
        .flat_map(|g| g.conns.iter().cloned().zip(g.sinks.iter().cloned()))
        .collect();
    tokio::spawn(async move {
        if targets.is_empty() {
            return;
        }
        let step = (every / targets.len() as u32).max(Duration::from_micros(100));
        let mut iv = tokio::time::interval(step);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for (conn, sink) in targets.iter().cycle() {
            iv.tick().await;
            if let Some(gid) = sink.group.group_id.get() {
                let _ = conn.send_with_id(
                    0,
                    C::GetPresence(v1::GetPresence {
                        group_id: gid.clone(),
                    }),
                );
            }
        }
    })
}

/// Senders write what is due again: transient errors back off, and sends
/// queued while a socket was down go at the reconnect.
fn spawn_resender(groups: &[GroupRt]) -> JoinHandle<()> {
    let senders: Vec<Arc<MemberSink>> = groups.iter().map(|g| g.sinks[0].clone()).collect();
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(RESEND_INTERVAL);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            let now = now_ns();
            for s in &senders {
                if !s.shared.settling.load(std::sync::atomic::Ordering::Relaxed) {
                    s.resend_due(now);
                }
            }
        }
    })
}
