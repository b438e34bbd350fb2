//! The CQL backend (scylla 1.x driver) for ScyllaDB, tested on Apache
//! Cassandra: configuration, connection, schema migration and the pure
//! pieces (CQL text, bucket math, row mapping) the store is built from.
//!
//! **Status:** implements [`crate::Store`] (in `scylla/store.rs`) with the
//! design below. It passes the shared conformance suite against live
//! Cassandra 5.0 (`scripts/cql.sh`, one or three nodes; CI runs it on
//! three) and the fault test `tests/cql_faults.rs` (a node killed while
//! appends run at replication factor 3, then every node killed and started
//! again). ScyllaDB itself, the production target, has not run here (no
//! registry these machines reach ships it): where the two differ, the
//! store asks which one it talks to (see "Cassandra and ScyllaDB" below).
//! Files: `connection.rs` (connecting, in the background too; server kind;
//! migrations), `error.rs` (driver errors, transient retries), `store.rs`
//! (the statements and the [`crate::Store`] impl), `welcome.rs` (Welcomes
//! stored once per commit: delivered, joined to inbox reads, released on
//! acks).
//!
//! # Design
//!
//! ScyllaDB has no multi-partition transactions; lightweight transactions
//! (LWT, Paxos, `IF` conditions at SERIAL / LOCAL_SERIAL) are linearizable
//! per partition. So every guarantee of the [`crate::Store`] contract is
//! decided by one LWT on one partition, and everything else is derived data
//! written idempotently afterwards.
//!
//! - **Seq assignment and fencing.** The `groups` row of a group (its
//!   *head*) holds `head_seq`, `epoch`, the lease (`lease_owner`,
//!   `lease_token`, `lease_expires_ms`), the DS state and the member list.
//!   An append reads the head at SERIAL, then runs
//!   `UPDATE groups SET head_seq = n+1, pending_* = <the entry> ...
//!   IF head_seq = n AND lease_token = fence`. Exactly one writer wins each
//!   seq (dense, no duplicates, under any number of concurrent writers and
//!   nodes); a stale owner's LWT fails on `lease_token` and writes nothing.
//!   The losers re-read and retry (bounded, with backoff).
//! - **No gap on a crash.** The entry travels *inside* the LWT that
//!   reserves its seq (`pending_*` columns), so there is never a reserved
//!   seq without its entry. After the LWT the writer copies the entry into
//!   the bucketed `timeline` and its id into `client_msgs` (idempotent
//!   upserts of the same values). If the writer dies in between, the entry
//!   stays in the head: every appender materializes the head's pending entry
//!   *before* it may replace it (its own LWT is conditioned on the same
//!   `head_seq`), and readers of the timeline fill the last seq from the head
//!   when the timeline lacks it. Hence the invariant: with head at `n`, all
//!   seqs `< n` are in `timeline` and `client_msgs`, and seq `n` is in
//!   `timeline` or pending in the head.
//! - **Idempotent client_msg_id.** By that invariant, after materializing
//!   the pending entry an appender looks its id up in `client_msgs` (QUORUM)
//!   and answers `Duplicate { seq }` if found; the LWT on `head_seq = n`
//!   guarantees nobody appended in between. Two concurrent duplicates: one
//!   wins the LWT; the other fails it, re-reads, and finds the id (pending or
//!   materialized).
//! - **One commit per epoch.** A commit's LWT also carries
//!   `epoch = new_epoch, state, group_info, ratchet_tree, members` and is
//!   conditioned on the same `head_seq` (which implies the epoch it read), so
//!   two commits for one epoch cannot both apply. Side effects outside the
//!   head partition (device_groups, departures, Welcome inbox items) ride
//!   in `pending_added` / `pending_departed` / `pending_welcome` and are
//!   replayed idempotently by whoever materializes the entry (Welcomes
//!   through `welcome_deliveries`, an `IF NOT EXISTS` per device and commit).
//! - **Welcomes, once per commit.** MLS makes one Welcome per commit and
//!   every device it adds joins with the commit's ratchet tree, so both are
//!   stored once, never per device (a copy per device is O(added x group
//!   size) bytes, and a commit adding 1,000 devices to a large group would
//!   not fit its LWT under the 16 MB mutation limit):
//!   - *In the LWT:* the head's `pending_welcome` holds (commit seq, the
//!     Welcome, the welcomed device ids); the tree is the head's
//!     `ratchet_tree`, which the same LWT sets. After the group's creation
//!     only a commit's LWT changes `ratchet_tree`, and it moves `head_seq`,
//!     which no appender does before materializing the pending entry: so
//!     while the head is at the commit's seq its tree is the commit's, and
//!     once the head has moved on the commit is materialized already. The
//!     appender has the tree at hand; a materializer replaying someone
//!     else's entry reads it at SERIAL and uses it only if the head is
//!     still at that seq (otherwise there is nothing left to write). The
//!     seq in `pending_welcome` keeps a version-2 writer, which replaces
//!     the entry without knowing the column, from lending an older
//!     commit's Welcome to a newer entry.
//!   - *Materialized:* first the `welcomes` row (group_id, commit_seq) with
//!     the Welcome, the tree and `waiting += ` the welcomed devices that
//!     have no `welcome_deliveries` row yet (one upsert of fixed values,
//!     QUORUM), then per device its delivery and an `inbox` row that refers
//!     to (group_id, commit_seq) without blobs. So a Welcome row, with the
//!     device in `waiting`, exists before any inbox row refers to it.
//!   - *Read:* `read_inbox` reads the page, then each distinct Welcome it
//!     refers to once (QUORUM, like the write). Inbox rows written before
//!     version 3 carry their own `welcome` and `ratchet_tree` and are read
//!     as they are; a head a version-2 binary left pending
//!     (`pending_welcomes`, a copy per device) is delivered that way too.
//!   - *Deleted:* a refcount is not idempotent (a replayed materialization
//!     or a retried ack would count twice), a set is: `ack_inbox` first
//!     takes its device out of `waiting` of each Welcome its acknowledged
//!     items refer to and deletes the Welcome row when `waiting` reads
//!     empty, then deletes the items (a crash in between leaves them for
//!     the retried ack). A device enters `waiting` before its item exists
//!     and leaves it only by acknowledging that item, so a Welcome row is
//!     never deleted while an unacknowledged item refers to it. A replay of
//!     the commit can write an item again after its ack, as it always
//!     could; if its Welcome is gone, `read_inbox` skips it as the
//!     acknowledged item it is (and reads on to fill the page), and the
//!     device's next ack deletes it.
//!   - *What the server keeps:* a Welcome and its tree until the last
//!     device it welcomes acknowledges it, as the SQLite backend does.
//!     Longer only for a device that never acknowledges (gone, revoked),
//!     and after rare races (a materializer stalled across every ack, an
//!     ack past an item whose row was not written yet): then for good, as
//!     no TTL is set (a TTL would take the Welcome of an item still
//!     waiting). That is acceptable: a Welcome's group secrets are
//!     HPKE-encrypted to one-time KeyPackage init keys, which a device
//!     deletes once it has joined, and the tree is public group state
//!     (the commits in the timeline rebuild it).
//! - **KeyPackage claim.** `DELETE FROM key_packages ... IF EXISTS` on the
//!   oldest row: exactly one concurrent claimer sees `[applied]`; the others
//!   move to the next row. `key_package_refs` (inserted `IF NOT EXISTS`)
//!   keeps every hash_ref ever stored, so a claimed package re-uploaded is
//!   skipped.
//! - **Cursors** move forward with `UPDATE ... IF seq < ?` (after an
//!   `INSERT ... IF NOT EXISTS`); **inbox seqs** come from an LWT counter per
//!   device that only grows.
//! - **Durability.** A write returns after the coordinator got acks from the
//!   configured consistency level (QUORUM by default; LWTs from a SERIAL
//!   quorum), each replica having written its commitlog. (ScyllaDB's
//!   commitlog syncs periodically by default; `commitlog_sync: batch` on the
//!   servers is what makes "durable" mean fsynced, as for SQLite.)
//! - **Bounded partitions.** `timeline` is partitioned by
//!   `(group_id, bucket)` with `bucket = seq / bucket_size`
//!   ([`bucket_of`]); reads walk the buckets from the cursor's
//!   ([`bucket_range`]) with paged execution.
//! - **Retention** is a TTL on timeline rows (`USING TTL`, [`ttl_seconds`];
//!   0 days = kept forever).
//! - **Driver settings.** Every statement is prepared once at open; the
//!   driver's default load balancing in scylla 1.x is token-aware (and
//!   shard-aware on ScyllaDB), so prepared statements go straight to a
//!   replica. The default execution profile sets the consistency, the serial
//!   consistency, an explicit request timeout and the default retry policy;
//!   statements that are safe to repeat are marked idempotent, LWTs are not.
//! - **Keyspace.** Created at open with the configured replication (and,
//!   on a ScyllaDB with tablets, `tablets = {'enabled': false}` unless
//!   tablets are asked for: LWT on tablets keyspaces needs ScyllaDB
//!   2025.4+).
//! - **Down or gone.** [`ScyllaStore::start`] connects in the background
//!   with backoff (each failure logged naming the contact points); until
//!   then, and while the cluster cannot answer, operations fail with
//!   [`StoreError::Unavailable`] and [`crate::Store::ready`] says why. Once
//!   connected the driver reconnects to nodes that come back by itself.
//!   Statements that are safe to repeat, and LWTs whose repetition a fresh
//!   read settles, are retried after transient errors (4 times, pauses of
//!   0.1 to 0.8 s), because the driver never retries SERIAL reads or LWTs
//!   and a node that dies takes its in-flight requests with it. An append
//!   whose LWT failed with an unknown outcome and finds its id taken on
//!   the retry reports `Appended` only if the entry carries its own nonce
//!   (`groups.pending_writer`, copied to `client_msgs.writer`): its LWT did
//!   apply. A concurrent duplicate's entry carries another nonce, so of two
//!   calls with one id exactly one reports `Appended`.
//!
//! # Cassandra and ScyllaDB
//!
//! Found by `connection::detect_server` at connect (ScyllaDB lists
//! `scylla_*` tables in `system_schema`; tablets support is its
//! `TABLETS` feature), and kept in [`Server`]:
//!
//! - **`tablets` keyspace option:** ScyllaDB 6.0+ only. Cassandra 5.0.9
//!   refuses it ("Unknown property 'tablets'"), so it is sent only to a
//!   ScyllaDB that has tablets.
//! - Everything else the store sends is the same CQL on both: LWTs with
//!   `IF` conditions and their `[applied]` first column, SERIAL /
//!   LOCAL_SERIAL reads, `USING TTL` / `USING TIMESTAMP`, range deletes
//!   on a clustering column, paging, and timeuuid `now()`. Cassandra's
//!   Paxos (v1 by default in 5.0) and ScyllaDB's differ in speed, not in
//!   what the store relies on.
//! - **Durability settings are the server's:** both default to
//!   `commitlog_sync: periodic` (a sync every 10 s), which acknowledges
//!   writes before they are synced; a replay after a kill -9 stops at a
//!   segment's last sync marker, so killing every replica right after a
//!   write lost it on the test cluster. `scripts/cql.sh` runs `batch`,
//!   which makes "durable" mean fsynced on every replica, as SQLite's is.
//!   (ScyllaDB syncs LWT writes in every mode; plain writes follow the
//!   setting.)
//! - **LWT result shapes:** Cassandra's columns after `[applied]` vary
//!   between executions of one statement, ScyllaDB's do not; the store
//!   reads only `[applied]`, and the driver takes result metadata from
//!   every response, so both parse.
//!
//! # Known limits (deviations from the SQLite backend)
//!
//! - A commit's head change (epoch, state, members, entry) is atomic; its
//!   effects outside the head partition (`device_groups`, `departures`,
//!   Welcome inbox items) become visible when the entry is materialized,
//!   moments after the LWT, or after a crash when the next append or lease
//!   acquisition of the group replays them. SQLite shows all of it at once.
//!   `device_groups` writes use `USING TIMESTAMP seq + 1`, so a late replay
//!   never undoes a newer membership change; `departed_groups` filters by
//!   the cursor, so a late replay cannot revive a settled departure.
//! - `create_user` is two LWTs (device id, then user id); a conflict on the
//!   user id deletes the device claim again. A crash in between leaves an
//!   orphan device row of a user that does not exist.
//! - `put_key_packages` claims the hash_ref, then writes the package: a
//!   crash in between loses that package (never hands it out twice). "Oldest
//!   first" is by coordinator `now()` timeuuid, so it holds within one
//!   coordinator's clock.
//! - `consistency = "one"` applies to listings (devices, groups of a
//!   device, cursors, inbox reads) only: whatever the seq invariant relies
//!   on (materializing entries, the client_msg_id lookup, timeline reads)
//!   and the `welcomes` rows (written before the inbox rows that refer to
//!   them, read for them, released by acks) run at QUORUM regardless, and
//!   LWTs at SERIAL.
//! - `read_timeline` and `group` read the head at SERIAL (a Paxos read per
//!   call); `devices_of_user` is one read per device.
//! - An LWT whose outcome is unknown (its coordinator died, or it timed
//!   out) is retried; an `INSERT ... IF NOT EXISTS` that had in fact
//!   applied then reports "not applied". For appends, leases, cursors,
//!   counters and claims a fresh read settles it (above); `create_user`,
//!   `add_device` and `create_group` answer `AlreadyExists` then, for a row
//!   they wrote themselves (the client retries with new ids).

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::{Consistency, SerialConsistency};

use crate::{Entry, EntryKind, Result, StoreError};

mod connection;
mod error;
pub use connection::{schema_change, SCHEMA_AGREEMENT_TIMEOUT, SCHEMA_CHANGE_TIMEOUT};
#[cfg(any(test, feature = "conformance"))]
pub(crate) use error::is_transient;
mod store;
pub use store::{lease_decision, members_of, next_members, Mode, Pending, STATEMENTS};
mod welcome;
pub use welcome::PendingWelcome;

/// The versioned schema: (version, CQL), applied in order at open.
/// Statements are `CREATE TABLE IF NOT EXISTS` (idempotent by itself) or
/// `ALTER TABLE t ADD c type`, which the migration runs only when the
/// column is missing (see [`added_column`]).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../cql/0001_init.cql")),
    (2, include_str!("../cql/0002_last_resort_claims.cql")),
    (3, include_str!("../cql/0003_welcomes.cql")),
    (4, include_str!("../cql/0004_writers.cql")),
];

/// The schema version this binary writes. Version 3 stores a commit's
/// Welcome once (`welcomes`, `groups.pending_welcome`); binaries of
/// version 2 cannot read its inbox rows, so stop them before version 3
/// serves. Version 4 records which append call wrote an entry
/// (`groups.pending_writer`, `client_msgs.writer`); version-3 binaries
/// ignore the columns and may run beside it.
pub const SCHEMA_VERSION: i32 = 4;

/// The consistency level of ordinary reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsistencyLevel {
    One,
    Quorum,
    LocalQuorum,
}

impl ConsistencyLevel {
    /// The driver's consistency for ordinary statements.
    pub fn consistency(self) -> Consistency {
        match self {
            Self::One => Consistency::One,
            Self::Quorum => Consistency::Quorum,
            Self::LocalQuorum => Consistency::LocalQuorum,
        }
    }

    /// The Paxos consistency for LWTs: LOCAL_SERIAL when the configuration
    /// stays in one datacenter, SERIAL otherwise.
    pub fn serial(self) -> SerialConsistency {
        match self {
            Self::LocalQuorum => SerialConsistency::LocalSerial,
            Self::One | Self::Quorum => SerialConsistency::Serial,
        }
    }
}

impl std::str::FromStr for ConsistencyLevel {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "one" => Ok(Self::One),
            "quorum" => Ok(Self::Quorum),
            "local_quorum" => Ok(Self::LocalQuorum),
            other => Err(format!(
                "unknown consistency {other:?} (expected \"quorum\", \"local_quorum\" or \"one\")"
            )),
        }
    }
}

/// Configuration of the ScyllaDB backend.
#[derive(Clone, Debug)]
pub struct ScyllaConfig {
    /// "host:port" of one or more nodes; the driver discovers the rest.
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// SimpleStrategy replication factor used when creating the keyspace.
    pub replication_factor: u32,
    pub consistency: ConsistencyLevel,
    /// Client-side timeout of every request (and of connecting).
    pub request_timeout: Duration,
    /// Timeline retention; 0 keeps entries forever.
    pub retention_days: u32,
    /// Seqs per timeline partition.
    pub bucket_size: u64,
    /// Rows per page when reading timelines and inboxes.
    pub page_size: i32,
    /// Create the keyspace with tablets (LWT needs ScyllaDB 2025.4+ then).
    pub tablets: bool,
}

impl ScyllaConfig {
    pub const DEFAULT_KEYSPACE: &'static str = "hush";
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_BUCKET_SIZE: u64 = 10_000;
    pub const DEFAULT_PAGE_SIZE: i32 = 500;

    /// Defaults for everything but the contact points.
    pub fn new(contact_points: Vec<String>) -> Self {
        Self {
            contact_points,
            keyspace: Self::DEFAULT_KEYSPACE.to_string(),
            replication_factor: 3,
            consistency: ConsistencyLevel::Quorum,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            retention_days: 0,
            bucket_size: Self::DEFAULT_BUCKET_SIZE,
            page_size: Self::DEFAULT_PAGE_SIZE,
            tablets: false,
        }
    }
}

/// Checks a keyspace name: CQL unquoted identifier rules (letters, digits,
/// underscores, not starting with a digit, at most 48 characters). It is
/// spliced into DDL, so nothing else may pass.
pub fn validate_keyspace(name: &str) -> std::result::Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid keyspace name {name:?} (letters, digits and '_', not starting with a digit, at most 48)"
        ))
    }
}

/// Which CQL server the store talks to, where that changes what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// Apache Cassandra (the test clusters of `scripts/cql.sh`): no
    /// `tablets` keyspace option.
    Cassandra,
    /// ScyllaDB; `tablets` when the cluster has the TABLETS feature (6.0+),
    /// which is when the keyspace option exists.
    Scylla { tablets: bool },
}

/// Tells the server apart from what every node answers: ScyllaDB lists its
/// own `scylla_*` tables in `system_schema`; Cassandra has none. `features`
/// is ScyllaDB's `system.local.supported_features` (comma-separated).
pub fn server_from(system_schema_tables: &[String], features: Option<&str>) -> Server {
    if system_schema_tables
        .iter()
        .any(|t| t.starts_with("scylla_"))
    {
        let tablets = features
            .unwrap_or_default()
            .split(',')
            .any(|f| f.trim() == "TABLETS");
        Server::Scylla { tablets }
    } else {
        Server::Cassandra
    }
}

/// The `CREATE KEYSPACE` statement for this server. ScyllaDB with tablets
/// gets them disabled unless asked for (LWT on tablets keyspaces needs
/// ScyllaDB 2025.4+); a server without tablets gets no such option, and
/// asking for tablets there is an error.
pub fn create_keyspace_cql(
    keyspace: &str,
    replication_factor: u32,
    server: Server,
    tablets: bool,
) -> Result<String> {
    validate_keyspace(keyspace).map_err(StoreError::Backend)?;
    if replication_factor == 0 {
        return Err(StoreError::Backend(
            "replication_factor must be at least 1".into(),
        ));
    }
    let options = match server {
        Server::Scylla { tablets: true } => format!(" AND tablets = {{'enabled': {tablets}}}"),
        Server::Cassandra | Server::Scylla { tablets: false } if tablets => {
            return Err(StoreError::Backend(format!(
                "tablets are configured but the server ({server:?}) has none"
            )));
        }
        Server::Cassandra | Server::Scylla { tablets: false } => String::new(),
    };
    Ok(format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}{options}"
    ))
}

/// Splits a migration file into statements: they are separated by a line
/// holding only `;`; `--` comment lines are dropped.
pub fn split_statements(cql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in cql.lines() {
        let trimmed = line.trim();
        if trimmed == ";" {
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        } else if !trimmed.starts_with("--") {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The (table, column) an `ALTER TABLE <table> ADD <column> <type>`
/// migration statement adds; `None` for any other statement. CQL has no
/// portable `ADD IF NOT EXISTS` (Cassandra 5 has it, ScyllaDB does not), so
/// the migration runs such a statement only when the column is missing.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let keyword = |w: Option<&str>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k));
    if !keyword(words.next(), "ALTER") || !keyword(words.next(), "TABLE") {
        return None;
    }
    let table = words.next()?;
    if !keyword(words.next(), "ADD") {
        return None;
    }
    let column = words.next()?;
    let is_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !n.eq_ignore_ascii_case("IF")
    };
    // One column and its type: no `IF NOT EXISTS`, no `(a int, b int)`.
    (is_name(table) && is_name(column) && words.next().is_some()).then_some((table, column))
}

/// The tables the migrations create, in order.
pub fn schema_tables() -> Vec<String> {
    MIGRATIONS
        .iter()
        .flat_map(|(_, cql)| split_statements(cql))
        .filter_map(|s| {
            s.strip_prefix("CREATE TABLE IF NOT EXISTS ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        })
        .collect()
}

/// The timeline partition (bucket) holding `seq`.
pub fn bucket_of(seq: u64, bucket_size: u64) -> u64 {
    seq / bucket_size.max(1)
}

/// The buckets to read, in order, for entries after `after_seq` up to
/// `head_seq` (inclusive); empty when there is nothing after the cursor.
pub fn bucket_range(
    after_seq: u64,
    head_seq: u64,
    bucket_size: u64,
) -> std::ops::RangeInclusive<u64> {
    if head_seq <= after_seq {
        #[allow(clippy::reversed_empty_ranges)]
        return 1..=0;
    }
    bucket_of(after_seq.saturating_add(1), bucket_size)..=bucket_of(head_seq, bucket_size)
}

/// The TTL (seconds) of a timeline row; 0 = no TTL. Saturates at CQL's
/// maximum TTL (20 years).
pub fn ttl_seconds(retention_days: u32) -> i32 {
    const MAX_TTL: i64 = 630_720_000;
    (i64::from(retention_days) * 86_400).min(MAX_TTL) as i32
}

/// A u64 (seq, epoch, time) as CQL bigint. Values above i64::MAX are a
/// bug upstream: refused, never wrapped.
pub fn to_bigint(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} exceeds bigint")))
}

/// A CQL bigint as u64; a negative stored value is corruption.
pub fn from_bigint(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Backend(format!("corrupt {what} {v}")))
}

/// A `timeline` row as read by `SELECT seq, kind, epoch, sender,
/// client_msg_id, message, server_time_ms`.
#[derive(Clone, Debug, PartialEq, Eq, scylla::DeserializeRow)]
pub struct TimelineRow {
    pub seq: i64,
    pub kind: i32,
    pub epoch: i64,
    pub sender: String,
    pub client_msg_id: Vec<u8>,
    pub message: Vec<u8>,
    pub server_time_ms: i64,
}

/// The columns [`TimelineRow`] reads, in order.
pub const SELECT_TIMELINE: &str = "SELECT seq, kind, epoch, sender, client_msg_id, message, \
     server_time_ms FROM timeline WHERE group_id = ? AND bucket = ? AND seq > ?";

impl TryFrom<TimelineRow> for Entry {
    type Error = StoreError;

    fn try_from(r: TimelineRow) -> Result<Entry> {
        let seq = from_bigint(r.seq, "seq")?;
        let kind = EntryKind::from_i64(i64::from(r.kind)).ok_or_else(|| {
            StoreError::Backend(format!("corrupt entry kind {} at seq {seq}", r.kind))
        })?;
        Ok(Entry {
            seq,
            kind,
            epoch: from_bigint(r.epoch, "epoch")?,
            sender: r.sender,
            client_msg_id: r.client_msg_id,
            message: r.message,
            server_time_ms: from_bigint(r.server_time_ms, "server_time_ms")?,
        })
    }
}

/// The CQL [`crate::Store`] (ScyllaDB in production, Cassandra in tests).
/// See the module docs. Built by [`ScyllaStore::connect`] (connected on
/// return) or [`ScyllaStore::start`] (connects in the background).
pub struct ScyllaStore {
    config: ScyllaConfig,
    link: Arc<connection::Link>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("contact_points", &self.config.contact_points)
            .field("keyspace", &self.config.keyspace)
            .field("connected", &self.link.get().is_some())
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects to `config.contact_points`, creates the keyspace if missing,
    /// applies the schema migrations and prepares every statement, once. An
    /// unreachable cluster fails with [`StoreError::Unavailable`] naming the
    /// contact points.
    pub async fn connect(config: ScyllaConfig) -> Result<ScyllaStore> {
        check_config(&config)?;
        let connected = connection::establish(&config).await?;
        Ok(ScyllaStore {
            config,
            link: Arc::new(connection::Link::connected(connected)),
        })
    }

    /// Returns at once and connects in the background (on the current tokio
    /// runtime), retrying with backoff until it succeeds; each failure is
    /// logged naming the contact points. Until then every operation fails
    /// with [`StoreError::Unavailable`] and [`crate::Store::ready`] says why.
    /// Only a configuration that can never work fails here.
    pub fn start(config: ScyllaConfig) -> Result<ScyllaStore> {
        check_config(&config)?;
        let link = Arc::new(connection::Link::default());
        tokio::spawn(connection::connect_in_background(
            config.clone(),
            Arc::downgrade(&link),
        ));
        Ok(ScyllaStore { config, link })
    }

    /// The driver session once connected (for tests and tools).
    pub fn session(&self) -> Option<&Arc<Session>> {
        self.link.get().map(|c| &c.session)
    }

    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    /// The server kind found when connecting.
    pub fn server(&self) -> Option<Server> {
        self.link.get().map(|c| c.server)
    }
}

fn check_config(config: &ScyllaConfig) -> Result<()> {
    validate_keyspace(&config.keyspace).map_err(StoreError::Backend)?;
    if config.contact_points.is_empty() {
        return Err(StoreError::Backend(
            "no ScyllaDB contact points configured".into(),
        ));
    }
    if config.replication_factor == 0 {
        return Err(StoreError::Backend(
            "replication_factor must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_parses_the_three_levels_and_names_bad_input() {
        assert_eq!("quorum".parse(), Ok(ConsistencyLevel::Quorum));
        assert_eq!("local_quorum".parse(), Ok(ConsistencyLevel::LocalQuorum));
        assert_eq!("one".parse(), Ok(ConsistencyLevel::One));
        let err = "all".parse::<ConsistencyLevel>().unwrap_err();
        assert!(err.contains("\"all\""), "{err}");
        assert_eq!(ConsistencyLevel::Quorum.consistency(), Consistency::Quorum);
        assert_eq!(ConsistencyLevel::One.consistency(), Consistency::One);
        assert_eq!(
            ConsistencyLevel::LocalQuorum.consistency(),
            Consistency::LocalQuorum
        );
        assert_eq!(ConsistencyLevel::Quorum.serial(), SerialConsistency::Serial);
        assert_eq!(ConsistencyLevel::One.serial(), SerialConsistency::Serial);
        assert_eq!(
            ConsistencyLevel::LocalQuorum.serial(),
            SerialConsistency::LocalSerial
        );
    }

    #[test]
    fn keyspace_ddl_disables_tablets_unless_asked() {
        let scylla = Server::Scylla { tablets: true };
        assert_eq!(
            create_keyspace_cql("hush", 3, scylla, false).unwrap(),
            "CREATE KEYSPACE IF NOT EXISTS hush WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 3} AND tablets = {'enabled': false}"
        );
        assert!(create_keyspace_cql("hush_test_1", 1, scylla, true)
            .unwrap()
            .ends_with("AND tablets = {'enabled': true}"));
        assert!(create_keyspace_cql("hush", 0, scylla, false).is_err());
    }

    /// Cassandra (and ScyllaDB before tablets) refuse the `tablets` option
    /// as a syntax error ("Unknown property 'tablets'", seen on Cassandra
    /// 5.0.9): it is never sent there.
    #[test]
    fn servers_without_tablets_get_no_tablets_option() {
        for server in [Server::Cassandra, Server::Scylla { tablets: false }] {
            assert_eq!(
                create_keyspace_cql("hush", 3, server, false).unwrap(),
                "CREATE KEYSPACE IF NOT EXISTS hush WITH replication = \
                 {'class': 'SimpleStrategy', 'replication_factor': 3}"
            );
            let err = create_keyspace_cql("hush", 3, server, true).unwrap_err();
            assert!(err.to_string().contains("tablets"), "{err}");
        }
    }

    #[test]
    fn the_server_is_told_apart_by_its_schema_tables_and_features() {
        let cassandra: Vec<String> = ["keyspaces", "tables", "columns", "views"]
            .map(String::from)
            .to_vec();
        assert_eq!(server_from(&cassandra, None), Server::Cassandra);
        let mut scylla = cassandra.clone();
        scylla.push("scylla_tables".into());
        assert_eq!(
            server_from(&scylla, Some("CDC,LWT,TABLETS,UDA")),
            Server::Scylla { tablets: true }
        );
        assert_eq!(
            server_from(&scylla, Some("CDC,LWT")),
            Server::Scylla { tablets: false }
        );
        assert_eq!(
            server_from(&scylla, None),
            Server::Scylla { tablets: false }
        );
    }

    #[test]
    fn keyspace_names_that_could_inject_cql_are_refused() {
        for bad in ["", "1abc", "a b", "hush; DROP", "a\"b", &"x".repeat(49)] {
            assert!(validate_keyspace(bad).is_err(), "{bad:?}");
            assert!(
                create_keyspace_cql(bad, 1, Server::Cassandra, false).is_err(),
                "{bad:?}"
            );
        }
        for good in ["hush", "Hush_2", "_x", &"x".repeat(48)] {
            assert!(validate_keyspace(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn the_schema_splits_into_idempotent_statements() {
        assert_eq!(MIGRATIONS.len(), SCHEMA_VERSION as usize);
        for (i, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1, "migrations are numbered densely");
        }
        assert_eq!(split_statements(MIGRATIONS[0].1).len(), 18);
        assert_eq!(split_statements(MIGRATIONS[1].1).len(), 1);
        assert_eq!(split_statements(MIGRATIONS[2].1).len(), 2);
        assert_eq!(split_statements(MIGRATIONS[3].1).len(), 2);
        let statements: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|(_, cql)| split_statements(cql))
            .collect();
        let mut added = Vec::new();
        for s in &statements {
            match added_column(s) {
                Some(column) => added.push(column),
                None => assert!(
                    s.starts_with("CREATE TABLE IF NOT EXISTS "),
                    "not idempotent: {s}"
                ),
            }
            assert!(!s.contains("--"), "comment left in: {s}");
            assert!(!s.contains(';'), "separator left in: {s}");
        }
        assert_eq!(
            added,
            vec![
                ("groups", "pending_welcome"),
                ("groups", "pending_writer"),
                ("client_msgs", "writer")
            ]
        );
        let tables = schema_tables();
        assert_eq!(tables.len(), statements.len() - added.len());
        for needed in [
            "schema_version",
            "groups",
            "timeline",
            "client_msgs",
            "inbox",
            "last_resort_claims",
            "welcomes",
        ] {
            assert!(
                tables.iter().any(|t| t == needed),
                "{needed} missing from {tables:?}"
            );
        }
        assert!(statements
            .iter()
            .any(|s| s.contains("PRIMARY KEY ((group_id, bucket), seq)")));
    }

    #[test]
    fn added_columns_are_told_from_other_statements() {
        assert_eq!(
            added_column("ALTER TABLE groups ADD pending_welcome frozen<tuple<bigint, blob>>"),
            Some(("groups", "pending_welcome"))
        );
        assert_eq!(added_column("alter  table t\n add c int"), Some(("t", "c")));
        for other in [
            "CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)",
            "ALTER TABLE t ADD IF NOT EXISTS c int",
            "ALTER TABLE t ADD (a int, b int)",
            "ALTER TABLE t DROP c",
            "ALTER TABLE t ADD c",
            "ALTER TABLE t WITH comment = 'x'",
            "ALTER TABLE",
        ] {
            assert_eq!(added_column(other), None, "{other}");
        }
    }

    #[test]
    fn split_statements_keeps_a_trailing_statement_and_skips_empty_ones() {
        assert_eq!(
            split_statements("-- c\nCREATE A\n;\n;\n\nCREATE B\n"),
            vec!["CREATE A".to_string(), "CREATE B".to_string()]
        );
    }

    #[test]
    fn buckets_bound_partitions() {
        assert_eq!(bucket_of(0, 100), 0);
        assert_eq!(bucket_of(99, 100), 0);
        assert_eq!(bucket_of(100, 100), 1);
        assert_eq!(bucket_of(12_345, 10_000), 1);
        // A zero size is treated as 1, never a division by zero.
        assert_eq!(bucket_of(7, 0), 7);
        assert!(bucket_range(5, 5, 100).is_empty());
        assert!(bucket_range(9, 3, 100).is_empty());
        assert_eq!(bucket_range(0, 1, 100), 0..=0);
        assert_eq!(bucket_range(99, 100, 100), 1..=1);
        assert_eq!(bucket_range(98, 250, 100), 0..=2);
    }

    #[test]
    fn ttl_is_days_in_seconds_capped_at_the_cql_maximum() {
        assert_eq!(ttl_seconds(0), 0);
        assert_eq!(ttl_seconds(1), 86_400);
        assert_eq!(ttl_seconds(30), 2_592_000);
        assert_eq!(ttl_seconds(u32::MAX), 630_720_000);
    }

    #[test]
    fn bigint_conversions_refuse_what_does_not_fit() {
        assert_eq!(to_bigint(5, "seq").unwrap(), 5);
        assert!(to_bigint(u64::MAX, "seq").is_err());
        assert_eq!(from_bigint(5, "seq").unwrap(), 5);
        assert!(from_bigint(-1, "seq").is_err());
    }

    fn row() -> TimelineRow {
        TimelineRow {
            seq: 7,
            kind: 3,
            epoch: 2,
            sender: "alice/alice-1".into(),
            client_msg_id: b"m1".to_vec(),
            message: b"ct".to_vec(),
            server_time_ms: 99,
        }
    }

    #[test]
    fn a_timeline_row_maps_to_an_entry() {
        let entry = Entry::try_from(row()).unwrap();
        assert_eq!(
            entry,
            Entry {
                seq: 7,
                kind: EntryKind::Application,
                epoch: 2,
                sender: "alice/alice-1".into(),
                client_msg_id: b"m1".to_vec(),
                message: b"ct".to_vec(),
                server_time_ms: 99,
            }
        );
        assert!(SELECT_TIMELINE.starts_with(
            "SELECT seq, kind, epoch, sender, client_msg_id, message, server_time_ms FROM timeline"
        ));
    }

    #[test]
    fn corrupt_timeline_rows_are_errors_not_panics() {
        let mut r = row();
        r.kind = 9;
        assert!(matches!(Entry::try_from(r), Err(StoreError::Backend(m)) if m.contains("kind 9")));
        let mut r = row();
        r.seq = -1;
        assert!(Entry::try_from(r).is_err());
        let mut r = row();
        r.server_time_ms = -5;
        assert!(Entry::try_from(r).is_err());
    }

    #[test]
    fn config_defaults() {
        let c = ScyllaConfig::new(vec!["127.0.0.1:9042".into()]);
        assert_eq!(c.keyspace, "hush");
        assert_eq!(c.consistency, ConsistencyLevel::Quorum);
        assert_eq!(c.retention_days, 0);
        assert!(!c.tablets);
    }

    /// Real: a loopback port nobody listens on. No server needed.
    #[tokio::test]
    async fn an_unreachable_cluster_fails_with_the_contact_points_named() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let point = format!("127.0.0.1:{port}");
        let mut config = ScyllaConfig::new(vec![point.clone()]);
        config.request_timeout = Duration::from_secs(2);
        let err = ScyllaStore::connect(config.clone()).await.unwrap_err();
        match err {
            StoreError::Unavailable(msg) => {
                assert!(msg.contains(&point), "{msg}");
                assert!(msg.contains("cannot reach ScyllaDB"), "{msg}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// Real: nothing listens there. `start` returns at once; until a
    /// connection attempt succeeds every operation and `ready` answer
    /// `Unavailable` naming the contact points and the last failure.
    #[tokio::test]
    async fn a_store_started_without_a_cluster_is_unavailable_and_says_why() {
        use crate::Store;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let point = format!("127.0.0.1:{port}");
        let mut config = ScyllaConfig::new(vec![point.clone()]);
        config.request_timeout = Duration::from_secs(1);
        let store = ScyllaStore::start(config).expect("a valid configuration starts");
        assert!(store.session().is_none());
        let entry = crate::NewEntry {
            kind: EntryKind::Application,
            epoch: 1,
            sender: "a/b".into(),
            client_msg_id: b"m".to_vec(),
            message: b"x".to_vec(),
            server_time_ms: 0,
        };
        // The first attempt fails fast on a closed port; from then on the
        // reason given is its error. No event marks an attempt's end, so
        // this polls, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(matches!(
                store.append_message(b"g", 1, &entry).await,
                Err(StoreError::Unavailable(_))
            ));
            let msg = match store.ready().await {
                Err(StoreError::Unavailable(msg)) => msg,
                other => panic!("expected Unavailable, got {other:?}"),
            };
            assert!(msg.contains(&point), "{msg}");
            assert!(msg.contains("not connected"), "{msg}");
            if msg.contains("cannot reach ScyllaDB") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{msg}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn configurations_that_can_never_work_fail_at_start() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(ScyllaStore::start(ScyllaConfig::new(vec![])).is_err());
            let mut c = ScyllaConfig::new(vec!["127.0.0.1:9".into()]);
            c.keyspace = "no; DROP".into();
            assert!(ScyllaStore::start(c).is_err());
            let mut c = ScyllaConfig::new(vec!["127.0.0.1:9".into()]);
            c.replication_factor = 0;
            assert!(ScyllaStore::start(c).is_err());
        });
    }
}
