//! [`Conn`]: the one connection a [`crate::client::Client`] holds, over
//! either transport, and the transport choice ([`Transport`]).
//!
//! Both transports give the same surface: requests answered by request id,
//! pushed events on a queue (ending with [`Pushed::Closed`]), close and
//! is_closed. The client above never asks which one it holds, except to
//! report it.
//!
//! `auto` tries the WebSocket and falls back to SSE when the upgrade fails
//! for a reason that is not the server's own answer: an HTTP error status
//! without a Hush error body (a proxy that refuses upgrades), a handshake
//! that does not complete, or a broken connection. A refusal carrying a
//! Hush error code (bad token, too many connections) is final: the SSE path
//! would get the same answer.

use hush_proto::{client_frame, server_frame};
use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::http::Token;
use crate::sse::SseConn;
use crate::tls::Trust;
use crate::ws::{Pushed, WsConn};

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// WebSocket only (`GET /v1/ws`).
    Ws,
    /// Server-Sent Events plus HTTP requests (`GET /v1/events`, `POST /v1/rpc`).
    Sse,
    /// WebSocket, falling back to SSE when the upgrade fails.
    #[default]
    Auto,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ws" | "websocket" => Ok(Transport::Ws),
            "sse" => Ok(Transport::Sse),
            "auto" => Ok(Transport::Auto),
            other => Err(format!("unknown transport {other:?} (ws, sse or auto)")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Auto => "auto",
        })
    }
}

/// One authenticated connection over either transport.
#[derive(Debug)]
pub enum Conn {
    /// A WebSocket.
    Ws(WsConn),
    /// An SSE stream plus HTTP requests.
    Sse(SseConn),
}

impl Conn {
    /// Connects to `server` with `transport` (over TLS, trusting the
    /// system's roots).
    pub async fn open(server: &str, token: &Token, transport: Transport) -> Result<Self> {
        Self::open_with(server, token, transport, &Trust::System).await
    }

    /// [`Conn::open`], trusting `trust` over TLS.
    pub async fn open_with(
        server: &str,
        token: &Token,
        transport: Transport,
        trust: &Trust,
    ) -> Result<Self> {
        match transport {
            Transport::Ws => Ok(Conn::Ws(WsConn::connect_with(server, token, trust).await?)),
            Transport::Sse => Ok(Conn::Sse(
                SseConn::connect_with(server, token, trust).await?,
            )),
            Transport::Auto => match WsConn::connect_with(server, token, trust).await {
                Ok(c) => Ok(Conn::Ws(c)),
                Err(e @ ClientError::Server { .. }) => Err(e),
                Err(ws_err) => {
                    tracing::info!(error = %ws_err, "websocket unavailable; falling back to sse");
                    match SseConn::connect_with(server, token, trust).await {
                        Ok(c) => Ok(Conn::Sse(c)),
                        Err(e @ ClientError::Server { .. }) => Err(e),
                        Err(sse_err) => Err(ClientError::Http(format!(
                            "no transport: {ws_err}; sse fallback: {sse_err}"
                        ))),
                    }
                }
            },
        }
    }

    /// The transport in use: `Ws` or `Sse`.
    pub fn transport(&self) -> Transport {
        match self {
            Conn::Ws(_) => Transport::Ws,
            Conn::Sse(_) => Transport::Sse,
        }
    }

    /// Closes the connection after flushing queued one-way frames.
    pub async fn close(self) {
        match self {
            Conn::Ws(c) => c.close().await,
            Conn::Sse(c) => c.close().await,
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::Ws(c) => c.is_closed(),
            Conn::Sse(c) => c.is_closed(),
        }
    }

    /// Sends a request without waiting (see [`WsConn::start_request`]).
    pub fn start_request(
        &self,
        body: client_frame::Body,
    ) -> Result<(u64, oneshot::Receiver<server_frame::Body>)> {
        match self {
            Conn::Ws(c) => c.start_request(body),
            Conn::Sse(c) => c.start_request(body),
        }
    }

    /// Stops waiting for the response to request `id`.
    pub fn forget(&self, id: u64) {
        match self {
            Conn::Ws(c) => c.forget(id),
            Conn::Sse(c) => c.forget(id),
        }
    }

    /// Sends a request and waits for its response; an `Error` answer is
    /// [`ClientError::Server`].
    pub async fn request(&self, body: client_frame::Body) -> Result<server_frame::Body> {
        match self {
            Conn::Ws(c) => c.request(body).await,
            Conn::Sse(c) => c.request(body).await,
        }
    }

    /// Sends a frame that expects no response (Ack, AckInbox).
    pub fn send_oneway(&self, body: client_frame::Body) -> Result<()> {
        match self {
            Conn::Ws(c) => c.send_oneway(body),
            Conn::Sse(c) => c.send_oneway(body),
        }
    }

    /// The next pushed event (waits). Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Pushed> {
        match self {
            Conn::Ws(c) => c.next_event().await,
            Conn::Sse(c) => c.next_event().await,
        }
    }

    /// The next pushed event if one is queued.
    pub fn try_next_event(&mut self) -> Option<Pushed> {
        match self {
            Conn::Ws(c) => c.try_next_event(),
            Conn::Sse(c) => c.try_next_event(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_names() {
        for t in [Transport::Ws, Transport::Sse, Transport::Auto] {
            assert_eq!(t.to_string().parse::<Transport>(), Ok(t));
        }
        assert_eq!("WebSocket".parse::<Transport>(), Ok(Transport::Ws));
        assert!("carrier-pigeon".parse::<Transport>().is_err());
        assert_eq!(Transport::default(), Transport::Auto);
    }
}
