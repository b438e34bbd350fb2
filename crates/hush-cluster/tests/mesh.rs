//! Membership over real QUIC (mutual TLS) between endpoints on loopback:
//! three nodes find each other from one seed, a crashed node is declared
//! down by the others, a leaving node is dropped at once, and a node with a
//! certificate from another CA never enters the view.

use std::net::SocketAddr;
use std::time::Duration;

use hush_cluster::mesh::{Mesh, MeshConfig};
use hush_cluster::tls::NodeIdentity;
use hush_cluster::View;

/// A safety net only; every wait is on a view change.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(name: &str, seeds: &[(&str, SocketAddr)]) -> MeshConfig {
    MeshConfig {
        name: name.into(),
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        seeds: seeds.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        probe_period: Duration::from_millis(200),
        cluster_size: 3,
        boot: 1,
    }
}

async fn wait_view(mesh: &Mesh, want: &[&str]) {
    let mut rx = mesh.view();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let ok = tokio::time::timeout(
        PATIENCE,
        rx.wait_for(|v: &View| v.members.iter().cloned().collect::<Vec<_>>() == want),
    )
    .await;
    assert!(
        matches!(ok, Ok(Ok(_))),
        "{}: view is {:?}, want {want:?}",
        mesh.me().name,
        mesh.view().borrow().members
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_detect_a_crash_and_see_a_leave() {
    let ca = tempfile::tempdir().unwrap();
    let id = |n: &str| NodeIdentity::dev(ca.path(), n).unwrap();
    let n1 = Mesh::start(&id("n1"), config("n1", &[])).await.unwrap();
    let seed = [("n1", n1.local_addr())];
    let n2 = Mesh::start(&id("n2"), config("n2", &seed)).await.unwrap();
    let n3 = Mesh::start(&id("n3"), config("n3", &seed)).await.unwrap();
    for m in [&n1, &n2, &n3] {
        wait_view(m, &["n1", "n2", "n3"]).await;
    }
    assert_eq!(n1.view().borrow().digest(), n3.view().borrow().digest());
    let peers = n1.peers();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.live), "{peers:?}");
    assert!(
        peers.iter().any(|p| p.rtt.is_some()),
        "no RTT measured: {peers:?}"
    );

    // A stranger (its own CA) seeds itself with n1: it never gets in.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = NodeIdentity::dev(elsewhere.path(), "n9").unwrap();
    let n9 = Mesh::start(&stranger, config("n9", &seed)).await.unwrap();

    // n2 crashes (no goodbye): n1 and n3 declare it down.
    let crashed_at = std::time::Instant::now();
    drop(n2);
    wait_view(&n1, &["n1", "n3"]).await;
    wait_view(&n3, &["n1", "n3"]).await;
    eprintln!("crash detected after {:?}", crashed_at.elapsed());
    assert_eq!(
        n9.view().borrow().members.len(),
        1,
        "the stranger got a view"
    );

    // n3 leaves gracefully: n1 learns it from the goodbye.
    n3.leave().await;
    wait_view(&n1, &["n1"]).await;
    n1.leave().await;
}
