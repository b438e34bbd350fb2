//! Presence announcements: a user's online/offline change, pushed by its
//! session to the devices of everyone who shares a group with it.
//!
//! An announcement is one `PresenceEvent` frame to every device of every
//! other user that shares a group with the user, read from the store at the
//! moment of the change, delivered as [`Outbound::Ephemeral`] (written only
//! to connections that are live and synced, never replayed). Best effort: a
//! store error is logged, and the next change says it again. Presence is
//! metadata the server sees (ARCHITECTURE.md, "What the server can see").

use std::collections::BTreeSet;

use hush_proto::{server_frame::Body as Reply, v1};
use hush_store::{MemberDevice, StoreError};

use super::Sessions;
use crate::wire::{encode, Outbound};

impl Sessions {
    /// Pushes `user_id`'s new presence to the devices of its co-members.
    pub(super) async fn announce(&self, user_id: &str, online: bool) {
        let devices = match self.co_member_devices(user_id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(user = %user_id, error = %e, "presence: reading co-members failed");
                return;
            }
        };
        metrics::counter!("hush_presence_changes_total", "online" => if online { "true" } else { "false" })
            .increment(1);
        if devices.is_empty() {
            return;
        }
        let frame = encode(
            0,
            Reply::PresenceEvent(v1::PresenceEvent {
                user_id: user_id.to_owned(),
                online,
            }),
        );
        self.deliver(&devices, Outbound::Ephemeral { frame }).await;
    }

    /// Every device of every other user that shares a group with `user_id`.
    async fn co_member_devices(&self, user_id: &str) -> Result<Vec<MemberDevice>, StoreError> {
        let store = &self.store;
        let mut groups = BTreeSet::new();
        for d in store.devices_of_user(user_id).await? {
            for g in store.groups_of_device(&d.device_id).await? {
                groups.insert(g.group_id);
            }
        }
        let mut devices = BTreeSet::new();
        for g in groups {
            if let Some(record) = store.group(&g).await? {
                devices.extend(record.members.into_iter().filter(|m| m.user_id != user_id));
            }
        }
        Ok(devices.into_iter().collect())
    }
}
