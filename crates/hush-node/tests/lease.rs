//! A group lease belongs to one *process*, not to a node name: a second
//! process started with the same node id (a restart while the first is
//! only frozen, or a misconfigured twin) must not renew the first one's
//! lease and sequence the group with the same fence token.

use std::net::SocketAddr;
use std::sync::Arc;

use hush_client::client::Client;
use hush_client::error::ClientError;
use hush_node::{Clock as _, Config, ManualClock, SystemClock};
use hush_proto::ErrorCode;

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.node.data = dir.join("node");
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.workers = 2;
    config.limits.rate_burst = 100_000.0;
    config.actors.lease_ttl_ms = 600_000;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_node_id_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now_ms();
    // Two nodes, both "n1", on one SQLite file (and one token secret).
    let first = hush_node::start(config(dir.path()), Arc::new(ManualClock::new(now)))
        .await
        .expect("first starts");
    let twin = hush_node::start(config(dir.path()), Arc::new(ManualClock::new(now)))
        .await
        .expect("twin starts");
    let first_url = format!("http://{}", first.addr);
    let twin_url = format!("http://{}", twin.addr);

    let home = dir.path().join("alice");
    let mut alice = Client::open(&home, Some(&first_url)).unwrap();
    alice.register("alice").await.unwrap();
    let gid = alice.create_group("fenced").await.unwrap().group_id;
    let g = hex::encode(&gid);
    // The first process takes the group's lease.
    let one = alice.send_text(&g, "one").await.unwrap();
    alice.close().await;
    drop(alice);

    // Through the twin: its GroupActor asks the store for the lease under
    // the same node id while the first process holds it.
    let mut via_twin = Client::open(&home, Some(&twin_url)).unwrap();
    via_twin.set_transient_retries(0);
    match via_twin.send_text(&g, "two").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Unavailable),
        other => panic!("the twin sequenced the group: {other:?}"),
    }
    via_twin.close().await;
    drop(via_twin);

    // The lease holder still sequences, right after its own entry: the
    // twin took no seq.
    let mut alice = Client::open(&home, Some(&first_url)).unwrap();
    assert_eq!(alice.send_text(&g, "three").await.unwrap(), one + 1);
    alice.close().await;
    twin.stop().await;
    first.stop().await;
}
