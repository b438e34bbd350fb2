//! This user's devices: link a new one, list them, and revoke one (a lost
//! or stolen device, a ghost device nobody here linked).
//!
//! Linking is an Add + Welcome from a device the user already has: the
//! device that printed the link code waits for the new device to appear in
//! the user's device list and upload KeyPackages, then adds it to each of
//! its groups and tells each group its name in the new epoch (an encrypted
//! `name` message), so the new device shows every group by name at once.
//! The new device waits for those Welcomes; only groups nobody added it to
//! within its wait are joined by external commit (their name then comes from
//! the member with the lowest leaf, see `timeline.rs`). A device that is not
//! in the directory is never added: the waiting device adds only a device of
//! its own user that appeared after it issued the code, and its key is the
//! one pinned from the directory (`claim_new_devices` checks it).
//!
//! Invariants: the server forgets a revoked device at once (its tokens,
//! logins, links and external joins are refused and its connections
//! closed), but only a member can take its leaf out of a group: the
//! revoking device commits a remove in every group where the revoked device
//! still has a leaf, through `commit.rs`, so each survives lost epoch races.
//! The revoked device is unpinned first, so this user's own revocation
//! raises no "your devices changed" alert here, while other members' clients
//! see the device gone from the directory and refuse its leaf from then on.

use std::time::Duration;

use hush_proto::{client_frame, v1, ErrorCode};
use tokio::time::Instant;

use super::commit::Intent;
use super::Client;
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::GroupStatus;

/// How long `hush device link-code` waits for the new device by default
/// (the server keeps a code valid for 10 minutes).
pub const LINK_WAIT: Duration = Duration::from_secs(300);
/// How long a new device waits for its user's other devices to add it to
/// their groups before it joins the rest by external commit.
pub const LINK_WELCOME_WAIT: Duration = Duration::from_secs(60);
/// How often the waiting device asks for the user's device list, and how
/// long it waits before claiming the new device's KeyPackages again: the
/// server tells a user's devices nothing when another one links, and the
/// new device uploads its KeyPackages only after it redeemed the code.
const LINK_POLL: Duration = Duration::from_millis(300);
/// How many times the new device's KeyPackages are claimed for one group
/// before that group is given up (about 6 s with [`LINK_POLL`]).
const LINK_CLAIM_ATTEMPTS: usize = 20;
/// The longest rate-limit wait honoured between two claims. Claims on one
/// user are limited (a burst of 10, then 2 a minute by default), and
/// linking claims once per group: a user with many groups waits here.
const LINK_RATE_LIMIT_MAX_WAIT: Duration = Duration::from_secs(60);

/// What [`Client::add_linked_device`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedDevice {
    pub device_id: String,
    /// Hex ids of the groups the device was added to, with the seq of each
    /// adding commit.
    pub added_to: Vec<(String, u64)>,
    /// Hex ids of the groups it could not be added to, with the reason.
    pub failed: Vec<(String, String)>,
}

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
    /// On the device that issued a link code: waits (processing pushed
    /// events meanwhile) until a device of this user that is not in
    /// `known` (the device ids listed when the code was issued) appears,
    /// then adds it to every active group of this device and tells each
    /// group's name. `None` when no device appeared within `wait`.
    pub async fn add_linked_device(
        &mut self,
        known: &[String],
        wait: Duration,
    ) -> Result<Option<LinkedDevice>> {
        let deadline = Instant::now() + wait;
        let device_id = loop {
            let fresh = self
                .devices()
                .await?
                .into_iter()
                .find(|d| !d.this_device && !known.contains(&d.device_id));
            if let Some(d) = fresh {
                break d.device_id;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.pump_events_for(left.min(LINK_POLL)).await?;
        };
        tracing::info!(device = %device_id, "a new device linked; adding it to the groups");
        let me = self.me()?;
        // Pin it now: its KeyPackage must carry the key the directory lists.
        self.refresh_user(&me.user_id).await?;
        let identity = format!("{}/{}", me.user_id, device_id);
        let mut done = LinkedDevice {
            device_id,
            added_to: Vec::new(),
            failed: Vec::new(),
        };
        for g in self.db.groups()? {
            if g.status != GroupStatus::Active || !mls::has_group(&self.db, &g.group_id)? {
                continue;
            }
            match self.add_own_device(&g.group_id, &identity).await {
                Ok(Some(seq)) => done.added_to.push((g.hex_id(), seq)),
                Ok(None) => {}
                Err(e @ ClientError::Disconnected(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(group = %g.hex_id(), error = %e, "could not add the new device");
                    done.failed.push((g.hex_id(), e.to_string()));
                }
            }
        }
        Ok(Some(done))
    }

    /// Adds this user's device `identity` to one group and tells the group
    /// its name in the new epoch. Waits for the device's KeyPackages (it
    /// uploads them right after redeeming the code). `None` when it was a
    /// member already.
    async fn add_own_device(&mut self, gid: &[u8], identity: &str) -> Result<Option<u64>> {
        let mut attempt = 1;
        let done = loop {
            match self
                .commit_intent(gid, Intent::AddOwnDevices(vec![identity.to_string()]))
                .await
            {
                Err(e)
                    if e.server_code() == Some(ErrorCode::NoKeyPackage)
                        && attempt < LINK_CLAIM_ATTEMPTS =>
                {
                    attempt += 1;
                    self.pump_events_for(LINK_POLL).await?;
                }
                Err(ClientError::Server {
                    code: ErrorCode::RateLimited,
                    retry_after_ms: Some(ms),
                    ..
                }) if Duration::from_millis(ms) <= LINK_RATE_LIMIT_MAX_WAIT
                    && attempt < LINK_CLAIM_ATTEMPTS =>
                {
                    attempt += 1;
                    tracing::info!(wait_ms = ms, "key package claims rate-limited; waiting");
                    self.pump_events_for(Duration::from_millis(ms)).await?;
                }
                other => break other?,
            }
        };
        let Some(done) = done else {
            return Ok(None);
        };
        self.send_name(gid).await?;
        Ok(Some(done.seq))
    }

    /// Processes pushed events for `d` (the wait between two polls).
    async fn pump_events_for(&mut self, d: Duration) -> Result<()> {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.wait_event_within(left).await? {
                Some(p) => self.handle(p).await?,
                None => return Ok(()),
            }
        }
    }

    /// On a newly linked device: waits up to `wait` for this user's other
    /// devices to add it (Welcomes) to every group of the user and tell it
    /// each group's name, then joins by external commit the groups nobody
    /// added it to. Returns the hex ids of the groups it is in.
    pub(super) async fn join_groups_after_link(&mut self, wait: Duration) -> Result<Vec<String>> {
        let list: v1::GroupList = self
            .ask(client_frame::Body::ListGroups(v1::ListGroups {
                all_devices_of_user: true,
            }))
            .await?;
        let wanted: Vec<Vec<u8>> = list.groups.into_iter().map(|g| g.group_id).collect();
        let deadline = Instant::now() + wait;
        loop {
            let mut settled = true;
            for gid in &wanted {
                let named = self
                    .db
                    .group(gid)?
                    .is_some_and(|g| g.status == GroupStatus::Active && g.name.is_some());
                if !named || !mls::has_group(&self.db, gid)? {
                    settled = false;
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if settled || left.is_zero() {
                break;
            }
            match self.wait_event_within(left).await? {
                Some(p) => self.process_pushed(p).await?,
                None => break,
            }
            self.flush_acks()?;
        }
        self.run_actions().await?;
        // Nobody added this device to these in time: join them itself.
        let rest = self.join_all_groups_of_user().await?;
        if !rest.is_empty() {
            tracing::info!(
                groups = rest.len(),
                "joined by external commit after the wait"
            );
        }
        let mut joined = Vec::new();
        for gid in &wanted {
            let active = self
                .db
                .group(gid)?
                .is_some_and(|g| g.status == GroupStatus::Active);
            if active {
                joined.push(hex::encode(gid));
            }
        }
        Ok(joined)
    }

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
