//! Presence and typing against an in-process node with a [`ManualClock`]:
//! presence flips on connect and disconnect only after the grace period
//! (a reconnect inside it shows nothing), reaches co-members only, and
//! typing notices (ephemeral MLS messages) reach online members but never
//! the store. Every wait is for an event; the clock moves only when a test
//! moves it.

use std::path::Path;

use hush_client::client::Client;
use hush_client::conn::Transport;
use hush_client::envelope::Envelope;
use hush_client::mls;
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::{v1, ClientFrame, ErrorCode, Message as _, ServerFrame};

mod common;
use common::{client_over, has_text, is_member, login, pump_until, start_node, url, WAIT};

const GRACE_MS: u64 = 5_000;

/// Like [`pump_until`], but moves the manual clock by `step` whenever no
/// event came for a moment. For waits that start when the node notices a
/// client left: a closed stream is detached asynchronously, and the grace
/// period starts only then, on the manual clock.
async fn pump_advancing(
    c: &mut Client,
    clock: &hush_node::ManualClock,
    step: u64,
    what: &str,
    done: impl Fn(&Client) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(c) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        match tokio::time::timeout(std::time::Duration::from_millis(200), c.wait_event()).await {
            Err(_) => clock.advance(step),
            Ok(ev) => {
                let ev = ev.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
                c.handle(ev)
                    .await
                    .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
            }
        }
    }
}

/// A group of `owner` with `others` added, everyone caught up and joined:
/// a member's presence is visible to the group only once it joined, and
/// its join tells `owner` it is online.
async fn group(owner: &mut Client, others: &mut [&mut Client], name: &str) -> Vec<u8> {
    let gid = owner.create_group(name).await.expect("create").group_id;
    let handles: Vec<String> = others
        .iter()
        .map(|c| c.me().expect("registered").user_id.clone())
        .collect();
    owner
        .add_members(&hex::encode(&gid), &handles)
        .await
        .expect("add");
    for (c, handle) in others.iter_mut().zip(&handles) {
        pump_until(c, "the welcome", |c| is_member(c, &gid)).await;
        pump_until(owner, "the join", |o| {
            o.live().presence(handle) == Some(true)
        })
        .await;
    }
    gid
}

/// One request over `POST /v1/rpc`; the answer's body.
async fn rpc(url: &str, token: &str, body: C) -> S {
    let frame = ClientFrame {
        request_id: 7,
        body: Some(body),
    };
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/rpc"))
        .header("authorization", format!("Bearer {token}"))
        .body(frame.encode_to_vec())
        .send()
        .await
        .expect("rpc");
    let bytes = resp.bytes().await.expect("body");
    ServerFrame::decode(bytes.as_ref())
        .expect("a ServerFrame")
        .body
        .expect("a body")
}

fn code(body: &S) -> ErrorCode {
    match body {
        S::Error(e) => e.error_code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_flips_after_the_grace_period_and_a_quick_reconnect_does_not_flap() {
    let (node, clock, _dir) = start_node(|c| {
        c.actors.presence_grace_ms = GRACE_MS;
        // The node notices that an SSE client went away only when a write
        // to its stream fails: keep-alives every 100 ms (real time) make
        // that prompt. Presence itself runs on the manual clock.
        c.limits.heartbeat_interval_ms = 100;
    })
    .await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut alice = client_over(root.path(), &url, "alice", Transport::Ws).await;
    // bob on SSE: presence frames take the SSE stream too.
    let mut bob = client_over(root.path(), &url, "bob", Transport::Sse).await;
    let mut carol = client_over(root.path(), &url, "carol", Transport::Ws).await;
    let gid = group(&mut alice, &mut [&mut bob], "presence").await;
    // carol shares a group with alice only: bob's presence is not hers.
    let other = group(&mut alice, &mut [&mut carol], "no-bob").await;
    let gid_hex = hex::encode(&gid);

    let snapshot = alice.refresh_presence(&gid_hex).await.expect("presence");
    assert_eq!(
        snapshot,
        vec![("alice".to_string(), true), ("bob".to_string(), true)]
    );
    alice.live_mut().take_changes();

    // bob drops and is back before the grace period ends: nothing shows.
    bob.close().await;
    clock.advance(GRACE_MS - 1);
    bob.connect().await.expect("reconnect");
    bob.send_text(&gid_hex, "back").await.expect("send");
    pump_until(&mut alice, "bob's message", |c| has_text(c, &gid, "back")).await;

    // bob leaves for good: offline once the grace period is over.
    bob.close().await;
    pump_advancing(&mut alice, &clock, GRACE_MS, "bob offline", |c| {
        c.live().presence("bob") == Some(false)
    })
    .await;
    let snapshot = alice.refresh_presence(&gid_hex).await.expect("presence");
    assert!(
        snapshot.contains(&("bob".to_string(), false)),
        "{snapshot:?}"
    );

    // bob comes back: online at once.
    bob.connect().await.expect("reconnect");
    pump_until(&mut alice, "bob online", |c| {
        c.live().presence("bob") == Some(true)
    })
    .await;
    // The whole story, as alice was told it: no flap from the quick
    // reconnect, one offline, one online.
    assert_eq!(
        alice.live_mut().take_changes(),
        vec![("bob".to_string(), false), ("bob".to_string(), true)]
    );

    // carol heard nothing about bob; she did hear about alice's group.
    alice
        .send_text(&hex::encode(&other), "marker")
        .await
        .expect("send");
    pump_until(&mut carol, "the marker", |c| has_text(c, &other, "marker")).await;
    let carol_heard = carol.live_mut().take_changes();
    assert!(
        carol_heard.iter().all(|(u, _)| u != "bob"),
        "carol was told about bob: {carol_heard:?}"
    );
    // Not a member: no presence of the group.
    let err = carol.refresh_presence(&gid_hex).await.unwrap_err();
    assert!(
        matches!(err, hush_client::ClientError::GroupNotFound(_)),
        "{err}"
    );
    let token = login(&url, &carol.me().unwrap()).await;
    let answer = rpc(
        &url,
        &token,
        C::GetPresence(v1::GetPresence {
            group_id: gid.clone(),
        }),
    )
    .await;
    assert_eq!(code(&answer), ErrorCode::NotMember);
    node.stop().await;
}

/// A group with more member devices than `actors.presence_push_max_members`
/// gets no presence pushes (a push per member per change is O(n^2) as a big
/// group forms); its members still get `GetPresence`, and a small group
/// shared with the same user still gets the pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_above_the_push_limit_ask_for_presence_instead() {
    let (node, clock, _dir) = start_node(|c| {
        c.actors.presence_grace_ms = GRACE_MS;
        c.actors.presence_push_max_members = 2;
    })
    .await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut alice = client_over(root.path(), &url, "alice", Transport::Ws).await;
    let mut bob = client_over(root.path(), &url, "bob", Transport::Ws).await;
    let mut carol = client_over(root.path(), &url, "carol", Transport::Ws).await;
    let mut dave = client_over(root.path(), &url, "dave", Transport::Ws).await;
    // carol and bob: two devices, at the limit, pushed.
    let pair = group(&mut carol, &mut [&mut bob], "pair").await;
    // alice, carol and dave: three devices, above it.
    let big = alice.create_group("big").await.expect("create").group_id;
    let big_hex = hex::encode(&big);
    alice
        .add_members(&big_hex, &["carol".to_string(), "dave".to_string()])
        .await
        .expect("add");
    pump_until(&mut carol, "the welcome", |c| is_member(c, &big)).await;
    pump_until(&mut dave, "the welcome", |c| is_member(c, &big)).await;
    carol.send_text(&big_hex, "hi").await.expect("send");
    pump_until(&mut alice, "carol's message", |c| has_text(c, &big, "hi")).await;

    // carol goes offline, then comes back: bob (the pair) is told both,
    // and alice, after each, gets a later message of the big group but
    // nothing of carol (one connection's frames arrive in order).
    carol.close().await;
    pump_advancing(&mut bob, &clock, GRACE_MS, "carol offline", |c| {
        c.live().presence("carol") == Some(false)
    })
    .await;
    dave.send_text(&big_hex, "after offline")
        .await
        .expect("send");
    pump_until(&mut alice, "the first marker", |c| {
        has_text(c, &big, "after offline")
    })
    .await;
    carol.connect().await.expect("reconnect");
    pump_until(&mut bob, "carol online", |c| {
        c.live().presence("carol") == Some(true)
    })
    .await;
    dave.send_text(&big_hex, "after online")
        .await
        .expect("send");
    pump_until(&mut alice, "the second marker", |c| {
        has_text(c, &big, "after online")
    })
    .await;
    let alice_heard = alice.live_mut().take_changes();
    assert!(
        alice_heard.is_empty(),
        "a group above the limit got pushes: {alice_heard:?}"
    );

    // Asked, the big group answers: carol (joined, back online) is online,
    // and the answer says that changes are not pushed (ask again).
    let snapshot = alice.refresh_presence(&big_hex).await.expect("presence");
    assert!(
        snapshot.contains(&("carol".to_string(), true)),
        "{snapshot:?}"
    );
    assert!(!alice.live().presence_pushed(&big));
    bob.refresh_presence(&hex::encode(&pair))
        .await
        .expect("presence");
    assert!(bob.live().presence_pushed(&pair));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_online_members_and_never_the_store() {
    let (node, _clock, dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut alice = client_over(root.path(), &url, "alice", Transport::Ws).await;
    let mut bob = client_over(root.path(), &url, "bob", Transport::Sse).await;
    let mut dave = client_over(root.path(), &url, "dave", Transport::Ws).await;
    let mut mallory = client_over(root.path(), &url, "mallory", Transport::Ws).await;
    let gid = group(&mut alice, &mut [&mut bob, &mut dave], "typing").await;
    let gid_hex = hex::encode(&gid);
    dave.close().await; // offline: must never get it
    let store_file = dir.path().join("node").join("hush.sqlite");
    let entries = |path: &Path| -> (u64, u64) {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open store");
        let n: u64 = conn
            .query_row(
                "SELECT COUNT(*) FROM entries WHERE group_id = ?1",
                [&gid],
                |r| r.get(0),
            )
            .expect("count");
        let head: u64 = conn
            .query_row(
                "SELECT head_seq FROM groups WHERE group_id = ?1",
                [&gid],
                |r| r.get(0),
            )
            .expect("head");
        (n, head)
    };
    let before = entries(&store_file);

    // A typing notice made by the SDK, sent as the SDK would.
    let me = alice.me().unwrap();
    let typing = mls::encrypt(alice.db(), &me, &gid, &Envelope::Typing.encode()).expect("encrypt");
    let token = login(&url, &me).await;
    let answer = rpc(
        &url,
        &token,
        C::SendEphemeral(v1::SendEphemeral {
            group_id: gid.clone(),
            message: typing.clone(),
        }),
    )
    .await;
    assert_eq!(answer, S::EphemeralAccepted(v1::EphemeralAccepted {}));
    pump_until(&mut bob, "alice typing", |c| {
        c.live()
            .typing_in(&gid, hush_client::store::now_ms())
            .contains(&"alice".to_string())
    })
    .await;
    // And through the client API (over the WebSocket).
    alice.send_typing(&gid_hex).await.expect("typing");

    // Validated like an application message.
    let mallory_token = login(&url, &mallory.me().unwrap()).await;
    let answer = rpc(
        &url,
        &mallory_token,
        C::SendEphemeral(v1::SendEphemeral {
            group_id: gid.clone(),
            message: typing.clone(),
        }),
    )
    .await;
    assert_eq!(code(&answer), ErrorCode::NotMember);
    let answer = rpc(
        &url,
        &token,
        C::SendEphemeral(v1::SendEphemeral {
            group_id: gid.clone(),
            message: b"not an mls message".to_vec(),
        }),
    )
    .await;
    assert!(
        matches!(
            code(&answer),
            ErrorCode::Malformed | ErrorCode::WrongWireFormat
        ),
        "{answer:?}"
    );
    mallory.close().await;

    // A stored message after the notices: it arrives, and ends alice's
    // typing notice at bob.
    alice.send_text(&gid_hex, "typed").await.expect("send");
    pump_until(&mut bob, "alice's message", |c| has_text(c, &gid, "typed")).await;
    assert!(bob
        .live()
        .typing_in(&gid, hush_client::store::now_ms())
        .is_empty());

    // The store holds exactly one new entry (the text), and no byte of the
    // typing notice, in the database file or its WAL.
    let after = entries(&store_file);
    assert_eq!(after, (before.0 + 1, before.1 + 1));
    for suffix in ["", "-wal"] {
        let path = store_file.with_file_name(format!("hush.sqlite{suffix}"));
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !bytes.windows(typing.len()).any(|w| w == typing.as_slice()),
            "{} holds the typing notice",
            path.display()
        );
    }

    // dave, offline then, syncs: the text, and no typing notice.
    dave.connect().await.expect("reconnect");
    assert!(has_text(&dave, &gid, "typed"));
    assert!(dave
        .live()
        .typing_in(&gid, hush_client::store::now_ms())
        .is_empty());
    node.stop().await;
}
