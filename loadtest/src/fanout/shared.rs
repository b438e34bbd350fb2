//! What every member of a fan-out worker shares: the counters, the phase's
//! histograms, and the failover bookkeeping of the phase (which node dies,
//! the sockets lost to it, sends retried or answered "already stored").

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;

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
}

impl Shared {
    /// Whether losing the socket to gateway `server` at `at_ns` is the
    /// phase's kill (rather than a failure).
    pub fn lost_to_kill(&self, server: usize, at_ns: u64) -> bool {
        lock(&self.kill)
            .as_ref()
            .is_some_and(|k| k.server == server && at_ns + KILL_SLACK_NS >= k.at_ns)
    }
}
