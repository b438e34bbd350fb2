//! [`Client`]: the async driver of one device. It owns the state database,
//! logs in over HTTP, keeps one connection ([`Conn`]: WebSocket or SSE),
//! processes the group timelines in seq order, and performs group changes
//! with the stale-epoch retry. This file owns the type itself, its
//! construction ([`Client::open`]) and what the operations share: the public
//! result types, the limits, the deferred-work queue (`Action`) and the
//! log-line helpers. Each operation lives in the file of its concern:
//!
//! - `accounts`: register, log in, link a device, top up KeyPackages;
//! - `directory`: the directory's answers pinned (trust on first use) and
//!   the safety numbers;
//! - `connection`: connect, fail over between nodes, requests and their
//!   typed answers, waiting for events, close;
//! - `timeline`: pushed events, applied in order, with cursors and acks;
//! - `sync`: the Sync exchange and the deferred work that follows it;
//! - `commit`: commits and the stale-epoch catch-up that every retry loop
//!   (commit, leave, send) goes through;
//! - `groups`: create, add, remove, update, leave, join by external
//!   commit, and the local listing;
//! - `sending`: application messages, retried across transient failures;
//! - `presence`: presence and typing (live only, never stored).
//!
//! The files import this one and `groups`/`sending` import `commit`; this
//! file imports none of them, so the imports form a DAG. Behaviour does
//! recurse through method calls (a sync runs deferred work, which may
//! commit, which may catch up by syncing; a send may reconnect, which
//! syncs), and the places where it does are bounded and say so.

mod accounts;
mod commit;
mod connection;
mod devices;
mod directory;
mod groups;
mod presence;
mod sending;
mod sync;
mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hush_proto::v1::GroupEvent;
use ring::rand::{SecureRandom, SystemRandom};

use crate::conn::{Conn, Transport};
use crate::error::{ClientError, Result};
use crate::http::{parse_servers, Http, Token};
use crate::live::LiveState;
use crate::store::{now_ms, GroupRow, Identity, LogRow, StateDb};
use crate::tls::Trust;

pub use devices::{DeviceView, LinkedDevice, Revoked, LINK_WAIT, LINK_WELCOME_WAIT};
pub use directory::{SafetyNumber, CONTACT_REFRESH};

/// The default server URL.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7300";
/// KeyPackages uploaded per batch.
pub const KEY_PACKAGE_BATCH: usize = 20;
/// Replenish when fewer unclaimed KeyPackages than this remain.
pub const KEY_PACKAGE_LOW: u32 = 10;
/// How many times a commit is rebuilt after losing the epoch race.
pub const MAX_COMMIT_ATTEMPTS: usize = 6;

/// How often a send is retried after transient failures (with backoff from
/// [`SEND_BACKOFF_FIRST`] to [`SEND_BACKOFF_MAX`]: about 15 s in all, enough
/// for a group to re-home after a node crash).
pub const MAX_TRANSIENT_RETRIES: usize = 10;
/// The wait before the first retry of a send after a transient failure.
pub const SEND_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two retries of a send (the wait doubles from
/// [`SEND_BACKOFF_FIRST`] up to this).
pub const SEND_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Checks a handle: `[a-z0-9_]{3,32}`.
pub fn validate_handle(handle: &str) -> Result<()> {
    let ok = (3..=32).contains(&handle.len())
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClientError::InvalidArgument(format!(
            "handle {handle:?} must be 3-32 characters of a-z, 0-9, _"
        )))
    }
}

/// Work deferred until the current batch of events is processed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Commit the proposals pending in a group (a member's leave).
    CommitPending(Vec<u8>),
    /// Tell the members the group's name (after an external join).
    SendName(Vec<u8>),
    /// Check and replenish this device's KeyPackages.
    CheckKeyPackages,
    /// Ask the directory again about contacts whose answer is old.
    RefreshContacts,
}

/// The outcome of an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitDone {
    /// The commit's seq in the timeline.
    pub seq: u64,
    /// The epoch the group is in now.
    pub epoch: u64,
    /// Identities (`<user>/<device>`) added.
    pub added: Vec<String>,
    /// Identities removed.
    pub removed: Vec<String>,
}

/// A local group with its current members, for listing.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The stored row.
    pub row: GroupRow,
    /// The current epoch (None when the MLS state is gone: left/removed).
    pub epoch: Option<u64>,
    /// Member identities (`<user>/<device>`).
    pub members: Vec<String>,
}

/// The Hush client.
pub struct Client {
    db: StateDb,
    http: Http,
    /// The cluster's node URLs; `current` is the one in use.
    servers: Vec<String>,
    current: usize,
    transient_retries: usize,
    me: Option<Arc<Identity>>,
    conn: Option<Conn>,
    transport: Transport,
    /// Whom `https://` / `wss://` servers must chain to.
    trust: Trust,
    token: Option<Token>,
    /// Timeline entries received ahead of their group's cursor, by group.
    buffered: HashMap<Vec<u8>, BTreeMap<u64, GroupEvent>>,
    /// The highest applied seq per group not acknowledged to the server yet.
    acks: HashMap<Vec<u8>, u64>,
    actions: Vec<Action>,
    caught_up: bool,
    live: LiveState,
    rng: SystemRandom,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server())
            .field("me", &self.me.as_ref().map(|m| m.mls_identity()))
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens the state in `home`. The server is `server` if given, else the
    /// one the identity registered with, else [`DEFAULT_SERVER`]. A
    /// comma-separated list names several nodes of one cluster: the client
    /// uses the first that answers and moves on to the next when a node
    /// fails or goes away.
    pub fn open(home: &Path, server: Option<&str>) -> Result<Self> {
        let db = StateDb::open(home)?;
        let me = db.identity()?.map(Arc::new);
        let server = server.filter(|s| !s.trim().is_empty());
        let servers = match (server, &me) {
            (Some(s), _) => parse_servers(s)?,
            (None, Some(id)) => parse_servers(&id.server)?,
            (None, None) => vec![DEFAULT_SERVER.to_string()],
        };
        let joined = servers.join(",");
        if let Some(id) = &me {
            if id.server != joined {
                db.set_server(&joined)?;
            }
        }
        Ok(Self {
            http: Http::new(&servers[0])?,
            db,
            servers,
            current: 0,
            transient_retries: MAX_TRANSIENT_RETRIES,
            me,
            conn: None,
            transport: Transport::default(),
            trust: Trust::System,
            token: None,
            buffered: HashMap::new(),
            acks: HashMap::new(),
            actions: Vec::new(),
            caught_up: false,
            live: LiveState::default(),
            rng: SystemRandom::new(),
        })
    }

    /// The state database.
    pub fn db(&self) -> &StateDb {
        &self.db
    }

    /// The server URL in use.
    pub fn server(&self) -> &str {
        &self.servers[self.current]
    }

    /// How often a send is retried after a transient failure (default
    /// [`MAX_TRANSIENT_RETRIES`]; 0 reports the first failure).
    pub fn set_transient_retries(&mut self, retries: usize) {
        self.transient_retries = retries;
    }

    /// Every node URL this client knows, comma-separated (as stored).
    pub fn servers(&self) -> String {
        self.servers.join(",")
    }

    /// This device's identity.
    pub fn me(&self) -> Result<Arc<Identity>> {
        self.me.clone().ok_or(ClientError::NotRegistered)
    }

    /// Log lines not yet reported (see [`StateDb::take_unshown`]).
    pub fn take_unshown(&self) -> Result<Vec<(Vec<u8>, LogRow)>> {
        self.db.take_unshown()
    }

    /// A fresh random id (a `client_msg_id`).
    fn random_id(&self) -> Result<Vec<u8>> {
        let mut id = vec![0u8; 16];
        self.rng
            .fill(&mut id)
            .map_err(|_| ClientError::Protocol("system randomness unavailable".into()))?;
        Ok(id)
    }
}

/// A log line stamped with the local clock, for what this device did or
/// learnt by itself (timeline entries carry the server's time instead).
fn log_row(seq: u64, sender: &str, kind: &str, body: String) -> LogRow {
    LogRow {
        seq,
        sender: sender.to_string(),
        kind: kind.to_string(),
        body,
        ts_ms: now_ms(),
    }
}

/// JSON array of identities (stored as log body of membership events).
fn identities_json(ids: impl IntoIterator<Item = String>) -> String {
    serde_json::to_string(&ids.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles() {
        assert!(validate_handle("alice_01").is_ok());
        assert!(validate_handle("al").is_err());
        assert!(validate_handle("Alice").is_err());
        assert!(validate_handle(&"a".repeat(33)).is_err());
        assert!(validate_handle("a-b-c").is_err());
    }
}
