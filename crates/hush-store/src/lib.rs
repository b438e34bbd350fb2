//! Hush storage: the [`Store`] trait and its backends.
//!
//! The store is the single source of truth for everything durable: accounts,
//! key packages, group state, group timelines, device inboxes and cursors. It
//! is also the *fence*: a group's sequence numbers are assigned inside the
//! store, under a lease token, so two nodes that both believe they own a
//! group can never both append to it.
//!
//! # Contract (every backend, checked by [`conformance`])
//!
//! - **Durable on return.** When a write method returns `Ok`, the write has
//!   reached stable storage (for SQLite: committed with `synchronous=FULL`).
//!   Callers acknowledge clients only after that.
//! - **Dense, unique seq.** Each group's timeline has seqs 1, 2, 3, ... with no
//!   gaps and no duplicates. The store assigns them; callers never choose.
//! - **Idempotent appends.** `(group_id, client_msg_id)` is unique: appending
//!   the same id again returns [`AppendOutcome::Duplicate`] with the original
//!   seq and writes nothing.
//! - **Fencing.** Appends carry the fence token from [`Store::acquire_lease`].
//!   A token that is not the group's current one fails with
//!   [`StoreError::Fenced`] and writes nothing.
//! - **One commit per epoch.** [`Store::append_commit`] applies only if the
//!   group is still at `expected_epoch`; otherwise it fails with
//!   [`StoreError::EpochConflict`] and writes nothing.
//! - **Single-use key packages.** A claimed package is never handed out again;
//!   concurrent claims get distinct packages. A device's last-resort package
//!   is handed out only when no other package is left, and is kept.
//! - **Departures.** A device removed by a commit keeps read access up to and
//!   including that commit (so it learns it was removed) until its cursor
//!   passes it.
//! - **Atomic commits.** A commit's state change, its timeline entry, the
//!   membership change and its Welcome inbox items become visible together or
//!   not at all.
//!
//! Methods return `Result<Option<T>>` where absence is a normal answer
//! (`None` = not there) and `Err` only for failures.
//! [`StoreError::Unavailable`] means the store did not answer (not
//! connected yet, nodes down, locked, timed out): retrying later may
//! succeed, and a write that failed with it may or may not have been made
//! durable, which the idempotent ids and conditions above make safe to
//! retry. [`Store::ready`] tells whether the store answers at all.

use std::collections::BTreeSet;

use async_trait::async_trait;

pub mod scylla;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use scylla::{ConsistencyLevel, ScyllaConfig, ScyllaStore};
pub use sqlite::{SqliteConfig, SqliteStore};

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key (handle, device id, group id) is taken.
    #[error("already exists")]
    AlreadyExists,
    /// A referenced row (user, device, group) does not exist.
    #[error("not found")]
    NotFound,
    /// The fence token is not the group's current lease token, or another
    /// owner holds an unexpired lease.
    #[error("fenced: group is owned by {owner} (token {token})")]
    Fenced { owner: String, token: u64 },
    /// The group is no longer at the commit's expected epoch.
    #[error("epoch conflict: group is at epoch {current_epoch}, head seq {head_seq}")]
    EpochConflict { current_epoch: u64, head_seq: u64 },
    /// The backend cannot be reached or is shutting down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure (I/O, corruption, a bug).
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The token generation of a revoked device (the largest a signed 64-bit
/// column holds): no token carries it, and the store reads such a device
/// as absent.
pub const REVOKED_GENERATION: u64 = i64::MAX as u64;

/// A registered device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    /// Ed25519 public key (32 bytes).
    pub signature_key: Vec<u8>,
    /// Tokens carrying an older generation are revoked.
    pub token_generation: u64,
    pub created_at_ms: u64,
}

/// A validated key package, ready to store.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPackageRecord {
    /// The KeyPackageRef (hash) — unique across the store.
    pub hash_ref: Vec<u8>,
    /// The serialized package as uploaded.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for KeyPackageRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPackageRecord")
            .field("hash_ref", &hex_prefix(&self.hash_ref))
            .field("len", &self.data.len())
            .finish()
    }
}

/// A package handed out by [`Store::claim_key_package`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    pub data: Vec<u8>,
    pub last_resort: bool,
}

/// A device that is a member of a group (from the MLS tree).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberDevice {
    pub user_id: String,
    pub device_id: String,
}

/// A group as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    /// The delivery service's public group state (opaque to the store).
    pub state: Vec<u8>,
    /// Latest GroupInfo (MLSMessage) for external joins.
    pub group_info: Vec<u8>,
    /// Latest ratchet tree (TLS-serialized).
    pub ratchet_tree: Vec<u8>,
    /// The last assigned seq (0 when the timeline is empty).
    pub head_seq: u64,
    /// Member devices, sorted.
    pub members: Vec<MemberDevice>,
}

impl std::fmt::Debug for GroupRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRecord")
            .field("group_id", &hex_prefix(&self.group_id))
            .field("epoch", &self.epoch)
            .field("head_seq", &self.head_seq)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

/// A new group at its first epoch.
#[derive(Clone, Debug)]
pub struct NewGroup {
    pub group: GroupRecord,
}

/// What a timeline entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Commit = 1,
    Proposal = 2,
    Application = 3,
}

impl EntryKind {
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(Self::Commit),
            2 => Some(Self::Proposal),
            3 => Some(Self::Application),
            _ => None,
        }
    }
}

/// An entry to append (the store assigns its seq).
#[derive(Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub kind: EntryKind,
    pub epoch: u64,
    /// "<user_id>/<device_id>" of the submitting device.
    pub sender: String,
    /// Idempotency key, unique per group.
    pub client_msg_id: Vec<u8>,
    /// The MLSMessage as submitted (ciphertext for applications).
    pub message: Vec<u8>,
    pub server_time_ms: u64,
}

impl std::fmt::Debug for NewEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEntry")
            .field("kind", &self.kind)
            .field("epoch", &self.epoch)
            .field("sender", &self.sender)
            .field("len", &self.message.len())
            .finish_non_exhaustive()
    }
}

/// A stored timeline entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: EntryKind,
    pub epoch: u64,
    pub sender: String,
    pub client_msg_id: Vec<u8>,
    pub message: Vec<u8>,
    pub server_time_ms: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .field("epoch", &self.epoch)
            .field("sender", &self.sender)
            .field("len", &self.message.len())
            .finish_non_exhaustive()
    }
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        seq: u64,
    },
    /// The client_msg_id was already stored; nothing was written.
    Duplicate {
        seq: u64,
    },
}

impl AppendOutcome {
    pub fn seq(self) -> u64 {
        match self {
            Self::Appended { seq } | Self::Duplicate { seq } => seq,
        }
    }
}

/// The Welcome of a commit that adds devices. MLS makes one Welcome for
/// all the devices a commit adds (each finds its own group secrets in it by
/// its KeyPackage's reference), and they all join with the commit's ratchet
/// tree ([`CommitWrite::ratchet_tree`]). So a store keeps the Welcome and that
/// tree once per commit, and each added device's inbox item refers to them:
/// a copy per device would cost O(added x group size) bytes, hundreds of
/// megabytes for one group of 1,000 formed by one commit.
#[derive(Clone, PartialEq, Eq)]
pub struct WelcomeWrite {
    pub welcome: Vec<u8>,
    /// The devices it welcomes: each gets an inbox item.
    pub device_ids: Vec<String>,
}

impl std::fmt::Debug for WelcomeWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WelcomeWrite")
            .field("device_ids", &self.device_ids)
            .finish_non_exhaustive()
    }
}

/// Everything one accepted commit changes, applied atomically.
#[derive(Clone, Debug)]
pub struct CommitWrite {
    pub group_id: Vec<u8>,
    pub fence: u64,
    pub expected_epoch: u64,
    pub new_epoch: u64,
    pub state: Vec<u8>,
    pub group_info: Vec<u8>,
    pub ratchet_tree: Vec<u8>,
    /// The full member list after the commit.
    pub members: Vec<MemberDevice>,
    /// The commit's timeline entry (kind = Commit).
    pub entry: NewEntry,
    /// The Welcome for the devices the commit adds (`None`: it adds none).
    pub welcome: Option<WelcomeWrite>,
}

/// A group a device belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceGroup {
    pub group_id: Vec<u8>,
    /// Seq of the commit that added the device (0 for the creator). Entries
    /// after it are the device's to read.
    pub joined_seq: u64,
}

/// A group a device was removed from (see [`Store::departed_groups`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    pub group_id: Vec<u8>,
    pub joined_seq: u64,
    /// Seq of the commit that removed the device: its last entry to read.
    pub left_seq: u64,
}

/// What a device's Sync starts from, read at once (see
/// [`Store::sync_start`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStart {
    /// As [`Store::cursors`].
    pub cursors: Vec<(Vec<u8>, u64)>,
    /// As [`Store::groups_of_device`].
    pub groups: Vec<DeviceGroup>,
    /// As [`Store::departed_groups`].
    pub departed: Vec<Departure>,
    /// As [`Store::read_inbox`] with the Sync's `after` and `limit`.
    pub inbox: Vec<InboxItem>,
}

/// The groups a device has *joined*, of the groups it is in: those it
/// created (joined at seq 0) and those where its cursor reached the commit
/// that added it (its client processed the Welcome and acknowledged it).
/// Being added is not joining: presence is shown only to joined groups.
pub fn joined_groups(groups: Vec<DeviceGroup>, cursors: &[(Vec<u8>, u64)]) -> BTreeSet<Vec<u8>> {
    // By group id: a user in many groups must not pay groups x cursors.
    let cursors: std::collections::BTreeMap<&[u8], u64> = cursors
        .iter()
        .map(|(id, seq)| (id.as_slice(), *seq))
        .collect();
    groups
        .into_iter()
        .filter(|g| {
            g.joined_seq == 0
                || cursors
                    .get(g.group_id.as_slice())
                    .is_some_and(|seq| *seq >= g.joined_seq)
        })
        .map(|g| g.group_id)
        .collect()
}

/// Where a device stands in a group, for checking its ack (see
/// [`Store::ack_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A current member since the commit at `joined_seq` (0 for the
    /// creator), as [`Store::groups_of_device`] lists it.
    Member { joined_seq: u64 },
    /// Removed by the commit at `left_seq`, which the device may still read
    /// up to, as [`Store::departed_groups`] lists it.
    Departed { joined_seq: u64, left_seq: u64 },
    /// Neither: not a member, and no departure left to read.
    Stranger,
}

/// What an ack of one device in one group is checked against, read at once
/// (see [`Store::ack_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckState {
    /// The device's cursor in the group (`None`: it never acked there).
    pub cursor: Option<u64>,
    pub standing: Standing,
    /// The group's last assigned seq (0 when the timeline is empty or there
    /// is no such group). Seqs are dense: 1..=head_seq all exist.
    pub head_seq: u64,
}

/// What an ack decides from the [`AckState`] it reads: whether the cursor
/// moves (see [`Store::ack_cursor`]).
pub type AckDecision = Box<dyn FnOnce(&AckState) -> bool + Send>;

/// What [`Store::ack_cursor_then`] hands an ack's outcome to once it is
/// stored: what [`Store::ack_cursor`] would have returned.
pub type AckThen = Box<dyn FnOnce(Result<(AckState, bool)>) + Send>;

/// An item in a device's inbox.
#[derive(Clone, PartialEq, Eq)]
pub struct InboxItem {
    /// Increasing per device.
    pub inbox_seq: u64,
    pub group_id: Vec<u8>,
    pub commit_seq: u64,
    /// The commit's Welcome, the same for every device it added.
    pub welcome: Vec<u8>,
    /// The group's ratchet tree after that commit.
    pub ratchet_tree: Vec<u8>,
}

impl std::fmt::Debug for InboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxItem")
            .field("inbox_seq", &self.inbox_seq)
            .field("group_id", &hex_prefix(&self.group_id))
            .field("commit_seq", &self.commit_seq)
            .finish_non_exhaustive()
    }
}

/// A group ownership lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    /// The fence token; grows every time ownership changes hands.
    pub token: u64,
    pub expires_at_ms: u64,
}

/// The storage seam. See the module docs for the guarantees every
/// implementation keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ----- health -----

    /// Whether the store answers now: `Ok` when a write issued now could
    /// become durable (SQLite: the writer thread takes and commits an empty
    /// write transaction; CQL: connected, schema in place, and a read of the
    /// store's keyspace at the write consistency level succeeds), otherwise
    /// [`StoreError::Unavailable`] saying why. It says nothing about the
    /// next call, tries once (no retries) and is cheap enough for a
    /// readiness probe. Every other method keeps its contract either way: a
    /// store that does not answer fails writes with `Unavailable` and never
    /// acknowledges one that is not durable.
    async fn ready(&self) -> Result<()>;

    // ----- accounts -----

    /// Creates a user with its first device. `AlreadyExists` if the user id
    /// (or the device id) is taken.
    async fn create_user(&self, device: &Device) -> Result<()>;
    /// Adds a device to an existing user. `NotFound` if the user is missing,
    /// `AlreadyExists` if the device id is taken.
    async fn add_device(&self, device: &Device) -> Result<()>;
    async fn device(&self, device_id: &str) -> Result<Option<Device>>;
    /// All devices of a user, in creation order (empty if unknown user).
    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>>;
    /// Revokes every token of a device; returns the new generation.
    /// `NotFound` if the device is missing (or revoked).
    async fn bump_token_generation(&self, device_id: &str) -> Result<u64>;
    /// Revokes a device for good: its token generation becomes
    /// [`REVOKED_GENERATION`], after which [`Store::device`] answers `None`
    /// and [`Store::devices_of_user`] leaves it out, so every path that looks
    /// a device up (token checks, login, linking, adds, external joins)
    /// refuses it. The row stays, so the device id can never be registered
    /// again. `NotFound` if the device is missing or already revoked.
    async fn revoke_device(&self, device_id: &str) -> Result<()>;
    /// Returns the secret stored under `name`, storing `candidate` first if
    /// there is none (atomic: concurrent callers all get the same secret).
    async fn get_or_create_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;
    /// Removes the secret stored under `name` and returns it, once: of
    /// concurrent callers at most one gets it. `None` if there is none.
    /// (A node moves its token key out of the store with this.)
    async fn take_secret(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a one-time device link code (by its hash).
    async fn put_link_code(
        &self,
        code_hash: &[u8],
        user_id: &str,
        expires_at_ms: u64,
    ) -> Result<()>;
    /// Consumes a link code: returns its user id once, if it exists and has
    /// not expired at `now_ms`; deletes it either way.
    async fn take_link_code(&self, code_hash: &[u8], now_ms: u64) -> Result<Option<String>>;
    /// Deletes every link code expired at `now_ms` (a node's sweeper calls
    /// it); returns how many it deleted. A backend that expires rows by
    /// itself (ScyllaDB, with a TTL) may delete them later and return 0.
    async fn sweep_link_codes(&self, now_ms: u64) -> Result<u64>;

    // ----- key packages -----

    /// Stores packages for a device (a `hash_ref` already stored is skipped)
    /// and, if given, replaces its last-resort package. Returns the number of
    /// unclaimed non-last-resort packages now stored for the device.
    async fn put_key_packages(
        &self,
        device_id: &str,
        packages: &[KeyPackageRecord],
        last_resort: Option<&KeyPackageRecord>,
    ) -> Result<u32>;
    /// Atomically claims one package of the device: the oldest ordinary one,
    /// else the last-resort one (not deleted), else `None`.
    async fn claim_key_package(&self, device_id: &str) -> Result<Option<ClaimedKeyPackage>>;
    /// (unclaimed ordinary packages, has a last-resort package)
    async fn key_package_count(&self, device_id: &str) -> Result<(u32, bool)>;
    /// Sets the device's "last-resort package handed out" mark and returns
    /// the mark as it was (atomic: of concurrent callers setting `true`,
    /// exactly one sees `false`). The node sets it when it hands the
    /// package out and clears it when the device uploads again, so the
    /// package is not handed out twice in a row before its owner was told.
    /// A mark is a flag only: the device need not exist.
    async fn set_last_resort_claimed(&self, device_id: &str, claimed: bool) -> Result<bool>;

    // ----- groups and timelines -----

    /// `AlreadyExists` if the group id is taken. Members get `joined_seq` 0.
    async fn create_group(&self, group: &NewGroup) -> Result<()>;
    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupRecord>>;
    /// Takes or renews the group's lease for `owner`. A new owner (after the
    /// previous lease expired, or when there was none) gets a larger token;
    /// the same owner renewing keeps its token. `Fenced` if another owner's
    /// lease is unexpired at `now_ms`. `NotFound` if the group is missing.
    async fn acquire_lease(
        &self,
        group_id: &[u8],
        owner: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Lease>;
    /// Releases the lease if `owner` holds it with `token` (graceful handoff).
    async fn release_lease(&self, group_id: &[u8], owner: &str, token: u64) -> Result<()>;
    /// Appends an application message or proposal with the next seq.
    async fn append_message(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
    ) -> Result<AppendOutcome>;
    /// Appends application messages in order, each as
    /// [`append_message`](Store::append_message) would (the next seq, or
    /// `Duplicate` with the stored seq for a `client_msg_id` already stored,
    /// by an earlier entry of the same call too). One outcome per entry, in
    /// the entries' order.
    ///
    /// On an error, a prefix of the entries may be stored (the embedded
    /// store writes all or none; a backend without multi-row transactions
    /// writes one after the other): a caller retrying them by their
    /// `client_msg_id` gets the seqs already assigned, never a second one.
    async fn append_messages(
        &self,
        group_id: &[u8],
        fence: u64,
        entries: &[NewEntry],
    ) -> Result<Vec<AppendOutcome>> {
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            outcomes.push(self.append_message(group_id, fence, entry).await?);
        }
        Ok(outcomes)
    }
    /// Appends a proposal with the next seq and, in the same transaction,
    /// replaces the group's DS state (which now queues the proposal). Fails
    /// with `EpochConflict` unless the group is at `entry.epoch`; a duplicate
    /// `client_msg_id` returns `Duplicate` and leaves the state untouched.
    async fn append_proposal(
        &self,
        group_id: &[u8],
        fence: u64,
        entry: &NewEntry,
        state: &[u8],
    ) -> Result<AppendOutcome>;
    /// Applies an accepted commit (see [`CommitWrite`]) with the next seq.
    async fn append_commit(&self, write: &CommitWrite) -> Result<AppendOutcome>;
    /// Entries with seq > `after_seq`, ascending, at most `limit`.
    async fn read_timeline(
        &self,
        group_id: &[u8],
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>>;
    /// The groups a device is currently a member of.
    async fn groups_of_device(&self, device_id: &str) -> Result<Vec<DeviceGroup>>;
    /// Everything an ack of `device_id` in `group_id` is checked against, in
    /// one read: its cursor there, whether it is a member (with the seq it
    /// joined at) or departed (up to which seq it may still read), and the
    /// group's head seq. Agrees with [`Store::cursors`],
    /// [`Store::groups_of_device`] (a member wins over a departure), and
    /// [`Store::departed_groups`]. The hot path of every ack: one round
    /// trip where those lists take three, and no lists at all.
    async fn ack_state(&self, device_id: &str, group_id: &[u8]) -> Result<AckState>;
    /// Groups the device was removed from whose removing commit it has not
    /// yet acknowledged: it may still read entries up to `left_seq`. A
    /// departure disappears once the device's cursor reaches `left_seq`.
    async fn departed_groups(&self, device_id: &str) -> Result<Vec<Departure>>;

    // ----- sync state -----

    /// Moves a device's cursor in a group forward (never backward).
    async fn set_cursor(&self, device_id: &str, group_id: &[u8], seq: u64) -> Result<()>;
    /// An ack in one step: reads the device's [`AckState`] in the group,
    /// and moves its cursor to `seq` (as [`Store::set_cursor`]) if `decide`
    /// says so. Returns the state read and whether it moved the cursor.
    /// This default takes the two steps; SQLite takes both in one writer
    /// operation (one hop instead of a read on the blocking pool and then a
    /// write, and the check and the write see the same state).
    async fn ack_cursor(
        &self,
        device_id: &str,
        group_id: &[u8],
        seq: u64,
        decide: AckDecision,
    ) -> Result<(AckState, bool)> {
        let state = self.ack_state(device_id, group_id).await?;
        let moves = decide(&state);
        if moves {
            self.set_cursor(device_id, group_id, seq).await?;
        }
        Ok((state, moves))
    }
    /// [`Store::ack_cursor`] for a caller that does not wait for it: it
    /// returns once the ack is queued, and `then` gets the outcome once
    /// the ack is stored (or failed), exactly once, on whichever thread
    /// finished it (SQLite: the writer's, right after the commit; keep it
    /// short, it must not block). A receiver acks about as often as it is
    /// sent to; waking its caller to hear that each ack went through cost
    /// more than the ack itself. This default awaits [`Store::ack_cursor`].
    async fn ack_cursor_then(
        &self,
        device_id: &str,
        group_id: &[u8],
        seq: u64,
        decide: AckDecision,
        then: AckThen,
    ) {
        then(self.ack_cursor(device_id, group_id, seq, decide).await);
    }
    /// All cursors of a device: (group_id, seq).
    async fn cursors(&self, device_id: &str) -> Result<Vec<(Vec<u8>, u64)>>;
    /// Where a device's Sync starts: its cursors, its groups, its
    /// departures and the first page of its inbox after `inbox_after`.
    /// Every (re)connect asks this; this default takes four round trips,
    /// SQLite one read (one hop to its blocking pool instead of four, and
    /// one snapshot).
    async fn sync_start(
        &self,
        device_id: &str,
        inbox_after: u64,
        inbox_limit: u32,
    ) -> Result<SyncStart> {
        Ok(SyncStart {
            cursors: self.cursors(device_id).await?,
            groups: self.groups_of_device(device_id).await?,
            departed: self.departed_groups(device_id).await?,
            inbox: self.read_inbox(device_id, inbox_after, inbox_limit).await?,
        })
    }
    /// The members of a group, sorted (empty if there is no such group):
    /// [`Store::group`]'s list without its state, GroupInfo and tree.
    async fn group_members(&self, group_id: &[u8]) -> Result<Vec<MemberDevice>> {
        Ok(self
            .group(group_id)
            .await?
            .map(|g| g.members)
            .unwrap_or_default())
    }
    /// The member devices of a group that joined it (see [`joined_groups`]),
    /// sorted. Asked by `GetPresence`; this default takes a round trip per
    /// member device, SQLite one read.
    async fn joined_members(&self, group_id: &[u8]) -> Result<Vec<MemberDevice>> {
        let mut joined = Vec::new();
        for m in self.group_members(group_id).await? {
            let cursors = self.cursors(&m.device_id).await?;
            if joined_groups(self.groups_of_device(&m.device_id).await?, &cursors)
                .contains(group_id)
            {
                joined.push(m);
            }
        }
        Ok(joined)
    }
    /// Every device of every other user that shares with `user_id` a group
    /// one of the user's devices joined (see [`joined_groups`]) and that
    /// has at most `max_group_members` member devices, sorted. Asked on
    /// every presence change; this default takes a round trip per device
    /// and per group, SQLite one read.
    async fn co_member_devices(
        &self,
        user_id: &str,
        max_group_members: usize,
    ) -> Result<Vec<MemberDevice>> {
        let mut groups = BTreeSet::new();
        for d in self.devices_of_user(user_id).await? {
            let cursors = self.cursors(&d.device_id).await?;
            groups.extend(joined_groups(
                self.groups_of_device(&d.device_id).await?,
                &cursors,
            ));
        }
        let mut devices = BTreeSet::new();
        for g in groups {
            let members = self.group_members(&g).await?;
            if members.len() <= max_group_members {
                devices.extend(members.into_iter().filter(|m| m.user_id != user_id));
            }
        }
        Ok(devices.into_iter().collect())
    }
    /// Inbox items with inbox_seq > `after`, ascending, at most `limit`.
    async fn read_inbox(&self, device_id: &str, after: u64, limit: u32) -> Result<Vec<InboxItem>>;
    /// Deletes inbox items with inbox_seq <= `upto`.
    async fn ack_inbox(&self, device_id: &str, upto: u64) -> Result<()>;
    /// The last inbox seq ever given to the device (0 if none), acknowledged
    /// or not.
    async fn inbox_head(&self, device_id: &str) -> Result<u64>;
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}
