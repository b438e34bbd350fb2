//! Presence announcements: a user's online/offline change, pushed by its
//! session to the devices of everyone who shares a group with it — a group
//! the user *joined*.
//!
//! Consent: being added to a group is not joining it. A user's presence is
//! visible to a group only once one of its devices joined: it created the
//! group (joined at seq 0), or acknowledged a seq at or past the commit that
//! added it (its client processed the Welcome; see [`joined_groups`]). Until
//! then the group's members are told nothing of it, and `GetPresence` shows
//! it offline. Its join pushes its current presence to the group
//! ([`Sessions::announce_joined`]).
//!
//! An announcement is one `PresenceEvent` frame to every device of every
//! other user that shares a joined group with the user, read from the store
//! at the moment of the change, in groups of at most
//! `actors.presence_push_max_members` member devices (in a larger group a
//! push per member per change is O(n^2) as the group forms: members ask
//! with `GetPresence` instead, as Discord's large guilds do), delivered as [`Outbound::Ephemeral`]
//! (written only to connections that are live and synced, never replayed).
//! Best effort: a store error is logged, and the next change says it
//! again. Presence is metadata the server sees (ARCHITECTURE.md, "What the
//! server can see").

use std::collections::BTreeSet;

use hush_proto::{server_frame::Body as Reply, v1};
use hush_store::{MemberDevice, Store, StoreError};

use super::Sessions;
use crate::wire::{encode, Outbound};

/// The groups `device_id` has joined (see [`hush_store::joined_groups`]).
pub async fn joined_groups(
    store: &dyn Store,
    device_id: &str,
) -> Result<BTreeSet<Vec<u8>>, StoreError> {
    let cursors = store.cursors(device_id).await?;
    Ok(hush_store::joined_groups(
        store.groups_of_device(device_id).await?,
        &cursors,
    ))
}

impl Sessions {
    /// Presence changes are pushed to groups of at most this many member
    /// devices (`actors.presence_push_max_members`).
    pub fn presence_push_max_members(&self) -> usize {
        self.limits.presence_push_max_members
    }

    /// Pushes `user_id`'s new presence to the devices of its co-members,
    /// and tells the user's witness (`witness.rs`).
    pub(super) async fn announce(&self, user_id: &str, online: bool) {
        self.tell_witness(user_id, online);
        self.push_to_co_members(user_id, online).await;
    }

    /// The offline a session that died with its node never announced
    /// (`witness.rs`).
    pub(super) async fn announce_offline_for_the_dead(&self, user_id: &str) {
        self.push_to_co_members(user_id, false).await;
    }

    async fn push_to_co_members(&self, user_id: &str, online: bool) {
        // Every device of every other user sharing a group the user joined.
        let max = self.limits.presence_push_max_members;
        let devices = match self.store.co_member_devices(user_id, max).await {
            Ok(d) => d,
            Err(e) => {
                // While the node stops, its sessions' last announcements
                // race the store's own shutdown: not worth a warning each.
                if self.shutdown.is_shutting_down() {
                    tracing::debug!(user = %user_id, error = %e, "presence: not announced while stopping");
                } else {
                    tracing::warn!(user = %user_id, error = %e, "presence: reading co-members failed");
                }
                return;
            }
        };
        metrics::counter!("hush_presence_changes_total", "online" => if online { "true" } else { "false" })
            .increment(1);
        self.push_presence(user_id, online, &devices).await;
    }

    /// A device of `user_id` just joined `group_id`: its user's presence
    /// becomes visible there, so the group's other members learn it now
    /// (if it is online; offline is what they assumed).
    pub async fn announce_joined(&self, user_id: &str, group_id: &[u8]) {
        let user = BTreeSet::from([user_id.to_owned()]);
        match self.online_users(&user).await {
            Ok(online) if online.contains(user_id) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::info!(user = %user_id, error = %e, "presence: join announcement skipped");
                return;
            }
        }
        let devices: Vec<MemberDevice> = match self.store.group_members(group_id).await {
            Ok(members) if members.len() <= self.limits.presence_push_max_members => members
                .into_iter()
                .filter(|m| m.user_id != user_id)
                .collect(),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(user = %user_id, error = %e, "presence: reading the group failed");
                return;
            }
        };
        self.push_presence(user_id, true, &devices).await;
    }

    async fn push_presence(&self, user_id: &str, online: bool, devices: &[MemberDevice]) {
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
        self.deliver(devices, Outbound::Ephemeral { frame }).await;
    }
}
