//! The client's one connection: logging in and connecting, failing over
//! between the nodes of a cluster, requests, waiting for pushed events, and
//! closing.
//!
//! Invariants: at most one [`Conn`] is open, and a connection found closed
//! is dropped (`conn` becomes `None`), so [`Client::is_connected`] is what
//! decides whether to reconnect. `connect` tries every node once, starting
//! with the one used last, and skips a node only for a transient failure;
//! every successful connect ends with a full sync from the stored cursors,
//! so wherever the client lands it resumes with nothing lost or doubled.

use std::time::Duration;

use hush_proto::{client_frame, server_frame, v1};

use super::Client;
use crate::conn::{Conn, Transport};
use crate::error::{ClientError, Result};
use crate::http::Http;
use crate::tls::Trust;
use crate::ws::Pushed;

impl Client {
    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Chooses the transport of the next [`Client::connect`] (default
    /// [`Transport::Auto`]).
    pub fn set_transport(&mut self, transport: Transport) {
        self.transport = transport;
    }

    /// Trusts `trust` (instead of the system's roots) over TLS.
    pub fn set_trust(&mut self, trust: Trust) -> Result<()> {
        self.http = Http::with_trust(self.server(), &trust)?;
        self.trust = trust;
        Ok(())
    }

    /// The transport of the open connection (`Ws` or `Sse`), if any.
    pub fn connected_transport(&self) -> Option<Transport> {
        self.conn.as_ref().map(|c| c.transport())
    }

    /// Logs in, opens the connection, tops up KeyPackages, and syncs every
    /// group until caught up.
    ///
    /// With several nodes, a node that cannot be reached (or fails while
    /// connecting) is skipped for the next one, starting from the one used
    /// last; the sync then resumes from the stored cursors, wherever it is.
    pub async fn connect(&mut self) -> Result<()> {
        let n = self.servers.len();
        let mut last = None;
        for i in 0..n {
            let idx = (self.current + i) % n;
            if idx != self.current {
                self.current = idx;
                self.http = Http::with_trust(&self.servers[idx], &self.trust)?;
            }
            match self.connect_here().await {
                Ok(()) => return Ok(()),
                Err(e) if n > 1 && e.is_transient() => {
                    tracing::warn!(server = %self.servers[idx], error = %e, "node unavailable; trying the next");
                    if let Some(conn) = self.conn.take() {
                        conn.close().await;
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Disconnected("no server to connect to".into())))
    }

    /// Moves to the next node for the next [`Client::connect`] (after this
    /// one said it is going away).
    pub fn next_server(&mut self) -> Result<()> {
        if self.servers.len() > 1 {
            self.current = (self.current + 1) % self.servers.len();
            self.http = Http::with_trust(&self.servers[self.current], &self.trust)?;
        }
        Ok(())
    }

    async fn connect_here(&mut self) -> Result<()> {
        let token = self.login().await?;
        let server = self.server().to_string();
        self.conn = Some(Conn::open_with(&server, &token, self.transport, &self.trust).await?);
        self.buffered.clear();
        self.maintain_key_packages().await?;
        self.sync().await
    }

    /// Closes the connection after flushing pending acknowledgements.
    pub async fn close(&mut self) {
        let _ = self.flush_acks();
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    /// The open connection.
    pub(super) fn conn(&self) -> Result<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| ClientError::Disconnected("not connected".into()))
    }

    /// The open connection, mutably (to take events from it).
    pub(super) fn conn_mut(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_mut()
            .ok_or_else(|| ClientError::Disconnected("not connected".into()))
    }

    /// Sends a request and waits for the answer it must get: an `Error`
    /// answer is the server's error, any other answer a protocol error.
    pub(super) async fn ask<A: Answer>(&mut self, body: client_frame::Body) -> Result<A> {
        let answer = self.request(body).await?;
        A::from_body(answer).map_err(|other| unexpected(A::NAME, &other))
    }

    /// Sends a request and waits for its answer; a connection that broke
    /// meanwhile is dropped.
    async fn request(&mut self, body: client_frame::Body) -> Result<server_frame::Body> {
        let r = self.conn()?.request(body).await;
        if matches!(r, Err(ClientError::Disconnected(_)))
            && self.conn.as_ref().is_some_and(|c| c.is_closed())
        {
            self.conn = None;
        }
        r
    }

    /// Waits for the next pushed event. Cancel-safe: use it in `select!`
    /// and pass the result to [`Client::handle`].
    pub async fn wait_event(&mut self) -> Result<Pushed> {
        match self.conn_mut()?.next_event().await {
            Some(p) => Ok(p),
            None => Err(ClientError::Disconnected("connection closed".into())),
        }
    }

    /// Waits at most `timeout` for the next pushed event: `Ok(None)` when
    /// the time ran out (the connection is kept). A connection that ended
    /// is dropped.
    pub(super) async fn wait_event_within(&mut self, timeout: Duration) -> Result<Option<Pushed>> {
        let waited = tokio::time::timeout(timeout, self.conn_mut()?.next_event()).await;
        match waited {
            Err(_) => Ok(None),
            Ok(None) => {
                self.conn = None;
                Err(ClientError::Disconnected("connection closed".into()))
            }
            Ok(Some(p)) => Ok(Some(p)),
        }
    }
}

/// The answer a request expects: one variant of `server_frame::Body`.
pub(super) trait Answer: Sized {
    /// The variant's name, for the error when another answer comes.
    const NAME: &'static str;
    /// The answer, or the body back when it is another variant.
    fn from_body(body: server_frame::Body) -> std::result::Result<Self, server_frame::Body>;
}

/// Implements [`Answer`] for answer types whose `server_frame::Body`
/// variant has the same name.
macro_rules! answers {
    ($($variant:ident),* $(,)?) => {$(
        impl Answer for v1::$variant {
            const NAME: &'static str = stringify!($variant);
            fn from_body(
                body: server_frame::Body,
            ) -> std::result::Result<Self, server_frame::Body> {
                match body {
                    server_frame::Body::$variant(answer) => Ok(answer),
                    other => Err(other),
                }
            }
        }
    )*};
}

answers!(
    KeyPackageCountResult,
    KeyPackagesUploaded,
    ClaimedKeyPackages,
    GroupCreated,
    CommitAccepted,
    ProposalAccepted,
    MessageAccepted,
    GroupInfoResult,
    GroupList,
    EphemeralAccepted,
    PresenceList,
);

/// The error for an answer of the wrong kind.
fn unexpected(expected: &str, got: &server_frame::Body) -> ClientError {
    let name = match got {
        server_frame::Body::Error(_) => "Error",
        server_frame::Body::Pong(_) => "Pong",
        server_frame::Body::AuthOk(_) => "AuthOk",
        server_frame::Body::KeyPackagesUploaded(_) => "KeyPackagesUploaded",
        server_frame::Body::ClaimedKeyPackages(_) => "ClaimedKeyPackages",
        server_frame::Body::KeyPackageCountResult(_) => "KeyPackageCountResult",
        server_frame::Body::GroupCreated(_) => "GroupCreated",
        server_frame::Body::CommitAccepted(_) => "CommitAccepted",
        server_frame::Body::ProposalAccepted(_) => "ProposalAccepted",
        server_frame::Body::MessageAccepted(_) => "MessageAccepted",
        server_frame::Body::SyncStarted(_) => "SyncStarted",
        server_frame::Body::GroupInfoResult(_) => "GroupInfoResult",
        server_frame::Body::GroupList(_) => "GroupList",
        server_frame::Body::UserInfo(_) => "UserInfo",
        server_frame::Body::GroupEvent(_) => "GroupEvent",
        server_frame::Body::InboxEvent(_) => "InboxEvent",
        server_frame::Body::SyncCaughtUp(_) => "SyncCaughtUp",
        server_frame::Body::EphemeralAccepted(_) => "EphemeralAccepted",
        server_frame::Body::PresenceList(_) => "PresenceList",
        server_frame::Body::EphemeralEvent(_) => "EphemeralEvent",
        server_frame::Body::PresenceEvent(_) => "PresenceEvent",
        server_frame::Body::KeyPackagesLow(_) => "KeyPackagesLow",
    };
    ClientError::Protocol(format!("expected {expected}, got {name}"))
}
