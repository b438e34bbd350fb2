//! Overload is a fault too (issue 15): with tiny send bounds in `[limits]`,
//! a node flooded with concurrent sends from real WebSocket clients (the
//! SDK, real MLS) refuses early — RATE_LIMITED or UNAVAILABLE, each with a
//! `retry_after_ms` hint — and loses nothing it acknowledged: every
//! acknowledged message is stored exactly once, seqs are dense, every member
//! gets every message, and the send-path depths never pass their bounds. A
//! reader that stops reading is closed with 4001 while everyone else keeps
//! receiving.
//!
//! Behaviour, not timing: while the flood starts, the test holds the
//! store file's write lock from a connection of its own (a stalled disk), so
//! no send completes and the sends past the bounds are refused whatever the
//! relative speed of the clients and the store; the lock goes once the
//! first refusal is seen. (Without it, a store quicker than the clients'
//! encryption finished every send before the next arrived, and about one
//! run in ten saw no refusal.) The only sleeps are the clients' own waits
//! for the server's retry hint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::{join, join_all};
use futures_util::SinkExt as _;
use hush_client::client::Client;
use hush_client::error::ClientError;
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::{v1, ClientFrame, ErrorCode, Message as _};
use hush_store::EntryKind;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{
    client, is_member, login, next_frame, processed_to, pump_until, raw_ws, raw_ws_authed,
    start_node, url, RawWs, WAIT,
};

const MEMBERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
/// Messages each member sends per flood round.
const PER_ROUND: usize = 6;

const INFLIGHT: usize = 3;
const PER_GROUP: usize = 2;
const QUEUED: usize = 16;
const RETRY_MS: u64 = 5;
/// The most the hint may grow to under the tests' pressure.
const RETRY_MAX_MS: u64 = 40;
const CLOSE_SLOW_CONSUMER: u16 = 4001;

#[derive(Default)]
struct Flooded {
    /// (seq, text) of every acknowledged message.
    acked: Vec<(u64, String)>,
    /// (code, retry_after_ms) of every refusal the caller saw.
    refused: Vec<(ErrorCode, Option<u64>)>,
}

/// `PER_ROUND` texts from one member; a refused one waits out the hint and
/// goes again (the SDK itself resends under the same id when it may retry).
/// Each refusal is told to `refusals`.
async fn flood(c: &mut Client, g: &str, who: usize, refusals: &Notify) -> Flooded {
    let mut out = Flooded::default();
    for k in 0..PER_ROUND {
        let text = format!("{who}-{k}");
        loop {
            match c.send_text(g, &text).await {
                Ok(seq) => {
                    out.acked.push((seq, text));
                    break;
                }
                Err(ClientError::Server {
                    code: code @ (ErrorCode::RateLimited | ErrorCode::Unavailable),
                    retry_after_ms,
                    ..
                }) => {
                    out.refused.push((code, retry_after_ms));
                    refusals.notify_one();
                    // The client's backoff: wait what the server asked.
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.unwrap_or(1))).await;
                }
                Err(e) => panic!("{text}: {e}"),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_node_refuses_early_and_loses_nothing_acknowledged() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_inflight_sends = INFLIGHT;
        c.limits.max_pending_per_group = PER_GROUP;
        c.limits.max_queued_deliveries = QUEUED;
        // A slow reader's queue counts 4 of its frames: it alone cannot
        // refuse the group's sends (phase 2).
        c.limits.max_queued_deliveries_per_conn = 4;
        c.limits.overload_retry_after_ms = RETRY_MS;
        c.limits.overload_retry_after_max_ms = RETRY_MAX_MS;
        // Phase 2: a slow reader (bob's second connection) among big messages.
        c.limits.max_connections_per_user = 2;
        c.limits.max_message_bytes = 128 * 1024;
        // The reader is cut by its queue (64 frames), not by a write timing
        // out: its task still holds the socket, so the close frame goes out
        // once the reader reads again. (A write that times out drops a
        // reader that never reads again without a close frame: it could
        // not take one.)
        c.limits.send_buffer_frames = 64;
        c.limits.write_timeout_ms = 60_000;
        // The slow reader never answers pings; keep the heartbeat out of it.
        c.limits.heartbeat_interval_ms = 300_000;
        c.limits.heartbeat_timeout_ms = 600_000;
    })
    .await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let mut clients = Vec::new();
        for name in MEMBERS {
            clients.push(client(dir.path(), &url, name).await);
        }
        let gid = clients[0]
            .create_group("flood")
            .await
            .expect("group")
            .group_id;
        let g = hex::encode(&gid);
        let others: Vec<String> = MEMBERS[1..].iter().map(|s| s.to_string()).collect();
        clients[0]
            .add_members(&g, &others)
            .await
            .expect("add")
            .expect("added");
        for c in &mut clients[1..] {
            pump_until(c, "welcome", |c| is_member(c, &gid)).await;
        }
        let base = clients[0]
            .send_text(&g, "before the flood")
            .await
            .expect("send");
        // Every member but bob sees each refusal itself; bob's SDK waits
        // out the hint and resends under the same client_msg_id.
        for (i, c) in clients.iter_mut().enumerate() {
            if i != 1 {
                c.set_transient_retries(0);
            }
        }

        // --- phase 1: everyone sends at once, the store stalled ---
        // Another connection holds the file's write lock (well within the
        // node's 5 s busy timeout): the first sends stay pending, and the
        // ones past the bounds are refused. The lock goes at the first
        // refusal; the refused sends are then resent after their hint.
        let held = rusqlite::Connection::open(dir.path().join("node/hush.sqlite")).expect("db");
        held.busy_timeout(WAIT).expect("busy timeout");
        held.execute_batch("BEGIN IMMEDIATE").expect("write lock");
        let refusals = Notify::new();
        let release = async {
            refusals.notified().await;
            held.execute_batch("ROLLBACK").expect("unlock");
        };
        let floods = clients
            .iter_mut()
            .enumerate()
            .map(|(who, c)| flood(c, &g, who, &refusals));
        let (rounds, ()) = join(join_all(floods), release).await;
        let mut acked: Vec<(u64, String)> = Vec::new();
        let mut refused: Vec<(ErrorCode, Option<u64>)> = Vec::new();
        for r in rounds {
            acked.extend(r.acked);
            refused.extend(r.refused);
        }
        assert!(!refused.is_empty(), "the node never refused a send");
        // Refused by admission at its bounds (not, say, by the store's busy
        // timeout while the lock was held).
        let (peaks, _) = node.admission_peaks();
        assert!(
            peaks.pending_per_group == PER_GROUP || peaks.inflight_sends == INFLIGHT,
            "refused before a bound was reached: {peaks:?}"
        );
        for (code, hint) in &refused {
            assert!(
                matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable),
                "{code:?}"
            );
            assert!(
                hint.is_some_and(|h| (RETRY_MS..=RETRY_MAX_MS).contains(&h)),
                "a refusal carries the retry hint: {hint:?}"
            );
        }

        // Every acknowledged message is stored exactly once, seqs dense:
        // the acked seqs are exactly the ones after `base`.
        let seqs: BTreeSet<u64> = acked.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs.len(), acked.len(), "a seq was acknowledged twice");
        let last = base + acked.len() as u64;
        assert_eq!(seqs, (base + 1..=last).collect::<BTreeSet<u64>>());
        let stored = node
            .store()
            .read_timeline(&gid, base, 100_000)
            .await
            .expect("timeline");
        assert_eq!(
            stored.iter().map(|e| e.seq).collect::<BTreeSet<u64>>(),
            seqs,
            "the store holds exactly the acknowledged messages"
        );
        assert!(stored.iter().all(|e| e.kind == EntryKind::Application));
        let ids: BTreeSet<&[u8]> = stored.iter().map(|e| e.client_msg_id.as_slice()).collect();
        assert_eq!(ids.len(), stored.len(), "a message was stored twice");

        // ...and reaches every member, once.
        let want: BTreeMap<u64, &str> = acked.iter().map(|(s, t)| (*s, t.as_str())).collect();
        for c in &mut clients {
            pump_until(c, "every acknowledged message", |c| {
                processed_to(c, &gid, last)
            })
            .await;
            let got: BTreeMap<u64, String> = c
                .db()
                .recent_log(&gid, 100_000)
                .expect("log")
                .into_iter()
                .filter(|l| l.kind == "text" && l.seq > base)
                .map(|l| (l.seq, l.body))
                .collect();
            let got: BTreeMap<u64, &str> = got.iter().map(|(s, t)| (*s, t.as_str())).collect();
            assert_eq!(got, want);
        }

        // The depths never passed their bounds, and every place came back.
        // (Fan-out is admitted while the queue is under its bound, so the
        // queue may pass it by at most one fan-out per send in flight.)
        let (peaks, inflight) = node.admission_peaks();
        assert!(peaks.inflight_sends <= INFLIGHT, "{peaks:?}");
        assert!(peaks.pending_per_group <= PER_GROUP, "{peaks:?}");
        assert!(
            peaks.queued_deliveries <= QUEUED + INFLIGHT * MEMBERS.len(),
            "{peaks:?}"
        );
        assert!(peaks.inflight_sends >= 1 && peaks.pending_per_group >= 1);
        assert_eq!(inflight, 0, "a send's place was never given back");

        // --- phase 2: a reader that stops reading ---
        let bob_id = clients[1].me().expect("bob");
        let token = login(&url, &bob_id).await;
        let mut slow = raw_ws_authed(node.addr, &token, Some(8 * 1024)).await;
        let sync = ClientFrame {
            request_id: 1,
            body: Some(C::Sync(v1::Sync::default())),
        };
        slow.send(Message::binary(sync.encode_to_vec()))
            .await
            .expect("sync");
        while !matches!(
            next_frame(&mut slow).await.map(|f| f.body),
            Ok(Some(S::SyncCaughtUp(_)))
        ) {}

        // alice posts 64 KiB messages in batches; after each, carol has
        // all of them (the group does not wait for the slow reader), then a
        // probe asks for a third connection of bob's: refused
        // (TOO_MANY_CONNECTIONS) while the slow one is attached, accepted
        // once the node cut it off.
        let filler = "x".repeat(64 * 1024);
        let mut big = 0usize;
        let mut probe = loop {
            assert!(big < 2_000, "the slow reader was never cut off");
            let mut top = 0;
            for _ in 0..10 {
                let text = format!("big {big} {filler}");
                big += 1;
                top = clients[0].send_text(&g, &text).await.expect("big send");
            }
            pump_until(&mut clients[2], "carol keeps receiving", |c| {
                processed_to(c, &gid, top)
            })
            .await;
            let mut p = raw_ws(node.addr, &token, None).await;
            match next_frame(&mut p).await.map(|f| f.body) {
                Ok(Some(S::AuthOk(_))) => break p,
                Ok(Some(S::Error(e))) => {
                    assert_eq!(e.error_code(), ErrorCode::TooManyConnections);
                }
                other => panic!("probe: unexpected {other:?}"),
            }
        };
        // The slow reader drains what was in flight, then finds the close.
        let close = loop {
            match next_frame(&mut slow).await {
                Ok(_) => continue,
                Err(code) => break code,
            }
        };
        assert_eq!(close, Some(CLOSE_SLOW_CONSUMER), "the slow reader's close");
        // Everyone else carries on.
        let ping = ClientFrame {
            request_id: 7,
            body: Some(C::Ping(v1::Ping { nonce: 7 })),
        };
        probe
            .send(Message::binary(ping.encode_to_vec()))
            .await
            .expect("ping");
        loop {
            let f = next_frame(&mut probe).await.expect("probe served");
            if f.request_id == 7 {
                assert!(matches!(f.body, Some(S::Pong(_))));
                break;
            }
        }
        let after = clients[0]
            .send_text(&g, "after the cut")
            .await
            .expect("send");
        for c in &mut clients[1..] {
            pump_until(c, "after the cut", |c| processed_to(c, &gid, after)).await;
        }
    }
    node.stop().await;
}

/// Rounds of `BURST` pipelined KeyPackageCount requests on every connection
/// at once (all written before any answer is read), until a round shows a
/// refusal (a safety cap bounds them): whether a frame arrives while
/// another waits is the scheduler's. Every request is answered once, under
/// its own id, with the count or with a refusal that `check` accepts.
/// Returns the refusals.
async fn burst_until_refused(conns: &mut [RawWs], check: impl Fn(&v1::Error)) -> usize {
    let key_package_count = || C::KeyPackageCount(v1::KeyPackageCount::default());
    burst_of_until_refused(conns, key_package_count, |e| {
        check(e);
        true
    })
    .await
}

/// [`burst_until_refused`] with requests made by `body`; an error answer
/// is a refusal when `refusal` says so (it asserts what it must), else one
/// of the request's own answers.
async fn burst_of_until_refused(
    conns: &mut [RawWs],
    body: impl Fn() -> C,
    refusal: impl Fn(&v1::Error) -> bool,
) -> usize {
    const BURST: u64 = 64;
    let mut refused = 0;
    for round in 0..20u64 {
        let mut rounds = Vec::new();
        for (k, ws) in conns.iter_mut().enumerate() {
            let ids: BTreeSet<u64> = (1..=BURST)
                .map(|i| (round * 100 + k as u64) * 1_000 + i)
                .collect();
            for id in &ids {
                let f = ClientFrame {
                    request_id: *id,
                    body: Some(body()),
                };
                ws.feed(Message::binary(f.encode_to_vec()))
                    .await
                    .expect("feed");
            }
            ws.flush().await.expect("flush");
            rounds.push(ids);
        }
        for (ws, ids) in conns.iter_mut().zip(rounds) {
            let mut answered = BTreeSet::new();
            while answered.len() < ids.len() {
                let f = next_frame(ws).await.expect("the connection stays open");
                if f.request_id == 0 {
                    continue; // a push
                }
                assert!(ids.contains(&f.request_id), "{:?}", f.body);
                assert!(
                    answered.insert(f.request_id),
                    "answered twice: {}",
                    f.request_id
                );
                match f.body {
                    Some(S::KeyPackageCountResult(_)) => {}
                    Some(S::Error(e)) if refusal(&e) => {
                        assert!(
                            (RETRY_MS..=RETRY_MAX_MS).contains(&e.retry_after_ms),
                            "{e:?}"
                        );
                        refused += 1;
                    }
                    Some(S::Error(_)) => {}
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }
        if refused > 0 {
            break;
        }
    }
    refused
}

/// A request after refusals is still served.
async fn still_served(ws: &mut RawWs) {
    let f = ClientFrame {
        request_id: 7,
        body: Some(C::KeyPackageCount(v1::KeyPackageCount::default())),
    };
    ws.send(Message::binary(f.encode_to_vec()))
        .await
        .expect("send");
    loop {
        let f = next_frame(ws).await.expect("open");
        if f.request_id == 7 {
            assert!(
                matches!(f.body, Some(S::KeyPackageCountResult(_))),
                "{:?}",
                f.body
            );
            break;
        }
    }
}

/// An authenticated raw WebSocket of a new user `name`.
async fn authed_ws(node: &hush_node::RunningNode, dir: &std::path::Path, name: &str) -> RawWs {
    let url = url(node);
    let c = client(dir, &url, name).await;
    let token = login(&url, &c.me().expect("registered")).await;
    raw_ws_authed(node.addr, &token, None).await
}

/// What the burst tests share: the overload hint's bounds they check, and
/// the per-connection request rate (an abuse limit) out of their way.
fn burst_limits(c: &mut hush_node::Config) {
    c.limits.overload_retry_after_ms = RETRY_MS;
    c.limits.overload_retry_after_max_ms = RETRY_MAX_MS;
    c.limits.rate_per_sec = 1_000_000.0;
    c.limits.rate_burst = 1_000_000.0;
}

/// A connection keeps reading while its requests wait: a client that sends
/// many frames without waiting for answers gets each one answered under its
/// own request id, and past `max_pipelined_requests` in flight the excess is
/// refused at once (RATE_LIMITED with the hint) instead of piling up unread
/// in the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refuses_requests_past_its_pipeline_and_answers_the_rest() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_pipelined_requests = 2;
        burst_limits(c);
    })
    .await;
    {
        let mut ws = [authed_ws(&node, dir.path(), "alice").await];
        let refused = burst_until_refused(&mut ws, |e| {
            assert_eq!(e.code, ErrorCode::RateLimited as i32, "{e:?}");
            assert!(e.message.contains("on this connection"), "{e:?}");
        })
        .await;
        assert!(refused > 0, "no request was ever refused past the pipeline");
        still_served(&mut ws[0]).await;
    }
    node.stop().await;
}

/// Past `max_inflight_requests` on the whole node, requests are refused
/// UNAVAILABLE with the hint, though no connection is past its own
/// pipeline: the node-wide bound over every connection's pipeline (the
/// memory of requests and answers waiting is bounded by it, not by the
/// number of connections). Each connection is served again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_requests_past_its_bound_over_all_connections() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_pipelined_requests = 1_000;
        c.limits.max_inflight_requests = 3;
        burst_limits(c);
    })
    .await;
    {
        let mut conns = Vec::new();
        for name in ["alice", "bob", "carol"] {
            conns.push(authed_ws(&node, dir.path(), name).await);
        }
        let refused = burst_until_refused(&mut conns, |e| {
            assert_eq!(e.code, ErrorCode::Unavailable as i32, "{e:?}");
            assert!(e.message.contains("requests in flight"), "{e:?}");
        })
        .await;
        assert!(
            refused > 0,
            "no request was ever refused past the node's bound"
        );
        for ws in &mut conns {
            still_served(ws).await;
        }
        let (peaks, _) = node.admission_peaks();
        assert!(
            (1..=3).contains(&peaks.inflight_requests),
            "the bound held: {peaks:?}"
        );
    }
    node.stop().await;
}

/// Acks run outside a connection's pipeline (answered only when refused),
/// but each still takes a place in the node's request bound: past
/// `max_inflight_requests` they are refused UNAVAILABLE with the hint, never
/// RATE_LIMITED by the pipeline (64 at once here, past its default 32).
/// Each ack names no group, so every one admitted is answered too
/// (INVALID_ARGUMENT, through the connection's queue): every ack of a burst
/// has its answer, under its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_take_places_in_the_nodes_request_bound_not_in_the_pipeline() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_inflight_requests = 3;
        burst_limits(c);
    })
    .await;
    {
        let mut ws = [authed_ws(&node, dir.path(), "alice").await];
        let refused = burst_of_until_refused(
            &mut ws,
            || C::Ack(v1::Ack::default()),
            |e| match ErrorCode::try_from(e.code) {
                Ok(ErrorCode::Unavailable) => {
                    assert!(e.message.contains("requests in flight"), "{e:?}");
                    true
                }
                Ok(ErrorCode::InvalidArgument) => false,
                _ => panic!("an ack answered {e:?}"),
            },
        )
        .await;
        assert!(refused > 0, "no ack was ever refused past the node's bound");
        still_served(&mut ws[0]).await;
        let (peaks, _) = node.admission_peaks();
        assert!(
            (1..=3).contains(&peaks.inflight_requests),
            "the bound held: {peaks:?}"
        );
    }
    node.stop().await;
}
