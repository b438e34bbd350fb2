//! The sender's unacknowledged sends and the socket they depend on. A send
//! stays here, with its body (and so its `client_msg_id`), until it is
//! accepted or rejected for good: what was in flight on a lost socket, what
//! was scheduled while the socket was down, and what got a transient error
//! (UNAVAILABLE while a group re-homes, INTERNAL, RATE_LIMITED) is written
//! again, the last after a backoff. In a chaos run every write is
//! recorded in the history (with its `client_msg_id` and due time).
//!
//! By default every send is written when due (the open loop: past the
//! node's peak each refusal is resent on its own, and the resends grow with
//! the backlog). With `fanout.send_window` a connection keeps at most that
//! many sends in flight, holds the rest in order, and a refusal with a
//! retry hint holds all of its sends until the hint has passed: a client
//! that paces itself by the server's answers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

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
/// The `due` of a send held back by the window (never due by time).
const HELD: u64 = u64::MAX;

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
    /// (due, counter) of every pending send with a `due` time: what
    /// `resend_due` looks up, so that a tick costs the sends that are due,
    /// not the whole backlog (past the node's peak the backlog grows to
    /// thousands per sender, and scanning it every 10 ms took 41% of the
    /// generator's CPU at 40,000 msg/s offered, CPU the node then lacked).
    timed: BTreeSet<(u64, u64)>,
    /// Request id (of the current socket) -> counter.
    by_rid: HashMap<u64, u64>,
    next_rid: u64,
    /// Chaos: the history, and the (group, member) writes are recorded as.
    history: Option<(Recorder, u32, u32)>,
    /// Sends in flight at most (0: no bound).
    window: usize,
    /// Sends written on the current socket and not answered yet.
    in_flight: usize,
    /// Sends held back by the window or a pause, oldest first.
    held: VecDeque<u64>,
    /// Unix ns until which a retry hint holds every send (with a window).
    paused_until: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            link: None,
            up: false,
            pending: BTreeMap::new(),
            timed: BTreeSet::new(),
            by_rid: HashMap::new(),
            next_rid: SEND_RID_BASE,
            history: None,
            window: 0,
            in_flight: 0,
            held: VecDeque::new(),
            paused_until: 0,
        }
    }
}

impl Outbox {
    /// Records every write in `history` as member `m` of group `g`.
    pub fn record_into(&mut self, history: Recorder, g: u32, m: u32) {
        self.history = Some((history, g, m));
    }

    /// Keeps at most `n` sends in flight and honours retry hints for the
    /// whole connection (0: every send is written when due).
    pub fn send_window(&mut self, n: usize) {
        self.window = n;
    }

    /// Sets pending send `counter`'s `due`, keeping `timed` in step (every
    /// change of a `due` goes through here).
    fn set_due(&mut self, counter: u64, due: Option<u64>) {
        let Some(out) = self.pending.get_mut(&counter) else {
            return;
        };
        if let Some(t) = std::mem::replace(&mut out.due, due) {
            self.timed.remove(&(t, counter));
        }
        if let Some(t) = due {
            self.timed.insert((t, counter));
        }
    }

    /// Removes pending send `counter` (and its place in `timed`).
    fn remove(&mut self, counter: u64) -> Option<Outgoing> {
        let out = self.pending.remove(&counter)?;
        if let Some(t) = out.due {
            self.timed.remove(&(t, counter));
        }
        Some(out)
    }

    /// Whether the window lets another send go at `now`.
    fn room(&self, now: u64) -> bool {
        self.window == 0 || (self.in_flight < self.window && now >= self.paused_until)
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
        self.in_flight = 0;
        let unanswered: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, out)| out.due.is_none())
            .map(|(c, _)| *c)
            .collect();
        for counter in unanswered {
            self.set_due(counter, Some(0));
        }
    }

    /// Writes request `body` on the current socket under a fresh request
    /// id; `None` if there is no socket or it is gone.
    fn write(&mut self, counter: u64, body: v1::SendMessage, due_ns: u64) -> Option<()> {
        let link = self.link.as_ref().filter(|_| self.up)?;
        let rid = self.next_rid;
        self.next_rid += 1;
        let id = self
            .history
            .as_ref()
            .map(|_| hex::encode(&body.client_msg_id));
        link.send_with_id(rid, C::SendMessage(body)).ok()?;
        self.by_rid.insert(rid, counter);
        self.in_flight += 1;
        if let (Some((h, g, m)), Some(id)) = (&self.history, id) {
            h.record(Event::Send {
                t: now_ns(),
                g: *g,
                m: *m,
                c: counter,
                id,
                due: due_ns,
            });
        }
        Some(())
    }

    /// Sends message `counter`, due at `due_ns` (first attempt): in flight
    /// at once when connected, else queued for the reconnect.
    pub fn send(&mut self, counter: u64, due_ns: u64, body: v1::SendMessage) {
        let out = Outgoing {
            body,
            due_ns,
            due: None,
            backoff_ms: FIRST_BACKOFF_MS,
            sent_once: false,
            written_ns: 0,
        };
        let hold = self.window > 0 && (!self.held.is_empty() || !self.room(now_ns()));
        self.remove(counter);
        self.pending.insert(counter, out);
        if hold {
            self.set_due(counter, Some(HELD));
            self.held.push_back(counter);
        } else {
            self.set_due(counter, Some(0));
            self.write_pending(counter);
        }
    }

    /// Writes pending send `counter` on the current socket and marks it in
    /// flight. `None` if there is no socket (it stays queued); else whether
    /// it had been written before (false, too, for a counter no longer
    /// pending, which is skipped).
    fn write_pending(&mut self, counter: u64) -> Option<bool> {
        let Some((body, due_ns)) = self
            .pending
            .get(&counter)
            .map(|o| (o.body.clone(), o.due_ns))
        else {
            return Some(false);
        };
        self.write(counter, body, due_ns)?;
        self.set_due(counter, None);
        let out = self.pending.get_mut(&counter)?;
        out.written_ns = now_ns();
        Some(std::mem::replace(&mut out.sent_once, true))
    }

    /// Writes held sends, oldest first, while the window has room.
    fn release(&mut self, now: u64) {
        while self.window > 0 && self.room(now) {
            let Some(counter) = self.held.pop_front() else {
                return;
            };
            if self.write_pending(counter).is_none() {
                self.held.push_front(counter);
                return;
            }
        }
    }

    /// Writes every queued send that is due at `now` (when connected);
    /// returns the counters of those that had been written before.
    pub fn resend_due(&mut self, now: u64) -> Vec<u64> {
        // Oldest message first, as the backlog's order.
        let mut due: Vec<u64> = self
            .timed
            .range(..=(now, u64::MAX))
            .map(|&(_, c)| c)
            .collect();
        due.sort_unstable();
        let mut resent = Vec::new();
        for counter in due {
            if !self.room(now) {
                break;
            }
            match self.write_pending(counter) {
                None => break,
                Some(true) => resent.push(counter),
                Some(false) => {}
            }
        }
        self.release(now);
        resent
    }

    /// The message a reply on the current socket answers; `None` for a
    /// reply to another socket's request.
    pub fn answered(&mut self, request_id: u64) -> Option<u64> {
        let counter = self.by_rid.remove(&request_id)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(counter)
    }

    /// Message `counter` is done with (accepted, or rejected for good);
    /// false if it was not pending (an answer to a resend came first).
    pub fn done(&mut self, counter: u64) -> bool {
        let was = self.remove(counter).is_some();
        self.release(now_ns());
        was
    }

    /// Message `counter` was accepted: done with, and when the accepted
    /// attempt was written (`None` if it was not pending).
    pub fn accepted(&mut self, counter: u64) -> Option<u64> {
        let written = self.remove(counter).map(|o| o.written_ns);
        self.release(now_ns());
        written
    }

    /// Message `counter` got a transient error at `at_ns`: written again
    /// after the backoff, which doubles, or after the server's
    /// `retry_after_ms` hint when that is longer (an overloaded node's
    /// RATE_LIMITED and UNAVAILABLE carry one).
    /// With a window, the hint holds every send of the connection.
    pub fn retry_later(&mut self, counter: u64, at_ns: u64, retry_after_ms: u64) {
        let hint_ms = retry_after_ms.min(MAX_HINTED_WAIT_MS);
        if let Some(out) = self.pending.get_mut(&counter) {
            let wait_ms = out.backoff_ms.max(hint_ms);
            out.backoff_ms = (out.backoff_ms * 2).min(MAX_BACKOFF_MS);
            self.set_due(counter, Some(at_ns + wait_ms * 1_000_000));
        }
        if self.window > 0 && hint_ms > 0 {
            self.paused_until = self.paused_until.max(at_ns + hint_ms * 1_000_000);
        }
        self.release(at_ns);
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
    use hush_proto::Message as _;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

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

    /// The client_msg_ids written on `wire` so far.
    fn written(wire: &mut tokio::sync::mpsc::UnboundedReceiver<WsMessage>) -> Vec<u8> {
        std::iter::from_fn(|| wire.try_recv().ok())
            .map(|m| match m {
                WsMessage::Binary(b) => {
                    match hush_proto::ClientFrame::decode(b.as_ref()).map(|f| f.body) {
                        Ok(Some(C::SendMessage(s))) => s.client_msg_id[0],
                        other => panic!("not a send: {other:?}"),
                    }
                }
                other => panic!("not binary: {other:?}"),
            })
            .collect()
    }

    /// With a window of 2, a third send waits for an answer, in order; a
    /// refusal's hint holds every send until it has passed.
    #[test]
    fn a_window_holds_sends_until_answers_and_hints_allow() {
        let (link, mut wire) = Link::for_test();
        let mut ob = Outbox::default();
        ob.send_window(2);
        ob.connected(link);
        for id in 1..=4 {
            ob.send(u64::from(id), 0, body(id));
        }
        assert_eq!(written(&mut wire), vec![1, 2], "two in flight, two held");
        assert_eq!(ob.pending_len(), 4);
        // Send 1 is accepted: send 3 goes.
        assert_eq!(ob.answered(SEND_RID_BASE), Some(1));
        ob.accepted(1);
        assert_eq!(written(&mut wire), vec![3]);
        // Send 2 is refused with a 10 s hint: nothing goes until then, not
        // even when send 3 is accepted meanwhile.
        let now = now_ns();
        assert_eq!(ob.answered(SEND_RID_BASE + 1), Some(2));
        ob.retry_later(2, now, 10_000);
        assert_eq!(ob.answered(SEND_RID_BASE + 2), Some(3));
        ob.accepted(3);
        assert!(ob.resend_due(now + 1_000_000).is_empty());
        assert!(written(&mut wire).is_empty(), "paused by the hint");
        // After the hint: the refused send again, then the held one.
        assert_eq!(ob.resend_due(now + 10_001_000_000), vec![2]);
        assert_eq!(written(&mut wire), vec![2, 4]);
        assert_eq!(ob.in_flight_len(), 2);
        assert_timed_in_step(&ob);
    }

    /// `timed` holds exactly the pending sends that have a due time.
    fn assert_timed_in_step(ob: &Outbox) {
        let expected: BTreeSet<(u64, u64)> = ob
            .pending
            .iter()
            .filter_map(|(c, o)| o.due.map(|t| (t, *c)))
            .collect();
        assert_eq!(ob.timed, expected);
    }

    /// Refused sends come due by their own times, and a tick writes those
    /// due, oldest message first, whatever order they were refused in;
    /// held sends, sends in flight and answered ones are not due.
    #[test]
    fn due_sends_are_found_by_time_and_written_oldest_first() {
        let (link, mut wire) = Link::for_test();
        let mut ob = Outbox::default();
        ob.connected(link);
        for id in 1..=6 {
            ob.send(u64::from(id), 0, body(id));
        }
        assert_eq!(written(&mut wire), vec![1, 2, 3, 4, 5, 6]);
        assert_timed_in_step(&ob);
        let t = 1_000_000_000;
        // Refused newest first: 6 and 4 with 100 ms to wait, 2 with 1 s;
        // 1 accepted; 3 and 5 still in flight.
        for (rid, counter, hint) in [(5, 6, 100), (3, 4, 100), (1, 2, 1_000)] {
            assert_eq!(ob.answered(SEND_RID_BASE + rid), Some(counter));
            ob.retry_later(counter, t, hint);
        }
        assert_eq!(ob.answered(SEND_RID_BASE), Some(1));
        ob.accepted(1);
        assert_timed_in_step(&ob);
        assert!(ob.resend_due(t + 99_000_000).is_empty());
        assert_eq!(ob.resend_due(t + 100_000_000), vec![4, 6]);
        assert_eq!(written(&mut wire), vec![4, 6]);
        assert_timed_in_step(&ob);
        assert_eq!(ob.resend_due(t + 1_000_000_000), vec![2]);
        assert_eq!(written(&mut wire), vec![2]);
        // The socket is lost: everything unanswered is due at once, then
        // written on the next socket in order.
        ob.lost();
        assert_timed_in_step(&ob);
        let (link, mut wire) = Link::for_test();
        ob.connected(link);
        assert_eq!(ob.resend_due(t), vec![2, 3, 4, 5, 6]);
        assert_eq!(written(&mut wire), vec![2, 3, 4, 5, 6]);
        assert_eq!(ob.in_flight_len(), 5);
        assert_timed_in_step(&ob);
    }

    /// Without a window (the default) every send is written at once, and a
    /// hint delays only the refused send.
    #[test]
    fn without_a_window_every_send_goes_when_due() {
        let (link, mut wire) = Link::for_test();
        let mut ob = Outbox::default();
        ob.connected(link);
        ob.send(1, 0, body(1));
        assert_eq!(ob.answered(SEND_RID_BASE), Some(1));
        ob.retry_later(1, now_ns(), 10_000);
        for id in 2..=4 {
            ob.send(u64::from(id), 0, body(id));
        }
        assert_eq!(written(&mut wire), vec![1, 2, 3, 4]);
    }
}
