//! `hush-node gen-node-certs` (what the compose init service runs): each
//! node gets its own directory with the CA certificate, its certificate and
//! its key, never the CA key, and nodes using only those files form a
//! cluster over mutual TLS.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{start_node, WAIT};
use hush_cluster::mesh::{Mesh, MeshConfig};
use hush_cluster::tls::NodeIdentity;
use hush_node::config::{ClusterNode, ClusterTls};

const BIN: &str = env!("CARGO_BIN_EXE_hush-node");

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_node_certificates_form_a_cluster_without_the_ca_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("certs");
    let status = Command::new(BIN)
        .args(["gen-node-certs", "--ca-dir"])
        .arg(&ca_dir)
        .arg("--out")
        .arg(&out)
        .args(["--for", "n1", "--for", "n2"])
        .status()
        .expect("run hush-node gen-node-certs");
    assert!(status.success());

    for node in ["n1", "n2"] {
        let mut files: Vec<String> = std::fs::read_dir(out.join(node))
            .expect("the node's directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["ca.pem", "node.key", "node.pem"],
            "{node}: only these"
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&out.join(node)), 0o700, "{node}: directory");
            assert_eq!(mode(&out.join(node).join("node.key")), 0o600, "{node}: key");
        }
    }
    // The CA key stays where it was made.
    assert!(ca_dir.join("cluster-ca.key").is_file());

    let (q1, q2) = (free_udp(), free_udp());
    let nodes = vec![
        ClusterNode {
            id: "n1".into(),
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic: q1,
            data: None,
        },
        ClusterNode {
            id: "n2".into(),
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic: q2,
            data: None,
        },
    ];
    let node_dir = out.join("{node}");
    let tls = ClusterTls {
        ca: node_dir.join("ca.pem"),
        cert: node_dir.join("node.pem"),
        key: node_dir.join("node.key"),
    };
    let (node, _clock, _data) = start_node(move |c| {
        c.node.id = "n1".into();
        c.cluster.nodes = nodes;
        c.cluster.tls = Some(tls);
        c.cluster.probe_ms = 100;
    })
    .await;

    let n2_dir = out.join("n2");
    let n2 = Mesh::start(
        &NodeIdentity::from_pem_files(
            "n2",
            &n2_dir.join("ca.pem"),
            &n2_dir.join("node.pem"),
            &n2_dir.join("node.key"),
        )
        .expect("n2's files load"),
        MeshConfig {
            name: "n2".into(),
            bind: q2,
            seeds: vec![("n1".into(), q1)],
            probe_period: Duration::from_millis(100),
            cluster_size: 2,
            boot: 1,
        },
    )
    .await
    .expect("mesh");
    let mut view = n2.view();
    tokio::time::timeout(WAIT, view.wait_for(|v| v.members.len() == 2))
        .await
        .expect("n1 and n2 see each other in time")
        .expect("view");
    n2.leave().await;
    node.stop().await;
}
