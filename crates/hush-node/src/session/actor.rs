//! SessionActor: one user's connections across the cluster, and the user's
//! presence.
//!
//! It knows where each of the user's connections is — this node or another
//! — for what only it decides: how many a user may have, kicks, presence.
//! Group events, inbox items and live-only frames do not pass through it:
//! a fan-out writes to the connections of the member devices on each node
//! (`conns.rs`). Messages are handled one at a time, in mailbox order
//! (ractor mailboxes are unbounded; the session gets a few per connection,
//! not one per delivery).
//!
//! Presence: the session is the user's presence in the whole cluster. Its
//! first connection makes the user online (pushed to co-members, see
//! `presence.rs`). When its last connection goes, it waits
//! `actors.presence_grace_ms` (on the node's clock, checked by a ticker)
//! before it announces offline and passivates; a connection attaching in
//! the meantime cancels that, so a quick reconnect shows no change.

use std::collections::HashMap;
use std::sync::Arc;

use hush_proto::ErrorCode;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Sessions;
use crate::error::{ApiError, ApiResult};
use crate::wire::ConnRef;

pub enum SessionMsg {
    Attach {
        conn: ConnRef,
        device_id: String,
        reply: RpcReplyPort<ApiResult<()>>,
    },
    /// A connection ended (or a delivery found it gone): forget it.
    Detach { conn: ConnRef },
    /// Disconnect every connection of a device (logout, revoked token).
    KickDevice { device_id: String },
    /// Periodic while the last connection is gone: announce offline once the
    /// grace period is over, then passivate.
    Tick,
    /// The view changed and still places the user here: forget the
    /// connections of nodes that are no longer members.
    ViewChanged { members: Vec<String> },
    /// The view places the user on another node now: stop. The
    /// connections re-attach there.
    Moved,
}

/// While waiting out the presence grace, the ticker checks this many times
/// per grace period, within these bounds (ms).
const TICKS_PER_GRACE: u64 = 4;
const TICK_MS_BOUNDS: (u64, u64) = (10, 250);

pub struct SessionActor {
    pub(super) sessions: Arc<Sessions>,
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
        self.sessions.index.remove(&state.user_id, myself.get_id());
        self.sessions
            .dir
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
        // The presence steps (store reads, messages to group actors) are
        // boxed: ractor's task for the session is sized for the largest
        // `handle` future, and every online user keeps one.
        match msg {
            SessionMsg::Attach {
                conn,
                device_id,
                reply,
            } => {
                let limit = self.sessions.limits.max_connections_per_user;
                let result = if state.conns.len() >= limit && !state.conns.contains_key(&conn) {
                    Err(ApiError::new(
                        ErrorCode::TooManyConnections,
                        format!("at most {limit} connections per user"),
                    ))
                } else {
                    state.conns.insert(conn, device_id);
                    self.publish(&myself, state);
                    Ok(())
                };
                let attached = result.is_ok();
                let _ = reply.send(result);
                if attached {
                    Box::pin(self.on_connected(&myself, state)).await;
                } else if state.conns.is_empty() {
                    Box::pin(self.on_idle(&myself, state)).await;
                }
            }
            SessionMsg::Detach { conn } => {
                if state.conns.remove(&conn).is_some() {
                    self.publish(&myself, state);
                    if state.conns.is_empty() {
                        Box::pin(self.on_idle(&myself, state)).await;
                    }
                }
            }
            SessionMsg::Tick => {
                let now = self.sessions.clock.now_ms();
                let due = state.offline_at.is_some_and(|at| now >= at);
                if state.conns.is_empty() && due {
                    Box::pin(self.go_offline(&myself, state)).await;
                }
            }
            SessionMsg::KickDevice { device_id } => {
                let sessions = &self.sessions;
                let me = sessions.route.me();
                state.conns.retain(|conn, device| {
                    if *device != device_id {
                        return true;
                    }
                    if conn.0 == me {
                        sessions.conns.remove(conn.1);
                    } else {
                        sessions
                            .route
                            .close_conns(&conn.0, &state.user_id, vec![conn.1]);
                    }
                    false
                });
                self.publish(&myself, state);
                if state.conns.is_empty() {
                    Box::pin(self.on_idle(&myself, state)).await;
                }
            }
            SessionMsg::ViewChanged { members } => {
                let me = self.sessions.route.me();
                state
                    .conns
                    .retain(|(node, _), _| node == me || members.contains(node));
                self.publish(&myself, state);
                if state.conns.is_empty() {
                    Box::pin(self.on_idle(&myself, state)).await;
                }
            }
            SessionMsg::Moved => {
                if state.conns.is_empty() {
                    // Nobody re-attaches: say offline now, not never.
                    Box::pin(self.go_offline(&myself, state)).await;
                } else {
                    myself.stop(Some("session moved to another node".into()));
                }
            }
        }
        Ok(())
    }
}

impl SessionActor {
    /// Publishes the presence for `GetPresence` (`index.rs`).
    fn publish(&self, myself: &ActorRef<SessionMsg>, state: &SessionState) {
        self.sessions
            .index
            .publish(&state.user_id, myself.get_id(), state.online);
    }

    /// A connection attached: cancel a pending offline, or announce online.
    async fn on_connected(&self, myself: &ActorRef<SessionMsg>, state: &mut SessionState) {
        if state.offline_at.take().is_some() {
            if let Some(t) = state.ticker.take() {
                t.abort();
            }
        }
        if !state.online {
            state.online = true;
            self.publish(myself, state);
            self.sessions.announce(&state.user_id, true).await;
        }
    }

    /// The last connection went: start the grace period (or, without one,
    /// go offline now).
    async fn on_idle(&self, myself: &ActorRef<SessionMsg>, state: &mut SessionState) {
        if state.offline_at.is_some() {
            return; // already waiting
        }
        let grace = self.sessions.limits.presence_grace_ms;
        if !state.online || grace == 0 || self.sessions.shutdown.is_shutting_down() {
            self.go_offline(myself, state).await;
            return;
        }
        state.offline_at = Some(self.sessions.clock.now_ms().saturating_add(grace));
        let period = std::time::Duration::from_millis(
            (grace / TICKS_PER_GRACE).clamp(TICK_MS_BOUNDS.0, TICK_MS_BOUNDS.1),
        );
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
            self.publish(myself, state);
            self.sessions.announce(&state.user_id, false).await;
        }
        myself.stop(None);
    }
}
