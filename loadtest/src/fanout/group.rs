//! One group's message ledger for the current phase, shared by its members:
//! per message (the sender's counter), when it was meant to go, the seq it
//! was acknowledged or first delivered under, how many receivers still miss
//! it, when it was acknowledged and completed, and how often it was
//! written. A message seen under a second seq was stored twice.
//!
//! No IO: the members' handlers call it with what arrived and when.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::protocol::MsgRec;
use crate::sync::lock;

pub struct GroupShared {
    pub index: u32,
    /// Set once the creator made the group.
    pub group_id: OnceLock<Vec<u8>>,
    pub receivers: u32,
    /// Message counter -> what happened to it (this phase).
    msgs: Mutex<HashMap<u64, Msg>>,
    /// The highest seq the sender had acknowledged.
    pub acked_max: AtomicU64,
}

/// One message of the current phase.
#[derive(Debug, Clone, Copy)]
struct Msg {
    intended: u64,
    /// The seq it was acked or first delivered under (0: none yet).
    seq: u64,
    /// Receivers that have not got it yet.
    left: u32,
    acked_ns: u64,
    completed_ns: u64,
    attempts: u32,
    dedup: bool,
}

impl Msg {
    fn new(intended: u64, receivers: u32) -> Self {
        Self {
            intended,
            seq: 0,
            left: receivers,
            acked_ns: 0,
            completed_ns: 0,
            attempts: 0,
            dedup: false,
        }
    }
}

/// What a delivery to one receiver was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Counted; `completed`: it was the last receiver of the group to get it.
    Counted { completed: bool },
    /// The message under a second seq: stored twice, not counted.
    StoredTwice,
}

/// What an acknowledgement was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The message's intended send time; 0 if it was acked after its phase
    /// ended (which already failed it).
    pub intended: u64,
    /// The ack named another seq than the message was delivered under.
    pub stored_twice: bool,
}

impl GroupShared {
    pub fn new(index: u32, receivers: u32) -> Self {
        Self {
            index,
            group_id: OnceLock::new(),
            receivers,
            msgs: Mutex::default(),
            acked_max: AtomicU64::new(0),
        }
    }

    /// Message `counter`, due at `intended`, is written for the first time.
    pub fn scheduled(&self, counter: u64, intended: u64) {
        let mut m = Msg::new(intended, self.receivers);
        m.attempts = 1;
        lock(&self.msgs).insert(counter, m);
    }

    /// Messages written again (after a lost socket or a transient error).
    pub fn resent(&self, counters: &[u64]) {
        let mut msgs = lock(&self.msgs);
        for c in counters {
            if let Some(m) = msgs.get_mut(c) {
                m.attempts += 1;
            }
        }
    }

    /// A receiver got message `counter` (meant for `intended`) under `seq`
    /// at `at_ns`.
    pub fn delivered(&self, counter: u64, intended: u64, seq: u64, at_ns: u64) -> Delivery {
        let mut msgs = lock(&self.msgs);
        let msg = msgs
            .entry(counter)
            .or_insert_with(|| Msg::new(intended, self.receivers));
        if msg.seq == 0 {
            msg.seq = seq;
        } else if msg.seq != seq {
            return Delivery::StoredTwice;
        }
        msg.left = msg.left.saturating_sub(1);
        let completed = msg.left == 0 && msg.completed_ns == 0;
        if completed {
            msg.completed_ns = at_ns;
        }
        Delivery::Counted { completed }
    }

    /// The sender's message `counter` was accepted under `seq` at `at_ns`
    /// (`duplicate`: the server had it stored already).
    pub fn acked(&self, counter: u64, seq: u64, duplicate: bool, at_ns: u64) -> Ack {
        self.acked_max.fetch_max(seq, Ordering::Relaxed);
        let mut msgs = lock(&self.msgs);
        let m = msgs
            .entry(counter)
            .or_insert_with(|| Msg::new(0, self.receivers));
        m.acked_ns = at_ns;
        m.dedup = duplicate;
        let stored_twice = m.seq != 0 && m.seq != seq;
        if m.seq == 0 {
            m.seq = seq;
        }
        Ack {
            intended: m.intended,
            stored_twice,
        }
    }

    /// The phase's messages as failover records; the ledger starts empty.
    pub fn take_records(&self) -> Vec<MsgRec> {
        std::mem::take(&mut *lock(&self.msgs))
            .into_values()
            .map(|m| MsgRec {
                group: self.index,
                intended_ns: m.intended,
                acked_ns: m.acked_ns,
                completed_ns: m.completed_ns,
                attempts: m.attempts,
                dedup: m.dedup,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_at_the_last_receiver_and_spots_a_second_seq() {
        let g = GroupShared::new(3, 2);
        g.scheduled(0, 1_000);
        assert_eq!(
            g.acked(0, 7, false, 1_500),
            Ack {
                intended: 1_000,
                stored_twice: false
            }
        );
        assert_eq!(
            g.delivered(0, 1_000, 7, 2_000),
            Delivery::Counted { completed: false }
        );
        assert_eq!(g.delivered(0, 1_000, 8, 2_100), Delivery::StoredTwice);
        assert_eq!(
            g.delivered(0, 1_000, 7, 2_500),
            Delivery::Counted { completed: true }
        );
        g.resent(&[0, 9]);
        let recs = g.take_records();
        assert_eq!(recs.len(), 1);
        let r = recs[0];
        assert_eq!(
            (r.group, r.acked_ns, r.completed_ns, r.attempts),
            (3, 1_500, 2_500, 2)
        );
        assert!(g.take_records().is_empty());
        assert_eq!(g.acked_max.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn an_ack_under_another_seq_is_stored_twice() {
        let g = GroupShared::new(0, 1);
        g.delivered(5, 100, 4, 200);
        let a = g.acked(5, 6, true, 300);
        assert!(a.stored_twice);
        assert_eq!(a.intended, 100);
    }
}
