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
//!   epoch check makes that hold across nodes too.
//! - The actor is virtual: activated by the first request, loaded from the
//!   store, passivated after `actors.group_idle_ms` without traffic (the
//!   lease is released). Nothing lives only in its memory.
//! - A store failure on a commit reloads the tracker from the store, so
//!   memory never runs ahead of what is durable.
//! - The mailbox is unbounded (ractor); the bound is at the edge: each
//!   connection has one request in flight at a time and a rate limit. A
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

/// The longest a client request waits for its GroupActor's answer.
pub const GROUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What group actors are bound by (from `[limits]` and `[actors]`).
#[derive(Clone, Debug)]
pub struct GroupLimits {
    pub max_message_bytes: usize,
    pub epoch_window: u64,
    pub lease_ttl_ms: u64,
    pub group_idle_ms: u64,
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
            dir: Directory::default(),
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
    async fn activate(self: &Arc<Self>, group_id: &[u8]) -> ApiResult<ractor::ActorRef<GroupMsg>> {
        if self.shutdown.is_shutting_down() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "node is shutting down",
            ));
        }
        let groups = self.clone();
        let key = group_id.to_vec();
        self.dir
            .get_or_activate(&key, &self.runtime, "group activation", || {
                (GroupActor { groups }, key.clone())
            })
            .await
    }

    /// Asks the group's actor on this node (activating it) and waits for
    /// its answer, at most [`GROUP_CALL_TIMEOUT`].
    pub async fn call<T, F>(self: &Arc<Self>, group_id: &[u8], make: F) -> ApiResult<T>
    where
        F: FnOnce(ractor::RpcReplyPort<ApiResult<T>>) -> GroupMsg,
        T: Send + 'static,
    {
        check_group_id(group_id)?;
        let group = self.activate(group_id).await?;
        match group.call(make, Some(GROUP_CALL_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(ractor::rpc::CallResult::Timeout) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "group did not answer in time",
            )),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                // The actor stopped (passivated or lost its lease): it is
                // reactivated on the next request; the client retries.
                self.dir.remove(&group_id.to_vec(), group.get_id()).await;
                Err(ApiError::new(ErrorCode::Unavailable, "group moved; retry"))
            }
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
