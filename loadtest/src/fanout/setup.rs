//! Setting up one group for real: every member registers its own user and
//! opens its own WebSocket (round-robin over the gateways) and syncs; every
//! receiver uploads a KeyPackage; the creator (member 0) creates the group,
//! claims a KeyPackage per receiver and adds them all in one commit
//! (Welcome, GroupInfo and tree uploaded). With live MLS the receivers join
//! from their Welcomes; presealed, the creator seals the ciphertexts the
//! phases replay. Every member's check starts after the add commit's seq.

use std::sync::Arc;

use anyhow::Context as _;
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::v1::{self, InboxEvent};
use tokio::sync::{mpsc, watch};

use super::group::GroupShared;
use super::member::MemberSink;
use super::send::SenderState;
use super::shared::Shared;
use crate::account::{self, Device};
use crate::clock::now_ns;
use crate::conn::{Conn, Failover, REQUEST_TIMEOUT};
use crate::endpoints::Endpoints;
use crate::history::Event;
use crate::mls::Member;
use crate::protocol::{FanoutJob, Plan};
use crate::scenario::MlsMode;
use crate::stats::Counters;
use crate::sync::lock;

/// A group ready to run phases.
pub struct GroupRt {
    pub shared: Arc<GroupShared>,
    /// Member `j`'s connection and handler; member 0 is the sender.
    pub conns: Vec<Arc<Conn>>,
    pub sinks: Vec<Arc<MemberSink>>,
    pub sender: Arc<tokio::sync::Mutex<SenderState>>,
}

/// One member after [`connect_member`].
struct Joined {
    dev: Device,
    conn: Arc<Conn>,
    sink: Arc<MemberSink>,
    /// Its inbox events (live MLS receivers only; else never sent to).
    inbox: mpsc::UnboundedReceiver<InboxEvent>,
}

/// Sets up group `gidx`.
pub async fn setup_group(
    plan: &Plan,
    job: &FanoutJob,
    ep: &Endpoints,
    shared: &Arc<Shared>,
    gidx: usize,
) -> anyhow::Result<GroupRt> {
    let k = job.group_size;
    let group = Arc::new(GroupShared::new(gidx as u32, (k - 1) as u32));
    let mut members = Vec::with_capacity(k);
    for j in 0..k {
        members.push(connect_member(plan, job, ep, shared, &group, j).await?);
    }
    let conns: Vec<Arc<Conn>> = members.iter().map(|m| m.conn.clone()).collect();
    let sinks: Vec<Arc<MemberSink>> = members.iter().map(|m| m.sink.clone()).collect();
    let mut inboxes = Vec::with_capacity(k);
    let mut devs = Vec::with_capacity(k);
    for m in members {
        inboxes.push(m.inbox);
        devs.push(m.dev);
    }
    let mut devs = devs.into_iter();
    let creator_dev = devs.next().context("empty group")?;
    let (joiners, user_ids) = upload_key_packages(devs, &conns[1..]).await?;
    let creator_identity = creator_dev.identity();
    let mut creator = Member::new(creator_dev.keys, creator_identity);
    let (gid, base) = create_with_members(&mut creator, &conns[0], &group, &user_ids).await?;
    for s in &sinks {
        lock(&s.track).start_after(base);
    }
    record_group(shared, gidx as u32, &gid, base, creator.epoch(), k as u32);
    if job.mls == MlsMode::Live {
        join_from_welcomes(joiners, &mut inboxes[1..], &sinks[1..], &gid).await?;
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

/// Registers member `j` of the group, connects it (with failover over all
/// gateways) and waits until its first `Sync` caught up.
async fn connect_member(
    plan: &Plan,
    job: &FanoutJob,
    ep: &Endpoints,
    shared: &Arc<Shared>,
    group: &Arc<GroupShared>,
    j: usize,
) -> anyhow::Result<Joined> {
    let gidx = group.index as usize;
    // Members round-robin over the gateways, starting at the group's
    // index: the senders (member 0) are spread over the nodes too, so a
    // killed node takes senders with it, not only receivers.
    let srv = (gidx + j) % ep.addrs.len();
    let dev = account::register(&ep.https[srv], &account::handle(&plan.run_id, 'g', gidx, j))
        .await
        .with_context(|| format!("register member {j} of group {gidx}"))?;
    let (caught_up, mut caught_rx) = watch::channel(false);
    let (itx, inbox) = mpsc::unbounded_channel();
    let sink = Arc::new(MemberSink::new(
        shared.clone(),
        group.clone(),
        job.mls,
        j as u32,
        (j > 0 && job.mls == MlsMode::Live).then_some(itx),
        caught_up,
    ));
    lock(&sink.outbox).send_window(job.send_window);
    let conn = Conn::connect_with(
        ep.addrs[srv],
        Some(Failover {
            addrs: ep.addrs.clone(),
        }),
        ep.sources.next(),
        &dev.token,
        sink.clone(),
    )
    .await?;
    lock(&sink.outbox).connected(conn.link().clone());
    Counters::add(&shared.counters.conns_open, 1);
    sink.record_connect(srv, now_ns());
    conn.start_sync()?;
    tokio::time::timeout(REQUEST_TIMEOUT, caught_rx.wait_for(|v| *v))
        .await
        .context("no SyncCaughtUp")??;
    Ok(Joined {
        dev,
        conn: Arc::new(conn),
        sink,
        inbox,
    })
}

/// Chaos: group `g` exists (`gid`); its `members` must each receive
/// every seq after `base` (the add commit) and are at `epoch` now.
fn record_group(shared: &Shared, g: u32, gid: &[u8], base: u64, epoch: u64, members: u32) {
    let t = now_ns();
    shared.record(|| Event::Group {
        t,
        g,
        gid: hex::encode(gid),
    });
    for m in 0..members {
        shared.record(|| Event::Join {
            t,
            g,
            m,
            after: base,
        });
        shared.record(|| Event::Epoch { t, g, m, e: epoch });
    }
}

/// Every receiver uploads a KeyPackage of its own over its connection;
/// returns their MLS sides and user ids, in member order.
async fn upload_key_packages(
    receivers: impl Iterator<Item = Device>,
    conns: &[Arc<Conn>],
) -> anyhow::Result<(Vec<Member>, Vec<String>)> {
    let mut joiners = Vec::new();
    let mut user_ids = Vec::new();
    for (dev, conn) in receivers.zip(conns) {
        let identity = dev.identity();
        user_ids.push(dev.user_id.clone());
        let member = Member::new(dev.keys, identity);
        let kp = member.key_package()?;
        conn.request(C::UploadKeyPackages(v1::UploadKeyPackages {
            key_packages: vec![kp],
            last_resort: Vec::new(),
        }))
        .await
        .context("upload key package")?;
        joiners.push(member);
    }
    Ok((joiners, user_ids))
}

/// The creator makes the group, claims a KeyPackage per user and adds them
/// all in one commit; returns the group id and the commit's seq.
async fn create_with_members(
    creator: &mut Member,
    conn: &Conn,
    group: &GroupShared,
    user_ids: &[String],
) -> anyhow::Result<(Vec<u8>, u64)> {
    let (gid, gi, tree) = creator.create_group()?;
    conn.request(C::CreateGroup(v1::CreateGroup {
        group_info: gi,
        ratchet_tree: tree,
    }))
    .await
    .context("create group")?;
    let _ = group.group_id.set(gid.clone());
    let mut kps = Vec::with_capacity(user_ids.len());
    for uid in user_ids {
        match conn
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
    let base = match conn
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
    Ok((gid, base))
}

/// Live MLS: each receiver joins group `gid` from the Welcome in its inbox.
async fn join_from_welcomes(
    joiners: Vec<Member>,
    inboxes: &mut [mpsc::UnboundedReceiver<InboxEvent>],
    sinks: &[Arc<MemberSink>],
    gid: &[u8],
) -> anyhow::Result<()> {
    for ((mut member, rx), sink) in joiners.into_iter().zip(inboxes).zip(sinks) {
        let ev = loop {
            let ev = tokio::time::timeout(REQUEST_TIMEOUT, rx.recv())
                .await
                .context("no Welcome")?
                .context("connection closed before the Welcome")?;
            if ev.group_id == gid {
                break ev;
            }
        };
        member.join(&ev.welcome, &ev.ratchet_tree)?;
        *lock(&sink.live) = Some(member);
    }
    Ok(())
}

fn random16() -> Vec<u8> {
    let mut b = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.to_vec()
}
