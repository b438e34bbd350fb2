//! What the checker takes besides the history (the store after the run,
//! its options) and what it returns (the verdict: counts per anomaly kind,
//! the anomalies with their fault context, the faults as spans).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::FaultKind;

/// The groups of a run as the store holds them after it (read from the
/// SQLite file by `chaos::store`, or built by hand in tests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreDump {
    /// By group id (hex).
    pub groups: BTreeMap<String, StoredGroup>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredGroup {
    pub epoch: u64,
    pub head_seq: u64,
    /// In seq order.
    pub entries: Vec<StoredEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub seq: u64,
    /// 1 commit, 2 proposal, 3 application (`hush_proto::v1::EntryKind`).
    pub kind: i64,
    pub epoch: u64,
    /// `client_msg_id`, hex.
    pub id: String,
}

/// The entry kind of application messages.
pub const APPLICATION: i64 = 3;
/// The entry kind of commits.
pub const COMMIT: i64 = 1;

/// How the checker reports.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// A fault is an anomaly's context when it was active at some time in
    /// `[t - context_before_ns, t + context_after_ns]`.
    pub context_before_ns: u64,
    pub context_after_ns: u64,
    /// Anomaly records kept per kind; the counts are always complete.
    pub max_records_per_kind: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            context_before_ns: 10_000_000_000,
            context_after_ns: 1_000_000_000,
            max_records_per_kind: 200,
        }
    }
}

/// What went wrong, by the promise it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// An acknowledged message is not in the store at its seq.
    AckLost,
    /// The store holds another message at an acknowledged seq.
    AckMismatch,
    /// One message acknowledged under two seqs, or two messages under one.
    AckConflict,
    /// One message stored under two seqs.
    StoredTwice,
    /// A group's stored seqs are not 1..=head without a hole.
    SeqGap,
    /// An application entry in the store that no client sent.
    UnknownEntry,
    /// A member connected from when a seq existed to the end of the run
    /// never received it.
    Deaf,
    /// A member never received a seq it should have (it was disconnected
    /// at some point since; the resume did not bring it).
    Missing,
    /// A member received a seq twice.
    Duplicate,
    /// A member received a seq while a lower one it should have was
    /// still missing.
    Reordered,
    /// A member received a seq the store does not have, or with another
    /// message than the store has there.
    DeliveryMismatch,
    /// Members of a group (or the store) end on different epochs.
    EpochDivergence,
    /// A client's last socket was lost and never replaced.
    DisconnectedAtEnd,
    /// A message sent and never acknowledged by the end of the drain.
    Unacked,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 14] = [
        AnomalyKind::AckLost,
        AnomalyKind::AckMismatch,
        AnomalyKind::AckConflict,
        AnomalyKind::StoredTwice,
        AnomalyKind::SeqGap,
        AnomalyKind::UnknownEntry,
        AnomalyKind::Deaf,
        AnomalyKind::Missing,
        AnomalyKind::Duplicate,
        AnomalyKind::Reordered,
        AnomalyKind::DeliveryMismatch,
        AnomalyKind::EpochDivergence,
        AnomalyKind::DisconnectedAtEnd,
        AnomalyKind::Unacked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::AckLost => "ack-lost",
            AnomalyKind::AckMismatch => "ack-mismatch",
            AnomalyKind::AckConflict => "ack-conflict",
            AnomalyKind::StoredTwice => "stored-twice",
            AnomalyKind::SeqGap => "seq-gap",
            AnomalyKind::UnknownEntry => "unknown-entry",
            AnomalyKind::Deaf => "deaf",
            AnomalyKind::Missing => "missing",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::Reordered => "reordered",
            AnomalyKind::DeliveryMismatch => "delivery-mismatch",
            AnomalyKind::EpochDivergence => "epoch-divergence",
            AnomalyKind::DisconnectedAtEnd => "disconnected-at-end",
            AnomalyKind::Unacked => "unacked",
        }
    }

    /// What a count of this kind counts.
    pub fn unit(self) -> &'static str {
        match self {
            AnomalyKind::AckLost
            | AnomalyKind::AckMismatch
            | AnomalyKind::AckConflict
            | AnomalyKind::StoredTwice
            | AnomalyKind::UnknownEntry
            | AnomalyKind::Unacked => "messages",
            AnomalyKind::SeqGap => "seqs",
            AnomalyKind::Deaf
            | AnomalyKind::Missing
            | AnomalyKind::Duplicate
            | AnomalyKind::Reordered
            | AnomalyKind::DeliveryMismatch => "deliveries",
            AnomalyKind::EpochDivergence | AnomalyKind::DisconnectedAtEnd => "members",
        }
    }
}

/// One anomaly (or a run of them: consecutive seqs of one member with the
/// same cause), with where and when it happened and the faults around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// When (Unix ns): for a seq, when it was first acknowledged (or first
    /// delivered to anyone); for a delivery, when it arrived; for an end
    /// state, the end of the history.
    pub t: u64,
    pub g: u32,
    /// The member, when it is about one.
    pub m: Option<u32>,
    /// The seqs it covers (first, last).
    pub seqs: Option<(u64, u64)>,
    /// How many it counts (of the kind's unit).
    pub count: u64,
    /// The node the member was connected to at `t`.
    pub node: Option<String>,
    pub detail: String,
    /// Ids of the faults active around `t`.
    pub faults: Vec<u32>,
}

/// A fault as it happened: from its start to its end (`None`: never
/// healed before the history ended), with what happened in between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSpan {
    pub id: u32,
    pub kind: FaultKind,
    pub nodes: Vec<String>,
    pub start: u64,
    pub end: Option<u64>,
    pub notes: Vec<String>,
}

/// What the history holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub groups: u64,
    pub members: u64,
    /// Messages sent, and writes of them (resends included).
    pub messages: u64,
    pub send_attempts: u64,
    pub acked: u64,
    pub refusals: u64,
    pub deliveries: u64,
    pub connects: u64,
    pub disconnects: u64,
    /// Entries of the run's groups in the store (0 without a store).
    pub stored: u64,
    pub faults: u64,
}

/// The checker's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// No anomaly of any kind.
    pub ok: bool,
    /// Whether the store was checked (without it, a group's head is the
    /// highest seq acknowledged or delivered).
    pub store_checked: bool,
    /// Every kind, zeros included.
    pub counts: BTreeMap<AnomalyKind, u64>,
    /// Records, at most `max_records_per_kind` per kind, by time.
    pub anomalies: Vec<Anomaly>,
    /// Records left out per kind (their counts are in `counts`).
    pub omitted: BTreeMap<AnomalyKind, u64>,
    pub faults: Vec<FaultSpan>,
    pub nodes: Vec<String>,
    pub totals: Totals,
    /// The history's first and last times, and the phase start if marked.
    pub start_t: u64,
    pub end_t: u64,
}
