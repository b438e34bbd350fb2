//! What every member of a fan-out worker shares: the counters, the phase's
//! histograms, the failover bookkeeping of the phase (which node dies,
//! the sockets lost to it, sends retried or answered "already stored"),
//! refusals by code, and the history recorder of a chaos run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::history::{Event, Recorder};
use crate::protocol::{DropRec, KillCmd};
use crate::stats::{Counters, MessageHists};
use crate::sync::lock;

/// A socket to the killed node lost up to this long before the kill's
/// scheduled time still counts as lost to the kill (slack for the signal's
/// delivery against this worker's clock).
const KILL_SLACK_NS: u64 = 100_000_000;

#[derive(Default)]
pub struct Shared {
    pub counters: Counters,
    pub hists: Mutex<MessageHists>,
    pub last_event_ns: AtomicU64,
    pub stopping: AtomicBool,
    /// The phase's drain timed out: no sends are written again until the
    /// next phase, so the deliveries of those already taken can settle
    /// before the members are checked (see `phase::run_phase`).
    pub settling: AtomicBool,
    /// The node this phase kills (a socket to it lost after the kill is
    /// expected; any other loss counts as `closed_unexpected`).
    pub kill: Mutex<Option<KillCmd>>,
    /// Lost sockets of this phase, completed when the resume caught up.
    pub drops: Mutex<Vec<DropRec>>,
    /// Messages stored under a second seq.
    pub stored_twice: AtomicU64,
    /// Sends resent (after a lost socket or a transient error).
    pub retries: AtomicU64,
    /// Acks that said the message was already stored (a resend).
    pub deduplicated: AtomicU64,
    /// Chaos: every lost socket is expected.
    pub chaos: AtomicBool,
    /// Error answers to sends this phase, by code.
    pub refusals: Mutex<BTreeMap<String, u64>>,
    /// Chaos: where events go.
    pub history: OnceLock<Recorder>,
}

impl Shared {
    /// Whether losing the socket to gateway `server` at `at_ns` is
    /// expected: the phase's kill, or anything in a chaos phase (rather
    /// than a failure).
    pub fn lost_to_kill(&self, server: usize, at_ns: u64) -> bool {
        if self.chaos.load(Ordering::Relaxed) {
            return true;
        }
        lock(&self.kill)
            .as_ref()
            .is_some_and(|k| k.server == server && at_ns + KILL_SLACK_NS >= k.at_ns)
    }

    /// Records `ev` in the history, if this run keeps one.
    pub fn record(&self, ev: impl FnOnce() -> Event) {
        if let Some(h) = self.history.get() {
            h.record(ev());
        }
    }

    /// Counts an error answer to a send.
    pub fn refused(&self, code: &str) {
        *lock(&self.refusals).entry(code.to_string()).or_default() += 1;
    }
}
