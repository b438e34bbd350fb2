//! SessionActor: one per online user on this node. It knows the user's live
//! connections (one per device connection) and forwards group events and
//! inbox items to the connections of the devices they are for.
//!
//! Bounds: each connection has a bounded outbound queue
//! (`limits.send_buffer_frames`). The session never waits on a connection: a
//! full queue means a slow reader, and that connection is cut off (4001)
//! while every other connection keeps going.
//!
//! Presence: the session is the user's presence on this node. Its first
//! connection makes the user online (pushed to co-members, see
//! `presence.rs`). When its last connection goes, it waits
//! `actors.presence_grace_ms` (on the node's clock, checked by a ticker)
//! before it announces offline and passivates; a connection attaching in
//! the meantime cancels that, so a quick reconnect shows no change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hush_proto::ErrorCode;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

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
}

/// A connection as the session sees it.
pub struct ConnHandle {
    pub device_id: String,
    pub tx: mpsc::Sender<Outbound>,
    /// Set when the session cut the connection off (slow reader).
    pub overflowed: Arc<AtomicBool>,
}

pub enum SessionMsg {
    Attach {
        conn_id: u64,
        conn: ConnHandle,
        reply: RpcReplyPort<ApiResult<()>>,
    },
    Detach {
        conn_id: u64,
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
}

pub struct SessionActor {
    pub ctx: Arc<NodeCtx>,
}

pub struct SessionState {
    user_id: String,
    conns: HashMap<u64, ConnHandle>,
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
                conn_id,
                conn,
                reply,
            } => {
                let result = if state.conns.len() >= self.ctx.config.limits.max_connections_per_user
                {
                    Err(ApiError::new(
                        ErrorCode::TooManyConnections,
                        format!(
                            "at most {} connections per user",
                            self.ctx.config.limits.max_connections_per_user
                        ),
                    ))
                } else {
                    state.conns.insert(conn_id, conn);
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
            SessionMsg::Detach { conn_id } => {
                state.conns.remove(&conn_id);
                if state.conns.is_empty() {
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
                let mut cut = Vec::new();
                for (id, conn) in &state.conns {
                    if !devices.iter().any(|d| d == &conn.device_id) {
                        continue;
                    }
                    match conn.tx.try_send(item.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            conn.overflowed.store(true, Ordering::SeqCst);
                            cut.push(*id);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => cut.push(*id),
                    }
                }
                for id in cut {
                    // Dropping the sender ends the connection's queue; a
                    // slow one closes itself with 4001 (slow consumer), a
                    // closed one is just forgotten.
                    let Some(conn) = state.conns.remove(&id) else {
                        continue;
                    };
                    if conn.overflowed.load(Ordering::SeqCst) {
                        metrics::counter!("hush_slow_consumers_cut_total").increment(1);
                        tracing::info!(conn_id = id, "cut off slow reader");
                    }
                }
                if state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
                }
            }
            SessionMsg::KickDevice { device_id } => {
                state.conns.retain(|_, c| c.device_id != device_id);
                if state.conns.is_empty() {
                    self.on_idle(&myself, state).await;
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
