//! One member's connection handler ([`MemberSink`]): what it receives
//! (timeline events checked with its [`SeqTrack`] and counted into the
//! group's ledger and the histograms; inbox events; `SyncCaughtUp`), the
//! answers to the sender's sends (through its [`Outbox`]), and its socket's
//! loss and return: a lost socket is recorded ([`DropRec`]) and, once the
//! connection is back on another gateway, resumed with `Sync` from the
//! member's contiguous seq before the outbox writes again. In a chaos run
//! it records what it sees in the history: every delivery (repeats
//! included) with its seq, epoch and message counter, the epochs it
//! learns, its sockets, its resumes, and every answer to a send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::v1::{self, EntryKind, InboxEvent};
use tokio::sync::{mpsc, watch};

use super::group::{Delivery, GroupShared};
use super::outbox::{transient, Outbox};
use super::shared::Shared;
use crate::conn::{Link, Push};
use crate::history::Event;
use crate::mls::{private_message_aad, Member};
use crate::payload::Header;
use crate::protocol::DropRec;
use crate::scenario::MlsMode;
use crate::stats::{Counters, Seen, SeqTrack};
use crate::sync::lock;

pub struct MemberSink {
    pub shared: Arc<Shared>,
    pub group: Arc<GroupShared>,
    mode: MlsMode,
    /// Member 0, the group's creator, sends; the others receive.
    is_sender: bool,
    member: u32,
    pub track: Mutex<SeqTrack>,
    /// Live MLS: the receiver's group state, once it joined.
    pub live: Mutex<Option<Member>>,
    /// Live MLS receivers: where inbox events (the Welcome) go during setup.
    inbox: Mutex<Option<mpsc::UnboundedSender<InboxEvent>>>,
    caught_up: watch::Sender<bool>,
    /// Sender: unacknowledged sends.
    pub outbox: Mutex<Outbox>,
    /// The highest contiguous seq this member acknowledged to the server.
    pub acked_to_server: AtomicU64,
    /// Highest inbox seq seen (the resume Sync's `inbox_after`).
    inbox_max: AtomicU64,
    /// A lost socket whose resume has not caught up yet.
    pub resume: Mutex<Option<DropRec>>,
}

impl MemberSink {
    /// Member `member` of `group`; `inbox`: where inbox events go (live MLS
    /// receivers, for their Welcome); `caught_up` is set at `SyncCaughtUp`.
    pub fn new(
        shared: Arc<Shared>,
        group: Arc<GroupShared>,
        mode: MlsMode,
        member: u32,
        inbox: Option<mpsc::UnboundedSender<InboxEvent>>,
        caught_up: watch::Sender<bool>,
    ) -> Self {
        let mut outbox = Outbox::default();
        if let Some(h) = shared.history.get() {
            outbox.record_into(h.clone(), group.index, member);
        }
        Self {
            shared,
            group,
            mode,
            is_sender: member == 0,
            member,
            track: Mutex::default(),
            live: Mutex::new(None),
            inbox: Mutex::new(inbox),
            caught_up,
            outbox: Mutex::new(outbox),
            acked_to_server: AtomicU64::new(0),
            inbox_max: AtomicU64::new(0),
            resume: Mutex::new(None),
        }
    }

    /// Sends message `counter`, due at `due_ns` (first attempt; see
    /// [`Outbox::send`]).
    pub fn send(&self, counter: u64, due_ns: u64, body: v1::SendMessage) {
        lock(&self.outbox).send(counter, due_ns, body);
    }

    /// Records an event about this member in the history (chaos runs).
    fn record(&self, ev: impl FnOnce(u32, u32) -> Event) {
        self.shared.record(|| ev(self.group.index, self.member));
    }

    /// Records that a socket to gateway `node` opened at `at_ns`.
    pub fn record_connect(&self, node: usize, at_ns: u64) {
        self.record(|g, m| Event::Connect {
            t: at_ns,
            g,
            m,
            node,
        });
    }

    /// Resends every queued send that is due at `now` (when connected).
    pub fn resend_due(&self, now: u64) {
        let resent = lock(&self.outbox).resend_due(now);
        if !resent.is_empty() {
            Counters::add(&self.shared.retries, resent.len() as u64);
            self.group.resent(&resent);
        }
    }

    pub fn pending_len(&self) -> usize {
        lock(&self.outbox).pending_len()
    }

    pub fn in_flight_len(&self) -> usize {
        lock(&self.outbox).in_flight_len()
    }

    /// The header of a timeline event's message: from the authenticated
    /// data (presealed) or the decrypted plaintext (live MLS); `None` for a
    /// non-application entry or a payload that does not decode.
    fn header(&self, ev: &v1::GroupEvent) -> Option<Header> {
        if ev.kind != EntryKind::Application as i32 {
            return None;
        }
        match self.mode {
            MlsMode::Presealed => private_message_aad(&ev.message).and_then(|a| Header::decode(&a)),
            MlsMode::Live => lock(&self.live)
                .as_mut()
                .and_then(|m| m.process(&ev.message).ok().flatten())
                .and_then(|p| Header::decode(&p)),
        }
    }

    fn on_group_event(&self, ev: v1::GroupEvent, at: u64) {
        if Some(&ev.group_id) != self.group.group_id.get() {
            return;
        }
        let seen = lock(&self.track).observe(ev.seq);
        // Live MLS decrypts each message once, and a sender cannot decrypt
        // its own: only a receiver's first copy has a header then.
        let first = matches!(seen, Seen::InOrder | Seen::Reordered);
        let header = match self.mode {
            MlsMode::Presealed => self.header(&ev),
            MlsMode::Live if first && !self.is_sender => self.header(&ev),
            MlsMode::Live => None,
        }
        .filter(|h| h.group == self.group.index);
        self.record(|g, m| Event::Deliver {
            t: at,
            g,
            m,
            s: ev.seq,
            e: ev.epoch,
            c: header.map(|h| h.counter),
        });
        if ev.kind == EntryKind::Commit as i32 {
            self.record(|g, m| Event::Epoch {
                t: at,
                g,
                m,
                e: ev.epoch + 1,
            });
        }
        if !first {
            return; // setup traffic, or a repeat (counted by the track)
        }
        let c = &self.shared.counters;
        if self.is_sender {
            return; // its own echo: checked for order and loss only
        }
        Counters::add(&c.delivered, 1);
        self.shared.last_event_ns.fetch_max(at, Ordering::Relaxed);
        let Some(h) = header else {
            Counters::add(&c.payload_errors, 1);
            return;
        };
        let completed = match self.group.delivered(h.counter, h.sent_ns, ev.seq, at) {
            Delivery::StoredTwice => {
                Counters::add(&self.shared.stored_twice, 1);
                return;
            }
            Delivery::Counted { completed } => completed,
        };
        let mut hs = lock(&self.shared.hists);
        hs.e2e.record_ns(h.sent_ns, at);
        if completed {
            hs.completion.record_ns(h.sent_ns, at);
        }
    }

    /// The resume of a lost socket caught up at `at_ns`: its record is
    /// complete.
    fn on_caught_up(&self, at_ns: u64) {
        let _ = self.caught_up.send(true);
        self.record(|g, m| Event::CaughtUp { t: at_ns, g, m });
        let done = {
            let mut r = lock(&self.resume);
            match r.as_ref() {
                Some(d) if d.reconnected_ns > 0 => r.take().map(|mut d| {
                    d.resumed_ns = at_ns;
                    d
                }),
                _ => None,
            }
        };
        if let Some(d) = done {
            lock(&self.shared.drops).push(d);
        }
    }
}

impl Push for MemberSink {
    fn on_push(&self, frame: S, at_ns: u64) {
        match frame {
            S::GroupEvent(ev) => self.on_group_event(ev, at_ns),
            S::InboxEvent(ev) => {
                self.inbox_max.fetch_max(ev.inbox_seq, Ordering::Relaxed);
                if let Some(tx) = lock(&self.inbox).as_ref() {
                    let _ = tx.send(ev);
                }
            }
            S::SyncCaughtUp(_) => self.on_caught_up(at_ns),
            // An answer to a fire-and-forget request (an ack): a refused
            // ack is harmless (the next one covers it) and under overload
            // there are millions; others are worth a look.
            S::Error(e) if transient(e.error_code()) => {
                tracing::debug!(code = ?e.error_code(), message = %e.message, "pushed error");
            }
            S::Error(e) => {
                tracing::warn!(code = ?e.error_code(), message = %e.message, "pushed error");
            }
            _ => {}
        }
    }

    fn on_reply(&self, request_id: u64, frame: S, at_ns: u64) {
        let c = &self.shared.counters;
        let mut ob = lock(&self.outbox);
        let Some(counter) = ob.answered(request_id) else {
            return; // a reply for another socket's request
        };
        match &frame {
            S::MessageAccepted(a) => self.record(|g, m| Event::Ack {
                t: at_ns,
                g,
                m,
                c: counter,
                s: a.seq,
                dup: a.duplicate,
            }),
            S::Error(e) => {
                let code = e.error_code().as_str_name();
                self.shared.refused(code);
                self.record(|g, m| Event::Refused {
                    t: at_ns,
                    g,
                    m,
                    c: counter,
                    code: code.to_string(),
                });
            }
            _ => {}
        }
        match frame {
            S::MessageAccepted(a) => {
                let Some(written_ns) = ob.accepted(counter) else {
                    return;
                };
                drop(ob);
                Counters::add(&c.acked, 1);
                if a.duplicate {
                    Counters::add(&self.shared.deduplicated, 1);
                }
                let ack = self.group.acked(counter, a.seq, a.duplicate, at_ns);
                if ack.stored_twice {
                    Counters::add(&self.shared.stored_twice, 1);
                }
                // (0: acked after its phase ended, which already failed it)
                if ack.intended > 0 {
                    let mut hs = lock(&self.shared.hists);
                    hs.ack.record_ns(ack.intended, at_ns);
                    if written_ns > 0 {
                        hs.ack_try.record_ns(written_ns, at_ns);
                    }
                }
            }
            S::Error(e) if transient(e.error_code()) => {
                // Retried with the same client_msg_id after a backoff (at
                // least the server's retry hint).
                ob.retry_later(counter, at_ns, e.retry_after_ms);
                tracing::debug!(code = ?e.error_code(), message = %e.message, "send refused for now; retrying");
            }
            S::Error(e) => {
                ob.done(counter);
                Counters::add(&c.send_errors, 1);
                tracing::warn!(code = ?e.error_code(), message = %e.message, "send rejected");
            }
            other => {
                ob.done(counter);
                Counters::add(&c.send_errors, 1);
                tracing::warn!(reply = ?other, "unexpected reply to a send");
            }
        }
    }

    fn on_closed(&self, reason: &str, server: usize, at_ns: u64) {
        lock(&self.outbox).lost();
        let c = &self.shared.counters;
        c.conns_open.fetch_sub(1, Ordering::Relaxed);
        if self.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.record(|g, m| Event::Disconnect {
            t: at_ns,
            g,
            m,
            node: server,
            why: reason.to_string(),
        });
        let expected = self.shared.lost_to_kill(server, at_ns);
        if !expected {
            Counters::add(&c.closed_unexpected, 1);
            tracing::warn!(%reason, server, "connection closed during the run");
        }
        let mut r = lock(&self.resume);
        if let Some(prev) = r.take() {
            // Lost again before the resume caught up.
            lock(&self.shared.drops).push(prev);
        }
        *r = Some(DropRec {
            group: self.group.index,
            member: self.member,
            from: server,
            to: server,
            dropped_ns: at_ns,
            reconnected_ns: 0,
            resumed_ns: 0,
            attempts: 0,
            expected,
        });
    }

    fn on_reconnected(&self, link: &Link, server: usize, attempts: u32, at_ns: u64) {
        Counters::add(&self.shared.counters.conns_open, 1);
        self.record_connect(server, at_ns);
        if let Some(d) = lock(&self.resume).as_mut() {
            d.to = server;
            d.reconnected_ns = at_ns;
            d.attempts = attempts;
        }
        // Resume: everything after what this member has, contiguously.
        let cursors = match (self.group.group_id.get(), lock(&self.track).cursor()) {
            (Some(gid), Some(after)) => vec![v1::Cursor {
                group_id: gid.clone(),
                after_seq: after,
            }],
            _ => Vec::new(),
        };
        let _ = link.send_with_id(
            0,
            C::Sync(v1::Sync {
                cursors,
                inbox_after: self.inbox_max.load(Ordering::Relaxed),
            }),
        );
        lock(&self.outbox).connected(link.clone());
        self.resend_due(at_ns);
    }
}
