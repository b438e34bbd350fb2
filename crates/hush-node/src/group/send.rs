//! Application messages: `SendMessage` (stored, sequenced, fanned out) and
//! `SendEphemeral` (typing: validated the same way, fanned out to online
//! devices, never stored).
//!
//! Both pass [`GroupActor::check_application`]: size, membership of the
//! authenticated device, and the PrivateMessage header (content type
//! application, this group, epoch within `limits.epoch_window`). The server
//! reads nothing else of the message.

use hush_proto::{server_frame::Body as Reply, v1};
use hush_store::{AppendOutcome, EntryKind, MemberDevice, NewEntry};

use super::actor::{stale_with_head, GroupActor, GroupState, Loaded};
use crate::error::ApiResult;
use crate::wire::{encode, Caller, Outbound};

impl GroupActor {
    /// The checks every application message passes; returns the loaded
    /// group and the message's epoch.
    async fn check_application<'s>(
        &self,
        state: &'s mut GroupState,
        caller: &Caller,
        message: &[u8],
        now: u64,
    ) -> ApiResult<(&'s mut Loaded, u64)> {
        self.check_size("message", message.len())?;
        let window = self.groups.limits.epoch_window;
        let loaded = self.load(state, now).await?;
        Self::member_check(loaded, caller)?;
        let epoch = loaded
            .tracker
            .check_application(message, window)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        Ok((loaded, epoch))
    }

    /// One frame to every member device but the sender's, through the
    /// sessions online now. No store write, no seq, no client_msg_id: a
    /// retry is just another typing notice.
    pub(super) async fn on_ephemeral(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendEphemeral,
    ) -> ApiResult<v1::EphemeralAccepted> {
        let now = self.now_ms();
        let group_id = state.group_id.clone();
        let (loaded, epoch) = self
            .check_application(state, caller, &req.message, now)
            .await?;
        let to: Vec<MemberDevice> = loaded
            .members
            .iter()
            .filter(|m| m.device_id != caller.device_id)
            .cloned()
            .collect();
        let frame = encode(
            0,
            Reply::EphemeralEvent(v1::EphemeralEvent {
                group_id,
                epoch,
                message: req.message,
            }),
        );
        self.groups
            .sessions
            .deliver(&to, Outbound::Ephemeral { frame })
            .await;
        metrics::counter!("hush_ephemeral_messages_total").increment(1);
        Ok(v1::EphemeralAccepted {})
    }

    /// Appends under the fence, then fans out, then acks. A repeated
    /// `client_msg_id` is acked with its original seq and not fanned out.
    pub(super) async fn on_send(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendMessage,
    ) -> ApiResult<v1::MessageAccepted> {
        Self::check_msg_id(&req.client_msg_id)?;
        let now = self.now_ms();
        let group_id = state.group_id.clone();
        let (loaded, epoch) = self
            .check_application(state, caller, &req.message, now)
            .await?;
        let entry = NewEntry {
            kind: EntryKind::Application,
            epoch,
            sender: caller.identity(),
            client_msg_id: req.client_msg_id,
            message: req.message,
            server_time_ms: now,
        };
        let outcome = self
            .groups
            .store
            .append_message(&group_id, loaded.lease.token, &entry)
            .await?;
        let seq = outcome.seq();
        let duplicate = matches!(outcome, AppendOutcome::Duplicate { .. });
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
}
