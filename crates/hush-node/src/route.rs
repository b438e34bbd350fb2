//! Where a key lives, and the outbound side of the node-to-node mesh.
//!
//! [`Route`] answers "which node owns this key?" — a group id for its
//! GroupActor, [`session_key`] for a user's SessionActor — by placement over
//! the live view ([`hush_cluster::Placement`]), and carries the messages a
//! node sends to the others: calls to an owner (following view changes),
//! pushed session notices, presence queries, and deliveries batched per
//! destination node. A node outside a cluster is a cluster of one: its view
//! is itself, every key is owned here, and nothing is ever sent, so callers
//! never ask "cluster or not?".
//!
//! Views. Every node-to-node message carries the digest of the member set
//! its sender routed by. An owner whose view differs refuses a call with
//! `StaleView` (it applies nothing); so does a node that is shutting down.
//! [`Route::call_owner`] then waits for this node's view to change (at most
//! [`VIEW_CHANGE_PAUSE`], in case the other side is the one behind) and
//! routes again, until `cluster.forward_timeout_ms`; after that the caller
//! gets UNAVAILABLE. The inbound side (answering those messages) is
//! `peer.rs`.
//!
//! Fan-out batching. Each peer has a bounded queue (`cluster.peer_queue`)
//! and a sender task that takes everything queued at that moment (up to
//! [`MAX_BATCH_BYTES`]) into one `DeliverBatch`, so batches grow with load,
//! and writes it on the peer's delivery [`Channel`] (one QUIC stream that
//! stays open: batches arrive in order and the next one does not wait for
//! the peer's acknowledgement of the last). A full queue drops the delivery
//! and counts it, as does a write that fails; batches the stream had taken
//! when its connection failed are lost uncounted. Either way deliveries
//! change no state, and the store stays the truth, read by the next gap
//! fill or sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hush_cluster::mesh::{Channel, Mesh, MeshError};
use hush_cluster::{Placement, View};
use hush_proto::cluster::v1 as cluster;
use hush_proto::{ErrorCode, Message as _};
use hush_store::MemberDevice;
use tokio::sync::{mpsc, watch};

use crate::error::{ApiError, ApiResult};
use crate::wire::Outbound;

/// Most bytes of deliveries one batch takes from a peer queue.
/// A `Readmitted` notice is pushed up to this many times, waiting twice as
/// long after each failure, from this.
const READMITTED_ATTEMPTS: u32 = 5;
const READMITTED_RETRY_FIRST: Duration = Duration::from_millis(100);

pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The longest a routed call waits for this node's view to change before
/// it asks the owner again (the other side may be the one behind).
pub const VIEW_CHANGE_PAUSE: Duration = Duration::from_millis(200);

/// The placement key of a user's session.
pub fn session_key(user_id: &str) -> Vec<u8> {
    format!("u/{user_id}").into_bytes()
}

/// One view's placement, from [`Route::owners`].
pub struct Owners<'a> {
    placement: Option<Arc<Placement>>,
    me: &'a str,
}

impl Owners<'_> {
    /// The node that owns `key`, if it is not this one (none without a
    /// placement: a lone node owns everything).
    pub fn remote(&self, key: &[u8]) -> Option<&str> {
        let owner = self.placement.as_ref()?.owner(key);
        (owner != self.me).then_some(owner)
    }

    /// The other nodes of the view (none without a placement).
    pub fn others(&self) -> impl Iterator<Item = &str> + '_ {
        self.placement
            .iter()
            .flat_map(|p| p.view().members.iter())
            .map(String::as_str)
            .filter(|m| *m != self.me)
    }
}

/// Owners of keys, and messages to them.
pub struct Route {
    me: String,
    /// None: a node alone (its view is itself; nothing is ever sent).
    mesh: Option<Arc<Mesh>>,
    view: watch::Receiver<View>,
    /// Keeps a lone node's constant view alive.
    _lone_view: Option<watch::Sender<View>>,
    placement: RwLock<Option<Arc<Placement>>>,
    peers: Mutex<HashMap<String, mpsc::Sender<cluster::Delivery>>>,
    runtime: tokio::runtime::Handle,
    forward_timeout: Duration,
    peer_queue: usize,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Route {
    /// A node alone: it owns every key.
    pub fn lone(me: &str, runtime: tokio::runtime::Handle) -> Self {
        let (tx, view) = watch::channel(View::new(1, [me.to_owned()]));
        Self::build(
            me.to_owned(),
            None,
            view,
            Some(tx),
            runtime,
            Duration::ZERO,
            1,
        )
    }

    /// A member of a cluster, routing over the mesh's live view.
    pub fn clustered(
        mesh: Arc<Mesh>,
        runtime: tokio::runtime::Handle,
        forward_timeout: Duration,
        peer_queue: usize,
    ) -> Self {
        let me = mesh.me().name.clone();
        let view = mesh.view();
        Self::build(
            me,
            Some(mesh),
            view,
            None,
            runtime,
            forward_timeout,
            peer_queue,
        )
    }

    fn build(
        me: String,
        mesh: Option<Arc<Mesh>>,
        view: watch::Receiver<View>,
        lone_view: Option<watch::Sender<View>>,
        runtime: tokio::runtime::Handle,
        forward_timeout: Duration,
        peer_queue: usize,
    ) -> Self {
        Self {
            me,
            mesh,
            view,
            _lone_view: lone_view,
            placement: RwLock::new(None),
            peers: Mutex::default(),
            runtime,
            forward_timeout,
            peer_queue: peer_queue.max(1),
        }
    }

    /// This node's name (its cluster member name).
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The mesh, for a node in a cluster.
    pub fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.mesh.as_ref()
    }

    /// Follows the live view.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
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
        self.owners().remote(key).map(str::to_owned)
    }

    /// The current placement, taken once, to place many keys (a group's
    /// members) against the same view.
    pub fn owners(&self) -> Owners<'_> {
        Owners {
            placement: self.placement(),
            me: &self.me,
        }
    }

    /// The digest of the current view (carried in every message).
    pub fn digest(&self) -> u64 {
        self.view.borrow().digest()
    }

    /// How long a routed call follows view changes before it gives up.
    pub fn forward_timeout(&self) -> Duration {
        self.forward_timeout
    }

    /// Waits (at most [`VIEW_CHANGE_PAUSE`]) for this node's view to change.
    pub async fn wait_for_view_change(&self) {
        let mut view = self.view.clone();
        view.borrow_and_update();
        let _ = tokio::time::timeout(VIEW_CHANGE_PAUSE, view.changed()).await;
    }

    fn request(&self, body: cluster::node_request::Body) -> cluster::NodeRequest {
        cluster::NodeRequest {
            from: self.me.clone(),
            view_digest: self.digest(),
            body: Some(body),
        }
    }

    /// Sends `body` to the node that owns `key`, following view changes:
    /// a refusal (StaleView) or an unreachable owner waits for this node's
    /// view to change and routes again, until `forward_timeout` (then
    /// UNAVAILABLE). `None`: this node owns the key now, serve it here.
    pub async fn call_owner(
        &self,
        key: &[u8],
        body: cluster::node_request::Body,
    ) -> ApiResult<Option<(String, cluster::NodeReply)>> {
        let kind = body_kind(&body);
        let deadline = tokio::time::Instant::now() + self.forward_timeout;
        let mut view = self.view.clone();
        view.borrow_and_update();
        loop {
            let Some(owner) = self.remote_owner(key) else {
                return Ok(None);
            };
            let Some(mesh) = &self.mesh else {
                return Ok(None); // a lone node owns everything
            };
            let request = self.request(body.clone());
            metrics::counter!("hush_cluster_messages_out_total", "kind" => kind).increment(1);
            // A call to a node that drops out of the view fails at once (the
            // mesh closes its connection), not at the QUIC idle timeout.
            match mesh.call(&owner, &request.encode_to_vec()).await {
                Ok(bytes) => match cluster::NodeReply::decode(bytes.as_slice()) {
                    Ok(cluster::NodeReply {
                        body: Some(cluster::node_reply::Body::StaleView(_)),
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
            let pause = (deadline - now).min(VIEW_CHANGE_PAUSE);
            let _ = tokio::time::timeout(pause, view.changed()).await;
        }
    }

    /// Asks `node` which of `users` are online (one call, no rerouting:
    /// the answer names the users it does not own).
    pub async fn presence_query(
        &self,
        node: &str,
        users: Vec<String>,
    ) -> ApiResult<cluster::PresenceAnswer> {
        let unavailable =
            |why: String| ApiError::new(ErrorCode::Unavailable, format!("{node}: {why}"));
        let Some(mesh) = &self.mesh else {
            return Err(unavailable("not in a cluster".into()));
        };
        let request = self.request(cluster::node_request::Body::PresenceQuery(
            cluster::PresenceQuery { user_ids: users },
        ));
        metrics::counter!("hush_cluster_messages_out_total", "kind" => "presence_query")
            .increment(1);
        let bytes = mesh
            .call(node, &request.encode_to_vec())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match cluster::NodeReply::decode(bytes.as_slice()) {
            Ok(cluster::NodeReply {
                body: Some(cluster::node_reply::Body::Presence(answer)),
            }) => Ok(answer),
            _ => Err(unavailable("no answer to the presence query".into())),
        }
    }

    /// Pushes a notice to the session of a user on `node` (detach, kick).
    /// Best effort: a node that is gone took the session with it.
    pub fn notify_session(&self, node: &str, call: cluster::SessionCall) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let request = self.request(cluster::node_request::Body::SessionCall(call));
        let node = node.to_owned();
        metrics::counter!("hush_cluster_messages_out_total", "kind" => "session_notice")
            .increment(1);
        self.runtime.spawn(async move {
            if let Err(e) = mesh.push(&node, &request.encode_to_vec()).await {
                tracing::debug!(peer = %node, error = %e, "session notice not delivered");
            }
        });
    }

    /// Tells `node` that this node counts it as a member again (see
    /// `Readmitted` in cluster.proto). Retried a few times: the peer's
    /// connection may be new.
    pub fn tell_readmitted(&self, node: &str) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let request = self
            .request(cluster::node_request::Body::Readmitted(
                cluster::Readmitted {},
            ))
            .encode_to_vec();
        let node = node.to_owned();
        self.runtime.spawn(async move {
            let mut wait = READMITTED_RETRY_FIRST;
            for _ in 0..READMITTED_ATTEMPTS {
                match mesh.push(&node, &request).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(peer = %node, error = %e, "readmitted notice not delivered")
                    }
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        });
    }

    /// Tells `node`, the witness of some of this node's sessions, which of
    /// their users were announced online and which offline (see
    /// `PresenceWitness` in cluster.proto). Best effort, like presence.
    pub fn tell_witness(&self, node: &str, online: Vec<String>, offline: Vec<String>) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let request = self.request(cluster::node_request::Body::PresenceWitness(
            cluster::PresenceWitness { online, offline },
        ));
        let node = node.to_owned();
        metrics::counter!("hush_cluster_messages_out_total", "kind" => "presence_witness")
            .increment(1);
        self.runtime.spawn(async move {
            if let Err(e) = mesh.push(&node, &request.encode_to_vec()).await {
                tracing::debug!(peer = %node, error = %e, "presence witness not delivered");
            }
        });
    }

    /// Queues an item for the connections on `node` of `devices` (a
    /// fan-out's recipients: `node` writes it to those it has).
    pub fn send_to_devices(&self, node: &str, devices: &[MemberDevice], item: &Outbound) {
        let Some(item) = outbound_to_proto(item) else {
            return;
        };
        self.enqueue(
            node,
            cluster::Delivery {
                devices: devices
                    .iter()
                    .map(|d| cluster::DeviceRef {
                        user_id: d.user_id.clone(),
                        device_id: d.device_id.clone(),
                    })
                    .collect(),
                item: Some(item),
                conns: None,
            },
        );
    }

    /// Closes connections on `node` (their device logged out).
    pub fn close_conns(&self, node: &str, user_id: &str, conn_ids: Vec<u64>) {
        self.enqueue_for_conns(
            node,
            user_id,
            conn_ids,
            cluster::delivery::Item::Close(cluster::CloseItem {}),
        );
    }

    fn enqueue_for_conns(
        &self,
        node: &str,
        user_id: &str,
        conn_ids: Vec<u64>,
        item: cluster::delivery::Item,
    ) {
        self.enqueue(
            node,
            cluster::Delivery {
                devices: Vec::new(),
                item: Some(item),
                conns: Some(cluster::ConnTarget {
                    user_id: user_id.to_owned(),
                    conn_ids,
                }),
            },
        );
    }

    /// Puts a delivery in `peer`'s queue; its sender task batches
    /// everything queued into one stream. A full queue drops it.
    fn enqueue(&self, peer: &str, delivery: cluster::Delivery) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        if !self.view.borrow().members.iter().any(|m| m == peer) {
            metrics::counter!("hush_cluster_deliveries_dropped_total", "why" => "not_a_member")
                .increment(1);
            return;
        }
        let mut queues = lock(&self.peers);
        let tx = match queues.get(peer) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let tx = self.spawn_peer_sender(mesh.clone(), peer.to_owned());
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
    fn spawn_peer_sender(&self, mesh: Arc<Mesh>, peer: String) -> mpsc::Sender<cluster::Delivery> {
        let (tx, mut rx) = mpsc::channel::<cluster::Delivery>(self.peer_queue);
        let me = self.me.clone();
        let view = self.view.clone();
        self.runtime.spawn(async move {
            let mut channel = None;
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
                let request = cluster::NodeRequest {
                    from: me.clone(),
                    view_digest: view.borrow().digest(),
                    body: Some(cluster::node_request::Body::Deliver(
                        cluster::DeliverBatch { items },
                    )),
                };
                let sent = send_on(&mesh, &peer, &mut channel, request.encode_to_vec()).await;
                if let Err(e) = sent {
                    metrics::counter!("hush_cluster_deliveries_dropped_total", "why" => "unreachable")
                        .increment(n as u64);
                    tracing::debug!(%peer, error = %e, deliveries = n, "batch not delivered");
                }
            }
        });
        tx
    }

    /// Drops the delivery queues of peers that left the view.
    pub fn forget_departed_peers(&self, view: &View) {
        lock(&self.peers).retain(|name, _| view.members.contains(name));
    }
}

/// Writes `message` on `channel`, opening it first if there is none; a
/// channel whose write failed is dropped (the next message opens another).
async fn send_on(
    mesh: &Mesh,
    peer: &str,
    channel: &mut Option<Channel>,
    message: Vec<u8>,
) -> Result<(), MeshError> {
    let open = match channel {
        Some(open) => open,
        None => channel.insert(mesh.open_channel(peer).await?),
    };
    let sent = open.send(message).await;
    if sent.is_err() {
        *channel = None;
    }
    sent
}

/// The metrics label of a node request.
pub fn body_kind(body: &cluster::node_request::Body) -> &'static str {
    match body {
        cluster::node_request::Body::GroupCall(_) => "group_call",
        cluster::node_request::Body::Deliver(_) => "deliver",
        cluster::node_request::Body::SessionCall(_) => "session_call",
        cluster::node_request::Body::PresenceQuery(_) => "presence_query",
        cluster::node_request::Body::Readmitted(_) => "readmitted",
        cluster::node_request::Body::PresenceWitness(_) => "presence_witness",
    }
}

/// The wire form of a delivery item (`Resync` is local only: none).
fn outbound_to_proto(item: &Outbound) -> Option<cluster::delivery::Item> {
    Some(match item {
        Outbound::Group {
            group_id,
            seq,
            frame,
            ..
        } => cluster::delivery::Item::Group(cluster::GroupItem {
            group_id: group_id.to_vec(),
            seq: *seq,
            frame: frame.to_vec(),
        }),
        // Without its frame (see `Outbound::Inbox`): the receiver's
        // connection of the device reads it from the store.
        Outbound::Inbox {
            inbox_seq,
            group_id,
            commit_seq,
            ..
        } => cluster::delivery::Item::Inbox(cluster::InboxItem {
            inbox_seq: *inbox_seq,
            group_id: group_id.to_vec(),
            commit_seq: *commit_seq,
            frame: Vec::new(),
        }),
        Outbound::Ephemeral { frame } => {
            cluster::delivery::Item::Ephemeral(cluster::EphemeralItem {
                frame: frame.to_vec(),
            })
        }
        Outbound::Resync { .. } | Outbound::Refused(_) | Outbound::Answer { .. } => return None,
    })
}

/// A delivery item received from another node (`Close` is not an
/// [`Outbound`]: none).
pub fn outbound_from_proto(item: cluster::delivery::Item) -> Option<Outbound> {
    Some(match item {
        cluster::delivery::Item::Group(g) => Outbound::Group {
            group_id: g.group_id.into(),
            seq: g.seq,
            frame: g.frame.into(),
            durable_at: None,
        },
        cluster::delivery::Item::Inbox(i) => Outbound::Inbox {
            inbox_seq: i.inbox_seq,
            group_id: i.group_id.into(),
            commit_seq: i.commit_seq,
            frame: i.frame.into(),
        },
        cluster::delivery::Item::Ephemeral(e) => Outbound::Ephemeral {
            frame: e.frame.into(),
        },
        cluster::delivery::Item::Close(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_survive_the_trip_through_protobuf() {
        let trip = |item: &Outbound| {
            let wire = cluster::Delivery {
                devices: vec![],
                item: outbound_to_proto(item),
                conns: None,
            }
            .encode_to_vec();
            cluster::Delivery::decode(wire.as_slice())
                .ok()
                .and_then(|d| d.item)
                .and_then(outbound_from_proto)
                .expect("decodes")
        };
        let entry = Outbound::Group {
            group_id: Arc::from(&b"g1"[..]),
            seq: 7,
            frame: bytes::Bytes::from_static(b"frame"),
            durable_at: None,
        };
        assert_eq!(format!("{:?}", trip(&entry)), format!("{entry:?}"));
        // An inbox item crosses without its frame (the receiver's
        // connection reads it from the store), the rest intact.
        let welcome = |frame: &'static [u8]| Outbound::Inbox {
            inbox_seq: 3,
            group_id: Arc::from(&b"g2"[..]),
            commit_seq: 9,
            frame: bytes::Bytes::from_static(frame),
        };
        assert_eq!(
            format!("{:?}", trip(&welcome(b"a large welcome"))),
            format!("{:?}", welcome(b""))
        );
    }

    #[tokio::test]
    async fn a_lone_node_owns_every_key() {
        let route = Route::lone("n1", tokio::runtime::Handle::current());
        assert_eq!(route.remote_owner(b"any group"), None);
        assert_eq!(route.remote_owner(&session_key("alice")), None);
        let body = cluster::node_request::Body::PresenceQuery(cluster::PresenceQuery::default());
        assert!(matches!(route.call_owner(b"g", body).await, Ok(None)));
    }
}
