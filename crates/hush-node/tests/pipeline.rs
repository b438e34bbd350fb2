//! A GroupActor pipelines its sends (issue 16): while one batch of a
//! group's messages is with the store, the next sends are validated and
//! queued, and they go to the store together. What must still hold: seqs
//! follow the order the actor took the sends in, every acknowledged message
//! is stored once, and a commit that arrives while sends are queued or with
//! the store waits for them, so nothing checked against the old epoch is
//! sequenced after the commit that ended it.
//!
//! Behaviour, not timing: the test holds the store file's write lock (a
//! stalled disk) while the sends and the commit reach the node, so the
//! first send's batch is stuck in the store and the others queue behind it
//! whatever the relative speed of the clients. With `epoch_window = 0` the
//! node accepts application messages of the current epoch only, so a send
//! checked before the commit and stored after it would show as an old
//! epoch after the commit in the timeline.

use std::time::Duration;

use futures_util::future::join_all;
use hush_store::EntryKind;

mod common;
use common::{client, is_member, processed_to, pump_until, start_node, url, WAIT};

const SENDERS: [&str; 3] = ["alice", "bob", "carol"];

/// Waits until `cond` holds of the node's counters (they have no change
/// notification; the wait is bounded by [`WAIT`]).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_for_the_sends_queued_before_it() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.epoch_window = 0;
    })
    .await;
    {
        let url = url(&node);
        let mut senders = Vec::new();
        for name in SENDERS {
            senders.push(client(dir.path(), &url, name).await);
        }
        let mut dave = client(dir.path(), &url, "dave").await;
        let gid = senders[0]
            .create_group("pipeline")
            .await
            .expect("group")
            .group_id;
        let g = hex::encode(&gid);
        let others: Vec<String> = ["bob", "carol", "dave"].map(String::from).to_vec();
        senders[0]
            .add_members(&g, &others)
            .await
            .expect("add")
            .expect("added");
        for c in senders[1..].iter_mut().chain(std::iter::once(&mut dave)) {
            pump_until(c, "welcome", |c| is_member(c, &gid)).await;
        }
        let base = senders[0].send_text(&g, "before").await.expect("send");
        for c in senders.iter_mut().chain(std::iter::once(&mut dave)) {
            pump_until(c, "the first message", |c| processed_to(c, &gid, base)).await;
        }
        until("setup's requests answered", || {
            node.requests_in_flight() == 0
        })
        .await;

        // The store stalls (another connection holds the file's write lock,
        // well within the node's 5 s busy timeout).
        let held = rusqlite::Connection::open(dir.path().join("node/hush.sqlite")).expect("db");
        held.busy_timeout(WAIT).expect("busy timeout");
        held.execute_batch("BEGIN IMMEDIATE").expect("write lock");

        let sends = join_all(
            senders
                .iter_mut()
                .zip(SENDERS)
                .map(|(c, who)| c.send_text(&g, who)),
        );
        let commit = async {
            // Every send is in the node (the first with the store, the others
            // queued behind it) before dave commits...
            until("three sends in flight", || node.admission_peaks().1 == 3).await;
            let before = node.requests_in_flight();
            let (done, ()) = tokio::join!(dave.self_update(&g), async {
                // ...and the commit is in the node before the store resumes.
                until("the commit in flight", || {
                    node.requests_in_flight() > before
                })
                .await;
                // Durable before acknowledged: a send's place is given back
                // when its answer goes out, and nothing is stored yet.
                assert_eq!(
                    node.admission_peaks().1,
                    3,
                    "a send was answered while the store was stalled"
                );
                held.execute_batch("ROLLBACK").expect("unlock");
            });
            done.expect("self-update")
        };
        let (sent, commit) = tokio::join!(sends, commit);
        let sent: Vec<u64> = sent.into_iter().map(|r| r.expect("send")).collect();

        // The three sends took the seqs after `base`, each once; the commit
        // came after all of them.
        let mut seqs = sent.clone();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![base + 1, base + 2, base + 3], "{sent:?}");
        assert_eq!(
            commit.seq,
            base + 4,
            "the commit waited for the queued sends"
        );
        let stored = node
            .store()
            .read_timeline(&gid, base, 100)
            .await
            .expect("timeline");
        let shape: Vec<(u64, EntryKind, u64)> =
            stored.iter().map(|e| (e.seq, e.kind, e.epoch)).collect();
        let epoch = stored[0].epoch;
        assert_eq!(
            shape,
            vec![
                (base + 1, EntryKind::Application, epoch),
                (base + 2, EntryKind::Application, epoch),
                (base + 3, EntryKind::Application, epoch),
                (base + 4, EntryKind::Commit, epoch),
            ],
            "no message of the old epoch after the commit that ended it"
        );

        // Every member reads all of it, in order.
        let last = base + 4;
        for c in senders.iter_mut().chain(std::iter::once(&mut dave)) {
            pump_until(c, "the commit", |c| processed_to(c, &gid, last)).await;
            let texts: Vec<(u64, String)> = c
                .db()
                .recent_log(&gid, 100)
                .expect("log")
                .into_iter()
                .filter(|l| l.kind == "text" && l.seq > base)
                .map(|l| (l.seq, l.body))
                .collect();
            assert_eq!(texts.len(), 3, "{texts:?}");
        }
        // After the commit the group takes sends again, at the new epoch.
        let after = senders[1].send_text(&g, "after").await.expect("send after");
        assert_eq!(after, last + 1);
    }
    node.stop().await;
}
