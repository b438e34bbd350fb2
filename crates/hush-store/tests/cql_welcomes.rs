//! The CQL store keeps a commit's Welcome and ratchet tree once, not once
//! per device it adds (schema version 3), on a live cluster: a commit
//! welcoming hundreds of devices fits its LWT and stores one `welcomes`
//! row; inbox rows refer to it and are read back whole; acks release it
//! only when the last device has acknowledged; rows and heads written by
//! version 2 still read and deliver.
//!
//! Runs when `HUSH_SCYLLA_URI` names the cluster (`scripts/cql.sh up`); each
//! test gets an emptied keyspace of the test pool. Without the variable it
//! prints SKIPPED (fails with `HUSH_REQUIRE_CQL=1`).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use hush_store::conformance::{cql_contact_points, cql_test_store};
use hush_store::scylla::schema_change;
use hush_store::{
    AppendOutcome, CommitWrite, EntryKind, GroupRecord, InboxItem, MemberDevice, NewEntry,
    NewGroup, ScyllaStore, Store, WelcomeWrite,
};
use scylla::client::session::Session;

const NODE: &str = "node-a";

fn member(user: &str, device: &str) -> MemberDevice {
    MemberDevice {
        user_id: user.into(),
        device_id: device.into(),
    }
}

/// `len` bytes of a pattern that differs with `seed`.
fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Creates `group_id` with alice-1 alone and leases it; returns the fence.
async fn leased_group(store: &ScyllaStore, group_id: &[u8]) -> u64 {
    store
        .create_group(&NewGroup {
            group: GroupRecord {
                group_id: group_id.to_vec(),
                epoch: 1,
                state: b"state-1".to_vec(),
                group_info: b"group-info-1".to_vec(),
                ratchet_tree: b"tree-1".to_vec(),
                head_seq: 0,
                members: vec![member("alice", "alice-1")],
            },
        })
        .await
        .expect("create group");
    store
        .acquire_lease(group_id, NODE, 0, u64::MAX / 2)
        .await
        .expect("lease")
        .token
}

/// A commit of alice-1 at epoch 1 adding `devices`, welcoming them all.
fn add_commit(
    group_id: &[u8],
    fence: u64,
    devices: &[String],
    welcome: &[u8],
    tree: &[u8],
) -> CommitWrite {
    let mut members = vec![member("alice", "alice-1")];
    members.extend(devices.iter().map(|d| member(&format!("user-{d}"), d)));
    CommitWrite {
        group_id: group_id.to_vec(),
        fence,
        expected_epoch: 1,
        new_epoch: 2,
        state: b"state-2".to_vec(),
        group_info: b"group-info-2".to_vec(),
        ratchet_tree: tree.to_vec(),
        members,
        entry: NewEntry {
            kind: EntryKind::Commit,
            epoch: 1,
            sender: "alice/alice-1".into(),
            client_msg_id: b"add".to_vec(),
            message: b"commit:add".to_vec(),
            server_time_ms: 2,
        },
        welcome: Some(WelcomeWrite {
            welcome: welcome.to_vec(),
            device_ids: devices.to_vec(),
        }),
    }
}

fn message(id: &str) -> NewEntry {
    NewEntry {
        kind: EntryKind::Application,
        epoch: 2,
        sender: "alice/alice-1".into(),
        client_msg_id: id.as_bytes().to_vec(),
        message: format!("ciphertext:{id}").into_bytes(),
        server_time_ms: 3,
    }
}

/// Every `welcomes` row: (group_id, commit_seq) -> (welcome, tree, waiting).
async fn welcome_rows(
    session: &Session,
) -> HashMap<(Vec<u8>, i64), (Vec<u8>, Vec<u8>, BTreeSet<String>)> {
    session
        .query_unpaged(
            "SELECT group_id, commit_seq, welcome, ratchet_tree, waiting FROM welcomes",
            (),
        )
        .await
        .expect("read welcomes")
        .into_rows_result()
        .expect("rows")
        .rows::<(Vec<u8>, i64, Vec<u8>, Vec<u8>, Option<BTreeSet<String>>)>()
        .expect("typed rows")
        .map(|r| {
            let (g, c, w, t, waiting) = r.expect("row");
            ((g, c), (w, t, waiting.unwrap_or_default()))
        })
        .collect()
}

/// Every `inbox` row: (device_id, inbox_seq, has welcome, has tree).
async fn inbox_rows(session: &Session) -> Vec<(String, i64, bool, bool)> {
    session
        .query_unpaged(
            "SELECT device_id, inbox_seq, welcome, ratchet_tree FROM inbox",
            (),
        )
        .await
        .expect("read inbox")
        .into_rows_result()
        .expect("rows")
        .rows::<(String, i64, Option<Vec<u8>>, Option<Vec<u8>>)>()
        .expect("typed rows")
        .map(|r| {
            let (d, s, w, t) = r.expect("row");
            (d, s, w.is_some(), t.is_some())
        })
        .collect()
}

async fn inbox(store: &ScyllaStore, device: &str, after: u64) -> Vec<InboxItem> {
    store.read_inbox(device, after, 100).await.expect("inbox")
}

fn assert_item(item: &InboxItem, group_id: &[u8], commit_seq: u64, welcome: &[u8], tree: &[u8]) {
    assert_eq!(item.group_id, group_id);
    assert_eq!(item.commit_seq, commit_seq);
    assert!(item.welcome == welcome, "wrong welcome at {item:?}");
    assert!(item.ratchet_tree == tree, "wrong tree at {item:?}");
}

/// 200 devices, a 100 KB Welcome and a 100 KB tree: a copy per device was
/// 40 MB in one LWT (over Cassandra's 16 MB mutation limit) and as much
/// again in inbox rows. Now the LWT and the `welcomes` table hold one copy,
/// every device reads it back, and acks release it only with the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_welcoming_many_devices_stores_its_welcome_once() {
    let Some(points) = cql_contact_points("the CQL Welcome test") else {
        return;
    };
    let (store, _keyspace) = cql_test_store(&points, 1).await;
    let session = store.session().expect("connected").clone();
    const DEVICES: usize = 200;
    const SIZE: usize = 100 * 1024;
    let devices: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i:03}")).collect();
    let (welcome, tree) = (blob(1, SIZE), blob(2, SIZE));

    let fence = leased_group(&store, b"big").await;
    let started = Instant::now();
    let outcome = store
        .append_commit(&add_commit(b"big", fence, &devices, &welcome, &tree))
        .await
        .expect("a commit welcoming 200 devices applies");
    eprintln!(
        "commit welcoming {DEVICES} devices: {:?}",
        started.elapsed()
    );
    assert_eq!(outcome, AppendOutcome::Appended { seq: 1 });

    // The head's pending Welcome: one copy, with the devices it welcomes.
    let (seq, pending, welcomed) = session
        .query_unpaged(
            "SELECT pending_welcome FROM groups WHERE group_id = ?",
            (b"big".to_vec(),),
        )
        .await
        .expect("read head")
        .into_rows_result()
        .expect("rows")
        .first_row::<(Option<(i64, Vec<u8>, BTreeSet<String>)>,)>()
        .expect("head row")
        .0
        .expect("a pending welcome");
    assert_eq!(seq, 1);
    assert!(pending == welcome);
    assert_eq!(welcomed.len(), DEVICES);

    // One Welcome row; inbox rows refer to it and carry no blobs.
    let rows = welcome_rows(&session).await;
    assert_eq!(rows.len(), 1);
    let (w, t, waiting) = &rows[&(b"big".to_vec(), 1)];
    assert!(*w == welcome && *t == tree);
    assert_eq!(waiting.len(), DEVICES);
    let stored = inbox_rows(&session).await;
    assert_eq!(stored.len(), DEVICES);
    assert!(
        stored.iter().all(|(_, _, w, t)| !w && !t),
        "inbox rows carry blobs"
    );

    // Another commit (another group) welcomes some of them again: each
    // item reads its own commit's Welcome and tree.
    let (welcome2, tree2) = (blob(3, 1000), blob(4, 2000));
    let fence2 = leased_group(&store, b"small").await;
    store
        .append_commit(&add_commit(
            b"small",
            fence2,
            &devices[..10],
            &welcome2,
            &tree2,
        ))
        .await
        .expect("second commit");
    assert_eq!(welcome_rows(&session).await.len(), 2);

    let mut acked = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        let items = inbox(&store, d, 0).await;
        assert_eq!(items.len(), if i < 10 { 2 } else { 1 }, "{d}");
        assert_item(&items[0], b"big", 1, &welcome, &tree);
        if i < 10 {
            assert_item(&items[1], b"small", 1, &welcome2, &tree2);
            assert!(items[0].inbox_seq < items[1].inbox_seq);
            // A page of one, after the first.
            let page = store
                .read_inbox(d, items[0].inbox_seq, 1)
                .await
                .expect("page");
            assert_eq!(page, vec![items[1].clone()]);
        }
        acked.insert(d.clone(), items[0].inbox_seq);
    }

    // Half of them acknowledge the big group's Welcome.
    let (early, late) = devices.split_at(DEVICES / 2);
    for d in early {
        store.ack_inbox(d, acked[d]).await.expect("ack");
    }
    let rows = welcome_rows(&session).await;
    assert_eq!(rows[&(b"big".to_vec(), 1)].2.len(), DEVICES / 2);
    // The next append replays the pending commit's effects (idempotently).
    store
        .append_message(b"big", fence, &message("m1"))
        .await
        .expect("append after the commit");
    for d in late {
        let items = inbox(&store, d, 0).await;
        assert_item(&items[0], b"big", 1, &welcome, &tree);
    }
    for d in early {
        let items = inbox(&store, d, acked[d]).await;
        assert!(items.iter().all(|i| i.group_id == b"small"), "{d}");
    }
    // The small group's Welcome is untouched by the big group's acks.
    assert_eq!(rows[&(b"small".to_vec(), 1)].2.len(), 10);

    // The last acknowledgements release the Welcome row.
    for d in late {
        store.ack_inbox(d, acked[d]).await.expect("ack");
    }
    let rows = welcome_rows(&session).await;
    assert!(!rows.contains_key(&(b"big".to_vec(), 1)), "released");
    assert!(rows.contains_key(&(b"small".to_vec(), 1)));
    for (i, d) in devices.iter().enumerate() {
        let items = inbox(&store, d, 0).await;
        assert_eq!(items.len(), usize::from(i < 10), "{d}: {items:?}");
        if let Some(item) = items.first() {
            assert_item(item, b"small", 1, &welcome2, &tree2);
        }
    }
}

/// A keyspace of version 2 migrates when version 3 opens it, and an inbox
/// row written by version 2 (its own Welcome and tree) reads as before
/// next to rows of version 3; acks of both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbox_rows_of_version_2_keep_reading_after_the_upgrade() {
    let Some(points) = cql_contact_points("the CQL Welcome test") else {
        return;
    };
    let (store, _keyspace) = cql_test_store(&points, 1).await;
    let session = store.session().expect("connected").clone();
    // The keyspace as version 2 left it: no `pending_welcome` column, and
    // bob-1's item 1 with its own blobs. Opening version 3 on it migrates.
    for cql in [
        "ALTER TABLE groups DROP pending_welcome",
        "DELETE FROM schema_version WHERE version = 3",
    ] {
        session
            .query_unpaged(schema_change(cql), ())
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
    }
    session
        .query_unpaged(
            "INSERT INTO inbox (device_id, inbox_seq, group_id, commit_seq, welcome, ratchet_tree) \
             VALUES ('bob-1', 1, ?, 3, ?, ?)",
            (b"old".to_vec(), b"old welcome".to_vec(), b"old tree".to_vec()),
        )
        .await
        .expect("legacy row");
    session
        .query_unpaged(
            "INSERT INTO inbox_counters (device_id, last_seq) VALUES ('bob-1', 1)",
            (),
        )
        .await
        .expect("legacy counter");
    let store = ScyllaStore::connect(store.config().clone())
        .await
        .expect("version 3 opens a version 2 keyspace");
    store.ready().await.expect("schema version 3 recorded");
    let session = store.session().expect("connected").clone();

    let fence = leased_group(&store, b"g").await;
    let (welcome, tree) = (blob(5, 300), blob(6, 400));
    store
        .append_commit(&add_commit(
            b"g",
            fence,
            &["bob-1".to_string()],
            &welcome,
            &tree,
        ))
        .await
        .expect("commit");
    let items = inbox(&store, "bob-1", 0).await;
    assert_eq!(items.len(), 2);
    assert_item(&items[0], b"old", 3, b"old welcome", b"old tree");
    assert_item(&items[1], b"g", 1, &welcome, &tree);
    assert_eq!(items[1].inbox_seq, 2);
    assert_eq!(
        store.read_inbox("bob-1", 0, 1).await.expect("page"),
        vec![items[0].clone()]
    );

    store.ack_inbox("bob-1", 1).await.expect("ack legacy");
    assert_eq!(inbox(&store, "bob-1", 0).await, vec![items[1].clone()]);
    assert!(welcome_rows(&session)
        .await
        .contains_key(&(b"g".to_vec(), 1)));
    store.ack_inbox("bob-1", 2).await.expect("ack");
    assert!(inbox(&store, "bob-1", 0).await.is_empty());
    assert!(welcome_rows(&session).await.is_empty(), "released");
}

/// Sets the head of `group_id` as an append whose writer died right after
/// its LWT would leave it: `assignments` sets the pending entry's side
/// effects (CQL, bound to `values`).
async fn leave_pending(
    session: &Session,
    group_id: &[u8],
    head_seq: i64,
    kind: EntryKind,
    assignments: &str,
    values: impl scylla::serialize::row::SerializeRow,
) {
    let cql = format!(
        "UPDATE groups SET head_seq = {head_seq}, pending_seq = {head_seq}, pending_kind = {}, \
         pending_epoch = 1, pending_sender = 'alice/alice-1', pending_cmid = textAsBlob('c{head_seq}'), \
         pending_message = textAsBlob('m'), pending_time_ms = 1, {assignments} WHERE group_id = {}",
        kind as i32,
        format_args!("0x{}", hex(group_id)),
    );
    session
        .query_unpaged(cql, values)
        .await
        .expect("leave a pending entry");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A commit whose appender died after its LWT is delivered by whoever
/// materializes it next (here the lease owner), with the tree from the
/// head; a head a version-2 binary left pending (a copy per device) is
/// delivered as version 2 would have; and an older commit's Welcome left in
/// the head by such a binary does not count for a later entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_welcomes_left_by_a_crash_are_delivered_by_the_next_materializer() {
    let Some(points) = cql_contact_points("the CQL Welcome test") else {
        return;
    };
    let (store, _keyspace) = cql_test_store(&points, 1).await;
    let session = store.session().expect("connected").clone();
    let (welcome, tree) = (blob(7, 5000), blob(8, 6000));

    // Version 3: one Welcome, the tree in the head.
    leased_group(&store, b"g3").await;
    let devices = BTreeSet::from(["bob-1".to_string(), "carol-1".to_string()]);
    leave_pending(
        &session,
        b"g3",
        1,
        EntryKind::Commit,
        "pending_added = ?, pending_welcome = ?, ratchet_tree = ?, epoch = 2",
        (
            devices.clone(),
            (1i64, welcome.clone(), devices.clone()),
            tree.clone(),
        ),
    )
    .await;
    assert!(inbox(&store, "bob-1", 0).await.is_empty());
    store
        .acquire_lease(b"g3", NODE, 0, u64::MAX / 2)
        .await
        .expect("renew: materializes");
    for d in &devices {
        let items = inbox(&store, d, 0).await;
        assert_eq!(items.len(), 1, "{d}");
        assert_item(&items[0], b"g3", 1, &welcome, &tree);
    }
    assert_eq!(welcome_rows(&session).await.len(), 1);

    // Version 2: a copy per device, delivered inline as before.
    leased_group(&store, b"g2").await;
    let legacy: HashMap<String, (Vec<u8>, Vec<u8>)> =
        HashMap::from([("dave-1".to_string(), (b"w2".to_vec(), b"t2".to_vec()))]);
    leave_pending(
        &session,
        b"g2",
        1,
        EntryKind::Commit,
        "pending_added = {'dave-1'}, pending_welcomes = ?, epoch = 2",
        (legacy,),
    )
    .await;
    store
        .acquire_lease(b"g2", NODE, 0, u64::MAX / 2)
        .await
        .expect("renew: materializes");
    let items = inbox(&store, "dave-1", 0).await;
    assert_eq!(items.len(), 1);
    assert_item(&items[0], b"g2", 1, b"w2", b"t2");
    assert!(inbox_rows(&session)
        .await
        .iter()
        .any(|(d, _, w, t)| d == "dave-1" && *w && *t));
    assert_eq!(
        welcome_rows(&session).await.len(),
        1,
        "no row for inline items"
    );

    // A later entry (seq 2, appended by a version-2 binary) with commit
    // 1's Welcome still in the head: nothing is delivered for it.
    leased_group(&store, b"gx").await;
    leave_pending(
        &session,
        b"gx",
        2,
        EntryKind::Application,
        "pending_welcome = ?",
        ((
            1i64,
            welcome.clone(),
            BTreeSet::from(["erin-1".to_string()]),
        ),),
    )
    .await;
    store
        .acquire_lease(b"gx", NODE, 0, u64::MAX / 2)
        .await
        .expect("renew: materializes");
    assert!(inbox(&store, "erin-1", 0).await.is_empty());
    let entries = store.read_timeline(b"gx", 0, 10).await.expect("timeline");
    assert_eq!(entries.last().map(|e| e.seq), Some(2));
}
