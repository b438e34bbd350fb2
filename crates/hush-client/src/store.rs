//! Persistent client state: one SQLite file per home directory.
//!
//! The same connection holds
//! - the openmls state, through `openmls_sqlite_storage` (its own tables,
//!   created by its refinery migrations), and
//! - Hush's own tables (prefixed `hush_`): the device identity, the groups
//!   with their cursors, the own-entry seqs used for dedup, and the local
//!   message log used for display.
//!
//! Because both live on one connection, processing a timeline entry (MLS
//! state change + cursor move + log line) runs in one SQLite transaction
//! ([`StateDb::atomically`]): after a crash either all of it happened or
//! none, so processing is resumable and never applies an entry twice.
//!
//! Several `hush` processes may use one home at once (a `listen` or `chat`
//! left open while scripts send). The outermost [`StateDb::atomically`] is
//! a `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before it
//! reads anything, waiting up to [`BUSY_TIMEOUT`] for another process to
//! finish its step. That lock is the cross-process lock of every MLS
//! read-modify-write (encrypt, process, commit, merge): the group state is
//! loaded from the file after the lock is held, so no process ever works
//! on a stale copy, and it is held for that one step only, never across a
//! network round trip or between messages. (A deferred transaction that
//! reads first and then writes would fail at once with "database is locked"
//! when another process wrote in between: SQLite cannot wait there, since
//! its snapshot is already stale.)

use std::path::Path;

use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{ClientError, Result};

/// The schema version of Hush's own tables (`PRAGMA user_version`).
/// Version 2 added the pinned directory (`hush_contacts`,
/// `hush_contact_devices`) and `hush_alerts`; every table is created with
/// `IF NOT EXISTS`, so opening a version 1 file adds them.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hush_identity (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    sig_keypair BLOB NOT NULL,
    server      TEXT NOT NULL,
    inbox_seq   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS hush_groups (
    group_id   BLOB PRIMARY KEY,
    name       TEXT,
    joined_seq INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active',
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hush_own_seqs (
    group_id BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq)
);
CREATE TABLE IF NOT EXISTS hush_log (
    group_id BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    sender   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    body     TEXT NOT NULL,
    ts_ms    INTEGER NOT NULL,
    shown    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, seq, kind)
);
CREATE TABLE IF NOT EXISTS hush_contacts (
    user_id      TEXT PRIMARY KEY,
    verified     INTEGER NOT NULL DEFAULT 0,
    changed      INTEGER NOT NULL DEFAULT 0,
    refreshed_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hush_contact_devices (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    signature_key BLOB NOT NULL,
    current       INTEGER NOT NULL DEFAULT 1,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE IF NOT EXISTS hush_alerts (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL,
    ts_ms   INTEGER NOT NULL,
    shown   INTEGER NOT NULL DEFAULT 0
);
";

/// serde codec for the openmls SQLite storage provider.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The openmls provider over the state database: RustCrypto for crypto and
/// randomness, the SQLite storage provider on the borrowed connection.
pub struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// This device's identity.
pub struct Identity {
    /// The user id (== handle).
    pub user_id: String,
    /// The server-assigned device id.
    pub device_id: String,
    /// The device's Ed25519 key: signs HTTP auth payloads and is the MLS leaf
    /// signature key.
    pub keys: SignatureKeyPair,
    /// The server URL this identity is registered with.
    pub server: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("keys", &"***")
            .field("server", &self.server)
            .finish()
    }
}

impl Identity {
    /// The MLS credential identity "<user>/<device>".
    pub fn mls_identity(&self) -> String {
        hush_proto::auth::identity(&self.user_id, &self.device_id)
    }
}

/// Membership status of a local group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// This device is a member.
    Active,
    /// This device sent its leave proposal.
    Left,
    /// A commit removed this device.
    Removed,
}

impl GroupStatus {
    fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Active => "active",
            GroupStatus::Left => "left",
            GroupStatus::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "left" => GroupStatus::Left,
            "removed" => GroupStatus::Removed,
            _ => GroupStatus::Active,
        }
    }
}

/// A group as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// Display name learned from a `name` envelope (never sent in clear).
    pub name: Option<String>,
    /// The timeline seq this device's membership started after.
    pub joined_seq: u64,
    /// The last timeline seq this device processed.
    pub last_seq: u64,
    /// Membership status.
    pub status: GroupStatus,
}

impl GroupRow {
    /// The group id in lowercase hex.
    pub fn hex_id(&self) -> String {
        hex::encode(&self.group_id)
    }

    /// The name, or the hex id when the group has no name yet.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.hex_id())
    }
}

/// One line of the local log (a message or a membership event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// Timeline seq.
    pub seq: u64,
    /// Sender handle (user id).
    pub sender: String,
    /// "text", "added", "removed", "name", "joined", ...
    pub kind: String,
    /// For "text": the text; for events a JSON value (e.g. member list).
    pub body: String,
    /// Timestamp, Unix milliseconds.
    pub ts_ms: u64,
}

/// A device of a contact as this device pinned it from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedDevice {
    /// The server-assigned device id.
    pub device_id: String,
    /// Its Ed25519 public key: the key its MLS leaf must carry.
    pub signature_key: Vec<u8>,
    /// False once the directory stopped listing it (revoked): its leaf is
    /// no longer trusted.
    pub current: bool,
    /// When this device first saw it, Unix milliseconds.
    pub first_seen_ms: u64,
}

/// A user whose devices this device pins (trust on first use), including
/// this device's own user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The user id (handle).
    pub user_id: String,
    /// The person marked the safety number verified, and the devices have
    /// not changed since.
    pub verified: bool,
    /// The devices changed since the person last looked at the safety
    /// number (`hush verify`): warn until they do.
    pub changed: bool,
    /// When the directory was last asked, Unix milliseconds.
    pub refreshed_ms: u64,
    /// Every device ever pinned, current or not, by device id.
    pub devices: Vec<PinnedDevice>,
}

impl Contact {
    /// The current devices' keys.
    pub fn current_keys(&self) -> Vec<Vec<u8>> {
        self.devices
            .iter()
            .filter(|d| d.current)
            .map(|d| d.signature_key.clone())
            .collect()
    }
}

/// Something the person must see once: a contact's devices changed, a
/// message or invitation was refused as forged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Insertion order.
    pub id: i64,
    /// The user concerned.
    pub user_id: String,
    /// `devices_changed`, `own_devices_changed`, ...
    pub kind: String,
    /// A JSON object with the details.
    pub body: String,
    /// When it was raised, Unix milliseconds.
    pub ts_ms: u64,
}

/// The state database of one home directory.
pub struct StateDb {
    conn: Connection,
    crypto: RustCrypto,
    /// How many [`StateDb::atomically`] calls are open on this connection
    /// (the outermost one owns the transaction, inner ones are savepoints).
    depth: std::cell::Cell<u32>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").finish_non_exhaustive()
    }
}

/// The file name of the state database inside the home directory.
pub const DB_FILE: &str = "hush.db";
/// How long a write waits for another process holding the database (a
/// second `hush` on the same home) before it fails as busy. Every holder
/// keeps the lock for one short step (milliseconds), so this is only
/// reached when dozens of processes queue on one home on a loaded machine.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl StateDb {
    /// Opens (creating if needed) `<home>/hush.db` and migrates it.
    pub fn open(home: &Path) -> Result<Self> {
        std::fs::create_dir_all(home)?;
        let conn = Connection::open(home.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self> {
        SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
            .run_migrations()
            .map_err(|e| ClientError::Mls(format!("openmls storage migration: {e}")))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(ClientError::InvalidArgument(format!(
                "state database schema {version} is newer than this client ({SCHEMA_VERSION})"
            )));
        }
        if version < SCHEMA_VERSION {
            // Only a new or older file is written to: opening a current one
            // takes no write lock, so a command never waits here for
            // another process's step.
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(Self {
            conn,
            crypto: RustCrypto::default(),
            depth: std::cell::Cell::new(0),
        })
    }

    /// The raw connection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// An openmls provider over this database.
    pub fn provider(&self) -> Provider<'_> {
        Provider {
            crypto: &self.crypto,
            storage: SqliteStorageProvider::new(&self.conn),
        }
    }

    /// Runs `f` inside a transaction: everything it writes (openmls state
    /// included) is committed together, or rolled back if it fails. The
    /// outermost call is `BEGIN IMMEDIATE`, so it holds the database's
    /// write lock (across processes) from before its first read to its
    /// commit: whatever `f` loads is current and nobody else changes it
    /// meanwhile. Calls nest (inner ones are savepoints). Keep `f` short
    /// and free of network waits: every other process on this home queues
    /// behind it.
    pub fn atomically<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let depth = self.depth.get();
        let (begin, commit, rollback) = if depth == 0 {
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        } else {
            (
                "SAVEPOINT hush_atomic",
                "RELEASE hush_atomic",
                "ROLLBACK TO hush_atomic; RELEASE hush_atomic",
            )
        };
        self.conn.execute_batch(begin)?;
        self.depth.set(depth + 1);
        let r = f(self);
        self.depth.set(depth);
        match r {
            Ok(v) => match self.conn.execute_batch(commit) {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.conn.execute_batch(rollback);
                    Err(e.into())
                }
            },
            Err(e) => {
                // Best effort: if the rollback itself fails the connection is
                // unusable and the next statement reports it.
                let _ = self.conn.execute_batch(rollback);
                Err(e)
            }
        }
    }

    // ---- identity -------------------------------------------------------

    /// The stored identity, if any.
    pub fn identity(&self) -> Result<Option<Identity>> {
        self.conn
            .query_row(
                "SELECT user_id, device_id, sig_keypair, server FROM hush_identity WHERE id = 0",
                [],
                |r| {
                    let keypair: Vec<u8> = r.get(2)?;
                    let keys: SignatureKeyPair = serde_json::from_slice(&keypair).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            2,
                            rusqlite::types::Type::Blob,
                            Box::new(e),
                        )
                    })?;
                    Ok(Identity {
                        user_id: r.get(0)?,
                        device_id: r.get(1)?,
                        keys,
                        server: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(Into::into)
    }

    /// The stored identity or [`ClientError::NotRegistered`].
    pub fn require_identity(&self) -> Result<Identity> {
        self.identity()?.ok_or(ClientError::NotRegistered)
    }

    /// Stores the identity (fails if one exists).
    pub fn save_identity(&self, id: &Identity) -> Result<()> {
        if let Some(existing) = self.identity()? {
            return Err(ClientError::AlreadyRegistered(existing.mls_identity()));
        }
        // The key pair's serde form (private + public + scheme) is the only
        // way openmls_basic_credential exports the private key.
        let keypair = serde_json::to_vec(&id.keys)
            .map_err(|e| ClientError::InvalidArgument(format!("encode device key: {e}")))?;
        self.conn.execute(
            "INSERT INTO hush_identity (id, user_id, device_id, sig_keypair, server)
             VALUES (0, ?1, ?2, ?3, ?4)",
            params![id.user_id, id.device_id, keypair, id.server],
        )?;
        Ok(())
    }

    /// Updates the server URL of the identity.
    pub fn set_server(&self, server: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_identity SET server = ?1 WHERE id = 0",
            [server],
        )?;
        Ok(())
    }

    /// The inbox cursor (last processed inbox seq).
    pub fn inbox_seq(&self) -> Result<u64> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT inbox_seq FROM hush_identity WHERE id = 0",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Moves the inbox cursor forward (never backwards).
    pub fn set_inbox_seq(&self, seq: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_identity SET inbox_seq = MAX(inbox_seq, ?1) WHERE id = 0",
            [seq as i64],
        )?;
        Ok(())
    }

    // ---- groups ---------------------------------------------------------

    fn row_to_group(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
        let status: String = r.get(4)?;
        Ok(GroupRow {
            group_id: r.get(0)?,
            name: r.get(1)?,
            joined_seq: r.get::<_, i64>(2)? as u64,
            last_seq: r.get::<_, i64>(3)? as u64,
            status: GroupStatus::parse(&status),
        })
    }

    /// All local groups, oldest first.
    pub fn groups(&self) -> Result<Vec<GroupRow>> {
        let mut st = self.conn.prepare(
            "SELECT group_id, name, joined_seq, last_seq, status FROM hush_groups ORDER BY created_ms, group_id",
        )?;
        let rows = st.query_map([], Self::row_to_group)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    /// One group by id.
    pub fn group(&self, group_id: &[u8]) -> Result<Option<GroupRow>> {
        self.conn
            .query_row(
                "SELECT group_id, name, joined_seq, last_seq, status FROM hush_groups WHERE group_id = ?1",
                [group_id],
                Self::row_to_group,
            )
            .optional()
            .map_err(Into::into)
    }

    /// Inserts or resets a group (joining again after a removal starts a new
    /// membership: new cursor, active status; the name is kept).
    pub fn upsert_group(&self, group_id: &[u8], joined_seq: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO hush_groups (group_id, name, joined_seq, last_seq, status, created_ms)
             VALUES (?1, NULL, ?2, ?2, 'active', ?3)
             ON CONFLICT (group_id) DO UPDATE SET joined_seq = ?2, last_seq = ?2, status = 'active'",
            params![group_id, joined_seq as i64, now_ms() as i64],
        )?;
        Ok(())
    }

    /// Sets the display name of a group.
    pub fn set_group_name(&self, group_id: &[u8], name: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_groups SET name = ?2 WHERE group_id = ?1",
            params![group_id, name],
        )?;
        Ok(())
    }

    /// Moves a group's cursor forward (never backwards).
    pub fn set_last_seq(&self, group_id: &[u8], seq: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_groups SET last_seq = MAX(last_seq, ?2) WHERE group_id = ?1",
            params![group_id, seq as i64],
        )?;
        Ok(())
    }

    /// Sets a group's membership status.
    pub fn set_status(&self, group_id: &[u8], status: GroupStatus) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_groups SET status = ?2 WHERE group_id = ?1",
            params![group_id, status.as_str()],
        )?;
        Ok(())
    }

    /// Resolves what a user typed to one group: a full hex id, an exact
    /// name, or a unique hex-id prefix (in that order). Names and prefixes
    /// only match groups this device is still a member of.
    pub fn resolve_group(&self, query: &str) -> Result<GroupRow> {
        let groups = self.groups()?;
        resolve(&groups, query)
    }

    // ---- own entries, log -------------------------------------------------

    /// Records that `seq` of a group is an entry this device submitted (so
    /// it is skipped when it comes back in the timeline).
    pub fn record_own_seq(&self, group_id: &[u8], seq: u64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO hush_own_seqs (group_id, seq) VALUES (?1, ?2)",
            params![group_id, seq as i64],
        )?;
        Ok(())
    }

    /// Whether `seq` of a group was submitted by this device.
    pub fn is_own_seq(&self, group_id: &[u8], seq: u64) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM hush_own_seqs WHERE group_id = ?1 AND seq = ?2",
                params![group_id, seq as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Appends a line to the local log. `shown` lines (this device's own
    /// actions) are not reported again by [`StateDb::take_unshown`].
    pub fn log(&self, group_id: &[u8], row: &LogRow, shown: bool) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO hush_log (group_id, seq, sender, kind, body, ts_ms, shown)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                group_id,
                row.seq as i64,
                row.sender,
                row.kind,
                row.body,
                row.ts_ms as i64,
                shown
            ],
        )?;
        Ok(())
    }

    /// Marks every log line of one group as reported (the chat UI showed it).
    pub fn mark_shown(&self, group_id: &[u8]) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_log SET shown = 1 WHERE group_id = ?1 AND shown = 0",
            [group_id],
        )?;
        Ok(())
    }

    /// Marks the log lines of one group up to `seq` as reported: an open
    /// chat showed them, so `sync` and `listen` do not print them again
    /// (the read position the chat and the commands share).
    pub fn mark_shown_through(&self, group_id: &[u8], seq: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_log SET shown = 1 WHERE group_id = ?1 AND seq <= ?2 AND shown = 0",
            params![group_id, seq as i64],
        )?;
        Ok(())
    }

    /// Every log line not reported yet, in the order it was recorded, and
    /// marks them reported. (Any command processes what is pending; `sync`
    /// and `listen` report it, so nothing is lost between commands.)
    pub fn take_unshown(&self) -> Result<Vec<(Vec<u8>, LogRow)>> {
        // One transaction: two readers on one home never both report a line.
        self.atomically(|db| db.take_unshown_locked())
    }

    fn take_unshown_locked(&self) -> Result<Vec<(Vec<u8>, LogRow)>> {
        let rows = {
            let mut st = self.conn.prepare(
                "SELECT group_id, seq, sender, kind, body, ts_ms FROM hush_log WHERE shown = 0 ORDER BY rowid",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    LogRow {
                        seq: r.get::<_, i64>(1)? as u64,
                        sender: r.get(2)?,
                        kind: r.get(3)?,
                        body: r.get(4)?,
                        ts_ms: r.get::<_, i64>(5)? as u64,
                    },
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        self.conn
            .execute("UPDATE hush_log SET shown = 1 WHERE shown = 0", [])?;
        Ok(rows)
    }

    // ---- pinned directory, alerts -------------------------------------------

    /// A contact with every device ever pinned for it, if it was ever looked up.
    pub fn contact(&self, user_id: &str) -> Result<Option<Contact>> {
        let head = self
            .conn
            .query_row(
                "SELECT verified, changed, refreshed_ms FROM hush_contacts WHERE user_id = ?1",
                [user_id],
                |r| {
                    Ok((
                        r.get::<_, bool>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, i64>(2)? as u64,
                    ))
                },
            )
            .optional()?;
        let Some((verified, changed, refreshed_ms)) = head else {
            return Ok(None);
        };
        let mut st = self.conn.prepare(
            "SELECT device_id, signature_key, current, first_seen_ms FROM hush_contact_devices
             WHERE user_id = ?1 ORDER BY device_id",
        )?;
        let devices = st
            .query_map([user_id], |r| {
                Ok(PinnedDevice {
                    device_id: r.get(0)?,
                    signature_key: r.get(1)?,
                    current: r.get(2)?,
                    first_seen_ms: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(Contact {
            user_id: user_id.to_string(),
            verified,
            changed,
            refreshed_ms,
            devices,
        }))
    }

    /// Every contact ever looked up, by user id.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let users = {
            let mut st = self
                .conn
                .prepare("SELECT user_id FROM hush_contacts ORDER BY user_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut out = Vec::new();
        for u in users {
            out.extend(self.contact(&u)?);
        }
        Ok(out)
    }

    /// Creates or updates a contact's flags.
    pub fn put_contact(
        &self,
        user_id: &str,
        verified: bool,
        changed: bool,
        refreshed_ms: u64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO hush_contacts (user_id, verified, changed, refreshed_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id) DO UPDATE SET verified = ?2, changed = ?3, refreshed_ms = ?4",
            params![user_id, verified, changed, refreshed_ms as i64],
        )?;
        Ok(())
    }

    /// Pins a device of a contact as current with this key (a new device, or
    /// a known one whose key the directory changed).
    pub fn pin_device(
        &self,
        user_id: &str,
        device_id: &str,
        key: &[u8],
        now_ms: u64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO hush_contact_devices (user_id, device_id, signature_key, current, first_seen_ms)
             VALUES (?1, ?2, ?3, 1, ?4)
             ON CONFLICT (user_id, device_id) DO UPDATE SET signature_key = ?3, current = 1",
            params![user_id, device_id, key, now_ms as i64],
        )?;
        Ok(())
    }

    /// Marks a pinned device as no longer current (revoked).
    pub fn unpin_device(&self, user_id: &str, device_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE hush_contact_devices SET current = 0 WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device_id],
        )?;
        Ok(())
    }

    /// Raises an alert (shown once by [`StateDb::take_alerts`]).
    pub fn add_alert(&self, user_id: &str, kind: &str, body: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO hush_alerts (user_id, kind, body, ts_ms) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, kind, body, now_ms() as i64],
        )?;
        Ok(())
    }

    /// Every alert not shown yet, oldest first, and marks them shown.
    pub fn take_alerts(&self) -> Result<Vec<Alert>> {
        self.atomically(|db| db.take_alerts_locked())
    }

    fn take_alerts_locked(&self) -> Result<Vec<Alert>> {
        let rows = {
            let mut st = self.conn.prepare(
                "SELECT id, user_id, kind, body, ts_ms FROM hush_alerts WHERE shown = 0 ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Alert {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    kind: r.get(2)?,
                    body: r.get(3)?,
                    ts_ms: r.get::<_, i64>(4)? as u64,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        if let Some(last) = rows.last() {
            self.conn.execute(
                "UPDATE hush_alerts SET shown = 1 WHERE shown = 0 AND id <= ?1",
                [last.id],
            )?;
        }
        Ok(rows)
    }

    /// The last `limit` log lines of a group, in seq order.
    pub fn recent_log(&self, group_id: &[u8], limit: usize) -> Result<Vec<LogRow>> {
        let mut st = self.conn.prepare(
            "SELECT seq, sender, kind, body, ts_ms FROM hush_log WHERE group_id = ?1
             ORDER BY seq DESC, kind LIMIT ?2",
        )?;
        let rows = st.query_map(params![group_id, limit as i64], |r| {
            Ok(LogRow {
                seq: r.get::<_, i64>(0)? as u64,
                sender: r.get(1)?,
                kind: r.get(2)?,
                body: r.get(3)?,
                ts_ms: r.get::<_, i64>(4)? as u64,
            })
        })?;
        let mut v = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        v.reverse();
        Ok(v)
    }
}

/// Group resolution over a list (pure, unit-tested): a full hex id (any
/// status), else an exact name, else a unique hex-id prefix, among active
/// groups. A name or prefix that matches only groups this device is no
/// longer in says so ([`ClientError::NoLongerMember`]); one that matches
/// several active groups lists them with their ids.
pub fn resolve(groups: &[GroupRow], query: &str) -> Result<GroupRow> {
    let q = query.trim();
    if q.is_empty() {
        return Err(ClientError::InvalidArgument("empty group name".into()));
    }
    let lower = q.to_ascii_lowercase();
    if let Some(g) = groups.iter().find(|g| g.hex_id() == lower) {
        return Ok(g.clone());
    }
    let is_hex = lower.chars().all(|c| c.is_ascii_hexdigit());
    let by_name = |g: &&GroupRow| g.name.as_deref() == Some(q);
    let by_prefix = |g: &&GroupRow| is_hex && g.hex_id().starts_with(&lower);
    for matches in [&by_name as &dyn Fn(&&GroupRow) -> bool, &by_prefix] {
        let active: Vec<&GroupRow> = groups
            .iter()
            .filter(|g| g.status == GroupStatus::Active)
            .filter(matches)
            .collect();
        match active.len() {
            1 => return Ok(active[0].clone()),
            0 => {}
            _ => {
                return Err(ClientError::AmbiguousGroup {
                    query: q.to_string(),
                    candidates: active
                        .iter()
                        .map(|g| (g.display_name(), g.hex_id()))
                        .collect(),
                })
            }
        }
    }
    // Only groups this device is no longer in: say so (the latest one).
    if let Some(g) = groups
        .iter()
        .filter(|g| g.status != GroupStatus::Active)
        .filter(|g| by_name(g) || by_prefix(g))
        .max_by_key(|g| g.last_seq)
    {
        return Err(ClientError::NoLongerMember {
            name: g.display_name(),
            left: g.status == GroupStatus::Left,
        });
    }
    Err(ClientError::GroupNotFound(q.to_string()))
}

/// Wall clock, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_traits::types::SignatureScheme;

    fn row(id: &[u8], name: Option<&str>, status: GroupStatus) -> GroupRow {
        GroupRow {
            group_id: id.to_vec(),
            name: name.map(str::to_string),
            joined_seq: 0,
            last_seq: 0,
            status,
        }
    }

    #[test]
    fn resolves_by_id_name_and_prefix() {
        let groups = vec![
            row(&[0xab, 0x01], Some("friends"), GroupStatus::Active),
            row(&[0xab, 0x02], Some("work"), GroupStatus::Active),
            row(&[0xcd, 0x03], Some("work"), GroupStatus::Left),
            row(&[0xef, 0x04], None, GroupStatus::Active),
        ];
        assert_eq!(resolve(&groups, "ab01").unwrap().group_id, vec![0xab, 0x01]);
        assert_eq!(resolve(&groups, "AB02").unwrap().group_id, vec![0xab, 0x02]);
        assert_eq!(
            resolve(&groups, "friends").unwrap().group_id,
            vec![0xab, 0x01]
        );
        // The left group with the same name does not make "work" ambiguous.
        assert_eq!(resolve(&groups, "work").unwrap().group_id, vec![0xab, 0x02]);
        // But its full id still resolves.
        assert_eq!(resolve(&groups, "cd03").unwrap().status, GroupStatus::Left);
        assert_eq!(resolve(&groups, "e").unwrap().group_id, vec![0xef, 0x04]);
        assert!(matches!(
            resolve(&groups, "ab"),
            Err(ClientError::AmbiguousGroup { candidates, .. }) if candidates.len() == 2
        ));
        assert!(matches!(
            resolve(&groups, "nope"),
            Err(ClientError::GroupNotFound(_))
        ));
        // A name only a group this device left carries says so.
        let mut only_left = groups.clone();
        only_left.retain(|g| g.group_id != [0xab, 0x02]);
        assert_eq!(
            resolve(&only_left, "work").unwrap_err().to_string(),
            "you left work"
        );
        let removed = vec![row(&[0x12], Some("friends"), GroupStatus::Removed)];
        assert_eq!(
            resolve(&removed, "friends").unwrap_err().to_string(),
            "you were removed from friends"
        );
        assert!(matches!(
            resolve(&groups, "  "),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[test]
    fn duplicate_names_are_ambiguous() {
        let groups = vec![
            row(&[1], Some("x"), GroupStatus::Active),
            row(&[2], Some("x"), GroupStatus::Active),
        ];
        assert!(matches!(
            resolve(&groups, "x"),
            Err(ClientError::AmbiguousGroup { .. })
        ));
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = StateDb::open(dir.path()).unwrap();
            assert!(db.identity().unwrap().is_none());
            let keys = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
            db.save_identity(&Identity {
                user_id: "alice".into(),
                device_id: "00112233aabbccdd".into(),
                keys,
                server: "http://127.0.0.1:7300".into(),
            })
            .unwrap();
            assert!(matches!(
                db.save_identity(&db.require_identity().unwrap()),
                Err(ClientError::AlreadyRegistered(_))
            ));
            db.upsert_group(b"g1", 3).unwrap();
            db.set_group_name(b"g1", "friends").unwrap();
            db.set_last_seq(b"g1", 7).unwrap();
            db.set_last_seq(b"g1", 5).unwrap(); // never backwards
            db.record_own_seq(b"g1", 6).unwrap();
            db.set_inbox_seq(4).unwrap();
            db.set_inbox_seq(2).unwrap();
            db.log(
                b"g1",
                &LogRow {
                    seq: 6,
                    sender: "alice".into(),
                    kind: "text".into(),
                    body: "hi".into(),
                    ts_ms: 1,
                },
                false,
            )
            .unwrap();
        }
        let db = StateDb::open(dir.path()).unwrap();
        let id = db.require_identity().unwrap();
        assert_eq!(id.mls_identity(), "alice/00112233aabbccdd");
        assert_eq!(id.keys.public().len(), 32);
        assert!(format!("{id:?}").contains("keys: \"***\""));
        let g = db.group(b"g1").unwrap().unwrap();
        assert_eq!(g.name.as_deref(), Some("friends"));
        assert_eq!((g.joined_seq, g.last_seq), (3, 7));
        assert_eq!(g.status, GroupStatus::Active);
        assert!(db.is_own_seq(b"g1", 6).unwrap());
        assert!(!db.is_own_seq(b"g1", 7).unwrap());
        assert_eq!(db.inbox_seq().unwrap(), 4);
        assert_eq!(db.recent_log(b"g1", 10).unwrap()[0].body, "hi");
        let unshown = db.take_unshown().unwrap();
        assert_eq!(unshown.len(), 1);
        assert_eq!(unshown[0].1.seq, 6);
        assert!(db.take_unshown().unwrap().is_empty());
        assert_eq!(
            db.resolve_group("friends").unwrap().group_id,
            b"g1".to_vec()
        );
        db.set_status(b"g1", GroupStatus::Left).unwrap();
        assert_eq!(db.group(b"g1").unwrap().unwrap().status, GroupStatus::Left);
        // Re-joining resets the cursor and status but keeps the name.
        db.upsert_group(b"g1", 20).unwrap();
        let g = db.group(b"g1").unwrap().unwrap();
        assert_eq!(
            (g.last_seq, g.status, g.name.as_deref()),
            (20, GroupStatus::Active, Some("friends"))
        );
    }

    #[test]
    fn what_a_chat_showed_is_not_reported_again() {
        let db = StateDb::open_in_memory().unwrap();
        let line = |seq| LogRow {
            seq,
            sender: "bob".into(),
            kind: "text".into(),
            body: format!("m{seq}"),
            ts_ms: seq,
        };
        for seq in 1..=3 {
            db.log(b"g", &line(seq), false).unwrap();
        }
        db.log(b"h", &line(1), false).unwrap();
        // The chat showed g up to seq 2.
        db.mark_shown_through(b"g", 2).unwrap();
        let left: Vec<(Vec<u8>, u64)> = db
            .take_unshown()
            .unwrap()
            .into_iter()
            .map(|(g, r)| (g, r.seq))
            .collect();
        assert_eq!(left, vec![(b"g".to_vec(), 3), (b"h".to_vec(), 1)]);
    }

    #[test]
    fn atomically_rolls_back_on_error() {
        let db = StateDb::open_in_memory().unwrap();
        db.upsert_group(b"g", 0).unwrap();
        let r: Result<()> = db.atomically(|db| {
            db.set_last_seq(b"g", 9)?;
            Err(ClientError::Mls("boom".into()))
        });
        assert!(r.is_err());
        assert_eq!(db.group(b"g").unwrap().unwrap().last_seq, 0);
        db.atomically(|db| {
            db.atomically(|db| db.set_last_seq(b"g", 2))?;
            db.set_last_seq(b"g", 3)
        })
        .unwrap();
        assert_eq!(db.group(b"g").unwrap().unwrap().last_seq, 3);
    }
}
