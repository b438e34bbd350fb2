//! Key package directory and group registration: the requests that need
//! no group actor, served on whichever node the client is connected to
//! (the store orders them).
//!
//! The directory's rules (RFC 9750's guidance on KeyPackage exhaustion):
//! - uploads are validated (openmls), must be the uploading device's own
//!   packages, and a device stores at most `max_key_packages_per_device`
//!   unclaimed ones;
//! - claims are rate limited per claiming user and per target user (token
//!   buckets; RATE_LIMITED with a retry-after hint), so nobody can drain
//!   someone's packages quickly;
//! - a device's last-resort package is handed out once, and again only
//!   after the device uploaded: handing it out pushes `KeyPackagesLow` to
//!   the device's connections (its SDK uploads at once; an offline device
//!   checks when it connects), and until it uploads, claims skip it.
//!
//! The claim buckets are this node's (like the per-connection request
//! buckets): a claimer spreading requests over n nodes gets up to n times
//! the rate. Each bucket set holds at most `limits.claims_tracked_users`
//! users; full buckets are forgotten first, and a new user is refused (fail
//! closed) while every held bucket is in use.

use std::sync::{Arc, Mutex};

use hush_ds::{validate_key_package, GroupTracker, KeyedBuckets};
use hush_proto::auth::parse_identity;
use hush_proto::{server_frame::Body as Reply, v1, ErrorCode};
use hush_store::{GroupRecord, KeyPackageRecord, MemberDevice, NewGroup, Store};

use crate::clock::Clock;
use crate::error::{ApiError, ApiResult};
use crate::session::Sessions;
use crate::wire::{check_group_id, encode, Caller, Outbound};

/// What the directory is bound by (from `[limits]`).
#[derive(Clone, Debug)]
pub struct KeyLimits {
    pub max_per_upload: usize,
    pub max_per_device: u32,
    pub claims_per_claimer_per_min: f64,
    pub claims_per_claimer_burst: f64,
    pub claims_per_target_per_min: f64,
    pub claims_per_target_burst: f64,
    /// Users per bucket set (`limits.claims_tracked_users`).
    pub tracked_users: usize,
}

/// The KeyPackage directory of this node.
pub struct Keys {
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    clock: Arc<dyn Clock>,
    limits: KeyLimits,
    /// (per claimer, per target) claim buckets.
    claims: Mutex<(KeyedBuckets<String>, KeyedBuckets<String>)>,
}

impl Keys {
    pub fn new(
        store: Arc<dyn Store>,
        sessions: Arc<Sessions>,
        clock: Arc<dyn Clock>,
        limits: KeyLimits,
    ) -> Self {
        let per_claimer = KeyedBuckets::new(
            limits.claims_per_claimer_per_min / 60.0,
            limits.claims_per_claimer_burst,
            limits.tracked_users,
        );
        let per_target = KeyedBuckets::new(
            limits.claims_per_target_per_min / 60.0,
            limits.claims_per_target_burst,
            limits.tracked_users,
        );
        Self {
            store,
            sessions,
            clock,
            limits,
            claims: Mutex::new((per_claimer, per_target)),
        }
    }

    /// Validates every package (openmls) and that it belongs to the caller:
    /// its credential is the caller's identity and its leaf key the device
    /// key. At most `max_per_upload` packages per upload, and at most
    /// `max_per_device` unclaimed ones stored. An upload re-arms the
    /// device's last-resort package (its owner has replenished).
    pub async fn upload(
        &self,
        caller: &Caller,
        req: v1::UploadKeyPackages,
    ) -> ApiResult<v1::KeyPackagesUploaded> {
        let store = self.store.as_ref();
        let max = self.limits.max_per_upload;
        if req.key_packages.len() > max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("at most {max} key packages per upload"),
            ));
        }
        let Some(device) = store.device(&caller.device_id).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "unknown device"));
        };
        let identity = caller.identity();
        let check = |bytes: &[u8]| -> ApiResult<KeyPackageRecord> {
            let kp = validate_key_package(bytes)?;
            if kp.identity != identity.as_bytes() || kp.signature_key != device.signature_key {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "key package credential or key is not this device's",
                ));
            }
            Ok(KeyPackageRecord {
                hash_ref: kp.hash_ref,
                data: bytes.to_vec(),
            })
        };
        let packages = req
            .key_packages
            .iter()
            .map(|b| check(b))
            .collect::<ApiResult<Vec<_>>>()?;
        let last_resort = if req.last_resort.is_empty() {
            None
        } else {
            Some(check(&req.last_resort)?)
        };
        // Checked before the write, so two uploads racing on one device can
        // each pass: the cap bounds what a device keeps, not an exact count.
        let (stored, _) = store.key_package_count(&caller.device_id).await?;
        let cap = self.limits.max_per_device;
        if u64::from(stored) + packages.len() as u64 > u64::from(cap) {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "this device stores {stored} unclaimed key packages and may store at most {cap}"
                ),
            ));
        }
        let count = store
            .put_key_packages(&caller.device_id, &packages, last_resort.as_ref())
            .await?;
        store
            .set_last_resort_claimed(&caller.device_id, false)
            .await?;
        Ok(v1::KeyPackagesUploaded { count })
    }

    /// One package per device of the user; devices with none left, and
    /// devices whose last-resort package was handed out since they last
    /// uploaded, are skipped. Rate limited per claimer and per target.
    pub async fn claim(&self, caller: &Caller, user_id: &str) -> ApiResult<v1::ClaimedKeyPackages> {
        let store = self.store.as_ref();
        let devices = store.devices_of_user(user_id).await?;
        if devices.is_empty() {
            return Err(ApiError::new(ErrorCode::NotFound, "no such user"));
        }
        self.admit_claim(&caller.user_id, user_id)?;
        let mut out = Vec::new();
        let mut withheld = 0;
        for d in devices {
            let Some(kp) = store.claim_key_package(&d.device_id).await? else {
                continue;
            };
            if kp.last_resort {
                if store.set_last_resort_claimed(&d.device_id, true).await? {
                    // Handed out already, and the device has not uploaded
                    // since: not twice in a row.
                    withheld += 1;
                    continue;
                }
                self.tell_low(user_id, &d.device_id).await;
            }
            out.push(v1::ClaimedKeyPackage {
                device_id: d.device_id,
                key_package: kp.data,
                last_resort: kp.last_resort,
            });
        }
        if out.is_empty() {
            let message = if withheld > 0 {
                "the user's devices have no key packages left until they upload more \
                 (they were told to)"
            } else {
                "the user has no key packages left"
            };
            return Err(ApiError::new(ErrorCode::NoKeyPackage, message));
        }
        Ok(v1::ClaimedKeyPackages { key_packages: out })
    }

    /// Takes a claim token of `claimer` and one of `target`, or neither.
    fn admit_claim(&self, claimer: &str, target: &str) -> ApiResult<()> {
        let now = self.clock.now_ms();
        let (claimer, target) = (claimer.to_owned(), target.to_owned());
        // Poisoned only by a panic inside this block, which holds no
        // invariant a later claim could trip over.
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let (per_claimer, per_target) = &mut *claims;
        if let Err(wait) = per_claimer.check(&claimer, now) {
            metrics::counter!("hush_key_package_claims_limited_total", "by" => "claimer")
                .increment(1);
            return Err(ApiError::rate_limited(
                "too many key package claims by this user",
                wait,
            ));
        }
        if let Err(wait) = per_target.check(&target, now) {
            metrics::counter!("hush_key_package_claims_limited_total", "by" => "target")
                .increment(1);
            return Err(ApiError::rate_limited(
                "too many key package claims for this user's devices",
                wait,
            ));
        }
        per_claimer.take(&claimer, now);
        per_target.take(&target, now);
        Ok(())
    }

    /// Tells a device its last-resort package was handed out: a
    /// `KeyPackagesLow` push to its live connections, wherever they are.
    async fn tell_low(&self, user_id: &str, device_id: &str) {
        let (count, _) = match self.store.key_package_count(device_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "key package count for the low notice failed");
                (0, true)
            }
        };
        let frame = encode(
            0,
            Reply::KeyPackagesLow(v1::KeyPackagesLow {
                count,
                last_resort_claimed: true,
            }),
        );
        let device = MemberDevice {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        };
        self.sessions
            .deliver(&[device], Outbound::Ephemeral { frame })
            .await;
    }
}

/// Registers a new group whose only member is the caller. Its GroupInfo
/// and tree are at most `max` bytes each.
pub async fn create_group(
    store: &dyn Store,
    max: usize,
    caller: &Caller,
    req: v1::CreateGroup,
) -> ApiResult<v1::GroupCreated> {
    if req.group_info.len() > max || req.ratchet_tree.len() > max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            "group info or tree too large",
        ));
    }
    let tracker = GroupTracker::create(&req.group_info, &req.ratchet_tree)?;
    let members = tracker.members();
    let identity = caller.identity();
    if members.len() != 1 || members[0].identity != identity.as_bytes() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a new group must have the creating device as its only member",
        ));
    }
    let Some(device) = store.device(&caller.device_id).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "unknown device"));
    };
    if members[0].signature_key != device.signature_key {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the creator's leaf key is not this device's key",
        ));
    }
    let (user_id, device_id) = parse_identity(identity.as_bytes())
        .ok_or_else(|| ApiError::internal("identity", "caller identity does not parse"))?;
    let group_id = tracker.group_id().to_vec();
    check_group_id(&group_id)?;
    let epoch = tracker.epoch();
    let record = GroupRecord {
        group_id: group_id.clone(),
        epoch,
        state: tracker
            .snapshot()
            .map_err(|e| ApiError::internal("snapshot", e))?,
        group_info: req.group_info,
        ratchet_tree: tracker
            .ratchet_tree()
            .map_err(|e| ApiError::internal("exporting tree", e))?,
        head_seq: 0,
        members: vec![MemberDevice {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        }],
    };
    store.create_group(&NewGroup { group: record }).await?;
    tracing::info!(group = %hex::encode(&group_id), "group created");
    Ok(v1::GroupCreated { group_id, epoch })
}
