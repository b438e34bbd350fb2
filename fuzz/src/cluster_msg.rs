//! Cluster messages between nodes (`proto/cluster.proto`): a
//! `NodeRequest` as the inbound side of the mesh decodes it (calls and
//! pushes, `crates/hush-node/src/peer.rs`) and a `NodeReply` as a caller
//! decodes it (`Route::call_owner`, `Api::forward`), with the pure steps
//! that follow: metrics kind, the group a forwarded request belongs to,
//! delivery items to `Outbound`, error replies to `ApiError`.
//!
//! Not reached here: the steps after those, which need a node in a live
//! QUIC mesh (view digest, GroupActors, SessionActors).

use hush_proto::cluster::v1 as cluster;
use hush_proto::{server_frame::Body as Reply, Message as _};

pub fn run(data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        request(bytes);
    } else {
        reply(bytes);
    }
}

fn request(bytes: &[u8]) {
    let Ok(req) = cluster::NodeRequest::decode(bytes) else {
        return;
    };
    let again = cluster::NodeRequest::decode(req.encode_to_vec().as_slice())
        .expect("a decoded request re-encodes");
    assert_eq!(again, req);
    let Some(body) = req.body else {
        return;
    };
    let _ = hush_node::route::body_kind(&body);
    match body {
        cluster::node_request::Body::GroupCall(call) => {
            if let Some(body) = call.frame.and_then(|f| f.body) {
                if let Some(g) = hush_node::api::routed_group(&body) {
                    let _ = hush_node::wire::check_group_id(g);
                }
            }
        }
        cluster::node_request::Body::Deliver(batch) => {
            for d in batch.items {
                if let Some(item) = d.item {
                    let _ = hush_node::route::outbound_from_proto(item);
                }
            }
        }
        cluster::node_request::Body::SessionCall(call) => {
            let _ = hush_node::route::session_key(&call.user_id);
        }
        cluster::node_request::Body::PresenceQuery(q) => {
            for u in &q.user_ids {
                let _ = hush_node::route::session_key(u);
            }
        }
        // Both go straight to the SessionActors (not reached here).
        cluster::node_request::Body::Readmitted(_)
        | cluster::node_request::Body::PresenceWitness(_) => {}
    }
}

fn reply(bytes: &[u8]) {
    let Ok(reply) = cluster::NodeReply::decode(bytes) else {
        return;
    };
    if let Some(cluster::node_reply::Body::Frame(frame)) = reply.body {
        if let Some(Reply::Error(e)) = frame.body {
            let e = hush_node::error::ApiError::from_proto(e);
            let _ = (e.code_name(), e.http_status(), e.to_proto());
        }
    }
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use hush_proto::v1;
    let req = |body| {
        let mut b = vec![0u8];
        b.extend(
            cluster::NodeRequest {
                from: "n2".into(),
                view_digest: 7,
                body: Some(body),
            }
            .encode_to_vec(),
        );
        b
    };
    let call = req(cluster::node_request::Body::GroupCall(cluster::GroupCall {
        user_id: "alice".into(),
        device_id: "d1".into(),
        frame: Some(v1::ClientFrame {
            request_id: 0,
            body: Some(hush_proto::client_frame::Body::SendMessage(
                v1::SendMessage {
                    group_id: b"g".to_vec(),
                    client_msg_id: b"m".to_vec(),
                    message: vec![0, 1],
                },
            )),
        }),
    }));
    let deliver = req(cluster::node_request::Body::Deliver(
        cluster::DeliverBatch {
            items: vec![cluster::Delivery {
                devices: vec![],
                item: Some(cluster::delivery::Item::Group(cluster::GroupItem {
                    group_id: b"g".to_vec(),
                    seq: 3,
                    frame: vec![8, 0],
                })),
                conns: None,
            }],
        },
    ));
    let mut err = vec![1u8];
    err.extend(
        cluster::NodeReply {
            body: Some(cluster::node_reply::Body::Frame(v1::ServerFrame {
                request_id: 0,
                body: Some(Reply::Error(v1::Error {
                    code: 9,
                    message: "x".into(),
                    ..Default::default()
                })),
            })),
        }
        .encode_to_vec(),
    );
    vec![
        ("group_call".into(), call),
        ("deliver".into(), deliver),
        ("error_reply".into(), err),
    ]
}
