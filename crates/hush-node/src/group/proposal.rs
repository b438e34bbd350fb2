//! Standalone proposals (`SendProposal`): authorized like the commits that
//! could carry them (an Update keeps the proposer's identity and registered
//! key, an Add names a registered device), queued in the tracked group
//! state (so the commit that references them validates) and appended to
//! the timeline together with that state, then fanned out.

use hush_ds::ProposalEffect;
use hush_proto::{v1, ErrorCode};
use hush_store::{AppendOutcome, EntryKind, NewEntry};

use super::actor::{stale_with_head, GroupActor, GroupState};
use super::commit::check_registered;
use crate::error::{ApiError, ApiResult};
use crate::wire::Caller;

impl GroupActor {
    pub(super) async fn on_proposal(
        &self,
        state: &mut GroupState,
        caller: &Caller,
        req: v1::SendProposal,
    ) -> ApiResult<v1::ProposalAccepted> {
        Self::check_msg_id(&req.client_msg_id)?;
        self.check_size("proposal", req.proposal.len())?;
        let now = self.now_ms();
        let group_id = state.group_id.clone();
        let loaded = self.load(state, now).await?;
        Self::member_check(loaded, caller)?;
        let before = Self::snapshot(loaded)?;
        let effect = loaded
            .tracker
            .apply_proposal(&req.proposal)
            .map_err(|e| stale_with_head(e.into(), loaded.head_seq))?;
        if let Err(e) = self.authorize_proposal(caller, &effect).await {
            Self::restore(loaded, &before)?;
            return Err(e);
        }
        let entry = NewEntry {
            kind: EntryKind::Proposal,
            epoch: effect.epoch,
            sender: caller.identity(),
            client_msg_id: req.client_msg_id,
            message: req.proposal,
            server_time_ms: now,
        };
        let state_bytes = Self::snapshot(loaded)?;
        // The entry and the state that queues the proposal land together.
        let result = self
            .groups
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
            AppendOutcome::Appended { .. } => {
                loaded.head_seq = seq;
                let members = loaded.members.clone();
                metrics::counter!("hush_messages_in_total", "kind" => "proposal").increment(1);
                self.fan_out(&group_id, seq, &entry, &members).await;
            }
            // A retry: the tracker queued the proposal a second time in
            // memory; reload the stored state, which has it once.
            AppendOutcome::Duplicate { .. } => state.loaded = None,
        }
        Ok(v1::ProposalAccepted { group_id, seq })
    }

    /// The proposer is the authenticated device; an Update keeps its
    /// identity and carries its registered key; an Add names a registered
    /// device with its key (the rules commits follow, checked as early as
    /// the proposal so that no member queues what no commit could carry).
    async fn authorize_proposal(&self, caller: &Caller, effect: &ProposalEffect) -> ApiResult<()> {
        if effect.sender != caller.identity().as_bytes() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "proposal sender is not the authenticated device",
            ));
        }
        effect.check_leaf_identities()?;
        let store = self.groups.store.as_ref();
        if let Some(update) = &effect.update {
            let leaf = &update.after;
            check_registered(store, &leaf.identity, &leaf.signature_key).await?;
        }
        if let Some(add) = &effect.add {
            check_registered(store, &add.identity, &add.signature_key).await?;
        }
        Ok(())
    }
}
