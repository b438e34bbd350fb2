//! `POST /v1/rpc`: every request a client sends over the WebSocket, over
//! plain HTTP (the SSE fallback's request path).
//!
//! The body is one protobuf `ClientFrame`; the answer is one `ServerFrame`
//! carrying the same `request_id`: the reply body with 200, or an `Error`
//! body with the HTTP status of its code (see `error.rs`), or 204 with no
//! body for requests that have no reply (acks). Auth is the bearer header;
//! Origin is checked like the WebSocket's. `Auth` and `Sync` are refused
//! (INVALID_ARGUMENT): the stream is `GET /v1/events`. Requests go through the
//! same dispatcher as the WebSocket's, so codes and idempotent retries (by
//! `client_msg_id`) are the same. The rate limit is the WebSocket's
//! per-connection bucket, kept per device. A body above `max_frame_bytes`
//! is TOO_LARGE (413).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use hush_proto::{server_frame::Body as S, ClientFrame, ErrorCode, Message as _};

use super::{bearer_claims, check_origin, AppState};
use crate::error::{ApiError, ApiResult};
use crate::wire::{encode, Caller};

/// More devices than this forget their buckets (they restart full).
const MAX_TRACKED_DEVICES: usize = 100_000;

/// Per-device token buckets for RPC requests.
#[derive(Default)]
pub struct RateTable {
    buckets: Mutex<HashMap<String, hush_ds::TokenBucket>>,
}

impl RateTable {
    /// Takes one request's token, or answers RATE_LIMITED with a hint.
    fn try_take(&self, app: &AppState, device_id: &str) -> ApiResult<()> {
        let now = app.now_ms();
        let l = &app.config.limits;
        // A poisoned lock only means another request panicked mid-update;
        // the buckets are still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_DEVICES && !buckets.contains_key(device_id) {
            buckets.clear();
        }
        let bucket = buckets
            .entry(device_id.to_owned())
            .or_insert_with(|| hush_ds::TokenBucket::new(l.rate_per_sec, l.rate_burst, now));
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(super::limits::refuse_request(app, bucket, now))
        }
    }
}

/// POST /v1/rpc
pub async fn rpc(
    req: HttpRequest,
    body: web::Payload,
    app: web::Data<Arc<AppState>>,
    rates: web::Data<RateTable>,
) -> HttpResponse {
    let app = app.get_ref().clone();
    let mut request_id = 0;
    match serve(&app, &rates, &req, body, &mut request_id).await {
        Ok(Some(reply)) => HttpResponse::Ok()
            .content_type("application/x-protobuf")
            .body(encode(request_id, reply)),
        Ok(None) => HttpResponse::NoContent().finish(),
        Err(e) => {
            metrics::counter!("hush_errors_total", "code" => e.code_name()).increment(1);
            let status = actix_web::http::StatusCode::from_u16(e.http_status())
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = HttpResponse::build(status);
            if e.retry_after_ms > 0 {
                // Whole seconds, rounded up; the exact hint is in the body.
                resp.insert_header(("Retry-After", e.retry_after_ms.div_ceil(1000).to_string()));
            }
            resp.content_type("application/x-protobuf")
                .body(encode(request_id, S::Error(e.to_proto())))
        }
    }
}

async fn serve(
    app: &Arc<AppState>,
    rates: &RateTable,
    req: &HttpRequest,
    body: web::Payload,
    request_id: &mut u64,
) -> ApiResult<Option<S>> {
    check_origin(app, req)?;
    let claims = bearer_claims(app, req).await?;
    // Read only after auth, and never more than a WebSocket frame.
    let body = match body
        .to_bytes_limited(app.config.limits.max_frame_bytes)
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(ApiError::new(
                ErrorCode::Malformed,
                "request body unreadable",
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                "request body exceeds limits.max_frame_bytes",
            ))
        }
    };
    let body_len = body.len();
    let frame = ClientFrame::decode(body.as_ref())
        .map_err(|_| ApiError::new(ErrorCode::Malformed, "body does not decode as ClientFrame"))?;
    *request_id = frame.request_id;
    rates.try_take(app, &claims.device_id)?;
    let body = frame
        .body
        .ok_or_else(|| ApiError::new(ErrorCode::Malformed, "frame has no body"))?;
    metrics::counter!("hush_rpc_requests_total").increment(1);
    let _permit = app.api.admission().admit_request(body_len, app.now_ms())?;
    let caller = Caller {
        user_id: claims.user_id,
        device_id: claims.device_id,
    };
    app.api.dispatch(&caller, body).await
}
