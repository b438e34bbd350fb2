//! Group chat end to end: a real hush-node process and one `hush` process
//! per command and device.

mod common;

use common::{snapshot_home, stored_entries, Dev, Msg, Node};
use hush_client::mls;
use hush_client::store::StateDb;

const APPLICATION: i64 = 3;

fn msg(seq: u64, sender: &str, text: &str) -> Msg {
    Msg {
        seq,
        sender: sender.into(),
        text: text.into(),
    }
}

/// Three users, three homes, one group: everyone sees the same messages in
/// the same order; a member added later cannot read what came before; a
/// removed member cannot read what comes after — neither through the server
/// nor with its own MLS state fed the stored ciphertext.
#[test]
fn three_users_agree_on_order_and_membership_bounds_what_they_read() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    let carol = Dev::new(root.path(), "carol", &node.url);
    for (dev, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        dev.ok(&["register", name]);
    }
    let gid = alice.ok(&["group", "create", "trio"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    let gid_bytes = hex::decode(&gid).unwrap();
    alice.ok(&["group", "add", &gid, "bob"]);
    bob.ok(&["sync"]);

    // Before carol: interleaved messages from alice and bob.
    let mut before = Vec::new();
    for i in 0..3 {
        let text = format!("before carol {i} from alice");
        before.push(msg(alice.send(&gid, &text), "alice", &text));
        let text = format!("before carol {i} from bob");
        before.push(msg(bob.send(&gid, &text), "bob", &text));
    }
    let early_ciphertexts: Vec<Vec<u8>> = stored_entries(&node, &gid_bytes)
        .into_iter()
        .filter(|e| e.1 == APPLICATION)
        .map(|e| e.3)
        .collect();
    assert!(early_ciphertexts.len() >= before.len());

    alice.ok(&["group", "add", &gid, "carol"]);
    let carol_first = carol.sync_texts();
    assert!(
        carol_first.is_empty(),
        "carol read messages from before she joined: {carol_first:?}"
    );
    // Her MLS state cannot decrypt them either.
    let carol_db = StateDb::open(&carol.home).unwrap();
    for ct in &early_ciphertexts {
        assert!(
            mls::process(&carol_db, &gid_bytes, ct, |_| Ok(())).is_err(),
            "carol decrypted a pre-join message"
        );
    }
    drop(carol_db);

    // All three talk.
    let mut during = Vec::new();
    for i in 0..3 {
        for (dev, name) in [(&carol, "carol"), (&alice, "alice"), (&bob, "bob")] {
            let text = format!("round {i} from {name}");
            during.push(msg(dev.send(&gid, &text), name, &text));
        }
    }
    during.sort();
    // Everyone prints the others' messages (not their own), in seq order:
    // each view is exactly the group's one timeline minus its own sends.
    let mut all: Vec<Msg> = before.iter().chain(&during).cloned().collect();
    all.sort();
    let view_of = |me: &str, from: &[Msg]| -> Vec<Msg> {
        from.iter().filter(|m| m.sender != me).cloned().collect()
    };
    assert_eq!(alice.sync_texts(), view_of("alice", &all));
    assert_eq!(bob.sync_texts(), view_of("bob", &all));
    assert_eq!(carol.sync_texts(), view_of("carol", &during));

    // Carol's state before her removal, to try decrypting later messages.
    let carol_copy = snapshot_home(&carol, &root.path().join("carol-copy"));
    alice.ok(&["group", "remove", &gid, "carol"]);
    let after = msg(
        alice.send(&gid, "after carol left"),
        "alice",
        "after carol left",
    );
    let carol_out = carol.ok(&["sync"]);
    assert!(
        carol_out.iter().any(|v| v["event"] == "removed"),
        "carol was not told she was removed: {carol_out:?}"
    );
    assert!(common::texts(&carol_out).is_empty());
    assert_eq!(carol.err(&["send", &gid, "still here?"]), "NOT_MEMBER");
    assert_eq!(bob.sync_texts(), vec![after.clone()]);

    // Feed carol's pre-removal state every stored entry after her last one:
    // the removal commit applies, the later message does not decrypt.
    let copy_db = StateDb::open(&carol_copy).unwrap();
    let last_seen = during.iter().map(|m| m.seq).max().unwrap();
    let mut saw_own_removal = false;
    let mut decrypted_after = false;
    for (seq, _, _, message) in stored_entries(&node, &gid_bytes) {
        if seq <= last_seen {
            continue;
        }
        match mls::process(&copy_db, &gid_bytes, &message, |_| Ok(())) {
            Ok(mls::Processed::Commit { self_removed, .. }) => saw_own_removal |= self_removed,
            Ok(mls::Processed::Application { .. }) => decrypted_after |= seq >= after.seq,
            _ => {}
        }
    }
    assert!(saw_own_removal, "the copy did not process its removal");
    assert!(
        !decrypted_after,
        "a removed member decrypted a later message"
    );
}

/// A member that stays offline gets everything it missed on its next sync,
/// exactly once and in order; a second sync prints nothing.
#[test]
fn offline_member_catches_up_exactly_once_in_order() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    let bob_device = bob.ok(&["register", "bob"])[0]["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    let gid = alice.ok(&["group", "create", "later"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", &gid, "bob"]);

    // bob is offline (never synced) while alice writes 40 messages.
    let sent: Vec<Msg> = (0..40)
        .map(|i| {
            let text = format!("missed {i}");
            msg(alice.send(&gid, &text), "alice", &text)
        })
        .collect();
    assert!(
        sent.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "dense seqs"
    );
    assert_eq!(bob.sync_texts(), sent);
    // bob's acknowledgements were stored before his process exited: the
    // node answers a Close once the acks sent before it are stored.
    let conn = rusqlite::Connection::open_with_flags(
        node.store_file(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let cursor: u64 = conn
        .query_row(
            "SELECT seq FROM cursors WHERE device_id = ?1 AND group_id = ?2",
            rusqlite::params![bob_device, hex::decode(&gid).unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cursor, sent.last().unwrap().seq, "server cursor lags");
    assert!(
        bob.sync_texts().is_empty(),
        "a second sync repeated messages"
    );
    let more = msg(alice.send(&gid, "one more"), "alice", "one more");
    assert_eq!(bob.sync_texts(), vec![more]);
}
