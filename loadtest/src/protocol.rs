//! The worker protocol: what the coordinator and its workers say to each
//! other (not the Hush client protocol, which is `hush_proto`). The
//! coordinator splits a scenario into [`Plan`]s, one per worker; each worker
//! owns whole groups (or a slice of the connections), so senders, receivers
//! and their correctness bookkeeping share one process. It gets [`ToWorker`]
//! commands and answers with [`FromWorker`] events: counters while it runs,
//! a [`PhaseResult`] per phase (histograms travel HDR-V2-encoded and are
//! merged by the coordinator), and for a failover phase the raw records
//! ([`FailoverRaw`]) the failover report is computed from.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::scenario::MlsMode;
use crate::stats::{Correctness, Hist, Tick};

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub worker: usize,
    /// Unique per run: user handles and message ids carry it.
    pub run_id: String,
    /// Gateway URLs; members and connections are spread over them
    /// round-robin.
    pub servers: Vec<String>,
    /// Source addresses, round-robin per connection (empty: the OS picks).
    pub sources: Vec<IpAddr>,
    pub job: Job,
}

/// The workload of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Job {
    /// Hush groups `first_group .. first_group + groups`.
    Fanout(FanoutJob),
    /// Redis channels or streams, same shape.
    Redis(FanoutJob, RedisMode),
    /// Idle connections `first .. first + count`.
    Connect(ConnectJob),
}

/// What the baseline's Redis does with a group's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedisMode {
    /// PUBLISH to a channel, SUBSCRIBE to it: nothing kept, nothing acked
    /// by the receivers.
    #[default]
    PubSub,
    /// XADD to a stream (kept; durable before the reply when the server
    /// runs `appendfsync always`), each receiver reading it with blocking
    /// XREADs from the last id it saw and storing that id as its cursor
    /// (SET) every ack interval: Hush's promises, in Redis.
    Streams,
}

impl RedisMode {
    /// The report's name for Redis measured this way.
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::PubSub => "redis",
            RedisMode::Streams => "redis-streams",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutJob {
    pub first_group: usize,
    pub groups: usize,
    /// Groups over all workers (spreads the send schedule).
    pub total_groups: usize,
    pub group_size: usize,
    pub payload_bytes: usize,
    pub mls: MlsMode,
    pub presealed_per_group: usize,
    pub setup_concurrency: usize,
    pub ack_interval_ms: u64,
    /// See `scenario::Fanout::ack_herd`.
    #[serde(default)]
    pub ack_herd: bool,
    /// See `scenario::Fanout::send_window`.
    #[serde(default)]
    pub send_window: usize,
    /// See `scenario::Fanout::presence_poll_ms`.
    #[serde(default)]
    pub presence_poll_ms: u64,
    /// Chaos: this worker's part of the history (`crate::history`).
    #[serde(default)]
    pub history: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectJob {
    pub first: usize,
    pub count: usize,
    pub setup_concurrency: usize,
}

/// Coordinator -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one measured phase, then drain and report.
    Phase(PhaseCmd),
    /// Close everything and exit.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseCmd {
    pub index: usize,
    /// Unix ns at which the phase's schedule starts (same for all workers).
    pub start_ns: u64,
    pub duration_s: f64,
    /// Fanout: messages per second per group. Connect: attempts per second
    /// for this worker.
    pub rate: f64,
    pub drain_timeout_s: f64,
    /// Failover: the node killed during this phase.
    #[serde(default)]
    pub kill: Option<KillCmd>,
    /// Chaos: faults are expected, so a lost socket is not a failure (the
    /// checker judges what follows from the history).
    #[serde(default)]
    pub chaos: bool,
}

/// The node a phase kills: its index in `Plan::servers` and when (Unix ns).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillCmd {
    pub server: usize,
    pub at_ns: u64,
}

/// One lost socket of a member and its way back (Unix ns; 0 = never).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropRec {
    pub group: u32,
    pub member: u32,
    /// Gateway indexes: lost on `from`, reconnected to `to`.
    pub from: usize,
    pub to: usize,
    pub dropped_ns: u64,
    /// The new WebSocket was open.
    pub reconnected_ns: u64,
    /// The resume Sync caught up (`SyncCaughtUp` on the new node).
    pub resumed_ns: u64,
    /// Connection attempts until one succeeded.
    pub attempts: u32,
    /// The socket was to the killed node, at or after the kill.
    pub expected: bool,
}

/// One message of a failover phase (Unix ns; 0 = never).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MsgRec {
    pub group: u32,
    pub intended_ns: u64,
    /// First MessageAccepted at the sender.
    pub acked_ns: u64,
    /// The last receiver of the group got it.
    pub completed_ns: u64,
    /// Times written to a socket (more than 1: resent with the same id).
    pub attempts: u32,
    /// The accepted answer said "already stored" (a resend of a stored message).
    pub dedup: bool,
}

/// What a worker saw of a failover phase, raw: the coordinator turns it
/// into the failover report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverRaw {
    pub drops: Vec<DropRec>,
    pub messages: Vec<MsgRec>,
    /// Sends written again (after a lost socket or a transient error).
    pub retries: u64,
    /// Accepted answers that said "already stored".
    pub deduplicated: u64,
}

impl FailoverRaw {
    pub fn merge(&mut self, o: &FailoverRaw) {
        self.drops.extend(o.drops.iter().cloned());
        self.messages.extend(o.messages.iter().copied());
        self.retries += o.retries;
        self.deduplicated += o.deduplicated;
    }
}

/// Worker -> coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// Setup finished; its wall time and how many users it registered.
    Ready { setup_s: f64, registered: u64 },
    /// Cumulative counters, twice a second while the worker runs and once
    /// more when it stops.
    Tick(Tick),
    /// A phase ended (sending and draining).
    PhaseDone(Box<PhaseResult>),
    /// The worker cannot go on.
    Failed(String),
}

/// What one worker measured in one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    pub index: usize,
    pub sent: u64,
    pub acked: u64,
    /// Deliveries to receivers (the sender's own echo not counted).
    pub delivered: u64,
    pub correctness: Correctness,
    /// Named latency histograms ("ack", "e2e", "completion", "handshake").
    pub hists: BTreeMap<String, Hist>,
    /// Unix ns of the last delivery (or last connect) of the phase.
    pub last_event_ns: u64,
    /// Connections open at the end of the phase.
    pub conns_open: u64,
    /// Failover phases only.
    #[serde(default)]
    pub failover: Option<FailoverRaw>,
    /// Error answers to sends, by error code (retried when transient).
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
}

impl PhaseResult {
    /// Phase `index`'s counts from the worker's counters before and after
    /// it; the workload fills in the rest.
    pub fn between(index: usize, before: Tick, after: Tick) -> Self {
        Self {
            index,
            sent: after.sent - before.sent,
            acked: after.acked - before.acked,
            delivered: after.delivered - before.delivered,
            conns_open: after.conns_open,
            ..Self::default()
        }
    }

    /// Adds another worker's result of the same phase.
    pub fn merge(&mut self, o: &PhaseResult) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.correctness = self.correctness.plus(o.correctness);
        for (k, h) in &o.hists {
            self.hists.entry(k.clone()).or_default().merge(h);
        }
        self.last_event_ns = self.last_event_ns.max(o.last_event_ns);
        self.conns_open += o.conns_open;
        for (code, n) in &o.refusals {
            *self.refusals.entry(code.clone()).or_default() += n;
        }
        if let Some(f) = &o.failover {
            self.failover
                .get_or_insert_with(FailoverRaw::default)
                .merge(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_add_up_across_workers() {
        let mut a = PhaseResult::default();
        a.refusals.insert("RATE_LIMITED".into(), 3);
        let mut b = PhaseResult::default();
        b.refusals.insert("RATE_LIMITED".into(), 2);
        b.refusals.insert("UNAVAILABLE".into(), 1);
        a.merge(&b);
        let want: BTreeMap<String, u64> =
            [("RATE_LIMITED".into(), 5), ("UNAVAILABLE".into(), 1)].into();
        assert_eq!(a.refusals, want);
    }
}
