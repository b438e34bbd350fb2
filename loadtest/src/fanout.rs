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
//! with a [`SeqTrack`] that every seq after the setup commit arrives exactly
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
//! INTERNAL, RATE_LIMITED) with backoff, until the drain deadline.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use hush_client::http::Http;
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::v1::{self, EntryKind, InboxEvent};
use tokio::sync::{mpsc, watch};

use crate::account::{self, Device};
use crate::conn::{Conn, Failover, Link, Push};
use crate::mls::{private_message_aad, Member, Presealed};
use crate::payload::{now_ns, Header};
use crate::scenario::MlsMode;
use crate::stats::{Correctness, Counters, Hist, Seen, SeqTrack};
use crate::worker::{
    DropRec, FailoverRaw, FanoutJob, FromWorker, KillCmd, MsgRec, PhaseCmd, PhaseResult, Plan,
    ToWorker,
};
use crate::Clock;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a handler panicked; the data is still usable
    // for counting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every member of this worker shares.
#[derive(Default)]
struct Shared {
    counters: Counters,
    hists: Mutex<Hists>,
    last_event_ns: AtomicU64,
    stopping: AtomicBool,
    /// The node this phase kills (a socket to it lost after the kill is
    /// expected; any other loss counts as `closed_unexpected`).
    kill: Mutex<Option<KillCmd>>,
    /// Lost sockets of this phase, completed when the resume caught up.
    drops: Mutex<Vec<DropRec>>,
    /// Messages stored under a second seq.
    stored_twice: AtomicU64,
    /// Sends resent (after a lost socket or a transient error).
    retries: AtomicU64,
    /// Acks that said the message was already stored (a resend).
    deduplicated: AtomicU64,
}

#[derive(Default)]
struct Hists {
    ack: Hist,
    e2e: Hist,
    completion: Hist,
}

struct GroupShared {
    index: u32,
    group_id: OnceLock<Vec<u8>>,
    receivers: u32,
    /// Message counter -> what happened to it (this phase).
    msgs: Mutex<HashMap<u64, Msg>>,
    acked_max: AtomicU64,
}

/// One message of the current phase.
#[derive(Clone, Copy)]
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

/// A send without its ack yet: kept to be resent with the same client
/// message id.
struct Outgoing {
    body: v1::SendMessage,
    /// `None`: in flight on the current socket. `Some(t)`: to be (re)sent
    /// at Unix ns `t`, once connected.
    due: Option<u64>,
    backoff_ms: u64,
    /// Written to some socket at least once (a later write is a resend).
    sent_once: bool,
}

/// The sender's unacknowledged sends and the socket state they depend on.
#[derive(Default)]
struct Outbox {
    link: Option<Link>,
    up: bool,
    /// Counter -> send.
    pending: BTreeMap<u64, Outgoing>,
    /// Request id (of the current socket) -> counter.
    by_rid: HashMap<u64, u64>,
}

/// First request id the sender uses (below: the setup's `request`s).
const SEND_RID_BASE: u64 = 1 << 40;
/// Transient errors are retried after 50 ms, doubling up to this.
const MAX_BACKOFF_MS: u64 = 1_000;

fn transient(code: hush_proto::ErrorCode) -> bool {
    use hush_proto::ErrorCode as E;
    matches!(code, E::Unavailable | E::Internal | E::RateLimited)
}

struct MemberSink {
    shared: Arc<Shared>,
    group: Arc<GroupShared>,
    mode: MlsMode,
    is_sender: bool,
    track: Mutex<SeqTrack>,
    live: Mutex<Option<Member>>,
    inbox: Mutex<Option<mpsc::UnboundedSender<InboxEvent>>>,
    caught_up: watch::Sender<bool>,
    /// Sender: unacknowledged sends.
    outbox: Mutex<Outbox>,
    next_rid: AtomicU64,
    acked_to_server: AtomicU64,
    /// Highest inbox seq seen (the resume Sync's `inbox_after`).
    inbox_max: AtomicU64,
    member: u32,
    /// A lost socket whose resume has not caught up yet.
    resume: Mutex<Option<DropRec>>,
}

impl MemberSink {
    fn on_group_event(&self, ev: v1::GroupEvent, at: u64) {
        if Some(&ev.group_id) != self.group.group_id.get() {
            return;
        }
        match lock(&self.track).observe(ev.seq) {
            Seen::Setup | Seen::Duplicate => return,
            Seen::InOrder | Seen::Reordered => {}
        }
        let c = &self.shared.counters;
        if self.is_sender {
            return; // its own echo: checked for order and loss only
        }
        Counters::add(&c.delivered, 1);
        self.shared.last_event_ns.fetch_max(at, Ordering::Relaxed);
        let header = if ev.kind != EntryKind::Application as i32 {
            None
        } else {
            match self.mode {
                MlsMode::Presealed => {
                    private_message_aad(&ev.message).and_then(|a| Header::decode(&a))
                }
                MlsMode::Live => lock(&self.live)
                    .as_mut()
                    .and_then(|m| m.process(&ev.message).ok().flatten())
                    .and_then(|p| Header::decode(&p)),
            }
        };
        let Some(h) = header.filter(|h| h.group == self.group.index) else {
            Counters::add(&c.payload_errors, 1);
            return;
        };
        let done = {
            let mut m = lock(&self.group.msgs);
            let msg = m
                .entry(h.counter)
                .or_insert_with(|| Msg::new(h.sent_ns, self.group.receivers));
            if msg.seq == 0 {
                msg.seq = ev.seq;
            } else if msg.seq != ev.seq {
                // The same message under a second seq: stored twice.
                Counters::add(&self.shared.stored_twice, 1);
                return;
            }
            msg.left = msg.left.saturating_sub(1);
            if msg.left == 0 && msg.completed_ns == 0 {
                msg.completed_ns = at;
                true
            } else {
                false
            }
        };
        let mut hs = lock(&self.shared.hists);
        hs.e2e.record_ns(h.sent_ns, at);
        if done {
            hs.completion.record_ns(h.sent_ns, at);
        }
    }
}

impl MemberSink {
    fn rid(&self) -> u64 {
        self.next_rid.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends one message (first attempt): in flight at once when connected,
    /// else queued for the reconnect.
    fn send(&self, counter: u64, body: v1::SendMessage) {
        let mut ob = lock(&self.outbox);
        let mut out = Outgoing {
            body,
            due: Some(0),
            backoff_ms: 50,
            sent_once: false,
        };
        if ob.up {
            if let Some(link) = ob.link.clone() {
                let rid = self.rid();
                if link
                    .send_with_id(rid, C::SendMessage(out.body.clone()))
                    .is_ok()
                {
                    ob.by_rid.insert(rid, counter);
                    out.due = None;
                    out.sent_once = true;
                }
            }
        }
        ob.pending.insert(counter, out);
    }

    /// Resends every queued send that is due (when connected).
    fn resend_due(&self, now: u64) {
        let mut ob = lock(&self.outbox);
        if !ob.up {
            return;
        }
        let Some(link) = ob.link.clone() else { return };
        let mut sent = Vec::new();
        for (counter, out) in ob.pending.iter_mut() {
            if out.due.is_some_and(|t| t <= now) {
                let rid = self.next_rid.fetch_add(1, Ordering::Relaxed);
                if link
                    .send_with_id(rid, C::SendMessage(out.body.clone()))
                    .is_err()
                {
                    break;
                }
                out.due = None;
                sent.push((rid, *counter, out.sent_once));
                out.sent_once = true;
            }
        }
        let mut msgs = lock(&self.group.msgs);
        for (rid, counter, resend) in sent {
            ob.by_rid.insert(rid, counter);
            if resend {
                Counters::add(&self.shared.retries, 1);
                if let Some(m) = msgs.get_mut(&counter) {
                    m.attempts += 1;
                }
            }
        }
    }

    fn pending_len(&self) -> usize {
        lock(&self.outbox).pending.len()
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
            S::SyncCaughtUp(_) => {
                let _ = self.caught_up.send(true);
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
            S::Error(e) => {
                tracing::warn!(code = ?e.error_code(), message = %e.message, "pushed error");
            }
            _ => {}
        }
    }

    fn on_reply(&self, request_id: u64, frame: S, at_ns: u64) {
        let c = &self.shared.counters;
        let mut ob = lock(&self.outbox);
        let Some(counter) = ob.by_rid.remove(&request_id) else {
            return; // a reply for another socket's request
        };
        match frame {
            S::MessageAccepted(a) => {
                if ob.pending.remove(&counter).is_none() {
                    return;
                }
                drop(ob);
                Counters::add(&c.acked, 1);
                if a.duplicate {
                    Counters::add(&self.shared.deduplicated, 1);
                }
                self.group.acked_max.fetch_max(a.seq, Ordering::Relaxed);
                let intended = {
                    let mut msgs = lock(&self.group.msgs);
                    let m = msgs
                        .entry(counter)
                        .or_insert_with(|| Msg::new(0, self.group.receivers));
                    m.acked_ns = at_ns;
                    m.dedup = a.duplicate;
                    if m.seq == 0 {
                        m.seq = a.seq;
                    } else if m.seq != a.seq {
                        Counters::add(&self.shared.stored_twice, 1);
                    }
                    m.intended
                };
                // (0: acked after its phase ended, which already failed it)
                if intended > 0 {
                    lock(&self.shared.hists).ack.record_ns(intended, at_ns);
                }
            }
            S::Error(e) if transient(e.error_code()) => {
                // Retried with the same client_msg_id after a backoff.
                if let Some(out) = ob.pending.get_mut(&counter) {
                    out.due = Some(at_ns + out.backoff_ms * 1_000_000);
                    out.backoff_ms = (out.backoff_ms * 2).min(MAX_BACKOFF_MS);
                }
                tracing::debug!(code = ?e.error_code(), message = %e.message, "send refused for now; retrying");
            }
            S::Error(e) => {
                ob.pending.remove(&counter);
                Counters::add(&c.send_errors, 1);
                tracing::warn!(code = ?e.error_code(), message = %e.message, "send rejected");
            }
            other => {
                ob.pending.remove(&counter);
                Counters::add(&c.send_errors, 1);
                tracing::warn!(reply = ?other, "unexpected reply to a send");
            }
        }
    }

    fn on_closed(&self, reason: &str, server: usize, at_ns: u64) {
        {
            // What was in flight on the lost socket goes again, at once,
            // on the next one.
            let mut ob = lock(&self.outbox);
            ob.up = false;
            ob.by_rid.clear();
            for out in ob.pending.values_mut() {
                if out.due.is_none() {
                    out.due = Some(0);
                }
            }
        }
        let c = &self.shared.counters;
        c.conns_open.fetch_sub(1, Ordering::Relaxed);
        if self.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        // Sockets to the killed node die at the kill (a little slack for
        // the signal's delivery against this clock).
        let expected = lock(&self.shared.kill)
            .as_ref()
            .is_some_and(|k| k.server == server && at_ns + 100_000_000 >= k.at_ns);
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
        {
            let mut ob = lock(&self.outbox);
            ob.link = Some(link.clone());
            ob.up = true;
        }
        self.resend_due(at_ns);
    }
}

struct SenderState {
    member: Member,
    sealed: Vec<Presealed>,
    counter: u64,
}

struct GroupRt {
    shared: Arc<GroupShared>,
    conns: Vec<Arc<Conn>>,
    sinks: Vec<Arc<MemberSink>>,
    sender: Arc<tokio::sync::Mutex<SenderState>>,
}

/// Gateway addresses, their HTTP clients, and source IPs handed out
/// round-robin.
pub struct Endpoints {
    pub addrs: Arc<Vec<SocketAddr>>,
    pub https: Vec<Http>,
    sources: Vec<IpAddr>,
    next_source: AtomicU64,
}

impl Endpoints {
    pub async fn new(plan: &Plan) -> anyhow::Result<Self> {
        let mut addrs = Vec::new();
        let mut https = Vec::new();
        for s in &plan.servers {
            addrs.push(crate::conn::resolve(s).await?);
            https.push(Http::new(s)?);
        }
        anyhow::ensure!(!addrs.is_empty(), "no server");
        Ok(Self {
            addrs: Arc::new(addrs),
            https,
            sources: plan.sources.clone(),
            next_source: AtomicU64::new(0),
        })
    }

    /// The next source address (round-robin), `None` to let the OS pick.
    pub fn source(&self) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let i = self.next_source.fetch_add(1, Ordering::Relaxed) as usize;
        Some(self.sources[i % self.sources.len()])
    }
}

fn random16() -> Vec<u8> {
    let mut b = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.to_vec()
}

async fn setup_group(
    plan: &Plan,
    job: &FanoutJob,
    ep: &Endpoints,
    shared: &Arc<Shared>,
    gidx: usize,
) -> anyhow::Result<GroupRt> {
    let k = job.group_size;
    let group = Arc::new(GroupShared {
        index: gidx as u32,
        group_id: OnceLock::new(),
        receivers: (k - 1) as u32,
        msgs: Mutex::default(),
        acked_max: AtomicU64::new(0),
    });
    let mut devices: Vec<Device> = Vec::with_capacity(k);
    let mut conns = Vec::with_capacity(k);
    let mut sinks = Vec::with_capacity(k);
    let mut inboxes = Vec::with_capacity(k);
    for j in 0..k {
        // Members round-robin over the gateways, starting at the group's
        // index: the senders (member 0) are spread over the nodes too, so
        // a killed node takes senders with it, not only receivers.
        let srv = (gidx + j) % ep.addrs.len();
        let dev = account::register(&ep.https[srv], &account::handle(&plan.run_id, 'g', gidx, j))
            .await
            .with_context(|| format!("register member {j} of group {gidx}"))?;
        let (caught_up, mut caught_rx) = watch::channel(false);
        let (itx, irx) = mpsc::unbounded_channel();
        let sink = Arc::new(MemberSink {
            shared: shared.clone(),
            group: group.clone(),
            mode: job.mls,
            is_sender: j == 0,
            track: Mutex::default(),
            live: Mutex::new(None),
            inbox: Mutex::new((j > 0 && job.mls == MlsMode::Live).then_some(itx)),
            caught_up,
            outbox: Mutex::default(),
            next_rid: AtomicU64::new(SEND_RID_BASE),
            acked_to_server: AtomicU64::new(0),
            inbox_max: AtomicU64::new(0),
            member: j as u32,
            resume: Mutex::new(None),
        });
        let conn = Conn::connect_with(
            ep.addrs[srv],
            Some(Failover {
                addrs: ep.addrs.clone(),
            }),
            ep.source(),
            &dev.token,
            sink.clone(),
        )
        .await?;
        {
            let mut ob = lock(&sink.outbox);
            ob.link = Some(conn.link().clone());
            ob.up = true;
        }
        Counters::add(&shared.counters.conns_open, 1);
        conn.start_sync()?;
        tokio::time::timeout(crate::conn::REQUEST_TIMEOUT, caught_rx.wait_for(|v| *v))
            .await
            .context("no SyncCaughtUp")??;
        devices.push(dev);
        conns.push(Arc::new(conn));
        sinks.push(sink);
        inboxes.push(irx);
    }
    // Every receiver uploads a KeyPackage of its own.
    let mut joiners = Vec::new();
    let mut devs = devices.into_iter();
    let creator_dev = devs.next().context("empty group")?;
    let mut user_ids: Vec<String> = Vec::new();
    for (j, dev) in devs.enumerate() {
        let identity = dev.identity();
        user_ids.push(dev.user_id.clone());
        let member = Member::new(dev.keys, identity);
        let kp = member.key_package()?;
        conns[j + 1]
            .request(C::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages: vec![kp],
                last_resort: Vec::new(),
            }))
            .await
            .context("upload key package")?;
        joiners.push(member);
    }
    // The creator makes the group, claims a KeyPackage per receiver, and
    // adds them all in one commit (Welcome, GroupInfo and tree uploaded).
    let creator_identity = creator_dev.identity();
    let mut creator = Member::new(creator_dev.keys, creator_identity);
    let (gid, gi, tree) = creator.create_group()?;
    conns[0]
        .request(C::CreateGroup(v1::CreateGroup {
            group_info: gi,
            ratchet_tree: tree,
        }))
        .await
        .context("create group")?;
    let _ = group.group_id.set(gid.clone());
    let mut kps = Vec::with_capacity(k - 1);
    for uid in &user_ids {
        match conns[0]
            .request(C::ClaimKeyPackages(v1::ClaimKeyPackages {
                user_id: uid.clone(),
            }))
            .await
            .context("claim key package")?
        {
            S::ClaimedKeyPackages(c) => {
                let kp = c
                    .key_packages
                    .into_iter()
                    .next()
                    .context("no key package claimed")?;
                kps.push(kp.key_package);
            }
            other => anyhow::bail!("unexpected claim reply {other:?}"),
        }
    }
    let commit = creator.add(&kps)?;
    let base = match conns[0]
        .request(C::SendCommit(v1::SendCommit {
            group_id: gid.clone(),
            commit: commit.commit,
            welcome: commit.welcome.unwrap_or_default(),
            group_info: commit.group_info,
            ratchet_tree: commit.ratchet_tree,
            client_msg_id: random16(),
        }))
        .await
        .context("send add commit")?
    {
        S::CommitAccepted(a) => a.seq,
        other => anyhow::bail!("unexpected commit reply {other:?}"),
    };
    creator.merge()?;
    for s in &sinks {
        lock(&s.track).start_after(base);
    }
    if job.mls == MlsMode::Live {
        for (j, mut member) in joiners.into_iter().enumerate() {
            let rx = &mut inboxes[j + 1];
            let ev = loop {
                let ev = tokio::time::timeout(crate::conn::REQUEST_TIMEOUT, rx.recv())
                    .await
                    .context("no Welcome")?
                    .context("connection closed before the Welcome")?;
                if ev.group_id == gid {
                    break ev;
                }
            };
            member.join(&ev.welcome, &ev.ratchet_tree)?;
            *lock(&sinks[j + 1].live) = Some(member);
        }
    }
    let sealed = match job.mls {
        MlsMode::Presealed => (0..job.presealed_per_group)
            .map(|_| creator.preseal(job.payload_bytes))
            .collect::<Result<Vec<_>, _>>()?,
        MlsMode::Live => Vec::new(),
    };
    Ok(GroupRt {
        shared: group,
        conns,
        sinks,
        sender: Arc::new(tokio::sync::Mutex::new(SenderState {
            member: creator,
            sealed,
            counter: 0,
        })),
    })
}

/// Sends one phase of a group's schedule.
#[allow(clippy::too_many_arguments)]
async fn send_phase(
    clock: Clock,
    g: Arc<GroupShared>,
    sink: Arc<MemberSink>,
    sender: Arc<tokio::sync::Mutex<SenderState>>,
    mode: MlsMode,
    payload_bytes: usize,
    run_tag: u32,
    start_ns: u64,
    period_ns: f64,
    n: u64,
) {
    let mut st = sender.lock().await;
    let Some(gid) = g.group_id.get().cloned() else {
        return;
    };
    let counters = &sink.shared.counters;
    for i in 0..n {
        let intended = start_ns + (i as f64 * period_ns) as u64;
        tokio::time::sleep_until(clock.instant_at(intended)).await;
        let counter = st.counter;
        st.counter += 1;
        let h = Header {
            sent_ns: intended,
            group: g.index,
            counter,
        };
        let message = match mode {
            MlsMode::Presealed => st.sealed[(counter as usize) % st.sealed.len()].stamp(&h),
            MlsMode::Live => match st.member.encrypt(&h.plaintext(payload_bytes)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "encrypt failed");
                    Counters::add(&counters.payload_errors, 1);
                    continue;
                }
            },
        };
        let mut id = Vec::with_capacity(16);
        id.extend_from_slice(&run_tag.to_le_bytes());
        id.extend_from_slice(&g.index.to_le_bytes());
        id.extend_from_slice(&counter.to_le_bytes());
        {
            let mut m = Msg::new(intended, g.receivers);
            m.attempts = 1;
            lock(&g.msgs).insert(counter, m);
        }
        Counters::add(&counters.sent, 1);
        // Resends (after a lost socket or a transient error) reuse this
        // body, so the client_msg_id stays the same.
        sink.send(
            counter,
            v1::SendMessage {
                group_id: gid.clone(),
                client_msg_id: id,
                message,
            },
        );
    }
}

fn drained(groups: &[GroupRt]) -> bool {
    groups.iter().all(|g| {
        let head = g.shared.acked_max.load(Ordering::Relaxed);
        g.sinks[0].pending_len() == 0 && g.sinks.iter().all(|s| lock(&s.track).contiguous() >= head)
    })
}

/// Runs the fan-out worker until `Stop`.
pub async fn run(
    plan: Plan,
    job: FanoutJob,
    mut cmds: mpsc::UnboundedReceiver<ToWorker>,
    events: mpsc::UnboundedSender<FromWorker>,
) -> anyhow::Result<()> {
    let clock = Clock::now();
    let shared = Arc::new(Shared::default());
    let ep = Arc::new(Endpoints::new(&plan).await?);
    let setup_start = std::time::Instant::now();
    let ticker = {
        let shared = shared.clone();
        crate::spawn_ticker(events.clone(), move || shared.counters.tick())
    };
    let groups: Vec<GroupRt> = {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let plan = &plan;
        let job = &job;
        let ep = &ep;
        let shared = &shared;
        stream::iter(job.first_group..job.first_group + job.groups)
            .map(|g| async move { setup_group(plan, job, ep, shared, g).await })
            .buffered(job.setup_concurrency)
            .try_collect()
            .await?
    };
    let _ = events.send(FromWorker::Ready {
        setup_s: setup_start.elapsed().as_secs_f64(),
        registered: (job.groups * job.group_size) as u64,
    });

    // Receivers acknowledge what they have, as the SDK does.
    let acker = (job.ack_interval_ms > 0).then(|| {
        let targets: Vec<(Arc<Conn>, Arc<MemberSink>)> = groups
            .iter()
            .flat_map(|g| g.conns.iter().cloned().zip(g.sinks.iter().cloned()))
            .collect();
        let every = Duration::from_millis(job.ack_interval_ms);
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                for (conn, sink) in &targets {
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
    });

    // Senders resend what is due (transient errors back off; sends queued
    // while a socket was down go at the reconnect).
    let resender = {
        let senders: Vec<Arc<MemberSink>> = groups.iter().map(|g| g.sinks[0].clone()).collect();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(10));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                let now = now_ns();
                for s in &senders {
                    s.resend_due(now);
                }
            }
        })
    };

    let run_tag = u32::from_str_radix(plan.run_id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    while let Some(cmd) = cmds.recv().await {
        let p = match cmd {
            ToWorker::Stop => break,
            ToWorker::Phase(p) => p,
        };
        let r = run_phase(&clock, &shared, &job, &groups, &p, run_tag).await;
        let _ = events.send(FromWorker::PhaseDone(Box::new(r)));
    }
    shared.stopping.store(true, Ordering::SeqCst);
    if let Some(a) = acker {
        a.abort();
    }
    resender.abort();
    for g in &groups {
        for c in &g.conns {
            c.close();
        }
    }
    ticker.abort();
    let _ = events.send(FromWorker::Tick(shared.counters.tick()));
    Ok(())
}

async fn run_phase(
    clock: &Clock,
    shared: &Arc<Shared>,
    job: &FanoutJob,
    groups: &[GroupRt],
    p: &PhaseCmd,
    run_tag: u32,
) -> PhaseResult {
    *lock(&shared.hists) = Hists::default();
    *lock(&shared.kill) = p.kill.clone();
    lock(&shared.drops).clear();
    let before = shared.counters.tick();
    let period_ns = 1e9 / p.rate;
    let n = (p.duration_s * p.rate).floor() as u64;
    let mut tasks = Vec::new();
    for g in groups {
        let offset = (g.shared.index as f64 / job.total_groups as f64) * period_ns;
        tasks.push(tokio::spawn(send_phase(
            *clock,
            g.shared.clone(),
            g.sinks[0].clone(),
            g.sender.clone(),
            job.mls,
            job.payload_bytes,
            run_tag,
            p.start_ns + offset as u64,
            period_ns,
            n,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(p.drain_timeout_s);
    while !drained(groups) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = shared.counters.tick();
    let mut corr = Correctness {
        send_errors: after.send_errors,
        payload_errors: shared.counters.payload_errors.load(Ordering::Relaxed),
        closed_unexpected: after.closed_unexpected,
        conn_failures: after.conn_failures,
        stored_twice: shared.stored_twice.load(Ordering::Relaxed),
        ..Correctness::default()
    };
    let mut messages = Vec::new();
    for g in groups {
        let tracks: Vec<SeqTrack> = g.sinks.iter().map(|s| lock(&s.track).clone()).collect();
        let head = tracks
            .iter()
            .map(|t| t.max_seen())
            .max()
            .unwrap_or(0)
            .max(g.shared.acked_max.load(Ordering::Relaxed));
        for t in &tracks {
            corr.lost += t.lost(head);
            corr.duplicated += t.duplicates;
            corr.reordered += t.reordered;
        }
        corr.unacked += g.sinks[0].pending_len() as u64;
        let msgs = std::mem::take(&mut *lock(&g.shared.msgs));
        if p.kill.is_some() {
            messages.extend(msgs.values().map(|m| MsgRec {
                group: g.shared.index,
                intended_ns: m.intended,
                acked_ns: m.acked_ns,
                completed_ns: m.completed_ns,
                attempts: m.attempts,
                dedup: m.dedup,
            }));
        }
    }
    let failover = p.kill.as_ref().map(|_| {
        let mut drops = std::mem::take(&mut *lock(&shared.drops));
        // Sockets still down (or not caught up) at the end.
        for g in groups {
            for s in &g.sinks {
                if let Some(d) = lock(&s.resume).clone() {
                    drops.push(d);
                }
            }
        }
        FailoverRaw {
            drops,
            messages,
            retries: shared.retries.load(Ordering::Relaxed),
            deduplicated: shared.deduplicated.load(Ordering::Relaxed),
        }
    });
    let hists = std::mem::take(&mut *lock(&shared.hists));
    PhaseResult {
        index: p.index,
        sent: after.sent - before.sent,
        acked: after.acked - before.acked,
        delivered: after.delivered - before.delivered,
        correctness: corr,
        hists: [
            ("ack".to_string(), hists.ack),
            ("e2e".to_string(), hists.e2e),
            ("completion".to_string(), hists.completion),
        ]
        .into_iter()
        .collect(),
        last_event_ns: shared.last_event_ns.load(Ordering::Relaxed),
        conns_open: after.conns_open,
        failover,
    }
}
