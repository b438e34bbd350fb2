//! What travels between the parts of a node, and how frames are built.
//!
//! [`Caller`] is the authenticated device behind a request; [`Outbound`] is
//! what a connection's queue carries; [`ConnRef`] names a connection
//! anywhere in the cluster. Server frames are encoded once, as
//! [`Frame`] (`bytes::Bytes`), and the same bytes are shared by every
//! connection and every node they go to. This is the one place that builds
//! a `GroupEvent` or an `InboxEvent` frame, for live delivery and sync alike.

use std::sync::Arc;

use hush_proto::{server_frame::Body as Reply, v1, Message as _, ServerFrame};
use hush_store::{EntryKind, InboxItem};

use crate::error::{ApiError, ApiResult};

/// An encoded `ServerFrame`, shared by every connection it goes to.
pub type Frame = bytes::Bytes;

/// The authenticated device making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub device_id: String,
}

impl Caller {
    /// The MLS credential identity of the device (`"<user>/<device>"`).
    pub fn identity(&self) -> String {
        hush_proto::auth::identity(&self.user_id, &self.device_id)
    }
}

/// What a connection is sent through its queue.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A group timeline entry (already encoded as a ServerFrame).
    Group {
        group_id: Arc<[u8]>,
        seq: u64,
        frame: Frame,
        /// When the owner had the entry durable, on this node's clock (for
        /// `hush_send_to_deliver_seconds`); None once it crossed to another
        /// node, and for entries read back from the store.
        durable_at: Option<std::time::Instant>,
    },
    /// A Welcome in the device inbox. Its `frame` is empty when it came
    /// from another node: a Welcome (with the ratchet tree) of a group of
    /// 1,000 is hundreds of KB, and a fan-out sends every node of the view
    /// the item for one device, so it travels without it and the device's
    /// connection reads its inbox from the store.
    Inbox {
        inbox_seq: u64,
        group_id: Arc<[u8]>,
        commit_seq: u64,
        frame: Frame,
    },
    /// A frame with no resume position, written only to connections that
    /// are live now and never replayed: typing (`EphemeralEvent`) and
    /// presence (`PresenceEvent`).
    Ephemeral { frame: Frame },
    /// Local only, never sent between nodes: the connection's session
    /// moved (or was just attached), so it reads what it may have missed
    /// from the store: everything stored before `mark` (see [`mark`]). A
    /// Sync whose reads began after `mark` already read all of it.
    Resync { mark: u64 },
    /// Local only: attaching the connection to its session was refused;
    /// the client gets the error, then the connection ends.
    Refused(ApiError),
    /// Local only: the answer to one of the connection's requests, written
    /// by a task other than the connection's own (an ack's refusal, see
    /// `gateway/ws.rs`). Written whether or not the stream has synced.
    Answer { frame: Frame },
}

/// A point in this process's order of events: each call returns a larger
/// number than every call that returned before it began. Orders a
/// [`Outbound::Resync`] against a connection's Sync (a clock could not:
/// paused in tests, and two readings may be equal).
pub fn mark() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Where a connection is: its node and its id there.
pub type ConnRef = (String, u64);

/// Encodes a ServerFrame.
pub fn encode(request_id: u64, body: Reply) -> Frame {
    ServerFrame {
        request_id,
        body: Some(body),
    }
    .encode_to_vec()
    .into()
}

/// A timeline entry as the pushed `GroupEvent` frame (live and sync).
pub struct EntryRef<'a> {
    pub group_id: &'a [u8],
    pub seq: u64,
    pub kind: EntryKind,
    pub epoch: u64,
    pub sender: &'a str,
    pub message: &'a [u8],
    pub server_time_ms: u64,
}

impl EntryRef<'_> {
    /// The stored entry `e` of `group_id`.
    pub fn stored<'a>(group_id: &'a [u8], e: &'a hush_store::Entry) -> EntryRef<'a> {
        EntryRef {
            group_id,
            seq: e.seq,
            kind: e.kind,
            epoch: e.epoch,
            sender: &e.sender,
            message: &e.message,
            server_time_ms: e.server_time_ms,
        }
    }

    pub fn frame(&self) -> Frame {
        let kind = match self.kind {
            EntryKind::Commit => v1::EntryKind::Commit,
            EntryKind::Proposal => v1::EntryKind::Proposal,
            EntryKind::Application => v1::EntryKind::Application,
        };
        encode(
            0,
            Reply::GroupEvent(v1::GroupEvent {
                group_id: self.group_id.to_vec(),
                seq: self.seq,
                kind: kind as i32,
                epoch: self.epoch,
                sender: self.sender.to_owned(),
                message: self.message.to_vec(),
                server_time_ms: self.server_time_ms,
            }),
        )
    }
}

/// The frame for an inbox item (shared by sync and live delivery).
pub fn inbox_frame(item: &InboxItem) -> Frame {
    encode(
        0,
        Reply::InboxEvent(v1::InboxEvent {
            inbox_seq: item.inbox_seq,
            welcome: item.welcome.clone(),
            group_id: item.group_id.clone(),
            commit_seq: item.commit_seq,
            ratchet_tree: item.ratchet_tree.clone(),
        }),
    )
}

/// A group id from a client: 1 to [`hush_ds::MAX_GROUP_ID_BYTES`] bytes.
pub fn check_group_id(group_id: &[u8]) -> ApiResult<()> {
    Ok(hush_ds::validate_group_id(group_id)?)
}
