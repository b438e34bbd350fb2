//! The cluster router: which node serves a group's requests, and how fan-out
//! reaches the clients connected to other nodes.
//!
//! Placement. A group's GroupActor lives on the owner of the group id's
//! shard in the live view ([`hush_cluster::Placement`]). A client may be
//! connected to any node: its node answers everything that needs no group
//! actor itself (the store is shared), and forwards `SendMessage`,
//! `SendCommit` and `SendProposal` to the group's owner as a
//! [`GroupCall`](c::GroupCall) on a QUIC stream. The owner activates the
//! actor on first use (rebuilt from the store, under a store lease).
//!
//! Views. Every node-to-node message carries the digest of the member set
//! its sender routed by. An owner whose view differs refuses a call with
//! `StaleView` (it never applies it); so does a node that is shutting down.
//! The caller then waits for its own view to change (at most a short pause,
//! in case the other side is the one behind) and routes again, until
//! `cluster.forward_timeout_ms`; after that the client gets UNAVAILABLE and
//! retries. Retrying is safe: a message's `client_msg_id` makes a repeat
//! return the original seq, and the store's fence and epoch check decide
//! every write whatever any node believes (see ARCHITECTURE.md).
//!
//! When the view changes, a node stops every local GroupActor it no longer
//! owns; stopping releases the group's lease, so the new owner can take it
//! at once (after a crash, the new owner waits out the dead node's lease).
//!
//! Sessions. A user's SessionActor lives on the owner of the key
//! `u/<user_id>`, placed like a group. A connection on any node attaches to
//! it with a [`SessionCall`](c::SessionCall) (refused as stale like a group
//! call, and routed again); the node keeps the connection's queue in its
//! connection table (`conns.rs`). When the view changes, sessions move like
//! groups, and every node re-attaches its connections whose session moved
//! and has them read what they may have missed from the store.
//!
//! Fan-out, two hops, each batched per destination node. An accepted entry
//! goes to the session of each member user: this node's directly, each
//! other node's in one [`Delivery`](c::Delivery) (by device) per owner
//! node. A session writes to its connections: this node's directly, each
//! other node's in one delivery addressed to connection ids. Each peer has
//! a queue and a sender task that takes everything queued at that moment
//! into one [`DeliverBatch`](c::DeliverBatch) on one QUIC stream, so batches
//! grow with load. Deliveries are pushes: the receiver applies them even
//! under a different view, because a delivery changes no state (each
//! connection drops repeats and fills gaps from the store). A full peer
//! queue (`cluster.peer_queue`) drops the delivery and counts it; the store
//! remains the truth, read by the next gap fill or sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hush_cluster::mesh::{Mesh, StreamMsg};
use hush_cluster::{Placement, View};
use hush_proto::cluster::v1 as c;
use hush_proto::{client_frame::Body as C, server_frame::Body as S, v1, ErrorCode, Message as _};
use hush_store::MemberDevice;
use tokio::sync::{mpsc, watch};

use crate::ctx::NodeCtx;
use crate::error::{ApiError, ApiResult};
use crate::group::Caller;
use crate::session::{self, Outbound, SessionMsg};

/// Most bytes of deliveries one batch takes from a peer queue.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Routes group requests to their owners and fan-out to the other nodes.
pub struct Router {
    me: String,
    mesh: Arc<Mesh>,
    view: watch::Receiver<View>,
    placement: RwLock<Option<Arc<Placement>>>,
    peers: Mutex<HashMap<String, mpsc::Sender<c::Delivery>>>,
    runtime: tokio::runtime::Handle,
    forward_timeout: Duration,
    peer_queue: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The group a request must be sequenced by, for the requests that go to a
/// GroupActor.
pub fn routed_group(body: &C) -> Option<&[u8]> {
    match body {
        C::SendMessage(r) => Some(&r.group_id),
        C::SendCommit(r) => Some(&r.group_id),
        C::SendProposal(r) => Some(&r.group_id),
        C::SendEphemeral(r) => Some(&r.group_id),
        _ => None,
    }
}

impl Router {
    pub fn new(
        mesh: Arc<Mesh>,
        runtime: tokio::runtime::Handle,
        forward_timeout: Duration,
        peer_queue: usize,
    ) -> Self {
        Self {
            me: mesh.me().name.clone(),
            view: mesh.view(),
            mesh,
            placement: RwLock::new(None),
            peers: Mutex::default(),
            runtime,
            forward_timeout,
            peer_queue: peer_queue.max(1),
        }
    }

    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// The placement for the current view (recomputed when it changed).
    pub fn placement(&self) -> Option<Arc<Placement>> {
        {
            // The common case, per routed request and per delivery: the
            // view is unchanged, compared without copying it.
            let view = self.view.borrow();
            if let Some(p) = &*self.placement.read().unwrap_or_else(|p| p.into_inner()) {
                if *p.view() == *view {
                    return Some(p.clone());
                }
            }
        }
        let view = self.view.borrow().clone();
        let p = Placement::new(view).map(Arc::new);
        *self.placement.write().unwrap_or_else(|p| p.into_inner()) = p.clone();
        p
    }

    /// The node that owns `key` in the current view, if it is not this one.
    pub fn remote_owner(&self, key: &[u8]) -> Option<String> {
        let p = self.placement()?;
        let owner = p.owner(key);
        (owner != self.me).then(|| owner.to_string())
    }

    fn digest(&self) -> u64 {
        self.view.borrow().digest()
    }

    /// How long a routed call follows view changes before it gives up.
    pub fn forward_timeout(&self) -> Duration {
        self.forward_timeout
    }

    /// Waits (briefly) for this node's view to change: the pause bounds
    /// the wait for when the other side is the one behind.
    pub async fn wait_for_view_change(&self) {
        let mut view = self.view.clone();
        view.borrow_and_update();
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
    }

    /// Serves `body` for `caller` on the group's owner, following view
    /// changes until the owner answers or `forward_timeout` passes.
    pub async fn forward(
        &self,
        ctx: &Arc<NodeCtx>,
        caller: &Caller,
        group_id: &[u8],
        body: C,
    ) -> ApiResult<Option<S>> {
        let call = c::node_request::Body::GroupCall(c::GroupCall {
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            frame: Some(v1::ClientFrame {
                request_id: 0,
                body: Some(body.clone()),
            }),
        });
        match self.call_owner(group_id, call).await? {
            None => crate::gateway::dispatch::dispatch_here(ctx, caller, body).await,
            Some((owner, reply)) => match reply.body {
                Some(c::node_reply::Body::Frame(frame)) => match frame.body {
                    Some(S::Error(e)) => Err(ApiError::from_proto(e)),
                    other => Ok(other),
                },
                None => Ok(None),
                Some(_) => Err(ApiError::internal(
                    "cluster reply",
                    format!("unexpected answer from {owner}"),
                )),
            },
        }
    }

    /// Sends `body` to the node that owns `key`, following view changes:
    /// a refusal (StaleView) or an unreachable owner waits for this node's
    /// view to change and routes again, until `forward_timeout` (then
    /// UNAVAILABLE). `None`: this node owns the key now, serve it here.
    pub async fn call_owner(
        &self,
        key: &[u8],
        body: c::node_request::Body,
    ) -> ApiResult<Option<(String, c::NodeReply)>> {
        let kind = body_kind(&body);
        let deadline = tokio::time::Instant::now() + self.forward_timeout;
        let mut view = self.view.clone();
        view.borrow_and_update();
        loop {
            let Some(owner) = self.remote_owner(key) else {
                return Ok(None);
            };
            let request = c::NodeRequest {
                from: self.me.clone(),
                view_digest: self.digest(),
                body: Some(body.clone()),
            };
            metrics::counter!("hush_cluster_messages_out_total", "kind" => kind).increment(1);
            // A call to a node that drops out of the view fails at once (the
            // mesh closes its connection), not at the QUIC idle timeout.
            match self.mesh.call(&owner, &request.encode_to_vec()).await {
                Ok(bytes) => match c::NodeReply::decode(bytes.as_slice()) {
                    Ok(c::NodeReply {
                        body: Some(c::node_reply::Body::StaleView(_)),
                    }) => {
                        metrics::counter!("hush_cluster_rerouted_total", "why" => "stale_view")
                            .increment(1);
                        tracing::debug!(peer = %owner, "owner refused a stale view; rerouting");
                    }
                    Ok(reply) => return Ok(Some((owner, reply))),
                    Err(_) => {
                        return Err(ApiError::internal(
                            "cluster reply",
                            format!("undecodable answer from {owner}"),
                        ))
                    }
                },
                Err(e) => {
                    metrics::counter!("hush_cluster_rerouted_total", "why" => "unreachable")
                        .increment(1);
                    tracing::debug!(peer = %owner, error = %e, "owner unreachable; rerouting");
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "owner unreachable; retry",
                ));
            }
            let pause = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(pause, view.changed()).await;
        }
    }

    /// Asks `node` which of `users` are online (one call, no rerouting:
    /// the answer names the users it does not own).
    pub async fn presence_query(
        &self,
        node: &str,
        users: Vec<String>,
    ) -> ApiResult<c::PresenceAnswer> {
        let request = c::NodeRequest {
            from: self.me.clone(),
            view_digest: self.digest(),
            body: Some(c::node_request::Body::PresenceQuery(c::PresenceQuery {
                user_ids: users,
            })),
        };
        metrics::counter!("hush_cluster_messages_out_total", "kind" => "presence_query")
            .increment(1);
        let bytes = self
            .mesh
            .call(node, &request.encode_to_vec())
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("{node}: {e}")))?;
        match c::NodeReply::decode(bytes.as_slice()) {
            Ok(c::NodeReply {
                body: Some(c::node_reply::Body::Presence(answer)),
            }) => Ok(answer),
            _ => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("{node} did not answer the presence query"),
            )),
        }
    }

    /// Pushes a notice to the session of a user on `node` (detach, kick).
    /// Best effort: a node that is gone took the session with it.
    pub fn notify_session(&self, node: &str, call: c::SessionCall) {
        let request = c::NodeRequest {
            from: self.me.clone(),
            view_digest: self.digest(),
            body: Some(c::node_request::Body::SessionCall(call)),
        };
        let mesh = self.mesh.clone();
        let node = node.to_owned();
        metrics::counter!("hush_cluster_messages_out_total", "kind" => "session_notice")
            .increment(1);
        self.runtime.spawn(async move {
            if let Err(e) = mesh.push(&node, &request.encode_to_vec()).await {
                tracing::debug!(peer = %node, error = %e, "session notice not delivered");
            }
        });
    }

    /// Answers a call another node made.
    async fn answer(&self, ctx: &Arc<NodeCtx>, payload: &[u8]) -> c::NodeReply {
        let frame = |body| c::NodeReply {
            body: Some(c::node_reply::Body::Frame(v1::ServerFrame {
                request_id: 0,
                body: Some(body),
            })),
        };
        let error = |code, msg: &str| frame(S::Error(ApiError::new(code, msg).to_proto()));
        let stale = || {
            metrics::counter!("hush_cluster_stale_view_rejections_total").increment(1);
            c::NodeReply {
                body: Some(c::node_reply::Body::StaleView(c::StaleView {
                    view_digest: self.digest(),
                })),
            }
        };
        let Ok(request) = c::NodeRequest::decode(payload) else {
            return error(ErrorCode::Malformed, "undecodable cluster request");
        };
        let Some(body) = request.body else {
            return error(ErrorCode::Malformed, "empty cluster request");
        };
        metrics::counter!("hush_cluster_messages_in_total", "kind" => body_kind(&body))
            .increment(1);
        // A different view or a node on its way out: refuse; the caller
        // routes again.
        if request.view_digest != self.digest() || ctx.is_shutting_down() {
            return stale();
        }
        match body {
            c::node_request::Body::GroupCall(call) => {
                let Some(body) = call.frame.and_then(|f| f.body) else {
                    return error(ErrorCode::Malformed, "empty frame");
                };
                let Some(group_id) = routed_group(&body) else {
                    return error(ErrorCode::InvalidArgument, "not a group request");
                };
                if self.remote_owner(group_id).is_some() {
                    return stale();
                }
                let caller = Caller {
                    user_id: call.user_id,
                    device_id: call.device_id,
                };
                match crate::gateway::dispatch::dispatch_here(ctx, &caller, body).await {
                    Ok(Some(body)) => frame(body),
                    Ok(None) => c::NodeReply { body: None },
                    Err(e) => frame(S::Error(e.to_proto())),
                }
            }
            c::node_request::Body::SessionCall(c::SessionCall {
                user_id,
                op: Some(c::session_call::Op::Attach(a)),
            }) => {
                if self
                    .remote_owner(&session::placement_key(&user_id))
                    .is_some()
                {
                    return stale();
                }
                let conn = (request.from, a.conn_id);
                match session::attach_here(ctx, conn, &user_id, &a.device_id).await {
                    Ok(()) => c::NodeReply { body: None },
                    Err(e) => frame(S::Error(e.to_proto())),
                }
            }
            c::node_request::Body::PresenceQuery(q) => {
                let mut answer = c::PresenceAnswer::default();
                for user in q.user_ids {
                    if self.remote_owner(&session::placement_key(&user)).is_some() {
                        answer.not_owned.push(user);
                    } else if session::is_online_here(ctx, &user).await {
                        answer.online.push(user);
                    }
                }
                c::NodeReply {
                    body: Some(c::node_reply::Body::Presence(answer)),
                }
            }
            _ => error(ErrorCode::InvalidArgument, "not a call"),
        }
    }

    /// Applies a push from another node: a delivery batch, or a notice for
    /// a session here.
    async fn accept_push(&self, ctx: &Arc<NodeCtx>, payload: &[u8]) {
        let Ok(request) = c::NodeRequest::decode(payload) else {
            metrics::counter!("hush_cluster_bad_messages_total").increment(1);
            return;
        };
        if request.view_digest != self.digest() {
            // Applied anyway: a delivery changes no timeline state, and a
            // notice concerns a session wherever it is (see module docs).
            metrics::counter!("hush_cluster_stale_view_pushes_total").increment(1);
        }
        let from = request.from;
        match request.body {
            Some(c::node_request::Body::Deliver(batch)) => {
                metrics::counter!("hush_cluster_messages_in_total", "kind" => "deliver")
                    .increment(1);
                for d in batch.items {
                    self.accept_delivery(ctx, &from, d).await;
                }
            }
            Some(c::node_request::Body::SessionCall(call)) => {
                metrics::counter!("hush_cluster_messages_in_total", "kind" => "session_notice")
                    .increment(1);
                match call.op {
                    Some(c::session_call::Op::Detach(d)) => {
                        session::detach_here(ctx, &call.user_id, (from, d.conn_id)).await
                    }
                    Some(c::session_call::Op::Kick(k)) => {
                        session::kick_here(ctx, &call.user_id, &k.device_id).await
                    }
                    _ => metrics::counter!("hush_cluster_bad_messages_total").increment(1),
                }
            }
            _ => metrics::counter!("hush_cluster_bad_messages_total").increment(1),
        }
    }

    /// One delivery: for the sessions here (by device), or from a session
    /// elsewhere for connections here (by connection id).
    async fn accept_delivery(&self, ctx: &Arc<NodeCtx>, from: &str, d: c::Delivery) {
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
                session::deliver_here(ctx, &devices, item).await;
            }
            return;
        };
        let item = match item {
            c::delivery::Item::Close(_) => {
                for id in target.conn_ids {
                    ctx.conns.remove(id);
                }
                return;
            }
            other => match outbound_from_proto(other) {
                Some(item) => item,
                None => return,
            },
        };
        for id in target.conn_ids {
            if !ctx.conns.write(id, item.clone()) {
                // Gone here: the session must stop counting it.
                self.notify_session(
                    from,
                    c::SessionCall {
                        user_id: target.user_id.clone(),
                        op: Some(c::session_call::Op::Detach(c::SessionDetach {
                            conn_id: id,
                        })),
                    },
                );
            }
        }
    }

    /// Queues an item for the sessions on `node` of the users of `devices`.
    pub fn send_to_sessions(&self, node: &str, devices: &[MemberDevice], item: &Outbound) {
        let Some(item) = outbound_to_proto(item) else {
            return;
        };
        self.enqueue(
            node,
            c::Delivery {
                devices: devices
                    .iter()
                    .map(|d| c::DeviceRef {
                        user_id: d.user_id.clone(),
                        device_id: d.device_id.clone(),
                    })
                    .collect(),
                item: Some(item),
                conns: None,
            },
        );
    }

    /// Queues an item for connections on `node` of `user_id`'s session here.
    pub fn send_to_conns(&self, node: &str, user_id: &str, conn_ids: Vec<u64>, item: &Outbound) {
        if let Some(item) = outbound_to_proto(item) {
            self.enqueue_for_conns(node, user_id, conn_ids, item);
        }
    }

    /// Closes connections on `node` (their device logged out).
    pub fn close_conns(&self, node: &str, user_id: &str, conn_ids: Vec<u64>) {
        self.enqueue_for_conns(
            node,
            user_id,
            conn_ids,
            c::delivery::Item::Close(c::CloseItem {}),
        );
    }

    fn enqueue_for_conns(
        &self,
        node: &str,
        user_id: &str,
        conn_ids: Vec<u64>,
        item: c::delivery::Item,
    ) {
        self.enqueue(
            node,
            c::Delivery {
                devices: Vec::new(),
                item: Some(item),
                conns: Some(c::ConnTarget {
                    user_id: user_id.to_owned(),
                    conn_ids,
                }),
            },
        );
    }

    /// Puts a delivery in `peer`'s queue; its sender task batches
    /// everything queued into one stream. A full queue drops it.
    fn enqueue(&self, peer: &str, delivery: c::Delivery) {
        if !self.view.borrow().members.iter().any(|m| m == peer) {
            metrics::counter!("hush_cluster_deliveries_dropped_total", "why" => "not_a_member")
                .increment(1);
            return;
        }
        let mut queues = lock(&self.peers);
        let tx = match queues.get(peer) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let tx = self.spawn_peer_sender(peer.to_owned());
                queues.insert(peer.to_owned(), tx.clone());
                tx
            }
        };
        drop(queues);
        if tx.try_send(delivery).is_err() {
            metrics::counter!("hush_cluster_deliveries_dropped_total", "why" => "queue_full")
                .increment(1);
            tracing::warn!(%peer, "peer delivery queue full; delivery dropped");
        }
    }

    /// The task that sends one peer its deliveries, batched.
    fn spawn_peer_sender(&self, peer: String) -> mpsc::Sender<c::Delivery> {
        let (tx, mut rx) = mpsc::channel::<c::Delivery>(self.peer_queue);
        let mesh = self.mesh.clone();
        let me = self.me.clone();
        let view = self.view.clone();
        self.runtime.spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut bytes = first.encoded_len();
                let mut items = vec![first];
                while bytes < MAX_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(d) => {
                            bytes += d.encoded_len();
                            items.push(d);
                        }
                        Err(_) => break,
                    }
                }
                let n = items.len();
                metrics::histogram!("hush_cluster_batch_deliveries").record(n as f64);
                metrics::counter!("hush_cluster_messages_out_total", "kind" => "deliver")
                    .increment(1);
                let request = c::NodeRequest {
                    from: me.clone(),
                    view_digest: view.borrow().digest(),
                    body: Some(c::node_request::Body::Deliver(c::DeliverBatch { items })),
                };
                if let Err(e) = mesh.push(&peer, &request.encode_to_vec()).await {
                    metrics::counter!("hush_cluster_deliveries_dropped_total", "why" => "unreachable")
                        .increment(n as u64);
                    tracing::debug!(%peer, error = %e, deliveries = n, "batch not delivered");
                }
            }
        });
        tx
    }

    /// Starts serving other nodes' streams and following view changes.
    pub fn start(self: &Arc<Self>, ctx: &Arc<NodeCtx>) {
        if let Some(mut incoming) = self.mesh.take_incoming() {
            let router = self.clone();
            let ctx = ctx.clone();
            self.runtime.spawn(async move {
                while let Some(msg) = incoming.recv().await {
                    match msg {
                        StreamMsg::Call { payload, reply } => {
                            let router = router.clone();
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                let answer = router.answer(&ctx, &payload).await;
                                let _ = reply.send(&answer.encode_to_vec()).await;
                            });
                        }
                        StreamMsg::Push { payload } => router.accept_push(&ctx, &payload).await,
                    }
                }
            });
        }
        let router = self.clone();
        let ctx = ctx.clone();
        let mut view = self.view.clone();
        self.runtime.spawn(async move {
            while view.changed().await.is_ok() {
                router.hand_off(&ctx).await;
            }
        });
    }

    /// Follows a view change: stops the local GroupActors of groups this
    /// node no longer owns (each releases its lease as it stops, so the new
    /// owner can take over), moves sessions the same way, and re-attaches
    /// this node's connections whose sessions moved.
    async fn hand_off(&self, ctx: &Arc<NodeCtx>) {
        let Some(placement) = self.placement() else {
            return;
        };
        lock(&self.peers).retain(|name, _| placement.view().members.contains(name));
        for (group_id, actor) in ctx.groups.entries().await {
            if placement.owner(&group_id) != self.me {
                metrics::counter!("hush_cluster_rehomes_total", "actor" => "group").increment(1);
                tracing::info!(group = %hex::encode(&group_id), "group moved to another node");
                actor.stop(Some("group moved to another node".into()));
            }
        }
        let members = placement.view().members.iter().cloned().collect::<Vec<_>>();
        for (user_id, actor) in ctx.sessions.entries().await {
            if placement.owner(&session::placement_key(&user_id)) != self.me {
                metrics::counter!("hush_cluster_rehomes_total", "actor" => "session").increment(1);
                let _ = actor.send_message(SessionMsg::Moved);
            } else {
                let _ = actor.send_message(SessionMsg::ViewChanged {
                    members: members.clone(),
                });
            }
        }
        let moved = ctx
            .conns
            .moved(|user| placement.owner(&session::placement_key(user)).to_owned());
        for m in moved {
            let ctx = ctx.clone();
            self.runtime.spawn(async move {
                match session::attach(&ctx, m.conn_id, &m.user_id, &m.device_id).await {
                    Ok(node) => {
                        // Whatever the old session got meanwhile is lost
                        // for this connection: read it from the store.
                        if !ctx.conns.attached_to(m.conn_id, &node)
                            || !ctx.conns.write(m.conn_id, Outbound::Resync)
                        {
                            // Gone meanwhile: the new session must not
                            // count it.
                            session::forget(&ctx, &node, &m.user_id, m.conn_id).await;
                        }
                    }
                    Err(e) => {
                        // The connection ends; its client reconnects.
                        tracing::info!(conn = m.conn_id, error = %e, "re-attach failed");
                        ctx.conns.remove(m.conn_id);
                    }
                }
            });
        }
    }
}

/// The metrics label of a node request.
fn body_kind(body: &c::node_request::Body) -> &'static str {
    match body {
        c::node_request::Body::GroupCall(_) => "group_call",
        c::node_request::Body::Deliver(_) => "deliver",
        c::node_request::Body::SessionCall(_) => "session_call",
        c::node_request::Body::PresenceQuery(_) => "presence_query",
    }
}

/// The wire form of a delivery item (`Resync` is local only: none).
fn outbound_to_proto(item: &Outbound) -> Option<c::delivery::Item> {
    Some(match item {
        Outbound::Group {
            group_id,
            seq,
            frame,
        } => c::delivery::Item::Group(c::GroupItem {
            group_id: group_id.to_vec(),
            seq: *seq,
            frame: frame.to_vec(),
        }),
        Outbound::Inbox {
            inbox_seq,
            group_id,
            commit_seq,
            frame,
        } => c::delivery::Item::Inbox(c::InboxItem {
            inbox_seq: *inbox_seq,
            group_id: group_id.to_vec(),
            commit_seq: *commit_seq,
            frame: frame.to_vec(),
        }),
        Outbound::Ephemeral { frame } => c::delivery::Item::Ephemeral(c::EphemeralItem {
            frame: frame.to_vec(),
        }),
        Outbound::Resync => return None,
    })
}

fn outbound_from_proto(item: c::delivery::Item) -> Option<Outbound> {
    Some(match item {
        c::delivery::Item::Group(g) => Outbound::Group {
            group_id: g.group_id.into(),
            seq: g.seq,
            frame: g.frame.into(),
        },
        c::delivery::Item::Inbox(i) => Outbound::Inbox {
            inbox_seq: i.inbox_seq,
            group_id: i.group_id.into(),
            commit_seq: i.commit_seq,
            frame: i.frame.into(),
        },
        c::delivery::Item::Ephemeral(e) => Outbound::Ephemeral {
            frame: e.frame.into(),
        },
        c::delivery::Item::Close(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_survive_the_trip_through_protobuf() {
        let items = [
            Outbound::Group {
                group_id: Arc::from(&b"g1"[..]),
                seq: 7,
                frame: actix_web::web::Bytes::from_static(b"frame"),
            },
            Outbound::Inbox {
                inbox_seq: 3,
                group_id: Arc::from(&b"g2"[..]),
                commit_seq: 9,
                frame: actix_web::web::Bytes::from_static(b"welcome"),
            },
        ];
        for item in items {
            let wire = c::Delivery {
                devices: vec![],
                item: outbound_to_proto(&item),
                conns: None,
            }
            .encode_to_vec();
            let back = c::Delivery::decode(wire.as_slice())
                .ok()
                .and_then(|d| d.item)
                .and_then(outbound_from_proto)
                .expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{item:?}"));
        }
    }

    #[test]
    fn only_sequenced_requests_are_routed() {
        let send = C::SendMessage(v1::SendMessage {
            group_id: b"g".to_vec(),
            ..Default::default()
        });
        assert_eq!(routed_group(&send), Some(&b"g"[..]));
        assert_eq!(routed_group(&C::Ping(v1::Ping { nonce: 1 })), None);
        let info = C::GetGroupInfo(v1::GetGroupInfo {
            group_id: b"g".to_vec(),
        });
        assert_eq!(routed_group(&info), None);
    }
}
