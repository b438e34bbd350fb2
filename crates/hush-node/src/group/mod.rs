//! Groups: one [`GroupActor`] per active group on the node that owns it —
//! the group's sequencer — and [`Groups`], the handle through which
//! requests reach them.
//!
//! The actor owns the group's lease (fence token) in the store, tracks the
//! group's public MLS state, validates every commit, proposal and
//! application message, appends them through the store (which assigns the
//! dense seq under the fence), and fans accepted entries out to the
//! members' sessions — only after the store made them durable.
//!
//! Files by operation: `actor.rs` (lifecycle: activation, loading, lease,
//! passivation, the checks every request shares), `send.rs` (application
//! and ephemeral messages), `commit.rs`, `proposal.rs`, `fanout.rs`.
//!
//! Semantics
//! - Messages are handled one at a time, in mailbox order, so commits are
//!   serialized: exactly one commit per epoch can win here, and the store's
//!   epoch check makes that hold across nodes too. Sends are pipelined: one
//!   batch per group is with the store while the next sends are validated;
//!   a commit or proposal waits until none is (see `send.rs`).
//! - The actor holds its sends' acks until the store returned; nothing is
//!   acked, or fanned out, before it is durable.
//! - The actor is virtual: activated by the first request, loaded from the
//!   store, passivated after `actors.group_idle_ms` without traffic (the
//!   lease is released). Nothing lives only in its memory.
//! - Only groups that exist get an actor (an unknown id is answered from
//!   the store), and at most `actors.max_group_actors` live on a node at
//!   once; one more is refused with UNAVAILABLE and a hint.
//! - A store failure on a commit reloads the tracker from the store, so
//!   memory never runs ahead of what is durable.
//! - The mailbox is unbounded (ractor); the bound is at the edge
//!   (`admission.rs`: sends per group and per node, requests per
//!   connection, a rate limit). A
//!   call not answered within [`GROUP_CALL_TIMEOUT`] is UNAVAILABLE to its
//!   caller (the work may still complete; retries deduplicate).

mod actor;
mod commit;
mod fanout;
mod proposal;
mod send;

use std::sync::Arc;
use std::time::Duration;

use hush_cluster::Placement;
use hush_proto::ErrorCode;
use hush_store::Store;

use crate::clock::Clock;
use crate::directory::Directory;
use crate::error::{ApiError, ApiResult};
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use crate::wire::check_group_id;

pub use actor::{GroupActor, GroupMsg};

/// The size limits the actor applies first (`GroupActor::check_size`), so
/// that an oversized request is TOO_LARGE whether or not its group exists.
fn too_large(msg: &GroupMsg, max: usize) -> ApiResult<()> {
    let parts: &[(&str, usize)] = match msg {
        GroupMsg::Send { req, .. } => &[("message", req.message.len())],
        GroupMsg::Ephemeral { req, .. } => &[("message", req.message.len())],
        GroupMsg::Proposal { req, .. } => &[("proposal", req.proposal.len())],
        GroupMsg::Commit { req, .. } => &[
            ("commit", req.commit.len()),
            ("welcome", req.welcome.len()),
            ("group_info", req.group_info.len()),
        ],
        GroupMsg::Tick | GroupMsg::Appended(_) => &[],
    };
    match parts.iter().find(|(_, len)| *len > max) {
        Some((what, len)) => Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("{what} is {len} bytes; the limit is {max}"),
        )),
        None => Ok(()),
    }
}

/// The longest a client request waits for its GroupActor's answer.
pub const GROUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What group actors are bound by (from `[limits]` and `[actors]`).
#[derive(Clone, Debug)]
pub struct GroupLimits {
    pub max_message_bytes: usize,
    pub epoch_window: u64,
    pub lease_ttl_ms: u64,
    pub group_idle_ms: u64,
    /// The most GroupActors this node runs at once.
    pub max_group_actors: usize,
}

/// The group actors of this node.
pub struct Groups {
    dir: Directory<Vec<u8>, GroupMsg>,
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    clock: Arc<dyn Clock>,
    runtime: tokio::runtime::Handle,
    shutdown: Shutdown,
    /// The name this node takes group leases under (see `lib.rs`).
    lease_owner: String,
    limits: GroupLimits,
}

impl Groups {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        sessions: Arc<Sessions>,
        clock: Arc<dyn Clock>,
        runtime: tokio::runtime::Handle,
        shutdown: Shutdown,
        lease_owner: String,
        limits: GroupLimits,
    ) -> Self {
        Self {
            dir: Directory::bounded(limits.max_group_actors),
            store,
            sessions,
            clock,
            runtime,
            shutdown,
            lease_owner,
            limits,
        }
    }

    /// Follows the number of live GroupActors on this node.
    pub fn watch_count(&self) -> tokio::sync::watch::Receiver<usize> {
        self.dir.watch_count()
    }

    /// The group's actor, activated on this node if needed.
    ///
    /// Nothing for nothing: a group that is not in the store is answered
    /// UNKNOWN_GROUP from the store, without an actor (which would live for
    /// `group_idle_ms`). Only a group without a live actor here pays the
    /// read; the actor gives the same answer for a group that vanished.
    async fn activate(self: &Arc<Self>, group_id: &[u8]) -> ApiResult<ractor::ActorRef<GroupMsg>> {
        if self.shutdown.is_shutting_down() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "node is shutting down",
            ));
        }
        let key = group_id.to_vec();
        if let Some(actor) = self.dir.get(&key).await {
            if actor.get_status() <= ractor::ActorStatus::Running {
                return Ok(actor);
            }
        }
        if self.store.group(group_id).await?.is_none() {
            metrics::counter!("hush_unknown_group_requests_total").increment(1);
            return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
        }
        let groups = self.clone();
        self.dir
            .get_or_activate(
                &key,
                &self.runtime,
                "group actor",
                "actors.max_group_actors",
                || (GroupActor { groups }, key.clone()),
            )
            .await
    }

    /// Asks the group's actor on this node (activating it) and waits for
    /// its answer, at most [`GROUP_CALL_TIMEOUT`].
    ///
    /// The checks that need nothing but the request come first (the group
    /// id, the sizes the actor would refuse), then the group's existence
    /// (only when no actor is live), then the actor.
    pub async fn call<T, F>(self: &Arc<Self>, group_id: &[u8], make: F) -> ApiResult<T>
    where
        F: FnOnce(ractor::RpcReplyPort<ApiResult<T>>) -> GroupMsg,
        T: Send + 'static,
    {
        check_group_id(group_id)?;
        let (tx, rx) = ractor::concurrency::oneshot();
        let msg = make((tx, GROUP_CALL_TIMEOUT).into());
        too_large(&msg, self.limits.max_message_bytes)?;
        let group = self.activate(group_id).await?;
        let moved = || async {
            // The actor stopped (passivated or lost its lease): it is
            // reactivated on the next request; the client retries.
            self.dir.remove(&group_id.to_vec(), group.get_id()).await;
            Err(ApiError::new(ErrorCode::Unavailable, "group moved; retry"))
        };
        if group.send_message(msg).is_err() {
            return moved().await;
        }
        match tokio::time::timeout(GROUP_CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_dropped)) => moved().await,
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "group did not answer in time",
            )),
        }
    }

    /// Follows a view change: stops the actors of groups `me` no longer
    /// owns (each releases its lease as it stops, so the new owner can
    /// take over at once).
    pub async fn follow_view(&self, placement: &Placement, me: &str) {
        for (group_id, actor) in self.dir.entries().await {
            if placement.owner(&group_id) != me {
                metrics::counter!("hush_cluster_rehomes_total", "actor" => "group").increment(1);
                tracing::info!(group = %hex::encode(&group_id), "group moved to another node");
                actor.stop(Some("group moved to another node".into()));
            }
        }
    }

    /// Stops every group actor and waits for each (at most `timeout`):
    /// their leases are released, so other nodes take the groups at once.
    pub async fn stop_all(&self, timeout: Duration) {
        let stops = self.dir.all().await.into_iter().map(|g| async move {
            let _ = g
                .stop_and_wait(Some("node shutting down".into()), Some(timeout))
                .await;
        });
        futures_util::future::join_all(stops).await;
    }
}
