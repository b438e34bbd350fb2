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
//! link, logout), `limits.rs` (rate limits per address and account,
//! connections per address), `status.rs` (`/cluster`), `webapp.rs` (the
//! web client), `observe.rs` (per-route request counts and latencies).
//!
//! Deadlines on every connection: the request head within
//! `gateway.header_timeout_ms` (actix's client request timeout, 408), the
//! body within `gateway.body_timeout_ms` of the head ([`edge`] wraps the
//! payload; a trickled body ends in MALFORMED and the connection closes),
//! `gateway.keep_alive_ms` between requests. WebSockets and SSE streams
//! have their own (auth deadline, heartbeat, write timeout). With
//! `[gateway.tls]` the same routes are served over HTTPS/WSS (`tls.rs`); the
//! TLS handshake gets the head deadline too, and every answer carries HSTS.

pub mod http;
pub mod limits;
pub mod observe;
pub mod rpc;
pub mod sse;
pub mod status;
pub mod stream;
pub mod tls;
pub mod webapp;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use hush_ds::TokenClaims;
use hush_proto::{ErrorCode, Message as _};
use hush_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

use hush_ds::{ChallengeLedger, SpendError, TokenKey};

use self::limits::{ConnGuard, ConnTable, KeyedLimiter, RetryAfter, SourceKey};
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
    /// When the gateway state was built (node clock), for `/readyz`.
    started_ms: u64,
    /// Signs login challenges: this process's own random key, so a
    /// challenge is good only on the node that issued it, until it restarts.
    pub challenge_key: TokenKey,
    /// Challenges already used (each logs in once).
    used_challenges: std::sync::Mutex<ChallengeLedger>,
    /// Account endpoints, per source address.
    pub ip_limits: KeyedLimiter<SourceKey>,
    /// Logins per device, link codes per user.
    pub account_limits: KeyedLimiter<String>,
    /// Live connections per source address.
    pub conns_per_ip: Arc<ConnTable>,
}

/// What one sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub link_codes: u64,
    pub challenges: usize,
    pub rate_entries: usize,
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
        challenge_secret: &[u8],
    ) -> Self {
        let r = &config.rate_limits;
        let ip_limits = KeyedLimiter::new(r.ip_per_sec, r.ip_burst, r.tracked_keys);
        let account_limits = KeyedLimiter::new(r.account_per_sec, r.account_burst, r.tracked_keys);
        let used_challenges = std::sync::Mutex::new(ChallengeLedger::new(r.tracked_keys));
        let started_ms = clock.now_ms();
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
            started_ms,
            challenge_key: TokenKey::new(challenge_secret),
            used_challenges,
            ip_limits,
            account_limits,
            conns_per_ip: Arc::new(ConnTable::default()),
        }
    }

    /// Spends a verified login challenge: once each.
    pub fn spend_challenge(&self, id: &hush_ds::ChallengeId) -> ApiResult<()> {
        let now = self.now_ms();
        let mut ledger = self
            .used_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ledger.spend(id, now).map_err(|e| match e {
            SpendError::Replayed => {
                crate::telemetry::auth_failed("challenge_replayed");
                ApiError::new(ErrorCode::Forbidden, "challenge already used")
            }
            SpendError::Full => ApiError::new(
                ErrorCode::RateLimited,
                "too many logins in flight; retry shortly",
            ),
        })
    }

    /// Deletes what has expired by the node clock: link codes in the
    /// store, used challenges, rate-limit entries that have refilled.
    pub async fn sweep(&self) -> SweepReport {
        let now = self.now_ms();
        let link_codes = match self.store.sweep_link_codes(now).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "sweeping link codes failed");
                0
            }
        };
        let challenges = self
            .used_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sweep(now);
        let rate_entries = self.ip_limits.sweep(now) + self.account_limits.sweep(now);
        SweepReport {
            link_codes,
            challenges,
            rate_entries,
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
/// its own worker threads (spawned from the current runtime); over TLS when
/// `cert` is given.
pub fn serve(
    app: Arc<AppState>,
    metrics: PrometheusHandle,
    cert: Option<Arc<tls::GatewayCert>>,
) -> Result<Running, (SocketAddr, std::io::Error)> {
    let config = app.config.clone();
    let listen = config.gateway.listen;
    let tls_config = match cert {
        Some(c) => Some(tls::server_config(c).map_err(|e| (listen, std::io::Error::other(e)))?),
        None => None,
    };
    let hsts = (tls_config.is_some() && config.gateway.hsts_max_age_secs > 0)
        .then(|| format!("max-age={}", config.gateway.hsts_max_age_secs));
    let max_body = config.limits.max_frame_bytes;
    // Shared by every worker: RPC rate limits are per device, not per worker.
    let rpc_rates = web::Data::new(rpc::RateTable::default());
    let conns = app.conns_per_ip.clone();
    let max_per_ip = config.gateway.max_connections_per_ip;
    let g = &config.gateway;
    let mut server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(web::Data::new(app.clone()))
            .app_data(rpc_rates.clone())
            .app_data(web::Data::new(metrics.clone()))
            .app_data(web::PayloadConfig::new(max_body))
            .wrap(actix_web::middleware::Condition::new(
                hsts.is_some(),
                actix_web::middleware::DefaultHeaders::new().add((
                    actix_web::http::header::STRICT_TRANSPORT_SECURITY,
                    hsts.clone().unwrap_or_default(),
                )),
            ))
            .wrap(actix_web::middleware::from_fn(edge))
            .wrap(actix_web::middleware::from_fn(observe::observe))
            .configure(routes)
    })
    .on_connect(move |conn, data| {
        if let Some(ip) = peer_ip(conn) {
            data.insert(conns.open(ip, max_per_ip));
        }
    })
    .client_request_timeout(Duration::from_millis(g.header_timeout_ms))
    .client_disconnect_timeout(Duration::from_millis(g.disconnect_timeout_ms))
    .keep_alive(Duration::from_millis(g.keep_alive_ms))
    .tls_handshake_timeout(Duration::from_millis(g.header_timeout_ms))
    .disable_signals()
    .tcp_nodelay(config.gateway.tcp_nodelay)
    .shutdown_timeout(SERVER_SHUTDOWN_TIMEOUT_SECS);
    server = server.workers(config.gateway_workers());
    let server = match tls_config {
        Some(c) => server.bind_rustls_0_23(listen, c),
        None => server.bind(listen),
    }
    .map_err(|e| (listen, e))?;
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

/// The peer address of an accepted connection.
fn peer_ip(conn: &dyn std::any::Any) -> Option<std::net::IpAddr> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
        return tcp.peer_addr().ok().map(|a| a.ip());
    }
    if let Some(tls) = conn.downcast_ref::<TlsStream<TcpStream>>() {
        return tls.get_ref().0.peer_addr().ok().map(|a| a.ip());
    }
    None
}

/// Every request passes here first: a connection over the per-address cap
/// is answered TOO_MANY_CONNECTIONS and closed; a request body gets the
/// body deadline.
async fn edge(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    if req.conn_data::<ConnGuard>().is_some_and(|g| g.over_limit) {
        metrics::counter!("hush_connections_refused_total", "why" => "per_ip").increment(1);
        let e = ApiError::new(
            ErrorCode::TooManyConnections,
            "too many connections from this address (gateway.max_connections_per_ip)",
        );
        let mut resp = error_response(&e);
        resp.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    // Only a request that has a body gets the body deadline (a WebSocket
    // upgrade's "payload" is the socket itself).
    let headers = req.headers();
    let upgrade = headers.contains_key(actix_web::http::header::UPGRADE);
    let has_body = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body && !upgrade {
        if let Some(app) = req.app_data::<web::Data<Arc<AppState>>>() {
            let limit = Duration::from_millis(app.config.gateway.body_timeout_ms);
            let payload = actix_web::HttpMessage::take_payload(&mut req);
            req.set_payload(deadline_payload(payload, limit));
        }
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}

/// The request body, ending in an error once `limit` has passed.
fn deadline_payload(payload: actix_web::dev::Payload, limit: Duration) -> actix_web::dev::Payload {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + limit;
    let stream =
        futures_util::stream::unfold((payload, false), move |(mut payload, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout_at(deadline, payload.next()).await {
                Ok(Some(item)) => Some((item, (payload, false))),
                Ok(None) => None,
                Err(_) => {
                    metrics::counter!("hush_body_timeouts_total").increment(1);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body not received in time (gateway.body_timeout_ms)",
                    );
                    Some((Err(actix_web::error::PayloadError::Io(e)), (payload, true)))
                }
            }
        });
    let boxed: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>>,
    > = Box::pin(stream);
    actix_web::dev::Payload::from(boxed)
}

/// A RATE_LIMITED answer with `Retry-After` (whole seconds, rounded up).
pub fn rate_limited(what: &str, retry: RetryAfter) -> HttpResponse {
    metrics::counter!("hush_rate_limited_total", "what" => what.to_owned()).increment(1);
    let e = ApiError::rate_limited(&format!("too many requests ({what})"), retry.0);
    let mut resp = error_response(&e);
    let secs = retry.0.div_ceil(1000).max(1);
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut()
            .insert(actix_web::http::header::RETRY_AFTER, v);
    }
    resp
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
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

/// How long `/readyz` waits, in SWIM probe periods from the node's start,
/// for configured peers missing from its view: a peer it can reach joins
/// within a few, so one still missing after that is taken to be down.
const VIEW_SETTLE_PROBES: u64 = 5;

/// Readiness: 200 when this node should get client traffic, else 503 with
/// the first reason it should not. `/healthz` is liveness only (the process
/// runs and is not shutting down). Ready means all of:
/// - not shutting down;
/// - the store answers now ([`Store::ready`]: a write issued now could be
///   durable; a CQL cluster that is down, at start or later, fails this,
///   and it passes again by itself when the cluster is back);
/// - in a cluster, the view has settled: it holds this node and every
///   configured node, or every configured node but those still missing
///   [`VIEW_SETTLE_PROBES`] probe periods after the start (peers it cannot
///   reach).
async fn readyz(app: web::Data<Arc<AppState>>) -> HttpResponse {
    match readiness(&app).await {
        Ok(()) => HttpResponse::Ok().body("ready\n"),
        Err(why) => HttpResponse::ServiceUnavailable().body(format!("not ready: {why}\n")),
    }
}

async fn readiness(app: &AppState) -> Result<(), String> {
    if app.shutdown.is_shutting_down() {
        return Err("shutting down".into());
    }
    app.store.ready().await.map_err(|e| format!("store: {e}"))?;
    if app.route.mesh().is_some() {
        let members = app.route.view().borrow().members.clone();
        let me = app.route.me();
        if !members.contains(me) {
            return Err("this node is not in its own view yet".into());
        }
        let missing: Vec<&str> = app
            .config
            .cluster
            .nodes
            .iter()
            .map(|n| n.id.as_str())
            .filter(|id| !members.contains(*id))
            .collect();
        let settle_ms = app
            .config
            .cluster
            .probe_ms
            .saturating_mul(VIEW_SETTLE_PROBES);
        if !missing.is_empty() && app.now_ms().saturating_sub(app.started_ms) < settle_ms {
            return Err(format!(
                "view settling, not in it yet: {}",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

async fn metrics_page(
    app: web::Data<Arc<AppState>>,
    req: HttpRequest,
    handle: web::Data<PrometheusHandle>,
) -> HttpResponse {
    if let Err(e) = admin_check(&app, &req) {
        return error_response(&e);
    }
    crate::telemetry::collect_process();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

/// The admin pages (`/metrics`, `/cluster`) say who is online where, how
/// the cluster is laid out and how busy it is: they are answered to a
/// loopback peer (unless `gateway.admin_loopback = false`) and to a request
/// with `Authorization: Bearer <gateway.admin_token>`; anyone else gets
/// FORBIDDEN.
pub fn admin_check(app: &AppState, req: &HttpRequest) -> ApiResult<()> {
    let g = &app.config.gateway;
    if g.admin_loopback && req.peer_addr().is_some_and(|a| a.ip().is_loopback()) {
        return Ok(());
    }
    if let Some(want) = g.admin_token.as_deref() {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes())) {
            return Ok(());
        }
    }
    metrics::counter!("hush_admin_refused_total").increment(1);
    Err(ApiError::new(
        ErrorCode::Forbidden,
        "an admin page: loopback only, or gateway.admin_token",
    ))
}

/// Equality that takes as long whatever the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    let claims = app
        .tokens
        .get()
        .verify(token, app.now_ms(), lifetime)
        .inspect_err(|e| {
            crate::telemetry::auth_failed(crate::telemetry::token_failure_reason(e))
        })?;
    match app.store.device(&claims.device_id).await? {
        Some(d) if d.user_id == claims.user_id && d.token_generation == claims.generation => {
            Ok(claims)
        }
        _ => {
            crate::telemetry::auth_failed("token_revoked");
            Err(ApiError::new(ErrorCode::BadToken, "token revoked"))
        }
    }
}

/// The bearer token's claims (HTTP endpoints).
pub async fn bearer_claims(app: &AppState, req: &HttpRequest) -> ApiResult<TokenClaims> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            crate::telemetry::auth_failed("missing_token");
            ApiError::new(ErrorCode::Unauthenticated, "missing bearer token")
        })?;
    authenticate(app, token).await
}
