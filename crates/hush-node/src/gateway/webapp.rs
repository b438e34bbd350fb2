//! The browser client: `GET /` and `GET /assets/{app.js,app.css}`.
//!
//! The bundle is built from `web/` (`cd web && npm ci && npm run build`)
//! and committed as `web/dist/`; the node embeds it at compile time, so a
//! fresh checkout builds and serves it with cargo alone. Every response
//! carries a strict Content-Security-Policy: scripts and styles only from
//! this origin (no inline code, no eval, no WebAssembly), connections only
//! back to this host (HTTP, plus the WebSocket on the same host and port;
//! over https only `wss://`),
//! no plugins, no framing, no `<base>`.
//!
//! Same origin: a page served here opens `/v1/ws` and `/v1/events` with an
//! `Origin` equal to the node's own host. [`same_origin`] lets the gateway
//! accept it whatever `gateway.allowed_origins` says, so the client works on
//! any listen address (the default list names only port 7300).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

const INDEX_HTML: &[u8] = include_bytes!("../../../../web/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../../../web/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../../../../web/dist/app.css");

/// Registers `/` and the assets.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/assets/app.js", web::get().to(app_js))
        .route("/assets/app.css", web::get().to(app_css))
        // No icon: an empty answer instead of a 404 in the console.
        .route("/favicon.ico", web::get().to(HttpResponse::NoContent));
}

async fn index(req: HttpRequest) -> HttpResponse {
    asset(&req, "text/html; charset=utf-8", INDEX_HTML, "no-cache")
}

async fn app_js(req: HttpRequest) -> HttpResponse {
    asset(&req, "text/javascript; charset=utf-8", APP_JS, "no-cache")
}

async fn app_css(req: HttpRequest) -> HttpResponse {
    asset(&req, "text/css; charset=utf-8", APP_CSS, "no-cache")
}

fn asset(req: &HttpRequest, content_type: &str, body: &'static [u8], cache: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            csp(host(req), req.app_config().secure()),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(body)
}

/// The request's `Host` header, if it is a plain `host[:port]` (letters,
/// digits, `.-:[]`): anything else is not put into a header we send.
fn host(req: &HttpRequest) -> Option<&str> {
    let h = req.headers().get(header::HOST)?.to_str().ok()?;
    let plain = !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    plain.then_some(h)
}

/// The policy for this host. `connect-src 'self'` already covers the
/// same-host WebSocket in current browsers (CSP3); the explicit `ws://` /
/// `wss://` source is for those that do not. Served over TLS (`secure`),
/// the page may connect only over TLS: `wss://` to itself, no `ws://`.
pub fn csp(host: Option<&str>, secure: bool) -> String {
    let ws = match host {
        Some(h) if secure => format!(" wss://{h}"),
        Some(h) => format!(" ws://{h} wss://{h}"),
        None => String::new(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'{ws}; manifest-src 'self'; object-src 'none'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
}

/// Whether `origin` is this server's own origin as the request names it
/// (`http://` or `https://` plus the `Host` header, as behind a TLS
/// terminator that keeps the host).
pub fn same_origin(req: &HttpRequest, origin: &str) -> bool {
    let Some(host) = host(req) else {
        return false;
    };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn same_origin_is_the_host_header() {
        let req = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:41234"))
            .to_http_request();
        assert!(same_origin(&req, "http://127.0.0.1:41234"));
        assert!(same_origin(&req, "https://127.0.0.1:41234"));
        assert!(!same_origin(&req, "http://127.0.0.1:7300"));
        assert!(!same_origin(&req, "http://evil.example"));
        assert!(!same_origin(&req, "http://127.0.0.1:41234.evil.example"));
        assert!(!same_origin(&req, "null"));
        let odd = TestRequest::default()
            .insert_header((header::HOST, "a\"b"))
            .to_http_request();
        assert!(!same_origin(&odd, "http://a\"b"));
    }

    #[test]
    fn policy_is_strict() {
        let p = csp(Some("localhost:7300"), false);
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self' ws://localhost:7300 wss://localhost:7300",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(p.contains(part), "{part} missing from {p}");
        }
        assert!(!p.contains("unsafe"));
        let tls = csp(Some("localhost:7300"), true);
        assert!(
            tls.contains("connect-src 'self' wss://localhost:7300;"),
            "{tls}"
        );
        assert!(
            !tls.contains("ws://"),
            "no plain WebSocket over https: {tls}"
        );
        assert_eq!(
            csp(None, false).matches("connect-src 'self';").count(),
            1,
            "no ws source without a usable host"
        );
    }
}
