//! A peer is who its certificate says: a node whose certificate names n2
//! (signed by the cluster CA) and whose request claims `from: "n3"` is
//! refused; the same request as n2 is answered.

mod common;

use common::{cluster_entries, free_udp, mesh_peer, start_node, WAIT};
use hush_cluster::tls::NodeIdentity;
use hush_proto::cluster::v1 as cluster;
use hush_proto::{server_frame::Body as Reply, ErrorCode, Message as _};

/// The error code of a reply, if it is an error.
fn error_code(reply: &cluster::NodeReply) -> Option<i32> {
    match &reply.body {
        Some(cluster::node_reply::Body::Frame(f)) => match &f.body {
            Some(Reply::Error(e)) => Some(e.code),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_id_is_not_believed() {
    let ca = tempfile::tempdir().expect("tempdir");
    let (q1, q2) = (free_udp(), free_udp());
    let nodes = cluster_entries(&[("n1", q1), ("n2", q2)]);
    let ca_dir = ca.path().to_path_buf();
    let (node, _clock, _dir) = start_node(move |c| {
        c.node.id = "n1".into();
        c.cluster.nodes = nodes;
        c.cluster.ca_dir = Some(ca_dir);
        c.cluster.probe_ms = 100;
    })
    .await;

    // n2, with a genuine certificate from the cluster CA.
    let n2 = mesh_peer(
        &NodeIdentity::dev(ca.path(), "n2").expect("identity"),
        "n2",
        q2,
        ("n1", q1),
    )
    .await;
    let digest = n2.view().borrow().digest();

    let ask = |from: &str| cluster::NodeRequest {
        from: from.into(),
        view_digest: digest,
        body: Some(cluster::node_request::Body::PresenceQuery(
            cluster::PresenceQuery {
                user_ids: vec!["alice".into()],
            },
        )),
    };
    let call = |req: cluster::NodeRequest| {
        let n2 = &n2;
        async move {
            let bytes = tokio::time::timeout(WAIT, n2.call("n1", &req.encode_to_vec()))
                .await
                .expect("in time")
                .expect("answered");
            cluster::NodeReply::decode(bytes.as_slice()).expect("a reply")
        }
    };
    let lie = call(ask("n3")).await;
    assert_eq!(
        error_code(&lie),
        Some(ErrorCode::Forbidden as i32),
        "{lie:?}"
    );
    let truth = call(ask("n2")).await;
    assert_ne!(
        error_code(&truth),
        Some(ErrorCode::Forbidden as i32),
        "{truth:?}"
    );
    n2.leave().await;
    node.stop().await;
}
