//! `hush-node gen-node-certs` (what the compose init service runs): each
//! node gets its own directory with the CA certificate, its certificate and
//! its key, never the CA key, and nodes using only those files form a
//! cluster over mutual TLS.

mod common;

use std::path::Path;
use std::process::Command;

use common::{cluster_entries, free_udp, mesh_peer, start_node};
use hush_cluster::tls::NodeIdentity;
use hush_node::config::ClusterTls;

const BIN: &str = env!("CARGO_BIN_EXE_hush-node");

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
    let nodes = cluster_entries(&[("n1", q1), ("n2", q2)]);
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
    // n2 from its files only: the two see each other.
    let n2 = mesh_peer(
        &NodeIdentity::from_pem_files(
            "n2",
            &n2_dir.join("ca.pem"),
            &n2_dir.join("node.pem"),
            &n2_dir.join("node.key"),
        )
        .expect("n2's files load"),
        "n2",
        q2,
        ("n1", q1),
    )
    .await;
    n2.leave().await;
    node.stop().await;
}
