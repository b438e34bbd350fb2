//! SessionActor: one per online user on this node. It knows the user's live
//! connections (one per device connection) and forwards group events and
//! inbox items to the connections of the devices they are for.
//!
//! Bounds: each connection has a bounded outbound queue
//! (`limits.send_buffer_frames`). The session never waits on a connection: a
//! full queue means a slow reader, and that connection is cut off (4001)
//! while every other connection keeps going. The session passivates as soon
//! as its last connection detaches.

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
}

pub struct SessionActor {
    pub ctx: Arc<NodeCtx>,
}

pub struct SessionState {
    user_id: String,
    conns: HashMap<u64, ConnHandle>,
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
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("hush_session_actors").decrement(1.0);
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
                let _ = reply.send(result);
                if state.conns.is_empty() {
                    myself.stop(None);
                }
            }
            SessionMsg::Detach { conn_id } => {
                state.conns.remove(&conn_id);
                if state.conns.is_empty() {
                    myself.stop(None);
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
                    myself.stop(None);
                }
            }
            SessionMsg::KickDevice { device_id } => {
                state.conns.retain(|_, c| c.device_id != device_id);
                if state.conns.is_empty() {
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }
}
