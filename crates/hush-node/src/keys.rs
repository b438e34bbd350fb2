//! Key package directory and group registration: the requests that need
//! no group actor, served on whichever node the client is connected to
//! (the store orders them).

use hush_ds::{validate_key_package, GroupTracker};
use hush_proto::auth::parse_identity;
use hush_proto::{v1, ErrorCode};
use hush_store::{GroupRecord, KeyPackageRecord, MemberDevice, NewGroup, Store};

use crate::error::{ApiError, ApiResult};
use crate::wire::{check_group_id, Caller};

/// Validates every package (openmls) and that it belongs to the caller:
/// its credential is the caller's identity and its leaf key the device key.
/// At most `max` packages per upload.
pub async fn upload(
    store: &dyn Store,
    max: usize,
    caller: &Caller,
    req: v1::UploadKeyPackages,
) -> ApiResult<v1::KeyPackagesUploaded> {
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
    let count = store
        .put_key_packages(&caller.device_id, &packages, last_resort.as_ref())
        .await?;
    Ok(v1::KeyPackagesUploaded { count })
}

/// One package per device of the user; devices with none left are skipped.
pub async fn claim(store: &dyn Store, user_id: &str) -> ApiResult<v1::ClaimedKeyPackages> {
    let devices = store.devices_of_user(user_id).await?;
    if devices.is_empty() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such user"));
    }
    let mut out = Vec::new();
    for d in devices {
        if let Some(kp) = store.claim_key_package(&d.device_id).await? {
            out.push(v1::ClaimedKeyPackage {
                device_id: d.device_id,
                key_package: kp.data,
                last_resort: kp.last_resort,
            });
        }
    }
    if out.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NoKeyPackage,
            "the user has no key packages left",
        ));
    }
    Ok(v1::ClaimedKeyPackages { key_packages: out })
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
