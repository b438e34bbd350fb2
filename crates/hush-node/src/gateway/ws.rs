//! The WebSocket transport: one task per connection.
//!
//! Lifecycle: Origin check and (optional) header token before the upgrade;
//! otherwise an `Auth` frame within `limits.auth_deadline_ms`. Then the
//! connection attaches to its user's SessionActor and serves requests one at
//! a time. After a `Sync`, it sends the backlog of every group from the
//! client's cursors, the inbox, `SyncCaughtUp`, then live events.
//!
//! Exactly-once per connection: the task remembers, per group, the last seq
//! it sent. A live event at or below it is dropped; one past a gap first has
//! the gap read from the store. So live delivery and backlog can race freely.
//!
//! Bounds: frames larger than `max_frame_bytes` close with 1009; requests over
//! the rate limit get RATE_LIMITED; the outbound queue is bounded and a full
//! one cuts the connection (4001); a write blocked for `write_timeout_ms` cuts
//! it too; no traffic for `heartbeat_timeout_ms` closes it (4002).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Session};
use futures_util::StreamExt as _;
use hush_ds::TokenClaims;
use hush_proto::{client_frame::Body as C, server_frame::Body as S, v1, ErrorCode};
use hush_proto::{ClientFrame, Message as _, ServerFrame};
use hush_store::InboxItem;
use tokio::sync::mpsc;

use crate::ctx::NodeCtx;
use crate::error::{ApiError, ApiResult};
use crate::gateway::{check_origin, error_response};
use crate::group::{Caller, GroupMsg};
use crate::session::{ConnHandle, Outbound, SessionMsg};

pub const CLOSE_AUTH_DEADLINE: u16 = 4000;
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
pub const CLOSE_HEARTBEAT: u16 = 4002;
pub const CLOSE_GOING_AWAY: u16 = 4004;

/// GET /v1/ws
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    ctx: web::Data<Arc<NodeCtx>>,
) -> HttpResponse {
    let ctx = ctx.get_ref().clone();
    if let Err(e) = check_origin(&ctx, &req) {
        return error_response(&e);
    }
    // A token offered as a subprotocol is checked before upgrading.
    let offered: Vec<String> = req
        .headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let header_token = offered
        .iter()
        .find_map(|p| p.strip_prefix(hush_proto::auth::WS_TOKEN_PREFIX));
    let pre_auth = match header_token {
        Some(token) => match authenticate(&ctx, token).await {
            Ok(claims) => Some(claims),
            Err(e) => return error_response(&e),
        },
        None => None,
    };
    let (response, session, stream) =
        match actix_ws::handle_with_protocols(&req, body, &[hush_proto::auth::WS_PROTOCOL]) {
            Ok(parts) => parts,
            Err(e) => return e.error_response(),
        };
    let stream = stream
        .max_frame_size(ctx.config.limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(ctx.config.limits.max_frame_bytes);
    actix_web::rt::spawn(async move {
        metrics::gauge!("hush_connections").increment(1.0);
        let conn = Connection::new(ctx, session);
        conn.run(stream, pre_auth).await;
        metrics::gauge!("hush_connections").decrement(1.0);
    });
    response
}

/// Verifies a token against the key and the device's token generation.
pub async fn authenticate(ctx: &NodeCtx, token: &str) -> ApiResult<TokenClaims> {
    let claims = ctx.tokens.verify(token, ctx.now_ms())?;
    match ctx.store.device(&claims.device_id).await? {
        Some(d) if d.user_id == claims.user_id && d.token_generation == claims.generation => {
            Ok(claims)
        }
        _ => Err(ApiError::new(ErrorCode::BadToken, "token revoked")),
    }
}

struct Connection {
    ctx: Arc<NodeCtx>,
    session: Session,
    id: u64,
    caller: Option<Caller>,
    rate: hush_ds::TokenBucket,
    /// Per group: the last seq sent on this connection.
    sent: HashMap<Vec<u8>, u64>,
    /// Last inbox_seq sent.
    inbox_sent: u64,
    synced: bool,
    last_seen: tokio::time::Instant,
}

enum Step {
    Continue,
    Close(CloseReason),
}

fn close(code: u16, why: &str) -> Step {
    Step::Close(CloseReason {
        code: CloseCode::Other(code),
        description: Some(why.into()),
    })
}

impl Connection {
    fn new(ctx: Arc<NodeCtx>, session: Session) -> Self {
        let l = &ctx.config.limits;
        let rate = hush_ds::TokenBucket::new(l.rate_per_sec, l.rate_burst, ctx.now_ms());
        Self {
            id: ctx.next_conn_id(),
            ctx,
            session,
            caller: None,
            rate,
            sent: HashMap::new(),
            inbox_sent: 0,
            synced: false,
            last_seen: tokio::time::Instant::now(),
        }
    }

    async fn run(
        mut self,
        mut stream: actix_ws::AggregatedMessageStream,
        pre_auth: Option<TokenClaims>,
    ) {
        let reason = self.serve(&mut stream, pre_auth).await;
        if let Some(caller) = &self.caller {
            if let Some(s) = self.ctx.sessions.get(&caller.user_id).await {
                let _ = s.send_message(SessionMsg::Detach { conn_id: self.id });
            }
        }
        tracing::debug!(conn = self.id, reason = ?reason, "connection closed");
        // Closing queues a close frame; a peer that stopped reading would
        // hold this task forever, so it is bounded like every other write.
        let limit = Duration::from_millis(self.ctx.config.limits.write_timeout_ms);
        let _ = tokio::time::timeout(limit, self.session.clone().close(reason)).await;
    }

    async fn serve(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
        pre_auth: Option<TokenClaims>,
    ) -> Option<CloseReason> {
        let limits = self.ctx.config.limits.clone();
        // --- authentication ---
        let claims = match pre_auth {
            Some(c) => c,
            None => {
                let deadline = Duration::from_millis(limits.auth_deadline_ms);
                match tokio::time::timeout(deadline, self.first_frame_auth(stream)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(step)) => return step_reason(step),
                    Err(_) => {
                        return step_reason(close(CLOSE_AUTH_DEADLINE, "auth deadline passed"))
                    }
                }
            }
        };
        let caller = Caller {
            user_id: claims.user_id,
            device_id: claims.device_id,
        };
        // --- attach to the user's session ---
        let (tx, mut rx) = mpsc::channel(limits.send_buffer_frames);
        let overflowed = Arc::new(AtomicBool::new(false));
        if let Err(e) = self.attach(&caller, tx, overflowed.clone()).await {
            let _ = self.send_frame(0, S::Error(e.to_proto())).await;
            return Some(CloseReason {
                code: CloseCode::Policy,
                description: Some(e.code_name().into()),
            });
        }
        self.caller = Some(caller.clone());
        let ok = S::AuthOk(v1::AuthOk {
            user_id: caller.user_id.clone(),
            device_id: caller.device_id.clone(),
        });
        if self.send_frame(0, ok).await.is_err() {
            return None;
        }

        // --- serve ---
        let mut heartbeat = tokio::time::interval(self.ctx.config.heartbeat_interval());
        heartbeat.tick().await;
        let timeout = Duration::from_millis(limits.heartbeat_timeout_ms);
        let mut shutdown = self.ctx.shutdown.subscribe();
        loop {
            let step = tokio::select! {
                _ = shutdown.wait_for(|down| *down) => {
                    close(CLOSE_GOING_AWAY, "node shutting down; reconnect elsewhere")
                }
                msg = stream.next() => match msg {
                    None => return None,
                    Some(Err(e)) => {
                        tracing::debug!(conn = self.id, error = %e, "websocket protocol error");
                        return Some(protocol_close(e));
                    }
                    Some(Ok(msg)) => {
                        self.last_seen = tokio::time::Instant::now();
                        self.on_message(msg, &caller).await
                    }
                },
                out = rx.recv() => match out {
                    Some(item) => self.on_outbound(item).await,
                    None if overflowed.load(Ordering::SeqCst) => {
                        close(CLOSE_SLOW_CONSUMER, "send buffer full")
                    }
                    None => Step::Close(CloseReason {
                        code: CloseCode::Policy,
                        description: Some("session ended".into()),
                    }),
                },
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() >= timeout {
                        close(CLOSE_HEARTBEAT, "heartbeat timeout")
                    } else if self.ctx.is_shutting_down() {
                        close(CLOSE_GOING_AWAY, "node shutting down; reconnect elsewhere")
                    } else {
                        let limit = Duration::from_millis(limits.write_timeout_ms);
                        match tokio::time::timeout(limit, self.session.ping(b"hb")).await {
                            Ok(Ok(())) => Step::Continue,
                            Ok(Err(_closed)) => return None,
                            Err(_) => close(CLOSE_SLOW_CONSUMER, "ping did not fit the send buffer"),
                        }
                    }
                }
            };
            if let Step::Close(reason) = step {
                return Some(reason);
            }
        }
    }

    async fn first_frame_auth(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
    ) -> Result<TokenClaims, Step> {
        loop {
            match stream.next().await {
                None => return Err(close(1000, "closed before auth")),
                Some(Err(e)) => return Err(Step::Close(protocol_close(e))),
                Some(Ok(actix_ws::AggregatedMessage::Binary(bytes))) => {
                    let frame = match ClientFrame::decode(bytes.as_ref()) {
                        Ok(f) => f,
                        Err(_) => {
                            let e = ApiError::new(ErrorCode::Malformed, "frame does not decode");
                            let _ = self.send_frame(0, S::Error(e.to_proto())).await;
                            return Err(Step::Close(CloseReason::from(CloseCode::Policy)));
                        }
                    };
                    let result = match frame.body {
                        Some(C::Auth(a)) => authenticate(&self.ctx, &a.token).await,
                        _ => Err(ApiError::new(
                            ErrorCode::Unauthenticated,
                            "authenticate first (Auth frame or token subprotocol)",
                        )),
                    };
                    return match result {
                        Ok(c) => Ok(c),
                        Err(e) => {
                            metrics::counter!("hush_errors_total", "code" => e.code_name())
                                .increment(1);
                            let _ = self
                                .send_frame(frame.request_id, S::Error(e.to_proto()))
                                .await;
                            Err(Step::Close(CloseReason {
                                code: CloseCode::Policy,
                                description: Some(e.code_name().into()),
                            }))
                        }
                    };
                }
                Some(Ok(actix_ws::AggregatedMessage::Ping(p))) => {
                    let _ = self.session.pong(&p).await;
                }
                Some(Ok(actix_ws::AggregatedMessage::Close(_))) => {
                    return Err(close(1000, "closed before auth"))
                }
                Some(Ok(_)) => {}
            }
        }
    }

    async fn attach(
        &self,
        caller: &Caller,
        tx: mpsc::Sender<Outbound>,
        overflowed: Arc<AtomicBool>,
    ) -> ApiResult<()> {
        // A session that stops between lookup and attach is retried once.
        for _ in 0..2 {
            let session = self.ctx.session(&caller.user_id).await?;
            let conn = ConnHandle {
                device_id: caller.device_id.clone(),
                tx: tx.clone(),
                overflowed: overflowed.clone(),
            };
            let r = session
                .call(
                    |reply| SessionMsg::Attach {
                        conn_id: self.id,
                        conn,
                        reply,
                    },
                    Some(Duration::from_secs(10)),
                )
                .await;
            match r {
                Ok(ractor::rpc::CallResult::Success(result)) => return result,
                _ => {
                    self.ctx
                        .sessions
                        .remove(&caller.user_id, session.get_id())
                        .await;
                }
            }
        }
        Err(ApiError::new(ErrorCode::Unavailable, "session unavailable"))
    }

    async fn on_message(&mut self, msg: actix_ws::AggregatedMessage, caller: &Caller) -> Step {
        use actix_ws::AggregatedMessage as M;
        match msg {
            M::Binary(bytes) => self.on_frame(bytes, caller).await,
            M::Text(_) => {
                let e = ApiError::new(ErrorCode::Malformed, "text frames are not accepted");
                self.reply_error(0, e).await
            }
            M::Ping(p) => {
                let _ = self.session.pong(&p).await;
                Step::Continue
            }
            M::Pong(_) => Step::Continue,
            M::Close(_) => Step::Close(CloseReason::from(CloseCode::Normal)),
        }
    }

    async fn reply_error(&mut self, request_id: u64, e: ApiError) -> Step {
        metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
        match self.send_frame(request_id, S::Error(e.to_proto())).await {
            Ok(()) => Step::Continue,
            Err(step) => step,
        }
    }

    async fn on_frame(&mut self, bytes: Bytes, caller: &Caller) -> Step {
        let frame = match ClientFrame::decode(bytes.as_ref()) {
            Ok(f) => f,
            Err(_) => {
                let e = ApiError::new(ErrorCode::Malformed, "frame does not decode as ClientFrame");
                return self.reply_error(0, e).await;
            }
        };
        let rid = frame.request_id;
        if !self.rate.try_take(self.ctx.now_ms()) {
            let e = ApiError::new(ErrorCode::RateLimited, "request rate limit exceeded");
            return self.reply_error(rid, e).await;
        }
        let Some(body) = frame.body else {
            let e = ApiError::new(ErrorCode::Malformed, "frame has no body");
            return self.reply_error(rid, e).await;
        };
        metrics::counter!("hush_frames_in_total").increment(1);
        let result = match body {
            // The Sync's answer is a stream: SyncStarted (carrying the
            // request id), the backlog, then SyncCaughtUp.
            C::Sync(req) => self.sync(rid, caller, req).await.map(|()| None),
            other => self.dispatch(other, caller).await,
        };
        match result {
            Ok(Some(body)) => match self.send_frame(rid, body).await {
                Ok(()) => {}
                Err(step) => return step,
            },
            Ok(None) => {}
            Err(e) => return self.reply_error(rid, e).await,
        }
        Step::Continue
    }
}

/// The close for a WebSocket protocol error: 1009 for a frame above
/// `max_frame_bytes` (before or after auth), 1002 otherwise.
fn protocol_close(e: actix_ws::ProtocolError) -> CloseReason {
    let code = if matches!(e, actix_ws::ProtocolError::Overflow) {
        metrics::counter!("hush_errors_total", "code" => "TOO_LARGE").increment(1);
        CloseCode::Size
    } else {
        CloseCode::Protocol
    };
    CloseReason {
        code,
        description: Some(e.to_string()),
    }
}

/// `on_frame` answers Sync itself (its reply is a stream, not one frame).
fn unreachable_sync() -> ApiResult<Option<S>> {
    Err(ApiError::new(
        ErrorCode::Internal,
        "sync reached the single-reply dispatcher",
    ))
}

fn step_reason(step: Step) -> Option<CloseReason> {
    match step {
        Step::Continue => None,
        Step::Close(r) => Some(r),
    }
}

/// The frame for an inbox item (shared by sync and live delivery).
pub fn inbox_frame(item: &InboxItem) -> Bytes {
    ServerFrame {
        request_id: 0,
        body: Some(S::InboxEvent(v1::InboxEvent {
            inbox_seq: item.inbox_seq,
            welcome: item.welcome.clone(),
            group_id: item.group_id.clone(),
            commit_seq: item.commit_seq,
            ratchet_tree: item.ratchet_tree.clone(),
        })),
    }
    .encode_to_vec()
    .into()
}

// ----- requests -----
impl Connection {
    /// Serves one request. `Ok(None)` means no response frame (acks).
    async fn dispatch(&mut self, body: C, caller: &Caller) -> ApiResult<Option<S>> {
        let ctx = self.ctx.clone();
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
                S::KeyPackagesUploaded(crate::keys::upload(&ctx, caller, req).await?)
            }
            C::ClaimKeyPackages(req) => {
                S::ClaimedKeyPackages(crate::keys::claim(&ctx, &req.user_id).await?)
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
            C::CreateGroup(req) => {
                S::GroupCreated(crate::keys::create_group(&ctx, caller, req).await?)
            }
            C::SendMessage(req) => {
                let gid = req.group_id.clone();
                S::MessageAccepted(
                    self.call_group(&gid, |reply| GroupMsg::Send {
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
                    self.call_group(&gid, |reply| GroupMsg::Commit {
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
                    self.call_group(&gid, |reply| GroupMsg::Proposal {
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
                S::GroupList(self.list_groups(caller, req.all_devices_of_user).await?)
            }
            C::Sync(_) => return unreachable_sync(),
            C::Ack(a) => {
                if a.group_id.is_empty() || a.group_id.len() > 256 {
                    return Err(ApiError::new(ErrorCode::InvalidArgument, "bad group id"));
                }
                store
                    .set_cursor(&caller.device_id, &a.group_id, a.seq)
                    .await?;
                return Ok(None);
            }
            C::AckInbox(a) => {
                store.ack_inbox(&caller.device_id, a.inbox_seq).await?;
                return Ok(None);
            }
        }))
    }

    async fn call_group<T, F>(&self, group_id: &[u8], make: F) -> ApiResult<T>
    where
        F: FnOnce(ractor::RpcReplyPort<ApiResult<T>>) -> GroupMsg,
        T: Send + 'static,
    {
        if group_id.is_empty() || group_id.len() > 256 {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "bad group id"));
        }
        let group = self.ctx.group(group_id).await?;
        match group.call(make, Some(Duration::from_secs(30))).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(ractor::rpc::CallResult::Timeout) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "group did not answer in time",
            )),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                // The actor stopped (passivated or lost its lease): it is
                // reactivated on the next request; the client retries.
                self.ctx
                    .groups
                    .remove(&group_id.to_vec(), group.get_id())
                    .await;
                Err(ApiError::new(ErrorCode::Unavailable, "group moved; retry"))
            }
        }
    }

    async fn list_groups(&self, caller: &Caller, all_devices: bool) -> ApiResult<v1::GroupList> {
        let store = &self.ctx.store;
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

    /// Sends the backlog from the client's cursors, the inbox, then
    /// SyncCaughtUp; afterwards live events flow.
    async fn sync(&mut self, request_id: u64, caller: &Caller, req: v1::Sync) -> ApiResult<()> {
        let store = self.ctx.store.clone();
        self.send_frame(request_id, S::SyncStarted(v1::SyncStarted {}))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "connection closed"))?;
        let client: HashMap<Vec<u8>, u64> = req
            .cursors
            .into_iter()
            .map(|c| (c.group_id, c.after_seq))
            .collect();
        let stored: HashMap<Vec<u8>, u64> = store
            .cursors(&caller.device_id)
            .await?
            .into_iter()
            .collect();
        self.sent.clear();
        let cursor = |group_id: &[u8], joined_seq: u64| {
            client
                .get(group_id)
                .or_else(|| stored.get(group_id))
                .copied()
                .unwrap_or(0)
                .max(joined_seq)
        };
        let current = store.groups_of_device(&caller.device_id).await?;
        for g in &current {
            self.sent
                .insert(g.group_id.clone(), cursor(&g.group_id, g.joined_seq));
            self.send_backlog(&g.group_id, None).await?;
        }
        // Groups the device was removed from: up to the removing commit, so
        // the client learns it is out. Live traffic for them stops there.
        for d in store.departed_groups(&caller.device_id).await? {
            if current.iter().any(|g| g.group_id == d.group_id) {
                continue;
            }
            self.sent
                .insert(d.group_id.clone(), cursor(&d.group_id, d.joined_seq));
            self.send_backlog(&d.group_id, Some(d.left_seq)).await?;
        }
        self.inbox_sent = req.inbox_after;
        loop {
            let items = store
                .read_inbox(
                    &caller.device_id,
                    self.inbox_sent,
                    self.ctx.config.limits.sync_page,
                )
                .await?;
            if items.is_empty() {
                break;
            }
            for item in items {
                self.send_inbox(
                    &item.group_id,
                    item.inbox_seq,
                    item.commit_seq,
                    inbox_frame(&item),
                )
                .await?;
            }
        }
        self.synced = true;
        self.send_frame(0, S::SyncCaughtUp(v1::SyncCaughtUp {}))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "connection closed"))?;
        Ok(())
    }

    /// Sends stored entries of a group after what this connection sent, up to
    /// `upto` (or the head).
    async fn send_backlog(&mut self, group_id: &[u8], upto: Option<u64>) -> ApiResult<()> {
        let page = self.ctx.config.limits.sync_page;
        loop {
            let after = self.sent.get(group_id).copied().unwrap_or(0);
            if upto.is_some_and(|u| after >= u) {
                return Ok(());
            }
            let entries = self.ctx.store.read_timeline(group_id, after, page).await?;
            if entries.is_empty() {
                return Ok(());
            }
            for e in entries {
                if upto.is_some_and(|u| e.seq > u) {
                    return Ok(());
                }
                let frame = crate::gateway::entry_frame(group_id, &e);
                self.write(frame)
                    .await
                    .map_err(|_| ApiError::new(ErrorCode::Unavailable, "connection closed"))?;
                self.sent.insert(group_id.to_vec(), e.seq);
            }
        }
    }

    async fn send_inbox(
        &mut self,
        _group_id: &[u8],
        inbox_seq: u64,
        _commit_seq: u64,
        frame: Bytes,
    ) -> ApiResult<()> {
        if inbox_seq <= self.inbox_sent {
            return Ok(());
        }
        self.write(frame)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "connection closed"))?;
        self.inbox_sent = inbox_seq;
        Ok(())
    }

    /// A live item from the session.
    async fn on_outbound(&mut self, item: Outbound) -> Step {
        if !self.synced {
            // Not syncing yet: the backlog read at Sync time will include it.
            return Step::Continue;
        }
        let r = match item {
            Outbound::Group {
                group_id,
                seq,
                frame,
            } => {
                let known = self.sent.get(group_id.as_ref()).copied();
                let last = match known {
                    Some(l) => l,
                    None => {
                        // A group joined after Sync: start after the join.
                        match self.joined_seq(&group_id).await {
                            Ok(Some(j)) => {
                                self.sent.insert(group_id.to_vec(), j);
                                j
                            }
                            Ok(None) => return Step::Continue,
                            Err(e) => return self.reply_error(0, e).await,
                        }
                    }
                };
                if seq <= last {
                    Ok(())
                } else if seq == last + 1 {
                    match self.write(frame).await {
                        Ok(()) => {
                            self.sent.insert(group_id.to_vec(), seq);
                            Ok(())
                        }
                        Err(step) => return step,
                    }
                } else {
                    metrics::counter!("hush_gap_fills_total").increment(1);
                    self.send_backlog(&group_id, Some(seq)).await
                }
            }
            Outbound::Inbox {
                inbox_seq,
                group_id,
                commit_seq,
                frame,
            } => {
                // The device's timeline for this group starts after the commit.
                self.sent.entry(group_id.to_vec()).or_insert(commit_seq);
                self.send_inbox(&group_id, inbox_seq, commit_seq, frame)
                    .await
            }
        };
        match r {
            Ok(()) => Step::Continue,
            Err(e) if e.code == ErrorCode::Unavailable => {
                Step::Close(CloseReason::from(CloseCode::Away))
            }
            Err(e) => self.reply_error(0, e).await,
        }
    }

    async fn joined_seq(&self, group_id: &[u8]) -> ApiResult<Option<u64>> {
        let Some(caller) = &self.caller else {
            return Ok(None);
        };
        Ok(self
            .ctx
            .store
            .groups_of_device(&caller.device_id)
            .await?
            .into_iter()
            .find(|g| g.group_id == group_id)
            .map(|g| g.joined_seq))
    }

    async fn send_frame(&mut self, request_id: u64, body: S) -> Result<(), Step> {
        let frame = ServerFrame {
            request_id,
            body: Some(body),
        };
        self.write(frame.encode_to_vec().into()).await
    }

    /// One write, bounded in time: a reader that does not drain is cut off.
    async fn write(&mut self, bytes: Bytes) -> Result<(), Step> {
        let limit = Duration::from_millis(self.ctx.config.limits.write_timeout_ms);
        match tokio::time::timeout(limit, self.session.binary(bytes)).await {
            Ok(Ok(())) => {
                metrics::counter!("hush_frames_out_total").increment(1);
                Ok(())
            }
            Ok(Err(_closed)) => Err(Step::Close(CloseReason::from(CloseCode::Away))),
            Err(_) => {
                metrics::counter!("hush_slow_consumers_cut_total").increment(1);
                Err(close(CLOSE_SLOW_CONSUMER, "write timed out"))
            }
        }
    }
}
