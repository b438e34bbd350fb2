//! The inbound side of the mesh: what this node does with the messages
//! other nodes send it, and how it follows view changes.
//!
//! Calls (answered on the same stream):
//! - `GroupCall`: a client request another node forwards to this one, the
//!   group's owner. Refused with `StaleView` (nothing applied) when the
//!   caller's view digest differs, when this node does not own the group in
//!   its view, or when it is shutting down; the caller routes again.
//! - `SessionCall{attach}`: a connection on another node attaches to the
//!   user's session here (refused as stale like a group call).
//! - `PresenceQuery`: which of these users are online (names the users
//!   this node does not own).
//!
//! Pushes (no answer): delivery batches — a group's fan-out for this node's
//! connections of some devices, or from a session elsewhere for connections
//! here (by connection id: a kicked device's close) — and
//! session notices (a connection elsewhere ended; kick a device),
//! `Readmitted` and `PresenceWitness` (session/witness.rs). They are
//! applied even under a different view: a delivery changes no state (each
//! connection drops repeats and fills gaps from the store), and a notice
//! concerns a session wherever it is.
//!
//! Views: on every change this node stops the GroupActors it no longer
//! owns (releasing their leases), moves sessions the same way, and
//! re-attaches its connections whose session moved.

use std::sync::Arc;

use hush_cluster::mesh::StreamMsg;
use hush_proto::cluster::v1 as cluster;
use hush_proto::{server_frame::Body as Reply, v1, ErrorCode, Message as _};
use hush_store::MemberDevice;

use crate::api::{routed_group, Api};
use crate::error::ApiError;
use crate::group::Groups;
use crate::route::{body_kind, outbound_from_proto, session_key, Route};
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use crate::wire::Caller;

/// Serves other nodes' messages.
pub struct Peer {
    route: Arc<Route>,
    api: Arc<Api>,
    sessions: Arc<Sessions>,
    groups: Arc<Groups>,
    shutdown: Shutdown,
    /// The members of the last view followed (to see who is back).
    last_members: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Peer {
    pub fn new(
        route: Arc<Route>,
        api: Arc<Api>,
        sessions: Arc<Sessions>,
        groups: Arc<Groups>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            route,
            api,
            sessions,
            groups,
            shutdown,
            last_members: Default::default(),
        }
    }

    /// Starts serving other nodes' streams and following view changes (a
    /// lone node has neither).
    pub fn start(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let Some(mesh) = self.route.mesh() else {
            return;
        };
        if let Some(mut incoming) = mesh.take_incoming() {
            let peer = self.clone();
            runtime.spawn(async move {
                while let Some(msg) = incoming.recv().await {
                    match msg {
                        StreamMsg::Call {
                            peer: from,
                            payload,
                            reply,
                        } => {
                            let peer = peer.clone();
                            tokio::spawn(async move {
                                let answer = peer.answer(&from, &payload).await;
                                let _ = reply.send(&answer.encode_to_vec()).await;
                            });
                        }
                        StreamMsg::Push {
                            peer: from,
                            payload,
                        } => peer.accept_push(&from, &payload).await,
                    }
                }
            });
        }
        let peer = self.clone();
        let mut view = self.route.view();
        runtime.spawn(async move {
            while view.changed().await.is_ok() {
                peer.follow_view().await;
            }
        });
    }

    /// Answers a call another node made.
    /// `peer` is the node the connection's certificate names; a request
    /// that claims to come from another is refused.
    async fn answer(&self, peer: &str, payload: &[u8]) -> cluster::NodeReply {
        let Ok(request) = cluster::NodeRequest::decode(payload) else {
            return error(ErrorCode::Malformed, "undecodable cluster request");
        };
        if request.from != peer {
            return impostor(peer, &request.from);
        }
        let Some(body) = request.body else {
            return error(ErrorCode::Malformed, "empty cluster request");
        };
        metrics::counter!("hush_cluster_messages_in_total", "kind" => body_kind(&body))
            .increment(1);
        // A different view or a node on its way out: refuse; the caller
        // routes again.
        if request.view_digest != self.route.digest() || self.shutdown.is_shutting_down() {
            return self.stale();
        }
        match body {
            cluster::node_request::Body::GroupCall(call) => self.answer_group_call(call).await,
            cluster::node_request::Body::SessionCall(cluster::SessionCall {
                user_id,
                op: Some(cluster::session_call::Op::Attach(a)),
            }) => {
                if self.route.remote_owner(&session_key(&user_id)).is_some() {
                    return self.stale();
                }
                let conn = (request.from, a.conn_id);
                match self
                    .sessions
                    .accept_attach(conn, &user_id, &a.device_id)
                    .await
                {
                    Ok(()) => cluster::NodeReply { body: None },
                    Err(e) => frame(Reply::Error(e.to_proto())),
                }
            }
            cluster::node_request::Body::PresenceQuery(q) => {
                let mut answer = cluster::PresenceAnswer::default();
                let owners = self.route.owners();
                let (owned, not_owned): (Vec<String>, Vec<String>) = q
                    .user_ids
                    .into_iter()
                    .partition(|user| owners.remote(&session_key(user)).is_none());
                answer.not_owned = not_owned;
                answer.online = self.sessions.online_here(owned);
                cluster::NodeReply {
                    body: Some(cluster::node_reply::Body::Presence(answer)),
                }
            }
            _ => error(ErrorCode::InvalidArgument, "not a call"),
        }
    }

    /// A client request forwarded by the node its client is connected to.
    async fn answer_group_call(&self, call: cluster::GroupCall) -> cluster::NodeReply {
        let Some(body) = call.frame.and_then(|f| f.body) else {
            return error(ErrorCode::Malformed, "empty frame");
        };
        let Some(group_id) = routed_group(&body) else {
            return error(ErrorCode::InvalidArgument, "not a group request");
        };
        if self.route.remote_owner(group_id).is_some() {
            return self.stale();
        }
        let caller = Caller {
            user_id: call.user_id,
            device_id: call.device_id,
        };
        match self.api.serve_here(&caller, body).await {
            Ok(Some(body)) => frame(body),
            Ok(None) => cluster::NodeReply { body: None },
            Err(e) => frame(Reply::Error(e.to_proto())),
        }
    }

    fn stale(&self) -> cluster::NodeReply {
        metrics::counter!("hush_cluster_stale_view_rejections_total").increment(1);
        cluster::NodeReply {
            body: Some(cluster::node_reply::Body::StaleView(cluster::StaleView {
                view_digest: self.route.digest(),
            })),
        }
    }

    /// Applies a push from another node: a delivery batch, or a notice for
    /// a session here.
    async fn accept_push(&self, peer: &str, payload: &[u8]) {
        let Ok(request) = cluster::NodeRequest::decode(payload) else {
            metrics::counter!("hush_cluster_bad_messages_total").increment(1);
            return;
        };
        if request.from != peer {
            impostor(peer, &request.from);
            return;
        }
        if request.view_digest != self.route.digest() {
            // Applied anyway (see the module docs).
            metrics::counter!("hush_cluster_stale_view_pushes_total").increment(1);
        }
        let from = request.from;
        match request.body {
            Some(cluster::node_request::Body::Deliver(batch)) => {
                metrics::counter!("hush_cluster_messages_in_total", "kind" => "deliver")
                    .increment(1);
                for d in batch.items {
                    self.accept_delivery(&from, d).await;
                }
            }
            Some(cluster::node_request::Body::SessionCall(call)) => {
                metrics::counter!("hush_cluster_messages_in_total", "kind" => "session_notice")
                    .increment(1);
                match call.op {
                    Some(cluster::session_call::Op::Detach(d)) => {
                        self.sessions
                            .forget_conn_here(&call.user_id, (from, d.conn_id))
                            .await
                    }
                    Some(cluster::session_call::Op::Kick(k)) => {
                        self.sessions.kick_here(&call.user_id, &k.device_id).await
                    }
                    _ => metrics::counter!("hush_cluster_bad_messages_total").increment(1),
                }
            }
            Some(cluster::node_request::Body::Readmitted(_)) => {
                metrics::counter!("hush_cluster_messages_in_total", "kind" => "readmitted")
                    .increment(1);
                tracing::info!(peer = %from, "readmitted by a peer: every connection resyncs");
                self.sessions.resync_here();
            }
            Some(cluster::node_request::Body::PresenceWitness(w)) => {
                metrics::counter!("hush_cluster_messages_in_total", "kind" => "presence_witness")
                    .increment(1);
                self.sessions.witness(&from, w.online, w.offline);
            }
            _ => metrics::counter!("hush_cluster_bad_messages_total").increment(1),
        }
    }

    /// One delivery: a group's fan-out for this node's connections of some
    /// devices, or from a session elsewhere for connections here (by
    /// connection id).
    async fn accept_delivery(&self, from: &str, d: cluster::Delivery) {
        let Some(item) = d.item else {
            return;
        };
        let Some(target) = d.conns else {
            if let Some(item) = outbound_from_proto(item) {
                let devices: Vec<MemberDevice> = d
                    .devices
                    .into_iter()
                    .map(|r| MemberDevice {
                        user_id: r.user_id,
                        device_id: r.device_id,
                    })
                    .collect();
                self.sessions.deliver_local(&devices, &item).await;
            }
            return;
        };
        let conns = self.sessions.conns();
        let item = match item {
            cluster::delivery::Item::Close(_) => {
                for id in target.conn_ids {
                    conns.remove(id);
                }
                return;
            }
            other => match outbound_from_proto(other) {
                Some(item) => item,
                None => return,
            },
        };
        // Those gone here: the session must stop counting them.
        for id in conns.write_many(target.conn_ids.iter().copied(), &item) {
            self.route.notify_session(
                from,
                cluster::SessionCall {
                    user_id: target.user_id.clone(),
                    op: Some(cluster::session_call::Op::Detach(cluster::SessionDetach {
                        conn_id: id,
                    })),
                },
            );
        }
    }

    /// Follows a view change: groups and sessions this node no longer owns
    /// move, and its connections follow their sessions.
    async fn follow_view(&self) {
        let Some(placement) = self.route.placement() else {
            return;
        };
        self.route.forget_departed_peers(placement.view());
        // Peers that are members again: whatever was sent to their users
        // while this node did not count them went to sessions here.
        let members = placement.view().members.clone();
        let added: Vec<String> = {
            let mut last = self.last_members.lock().unwrap_or_else(|p| p.into_inner());
            let added = members.difference(&last).cloned().collect();
            *last = members;
            added
        };
        for peer in added.iter().filter(|p| p.as_str() != self.route.me()) {
            self.route.tell_readmitted(peer);
        }
        self.groups.follow_view(&placement, self.route.me()).await;
        self.sessions.follow_view(&placement).await;
    }
}

fn frame(body: Reply) -> cluster::NodeReply {
    cluster::NodeReply {
        body: Some(cluster::node_reply::Body::Frame(v1::ServerFrame {
            request_id: 0,
            body: Some(body),
        })),
    }
}

fn error(code: ErrorCode, msg: &str) -> cluster::NodeReply {
    frame(Reply::Error(ApiError::new(code, msg).to_proto()))
}

/// A request whose `from` is not the node its certificate names: counted,
/// logged and refused (FORBIDDEN).
fn impostor(peer: &str, claimed: &str) -> cluster::NodeReply {
    metrics::counter!("hush_cluster_impostor_requests_total").increment(1);
    tracing::warn!(%peer, %claimed, "a cluster request claims another sender; refused");
    error(
        ErrorCode::Forbidden,
        "the request's sender is not the certificate's node",
    )
}
