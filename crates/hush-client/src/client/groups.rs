//! Group commands: create, add and remove users, rotate this device's keys,
//! leave, join by external commit (a new device joining its user's
//! groups), and the local listing of groups and members.
//!
//! Invariants: commands that change a group work only on a group this
//! device is still an active member of, and go through `commit.rs` (or, for
//! a leave, the same stale-epoch catch-up), so every one of them survives a
//! lost epoch race. A group's name never leaves MLS: it is stored locally
//! and told to new members in an encrypted `name` message. A local MLS group
//! that the server did not accept (a refused create or external join) is
//! deleted again, so no half-made group stays behind.

use hush_proto::{client_frame, v1, ErrorCode};

use super::commit::{AfterCatchUp, Intent};
use super::{
    identities_json, log_row, validate_handle, Client, CommitDone, GroupView, MAX_COMMIT_ATTEMPTS,
};
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::{GroupRow, GroupStatus};

impl Client {
    /// The group `query` names, if this device is still an active member.
    pub(super) fn active_group(&self, query: &str) -> Result<GroupRow> {
        let g = self.db.resolve_group(query)?;
        if g.status != GroupStatus::Active {
            return Err(ClientError::NoLongerMember {
                name: g.display_name(),
                left: g.status == GroupStatus::Left,
            });
        }
        Ok(g)
    }

    /// The group `query` names, for a change concerning users `handles`:
    /// checks their syntax first.
    fn active_group_for(&self, query: &str, handles: &[String]) -> Result<GroupRow> {
        for h in handles {
            validate_handle(h)?;
        }
        self.active_group(query)
    }

    /// Creates a group named `name` (the name stays end-to-end: it is only
    /// ever sent inside MLS messages).
    pub async fn create_group(&mut self, name: &str) -> Result<GroupRow> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ClientError::InvalidArgument("empty group name".into()));
        }
        let me = self.me()?;
        let new = mls::create_group(&self.db, &me)?;
        let r = self
            .ask::<v1::GroupCreated>(client_frame::Body::CreateGroup(v1::CreateGroup {
                group_info: new.group_info,
                ratchet_tree: new.ratchet_tree,
            }))
            .await;
        match r {
            Ok(c) if c.group_id == new.group_id || c.group_id.is_empty() => {}
            Ok(_) => {
                mls::delete_group(&self.db, &new.group_id)?;
                return Err(ClientError::Protocol(
                    "GroupCreated names another group".into(),
                ));
            }
            Err(e) => {
                mls::delete_group(&self.db, &new.group_id)?;
                return Err(e);
            }
        }
        self.db.atomically(|db| {
            db.upsert_group(&new.group_id, 0)?;
            db.set_group_name(&new.group_id, name)
        })?;
        self.db
            .group(&new.group_id)?
            .ok_or_else(|| ClientError::GroupNotFound(hex::encode(&new.group_id)))
    }

    /// Adds every device of each user (by handle) to a group, then tells the
    /// new members the group's name.
    pub async fn add_members(
        &mut self,
        group: &str,
        handles: &[String],
    ) -> Result<Option<CommitDone>> {
        let g = self.active_group_for(group, handles)?;
        let done = self
            .commit_intent(&g.group_id, Intent::Add(handles.to_vec()))
            .await?;
        if done.is_some() {
            self.send_name(&g.group_id).await?;
        }
        Ok(done)
    }

    /// Removes every device of each user (by handle) from a group.
    pub async fn remove_members(
        &mut self,
        group: &str,
        handles: &[String],
    ) -> Result<Option<CommitDone>> {
        let g = self.active_group_for(group, handles)?;
        let members = mls::members(&self.db, &g.group_id)?;
        for h in handles {
            if !members.iter().any(|m| mls::user_of(&m.identity) == h) {
                return Err(ClientError::InvalidArgument(format!(
                    "{h} is not a member of {}",
                    g.display_name()
                )));
            }
        }
        self.commit_intent(&g.group_id, Intent::Remove(handles.to_vec()))
            .await
    }

    /// Rotates this device's keys in a group (MLS self-update): commits an
    /// UpdatePath that gives this device's leaf a fresh HPKE key and renews
    /// the path secrets, so a past compromise of this device's group keys
    /// stops exposing new epochs. Pending proposals (a member's leave) are
    /// committed along with it. Returns the commit's seq and the new epoch.
    pub async fn self_update(&mut self, group: &str) -> Result<CommitDone> {
        let g = self.active_group(group)?;
        self.commit_intent(&g.group_id, Intent::SelfUpdate)
            .await?
            .ok_or_else(|| ClientError::Mls("self-update produced no commit".into()))
    }

    /// Leaves a group: sends this device's remove proposal (a remaining
    /// member commits it) and forgets the group's MLS state. Returns the
    /// proposal's seq.
    pub async fn leave(&mut self, group: &str) -> Result<u64> {
        let me = self.me()?;
        let g = self.active_group(group)?;
        let gid = g.group_id.clone();
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let proposal = mls::leave(&self.db, &me, &gid)?;
            let client_msg_id = self.random_id()?;
            let r = self
                .ask::<v1::ProposalAccepted>(client_frame::Body::SendProposal(v1::SendProposal {
                    group_id: gid.clone(),
                    proposal,
                    client_msg_id,
                }))
                .await;
            match r {
                Ok(acc) => {
                    self.db.atomically(|db| {
                        db.record_own_seq(&gid, acc.seq)?;
                        db.set_last_seq(&gid, acc.seq)?;
                        db.set_status(&gid, GroupStatus::Left)?;
                        let body = identities_json([me.mls_identity()]);
                        db.log(&gid, &log_row(acc.seq, &me.user_id, "left", body), true)?;
                        mls::delete_group(db, &gid)
                    })?;
                    self.buffered.remove(&gid);
                    return Ok(acc.seq);
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    mls::clear_pending_proposals(&self.db, &gid)?;
                    if let AfterCatchUp::Gone { last_seq } =
                        self.recover_stale_epoch(&gid, &e).await?
                    {
                        // Someone removed us meanwhile: we are out anyway.
                        return Ok(last_seq);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::GaveUp(
            "leave kept losing the epoch race".into(),
        ))
    }

    /// Joins (by external commit) every group some device of this user is
    /// in and this device is not. Returns the hex ids joined.
    pub async fn join_all_groups_of_user(&mut self) -> Result<Vec<String>> {
        let list: v1::GroupList = self
            .ask(client_frame::Body::ListGroups(v1::ListGroups {
                all_devices_of_user: true,
            }))
            .await?;
        let mut joined = Vec::new();
        for g in list.groups {
            let active = self
                .db
                .group(&g.group_id)?
                .is_some_and(|r| r.status == GroupStatus::Active)
                && mls::has_group(&self.db, &g.group_id)?;
            if active {
                continue;
            }
            match self.external_join(&g.group_id).await {
                Ok(_) => joined.push(hex::encode(&g.group_id)),
                Err(e) => {
                    tracing::warn!(group = %hex::encode(&g.group_id), error = %e, "external join failed");
                }
            }
        }
        if !joined.is_empty() {
            // Deliver what follows the join commits.
            self.sync().await?;
        }
        Ok(joined)
    }

    /// Joins one group by external commit (retrying when the epoch moves).
    pub async fn external_join(&mut self, group_id: &[u8]) -> Result<u64> {
        let me = self.me()?;
        for attempt in 0..MAX_COMMIT_ATTEMPTS {
            let info: v1::GroupInfoResult = self
                .ask(client_frame::Body::GetGroupInfo(v1::GetGroupInfo {
                    group_id: group_id.to_vec(),
                }))
                .await?;
            let (gid, out) =
                mls::external_join(&self.db, &me, &info.group_info, &info.ratchet_tree)?;
            if gid != group_id {
                mls::delete_group(&self.db, &gid)?;
                return Err(ClientError::Protocol(
                    "GroupInfo is for another group".into(),
                ));
            }
            // The tree comes from the server: every leaf must authenticate
            // before this device joins it.
            if let Err(e) = self.verify_tree(&gid).await {
                mls::delete_group(&self.db, &gid)?;
                return Err(e);
            }
            match self.send_commit(&gid, out).await {
                Ok(acc) => {
                    let members = mls::members(&self.db, &gid)?;
                    let body = identities_json(members.into_iter().map(|m| m.identity));
                    self.db.atomically(|db| {
                        db.upsert_group(&gid, acc.seq)?;
                        db.record_own_seq(&gid, acc.seq)?;
                        db.log(&gid, &log_row(acc.seq, &me.user_id, "joined", body), false)
                    })?;
                    tracing::info!(group = %hex::encode(&gid), seq = acc.seq, "joined by external commit");
                    return Ok(acc.seq);
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    tracing::debug!(attempt, "external join lost the epoch race; retrying");
                    mls::delete_group(&self.db, &gid)?;
                }
                Err(e) => {
                    mls::delete_group(&self.db, &gid)?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::GaveUp(
            "external join kept losing the epoch race".into(),
        ))
    }

    /// Local groups with their members.
    pub fn groups(&self) -> Result<Vec<GroupView>> {
        self.db
            .groups()?
            .into_iter()
            .map(|row| {
                let (epoch, members) = if row.status == GroupStatus::Active
                    && mls::has_group(&self.db, &row.group_id)?
                {
                    (
                        Some(mls::epoch(&self.db, &row.group_id)?),
                        self.members(&row.group_id)?,
                    )
                } else {
                    (None, Vec::new())
                };
                Ok(GroupView {
                    row,
                    epoch,
                    members,
                })
            })
            .collect()
    }

    /// One local group by name/id/prefix.
    pub fn group(&self, query: &str) -> Result<GroupRow> {
        self.db.resolve_group(query)
    }

    /// Member identities of a group (empty when no longer a member).
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<String>> {
        if !mls::has_group(&self.db, group_id)? {
            return Ok(Vec::new());
        }
        Ok(mls::members(&self.db, group_id)?
            .into_iter()
            .map(|m| m.identity)
            .collect())
    }
}
