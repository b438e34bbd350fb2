//! Streams carry the node id the sender's certificate names, whatever the
//! payload says: the receiving node knows who is talking.

use std::net::SocketAddr;
use std::time::Duration;

use hush_cluster::mesh::{Mesh, MeshConfig, MeshError, StreamMsg, MAX_STREAM_MESSAGE};
use hush_cluster::tls::{node_id_of, NodeIdentity};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);

fn config(name: &str, seeds: &[(&str, SocketAddr)]) -> MeshConfig {
    MeshConfig {
        name: name.into(),
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        seeds: seeds.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        probe_period: Duration::from_millis(200),
        cluster_size: 2,
        boot: 1,
    }
}

#[test]
fn a_node_certificate_names_its_id() {
    let ca = tempfile::tempdir().unwrap();
    let id = NodeIdentity::dev(ca.path(), "n2").unwrap();
    assert_eq!(node_id_of(&id.chain).as_deref(), Some("n2"));
    assert_eq!(node_id_of(&[]), None);
}

/// Two meshes of one CA that see each other: n1 (with what arrives to it)
/// and n2.
async fn joined_pair(ca: &tempfile::TempDir) -> (Mesh, mpsc::Receiver<StreamMsg>, Mesh) {
    let id = |n: &str| NodeIdentity::dev(ca.path(), n).unwrap();
    let n1 = Mesh::start(&id("n1"), config("n1", &[])).await.unwrap();
    let incoming = n1.take_incoming().expect("incoming");
    let seed = [("n1", n1.local_addr())];
    let n2 = Mesh::start(&id("n2"), config("n2", &seed)).await.unwrap();
    let mut view = n2.view();
    tokio::time::timeout(PATIENCE, view.wait_for(|v| v.members.len() == 2))
        .await
        .expect("in time")
        .expect("view");
    (n1, incoming, n2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_the_certificates_node_id() {
    let ca = tempfile::tempdir().unwrap();
    let (_n1, mut incoming, n2) = joined_pair(&ca).await;
    n2.push("n1", b"I am n3, honest").await.expect("push");
    let msg = tokio::time::timeout(PATIENCE, incoming.recv())
        .await
        .expect("in time")
        .expect("a stream");
    match msg {
        StreamMsg::Push { peer, payload } => {
            assert_eq!(peer, "n2");
            assert_eq!(payload, b"I am n3, honest");
        }
        StreamMsg::Call { .. } => panic!("a push was sent"),
    }
}

/// A channel's messages arrive in the order written, as separate pushes
/// from the certificate's node; a push beside it still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_carries_many_messages_in_order() {
    let ca = tempfile::tempdir().unwrap();
    let (_n1, mut incoming, n2) = joined_pair(&ca).await;
    let mut channel = n2.open_channel("n1").await.expect("channel");
    // A message over the limit is refused before anything is written: the
    // channel goes on.
    let over = vec![0u8; MAX_STREAM_MESSAGE + 1];
    assert!(matches!(
        channel.send(over).await,
        Err(MeshError::TooLarge(n)) if n == MAX_STREAM_MESSAGE + 1
    ));
    let sent: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            format!("batch {i}")
                .repeat(1 + (i as usize % 7) * 300)
                .into_bytes()
        })
        .collect();
    for message in &sent {
        channel.send(message.clone()).await.expect("send");
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let msg = tokio::time::timeout(PATIENCE, incoming.recv())
            .await
            .expect("in time")
            .expect("a stream");
        match msg {
            StreamMsg::Push { peer, payload } => {
                assert_eq!(peer, "n2");
                got.push(payload);
            }
            StreamMsg::Call { .. } => panic!("only a channel was written"),
        }
    }
    assert_eq!(got, sent);

    n2.push("n1", b"a push beside it").await.expect("push");
    channel
        .send(b"and the channel goes on".to_vec())
        .await
        .expect("send");
    let mut rest = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(PATIENCE, incoming.recv()).await {
            Ok(Some(StreamMsg::Push { payload, .. })) => rest.push(payload),
            _ => panic!("two more pushes"),
        }
    }
    rest.sort();
    assert_eq!(
        rest,
        [
            b"a push beside it".to_vec(),
            b"and the channel goes on".to_vec()
        ]
    );
}
