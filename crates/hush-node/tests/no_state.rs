//! Nothing a stranger sends creates lasting state (issue 14, finding 2).
//!
//! - Requests on group ids that do not exist are answered UNKNOWN_GROUP from
//!   the store: no GroupActor is activated for them (before, each one left an
//!   actor alive for `actors.group_idle_ms`).
//! - Actor counts are bounded per node (`actors.max_group_actors`,
//!   `actors.max_session_actors`): one more is refused with UNAVAILABLE and a
//!   hint naming the key, and there is room again once an actor passivates.
//!
//! Every wait is on the actor-count watch or a reply; the manual clock moves
//! only when a test moves it.

use std::time::Duration;

use hush_client::error::ClientError;
use hush_client::http::Token;
use hush_client::ws::WsConn;
use hush_proto::client_frame::Body as C;
use hush_proto::{v1, ErrorCode};
use ring::rand::SecureRandom as _;

mod common;
use common::{client, login, start_node, url, WAIT};

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut id).expect("rng");
    id
}

/// The server's error code for a request that must fail.
async fn error_code(conn: &WsConn, body: C) -> (ErrorCode, String) {
    match tokio::time::timeout(WAIT, conn.request(body))
        .await
        .expect("answer in time")
    {
        Err(ClientError::Server { code, message, .. }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Opens a raw WebSocket with `token` and returns the `Error` frame the
/// node sends before closing it.
async fn first_error(addr: std::net::SocketAddr, token: &str) -> (ErrorCode, String) {
    use futures_util::StreamExt as _;
    use hush_proto::{server_frame::Body as S, Message as _, ServerFrame};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::{http::HeaderValue, Message};
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    let protocols = format!(
        "{}, {}{token}",
        hush_proto::auth::WS_PROTOCOL,
        hush_proto::auth::WS_TOKEN_PREFIX
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("a frame before the end")
            .expect("no protocol error");
        if let Message::Binary(bytes) = msg {
            let frame = ServerFrame::decode(bytes.as_ref()).expect("frame");
            match frame.body {
                Some(S::Error(e)) => {
                    return (ErrorCode::try_from(e.code).expect("code"), e.message)
                }
                other => panic!("expected an Error frame, got {other:?}"),
            }
        }
    }
}

/// Every request that goes to a group's actor, on `group_id`.
fn group_requests(group_id: &[u8]) -> [C; 4] {
    [
        C::SendMessage(v1::SendMessage {
            group_id: group_id.to_vec(),
            client_msg_id: random_id(),
            message: b"not even mls".to_vec(),
        }),
        C::SendCommit(v1::SendCommit {
            group_id: group_id.to_vec(),
            client_msg_id: random_id(),
            commit: b"no commit".to_vec(),
            ..Default::default()
        }),
        C::SendProposal(v1::SendProposal {
            group_id: group_id.to_vec(),
            client_msg_id: random_id(),
            proposal: b"no proposal".to_vec(),
        }),
        C::SendEphemeral(v1::SendEphemeral {
            group_id: group_id.to_vec(),
            message: b"typing".to_vec(),
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_group_ids_leave_no_actor_behind() {
    let (node, _clock, dir) = start_node(|_| {}).await;
    let url = url(&node);
    let mut groups = node.watch_group_actors();
    {
        let mut alice = client(dir.path(), &url, "alice").await;
        // One real group with traffic: its actor is the baseline.
        let gid = alice.create_group("real").await.expect("group").group_id;
        alice
            .send_text(&hex::encode(&gid), "hello")
            .await
            .expect("send");
        tokio::time::timeout(WAIT, groups.wait_for(|n| *n == 1))
            .await
            .expect("the real group's actor")
            .expect("watch");
        groups.borrow_and_update();

        let token = login(&url, &alice.me().expect("identity")).await;
        let conn = WsConn::connect(&url, &Token(token)).await.expect("ws");
        for _ in 0..250 {
            for body in group_requests(&random_id()) {
                let (code, _) = error_code(&conn, body).await;
                assert_eq!(code, ErrorCode::UnknownGroup);
            }
        }
        // 1,000 requests later: not a single activation happened.
        assert!(
            !groups.has_changed().expect("watch"),
            "the actor count moved (now {})",
            *groups.borrow()
        );
        assert_eq!(*groups.borrow(), 1);
        conn.close().await;
        alice.close().await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_counts_are_bounded_with_a_clear_error() {
    let (node, clock, dir) = start_node(|c| {
        c.actors.max_group_actors = 2;
        c.actors.max_session_actors = 1;
        c.actors.lease_ttl_ms = 1_000;
        c.actors.group_idle_ms = 60_000;
        c.actors.presence_grace_ms = 0;
    })
    .await;
    let url = url(&node);
    let mut groups = node.watch_group_actors();
    let mut sessions = node.watch_session_actors();
    {
        // bob registers (and leaves) first: his session is refused below.
        let mut bob = client(dir.path(), &url, "bob").await;
        let bob_token = login(&url, &bob.me().expect("identity")).await;
        bob.close().await;
        tokio::time::timeout(WAIT, sessions.wait_for(|n| *n == 0))
            .await
            .expect("bob's session ends")
            .expect("watch");
        // Group creation needs no actor; the first request to each does.
        let mut alice = client(dir.path(), &url, "alice").await;
        let mut gids = Vec::new();
        for name in ["one", "two", "three"] {
            gids.push(alice.create_group(name).await.expect("group").group_id);
        }
        let token = login(&url, &alice.me().expect("identity")).await;
        // alice's SDK client holds her session: the one this node allows.
        let conn = WsConn::connect(&url, &Token(token)).await.expect("ws");
        let bad_message = |gid: &[u8]| {
            C::SendMessage(v1::SendMessage {
                group_id: gid.to_vec(),
                client_msg_id: random_id(),
                message: vec![0xde, 0xad],
            })
        };
        for gid in &gids[..2] {
            let (code, _) = error_code(&conn, bad_message(gid)).await;
            assert_eq!(code, ErrorCode::Malformed, "the actor answers");
        }
        assert_eq!(*groups.borrow_and_update(), 2);
        let (code, message) = error_code(&conn, bad_message(&gids[2])).await;
        assert_eq!(code, ErrorCode::Unavailable);
        assert!(
            message.contains("actors.max_group_actors"),
            "the hint names the key: {message}"
        );
        assert_eq!(*groups.borrow(), 2);

        // The idle ones passivate; then there is room.
        clock.advance(61_000);
        tokio::time::timeout(WAIT, groups.wait_for(|n| *n == 0))
            .await
            .expect("passivation")
            .expect("watch");
        let (code, _) = error_code(&conn, bad_message(&gids[2])).await;
        assert_eq!(code, ErrorCode::Malformed, "activated now");

        // Sessions: bob's would be the second on a node that allows one.
        let (code, message) = first_error(node.addr, &bob_token).await;
        assert_eq!(code, ErrorCode::Unavailable);
        assert!(
            message.contains("actors.max_session_actors"),
            "the hint names the key: {message}"
        );
        assert_eq!(*sessions.borrow_and_update(), 1, "only alice's session");
        conn.close().await;
        alice.close().await;
        tokio::time::timeout(WAIT, sessions.wait_for(|n| *n == 0))
            .await
            .expect("alice's session ends")
            .expect("watch");
        let bob_conn = WsConn::connect(&url, &Token(bob_token)).await.expect("ws");
        let pong = tokio::time::timeout(
            Duration::from_secs(30),
            bob_conn.request(C::Ping(v1::Ping { nonce: 2 })),
        )
        .await
        .expect("answer in time");
        assert!(pong.is_ok(), "bob fits now: {pong:?}");
        bob_conn.close().await;
    }
    node.stop().await;
}
