//! The embedded backend: SQLite (rusqlite, bundled) in WAL mode.
//!
//! # Shape
//!
//! - **One writer thread per store.** Every write is an operation sent over a
//!   bounded channel to a dedicated `std::thread` that owns the only write
//!   connection. The writer drains up to [`SqliteConfig::max_batch`] queued
//!   operations, runs them in one `BEGIN IMMEDIATE` transaction with a
//!   `SAVEPOINT` per operation (a failing operation rolls back alone), commits
//!   once with `synchronous=FULL`, and only then replies to every caller
//!   (group commit: one fsync per batch, durable before any ack).
//! - **Readers.** A small pool of `query_only` connections used through
//!   `spawn_blocking`; WAL lets them read while the writer writes. At most
//!   [`SqliteConfig::readers`] reads run at once.
//! - **Several processes, one file.** Correctness never relies on in-process
//!   state: seqs, fences, epochs, dedup and key-package claims are all decided
//!   from rows read inside the write transaction, and SQLite's file locking
//!   (`BEGIN IMMEDIATE` plus the busy timeout) serializes writers across
//!   processes.
//!
//! # Invariants
//!
//! - Nothing is replied to a writer's caller before the batch's `COMMIT`
//!   returned; if the batch fails, every operation that succeeded inside it
//!   gets the batch's error instead (operations that failed on their own keep
//!   their own error: they wrote nothing either way).
//! - `groups.head_seq` is the largest seq in `entries` for the group; both are
//!   only changed together, inside the writer transaction.
//! - `inbox_counters.last_seq` only grows, so an inbox_seq is never reused
//!   even after `ack_inbox` deletes the items.
//! - Claimed ordinary key packages leave a tombstone (their hash_ref), so a
//!   re-upload of a claimed package is skipped and it is never handed out
//!   twice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    AppendOutcome, ClaimedKeyPackage, CommitWrite, Departure, Device, DeviceGroup, Entry,
    EntryKind, GroupRecord, InboxItem, KeyPackageRecord, Lease, MemberDevice, NewEntry, NewGroup,
    Result, Store, StoreError,
};

/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Configuration of a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file (its parent directory is created if missing).
    pub path: PathBuf,
    /// The most write operations committed in one transaction.
    pub max_batch: usize,
    /// The most reads running at once (each on its own connection).
    pub readers: usize,
    /// How long a connection waits for another connection's (or process's)
    /// lock before failing with [`StoreError::Unavailable`].
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    pub const DEFAULT_MAX_BATCH: usize = 256;
    pub const DEFAULT_READERS: usize = 4;
    pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

    /// A configuration with the defaults for everything but the path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_batch: Self::DEFAULT_MAX_BATCH,
            readers: Self::DEFAULT_READERS,
            busy_timeout: Self::DEFAULT_BUSY_TIMEOUT,
        }
    }
}

/// The embedded [`Store`] backend. See the module docs.
pub struct SqliteStore {
    writes: mpsc::Sender<Box<dyn PendingOp>>,
    writer: JoinHandle<()>,
    readers: Arc<ReaderPool>,
    read_permits: Arc<Semaphore>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `config.path`, switches it
    /// to WAL, creates or migrates the schema and starts the writer thread.
    /// Safe to call from several processes on the same file at once.
    pub async fn open(config: SqliteConfig) -> Result<SqliteStore> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| StoreError::Backend(format!("open task failed: {e}")))?
    }

    fn open_blocking(config: SqliteConfig) -> Result<SqliteStore> {
        if let Some(parent) = config.path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("create directory {}: {e}", parent.display()))
                })?;
            }
        }
        let conn = open_connection(&config.path, config.busy_timeout, false)?;
        migrate(&conn)?;

        let readers = config.readers.max(1);
        let pool = Arc::new(ReaderPool {
            path: config.path.clone(),
            busy_timeout: config.busy_timeout,
            idle: Mutex::new(Vec::with_capacity(readers)),
        });
        // Open one reader eagerly so a bad path fails here, not on first read.
        let first = open_connection(&config.path, config.busy_timeout, true)?;
        pool.put_back(first);

        let max_batch = config.max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(4));
        let writer = std::thread::Builder::new()
            .name("hush-store-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch))
            .map_err(|e| StoreError::Backend(format!("spawn writer thread: {e}")))?;
        tracing::debug!(path = %config.path.display(), max_batch, readers, "sqlite store open");
        Ok(SqliteStore {
            writes: tx,
            writer,
            readers: pool,
            read_permits: Arc::new(Semaphore::new(readers)),
        })
    }

    /// Stops accepting writes, lets the writer commit everything already
    /// queued and waits for its thread to exit. Dropping the store does the
    /// same without waiting.
    pub async fn close(self) -> Result<()> {
        let SqliteStore { writes, writer, .. } = self;
        drop(writes);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| StoreError::Backend(format!("close task failed: {e}")))?
            .map_err(|_| StoreError::Backend("writer thread panicked".into()))
    }

    /// Runs `f` inside the writer's next batch, in its own savepoint.
    async fn write<T, F>(&self, name: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Box::new(Op {
            name,
            f: Some(f),
            result: None,
            reply,
        });
        self.writes
            .send(op)
            .await
            .map_err(|_| StoreError::Unavailable("sqlite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped before replying".into()))?
    }

    /// Runs `f` on a read-only connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("sqlite readers closed".into()))?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.with(f)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

// ----------------------------------------------------------------------------
// connections and schema

fn open_connection(path: &Path, busy_timeout: Duration, reader: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| map_err(&format!("open {}", path.display()), e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| map_err("set busy_timeout", e))?;
    let mode = set_wal(&conn, busy_timeout)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(|e| map_err("set pragmas", e))?;
    if reader {
        conn.execute_batch("PRAGMA query_only=ON;")
            .map_err(|e| map_err("set query_only", e))?;
    }
    Ok(conn)
}

/// Switches the file to WAL (persistent in the file; a no-op once done).
///
/// When several processes open a fresh file at once, the switch can fail
/// with "database is locked" without SQLite calling the busy handler, so it
/// is retried here until the busy timeout is spent.
fn set_wal(conn: &Connection, busy_timeout: Duration) -> Result<String> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(1);
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => return Ok(mode),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && started.elapsed() < busy_timeout =>
            {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(map_err("set journal_mode=WAL", e)),
        }
    }
}

const SCHEMA_V1: &str = r#"
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE devices (
    id               INTEGER PRIMARY KEY,
    device_id        TEXT NOT NULL UNIQUE,
    user_id          TEXT NOT NULL REFERENCES users(user_id),
    signature_key    BLOB NOT NULL,
    token_generation INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL
);
CREATE INDEX devices_by_user ON devices(user_id, id);
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE link_codes (
    code_hash     BLOB PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL,
    hash_ref    BLOB NOT NULL UNIQUE,
    data        BLOB NOT NULL,
    last_resort INTEGER NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages(device_id) WHERE last_resort = 1;
CREATE TABLE key_package_tombstones (
    hash_ref BLOB PRIMARY KEY NOT NULL
);
CREATE TABLE groups (
    group_id         BLOB PRIMARY KEY NOT NULL,
    epoch            INTEGER NOT NULL,
    state            BLOB NOT NULL,
    group_info       BLOB NOT NULL,
    ratchet_tree     BLOB NOT NULL,
    head_seq         INTEGER NOT NULL,
    lease_owner      TEXT NOT NULL,
    lease_token      INTEGER NOT NULL,
    lease_expires_ms INTEGER NOT NULL
);
CREATE TABLE entries (
    group_id       BLOB NOT NULL REFERENCES groups(group_id),
    seq            INTEGER NOT NULL,
    kind           INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    sender         TEXT NOT NULL,
    client_msg_id  BLOB NOT NULL,
    message        BLOB NOT NULL,
    server_time_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq),
    UNIQUE (group_id, client_msg_id)
);
CREATE TABLE members (
    group_id   BLOB NOT NULL REFERENCES groups(group_id),
    device_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX members_by_device ON members(device_id, group_id);
-- A removed device may still read its group up to the commit that removed
-- it; the row goes when its cursor reaches left_seq.
CREATE TABLE departures (
    device_id  TEXT NOT NULL,
    group_id   BLOB NOT NULL REFERENCES groups(group_id),
    joined_seq INTEGER NOT NULL,
    left_seq   INTEGER NOT NULL,
    PRIMARY KEY (device_id, group_id)
);
CREATE TABLE cursors (
    device_id TEXT NOT NULL,
    group_id  BLOB NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (device_id, group_id)
);
CREATE TABLE inbox (
    device_id    TEXT NOT NULL,
    inbox_seq    INTEGER NOT NULL,
    group_id     BLOB NOT NULL,
    commit_seq   INTEGER NOT NULL,
    welcome      BLOB NOT NULL,
    ratchet_tree BLOB NOT NULL,
    PRIMARY KEY (device_id, inbox_seq)
);
CREATE TABLE inbox_counters (
    device_id TEXT PRIMARY KEY NOT NULL,
    last_seq  INTEGER NOT NULL
);
"#;

/// Creates or upgrades the schema. Idempotent, and safe against another
/// process doing the same at the same time (the check and the DDL share one
/// `BEGIN IMMEDIATE` transaction).
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| map_err("begin migration", e))?;
    let result = (|| {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| map_err("read schema version", e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this binary's {SCHEMA_VERSION}"
            )));
        }
        if version < 1 {
            conn.execute_batch(SCHEMA_V1)
                .map_err(|e| map_err("create schema v1", e))?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| map_err("write schema version", e))?;
        Ok(())
    })();
    match result {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(|e| map_err("commit migration", e)),
        Err(e) => {
            // Best effort: the error above is the one worth reporting.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

struct ReaderPool {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, self.busy_timeout, true),
        }
    }

    fn put_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.take()?;
        let result = f(&conn);
        // A read that left a transaction open would pin an old snapshot:
        // drop that connection rather than reuse it.
        if conn.is_autocommit() {
            self.put_back(conn);
        }
        result
    }
}

// ----------------------------------------------------------------------------
// the writer

/// A queued write: runs once inside the batch, replies once after it.
trait PendingOp: Send {
    fn name(&self) -> &'static str;
    /// Runs the operation; `true` if it succeeded (its savepoint is kept).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Replies to the caller. `batch_error` is set when the batch did not
    /// commit.
    fn finish(self: Box<Self>, batch_error: Option<&StoreError>);
}

struct Op<T, F> {
    name: &'static str,
    f: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> PendingOp for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let result = match self.f.take() {
            Some(f) => f(conn),
            None => Err(StoreError::Backend("write operation ran twice".into())),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, batch_error: Option<&StoreError>) {
        let reply = match (self.result, batch_error) {
            // An operation that failed on its own wrote nothing either way.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), None) => Ok(value),
            (_, Some(batch)) => Err(replicate(batch)),
            (None, None) => Err(StoreError::Backend(
                "write operation panicked or never ran".into(),
            )),
        };
        // The caller may have gone away (its future was dropped); the write
        // is committed regardless, like any request whose ack was lost.
        let _ = self.reply.send(reply);
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Box<dyn PendingOp>>, max_batch: usize) {
    while let Some(batch) = next_batch(&mut rx, max_batch) {
        run_batch(&conn, batch);
    }
    tracing::debug!("sqlite writer stopped");
}

/// Waits for one operation, then takes whatever else is already queued, up
/// to `max_batch` in all. `None` once the queue is closed and empty.
fn next_batch(
    rx: &mut mpsc::Receiver<Box<dyn PendingOp>>,
    max_batch: usize,
) -> Option<Vec<Box<dyn PendingOp>>> {
    let first = rx.blocking_recv()?;
    let mut batch = Vec::with_capacity(max_batch.min(64));
    batch.push(first);
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Runs `ops` in one transaction, one savepoint each, commits, then replies.
fn run_batch(conn: &Connection, mut ops: Vec<Box<dyn PendingOp>>) {
    let started = Instant::now();
    let size = ops.len();
    let batch_error = run_ops(conn, &mut ops);
    if let Some(e) = &batch_error {
        tracing::warn!(error = %e, size, "sqlite write batch failed");
    }
    metrics::histogram!("hush_store_batch_size").record(size as f64);
    metrics::histogram!("hush_store_batch_seconds").record(started.elapsed().as_secs_f64());
    for op in ops {
        metrics::counter!("hush_store_ops_total", "op" => op.name()).increment(1);
        op.finish(batch_error.as_ref());
    }
}

/// The transaction part of [`run_batch`]: `None` when the batch committed.
fn run_ops(conn: &Connection, ops: &mut [Box<dyn PendingOp>]) -> Option<StoreError> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Some(map_err("begin write batch", e));
    }
    let mut failure = None;
    for op in ops.iter_mut() {
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            failure = Some(map_err("savepoint", e));
            break;
        }
        // A panicking operation is a bug; it fails alone instead of taking
        // the writer thread (and every later write) down with it.
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn)))
            .unwrap_or(false);
        let end = if ok {
            conn.execute_batch("RELEASE op")
        } else {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
        };
        if let Err(e) = end {
            failure = Some(map_err(&format!("end savepoint of {}", op.name()), e));
            break;
        }
    }
    if failure.is_none() {
        match conn.execute_batch("COMMIT") {
            Ok(()) => return None,
            Err(e) => failure = Some(map_err("commit write batch", e)),
        }
    }
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
    }
    failure
}

// ----------------------------------------------------------------------------
// errors and conversions

fn map_err(context: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("{context}: {e}"))
        }
        _ => StoreError::Backend(format!("{context}: {e}")),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            f.code == ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
        }
        _ => false,
    }
}

/// Maps a UNIQUE/PRIMARY KEY violation to `AlreadyExists`, anything else
/// like [`map_err`].
fn map_insert_err(context: &str, e: rusqlite::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::AlreadyExists
    } else {
        map_err(context, e)
    }
}

fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::AlreadyExists => StoreError::AlreadyExists,
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Fenced { owner, token } => StoreError::Fenced {
            owner: owner.clone(),
            token: *token,
        },
        StoreError::EpochConflict {
            current_epoch,
            head_seq,
        } => StoreError::EpochConflict {
            current_epoch: *current_epoch,
            head_seq: *head_seq,
        },
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Backend(m) => StoreError::Backend(m.clone()),
    }
}

/// A deadline as stored: SQLite integers are i64, and a deadline past
/// `i64::MAX` ms is as good as never.
fn deadline(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn stored_deadline(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn next(value: u64, what: &str) -> Result<u64> {
    value
        .checked_add(1)
        .ok_or_else(|| StoreError::Backend(format!("{what} overflow")))
}

// ----------------------------------------------------------------------------
// operations (each runs on the writer connection inside its savepoint, or on
// a reader connection)

fn insert_device(conn: &Connection, d: &Device) -> Result<()> {
    conn.execute(
        "INSERT INTO devices (device_id, user_id, signature_key, token_generation, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            d.device_id,
            d.user_id,
            d.signature_key,
            d.token_generation,
            d.created_at_ms
        ],
    )
    .map_err(|e| map_insert_err("insert device", e))?;
    Ok(())
}

fn op_create_user(conn: &Connection, d: &Device) -> Result<()> {
    conn.execute(
        "INSERT INTO users (user_id, created_at_ms) VALUES (?1, ?2)",
        params![d.user_id, d.created_at_ms],
    )
    .map_err(|e| map_insert_err("insert user", e))?;
    insert_device(conn, d)
}

fn op_add_device(conn: &Connection, d: &Device) -> Result<()> {
    let user: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM users WHERE user_id = ?1",
            params![d.user_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| map_err("find user", e))?;
    if user.is_none() {
        return Err(StoreError::NotFound);
    }
    insert_device(conn, d)
}

fn row_to_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        user_id: r.get(0)?,
        device_id: r.get(1)?,
        signature_key: r.get(2)?,
        token_generation: r.get(3)?,
        created_at_ms: r.get(4)?,
    })
}

fn op_bump_token_generation(conn: &Connection, device_id: &str) -> Result<u64> {
    conn.query_row(
        "UPDATE devices SET token_generation = token_generation + 1 WHERE device_id = ?1
         RETURNING token_generation",
        params![device_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("bump token generation", e))?
    .ok_or(StoreError::NotFound)
}

fn op_get_or_create_secret(conn: &Connection, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
    conn.execute(
        "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, candidate],
    )
    .map_err(|e| map_err("insert secret", e))?;
    conn.query_row(
        "SELECT value FROM secrets WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
    .map_err(|e| map_err("read secret", e))
}

fn op_take_link_code(conn: &Connection, code_hash: &[u8], now_ms: u64) -> Result<Option<String>> {
    let row: Option<(String, i64)> = conn
        .query_row(
            "DELETE FROM link_codes WHERE code_hash = ?1 RETURNING user_id, expires_at_ms",
            params![code_hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| map_err("take link code", e))?;
    Ok(row.and_then(|(user, expires)| (deadline(now_ms) < expires).then_some(user)))
}

fn unclaimed_count(conn: &Connection, device_id: &str) -> Result<u32> {
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND last_resort = 0",
            params![device_id],
            |r| r.get(0),
        )
        .map_err(|e| map_err("count key packages", e))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn key_package_known(conn: &Connection, hash_ref: &[u8]) -> Result<bool> {
    let known: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM key_packages WHERE hash_ref = ?1
             UNION ALL SELECT 1 FROM key_package_tombstones WHERE hash_ref = ?1 LIMIT 1",
            params![hash_ref],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| map_err("look up key package", e))?;
    Ok(known.is_some())
}

fn op_put_key_packages(
    conn: &Connection,
    device_id: &str,
    packages: &[KeyPackageRecord],
    last_resort: Option<&KeyPackageRecord>,
) -> Result<u32> {
    for p in packages {
        if key_package_known(conn, &p.hash_ref)? {
            continue;
        }
        conn.execute(
            "INSERT INTO key_packages (device_id, hash_ref, data, last_resort) VALUES (?1, ?2, ?3, 0)",
            params![device_id, p.hash_ref, p.data],
        )
        .map_err(|e| map_err("insert key package", e))?;
    }
    if let Some(lr) = last_resort {
        // A hash_ref already stored (this very last-resort package, or any
        // other package) or already claimed is skipped like any duplicate;
        // the device keeps its current last-resort package then.
        if !key_package_known(conn, &lr.hash_ref)? {
            conn.execute(
                "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                params![device_id],
            )
            .map_err(|e| map_err("delete last-resort key package", e))?;
            conn.execute(
                "INSERT INTO key_packages (device_id, hash_ref, data, last_resort) VALUES (?1, ?2, ?3, 1)",
                params![device_id, lr.hash_ref, lr.data],
            )
            .map_err(|e| map_err("insert last-resort key package", e))?;
        }
    }
    unclaimed_count(conn, device_id)
}

fn op_claim_key_package(conn: &Connection, device_id: &str) -> Result<Option<ClaimedKeyPackage>> {
    let oldest: Option<(i64, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT id, hash_ref, data FROM key_packages
             WHERE device_id = ?1 AND last_resort = 0 ORDER BY id LIMIT 1",
            params![device_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| map_err("find key package", e))?;
    if let Some((id, hash_ref, data)) = oldest {
        conn.execute("DELETE FROM key_packages WHERE id = ?1", params![id])
            .map_err(|e| map_err("delete claimed key package", e))?;
        conn.execute(
            "INSERT INTO key_package_tombstones (hash_ref) VALUES (?1) ON CONFLICT DO NOTHING",
            params![hash_ref],
        )
        .map_err(|e| map_err("tombstone claimed key package", e))?;
        return Ok(Some(ClaimedKeyPackage {
            data,
            last_resort: false,
        }));
    }
    let last_resort: Option<Vec<u8>> = conn
        .query_row(
            "SELECT data FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| map_err("find last-resort key package", e))?;
    Ok(last_resort.map(|data| ClaimedKeyPackage {
        data,
        last_resort: true,
    }))
}

fn read_key_package_count(conn: &Connection, device_id: &str) -> Result<(u32, bool)> {
    let n = unclaimed_count(conn, device_id)?;
    let lr: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
            params![device_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| map_err("find last-resort key package", e))?;
    Ok((n, lr.is_some()))
}

fn op_create_group(conn: &Connection, g: &GroupRecord) -> Result<()> {
    // The timeline of a new group is empty whatever head_seq says: seqs are
    // the store's to assign. No lease: the owner must acquire one.
    conn.execute(
        "INSERT INTO groups (group_id, epoch, state, group_info, ratchet_tree, head_seq,
                             lease_owner, lease_token, lease_expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, '', 0, 0)",
        params![g.group_id, g.epoch, g.state, g.group_info, g.ratchet_tree],
    )
    .map_err(|e| map_insert_err("insert group", e))?;
    for m in &g.members {
        insert_member(conn, &g.group_id, m, 0)?;
    }
    Ok(())
}

fn insert_member(conn: &Connection, group_id: &[u8], m: &MemberDevice, joined: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO members (group_id, device_id, user_id, joined_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, device_id) DO NOTHING",
        params![group_id, m.device_id, m.user_id, joined],
    )
    .map_err(|e| map_err("insert member", e))?;
    Ok(())
}

fn read_group(conn: &Connection, group_id: &[u8]) -> Result<Option<GroupRecord>> {
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| map_err("begin read", e))?;
    let group = tx
        .query_row(
            "SELECT epoch, state, group_info, ratchet_tree, head_seq FROM groups WHERE group_id = ?1",
            params![group_id],
            |r| {
                Ok(GroupRecord {
                    group_id: group_id.to_vec(),
                    epoch: r.get(0)?,
                    state: r.get(1)?,
                    group_info: r.get(2)?,
                    ratchet_tree: r.get(3)?,
                    head_seq: r.get(4)?,
                    members: Vec::new(),
                })
            },
        )
        .optional()
        .map_err(|e| map_err("read group", e))?;
    let Some(mut group) = group else {
        return Ok(None);
    };
    let mut stmt = tx
        .prepare_cached("SELECT user_id, device_id FROM members WHERE group_id = ?1")
        .map_err(|e| map_err("read members", e))?;
    let mut members = stmt
        .query_map(params![group_id], |r| {
            Ok(MemberDevice {
                user_id: r.get(0)?,
                device_id: r.get(1)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| map_err("read members", e))?;
    members.sort();
    group.members = members;
    Ok(Some(group))
}

struct LeaseRow {
    owner: String,
    token: u64,
    expires_ms: i64,
}

fn lease_row(conn: &Connection, group_id: &[u8]) -> Result<Option<LeaseRow>> {
    conn.query_row(
        "SELECT lease_owner, lease_token, lease_expires_ms FROM groups WHERE group_id = ?1",
        params![group_id],
        |r| {
            Ok(LeaseRow {
                owner: r.get(0)?,
                token: r.get(1)?,
                expires_ms: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(|e| map_err("read lease", e))
}

fn op_acquire_lease(
    conn: &Connection,
    group_id: &[u8],
    owner: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Lease> {
    let cur = lease_row(conn, group_id)?.ok_or(StoreError::NotFound)?;
    let now = deadline(now_ms);
    let wanted = deadline(now_ms.saturating_add(ttl_ms));
    let (token, expires) = if cur.token != 0 && cur.owner == owner {
        // Renewal (also after the owner's own lease lapsed: nobody else took
        // it in between, so ownership never changed hands). Never shorten.
        (cur.token, wanted.max(cur.expires_ms))
    } else if cur.token != 0 && now < cur.expires_ms {
        return Err(StoreError::Fenced {
            owner: cur.owner,
            token: cur.token,
        });
    } else {
        (next(cur.token, "lease token")?, wanted)
    };
    conn.execute(
        "UPDATE groups SET lease_owner = ?2, lease_token = ?3, lease_expires_ms = ?4
         WHERE group_id = ?1",
        params![group_id, owner, token, expires],
    )
    .map_err(|e| map_err("write lease", e))?;
    Ok(Lease {
        owner: owner.to_string(),
        token,
        expires_at_ms: stored_deadline(expires),
    })
}

fn op_release_lease(conn: &Connection, group_id: &[u8], owner: &str, token: u64) -> Result<()> {
    conn.execute(
        "UPDATE groups SET lease_expires_ms = 0
         WHERE group_id = ?1 AND lease_owner = ?2 AND lease_token = ?3",
        params![group_id, owner, token],
    )
    .map_err(|e| map_err("release lease", e))?;
    Ok(())
}

/// The group's head as seen inside the write transaction, after the fence
/// check passed.
struct Head {
    epoch: u64,
    head_seq: u64,
}

/// Checks `fence` against the lease token stored *now* (inside the write
/// transaction). Token 0 means no lease was ever taken: nobody may append.
fn check_fence(conn: &Connection, group_id: &[u8], fence: u64) -> Result<Head> {
    let row: Option<(u64, u64, String, u64)> = conn
        .query_row(
            "SELECT epoch, head_seq, lease_owner, lease_token FROM groups WHERE group_id = ?1",
            params![group_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(|e| map_err("read group head", e))?;
    let (epoch, head_seq, owner, token) = row.ok_or(StoreError::NotFound)?;
    if token == 0 || fence != token {
        return Err(StoreError::Fenced { owner, token });
    }
    Ok(Head { epoch, head_seq })
}

fn existing_seq(conn: &Connection, group_id: &[u8], client_msg_id: &[u8]) -> Result<Option<u64>> {
    conn.query_row(
        "SELECT seq FROM entries WHERE group_id = ?1 AND client_msg_id = ?2",
        params![group_id, client_msg_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("look up client message id", e))
}

fn insert_entry(conn: &Connection, group_id: &[u8], seq: u64, e: &NewEntry) -> Result<()> {
    conn.execute(
        "INSERT INTO entries (group_id, seq, kind, epoch, sender, client_msg_id, message, server_time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            group_id,
            seq,
            e.kind as i64,
            e.epoch,
            e.sender,
            e.client_msg_id,
            e.message,
            e.server_time_ms
        ],
    )
    .map_err(|err| map_err("insert entry", err))?;
    Ok(())
}

fn op_append_message(
    conn: &Connection,
    group_id: &[u8],
    fence: u64,
    entry: &NewEntry,
) -> Result<AppendOutcome> {
    let head = check_fence(conn, group_id, fence)?;
    if let Some(seq) = existing_seq(conn, group_id, &entry.client_msg_id)? {
        return Ok(AppendOutcome::Duplicate { seq });
    }
    let seq = next(head.head_seq, "seq")?;
    insert_entry(conn, group_id, seq, entry)?;
    conn.execute(
        "UPDATE groups SET head_seq = ?2 WHERE group_id = ?1",
        params![group_id, seq],
    )
    .map_err(|e| map_err("advance head seq", e))?;
    Ok(AppendOutcome::Appended { seq })
}

fn op_append_proposal(
    conn: &Connection,
    group_id: &[u8],
    fence: u64,
    entry: &NewEntry,
    state: &[u8],
) -> Result<AppendOutcome> {
    let head = check_fence(conn, group_id, fence)?;
    if let Some(seq) = existing_seq(conn, group_id, &entry.client_msg_id)? {
        return Ok(AppendOutcome::Duplicate { seq });
    }
    if head.epoch != entry.epoch {
        return Err(StoreError::EpochConflict {
            current_epoch: head.epoch,
            head_seq: head.head_seq,
        });
    }
    let seq = next(head.head_seq, "seq")?;
    insert_entry(conn, group_id, seq, entry)?;
    conn.execute(
        "UPDATE groups SET head_seq = ?2, state = ?3 WHERE group_id = ?1",
        params![group_id, seq, state],
    )
    .map_err(|e| map_err("advance head seq with proposal", e))?;
    Ok(AppendOutcome::Appended { seq })
}

fn op_append_commit(conn: &Connection, w: &CommitWrite) -> Result<AppendOutcome> {
    let head = check_fence(conn, &w.group_id, w.fence)?;
    // A retried commit that already applied is a duplicate, not a conflict.
    if let Some(seq) = existing_seq(conn, &w.group_id, &w.entry.client_msg_id)? {
        return Ok(AppendOutcome::Duplicate { seq });
    }
    if head.epoch != w.expected_epoch {
        return Err(StoreError::EpochConflict {
            current_epoch: head.epoch,
            head_seq: head.head_seq,
        });
    }
    let seq = next(head.head_seq, "seq")?;
    insert_entry(conn, &w.group_id, seq, &w.entry)?;
    conn.execute(
        "UPDATE groups SET head_seq = ?2, epoch = ?3, state = ?4, group_info = ?5, ratchet_tree = ?6
         WHERE group_id = ?1",
        params![
            w.group_id,
            seq,
            w.new_epoch,
            w.state,
            w.group_info,
            w.ratchet_tree
        ],
    )
    .map_err(|e| map_err("update group", e))?;

    let current: BTreeSet<String> = {
        let mut stmt = conn
            .prepare_cached("SELECT device_id FROM members WHERE group_id = ?1")
            .map_err(|e| map_err("read members", e))?;
        let rows = stmt
            .query_map(params![w.group_id], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<BTreeSet<_>>>())
            .map_err(|e| map_err("read members", e))?;
        rows
    };
    let next_members: BTreeSet<&str> = w.members.iter().map(|m| m.device_id.as_str()).collect();
    for gone in current
        .iter()
        .filter(|d| !next_members.contains(d.as_str()))
    {
        conn.execute(
            "INSERT INTO departures (device_id, group_id, joined_seq, left_seq)
             SELECT device_id, group_id, joined_seq, ?3 FROM members
             WHERE group_id = ?1 AND device_id = ?2
             ON CONFLICT (device_id, group_id)
             DO UPDATE SET joined_seq = excluded.joined_seq, left_seq = excluded.left_seq",
            params![w.group_id, gone, seq],
        )
        .map_err(|e| map_err("record departure", e))?;
        conn.execute(
            "DELETE FROM members WHERE group_id = ?1 AND device_id = ?2",
            params![w.group_id, gone],
        )
        .map_err(|e| map_err("remove member", e))?;
    }
    for m in w.members.iter().filter(|m| !current.contains(&m.device_id)) {
        insert_member(conn, &w.group_id, m, seq)?;
    }
    for welcome in &w.welcomes {
        let inbox_seq: u64 = conn
            .query_row(
                "INSERT INTO inbox_counters (device_id, last_seq) VALUES (?1, 1)
                 ON CONFLICT (device_id) DO UPDATE SET last_seq = last_seq + 1
                 RETURNING last_seq",
                params![welcome.device_id],
                |r| r.get(0),
            )
            .map_err(|e| map_err("advance inbox seq", e))?;
        conn.execute(
            "INSERT INTO inbox (device_id, inbox_seq, group_id, commit_seq, welcome, ratchet_tree)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                welcome.device_id,
                inbox_seq,
                w.group_id,
                seq,
                welcome.welcome,
                welcome.ratchet_tree
            ],
        )
        .map_err(|e| map_err("insert welcome", e))?;
    }
    Ok(AppendOutcome::Appended { seq })
}

fn read_timeline(conn: &Connection, group_id: &[u8], after: u64, limit: u32) -> Result<Vec<Entry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, kind, epoch, sender, client_msg_id, message, server_time_ms
             FROM entries WHERE group_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(|e| map_err("read timeline", e))?;
    let rows = stmt
        .query_map(params![group_id, deadline(after), limit], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, u64>(6)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| map_err("read timeline", e))?;
    rows.into_iter()
        .map(
            |(seq, kind, epoch, sender, client_msg_id, message, server_time_ms)| {
                let kind = EntryKind::from_i64(kind).ok_or_else(|| {
                    StoreError::Backend(format!("corrupt entry kind {kind} at seq {seq}"))
                })?;
                Ok(Entry {
                    seq,
                    kind,
                    epoch,
                    sender,
                    client_msg_id,
                    message,
                    server_time_ms,
                })
            },
        )
        .collect()
}

fn op_set_cursor(conn: &Connection, device_id: &str, group_id: &[u8], seq: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO cursors (device_id, group_id, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, group_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        params![device_id, group_id, seq],
    )
    .map_err(|e| map_err("set cursor", e))?;
    conn.execute(
        "DELETE FROM departures WHERE device_id = ?1 AND group_id = ?2 AND left_seq <= ?3",
        params![device_id, group_id, seq],
    )
    .map_err(|e| map_err("settle departure", e))?;
    Ok(())
}

fn read_inbox(
    conn: &Connection,
    device_id: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<InboxItem>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT inbox_seq, group_id, commit_seq, welcome, ratchet_tree FROM inbox
             WHERE device_id = ?1 AND inbox_seq > ?2 ORDER BY inbox_seq LIMIT ?3",
        )
        .map_err(|e| map_err("read inbox", e))?;
    stmt.query_map(params![device_id, deadline(after), limit], |r| {
        Ok(InboxItem {
            inbox_seq: r.get(0)?,
            group_id: r.get(1)?,
            commit_seq: r.get(2)?,
            welcome: r.get(3)?,
            ratchet_tree: r.get(4)?,
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(|e| map_err("read inbox", e))
}

// ----------------------------------------------------------------------------
// the trait

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, device: &Device) -> Result<()> {
        let d = device.clone();
        self.write("create_user", move |c| op_create_user(c, &d))
            .await
    }

    async fn add_device(&self, device: &Device) -> Result<()> {
        let d = device.clone();
        self.write("add_device", move |c| op_add_device(c, &d))
            .await
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>> {
        let id = device_id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT user_id, device_id, signature_key, token_generation, created_at_ms
                 FROM devices WHERE device_id = ?1",
                params![id],
                row_to_device,
            )
            .optional()
            .map_err(|e| map_err("read device", e))
        })
        .await
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>> {
        let id = user_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT user_id, device_id, signature_key, token_generation, created_at_ms
                     FROM devices WHERE user_id = ?1 ORDER BY id",
                )
                .map_err(|e| map_err("read devices", e))?;
            stmt.query_map(params![id], row_to_device)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| map_err("read devices", e))
        })
        .await
    }

    async fn bump_token_generation(&self, device_id: &str) -> Result<u64> {
        let id = device_id.to_string();
        self.write("bump_token_generation", move |c| {
            op_bump_token_generation(c, &id)
        })
        .await
    }

    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        let name = name.to_string();
        let candidate = candidate.to_vec();
        self.write("get_or_create_secret", move |c| {
            op_get_or_create_secret(c, &name, &candidate)
        })
        .await
    }

    async fn take_secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = name.to_string();
        self.write("take_secret", move |c| {
            c.query_row(
                "DELETE FROM secrets WHERE name = ?1 RETURNING value",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| map_err("take secret", e))
        })
        .await
    }

    async fn put_link_code(
        &self,
        code_hash: &[u8],
        user_id: &str,
        expires_at_ms: u64,
    ) -> Result<()> {
        let hash = code_hash.to_vec();
        let user = user_id.to_string();
        self.write("put_link_code", move |c| {
            c.execute(
                "INSERT INTO link_codes (code_hash, user_id, expires_at_ms) VALUES (?1, ?2, ?3)",
                params![hash, user, deadline(expires_at_ms)],
            )
            .map_err(|e| map_insert_err("insert link code", e))?;
            Ok(())
        })
        .await
    }

    async fn take_link_code(&self, code_hash: &[u8], now_ms: u64) -> Result<Option<String>> {
        let hash = code_hash.to_vec();
        self.write("take_link_code", move |c| {
            op_take_link_code(c, &hash, now_ms)
        })
        .await
    }

    async fn sweep_link_codes(&self, now_ms: u64) -> Result<u64> {
        self.write("sweep_link_codes", move |c| {
            let n = c
                .execute(
                    "DELETE FROM link_codes WHERE expires_at_ms <= ?1",
                    params![deadline(now_ms)],
                )
                .map_err(|e| map_err("sweep link codes", e))?;
            Ok(n as u64)
        })
        .await
    }

    async fn put_key_packages(
        &self,
        device_id: &str,
        packages: &[KeyPackageRecord],
        last_resort: Option<&KeyPackageRecord>,
    ) -> Result<u32> {
        let id = device_id.to_string();
        let packages = packages.to_vec();
        let last_resort = last_resort.cloned();
        self.write("put_key_packages", move |c| {
            op_put_key_packages(c, &id, &packages, last_resort.as_ref())
        })
        .await
    }

    async fn claim_key_package(&self, device_id: &str) -> Result<Option<ClaimedKeyPackage>> {
        let id = device_id.to_string();
        self.write("claim_key_package", move |c| op_claim_key_package(c, &id))
            .await
    }

    async fn key_package_count(&self, device_id: &str) -> Result<(u32, bool)> {
        let id = device_id.to_string();
        self.read(move |c| read_key_package_count(c, &id)).await
    }

    async fn create_group(&self, group: &NewGroup) -> Result<()> {
        let g = group.group.clone();
        self.write("create_group", move |c| op_create_group(c, &g))
            .await
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>> {
        let id = group_id.to_vec();
        self.read(move |c| read_group(c, &id)).await
    }

    async fn acquire_lease(
        &self,
        group_id: &[u8],
        owner: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Lease> {
        let id = group_id.to_vec();
        let owner = owner.to_string();
        self.write("acquire_lease", move |c| {
            op_acquire_lease(c, &id, &owner, now_ms, ttl_ms)
        })
        .await
    }

    async fn release_lease(&self, group_id: &[u8], owner: &str, token: u64) -> Result<()> {
        let id = group_id.to_vec();
        let owner = owner.to_string();
        self.write("release_lease", move |c| {
            op_release_lease(c, &id, &owner, token)
        })
        .await
    }

    async fn append_message(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
    ) -> Result<AppendOutcome> {
        let id = group_id.to_vec();
        let entry = entry.clone();
        self.write("append_message", move |c| {
            op_append_message(c, &id, fence, &entry)
        })
        .await
    }

    async fn append_proposal(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
        state: &[u8],
    ) -> Result<AppendOutcome> {
        let id = group_id.to_vec();
        let entry = entry.clone();
        let state = state.to_vec();
        self.write("append_proposal", move |c| {
            op_append_proposal(c, &id, fence, &entry, &state)
        })
        .await
    }

    async fn append_commit(&self, write: &CommitWrite) -> Result<AppendOutcome> {
        let w = write.clone();
        self.write("append_commit", move |c| op_append_commit(c, &w))
            .await
    }

    async fn read_timeline(
        &self,
        group_id: &[u8],
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        let id = group_id.to_vec();
        self.read(move |c| read_timeline(c, &id, after_seq, limit))
            .await
    }

    async fn groups_of_device(&self, device_id: &str) -> Result<Vec<DeviceGroup>> {
        let id = device_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT group_id, joined_seq FROM members WHERE device_id = ?1 ORDER BY group_id",
                )
                .map_err(|e| map_err("read device groups", e))?;
            stmt.query_map(params![id], |r| {
                Ok(DeviceGroup {
                    group_id: r.get(0)?,
                    joined_seq: r.get(1)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| map_err("read device groups", e))
        })
        .await
    }

    async fn departed_groups(&self, device_id: &str) -> Result<Vec<Departure>> {
        let id = device_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT group_id, joined_seq, left_seq FROM departures
                     WHERE device_id = ?1 ORDER BY group_id",
                )
                .map_err(|e| map_err("read departures", e))?;
            stmt.query_map(params![id], |r| {
                Ok(Departure {
                    group_id: r.get(0)?,
                    joined_seq: r.get(1)?,
                    left_seq: r.get(2)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| map_err("read departures", e))
        })
        .await
    }

    async fn set_cursor(&self, device_id: &str, group_id: &[u8], seq: u64) -> Result<()> {
        let device = device_id.to_string();
        let group = group_id.to_vec();
        self.write("set_cursor", move |c| {
            op_set_cursor(c, &device, &group, seq)
        })
        .await
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(Vec<u8>, u64)>> {
        let id = device_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT group_id, seq FROM cursors WHERE device_id = ?1 ORDER BY group_id",
                )
                .map_err(|e| map_err("read cursors", e))?;
            stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| map_err("read cursors", e))
        })
        .await
    }

    async fn read_inbox(&self, device_id: &str, after: u64, limit: u32) -> Result<Vec<InboxItem>> {
        let id = device_id.to_string();
        self.read(move |c| read_inbox(c, &id, after, limit)).await
    }

    async fn ack_inbox(&self, device_id: &str, upto: u64) -> Result<()> {
        let id = device_id.to_string();
        self.write("ack_inbox", move |c| {
            c.execute(
                "DELETE FROM inbox WHERE device_id = ?1 AND inbox_seq <= ?2",
                params![id, deadline(upto)],
            )
            .map_err(|e| map_err("ack inbox", e))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reply<T> = oneshot::Receiver<Result<T>>;

    fn op<T, F>(name: &'static str, f: F) -> (Box<dyn PendingOp>, Reply<T>)
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = Op {
            name,
            f: Some(f),
            result: None,
            reply,
        };
        (Box::new(op), rx)
    }

    fn reply<T>(mut rx: Reply<T>) -> Result<T> {
        rx.try_recv().expect("replied after the batch")
    }

    fn entry(id: &str) -> NewEntry {
        NewEntry {
            kind: EntryKind::Application,
            epoch: 1,
            sender: "a/a-1".into(),
            client_msg_id: id.as_bytes().to_vec(),
            message: id.as_bytes().to_vec(),
            server_time_ms: 0,
        }
    }

    /// A migrated database with group `g` leased to `node-a` (token 1).
    fn setup(dir: &tempfile::TempDir) -> Connection {
        let conn = open_connection(&dir.path().join("t.db"), Duration::ZERO, false).expect("open");
        migrate(&conn).expect("migrate");
        let group = GroupRecord {
            group_id: b"g".to_vec(),
            epoch: 1,
            state: vec![],
            group_info: vec![],
            ratchet_tree: vec![],
            head_seq: 0,
            members: vec![],
        };
        op_create_group(&conn, &group).expect("create group");
        let lease = op_acquire_lease(&conn, b"g", "node-a", 0, 1_000).expect("lease");
        assert_eq!(lease.token, 1);
        conn
    }

    #[test]
    fn a_failing_op_rolls_back_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let (a1, r1) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        let (a2, r2) = op("append", |c| op_append_message(c, b"g", 7, &entry("x")));
        let stale = CommitWrite {
            group_id: b"g".to_vec(),
            fence: 1,
            expected_epoch: 5,
            new_epoch: 6,
            state: vec![],
            group_info: vec![],
            ratchet_tree: vec![],
            members: vec![],
            entry: entry("c"),
            welcomes: vec![],
        };
        let (a3, r3) = op("commit", move |c| op_append_commit(c, &stale));
        // The same id again within the same batch: sees the first insert.
        let (a4, r4) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        // Writes, then fails: its write must not survive.
        let (a5, r5) = op("partial", |c| {
            op_get_or_create_secret(c, "half-done", b"x")?;
            op_append_message(c, b"g", 1, &entry("half"))?;
            Err::<(), _>(StoreError::Backend("injected".into()))
        });
        let (a6, r6) = op("append", |c| op_append_message(c, b"g", 1, &entry("m2")));

        run_batch(&conn, vec![a1, a2, a3, a4, a5, a6]);

        assert_eq!(reply(r1).expect("m1"), AppendOutcome::Appended { seq: 1 });
        assert!(matches!(
            reply(r2),
            Err(StoreError::Fenced { token: 1, .. })
        ));
        assert!(matches!(
            reply(r3),
            Err(StoreError::EpochConflict {
                current_epoch: 1,
                head_seq: 1
            })
        ));
        assert_eq!(reply(r4).expect("dup"), AppendOutcome::Duplicate { seq: 1 });
        assert!(matches!(reply(r5), Err(StoreError::Backend(_))));
        assert_eq!(reply(r6).expect("m2"), AppendOutcome::Appended { seq: 2 });

        let ids: Vec<Vec<u8>> = read_timeline(&conn, b"g", 0, 100)
            .expect("read")
            .into_iter()
            .map(|e| e.client_msg_id)
            .collect();
        assert_eq!(ids, vec![b"m1".to_vec(), b"m2".to_vec()]);
        let secret: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM secrets WHERE name = 'half-done'",
                [],
                |r| r.get(0),
            )
            .optional()
            .expect("query");
        assert_eq!(secret, None);
        assert!(conn.is_autocommit(), "batch left a transaction open");
    }

    #[test]
    fn a_batch_that_cannot_begin_fails_every_op_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        // Another "process" holds the write lock; busy_timeout is zero.
        let other = open_connection(&dir.path().join("t.db"), Duration::ZERO, false).expect("open");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");

        let (a1, r1) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        let (a2, r2) = op("secret", |c| op_get_or_create_secret(c, "k", b"v"));
        run_batch(&conn, vec![a1, a2]);
        assert!(matches!(reply(r1), Err(StoreError::Unavailable(_))));
        assert!(matches!(reply(r2), Err(StoreError::Unavailable(_))));

        other.execute_batch("ROLLBACK").expect("unlock");
        assert!(read_timeline(&conn, b"g", 0, 10).expect("read").is_empty());
        assert!(conn.is_autocommit());
    }

    #[test]
    fn writes_fail_unavailable_once_the_writer_is_gone() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteStore::open(SqliteConfig::new(dir.path().join("t.db")))
                .await
                .expect("open");
            // A closed queue means the writer is gone.
            let (tx, rx) = mpsc::channel(1);
            drop(rx);
            let SqliteStore {
                writes,
                writer,
                readers,
                read_permits,
            } = store;
            drop(writes);
            writer.join().expect("writer exits once its queue closes");
            let dead = SqliteStore {
                writes: tx,
                writer: std::thread::spawn(|| ()),
                readers,
                read_permits,
            };
            assert!(matches!(
                dead.get_or_create_secret("k", b"v").await,
                Err(StoreError::Unavailable(_))
            ));
            // Reads do not need the writer.
            assert_eq!(dead.group(b"g").await.expect("read"), None);
        });
    }

    #[test]
    fn the_writer_takes_everything_queued_up_to_max_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut replies = Vec::new();
        for _ in 0..5 {
            let (queued, reply) = op("noop", |_| Ok(()));
            assert!(tx.try_send(queued).is_ok());
            replies.push(reply);
        }
        drop(tx);
        let sizes: Vec<usize> = std::iter::from_fn(|| next_batch(&mut rx, 3))
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, vec![3, 2]);
    }

    #[test]
    fn a_panicking_op_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let (a1, r1) = op("append", |c| op_append_message(c, b"g", 1, &entry("m1")));
        let (a2, r2) = op("bug", |c| {
            op_append_message(c, b"g", 1, &entry("m2"))?;
            if c.is_autocommit() {
                return Ok(());
            }
            panic!("injected bug")
        });
        let (a3, r3) = op("append", |c| op_append_message(c, b"g", 1, &entry("m3")));
        run_batch(&conn, vec![a1, a2, a3]);
        assert_eq!(reply(r1).expect("m1"), AppendOutcome::Appended { seq: 1 });
        assert!(matches!(reply(r2), Err(StoreError::Backend(_))));
        assert_eq!(reply(r3).expect("m3"), AppendOutcome::Appended { seq: 2 });
    }

    #[test]
    fn migration_is_idempotent_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        migrate(&conn).expect("second migration is a no-op");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
        assert!(matches!(migrate(&conn), Err(StoreError::Backend(_))));
    }
}
