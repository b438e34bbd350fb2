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
//! never arrived are lost.

use std::collections::HashMap;
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
use crate::conn::{Conn, Push};
use crate::mls::{private_message_aad, Member, Presealed};
use crate::payload::Header;
use crate::scenario::MlsMode;
use crate::stats::{Correctness, Counters, Hist, Seen, SeqTrack};
use crate::worker::{FanoutJob, FromWorker, PhaseCmd, PhaseResult, Plan, ToWorker};
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
    /// Message counter -> receivers that have not got it yet.
    completion: Mutex<HashMap<u64, u32>>,
    acked_max: AtomicU64,
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
    /// Sender: request id -> (intended send ns, counter).
    pending: Mutex<HashMap<u64, (u64, u64)>>,
    acked_to_server: AtomicU64,
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
            let mut m = lock(&self.group.completion);
            let left = m.entry(h.counter).or_insert(self.group.receivers);
            *left = left.saturating_sub(1);
            if *left == 0 {
                m.remove(&h.counter);
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

impl Push for MemberSink {
    fn on_push(&self, frame: S, at_ns: u64) {
        match frame {
            S::GroupEvent(ev) => self.on_group_event(ev, at_ns),
            S::InboxEvent(ev) => {
                if let Some(tx) = lock(&self.inbox).as_ref() {
                    let _ = tx.send(ev);
                }
            }
            S::SyncCaughtUp(_) => {
                let _ = self.caught_up.send(true);
            }
            S::Error(e) => {
                tracing::warn!(code = ?e.error_code(), message = %e.message, "pushed error");
            }
            _ => {}
        }
    }

    fn on_reply(&self, request_id: u64, frame: S, at_ns: u64) {
        let Some((intended, _counter)) = lock(&self.pending).remove(&request_id) else {
            return;
        };
        let c = &self.shared.counters;
        match frame {
            S::MessageAccepted(a) => {
                Counters::add(&c.acked, 1);
                self.group.acked_max.fetch_max(a.seq, Ordering::Relaxed);
                lock(&self.shared.hists).ack.record_ns(intended, at_ns);
            }
            S::Error(e) => {
                Counters::add(&c.send_errors, 1);
                tracing::warn!(code = ?e.error_code(), message = %e.message, "send rejected");
            }
            other => {
                Counters::add(&c.send_errors, 1);
                tracing::warn!(reply = ?other, "unexpected reply to a send");
            }
        }
    }

    fn on_closed(&self, reason: &str) {
        let c = &self.shared.counters;
        c.conns_open.fetch_sub(1, Ordering::Relaxed);
        if !self.shared.stopping.load(Ordering::Relaxed) {
            Counters::add(&c.closed_unexpected, 1);
            tracing::warn!(%reason, "connection closed during the run");
        }
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
    pub addrs: Vec<SocketAddr>,
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
            addrs,
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
        completion: Mutex::default(),
        acked_max: AtomicU64::new(0),
    });
    let mut devices: Vec<Device> = Vec::with_capacity(k);
    let mut conns = Vec::with_capacity(k);
    let mut sinks = Vec::with_capacity(k);
    let mut inboxes = Vec::with_capacity(k);
    for j in 0..k {
        let m = gidx * k + j;
        let srv = m % ep.addrs.len();
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
            pending: Mutex::default(),
            acked_to_server: AtomicU64::new(0),
        });
        let conn = Conn::connect(ep.addrs[srv], ep.source(), &dev.token, sink.clone()).await?;
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
    conn: Arc<Conn>,
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
        let rid = conn.next_id();
        lock(&sink.pending).insert(rid, (intended, counter));
        Counters::add(&counters.sent, 1);
        if conn
            .send_with_id(
                rid,
                C::SendMessage(v1::SendMessage {
                    group_id: gid.clone(),
                    client_msg_id: id,
                    message,
                }),
            )
            .is_err()
        {
            lock(&sink.pending).remove(&rid);
            Counters::add(&counters.send_errors, 1);
        }
    }
}

fn drained(groups: &[GroupRt]) -> bool {
    groups.iter().all(|g| {
        let head = g.shared.acked_max.load(Ordering::Relaxed);
        lock(&g.sinks[0].pending).is_empty()
            && g.sinks.iter().all(|s| lock(&s.track).contiguous() >= head)
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
    let before = shared.counters.tick();
    let period_ns = 1e9 / p.rate;
    let n = (p.duration_s * p.rate).floor() as u64;
    let mut tasks = Vec::new();
    for g in groups {
        let offset = (g.shared.index as f64 / job.total_groups as f64) * period_ns;
        tasks.push(tokio::spawn(send_phase(
            *clock,
            g.shared.clone(),
            g.conns[0].clone(),
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
        ..Correctness::default()
    };
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
        corr.unacked += lock(&g.sinks[0].pending).len() as u64;
    }
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
    }
}
