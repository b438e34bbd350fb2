//! The request dispatcher shared by every transport: a `ClientFrame` body
//! from an authenticated caller becomes at most one `ServerFrame` body. The
//! WebSocket connection and `POST /v1/rpc` both call [`dispatch`]; what
//! differs (framing, auth, rate-limit bookkeeping, Sync) stays in them.
//! Retries are idempotent where the request says how: group sends carry a
//! `client_msg_id` that the group actor deduplicates.

use std::sync::Arc;
use std::time::Duration;

use hush_proto::{client_frame::Body as C, server_frame::Body as S, v1, ErrorCode};

use crate::ctx::NodeCtx;
use crate::error::{ApiError, ApiResult};
use crate::group::{Caller, GroupMsg};

/// Serves one request. `Ok(None)` means no response frame (acks). In a
/// cluster, a request for a group owned by another node goes there.
pub async fn dispatch(ctx: &Arc<NodeCtx>, caller: &Caller, body: C) -> ApiResult<Option<S>> {
    if let (Some(router), Some(group_id)) = (ctx.cluster.get(), crate::cluster::routed_group(&body))
    {
        if router.remote_owner(group_id).is_some() {
            let group_id = group_id.to_vec();
            return router.forward(ctx, caller, &group_id, body).await;
        }
    }
    dispatch_here(ctx, caller, body).await
}

/// Serves one request on this node.
pub async fn dispatch_here(ctx: &Arc<NodeCtx>, caller: &Caller, body: C) -> ApiResult<Option<S>> {
    let store = &ctx.store;
    Ok(Some(match body {
        C::Auth(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "already authenticated",
            ))
        }
        C::Ping(p) => S::Pong(v1::Pong { nonce: p.nonce }),
        C::UploadKeyPackages(req) => {
            S::KeyPackagesUploaded(crate::keys::upload(ctx, caller, req).await?)
        }
        C::ClaimKeyPackages(req) => {
            S::ClaimedKeyPackages(crate::keys::claim(ctx, &req.user_id).await?)
        }
        C::KeyPackageCount(_) => {
            let (count, has_last_resort) = store.key_package_count(&caller.device_id).await?;
            S::KeyPackageCountResult(v1::KeyPackageCountResult {
                count,
                has_last_resort,
            })
        }
        C::LookupUser(req) => {
            let devices = store.devices_of_user(&req.handle).await?;
            if devices.is_empty() {
                return Err(ApiError::new(ErrorCode::NotFound, "no such user"));
            }
            S::UserInfo(v1::UserInfo {
                user_id: req.handle,
                device_ids: devices.into_iter().map(|d| d.device_id).collect(),
            })
        }
        C::CreateGroup(req) => S::GroupCreated(crate::keys::create_group(ctx, caller, req).await?),
        C::SendMessage(req) => {
            let gid = req.group_id.clone();
            S::MessageAccepted(
                call_group(ctx, &gid, |reply| GroupMsg::Send {
                    caller: caller.clone(),
                    req,
                    reply,
                })
                .await?,
            )
        }
        C::SendCommit(req) => {
            let gid = req.group_id.clone();
            S::CommitAccepted(
                call_group(ctx, &gid, |reply| GroupMsg::Commit {
                    caller: caller.clone(),
                    req,
                    reply,
                })
                .await?,
            )
        }
        C::SendProposal(req) => {
            let gid = req.group_id.clone();
            S::ProposalAccepted(
                call_group(ctx, &gid, |reply| GroupMsg::Proposal {
                    caller: caller.clone(),
                    req,
                    reply,
                })
                .await?,
            )
        }
        C::GetGroupInfo(req) => {
            let Some(g) = store.group(&req.group_id).await? else {
                return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
            };
            // The public state is for members and their users' new devices.
            if !g.members.iter().any(|m| m.user_id == caller.user_id) {
                return Err(ApiError::new(
                    ErrorCode::NotMember,
                    "not a member of this group",
                ));
            }
            S::GroupInfoResult(v1::GroupInfoResult {
                group_id: g.group_id,
                epoch: g.epoch,
                group_info: g.group_info,
                ratchet_tree: g.ratchet_tree,
                head_seq: g.head_seq,
            })
        }
        C::ListGroups(req) => {
            S::GroupList(list_groups(ctx, caller, req.all_devices_of_user).await?)
        }
        C::Sync(_) => {
            // Sync's answer is a stream: the WebSocket answers it itself,
            // over HTTP it is GET /v1/events.
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "sync is answered by the event stream (WebSocket or GET /v1/events)",
            ));
        }
        C::Ack(a) => {
            if a.group_id.is_empty() || a.group_id.len() > 256 {
                return Err(ApiError::new(ErrorCode::InvalidArgument, "bad group id"));
            }
            store
                .set_cursor(&caller.device_id, &a.group_id, a.seq)
                .await?;
            return Ok(None);
        }
        C::SendEphemeral(req) => {
            S::EphemeralAccepted(crate::presence::send_ephemeral(ctx, caller, req).await?)
        }
        C::GetPresence(req) => {
            S::PresenceList(crate::presence::snapshot(ctx, caller, &req.group_id).await?)
        }
        C::AckInbox(a) => {
            store.ack_inbox(&caller.device_id, a.inbox_seq).await?;
            return Ok(None);
        }
    }))
}

pub async fn call_group<T, F>(ctx: &Arc<NodeCtx>, group_id: &[u8], make: F) -> ApiResult<T>
where
    F: FnOnce(ractor::RpcReplyPort<ApiResult<T>>) -> GroupMsg,
    T: Send + 'static,
{
    if group_id.is_empty() || group_id.len() > 256 {
        return Err(ApiError::new(ErrorCode::InvalidArgument, "bad group id"));
    }
    let group = ctx.group(group_id).await?;
    match group.call(make, Some(Duration::from_secs(30))).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(ractor::rpc::CallResult::Timeout) => Err(ApiError::new(
            ErrorCode::Unavailable,
            "group did not answer in time",
        )),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
            // The actor stopped (passivated or lost its lease): it is
            // reactivated on the next request; the client retries.
            ctx.groups.remove(&group_id.to_vec(), group.get_id()).await;
            Err(ApiError::new(ErrorCode::Unavailable, "group moved; retry"))
        }
    }
}

pub async fn list_groups(
    ctx: &Arc<NodeCtx>,
    caller: &Caller,
    all_devices: bool,
) -> ApiResult<v1::GroupList> {
    let store = &ctx.store;
    let devices = if all_devices {
        store
            .devices_of_user(&caller.user_id)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect()
    } else {
        vec![caller.device_id.clone()]
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut groups = Vec::new();
    for d in devices {
        for g in store.groups_of_device(&d).await? {
            if !seen.insert(g.group_id.clone()) {
                continue;
            }
            if let Some(r) = store.group(&g.group_id).await? {
                groups.push(v1::GroupSummary {
                    group_id: r.group_id,
                    epoch: r.epoch,
                    member_devices: r.members.len() as u32,
                    head_seq: r.head_seq,
                });
            }
        }
    }
    Ok(v1::GroupList { groups })
}
