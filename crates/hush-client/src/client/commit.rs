//! Commits and the stale-epoch retry. A group change is an [`Intent`],
//! rebuilt from scratch on every attempt (fresh members, fresh KeyPackages),
//! because the server accepts exactly one commit per epoch and answers the
//! losers STALE_EPOCH. [`Client::recover_stale_epoch`] is the one catch-up
//! every retry loop uses (commits here, leave proposals in `groups.rs`,
//! messages in `sending.rs`): it applies the timeline up to the head the
//! server named and says whether this device is still a member.
//!
//! Invariants: a commit is merged only after the server accepted it, and
//! merging, recording the seq as this device's own and logging the change
//! are one savepoint. On STALE_EPOCH (or any answer other than acceptance)
//! the pending commit is dropped before retrying. On a lost connection the
//! outcome is unknown, so the pending commit is kept: if the server took
//! it, it comes back in the timeline and is merged there. At most
//! [`MAX_COMMIT_ATTEMPTS`] attempts, each waiting at most
//! [`CATCH_UP_TIMEOUT`] for the timeline before falling back to a sync.

use std::time::Duration;

use hush_proto::{client_frame, v1, ErrorCode};
use openmls::prelude::KeyPackage;

use super::{identities_json, log_row, Client, CommitDone, MAX_COMMIT_ATTEMPTS};
use crate::error::{ClientError, Result};
use crate::mls::{self, Change, CommitOut, MemberInfo};
use crate::store::{GroupStatus, Identity, StateDb};
use crate::trust::{self, Verdict};

/// How long to wait for the timeline to reach a seq the server announced.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// What a group change intends, rebuilt from scratch on every attempt.
#[derive(Debug, Clone)]
pub(super) enum Intent {
    /// Add every device of these users.
    Add(Vec<String>),
    /// Add these devices of this device's own user (`<user>/<device>`
    /// identities): a newly linked device.
    AddOwnDevices(Vec<String>),
    /// Remove every device of these users.
    Remove(Vec<String>),
    /// Remove these devices (`<user>/<device>` identities).
    RemoveDevices(Vec<String>),
    /// Commit the proposals pending in the group (a member's leave).
    PendingProposals,
    /// Rotate this device's leaf keys (an UpdatePath commit).
    SelfUpdate,
}

/// Where a device stands after [`Client::recover_stale_epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterCatchUp {
    /// Still a member: build the change again on the new epoch.
    Member,
    /// Removed (or left) meanwhile; `last_seq` is the group's cursor.
    Gone { last_seq: u64 },
}

/// The answer to an operation on a group this device was removed from
/// while it retried.
pub(super) fn removed_from_group() -> ClientError {
    ClientError::Server {
        code: ErrorCode::NotMember,
        message: "removed from the group".into(),
        stale_epoch: None,
        retry_after_ms: None,
    }
}

impl Client {
    /// Builds, sends and merges a commit for `intent`, rebuilding it after
    /// every lost epoch race. `Ok(None)` when there turned out to be nothing
    /// to commit.
    pub(super) async fn commit_intent(
        &mut self,
        gid: &[u8],
        intent: Intent,
    ) -> Result<Option<CommitDone>> {
        let me = self.me()?;
        for attempt in 0..MAX_COMMIT_ATTEMPTS {
            let members = mls::members(&self.db, gid)?;
            let Some(change) = self.change_for(gid, &intent, &members).await? else {
                return Ok(None);
            };
            let out = mls::commit(&self.db, &me, gid, change)?;
            match self.send_commit(gid, out).await {
                Ok(acc) => {
                    let before: Vec<String> = members.into_iter().map(|m| m.identity).collect();
                    let done = self
                        .db
                        .atomically(|db| merge_own_commit(db, &me, gid, acc.seq, &before))?;
                    return Ok(Some(done));
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    tracing::debug!(attempt, "commit lost the epoch race; catching up");
                    mls::clear_pending(&self.db, gid)?;
                    if let AfterCatchUp::Gone { .. } = self.recover_stale_epoch(gid, &e).await? {
                        return Err(removed_from_group());
                    }
                }
                Err(e @ ClientError::Disconnected(_)) => {
                    // Outcome unknown: keep the pending commit. If the server
                    // took it, it comes back in the timeline and is merged.
                    return Err(e);
                }
                Err(e) => {
                    mls::clear_pending(&self.db, gid)?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::GaveUp(
            "commit kept losing the epoch race".into(),
        ))
    }

    /// Sends a commit bundle (commit, Welcome if adding, GroupInfo, tree)
    /// under a fresh `client_msg_id` and waits for the server's verdict.
    pub(super) async fn send_commit(
        &mut self,
        gid: &[u8],
        out: CommitOut,
    ) -> Result<v1::CommitAccepted> {
        let client_msg_id = self.random_id()?;
        self.ask(client_frame::Body::SendCommit(v1::SendCommit {
            group_id: gid.to_vec(),
            commit: out.commit,
            welcome: out.welcome.unwrap_or_default(),
            group_info: out.group_info,
            ratchet_tree: out.ratchet_tree,
            client_msg_id,
        }))
        .await
    }

    /// The MLS change `intent` means for the group as it is now, or `None`
    /// when there is nothing to do (everyone already in or out, no
    /// proposals pending).
    async fn change_for(
        &mut self,
        gid: &[u8],
        intent: &Intent,
        members: &[MemberInfo],
    ) -> Result<Option<Change>> {
        let change = match intent {
            Intent::Add(handles) => {
                let mut kps = Vec::new();
                for h in handles {
                    let claimed = self.claim_new_devices(h, members).await;
                    kps.extend(claimed.map_err(|e| e.for_user(h))?);
                }
                (!kps.is_empty()).then_some(Change::Add(kps))
            }
            Intent::AddOwnDevices(identities) => {
                let missing: Vec<&String> = identities
                    .iter()
                    .filter(|i| !members.iter().any(|m| &m.identity == *i))
                    .collect();
                if missing.is_empty() {
                    return Ok(None);
                }
                let me = self.me()?;
                let kps: Vec<KeyPackage> = self
                    .claim_new_devices(&me.user_id, members)
                    .await?
                    .into_iter()
                    .filter(|kp| missing.contains(&&mls::key_package_identity(kp)))
                    .collect();
                if kps.is_empty() {
                    return Err(ClientError::Server {
                        code: ErrorCode::NoKeyPackage,
                        message: "the new device has no key package yet".into(),
                        stale_epoch: None,
                        retry_after_ms: None,
                    });
                }
                Some(Change::Add(kps))
            }
            Intent::Remove(handles) => {
                let leaves: Vec<u32> = members
                    .iter()
                    .filter(|m| handles.iter().any(|h| mls::user_of(&m.identity) == h))
                    .map(|m| m.leaf)
                    .collect();
                (!leaves.is_empty()).then_some(Change::Remove(leaves))
            }
            Intent::RemoveDevices(identities) => {
                let leaves: Vec<u32> = members
                    .iter()
                    .filter(|m| identities.contains(&m.identity))
                    .map(|m| m.leaf)
                    .collect();
                (!leaves.is_empty()).then_some(Change::Remove(leaves))
            }
            Intent::PendingProposals => {
                mls::has_pending_proposals(&self.db, gid)?.then_some(Change::PendingProposals)
            }
            Intent::SelfUpdate => Some(Change::SelfUpdate),
        };
        Ok(change)
    }

    /// Claims one KeyPackage per device of user `handle` and keeps the valid
    /// ones of that user's devices that are not members yet. The directory
    /// is asked first (a device that appeared raises its alert before it is
    /// added), and a package whose leaf is not the pinned device key is
    /// skipped.
    async fn claim_new_devices(
        &mut self,
        handle: &str,
        members: &[MemberInfo],
    ) -> Result<Vec<KeyPackage>> {
        self.refresh_user(handle).await?;
        let claimed: v1::ClaimedKeyPackages = self
            .ask(client_frame::Body::ClaimKeyPackages(v1::ClaimKeyPackages {
                user_id: handle.to_string(),
            }))
            .await?;
        let mut kps = Vec::new();
        for c in claimed.key_packages {
            let kp = match mls::parse_key_package(&self.db, &c.key_package) {
                Ok(kp) => kp,
                Err(e) => {
                    tracing::warn!(user = %handle, device = %c.device_id, error = %e, "skipping bad key package");
                    continue;
                }
            };
            let ident = mls::key_package_identity(&kp);
            if mls::user_of(&ident) != handle {
                tracing::warn!(user = %handle, "key package of another user; skipped");
                continue;
            }
            if members.iter().any(|m| m.identity == ident) {
                continue; // that device is already in
            }
            let key = kp.leaf_node().signature_key().as_slice();
            match trust::check_leaf(&self.db, &ident, Some(key))? {
                Verdict::Trusted => kps.push(kp),
                Verdict::Forged(why) => {
                    tracing::warn!(user = %handle, reason = %why, "key package does not match the directory; skipped")
                }
                Verdict::Unknown { .. } => {
                    tracing::warn!(user = %handle, device = %c.device_id, "key package of a device the directory does not list; skipped")
                }
            }
        }
        Ok(kps)
    }

    /// Commits the proposals pending in an active group, if there are any
    /// (the deferred work after a member's leave proposal).
    pub(super) async fn commit_pending_if_any(&mut self, gid: &[u8]) -> Result<()> {
        let active = self
            .db
            .group(gid)?
            .is_some_and(|g| g.status == GroupStatus::Active);
        if !active || !mls::has_pending_proposals(&self.db, gid)? {
            return Ok(());
        }
        self.commit_intent(gid, Intent::PendingProposals)
            .await
            .map(|_| ())
    }

    /// The stale-epoch catch-up: after the server answered `stale` (a
    /// STALE_EPOCH error) for group `gid`, applies the timeline up to the
    /// head the server named and says whether this device is still a member.
    pub(super) async fn recover_stale_epoch(
        &mut self,
        gid: &[u8],
        stale: &ClientError,
    ) -> Result<AfterCatchUp> {
        let head_seq = match stale {
            ClientError::Server { stale_epoch, .. } => stale_epoch.as_ref().map(|s| s.head_seq),
            _ => None,
        };
        self.catch_up(gid, head_seq).await?;
        Ok(match self.db.group(gid)? {
            Some(g) if g.status != GroupStatus::Active => AfterCatchUp::Gone {
                last_seq: g.last_seq,
            },
            _ => AfterCatchUp::Member,
        })
    }

    /// Processes events until the group's cursor reaches `head_seq`. Falls
    /// back to a full re-sync if the events do not come in time.
    async fn catch_up(&mut self, gid: &[u8], head_seq: Option<u64>) -> Result<()> {
        let reached = |db: &StateDb| -> Result<bool> {
            let last = db.group(gid)?.map(|g| g.last_seq).unwrap_or(0);
            Ok(head_seq.is_some_and(|h| last >= h))
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        while !reached(&self.db)? {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || head_seq.is_none() {
                break;
            }
            match self.wait_event_within(left).await? {
                Some(p) => self.process_pushed(p).await?,
                None => {
                    tracing::debug!("catch-up wait timed out");
                    break;
                }
            }
        }
        self.flush_acks()?;
        if !reached(&self.db)? {
            // Ask again from our cursors: whatever is missing gets re-sent.
            self.sync_deferring_actions().await?;
        }
        Ok(())
    }
}

/// Merges this device's accepted commit at `seq` inside the caller's
/// savepoint: the seq is recorded as its own, and who was added or removed
/// (compared with `before`, the members it was built against) is logged.
fn merge_own_commit(
    db: &StateDb,
    me: &Identity,
    gid: &[u8],
    seq: u64,
    before: &[String],
) -> Result<CommitDone> {
    let leavers = mls::pending_leavers(db, gid)?;
    mls::merge_pending(db, gid)?;
    db.record_own_seq(gid, seq)?;
    let after: Vec<String> = mls::members(db, gid)?
        .into_iter()
        .map(|m| m.identity)
        .collect();
    let added: Vec<String> = after
        .iter()
        .filter(|i| !before.contains(i))
        .cloned()
        .collect();
    let removed: Vec<String> = before
        .iter()
        .filter(|i| !after.contains(i))
        .cloned()
        .collect();
    // A member who left is logged as leaving, by itself (see timeline.rs).
    let (left, kicked): (Vec<String>, Vec<String>) =
        removed.iter().cloned().partition(|i| leavers.contains(i));
    for (kind, list) in [("added", &added), ("removed", &kicked)] {
        if !list.is_empty() {
            let body = identities_json(list.iter().cloned());
            db.log(gid, &log_row(seq, &me.user_id, kind, body), true)?;
        }
    }
    if let Some(first) = left.first() {
        let row = log_row(
            seq,
            mls::user_of(first),
            "left",
            identities_json(left.clone()),
        );
        db.log(gid, &row, true)?;
    }
    Ok(CommitDone {
        seq,
        epoch: mls::epoch(db, gid)?,
        added,
        removed,
    })
}
