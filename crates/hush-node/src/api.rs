//! The client API, for every transport: a `ClientFrame` body from an
//! authenticated caller becomes at most one `ServerFrame` body.
//!
//! [`Api::dispatch`] routes: a request that must be sequenced by a group's
//! actor ([`routed_group`]) goes to the node that owns the group (as a
//! `GroupCall` through [`Route::call_owner`], following view changes);
//! everything else — accounts, KeyPackages, reads, acks — is served by the
//! node the client is connected to, because the store orders it.
//! [`Api::serve_here`] serves a request on this node; the inbound side of
//! the mesh (`peer.rs`) calls it for the calls other nodes forward.
//!
//! Retries are idempotent where the request says how: group sends carry a
//! `client_msg_id` that the group actor and the store deduplicate. The
//! stream requests (`Auth`, `Sync`) are the transports' own business
//! (`gateway/`).

use std::sync::Arc;

use hush_proto::cluster::v1 as cluster;
use hush_proto::{client_frame::Body as Request, server_frame::Body as Reply, v1, ErrorCode};
use hush_store::{AckDecision, AckState, AckThen, Standing, Store};

use crate::admission::{Admission, AdmissionLimits};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::group::{GroupMsg, Groups};
use crate::keys::{KeyLimits, Keys};
use crate::route::Route;
use crate::session::Sessions;
use crate::wire::{check_group_id, Caller};

/// The group a request must be sequenced by, for the requests that go to a
/// GroupActor.
pub fn routed_group(body: &Request) -> Option<&[u8]> {
    match body {
        Request::SendMessage(r) => Some(&r.group_id),
        Request::SendCommit(r) => Some(&r.group_id),
        Request::SendProposal(r) => Some(&r.group_id),
        Request::SendEphemeral(r) => Some(&r.group_id),
        _ => None,
    }
}

/// What requests are bound by (from `[limits]`).
#[derive(Clone, Debug)]
pub struct ApiLimits {
    pub max_message_bytes: usize,
    pub keys: KeyLimits,
    pub admission: AdmissionLimits,
}

impl ApiLimits {
    pub fn from_config(config: &Config) -> Self {
        let l = &config.limits;
        Self {
            max_message_bytes: l.max_message_bytes,
            keys: KeyLimits {
                max_per_upload: l.max_key_packages_per_upload,
                max_per_device: l.max_key_packages_per_device,
                claims_per_claimer_per_min: l.claims_per_claimer_per_min,
                claims_per_claimer_burst: l.claims_per_claimer_burst,
                claims_per_target_per_min: l.claims_per_target_per_min,
                claims_per_target_burst: l.claims_per_target_burst,
                tracked_users: l.claims_tracked_users,
            },
            admission: AdmissionLimits {
                max_inflight_sends: l.max_inflight_sends,
                max_pending_per_group: l.max_pending_per_group,
                max_queued_deliveries: l.max_queued_deliveries,
                fanout_delay_target_ms: l.fanout_delay_target_ms,
                fanout_delay_window_ms: l.fanout_delay_window_ms,
                retry_after_ms: l.overload_retry_after_ms,
                max_retry_after_ms: l.overload_retry_after_max_ms,
                max_inflight_requests: l.max_inflight_requests,
                max_inflight_request_bytes: l.max_inflight_request_bytes,
            },
        }
    }
}

/// Serves client requests on this node, or routes them to their owner.
pub struct Api {
    store: Arc<dyn Store>,
    groups: Arc<Groups>,
    sessions: Arc<Sessions>,
    route: Arc<Route>,
    keys: Keys,
    max_message_bytes: usize,
    admission: Admission,
    clock: Arc<dyn Clock>,
}

impl Api {
    pub fn new(
        store: Arc<dyn Store>,
        groups: Arc<Groups>,
        sessions: Arc<Sessions>,
        route: Arc<Route>,
        clock: Arc<dyn Clock>,
        limits: ApiLimits,
    ) -> Self {
        let keys = Keys::new(store.clone(), sessions.clone(), clock.clone(), limits.keys);
        let admission = Admission::new(limits.admission, sessions.deliveries().clone());
        Self {
            store,
            groups,
            sessions,
            route,
            keys,
            max_message_bytes: limits.max_message_bytes,
            admission,
            clock,
        }
    }

    /// The send admission counters (see `admission.rs`).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// A place for a group send, taken before it enters the group actor
    /// and held until its answer goes out; `None` for requests that are not
    /// admitted this way (see `admission.rs`).
    fn admit(&self, body: &Request) -> ApiResult<Option<crate::admission::Permit>> {
        let group_id = match body {
            Request::SendMessage(r) => &r.group_id,
            Request::SendEphemeral(r) => &r.group_id,
            _ => return Ok(None),
        };
        let now = self.clock.now_ms();
        self.admission
            .admit(group_id, now)
            .map(Some)
            .map_err(|r| r.to_error(self.admission.retry_after_ms(now)))
    }

    /// Serves one request. `Ok(None)` means no response frame (acks). A
    /// request for a group owned by another node is served there.
    pub async fn dispatch(&self, caller: &Caller, body: Request) -> ApiResult<Option<Reply>> {
        if let Some(group_id) = routed_group(&body) {
            if self.route.remote_owner(group_id).is_some() {
                let group_id = group_id.to_vec();
                return self.forward(caller, &group_id, body).await;
            }
        }
        self.serve_here(caller, body).await
    }

    /// Serves `body` on the group's owner, following view changes until
    /// the owner answers or the route's forward timeout passes.
    async fn forward(
        &self,
        caller: &Caller,
        group_id: &[u8],
        body: Request,
    ) -> ApiResult<Option<Reply>> {
        let call = cluster::node_request::Body::GroupCall(cluster::GroupCall {
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
            frame: Some(v1::ClientFrame {
                request_id: 0,
                body: Some(body.clone()),
            }),
        });
        match self.route.call_owner(group_id, call).await? {
            None => self.serve_here(caller, body).await,
            Some((owner, reply)) => match reply.body {
                Some(cluster::node_reply::Body::Frame(frame)) => match frame.body {
                    Some(Reply::Error(e)) => Err(ApiError::from_proto(e)),
                    other => Ok(other),
                },
                None => Ok(None),
                Some(_) => Err(ApiError::internal(
                    "cluster reply",
                    format!("unexpected answer from {owner}"),
                )),
            },
        }
    }

    /// Serves one request on this node.
    pub async fn serve_here(&self, caller: &Caller, body: Request) -> ApiResult<Option<Reply>> {
        let store = self.store.as_ref();
        // Held until the answer is made: the group's mailbox and the store
        // writer's queue only ever hold admitted sends.
        let _permit = self.admit(&body)?;
        Ok(Some(match body {
            Request::Auth(_) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "already authenticated",
                ))
            }
            Request::Sync(_) => {
                // Sync's answer is a stream: the WebSocket answers it
                // itself, over HTTP it is GET /v1/events.
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "sync is answered by the event stream (WebSocket or GET /v1/events)",
                ));
            }
            Request::Ping(p) => Reply::Pong(v1::Pong { nonce: p.nonce }),
            Request::UploadKeyPackages(req) => {
                Reply::KeyPackagesUploaded(self.keys.upload(caller, req).await?)
            }
            Request::ClaimKeyPackages(req) => {
                Reply::ClaimedKeyPackages(self.keys.claim(caller, &req.user_id).await?)
            }
            Request::KeyPackageCount(_) => {
                let (count, has_last_resort) = store.key_package_count(&caller.device_id).await?;
                Reply::KeyPackageCountResult(v1::KeyPackageCountResult {
                    count,
                    has_last_resort,
                })
            }
            Request::LookupUser(req) => Reply::UserInfo(self.lookup_user(req.handle).await?),
            Request::ListDevices(_) => Reply::DeviceList(self.list_devices(caller).await?),
            Request::RevokeDevice(req) => {
                Reply::DeviceRevoked(self.revoke_device(caller, req.device_id).await?)
            }
            Request::CreateGroup(req) => Reply::GroupCreated(
                crate::keys::create_group(store, self.max_message_bytes, caller, req).await?,
            ),
            Request::SendMessage(req) => Reply::MessageAccepted(
                self.groups
                    .call(&req.group_id.clone(), |reply| GroupMsg::Send {
                        caller: caller.clone(),
                        req,
                        reply,
                    })
                    .await?,
            ),
            Request::SendCommit(req) => Reply::CommitAccepted(
                self.groups
                    .call(&req.group_id.clone(), |reply| GroupMsg::Commit {
                        caller: caller.clone(),
                        req,
                        reply,
                    })
                    .await?,
            ),
            Request::SendProposal(req) => Reply::ProposalAccepted(
                self.groups
                    .call(&req.group_id.clone(), |reply| GroupMsg::Proposal {
                        caller: caller.clone(),
                        req,
                        reply,
                    })
                    .await?,
            ),
            Request::SendEphemeral(req) => Reply::EphemeralAccepted(
                self.groups
                    .call(&req.group_id.clone(), |reply| GroupMsg::Ephemeral {
                        caller: caller.clone(),
                        req,
                        reply,
                    })
                    .await?,
            ),
            Request::GetGroupInfo(req) => {
                Reply::GroupInfoResult(self.group_info(caller, &req.group_id).await?)
            }
            Request::ListGroups(req) => {
                Reply::GroupList(self.list_groups(caller, req.all_devices_of_user).await?)
            }
            Request::GetPresence(req) => Reply::PresenceList(
                crate::presence::snapshot(store, &self.sessions, caller, &req.group_id).await?,
            ),
            Request::Ack(a) => {
                self.ack(caller, &a.group_id, a.seq).await?;
                return Ok(None);
            }
            Request::AckInbox(a) => {
                let head = store.inbox_head(&caller.device_id).await?;
                if a.inbox_seq > head {
                    return Err(ApiError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "inbox seq {} was never given (the inbox is at {head})",
                            a.inbox_seq
                        ),
                    ));
                }
                store.ack_inbox(&caller.device_id, a.inbox_seq).await?;
                return Ok(None);
            }
        }))
    }

    /// Stores a device's cursor in a group. The group must be one the
    /// device is in (or was removed from and may read up to its removal),
    /// and the seq one the group has (or, after a removal, at most the
    /// removing commit); a seq at or below the stored cursor is a harmless
    /// repeat. The device's first ack at or past the commit that added it
    /// is its join: its user's presence becomes visible to the group.
    async fn ack(&self, caller: &Caller, group_id: &[u8], seq: u64) -> ApiResult<()> {
        check_group_id(group_id)?;
        // One store step: the check reads the state (cursor, membership or
        // departure, head) and the cursor moves if it passes, in the same
        // writer operation on SQLite.
        let (state, _) = self
            .store
            .ack_cursor(&caller.device_id, group_id, seq, ack_decision(seq))
            .await?;
        if ack_joins(&state, seq)? {
            self.sessions
                .announce_joined(&caller.user_id, group_id)
                .await;
        }
        Ok(())
    }

    /// [`Api::ack`] (a WebSocket's `Ack`) without waiting for the store:
    /// returns once the ack is queued, and `then` gets its outcome once it
    /// is stored, on whichever thread finished it (the SQLite writer's),
    /// exactly once. A join's announcement is spawned on this runtime. The
    /// connection is not woken to hear that an ack went through: receivers
    /// ack about as often as they are sent to, and waking the gateway
    /// thread from the writer's for each was ~4% of the node's CPU at
    /// 1,000 msg/s (README, session 18).
    pub async fn ack_then(
        &self,
        caller: &Caller,
        group_id: Vec<u8>,
        seq: u64,
        then: impl FnOnce(ApiResult<()>) + Send + 'static,
    ) {
        if let Err(e) = check_group_id(&group_id) {
            return then(Err(e));
        }
        let (sessions, user) = (self.sessions.clone(), caller.user_id.clone());
        let runtime = tokio::runtime::Handle::current();
        let group = group_id.clone();
        let done: AckThen = Box::new(move |stored| {
            let joins = stored
                .map_err(ApiError::from)
                .and_then(|(state, _)| ack_joins(&state, seq));
            match joins {
                Ok(true) => {
                    runtime.spawn(async move { sessions.announce_joined(&user, &group).await });
                    then(Ok(()));
                }
                Ok(false) => then(Ok(())),
                Err(e) => then(Err(e)),
            }
        });
        self.store
            .ack_cursor_then(&caller.device_id, &group_id, seq, ack_decision(seq), done)
            .await;
    }

    async fn lookup_user(&self, handle: String) -> ApiResult<v1::UserInfo> {
        let devices = self.store.devices_of_user(&handle).await?;
        if devices.is_empty() {
            return Err(ApiError::new(ErrorCode::NotFound, "no such user"));
        }
        Ok(v1::UserInfo {
            user_id: handle,
            device_ids: devices.iter().map(|d| d.device_id.clone()).collect(),
            devices: devices
                .into_iter()
                .map(|d| v1::DeviceKey {
                    device_id: d.device_id,
                    signature_key: d.signature_key,
                })
                .collect(),
        })
    }

    /// The caller's own current devices.
    async fn list_devices(&self, caller: &Caller) -> ApiResult<v1::DeviceList> {
        let devices = self.store.devices_of_user(&caller.user_id).await?;
        Ok(v1::DeviceList {
            devices: devices
                .into_iter()
                .map(|d| v1::DeviceInfo {
                    this_device: d.device_id == caller.device_id,
                    device_id: d.device_id,
                    signature_key: d.signature_key,
                    created_at_ms: d.created_at_ms,
                })
                .collect(),
        })
    }

    /// Revokes another device of the caller's user: the store forgets it
    /// (so its tokens, logins, links and joins are refused) and its
    /// connections are closed. Removing it from groups is the caller's
    /// commit to make.
    async fn revoke_device(
        &self,
        caller: &Caller,
        device_id: String,
    ) -> ApiResult<v1::DeviceRevoked> {
        if device_id == caller.device_id {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "a device cannot revoke itself (log out instead)",
            ));
        }
        match self.store.device(&device_id).await? {
            Some(d) if d.user_id == caller.user_id => {}
            _ => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    "no such device of yours",
                ))
            }
        }
        self.store.revoke_device(&device_id).await?;
        self.sessions.kick_device(&caller.user_id, &device_id).await;
        tracing::info!(user = %caller.user_id, device = %device_id, by = %caller.device_id, "revoked device");
        Ok(v1::DeviceRevoked { device_id })
    }

    /// The public state is for members and their users' new devices.
    async fn group_info(&self, caller: &Caller, group_id: &[u8]) -> ApiResult<v1::GroupInfoResult> {
        let Some(g) = self.store.group(group_id).await? else {
            return Err(ApiError::new(ErrorCode::UnknownGroup, "unknown group"));
        };
        if !g.members.iter().any(|m| m.user_id == caller.user_id) {
            return Err(ApiError::new(
                ErrorCode::NotMember,
                "not a member of this group",
            ));
        }
        Ok(v1::GroupInfoResult {
            group_id: g.group_id,
            epoch: g.epoch,
            group_info: g.group_info,
            ratchet_tree: g.ratchet_tree,
            head_seq: g.head_seq,
        })
    }

    async fn list_groups(&self, caller: &Caller, all_devices: bool) -> ApiResult<v1::GroupList> {
        let store = &self.store;
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
}

/// What an ack does, given the state it was checked against.
enum AckStep {
    /// A repeat (at or below the cursor, or seq 0): nothing to write.
    Repeat,
    /// The cursor moves; `Some(joined_seq)` for a current member (whose
    /// first ack at or past it is its join), `None` after a removal.
    Move(Option<u64>),
}

/// What the store is told to decide for an ack of `seq`: move the cursor
/// when [`ack_step`] says so.
fn ack_decision(seq: u64) -> AckDecision {
    Box::new(move |s: &AckState| matches!(ack_step(s, seq), Ok(AckStep::Move(_))))
}

/// An ack of `seq` against the state it was checked against: refused, or
/// whether it is the device's join (its first ack at or past the commit
/// that added it: its user's presence becomes visible to the group).
fn ack_joins(state: &AckState, seq: u64) -> ApiResult<bool> {
    let AckStep::Move(Some(joined_seq)) = ack_step(state, seq)? else {
        return Ok(false);
    };
    let joins = joined_seq > 0 && seq >= joined_seq;
    Ok(joins && state.cursor.is_none_or(|c| c < joined_seq))
}

/// The device must be in the group (or removed from it and reading up to
/// its removal), and the seq one the group has (or, after a removal, at
/// most the removing commit); a seq at or below the cursor is a harmless
/// repeat.
fn ack_step(state: &AckState, seq: u64) -> ApiResult<AckStep> {
    if state.cursor.is_some_and(|c| seq <= c) {
        return Ok(AckStep::Repeat);
    }
    let beyond = |bound: &str| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("seq {seq} is past the {bound}"),
        )
    };
    match state.standing {
        Standing::Member { .. } if seq == 0 => Ok(AckStep::Repeat),
        // Seqs are dense: seq exists iff it is at most the head.
        Standing::Member { .. } if seq > state.head_seq => Err(beyond("group's last seq")),
        Standing::Member { joined_seq } => Ok(AckStep::Move(Some(joined_seq))),
        Standing::Departed { left_seq, .. } if seq <= left_seq => Ok(AckStep::Move(None)),
        Standing::Departed { .. } => Err(beyond("commit that removed this device")),
        Standing::Stranger => Err(ApiError::new(
            ErrorCode::NotMember,
            "not a member of this group",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sequenced_requests_are_routed() {
        let send = Request::SendMessage(v1::SendMessage {
            group_id: b"g".to_vec(),
            ..Default::default()
        });
        assert_eq!(routed_group(&send), Some(&b"g"[..]));
        assert_eq!(routed_group(&Request::Ping(v1::Ping { nonce: 1 })), None);
        let info = Request::GetGroupInfo(v1::GetGroupInfo {
            group_id: b"g".to_vec(),
        });
        assert_eq!(routed_group(&info), None);
    }
}
