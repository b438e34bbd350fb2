//! [`Client`]: the async driver. It owns the state database, logs in over
//! HTTP, keeps one connection ([`Conn`]: WebSocket or SSE), processes the group timelines in
//! seq order, and performs commits with the stale-epoch retry loop.
//!
//! Processing rules (the invariants that keep every device on the same epoch
//! sequence):
//! - timeline entries of a group are applied strictly in seq order, each one
//!   once: an entry is applied only when its seq is `last_seq + 1`; earlier
//!   seqs are duplicates and dropped, later ones wait in a buffer;
//! - applying an entry (MLS state, cursor, log line) is one SQLite savepoint,
//!   then the seq is acknowledged to the server (acks are coalesced);
//! - entries this device submitted (`hush_own_seqs`) are skipped: their
//!   effect was applied when the server accepted them;
//! - an entry that fails MLS processing is skipped with a warning (it cannot
//!   become valid later), so one bad message never wedges a group;
//! - a commit is merged only after the server accepted it; on STALE_EPOCH
//!   the pending commit is dropped, the timeline is processed up to the
//!   server's head, and the change is rebuilt (new KeyPackages included);
//! - if the connection breaks while a commit is in flight, the pending commit
//!   is kept: if the server accepted it, it comes back in the timeline and is
//!   merged there (openmls recognises its own pending commit).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hush_proto::v1::{self, GroupEvent, InboxEvent};
use hush_proto::{auth, client_frame, server_frame, ErrorCode};
use ring::rand::{SecureRandom, SystemRandom};

use crate::conn::{Conn, Transport};
use crate::envelope::Envelope;
use crate::error::{ClientError, Result};
use crate::http::{parse_servers, Http, Token};
use crate::live::LiveState;
use crate::mls::{self, Change};
use crate::store::{now_ms, GroupRow, GroupStatus, Identity, LogRow, StateDb};
use crate::ws::Pushed;

/// The default server URL.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7300";
/// KeyPackages uploaded per batch.
pub const KEY_PACKAGE_BATCH: usize = 20;
/// Replenish when fewer unclaimed KeyPackages than this remain.
pub const KEY_PACKAGE_LOW: u32 = 10;
/// How many times a commit is rebuilt after losing the epoch race.
pub const MAX_COMMIT_ATTEMPTS: usize = 6;

/// How often a send is retried after transient failures (with backoff from
/// 100 ms to 2 s: about 15 s in all, enough for a group to re-home after a
/// node crash).
pub const MAX_TRANSIENT_RETRIES: usize = 10;
/// How long to wait for the timeline to reach a seq the server announced.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a sync may go without any event before it is abandoned.
const SYNC_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Cap of entries buffered for a group this device has not joined (yet).
const MAX_BUFFERED_PER_GROUP: usize = 10_000;

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
}

/// What a group change intends, rebuilt from scratch on every attempt.
#[derive(Debug, Clone)]
enum Intent {
    Add(Vec<String>),
    Remove(Vec<String>),
    Pending,
    /// Rotate this device's leaf keys (an UpdatePath commit).
    SelfUpdate,
}

/// The outcome of an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitDone {
    /// The commit's seq in the timeline.
    pub seq: u64,
    /// The epoch the group is in now.
    pub epoch: u64,
    /// Identities ("<user>/<device>") added.
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
    /// Member identities ("<user>/<device>").
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
    token: Option<Token>,
    buffered: HashMap<Vec<u8>, BTreeMap<u64, GroupEvent>>,
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

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Chooses the transport of the next [`Client::connect`] (default
    /// [`Transport::Auto`]).
    pub fn set_transport(&mut self, transport: Transport) {
        self.transport = transport;
    }

    /// The transport of the open connection (`Ws` or `Sse`), if any.
    pub fn connected_transport(&self) -> Option<Transport> {
        self.conn.as_ref().map(|c| c.transport())
    }

    fn conn(&self) -> Result<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| ClientError::Disconnected("not connected".into()))
    }

    async fn request(&mut self, body: client_frame::Body) -> Result<server_frame::Body> {
        let r = self.conn()?.request(body).await;
        if matches!(r, Err(ClientError::Disconnected(_)))
            && self.conn.as_ref().is_some_and(|c| c.is_closed())
        {
            self.conn = None;
        }
        r
    }

    fn random_id(&self) -> Result<Vec<u8>> {
        let mut id = vec![0u8; 16];
        self.rng
            .fill(&mut id)
            .map_err(|_| ClientError::Protocol("system randomness unavailable".into()))?;
        Ok(id)
    }

    // ---- accounts ---------------------------------------------------------

    /// Registers a new user with this home as its first device, then
    /// connects and uploads KeyPackages.
    pub async fn register(&mut self, handle: &str) -> Result<Arc<Identity>> {
        validate_handle(handle)?;
        if let Some(id) = &self.me {
            return Err(ClientError::AlreadyRegistered(id.mls_identity()));
        }
        let keys = mls::new_device_keys()?;
        let sig = mls::sign_raw(&keys, &auth::register_payload(handle, keys.public()))?;
        let resp = self.http.register(handle, keys.public(), sig).await?;
        self.adopt_identity(resp.user_id, resp.device_id, keys)?;
        self.connect().await?;
        self.me()
    }

    fn adopt_identity(
        &mut self,
        user_id: String,
        device_id: String,
        keys: openmls_basic_credential::SignatureKeyPair,
    ) -> Result<()> {
        let id = Identity {
            user_id,
            device_id,
            keys,
            server: self.servers(),
        };
        self.db.save_identity(&id)?;
        tracing::info!(identity = %id.mls_identity(), "device registered");
        self.me = Some(Arc::new(id));
        Ok(())
    }

    async fn login(&mut self) -> Result<Token> {
        let me = self.me()?;
        let challenge = self.http.login_challenge(&me.device_id).await?;
        let sig = mls::sign_raw(&me.keys, &auth::login_payload(&challenge))?;
        let (token, resp) = self.http.login(&me.device_id, challenge, sig).await?;
        if !resp.user_id.is_empty() && resp.user_id != me.user_id {
            return Err(ClientError::Protocol(format!(
                "logged in as {} but this device belongs to {}",
                resp.user_id, me.user_id
            )));
        }
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Asks the server for a one-time code that links a new device to this
    /// user (`hush device link CODE` on the new device).
    pub async fn link_code(&mut self) -> Result<v1::LinkCodeResponse> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => self.login().await?,
        };
        self.http.link_code(&token).await
    }

    /// Makes this (empty) home a new device of the user that issued `code`,
    /// then joins every group of that user by external commit. Returns the
    /// hex ids of the joined groups.
    pub async fn link_device(&mut self, code: &str) -> Result<Vec<String>> {
        if let Some(id) = &self.me {
            return Err(ClientError::AlreadyRegistered(id.mls_identity()));
        }
        let code = code.trim();
        if code.is_empty() {
            return Err(ClientError::InvalidArgument("empty link code".into()));
        }
        let keys = mls::new_device_keys()?;
        let sig = mls::sign_raw(&keys, &auth::link_payload(code, keys.public()))?;
        let resp = self.http.link_device(code, keys.public(), sig).await?;
        self.adopt_identity(resp.user_id, resp.device_id, keys)?;
        self.connect().await?;
        let joined = self.join_all_groups_of_user().await?;
        Ok(joined)
    }

    /// Joins (by external commit) every group some device of this user is
    /// in and this device is not. Returns the hex ids joined.
    pub async fn join_all_groups_of_user(&mut self) -> Result<Vec<String>> {
        let list = match self
            .request(client_frame::Body::ListGroups(v1::ListGroups {
                all_devices_of_user: true,
            }))
            .await?
        {
            server_frame::Body::GroupList(l) => l,
            other => return Err(unexpected("GroupList", &other)),
        };
        let mut joined = Vec::new();
        for g in list.groups {
            let active = self
                .db
                .group(&g.group_id)?
                .is_some_and(|r| r.status == GroupStatus::Active)
                && mls::has_group(&self.db, &g.group_id)?;
            if active {
                continue;
            }
            match self.external_join(&g.group_id).await {
                Ok(_) => joined.push(hex::encode(&g.group_id)),
                Err(e) => {
                    tracing::warn!(group = %hex::encode(&g.group_id), error = %e, "external join failed");
                }
            }
        }
        if !joined.is_empty() {
            // Deliver what follows the join commits.
            self.sync().await?;
        }
        Ok(joined)
    }

    /// Joins one group by external commit (retrying when the epoch moves).
    pub async fn external_join(&mut self, group_id: &[u8]) -> Result<u64> {
        let me = self.me()?;
        for attempt in 0..MAX_COMMIT_ATTEMPTS {
            let info = match self
                .request(client_frame::Body::GetGroupInfo(v1::GetGroupInfo {
                    group_id: group_id.to_vec(),
                }))
                .await?
            {
                server_frame::Body::GroupInfoResult(r) => r,
                other => return Err(unexpected("GroupInfoResult", &other)),
            };
            let (gid, out) =
                mls::external_join(&self.db, &me, &info.group_info, &info.ratchet_tree)?;
            if gid != group_id {
                mls::delete_group(&self.db, &gid)?;
                return Err(ClientError::Protocol(
                    "GroupInfo is for another group".into(),
                ));
            }
            let client_msg_id = self.random_id()?;
            let r = self
                .request(client_frame::Body::SendCommit(v1::SendCommit {
                    group_id: gid.clone(),
                    commit: out.commit,
                    welcome: Vec::new(),
                    group_info: out.group_info,
                    ratchet_tree: out.ratchet_tree,
                    client_msg_id,
                }))
                .await;
            match r {
                Ok(server_frame::Body::CommitAccepted(acc)) => {
                    let members = mls::members(&self.db, &gid)?;
                    self.db.atomically(|db| {
                        db.upsert_group(&gid, acc.seq)?;
                        db.record_own_seq(&gid, acc.seq)?;
                        db.log(
                            &gid,
                            &LogRow {
                                seq: acc.seq,
                                sender: me.user_id.clone(),
                                kind: "joined".into(),
                                body: identities_json(members.iter().map(|m| m.identity.clone())),
                                ts_ms: now_ms(),
                            },
                            false,
                        )
                    })?;
                    tracing::info!(group = %hex::encode(&gid), seq = acc.seq, "joined by external commit");
                    return Ok(acc.seq);
                }
                Ok(other) => {
                    mls::delete_group(&self.db, &gid)?;
                    return Err(unexpected("CommitAccepted", &other));
                }
                Err(e) if e.server_code() == Some(ErrorCode::StaleEpoch) => {
                    tracing::debug!(attempt, "external join lost the epoch race; retrying");
                    mls::delete_group(&self.db, &gid)?;
                }
                Err(e) => {
                    mls::delete_group(&self.db, &gid)?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::GaveUp(
            "external join kept losing the epoch race".into(),
        ))
    }

    // ---- connection and sync ------------------------------------------------

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
                self.http = Http::new(&self.servers[idx])?;
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
            self.http = Http::new(&self.servers[self.current])?;
        }
        Ok(())
    }

    async fn connect_here(&mut self) -> Result<()> {
        let token = self.login().await?;
        let server = self.server().to_string();
        self.conn = Some(Conn::open(&server, &token, self.transport).await?);
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

    /// Uploads KeyPackages when fewer than [`KEY_PACKAGE_LOW`] are left (and
    /// a last-resort package when the server has none).
    pub async fn maintain_key_packages(&mut self) -> Result<()> {
        let me = self.me()?;
        let count = match self
            .request(client_frame::Body::KeyPackageCount(v1::KeyPackageCount {}))
            .await?
        {
            server_frame::Body::KeyPackageCountResult(r) => r,
            other => return Err(unexpected("KeyPackageCountResult", &other)),
        };
        if count.count >= KEY_PACKAGE_LOW && count.has_last_resort {
            return Ok(());
        }
        let n = if count.count >= KEY_PACKAGE_LOW {
            0
        } else {
            KEY_PACKAGE_BATCH
        };
        let (key_packages, last_resort) =
            mls::new_key_packages(&self.db, &me, n, !count.has_last_resort)?;
        match self
            .request(client_frame::Body::UploadKeyPackages(
                v1::UploadKeyPackages {
                    key_packages,
                    last_resort: last_resort.unwrap_or_default(),
                },
            ))
            .await?
        {
            server_frame::Body::KeyPackagesUploaded(u) => {
                tracing::debug!(count = u.count, "key packages uploaded");
                Ok(())
            }
            other => Err(unexpected("KeyPackagesUploaded", &other)),
        }
    }

    /// Sends a Sync with the stored cursors and processes the backlog until
    /// the server says it is caught up, then runs deferred work.
    pub async fn sync(&mut self) -> Result<()> {
        self.sync_backlog().await?;
        self.run_actions().await
    }

    /// The Sync exchange itself. `SyncStarted` may come as the Sync's
    /// response or as a push (request_id 0); an `Error` response aborts.
    async fn sync_backlog(&mut self) -> Result<()> {
        let cursors = self
            .db
            .groups()?
            .into_iter()
            .filter(|g| g.status == GroupStatus::Active)
            .map(|g| v1::Cursor {
                group_id: g.group_id,
                after_seq: g.last_seq,
            })
            .collect();
        let inbox_after = self.db.inbox_seq()?;
        self.caught_up = false;
        let (id, mut answer) = self
            .conn()?
            .start_request(client_frame::Body::Sync(v1::Sync {
                cursors,
                inbox_after,
            }))?;
        let r = async {
            let mut answered = false;
            while !self.caught_up {
                let conn = self
                    .conn
                    .as_mut()
                    .ok_or_else(|| ClientError::Disconnected("not connected".into()))?;
                let p = tokio::select! {
                    a = &mut answer, if !answered => {
                        answered = true;
                        if let Ok(server_frame::Body::Error(e)) = a {
                            return Err(ClientError::from(e));
                        }
                        continue;
                    }
                    p = tokio::time::timeout(SYNC_IDLE_TIMEOUT, conn.next_event()) => p,
                };
                match p {
                    Err(_) => {
                        return Err(ClientError::Disconnected(
                            "sync: no event from the server in time".into(),
                        ))
                    }
                    Ok(None) => {
                        self.conn = None;
                        return Err(ClientError::Disconnected("connection closed".into()));
                    }
                    Ok(Some(p)) => self.process_pushed(p)?,
                }
            }
            // An error answer may sit right behind the last event.
            if let Ok(server_frame::Body::Error(e)) = answer.try_recv() {
                return Err(ClientError::from(e));
            }
            Ok(())
        }
        .await;
        if let Some(conn) = self.conn.as_ref() {
            conn.forget(id);
        }
        r?;
        self.flush_acks()
    }

    async fn next_pushed(&mut self, timeout: Duration) -> Result<Pushed> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ClientError::Disconnected("not connected".into()))?;
        match tokio::time::timeout(timeout, conn.next_event()).await {
            Err(_) => Err(ClientError::Disconnected(
                "no event from the server in time".into(),
            )),
            Ok(None) => {
                self.conn = None;
                Err(ClientError::Disconnected("connection closed".into()))
            }
            Ok(Some(p)) => Ok(p),
        }
    }

    /// Waits for the next pushed event. Cancel-safe: use it in `select!`
    /// and pass the result to [`Client::handle`].
    pub async fn wait_event(&mut self) -> Result<Pushed> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| ClientError::Disconnected("not connected".into()))?;
        match conn.next_event().await {
            Some(p) => Ok(p),
            None => Err(ClientError::Disconnected("connection closed".into())),
        }
    }

    /// Processes a pushed event and everything already queued behind it,
    /// acknowledges, and runs deferred work (commits of pending proposals,
    /// name messages, KeyPackage top-ups).
    pub async fn handle(&mut self, first: Pushed) -> Result<()> {
        self.process_pushed(first)?;
        while let Some(p) = self.conn.as_mut().and_then(|c| c.try_next_event()) {
            self.process_pushed(p)?;
        }
        self.flush_acks()?;
        self.run_actions().await
    }

    fn process_pushed(&mut self, p: Pushed) -> Result<()> {
        match p {
            Pushed::Group(ev) => self.on_group_event(ev),
            Pushed::Inbox(ev) => self.on_inbox(ev),
            Pushed::CaughtUp => {
                self.caught_up = true;
                Ok(())
            }
            Pushed::Ephemeral(ev) => {
                self.on_ephemeral(ev);
                Ok(())
            }
            Pushed::Presence { user_id, online } => {
                self.live.presence_changed(user_id, online);
                Ok(())
            }
            Pushed::KeyPackagesLow => {
                if !self.actions.contains(&Action::CheckKeyPackages) {
                    self.actions.push(Action::CheckKeyPackages);
                }
                Ok(())
            }
            Pushed::Closed(reason) => {
                let _ = self.flush_acks();
                self.conn = None;
                Err(ClientError::Disconnected(reason))
            }
        }
    }

    /// An ephemeral message (typing): decrypted in its own savepoint (it
    /// moves the sender's MLS ratchet), never logged, never acknowledged.
    /// One that does not process (a group not joined yet, an epoch not
    /// reached yet) is dropped: it is only a hint.
    fn on_ephemeral(&mut self, ev: v1::EphemeralEvent) {
        let gid = ev.group_id;
        let active = self
            .db
            .group(&gid)
            .ok()
            .flatten()
            .is_some_and(|g| g.status == GroupStatus::Active);
        if !active || !mls::has_group(&self.db, &gid).unwrap_or(false) {
            return;
        }
        match self.db.atomically(|db| mls::process(db, &gid, &ev.message)) {
            Ok(mls::Processed::Application { sender, plaintext }) => {
                if let Ok(Envelope::Typing) = Envelope::decode(&plaintext) {
                    self.live.typing_seen(&gid, mls::user_of(&sender), now_ms());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(group = %hex::encode(&gid), error = %e, "dropping ephemeral message")
            }
        }
    }

    fn flush_acks(&mut self) -> Result<()> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_ref() else {
            return Ok(());
        };
        for (group_id, seq) in self.acks.drain() {
            conn.send_oneway(client_frame::Body::Ack(v1::Ack { group_id, seq }))?;
        }
        Ok(())
    }

    fn on_group_event(&mut self, ev: GroupEvent) -> Result<()> {
        let gid = ev.group_id.clone();
        if ev.kind == v1::EntryKind::Application as i32 {
            // A message from someone ends their typing notice.
            self.live.typing_stopped(&gid, mls::user_of(&ev.sender));
        }
        match self.db.group(&gid)? {
            Some(g) if g.status == GroupStatus::Active => {
                if ev.seq <= g.last_seq {
                    return Ok(()); // already processed
                }
                self.buffered
                    .entry(gid.clone())
                    .or_default()
                    .insert(ev.seq, ev);
                self.drain_group(&gid)
            }
            Some(g) => {
                // A group this device left or was removed from: nothing to
                // apply, but move the cursor so it is not sent again.
                if ev.seq > g.last_seq {
                    self.db.set_last_seq(&gid, ev.seq)?;
                    self.acks.insert(gid, ev.seq);
                }
                Ok(())
            }
            None => {
                // Possibly a group whose Welcome has not arrived yet.
                let buf = self.buffered.entry(gid).or_default();
                if buf.len() < MAX_BUFFERED_PER_GROUP {
                    buf.insert(ev.seq, ev);
                }
                Ok(())
            }
        }
    }

    /// Applies the buffered entries of a group that are next in line.
    fn drain_group(&mut self, gid: &[u8]) -> Result<()> {
        let me = self.me()?;
        loop {
            let Some(g) = self.db.group(gid)? else {
                return Ok(());
            };
            let Some(buf) = self.buffered.get_mut(gid) else {
                return Ok(());
            };
            while buf.first_key_value().is_some_and(|(s, _)| *s <= g.last_seq) {
                buf.pop_first();
            }
            if g.status != GroupStatus::Active {
                // Removed while draining: what remains is moot.
                if let Some((s, _)) = buf.last_key_value() {
                    let s = *s;
                    self.db.set_last_seq(gid, s)?;
                    self.acks.insert(gid.to_vec(), s);
                }
                self.buffered.remove(gid);
                return Ok(());
            }
            let next = match buf.first_key_value() {
                Some((s, _)) if *s == g.last_seq + 1 => buf.pop_first().map(|(_, e)| e),
                Some((s, _)) => {
                    tracing::debug!(group = %hex::encode(gid), next = s, last = g.last_seq, "waiting for a missing seq");
                    None
                }
                None => None,
            };
            let Some(ev) = next else {
                if self.buffered.get(gid).is_some_and(|b| b.is_empty()) {
                    self.buffered.remove(gid);
                }
                return Ok(());
            };
            let seq = ev.seq;
            let actions = self.db.atomically(|db| {
                let actions = apply_entry(db, &me, &g, &ev)?;
                db.set_last_seq(gid, seq)?;
                Ok(actions)
            })?;
            for a in actions {
                if !self.actions.contains(&a) {
                    self.actions.push(a);
                }
            }
            self.acks.insert(gid.to_vec(), seq);
        }
    }

    fn on_inbox(&mut self, ev: InboxEvent) -> Result<()> {
        if ev.inbox_seq != 0 && ev.inbox_seq <= self.db.inbox_seq()? {
            return Ok(());
        }
        let gid = ev.group_id.clone();
        let already = self
            .db
            .group(&gid)?
            .is_some_and(|g| g.status == GroupStatus::Active && g.last_seq >= ev.commit_seq)
            && mls::has_group(&self.db, &gid)?;
        if !already {
            let r = self.db.atomically(|db| {
                let joined = mls::join_from_welcome(db, &ev.welcome, &ev.ratchet_tree)?;
                if joined != gid {
                    return Err(ClientError::Protocol(
                        "Welcome is for another group than announced".into(),
                    ));
                }
                db.upsert_group(&gid, ev.commit_seq)?;
                let members = mls::members(db, &gid)?;
                db.log(
                    &gid,
                    &LogRow {
                        seq: ev.commit_seq,
                        sender: String::new(),
                        kind: "joined".into(),
                        body: identities_json(members.into_iter().map(|m| m.identity)),
                        ts_ms: now_ms(),
                    },
                    false,
                )?;
                db.set_inbox_seq(ev.inbox_seq)
            });
            match r {
                Ok(()) => {
                    tracing::info!(group = %hex::encode(&gid), seq = ev.commit_seq, "joined from welcome");
                    // Acknowledging the adding commit is the join the server
                    // waits for before it shows our presence to the group.
                    self.acks.insert(gid.clone(), ev.commit_seq);
                    self.actions.push(Action::CheckKeyPackages);
                }
                Err(e) => {
                    // A Welcome that does not process cannot get better.
                    tracing::warn!(group = %hex::encode(&gid), error = %e, "dropping welcome");
                    self.db.set_inbox_seq(ev.inbox_seq)?;
                }
            }
        } else {
            self.db.set_inbox_seq(ev.inbox_seq)?;
        }
        if let Some(conn) = self.conn.as_ref() {
            conn.send_oneway(client_frame::Body::AckInbox(v1::AckInbox {
                inbox_seq: ev.inbox_seq,
            }))?;
        }
        self.drain_group(&gid)
    }

    async fn run_actions(&mut self) -> Result<()> {
        // Each round may queue more work (a commit retry processes events);
        // bound the rounds so a misbehaving peer cannot keep us here.
        for _ in 0..8 {
            if self.actions.is_empty() {
                return Ok(());
            }
            let actions = std::mem::take(&mut self.actions);
            for a in actions {
                let r = match &a {
                    Action::CommitPending(gid) => self.commit_pending_if_any(gid).await,
                    Action::SendName(gid) => self.send_name(gid).await.map(|_| ()),
                    Action::CheckKeyPackages => self.maintain_key_packages().await,
                };
                if let Err(e) = r {
                    if matches!(e, ClientError::Disconnected(_)) {
                        return Err(e);
                    }
                    tracing::warn!(action = ?a, error = %e, "deferred action failed");
                }
            }
        }
        Ok(())
    }

    async fn commit_pending_if_any(&mut self, gid: &[u8]) -> Result<()> {
        let active = self
            .db
            .group(gid)?
            .is_some_and(|g| g.status == GroupStatus::Active);
        if !active || !mls::has_pending_proposals(&self.db, gid)? {
            return Ok(());
        }
        self.commit_intent(gid, Intent::Pending).await.map(|_| ())
    }

    async fn send_name(&mut self, gid: &[u8]) -> Result<Option<u64>> {
        let Some(g) = self.db.group(gid)? else {
            return Ok(None);
        };
        match (g.status, g.name) {
            (GroupStatus::Active, Some(name)) => self
                .send_envelope(gid, &Envelope::Name { name })
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    /// Processes events until the group's cursor reaches `head_seq` (after a
    /// STALE_EPOCH). Falls back to a full re-sync if the events do not come.
    async fn catch_up(&mut self, gid: &[u8], head_seq: Option<u64>) -> Result<()> {
        let reached = |db: &StateDb| -> Result<bool> {
            let last = db.group(gid)?.map(|g| g.last_seq).unwrap_or(0);
            Ok(head_seq.is_some_and(|h| last >= h))
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        while !reached(&self.db)? {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || head_seq.is_none() {
                break;
            }
            match self.next_pushed(left).await {
                Ok(p) => self.process_pushed(p)?,
                Err(ClientError::Disconnected(m)) if self.conn.is_some() => {
                    tracing::debug!(reason = %m, "catch-up wait timed out");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.flush_acks()?;
        if !reached(&self.db)? {
            // Ask again from our cursors: whatever is missing gets re-sent.
            let pending = std::mem::take(&mut self.actions);
            self.sync_no_actions().await?;
            self.actions.extend(pending);
        }
        Ok(())
    }

    async fn sync_no_actions(&mut self) -> Result<()> {
        let saved = std::mem::take(&mut self.actions);
        let r = self.sync_backlog().await;
        let queued = std::mem::replace(&mut self.actions, saved);
        self.actions.extend(queued);
        r
    }

    // ---- group operations ---------------------------------------------------

    fn active_group(&self, query: &str) -> Result<GroupRow> {
        let g = self.db.resolve_group(query)?;
        if g.status != GroupStatus::Active {
            return Err(ClientError::Server {
                code: ErrorCode::NotMember,
                message: format!("this device is no longer a member of {}", g.display_name()),
                stale_epoch: None,
            });
        }
        Ok(g)
    }

    /// Creates a group named `name` (the name stays end-to-end: it is only
    /// ever sent inside MLS messages).
    pub async fn create_group(&mut self, name: &str) -> Result<GroupRow> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ClientError::InvalidArgument("empty group name".into()));
        }
        let me = self.me()?;
        let new = mls::create_group(&self.db, &me)?;
        let r = self
            .request(client_frame::Body::CreateGroup(v1::CreateGroup {
                group_info: new.group_info,
                ratchet_tree: new.ratchet_tree,
            }))
            .await;
        match r {
            Ok(server_frame::Body::GroupCreated(c))
                if c.group_id == new.group_id || c.group_id.is_empty() => {}
            Ok(other) => {
                mls::delete_group(&self.db, &new.group_id)?;
                return Err(unexpected("GroupCreated", &other));
            }
            Err(e) => {
                mls::delete_group(&self.db, &new.group_id)?;
                return Err(e);
            }
        }
        self.db.atomically(|db| {
            db.upsert_group(&new.group_id, 0)?;
            db.set_group_name(&new.group_id, name)
        })?;
        self.db
            .group(&new.group_id)?
            .ok_or_else(|| ClientError::GroupNotFound(hex::encode(&new.group_id)))
    }

    /// Adds every device of each user (by handle) to a group, then tells the
    /// new members the group's name.
    pub async fn add_members(
        &mut self,
        group: &str,
        handles: &[String],
    ) -> Result<Option<CommitDone>> {
        for h in handles {
            validate_handle(h)?;
        }
        let g = self.active_group(group)?;
        let done = self
            .commit_intent(&g.group_id, Intent::Add(handles.to_vec()))
            .await?;
        if done.is_some() {
            self.send_name(&g.group_id).await?;
        }
        Ok(done)
    }

    /// Removes every device of each user (by handle) from a group.
    pub async fn remove_members(
        &mut self,
        group: &str,
        handles: &[String],
    ) -> Result<Option<CommitDone>> {
        for h in handles {
            validate_handle(h)?;
        }
        let g = self.active_group(group)?;
        let members = mls::members(&self.db, &g.group_id)?;
        for h in handles {
            if !members.iter().any(|m| mls::user_of(&m.identity) == h) {
                return Err(ClientError::InvalidArgument(format!(
                    "{h} is not a member of {}",
                    g.display_name()
                )));
            }
        }
        self.commit_intent(&g.group_id, Intent::Remove(handles.to_vec()))
            .await
    }

    /// Rotates this device's keys in a group (MLS self-update): commits an
    /// UpdatePath that gives this device's leaf a fresh HPKE key and renews
    /// the path secrets, so a past compromise of this device's group keys
    /// stops exposing new epochs. Pending proposals (a member's leave) are
    /// committed along with it. Returns the commit's seq and the new epoch.
    pub async fn self_update(&mut self, group: &str) -> Result<CommitDone> {
        let g = self.active_group(group)?;
        self.commit_intent(&g.group_id, Intent::SelfUpdate)
            .await?
            .ok_or_else(|| ClientError::Mls("self-update produced no commit".into()))
    }

    /// Leaves a group: sends this device's remove proposal (a remaining
    /// member commits it) and forgets the group's MLS state. Returns the
    /// proposal's seq.
    pub async fn leave(&mut self, group: &str) -> Result<u64> {
        let me = self.me()?;
        let g = self.active_group(group)?;
        let gid = g.group_id.clone();
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let proposal = mls::leave(&self.db, &me, &gid)?;
            let client_msg_id = self.random_id()?;
            let r = self
                .request(client_frame::Body::SendProposal(v1::SendProposal {
                    group_id: gid.clone(),
                    proposal,
                    client_msg_id,
                }))
                .await;
            match r {
                Ok(server_frame::Body::ProposalAccepted(acc)) => {
                    self.db.atomically(|db| {
                        db.record_own_seq(&gid, acc.seq)?;
                        db.set_last_seq(&gid, acc.seq)?;
                        db.set_status(&gid, GroupStatus::Left)?;
                        db.log(
                            &gid,
                            &LogRow {
                                seq: acc.seq,
                                sender: me.user_id.clone(),
                                kind: "left".into(),
                                body: identities_json([me.mls_identity()]),
                                ts_ms: now_ms(),
                            },
                            true,
                        )?;
                        mls::delete_group(db, &gid)
                    })?;
                    self.buffered.remove(&gid);
                    return Ok(acc.seq);
                }
                Ok(other) => return Err(unexpected("ProposalAccepted", &other)),
                Err(ClientError::Server {
                    code: ErrorCode::StaleEpoch,
                    stale_epoch,
                    ..
                }) => {
                    mls::clear_pending_proposals(&self.db, &gid)?;
                    self.catch_up(&gid, stale_epoch.map(|s| s.head_seq)).await?;
                    if self
                        .db
                        .group(&gid)?
                        .is_some_and(|g| g.status != GroupStatus::Active)
                    {
                        // Someone removed us meanwhile: we are out anyway.
                        return Ok(self.db.group(&gid)?.map(|g| g.last_seq).unwrap_or(0));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::GaveUp(
            "leave kept losing the epoch race".into(),
        ))
    }

    /// Sends a text message; returns its seq.
    pub async fn send_text(&mut self, group: &str, text: &str) -> Result<u64> {
        if text.is_empty() {
            return Err(ClientError::InvalidArgument("empty message".into()));
        }
        let g = self.active_group(group)?;
        self.send_envelope(
            &g.group_id,
            &Envelope::Text {
                body: text.to_string(),
                ts: now_ms(),
            },
        )
        .await
    }

    /// Sends an application message. A transient failure (the connection
    /// dropped, the node went away, the group is moving between nodes) is
    /// retried with the same `client_msg_id` after reconnecting, so a
    /// message the server took but could not acknowledge is not sent twice:
    /// the repeat is answered with the original seq.
    async fn send_envelope(&mut self, gid: &[u8], env: &Envelope) -> Result<u64> {
        let me = self.me()?;
        let client_msg_id = self.random_id()?;
        let plaintext = env.encode();
        let mut stale_attempts = 0;
        let mut retries = 0;
        let mut backoff = std::time::Duration::from_millis(100);
        while stale_attempts < MAX_COMMIT_ATTEMPTS {
            if !self.is_connected() {
                // Boxed: connecting syncs, and a sync may send (a cycle).
                if let Err(e) = Box::pin(self.connect()).await {
                    if !e.is_transient() || retries >= self.transient_retries {
                        return Err(e);
                    }
                    retries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                    continue;
                }
            }
            if mls::has_pending_proposals(&self.db, gid)? {
                // openmls refuses to encrypt while proposals are pending.
                self.commit_intent(gid, Intent::Pending).await?;
            }
            let message = mls::encrypt(&self.db, &me, gid, &plaintext)?;
            let r = self
                .request(client_frame::Body::SendMessage(v1::SendMessage {
                    group_id: gid.to_vec(),
                    client_msg_id: client_msg_id.clone(),
                    message,
                }))
                .await;
            match r {
                Ok(server_frame::Body::MessageAccepted(acc)) => {
                    let (kind, body) = match env {
                        Envelope::Text { body, .. } => ("text", body.clone()),
                        Envelope::Name { name } => ("name", name.clone()),
                        Envelope::Typing | Envelope::Unknown => ("unknown", String::new()),
                    };
                    self.db.atomically(|db| {
                        db.record_own_seq(gid, acc.seq)?;
                        db.log(
                            gid,
                            &LogRow {
                                seq: acc.seq,
                                sender: me.user_id.clone(),
                                kind: kind.into(),
                                body,
                                ts_ms: now_ms(),
                            },
                            true,
                        )
                    })?;
                    return Ok(acc.seq);
                }
                Ok(other) => return Err(unexpected("MessageAccepted", &other)),
                Err(ClientError::Server {
                    code: ErrorCode::StaleEpoch,
                    stale_epoch,
                    ..
                }) => {
                    stale_attempts += 1;
                    self.catch_up(gid, stale_epoch.map(|s| s.head_seq)).await?;
                    if self
                        .db
                        .group(gid)?
                        .is_some_and(|g| g.status != GroupStatus::Active)
                    {
                        return Err(ClientError::Server {
                            code: ErrorCode::NotMember,
                            message: "removed from the group".into(),
                            stale_epoch: None,
                        });
                    }
                }
                Err(e) if e.is_transient() && retries < self.transient_retries => {
                    retries += 1;
                    tracing::warn!(error = %e, "send interrupted; retrying with the same message id");
                    if !self.is_connected() {
                        self.close().await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::GaveUp(
            "message kept hitting stale epochs".into(),
        ))
    }

    /// Builds, sends and merges a commit for `intent`, rebuilding it after
    /// every lost epoch race. `Ok(None)` when there turned out to be nothing
    /// to commit.
    async fn commit_intent(&mut self, gid: &[u8], intent: Intent) -> Result<Option<CommitDone>> {
        let me = self.me()?;
        for attempt in 0..MAX_COMMIT_ATTEMPTS {
            let members = mls::members(&self.db, gid)?;
            let change = match &intent {
                Intent::Add(handles) => {
                    let mut kps = Vec::new();
                    for h in handles {
                        let claimed = match self
                            .request(client_frame::Body::ClaimKeyPackages(v1::ClaimKeyPackages {
                                user_id: h.clone(),
                            }))
                            .await?
                        {
                            server_frame::Body::ClaimedKeyPackages(c) => c,
                            other => return Err(unexpected("ClaimedKeyPackages", &other)),
                        };
                        for c in claimed.key_packages {
                            let kp = match mls::parse_key_package(&self.db, &c.key_package) {
                                Ok(kp) => kp,
                                Err(e) => {
                                    tracing::warn!(user = %h, device = %c.device_id, error = %e, "skipping bad key package");
                                    continue;
                                }
                            };
                            let ident = mls::key_package_identity(&kp);
                            if mls::user_of(&ident) != h {
                                tracing::warn!(user = %h, "key package of another user; skipped");
                                continue;
                            }
                            if members.iter().any(|m| m.identity == ident) {
                                continue; // that device is already in
                            }
                            kps.push(kp);
                        }
                    }
                    if kps.is_empty() {
                        return Ok(None);
                    }
                    Change::Add(kps)
                }
                Intent::Remove(handles) => {
                    let leaves: Vec<u32> = members
                        .iter()
                        .filter(|m| handles.iter().any(|h| mls::user_of(&m.identity) == h))
                        .map(|m| m.leaf)
                        .collect();
                    if leaves.is_empty() {
                        return Ok(None);
                    }
                    Change::Remove(leaves)
                }
                Intent::Pending => {
                    if !mls::has_pending_proposals(&self.db, gid)? {
                        return Ok(None);
                    }
                    Change::PendingProposals
                }
                Intent::SelfUpdate => Change::SelfUpdate,
            };
            let out = mls::commit(&self.db, &me, gid, change)?;
            let client_msg_id = self.random_id()?;
            let r = self
                .request(client_frame::Body::SendCommit(v1::SendCommit {
                    group_id: gid.to_vec(),
                    commit: out.commit,
                    welcome: out.welcome.unwrap_or_default(),
                    group_info: out.group_info,
                    ratchet_tree: out.ratchet_tree,
                    client_msg_id,
                }))
                .await;
            match r {
                Ok(server_frame::Body::CommitAccepted(acc)) => {
                    let before: Vec<String> = members.iter().map(|m| m.identity.clone()).collect();
                    let done = self.db.atomically(|db| {
                        mls::merge_pending(db, gid)?;
                        db.record_own_seq(gid, acc.seq)?;
                        let after: Vec<String> = mls::members(db, gid)?
                            .into_iter()
                            .map(|m| m.identity)
                            .collect();
                        let added: Vec<String> = after
                            .iter()
                            .filter(|i| !before.contains(i))
                            .cloned()
                            .collect();
                        let removed: Vec<String> = before
                            .iter()
                            .filter(|i| !after.contains(i))
                            .cloned()
                            .collect();
                        for (kind, list) in [("added", &added), ("removed", &removed)] {
                            if !list.is_empty() {
                                db.log(
                                    gid,
                                    &LogRow {
                                        seq: acc.seq,
                                        sender: me.user_id.clone(),
                                        kind: kind.into(),
                                        body: identities_json(list.iter().cloned()),
                                        ts_ms: now_ms(),
                                    },
                                    true,
                                )?;
                            }
                        }
                        Ok(CommitDone {
                            seq: acc.seq,
                            epoch: mls::epoch(db, gid)?,
                            added,
                            removed,
                        })
                    })?;
                    return Ok(Some(done));
                }
                Ok(other) => {
                    mls::clear_pending(&self.db, gid)?;
                    return Err(unexpected("CommitAccepted", &other));
                }
                Err(ClientError::Server {
                    code: ErrorCode::StaleEpoch,
                    stale_epoch,
                    ..
                }) => {
                    tracing::debug!(attempt, "commit lost the epoch race; catching up");
                    mls::clear_pending(&self.db, gid)?;
                    self.catch_up(gid, stale_epoch.map(|s| s.head_seq)).await?;
                    if self
                        .db
                        .group(gid)?
                        .is_some_and(|g| g.status != GroupStatus::Active)
                    {
                        return Err(ClientError::Server {
                            code: ErrorCode::NotMember,
                            message: "removed from the group".into(),
                            stale_epoch: None,
                        });
                    }
                }
                Err(e @ ClientError::Disconnected(_)) => {
                    // Outcome unknown: keep the pending commit. If the server
                    // took it, it comes back in the timeline and is merged.
                    return Err(e);
                }
                Err(e) => {
                    mls::clear_pending(&self.db, gid)?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::GaveUp(
            "commit kept losing the epoch race".into(),
        ))
    }

    /// Local groups with their members.
    pub fn groups(&self) -> Result<Vec<GroupView>> {
        self.db
            .groups()?
            .into_iter()
            .map(|row| {
                let (epoch, members) = if row.status == GroupStatus::Active
                    && mls::has_group(&self.db, &row.group_id)?
                {
                    (
                        Some(mls::epoch(&self.db, &row.group_id)?),
                        mls::members(&self.db, &row.group_id)?
                            .into_iter()
                            .map(|m| m.identity)
                            .collect(),
                    )
                } else {
                    (None, Vec::new())
                };
                Ok(GroupView {
                    row,
                    epoch,
                    members,
                })
            })
            .collect()
    }

    /// One local group by name/id/prefix.
    pub fn group(&self, query: &str) -> Result<GroupRow> {
        self.db.resolve_group(query)
    }

    /// Member identities of a group (empty when no longer a member).
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<String>> {
        if !mls::has_group(&self.db, group_id)? {
            return Ok(Vec::new());
        }
        Ok(mls::members(&self.db, group_id)?
            .into_iter()
            .map(|m| m.identity)
            .collect())
    }

    // ---- presence and typing (live only, never stored) ------------------------

    /// Tells the group's members that are online now that this user is
    /// typing: an ephemeral MLS application message the server does not
    /// store. Skipped (Ok) while proposals are pending, because openmls
    /// cannot encrypt then and a typing notice is not worth a commit.
    pub async fn send_typing(&mut self, group: &str) -> Result<()> {
        let me = self.me()?;
        let g = self.active_group(group)?;
        if mls::has_pending_proposals(&self.db, &g.group_id)? {
            return Ok(());
        }
        let message = mls::encrypt(&self.db, &me, &g.group_id, &Envelope::Typing.encode())?;
        match self
            .request(client_frame::Body::SendEphemeral(v1::SendEphemeral {
                group_id: g.group_id,
                message,
            }))
            .await?
        {
            server_frame::Body::EphemeralAccepted(_) => Ok(()),
            other => Err(unexpected("EphemeralAccepted", &other)),
        }
    }

    /// Fetches the presence of a group's members (then pushed changes keep
    /// it current). Returns (handle, online) per member user.
    pub async fn refresh_presence(&mut self, group: &str) -> Result<Vec<(String, bool)>> {
        let g = self.active_group(group)?;
        match self
            .request(client_frame::Body::GetPresence(v1::GetPresence {
                group_id: g.group_id,
            }))
            .await?
        {
            server_frame::Body::PresenceList(l) => {
                let users: Vec<(String, bool)> =
                    l.users.into_iter().map(|u| (u.user_id, u.online)).collect();
                self.live.presence_snapshot(users.clone());
                Ok(users)
            }
            other => Err(unexpected("PresenceList", &other)),
        }
    }

    /// Presence and typing as known now.
    pub fn live(&self) -> &LiveState {
        &self.live
    }

    /// Presence and typing, to consume changes or clear a typing notice.
    pub fn live_mut(&mut self) -> &mut LiveState {
        &mut self.live
    }

    /// Log lines not yet reported (see [`StateDb::take_unshown`]).
    pub fn take_unshown(&self) -> Result<Vec<(Vec<u8>, LogRow)>> {
        self.db.take_unshown()
    }
}

/// Applies one timeline entry inside the caller's savepoint. Returns the
/// deferred work it calls for.
fn apply_entry(db: &StateDb, me: &Identity, g: &GroupRow, ev: &GroupEvent) -> Result<Vec<Action>> {
    let gid = &g.group_id;
    let mut actions = Vec::new();
    if db.is_own_seq(gid, ev.seq)? {
        return Ok(actions);
    }
    let processed = match mls::process(db, gid, &ev.message) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(group = %hex::encode(gid), seq = ev.seq, error = %e, "skipping timeline entry that does not process");
            return Ok(actions);
        }
    };
    let ts_ms = if ev.server_time_ms > 0 {
        ev.server_time_ms
    } else {
        now_ms()
    };
    let line = |kind: &str, sender: &str, body: String| LogRow {
        seq: ev.seq,
        sender: mls::user_of(sender).to_string(),
        kind: kind.to_string(),
        body,
        ts_ms,
    };
    match processed {
        mls::Processed::Application { sender, plaintext } => match Envelope::decode(&plaintext) {
            Ok(Envelope::Text { body, .. }) => db.log(gid, &line("text", &sender, body), false)?,
            Ok(Envelope::Name { name }) => {
                let changed = db.group(gid)?.and_then(|g| g.name) != Some(name.clone());
                db.set_group_name(gid, &name)?;
                if changed {
                    db.log(gid, &line("name", &sender, name), false)?;
                }
            }
            Ok(Envelope::Typing | Envelope::Unknown) => {}
            Err(e) => {
                tracing::warn!(group = %hex::encode(gid), seq = ev.seq, error = %e, "undecodable payload")
            }
        },
        mls::Processed::Proposal { .. } => actions.push(Action::CommitPending(gid.clone())),
        mls::Processed::Commit {
            sender,
            added,
            removed,
            self_removed,
            external,
        } => {
            if !added.is_empty() {
                db.log(
                    gid,
                    &line("added", &sender, identities_json(added.iter().cloned())),
                    false,
                )?;
            }
            if !removed.is_empty() {
                db.log(
                    gid,
                    &line("removed", &sender, identities_json(removed.iter().cloned())),
                    false,
                )?;
            }
            if self_removed {
                db.set_status(gid, GroupStatus::Removed)?;
                mls::delete_group(db, gid)?;
            } else if external && g.name.is_some() {
                // The joiner cannot know the name; the member with the lowest
                // leaf (other than the joiner) tells it.
                let members = mls::members(db, gid)?;
                let namer = members
                    .iter()
                    .find(|m| m.identity != sender)
                    .map(|m| m.identity.clone());
                if namer.as_deref() == Some(me.mls_identity().as_str()) {
                    actions.push(Action::SendName(gid.clone()));
                }
            }
        }
        mls::Processed::OwnCommit | mls::Processed::OwnMessage => {}
    }
    Ok(actions)
}

/// JSON array of identities (stored as log body of membership events).
fn identities_json(ids: impl IntoIterator<Item = String>) -> String {
    serde_json::to_string(&ids.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

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
