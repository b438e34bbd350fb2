//! The statements (each prepared once at connect, with how it runs: see
//! [`Mode`]) and [`Store`] for [`ScyllaStore`], following the design in the
//! parent module's docs. Invariants: every decision is one LWT on one
//! partition taken after a read of that partition at SERIAL; LWTs and
//! writes with non-fixed values are never marked idempotent; a transient
//! error is retried only where a repetition is harmless.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ::scylla::client::session::Session;
use ::scylla::response::query_result::QueryResult;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::serialize::value::SerializeValue;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::statement::Consistency;
use ::scylla::value::{CqlValue, Row};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use ring::rand::SecureRandom as _;

use super::error::{exec_error, next_row_error, pager_error, prepare_error, Transient};
use super::welcome::PendingWelcome;
use super::{
    bucket_of, bucket_range, from_bigint, to_bigint, ttl_seconds, ScyllaStore, TimelineRow,
};
use crate::{
    AckDecision, AckState, AppendOutcome, ClaimedKeyPackage, CommitWrite, Departure, Device,
    DeviceGroup, Entry, GroupRecord, InboxItem, KeyPackageRecord, Lease, MemberDevice, NewEntry,
    NewGroup, Result, Standing, Store, StoreError,
};

/// A group's members as stored: device_id -> (user_id, joined_seq).
pub type MemberMap = HashMap<String, (String, i64)>;
/// A commit's Welcomes as a version-2 binary left them pending (a copy
/// per device): device_id -> (welcome, ratchet_tree).
pub type Welcomes = HashMap<String, (Vec<u8>, Vec<u8>)>;
/// The head's `pending_welcome`: (commit seq, Welcome, welcomed devices).
type WelcomeCell = (i64, Vec<u8>, BTreeSet<String>);
/// Departed devices: device_id -> joined_seq.
pub type Departed = HashMap<String, i64>;

/// How long an LWT loop that keeps losing races (to other writers of the
/// same row) tries before it answers `Unavailable`.
const CONTENTION_GIVE_UP: Duration = Duration::from_secs(30);
/// After losing round `n` of such a race, a writer pauses a random time up
/// to `CONTENTION_FIRST_PAUSE × 2^n`, at most [`CONTENTION_MAX_PAUSE`]
/// ("full jitter": contenders that pause alike keep colliding).
const CONTENTION_FIRST_PAUSE: Duration = Duration::from_millis(1);
const CONTENTION_MAX_PAUSE: Duration = Duration::from_millis(50);

/// How a statement runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A plain write or read that may be repeated safely.
    Idempotent,
    /// A lightweight transaction (never marked idempotent: a retried
    /// Paxos round after a timeout could apply twice).
    Lwt,
    /// A read at SERIAL consistency: sees every applied LWT.
    SerialRead,
    /// A plain write that must not be repeated: its values are not fixed
    /// (`now()`), so a retry after a timeout could write a second row.
    Once,
    /// An idempotent statement the seq invariant relies on (materializing
    /// entries, the client_msg_id lookup): at QUORUM (LOCAL_QUORUM with
    /// `local_quorum`) even when the configured consistency is ONE.
    Quorum,
}

impl Mode {
    /// Whether running the statement again after an error with an unknown
    /// outcome is harmless.
    pub fn repeatable(self) -> bool {
        matches!(self, Mode::Idempotent | Mode::Quorum | Mode::SerialRead)
    }
}

/// The TTL a link code row gets: until its expiry by the wall clock, plus a
/// minute, so that the row outlives its logical expiry (which `take`
/// checks against the caller's clock) and is then collected by ScyllaDB
/// itself: expired codes never pile up and need no sweep.
fn link_code_ttl_s(expires_at_ms: u64) -> i32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = expires_at_ms.saturating_sub(now) / 1000 + 60;
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// Every statement the backend runs: (name, mode, CQL). Prepared once at
/// open.
pub const STATEMENTS: &[(&str, Mode, &str)] = &[
    ("user_insert", Mode::Lwt, "INSERT INTO users (user_id, created_at_ms) VALUES (?, ?) IF NOT EXISTS"),
    ("user_get", Mode::SerialRead, "SELECT user_id FROM users WHERE user_id = ?"),
    ("device_insert", Mode::Lwt, "INSERT INTO devices (device_id, user_id, signature_key, token_generation, created_at_ms) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"),
    ("device_delete", Mode::Idempotent, "DELETE FROM devices WHERE device_id = ?"),
    ("device_get", Mode::SerialRead, "SELECT user_id, device_id, signature_key, token_generation, created_at_ms FROM devices WHERE device_id = ?"),
    ("device_by_user_insert", Mode::Idempotent, "INSERT INTO devices_by_user (user_id, created_at_ms, device_id) VALUES (?, ?, ?)"),
    ("devices_by_user", Mode::Idempotent, "SELECT device_id FROM devices_by_user WHERE user_id = ?"),
    ("device_bump", Mode::Lwt, "UPDATE devices SET token_generation = ? WHERE device_id = ? IF token_generation = ?"),
    ("secret_insert", Mode::Lwt, "INSERT INTO secrets (name, value) VALUES (?, ?) IF NOT EXISTS"),
    ("secret_get", Mode::SerialRead, "SELECT value FROM secrets WHERE name = ?"),
    ("secret_delete", Mode::Lwt, "DELETE FROM secrets WHERE name = ? IF EXISTS"),
    ("link_insert", Mode::Idempotent, "INSERT INTO link_codes (code_hash, user_id, expires_at_ms) VALUES (?, ?, ?) USING TTL ?"),
    ("link_get", Mode::SerialRead, "SELECT user_id, expires_at_ms FROM link_codes WHERE code_hash = ?"),
    ("link_delete", Mode::Lwt, "DELETE FROM link_codes WHERE code_hash = ? IF EXISTS"),
    ("kp_ref_insert", Mode::Lwt, "INSERT INTO key_package_refs (hash_ref, device_id) VALUES (?, ?) IF NOT EXISTS"),
    ("kp_insert", Mode::Once, "INSERT INTO key_packages (device_id, id, hash_ref, data) VALUES (?, now(), ?, ?)"),
    ("kp_oldest", Mode::SerialRead, "SELECT id, data FROM key_packages WHERE device_id = ? LIMIT 16"),
    ("kp_claim", Mode::Lwt, "DELETE FROM key_packages WHERE device_id = ? AND id = ? IF EXISTS"),
    ("kp_count", Mode::SerialRead, "SELECT COUNT(*) FROM key_packages WHERE device_id = ?"),
    ("lr_upsert", Mode::Idempotent, "INSERT INTO last_resort_packages (device_id, hash_ref, data) VALUES (?, ?, ?)"),
    ("lr_get", Mode::Idempotent, "SELECT data FROM last_resort_packages WHERE device_id = ?"),
    ("lr_claim_mark", Mode::Lwt, "INSERT INTO last_resort_claims (device_id) VALUES (?) IF NOT EXISTS"),
    ("lr_claim_clear", Mode::Lwt, "DELETE FROM last_resort_claims WHERE device_id = ? IF EXISTS"),
    ("group_insert", Mode::Lwt, "INSERT INTO groups (group_id, epoch, state, group_info, ratchet_tree, head_seq, lease_owner, lease_token, lease_expires_ms, members) VALUES (?, ?, ?, ?, ?, 0, '', 0, 0, ?) IF NOT EXISTS"),
    ("group_get", Mode::SerialRead, "SELECT epoch, state, group_info, ratchet_tree, head_seq, members FROM groups WHERE group_id = ?"),
    ("head_get", Mode::SerialRead, "SELECT epoch, head_seq, lease_owner, lease_token, lease_expires_ms, members, pending_seq, pending_kind, pending_epoch, pending_sender, pending_cmid, pending_message, pending_time_ms, pending_writer, pending_added, pending_departed, pending_welcomes, pending_welcome FROM groups WHERE group_id = ?"),
    ("head_tree_get", Mode::SerialRead, "SELECT head_seq, ratchet_tree FROM groups WHERE group_id = ?"),
    ("lease_set", Mode::Lwt, "UPDATE groups SET lease_owner = ?, lease_token = ?, lease_expires_ms = ? WHERE group_id = ? IF lease_owner = ? AND lease_token = ?"),
    ("lease_release", Mode::Lwt, "UPDATE groups SET lease_expires_ms = 0 WHERE group_id = ? IF lease_owner = ? AND lease_token = ?"),
    ("append_message", Mode::Lwt, "UPDATE groups SET head_seq = ?, pending_seq = ?, pending_kind = ?, pending_epoch = ?, pending_sender = ?, pending_cmid = ?, pending_message = ?, pending_time_ms = ?, pending_writer = ?, pending_added = null, pending_departed = null, pending_welcomes = null, pending_welcome = null WHERE group_id = ? IF head_seq = ? AND lease_token = ?"),
    ("append_proposal", Mode::Lwt, "UPDATE groups SET head_seq = ?, pending_seq = ?, pending_kind = ?, pending_epoch = ?, pending_sender = ?, pending_cmid = ?, pending_message = ?, pending_time_ms = ?, pending_writer = ?, pending_added = null, pending_departed = null, pending_welcomes = null, pending_welcome = null, state = ? WHERE group_id = ? IF head_seq = ? AND lease_token = ?"),
    ("append_commit", Mode::Lwt, "UPDATE groups SET head_seq = ?, pending_seq = ?, pending_kind = ?, pending_epoch = ?, pending_sender = ?, pending_cmid = ?, pending_message = ?, pending_time_ms = ?, pending_writer = ?, pending_added = ?, pending_departed = ?, pending_welcomes = null, pending_welcome = ?, epoch = ?, state = ?, group_info = ?, ratchet_tree = ?, members = ? WHERE group_id = ? IF head_seq = ? AND lease_token = ?"),
    ("timeline_insert", Mode::Quorum, "INSERT INTO timeline (group_id, bucket, seq, kind, epoch, sender, client_msg_id, message, server_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"),
    ("timeline_read", Mode::Quorum, super::SELECT_TIMELINE),
    ("cmid_insert", Mode::Quorum, "INSERT INTO client_msgs (group_id, client_msg_id, seq, writer) VALUES (?, ?, ?, ?) USING TTL ?"),
    ("cmid_get", Mode::Quorum, "SELECT seq, writer FROM client_msgs WHERE group_id = ? AND client_msg_id = ?"),
    ("dg_insert", Mode::Quorum, "INSERT INTO device_groups (device_id, group_id, joined_seq) VALUES (?, ?, ?) USING TIMESTAMP ?"),
    ("dg_delete", Mode::Quorum, "DELETE FROM device_groups USING TIMESTAMP ? WHERE device_id = ? AND group_id = ?"),
    ("dg_list", Mode::Idempotent, "SELECT group_id, joined_seq FROM device_groups WHERE device_id = ?"),
    ("departure_insert", Mode::Quorum, "INSERT INTO departures (device_id, group_id, joined_seq, left_seq) VALUES (?, ?, ?, ?)"),
    ("departure_settle", Mode::Lwt, "DELETE FROM departures WHERE device_id = ? AND group_id = ? IF left_seq <= ?"),
    ("departure_list", Mode::Idempotent, "SELECT group_id, joined_seq, left_seq FROM departures WHERE device_id = ?"),
    ("cursor_insert", Mode::Lwt, "INSERT INTO cursors (device_id, group_id, seq) VALUES (?, ?, ?) IF NOT EXISTS"),
    ("cursor_advance", Mode::Lwt, "UPDATE cursors SET seq = ? WHERE device_id = ? AND group_id = ? IF seq < ?"),
    ("cursor_list", Mode::Idempotent, "SELECT group_id, seq FROM cursors WHERE device_id = ?"),
    ("ack_cursor_get", Mode::Idempotent, "SELECT seq FROM cursors WHERE device_id = ? AND group_id = ?"),
    ("ack_dg_get", Mode::Idempotent, "SELECT joined_seq FROM device_groups WHERE device_id = ? AND group_id = ?"),
    ("ack_departure_get", Mode::Idempotent, "SELECT joined_seq, left_seq FROM departures WHERE device_id = ? AND group_id = ?"),
    ("ack_head_get", Mode::SerialRead, "SELECT head_seq FROM groups WHERE group_id = ?"),
    ("delivery_get", Mode::SerialRead, "SELECT inbox_seq FROM welcome_deliveries WHERE device_id = ? AND group_id = ? AND commit_seq = ?"),
    ("delivery_insert", Mode::Lwt, "INSERT INTO welcome_deliveries (device_id, group_id, commit_seq, inbox_seq) VALUES (?, ?, ?, ?) IF NOT EXISTS"),
    ("counter_get", Mode::SerialRead, "SELECT last_seq FROM inbox_counters WHERE device_id = ?"),
    ("counter_init", Mode::Lwt, "INSERT INTO inbox_counters (device_id, last_seq) VALUES (?, 1) IF NOT EXISTS"),
    ("counter_bump", Mode::Lwt, "UPDATE inbox_counters SET last_seq = ? WHERE device_id = ? IF last_seq = ?"),
    ("inbox_insert", Mode::Quorum, "INSERT INTO inbox (device_id, inbox_seq, group_id, commit_seq) VALUES (?, ?, ?, ?)"),
    ("inbox_insert_inline", Mode::Quorum, "INSERT INTO inbox (device_id, inbox_seq, group_id, commit_seq, welcome, ratchet_tree) VALUES (?, ?, ?, ?, ?, ?)"),
    ("inbox_read", Mode::Idempotent, "SELECT inbox_seq, group_id, commit_seq, welcome, ratchet_tree FROM inbox WHERE device_id = ? AND inbox_seq > ?"),
    ("inbox_refs", Mode::Quorum, "SELECT group_id, commit_seq FROM inbox WHERE device_id = ? AND inbox_seq <= ?"),
    ("inbox_ack", Mode::Idempotent, "DELETE FROM inbox WHERE device_id = ? AND inbox_seq <= ?"),
    ("welcome_put", Mode::Quorum, "UPDATE welcomes SET welcome = ?, ratchet_tree = ?, waiting = waiting + ? WHERE group_id = ? AND commit_seq = ?"),
    ("welcome_get", Mode::Quorum, "SELECT welcome, ratchet_tree FROM welcomes WHERE group_id = ? AND commit_seq = ?"),
    ("welcome_unwait", Mode::Quorum, "UPDATE welcomes SET waiting = waiting - ? WHERE group_id = ? AND commit_seq = ?"),
    ("welcome_waiting", Mode::Quorum, "SELECT waiting FROM welcomes WHERE group_id = ? AND commit_seq = ?"),
    ("welcome_delete", Mode::Quorum, "DELETE FROM welcomes WHERE group_id = ? AND commit_seq = ?"),
    ("ready_probe", Mode::Quorum, "SELECT version FROM schema_version WHERE version = ?"),
];

/// The prepared statements, by name, with how each runs.
pub(super) struct Prepared(HashMap<&'static str, (PreparedStatement, Mode)>);

impl Prepared {
    pub(super) async fn prepare(
        session: &Session,
        serial_read: Consistency,
        strong: Consistency,
        page_size: i32,
    ) -> Result<Prepared> {
        let mut map = HashMap::with_capacity(STATEMENTS.len());
        for (name, mode, cql) in STATEMENTS {
            let mut p = session
                .prepare(*cql)
                .await
                .map_err(|e| prepare_error(name, e))?;
            p.set_is_idempotent(matches!(mode, Mode::Idempotent | Mode::Quorum));
            match mode {
                Mode::SerialRead => p.set_consistency(serial_read),
                Mode::Quorum => p.set_consistency(strong),
                Mode::Idempotent | Mode::Lwt | Mode::Once => {}
            }
            p.set_page_size(page_size.max(1));
            map.insert(*name, (p, *mode));
        }
        Ok(Prepared(map))
    }

    fn get(&self, name: &str) -> Result<&(PreparedStatement, Mode)> {
        self.0
            .get(name)
            .ok_or_else(|| StoreError::Backend(format!("statement {name} not prepared (a bug)")))
    }
}

fn backend(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

/// The group head as read at SERIAL.
#[derive(::scylla::DeserializeRow)]
struct HeadRow {
    epoch: i64,
    head_seq: i64,
    lease_owner: String,
    lease_token: i64,
    lease_expires_ms: i64,
    members: Option<MemberMap>,
    pending_seq: Option<i64>,
    pending_kind: Option<i32>,
    pending_epoch: Option<i64>,
    pending_sender: Option<String>,
    pending_cmid: Option<Vec<u8>>,
    pending_message: Option<Vec<u8>>,
    pending_time_ms: Option<i64>,
    pending_writer: Option<Vec<u8>>,
    pending_added: Option<BTreeSet<String>>,
    pending_departed: Option<HashMap<String, i64>>,
    pending_welcomes: Option<Welcomes>,
    pending_welcome: Option<WelcomeCell>,
}

/// The last appended entry as it sits in the head, with its side effects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub row: TimelineRow,
    /// The nonce of the append call that wrote the entry ([`Writer`]);
    /// `None` for an entry a version-3 binary left pending.
    pub writer: Option<Vec<u8>>,
    pub added: BTreeSet<String>,
    pub departed: HashMap<String, i64>,
    /// A commit's Welcome, stored once for the devices it welcomes.
    pub welcome: Option<PendingWelcome>,
    /// A commit's Welcomes as a version-2 binary left them pending (a copy
    /// per device): delivered inline, as that binary would have.
    pub legacy_welcomes: Welcomes,
}

impl HeadRow {
    /// The pending entry, if the head holds one for its head seq.
    fn pending(&self) -> Option<Pending> {
        let seq = self.pending_seq?;
        if seq <= 0 || seq != self.head_seq {
            return None;
        }
        Some(Pending {
            row: TimelineRow {
                seq,
                kind: self.pending_kind?,
                epoch: self.pending_epoch?,
                sender: self.pending_sender.clone()?,
                client_msg_id: self.pending_cmid.clone()?,
                message: self.pending_message.clone().unwrap_or_default(),
                server_time_ms: self.pending_time_ms?,
            },
            writer: self.pending_writer.clone(),
            added: self.pending_added.clone().unwrap_or_default(),
            departed: self.pending_departed.clone().unwrap_or_default(),
            // Only the Welcome of this very entry: a writer that does not
            // know the column (version 2) leaves an older one in place.
            welcome: self
                .pending_welcome
                .clone()
                .filter(|(welcome_seq, _, _)| *welcome_seq == seq)
                .map(|(_, welcome, devices)| PendingWelcome { welcome, devices }),
            legacy_welcomes: self.pending_welcomes.clone().unwrap_or_default(),
        })
    }
}

/// Whether an LWT applied (first column `[applied]`).
fn applied(result: QueryResult) -> Result<bool> {
    let rows = result
        .into_rows_result()
        .map_err(|e| backend("lwt result", e))?;
    let row: Row = rows.first_row().map_err(|e| backend("lwt result", e))?;
    Ok(matches!(
        row.columns.first(),
        Some(Some(CqlValue::Boolean(true)))
    ))
}

/// The member map after a commit: devices already members keep their
/// joined seq, new ones join at `seq`. Returns (members, added, departed).
pub fn next_members(
    current: &MemberMap,
    members: &[MemberDevice],
    seq: i64,
) -> (MemberMap, BTreeSet<String>, Departed) {
    let mut next = HashMap::with_capacity(members.len());
    let mut added = BTreeSet::new();
    for m in members {
        let joined = match current.get(&m.device_id) {
            Some((_, joined)) => *joined,
            None => {
                added.insert(m.device_id.clone());
                seq
            }
        };
        next.insert(m.device_id.clone(), (m.user_id.clone(), joined));
    }
    let departed = current
        .iter()
        .filter(|(d, _)| !next.contains_key(*d))
        .map(|(d, (_, joined))| (d.clone(), *joined))
        .collect();
    (next, added, departed)
}

/// The member list of a group record, sorted.
pub fn members_of(map: Option<MemberMap>) -> Vec<MemberDevice> {
    let mut members: Vec<MemberDevice> = map
        .unwrap_or_default()
        .into_iter()
        .map(|(device_id, (user_id, _))| MemberDevice { user_id, device_id })
        .collect();
    members.sort();
    members
}

fn entry_row(seq: i64, e: &NewEntry) -> Result<TimelineRow> {
    Ok(TimelineRow {
        seq,
        kind: e.kind as i32,
        epoch: to_bigint(e.epoch, "epoch")?,
        sender: e.sender.clone(),
        client_msg_id: e.client_msg_id.clone(),
        message: e.message.clone(),
        server_time_ms: to_bigint(e.server_time_ms, "server_time_ms")?,
    })
}

/// What an append changes besides the timeline.
enum Change<'a> {
    Message,
    /// The group's new DS state.
    Proposal(&'a [u8]),
    Commit(&'a CommitWrite),
}

impl<'a> Change<'a> {
    /// The epoch the group must be at, if the change depends on one.
    fn expected_epoch(&self, entry: &NewEntry) -> Option<u64> {
        match self {
            Change::Message => None,
            Change::Proposal(_) => Some(entry.epoch),
            Change::Commit(w) => Some(w.expected_epoch),
        }
    }

    /// What the append's LWT writes for `row`: the head's pending entry
    /// and, for a commit, the side effects outside the head partition and
    /// the head's new epoch and members, computed from the current ones.
    fn reservation(
        &self,
        row: TimelineRow,
        writer: &Writer,
        head: &HeadRow,
    ) -> Result<Reservation<'a>> {
        let mut pending = Pending {
            row,
            writer: Some(writer.0.to_vec()),
            added: BTreeSet::new(),
            departed: HashMap::new(),
            welcome: None,
            legacy_welcomes: HashMap::new(),
        };
        let change = match *self {
            Change::Message => HeadChange::Message,
            Change::Proposal(state) => HeadChange::Proposal { state },
            Change::Commit(write) => {
                let current = head.members.clone().unwrap_or_default();
                let (members, added, departed) =
                    next_members(&current, &write.members, pending.row.seq);
                pending.added = added;
                pending.departed = departed;
                // One Welcome for all the devices it adds (the tree is the
                // head's, set by the same LWT): never a copy per device.
                pending.welcome = write
                    .welcome
                    .as_ref()
                    .filter(|w| !w.device_ids.is_empty())
                    .map(|w| PendingWelcome {
                        welcome: w.welcome.clone(),
                        devices: w.device_ids.iter().cloned().collect(),
                    });
                HeadChange::Commit {
                    write,
                    new_epoch: to_bigint(write.new_epoch, "epoch")?,
                    members,
                }
            }
        };
        Ok(Reservation { pending, change })
    }
}

/// What one append's LWT writes into the head.
struct Reservation<'a> {
    pending: Pending,
    change: HeadChange<'a>,
}

/// Who appends: a random nonce per append call, written with its entry
/// (`groups.pending_writer`, then `client_msgs.writer`). An LWT whose
/// outcome is unknown may have applied; when the call then finds its
/// client_msg_id taken, the nonce tells its own entry from a concurrent
/// duplicate's, so exactly one of them reports `Appended`.
struct Writer([u8; 16]);

impl Writer {
    fn new() -> Result<Self> {
        let mut nonce = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| backend("writer nonce", "the system's random source failed"))?;
        Ok(Self(nonce))
    }

    /// Whether an entry written by `by` is this call's.
    fn wrote(&self, by: Option<&[u8]>) -> bool {
        by == Some(self.0.as_slice())
    }
}

/// The head columns an append sets besides the pending entry.
enum HeadChange<'a> {
    Message,
    Proposal {
        state: &'a [u8],
    },
    Commit {
        write: &'a CommitWrite,
        new_epoch: i64,
        members: MemberMap,
    },
}

/// `Fenced` unless `fence` is the head's current lease token. Token 0
/// means no lease was ever taken: nobody may append.
fn check_fence(head: &HeadRow, fence: i64) -> Result<()> {
    if head.lease_token == 0 || head.lease_token != fence {
        return Err(StoreError::Fenced {
            owner: head.lease_owner.clone(),
            token: from_bigint(head.lease_token, "lease token")?,
        });
    }
    Ok(())
}

/// `EpochConflict` unless the head is at `expected` (when one is given).
fn check_epoch(head: &HeadRow, expected: Option<u64>) -> Result<()> {
    let current_epoch = from_bigint(head.epoch, "epoch")?;
    if expected.is_some_and(|e| e != current_epoch) {
        return Err(StoreError::EpochConflict {
            current_epoch,
            head_seq: from_bigint(head.head_seq, "head seq")?,
        });
    }
    Ok(())
}

/// The races one LWT loop lost, and for how long it has been trying.
struct Contention {
    what: &'static str,
    started: std::time::Instant,
    rounds: u32,
}

impl Contention {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            started: std::time::Instant::now(),
            rounds: 0,
        }
    }

    /// After a lost race: pauses (see [`CONTENTION_FIRST_PAUSE`]), or
    /// `Unavailable` once [`CONTENTION_GIVE_UP`] has passed.
    async fn lost(&mut self) -> Result<()> {
        if self.started.elapsed() >= CONTENTION_GIVE_UP {
            return Err(StoreError::Unavailable(format!(
                "{} contended: {} lost races in {:?}",
                self.what,
                self.rounds,
                self.started.elapsed()
            )));
        }
        let ceiling = contention_ceiling(self.rounds);
        self.rounds = self.rounds.saturating_add(1);
        tokio::time::sleep(ceiling.mul_f64(random_fraction())).await;
        Ok(())
    }
}

/// The longest pause after `rounds` lost races.
fn contention_ceiling(rounds: u32) -> Duration {
    CONTENTION_FIRST_PAUSE
        .saturating_mul(2u32.saturating_pow(rounds.min(16)))
        .min(CONTENTION_MAX_PAUSE)
}

/// A number in [0, 1) from std's randomly keyed hasher (jitter needs no
/// more than that).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl ScyllaStore {
    /// Runs a statement once connected. Statements that are safe to repeat
    /// (every mode but LWTs and `Once` writes) are retried after transient
    /// errors, up to [`super::error::TRANSIENT_RETRIES`] times; the driver
    /// itself never retries SERIAL reads, and a node that just died takes
    /// its in-flight requests with it.
    pub(super) async fn run(&self, name: &str, values: impl SerializeRow) -> Result<QueryResult> {
        let connected = self.link.require(&self.config)?;
        let (statement, mode) = connected.prepared.get(name)?;
        let mut transient = Transient::new();
        loop {
            let e = match connected.session.execute_unpaged(statement, &values).await {
                Ok(result) => return Ok(result),
                Err(e) => exec_error(name, e),
            };
            if !mode.repeatable() {
                return Err(e);
            }
            transient.retry_after(e).await?;
        }
    }

    /// Runs an LWT once: whether it applied. After an error its outcome is
    /// unknown (it may have applied): the caller re-reads before deciding.
    async fn lwt_once(&self, name: &str, values: impl SerializeRow) -> Result<bool> {
        applied(self.run(name, values).await?)
    }

    /// Runs an LWT, again after transient errors: for conditions that a
    /// repetition cannot break (a repeated LWT that had applied the first
    /// time reports "not applied", which its callers read as losing a race
    /// and decide again from a fresh read).
    async fn lwt(&self, name: &str, values: impl SerializeRow) -> Result<bool> {
        let mut transient = Transient::new();
        loop {
            match self.lwt_once(name, &values).await {
                Ok(applied) => return Ok(applied),
                Err(e) => transient.retry_after(e).await?,
            }
        }
    }

    /// The ack state, and the `left_seq` of the device's departure from the
    /// group if one is stored (also when it was added again since, or its
    /// cursor reached it: the row waits for an ack that settles it).
    async fn ack_row(&self, device_id: &str, group_id: &[u8]) -> Result<(AckState, Option<u64>)> {
        // Four single-row reads at once (one round trip of latency); the
        // head at SERIAL like every head read, so it sees every acked append.
        let (cursor, member, departure, head) = futures_util::future::try_join4(
            self.one::<(i64,)>("ack_cursor_get", (device_id, group_id)),
            self.one::<(i64,)>("ack_dg_get", (device_id, group_id)),
            self.one::<(i64, i64)>("ack_departure_get", (device_id, group_id)),
            self.one::<(i64,)>("ack_head_get", (group_id,)),
        )
        .await?;
        let cursor = cursor.map(|(c,)| from_bigint(c, "cursor")).transpose()?;
        let standing = match (member, departure) {
            (Some((joined,)), _) => Standing::Member {
                joined_seq: from_bigint(joined, "joined seq")?,
            },
            (None, Some((joined, left))) => {
                let left_seq = from_bigint(left, "left seq")?;
                // As in departed_groups: a departure the cursor has reached
                // is settled, whatever a late replay left behind.
                if cursor.is_some_and(|c| c >= left_seq) {
                    Standing::Stranger
                } else {
                    Standing::Departed {
                        joined_seq: from_bigint(joined, "joined seq")?,
                        left_seq,
                    }
                }
            }
            (None, None) => Standing::Stranger,
        };
        let state = AckState {
            cursor,
            standing,
            head_seq: head
                .map(|(h,)| from_bigint(h, "head seq"))
                .transpose()?
                .unwrap_or(0),
        };
        let left = departure
            .map(|(_, l)| from_bigint(l, "left seq"))
            .transpose()?;
        Ok((state, left))
    }

    /// Moves a cursor forward, creating it if need be: the insert, and if
    /// the row was there, the advance (which applies only forward).
    async fn insert_or_advance_cursor(
        &self,
        device_id: &str,
        group_id: &[u8],
        seq: i64,
    ) -> Result<()> {
        if !self
            .lwt("cursor_insert", (device_id, group_id, seq))
            .await?
        {
            self.lwt("cursor_advance", (seq, device_id, group_id, seq))
                .await?;
        }
        Ok(())
    }

    pub(super) async fn one<R>(&self, name: &str, values: impl SerializeRow) -> Result<Option<R>>
    where
        R: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let rows = self
            .run(name, values)
            .await?
            .into_rows_result()
            .map_err(|e| backend(name, e))?;
        rows.maybe_first_row::<R>().map_err(|e| backend(name, e))
    }

    /// Reads up to `limit` rows, page by page; starts over after a
    /// transient error (reads are safe to repeat).
    pub(super) async fn all<R>(
        &self,
        name: &str,
        values: impl SerializeRow,
        limit: usize,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let mut transient = Transient::new();
        loop {
            match self.all_once(name, &values, limit).await {
                Ok(rows) => return Ok(rows),
                Err(e) => transient.retry_after(e).await?,
            }
        }
    }

    async fn all_once<R>(
        &self,
        name: &str,
        values: impl SerializeRow,
        limit: usize,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let connected = self.link.require(&self.config)?;
        let (statement, _) = connected.prepared.get(name)?;
        let pager = connected
            .session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| pager_error(name, e))?;
        let mut stream = pager.rows_stream::<R>().map_err(|e| backend(name, e))?;
        let mut out = Vec::new();
        while out.len() < limit {
            match stream
                .try_next()
                .await
                .map_err(|e| next_row_error(name, e))?
            {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }

    fn ttl(&self) -> i32 {
        ttl_seconds(self.config.retention_days)
    }

    async fn head(&self, group_id: &[u8]) -> Result<Option<HeadRow>> {
        self.one::<HeadRow>("head_get", (group_id,)).await
    }

    /// Writes a pending entry (and a commit's side effects) where readers
    /// look for it. Every write is an idempotent upsert of fixed values, so
    /// any number of materializers may race. `tree`: the commit's ratchet
    /// tree, when the caller has it (the appender of the entry); others
    /// read it from the head if they need it.
    async fn materialize(&self, group_id: &[u8], p: &Pending, tree: Option<&[u8]>) -> Result<()> {
        let r = &p.row;
        let seq = from_bigint(r.seq, "seq")?;
        let bucket = to_bigint(bucket_of(seq, self.config.bucket_size), "bucket")?;
        self.run(
            "timeline_insert",
            (
                group_id,
                bucket,
                r.seq,
                r.kind,
                r.epoch,
                &r.sender,
                &r.client_msg_id,
                &r.message,
                r.server_time_ms,
                self.ttl(),
            ),
        )
        .await?;
        self.run(
            "cmid_insert",
            (group_id, &r.client_msg_id, r.seq, &p.writer, self.ttl()),
        )
        .await?;
        for device in &p.added {
            self.run("dg_insert", (device, group_id, r.seq, r.seq + 1))
                .await?;
        }
        for (device, joined) in &p.departed {
            self.run("departure_insert", (device, group_id, *joined, r.seq))
                .await?;
            self.run("dg_delete", (r.seq + 1, device, group_id)).await?;
        }
        if let Some(welcome) = &p.welcome {
            self.deliver_welcome(group_id, r.seq, welcome, tree).await?;
        }
        for (device, (welcome, tree)) in &p.legacy_welcomes {
            let inbox_seq = match self.delivered(device, group_id, r.seq).await? {
                Some(n) => n,
                None => self.deliver(device, group_id, r.seq).await?,
            };
            self.run(
                "inbox_insert_inline",
                (device, inbox_seq, group_id, r.seq, welcome, tree),
            )
            .await?;
        }
        Ok(())
    }

    /// The inbox seq the device's Welcome of commit `commit_seq` got, if it
    /// got one.
    pub(super) async fn delivered(
        &self,
        device: &str,
        group_id: &[u8],
        commit_seq: i64,
    ) -> Result<Option<i64>> {
        Ok(self
            .one::<(i64,)>("delivery_get", (device, group_id, commit_seq))
            .await?
            .map(|(n,)| n))
    }

    /// Gives the device's Welcome of commit `commit_seq` an inbox seq,
    /// exactly once per commit: a new one, or the one a concurrent
    /// materializer gave it first.
    pub(super) async fn deliver(
        &self,
        device: &str,
        group_id: &[u8],
        commit_seq: i64,
    ) -> Result<i64> {
        let n = self.next_inbox_seq(device).await?;
        if self
            .lwt("delivery_insert", (device, group_id, commit_seq, n))
            .await?
        {
            return Ok(n);
        }
        // Another materializer won; `n` stays unused (inbox seqs only grow,
        // gaps are allowed).
        self.delivered(device, group_id, commit_seq)
            .await?
            .ok_or_else(|| backend("welcome delivery", "vanished"))
    }

    async fn next_inbox_seq(&self, device: &str) -> Result<i64> {
        let mut contention = Contention::new("inbox counter");
        loop {
            match self.one::<(i64,)>("counter_get", (device,)).await? {
                None => {
                    if self.lwt("counter_init", (device,)).await? {
                        return Ok(1);
                    }
                }
                Some((last,)) => {
                    if self.lwt("counter_bump", (last + 1, device, last)).await? {
                        return Ok(last + 1);
                    }
                }
            }
            contention.lost().await?;
        }
    }

    /// Inserts the device row if its id is free (an LWT): `AlreadyExists`
    /// if another device, of any user, has it.
    async fn claim_device(&self, d: &Device) -> Result<()> {
        let created = to_bigint(d.created_at_ms, "created_at_ms")?;
        let generation = to_bigint(d.token_generation, "token generation")?;
        let values = (
            &d.device_id,
            &d.user_id,
            &d.signature_key,
            generation,
            created,
        );
        if self.lwt("device_insert", values).await? {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    /// Appends `entry` with the next seq: reads the head, checks the fence,
    /// finishes the previous entry, answers a duplicate id, checks the epoch,
    /// then races for the seq with one LWT ([`Self::reserve`]). A lost race
    /// re-reads the head and decides again; so does a transient error (a
    /// bounded number of times).
    async fn append(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
        change: Change<'_>,
    ) -> Result<AppendOutcome> {
        let fence = to_bigint(fence, "fence")?;
        let writer = Writer::new()?;
        let mut transient = Transient::new();
        let mut contention = Contention::new("group head");
        loop {
            match self
                .append_attempt(group_id, fence, entry, &change, &writer)
                .await
            {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => contention.lost().await?,
                Err(e) => transient.retry_after(e).await?,
            }
        }
    }

    /// One round of [`Self::append`]: the outcome, or `None` after losing
    /// the race for the seq.
    async fn append_attempt(
        &self,
        group_id: &[u8],
        fence: i64,
        entry: &NewEntry,
        change: &Change<'_>,
        writer: &Writer,
    ) -> Result<Option<AppendOutcome>> {
        let head = self.head(group_id).await?.ok_or(StoreError::NotFound)?;
        check_fence(&head, fence)?;
        if let Some(p) = head.pending() {
            self.materialize(group_id, &p, None).await?;
        }
        if let Some((seq, by)) = self
            .one::<(i64, Option<Vec<u8>>)>("cmid_get", (group_id, &entry.client_msg_id))
            .await?
        {
            // The id is taken. By this call only if an earlier round's LWT
            // applied though its outcome looked unknown (a timeout), or
            // applied and the materialization after it failed: the entry
            // then carries this call's nonce. A concurrent duplicate's
            // entry carries its own.
            let seq = from_bigint(seq, "seq")?;
            return Ok(Some(if writer.wrote(by.as_deref()) {
                AppendOutcome::Appended { seq }
            } else {
                AppendOutcome::Duplicate { seq }
            }));
        }
        check_epoch(&head, change.expected_epoch(entry))?;
        let seq = head.head_seq + 1;
        let reservation = change.reservation(entry_row(seq, entry)?, writer, &head)?;
        if !self.reserve(group_id, &head, fence, &reservation).await? {
            return Ok(None);
        }
        let tree = match reservation.change {
            HeadChange::Commit { write, .. } => Some(write.ratchet_tree.as_slice()),
            HeadChange::Message | HeadChange::Proposal { .. } => None,
        };
        self.materialize(group_id, &reservation.pending, tree)
            .await?;
        Ok(Some(AppendOutcome::Appended {
            seq: from_bigint(seq, "seq")?,
        }))
    }

    /// The LWT that takes the reservation's seq if the head is still at
    /// `head.head_seq` under `fence`: the entry rides in the head's
    /// `pending_*` columns, with the proposal's state or the commit's new
    /// epoch, state and members. `true` if it applied.
    async fn reserve(
        &self,
        group_id: &[u8],
        head: &HeadRow,
        fence: i64,
        reservation: &Reservation<'_>,
    ) -> Result<bool> {
        let Reservation { pending, change } = reservation;
        let r = &pending.row;
        let welcome = pending
            .welcome
            .as_ref()
            .map(|w| (r.seq, &w.welcome, &w.devices));
        // The bind order of the three append statements: the head and the
        // entry, then what the change sets, then the condition.
        let mut values: Vec<&(dyn SerializeValue + Sync)> = vec![
            &r.seq,
            &r.seq,
            &r.kind,
            &r.epoch,
            &r.sender,
            &r.client_msg_id,
            &r.message,
            &r.server_time_ms,
            &pending.writer,
        ];
        let statement = match change {
            HeadChange::Message => "append_message",
            HeadChange::Proposal { state } => {
                values.push(state);
                "append_proposal"
            }
            HeadChange::Commit {
                write,
                new_epoch,
                members,
            } => {
                values.extend([
                    &pending.added as &(dyn SerializeValue + Sync),
                    &pending.departed,
                    &welcome,
                    new_epoch,
                    &write.state,
                    &write.group_info,
                    &write.ratchet_tree,
                    members,
                ]);
                "append_commit"
            }
        };
        values.extend([
            &group_id as &(dyn SerializeValue + Sync),
            &head.head_seq,
            &fence,
        ]);
        self.lwt_once(statement, values).await
    }
}

#[derive(::scylla::DeserializeRow)]
struct DeviceRow {
    user_id: String,
    device_id: String,
    signature_key: Vec<u8>,
    token_generation: i64,
    created_at_ms: i64,
}

impl TryFrom<DeviceRow> for Device {
    type Error = StoreError;

    fn try_from(r: DeviceRow) -> Result<Device> {
        Ok(Device {
            user_id: r.user_id,
            device_id: r.device_id,
            signature_key: r.signature_key,
            token_generation: from_bigint(r.token_generation, "token generation")?,
            created_at_ms: from_bigint(r.created_at_ms, "created_at_ms")?,
        })
    }
}

#[derive(::scylla::DeserializeRow)]
struct GroupRow {
    epoch: i64,
    state: Vec<u8>,
    group_info: Vec<u8>,
    ratchet_tree: Vec<u8>,
    head_seq: i64,
    members: Option<MemberMap>,
}

/// A u32 count from a CQL bigint count (saturating).
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[async_trait]
impl Store for ScyllaStore {
    async fn ready(&self) -> Result<()> {
        let connected = self.link.require(&self.config)?;
        let (probe, _) = connected.prepared.get("ready_probe")?;
        // At the strong consistency level: it answers only when enough
        // replicas of the keyspace do for a write to be acknowledged.
        let rows = connected
            .session
            .execute_unpaged(probe, (super::SCHEMA_VERSION,))
            .await
            .map_err(|e| exec_error("ready", e))?
            .into_rows_result()
            .map_err(|e| backend("ready", e))?;
        match rows.maybe_first_row::<(i32,)>() {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(StoreError::Unavailable(
                "schema version not recorded yet".into(),
            )),
            Err(e) => Err(backend("ready", e)),
        }
    }

    async fn create_user(&self, d: &Device) -> Result<()> {
        let created = to_bigint(d.created_at_ms, "created_at_ms")?;
        // The device id is claimed first: if it is taken nothing is written.
        self.claim_device(d).await?;
        if !self.lwt("user_insert", (&d.user_id, created)).await? {
            // Undo the device claim (a crash here leaves an orphan device
            // row of a user that does not exist: unusable, harmless).
            self.run("device_delete", (&d.device_id,)).await?;
            return Err(StoreError::AlreadyExists);
        }
        self.run("device_by_user_insert", (&d.user_id, created, &d.device_id))
            .await?;
        Ok(())
    }

    async fn add_device(&self, d: &Device) -> Result<()> {
        if self
            .one::<(String,)>("user_get", (&d.user_id,))
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound);
        }
        let created = to_bigint(d.created_at_ms, "created_at_ms")?;
        self.claim_device(d).await?;
        self.run("device_by_user_insert", (&d.user_id, created, &d.device_id))
            .await?;
        Ok(())
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>> {
        Ok(self
            .one::<DeviceRow>("device_get", (device_id,))
            .await?
            .map(Device::try_from)
            .transpose()?
            .filter(|d| d.token_generation < crate::REVOKED_GENERATION))
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>> {
        let ids = self
            .all::<(String,)>("devices_by_user", (user_id,), usize::MAX)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(d) = self.device(&id).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn bump_token_generation(&self, device_id: &str) -> Result<u64> {
        let mut contention = Contention::new("device row");
        loop {
            let d = self.device(device_id).await?.ok_or(StoreError::NotFound)?;
            let cur = to_bigint(d.token_generation, "token generation")?;
            if cur + 1 >= to_bigint(crate::REVOKED_GENERATION, "token generation")? {
                return Err(StoreError::NotFound);
            }
            if self.lwt("device_bump", (cur + 1, device_id, cur)).await? {
                return from_bigint(cur + 1, "token generation");
            }
            contention.lost().await?;
        }
    }

    async fn revoke_device(&self, device_id: &str) -> Result<()> {
        let revoked = to_bigint(crate::REVOKED_GENERATION, "token generation")?;
        let mut contention = Contention::new("device row");
        loop {
            let d = self.device(device_id).await?.ok_or(StoreError::NotFound)?;
            let cur = to_bigint(d.token_generation, "token generation")?;
            if self.lwt("device_bump", (revoked, device_id, cur)).await? {
                return Ok(());
            }
            contention.lost().await?;
        }
    }

    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        self.lwt("secret_insert", (name, candidate)).await?;
        self.one::<(Vec<u8>,)>("secret_get", (name,))
            .await?
            .map(|(v,)| v)
            .ok_or_else(|| backend("secret", "missing after insert"))
    }

    async fn take_secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some((value,)) = self.one::<(Vec<u8>,)>("secret_get", (name,)).await? else {
            return Ok(None);
        };
        // Only the caller whose delete applied took it.
        if !self.lwt("secret_delete", (name,)).await? {
            return Ok(None);
        }
        Ok(Some(value))
    }

    async fn put_link_code(
        &self,
        code_hash: &[u8],
        user_id: &str,
        expires_at_ms: u64,
    ) -> Result<()> {
        let expires = i64::try_from(expires_at_ms).unwrap_or(i64::MAX);
        self.run(
            "link_insert",
            (code_hash, user_id, expires, link_code_ttl_s(expires_at_ms)),
        )
        .await?;
        Ok(())
    }

    async fn sweep_link_codes(&self, _now_ms: u64) -> Result<u64> {
        // Rows expire by their TTL (see `link_code_ttl_s`); nothing to scan.
        Ok(0)
    }

    async fn take_link_code(&self, code_hash: &[u8], now_ms: u64) -> Result<Option<String>> {
        let Some((user, expires)) = self.one::<(String, i64)>("link_get", (code_hash,)).await?
        else {
            return Ok(None);
        };
        // Only the caller whose delete applied consumed the code.
        if !self.lwt("link_delete", (code_hash,)).await? {
            return Ok(None);
        }
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        Ok((now < expires).then_some(user))
    }

    async fn put_key_packages(
        &self,
        device_id: &str,
        packages: &[KeyPackageRecord],
        last_resort: Option<&KeyPackageRecord>,
    ) -> Result<u32> {
        for p in packages {
            if self.lwt("kp_ref_insert", (&p.hash_ref, device_id)).await? {
                self.run("kp_insert", (device_id, &p.hash_ref, &p.data))
                    .await?;
            }
        }
        if let Some(lr) = last_resort {
            if self.lwt("kp_ref_insert", (&lr.hash_ref, device_id)).await? {
                self.run("lr_upsert", (device_id, &lr.hash_ref, &lr.data))
                    .await?;
            }
        }
        Ok(self.key_package_count(device_id).await?.0)
    }

    async fn claim_key_package(&self, device_id: &str) -> Result<Option<ClaimedKeyPackage>> {
        let mut contention = Contention::new("key packages");
        // Until no ordinary package is left: the last-resort one is handed
        // out only then, however long the claimers race.
        loop {
            let rows = self
                .all::<(::scylla::value::CqlTimeuuid, Vec<u8>)>("kp_oldest", (device_id,), 16)
                .await?;
            if rows.is_empty() {
                break;
            }
            for (id, data) in rows {
                if self.lwt("kp_claim", (device_id, id)).await? {
                    return Ok(Some(ClaimedKeyPackage {
                        data,
                        last_resort: false,
                    }));
                }
            }
            contention.lost().await?;
        }
        Ok(self
            .one::<(Vec<u8>,)>("lr_get", (device_id,))
            .await?
            .map(|(data,)| ClaimedKeyPackage {
                data,
                last_resort: true,
            }))
    }

    async fn key_package_count(&self, device_id: &str) -> Result<(u32, bool)> {
        let n = self
            .one::<(i64,)>("kp_count", (device_id,))
            .await?
            .map_or(0, |(n,)| count(n));
        let lr = self
            .one::<(Vec<u8>,)>("lr_get", (device_id,))
            .await?
            .is_some();
        Ok((n, lr))
    }

    async fn set_last_resort_claimed(&self, device_id: &str, claimed: bool) -> Result<bool> {
        // The LWT applies exactly when the mark changes: an insert applied
        // means it was not set, a delete applied means it was.
        Ok(if claimed {
            !self.lwt("lr_claim_mark", (device_id,)).await?
        } else {
            self.lwt("lr_claim_clear", (device_id,)).await?
        })
    }

    async fn create_group(&self, group: &NewGroup) -> Result<()> {
        let g = &group.group;
        let members: MemberMap = g
            .members
            .iter()
            .map(|m| (m.device_id.clone(), (m.user_id.clone(), 0)))
            .collect();
        if !self
            .lwt(
                "group_insert",
                (
                    &g.group_id,
                    to_bigint(g.epoch, "epoch")?,
                    &g.state,
                    &g.group_info,
                    &g.ratchet_tree,
                    &members,
                ),
            )
            .await?
        {
            return Err(StoreError::AlreadyExists);
        }
        for m in &g.members {
            self.run("dg_insert", (&m.device_id, &g.group_id, 0i64, 1i64))
                .await?;
        }
        Ok(())
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>> {
        let Some(r) = self.one::<GroupRow>("group_get", (group_id,)).await? else {
            return Ok(None);
        };
        Ok(Some(GroupRecord {
            group_id: group_id.to_vec(),
            epoch: from_bigint(r.epoch, "epoch")?,
            state: r.state,
            group_info: r.group_info,
            ratchet_tree: r.ratchet_tree,
            head_seq: from_bigint(r.head_seq, "head seq")?,
            members: members_of(r.members),
        }))
    }

    async fn acquire_lease(
        &self,
        group_id: &[u8],
        owner: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Lease> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let wanted = i64::try_from(now_ms.saturating_add(ttl_ms)).unwrap_or(i64::MAX);
        let mut contention = Contention::new("group lease");
        loop {
            let head = self.head(group_id).await?.ok_or(StoreError::NotFound)?;
            let (token, expires) = lease_decision(
                &head.lease_owner,
                head.lease_token,
                head.lease_expires_ms,
                owner,
                now,
                wanted,
            )?;
            if self
                .lwt(
                    "lease_set",
                    (
                        owner,
                        token,
                        expires,
                        group_id,
                        &head.lease_owner,
                        head.lease_token,
                    ),
                )
                .await?
            {
                // A new owner finishes what a crashed predecessor left
                // pending (its Welcomes, membership index).
                if let Some(p) = head.pending() {
                    self.materialize(group_id, &p, None).await?;
                }
                return Ok(Lease {
                    owner: owner.to_string(),
                    token: from_bigint(token, "lease token")?,
                    expires_at_ms: from_bigint(expires, "lease expiry")?,
                });
            }
            contention.lost().await?;
        }
    }

    async fn release_lease(&self, group_id: &[u8], owner: &str, token: u64) -> Result<()> {
        let token = to_bigint(token, "lease token")?;
        self.lwt("lease_release", (group_id, owner, token)).await?;
        Ok(())
    }

    async fn append_message(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
    ) -> Result<AppendOutcome> {
        self.append(group_id, fence, entry, Change::Message).await
    }

    async fn append_proposal(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
        state: &[u8],
    ) -> Result<AppendOutcome> {
        self.append(group_id, fence, entry, Change::Proposal(state))
            .await
    }

    async fn append_commit(&self, write: &CommitWrite) -> Result<AppendOutcome> {
        self.append(
            &write.group_id,
            write.fence,
            &write.entry,
            Change::Commit(write),
        )
        .await
    }

    async fn read_timeline(
        &self,
        group_id: &[u8],
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        let Some(head) = self.head(group_id).await? else {
            return Ok(Vec::new());
        };
        let head_seq = from_bigint(head.head_seq, "head seq")?;
        let limit = limit as usize;
        let mut out: Vec<Entry> = Vec::new();
        let after = to_bigint(after_seq, "seq")?;
        for bucket in bucket_range(after_seq, head_seq, self.config.bucket_size) {
            if out.len() >= limit {
                break;
            }
            let from = out.last().map_or(after, |e| e.seq as i64);
            let rows = self
                .all::<TimelineRow>(
                    "timeline_read",
                    (group_id, to_bigint(bucket, "bucket")?, from),
                    limit - out.len(),
                )
                .await?;
            for r in rows {
                out.push(Entry::try_from(r)?);
            }
        }
        // The last seq may still be only in the head (its writer crashed
        // before materializing it): fill it from there.
        if out.len() < limit && out.last().map_or(after_seq, |e| e.seq) < head_seq {
            if let Some(p) = head.pending() {
                if p.row.seq > out.last().map_or(after, |e| e.seq as i64) {
                    out.push(Entry::try_from(p.row)?);
                }
            }
        }
        Ok(out)
    }

    async fn groups_of_device(&self, device_id: &str) -> Result<Vec<DeviceGroup>> {
        self.all::<(Vec<u8>, i64)>("dg_list", (device_id,), usize::MAX)
            .await?
            .into_iter()
            .map(|(group_id, joined)| {
                Ok(DeviceGroup {
                    group_id,
                    joined_seq: from_bigint(joined, "joined seq")?,
                })
            })
            .collect()
    }

    async fn departed_groups(&self, device_id: &str) -> Result<Vec<Departure>> {
        // A late replay of a commit's effects can re-insert a departure the
        // device already settled: the cursor decides, not the row.
        let cursors: HashMap<Vec<u8>, u64> = self.cursors(device_id).await?.into_iter().collect();
        let mut out = Vec::new();
        for (group_id, joined, left) in self
            .all::<(Vec<u8>, i64, i64)>("departure_list", (device_id,), usize::MAX)
            .await?
        {
            let left_seq = from_bigint(left, "left seq")?;
            if cursors.get(&group_id).is_some_and(|c| *c >= left_seq) {
                continue;
            }
            out.push(Departure {
                group_id,
                joined_seq: from_bigint(joined, "joined seq")?,
                left_seq,
            });
        }
        Ok(out)
    }

    async fn ack_state(&self, device_id: &str, group_id: &[u8]) -> Result<AckState> {
        Ok(self.ack_row(device_id, group_id).await?.0)
    }

    /// An ack's Paxos rounds are its cost on CQL: the read tells which
    /// writes it needs, so a member's ack past a cursor it already has is
    /// one LWT (the cursor's advance), not the three `set_cursor` takes
    /// (insert, advance, settle), and a departure is settled only where
    /// there is one to settle.
    async fn ack_cursor(
        &self,
        device_id: &str,
        group_id: &[u8],
        seq: u64,
        decide: AckDecision,
    ) -> Result<(AckState, bool)> {
        let (state, departure) = self.ack_row(device_id, group_id).await?;
        let moves = decide(&state);
        if moves {
            let at = to_bigint(seq, "seq")?;
            match state.cursor {
                // Cursors are never deleted: the row is there. Not applied
                // means another ack took it at least as far.
                Some(_) => {
                    self.lwt("cursor_advance", (at, device_id, group_id, at))
                        .await?;
                }
                None => {
                    self.insert_or_advance_cursor(device_id, group_id, at)
                        .await?
                }
            }
            if departure.is_some_and(|left_seq| left_seq <= seq) {
                self.lwt("departure_settle", (device_id, group_id, at))
                    .await?;
            }
        }
        Ok((state, moves))
    }

    async fn set_cursor(&self, device_id: &str, group_id: &[u8], seq: u64) -> Result<()> {
        let seq = to_bigint(seq, "seq")?;
        self.insert_or_advance_cursor(device_id, group_id, seq)
            .await?;
        self.lwt("departure_settle", (device_id, group_id, seq))
            .await?;
        Ok(())
    }

    async fn cursors(&self, device_id: &str) -> Result<Vec<(Vec<u8>, u64)>> {
        self.all::<(Vec<u8>, i64)>("cursor_list", (device_id,), usize::MAX)
            .await?
            .into_iter()
            .map(|(g, s)| Ok((g, from_bigint(s, "cursor")?)))
            .collect()
    }

    async fn read_inbox(&self, device_id: &str, after: u64, limit: u32) -> Result<Vec<InboxItem>> {
        self.inbox_page(device_id, after, limit).await
    }

    async fn ack_inbox(&self, device_id: &str, upto: u64) -> Result<()> {
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        // The Welcomes first: a crash before the items' delete leaves them
        // for the retried ack to release again (idempotent).
        self.release_welcomes(device_id, upto).await?;
        self.run("inbox_ack", (device_id, upto)).await?;
        Ok(())
    }

    async fn inbox_head(&self, device_id: &str) -> Result<u64> {
        Ok(self
            .one::<(i64,)>("counter_get", (device_id,))
            .await?
            .map_or(0, |(n,)| u64::try_from(n).unwrap_or(0)))
    }
}

/// The lease rule of the contract, on stored values: (token, expires) to
/// write, or `Fenced`.
pub fn lease_decision(
    cur_owner: &str,
    cur_token: i64,
    cur_expires: i64,
    owner: &str,
    now: i64,
    wanted: i64,
) -> Result<(i64, i64)> {
    if cur_token != 0 && cur_owner == owner {
        // Renewal, also after the owner's own lease lapsed. Never shorten.
        Ok((cur_token, wanted.max(cur_expires)))
    } else if cur_token != 0 && now < cur_expires {
        Err(StoreError::Fenced {
            owner: cur_owner.to_string(),
            token: from_bigint(cur_token, "lease token")?,
        })
    } else {
        let next = cur_token
            .checked_add(1)
            .ok_or_else(|| backend("lease token", "overflow"))?;
        Ok((next, wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    #[test]
    fn statements_are_unique_and_lwts_are_never_marked_idempotent() {
        let mut names = BTreeSet::new();
        for (name, mode, cql) in STATEMENTS {
            assert!(names.insert(*name), "duplicate statement name {name}");
            let conditional = cql.contains(" IF ");
            match mode {
                Mode::Lwt => assert!(conditional, "{name} is an LWT without IF: {cql}"),
                Mode::Idempotent | Mode::SerialRead | Mode::Quorum | Mode::Once => {
                    assert!(!conditional, "{name} has IF but is not an LWT: {cql}")
                }
            }
            if *mode == Mode::SerialRead {
                assert!(cql.starts_with("SELECT "), "{name}: serial reads are reads");
            }
            // A write whose values are not fixed must never be retried:
            // a second key_packages row would hand one package out twice.
            if cql.contains("now()") {
                assert_eq!(*mode, Mode::Once, "{name} must not be marked idempotent");
            }
        }
    }

    #[test]
    fn every_statement_the_backend_runs_is_listed() {
        let source = [include_str!("store.rs"), include_str!("welcome.rs")].concat();
        let listed: BTreeSet<&str> = STATEMENTS.iter().map(|(n, _, _)| *n).collect();
        for call in [
            ".run(\"",
            ".lwt(\"",
            ".lwt_once(\"",
            ".one::<",
            ".all::<",
            "prepared.get(\"",
        ] {
            for (i, _) in source.match_indices(call) {
                let rest = &source[i..];
                let Some(q) = rest.find('"') else { continue };
                let name: String = rest[q + 1..].chars().take_while(|c| *c != '"').collect();
                if name.is_empty() || name.contains(' ') {
                    continue;
                }
                assert!(
                    listed.contains(name.as_str()),
                    "{name} is run but not prepared"
                );
            }
        }
    }

    #[test]
    fn what_the_seq_invariant_reads_and_writes_runs_at_quorum() {
        for name in [
            "timeline_insert",
            "timeline_read",
            "cmid_insert",
            "cmid_get",
            "dg_insert",
            // A Welcome row is written before the inbox rows that refer to
            // it and read for them: both at QUORUM, so a reader finds it.
            "welcome_put",
            "welcome_get",
            "inbox_insert",
        ] {
            let (_, mode, _) = STATEMENTS.iter().find(|(n, _, _)| *n == name).unwrap();
            assert_eq!(*mode, Mode::Quorum, "{name}");
        }
    }

    #[test]
    fn appends_are_conditioned_on_head_seq_and_fence() {
        for (name, _, cql) in STATEMENTS
            .iter()
            .filter(|(n, _, _)| n.starts_with("append_"))
        {
            assert!(
                cql.ends_with("IF head_seq = ? AND lease_token = ?"),
                "{name}: {cql}"
            );
            assert!(cql.contains("head_seq = ?, pending_seq = ?"), "{name}");
        }
        let commit = STATEMENTS
            .iter()
            .find(|(n, _, _)| *n == "append_commit")
            .unwrap()
            .2;
        assert_eq!(commit.matches('?').count(), 20, "flat bind list in append");
        for column in [
            "epoch = ?",
            "members = ?",
            "pending_welcome = ?",
            "pending_welcomes = null",
            "state = ?",
        ] {
            assert!(commit.contains(column), "{column}");
        }
    }

    fn m(user: &str, device: &str) -> MemberDevice {
        MemberDevice {
            user_id: user.into(),
            device_id: device.into(),
        }
    }

    #[test]
    fn contention_pauses_grow_to_a_ceiling_and_are_random_below_it() {
        assert_eq!(contention_ceiling(0), Duration::from_millis(1));
        assert_eq!(contention_ceiling(3), Duration::from_millis(8));
        assert_eq!(contention_ceiling(6), CONTENTION_MAX_PAUSE);
        assert_eq!(contention_ceiling(u32::MAX), CONTENTION_MAX_PAUSE);
        let draws: BTreeSet<u64> = (0..64)
            .map(|_| {
                let f = random_fraction();
                assert!((0.0..1.0).contains(&f), "{f}");
                (f * 1e9) as u64
            })
            .collect();
        assert!(draws.len() > 32, "jitter is not random: {draws:?}");
    }

    #[test]
    fn next_members_keeps_joined_seqs_and_names_additions_and_departures() {
        let current: MemberMap = [
            ("a1".to_string(), ("alice".to_string(), 0)),
            ("b1".to_string(), ("bob".to_string(), 4)),
        ]
        .into_iter()
        .collect();
        let (next, added, departed) =
            next_members(&current, &[m("alice", "a1"), m("carol", "c1")], 9);
        assert_eq!(next["a1"], ("alice".to_string(), 0));
        assert_eq!(next["c1"], ("carol".to_string(), 9));
        assert!(!next.contains_key("b1"));
        assert_eq!(added, BTreeSet::from(["c1".to_string()]));
        assert_eq!(departed, HashMap::from([("b1".to_string(), 4)]));
        assert_eq!(
            members_of(Some(next)),
            vec![m("alice", "a1"), m("carol", "c1")]
        );
        assert!(members_of(None).is_empty());
    }

    #[test]
    fn lease_decisions_follow_the_contract() {
        // No lease yet: token 1.
        assert_eq!(lease_decision("", 0, 0, "n1", 10, 110).unwrap(), (1, 110));
        // Same owner renews, keeps its token, never shortens.
        assert_eq!(
            lease_decision("n1", 1, 500, "n1", 10, 110).unwrap(),
            (1, 500)
        );
        assert_eq!(
            lease_decision("n1", 1, 50, "n1", 100, 200).unwrap(),
            (1, 200)
        );
        // Another owner's unexpired lease fences.
        assert!(matches!(
            lease_decision("n1", 3, 500, "n2", 499, 600),
            Err(StoreError::Fenced { token: 3, .. })
        ));
        // Expired at now >= expires: handed over with a larger token.
        assert_eq!(
            lease_decision("n1", 3, 500, "n2", 500, 600).unwrap(),
            (4, 600)
        );
        assert!(lease_decision("n1", i64::MAX, 0, "n2", 1, 2).is_err());
    }

    fn head(pending_seq: Option<i64>, head_seq: i64) -> HeadRow {
        HeadRow {
            epoch: 1,
            head_seq,
            lease_owner: "n1".into(),
            lease_token: 1,
            lease_expires_ms: 100,
            members: None,
            pending_seq,
            pending_kind: Some(EntryKind::Commit as i32),
            pending_epoch: Some(1),
            pending_sender: Some("alice/a1".into()),
            pending_cmid: Some(b"c".to_vec()),
            pending_message: Some(b"m".to_vec()),
            pending_time_ms: Some(5),
            pending_writer: Some(b"w".to_vec()),
            pending_added: Some(BTreeSet::from(["c1".to_string()])),
            pending_departed: None,
            pending_welcomes: None,
            pending_welcome: None,
        }
    }

    #[test]
    fn a_taken_id_is_this_calls_append_only_under_its_own_nonce() {
        let (a, b) = (Writer::new().unwrap(), Writer::new().unwrap());
        assert_ne!(a.0, b.0, "every call draws its own nonce");
        assert!(a.wrote(Some(&a.0)));
        assert!(!a.wrote(Some(&b.0)), "a concurrent duplicate's entry");
        assert!(!a.wrote(None), "an entry a version-3 binary wrote");
        // The reservation carries the nonce into the head's pending entry,
        // which materializes it into client_msgs.
        let h = head(Some(4), 4);
        let r = Change::Message
            .reservation(h.pending().unwrap().row, &a, &h)
            .unwrap();
        assert!(a.wrote(r.pending.writer.as_deref()));
        assert_eq!(h.pending().unwrap().writer, Some(b"w".to_vec()));
    }

    #[test]
    fn the_head_holds_a_pending_entry_only_for_its_own_seq() {
        let p = head(Some(4), 4).pending().unwrap();
        assert_eq!(p.row.seq, 4);
        assert_eq!(p.row.kind, EntryKind::Commit as i32);
        assert_eq!(p.added, BTreeSet::from(["c1".to_string()]));
        assert!(p.departed.is_empty() && p.welcome.is_none() && p.legacy_welcomes.is_empty());
        assert_eq!(Entry::try_from(p.row).unwrap().seq, 4);
        assert!(head(None, 0).pending().is_none());
        assert!(head(Some(0), 0).pending().is_none());
        assert!(
            head(Some(3), 4).pending().is_none(),
            "stale pending is ignored"
        );
        let mut h = head(Some(4), 4);
        h.pending_sender = None;
        assert!(
            h.pending().is_none(),
            "an incomplete pending row is not an entry"
        );
    }

    /// The head's Welcome counts only for the entry of its own seq: a
    /// version-2 writer replaces the entry without knowing the column.
    #[test]
    fn the_pending_welcome_belongs_to_the_entry_of_its_seq() {
        let devices = BTreeSet::from(["c1".to_string(), "d1".to_string()]);
        let mut h = head(Some(4), 4);
        h.pending_welcome = Some((4, b"w".to_vec(), devices.clone()));
        assert_eq!(
            h.pending().unwrap().welcome,
            Some(PendingWelcome {
                welcome: b"w".to_vec(),
                devices
            })
        );
        h.pending_welcome = Some((3, b"w".to_vec(), BTreeSet::new()));
        let p = h.pending().unwrap();
        assert_eq!(p.row.seq, 4);
        assert!(p.welcome.is_none(), "an older commit's Welcome is ignored");
    }

    #[test]
    fn a_commit_reserves_one_welcome_for_all_its_devices() {
        let write = CommitWrite {
            group_id: b"g".to_vec(),
            fence: 1,
            expected_epoch: 1,
            new_epoch: 2,
            state: vec![],
            group_info: vec![],
            ratchet_tree: vec![9; 1000],
            members: vec![m("alice", "a1"), m("carol", "c1"), m("dave", "d1")],
            entry: NewEntry {
                kind: EntryKind::Commit,
                epoch: 1,
                sender: "alice/a1".into(),
                client_msg_id: b"c".to_vec(),
                message: vec![],
                server_time_ms: 1,
            },
            welcome: Some(crate::WelcomeWrite {
                welcome: vec![7; 1000],
                device_ids: vec!["c1".into(), "d1".into()],
            }),
        };
        let mut h = head(None, 4);
        h.members = Some(
            [("a1".to_string(), ("alice".to_string(), 0))]
                .into_iter()
                .collect(),
        );
        let row = entry_row(5, &write.entry).unwrap();
        let r = Change::Commit(&write)
            .reservation(row, &Writer::new().unwrap(), &h)
            .unwrap();
        let w = r.pending.welcome.expect("a welcome");
        assert_eq!(w.welcome, vec![7; 1000]);
        assert_eq!(
            w.devices,
            BTreeSet::from(["c1".to_string(), "d1".to_string()])
        );
        assert!(r.pending.legacy_welcomes.is_empty());
        // No device to welcome: nothing to store.
        let mut none = write.clone();
        none.welcome.as_mut().unwrap().device_ids.clear();
        let row = entry_row(5, &none.entry).unwrap();
        let r = Change::Commit(&none)
            .reservation(row, &Writer::new().unwrap(), &h)
            .unwrap();
        assert!(r.pending.welcome.is_none());
    }

    #[test]
    fn entry_rows_carry_every_field_and_refuse_overflow() {
        let e = NewEntry {
            kind: EntryKind::Proposal,
            epoch: 3,
            sender: "bob/b1".into(),
            client_msg_id: b"x".to_vec(),
            message: b"y".to_vec(),
            server_time_ms: 8,
        };
        let r = entry_row(12, &e).unwrap();
        let back = Entry::try_from(r).unwrap();
        assert_eq!(
            (
                back.seq,
                back.kind,
                back.epoch,
                back.sender.as_str(),
                back.server_time_ms
            ),
            (12, EntryKind::Proposal, 3, "bob/b1", 8)
        );
        let mut big = e;
        big.epoch = u64::MAX;
        assert!(entry_row(1, &big).is_err());
        assert_eq!(count(-1), 0);
        assert_eq!(count(i64::MAX), u32::MAX);
    }
}
