//! Client frames through the gateway: the input is the body of
//! `POST /v1/rpc` (one protobuf `ClientFrame`), sent with a valid token to
//! a live in-process node, so it runs the gateway's decode, the rate limit,
//! and the node's dispatcher (`Api::dispatch`: validation, KeyPackages,
//! group creation, GroupActors with the MLS checks, the store). The WebSocket
//! decodes frames with the same `ClientFrame::decode` and dispatches them
//! through the same `Api`; only its `Sync` (a stream) is not reached here.
//!
//! Checks: the node answers every input in time with a well-formed answer:
//! 200 with a non-error `ServerFrame` carrying the request id, 204 with no
//! body, or an error status with an `Error` frame.

use hush_proto::{server_frame::Body as S, v1, ClientFrame, Message as _, ServerFrame};

use crate::node::NodeHarness;

pub fn run(h: &mut NodeHarness, data: &[u8]) {
    let body = h.with_group(data);
    let sent = ClientFrame::decode(body.as_slice()).ok();
    let (status, resp) = h.rpc(&body);
    match status {
        204 => assert!(resp.is_empty(), "204 with a body"),
        200 => {
            let frame = ServerFrame::decode(resp.as_slice()).expect("a 200 body decodes");
            assert!(
                !matches!(frame.body, None | Some(S::Error(_))),
                "200 without a reply body: {frame:?}"
            );
            let sent = sent.expect("a 200 for an undecodable frame");
            assert_eq!(frame.request_id, sent.request_id, "request id not echoed");
        }
        s => {
            let frame = ServerFrame::decode(resp.as_slice())
                .unwrap_or_else(|_| panic!("status {s} without a ServerFrame body"));
            match frame.body {
                Some(S::Error(e)) => {
                    assert_ne!(
                        e.code,
                        v1::ErrorCode::Unspecified as i32,
                        "error without a code"
                    );
                }
                other => panic!("status {s} with {other:?}"),
            }
        }
    }
}

/// One frame of every request kind, aimed at alice's group (placeholders).
pub fn seeds(h: &mut NodeHarness) -> Vec<(String, Vec<u8>)> {
    use hush_proto::client_frame::Body as C;
    let g = h.placeholder();
    let id = h.client.me().expect("identity");
    let app = hush_client::mls::encrypt(h.client.db(), &id, &h.group_id, b"seed").expect("encrypt");
    let app = h.to_placeholder(&app);
    let (kps, last_resort) =
        hush_client::mls::new_key_packages(h.client.db(), &id, 2, true).expect("key packages");
    let new_group = hush_client::mls::create_group(h.client.db(), &id).expect("group");
    let bodies: Vec<(&str, C)> = vec![
        ("ping", C::Ping(v1::Ping { nonce: 7 })),
        ("auth", C::Auth(v1::Auth { token: "x".into() })),
        ("sync", C::Sync(v1::Sync::default())),
        ("kp_count", C::KeyPackageCount(v1::KeyPackageCount {})),
        (
            "claim",
            C::ClaimKeyPackages(v1::ClaimKeyPackages {
                user_id: "alice".into(),
            }),
        ),
        (
            "upload",
            C::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages: vec![vec![0, 1, 2]],
                ..Default::default()
            }),
        ),
        (
            "upload_valid",
            C::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages: kps,
                last_resort: last_resort.unwrap_or_default(),
            }),
        ),
        (
            "create_valid",
            C::CreateGroup(v1::CreateGroup {
                group_info: new_group.group_info,
                ratchet_tree: new_group.ratchet_tree,
            }),
        ),
        (
            "lookup",
            C::LookupUser(v1::LookupUser {
                handle: "alice".into(),
            }),
        ),
        (
            "create",
            C::CreateGroup(v1::CreateGroup {
                group_info: vec![0, 1],
                ratchet_tree: vec![],
            }),
        ),
        (
            "group_info",
            C::GetGroupInfo(v1::GetGroupInfo {
                group_id: g.clone(),
            }),
        ),
        (
            "list",
            C::ListGroups(v1::ListGroups {
                all_devices_of_user: true,
            }),
        ),
        (
            "presence",
            C::GetPresence(v1::GetPresence {
                group_id: g.clone(),
            }),
        ),
        (
            "ack",
            C::Ack(v1::Ack {
                group_id: g.clone(),
                seq: 1,
            }),
        ),
        ("ack_inbox", C::AckInbox(v1::AckInbox { inbox_seq: 1 })),
        (
            "send_message",
            C::SendMessage(v1::SendMessage {
                group_id: g.clone(),
                client_msg_id: b"seed-1".to_vec(),
                message: app.clone(),
            }),
        ),
        (
            "send_commit",
            C::SendCommit(v1::SendCommit {
                group_id: g.clone(),
                commit: app.clone(),
                client_msg_id: b"seed-2".to_vec(),
                ..Default::default()
            }),
        ),
        (
            "send_proposal",
            C::SendProposal(v1::SendProposal {
                group_id: g.clone(),
                proposal: app.clone(),
                client_msg_id: b"seed-3".to_vec(),
            }),
        ),
        (
            "send_ephemeral",
            C::SendEphemeral(v1::SendEphemeral {
                group_id: g.clone(),
                message: app,
            }),
        ),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (name, body))| {
            let frame = ClientFrame {
                request_id: i as u64 + 1,
                body: Some(body),
            };
            (name.to_string(), frame.encode_to_vec())
        })
        .collect()
}
