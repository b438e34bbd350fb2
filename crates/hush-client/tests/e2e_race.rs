//! Commit race: two members commit in the same epoch against a real node.
//! The SDK clients run in this process (so both commits are built before
//! either hears of the other); the node is a real process.

mod common;

use common::{stored_entries, Node};
use hush_client::client::Client;
use hush_client::mls;

const COMMIT: i64 = 1;

async fn stale_epoch_errors(node: &Node) -> u64 {
    hush_client::tls::use_ring(); // reqwest has no rustls provider of its own
    let text = reqwest::get(format!("{}/metrics", node.url))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("hush_errors_total") && l.contains("code=\"STALE_EPOCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_commit_wins_per_epoch_and_the_loser_lands_next() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        let mut c = Client::open(&root.path().join(name), Some(&node.url)).unwrap();
        c.register(name).await.unwrap();
        clients.push(c);
    }
    let [alice, bob, carol, dave, erin] = &mut clients[..] else {
        unreachable!()
    };
    let gid = alice.create_group("race").await.unwrap().group_id;
    let gid_hex = hex::encode(&gid);
    alice
        .add_members(&gid_hex, &["bob".into(), "carol".into()])
        .await
        .unwrap()
        .expect("bob and carol added");
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let epoch = mls::epoch(alice.db(), &gid).unwrap();
    assert_eq!(mls::epoch(bob.db(), &gid).unwrap(), epoch);
    assert_eq!(mls::epoch(carol.db(), &gid).unwrap(), epoch);
    let stale_before = stale_epoch_errors(&node).await;

    // Both build their commit at `epoch` (neither processes the other's
    // until its own request is answered).
    let (add_dave, add_erin) = (["dave".to_string()], ["erin".to_string()]);
    let (b, c) = tokio::join!(
        bob.add_members(&gid_hex, &add_dave),
        carol.add_members(&gid_hex, &add_erin),
    );
    let b = b.expect("bob's add").expect("dave added");
    let c = c.expect("carol's add").expect("erin added");
    let mut epochs = [b.epoch, c.epoch];
    epochs.sort();
    assert_eq!(
        epochs,
        [epoch + 1, epoch + 2],
        "one commit per epoch: the loser's change landed in the next"
    );
    assert!(
        stale_epoch_errors(&node).await > stale_before,
        "the loser was not told STALE_EPOCH"
    );

    // The timeline has exactly one commit per epoch.
    let commit_epochs: Vec<u64> = stored_entries(&node, &gid)
        .into_iter()
        .filter(|e| e.1 == COMMIT)
        .map(|e| e.2)
        .collect();
    let mut unique = commit_epochs.clone();
    unique.dedup();
    assert_eq!(unique, commit_epochs, "two commits stored for one epoch");
    assert!(commit_epochs.ends_with(&[epoch, epoch + 1]));

    // Everyone converges on the same epoch and member list.
    for c in [&mut *alice, &mut *bob, &mut *carol, &mut *dave, &mut *erin] {
        c.sync().await.unwrap();
    }
    let view = |c: &Client| {
        let mut m: Vec<String> = mls::members(c.db(), &gid)
            .unwrap()
            .into_iter()
            .map(|m| mls::user_of(&m.identity).to_string())
            .collect();
        m.sort();
        (mls::epoch(c.db(), &gid).unwrap(), m)
    };
    let expected = (
        epoch + 2,
        ["alice", "bob", "carol", "dave", "erin"]
            .map(String::from)
            .to_vec(),
    );
    for c in [&*alice, &*bob, &*carol, &*dave, &*erin] {
        assert_eq!(view(c), expected, "{c:?}");
    }

    // And they can all talk in the final epoch.
    let seq = erin
        .send_text(&gid_hex, "hello from the last epoch")
        .await
        .unwrap();
    alice.sync().await.unwrap();
    let shown = alice.take_unshown().unwrap();
    assert!(
        shown.iter().any(|(g, row)| *g == gid
            && row.seq == seq
            && row.body.contains("hello from the last epoch")),
        "alice did not read erin's message: {shown:?}"
    );
}
