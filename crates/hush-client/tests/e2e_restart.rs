//! kill -9 of the node mid-conversation, then a restart on the same data:
//! no acknowledged message is lost, no seq is reused, clients resume.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use common::{stored_entries, Dev, Msg, Node, PATIENCE};

#[test]
fn kill_9_mid_conversation_loses_no_acknowledged_message() {
    let mut node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    let gid = alice.ok(&["group", "create", "durable"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", &gid, "bob"]);
    bob.ok(&["sync"]);
    // bob stays connected through the crash and must resume by himself.
    let listener = bob.listen();

    // alice sends continuously from another thread; every `send` is a new
    // process. Acknowledged = the command printed a seq.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, acked_rx) = mpsc::channel::<Msg>();
    let sender = {
        let stop = stop.clone();
        let alice = Dev::new(root.path(), "alice", &node.url);
        let gid = gid.clone();
        std::thread::spawn(move || {
            let mut failed = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let text = format!("message {i}");
                i += 1;
                let out = alice.run(&["send", &gid, &text]);
                if out.status.success() {
                    let seq = common::lines(&out)[0]["seq"].as_u64().expect("seq");
                    let _ = acked_tx.send(Msg {
                        seq,
                        sender: "alice".into(),
                        text,
                    });
                } else {
                    failed.push(text);
                }
            }
            failed
        })
    };
    let mut acked = Vec::new();
    let wait_acks = |n: usize, acked: &mut Vec<Msg>| {
        for _ in 0..n {
            acked.push(
                acked_rx
                    .recv_timeout(PATIENCE)
                    .expect("an acknowledged send"),
            );
        }
    };
    wait_acks(8, &mut acked);
    node.kill9();
    node.restart();
    wait_acks(8, &mut acked);
    stop.store(true, Ordering::SeqCst);
    let failed = sender.join().expect("sender thread");
    acked.extend(acked_rx.try_iter());

    // No seq was handed out twice.
    let seqs: BTreeSet<u64> = acked.iter().map(|m| m.seq).collect();
    assert_eq!(seqs.len(), acked.len(), "a seq was reused: {acked:?}");

    // The store's timeline is dense and holds every acknowledged message.
    let gid_bytes = hex::decode(&gid).unwrap();
    let stored = stored_entries(&node, &gid_bytes);
    let stored_seqs: Vec<u64> = stored.iter().map(|e| e.0).collect();
    assert_eq!(
        stored_seqs,
        (1..=stored_seqs.len() as u64).collect::<Vec<_>>(),
        "timeline not dense"
    );
    for m in &acked {
        assert!(
            stored_seqs.contains(&m.seq),
            "acknowledged {m:?} is not stored"
        );
    }

    // bob's listener reconnected by itself and printed every acknowledged
    // message exactly once, under its acknowledged seq. (A send that failed
    // may still have been stored before the crash: it may show, once.)
    let want: BTreeSet<&str> = acked.iter().map(|m| m.text.as_str()).collect();
    let seen = listener.texts_until(|got| {
        let texts: BTreeSet<&str> = got.iter().map(|m| m.text.as_str()).collect();
        want.is_subset(&texts)
    });
    drop(listener);
    let mut by_text: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in &seen {
        by_text.entry(m.text.as_str()).or_default().push(m.seq);
    }
    for (text, seqs) in &by_text {
        assert_eq!(seqs.len(), 1, "{text:?} delivered {} times", seqs.len());
        assert!(
            want.contains(text) || failed.iter().any(|f| f == text),
            "unexpected message {text:?}"
        );
    }
    for m in &acked {
        assert_eq!(by_text[m.text.as_str()], vec![m.seq], "{m:?}");
    }
    assert!(
        seen.windows(2).all(|w| w[0].seq < w[1].seq),
        "listener order: {seen:?}"
    );
    // Nothing is left to print afterwards beyond what was not yet seen.
    let rest = bob.sync_texts();
    assert!(
        rest.iter().all(|m| !by_text.contains_key(m.text.as_str())),
        "printed twice: {rest:?}"
    );
}
