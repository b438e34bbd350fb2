//! The sender's unacknowledged sends and the socket they depend on. A send
//! stays here, with its body (and so its `client_msg_id`), until it is
//! accepted or rejected for good: what was in flight on a lost socket, what
//! was scheduled while the socket was down, and what got a transient error
//! (UNAVAILABLE while a group re-homes, INTERNAL, RATE_LIMITED) is written
//! again, the last after a backoff. In a chaos run every write is
//! recorded in the history (with its `client_msg_id` and due time).

use std::collections::{BTreeMap, HashMap};

use hush_proto::client_frame::Body as C;
use hush_proto::v1;

use crate::clock::now_ns;
use crate::conn::Link;
use crate::history::{Event, Recorder};

/// First request id the sender uses (below: the setup's `request`s).
const SEND_RID_BASE: u64 = 1 << 40;
/// A transient error is retried after this long first, doubling up to
/// [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 50;
const MAX_BACKOFF_MS: u64 = 1_000;
/// The longest a server's retry hint makes a send wait.
const MAX_HINTED_WAIT_MS: u64 = 30_000;

/// Whether an error answer to a send is worth a retry.
pub fn transient(code: hush_proto::ErrorCode) -> bool {
    use hush_proto::ErrorCode as E;
    matches!(code, E::Unavailable | E::Internal | E::RateLimited)
}

/// A send without its ack yet: kept to be resent with the same client
/// message id.
struct Outgoing {
    body: v1::SendMessage,
    /// When it was due (the schedule's intended time, Unix ns).
    due_ns: u64,
    /// `None`: in flight on the current socket. `Some(t)`: to be (re)sent
    /// at Unix ns `t`, once connected.
    due: Option<u64>,
    backoff_ms: u64,
    /// Written to some socket at least once (a later write is a resend).
    sent_once: bool,
    /// When it was last written (Unix ns; 0: never).
    written_ns: u64,
}

pub struct Outbox {
    /// The current socket, while it is up.
    link: Option<Link>,
    up: bool,
    /// Counter -> send.
    pending: BTreeMap<u64, Outgoing>,
    /// Request id (of the current socket) -> counter.
    by_rid: HashMap<u64, u64>,
    next_rid: u64,
    /// Chaos: the history, and the (group, member) writes are recorded as.
    history: Option<(Recorder, u32, u32)>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            link: None,
            up: false,
            pending: BTreeMap::new(),
            by_rid: HashMap::new(),
            next_rid: SEND_RID_BASE,
            history: None,
        }
    }
}

impl Outbox {
    /// Records every write in `history` as member `m` of group `g`.
    pub fn record_into(&mut self, history: Recorder, g: u32, m: u32) {
        self.history = Some((history, g, m));
    }

    /// A socket is up: sends go out on it.
    pub fn connected(&mut self, link: Link) {
        self.link = Some(link);
        self.up = true;
    }

    /// The socket is lost: what was in flight on it goes again, at once,
    /// on the next one.
    pub fn lost(&mut self) {
        self.up = false;
        self.by_rid.clear();
        for out in self.pending.values_mut() {
            if out.due.is_none() {
                out.due = Some(0);
            }
        }
    }

    /// Writes request `body` on the current socket under a fresh request
    /// id; `None` if there is no socket or it is gone.
    fn write(&mut self, counter: u64, body: &v1::SendMessage, due_ns: u64) -> Option<()> {
        let link = self.link.as_ref().filter(|_| self.up)?;
        let rid = self.next_rid;
        self.next_rid += 1;
        link.send_with_id(rid, C::SendMessage(body.clone())).ok()?;
        self.by_rid.insert(rid, counter);
        if let Some((h, g, m)) = &self.history {
            h.record(Event::Send {
                t: now_ns(),
                g: *g,
                m: *m,
                c: counter,
                id: hex::encode(&body.client_msg_id),
                due: due_ns,
            });
        }
        Some(())
    }

    /// Sends message `counter`, due at `due_ns` (first attempt): in flight
    /// at once when connected, else queued for the reconnect.
    pub fn send(&mut self, counter: u64, due_ns: u64, body: v1::SendMessage) {
        let mut out = Outgoing {
            body,
            due_ns,
            due: Some(0),
            backoff_ms: FIRST_BACKOFF_MS,
            sent_once: false,
            written_ns: 0,
        };
        if self.write(counter, &out.body, due_ns).is_some() {
            out.due = None;
            out.sent_once = true;
            out.written_ns = now_ns();
        }
        self.pending.insert(counter, out);
    }

    /// Writes every queued send that is due at `now` (when connected);
    /// returns the counters of those that had been written before.
    pub fn resend_due(&mut self, now: u64) -> Vec<u64> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, out)| out.due.is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        let mut resent = Vec::new();
        for counter in due {
            let Some((body, due_ns)) = self
                .pending
                .get(&counter)
                .map(|o| (o.body.clone(), o.due_ns))
            else {
                continue;
            };
            if self.write(counter, &body, due_ns).is_none() {
                break;
            }
            if let Some(out) = self.pending.get_mut(&counter) {
                out.due = None;
                out.written_ns = now_ns();
                if out.sent_once {
                    resent.push(counter);
                }
                out.sent_once = true;
            }
        }
        resent
    }

    /// The message a reply on the current socket answers; `None` for a
    /// reply to another socket's request.
    pub fn answered(&mut self, request_id: u64) -> Option<u64> {
        self.by_rid.remove(&request_id)
    }

    /// Message `counter` is done with (accepted, or rejected for good);
    /// false if it was not pending (an answer to a resend came first).
    pub fn done(&mut self, counter: u64) -> bool {
        self.pending.remove(&counter).is_some()
    }

    /// Message `counter` was accepted: done with, and when the accepted
    /// attempt was written (`None` if it was not pending).
    pub fn accepted(&mut self, counter: u64) -> Option<u64> {
        self.pending.remove(&counter).map(|o| o.written_ns)
    }

    /// Message `counter` got a transient error at `at_ns`: written again
    /// after the backoff, which doubles, or after the server's
    /// `retry_after_ms` hint when that is longer (an overloaded node's
    /// RATE_LIMITED and UNAVAILABLE carry one).
    pub fn retry_later(&mut self, counter: u64, at_ns: u64, retry_after_ms: u64) {
        if let Some(out) = self.pending.get_mut(&counter) {
            let wait_ms = out.backoff_ms.max(retry_after_ms.min(MAX_HINTED_WAIT_MS));
            out.due = Some(at_ns + wait_ms * 1_000_000);
            out.backoff_ms = (out.backoff_ms * 2).min(MAX_BACKOFF_MS);
        }
    }

    /// Sends not acknowledged yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Sends written and not answered yet (the server may still store them).
    pub fn in_flight_len(&self) -> usize {
        self.pending.values().filter(|o| o.due.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(id: u8) -> v1::SendMessage {
        v1::SendMessage {
            group_id: vec![1],
            client_msg_id: vec![id; 16],
            message: vec![],
        }
    }

    #[test]
    fn a_refused_send_waits_for_the_hint_and_keeps_its_id() {
        let mut ob = Outbox::default();
        // Not connected: queued, due at once.
        ob.send(7, 1, body(7));
        assert_eq!(ob.pending_len(), 1);
        assert_eq!(ob.in_flight_len(), 0, "queued, not written");
        // Refused at t=1 s with a 300 ms hint: not due before 1.3 s,
        // although the first backoff is 50 ms.
        let t = 1_000_000_000;
        ob.retry_later(7, t, 300);
        assert_eq!(ob.pending[&7].due, Some(t + 300_000_000));
        assert_eq!(ob.pending[&7].body.client_msg_id, vec![7; 16]);
        // No hint: the doubled backoff (100 ms).
        ob.retry_later(7, t, 0);
        assert_eq!(ob.pending[&7].due, Some(t + 100_000_000));
        // A silly hint is capped.
        ob.retry_later(7, t, u64::MAX / 2_000_000);
        assert_eq!(ob.pending[&7].due, Some(t + MAX_HINTED_WAIT_MS * 1_000_000));
    }
}
