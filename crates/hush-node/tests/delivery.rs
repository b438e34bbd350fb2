//! Exactly once and in order, per group, on a WebSocket that two writers
//! share: the fan-out writes a group's next entry to the transport itself
//! once the connection has synced, and the connection's task writes the
//! backlog, gaps and whatever did not fit (`conns.rs`, `gateway/stream.rs`).
//!
//! A raw client (tokio-tungstenite) reads through a small receive buffer
//! while a member sends large messages (more than the sockets and
//! actix-ws's queue hold, so some entries wait in the connection's queue),
//! and syncs again from a cursor behind what it read every few dozen
//! entries. The stream is cut into stretches at each `SyncStarted` and
//! `SyncCaughtUp`: each stretch is dense and in order, each Sync's backlog
//! starts right after the cursor it gave, the stretch after it goes on
//! right after the backlog (no live entry inside a Sync, none twice), and
//! the stream ends at the last message sent. A race: a direct write let
//! into a Sync shows in some runs, not all.
//!
//! Twice: with alice's and bob's connections alone (the fan-out writes the
//! direct entries itself), and with three more connections of bob's
//! device reading along, enough for the fan-out to leave its direct writes
//! to the actix workers' pumps (`conns::Pump`), whose deferred writes must
//! keep the same order.
//!
//! And a client's Close is answered once the acks it sent before it are
//! stored (the acks finish apart from the connection's task).

use futures_util::{SinkExt as _, StreamExt as _};
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::{v1, ClientFrame, Message as _, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{alice_and_bob, login, next_frame, raw_ws_authed, start_node, url, RawWs, WAIT};

/// Messages alice sends while bob's raw connection reads.
const SENT: u64 = 300;
/// Entries bob reads between two Syncs of his.
const READ_EACH: usize = 40;
/// Each message's text: 300 of them (9.6 MB) are more than the sockets'
/// buffers and actix-ws's queue of 32 frames hold, so while bob does not
/// read, later entries wait in his connection's queue.
const TEXT_BYTES: usize = 32 * 1024;

async fn sync(ws: &mut RawWs, request_id: u64, cursors: Vec<v1::Cursor>) {
    let frame = ClientFrame {
        request_id,
        body: Some(C::Sync(v1::Sync {
            cursors,
            inbox_after: 0,
        })),
    };
    ws.send(Message::binary(frame.encode_to_vec()))
        .await
        .expect("sync");
}

/// What one stretch of the stream carried of the group: its seqs.
fn assert_dense(what: &str, seqs: &[u64]) {
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: not dense and in order: {seqs:?}"
    );
}

/// `hush_frames_direct_total` of the node at `url`.
async fn direct_frames(url: &str) -> u64 {
    let page = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics page");
    page.lines()
        .find_map(|l| l.strip_prefix("hush_frames_direct_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("hush_frames_direct_total on the page") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_arrive_once_and_in_order_whoever_writes_them() {
    within_deadline(entries_once_and_in_order(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_arrive_once_and_in_order_through_the_pumps() {
    within_deadline(entries_once_and_in_order(3)).await;
}

/// A run takes seconds; one that stalls (a write left pending that nobody
/// makes, a sender waiting for it) fails here instead of hanging the suite.
async fn within_deadline(run: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the run ended within 120 s");
}

/// Bob's device also keeps `others` connections that sync and read
/// everything, so that each fan-out reaches that many more.
async fn entries_once_and_in_order(others: usize) {
    let (node, _clock, dir) = start_node(|c| {
        // Room for the whole run in bob's queue: the test is about order,
        // not about cutting a slow reader off (tests/overload.rs).
        c.limits.send_buffer_frames = 4 * SENT as usize;
        c.limits.write_timeout_ms = 60_000;
    })
    .await;
    {
        let url = url(&node);
        let (mut alice, bob, gid, g) = alice_and_bob(dir.path(), &url, "order").await;
        let first = alice.send_text(&g, "before").await.expect("send");

        let token = login(&url, &bob.me().expect("bob")).await;
        let mut readers = Vec::new();
        for i in 0..others {
            let mut other = raw_ws_authed(node.addr, &token, None).await;
            sync(&mut other, 1, Vec::new()).await;
            loop {
                match next_frame(&mut other).await.expect("open").body {
                    Some(S::SyncCaughtUp(_)) => break,
                    _ => continue,
                }
            }
            readers.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                // Bounded: a pending write nobody flushes must fail the
                // test, not hang it.
                while let Some(Ok(msg)) = tokio::time::timeout(WAIT, other.next())
                    .await
                    .unwrap_or_else(|_| panic!("reader {i}: no frame in time after {seqs:?}"))
                {
                    if let Message::Binary(b) = msg {
                        if let Ok(ServerFrame {
                            body: Some(S::GroupEvent(e)),
                            ..
                        }) = ServerFrame::decode(b.as_ref())
                        {
                            seqs.push(e.seq);
                            if seqs.len() as u64 == SENT {
                                break;
                            }
                        }
                    }
                }
                assert_dense(&format!("reader {i}"), &seqs);
                seqs.len() as u64
            }));
        }
        let mut ws = raw_ws_authed(node.addr, &token, Some(4 * 1024)).await;
        sync(&mut ws, 1, Vec::new()).await;
        let mut before = Vec::new();
        loop {
            match next_frame(&mut ws).await.expect("open").body {
                Some(S::GroupEvent(e)) if e.group_id == gid => before.push(e.seq),
                Some(S::SyncCaughtUp(_)) => break,
                _ => {}
            }
        }
        assert!(
            before.contains(&first),
            "the backlog has {first}: {before:?}"
        );

        // alice sends while bob reads, and every READ_EACH entries syncs
        // again from a cursor behind what he read.
        let sender = tokio::spawn(async move {
            let filler = "x".repeat(TEXT_BYTES);
            let mut last = 0;
            for i in 0..SENT {
                let text = format!("m{i} {filler}");
                last = alice.send_text(&g, &text).await.expect("send");
            }
            (alice, last)
        });
        let mut sender = Some(sender);
        let mut last = None;
        // Stretches of the stream, each cut at a SyncStarted and at a
        // SyncCaughtUp; the cursor each Sync gave.
        let mut stretches = vec![before];
        let mut cursors = Vec::new();
        let mut request_id = 1;
        let mut syncing = false;
        let mut read = 0;
        while syncing
            || last.is_none()
            || stretches.iter().rev().find_map(|s| s.last()) != last.as_ref()
        {
            let frame = tokio::select! {
                done = async { sender.as_mut().expect("running").await }, if sender.is_some() => {
                    last = Some(done.expect("sender").1);
                    sender = None;
                    continue;
                }
                frame = next_frame(&mut ws) => frame.expect("open"),
            };
            match frame.body {
                Some(S::SyncStarted(_)) if frame.request_id == request_id => {
                    stretches.push(Vec::new());
                }
                Some(S::SyncCaughtUp(_)) if syncing => {
                    syncing = false;
                    stretches.push(Vec::new());
                }
                Some(S::GroupEvent(e)) if e.group_id == gid => {
                    stretches.last_mut().expect("one").push(e.seq);
                    read += 1;
                    if read % READ_EACH == 0 && !syncing && sender.is_some() {
                        let cursor = e.seq.saturating_sub(READ_EACH as u64 / 2);
                        request_id += 1;
                        syncing = true;
                        cursors.push(cursor);
                        let at = v1::Cursor {
                            group_id: gid.clone(),
                            after_seq: cursor,
                        };
                        sync(&mut ws, request_id, vec![at]).await;
                    }
                }
                _ => {}
            }
        }
        let last = last.expect("sent");
        assert!(
            cursors.len() >= 3,
            "bob synced again {} times",
            cursors.len()
        );
        for (i, s) in stretches.iter().enumerate() {
            assert_dense(&format!("stretch {i}"), s);
        }
        // Stretch 2k+1 is the backlog of the k-th Sync again (after its
        // SyncStarted, before its SyncCaughtUp): from right after its
        // cursor, and the next stretch goes on right after it.
        for (k, cursor) in cursors.iter().enumerate() {
            let backlog = &stretches[2 * k + 1];
            assert_eq!(
                backlog.first(),
                Some(&(cursor + 1)),
                "Sync {k}: {backlog:?}"
            );
            if let (Some(end), Some(next)) = (
                backlog.last(),
                stretches.get(2 * k + 2).and_then(|s| s.first()),
            ) {
                assert_eq!(*next, end + 1, "after Sync {k}");
            }
        }
        assert_eq!(stretches.iter().rev().find_map(|s| s.last()), Some(&last));
        // Both writers wrote: some entries went straight to the socket's
        // queue (the rest, and the backlogs, through the connection's).
        assert!(direct_frames(&url).await > 0, "no entry skipped the queue");
        // The other connections got every message, once and in order.
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), SENT);
        }
    }
    node.stop().await;
}

/// A client's Close is answered once the acks it sent before it are
/// stored, so a client that acks what it read and closes (the CLI after a
/// sync) finds its device's cursor stored when its close returns. Acks are
/// one-way and finish on the store's writer, apart from the connection's
/// task; the store stalls here (another connection holds the file's write
/// lock, well within the node's 5 s busy timeout) while bob acks and
/// closes, so an answer that did not wait for them comes while they are
/// still unstored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_is_answered_once_the_acks_before_it_are_stored() {
    let (node, _clock, dir) = start_node(|_| {}).await;
    {
        let url = url(&node);
        let (mut alice, bob, gid, g) = alice_and_bob(dir.path(), &url, "acks").await;
        let me = bob.me().expect("bob");
        // Bob's SDK client is gone (it acks what it is sent); his raw
        // connection below acks instead.
        drop(bob);
        let mut last = 0;
        for i in 0..20 {
            last = alice.send_text(&g, &format!("m{i}")).await.expect("send");
        }
        let token = login(&url, &me).await;
        let mut ws = raw_ws_authed(node.addr, &token, None).await;

        let held = rusqlite::Connection::open(dir.path().join("node/hush.sqlite")).expect("db");
        held.busy_timeout(WAIT).expect("busy timeout");
        held.execute_batch("BEGIN IMMEDIATE").expect("write lock");
        for seq in last - 19..=last {
            let frame = ClientFrame {
                request_id: seq,
                body: Some(C::Ack(v1::Ack {
                    group_id: gid.clone(),
                    seq,
                })),
            };
            ws.send(Message::binary(frame.encode_to_vec()))
                .await
                .expect("ack");
        }
        ws.send(Message::Close(None)).await.expect("close");
        // A Close answered without waiting comes at once; this one waits
        // for the store.
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(500), next_frame(&mut ws)).await;
        assert!(
            early.is_err(),
            "the Close was answered before bob's acks were stored: {early:?}"
        );
        held.execute_batch("ROLLBACK").expect("unlock");
        assert_eq!(next_frame(&mut ws).await.map(|f| f.body), Err(Some(1000)));
        let cursors = node.store().cursors(&me.device_id).await.expect("cursors");
        assert_eq!(cursors, vec![(gid.clone(), last)], "bob's cursor");
    }
    node.stop().await;
}
