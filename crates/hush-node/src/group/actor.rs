//! The GroupActor's lifecycle and the checks every request shares.
//!
//! Activation does no I/O (it only starts the ticker); the first request
//! loads the group: read it, take the lease, read it again (the previous
//! owner may have written until its lease ran out), restore the tracker.
//! The ticker (every `lease_ttl_ms / 3`, at least 100 ms) renews the lease
//! when less than half of it is left and passivates the actor after
//! `group_idle_ms` without requests. A lease that comes back with another
//! token means someone else owned the group in between: the actor drops
//! its state and stops. Stopping releases the lease.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hush_ds::GroupTracker;
use hush_proto::{v1, ErrorCode};
use hush_store::{Lease, MemberDevice, NewEntry};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Groups;
use crate::error::{ApiError, ApiResult};
use crate::wire::Caller;

pub enum GroupMsg {
    Send {
        caller: Caller,
        req: v1::SendMessage,
        reply: RpcReplyPort<ApiResult<v1::MessageAccepted>>,
    },
    Commit {
        caller: Caller,
        req: v1::SendCommit,
        reply: RpcReplyPort<ApiResult<v1::CommitAccepted>>,
    },
    Proposal {
        caller: Caller,
        req: v1::SendProposal,
        reply: RpcReplyPort<ApiResult<v1::ProposalAccepted>>,
    },
    /// Periodic: renew the lease, passivate when idle.
    Tick,
    /// A not-to-store application message (typing): validated like `Send`,
    /// fanned out to online member devices, never written.
    Ephemeral {
        caller: Caller,
        req: v1::SendEphemeral,
        reply: RpcReplyPort<ApiResult<v1::EphemeralAccepted>>,
    },
    /// A batch of sends back from the store (from the task the actor
    /// handed it to; see `send.rs`).
    Appended(Box<Appended>),
}

pub struct GroupActor {
    pub(super) groups: Arc<Groups>,
}

pub struct GroupState {
    pub(super) group_id: Vec<u8>,
    pub(super) loaded: Option<Loaded>,
    /// Sends on their way to the store, and what waits for them.
    pub(super) pipeline: Pipeline,
    last_activity_ms: u64,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// The group as this actor holds it while it owns the lease.
pub(super) struct Loaded {
    pub(super) tracker: GroupTracker,
    pub(super) lease: Lease,
    /// The member devices as stored, shared (not copied) by every fan-out
    /// of the epoch; replaced whole by a commit.
    pub(super) members: Arc<[MemberDevice]>,
    pub(super) head_seq: u64,
    /// Recently accepted commits: client_msg_id -> (seq, epoch), so a retried
    /// commit whose ack was lost gets its original answer.
    pub(super) recent_commits: VecDeque<(Vec<u8>, u64, u64)>,
    /// The tracker's member identities at an epoch, built from the MLS tree
    /// once per epoch instead of for every message. `None` until first
    /// needed and after anything replaced or advanced the tracker.
    pub(super) roster: Option<Roster>,
}

/// The MLS identities of a group's members at one epoch.
pub(super) struct Roster {
    epoch: u64,
    identities: HashSet<Vec<u8>>,
}

impl Loaded {
    /// Whether `identity` is a member now (the tracker's word, from the
    /// roster of the current epoch).
    pub(super) fn is_member(&mut self, identity: &[u8]) -> bool {
        let epoch = self.tracker.epoch();
        let tracker = &self.tracker;
        let roster = match &mut self.roster {
            Some(r) if r.epoch == epoch => r,
            slot => slot.insert(Roster {
                epoch,
                identities: tracker.members().into_iter().map(|m| m.identity).collect(),
            }),
        };
        roster.identities.contains(identity)
    }
}

/// A group's send pipeline (see `send.rs`).
#[derive(Default)]
pub(super) struct Pipeline {
    /// A batch is with the store; its task sends `GroupMsg::Appended`.
    pub(super) in_flight: bool,
    /// Validated sends for the next batch, in mailbox order.
    pub(super) queued: AppendBatch,
    /// Requests that wait for the pipeline to drain, in mailbox order.
    pub(super) deferred: VecDeque<GroupMsg>,
}

impl Pipeline {
    /// Whether sends are with the store or queued for it.
    pub(super) fn busy(&self) -> bool {
        self.in_flight || !self.queued.entries.is_empty()
    }

    /// Whether `msg` must wait for what is ahead of it: a send only behind
    /// a deferred request, a commit or proposal behind any send too.
    pub(super) fn must_defer(&self, msg: &GroupMsg) -> bool {
        match msg {
            GroupMsg::Send { .. } => !self.deferred.is_empty(),
            GroupMsg::Commit { .. } | GroupMsg::Proposal { .. } => {
                self.busy() || !self.deferred.is_empty()
            }
            GroupMsg::Ephemeral { .. } | GroupMsg::Tick | GroupMsg::Appended(_) => false,
        }
    }
}

/// Sends on their way to the store together: the entries, and per entry
/// who waits for its ack and whom its fan-out goes to.
#[derive(Default)]
pub struct AppendBatch {
    pub(super) entries: Vec<NewEntry>,
    pub(super) waiting: Vec<Waiting>,
}

pub(super) struct Waiting {
    pub(super) reply: RpcReplyPort<ApiResult<v1::MessageAccepted>>,
    /// The member devices when the send was checked (a commit, which
    /// would change them, waits for the batch).
    pub(super) members: Arc<[MemberDevice]>,
}

/// A batch is done: acked and fanned out, or failed (its senders told).
pub struct Appended {
    /// The largest seq the batch appended (0 when every entry was a
    /// repeat), or the batch's error.
    pub(super) result: ApiResult<u64>,
    /// The task ended without finishing (it panicked): what the store
    /// holds is unknown, and the actor reloads.
    pub(super) lost: bool,
}

/// The ticker runs this many times per lease period (renewing at half),
/// and never more often than every [`MIN_TICK_MS`].
const TICKS_PER_LEASE: u64 = 3;
const MIN_TICK_MS: u64 = 100;

/// How many accepted commits a group remembers for retries.
pub(super) const RECENT_COMMITS: usize = 64;

impl Actor for GroupActor {
    type Msg = GroupMsg;
    type State = GroupState;
    type Arguments = Vec<u8>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        group_id: Vec<u8>,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::gauge!("hush_group_actors").increment(1.0);
        let period = Duration::from_millis(
            (self.groups.limits.lease_ttl_ms / TICKS_PER_LEASE).max(MIN_TICK_MS),
        );
        let ticker = tokio::spawn({
            let myself = myself.clone();
            async move {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval.tick().await;
                loop {
                    interval.tick().await;
                    if myself.send_message(GroupMsg::Tick).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(GroupState {
            group_id,
            loaded: None,
            pipeline: Pipeline::default(),
            last_activity_ms: self.now_ms(),
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("hush_group_actors").decrement(1.0);
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        if let Some(l) = &state.loaded {
            let _ = self
                .groups
                .store
                .release_lease(&state.group_id, &l.lease.owner, l.lease.token)
                .await;
        }
        self.groups
            .dir
            .remove(&state.group_id, myself.get_id())
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
            GroupMsg::Tick => self.tick(&myself, state, self.now_ms()).await,
            GroupMsg::Appended(appended) => self.on_appended(&myself, state, *appended).await,
            msg => {
                state.last_activity_ms = self.now_ms();
                if state.pipeline.must_defer(&msg) {
                    state.pipeline.deferred.push_back(msg);
                } else {
                    self.serve(&myself, state, msg).await;
                }
            }
        }
        Ok(())
    }
}

impl GroupActor {
    /// Serves one request whose turn it is (see `send.rs` for which wait).
    pub(super) async fn serve(
        &self,
        myself: &ActorRef<GroupMsg>,
        state: &mut GroupState,
        msg: GroupMsg,
    ) {
        match msg {
            GroupMsg::Send { caller, req, reply } => {
                self.accept_send(myself, state, &caller, req, reply).await;
            }
            GroupMsg::Commit { caller, req, reply } => {
                let r = self.on_commit(state, &caller, req).await;
                self.settle(myself, state, &r);
                let _ = reply.send(r);
            }
            GroupMsg::Proposal { caller, req, reply } => {
                let r = self.on_proposal(state, &caller, req).await;
                self.settle(myself, state, &r);
                let _ = reply.send(r);
            }
            GroupMsg::Ephemeral { caller, req, reply } => {
                let r = self.on_ephemeral(state, &caller, req).await;
                self.settle(myself, state, &r);
                let _ = reply.send(r);
            }
            // Never deferred (`Pipeline::must_defer`), so `handle` serves
            // them; boxed, as a batch's answer serves deferred requests.
            GroupMsg::Tick => self.tick(myself, state, self.now_ms()).await,
            GroupMsg::Appended(appended) => {
                Box::pin(self.on_appended(myself, state, *appended)).await;
            }
        }
    }
}

impl GroupActor {
    pub(super) fn now_ms(&self) -> u64 {
        self.groups.clock.now_ms()
    }

    /// After a request: count its error, and stop the actor when it lost
    /// its fence (another node owns the group).
    pub(super) fn settle<T>(
        &self,
        myself: &ActorRef<GroupMsg>,
        state: &mut GroupState,
        r: &ApiResult<T>,
    ) {
        if let Err(e) = r {
            metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
            Self::stop_if_moved(myself, state, e);
        }
    }

    /// A request failed with `e`: the actor stops when that means it lost
    /// its fence (another node owns the group).
    pub(super) fn stop_if_moved(myself: &ActorRef<GroupMsg>, state: &mut GroupState, e: &ApiError) {
        if e.code == ErrorCode::Unavailable {
            state.loaded = None;
            myself.stop(Some("lost group lease".into()));
        }
    }

    async fn tick(&self, myself: &ActorRef<GroupMsg>, state: &mut GroupState, now: u64) {
        let idle = now.saturating_sub(state.last_activity_ms);
        // Never with sends on their way: their callers wait for the acks.
        let settled = !state.pipeline.busy() && state.pipeline.deferred.is_empty();
        if settled
            && (idle >= self.groups.limits.group_idle_ms || self.groups.shutdown.is_shutting_down())
        {
            tracing::debug!(group = %hex::encode(&state.group_id), "passivating idle group");
            myself.stop(Some("idle".into()));
            return;
        }
        if state.loaded.is_some() {
            if let Err(e) = self.ensure_lease(state, now).await {
                tracing::warn!(error = %e, "lease renewal failed");
                state.loaded = None;
                myself.stop(Some("lost group lease".into()));
            }
        }
    }

    /// Loads the group on first use (and after a failed write).
    pub(super) async fn load<'s>(
        &self,
        state: &'s mut GroupState,
        now: u64,
    ) -> ApiResult<&'s mut Loaded> {
        if state.loaded.is_none() {
            let store = &self.groups.store;
            let Some(record) = store.group(&state.group_id).await? else {
                return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
            };
            let lease = store
                .acquire_lease(
                    &state.group_id,
                    &self.groups.lease_owner,
                    now,
                    self.groups.limits.lease_ttl_ms,
                )
                .await?;
            // Re-read after taking the lease: the previous owner may have
            // written until the moment its lease ran out.
            let record = match store.group(&state.group_id).await? {
                Some(r) => r,
                None => record,
            };
            let tracker = GroupTracker::load(&record.state)
                .map_err(|e| ApiError::internal("loading group state", e))?;
            metrics::counter!("hush_group_activations_total").increment(1);
            state.loaded = Some(Loaded {
                tracker,
                lease,
                members: record.members.into(),
                head_seq: record.head_seq,
                recent_commits: VecDeque::new(),
                roster: None,
            });
        } else {
            self.ensure_lease(state, now).await?;
        }
        // Invariant: set just above or already present.
        Ok(state.loaded.as_mut().expect("group loaded"))
    }

    async fn ensure_lease(&self, state: &mut GroupState, now: u64) -> ApiResult<()> {
        let ttl = self.groups.limits.lease_ttl_ms;
        let Some(l) = state.loaded.as_mut() else {
            return Ok(());
        };
        if l.lease.expires_at_ms.saturating_sub(now) > ttl / 2 {
            return Ok(());
        }
        let lease = self
            .groups
            .store
            .acquire_lease(&state.group_id, &self.groups.lease_owner, now, ttl)
            .await?;
        if lease.token != l.lease.token {
            // Someone else owned the group in between: our view is stale.
            state.loaded = None;
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "group ownership moved; retry",
            ));
        }
        l.lease = lease;
        Ok(())
    }

    pub(super) fn member_check(loaded: &mut Loaded, caller: &Caller) -> ApiResult<()> {
        if !loaded.is_member(caller.identity().as_bytes()) {
            return Err(ApiError::new(
                ErrorCode::NotMember,
                "not a member of this group",
            ));
        }
        Ok(())
    }

    pub(super) fn check_size(&self, what: &str, len: usize) -> ApiResult<()> {
        let max = self.groups.limits.max_message_bytes;
        if len > max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("{what} is {len} bytes; the limit is {max}"),
            ));
        }
        Ok(())
    }

    pub(super) fn check_msg_id(id: &[u8]) -> ApiResult<()> {
        if id.is_empty() || id.len() > 64 {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1..=64 bytes",
            ));
        }
        Ok(())
    }

    /// Restores the tracker from `snapshot` (a validation that changed it
    /// in memory was refused later).
    pub(super) fn restore(loaded: &mut Loaded, snapshot: &[u8]) -> ApiResult<()> {
        loaded.tracker = GroupTracker::load(snapshot)
            .map_err(|e| ApiError::internal("restoring group state", e))?;
        loaded.roster = None;
        Ok(())
    }

    pub(super) fn snapshot(loaded: &Loaded) -> ApiResult<Vec<u8>> {
        loaded
            .tracker
            .snapshot()
            .map_err(|e| ApiError::internal("snapshot", e))
    }
}

/// A STALE_EPOCH from MLS validation gets the head seq to sync to.
pub(super) fn stale_with_head(mut e: ApiError, head_seq: u64) -> ApiError {
    if let Some(s) = e.stale_epoch.as_mut() {
        s.head_seq = head_seq;
        e.message = format!(
            "group is at epoch {}; sync to seq {head_seq} and retry",
            s.current_epoch
        );
    }
    e
}
