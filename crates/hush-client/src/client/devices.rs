//! This user's devices: list them, and revoke one (a lost or stolen device,
//! a ghost device nobody here linked).
//!
//! Invariants: the server forgets a revoked device at once (its tokens,
//! logins, links and external joins are refused and its connections
//! closed), but only a member can take its leaf out of a group: the
//! revoking device commits a remove in every group where the revoked device
//! still has a leaf, through `commit.rs`, so each survives lost epoch races.
//! The revoked device is unpinned first, so this user's own revocation
//! raises no "your devices changed" alert here, while other members' clients
//! see the device gone from the directory and refuse its leaf from then on.

use hush_proto::{client_frame, v1};

use super::commit::Intent;
use super::Client;
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::GroupStatus;

/// One of this user's current devices, as `hush device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub device_id: String,
    /// Ed25519 public key (32 bytes).
    pub signature_key: Vec<u8>,
    pub created_at_ms: u64,
    /// The device this client runs on.
    pub this_device: bool,
}

/// What [`Client::revoke_device`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub device_id: String,
    /// Hex ids of the groups the device was removed from, with the seq of
    /// each remove commit.
    pub removed_from: Vec<(String, u64)>,
}

impl Client {
    /// This user's current devices (revoked ones are not listed).
    pub async fn devices(&mut self) -> Result<Vec<DeviceView>> {
        let list: v1::DeviceList = self
            .ask(client_frame::Body::ListDevices(v1::ListDevices {}))
            .await?;
        Ok(list
            .devices
            .into_iter()
            .map(|d| DeviceView {
                device_id: d.device_id,
                signature_key: d.signature_key,
                created_at_ms: d.created_at_ms,
                this_device: d.this_device,
            })
            .collect())
    }

    /// Revokes another device of this user (a device id or a unique prefix
    /// of one) and removes it from every group this device shares with it.
    pub async fn revoke_device(&mut self, query: &str) -> Result<Revoked> {
        let me = self.me()?;
        let devices = self.devices().await?;
        let matching: Vec<&DeviceView> = devices
            .iter()
            .filter(|d| d.device_id.starts_with(query))
            .collect();
        let device_id = match (query.is_empty(), matching.as_slice()) {
            (false, [d]) => d.device_id.clone(),
            (false, []) => {
                return Err(ClientError::InvalidArgument(format!(
                    "{query} is not one of your devices (hush device list)"
                )))
            }
            _ => {
                return Err(ClientError::InvalidArgument(format!(
                    "{query:?} names more than one of your devices"
                )))
            }
        };
        if device_id == me.device_id {
            return Err(ClientError::InvalidArgument(
                "this is the device you are on; revoke it from another device".into(),
            ));
        }
        let _: v1::DeviceRevoked = self
            .ask(client_frame::Body::RevokeDevice(v1::RevokeDevice {
                device_id: device_id.clone(),
            }))
            .await?;
        tracing::info!(device = %device_id, "revoked a device");
        // Expected here: no alert about our own devices for it.
        self.db.unpin_device(&me.user_id, &device_id)?;
        self.refresh_user(&me.user_id).await?;

        let identity = format!("{}/{}", me.user_id, device_id);
        let mut removed_from = Vec::new();
        for g in self.db.groups()? {
            if g.status != GroupStatus::Active || !mls::has_group(&self.db, &g.group_id)? {
                continue;
            }
            let has_leaf = mls::members(&self.db, &g.group_id)?
                .iter()
                .any(|m| m.identity == identity);
            if !has_leaf {
                continue;
            }
            if let Some(done) = self
                .commit_intent(&g.group_id, Intent::RemoveDevices(vec![identity.clone()]))
                .await?
            {
                removed_from.push((g.hex_id(), done.seq));
            }
        }
        Ok(Revoked {
            device_id,
            removed_from,
        })
    }
}
