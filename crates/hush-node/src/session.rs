//! SessionActor: one per online user, on the node that owns the user
//! (placement by the key `u/<user_id>`, like groups by group id). It knows
//! where each of the user's connections is — this node or another — and
//! forwards group events, inbox items and live-only frames to the
//! connections of the devices they are for. A client may connect to any
//! node: its connection attaches to the session wherever it lives, and the
//! session writes to it through that node's connection table
//! (`conns.rs`), batched per node by the cluster router.
//!
//! Presence: the session is the user's presence in the whole cluster. Its
//! first connection makes the user online (pushed to co-members, see
//! `presence.rs`). When its last connection goes, it waits
//! `actors.presence_grace_ms` (on the node's clock, checked by a ticker)
//! before it announces offline and passivates; a connection attaching in
//! the meantime cancels that, so a quick reconnect shows no change.
//!
//! Moves: when the view changes, a session whose user is now owned by
//! another node stops, and every node re-attaches its connections of that
//! user to the new owner, then has each of them read what it may have
//! missed from the store ([`Outbound::Resync`]). A session also forgets the
//! connections of nodes that left the view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hush_proto::cluster::v1 as c;
use hush_proto::{server_frame::Body as S, ErrorCode};
use hush_store::MemberDevice;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ctx::{Frame, NodeCtx};
use crate::error::{ApiError, ApiResult};

/// What a connection is sent through its queue.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A group timeline entry (already encoded as a ServerFrame).
    Group {
        group_id: Arc<[u8]>,
        seq: u64,
        frame: Frame,
    },
    /// A Welcome in the device inbox.
    Inbox {
        inbox_seq: u64,
        group_id: Arc<[u8]>,
        commit_seq: u64,
        frame: Frame,
    },
    /// A frame with no resume position, written only to connections that
    /// are live now and never replayed: typing (`EphemeralEvent`) and
    /// presence (`PresenceEvent`).
    Ephemeral { frame: Frame },
    /// Local only, never sent between nodes: the connection's session
    /// moved, so it reads what it may have missed from the store.
    Resync,
}

/// Where a connection is: its node and its id there.
pub type ConnRef = (String, u64);

pub enum SessionMsg {
    Attach {
        conn: ConnRef,
        device_id: String,
        reply: RpcReplyPort<ApiResult<()>>,
    },
    Detach {
        conn: ConnRef,
    },
    Deliver {
        devices: Vec<String>,
        item: Outbound,
    },
    /// Disconnect every connection of a device (logout, revoked token).
    KickDevice {
        device_id: String,
    },
    /// Periodic while the last connection is gone: announce offline once the
    /// grace period is over, then passivate.
    Tick,
    /// Whether online is announced (and offline not yet): the presence
    /// co-members were last told.
    IsOnline {
        reply: RpcReplyPort<bool>,
    },
    /// The view changed and still places the user here: forget the
    /// connections of nodes that are no longer members.
    ViewChanged {
        members: Vec<String>,
    },
    /// The view places the user on another node now: stop. The
    /// connections re-attach there.
    Moved,
}

pub struct SessionActor {
    pub ctx: Arc<NodeCtx>,
}

pub struct SessionState {
    user_id: String,
    /// Every connection of the user, wherever it is, and its device.
    conns: HashMap<ConnRef, String>,
    /// Online was announced (and offline not yet).
    online: bool,
    /// No connection since: offline is announced at this time (node clock).
    offline_at: Option<u64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = String;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        user_id: String,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::gauge!("hush_session_actors").increment(1.0);
        Ok(SessionState {
            user_id,
            conns: HashMap::new(),
            online: false,
            offline_at: None,
            ticker: None,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("hush_session_actors").decrement(1.0);
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        self.ctx
            .sessions
            .remove(&state.user_id, myself.get_id())
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Attach {
                conn,
                device_id,
                reply,
            } => {
                let limit = self.ctx.config.limits.max_connections_per_user;
                let result = if state.conns.len() >= limit && !state.conns.contains_key(&conn) {
                    Err(ApiError::new(
                        ErrorCode::TooManyConnections,
                        format!("at most {limit} connections per user"),
                    ))
                } else {
                    state.conns.insert(conn, device_id);
                    Ok(())
                };
                let attached = result.is_ok();
                let _ = reply.send(result);
                if attached {
                    self.on_connected(state).await;
                } else if state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
                }
            }
            SessionMsg::Detach { conn } => {
                if state.conns.remove(&conn).is_some() && state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
                }
            }
            SessionMsg::IsOnline { reply } => {
                let _ = reply.send(state.online);
            }
            SessionMsg::Tick => {
                let due = state.offline_at.is_some_and(|at| self.ctx.now_ms() >= at);
                if state.conns.is_empty() && due {
                    self.go_offline(&myself, state).await;
                }
            }
            SessionMsg::Deliver { devices, item } => {
                let me = self.ctx.node_id();
                let mut remote: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
                let mut gone = Vec::new();
                for (conn, device_id) in &state.conns {
                    if !devices.iter().any(|d| d == device_id) {
                        continue;
                    }
                    if conn.0 == me {
                        if !self.ctx.conns.write(conn.1, item.clone()) {
                            gone.push(conn.clone());
                        }
                    } else {
                        remote.entry(&conn.0).or_default().push(conn.1);
                    }
                }
                if let Some(router) = self.ctx.cluster.get() {
                    for (node, conn_ids) in remote {
                        router.send_to_conns(node, &state.user_id, conn_ids, &item);
                    }
                }
                for conn in gone {
                    state.conns.remove(&conn);
                }
                if state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
                }
            }
            SessionMsg::KickDevice { device_id } => {
                let me = self.ctx.node_id().to_owned();
                let router = self.ctx.cluster.get();
                state.conns.retain(|conn, device| {
                    if *device != device_id {
                        return true;
                    }
                    if conn.0 == me {
                        self.ctx.conns.remove(conn.1);
                    } else if let Some(router) = router {
                        router.close_conns(&conn.0, &state.user_id, vec![conn.1]);
                    }
                    false
                });
                if state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
                }
            }
            SessionMsg::ViewChanged { members } => {
                let me = self.ctx.node_id();
                state
                    .conns
                    .retain(|(node, _), _| node == me || members.contains(node));
                if state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
                }
            }
            SessionMsg::Moved => {
                if state.conns.is_empty() {
                    // Nobody re-attaches: say offline now, not never.
                    self.go_offline(&myself, state).await;
                } else {
                    myself.stop(Some("session moved to another node".into()));
                }
            }
        }
        Ok(())
    }
}

impl SessionActor {
    /// A connection attached: cancel a pending offline, or announce online.
    async fn on_connected(&self, state: &mut SessionState) {
        if state.offline_at.take().is_some() {
            if let Some(t) = state.ticker.take() {
                t.abort();
            }
        }
        if !state.online {
            state.online = true;
            crate::presence::announce(&self.ctx, &state.user_id, true).await;
        }
    }

    /// The last connection went: start the grace period (or, without one,
    /// go offline now).
    async fn on_idle(&self, myself: &ActorRef<SessionMsg>, state: &mut SessionState) {
        if state.offline_at.is_some() {
            return; // already waiting
        }
        let grace = self.ctx.config.actors.presence_grace_ms;
        if !state.online || grace == 0 || self.ctx.is_shutting_down() {
            self.go_offline(myself, state).await;
            return;
        }
        state.offline_at = Some(self.ctx.now_ms().saturating_add(grace));
        let period = std::time::Duration::from_millis((grace / 4).clamp(10, 250));
        let me = myself.clone();
        state.ticker = Some(tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if me.send_message(SessionMsg::Tick).is_err() {
                    break;
                }
            }
        }));
    }

    async fn go_offline(&self, myself: &ActorRef<SessionMsg>, state: &mut SessionState) {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        state.offline_at = None;
        if state.online {
            state.online = false;
            crate::presence::announce(&self.ctx, &state.user_id, false).await;
        }
        myself.stop(None);
    }
}

/// The placement key of a user's session.
pub fn placement_key(user_id: &str) -> Vec<u8> {
    format!("u/{user_id}").into_bytes()
}

/// Attaches a connection of this node to its user's session, wherever the
/// session lives. Returns the node it attached to.
pub async fn attach(
    ctx: &Arc<NodeCtx>,
    conn_id: u64,
    user_id: &str,
    device_id: &str,
) -> ApiResult<String> {
    if let Some(router) = ctx.cluster.get() {
        let call = c::SessionCall {
            user_id: user_id.to_owned(),
            op: Some(c::session_call::Op::Attach(c::SessionAttach {
                device_id: device_id.to_owned(),
                conn_id,
            })),
        };
        let body = c::node_request::Body::SessionCall(call);
        if let Some((node, reply)) = router.call_owner(&placement_key(user_id), body).await? {
            return match reply.body {
                None => Ok(node),
                Some(c::node_reply::Body::Frame(f)) => match f.body {
                    Some(S::Error(e)) => Err(ApiError::from_proto(e)),
                    _ => Ok(node),
                },
                Some(_) => Err(ApiError::internal(
                    "cluster reply",
                    format!("unexpected answer to attach from {node}"),
                )),
            };
        }
    }
    let me = ctx.node_id().to_owned();
    attach_here(ctx, (me.clone(), conn_id), user_id, device_id).await?;
    Ok(me)
}

/// Attaches a connection (of any node) to the user's session on this
/// node, activating it. A session that stops between lookup and attach is
/// retried once.
pub async fn attach_here(
    ctx: &Arc<NodeCtx>,
    conn: ConnRef,
    user_id: &str,
    device_id: &str,
) -> ApiResult<()> {
    for _ in 0..2 {
        let session = ctx.session(user_id).await?;
        let r = session
            .call(
                |reply| SessionMsg::Attach {
                    conn: conn.clone(),
                    device_id: device_id.to_owned(),
                    reply,
                },
                Some(Duration::from_secs(10)),
            )
            .await;
        match r {
            Ok(ractor::rpc::CallResult::Success(result)) => return result,
            _ => {
                ctx.sessions
                    .remove(&user_id.to_owned(), session.get_id())
                    .await
            }
        }
    }
    Err(ApiError::new(ErrorCode::Unavailable, "session unavailable"))
}

/// A connection of this node ended: forget it, and tell its session.
pub async fn detach(ctx: &NodeCtx, conn_id: u64) {
    if let Some(conn) = ctx.conns.remove(conn_id) {
        forget(ctx, &conn.session_node, &conn.user_id, conn_id).await;
    }
}

/// Tells the session of `user_id` on `node` that this node's connection
/// `conn_id` is gone.
pub async fn forget(ctx: &NodeCtx, node: &str, user_id: &str, conn_id: u64) {
    let me = ctx.node_id();
    if node == me {
        detach_here(ctx, user_id, (me.to_owned(), conn_id)).await;
    } else if let Some(router) = ctx.cluster.get() {
        router.notify_session(
            node,
            c::SessionCall {
                user_id: user_id.to_owned(),
                op: Some(c::session_call::Op::Detach(c::SessionDetach { conn_id })),
            },
        );
    }
}

/// Tells the user's session on this node (if any) that a connection ended.
pub async fn detach_here(ctx: &NodeCtx, user_id: &str, conn: ConnRef) {
    if let Some(s) = ctx.sessions.get(&user_id.to_owned()).await {
        let _ = s.send_message(SessionMsg::Detach { conn });
    }
}

/// Closes every connection of a device, wherever they are (logout).
pub async fn kick_device(ctx: &NodeCtx, user_id: &str, device_id: &str) {
    if let Some(router) = ctx.cluster.get() {
        if let Some(owner) = router.remote_owner(&placement_key(user_id)) {
            router.notify_session(
                &owner,
                c::SessionCall {
                    user_id: user_id.to_owned(),
                    op: Some(c::session_call::Op::Kick(c::KickDevice {
                        device_id: device_id.to_owned(),
                    })),
                },
            );
            return;
        }
    }
    kick_here(ctx, user_id, device_id).await;
}

pub async fn kick_here(ctx: &NodeCtx, user_id: &str, device_id: &str) {
    if let Some(s) = ctx.sessions.get(&user_id.to_owned()).await {
        let _ = s.send_message(SessionMsg::KickDevice {
            device_id: device_id.to_owned(),
        });
    }
}

/// Hands an item to the sessions of the users of `devices`: this node's
/// directly, each other owner's in one delivery (batched per node by the
/// router). A user without a session has no connection anywhere.
pub async fn deliver(ctx: &NodeCtx, devices: &[MemberDevice], item: Outbound) {
    metrics::counter!("hush_deliveries_total").increment(devices.len() as u64);
    let Some(router) = ctx.cluster.get() else {
        return deliver_here(ctx, devices, item).await;
    };
    // One placement for the whole delivery, one lookup per user (a user
    // usually has several devices).
    let placement = router.placement();
    let me = ctx.node_id();
    let mut owner_of: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let mut by_owner: BTreeMap<Option<String>, Vec<MemberDevice>> = BTreeMap::new();
    for d in devices {
        let owner = owner_of.entry(d.user_id.as_str()).or_insert_with(|| {
            placement
                .as_ref()
                .map(|p| p.owner(&placement_key(&d.user_id)))
                .filter(|o| *o != me)
                .map(str::to_owned)
        });
        by_owner.entry(owner.clone()).or_default().push(d.clone());
    }
    for (owner, devices) in by_owner {
        match owner {
            Some(node) => router.send_to_sessions(&node, &devices, &item),
            None => deliver_here(ctx, &devices, item.clone()).await,
        }
    }
}

/// Hands an item to this node's sessions of the users concerned, one
/// message per session (the session forwards to that user's connections).
pub async fn deliver_here(ctx: &NodeCtx, devices: &[MemberDevice], item: Outbound) {
    let mut by_user: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in devices {
        by_user
            .entry(d.user_id.as_str())
            .or_default()
            .push(d.device_id.clone());
    }
    for (user, devices) in by_user {
        if let Some(session) = ctx.sessions.get(&user.to_owned()).await {
            // A session that just stopped has no connections: nothing to do.
            let _ = session.send_message(SessionMsg::Deliver {
                devices,
                item: item.clone(),
            });
        }
    }
}

/// Which of `users` are online, asked of the nodes that own their
/// sessions (following view changes until the router's forward timeout).
pub async fn online_users(ctx: &NodeCtx, users: &BTreeSet<String>) -> ApiResult<BTreeSet<String>> {
    let mut online = BTreeSet::new();
    let Some(router) = ctx.cluster.get() else {
        for u in users {
            if is_online_here(ctx, u).await {
                online.insert(u.clone());
            }
        }
        return Ok(online);
    };
    let mut pending: BTreeSet<String> = users.clone();
    let deadline = tokio::time::Instant::now() + router.forward_timeout();
    loop {
        let mut by_owner: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for u in &pending {
            by_owner
                .entry(router.remote_owner(&placement_key(u)))
                .or_default()
                .push(u.clone());
        }
        let mut retry = BTreeSet::new();
        for (owner, users) in by_owner {
            match owner {
                None => {
                    for u in users {
                        if is_online_here(ctx, &u).await {
                            online.insert(u);
                        }
                    }
                }
                Some(node) => match router.presence_query(&node, users.clone()).await {
                    Ok(answer) => {
                        online.extend(answer.online);
                        retry.extend(answer.not_owned);
                    }
                    Err(_) => retry.extend(users),
                },
            }
        }
        if retry.is_empty() {
            return Ok(online);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "presence owners unreachable; retry",
            ));
        }
        router.wait_for_view_change().await;
        pending = retry;
    }
}

/// The presence co-members were last told, by the user's session on this
/// node (none, or one that stopped, is offline).
pub async fn is_online_here(ctx: &NodeCtx, user_id: &str) -> bool {
    let Some(session) = ctx.sessions.get(&user_id.to_owned()).await else {
        return false;
    };
    matches!(
        session
            .call(
                |reply| SessionMsg::IsOnline { reply },
                Some(Duration::from_secs(5)),
            )
            .await,
        Ok(ractor::rpc::CallResult::Success(true))
    )
}
