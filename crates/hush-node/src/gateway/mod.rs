//! The actix-web gateway: HTTP endpoints for accounts and login, the
//! WebSocket transport, the SSE stream and the HTTP RPC endpoint (the
//! fallback for networks that block upgrades), health and metrics. Only this module knows actix.

pub mod cluster;
pub mod delivery;
pub mod dispatch;
pub mod http;
pub mod rpc;
pub mod sse;
pub mod webapp;
pub mod ws;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use hush_ds::TokenClaims;
use hush_proto::{server_frame, v1, ErrorCode, Message as _, ServerFrame};
use hush_store::{Entry, EntryKind};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::ctx::NodeCtx;
use crate::error::{ApiError, ApiResult};

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics_page))
        .route("/cluster", web::get().to(cluster::status))
        .route("/v1/ws", web::get().to(ws::upgrade))
        .route("/v1/events", web::get().to(sse::events))
        .route("/v1/rpc", web::post().to(rpc::rpc))
        .route("/v1/register", web::post().to(http::register))
        .route("/v1/login/challenge", web::post().to(http::login_challenge))
        .route("/v1/login", web::post().to(http::login))
        .route("/v1/device/link-code", web::post().to(http::link_code))
        .route("/v1/device/link", web::post().to(http::link_device))
        .route("/v1/logout", web::post().to(http::logout))
        .configure(webapp::routes);
}

async fn healthz(ctx: web::Data<Arc<NodeCtx>>) -> HttpResponse {
    if ctx.is_shutting_down() {
        HttpResponse::ServiceUnavailable().body("shutting down\n")
    } else {
        HttpResponse::Ok().body("ok\n")
    }
}

async fn metrics_page(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

/// Browsers send Origin on WebSocket upgrades; a cross-site page must not be
/// able to ride a user's credentials (cross-site WebSocket hijacking).
pub fn check_origin(ctx: &NodeCtx, req: &HttpRequest) -> ApiResult<()> {
    let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if ctx
        .config
        .gateway
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        || webapp::same_origin(req, origin)
    {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::BadOrigin, "origin not allowed"))
    }
}

/// An `Error` body with the matching HTTP status.
pub fn error_response(e: &ApiError) -> HttpResponse {
    metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
    let status = actix_web::http::StatusCode::from_u16(e.http_status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type("application/x-protobuf")
        .body(e.to_proto().encode_to_vec())
}

/// The bearer token's claims (HTTP endpoints).
pub async fn bearer_claims(ctx: &NodeCtx, req: &HttpRequest) -> ApiResult<TokenClaims> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
    ws::authenticate(ctx, token).await
}

/// A stored entry as a pushed GroupEvent frame.
pub fn entry_frame(group_id: &[u8], e: &Entry) -> web::Bytes {
    let kind = match e.kind {
        EntryKind::Commit => v1::EntryKind::Commit,
        EntryKind::Proposal => v1::EntryKind::Proposal,
        EntryKind::Application => v1::EntryKind::Application,
    };
    ServerFrame {
        request_id: 0,
        body: Some(server_frame::Body::GroupEvent(v1::GroupEvent {
            group_id: group_id.to_vec(),
            seq: e.seq,
            kind: kind as i32,
            epoch: e.epoch,
            sender: e.sender.clone(),
            message: e.message.clone(),
            server_time_ms: e.server_time_ms,
        })),
    }
    .encode_to_vec()
    .into()
}
