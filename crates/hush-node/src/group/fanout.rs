//! Fan-out of accepted entries: one `GroupEvent` frame, encoded once and
//! shared, handed to the sessions of the member devices; and the live push
//! of a commit's Welcomes to the devices it added. Both run strictly after
//! the store made the entry durable.

use std::collections::BTreeSet;
use std::sync::Arc;

use hush_store::{MemberDevice, NewEntry};

use super::actor::GroupActor;
use crate::wire::{inbox_frame, EntryRef, Outbound};

impl GroupActor {
    pub(super) async fn fan_out(
        &self,
        group_id: &[u8],
        seq: u64,
        entry: &NewEntry,
        to: &[MemberDevice],
    ) {
        // Called right after the store's append returned: durable now.
        let durable_at = std::time::Instant::now();
        let frame = EntryRef {
            group_id,
            seq,
            kind: entry.kind,
            epoch: entry.epoch,
            sender: &entry.sender,
            message: &entry.message,
            server_time_ms: entry.server_time_ms,
        }
        .frame();
        let item = Outbound::Group {
            group_id: Arc::from(group_id),
            seq,
            frame,
            durable_at: Some(durable_at),
        };
        self.groups.sessions.deliver(to, item).await;
    }

    /// Live Welcome delivery to online added devices; offline ones read
    /// their inbox on next sync. The inbox_seq is read back from the store
    /// so that live and synced items carry the same resume position.
    pub(super) async fn push_welcomes(
        &self,
        group_id: &[u8],
        commit_seq: u64,
        added: &BTreeSet<MemberDevice>,
    ) {
        for d in added {
            let items = match self
                .groups
                .store
                .read_inbox(&d.device_id, 0, u32::MAX)
                .await
            {
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
                let frame = inbox_frame(&item);
                self.groups
                    .sessions
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
