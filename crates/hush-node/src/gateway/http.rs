//! HTTP endpoints: registration, login (challenge-response with the device
//! key), device linking, logout. Bodies are protobuf.
//!
//! Abuse limits (`limits.rs`): every endpoint but logout takes a token from
//! its source address's bucket first; a login whose signature verified
//! takes one from its device's bucket, a link code from its user's. A
//! refusal is RATE_LIMITED (429) with `Retry-After`. Login challenges are
//! signed with this process's own key and spent once: a captured challenge
//! and signature do not log in again.

use std::sync::Arc;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use hush_ds::{verify_ed25519, TokenClaims};
use hush_proto::{auth, v1, ErrorCode, Message};
use hush_store::Device;
use ring::rand::SecureRandom as _;

use super::limits::{RetryAfter, SourceKey};
use super::{bearer_claims, error_response, rate_limited, AppState};
use crate::error::{ApiError, ApiResult};

/// A request body as the handlers take it: reading it can fail (above
/// `limits.max_frame_bytes`), and that failure must still be an `Error` body
/// with a code, not actix's plain-text response.
type Body = Result<Bytes, actix_web::Error>;

fn decode<T: Message + Default>(body: &Body) -> ApiResult<T> {
    let bytes = body.as_ref().map_err(|e| {
        let timed_out = matches!(
            e.as_error::<actix_web::error::PayloadError>(),
            Some(actix_web::error::PayloadError::Io(io))
                if io.kind() == std::io::ErrorKind::TimedOut
        );
        if e.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::TooLarge, "request body is above the size limit")
        } else if timed_out {
            ApiError::new(
                ErrorCode::Malformed,
                "request body not received in time (gateway.body_timeout_ms)",
            )
        } else {
            ApiError::new(ErrorCode::Malformed, "request body could not be read")
        }
    })?;
    T::decode(bytes.as_ref())
        .map_err(|_| ApiError::new(ErrorCode::Malformed, "body does not decode"))
}

/// Why a request was not served: an error, or a rate limit (which gets a
/// `Retry-After`).
enum Refusal {
    Api(ApiError),
    Limited(&'static str, RetryAfter),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

type Answer<T> = Result<T, Refusal>;

fn respond<T: Message>(r: Answer<T>) -> HttpResponse {
    match r {
        Ok(m) => HttpResponse::Ok()
            .content_type("application/x-protobuf")
            .body(m.encode_to_vec()),
        Err(Refusal::Api(e)) => error_response(&e),
        Err(Refusal::Limited(what, retry)) => rate_limited(what, retry),
    }
}

/// One request from the caller's source address.
fn ip_limit(app: &AppState, req: &HttpRequest) -> Answer<()> {
    let Some(peer) = req.peer_addr() else {
        return Ok(());
    };
    app.ip_limits
        .check(&SourceKey::of(peer.ip()), app.now_ms())
        .map_err(|r| Refusal::Limited("this address", r))
}

/// One action of an account that proved itself (a device, a user).
fn account_limit(app: &AppState, account: String) -> Answer<()> {
    app.account_limits
        .check(&account, app.now_ms())
        .map_err(|r| Refusal::Limited("this account", r))
}

fn random_hex(bytes: usize) -> ApiResult<String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ApiError::internal("randomness", "ring rng failed"))?;
    Ok(hex::encode(buf))
}

fn check_key(key: &[u8]) -> ApiResult<()> {
    if key.len() != 32 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "device_signature_key must be a 32-byte Ed25519 key",
        ));
    }
    Ok(())
}

fn new_device(app: &AppState, user_id: &str, key: Vec<u8>) -> ApiResult<Device> {
    Ok(Device {
        user_id: user_id.to_owned(),
        device_id: random_hex(8)?,
        signature_key: key,
        token_generation: 0,
        created_at_ms: app.now_ms(),
    })
}

pub async fn register(
    app: web::Data<Arc<AppState>>,
    http: HttpRequest,
    body: Body,
) -> HttpResponse {
    respond(register_inner(&app, &http, &body).await)
}

async fn register_inner(
    app: &AppState,
    http: &HttpRequest,
    body: &Body,
) -> Answer<v1::RegisterResponse> {
    ip_limit(app, http)?;
    let req: v1::RegisterRequest = decode(body)?;
    hush_ds::validate_handle(&req.handle).map_err(ApiError::from)?;
    check_key(&req.device_signature_key)?;
    let payload = auth::register_payload(&req.handle, &req.device_signature_key);
    if !verify_ed25519(&req.device_signature_key, &payload, &req.signature) {
        return Err(ApiError::new(ErrorCode::Forbidden, "bad registration signature").into());
    }
    let device = new_device(app, &req.handle, req.device_signature_key)?;
    app.store.create_user(&device).await.map_err(|e| match e {
        hush_store::StoreError::AlreadyExists => {
            ApiError::new(ErrorCode::AlreadyExists, "handle is taken")
        }
        other => other.into(),
    })?;
    tracing::info!(user = %device.user_id, device = %device.device_id, "registered");
    Ok(v1::RegisterResponse {
        user_id: device.user_id,
        device_id: device.device_id,
    })
}

pub async fn login_challenge(
    app: web::Data<Arc<AppState>>,
    http: HttpRequest,
    body: Body,
) -> HttpResponse {
    respond((|| {
        ip_limit(&app, &http)?;
        let req: v1::LoginChallengeRequest = decode(&body)?;
        if req.device_id.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "device_id is required").into());
        }
        // Stateless: a stranger asking for challenges costs no memory.
        let challenge = app.challenge_key.issue_challenge(
            &req.device_id,
            app.now_ms(),
            app.config.auth.challenge_ttl_ms,
        );
        Ok(v1::LoginChallengeResponse { challenge })
    })())
}

pub async fn login(app: web::Data<Arc<AppState>>, http: HttpRequest, body: Body) -> HttpResponse {
    respond(login_inner(&app, &http, &body).await)
}

async fn login_inner(app: &AppState, http: &HttpRequest, body: &Body) -> Answer<v1::LoginResponse> {
    ip_limit(app, http)?;
    let req: v1::LoginRequest = decode(body)?;
    let now = app.now_ms();
    let challenge = app
        .challenge_key
        .verify_challenge(&req.device_id, &req.challenge, now)
        .map_err(|_| {
            crate::telemetry::auth_failed("bad_challenge");
            ApiError::new(ErrorCode::Forbidden, "bad or expired challenge")
        })?;
    let Some(device) = app
        .store
        .device(&req.device_id)
        .await
        .map_err(ApiError::from)?
    else {
        crate::telemetry::auth_failed("unknown_device");
        return Err(ApiError::new(ErrorCode::NotFound, "unknown device").into());
    };
    if !verify_ed25519(
        &device.signature_key,
        &auth::login_payload(&req.challenge),
        &req.signature,
    ) {
        crate::telemetry::auth_failed("bad_login_signature");
        return Err(ApiError::new(ErrorCode::Forbidden, "bad login signature").into());
    }
    // Spent before the device's budget is touched, so a captured login
    // replayed costs the device nothing; only the key holder gets past
    // this, and only it spends the device's budget.
    app.spend_challenge(&challenge)?;
    account_limit(app, format!("d/{}", device.device_id))?;
    let expires_at_ms = now + app.config.auth.token_ttl_ms;
    let token = app.tokens.get().issue(&TokenClaims {
        user_id: device.user_id.clone(),
        device_id: device.device_id.clone(),
        generation: device.token_generation,
        expires_at_ms,
    });
    Ok(v1::LoginResponse {
        token,
        expires_at_ms,
        user_id: device.user_id,
    })
}

pub async fn link_code(app: web::Data<Arc<AppState>>, req: HttpRequest) -> HttpResponse {
    respond(
        async {
            ip_limit(&app, &req)?;
            let claims = bearer_claims(&app, &req).await?;
            account_limit(&app, format!("u/{}", claims.user_id))?;
            let code = random_hex(16)?;
            let expires_at_ms = app.now_ms() + app.config.auth.link_code_ttl_ms;
            app.store
                .put_link_code(&code_hash(&code), &claims.user_id, expires_at_ms)
                .await
                .map_err(ApiError::from)?;
            Ok(v1::LinkCodeResponse {
                code,
                expires_at_ms,
            })
        }
        .await,
    )
}

fn code_hash(code: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, code.as_bytes())
        .as_ref()
        .to_vec()
}

pub async fn link_device(
    app: web::Data<Arc<AppState>>,
    http: HttpRequest,
    body: Body,
) -> HttpResponse {
    respond(
        async {
            ip_limit(&app, &http)?;
            let req: v1::LinkDeviceRequest = decode(&body)?;
            check_key(&req.device_signature_key)?;
            let payload = auth::link_payload(&req.code, &req.device_signature_key);
            if !verify_ed25519(&req.device_signature_key, &payload, &req.signature) {
                crate::telemetry::auth_failed("bad_link_signature");
                return Err(ApiError::new(ErrorCode::Forbidden, "bad link signature").into());
            }
            let Some(user_id) = app
                .store
                .take_link_code(&code_hash(&req.code), app.now_ms())
                .await
                .map_err(ApiError::from)?
            else {
                crate::telemetry::auth_failed("bad_link_code");
                return Err(
                    ApiError::new(ErrorCode::Forbidden, "unknown or expired link code").into(),
                );
            };
            let device = new_device(&app, &user_id, req.device_signature_key)?;
            app.store
                .add_device(&device)
                .await
                .map_err(ApiError::from)?;
            tracing::info!(user = %device.user_id, device = %device.device_id, "linked device");
            Ok(v1::LinkDeviceResponse {
                user_id: device.user_id,
                device_id: device.device_id,
            })
        }
        .await,
    )
}

pub async fn logout(app: web::Data<Arc<AppState>>, req: HttpRequest) -> HttpResponse {
    respond(
        async {
            let claims = bearer_claims(&app, &req).await?;
            app.store
                .bump_token_generation(&claims.device_id)
                .await
                .map_err(ApiError::from)?;
            app.sessions
                .kick_device(&claims.user_id, &claims.device_id)
                .await;
            Ok(v1::LogoutResponse {})
        }
        .await,
    )
}
