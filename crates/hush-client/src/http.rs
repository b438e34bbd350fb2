//! The HTTP half of the protocol: accounts, login, device linking.
//! Bodies are protobuf; a non-2xx answer carries an `Error` message.

use hush_proto::v1;
use hush_proto::Message;

use crate::error::{ClientError, Result};
use crate::tls::Trust;

/// How long one HTTP exchange (register, login, link) may take in all.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A bearer token. Secret: redacted in Debug, never logged.
#[derive(Clone)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// HTTP API client of one server.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

/// A few words for why a server could not be reached: the I/O error kind
/// at the bottom of reqwest's error chain ("connection refused"), else its
/// innermost message.
fn unreachable_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                _ => io.to_string(),
            };
        }
        innermost = s.to_string();
        source = s.source();
    }
    innermost
}

/// Normalizes a server URL ("host:port" gets "http://", no trailing slash;
/// `https://` is kept).
pub fn normalize_server(server: &str) -> Result<String> {
    let s = server.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err(ClientError::InvalidArgument("empty server URL".into()));
    }
    let s = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    if !s.starts_with("http://") && !s.starts_with("https://") {
        return Err(ClientError::InvalidArgument(format!(
            "server URL must be http://... or https://...: {s}"
        )));
    }
    Ok(s)
}

/// Parses a comma-separated list of node URLs (the nodes of one cluster),
/// each normalized as by [`normalize_server`].
pub fn parse_servers(list: &str) -> Result<Vec<String>> {
    let servers = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(normalize_server)
        .collect::<Result<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(ClientError::InvalidArgument("empty server URL".into()));
    }
    Ok(servers)
}

/// The WebSocket URL for a server URL (http -> ws, https -> wss).
pub fn ws_url(server: &str) -> Result<String> {
    let s = normalize_server(server)?;
    let rest = if let Some(r) = s.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = s.strip_prefix("https://") {
        format!("wss://{r}")
    } else {
        return Err(ClientError::InvalidArgument(format!("bad server URL {s}")));
    };
    Ok(format!("{rest}/v1/ws"))
}

impl Http {
    /// A client for `server` (e.g. `http://127.0.0.1:7300`); `https://`
    /// trusts the system's roots.
    pub fn new(server: &str) -> Result<Self> {
        Self::with_trust(server, &Trust::System)
    }

    /// A client for `server` that trusts `trust` over `https://`.
    pub fn with_trust(server: &str, trust: &Trust) -> Result<Self> {
        let base = normalize_server(server)?;
        let client = trust
            .reqwest_builder(&base)?
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self { base, client })
    }

    /// The normalized server URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        req: &Req,
        token: Option<&Token>,
    ) -> Result<Resp> {
        let url = format!("{}{}", self.base, path);
        let mut rb = self
            .client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(req.encode_to_vec());
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {}", t.0));
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: unreachable_reason(&e),
                }
            } else {
                ClientError::Http(format!("POST {path}: {e}"))
            }
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Http(format!("POST {path}: reading body: {e}")))?;
        if status.is_success() {
            Resp::decode(body.as_ref())
                .map_err(|e| ClientError::Protocol(format!("POST {path}: bad response body: {e}")))
        } else {
            match v1::Error::decode(body.as_ref()) {
                Ok(err) if err.code != 0 => Err(err.into()),
                _ => Err(ClientError::Http(format!("POST {path}: status {status}"))),
            }
        }
    }

    /// POST /v1/register.
    pub async fn register(
        &self,
        handle: &str,
        key: &[u8],
        signature: Vec<u8>,
    ) -> Result<v1::RegisterResponse> {
        self.call(
            "/v1/register",
            &v1::RegisterRequest {
                handle: handle.to_string(),
                device_signature_key: key.to_vec(),
                signature,
            },
            None,
        )
        .await
    }

    /// POST /v1/login/challenge.
    pub async fn login_challenge(&self, device_id: &str) -> Result<Vec<u8>> {
        let r: v1::LoginChallengeResponse = self
            .call(
                "/v1/login/challenge",
                &v1::LoginChallengeRequest {
                    device_id: device_id.to_string(),
                },
                None,
            )
            .await?;
        Ok(r.challenge)
    }

    /// POST /v1/login.
    pub async fn login(
        &self,
        device_id: &str,
        challenge: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<(Token, v1::LoginResponse)> {
        let mut r: v1::LoginResponse = self
            .call(
                "/v1/login",
                &v1::LoginRequest {
                    device_id: device_id.to_string(),
                    challenge,
                    signature,
                },
                None,
            )
            .await?;
        let token = Token(std::mem::take(&mut r.token));
        Ok((token, r))
    }

    /// POST /v1/device/link-code.
    pub async fn link_code(&self, token: &Token) -> Result<v1::LinkCodeResponse> {
        self.call("/v1/device/link-code", &v1::LinkCodeRequest {}, Some(token))
            .await
    }

    /// POST /v1/device/link.
    pub async fn link_device(
        &self,
        code: &str,
        key: &[u8],
        signature: Vec<u8>,
    ) -> Result<v1::LinkDeviceResponse> {
        self.call(
            "/v1/device/link",
            &v1::LinkDeviceRequest {
                code: code.to_string(),
                device_signature_key: key.to_vec(),
                signature,
            },
            None,
        )
        .await
    }

    /// POST /v1/logout.
    pub async fn logout(&self, token: &Token) -> Result<()> {
        let _: v1::LogoutResponse = self
            .call("/v1/logout", &v1::LogoutRequest {}, Some(token))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_server("127.0.0.1:7300/").unwrap(),
            "http://127.0.0.1:7300"
        );
        assert_eq!(ws_url("http://h:1").unwrap(), "ws://h:1/v1/ws");
        assert_eq!(normalize_server("https://h/").unwrap(), "https://h");
        assert_eq!(ws_url("https://h:1").unwrap(), "wss://h:1/v1/ws");
        assert!(normalize_server("ftp://x").is_err());
        assert!(normalize_server(" ").is_err());
        assert_eq!(format!("{:?}", Token("abc".into())), "Token(***)");
    }
}
