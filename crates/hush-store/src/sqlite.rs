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
//! - A commit's Welcome and tree are stored once (`welcomes`), and
//!   `welcomes.pending` is the number of inbox items referring to the row:
//!   the ack that deletes the last of them deletes it, so an unacked item
//!   always has its Welcome.
//! - Claimed ordinary key packages leave a tombstone (their hash_ref), so a
//!   re-upload of a claimed package is skipped and it is never handed out
//!   twice.
//!
//! # Files
//!
//! This file holds the configuration, opening and closing, the read and
//! write paths, and the [`Store`] impl, which only moves arguments to the
//! operation functions: `writer.rs` (the writer thread and group commit),
//! `connection.rs` (opening connections, the reader pool), `schema.rs`
//! (tables and migration), `error.rs` (error and integer conversions), and
//! one file per concern of the trait: `accounts.rs`, `key_packages.rs`,
//! `groups.rs` (records, leases, membership indexes), `timeline.rs`
//! (appends and timeline reads) and `sync.rs` (cursors and inboxes).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::{
    AckDecision, AckState, AckThen, AppendOutcome, ClaimedKeyPackage, CommitWrite, Departure,
    Device, DeviceGroup, Entry, GroupRecord, InboxItem, KeyPackageRecord, Lease, MemberDevice,
    NewEntry, NewGroup, Result, Store, StoreError, SyncStart,
};

mod accounts;
mod connection;
mod error;
mod groups;
mod key_packages;
mod schema;
mod stmt;
mod sync;
mod timeline;
mod writer;

use connection::{open_connection, ReaderPool};
use writer::{writer_loop, Lane};

pub use schema::SCHEMA_VERSION;

/// Configuration of a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file (its parent directory is created if missing).
    pub path: PathBuf,
    /// The most write operations committed in one transaction.
    pub max_batch: usize,
    /// The most cursor and inbox acks in a transaction that also carries
    /// other writes: acks wait in a lane of their own, after the other
    /// writes, so a herd of them delays those by at most one batch (one
    /// with nothing else to write fills up with acks; see
    /// `sqlite/writer.rs`).
    pub max_batch_acks: usize,
    /// The most reads running at once (each on its own connection).
    pub readers: usize,
    /// How long a connection waits for another connection's (or process's)
    /// lock before failing with [`StoreError::Unavailable`].
    pub busy_timeout: Duration,
    /// Group commit's delay: the longest a write that finds the writer
    /// idle (and few others queued) waits for more to share its commit and
    /// fsync, and only while writes arrive often enough that one is
    /// expected within it (a lone write commits at once). Zero: never.
    /// Fewer commits cost less CPU, for up to this much latency (see
    /// `sqlite/writer.rs`).
    pub commit_delay: Duration,
    /// How long a batch of acks alone waits for more acks to share its
    /// transaction: until its oldest ack has waited this long or any other
    /// write arrives (which goes at once); a batch already full of acks
    /// does not wait. Nobody waits on an ack's commit; a cursor moves up to
    /// this much later. Zero: each batch commits what is queued (see
    /// `sqlite/writer.rs`).
    pub ack_delay: Duration,
    /// The WAL's length, in pages, past which a commit copies it back into
    /// the database file (SQLite's `wal_autocheckpoint`; the file is reused
    /// from its start afterwards, so this also bounds it, about, while
    /// readers let the checkpoint finish). A checkpoint writes each page
    /// changed since the last one once, however often it changed: the hot
    /// pages (each group's last index pages, the cursors) are written once
    /// per checkpoint, not once per commit, and a longer WAL makes that
    /// fewer. SQLite's default of 1,000 pages (4 MB) checkpointed every
    /// ~60 ms at 3,000 msg/s (7% of the writer's profile samples).
    pub checkpoint_pages: u32,
}

impl SqliteConfig {
    pub const DEFAULT_MAX_BATCH: usize = 256;
    pub const DEFAULT_MAX_BATCH_ACKS: usize = 32;
    pub const DEFAULT_READERS: usize = 4;
    pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
    /// 2 ms: at 1,000 msg/s over 100 groups, 16% less node CPU per delivery
    /// for ~2 ms more e2e p50; below 500 writes a second nothing waits.
    pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);
    /// 5 ms: a thousand receivers acking one by one share a few
    /// transactions instead of one per ack or two.
    pub const DEFAULT_ACK_DELAY: Duration = Duration::from_millis(5);
    /// 10,000 pages (40 MB of WAL at 4 KiB pages): a checkpoint every
    /// ~0.6 s at 3,000 msg/s, 2.5% of the writer's samples, and 8% fewer
    /// writer samples in all than with SQLite's 1,000.
    pub const DEFAULT_CHECKPOINT_PAGES: u32 = 10_000;

    /// A configuration with the defaults for everything but the path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_batch_acks: Self::DEFAULT_MAX_BATCH_ACKS,
            readers: Self::DEFAULT_READERS,
            busy_timeout: Self::DEFAULT_BUSY_TIMEOUT,
            commit_delay: Self::DEFAULT_COMMIT_DELAY,
            ack_delay: Self::DEFAULT_ACK_DELAY,
            checkpoint_pages: Self::DEFAULT_CHECKPOINT_PAGES,
        }
    }
}

/// The embedded [`Store`] backend. See the module docs.
pub struct SqliteStore {
    writes: writer::Writes,
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
        schema::migrate(&conn)?;
        // Only the writer commits, so only its connection checkpoints.
        conn.pragma_update(None, "wal_autocheckpoint", config.checkpoint_pages.max(1))
            .map_err(|e| error::map_err("set wal_autocheckpoint", e))?;

        let readers = config.readers.max(1);
        let pool = Arc::new(ReaderPool::new(
            config.path.clone(),
            config.busy_timeout,
            readers,
        ));
        // Open one reader eagerly so a bad path fails here, not on first read.
        let first = open_connection(&config.path, config.busy_timeout, true)?;
        pool.put_back(first);

        let max_batch = config.max_batch.max(1);
        let (tx, rx) = writer::channels(max_batch.saturating_mul(4));
        let queue = writer::Queue::new(
            rx,
            max_batch,
            config.max_batch_acks,
            config.commit_delay,
            config.ack_delay,
        );
        let writer = std::thread::Builder::new()
            .name("hush-store-writer".into())
            .spawn(move || writer_loop(conn, queue))
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
        self.write_in(Lane::Urgent, name, f).await
    }

    /// [`write`](Self::write) in the writer's `lane`.
    async fn write_in<T, F>(&self, lane: Lane, name: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (op, rx) = writer::op_in(lane, name, f);
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

#[async_trait]
impl Store for SqliteStore {
    async fn ready(&self) -> Result<()> {
        // Through the writer like any write: its thread is alive and can
        // take the file's write lock (another process may hold it).
        self.write("ready", |_| Ok(())).await
    }

    async fn create_user(&self, device: &Device) -> Result<()> {
        let d = device.clone();
        self.write("create_user", move |c| accounts::op_create_user(c, &d))
            .await
    }

    async fn add_device(&self, device: &Device) -> Result<()> {
        let d = device.clone();
        self.write("add_device", move |c| accounts::op_add_device(c, &d))
            .await
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>> {
        let id = device_id.to_string();
        self.read(move |c| accounts::read_device(c, &id)).await
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>> {
        let id = user_id.to_string();
        self.read(move |c| accounts::read_devices_of_user(c, &id))
            .await
    }

    async fn bump_token_generation(&self, device_id: &str) -> Result<u64> {
        let id = device_id.to_string();
        self.write("bump_token_generation", move |c| {
            accounts::op_bump_token_generation(c, &id)
        })
        .await
    }

    async fn revoke_device(&self, device_id: &str) -> Result<()> {
        let id = device_id.to_string();
        self.write("revoke_device", move |c| accounts::op_revoke_device(c, &id))
            .await
    }

    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        let name = name.to_string();
        let candidate = candidate.to_vec();
        self.write("get_or_create_secret", move |c| {
            accounts::op_get_or_create_secret(c, &name, &candidate)
        })
        .await
    }

    async fn take_secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = name.to_string();
        self.write("take_secret", move |c| accounts::op_take_secret(c, &name))
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
            accounts::op_put_link_code(c, &hash, &user, expires_at_ms)
        })
        .await
    }

    async fn take_link_code(&self, code_hash: &[u8], now_ms: u64) -> Result<Option<String>> {
        let hash = code_hash.to_vec();
        self.write("take_link_code", move |c| {
            accounts::op_take_link_code(c, &hash, now_ms)
        })
        .await
    }

    async fn sweep_link_codes(&self, now_ms: u64) -> Result<u64> {
        self.write("sweep_link_codes", move |c| {
            accounts::op_sweep_link_codes(c, now_ms)
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
            key_packages::op_put_key_packages(c, &id, &packages, last_resort.as_ref())
        })
        .await
    }

    async fn claim_key_package(&self, device_id: &str) -> Result<Option<ClaimedKeyPackage>> {
        let id = device_id.to_string();
        self.write("claim_key_package", move |c| {
            key_packages::op_claim_key_package(c, &id)
        })
        .await
    }

    async fn key_package_count(&self, device_id: &str) -> Result<(u32, bool)> {
        let id = device_id.to_string();
        self.read(move |c| key_packages::read_key_package_count(c, &id))
            .await
    }

    async fn set_last_resort_claimed(&self, device_id: &str, claimed: bool) -> Result<bool> {
        let id = device_id.to_string();
        self.write("set_last_resort_claimed", move |c| {
            key_packages::op_set_last_resort_claimed(c, &id, claimed)
        })
        .await
    }

    async fn create_group(&self, group: &NewGroup) -> Result<()> {
        let g = group.group.clone();
        self.write("create_group", move |c| groups::op_create_group(c, &g))
            .await
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>> {
        let id = group_id.to_vec();
        self.read(move |c| groups::read_group(c, &id)).await
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
            groups::op_acquire_lease(c, &id, &owner, now_ms, ttl_ms)
        })
        .await
    }

    async fn release_lease(&self, group_id: &[u8], owner: &str, token: u64) -> Result<()> {
        let id = group_id.to_vec();
        let owner = owner.to_string();
        self.write("release_lease", move |c| {
            groups::op_release_lease(c, &id, &owner, token)
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
            timeline::op_append_message(c, &id, fence, &entry)
        })
        .await
    }

    /// One writer operation for all of them: one savepoint, so all or none
    /// are stored, and they share the batch's commit.
    async fn append_messages(
        &self,
        group_id: &[u8],
        fence: u64,
        entries: &[NewEntry],
    ) -> Result<Vec<AppendOutcome>> {
        let id = group_id.to_vec();
        let entries = entries.to_vec();
        self.write("append_messages", move |c| {
            entries
                .iter()
                .map(|entry| timeline::op_append_message(c, &id, fence, entry))
                .collect()
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
            timeline::op_append_proposal(c, &id, fence, &entry, &state)
        })
        .await
    }

    async fn append_commit(&self, write: &CommitWrite) -> Result<AppendOutcome> {
        let w = write.clone();
        self.write("append_commit", move |c| timeline::op_append_commit(c, &w))
            .await
    }

    async fn read_timeline(
        &self,
        group_id: &[u8],
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        let id = group_id.to_vec();
        self.read(move |c| timeline::read_timeline(c, &id, after_seq, limit))
            .await
    }

    async fn groups_of_device(&self, device_id: &str) -> Result<Vec<DeviceGroup>> {
        let id = device_id.to_string();
        self.read(move |c| groups::read_groups_of_device(c, &id))
            .await
    }

    async fn departed_groups(&self, device_id: &str) -> Result<Vec<Departure>> {
        let id = device_id.to_string();
        self.read(move |c| groups::read_departed_groups(c, &id))
            .await
    }

    async fn ack_state(&self, device_id: &str, group_id: &[u8]) -> Result<AckState> {
        let device = device_id.to_string();
        let group = group_id.to_vec();
        self.read(move |c| sync::read_ack_state(c, &device, &group))
            .await
    }

    async fn set_cursor(&self, device_id: &str, group_id: &[u8], seq: u64) -> Result<()> {
        let device = device_id.to_string();
        let group = group_id.to_vec();
        self.write("set_cursor", move |c| {
            sync::op_set_cursor(c, &device, &group, seq)
        })
        .await
    }

    async fn ack_cursor(
        &self,
        device_id: &str,
        group_id: &[u8],
        seq: u64,
        decide: AckDecision,
    ) -> Result<(AckState, bool)> {
        let (device, group) = (device_id.to_string(), group_id.to_vec());
        self.write_in(Lane::Ack, "ack_cursor", move |c| {
            sync::op_ack_cursor(c, &device, &group, seq, decide)
        })
        .await
    }

    async fn ack_cursor_then(
        &self,
        device_id: &str,
        group_id: &[u8],
        seq: u64,
        decide: AckDecision,
        then: AckThen,
    ) {
        let (device, group) = (device_id.to_string(), group_id.to_vec());
        let op = writer::op_then(
            Lane::Ack,
            "ack_cursor",
            move |c| sync::op_ack_cursor(c, &device, &group, seq, decide),
            then,
        );
        if let Err(op) = self.writes.send(op).await {
            let stopped = StoreError::Unavailable("sqlite writer has stopped".into());
            op.finish(Some(&stopped));
        }
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(Vec<u8>, u64)>> {
        let id = device_id.to_string();
        self.read(move |c| sync::read_cursors(c, &id)).await
    }

    async fn sync_start(
        &self,
        device_id: &str,
        inbox_after: u64,
        inbox_limit: u32,
    ) -> Result<SyncStart> {
        let id = device_id.to_string();
        self.read(move |c| {
            // One snapshot for the four lists.
            let tx = c
                .unchecked_transaction()
                .map_err(|e| error::map_err("begin read", e))?;
            Ok(SyncStart {
                cursors: sync::read_cursors(&tx, &id)?,
                groups: groups::read_groups_of_device(&tx, &id)?,
                departed: groups::read_departed_groups(&tx, &id)?,
                inbox: sync::read_inbox(&tx, &id, inbox_after, inbox_limit)?,
            })
        })
        .await
    }

    async fn group_members(&self, group_id: &[u8]) -> Result<Vec<MemberDevice>> {
        let id = group_id.to_vec();
        self.read(move |c| groups::read_members(c, &id)).await
    }

    async fn joined_members(&self, group_id: &[u8]) -> Result<Vec<MemberDevice>> {
        let id = group_id.to_vec();
        self.read(move |c| groups::read_joined_members(c, &id))
            .await
    }

    async fn co_member_devices(
        &self,
        user_id: &str,
        max_group_members: usize,
    ) -> Result<Vec<MemberDevice>> {
        let id = user_id.to_string();
        self.read(move |c| {
            let tx = c
                .unchecked_transaction()
                .map_err(|e| error::map_err("begin read", e))?;
            let mut joined = BTreeSet::new();
            for d in accounts::read_devices_of_user(&tx, &id)? {
                let cursors = sync::read_cursors(&tx, &d.device_id)?;
                let groups = groups::read_groups_of_device(&tx, &d.device_id)?;
                joined.extend(crate::joined_groups(groups, &cursors));
            }
            let mut devices = BTreeSet::new();
            for g in joined {
                let members = groups::read_members(&tx, &g)?;
                if members.len() <= max_group_members {
                    devices.extend(members.into_iter().filter(|m| m.user_id != id));
                }
            }
            Ok(devices.into_iter().collect())
        })
        .await
    }

    async fn read_inbox(&self, device_id: &str, after: u64, limit: u32) -> Result<Vec<InboxItem>> {
        let id = device_id.to_string();
        self.read(move |c| sync::read_inbox(c, &id, after, limit))
            .await
    }

    async fn inbox_head(&self, device_id: &str) -> Result<u64> {
        let id = device_id.to_string();
        self.read(move |c| sync::read_inbox_head(c, &id)).await
    }

    async fn ack_inbox(&self, device_id: &str, upto: u64) -> Result<()> {
        let id = device_id.to_string();
        self.write_in(Lane::Ack, "ack_inbox", move |c| {
            sync::op_ack_inbox(c, &id, upto)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let (tx, rx) = writer::channels(1);
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
            assert!(matches!(
                dead.ready().await,
                Err(StoreError::Unavailable(_))
            ));
            // Reads do not need the writer.
            assert_eq!(dead.group(b"g").await.expect("read"), None);
        });
    }
}
