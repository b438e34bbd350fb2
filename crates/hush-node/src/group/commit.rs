//! Commits (`SendCommit`): the commit bundle (a PublicMessage commit, the
//! Welcome if it adds members, the new GroupInfo) is validated against the
//! tracked state, authorized, written in one atomic store write under the
//! fence and the expected epoch (state, epoch, GroupInfo, tree, members,
//! departures, the timeline entry, one Welcome per added device), then
//! fanned out to everyone who was a member before or after it; the added
//! devices get their Welcome instead.
//!
//! One commit per epoch: the tracker accepts handshake messages for the
//! current epoch only, and the store applies the write only if the group
//! is still at the expected epoch. A retried commit whose ack was lost gets
//! its original answer from the recent-commits list. Anything refused after
//! the tracker applied the commit restores the tracker; a failed store
//! write drops the loaded state, so memory never runs ahead of the store.

use std::collections::BTreeSet;

use hush_ds::CommitEffect;
use hush_proto::auth::parse_identity;
use hush_proto::{v1, ErrorCode};
use hush_store::{CommitWrite, EntryKind, MemberDevice, NewEntry, Store, StoreError, WelcomeWrite};

use super::actor::{stale_with_head, GroupActor, GroupState, Loaded, RECENT_COMMITS};
use crate::error::{ApiError, ApiResult};
use crate::wire::Caller;

impl GroupActor {
    pub(super) async fn on_commit(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendCommit,
    ) -> ApiResult<v1::CommitAccepted> {
        Self::check_msg_id(&req.client_msg_id)?;
        self.check_size("commit", req.commit.len())?;
        self.check_size("welcome", req.welcome.len())?;
        self.check_size("group_info", req.group_info.len())?;
        let now = self.now_ms();
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
        let epoch_before = loaded.tracker.epoch();
        let effect = self.validate_commit(loaded, caller, &req).await?;
        let client_msg_id = req.client_msg_id.clone();
        let (write, added) =
            commit_write(loaded, caller, &group_id, epoch_before, &effect, req, now)?;
        let outcome = match self.groups.store.append_commit(&write).await {
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
        let members_before = std::mem::replace(&mut loaded.members, write.members.clone().into());
        loaded.head_seq = seq;
        loaded
            .recent_commits
            .push_back((client_msg_id, seq, effect.new_epoch));
        if loaded.recent_commits.len() > RECENT_COMMITS {
            loaded.recent_commits.pop_front();
        }
        metrics::counter!("hush_messages_in_total", "kind" => "commit").increment(1);

        // Everyone before and after the commit sees it (the removed learn
        // they were removed; the added start after it, through their Welcome).
        let mut audience: BTreeSet<MemberDevice> = members_before.iter().cloned().collect();
        audience.extend(write.members.iter().cloned());
        for d in &added {
            audience.remove(d);
        }
        let audience: Vec<MemberDevice> = audience.into_iter().collect();
        self.fan_out(&group_id, seq, &write.entry, &audience).await;
        if !added.is_empty() {
            self.push_welcomes(&group_id, seq, &added).await;
        }
        Ok(v1::CommitAccepted {
            group_id,
            seq,
            epoch: effect.new_epoch,
        })
    }

    /// Applies the commit to the tracker and checks everything about it;
    /// on any refusal the tracker is restored.
    async fn validate_commit(
        &self,
        loaded: &mut Loaded,
        caller: &Caller,
        req: &v1::SendCommit,
    ) -> ApiResult<CommitEffect> {
        let before = Self::snapshot(loaded)?;
        let effect = loaded
            .tracker
            .apply_commit(&req.commit)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        // The tree changed: the roster is rebuilt on next use.
        loaded.roster = None;
        let checked = self
            .authorize_commit(loaded, caller, &effect, req)
            .await
            .and_then(|()| Ok(loaded.tracker.check_group_info(&req.group_info)?));
        if let Err(e) = checked {
            Self::restore(loaded, &before)?;
            return Err(e);
        }
        Ok(effect)
    }

    /// Who may make this commit, and what it may change.
    ///
    /// - The committer is the authenticated device.
    /// - Leaves keep their identity, and an external commit removes only
    ///   the joiner's own old leaf (`CommitEffect::check_leaf_identities`).
    /// - An external join is for devices of a member user only.
    /// - A Welcome comes exactly with Adds, parses as a Welcome and is
    ///   addressed to exactly the added KeyPackages.
    /// - Every leaf the commit creates or whose (identity, signature key) it
    ///   changes — added members, an external joiner, the committer's update
    ///   path, Update proposals — is a registered device carrying the key the
    ///   directory holds for it.
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
        effect.check_leaf_identities()?;
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
        }
        if effect.added.is_empty() != req.welcome.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "a welcome is required exactly when the commit adds members",
            ));
        }
        if !effect.added.is_empty() {
            hush_ds::check_welcome(&req.welcome, &effect.added)?;
        }
        for change in &effect.changed_leaves {
            let leaf = &change.after;
            check_registered(
                self.groups.store.as_ref(),
                &leaf.identity,
                &leaf.signature_key,
            )
            .await?;
        }
        Ok(())
    }
}

/// A leaf's identity names a registered device of that user, and the leaf
/// carries the signature key the directory holds for that device.
pub(super) async fn check_registered(
    store: &dyn Store,
    identity: &[u8],
    signature_key: &[u8],
) -> ApiResult<()> {
    let Some(d) = device_of(identity) else {
        return Err(ApiError::new(
            ErrorCode::InvalidMls,
            "a leaf's credential is not a hush device identity",
        ));
    };
    match store.device(&d.device_id).await? {
        Some(r) if r.user_id == d.user_id && r.signature_key == signature_key => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Forbidden,
            "a leaf is not a registered device carrying its registered key",
        )),
    }
}

/// The store write for a commit validated in `epoch_before`, and the
/// devices it adds.
fn commit_write(
    loaded: &Loaded,
    caller: &Caller,
    group_id: &[u8],
    epoch_before: u64,
    effect: &CommitEffect,
    req: v1::SendCommit,
    now: u64,
) -> ApiResult<(CommitWrite, BTreeSet<MemberDevice>)> {
    let members_after = members_of(effect)?;
    let ratchet_tree = loaded
        .tracker
        .ratchet_tree()
        .map_err(|e| ApiError::internal("exporting tree", e))?;
    let state_bytes = GroupActor::snapshot(loaded)?;
    let added: BTreeSet<MemberDevice> = effect
        .added
        .iter()
        .filter_map(|a| device_of(&a.identity))
        .collect();
    // One Welcome for all the devices the commit adds, stored once.
    let welcome = (!added.is_empty()).then(|| WelcomeWrite {
        welcome: req.welcome,
        device_ids: added.iter().map(|d| d.device_id.clone()).collect(),
    });
    let entry = NewEntry {
        kind: EntryKind::Commit,
        epoch: epoch_before,
        sender: caller.identity(),
        client_msg_id: req.client_msg_id,
        message: req.commit,
        server_time_ms: now,
    };
    let write = CommitWrite {
        group_id: group_id.to_vec(),
        fence: loaded.lease.token,
        expected_epoch: epoch_before,
        new_epoch: effect.new_epoch,
        state: state_bytes,
        group_info: req.group_info,
        ratchet_tree,
        members: members_after,
        entry,
        welcome,
    };
    Ok((write, added))
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
