//! A group lease belongs to a node *and its data directory*, not to a node
//! name: a process started with the same node id on another directory (a
//! misconfigured twin) must not renew the first one's lease and sequence
//! the group with the same fence token; a second process on the same
//! directory does not start at all; and a node restarted on its own
//! directory keeps its leases.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hush_client::client::Client;
use hush_client::error::ClientError;
use hush_node::{Clock as _, Config, ManualClock, SystemClock};
use hush_proto::ErrorCode;

/// Node "n1" with data directory `data`, on the shared store in `root`.
fn config(root: &Path, data: &str) -> Config {
    let mut config = Config::default();
    config.node.data = root.join(data);
    config.store.path = Some(root.join("hush.sqlite"));
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.workers = 2;
    config.limits.rate_burst = 100_000.0;
    // Far longer than the test: nobody's lease expires by itself.
    config.actors.lease_ttl_ms = 600_000;
    config
}

async fn start(root: &Path, data: &str) -> hush_node::RunningNode {
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    hush_node::start(config(root, data), clock)
        .await
        .expect("node starts")
}

/// One message through a node, as alice (whose device state is in `home`).
async fn send(home: &Path, node: &hush_node::RunningNode, text: &str) -> Result<u64, ClientError> {
    let mut alice = Client::open(home, Some(&format!("http://{}", node.addr))).unwrap();
    alice.set_transient_retries(0);
    let gid = alice.groups().unwrap()[0].row.group_id.clone();
    let sent = alice.send_text(&hex::encode(gid), text).await;
    alice.close().await;
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_with_the_same_node_id_is_fenced_and_a_restart_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let first = start(root, "a").await;

    let home = root.join("alice");
    let mut alice = Client::open(&home, Some(&format!("http://{}", first.addr))).unwrap();
    alice.register("alice").await.unwrap();
    alice.create_group("fenced").await.unwrap();
    alice.close().await;
    drop(alice);
    // The first node takes the group's lease.
    let one = send(&home, &first, "one").await.unwrap();

    // A second "n1" on its own directory asks the store for the lease
    // while the first holds it.
    let twin = start(root, "b").await;
    match send(&home, &twin, "two").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Unavailable),
        other => panic!("the twin sequenced the group: {other:?}"),
    }
    twin.stop().await;

    // A second process on the first one's directory does not start.
    let clash = hush_node::start(
        config(root, "a"),
        Arc::new(ManualClock::new(SystemClock.now_ms())),
    )
    .await;
    let err = clash.err().expect("a second node on a locked directory");
    assert!(err.to_string().contains("in use"), "{err}");

    // The lease holder still sequences, right after its own entry: the
    // twin took no seq.
    assert_eq!(send(&home, &first, "three").await.unwrap(), one + 1);

    // A crash leaves the lease held. Simulate it: stop the first node, then
    // have its owner name take the lease again in the store, as a process
    // that died holding it would have left it. Restarted on its directory,
    // the node is that same owner and sequences at once.
    first.stop().await;
    let owner = std::fs::read_to_string(root.join("a/lease-owner")).unwrap();
    let again = start(root, "a").await;
    let gid = Client::open(&home, None).unwrap().groups().unwrap()[0]
        .row
        .group_id
        .clone();
    again
        .store()
        .acquire_lease(&gid, owner.trim(), SystemClock.now_ms(), 600_000)
        .await
        .expect("the crashed process's lease");
    assert_eq!(send(&home, &again, "four").await.unwrap(), one + 2);
    again.stop().await;
}
