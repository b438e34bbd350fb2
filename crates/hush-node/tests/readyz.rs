//! `/readyz` (readiness) against `/healthz` (liveness), in process:
//!
//! - a node on SQLite is ready as soon as it listens;
//! - a node whose CQL cluster is down at start still starts (it never waits
//!   for the cluster): live, not ready, the reason naming the contact point,
//!   and requests answer UNAVAILABLE instead of hanging;
//! - a cluster node alone in its view is not ready while its configured
//!   peers may still join (the view settles), then ready without the peer
//!   it cannot reach (node clock: a `ManualClock`, moved by the test).
//!
//! The CQL store coming back is tested on a live cluster (`cql_walkthrough.rs`).

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};

use common::{start_node, url};
use hush_proto::Message as _;

async fn get(url: &str) -> (u16, String) {
    let res = reqwest::get(url).await.expect("GET");
    let status = res.status().as_u16();
    (status, res.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_sqlite_is_ready_once_it_listens() {
    let (node, _clock, _dir) = start_node(|_| {}).await;
    assert_eq!(get(&format!("{}/healthz", url(&node))).await.0, 200);
    let (status, body) = get(&format!("{}/readyz", url(&node))).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cql_cluster_that_is_down_at_start_leaves_the_node_live_but_not_ready() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let point = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let (node, _clock, _dir) = start_node(|c| {
        c.store.kind = "scylla".into();
        c.store.contact_points = vec![point.clone()];
        c.store.request_timeout_ms = 1_000;
    })
    .await;
    // The start did not wait for the cluster's connect timeout to pass
    // again and again: it returned while the first attempt still ran or had
    // just failed.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "start took {:?}",
        started.elapsed()
    );
    let base = url(&node);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200, "live");
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: store:"), "{body}");
    assert!(
        body.contains(&point),
        "the reason names the contact point: {body}"
    );

    // Requests that need the store answer UNAVAILABLE (retryable): register,
    // and a login (a challenge is stateless and still issued; checking the
    // device it is for needs the store).
    let root = tempfile::tempdir().expect("tempdir");
    let mut alice = hush_client::client::Client::open(&root.path().join("alice"), Some(&base))
        .expect("open client");
    match alice.register("alice").await {
        Err(hush_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, hush_proto::v1::ErrorCode::Unavailable)
        }
        other => panic!("register while the store is down: {other:?}"),
    }
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{base}/v1/login/challenge"))
        .body(
            hush_proto::v1::LoginChallengeRequest {
                device_id: "alice-1".into(),
            }
            .encode_to_vec(),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status().as_u16(), 200, "a challenge needs no store");
    let challenge =
        hush_proto::v1::LoginChallengeResponse::decode(res.bytes().await.expect("body").as_ref())
            .expect("a challenge")
            .challenge;
    let res = http
        .post(format!("{base}/v1/login"))
        .body(
            hush_proto::v1::LoginRequest {
                device_id: "alice-1".into(),
                challenge,
                signature: vec![0; 64],
            }
            .encode_to_vec(),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status().as_u16(), 503);
    let err = hush_proto::v1::Error::decode(res.bytes().await.expect("body").as_ref())
        .expect("an Error body");
    assert_eq!(
        err.code,
        hush_proto::v1::ErrorCode::Unavailable as i32,
        "{err:?}"
    );
    node.stop().await;
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_is_ready_once_its_view_settled() {
    let (node, clock, _dir) = start_node(|c| {
        c.node.id = "n1".into();
        c.cluster.probe_ms = 100;
        for id in ["n1", "n2"] {
            c.cluster.nodes.push(hush_node::config::ClusterNode {
                id: id.into(),
                gateway: "127.0.0.1:1".parse().unwrap(),
                // n2 never runs: nothing answers at its address.
                quic: free_udp(),
                data: None,
            });
        }
    })
    .await;
    let base = url(&node);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("view settling") && body.contains("n2"),
        "{body}"
    );
    // Five probe periods later (node clock), n2 counts as unreachable.
    clock.advance(500);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    node.stop().await;
}
