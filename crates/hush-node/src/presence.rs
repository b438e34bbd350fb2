//! Presence and typing: the two kinds of live-only traffic.
//!
//! *Presence.* A user is online while any of its devices has a connection
//! (WebSocket or SSE stream) to any node, which is exactly while its
//! SessionActor lives (one per user in the cluster, on the node that owns
//! the user); the session announces the changes (with a grace
//! period before offline, see `session.rs`). An announcement is one
//! `PresenceEvent` frame to every device of every user that shares a group
//! with the user, read from the store at the moment of the change.
//! `GetPresence` answers a group's members' current state.
//!
//! *Typing.* `SendEphemeral` carries an MLS application message that must
//! not be stored. The group's actor validates it like any application
//! message and hands it to the online member devices (`group.rs`).
//!
//! Both go out as [`Outbound::Ephemeral`]: written only to connections that
//! are live and synced, with no resume position, never replayed after a
//! reconnect. Both are metadata the server sees (ARCHITECTURE.md, "What the
//! server can see").

use std::collections::BTreeSet;
use std::sync::Arc;

use hush_proto::{server_frame, v1, ErrorCode, Message as _, ServerFrame};
use hush_store::MemberDevice;

use crate::ctx::NodeCtx;
use crate::error::{ApiError, ApiResult};
use crate::group::{Caller, GroupMsg};
use crate::session::Outbound;

/// Pushes `user_id`'s new presence to the devices of its co-members. Best
/// effort: a store error is logged, and the next change says it again.
pub async fn announce(ctx: &NodeCtx, user_id: &str, online: bool) {
    let devices = match co_member_devices(ctx, user_id).await {
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
    let frame = ServerFrame {
        request_id: 0,
        body: Some(server_frame::Body::PresenceEvent(v1::PresenceEvent {
            user_id: user_id.to_owned(),
            online,
        })),
    };
    let item = Outbound::Ephemeral {
        frame: frame.encode_to_vec().into(),
    };
    ctx.deliver(&devices, item).await;
}

/// Every device of every other user that shares a group with `user_id`.
async fn co_member_devices(
    ctx: &NodeCtx,
    user_id: &str,
) -> Result<Vec<MemberDevice>, hush_store::StoreError> {
    let store = &ctx.store;
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

/// `GetPresence`: the members of a group the caller belongs to, each with
/// its current presence (the caller included).
pub async fn snapshot(
    ctx: &Arc<NodeCtx>,
    caller: &Caller,
    group_id: &[u8],
) -> ApiResult<v1::PresenceList> {
    if group_id.is_empty() || group_id.len() > 256 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "bad group id"));
    }
    let Some(g) = ctx.store.group(group_id).await? else {
        return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
    };
    if !g.members.iter().any(|m| m.device_id == caller.device_id) {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            "not a member of this group",
        ));
    }
    let users: BTreeSet<String> = g.members.into_iter().map(|m| m.user_id).collect();
    let online = crate::session::online_users(ctx, &users).await?;
    let out = users
        .into_iter()
        .map(|user_id| v1::UserPresence {
            online: online.contains(&user_id),
            user_id,
        })
        .collect();
    Ok(v1::PresenceList {
        group_id: group_id.to_vec(),
        users: out,
    })
}

/// `SendEphemeral`: served by the group's actor (validation and fan-out).
pub async fn send_ephemeral(
    ctx: &Arc<NodeCtx>,
    caller: &Caller,
    req: v1::SendEphemeral,
) -> ApiResult<v1::EphemeralAccepted> {
    let gid = req.group_id.clone();
    crate::gateway::dispatch::call_group(ctx, &gid, |reply| GroupMsg::Ephemeral {
        caller: caller.clone(),
        req,
        reply,
    })
    .await
}
