//! The conformance suite every [`Store`] backend passes.
//!
//! Each check is a `pub async fn` taking a fresh, empty store; the
//! [`store_conformance_suite!`](crate::store_conformance_suite) macro expands
//! to one `#[tokio::test]` per check, so a backend runs the whole suite with
//! one line (the crate using it needs `tokio` with `macros` and
//! `rt-multi-thread`):
//!
//! ```text
//! hush_store::store_conformance_suite!(hush_store::conformance::sqlite_harness());
//! ```
//!
//! The factory expression is evaluated once per test and must be a future
//! resolving to a [`Harness`]: the store plus whatever must live as long as
//! it (a temporary directory, a keyspace guard).
//!
//! Where the trait's docs are silent, the suite pins one behaviour down so
//! every backend agrees:
//!
//! - a lease or link code is expired when `now_ms >= expires_at_ms`;
//! - a group that never had a lease (token 0) refuses every append;
//! - the same owner acquiring again keeps its token, even after its own lease
//!   lapsed (ownership never changed hands), and never shortens the lease;
//! - appends check the fence first, then the client_msg_id, then (commits)
//!   the epoch: a stale owner gets `Fenced` even for a duplicate id, and a
//!   retried commit that already applied gets `Duplicate`, not a conflict;
//! - a claimed key package uploaded again is skipped (never handed out twice);
//! - the order of `groups_of_device` and `cursors` is unspecified.
//!
//! Checks are deterministic: time is always passed in (`now_ms`), nothing
//! sleeps, and concurrency checks assert invariants that hold under every
//! interleaving.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{
    AppendOutcome, ClaimedKeyPackage, CommitWrite, Departure, Device, DeviceGroup, EntryKind,
    GroupRecord, KeyPackageRecord, MemberDevice, NewEntry, NewGroup, Store, StoreError, SyncStart,
    WelcomeWrite,
};

/// A store under test plus what must outlive it.
pub struct Harness {
    pub store: Arc<dyn Store>,
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl Harness {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            _guard: None,
        }
    }

    /// `guard` is dropped after the store (fields drop in order).
    pub fn with_guard(store: Arc<dyn Store>, guard: impl Any + Send + Sync) -> Self {
        Self {
            store,
            _guard: Some(Box::new(guard)),
        }
    }
}

/// A [`crate::SqliteStore`] on a fresh temporary directory (deleted when the
/// harness drops). Also handy for other crates' tests.
pub async fn sqlite_harness() -> Harness {
    sqlite_harness_with_commit_delay(std::time::Duration::ZERO).await
}

/// [`sqlite_harness`] with group commit's delay on
/// (`SqliteConfig::commit_delay`): every promise holds with it too.
pub async fn sqlite_harness_with_commit_delay(delay: std::time::Duration) -> Harness {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let mut config = crate::SqliteConfig::new(dir.path().join("hush.db"));
    config.commit_delay = delay;
    let store = crate::SqliteStore::open(config)
        .await
        .expect("open sqlite store");
    Harness::with_guard(Arc::new(store), dir)
}

/// Names the CQL cluster tests run against: `host:port[,host:port...]`, as
/// printed by `scripts/cql.sh up`.
pub const CQL_URI_VAR: &str = "HUSH_SCYLLA_URI";
/// Set to `1` (CI does) to make a test that needs a CQL cluster fail, not
/// skip, when [`CQL_URI_VAR`] is missing.
pub const REQUIRE_CQL_VAR: &str = "HUSH_REQUIRE_CQL";

/// The contact points of the test CQL cluster from [`CQL_URI_VAR`]. Without
/// it: `None` after printing that `what` was SKIPPED and how to start a
/// cluster, or a panic saying so when [`REQUIRE_CQL_VAR`] is `1`.
pub fn cql_contact_points(what: &str) -> Option<Vec<String>> {
    let uri = std::env::var(CQL_URI_VAR).unwrap_or_default();
    let points: Vec<String> = uri
        .split(',')
        .map(|p| p.trim().trim_start_matches("scylla://").to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if !points.is_empty() {
        return Some(points);
    }
    let how = format!(
        "{CQL_URI_VAR} is not set. Start a local CQL cluster with `scripts/cql.sh up` \
         (Cassandra, needs Java 17 and Maven) and export the `{CQL_URI_VAR}=...` line it prints"
    );
    if std::env::var(REQUIRE_CQL_VAR).is_ok_and(|v| v == "1") {
        panic!("{what} needs a CQL cluster and {REQUIRE_CQL_VAR}=1: {how}");
    }
    eprintln!("SKIPPED {what}: {how} ({REQUIRE_CQL_VAR}=1 turns this skip into a failure)");
    None
}

/// A [`crate::ScyllaStore`] on an empty test keyspace (replication
/// factor 1) of the test cluster, or `None` when there is none (see
/// [`cql_contact_points`]). The keyspace comes from a pool (see
/// [`TestKeyspace`]) and goes back to it when the harness drops.
pub async fn cql_harness() -> Option<Harness> {
    let points = cql_contact_points("this CQL store test")?;
    let keyspace = TestKeyspace::claim(&points).await;
    let mut config = crate::ScyllaConfig::new(points);
    config.keyspace = keyspace.name.clone();
    config.replication_factor = 1;
    // Small buckets and pages so the suite's timelines cross partition and
    // page boundaries.
    config.bucket_size = 3;
    config.page_size = 2;
    let store = crate::ScyllaStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{CQL_URI_VAR} is set but the CQL cluster is not usable: {e}"));
    let session = Arc::clone(store.session().expect("connect returns connected"));
    keyspace.empty(&session).await;
    Some(Harness::with_guard(Arc::new(store), keyspace))
}

/// A connected [`crate::ScyllaStore`] with default settings on an emptied
/// test keyspace of the pool for `replication_factor` (see
/// [`TestKeyspace::claim_rf`]), for tests that run hush-node processes on
/// the same keyspace (the store here creates it and its schema first) and
/// read what they wrote. Keep the [`TestKeyspace`] until the end of the test.
pub async fn cql_test_store(
    points: &[String],
    replication_factor: u32,
) -> (crate::ScyllaStore, TestKeyspace) {
    let keyspace = TestKeyspace::claim_rf(points, replication_factor).await;
    let mut config = crate::ScyllaConfig::new(points.to_vec());
    config.keyspace = keyspace.name.clone();
    config.replication_factor = replication_factor;
    let store = crate::ScyllaStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{CQL_URI_VAR} is set but the CQL cluster is not usable: {e}"));
    let session = Arc::clone(store.session().expect("connect returns connected"));
    keyspace.empty(&session).await;
    (store, keyspace)
}

/// A test keyspace claimed from a pool: `hush_test_0`, `hush_test_1`, ...
/// for replication factor 1 ([`TestKeyspace::claim`]), `hush_rf3_0`, ...
/// for 3 ([`TestKeyspace::claim_rf`]): a keyspace keeps the replication it
/// was created with.
///
/// Creating a keyspace takes seconds on Cassandra and dropping one as
/// long (measured on the 3-node test cluster at load average about 16:
/// creating the store's keyspace 25-33 s, dropping it 12-14 s, truncating
/// its 17 tables 2.6-3.3 s, opening a store on it once it exists 0.2-0.3
/// s). So tests reuse keyspaces: one process at a time holds each (an LWT
/// on `hush_test_claims.claims`, owner `<boot id>/<pid>/<claim>`; a claim whose
/// process is gone is taken over), empties the tables that have rows when
/// it claims it, and releases it when it drops. A new keyspace is created
/// only when every one is in use, so a cluster keeps about as many as tests
/// ever ran at once.
pub struct TestKeyspace {
    pub name: String,
    owner: String,
    session: Arc<scylla::client::session::Session>,
}

impl TestKeyspace {
    /// Claims a keyspace name of the replication factor 1 pool (the
    /// keyspace itself may not exist yet: the store creates it).
    pub async fn claim(points: &[String]) -> TestKeyspace {
        Self::claim_rf(points, 1).await
    }

    /// Claims a keyspace name of the pool for `replication_factor`.
    pub async fn claim_rf(points: &[String], replication_factor: u32) -> TestKeyspace {
        let prefix = match replication_factor {
            1 => "hush_test".to_string(),
            rf => format!("hush_rf{rf}"),
        };
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(points)
            .keyspaces_to_fetch(["hush_test_claims"])
            .fetch_full_schema_metadata(false)
            .schema_agreement_timeout(crate::scylla::SCHEMA_AGREEMENT_TIMEOUT)
            .build()
            .await
            .unwrap_or_else(|e| {
                panic!("{CQL_URI_VAR} is set but the CQL cluster is not usable: {e}")
            });
        let session = Arc::new(session);
        for ddl in [
            "CREATE KEYSPACE IF NOT EXISTS hush_test_claims WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            "CREATE TABLE IF NOT EXISTS hush_test_claims.claims (name text PRIMARY KEY, owner text)",
        ] {
            cql_retry("create the test keyspace claims", || {
                session.query_unpaged(crate::scylla::schema_change(ddl), ())
            })
            .await;
        }
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        // Tests of one binary run in one process: the claim number keeps
        // their claims apart (and tells a retry's own claim from theirs).
        static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let claim = CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = format!("{}/{}/{claim}", boot.trim(), std::process::id());
        for k in 0.. {
            let name = format!("{prefix}_{k}");
            let taken = cql_retry(&format!("claim {name}"), || {
                session.query_unpaged(
                    "INSERT INTO hush_test_claims.claims (name, owner) VALUES (?, ?) IF NOT EXISTS",
                    (&name, &owner),
                )
            })
            .await;
            let (applied, holder) = claim_result(taken);
            // An attempt that timed out may have applied: the retry then
            // finds our own claim.
            if applied || holder.as_deref() == Some(owner.as_str()) {
                return TestKeyspace {
                    name,
                    owner,
                    session,
                };
            }
            let Some(holder) = holder.filter(|h| !owner_alive(h, boot.trim())) else {
                continue;
            };
            let took_over = cql_retry(&format!("take over {name}"), || {
                session.query_unpaged(
                    "UPDATE hush_test_claims.claims SET owner = ? WHERE name = ? IF owner = ?",
                    (&owner, &name, &holder),
                )
            })
            .await;
            let (applied, now) = claim_result(took_over);
            if applied || now.as_deref() == Some(owner.as_str()) {
                return TestKeyspace {
                    name,
                    owner,
                    session,
                };
            }
        }
        unreachable!("the pool has no end")
    }

    /// Truncates every table of the store's schema that has a row (not
    /// `schema_version`), so the store starts empty.
    pub async fn empty(&self, session: &scylla::client::session::Session) {
        for table in crate::scylla::schema_tables() {
            if table == "schema_version" {
                continue;
            }
            let rows = session
                .query_unpaged(format!("SELECT * FROM {}.{table} LIMIT 1", self.name), ())
                .await
                .unwrap_or_else(|e| panic!("look into {}.{table}: {e}", self.name))
                .into_rows_result()
                .map(|r| r.rows_num())
                .unwrap_or(0);
            if rows > 0 {
                session
                    .query_unpaged(
                        crate::scylla::schema_change(format!("TRUNCATE {}.{table}", self.name)),
                        (),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("truncate {}.{table}: {e}", self.name));
            }
        }
    }
}

/// `([applied], owner)` of a claim LWT (a condition that failed returns
/// the row's current values).
/// Runs a test-harness statement, retrying a failure the store itself
/// counts as transient ([`crate::scylla::is_transient`]: the cluster, not
/// the request) up to [`CQL_HARNESS_ATTEMPTS`] times, 1, 2, 4, ... s apart,
/// and panicking with `what` on any other. On a cluster that has just
/// started, the first LWTs and schema changes can time out while Paxos and
/// gossip settle: longer than the store's own retries wait, hence this
/// schedule. Every statement retried here is idempotent for its caller (a
/// claim that did apply is found as our own by the retry).
async fn cql_retry<T, F, Fut>(what: &str, mut run: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, scylla::errors::ExecutionError>>,
{
    let mut pause = std::time::Duration::from_secs(1);
    for attempt in 1.. {
        match run().await {
            Ok(v) => return v,
            Err(e) if attempt < CQL_HARNESS_ATTEMPTS && crate::scylla::is_transient(&e) => {
                eprintln!("{what}: attempt {attempt} failed ({e}); retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => panic!("{what}: {e} (attempt {attempt})"),
        }
    }
    unreachable!("the attempts have no end")
}

/// How many times the harness tries a claim or its keyspace's DDL.
const CQL_HARNESS_ATTEMPTS: u32 = 5;

fn claim_result(result: scylla::response::query_result::QueryResult) -> (bool, Option<String>) {
    let Ok(rows) = result.into_rows_result() else {
        return (false, None);
    };
    let owner_at = rows.column_specs().iter().position(|c| c.name() == "owner");
    let Ok(row) = rows.first_row::<scylla::value::Row>() else {
        return (false, None);
    };
    let applied = matches!(
        row.columns.first(),
        Some(Some(scylla::value::CqlValue::Boolean(true)))
    );
    let owner = owner_at
        .and_then(|i| row.columns.get(i).cloned().flatten())
        .and_then(|v| match v {
            scylla::value::CqlValue::Text(t) => Some(t),
            _ => None,
        });
    (applied, owner)
}

/// Whether the claim owner `<boot id>/<pid>/<claim>` (or, as claims were
/// written before, `<boot id>/<pid>`) still runs on this machine.
fn owner_alive(owner: &str, boot: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(owner_boot), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    owner_boot == boot && std::path::Path::new("/proc").join(pid).exists()
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the failed test's data stays in keyspace {} until the next test claims it",
                self.name
            );
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            // A claim whose process ends is taken over by the next one.
            return;
        }
        let released = tokio::task::block_in_place(|| {
            handle.block_on(async {
                self.session
                    .query_unpaged(
                        "DELETE FROM hush_test_claims.claims WHERE name = ? IF owner = ?",
                        (&self.name, &self.owner),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        });
        if let Err(e) = released {
            eprintln!("could not release test keyspace {}: {e}", self.name);
        }
    }
}

/// The local CQL cluster of `scripts/cql.sh` (its folder: `HUSH_CQL_DIR`,
/// default `target/cql` of the workspace), for tests that stop and start its
/// nodes. Such tests run in their own test binary (cargo runs binaries one
/// at a time) and leave every node running when they end.
pub struct LocalCqlCluster {
    dir: std::path::PathBuf,
    script: std::path::PathBuf,
    /// The node count of the folder (`scripts/cql.sh up N`).
    pub size: usize,
    /// Its contact points, as in `HUSH_SCYLLA_URI`.
    pub contact_points: Vec<String>,
}

impl LocalCqlCluster {
    /// The cluster `HUSH_SCYLLA_URI` names, if it is the `scripts/cql.sh`
    /// cluster of this workspace with at least `nodes` nodes. Otherwise
    /// `None` after printing that `what` was SKIPPED and why (a panic with
    /// `HUSH_REQUIRE_CQL=1`).
    pub fn find(what: &str, nodes: usize) -> Option<Self> {
        let contact_points = cql_contact_points(what)?;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::var_os("HUSH_CQL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target/cql"));
        let size: usize = std::fs::read_to_string(dir.join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let ours = (1..=size)
            .map(|k| format!("127.0.0.{k}:9042"))
            .collect::<Vec<_>>();
        if size < nodes || ours != contact_points {
            let why = format!(
                "it stops and starts nodes of the scripts/cql.sh cluster in {} and needs \
                 {nodes} of them named by {CQL_URI_VAR} (found {size} there, and {CQL_URI_VAR}={}): \
                 run `scripts/cql.sh up {nodes}`",
                dir.display(),
                contact_points.join(",")
            );
            if std::env::var(REQUIRE_CQL_VAR).is_ok_and(|v| v == "1") {
                panic!("{what}: {why}");
            }
            eprintln!("SKIPPED {what}: {why}");
            return None;
        }
        Some(Self {
            dir,
            script: root.join("scripts/cql.sh"),
            size,
            contact_points,
        })
    }

    /// The cluster's folder: every node's data, commitlog and logs.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The pid of node `k` (1-based) as its pid file says.
    pub fn pid(&self, k: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("node{k}/pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Kills node `k` with SIGKILL, as a crash would.
    pub fn kill(&self, k: usize) {
        let pid = self
            .pid(k)
            .unwrap_or_else(|| panic!("node {k} has no pid file"));
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} (node {k})");
        // Wait until it is gone: its sockets close with it.
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while proc_dir.join("cmdline").exists()
            && std::fs::read(proc_dir.join("cmdline")).is_ok_and(|c| !c.is_empty())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node {k} (pid {pid}) survived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts every node that is not running (`scripts/cql.sh up N`) and
    /// waits until the whole cluster takes writes at consistency ALL again.
    /// Blocking: call it from `spawn_blocking`.
    pub fn up(&self) {
        let out = std::process::Command::new(&self.script)
            .args(["up", &self.size.to_string()])
            .env("HUSH_CQL_DIR", &self.dir)
            .output()
            .expect("run scripts/cql.sh up");
        assert!(
            out.status.success(),
            "scripts/cql.sh up {} failed:\n{}",
            self.size,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Expands to one `#[tokio::test]` per conformance check. The argument is an
/// expression evaluated once per test to a future of a
/// [`Harness`](crate::conformance::Harness).
#[macro_export]
macro_rules! store_conformance_suite {
    // A backend that needs a server: the factory resolves to
    // `Option<Harness>`; `None` makes each test print that it was SKIPPED
    // and return.
    (optional: $factory:expr) => {
        $crate::store_conformance_suite!(@list optional ($factory));
    };
    ($factory:expr) => {
        $crate::store_conformance_suite!(@list required ($factory));
    };
    (@list $mode:ident ($factory:expr)) => {
        $crate::store_conformance_suite!(@tests $mode ($factory)
            ready_once_open,
            users_and_devices,
            revoked_devices_are_gone_for_good,
            secrets_get_or_create_concurrently,
            secrets_are_taken_once,
            link_codes_single_use_and_expiry,
            link_codes_expired_are_swept,
            key_packages_claim_order_and_last_resort,
            key_packages_concurrent_claims_are_distinct,
            last_resort_claim_mark_is_a_one_winner_flag,
            groups_create_and_read,
            lease_lifecycle,
            lease_tokens_grow_with_every_handoff,
            append_requires_current_fence,
            stale_fence_after_takeover_writes_nothing,
            append_dense_seqs_under_concurrency,
            append_is_idempotent,
            append_concurrent_duplicates_get_one_seq,
            append_messages_in_order_once_each,
            proposal_updates_state_atomically,
            commit_applies_atomically,
            commit_epoch_conflict_writes_nothing,
            commit_race_has_one_winner_per_epoch,
            read_timeline_paging,
            groups_of_device_follow_membership,
            cursors_never_move_backward,
            inbox_seqs_increase_and_are_never_reused,
            inbox_head_is_the_last_seq_given,
            a_commits_welcome_serves_every_device_it_adds,
            ack_state_follows_cursor_membership_and_head,
            ack_cursor_moves_only_when_decided,
            ack_cursor_then_hands_over_what_ack_cursor_returns,
            ack_cursor_settles_a_departure_once_past_the_removal,
            sync_start_and_co_members_agree_with_their_parts,
        );
    };
    (@tests required ($factory:expr) $($name:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness: $crate::conformance::Harness = ($factory).await;
                $crate::conformance::$name(::std::sync::Arc::clone(&harness.store)).await;
                drop(harness);
            }
        )+
    };
    (@tests optional ($factory:expr) $($name:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness: ::std::option::Option<$crate::conformance::Harness> = ($factory).await;
                let ::std::option::Option::Some(harness) = harness else {
                    eprintln!(
                        "SKIPPED conformance check {}: its backend is not available (see the factory)",
                        stringify!($name)
                    );
                    return;
                };
                $crate::conformance::$name(::std::sync::Arc::clone(&harness.store)).await;
                drop(harness);
            }
        )+
    };
}

// ----------------------------------------------------------------------------
// fixtures

fn device(user: &str, device_id: &str, created_at_ms: u64) -> Device {
    Device {
        user_id: user.to_string(),
        device_id: device_id.to_string(),
        signature_key: vec![7; 32],
        token_generation: 0,
        created_at_ms,
    }
}

fn member(user: &str, device_id: &str) -> MemberDevice {
    MemberDevice {
        user_id: user.to_string(),
        device_id: device_id.to_string(),
    }
}

fn kp(tag: &str) -> KeyPackageRecord {
    KeyPackageRecord {
        hash_ref: format!("ref:{tag}").into_bytes(),
        data: format!("data:{tag}").into_bytes(),
    }
}

fn claimed(tag: &str, last_resort: bool) -> Option<ClaimedKeyPackage> {
    Some(ClaimedKeyPackage {
        data: format!("data:{tag}").into_bytes(),
        last_resort,
    })
}

fn message(id: &str, epoch: u64) -> NewEntry {
    NewEntry {
        kind: EntryKind::Application,
        epoch,
        sender: "alice/alice-1".to_string(),
        client_msg_id: id.as_bytes().to_vec(),
        message: format!("ciphertext:{id}").into_bytes(),
        server_time_ms: 1_000,
    }
}

fn new_group(group_id: &[u8], members: Vec<MemberDevice>) -> NewGroup {
    NewGroup {
        group: GroupRecord {
            group_id: group_id.to_vec(),
            epoch: 1,
            state: b"state-1".to_vec(),
            group_info: b"group-info-1".to_vec(),
            ratchet_tree: b"tree-1".to_vec(),
            head_seq: 0,
            members,
        },
    }
}

/// Creates a group with `alice-1` as its only member and takes its lease
/// for `node-a`; returns the fence token.
async fn leased_group(store: &dyn Store, group_id: &[u8]) -> u64 {
    store
        .create_group(&new_group(group_id, vec![member("alice", "alice-1")]))
        .await
        .expect("create group");
    store
        .acquire_lease(group_id, "node-a", 0, 1_000_000)
        .await
        .expect("acquire lease")
        .token
}

fn commit(
    group_id: &[u8],
    fence: u64,
    expected_epoch: u64,
    members: Vec<MemberDevice>,
    welcome_for: &[&str],
    id: &str,
) -> CommitWrite {
    let new_epoch = expected_epoch + 1;
    CommitWrite {
        group_id: group_id.to_vec(),
        fence,
        expected_epoch,
        new_epoch,
        state: format!("state-{new_epoch}-{id}").into_bytes(),
        group_info: format!("group-info-{new_epoch}-{id}").into_bytes(),
        ratchet_tree: format!("tree-{new_epoch}-{id}").into_bytes(),
        members,
        entry: NewEntry {
            kind: EntryKind::Commit,
            epoch: expected_epoch,
            sender: "alice/alice-1".to_string(),
            client_msg_id: id.as_bytes().to_vec(),
            message: format!("commit:{id}").into_bytes(),
            server_time_ms: 2_000,
        },
        welcome: (!welcome_for.is_empty()).then(|| WelcomeWrite {
            welcome: format!("welcome:{id}").into_bytes(),
            device_ids: welcome_for.iter().map(|d| d.to_string()).collect(),
        }),
    }
}

async fn timeline_len(store: &dyn Store, group_id: &[u8]) -> usize {
    store
        .read_timeline(group_id, 0, u32::MAX)
        .await
        .expect("read timeline")
        .len()
}

async fn head_seq(store: &dyn Store, group_id: &[u8]) -> u64 {
    store
        .group(group_id)
        .await
        .expect("read group")
        .expect("group exists")
        .head_seq
}

fn assert_fenced<T: std::fmt::Debug>(
    result: crate::Result<T>,
    owner: &str,
    token: u64,
    what: &str,
) {
    match result {
        Err(StoreError::Fenced { owner: o, token: t }) => {
            assert_eq!((o.as_str(), t), (owner, token), "{what}: fenced by")
        }
        other => panic!("{what}: expected Fenced, got {other:?}"),
    }
}

// ----------------------------------------------------------------------------
// accounts

pub async fn ready_once_open(store: Arc<dyn Store>) {
    store.ready().await.expect("an open store answers");
    // Asking does not change anything.
    store.ready().await.expect("and keeps answering");
    assert!(store.device("d").await.expect("read").is_none());
}

pub async fn users_and_devices(store: Arc<dyn Store>) {
    let alice1 = device("alice", "alice-1", 10);
    store.create_user(&alice1).await.expect("create alice");
    assert!(matches!(
        store.create_user(&device("alice", "alice-9", 11)).await,
        Err(StoreError::AlreadyExists)
    ));
    // A taken device id fails the whole creation: bob is not created.
    assert!(matches!(
        store.create_user(&device("bob", "alice-1", 12)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        store.add_device(&device("bob", "bob-1", 13)).await,
        Err(StoreError::NotFound)
    ));
    assert!(store
        .devices_of_user("bob")
        .await
        .expect("devices")
        .is_empty());
    assert_eq!(store.device("bob-1").await.expect("device"), None);

    let alice3 = device("alice", "alice-3", 20);
    let alice2 = device("alice", "alice-2", 30);
    store.add_device(&alice3).await.expect("add alice-3");
    store.add_device(&alice2).await.expect("add alice-2");
    assert!(matches!(
        store.add_device(&device("alice", "alice-2", 40)).await,
        Err(StoreError::AlreadyExists)
    ));
    store
        .create_user(&device("bob", "bob-1", 50))
        .await
        .expect("create bob");
    assert!(matches!(
        store.add_device(&device("bob", "alice-2", 60)).await,
        Err(StoreError::AlreadyExists)
    ));

    // Creation order, not id order.
    assert_eq!(
        store.devices_of_user("alice").await.expect("devices"),
        vec![alice1.clone(), alice3, alice2.clone()]
    );
    assert_eq!(store.device("alice-2").await.expect("device"), Some(alice2));
    assert!(store
        .devices_of_user("nobody")
        .await
        .expect("devices")
        .is_empty());

    assert_eq!(
        store.bump_token_generation("alice-1").await.expect("bump"),
        1
    );
    assert_eq!(
        store.bump_token_generation("alice-1").await.expect("bump"),
        2
    );
    let reread = store
        .device("alice-1")
        .await
        .expect("device")
        .expect("exists");
    assert_eq!(reread.token_generation, 2);
    assert_eq!(reread.signature_key, alice1.signature_key);
    assert_eq!(
        store
            .device("bob-1")
            .await
            .expect("device")
            .expect("exists")
            .token_generation,
        0
    );
    assert!(matches!(
        store.bump_token_generation("nobody-1").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn revoked_devices_are_gone_for_good(store: Arc<dyn Store>) {
    let alice1 = device("alice", "alice-1", 10);
    let alice2 = device("alice", "alice-2", 20);
    store.create_user(&alice1).await.expect("create alice");
    store.add_device(&alice2).await.expect("add alice-2");
    assert_eq!(
        store.bump_token_generation("alice-2").await.expect("bump"),
        1
    );

    store.revoke_device("alice-2").await.expect("revoke");
    // Every lookup now misses it, so nothing can authenticate as it.
    assert_eq!(store.device("alice-2").await.expect("device"), None);
    assert_eq!(
        store.devices_of_user("alice").await.expect("devices"),
        vec![alice1.clone()]
    );
    assert!(matches!(
        store.bump_token_generation("alice-2").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.revoke_device("alice-2").await,
        Err(StoreError::NotFound)
    ));
    // Its id stays taken: it cannot be linked again, by anyone.
    assert!(matches!(
        store.add_device(&device("alice", "alice-2", 30)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        store.create_user(&device("mallory", "alice-2", 30)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(store.device("alice-2").await.expect("device"), None);
    // The other device is untouched; unknown devices are NotFound.
    assert_eq!(store.device("alice-1").await.expect("device"), Some(alice1));
    assert!(matches!(
        store.revoke_device("nobody-1").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn secrets_get_or_create_concurrently(store: Arc<dyn Store>) {
    let mut tasks = JoinSet::new();
    for i in 0..32u8 {
        let store = store.clone();
        tasks.spawn(async move { store.get_or_create_secret("token-key", &[i; 32]).await });
    }
    let mut seen = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        seen.insert(joined.expect("task").expect("get_or_create_secret"));
    }
    assert_eq!(seen.len(), 1, "concurrent callers got different secrets");
    let winner = seen.into_iter().next().expect("one secret");
    assert!(winner.len() == 32 && winner.iter().all(|b| *b == winner[0]));

    let again = store
        .get_or_create_secret("token-key", b"another candidate")
        .await
        .expect("get secret");
    assert_eq!(again, winner);
    let other = store
        .get_or_create_secret("other-key", b"other")
        .await
        .expect("create other secret");
    assert_eq!(other, b"other".to_vec());
}

pub async fn secrets_are_taken_once(store: Arc<dyn Store>) {
    assert_eq!(store.take_secret("nothing").await.expect("take"), None);
    store
        .get_or_create_secret("moving", &[9; 32])
        .await
        .expect("create");
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.take_secret("moving").await });
    }
    let mut taken = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(v) = joined.expect("task").expect("take_secret") {
            taken.push(v);
        }
    }
    assert_eq!(taken, vec![vec![9u8; 32]], "exactly one caller takes it");
    assert_eq!(store.take_secret("moving").await.expect("take"), None);
    // Gone: a new value can be stored under the name.
    let fresh = store
        .get_or_create_secret("moving", b"fresh")
        .await
        .expect("create again");
    assert_eq!(fresh, b"fresh".to_vec());
}

pub async fn link_codes_expired_are_swept(store: Arc<dyn Store>) {
    store
        .put_link_code(b"sweep-old", "alice", 1_000)
        .await
        .expect("put");
    store
        .put_link_code(b"sweep-new", "alice", 5_000)
        .await
        .expect("put");
    let swept = store.sweep_link_codes(2_000).await.expect("sweep");
    assert!(swept <= 1, "only the expired code may go (swept {swept})");
    if swept == 1 {
        // Deleted, not merely expired: even an earlier clock finds nothing.
        assert_eq!(
            store.take_link_code(b"sweep-old", 0).await.expect("take"),
            None
        );
    }
    assert_eq!(
        store
            .take_link_code(b"sweep-new", 2_000)
            .await
            .expect("take"),
        Some("alice".to_string()),
        "an unexpired code survives the sweep"
    );
}

pub async fn link_codes_single_use_and_expiry(store: Arc<dyn Store>) {
    store
        .put_link_code(b"code-1", "alice", 1_000)
        .await
        .expect("put");
    assert_eq!(
        store.take_link_code(b"code-1", 999).await.expect("take"),
        Some("alice".to_string())
    );
    assert_eq!(
        store.take_link_code(b"code-1", 999).await.expect("take"),
        None
    );

    // Expired at its deadline, and deleted by the failed take.
    store
        .put_link_code(b"code-2", "bob", 1_000)
        .await
        .expect("put");
    assert_eq!(
        store.take_link_code(b"code-2", 1_000).await.expect("take"),
        None
    );
    assert_eq!(
        store.take_link_code(b"code-2", 0).await.expect("take"),
        None
    );

    assert_eq!(store.take_link_code(b"never", 0).await.expect("take"), None);

    // Concurrent takes: exactly one wins.
    store
        .put_link_code(b"code-3", "carol", 1_000)
        .await
        .expect("put");
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.spawn(async move { store.take_link_code(b"code-3", 10).await });
    }
    let mut winners = 0;
    while let Some(joined) = tasks.join_next().await {
        if joined.expect("task").expect("take").is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

// ----------------------------------------------------------------------------
// key packages

pub async fn key_packages_claim_order_and_last_resort(store: Arc<dyn Store>) {
    let n = store
        .put_key_packages("dev-1", &[kp("1"), kp("2"), kp("3")], Some(&kp("lr-a")))
        .await
        .expect("put");
    assert_eq!(n, 3);
    assert_eq!(
        store.key_package_count("dev-1").await.expect("count"),
        (3, true)
    );
    // An already stored hash_ref is skipped.
    let n = store
        .put_key_packages("dev-1", &[kp("2"), kp("4")], None)
        .await
        .expect("put");
    assert_eq!(n, 4);

    for tag in ["1", "2", "3", "4"] {
        assert_eq!(
            store.claim_key_package("dev-1").await.expect("claim"),
            claimed(tag, false),
            "oldest first"
        );
    }
    assert_eq!(
        store.key_package_count("dev-1").await.expect("count"),
        (0, true)
    );
    // The last-resort package is handed out, and kept.
    for _ in 0..3 {
        assert_eq!(
            store.claim_key_package("dev-1").await.expect("claim"),
            claimed("lr-a", true)
        );
    }
    assert_eq!(
        store.key_package_count("dev-1").await.expect("count"),
        (0, true)
    );

    // Replacing the last-resort package.
    let n = store
        .put_key_packages("dev-1", &[], Some(&kp("lr-b")))
        .await
        .expect("put");
    assert_eq!(n, 0);
    assert_eq!(
        store.claim_key_package("dev-1").await.expect("claim"),
        claimed("lr-b", true)
    );

    // A claimed package uploaded again is never handed out again.
    let n = store
        .put_key_packages("dev-1", &[kp("1")], None)
        .await
        .expect("put");
    assert_eq!(n, 0);
    assert_eq!(
        store.claim_key_package("dev-1").await.expect("claim"),
        claimed("lr-b", true)
    );

    // Ordinary packages come before the last-resort one again.
    store
        .put_key_packages("dev-1", &[kp("5")], None)
        .await
        .expect("put");
    assert_eq!(
        store.claim_key_package("dev-1").await.expect("claim"),
        claimed("5", false)
    );

    // hash_ref is unique across the store, not per device.
    store
        .put_key_packages("dev-2", &[kp("6")], None)
        .await
        .expect("put");
    let n = store
        .put_key_packages("dev-3", &[kp("6")], None)
        .await
        .expect("put");
    assert_eq!(n, 0);
    assert_eq!(store.claim_key_package("dev-3").await.expect("claim"), None);
    assert_eq!(
        store.claim_key_package("dev-2").await.expect("claim"),
        claimed("6", false)
    );
    assert_eq!(store.claim_key_package("dev-2").await.expect("claim"), None);

    assert_eq!(
        store.claim_key_package("nobody").await.expect("claim"),
        None
    );
    assert_eq!(
        store.key_package_count("nobody").await.expect("count"),
        (0, false)
    );
}

pub async fn last_resort_claim_mark_is_a_one_winner_flag(store: Arc<dyn Store>) {
    // Each call returns the mark as it was.
    assert!(!store
        .set_last_resort_claimed("dev-1", true)
        .await
        .expect("set"));
    assert!(store
        .set_last_resort_claimed("dev-1", true)
        .await
        .expect("set"));
    assert!(store
        .set_last_resort_claimed("dev-1", false)
        .await
        .expect("clear"));
    assert!(!store
        .set_last_resort_claimed("dev-1", false)
        .await
        .expect("clear"));
    // Devices are independent, and need not exist.
    assert!(!store
        .set_last_resort_claimed("dev-2", true)
        .await
        .expect("set"));
    assert!(!store
        .set_last_resort_claimed("dev-1", true)
        .await
        .expect("set"));

    // Of concurrent markers exactly one sees it unset.
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.set_last_resort_claimed("dev-3", true).await });
    }
    let mut first = 0;
    while let Some(joined) = tasks.join_next().await {
        if !joined.expect("task").expect("set") {
            first += 1;
        }
    }
    assert_eq!(first, 1);
}

pub async fn key_packages_concurrent_claims_are_distinct(store: Arc<dyn Store>) {
    const PACKAGES: usize = 200;
    let packages: Vec<_> = (0..PACKAGES).map(|i| kp(&format!("c{i}"))).collect();
    for chunk in packages.chunks(50) {
        store
            .put_key_packages("dev-1", chunk, None)
            .await
            .expect("put");
    }
    assert_eq!(
        store.key_package_count("dev-1").await.expect("count"),
        (PACKAGES as u32, false)
    );

    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            while let Some(p) = store.claim_key_package("dev-1").await.expect("claim") {
                assert!(!p.last_resort);
                got.push(p.data);
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.expect("task"));
    }
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), PACKAGES, "every package claimed exactly once");
    assert_eq!(distinct.len(), PACKAGES, "no package handed out twice");
    assert_eq!(store.claim_key_package("dev-1").await.expect("claim"), None);

    store
        .put_key_packages("dev-1", &[], Some(&kp("lr")))
        .await
        .expect("put");
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.claim_key_package("dev-1").await });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.expect("task").expect("claim"), claimed("lr", true));
    }
    assert_eq!(
        store.key_package_count("dev-1").await.expect("count"),
        (0, true)
    );
}

// ----------------------------------------------------------------------------
// groups and leases

pub async fn groups_create_and_read(store: Arc<dyn Store>) {
    let members = vec![member("bob", "bob-1"), member("alice", "alice-1")];
    store
        .create_group(&new_group(b"g1", members))
        .await
        .expect("create group");
    assert!(matches!(
        store.create_group(&new_group(b"g1", vec![])).await,
        Err(StoreError::AlreadyExists)
    ));
    let g = store.group(b"g1").await.expect("group").expect("exists");
    assert_eq!(g.group_id, b"g1".to_vec());
    assert_eq!(g.epoch, 1);
    assert_eq!(g.state, b"state-1".to_vec());
    assert_eq!(g.group_info, b"group-info-1".to_vec());
    assert_eq!(g.ratchet_tree, b"tree-1".to_vec());
    assert_eq!(g.head_seq, 0);
    assert_eq!(
        g.members,
        vec![member("alice", "alice-1"), member("bob", "bob-1")],
        "members sorted"
    );
    assert_eq!(store.group(b"nope").await.expect("group"), None);
    assert_eq!(
        store.groups_of_device("bob-1").await.expect("groups"),
        vec![DeviceGroup {
            group_id: b"g1".to_vec(),
            joined_seq: 0
        }]
    );
    assert!(store
        .read_timeline(b"g1", 0, 10)
        .await
        .expect("read")
        .is_empty());
}

pub async fn lease_lifecycle(store: Arc<dyn Store>) {
    assert!(matches!(
        store.acquire_lease(b"missing", "node-a", 0, 100).await,
        Err(StoreError::NotFound)
    ));
    store
        .create_group(&new_group(b"g", vec![]))
        .await
        .expect("create group");

    let a = store
        .acquire_lease(b"g", "node-a", 1_000, 500)
        .await
        .expect("acquire");
    assert_eq!(
        (a.owner.as_str(), a.token, a.expires_at_ms),
        ("node-a", 1, 1_500)
    );

    // Renewal keeps the token and extends the lease.
    let a = store
        .acquire_lease(b"g", "node-a", 1_200, 500)
        .await
        .expect("renew");
    assert_eq!((a.token, a.expires_at_ms), (1, 1_700));

    assert_fenced(
        store.acquire_lease(b"g", "node-b", 1_699, 500).await,
        "node-a",
        1,
        "unexpired lease",
    );
    // Expired at its deadline: another owner takes over with a larger token.
    let b = store
        .acquire_lease(b"g", "node-b", 1_700, 500)
        .await
        .expect("takeover");
    assert_eq!(
        (b.owner.as_str(), b.token, b.expires_at_ms),
        ("node-b", 2, 2_200)
    );
    assert_fenced(
        store.acquire_lease(b"g", "node-a", 1_800, 500).await,
        "node-b",
        2,
        "old owner",
    );

    // Release needs the right owner and token.
    store
        .release_lease(b"g", "node-b", 1)
        .await
        .expect("release");
    store
        .release_lease(b"g", "node-a", 2)
        .await
        .expect("release");
    assert_fenced(
        store.acquire_lease(b"g", "node-a", 1_800, 500).await,
        "node-b",
        2,
        "after bad releases",
    );
    store
        .release_lease(b"g", "node-b", 2)
        .await
        .expect("release");
    let a = store
        .acquire_lease(b"g", "node-a", 1_800, 500)
        .await
        .expect("acquire after release");
    assert_eq!((a.owner.as_str(), a.token), ("node-a", 3));
}

pub async fn lease_tokens_grow_with_every_handoff(store: Arc<dyn Store>) {
    store
        .create_group(&new_group(b"g", vec![]))
        .await
        .expect("create group");
    let mut last = 0;
    let mut now = 0;
    for round in 0..20u64 {
        let owner = format!("node-{}", round % 3);
        let lease = store
            .acquire_lease(b"g", &owner, now, 100)
            .await
            .expect("acquire");
        assert!(lease.token > last, "token must grow on handoff");
        last = lease.token;
        if round % 2 == 0 {
            store
                .release_lease(b"g", &owner, lease.token)
                .await
                .expect("release");
        } else {
            now += 100; // let it expire
        }
    }
}

pub async fn append_requires_current_fence(store: Arc<dyn Store>) {
    store
        .create_group(&new_group(b"g", vec![member("alice", "alice-1")]))
        .await
        .expect("create group");
    // A new group has no lease: nobody may append.
    assert!(matches!(
        store.append_message(b"g", 0, &message("m0", 1)).await,
        Err(StoreError::Fenced { token: 0, .. })
    ));
    assert!(matches!(
        store.append_message(b"g", 1, &message("m0", 1)).await,
        Err(StoreError::Fenced { token: 0, .. })
    ));
    let lease = store
        .acquire_lease(b"g", "node-a", 0, 1_000)
        .await
        .expect("acquire");
    assert_fenced(
        store
            .append_message(b"g", lease.token + 1, &message("m1", 1))
            .await,
        "node-a",
        lease.token,
        "future token",
    );
    assert_eq!(timeline_len(&*store, b"g").await, 0);
    assert_eq!(head_seq(&*store, b"g").await, 0);

    assert_eq!(
        store
            .append_message(b"g", lease.token, &message("m1", 1))
            .await
            .expect("append"),
        AppendOutcome::Appended { seq: 1 }
    );
    assert_eq!(head_seq(&*store, b"g").await, 1);
    assert!(matches!(
        store.append_message(b"missing", 1, &message("m1", 1)).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn stale_fence_after_takeover_writes_nothing(store: Arc<dyn Store>) {
    store
        .create_group(&new_group(b"g", vec![member("alice", "alice-1")]))
        .await
        .expect("create group");
    let a = store
        .acquire_lease(b"g", "node-a", 0, 100)
        .await
        .expect("acquire");
    store
        .append_message(b"g", a.token, &message("m1", 1))
        .await
        .expect("append");
    let b = store
        .acquire_lease(b"g", "node-b", 100, 100)
        .await
        .expect("takeover");
    assert!(b.token > a.token);

    assert_fenced(
        store.append_message(b"g", a.token, &message("m2", 1)).await,
        "node-b",
        b.token,
        "stale append",
    );
    let stale_commit = commit(
        b"g",
        a.token,
        1,
        vec![member("alice", "alice-1"), member("bob", "bob-1")],
        &["bob-1"],
        "c-stale",
    );
    assert_fenced(
        store.append_commit(&stale_commit).await,
        "node-b",
        b.token,
        "stale commit",
    );
    let g = store.group(b"g").await.expect("group").expect("exists");
    assert_eq!((g.epoch, g.head_seq, g.members.len()), (1, 1, 1));
    assert_eq!(timeline_len(&*store, b"g").await, 1);
    assert!(store
        .read_inbox("bob-1", 0, 10)
        .await
        .expect("inbox")
        .is_empty());

    // Even a duplicate id is refused under a stale fence.
    assert_fenced(
        store.append_message(b"g", a.token, &message("m1", 1)).await,
        "node-b",
        b.token,
        "stale duplicate",
    );
    assert_eq!(
        store
            .append_message(b"g", b.token, &message("m2", 1))
            .await
            .expect("append"),
        AppendOutcome::Appended { seq: 2 }
    );
}

pub async fn append_dense_seqs_under_concurrency(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    const PER_TASK: usize = 40;
    let fence = leased_group(&*store, b"g").await;
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..PER_TASK {
                let id = format!("t{t}-{i}");
                let outcome = store
                    .append_message(b"g", fence, &message(&id, 1))
                    .await
                    .expect("append");
                let AppendOutcome::Appended { seq } = outcome else {
                    panic!("fresh id reported as {outcome:?}");
                };
                got.push((id, seq));
            }
            got
        });
    }
    let mut by_id = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        for (id, seq) in joined.expect("task") {
            by_id.insert(id.into_bytes(), seq);
        }
    }
    let total = (TASKS * PER_TASK) as u64;
    let seqs: BTreeSet<u64> = by_id.values().copied().collect();
    assert_eq!(seqs.len() as u64, total, "duplicate seqs handed out");
    assert_eq!(seqs, (1..=total).collect(), "seqs not dense");
    assert_eq!(head_seq(&*store, b"g").await, total);

    let mut after = 0;
    loop {
        let page = store.read_timeline(b"g", after, 100).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            assert_eq!(by_id.get(&e.client_msg_id), Some(&e.seq));
        }
    }
    assert_eq!(after, total);
}

pub async fn append_is_idempotent(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    assert_eq!(
        store
            .append_message(b"g", fence, &message("m1", 1))
            .await
            .expect("append"),
        AppendOutcome::Appended { seq: 1 }
    );
    let mut retry = message("m1", 1);
    retry.message = b"different body".to_vec();
    assert_eq!(
        store
            .append_message(b"g", fence, &retry)
            .await
            .expect("append"),
        AppendOutcome::Duplicate { seq: 1 }
    );
    assert_eq!(
        store
            .append_message(b"g", fence, &message("m2", 1))
            .await
            .expect("append"),
        AppendOutcome::Appended { seq: 2 }
    );
    assert_eq!(
        store
            .append_message(b"g", fence, &message("m1", 1))
            .await
            .expect("append"),
        AppendOutcome::Duplicate { seq: 1 }
    );
    let timeline = store.read_timeline(b"g", 0, 10).await.expect("read");
    assert_eq!(timeline.len(), 2);
    assert_eq!(
        timeline[0].message,
        b"ciphertext:m1".to_vec(),
        "duplicate wrote"
    );

    // Ids are per group.
    let fence2 = leased_group(&*store, b"g2").await;
    assert_eq!(
        store
            .append_message(b"g2", fence2, &message("m1", 1))
            .await
            .expect("append"),
        AppendOutcome::Appended { seq: 1 }
    );
}

pub async fn append_concurrent_duplicates_get_one_seq(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    let mut tasks = JoinSet::new();
    for t in 0..24 {
        let store = store.clone();
        tasks.spawn(async move {
            let dup = store
                .append_message(b"g", fence, &message("same", 1))
                .await
                .expect("append dup");
            let own = store
                .append_message(b"g", fence, &message(&format!("own-{t}"), 1))
                .await
                .expect("append own");
            (dup, own)
        });
    }
    let mut appended = 0;
    let mut dup_seqs = BTreeSet::new();
    let mut all_seqs = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (dup, own) = joined.expect("task");
        if matches!(dup, AppendOutcome::Appended { .. }) {
            appended += 1;
            all_seqs.insert(dup.seq());
        }
        dup_seqs.insert(dup.seq());
        assert!(matches!(own, AppendOutcome::Appended { .. }));
        assert!(all_seqs.insert(own.seq()), "seq handed out twice");
    }
    assert_eq!(appended, 1, "exactly one append of the duplicated id");
    assert_eq!(dup_seqs.len(), 1, "all duplicates see the original seq");
    assert_eq!(all_seqs, (1..=25).collect());
    assert_eq!(timeline_len(&*store, b"g").await, 25);
}

/// `append_messages` hands out the next seqs in the entries' order, one
/// outcome per entry; an id stored before, or earlier in the same call, is
/// `Duplicate` with its first seq; a stale fence stores none of them.
pub async fn append_messages_in_order_once_each(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    store
        .append_message(b"g", fence, &message("before", 1))
        .await
        .expect("append");
    let batch = [
        message("a", 1),
        message("before", 1),
        message("b", 1),
        message("a", 1),
        message("c", 1),
    ];
    let outcomes = store
        .append_messages(b"g", fence, &batch)
        .await
        .expect("append batch");
    assert_eq!(
        outcomes,
        vec![
            AppendOutcome::Appended { seq: 2 },
            AppendOutcome::Duplicate { seq: 1 },
            AppendOutcome::Appended { seq: 3 },
            AppendOutcome::Duplicate { seq: 2 },
            AppendOutcome::Appended { seq: 4 },
        ]
    );
    let timeline = store.read_timeline(b"g", 0, 10).await.expect("read");
    let bodies: Vec<&[u8]> = timeline.iter().map(|e| e.message.as_slice()).collect();
    assert_eq!(
        bodies,
        [
            &b"ciphertext:before"[..],
            b"ciphertext:a",
            b"ciphertext:b",
            b"ciphertext:c"
        ]
    );
    assert_eq!(
        store
            .append_messages(b"g", fence, &[])
            .await
            .expect("empty"),
        Vec::new()
    );

    // A stale fence: refused, nothing stored.
    let err = store
        .append_messages(b"g", fence + 1, &[message("d", 1), message("e", 1)])
        .await
        .expect_err("stale fence");
    assert!(
        matches!(err, StoreError::Fenced { .. }),
        "stale fence refused as Fenced, got {err:?}"
    );
    assert_eq!(timeline_len(&*store, b"g").await, 4);
}

// ----------------------------------------------------------------------------
// commits

pub async fn proposal_updates_state_atomically(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    let mut proposal = message("p1", 1);
    proposal.kind = EntryKind::Proposal;
    assert_eq!(
        store
            .append_proposal(b"g", fence, &proposal, b"state-1-p1")
            .await
            .expect("append proposal"),
        AppendOutcome::Appended { seq: 1 }
    );
    let group = store.group(b"g").await.expect("read").expect("group");
    assert_eq!(
        (group.state.as_slice(), group.head_seq),
        (&b"state-1-p1"[..], 1)
    );

    // A retry is a duplicate and leaves the state alone.
    assert_eq!(
        store
            .append_proposal(b"g", fence, &proposal, b"state-other")
            .await
            .expect("retry"),
        AppendOutcome::Duplicate { seq: 1 }
    );
    // Wrong epoch: nothing written.
    let mut late = message("p2", 0);
    late.kind = EntryKind::Proposal;
    match store
        .append_proposal(b"g", fence, &late, b"state-late")
        .await
    {
        Err(StoreError::EpochConflict {
            current_epoch: 1,
            head_seq: 1,
        }) => {}
        other => panic!("expected EpochConflict, got {other:?}"),
    }
    // Stale fence: nothing written.
    let mut fenced = message("p3", 1);
    fenced.kind = EntryKind::Proposal;
    assert_fenced(
        store
            .append_proposal(b"g", fence + 1, &fenced, b"state-fenced")
            .await,
        "node-a",
        fence,
        "proposal with a wrong fence",
    );
    let group = store.group(b"g").await.expect("read").expect("group");
    assert_eq!(
        (group.state.as_slice(), group.head_seq),
        (&b"state-1-p1"[..], 1)
    );
    assert_eq!(timeline_len(&*store, b"g").await, 1);
}

pub async fn commit_applies_atomically(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    store
        .append_message(b"g", fence, &message("m1", 1))
        .await
        .expect("append");

    let add = commit(
        b"g",
        fence,
        1,
        vec![
            member("bob", "bob-2"),
            member("alice", "alice-1"),
            member("bob", "bob-1"),
        ],
        &["bob-1", "bob-2"],
        "c1",
    );
    assert_eq!(
        store.append_commit(&add).await.expect("commit"),
        AppendOutcome::Appended { seq: 2 }
    );
    let g = store.group(b"g").await.expect("group").expect("exists");
    assert_eq!(g.epoch, 2);
    assert_eq!(g.head_seq, 2);
    assert_eq!(g.state, add.state);
    assert_eq!(g.group_info, add.group_info);
    assert_eq!(g.ratchet_tree, add.ratchet_tree);
    assert_eq!(
        g.members,
        vec![
            member("alice", "alice-1"),
            member("bob", "bob-1"),
            member("bob", "bob-2")
        ]
    );
    let timeline = store.read_timeline(b"g", 1, 10).await.expect("read");
    assert_eq!(timeline.len(), 1);
    assert_eq!(
        (timeline[0].seq, timeline[0].kind, timeline[0].epoch),
        (2, EntryKind::Commit, 1)
    );
    assert_eq!(timeline[0].message, add.entry.message);

    let joined = |seq| {
        vec![DeviceGroup {
            group_id: b"g".to_vec(),
            joined_seq: seq,
        }]
    };
    assert_eq!(
        store.groups_of_device("alice-1").await.expect("groups"),
        joined(0)
    );
    assert_eq!(
        store.groups_of_device("bob-1").await.expect("groups"),
        joined(2)
    );
    assert_eq!(
        store.groups_of_device("bob-2").await.expect("groups"),
        joined(2)
    );

    for d in ["bob-1", "bob-2"] {
        let inbox = store.read_inbox(d, 0, 10).await.expect("inbox");
        assert_eq!(inbox.len(), 1, "{d}");
        assert_eq!(inbox[0].group_id, b"g".to_vec());
        assert_eq!(inbox[0].commit_seq, 2);
        assert_eq!(inbox[0].welcome, b"welcome:c1".to_vec());
        assert_eq!(inbox[0].ratchet_tree, add.ratchet_tree);
    }

    // A retried commit is a duplicate, even though the epoch moved on.
    assert_eq!(
        store.append_commit(&add).await.expect("retry"),
        AppendOutcome::Duplicate { seq: 2 }
    );
    assert_eq!(
        store.read_inbox("bob-1", 0, 10).await.expect("inbox").len(),
        1
    );
    assert_eq!(head_seq(&*store, b"g").await, 2);

    // Removing a member; the others keep their joined_seq.
    let remove = commit(
        b"g",
        fence,
        2,
        vec![member("alice", "alice-1"), member("bob", "bob-1")],
        &[],
        "c2",
    );
    assert_eq!(
        store.append_commit(&remove).await.expect("commit"),
        AppendOutcome::Appended { seq: 3 }
    );
    assert!(store
        .groups_of_device("bob-2")
        .await
        .expect("groups")
        .is_empty());
    assert_eq!(
        store.groups_of_device("bob-1").await.expect("groups"),
        joined(2)
    );
    assert_eq!(
        store.groups_of_device("alice-1").await.expect("groups"),
        joined(0)
    );
    let g = store.group(b"g").await.expect("group").expect("exists");
    assert_eq!((g.epoch, g.head_seq, g.members.len()), (3, 3, 2));

    assert!(matches!(
        store
            .append_commit(&commit(b"missing", fence, 1, vec![], &[], "c9"))
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn commit_epoch_conflict_writes_nothing(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    store
        .append_commit(&commit(
            b"g",
            fence,
            1,
            vec![member("alice", "alice-1"), member("bob", "bob-1")],
            &["bob-1"],
            "c1",
        ))
        .await
        .expect("commit");
    store
        .append_message(b"g", fence, &message("m1", 2))
        .await
        .expect("append");

    let before = store.group(b"g").await.expect("group").expect("exists");
    let timeline_before = store.read_timeline(b"g", 0, 100).await.expect("read");
    let bob_inbox_before = store.read_inbox("bob-1", 0, 100).await.expect("inbox");

    let stale = commit(
        b"g",
        fence,
        1,
        vec![member("alice", "alice-1"), member("carol", "carol-1")],
        &["carol-1", "bob-1"],
        "c-stale",
    );
    for _ in 0..2 {
        match store.append_commit(&stale).await {
            Err(StoreError::EpochConflict {
                current_epoch,
                head_seq,
            }) => assert_eq!((current_epoch, head_seq), (2, 2)),
            other => panic!("expected EpochConflict, got {other:?}"),
        }
    }

    let after = store.group(b"g").await.expect("group").expect("exists");
    assert_eq!(after, before, "group state changed");
    assert_eq!(
        store.read_timeline(b"g", 0, 100).await.expect("read"),
        timeline_before
    );
    assert!(store
        .groups_of_device("carol-1")
        .await
        .expect("groups")
        .is_empty());
    assert!(store
        .read_inbox("carol-1", 0, 100)
        .await
        .expect("inbox")
        .is_empty());
    assert_eq!(
        store.read_inbox("bob-1", 0, 100).await.expect("inbox"),
        bob_inbox_before
    );
    assert_eq!(
        store.groups_of_device("bob-1").await.expect("groups"),
        vec![DeviceGroup {
            group_id: b"g".to_vec(),
            joined_seq: 1
        }]
    );

    // The next seq is still dense.
    assert_eq!(
        store
            .append_message(b"g", fence, &message("m2", 2))
            .await
            .expect("append"),
        AppendOutcome::Appended { seq: 3 }
    );
}

pub async fn commit_race_has_one_winner_per_epoch(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    let mut tasks = JoinSet::new();
    for t in 0..12 {
        let store = store.clone();
        tasks.spawn(async move {
            let device = format!("dev-{t}");
            let write = commit(
                b"g",
                fence,
                1,
                vec![member("alice", "alice-1"), member("x", &device)],
                &[device.as_str()],
                &format!("c-{t}"),
            );
            (device, store.append_commit(&write).await)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            (device, Ok(AppendOutcome::Appended { seq })) => winners.push((device, seq)),
            (device, Err(StoreError::EpochConflict { current_epoch, .. })) => {
                assert_eq!(current_epoch, 2);
                losers.push(device);
            }
            (device, other) => panic!("{device}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one commit per epoch");
    let (winner, seq) = winners.pop().expect("one winner");
    assert_eq!(seq, 1);
    assert_eq!(
        store.read_inbox(&winner, 0, 10).await.expect("inbox").len(),
        1
    );
    for loser in &losers {
        assert!(store
            .read_inbox(loser, 0, 10)
            .await
            .expect("inbox")
            .is_empty());
        assert!(store
            .groups_of_device(loser)
            .await
            .expect("groups")
            .is_empty());
    }
    let g = store.group(b"g").await.expect("group").expect("exists");
    assert_eq!((g.epoch, g.head_seq), (2, 1));
    assert_eq!(
        g.members,
        vec![member("alice", "alice-1"), member("x", &winner)]
    );
    assert_eq!(timeline_len(&*store, b"g").await, 1);
}

// ----------------------------------------------------------------------------
// reads and sync state

pub async fn read_timeline_paging(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    for i in 1..=25u64 {
        let mut e = message(&format!("m{i}"), i);
        if i % 5 == 0 {
            e.kind = EntryKind::Proposal;
        }
        e.server_time_ms = 10_000 + i;
        e.sender = format!("u{i}/d{i}");
        store.append_message(b"g", fence, &e).await.expect("append");
    }
    let seqs = |page: &[crate::Entry]| page.iter().map(|e| e.seq).collect::<Vec<_>>();
    let p1 = store.read_timeline(b"g", 0, 10).await.expect("read");
    assert_eq!(seqs(&p1), (1..=10).collect::<Vec<_>>());
    let p2 = store.read_timeline(b"g", 10, 10).await.expect("read");
    assert_eq!(seqs(&p2), (11..=20).collect::<Vec<_>>());
    let p3 = store.read_timeline(b"g", 20, 10).await.expect("read");
    assert_eq!(seqs(&p3), (21..=25).collect::<Vec<_>>());
    assert!(store
        .read_timeline(b"g", 25, 10)
        .await
        .expect("read")
        .is_empty());
    assert!(store
        .read_timeline(b"g", 0, 0)
        .await
        .expect("read")
        .is_empty());
    assert!(store
        .read_timeline(b"nope", 0, 10)
        .await
        .expect("read")
        .is_empty());

    let one = store.read_timeline(b"g", 4, 1).await.expect("read");
    assert_eq!(one.len(), 1);
    let e = &one[0];
    assert_eq!(e.seq, 5);
    assert_eq!(e.kind, EntryKind::Proposal);
    assert_eq!(e.epoch, 5);
    assert_eq!(e.sender, "u5/d5");
    assert_eq!(e.client_msg_id, b"m5".to_vec());
    assert_eq!(e.message, b"ciphertext:m5".to_vec());
    assert_eq!(e.server_time_ms, 10_005);
    assert_eq!(p1[3].kind, EntryKind::Application);
}

pub async fn groups_of_device_follow_membership(store: Arc<dyn Store>) {
    assert!(store
        .groups_of_device("alice-1")
        .await
        .expect("groups")
        .is_empty());
    let f1 = leased_group(&*store, b"g1").await;
    let _ = leased_group(&*store, b"g2").await;
    store
        .create_group(&new_group(b"g3", vec![member("bob", "bob-1")]))
        .await
        .expect("create");
    let seq = store
        .append_commit(&commit(
            b"g1",
            f1,
            1,
            vec![member("alice", "alice-1"), member("bob", "bob-1")],
            &["bob-1"],
            "c1",
        ))
        .await
        .expect("commit")
        .seq();

    let mut alice = store.groups_of_device("alice-1").await.expect("groups");
    alice.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    assert_eq!(
        alice,
        vec![
            DeviceGroup {
                group_id: b"g1".to_vec(),
                joined_seq: 0
            },
            DeviceGroup {
                group_id: b"g2".to_vec(),
                joined_seq: 0
            },
        ]
    );
    let mut bob = store.groups_of_device("bob-1").await.expect("groups");
    bob.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    assert_eq!(
        bob,
        vec![
            DeviceGroup {
                group_id: b"g1".to_vec(),
                joined_seq: seq
            },
            DeviceGroup {
                group_id: b"g3".to_vec(),
                joined_seq: 0
            },
        ]
    );

    // Alice leaves g1.
    let left = store
        .append_commit(&commit(
            b"g1",
            f1,
            2,
            vec![member("bob", "bob-1")],
            &[],
            "c2",
        ))
        .await
        .expect("commit")
        .seq();
    assert_eq!(
        store.groups_of_device("alice-1").await.expect("groups"),
        vec![DeviceGroup {
            group_id: b"g2".to_vec(),
            joined_seq: 0
        }]
    );
    // She may still read g1 up to the commit that removed her...
    assert_eq!(
        store.departed_groups("alice-1").await.expect("departures"),
        vec![Departure {
            group_id: b"g1".to_vec(),
            joined_seq: 0,
            left_seq: left
        }]
    );
    assert!(store
        .departed_groups("bob-1")
        .await
        .expect("departures")
        .is_empty());
    // ...until her cursor reaches it.
    store
        .set_cursor("alice-1", b"g1", left - 1)
        .await
        .expect("cursor");
    assert_eq!(
        store
            .departed_groups("alice-1")
            .await
            .expect("departures")
            .len(),
        1
    );
    store
        .set_cursor("alice-1", b"g1", left)
        .await
        .expect("cursor");
    assert!(store
        .departed_groups("alice-1")
        .await
        .expect("departures")
        .is_empty());
}

pub async fn cursors_never_move_backward(store: Arc<dyn Store>) {
    assert!(store.cursors("dev-1").await.expect("cursors").is_empty());
    store.set_cursor("dev-1", b"g1", 5).await.expect("set");
    store.set_cursor("dev-1", b"g1", 3).await.expect("set");
    store.set_cursor("dev-1", b"g2", 1).await.expect("set");
    store.set_cursor("dev-2", b"g1", 100).await.expect("set");
    let sorted = |mut v: Vec<(Vec<u8>, u64)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(store.cursors("dev-1").await.expect("cursors")),
        vec![(b"g1".to_vec(), 5), (b"g2".to_vec(), 1)]
    );
    store.set_cursor("dev-1", b"g1", 9).await.expect("set");
    store.set_cursor("dev-1", b"g1", 0).await.expect("set");
    assert_eq!(
        sorted(store.cursors("dev-1").await.expect("cursors")),
        vec![(b"g1".to_vec(), 9), (b"g2".to_vec(), 1)]
    );
    assert_eq!(
        store.cursors("dev-2").await.expect("cursors"),
        vec![(b"g1".to_vec(), 100)]
    );

    // Concurrent setters: the maximum wins.
    let mut tasks = JoinSet::new();
    for seq in 10..40u64 {
        let store = store.clone();
        tasks.spawn(async move { store.set_cursor("dev-3", b"g1", seq).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("set");
    }
    assert_eq!(
        store.cursors("dev-3").await.expect("cursors"),
        vec![(b"g1".to_vec(), 39)]
    );
}

pub async fn inbox_head_is_the_last_seq_given(store: Arc<dyn Store>) {
    assert_eq!(store.inbox_head("bob-1").await.expect("head"), 0);
    let fence = leased_group(&*store, b"g").await;
    let alice = member("alice", "alice-1");
    let bob = member("bob", "bob-1");
    let add = commit(
        b"g",
        fence,
        1,
        vec![alice.clone(), bob.clone()],
        &["bob-1"],
        "add",
    );
    store.append_commit(&add).await.expect("add");
    let items = store.read_inbox("bob-1", 0, 10).await.expect("inbox");
    assert_eq!(items.len(), 1);
    assert_eq!(
        store.inbox_head("bob-1").await.expect("head"),
        items[0].inbox_seq
    );
    // Acknowledged items still count: the head never moves back.
    store
        .ack_inbox("bob-1", items[0].inbox_seq)
        .await
        .expect("ack");
    assert_eq!(
        store.inbox_head("bob-1").await.expect("head"),
        items[0].inbox_seq
    );
    assert_eq!(store.inbox_head("alice-1").await.expect("head"), 0);
}

pub async fn inbox_seqs_increase_and_are_never_reused(store: Arc<dyn Store>) {
    assert!(store
        .read_inbox("bob-1", 0, 10)
        .await
        .expect("inbox")
        .is_empty());
    let fence = leased_group(&*store, b"g").await;
    let alice = member("alice", "alice-1");
    let bob = member("bob", "bob-1");
    // bob is added, removed, added... each add welcomes him again.
    let mut epoch = 1;
    let mut commit_seqs = Vec::new();
    for round in 0..3 {
        let add = commit(
            b"g",
            fence,
            epoch,
            vec![alice.clone(), bob.clone()],
            &["bob-1", "carol-1"],
            &format!("add-{round}"),
        );
        commit_seqs.push(store.append_commit(&add).await.expect("add").seq());
        epoch += 1;
        let remove = commit(
            b"g",
            fence,
            epoch,
            vec![alice.clone()],
            &[],
            &format!("remove-{round}"),
        );
        store.append_commit(&remove).await.expect("remove");
        epoch += 1;
    }

    let items = store.read_inbox("bob-1", 0, 10).await.expect("inbox");
    assert_eq!(items.len(), 3);
    assert!(items.windows(2).all(|w| w[0].inbox_seq < w[1].inbox_seq));
    assert_eq!(
        items.iter().map(|i| i.commit_seq).collect::<Vec<_>>(),
        commit_seqs
    );
    assert_eq!(items[0].welcome, b"welcome:add-0".to_vec());

    let page = store
        .read_inbox("bob-1", items[0].inbox_seq, 1)
        .await
        .expect("inbox");
    assert_eq!(page, vec![items[1].clone()]);

    store
        .ack_inbox("bob-1", items[1].inbox_seq)
        .await
        .expect("ack");
    assert_eq!(
        store.read_inbox("bob-1", 0, 10).await.expect("inbox"),
        vec![items[2].clone()]
    );
    store
        .ack_inbox("bob-1", items[2].inbox_seq)
        .await
        .expect("ack");
    assert!(store
        .read_inbox("bob-1", 0, 10)
        .await
        .expect("inbox")
        .is_empty());

    // A new item after everything was acked gets a fresh, larger seq.
    let add = commit(
        b"g",
        fence,
        epoch,
        vec![alice.clone(), bob.clone()],
        &["bob-1"],
        "add-last",
    );
    store.append_commit(&add).await.expect("add");
    let fresh = store.read_inbox("bob-1", 0, 10).await.expect("inbox");
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].inbox_seq > items[2].inbox_seq, "inbox_seq reused");

    // Other devices' inboxes are independent of bob's acks.
    assert_eq!(
        store
            .read_inbox("carol-1", 0, 10)
            .await
            .expect("inbox")
            .len(),
        3
    );
}

/// One Welcome per commit, however many devices it adds: each reads it with
/// the tree of *that* commit (not the group's later one), and one device's
/// acks, repeated or not, never take it from another.
pub async fn a_commits_welcome_serves_every_device_it_adds(store: Arc<dyn Store>) {
    let fence = leased_group(&*store, b"g").await;
    let bobs: Vec<String> = (1..=6).map(|i| format!("bob-{i}")).collect();
    let mut members = vec![member("alice", "alice-1")];
    members.extend(bobs.iter().map(|d| member("bob", d)));
    let bob_ids: Vec<&str> = bobs.iter().map(String::as_str).collect();
    let first = commit(b"g", fence, 1, members.clone(), &bob_ids, "c1");
    store.append_commit(&first).await.expect("first commit");
    members.push(member("carol", "carol-1"));
    let second = commit(b"g", fence, 2, members, &["carol-1"], "c2");
    store.append_commit(&second).await.expect("second commit");
    assert_ne!(first.ratchet_tree, second.ratchet_tree);

    let read = |d: String| {
        let store = Arc::clone(&store);
        async move { store.read_inbox(&d, 0, 10).await.expect("inbox") }
    };
    for d in &bobs {
        let items = read(d.clone()).await;
        assert_eq!(items.len(), 1, "{d}");
        assert_eq!(
            (
                items[0].commit_seq,
                &items[0].welcome,
                &items[0].ratchet_tree
            ),
            (1, &b"welcome:c1".to_vec(), &first.ratchet_tree),
            "{d}"
        );
    }
    let carol = read("carol-1".into()).await;
    assert_eq!(
        (carol.len(), &carol[0].welcome, &carol[0].ratchet_tree),
        (1, &b"welcome:c2".to_vec(), &second.ratchet_tree)
    );

    // Every bob but the last acks (the first one twice, and past its item).
    for d in &bobs[..5] {
        let upto = read(d.clone()).await[0].inbox_seq;
        store.ack_inbox(d, upto).await.expect("ack");
        assert!(read(d.clone()).await.is_empty(), "{d}");
    }
    store.ack_inbox("bob-1", 1_000).await.expect("ack again");
    let last = read("bob-6".into()).await;
    assert_eq!(last.len(), 1);
    assert_eq!(
        (&last[0].welcome, &last[0].ratchet_tree),
        (&b"welcome:c1".to_vec(), &first.ratchet_tree)
    );
    store
        .ack_inbox("bob-6", last[0].inbox_seq)
        .await
        .expect("last ack");
    assert!(read("bob-6".into()).await.is_empty());
    assert_eq!(read("carol-1".into()).await, carol);
}

/// Group `g1`, leased, with three messages: the [`AckState`] of a member
/// who has acked nothing yet (`alice-1` in the ack tests).
async fn three_messages_in_g1(store: &dyn Store) -> crate::AckState {
    let fence = leased_group(store, b"g1").await;
    let mut head = 0;
    for id in ["m1", "m2", "m3"] {
        head = store
            .append_message(b"g1", fence, &message(id, 0))
            .await
            .expect("append")
            .seq();
    }
    crate::AckState {
        cursor: None,
        standing: crate::Standing::Member { joined_seq: 0 },
        head_seq: head,
    }
}

/// `ack_cursor` hands `decide` what `ack_state` reads, moves the cursor
/// only when it says so, and never backward.
pub async fn ack_cursor_moves_only_when_decided(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let member = three_messages_in_g1(&*store).await;
    // Refused: the state is read, nothing written.
    let asked = Arc::new(AtomicBool::new(false));
    let seen = asked.clone();
    let expected = member;
    let (state, moved) = store
        .ack_cursor(
            "alice-1",
            b"g1",
            2,
            Box::new(move |s| {
                assert_eq!(*s, expected, "decide sees the state ack_state reads");
                seen.store(true, Ordering::SeqCst);
                false
            }),
        )
        .await
        .expect("ack");
    assert!(asked.load(Ordering::SeqCst) && !moved);
    assert_eq!(state, member);
    assert_eq!(
        store.ack_state("alice-1", b"g1").await.expect("state"),
        member
    );
    // Accepted: the cursor moves, and the state returned is the one before.
    let (state, moved) = store
        .ack_cursor("alice-1", b"g1", 2, Box::new(|_| true))
        .await
        .expect("ack");
    assert!(moved);
    assert_eq!(state, member);
    assert_eq!(
        store.cursors("alice-1").await.expect("cursors"),
        vec![(b"g1".to_vec(), 2)]
    );
    // A lower seq, even when decided, does not move it back.
    let (state, _) = store
        .ack_cursor("alice-1", b"g1", 1, Box::new(|_| true))
        .await
        .expect("ack");
    assert_eq!(state.cursor, Some(2));
    assert_eq!(
        store
            .ack_state("alice-1", b"g1")
            .await
            .expect("state")
            .cursor,
        Some(2)
    );
}

/// `ack_cursor_then` is `ack_cursor` for a caller that does not wait: its
/// `then` gets what `ack_cursor` returns, once, after the cursor moved (a
/// read from inside `then` sees it), and a refusal writes nothing.
pub async fn ack_cursor_then_hands_over_what_ack_cursor_returns(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let member = three_messages_in_g1(&*store).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let ack = |seq: u64, moves: bool| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let calls = calls.clone();
        let then: crate::AckThen = Box::new(move |outcome| {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(outcome);
        });
        let store = store.clone();
        async move {
            store
                .ack_cursor_then("alice-1", b"g1", seq, Box::new(move |_| moves), then)
                .await;
            rx.await.expect("then was called")
        }
    };
    // Refused: the state is handed over, nothing written.
    let (state, moved) = ack(2, false).await.expect("ack");
    assert_eq!((state, moved), (member, false));
    assert!(store.cursors("alice-1").await.expect("cursors").is_empty());
    // Accepted: the state before, and the cursor moved by the time `then`
    // has it.
    let (state, moved) = ack(2, true).await.expect("ack");
    assert_eq!((state, moved), (member, true));
    assert_eq!(
        store.cursors("alice-1").await.expect("cursors"),
        vec![(b"g1".to_vec(), 2)]
    );
    // A repeat below the cursor hands over the cursor it found.
    let (state, _) = ack(1, true).await.expect("ack");
    assert_eq!(state.cursor, Some(2));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "then runs once per ack");
}

/// An ack settles a departure as `set_cursor` does: kept while the cursor
/// is below the removing commit, gone once it reaches it, and also when the
/// device was added again before it acknowledged its removal.
pub async fn ack_cursor_settles_a_departure_once_past_the_removal(store: Arc<dyn Store>) {
    use crate::Standing;
    let fence = leased_group(&*store, b"g1").await;
    let (alice, bob) = (member("alice", "alice-1"), member("bob", "bob-1"));
    let add = |epoch, members, id| commit(b"g1", fence, epoch, members, &["bob-1"], id);
    let joined = store
        .append_commit(&add(1, vec![alice.clone(), bob.clone()], "add-bob"))
        .await
        .expect("add bob")
        .seq();
    let rm = commit(b"g1", fence, 2, vec![alice.clone()], &[], "rm-bob");
    let left = store.append_commit(&rm).await.expect("remove bob").seq();
    let departures = || {
        let store = Arc::clone(&store);
        async move {
            store
                .departed_groups("bob-1")
                .await
                .expect("departures")
                .len()
        }
    };
    let ack = |seq| {
        let store = Arc::clone(&store);
        async move {
            store
                .ack_cursor("bob-1", b"g1", seq, Box::new(|_| true))
                .await
                .expect("ack")
        }
    };
    ack(joined).await;
    assert_eq!(departures().await, 1, "acked below the removal");
    let (state, moved) = ack(left).await;
    assert!(moved);
    assert!(matches!(state.standing, Standing::Departed { .. }));
    assert_eq!(departures().await, 0, "acked up to the removal");
    // The ack moved the existing cursor forward (not only settled).
    assert_eq!(
        store.cursors("bob-1").await.expect("cursors"),
        vec![(b"g1".to_vec(), left)]
    );

    // Removed again, and added back before acknowledging the removal: the
    // departure waits for an ack past it all the same.
    store
        .append_commit(&add(3, vec![alice.clone(), bob.clone()], "add-bob-2"))
        .await
        .expect("add bob again");
    let again = commit(b"g1", fence, 4, vec![alice.clone()], &[], "rm-bob-2");
    let left = store.append_commit(&again).await.expect("remove").seq();
    let back = store
        .append_commit(&add(5, vec![alice, bob], "re-add-bob"))
        .await
        .expect("re-add bob")
        .seq();
    assert_eq!(departures().await, 1);
    let (state, _) = ack(left - 1).await;
    assert_eq!(state.standing, Standing::Member { joined_seq: back });
    assert_eq!(departures().await, 1, "acked below the removal");
    ack(back).await;
    assert_eq!(departures().await, 0, "acked past the removal");
}

/// `ack_state` reads what `cursors`, `groups_of_device` and
/// `departed_groups` list, for one device and one group: through a join, a
/// departure, its settling by the cursor, and a re-add.
pub async fn ack_state_follows_cursor_membership_and_head(store: Arc<dyn Store>) {
    use crate::{AckState, Standing};
    let state = |device: &'static str| {
        let store = store.clone();
        async move { store.ack_state(device, b"g1").await.expect("ack state") }
    };
    // No such group: nobody stands anywhere, the head is 0.
    assert_eq!(
        state("alice-1").await,
        AckState {
            cursor: None,
            standing: Standing::Stranger,
            head_seq: 0
        }
    );
    let fence = leased_group(&*store, b"g1").await;
    let _ = leased_group(&*store, b"g2").await;
    assert_eq!(
        state("alice-1").await,
        AckState {
            cursor: None,
            standing: Standing::Member { joined_seq: 0 },
            head_seq: 0
        }
    );
    let alice = member("alice", "alice-1");
    let bob = member("bob", "bob-1");
    let joined = store
        .append_commit(&commit(
            b"g1",
            fence,
            1,
            vec![alice.clone(), bob.clone()],
            &["bob-1"],
            "add-bob",
        ))
        .await
        .expect("add bob")
        .seq();
    let m1 = store
        .append_message(b"g1", fence, &message("m1", 2))
        .await
        .expect("m1")
        .seq();
    // Another group's cursor and another device's are not this one's.
    store.set_cursor("bob-1", b"g2", 7).await.expect("cursor");
    store
        .set_cursor("alice-1", b"g1", m1)
        .await
        .expect("cursor");
    assert_eq!(
        state("bob-1").await,
        AckState {
            cursor: None,
            standing: Standing::Member { joined_seq: joined },
            head_seq: m1
        }
    );
    store
        .set_cursor("bob-1", b"g1", joined)
        .await
        .expect("cursor");
    assert_eq!(state("bob-1").await.cursor, Some(joined));
    assert_eq!(state("alice-1").await.cursor, Some(m1));
    assert_eq!(state("carol-1").await.standing, Standing::Stranger);

    // Bob is removed: he may read up to the removing commit...
    let left = store
        .append_commit(&commit(b"g1", fence, 2, vec![alice.clone()], &[], "rm-bob"))
        .await
        .expect("remove bob")
        .seq();
    assert_eq!(
        state("bob-1").await,
        AckState {
            cursor: Some(joined),
            standing: Standing::Departed {
                joined_seq: joined,
                left_seq: left
            },
            head_seq: left
        }
    );
    // ...until his cursor reaches it.
    store
        .set_cursor("bob-1", b"g1", left)
        .await
        .expect("cursor");
    assert_eq!(
        state("bob-1").await,
        AckState {
            cursor: Some(left),
            standing: Standing::Stranger,
            head_seq: left
        }
    );
    // Added again: a member from the new commit on.
    let rejoined = store
        .append_commit(&commit(
            b"g1",
            fence,
            3,
            vec![alice, bob],
            &["bob-1"],
            "re-add-bob",
        ))
        .await
        .expect("re-add bob")
        .seq();
    assert_eq!(
        state("bob-1").await,
        AckState {
            cursor: Some(left),
            standing: Standing::Member {
                joined_seq: rejoined
            },
            head_seq: rejoined
        }
    );
}

/// `sync_start` is the four lists it bundles, and `co_member_devices` the
/// devices of other users in groups the user *joined* (created, or acked
/// past the commit that added it), never a revoked device's groups.
pub async fn sync_start_and_co_members_agree_with_their_parts(store: Arc<dyn Store>) {
    for d in [
        device("alice", "alice-1", 1),
        device("bob", "bob-1", 2),
        device("carol", "carol-1", 3),
        device("dave", "dave-1", 4),
    ] {
        store.create_user(&d).await.expect("create user");
    }
    store
        .add_device(&device("bob", "bob-2", 5))
        .await
        .expect("add device");
    let f1 = leased_group(&*store, b"g1").await;
    let f2 = leased_group(&*store, b"g2").await;
    let everyone = vec![
        member("alice", "alice-1"),
        member("bob", "bob-1"),
        member("bob", "bob-2"),
        member("carol", "carol-1"),
    ];
    let added = store
        .append_commit(&commit(
            b"g1",
            f1,
            1,
            everyone,
            &["bob-1", "bob-2", "carol-1"],
            "add",
        ))
        .await
        .expect("commit")
        .seq();
    store
        .append_commit(&commit(
            b"g2",
            f2,
            1,
            vec![member("alice", "alice-1"), member("dave", "dave-1")],
            &["dave-1"],
            "add-dave",
        ))
        .await
        .expect("commit");

    // Added is not joined: nobody but alice has joined anything yet.
    let co = |user: &'static str| {
        let store = store.clone();
        async move {
            store
                .co_member_devices(user, usize::MAX)
                .await
                .expect("co-members")
        }
    };
    assert!(co("bob").await.is_empty(), "bob joined nothing yet");
    assert_eq!(
        store.joined_members(b"g1").await.expect("joined"),
        vec![member("alice", "alice-1")]
    );
    assert!(co("dave").await.is_empty(), "dave joined nothing yet");
    assert_eq!(
        co("alice").await,
        vec![
            member("bob", "bob-1"),
            member("bob", "bob-2"),
            member("carol", "carol-1"),
            member("dave", "dave-1"),
        ]
    );
    // Groups above the size asked for are left out: g1 has 4 member
    // devices, g2 has 2.
    for (max, expected) in [
        (4, co("alice").await),
        (3, vec![member("dave", "dave-1")]),
        (1, vec![]),
    ] {
        assert_eq!(
            store
                .co_member_devices("alice", max)
                .await
                .expect("co-members"),
            expected,
            "at most {max}"
        );
    }
    assert_eq!(
        store.group_members(b"g2").await.expect("members"),
        vec![member("alice", "alice-1"), member("dave", "dave-1")]
    );
    assert!(store
        .group_members(b"missing")
        .await
        .expect("members")
        .is_empty());
    // One of bob's devices acks the commit that added it: bob joined g1.
    store
        .set_cursor("bob-2", b"g1", added)
        .await
        .expect("cursor");
    assert_eq!(
        co("bob").await,
        vec![member("alice", "alice-1"), member("carol", "carol-1")]
    );
    assert_eq!(
        store.joined_members(b"g1").await.expect("joined"),
        vec![member("alice", "alice-1"), member("bob", "bob-2")]
    );
    assert!(store
        .joined_members(b"missing")
        .await
        .expect("joined")
        .is_empty());
    // A revoked device's joins count no more.
    store.revoke_device("bob-2").await.expect("revoke");
    assert!(co("bob").await.is_empty(), "only bob-2 had joined");

    // bob-1 is removed from g1 (a departure), has a cursor in it, and two
    // Welcomes in its inbox.
    store.set_cursor("bob-1", b"g1", 1).await.expect("cursor");
    store
        .append_commit(&commit(
            b"g1",
            f1,
            2,
            vec![member("alice", "alice-1"), member("carol", "carol-1")],
            &[],
            "remove-bob",
        ))
        .await
        .expect("commit");
    let f3 = leased_group(&*store, b"g3").await;
    store
        .append_commit(&commit(
            b"g3",
            f3,
            1,
            vec![member("alice", "alice-1"), member("bob", "bob-1")],
            &["bob-1"],
            "add-bob-g3",
        ))
        .await
        .expect("commit");
    for (after, limit) in [(0, 1), (0, 10), (1, 10), (2, 10)] {
        let start = store
            .sync_start("bob-1", after, limit)
            .await
            .expect("sync start");
        let parts = SyncStart {
            cursors: store.cursors("bob-1").await.expect("cursors"),
            groups: store.groups_of_device("bob-1").await.expect("groups"),
            departed: store.departed_groups("bob-1").await.expect("departures"),
            inbox: store
                .read_inbox("bob-1", after, limit)
                .await
                .expect("inbox"),
        };
        assert_eq!(start, parts, "after {after}, limit {limit}");
        assert_eq!(start.cursors, vec![(b"g1".to_vec(), 1)]);
        assert_eq!(start.groups.len(), 1, "bob-1 is in g3");
        assert_eq!(start.departed.len(), 1, "bob-1 left g1");
        let expected = (2 - after.min(2)).min(u64::from(limit)) as usize;
        assert_eq!(start.inbox.len(), expected, "after {after}, limit {limit}");
    }
    assert_eq!(
        store
            .sync_start("nobody-1", 0, 10)
            .await
            .expect("sync start"),
        SyncStart::default()
    );
}
