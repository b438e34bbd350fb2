//! Per-endpoint request metrics: every request the gateway answers counts
//! in `hush_http_requests_total{route,method,status}` and its time to the
//! response head in `hush_http_request_duration_seconds{route,method}`.
//!
//! `route` is the matched route pattern (`/v1/ws`, never a raw path with
//! ids or junk in it), or `unmatched` for a request no route took (a 404,
//! or one refused at the edge), so the label set stays bounded whatever
//! clients send. The method is one of the standard ones or `other`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;

/// The middleware (`actix_web::middleware::from_fn(observe)`), outermost,
/// so that requests refused at the edge count too.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let method = method_label(req.method());
    let resp = next.call(req).await;
    let (route, status) = match &resp {
        Ok(r) => (r.request().match_pattern(), r.status().as_u16()),
        // An error not yet turned into a response: actix answers it with
        // the error's status.
        Err(e) => (None, e.as_response_error().status_code().as_u16()),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    metrics::counter!(
        "hush_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string(),
    )
    .increment(1);
    metrics::histogram!(
        "hush_http_request_duration_seconds",
        "route" => route,
        "method" => method,
    )
    .record(started.elapsed().as_secs_f64());
    resp
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
