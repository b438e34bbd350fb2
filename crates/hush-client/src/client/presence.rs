//! Presence and typing: live only, never stored. Typing notices travel as
//! ephemeral MLS application messages the server relays to the members
//! online now and does not store; presence comes from a snapshot the client
//! asks for and the server's pushed changes. Both end up in [`LiveState`].
//!
//! Invariants: an ephemeral message is decrypted in its own savepoint (it
//! moves the sender's MLS ratchet) and is never logged nor acknowledged; one
//! that does not process, or whose sender's device is not pinned as
//! current, is dropped, since it is only a hint. A typing notice is skipped
//! rather than forcing a commit of pending proposals.

use hush_proto::{client_frame, v1};

use super::Client;
use crate::envelope::Envelope;
use crate::error::{ClientError, Result};
use crate::live::LiveState;
use crate::mls;
use crate::store::{now_ms, GroupStatus};
use crate::trust::{self, Verdict};

impl Client {
    /// Tells the group's members that are online now that this user is
    /// typing: an ephemeral MLS application message the server does not
    /// store. Skipped (Ok) while proposals are pending, because openmls
    /// cannot encrypt then and a typing notice is not worth a commit.
    pub async fn send_typing(&mut self, group: &str) -> Result<()> {
        let me = self.me()?;
        let g = self.active_group(group)?;
        if mls::has_pending_proposals(&self.db, &g.group_id)? {
            return Ok(());
        }
        let message = mls::encrypt(
            &self.db,
            &me,
            &g.group_id,
            &Envelope::Typing.encode_padded(),
        )?;
        let _: v1::EphemeralAccepted = self
            .ask(client_frame::Body::SendEphemeral(v1::SendEphemeral {
                group_id: g.group_id,
                message,
            }))
            .await?;
        Ok(())
    }

    /// Fetches the presence of a group's members (then pushed changes keep
    /// it current, unless the group is too large for the server to push
    /// them: see [`LiveState::presence_pushed`]). Returns (handle, online)
    /// per member user.
    pub async fn refresh_presence(&mut self, group: &str) -> Result<Vec<(String, bool)>> {
        let g = self.active_group(group)?;
        let list: v1::PresenceList = self
            .ask(client_frame::Body::GetPresence(v1::GetPresence {
                group_id: g.group_id.clone(),
            }))
            .await?;
        let users: Vec<(String, bool)> = list
            .users
            .into_iter()
            .map(|u| (u.user_id, u.online))
            .collect();
        self.live
            .presence_snapshot(&g.group_id, list.pushed, users.clone());
        Ok(users)
    }

    /// Presence and typing as known now.
    pub fn live(&self) -> &LiveState {
        &self.live
    }

    /// Presence and typing, to consume changes or clear a typing notice.
    pub fn live_mut(&mut self) -> &mut LiveState {
        &mut self.live
    }

    /// An ephemeral message (typing): decrypted in its own savepoint (it
    /// moves the sender's MLS ratchet), never logged, never acknowledged.
    /// One that does not process (a group not joined yet, an epoch not
    /// reached yet) is dropped: it is only a hint.
    pub(super) fn on_ephemeral(&mut self, ev: v1::EphemeralEvent) {
        let gid = ev.group_id;
        let active = self
            .db
            .group(&gid)
            .ok()
            .flatten()
            .is_some_and(|g| g.status == GroupStatus::Active);
        if !active || !mls::has_group(&self.db, &gid).unwrap_or(false) {
            return;
        }
        // Only a device pinned as current may show as typing; an unknown one
        // is not worth a directory request for a hint.
        let authenticate = |a: &mls::Authenticate<'_>| match trust::check_leaf(
            &self.db,
            a.sender,
            a.sender_key,
        )? {
            Verdict::Trusted => Ok(()),
            Verdict::Forged(why) => Err(ClientError::Forged(why)),
            Verdict::Unknown { user } => Err(ClientError::Forged(format!(
                "typing notice from a device of {user} that is not pinned"
            ))),
        };
        match self
            .db
            .atomically(|db| mls::process(db, &gid, &ev.message, authenticate))
        {
            Ok(mls::Processed::Application { sender, plaintext }) => {
                if let Ok(Envelope::Typing) = Envelope::decode(&plaintext) {
                    self.live.typing_seen(&gid, mls::user_of(&sender), now_ms());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(group = %hex::encode(&gid), error = %e, "dropping ephemeral message")
            }
        }
    }
}
