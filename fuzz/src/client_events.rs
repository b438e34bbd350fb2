//! The SDK client's handling of what a server sends it: one WebSocket
//! binary message (a `ServerFrame`), or a chunk of the SSE event stream
//! (`EventParser`, base64 `data:` lines), turned into pushed events
//! (`hush_client::ws::pushed_of`, the function both transports share) and
//! applied by `Client::handle` — the timeline rules (order, duplicates,
//! buffering), MLS processing of group entries and Welcomes, presence and
//! typing — on alice's client, a member of a real group
//! ([`NodeHarness`]). The client is disconnected, so the acks and deferred
//! actions an event calls for stay local or reach the in-process node.
//!
//! Input: the first byte picks the transport (even: WebSocket, odd: SSE);
//! the rest is the message / the stream bytes (fed in two chunks, so a
//! line split across reads is exercised).

use base64::Engine as _;
use hush_client::sse::EventParser;
use hush_client::ws::{pushed_of, Pushed};
use hush_proto::{server_frame::Body as S, v1, Message as _, ServerFrame};

use crate::node::NodeHarness;

/// The client's own cap (`hush_client::sse::MAX_EVENT_BYTES`) is 64 MiB;
/// inputs are far smaller.
const MAX_EVENT_BYTES: usize = hush_client::sse::MAX_EVENT_BYTES;

pub fn run(h: &mut NodeHarness, data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let bytes = h.with_group(bytes);
    let mut pushed = Vec::new();
    if sel & 1 == 0 {
        if let Ok(frame) = ServerFrame::decode(bytes.as_slice()) {
            push_frame(frame, &mut pushed);
        }
    } else {
        let mut parser = EventParser::new(MAX_EVENT_BYTES);
        let (a, b) = bytes.split_at(bytes.len() / 2);
        'chunks: for chunk in [a, b] {
            let Ok(events) = parser.push(chunk) else {
                break 'chunks;
            };
            for ev in events {
                let frame = base64::engine::general_purpose::STANDARD
                    .decode(ev.data.trim())
                    .ok()
                    .and_then(|b| ServerFrame::decode(b.as_slice()).ok());
                if let Some(frame) = frame {
                    push_frame(frame, &mut pushed);
                }
            }
        }
    }
    let client = &mut h.client;
    for p in pushed {
        let _ = h.rt.block_on(client.handle(p));
    }
}

/// What the WebSocket reader does with a frame: replies (request id set)
/// go to waiting requests, the rest become pushed events.
fn push_frame(frame: ServerFrame, out: &mut Vec<Pushed>) {
    if frame.request_id != 0 {
        return;
    }
    if let Some(p) = frame.body.and_then(pushed_of) {
        out.push(p);
    }
}

/// Frames of every pushed kind for alice's group (placeholders), over both
/// transports.
pub fn seeds(h: &mut NodeHarness) -> Vec<(String, Vec<u8>)> {
    let g = h.placeholder();
    let id = h.client.me().expect("identity");
    let app = hush_client::mls::encrypt(h.client.db(), &id, &h.group_id, b"seed").expect("encrypt");
    let app = h.to_placeholder(&app);
    let sender = format!("{}/{}", id.user_id, id.device_id);
    let frames: Vec<(&str, S)> = vec![
        (
            "group_event",
            S::GroupEvent(v1::GroupEvent {
                group_id: g.clone(),
                seq: 2,
                kind: v1::EntryKind::Application as i32,
                epoch: 0,
                sender: sender.clone(),
                message: app.clone(),
                server_time_ms: 1,
            }),
        ),
        (
            "group_event_far",
            S::GroupEvent(v1::GroupEvent {
                group_id: g.clone(),
                seq: 1_000,
                kind: v1::EntryKind::Commit as i32,
                epoch: 0,
                sender,
                message: app.clone(),
                server_time_ms: 1,
            }),
        ),
        (
            "inbox_event",
            S::InboxEvent(v1::InboxEvent {
                inbox_seq: 1,
                welcome: app.clone(),
                group_id: g.clone(),
                commit_seq: 1,
                ratchet_tree: vec![0, 1],
            }),
        ),
        ("caught_up", S::SyncCaughtUp(v1::SyncCaughtUp {})),
        (
            "ephemeral",
            S::EphemeralEvent(v1::EphemeralEvent {
                group_id: g.clone(),
                epoch: 0,
                message: app,
            }),
        ),
        (
            "presence",
            S::PresenceEvent(v1::PresenceEvent {
                user_id: "alice".into(),
                online: true,
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, body) in frames {
        let bytes = ServerFrame {
            request_id: 0,
            body: Some(body),
        }
        .encode_to_vec();
        let mut ws = vec![0u8];
        ws.extend_from_slice(&bytes);
        out.push((format!("ws_{name}"), ws));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let mut sse = vec![1u8];
        sse.extend_from_slice(
            format!("retry: 2000\r\n: keep-alive\nid: v1.0\ndata: {b64}\n\n").as_bytes(),
        );
        out.push((format!("sse_{name}"), sse));
    }
    out
}
