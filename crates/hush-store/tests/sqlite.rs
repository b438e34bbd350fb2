//! The SQLite backend: the shared conformance suite, plus what only a file
//! backend can show (durability across reopen, several processes sharing a
//! file).

use std::collections::BTreeSet;
use std::sync::Arc;

use hush_store::{
    AppendOutcome, CommitWrite, Device, EntryKind, GroupRecord, KeyPackageRecord, MemberDevice,
    NewEntry, NewGroup, SqliteConfig, SqliteStore, Store, StoreError, WelcomeWrite,
};

hush_store::store_conformance_suite!(hush_store::conformance::sqlite_harness());

/// The same suite with group commit's delay on: a write that finds the
/// writer idle waits 2 ms for company, and every promise (dense seqs,
/// fencing, durable before the answer, dedup) holds all the same.
mod with_commit_delay {
    hush_store::store_conformance_suite!(
        hush_store::conformance::sqlite_harness_with_commit_delay(
            std::time::Duration::from_millis(2)
        )
    );
}

fn message(id: &str) -> NewEntry {
    NewEntry {
        kind: EntryKind::Application,
        epoch: 1,
        sender: "alice/alice-1".into(),
        client_msg_id: id.as_bytes().to_vec(),
        message: format!("ciphertext:{id}").into_bytes(),
        server_time_ms: 5,
    }
}

fn group(id: &[u8]) -> NewGroup {
    NewGroup {
        group: GroupRecord {
            group_id: id.to_vec(),
            epoch: 1,
            state: b"s1".to_vec(),
            group_info: b"gi1".to_vec(),
            ratchet_tree: b"rt1".to_vec(),
            head_seq: 0,
            members: vec![MemberDevice {
                user_id: "alice".into(),
                device_id: "alice-1".into(),
            }],
        },
    }
}

async fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path))
        .await
        .expect("open sqlite store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The parent directories are created on open.
    let path = dir.path().join("nested/deeper/hush.db");
    let store = open(&path).await;
    let alice = Device {
        user_id: "alice".into(),
        device_id: "alice-1".into(),
        signature_key: vec![1; 32],
        token_generation: 0,
        created_at_ms: 1,
    };
    store.create_user(&alice).await.expect("create user");
    store.bump_token_generation("alice-1").await.expect("bump");
    let secret = store
        .get_or_create_secret("k", b"secret")
        .await
        .expect("secret");
    store
        .put_link_code(b"code", "alice", 100)
        .await
        .expect("link code");
    let kp = |t: &str| KeyPackageRecord {
        hash_ref: t.as_bytes().to_vec(),
        data: t.as_bytes().to_vec(),
    };
    store
        .put_key_packages("alice-1", &[kp("a"), kp("b")], Some(&kp("lr")))
        .await
        .expect("key packages");
    store.claim_key_package("alice-1").await.expect("claim");
    store.create_group(&group(b"g")).await.expect("group");
    let lease = store
        .acquire_lease(b"g", "node-a", 0, 1_000)
        .await
        .expect("lease");
    for i in 0..10 {
        store
            .append_message(b"g", lease.token, &message(&format!("m{i}")))
            .await
            .expect("append");
    }
    let commit = CommitWrite {
        group_id: b"g".to_vec(),
        fence: lease.token,
        expected_epoch: 1,
        new_epoch: 2,
        state: b"s2".to_vec(),
        group_info: b"gi2".to_vec(),
        ratchet_tree: b"rt2".to_vec(),
        members: vec![
            MemberDevice {
                user_id: "alice".into(),
                device_id: "alice-1".into(),
            },
            MemberDevice {
                user_id: "bob".into(),
                device_id: "bob-1".into(),
            },
        ],
        entry: NewEntry {
            kind: EntryKind::Commit,
            ..message("c1")
        },
        welcome: Some(WelcomeWrite {
            welcome: b"w".to_vec(),
            device_ids: vec!["bob-1".into()],
        }),
    };
    store.append_commit(&commit).await.expect("commit");
    store.set_cursor("bob-1", b"g", 11).await.expect("cursor");
    let group_before = store.group(b"g").await.expect("group");
    let timeline_before = store.read_timeline(b"g", 0, 100).await.expect("timeline");
    let inbox_before = store.read_inbox("bob-1", 0, 10).await.expect("inbox");
    store.close().await.expect("close");

    // Reopening migrates nothing and loses nothing (twice, the second time
    // after a plain drop).
    for round in 0..2 {
        let store = open(&path).await;
        let device = store
            .device("alice-1")
            .await
            .expect("device")
            .expect("exists");
        assert_eq!(device.token_generation, 1);
        assert_eq!(
            store
                .get_or_create_secret("k", b"other")
                .await
                .expect("secret"),
            secret
        );
        assert_eq!(store.group(b"g").await.expect("group"), group_before);
        assert_eq!(
            store.read_timeline(b"g", 0, 100).await.expect("timeline"),
            timeline_before
        );
        assert_eq!(
            store.read_inbox("bob-1", 0, 10).await.expect("inbox"),
            inbox_before
        );
        assert_eq!(
            store.cursors("bob-1").await.expect("cursors"),
            vec![(b"g".to_vec(), 11)]
        );
        assert_eq!(
            store.key_package_count("alice-1").await.expect("count"),
            (1, true)
        );
        // The lease (and its token) survive: a new owner is still fenced.
        assert!(matches!(
            store.acquire_lease(b"g", "node-b", 10, 1_000).await,
            Err(StoreError::Fenced { token, .. }) if token == lease.token
        ));
        if round == 0 {
            // The link code is consumed exactly once, across restarts too.
            assert_eq!(
                store.take_link_code(b"code", 1).await.expect("take"),
                Some("alice".to_string())
            );
        } else {
            assert_eq!(store.take_link_code(b"code", 1).await.expect("take"), None);
        }
        drop(store);
    }

    let raw = rusqlite::Connection::open(&path).expect("raw open");
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, hush_store::sqlite::SCHEMA_VERSION);
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_opens_of_one_file_agree_on_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hush.db");
    // Like several hush-node processes starting at once on a fresh file.
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let path = path.clone();
        opening.spawn(async move { open(&path).await });
    }
    let mut stores = Vec::new();
    while let Some(joined) = opening.join_next().await {
        stores.push(joined.expect("open task"));
    }
    stores[0].create_group(&group(b"g")).await.expect("create");
    for other in &stores[1..] {
        assert!(matches!(
            other.create_group(&group(b"g")).await,
            Err(StoreError::AlreadyExists)
        ));
        assert!(other.group(b"g").await.expect("read").is_some());
    }
}

/// Two stores on one file stand for two hush-node processes sharing the
/// database: only SQLite's locking serializes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_assign_dense_unique_seqs() {
    const PER_TASK: usize = 25;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hush.db");
    let stores: [Arc<SqliteStore>; 2] = [Arc::new(open(&path).await), Arc::new(open(&path).await)];
    stores[0].create_group(&group(b"g")).await.expect("group");
    let fence = stores[1]
        .acquire_lease(b"g", "node-a", 0, 1_000)
        .await
        .expect("lease")
        .token;

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let store = stores[t % 2].clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_TASK {
                let outcome = store
                    .append_message(b"g", fence, &message(&format!("t{t}-{i}")))
                    .await
                    .expect("append");
                assert!(matches!(outcome, AppendOutcome::Appended { .. }));
                seqs.push(outcome.seq());
            }
            seqs
        });
    }
    let mut seqs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        seqs.extend(joined.expect("task"));
    }
    let total = (8 * PER_TASK) as u64;
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len() as u64, total);
    assert_eq!(unique, (1..=total).collect());
    let timeline = stores[0]
        .read_timeline(b"g", 0, u32::MAX)
        .await
        .expect("read");
    assert_eq!(timeline.len() as u64, total);
}

/// Node A keeps appending through its store while node B, through another
/// store on the same file, takes the lease over: every append A gets after
/// the takeover is fenced, so A's seqs all precede B's and no seq is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_across_two_stores_fences_the_old_owner() {
    const PER_TASK: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hush.db");
    let a = Arc::new(open(&path).await);
    let b = Arc::new(open(&path).await);
    a.create_group(&group(b"g")).await.expect("group");
    let token_a = a
        .acquire_lease(b"g", "node-a", 0, 100)
        .await
        .expect("lease a")
        .token;

    let mut old_owner = tokio::task::JoinSet::new();
    for t in 0..4 {
        let a = a.clone();
        old_owner.spawn(async move {
            let mut results = Vec::new();
            for i in 0..PER_TASK {
                results.push(
                    a.append_message(b"g", token_a, &message(&format!("a{t}-{i}")))
                        .await,
                );
            }
            results
        });
    }
    let new_owner = tokio::spawn({
        let b = b.clone();
        async move {
            // At now = 100 node A's lease has expired.
            let lease = b
                .acquire_lease(b"g", "node-b", 100, 100)
                .await
                .expect("takeover");
            let mut seqs = Vec::new();
            for i in 0..PER_TASK {
                let outcome = b
                    .append_message(b"g", lease.token, &message(&format!("b{i}")))
                    .await
                    .expect("append by new owner");
                seqs.push(outcome.seq());
            }
            (lease.token, seqs)
        }
    });

    let mut a_seqs = Vec::new();
    let (token_b, b_seqs) = new_owner.await.expect("task");
    assert!(token_b > token_a);
    while let Some(joined) = old_owner.join_next().await {
        for result in joined.expect("task") {
            match result {
                Ok(outcome) => a_seqs.push(outcome.seq()),
                Err(StoreError::Fenced { owner, token }) => {
                    assert_eq!((owner.as_str(), token), ("node-b", token_b))
                }
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
    }
    if let (Some(last_a), Some(first_b)) = (a_seqs.iter().max(), b_seqs.iter().min()) {
        assert!(last_a < first_b, "old owner appended after the takeover");
    }
    let all: BTreeSet<u64> = a_seqs.iter().chain(&b_seqs).copied().collect();
    let total = (a_seqs.len() + b_seqs.len()) as u64;
    assert_eq!(all.len() as u64, total, "a seq was assigned twice");
    assert_eq!(all, (1..=total).collect(), "seqs not dense");
    assert_eq!(
        b.group(b"g")
            .await
            .expect("group")
            .expect("exists")
            .head_seq,
        total
    );
}

/// A commit welcoming 200 devices into a big group keeps its Welcome and
/// tree once in the file, not once per device (schema v2 kept a copy in
/// every inbox item: O(added x group size) bytes), and the last device's ack
/// deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_groups_welcome_is_stored_once_and_freed_by_the_last_ack() {
    const ADDED: usize = 200;
    const BLOB: usize = 100 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hush.db");
    let store = open(&path).await;
    store.create_group(&group(b"g")).await.expect("group");
    let lease = store
        .acquire_lease(b"g", "node-a", 0, 1_000_000)
        .await
        .expect("lease");
    let devices: Vec<String> = (0..ADDED).map(|i| format!("dev-{i:03}")).collect();
    let mut members: Vec<MemberDevice> = devices
        .iter()
        .map(|d| MemberDevice {
            user_id: format!("user-{d}"),
            device_id: d.clone(),
        })
        .collect();
    members.push(MemberDevice {
        user_id: "alice".into(),
        device_id: "alice-1".into(),
    });
    let welcome = vec![0x57; BLOB];
    let tree = vec![0x54; BLOB];
    let commit = CommitWrite {
        group_id: b"g".to_vec(),
        fence: lease.token,
        expected_epoch: 1,
        new_epoch: 2,
        state: b"s2".to_vec(),
        group_info: b"gi2".to_vec(),
        ratchet_tree: tree.clone(),
        members,
        entry: NewEntry {
            kind: EntryKind::Commit,
            ..message("add-200")
        },
        welcome: Some(WelcomeWrite {
            welcome: welcome.clone(),
            device_ids: devices.clone(),
        }),
    };
    store.append_commit(&commit).await.expect("commit");

    let raw = rusqlite::Connection::open(&path).expect("raw open");
    let stored = |raw: &rusqlite::Connection| -> (i64, i64) {
        raw.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(welcome) + length(ratchet_tree)), 0) FROM welcomes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("welcomes")
    };
    assert_eq!(stored(&raw), (1, 2 * BLOB as i64));
    let items: i64 = raw
        .query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))
        .expect("inbox");
    assert_eq!(items, ADDED as i64);
    // The whole database holds the blobs about once: the Welcome and its
    // tree, plus the group's own current tree (v2: 200 copies, 40 MB).
    let bytes: i64 = raw
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .expect("size");
    assert!(bytes < 6 * BLOB as i64, "{bytes} bytes for one Welcome");

    for (i, d) in devices.iter().enumerate() {
        let got = store.read_inbox(d, 0, 10).await.expect("inbox");
        assert_eq!(got.len(), 1, "{d}");
        assert!(
            got[0].welcome == welcome && got[0].ratchet_tree == tree,
            "{d}"
        );
        store.ack_inbox(d, got[0].inbox_seq).await.expect("ack");
        let left = if i + 1 < ADDED { 1 } else { 0 };
        assert_eq!(stored(&raw).0, left, "after {d}'s ack");
    }
}

/// A Welcome addressed to nobody leaves no row behind (no inbox item would
/// ever release it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_for_no_device_is_not_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hush.db");
    let store = open(&path).await;
    store.create_group(&group(b"g")).await.expect("group");
    let lease = store
        .acquire_lease(b"g", "node-a", 0, 1_000_000)
        .await
        .expect("lease");
    let commit = CommitWrite {
        group_id: b"g".to_vec(),
        fence: lease.token,
        expected_epoch: 1,
        new_epoch: 2,
        state: b"s2".to_vec(),
        group_info: b"gi2".to_vec(),
        ratchet_tree: b"rt2".to_vec(),
        members: group(b"g").group.members,
        entry: NewEntry {
            kind: EntryKind::Commit,
            ..message("nobody")
        },
        welcome: Some(WelcomeWrite {
            welcome: b"w".to_vec(),
            device_ids: vec![],
        }),
    };
    store.append_commit(&commit).await.expect("commit");
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    let rows: i64 = raw
        .query_row("SELECT COUNT(*) FROM welcomes", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 0);
}

/// `checkpoint_pages` bounds the WAL: with a short one the file stays near
/// that many pages however much is written (each checkpoint lets the next
/// commit start the file over); with a long one the same writes pile up in
/// it. The writes are identical, one commit each, and nobody reads meanwhile
/// (a reader's snapshot could hold a checkpoint back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_at_the_configured_length() {
    const WRITES: usize = 300;
    const FRAME: u64 = 4096 + 24;
    async fn wal_after_writes(checkpoint_pages: u32) -> u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hush.db");
        let mut config = SqliteConfig::new(&path);
        config.checkpoint_pages = checkpoint_pages;
        let store = SqliteStore::open(config).await.expect("open");
        store.create_group(&group(b"g")).await.expect("group");
        let fence = store
            .acquire_lease(b"g", "node-a", 0, 1_000)
            .await
            .expect("lease")
            .token;
        for i in 0..WRITES {
            let mut entry = message(&format!("m{i}"));
            entry.message = vec![0x5a; 3000];
            store
                .append_message(b"g", fence, &entry)
                .await
                .expect("append");
        }
        let wal = std::fs::metadata(dir.path().join("hush.db-wal"))
            .expect("the WAL")
            .len();
        store.close().await.expect("close");
        wal
    }
    let short = wal_after_writes(8).await;
    let long = wal_after_writes(100_000).await;
    // Each commit writes at least the entry's page and its two index pages.
    assert!(
        long >= 3 * WRITES as u64 * FRAME,
        "the long WAL held {long} bytes"
    );
    // The file keeps the length of its longest stretch between checkpoints:
    // here the schema's creation, ~50 pages.
    assert!(short < 100 * FRAME, "the short WAL grew to {short} bytes");
}
