//! `GetPresence`: the members of a group the caller belongs to, each with
//! its current presence, as the users' sessions last announced it — for
//! the users who joined the group. A user who was added but none of whose
//! devices joined yet (processed the Welcome) shows as offline: adding
//! someone does not reveal when they are online (`session/presence.rs` has
//! the rule).
//!
//! The rest of presence lives with the sessions (`session/`: a session is
//! its user's presence in the whole cluster, and announces the changes);
//! typing (`SendEphemeral`) is validated and fanned out by the group's
//! actor (`group/send.rs`). Both are metadata the server sees
//! (ARCHITECTURE.md, "What the server can see").

use std::collections::BTreeSet;

use hush_proto::{v1, ErrorCode};
use hush_store::Store;

use crate::error::{ApiError, ApiResult};
use crate::session::Sessions;
use crate::wire::{check_group_id, Caller};

/// The presence of every member user of the group (the caller's too).
pub async fn snapshot(
    store: &dyn Store,
    sessions: &Sessions,
    caller: &Caller,
    group_id: &[u8],
) -> ApiResult<v1::PresenceList> {
    check_group_id(group_id)?;
    // The member list only: the group's DS state and tree are not needed.
    let members = store.group_members(group_id).await?;
    if members.is_empty() {
        return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
    }
    if !members.iter().any(|m| m.device_id == caller.device_id) {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            "not a member of this group",
        ));
    }
    let users: BTreeSet<String> = members.iter().map(|m| m.user_id.clone()).collect();
    let online = sessions.online_users(&users).await?;
    // One read for the whole group's joins (the groups that do not get
    // pushes, the large ones, are the ones that ask).
    let joined: BTreeSet<String> = store
        .joined_members(group_id)
        .await?
        .into_iter()
        .map(|m| m.user_id)
        .chain([caller.user_id.clone()])
        .collect();
    let visible: BTreeSet<&String> = online.iter().filter(|u| joined.contains(*u)).collect();
    let out = users
        .into_iter()
        .map(|user_id| v1::UserPresence {
            online: visible.contains(&user_id),
            user_id,
        })
        .collect();
    Ok(v1::PresenceList {
        group_id: group_id.to_vec(),
        users: out,
        pushed: members.len() <= sessions.presence_push_max_members(),
    })
}
