//! GroupActor: one per active group on this node — the group's sequencer.
//!
//! It owns the group's lease (fence token) in the store, tracks the group's
//! public MLS state ([`GroupTracker`]), validates every commit, proposal and
//! application message, appends them to the timeline through the store (which
//! assigns the dense seq under the fence), and fans accepted entries out to the
//! members' sessions — only after the store has made them durable.
//!
//! Semantics
//! - Messages are handled one at a time, in mailbox order, so commits are
//!   serialized: exactly one commit per epoch can win here, and the store's
//!   epoch check makes that hold across nodes too.
//! - The actor is virtual: activated by the first request, loaded from the
//!   store, passivated after `actors.group_idle_ms` without traffic (the lease
//!   is released). Nothing lives only in its memory.
//! - A store failure on a commit reloads the tracker from the store, so memory
//!   never runs ahead of what is durable.
//! - The mailbox is unbounded (ractor); the bound is at the edge: each
//!   connection has one request in flight at a time and a rate limit.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hush_ds::{CommitEffect, GroupTracker};
use hush_proto::auth::parse_identity;
use hush_proto::{server_frame, v1, ErrorCode, Message as _, ServerFrame};
use hush_store::{CommitWrite, EntryKind, Lease, MemberDevice, NewEntry, StoreError, WelcomeWrite};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ctx::NodeCtx;
use crate::error::{ApiError, ApiResult};
use crate::session::Outbound;

/// The authenticated device making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub device_id: String,
}

impl Caller {
    pub fn identity(&self) -> String {
        hush_proto::auth::identity(&self.user_id, &self.device_id)
    }
}

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
}

pub struct GroupActor {
    pub ctx: Arc<NodeCtx>,
}

pub struct GroupState {
    group_id: Vec<u8>,
    loaded: Option<Loaded>,
    last_activity_ms: u64,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

struct Loaded {
    tracker: GroupTracker,
    lease: Lease,
    members: Vec<MemberDevice>,
    head_seq: u64,
    /// Recently accepted commits: client_msg_id -> (seq, epoch), so a retried
    /// commit whose ack was lost gets its original answer.
    recent_commits: VecDeque<(Vec<u8>, u64, u64)>,
}

const RECENT_COMMITS: usize = 64;

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
        let period = Duration::from_millis((self.ctx.config.actors.lease_ttl_ms / 3).max(100));
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
            last_activity_ms: self.ctx.now_ms(),
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
                .ctx
                .store
                .release_lease(&state.group_id, &l.lease.owner, l.lease.token)
                .await;
        }
        self.ctx
            .groups
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
        let now = self.ctx.now_ms();
        if let GroupMsg::Tick = msg {
            self.tick(&myself, state, now).await;
            return Ok(());
        }
        state.last_activity_ms = now;
        match msg {
            GroupMsg::Send { caller, req, reply } => {
                let r = self.on_send(state, &caller, req).await;
                self.after(&myself, state, &r);
                let _ = reply.send(r);
            }
            GroupMsg::Commit { caller, req, reply } => {
                let r = self.on_commit(state, &caller, req).await;
                self.after(&myself, state, &r);
                let _ = reply.send(r);
            }
            GroupMsg::Proposal { caller, req, reply } => {
                let r = self.on_proposal(state, &caller, req).await;
                self.after(&myself, state, &r);
                let _ = reply.send(r);
            }
            GroupMsg::Ephemeral { caller, req, reply } => {
                let r = self.on_ephemeral(state, &caller, req).await;
                self.after(&myself, state, &r);
                let _ = reply.send(r);
            }
            GroupMsg::Tick => {}
        }
        Ok(())
    }
}

impl GroupActor {
    /// Stops the actor when it lost its fence: another node owns the group.
    fn after<T>(&self, myself: &ActorRef<GroupMsg>, state: &mut GroupState, r: &ApiResult<T>) {
        if let Err(e) = r {
            metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
            if e.code == ErrorCode::Unavailable {
                state.loaded = None;
                myself.stop(Some("lost group lease".into()));
            }
        }
    }

    async fn tick(&self, myself: &ActorRef<GroupMsg>, state: &mut GroupState, now: u64) {
        let idle = now.saturating_sub(state.last_activity_ms);
        if idle >= self.ctx.config.actors.group_idle_ms || self.ctx.is_shutting_down() {
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
    async fn load<'s>(&self, state: &'s mut GroupState, now: u64) -> ApiResult<&'s mut Loaded> {
        if state.loaded.is_none() {
            let store = &self.ctx.store;
            let Some(record) = store.group(&state.group_id).await? else {
                return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
            };
            let lease = store
                .acquire_lease(
                    &state.group_id,
                    &self.ctx.lease_owner,
                    now,
                    self.ctx.config.actors.lease_ttl_ms,
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
                members: record.members,
                head_seq: record.head_seq,
                recent_commits: VecDeque::new(),
            });
        } else {
            self.ensure_lease(state, now).await?;
        }
        // Invariant: set just above or already present.
        Ok(state.loaded.as_mut().expect("group loaded"))
    }

    async fn ensure_lease(&self, state: &mut GroupState, now: u64) -> ApiResult<()> {
        let ttl = self.ctx.config.actors.lease_ttl_ms;
        let Some(l) = state.loaded.as_mut() else {
            return Ok(());
        };
        if l.lease.expires_at_ms.saturating_sub(now) > ttl / 2 {
            return Ok(());
        }
        let lease = self
            .ctx
            .store
            .acquire_lease(&state.group_id, &self.ctx.lease_owner, now, ttl)
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

    fn member_check(loaded: &Loaded, caller: &Caller) -> ApiResult<()> {
        let identity = caller.identity();
        if loaded
            .tracker
            .member_by_identity(identity.as_bytes())
            .is_none()
        {
            return Err(ApiError::new(
                ErrorCode::NotMember,
                "not a member of this group",
            ));
        }
        Ok(())
    }

    fn check_size(&self, what: &str, len: usize) -> ApiResult<()> {
        let max = self.ctx.config.limits.max_message_bytes;
        if len > max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("{what} is {len} bytes; the limit is {max}"),
            ));
        }
        Ok(())
    }

    fn check_msg_id(id: &[u8]) -> ApiResult<()> {
        if id.is_empty() || id.len() > 64 {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1..=64 bytes",
            ));
        }
        Ok(())
    }

    /// An ephemeral message: the checks of `on_send` (size, membership,
    /// PrivateMessage header with content type application, this group,
    /// epoch within the window), then one frame to every member device but
    /// the sender's, through the sessions online now. No store write, no
    /// seq, no client_msg_id: a retry is just another typing notice.
    async fn on_ephemeral(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendEphemeral,
    ) -> ApiResult<v1::EphemeralAccepted> {
        self.check_size("message", req.message.len())?;
        let now = self.ctx.now_ms();
        let window = self.ctx.config.limits.epoch_window;
        let group_id = state.group_id.clone();
        let loaded = self.load(state, now).await?;
        Self::member_check(loaded, caller)?;
        let epoch = loaded
            .tracker
            .check_application(&req.message, window)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        let to: Vec<MemberDevice> = loaded
            .members
            .iter()
            .filter(|m| m.device_id != caller.device_id)
            .cloned()
            .collect();
        let frame = ServerFrame {
            request_id: 0,
            body: Some(server_frame::Body::EphemeralEvent(v1::EphemeralEvent {
                group_id,
                epoch,
                message: req.message,
            })),
        };
        let item = Outbound::Ephemeral {
            frame: frame.encode_to_vec().into(),
        };
        self.ctx.deliver(&to, item).await;
        metrics::counter!("hush_ephemeral_messages_total").increment(1);
        Ok(v1::EphemeralAccepted {})
    }

    async fn on_send(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendMessage,
    ) -> ApiResult<v1::MessageAccepted> {
        Self::check_msg_id(&req.client_msg_id)?;
        self.check_size("message", req.message.len())?;
        let now = self.ctx.now_ms();
        let window = self.ctx.config.limits.epoch_window;
        let group_id = state.group_id.clone();
        let loaded = self.load(state, now).await?;
        Self::member_check(loaded, caller)?;
        let epoch = loaded
            .tracker
            .check_application(&req.message, window)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        let entry = NewEntry {
            kind: EntryKind::Application,
            epoch,
            sender: caller.identity(),
            client_msg_id: req.client_msg_id,
            message: req.message,
            server_time_ms: now,
        };
        let outcome = self
            .ctx
            .store
            .append_message(&group_id, loaded.lease.token, &entry)
            .await?;
        let seq = outcome.seq();
        let duplicate = matches!(outcome, hush_store::AppendOutcome::Duplicate { .. });
        if !duplicate {
            loaded.head_seq = seq;
            let members = loaded.members.clone();
            metrics::counter!("hush_messages_in_total", "kind" => "application").increment(1);
            self.fan_out(&group_id, seq, &entry, &members).await;
        }
        Ok(v1::MessageAccepted {
            group_id,
            seq,
            duplicate,
        })
    }

    async fn on_proposal(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendProposal,
    ) -> ApiResult<v1::ProposalAccepted> {
        Self::check_msg_id(&req.client_msg_id)?;
        self.check_size("proposal", req.proposal.len())?;
        let now = self.ctx.now_ms();
        let group_id = state.group_id.clone();
        let loaded = self.load(state, now).await?;
        Self::member_check(loaded, caller)?;
        let before = loaded
            .tracker
            .snapshot()
            .map_err(|e| ApiError::internal("snapshot", e))?;
        let effect = loaded
            .tracker
            .apply_proposal(&req.proposal)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        if effect.sender != caller.identity().as_bytes() {
            loaded.tracker = GroupTracker::load(&before)
                .map_err(|e| ApiError::internal("restoring group state", e))?;
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "proposal sender is not the authenticated device",
            ));
        }
        let entry = NewEntry {
            kind: EntryKind::Proposal,
            epoch: effect.epoch,
            sender: caller.identity(),
            client_msg_id: req.client_msg_id,
            message: req.proposal,
            server_time_ms: now,
        };
        let state_bytes = loaded
            .tracker
            .snapshot()
            .map_err(|e| ApiError::internal("snapshot", e))?;
        // The entry and the state that queues the proposal land together.
        let result = self
            .ctx
            .store
            .append_proposal(&group_id, loaded.lease.token, &entry, &state_bytes)
            .await;
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                state.loaded = None;
                return Err(e.into());
            }
        };
        let seq = outcome.seq();
        match outcome {
            hush_store::AppendOutcome::Appended { .. } => {
                loaded.head_seq = seq;
                let members = loaded.members.clone();
                metrics::counter!("hush_messages_in_total", "kind" => "proposal").increment(1);
                self.fan_out(&group_id, seq, &entry, &members).await;
            }
            // A retry: the tracker queued the proposal a second time in
            // memory; reload the stored state, which has it once.
            hush_store::AppendOutcome::Duplicate { .. } => state.loaded = None,
        }
        Ok(v1::ProposalAccepted { group_id, seq })
    }

    async fn on_commit(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendCommit,
    ) -> ApiResult<v1::CommitAccepted> {
        Self::check_msg_id(&req.client_msg_id)?;
        self.check_size("commit", req.commit.len())?;
        self.check_size("welcome", req.welcome.len())?;
        self.check_size("group_info", req.group_info.len())?;
        let now = self.ctx.now_ms();
        let group_id = state.group_id.clone();
        let loaded = self.load(state, now).await?;
        if let Some((_, seq, epoch)) = loaded
            .recent_commits
            .iter()
            .find(|(id, _, _)| *id == req.client_msg_id)
        {
            return Ok(v1::CommitAccepted {
                group_id,
                seq: *seq,
                epoch: *epoch,
            });
        }
        let before = loaded
            .tracker
            .snapshot()
            .map_err(|e| ApiError::internal("snapshot", e))?;
        let epoch_before = loaded.tracker.epoch();
        let effect = loaded
            .tracker
            .apply_commit(&req.commit)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;

        // Everything below may still reject the commit: restore on error.
        let checked = self
            .authorize_commit(loaded, caller, &effect, &req)
            .await
            .and_then(|()| {
                loaded.tracker.check_group_info(&req.group_info)?;
                Ok(())
            });
        if let Err(e) = checked {
            loaded.tracker = GroupTracker::load(&before)
                .map_err(|e| ApiError::internal("restoring group state", e))?;
            return Err(e);
        }

        let members_after = members_of(&effect)?;
        let ratchet_tree = loaded
            .tracker
            .ratchet_tree()
            .map_err(|e| ApiError::internal("exporting tree", e))?;
        let state_bytes = loaded
            .tracker
            .snapshot()
            .map_err(|e| ApiError::internal("snapshot", e))?;
        let added: BTreeSet<MemberDevice> = effect
            .added
            .iter()
            .filter_map(|a| device_of(&a.identity))
            .collect();
        let welcomes = added
            .iter()
            .map(|d| WelcomeWrite {
                device_id: d.device_id.clone(),
                welcome: req.welcome.clone(),
                ratchet_tree: ratchet_tree.clone(),
            })
            .collect();
        let entry = NewEntry {
            kind: EntryKind::Commit,
            epoch: epoch_before,
            sender: caller.identity(),
            client_msg_id: req.client_msg_id.clone(),
            message: req.commit,
            server_time_ms: now,
        };
        let write = CommitWrite {
            group_id: group_id.clone(),
            fence: loaded.lease.token,
            expected_epoch: epoch_before,
            new_epoch: effect.new_epoch,
            state: state_bytes,
            group_info: req.group_info,
            ratchet_tree: ratchet_tree.clone(),
            members: members_after.clone(),
            entry: entry.clone(),
            welcomes,
        };
        let outcome = match self.ctx.store.append_commit(&write).await {
            Ok(o) => o,
            Err(e) => {
                // Memory must not run ahead of the store: reload on next use.
                state.loaded = None;
                return Err(match e {
                    StoreError::EpochConflict {
                        current_epoch,
                        head_seq,
                    } => ApiError::stale(current_epoch, head_seq),
                    other => other.into(),
                });
            }
        };
        let seq = outcome.seq();
        let members_before = std::mem::replace(&mut loaded.members, members_after.clone());
        loaded.head_seq = seq;
        loaded
            .recent_commits
            .push_back((req.client_msg_id, seq, effect.new_epoch));
        if loaded.recent_commits.len() > RECENT_COMMITS {
            loaded.recent_commits.pop_front();
        }
        metrics::counter!("hush_messages_in_total", "kind" => "commit").increment(1);

        // Everyone before and after the commit sees it (the removed learn
        // they were removed; the added start after it, through their Welcome).
        let mut audience: BTreeSet<MemberDevice> = members_before.into_iter().collect();
        audience.extend(members_after.iter().cloned());
        for d in &added {
            audience.remove(d);
        }
        let audience: Vec<MemberDevice> = audience.into_iter().collect();
        self.fan_out(&group_id, seq, &entry, &audience).await;
        if !added.is_empty() {
            self.push_welcomes(&group_id, seq, &added).await;
        }
        Ok(v1::CommitAccepted {
            group_id,
            seq,
            epoch: effect.new_epoch,
        })
    }

    /// Who may make this commit, and whom it may add.
    async fn authorize_commit(
        &self,
        loaded: &Loaded,
        caller: &Caller,
        effect: &CommitEffect,
        req: &v1::SendCommit,
    ) -> ApiResult<()> {
        if effect.committer != caller.identity().as_bytes() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "commit sender is not the authenticated device",
            ));
        }
        if effect.external {
            // An external join is how a user's new device (or a desynced
            // device) enters: the user must already be in the group.
            let user_in_group = loaded.members.iter().any(|m| m.user_id == caller.user_id);
            if !user_in_group {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "only devices of a member user may join externally",
                ));
            }
            // The joiner's leaf must carry its registered device key, as
            // every added member's must.
            let leaf_key = effect
                .members_after
                .iter()
                .find(|m| m.identity == effect.committer)
                .map(|m| m.signature_key.as_slice());
            let registered = self.ctx.store.device(&caller.device_id).await?;
            let key_ok = matches!(
                (&registered, leaf_key),
                (Some(r), Some(k)) if r.user_id == caller.user_id && r.signature_key == k
            );
            if !key_ok {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "the joining leaf does not carry the device's registered key",
                ));
            }
        }
        if effect.added.is_empty() != req.welcome.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "a welcome is required exactly when the commit adds members",
            ));
        }
        for a in &effect.added {
            let Some(d) = device_of(&a.identity) else {
                return Err(ApiError::new(
                    ErrorCode::InvalidMls,
                    "added member's credential is not a hush device identity",
                ));
            };
            let registered = self.ctx.store.device(&d.device_id).await?;
            match registered {
                Some(r) if r.user_id == d.user_id && r.signature_key == a.signature_key => {}
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "added member is not a registered device with that key",
                    ))
                }
            }
        }
        Ok(())
    }

    async fn fan_out(&self, group_id: &[u8], seq: u64, entry: &NewEntry, to: &[MemberDevice]) {
        let kind = match entry.kind {
            EntryKind::Commit => v1::EntryKind::Commit,
            EntryKind::Proposal => v1::EntryKind::Proposal,
            EntryKind::Application => v1::EntryKind::Application,
        };
        let frame = ServerFrame {
            request_id: 0,
            body: Some(server_frame::Body::GroupEvent(v1::GroupEvent {
                group_id: group_id.to_vec(),
                seq,
                kind: kind as i32,
                epoch: entry.epoch,
                sender: entry.sender.clone(),
                message: entry.message.clone(),
                server_time_ms: entry.server_time_ms,
            })),
        };
        let item = Outbound::Group {
            group_id: Arc::from(group_id),
            seq,
            frame: frame.encode_to_vec().into(),
        };
        self.ctx.deliver(to, item).await;
    }

    /// Live Welcome delivery to online added devices; offline ones read their
    /// inbox on next sync. The inbox_seq is read back from the store so that
    /// live and synced items carry the same resume position.
    async fn push_welcomes(
        &self,
        group_id: &[u8],
        commit_seq: u64,
        added: &BTreeSet<MemberDevice>,
    ) {
        for d in added {
            let items = match self.ctx.store.read_inbox(&d.device_id, 0, u32::MAX).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inbox for live welcome");
                    continue;
                }
            };
            for item in items
                .into_iter()
                .filter(|i| i.group_id == group_id && i.commit_seq == commit_seq)
            {
                let frame = crate::gateway::ws::inbox_frame(&item);
                self.ctx
                    .deliver(
                        std::slice::from_ref(d),
                        Outbound::Inbox {
                            inbox_seq: item.inbox_seq,
                            group_id: Arc::from(group_id),
                            commit_seq,
                            frame,
                        },
                    )
                    .await;
            }
        }
    }
}

/// A STALE_EPOCH from MLS validation gets the head seq to sync to.
fn stale_with_head(mut e: ApiError, head_seq: u64) -> ApiError {
    if let Some(s) = e.stale_epoch.as_mut() {
        s.head_seq = head_seq;
        e.message = format!(
            "group is at epoch {}; sync to seq {head_seq} and retry",
            s.current_epoch
        );
    }
    e
}

fn device_of(identity: &[u8]) -> Option<MemberDevice> {
    parse_identity(identity).map(|(u, d)| MemberDevice {
        user_id: u.to_owned(),
        device_id: d.to_owned(),
    })
}

fn members_of(effect: &CommitEffect) -> ApiResult<Vec<MemberDevice>> {
    let mut out = Vec::with_capacity(effect.members_after.len());
    for m in &effect.members_after {
        let Some(d) = device_of(&m.identity) else {
            return Err(ApiError::new(
                ErrorCode::InvalidMls,
                "a member's credential is not a hush device identity",
            ));
        };
        out.push(d);
    }
    out.sort();
    out.dedup();
    Ok(out)
}
