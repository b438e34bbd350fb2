//! Virtual actors: a GroupActor passivates after `actors.group_idle_ms`
//! without traffic (by the node's clock) and comes back from the store on
//! the next message, with the timeline continuing where it was; a
//! SessionActor lives exactly as long as its user has connections (here
//! with no presence grace period; `presence.rs` tests the grace).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hush_client::client::Client;
use hush_client::ws::Pushed;
use hush_node::{Clock as _, Config, ManualClock, SystemClock};

/// A safety net only: every wait below is on an event.
const PATIENCE: Duration = Duration::from_secs(30);

async fn wait_for(rx: &mut tokio::sync::watch::Receiver<usize>, want: usize, what: &str) {
    let waited = tokio::time::timeout(PATIENCE, rx.wait_for(|n| *n == want))
        .await
        .map(|r| r.is_ok());
    assert!(
        matches!(waited, Ok(true)),
        "{what}: still {} actors, want {want}",
        *rx.borrow()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_passivate_and_come_back_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.node.data = dir.path().join("node");
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.workers = 2;
    config.limits.rate_burst = 100_000.0;
    // Ticks every lease_ttl/3; idleness is judged by the manual clock.
    config.actors.lease_ttl_ms = 1_000;
    config.actors.group_idle_ms = 60_000;
    // Sessions stop at their last connection, without waiting to announce
    // offline.
    config.actors.presence_grace_ms = 0;
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let node = hush_node::start(config, clock.clone()).await.unwrap();
    let url = format!("http://{}", node.addr);
    let mut groups = node.watch_group_actors();
    let mut sessions = node.watch_session_actors();

    let mut alice = Client::open(&dir.path().join("alice"), Some(&url)).unwrap();
    alice.register("alice").await.unwrap();
    let mut bob = Client::open(&dir.path().join("bob"), Some(&url)).unwrap();
    bob.register("bob").await.unwrap();
    let gid = alice.create_group("idle").await.unwrap().group_id;
    let gid_hex = hex::encode(&gid);
    alice.add_members(&gid_hex, &["bob".into()]).await.unwrap();
    let first = alice.send_text(&gid_hex, "before the nap").await.unwrap();
    wait_for(&mut groups, 1, "after traffic").await;

    // Time passes on the node's clock: the next tick passivates the group.
    clock.advance(61_000);
    wait_for(&mut groups, 0, "after the idle period").await;

    // The next message reactivates it from the store; seqs continue.
    let second = alice.send_text(&gid_hex, "after the nap").await.unwrap();
    assert_eq!(second, first + 1);
    wait_for(&mut groups, 1, "after reactivation").await;
    bob.sync().await.unwrap();
    let texts: Vec<String> = bob
        .take_unshown()
        .unwrap()
        .into_iter()
        .filter(|(g, row)| *g == gid && row.kind == "text")
        .map(|(_, row)| row.body)
        .collect();
    assert_eq!(texts, ["before the nap", "after the nap"]);

    // Sessions: one per connected user, gone when the user disconnects.
    wait_for(&mut sessions, 2, "two users connected").await;
    alice.close().await;
    wait_for(&mut sessions, 1, "alice disconnected").await;

    // A graceful stop tells bob's open connection to go elsewhere (4004)
    // at once, not at the next heartbeat.
    let stopping = tokio::spawn(node.stop());
    loop {
        match tokio::time::timeout(PATIENCE, bob.wait_event()).await {
            Ok(Ok(Pushed::Closed(reason))) => {
                assert!(reason.contains("4004"), "closed with {reason:?}");
                break;
            }
            Ok(Ok(_other)) => continue,
            other => panic!("expected a 4004 close, got {other:?}"),
        }
    }
    stopping.await.unwrap();
    wait_for(&mut sessions, 0, "everyone disconnected").await;
}
