//! Application messages: `SendMessage` (stored, sequenced, fanned out) and
//! `SendEphemeral` (typing: validated the same way, fanned out to online
//! devices, never stored).
//!
//! Both pass [`GroupActor::check_application`]: size, membership of the
//! authenticated device, and the PrivateMessage header (content type
//! application, this group, epoch within `limits.epoch_window`). The server
//! reads nothing else of the message.

use std::sync::Arc;

use hush_proto::{server_frame::Body as Reply, v1};
use hush_store::{AppendOutcome, EntryKind, MemberDevice, NewEntry};

use super::actor::{stale_with_head, GroupActor, GroupState, Loaded};
use crate::error::ApiResult;
use crate::wire::{encode, Caller, Outbound};

/// A stored message's fan-out, made after the sender's ack is sent (see
/// [`GroupActor::on_send`]).
pub(super) struct FanOut {
    group_id: Vec<u8>,
    seq: u64,
    entry: NewEntry,
    members: Arc<[MemberDevice]>,
}

impl GroupActor {
    /// Hands a stored message to its members' sessions.
    pub(super) async fn finish_fan_out(&self, f: FanOut) {
        self.fan_out(&f.group_id, f.seq, &f.entry, &f.members).await;
    }

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

    /// Appends under the fence and returns the ack with the fan-out still
    /// to make: the actor answers the sender first, then fans out, so the
    /// sender's ack never waits for the group's size (the message is durable
    /// once the append returned), and the next message of the group waits
    /// for this fan-out (one at a time: per-group order holds). A repeated
    /// `client_msg_id` is acked with its original seq and not fanned out.
    pub(super) async fn on_send(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendMessage,
    ) -> ApiResult<(v1::MessageAccepted, Option<FanOut>)> {
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
        let fan_out = if duplicate {
            None
        } else {
            loaded.head_seq = seq;
            metrics::counter!("hush_messages_in_total", "kind" => "application").increment(1);
            Some(FanOut {
                group_id: group_id.clone(),
                seq,
                entry,
                members: loaded.members.clone(),
            })
        };
        let accepted = v1::MessageAccepted {
            group_id,
            seq,
            duplicate,
        };
        Ok((accepted, fan_out))
    }
}
