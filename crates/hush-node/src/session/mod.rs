//! Sessions: one [`SessionActor`] per online user, on the node that owns
//! the user (placement key [`session_key`], like groups by group id), and
//! [`Sessions`], the handle through which everything else reaches them.
//!
//! A client may connect to any node. Its connection's queue stays in that
//! node's connection table (`conns.rs`) and *attaches* to the user's session
//! wherever the session lives; the session remembers where each connection
//! is (node, id) and writes to it directly or through a delivery addressed
//! to connection ids (batched per node by [`Route`]).
//!
//! Fan-out: [`Sessions::deliver`] writes an item for a set of member
//! devices to this node's connections of those devices, and sends the item
//! and the device list to every other node of the view, which writes it to
//! its own ([`Sessions::deliver_local`], by device in the connection
//! table). One hop from the group's owner to every connection, whichever
//! node the users' sessions live on, and no actor message per recipient.
//! The price is a delivery to each node of the view even when it holds no
//! member's connection: right for a few nodes (every node of a 3-node
//! cluster holds some member of most groups); a large cluster would want
//! the owner to know which nodes hold its members' connections.
//!
//! Moves: when the view changes ([`Sessions::follow_view`]), a session whose
//! user is now owned by another node stops, sessions forget connections of
//! nodes that left, and every node re-attaches its connections whose
//! session moved, then has each read what it may have missed from the
//! store ([`Outbound::Resync`]); the connections that stay put resync as
//! well (deliveries to this node may have been dropped around the change).
//! A node that comes back after the others
//! declared it down (a pause or a partition longer than the failure
//! detector's patience: its view's `incarnation` grows) re-attaches every
//! connection it has: the others forgot them and dropped what they were
//! sending here meanwhile, and nothing else would tell the clients.
//!
//! A user whose session and connections all die with a node is announced
//! offline by its *witness*, the node that takes its session over
//! (`witness.rs`).
//!
//! Naming: a connection is *attached* to a session; when it ends, its node
//! *closes* it here ([`Sessions::close_conn`]) and tells its session, which
//! *forgets* it.

mod actor;
mod index;
mod presence;
mod witness;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hush_cluster::Placement;
use hush_proto::cluster::v1 as cluster;
use hush_proto::{server_frame::Body as Reply, ErrorCode};
use hush_store::{MemberDevice, Store};

use crate::admission::DeliveryQueue;
use crate::clock::Clock;
use crate::conns::Connections;
use crate::directory::Directory;
use crate::error::{ApiError, ApiResult};
use crate::route::{session_key, Route};
use crate::shutdown::Shutdown;
use crate::wire::{mark, ConnRef, Outbound};

pub use actor::{SessionActor, SessionMsg};
pub use presence::joined_groups;

/// The longest a call to a SessionActor (attach) may take.
pub const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What sessions are bound by (from `[limits]` and `[actors]`).
#[derive(Clone, Debug)]
pub struct SessionLimits {
    pub max_connections_per_user: usize,
    pub presence_grace_ms: u64,
    /// Presence is pushed to groups of at most this many member devices.
    pub presence_push_max_members: usize,
    /// The most SessionActors this node runs at once.
    pub max_session_actors: usize,
}

/// The sessions of this node, and the way to any user's session.
pub struct Sessions {
    dir: Directory<String, SessionMsg>,
    conns: Arc<Connections>,
    route: Arc<Route>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    runtime: tokio::runtime::Handle,
    shutdown: Shutdown,
    limits: SessionLimits,
    /// The newest view incarnation followed (see the module doc).
    incarnation: AtomicU64,
    /// Whether this node's sessions announced their users online
    /// (`index.rs`).
    index: index::SessionIndex,
    /// Presence after a crash (`witness.rs`).
    witness: witness::Witness,
}

impl Sessions {
    pub fn new(
        conns: Arc<Connections>,
        route: Arc<Route>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        runtime: tokio::runtime::Handle,
        shutdown: Shutdown,
        limits: SessionLimits,
    ) -> Self {
        Self {
            dir: Directory::bounded(limits.max_session_actors),
            conns,
            route,
            store,
            clock,
            runtime,
            shutdown,
            limits,
            incarnation: AtomicU64::new(0),
            index: index::SessionIndex::default(),
            witness: witness::Witness::default(),
        }
    }

    /// The count of deliveries waiting in connection queues (`conns.rs`).
    pub fn deliveries(&self) -> &DeliveryQueue {
        self.conns.backlog()
    }

    /// This node's connection table.
    pub fn conns(&self) -> &Arc<Connections> {
        &self.conns
    }

    /// How many sessions live on this node.
    pub async fn count(&self) -> usize {
        self.dir.len().await
    }

    /// Follows the number of live SessionActors on this node.
    pub fn watch_count(&self) -> tokio::sync::watch::Receiver<usize> {
        self.dir.watch_count()
    }

    /// The user's session actor, activated on this node if needed.
    async fn activate(self: &Arc<Self>, user_id: &str) -> ApiResult<ractor::ActorRef<SessionMsg>> {
        let sessions = self.clone();
        let user = user_id.to_owned();
        self.dir
            .get_or_activate(
                &user_id.to_owned(),
                &self.runtime,
                "session actor",
                "actors.max_session_actors",
                || (SessionActor { sessions }, user),
            )
            .await
    }

    /// Attaches a connection of this node to its user's session, wherever
    /// the session lives. Returns the node it attached to.
    pub async fn attach(
        self: &Arc<Self>,
        conn_id: u64,
        user_id: &str,
        device_id: &str,
    ) -> ApiResult<String> {
        let call = cluster::SessionCall {
            user_id: user_id.to_owned(),
            op: Some(cluster::session_call::Op::Attach(cluster::SessionAttach {
                device_id: device_id.to_owned(),
                conn_id,
            })),
        };
        let body = cluster::node_request::Body::SessionCall(call);
        if let Some((node, reply)) = self.route.call_owner(&session_key(user_id), body).await? {
            return match reply.body {
                None => Ok(node),
                Some(cluster::node_reply::Body::Frame(f)) => match f.body {
                    Some(Reply::Error(e)) => Err(ApiError::from_proto(e)),
                    _ => Ok(node),
                },
                Some(_) => Err(ApiError::internal(
                    "cluster reply",
                    format!("unexpected answer to attach from {node}"),
                )),
            };
        }
        let me = self.route.me().to_owned();
        self.accept_attach((me.clone(), conn_id), user_id, device_id)
            .await?;
        Ok(me)
    }

    /// Attaches a connection (of any node) to the user's session on this
    /// node, activating it. A session that stops between lookup and attach
    /// is retried once.
    pub async fn accept_attach(
        self: &Arc<Self>,
        conn: ConnRef,
        user_id: &str,
        device_id: &str,
    ) -> ApiResult<()> {
        for _ in 0..2 {
            let session = self.activate(user_id).await?;
            let r = session
                .call(
                    |reply| SessionMsg::Attach {
                        conn: conn.clone(),
                        device_id: device_id.to_owned(),
                        reply,
                    },
                    Some(SESSION_CALL_TIMEOUT),
                )
                .await;
            match r {
                Ok(ractor::rpc::CallResult::Success(result)) => return result,
                _ => self.dir.remove(&user_id.to_owned(), session.get_id()).await,
            }
        }
        Err(ApiError::new(ErrorCode::Unavailable, "session unavailable"))
    }

    /// A connection of this node ended: take it out of the table and tell
    /// its session to forget it.
    pub async fn close_conn(&self, conn_id: u64) {
        if let Some(conn) = self.conns.remove(conn_id) {
            self.tell_conn_gone(&conn.session_node, &conn.user_id, conn_id)
                .await;
        }
    }

    /// Tells the session of `user_id` on `node` that this node's
    /// connection `conn_id` is gone.
    pub async fn tell_conn_gone(&self, node: &str, user_id: &str, conn_id: u64) {
        let me = self.route.me();
        if node == me {
            self.forget_conn_here(user_id, (me.to_owned(), conn_id))
                .await;
        } else {
            self.route.notify_session(
                node,
                cluster::SessionCall {
                    user_id: user_id.to_owned(),
                    op: Some(cluster::session_call::Op::Detach(cluster::SessionDetach {
                        conn_id,
                    })),
                },
            );
        }
    }

    /// The user's session on this node (if any) forgets a connection.
    pub async fn forget_conn_here(&self, user_id: &str, conn: ConnRef) {
        if let Some(s) = self.dir.get(&user_id.to_owned()).await {
            let _ = s.send_message(SessionMsg::Detach { conn });
        }
    }

    /// Closes every connection of a device, wherever they are (logout).
    pub async fn kick_device(&self, user_id: &str, device_id: &str) {
        if let Some(owner) = self.route.remote_owner(&session_key(user_id)) {
            self.route.notify_session(
                &owner,
                cluster::SessionCall {
                    user_id: user_id.to_owned(),
                    op: Some(cluster::session_call::Op::Kick(cluster::KickDevice {
                        device_id: device_id.to_owned(),
                    })),
                },
            );
            return;
        }
        self.kick_here(user_id, device_id).await;
    }

    /// The user's session on this node (if any) closes a device's
    /// connections.
    pub async fn kick_here(&self, user_id: &str, device_id: &str) {
        if let Some(s) = self.dir.get(&user_id.to_owned()).await {
            let _ = s.send_message(SessionMsg::KickDevice {
                device_id: device_id.to_owned(),
            });
        }
    }

    /// Hands an item to the connections of `devices`, wherever they are:
    /// this node's written here, and every other node of the view sent the
    /// item and the device list once (batched per node by the route), to
    /// write to its own (see the module doc).
    pub async fn deliver(&self, devices: &[MemberDevice], item: Outbound) {
        metrics::counter!("hush_deliveries_total").increment(devices.len() as u64);
        for node in self.route.owners().others() {
            self.route.send_to_devices(node, devices, &item);
        }
        self.deliver_local(devices, &item).await;
    }

    /// Writes an item to this node's connections of `devices`. Connections
    /// found gone (closed, or cut off as slow readers) are reported to
    /// their sessions, which forget them.
    pub async fn deliver_local(&self, devices: &[MemberDevice], item: &Outbound) {
        for gone in self.conns.write_devices(devices, item) {
            self.tell_conn_gone(&gone.session_node, &gone.user_id, gone.conn_id)
                .await;
        }
    }

    /// Which of `users` are online, asked of the nodes that own their
    /// sessions (following view changes until the route's forward timeout).
    pub async fn online_users(&self, users: &BTreeSet<String>) -> ApiResult<BTreeSet<String>> {
        let mut online = BTreeSet::new();
        let mut pending: BTreeSet<String> = users.clone();
        let deadline = tokio::time::Instant::now() + self.route.forward_timeout();
        loop {
            // One placement for the whole list.
            let owners = self.route.owners();
            let mut by_owner: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
            for u in &pending {
                let owner = owners.remote(&session_key(u)).map(str::to_owned);
                by_owner.entry(owner).or_default().push(u.clone());
            }
            let mut retry = BTreeSet::new();
            for (owner, users) in by_owner {
                match owner {
                    None => online.extend(self.online_here(users)),
                    Some(node) => match self.route.presence_query(&node, users.clone()).await {
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
            self.route.wait_for_view_change().await;
            pending = retry;
        }
    }

    /// Those of `users` whose presence, as co-members were last told by
    /// their session on this node, is online (none, or one that stopped,
    /// is offline).
    pub fn online_here(&self, users: Vec<String>) -> Vec<String> {
        // As the users' SessionActors last published it, read under one
        // lock: a call to each member's actor made GetPresence on a group
        // of 1,000 a thousand actor round trips, one after the other.
        self.index.online_among(users)
    }

    /// Follows a view change: sessions no longer owned here stop, kept
    /// ones forget connections of departed nodes, and this node's
    /// connections whose session moved re-attach to the new owner and
    /// read what they may have missed from the store.
    pub async fn follow_view(self: &Arc<Self>, placement: &Placement) {
        let me = self.route.me();
        let members = placement.view().members.iter().cloned().collect::<Vec<_>>();
        for (user_id, actor) in self.dir.entries().await {
            if placement.owner(&session_key(&user_id)) != me {
                metrics::counter!("hush_cluster_rehomes_total", "actor" => "session").increment(1);
                let _ = actor.send_message(SessionMsg::Moved);
            } else {
                let _ = actor.send_message(SessionMsg::ViewChanged {
                    members: members.clone(),
                });
            }
        }
        let incarnation = placement.view().incarnation;
        let rejoined = incarnation > self.incarnation.fetch_max(incarnation, Ordering::SeqCst);
        let moved = if rejoined {
            tracing::warn!(
                conns = self.conns.len(),
                "declared down by the cluster meanwhile: every connection attaches again and resyncs"
            );
            self.conns.all()
        } else {
            self.conns
                .moved(|user| placement.owner(&session_key(user)).to_owned())
        };
        // Every other connection resyncs too: across a view change,
        // deliveries to this node were dropped (a peer that died mid
        // fan-out, a partition's other side sending to a node it did not
        // see), and nothing else would bring those entries before the
        // group's next one.
        let reattach: HashSet<u64> = moved.iter().map(|m| m.conn_id).collect();
        self.resync_here_but(&reattach);
        self.witness_follow_view(placement);
        for m in moved {
            drop(self.attach_in_background(m.conn_id, m.user_id, m.device_id));
        }
    }

    /// Every connection of this node reads what it may have missed from
    /// the store (a peer counts this node as a member again).
    pub fn resync_here(&self) {
        self.resync_here_but(&Default::default());
    }

    /// [`Sessions::resync_here`] for every connection not in `skip` (those
    /// resync once re-attached).
    fn resync_here_but(&self, skip: &HashSet<u64>) {
        for conn_id in self.conns.ids() {
            if !skip.contains(&conn_id) {
                self.conns.write(conn_id, Outbound::Resync { mark: mark() });
            }
        }
    }

    /// Attaches a connection of this node (already in its table) to its
    /// user's session without making anyone wait for it: the connection can
    /// be served meanwhile (its Sync reads the store), and once attached it
    /// reads what it may have missed from the store ([`Outbound::Resync`]).
    /// Attaching can take until failure detection when the session's node
    /// just died. If it is refused (e.g. `TOO_MANY_CONNECTIONS`), the
    /// connection gets [`Outbound::Refused`] and leaves the table (its queue
    /// closes, its client reconnects). The receiver tells the outcome to
    /// whoever wants to wait for it.
    pub fn attach_in_background(
        self: &Arc<Self>,
        conn_id: u64,
        user_id: String,
        device_id: String,
    ) -> tokio::sync::oneshot::Receiver<ApiResult<()>> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let sessions = self.clone();
        self.runtime.spawn(async move {
            let r = match sessions.attach(conn_id, &user_id, &device_id).await {
                Ok(node) => {
                    if !sessions.conns.attached_to(conn_id, &node)
                        || !sessions
                            .conns
                            .write(conn_id, Outbound::Resync { mark: mark() })
                    {
                        // Gone meanwhile: the session must not count it.
                        sessions.tell_conn_gone(&node, &user_id, conn_id).await;
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::info!(conn = conn_id, error = %e, "attach failed; the connection ends");
                    sessions.conns.write(conn_id, Outbound::Refused(e.clone()));
                    sessions.conns.remove(conn_id);
                    Err(e)
                }
            };
            let _ = done.send(r);
        });
        outcome
    }
}
