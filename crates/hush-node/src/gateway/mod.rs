//! The actix-web gateway: HTTP endpoints for accounts and login, the
//! WebSocket transport, the SSE stream and the HTTP RPC endpoint (the
//! fallback for networks that block upgrades), health, metrics and the
//! cluster status page, and the web client's files.
//!
//! *Architecture invariant:* only this module (and `lib.rs`, which builds
//! the server through [`serve`]) knows actix. Everything below it is
//! reached through [`AppState`]: the client API ([`Api`]), the sessions
//! (for attaching streams), the store (for auth and the Sync backlog).
//!
//! Files: `ws.rs` (WebSocket), `sse.rs` (`GET /v1/events`), `rpc.rs`
//! (`POST /v1/rpc`), `stream.rs` (what WebSocket and SSE share: attach,
//! Sync backlog, exactly-once live delivery), `http.rs` (register, login,
//! link, logout), `status.rs` (`/cluster`), `webapp.rs` (the web client).

pub mod http;
pub mod rpc;
pub mod sse;
pub mod status;
pub mod stream;
pub mod webapp;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use hush_ds::TokenClaims;
use hush_proto::{ErrorCode, Message as _};
use hush_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::api::Api;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::route::Route;
use crate::secrets::TokenKeyHandle;
use crate::session::Sessions;
use crate::shutdown::Shutdown;

/// What the gateway's handlers share (actix app data).
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// The token keys in use (swapped whole when the key file is reloaded).
    pub tokens: TokenKeyHandle,
    pub clock: Arc<dyn Clock>,
    pub api: Arc<Api>,
    pub sessions: Arc<Sessions>,
    pub route: Arc<Route>,
    pub shutdown: Shutdown,
    next_conn_id: AtomicU64,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        tokens: TokenKeyHandle,
        clock: Arc<dyn Clock>,
        api: Arc<Api>,
        sessions: Arc<Sessions>,
        route: Arc<Route>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            config,
            store,
            tokens,
            clock,
            api,
            sessions,
            route,
            shutdown,
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new id for a client connection of this node.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The gateway's HTTP server, running.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (at most
    /// [`SERVER_SHUTDOWN_TIMEOUT_SECS`]) and waits for the server.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// How long actix waits for in-flight requests when the server stops.
const SERVER_SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// Binds the gateway on `gateway.listen` with every route and runs it on
/// its own worker threads (spawned from the current runtime).
pub fn serve(
    app: Arc<AppState>,
    metrics: PrometheusHandle,
) -> Result<Running, (SocketAddr, std::io::Error)> {
    let config = app.config.clone();
    let max_body = config.limits.max_frame_bytes;
    // Shared by every worker: RPC rate limits are per device, not per worker.
    let rpc_rates = web::Data::new(rpc::RateTable::default());
    let mut server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(web::Data::new(app.clone()))
            .app_data(rpc_rates.clone())
            .app_data(web::Data::new(metrics.clone()))
            .app_data(web::PayloadConfig::new(max_body))
            .configure(routes)
    })
    .disable_signals()
    .tcp_nodelay(config.gateway.tcp_nodelay)
    .shutdown_timeout(SERVER_SHUTDOWN_TIMEOUT_SECS);
    if config.gateway.workers > 0 {
        server = server.workers(config.gateway.workers);
    }
    let listen = config.gateway.listen;
    let server = server.bind(listen).map_err(|e| (listen, e))?;
    let addr = server.addrs().first().copied().ok_or_else(|| {
        (
            listen,
            std::io::Error::other("the gateway bound no address"),
        )
    })?;
    let server = server.run();
    let handle = server.handle();
    Ok(Running {
        addr,
        handle,
        task: tokio::spawn(server),
    })
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics_page))
        .route("/cluster", web::get().to(status::status))
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

async fn healthz(app: web::Data<Arc<AppState>>) -> HttpResponse {
    if app.shutdown.is_shutting_down() {
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
pub fn check_origin(app: &AppState, req: &HttpRequest) -> ApiResult<()> {
    let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if app
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

/// Verifies a token against the keys (current, or previous within its
/// deadline), the node's token lifetime (an expiry further ahead is
/// refused) and the device's token generation.
pub async fn authenticate(app: &AppState, token: &str) -> ApiResult<TokenClaims> {
    let lifetime = crate::secrets::token_lifetime_ms(&app.config);
    let claims = app.tokens.get().verify(token, app.now_ms(), lifetime)?;
    match app.store.device(&claims.device_id).await? {
        Some(d) if d.user_id == claims.user_id && d.token_generation == claims.generation => {
            Ok(claims)
        }
        _ => Err(ApiError::new(ErrorCode::BadToken, "token revoked")),
    }
}

/// The bearer token's claims (HTTP endpoints).
pub async fn bearer_claims(app: &AppState, req: &HttpRequest) -> ApiResult<TokenClaims> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
    authenticate(app, token).await
}
