//! The SSE stream (`GET /v1/events`) and the HTTP request path
//! (`POST /v1/rpc`), end to end against an in-process node with a
//! [`ManualClock`] on port 0.
//!
//! The SSE client is a small hand-written parser over reqwest's body chunks
//! (the wire is four line types; see ARCHITECTURE.md). Real MLS material
//! comes from the hush-client SDK. Nothing sleeps: every wait is for an
//! event, with a generous timeout as a safety net.

use std::collections::VecDeque;
use std::path::Path;

use base64::Engine as _;
use hush_client::client::Client;
use hush_client::envelope::Envelope;
use hush_client::mls;
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::{v1, ClientFrame, ErrorCode, Message as _, ServerFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod common;
use common::{client, has_text, is_member, login, pump_until, start_node, url, WAIT};

// ---------------------------------------------------------------------------
// SSE client
// ---------------------------------------------------------------------------

/// One SSE event: its id and the ServerFrame its data carries.
#[derive(Debug)]
struct Event {
    id: String,
    frame: ServerFrame,
}

/// A minimal EventSource: parses `id:`, `data:`, `retry:` and comments.
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    ready: VecDeque<Event>,
    retry: Option<u64>,
    comments: usize,
}

async fn sse_request(
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
    last_id: Option<&str>,
) -> reqwest::Response {
    let mut rb = reqwest::Client::new().get(format!("{url}/v1/events"));
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    if let Some(o) = origin {
        rb = rb.header("origin", o);
    }
    if let Some(id) = last_id {
        rb = rb.header("last-event-id", id);
    }
    tokio::time::timeout(WAIT, rb.send())
        .await
        .expect("answer in time")
        .expect("request")
}

impl Sse {
    async fn open(url: &str, token: &str, last_id: Option<&str>) -> Self {
        let resp = sse_request(url, Some(token), None, last_id).await;
        assert_eq!(resp.status().as_u16(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-accel-buffering"], "no");
        Self {
            resp,
            buf: Vec::new(),
            ready: VecDeque::new(),
            retry: None,
            comments: 0,
        }
    }

    /// The next event; `None` when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("event in time")
                .ok()??;
            self.buf.extend_from_slice(&chunk);
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                self.parse_block(&String::from_utf8(block).expect("utf-8"));
            }
        }
    }

    fn parse_block(&mut self, block: &str) {
        let (mut id, mut data) = (None, String::new());
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            } else if let Some(v) = line.strip_prefix("retry: ") {
                self.retry = Some(v.parse().expect("retry is a number"));
            } else if !line.is_empty() {
                panic!("unexpected SSE line {line:?}");
            }
        }
        if data.is_empty() {
            return;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .expect("data is base64");
        let frame = ServerFrame::decode(bytes.as_slice()).expect("data is a ServerFrame");
        self.ready.push_back(Event {
            id: id.expect("every event has an id"),
            frame,
        });
    }

    /// Events up to and including SyncCaughtUp.
    async fn until_caught_up(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let e = self.next().await.expect("stream open");
            let done = matches!(e.frame.body, Some(S::SyncCaughtUp(_)));
            out.push(e);
            if done {
                return out;
            }
        }
    }
}

fn group_seqs(events: &[Event], gid: &[u8]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.frame.body {
            Some(S::GroupEvent(g)) if g.group_id == gid => Some(g.seq),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// RPC client
// ---------------------------------------------------------------------------

/// POSTs a ClientFrame; returns the HTTP status and the ServerFrame (if any).
async fn rpc_raw(
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<ServerFrame>) {
    let mut rb = reqwest::Client::new()
        .post(format!("{url}/v1/rpc"))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    if let Some(o) = origin {
        rb = rb.header("origin", o);
    }
    let resp = tokio::time::timeout(WAIT, rb.send())
        .await
        .expect("answer in time")
        .expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    if status == 204 {
        assert!(bytes.is_empty());
        return (status, None);
    }
    let frame = ServerFrame::decode(bytes.as_ref()).expect("a ServerFrame body");
    (status, Some(frame))
}

async fn rpc(url: &str, token: &str, request_id: u64, body: C) -> (u16, Option<ServerFrame>) {
    let frame = ClientFrame {
        request_id,
        body: Some(body),
    };
    rpc_raw(url, Some(token), None, frame.encode_to_vec()).await
}

fn error_code(frame: &ServerFrame) -> ErrorCode {
    match &frame.body {
        Some(S::Error(e)) => ErrorCode::try_from(e.code).expect("known code"),
        other => panic!("expected an Error, got {other:?}"),
    }
}

/// alice (SDK over WebSocket) with a group that bob (SDK) joined; bob's
/// SDK connection is closed afterwards, so his device's stored cursor stays
/// at what it acknowledged.
async fn pair(dir: &Path, url: &str) -> (Client, Client, Vec<u8>) {
    let mut alice = client(dir, url, "alice").await;
    let mut bob = client(dir, url, "bob").await;
    let gid = alice.create_group("room").await.expect("group").group_id;
    alice
        .add_members(&hex::encode(&gid), &["bob".to_string()])
        .await
        .expect("add bob")
        .expect("bob added");
    pump_until(&mut bob, "bob's welcome", |c| is_member(c, &gid)).await;
    bob.close().await;
    (alice, bob, gid)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A stream that drops after k events and resumes with Last-Event-ID gets
/// the rest exactly once, in order, then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_last_event_id_is_exactly_once() {
    let (node, _clock, dir) = start_node(|_| {}).await;
    {
        let url = url(&node);
        let (mut alice, bob, gid) = pair(dir.path(), &url).await;
        let g = hex::encode(&gid);
        let mut sent = Vec::new();
        for i in 0..10 {
            sent.push(alice.send_text(&g, &format!("m{i}")).await.expect("send"));
        }
        let token = login(&url, &bob.me().expect("bob")).await;

        // The full backlog, for reference.
        let mut full = Sse::open(&url, &token, None).await;
        let all = full.until_caught_up().await;
        assert_eq!(full.retry, Some(hush_node::gateway::sse::RETRY_MS));
        let mut expected = group_seqs(&all, &gid);
        assert!(expected.ends_with(&sent), "{expected:?} vs {sent:?}");
        drop(full);

        for k in [1, 3, 6] {
            let mut first = Sse::open(&url, &token, None).await;
            let mut got = Vec::new();
            let mut last_id = String::new();
            while got.len() < k {
                let e = first.next().await.expect("stream open");
                last_id = e.id.clone();
                got.extend(group_seqs(std::slice::from_ref(&e), &gid));
            }
            drop(first);
            let mut second = Sse::open(&url, &token, Some(&last_id)).await;
            let rest = second.until_caught_up().await;
            got.extend(group_seqs(&rest, &gid));
            assert_eq!(got, expected, "k = {k}");

            // Live events continue on the resumed stream, once.
            let live = alice
                .send_text(&g, &format!("live{k}"))
                .await
                .expect("send");
            loop {
                let e = second.next().await.expect("stream open");
                let seqs = group_seqs(std::slice::from_ref(&e), &gid);
                if seqs.is_empty() {
                    continue;
                }
                assert_eq!(seqs, vec![live]);
                break;
            }
            // A stream from scratch (bob never acknowledged) now has it too.
            expected.push(live);
        }
    }
    node.stop().await;
}

/// Two groups with unacknowledged events: a stream dropped in the middle of
/// the second group's backlog resumes without resending the first group
/// (the id carries every group sent past its acknowledged cursor, not only
/// the group of the last event), and acks shrink the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_groups_doubles_nothing() {
    let (node, _clock, dir) = start_node(|_| {}).await;
    {
        let url = url(&node);
        let (mut alice, mut bob, g1) = pair(dir.path(), &url).await;
        bob.connect().await.expect("bob reconnects");
        let g2 = alice.create_group("second").await.expect("group").group_id;
        alice
            .add_members(&hex::encode(&g2), &["bob".to_string()])
            .await
            .expect("add bob")
            .expect("bob added");
        pump_until(&mut bob, "bob's second welcome", |c| is_member(c, &g2)).await;
        bob.close().await;
        let (mut sent1, mut sent2) = (Vec::new(), Vec::new());
        for i in 0..4 {
            for (gid, sent) in [(&g1, &mut sent1), (&g2, &mut sent2)] {
                let seq = alice
                    .send_text(&hex::encode(gid), &format!("m{i}"))
                    .await
                    .expect("send");
                sent.push(seq);
            }
        }
        let token = login(&url, &bob.me().expect("bob")).await;
        let mut full = Sse::open(&url, &token, None).await;
        let all = full.until_caught_up().await;
        drop(full);
        let (all1, all2) = (group_seqs(&all, &g1), group_seqs(&all, &g2));
        // The backlog ends with what alice sent. It may also start with an
        // entry bob read before but whose ack the node had not yet stored
        // when this stream began (his close does not wait for that).
        assert!(all1.ends_with(&sent1), "{all1:?} vs {sent1:?}");
        assert!(all2.ends_with(&sent2), "{all2:?} vs {sent2:?}");

        // Drop right after the first event of whichever group comes second.
        let mut first = Sse::open(&url, &token, None).await;
        let mut events = Vec::new();
        loop {
            let e = first.next().await.expect("stream open");
            let seen1 = !group_seqs(&events, &g1).is_empty();
            let seen2 = !group_seqs(&events, &g2).is_empty();
            let is1 = !group_seqs(std::slice::from_ref(&e), &g1).is_empty();
            let is2 = !group_seqs(std::slice::from_ref(&e), &g2).is_empty();
            events.push(e);
            if (is2 && seen1) || (is1 && seen2) {
                break;
            }
        }
        drop(first);
        let last_id = events.last().expect("events").id.clone();
        let mut second = Sse::open(&url, &token, Some(&last_id)).await;
        events.extend(second.until_caught_up().await);
        assert_eq!(group_seqs(&events, &g1), all1);
        assert_eq!(group_seqs(&events, &g2), all2);
        drop(second);

        // After bob acknowledges everything over RPC, the id carries no
        // group and a resume from scratch sends nothing.
        for (gid, seqs) in [(&g1, &all1), (&g2, &all2)] {
            let ack = C::Ack(v1::Ack {
                group_id: gid.to_vec(),
                seq: *seqs.last().expect("seqs"),
            });
            assert_eq!(rpc(&url, &token, 0, ack).await.0, 204);
        }
        let mut third = Sse::open(&url, &token, Some(&last_id)).await;
        let rest = third.until_caught_up().await;
        assert!(group_seqs(&rest, &g1).is_empty() && group_seqs(&rest, &g2).is_empty());
        let id = &rest.last().expect("caught up").id;
        assert!(!id.contains(':'), "acknowledged groups left the id: {id}");
    }
    node.stop().await;
}

/// bob sends and receives over HTTP + SSE (his MLS state from the SDK),
/// alice over the WebSocket SDK client: they converse normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_group_converses() {
    let (node, _clock, dir) = start_node(|_| {}).await;
    {
        let url = url(&node);
        let (mut alice, bob, gid) = pair(dir.path(), &url).await;
        let g = hex::encode(&gid);
        let b_id = bob.me().expect("bob");
        let token = login(&url, &b_id).await;
        let mut sse = Sse::open(&url, &token, None).await;
        sse.until_caught_up().await;

        for round in 0..3 {
            // alice -> bob over SSE.
            let text = format!("hi bob {round}");
            let seq = alice.send_text(&g, &text).await.expect("send");
            let ev = loop {
                let e = sse.next().await.expect("stream open");
                if let Some(S::GroupEvent(ev)) = e.frame.body {
                    break ev;
                }
            };
            assert_eq!(ev.seq, seq);
            match mls::process(bob.db(), &gid, &ev.message, |_| Ok(())).expect("bob decrypts") {
                mls::Processed::Application { plaintext, .. } => {
                    match Envelope::decode(&plaintext).expect("envelope") {
                        Envelope::Text { body, .. } => assert_eq!(body, text),
                        _ => panic!("not a text"),
                    }
                }
                _ => panic!("not an application message"),
            }
            let (status, none) = rpc(
                &url,
                &token,
                0,
                C::Ack(v1::Ack {
                    group_id: gid.clone(),
                    seq,
                }),
            )
            .await;
            assert_eq!((status, none.is_none()), (204, true));

            // bob -> alice over RPC; a retry with the same client_msg_id is
            // the same message.
            let reply = format!("hi alice {round}");
            let plaintext = Envelope::Text {
                body: reply.clone(),
                ts: 1,
            }
            .encode();
            let message = mls::encrypt(bob.db(), &b_id, &gid, &plaintext).expect("encrypt");
            let send = C::SendMessage(v1::SendMessage {
                group_id: gid.clone(),
                client_msg_id: vec![round as u8 + 1; 16],
                message,
            });
            let (status, frame) = rpc(&url, &token, 7, send.clone()).await;
            assert_eq!(status, 200);
            let frame = frame.expect("reply");
            assert_eq!(frame.request_id, 7);
            let Some(S::MessageAccepted(first)) = frame.body else {
                panic!("{frame:?}")
            };
            let (_, again) = rpc(&url, &token, 8, send).await;
            let Some(S::MessageAccepted(again)) = again.expect("reply").body else {
                panic!("retry not accepted")
            };
            assert_eq!(first.seq, again.seq, "a retry is idempotent");
            pump_until(&mut alice, &reply, |c| has_text(c, &gid, &reply)).await;
            // bob's own message comes back on his stream, once.
            loop {
                let e = sse.next().await.expect("stream open");
                if let Some(S::GroupEvent(ev)) = e.frame.body {
                    assert_eq!(ev.seq, first.seq);
                    mls::process(bob.db(), &gid, &ev.message, |_| Ok(())).expect("own message");
                    break;
                }
            }
        }
    }
    node.stop().await;
}

/// Missing auth, a bad token, a bad Origin and junk bodies get the right
/// codes and statuses on both endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_origin_and_bodies() {
    let (node, _clock, dir) = start_node(|c| {
        c.gateway.allowed_origins = vec!["https://chat.example".into()];
    })
    .await;
    {
        let url = url(&node);
        let alice = client(dir.path(), &url, "alice").await;
        let token = login(&url, &alice.me().expect("alice")).await;

        let code_of = |bytes: &[u8]| {
            ErrorCode::try_from(v1::Error::decode(bytes).expect("an Error body").code)
                .expect("known code")
        };
        for (tok, origin, status, code) in [
            (None, None, 401, ErrorCode::Unauthenticated),
            (Some("not-a-token"), None, 401, ErrorCode::BadToken),
            (
                Some(token.as_str()),
                Some("https://evil.example"),
                403,
                ErrorCode::BadOrigin,
            ),
        ] {
            let resp = sse_request(&url, tok, origin, None).await;
            assert_eq!(resp.status().as_u16(), status, "{code:?}");
            assert_eq!(code_of(&resp.bytes().await.expect("body")), code);

            let ping = ClientFrame {
                request_id: 3,
                body: Some(C::Ping(v1::Ping { nonce: 1 })),
            };
            let (s, frame) = rpc_raw(&url, tok, origin, ping.encode_to_vec()).await;
            assert_eq!(s, status, "{code:?}");
            assert_eq!(error_code(&frame.expect("error frame")), code);
        }
        // The allowed Origin works; so does no Origin (non-browser clients).
        let resp = sse_request(&url, Some(&token), Some("https://chat.example"), None).await;
        assert_eq!(resp.status().as_u16(), 200);
        drop(resp);
        let (s, frame) = rpc(&url, &token, 9, C::Ping(v1::Ping { nonce: 5 })).await;
        assert_eq!(s, 200);
        let frame = frame.expect("pong");
        assert_eq!(frame.request_id, 9);
        assert!(matches!(frame.body, Some(S::Pong(v1::Pong { nonce: 5 }))));

        // A bad Last-Event-ID, junk bodies, Sync over RPC.
        let resp = sse_request(&url, Some(&token), None, Some("v9.x")).await;
        assert_eq!(resp.status().as_u16(), 400);
        assert_eq!(
            code_of(&resp.bytes().await.expect("body")),
            ErrorCode::Malformed
        );
        let huge = vec![0u8; 2 * 1024 * 1024];
        let (s, frame) = rpc_raw(&url, Some(&token), None, huge).await;
        assert_eq!(
            (s, error_code(&frame.expect("error"))),
            (413, ErrorCode::TooLarge)
        );
        let (s, frame) = rpc_raw(&url, Some(&token), None, vec![0xff, 0xff, 0xff]).await;
        assert_eq!(
            (s, error_code(&frame.expect("error"))),
            (400, ErrorCode::Malformed)
        );
        let (s, frame) = rpc(&url, &token, 4, C::Sync(v1::Sync::default())).await;
        let frame = frame.expect("error");
        assert_eq!((s, error_code(&frame)), (400, ErrorCode::InvalidArgument));
        assert_eq!(frame.request_id, 4);
        let (s, frame) = rpc(
            &url,
            &token,
            5,
            C::GetGroupInfo(v1::GetGroupInfo {
                group_id: vec![1; 16],
            }),
        )
        .await;
        assert_eq!(
            (s, error_code(&frame.expect("error"))),
            (404, ErrorCode::UnknownGroup)
        );
    }
    node.stop().await;
}

/// RPC requests share one rate limit per device (like a connection's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_is_rate_limited_per_device() {
    let (node, clock, dir) = start_node(|c| {
        // Room for registering (its connect uploads KeyPackages and syncs
        // over the same per-device budget).
        c.limits.rate_burst = 10.0;
        c.limits.rate_per_sec = 1.0;
    })
    .await;
    {
        let url = url(&node);
        let alice = client(dir.path(), &url, "alice").await;
        let token = login(&url, &alice.me().expect("alice")).await;
        // Refilled to the burst, whatever registering spent.
        clock.advance(20_000);
        for _ in 0..10 {
            let (s, _) = rpc(&url, &token, 1, C::Ping(v1::Ping { nonce: 1 })).await;
            assert_eq!(s, 200);
        }
        let (s, frame) = rpc(&url, &token, 1, C::Ping(v1::Ping { nonce: 1 })).await;
        assert_eq!(
            (s, error_code(&frame.expect("error"))),
            (429, ErrorCode::RateLimited)
        );
        clock.advance(2_000);
        let (s, _) = rpc(&url, &token, 1, C::Ping(v1::Ping { nonce: 1 })).await;
        assert_eq!(s, 200);
    }
    node.stop().await;
}

/// An SSE stream whose reader stops draining is cut off, the writer moves
/// on, and the stream ends instead of growing memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_draining_stream_is_cut_off() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_message_bytes = 128 * 1024;
        c.limits.send_buffer_frames = 4;
        c.limits.write_timeout_ms = 300;
        // bob's session ends with his only stream (the signal below), not
        // after a presence grace period.
        c.actors.presence_grace_ms = 0;
    })
    .await;
    {
        let url = url(&node);
        let (mut alice, bob, gid) = pair(dir.path(), &url).await;
        let g = hex::encode(&gid);
        let token = login(&url, &bob.me().expect("bob")).await;
        let mut sessions = node.watch_session_actors();
        // bob's WebSocket from `pair` is gone (only alice's session is
        // left), so the stream below is bob's only connection.
        tokio::time::timeout(WAIT, sessions.wait_for(|n| *n == 1))
            .await
            .expect("bob's websocket detached")
            .expect("watch");

        // A raw reader with a small receive buffer that never reads.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(8 * 1024).expect("rcvbuf");
        let mut raw = socket.connect(node.addr).await.expect("connect");
        let req =
            format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        raw.write_all(req.as_bytes()).await.expect("request");
        // alice's and bob's sessions are both up once the stream attached.
        tokio::time::timeout(WAIT, sessions.wait_for(|n| *n == 2))
            .await
            .expect("bob's stream attached")
            .expect("watch");

        let big = "x".repeat(64 * 1024);
        let mut sent = 0;
        while *sessions.borrow() == 2 {
            assert!(sent < 400, "the stream was never cut off");
            alice.send_text(&g, &big).await.expect("send");
            sent += 1;
        }
        // The stream ended: reading drains what was buffered, then EOF.
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, raw.read_to_end(&mut got))
            .await
            .expect("EOF in time")
            .expect("read");
        let events = got.windows(4).filter(|w| w == b"id: ").count();
        assert!(events < sent + 3, "cut before everything was written");
        assert!(got.starts_with(b"HTTP/1.1 200"));
    }
    node.stop().await;
}

/// The SDK builds `Last-Event-ID` from its cursors to (re)open a stream as
/// a Sync: the node parses it as the groups and inbox position meant.
#[test]
fn client_resume_ids_parse_on_the_node() {
    use hush_node::gateway::sse::ResumeId;
    let cursor = |g: &[u8], s| v1::Cursor {
        group_id: g.to_vec(),
        after_seq: s,
    };
    let id = hush_client::sse::resume_id(
        3,
        &[
            cursor(b"g1", 5),
            cursor(&[0xff, 0x2e, b':'], 9),
            cursor(b"z", 0),
        ],
    );
    let parsed = ResumeId::parse(&id).expect("the node parses the client's id");
    assert_eq!(parsed.inbox_seq, 3);
    assert_eq!(
        parsed.groups.into_iter().collect::<Vec<_>>(),
        vec![(b"g1".to_vec(), 5), (vec![0xff, 0x2e, b':'], 9)]
    );
}
