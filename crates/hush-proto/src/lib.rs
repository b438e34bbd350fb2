//! Hush wire types. Only this crate knows prost; other crates use the
//! generated types and the [`Message`] trait re-exported here for
//! encoding/decoding.

pub use prost::Message;

/// The client protocol, version 1 (`proto/hush/v1/client.proto`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/hush.v1.rs"));
}

/// Node-to-node messages (`proto/hush/cluster/v1/cluster.proto`).
/// Nested as `cluster::v1` so prost's relative paths to `hush.v1` resolve.
pub mod cluster {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/hush.cluster.v1.rs"));
    }
}

pub use v1::{client_frame, server_frame, ClientFrame, ErrorCode, ServerFrame};

/// The exact bytes a device signs (Ed25519) to prove possession of its key.
/// Domain-separated so a signature for one purpose is useless for another.
pub mod auth {
    /// Signed by a device registering a new user.
    pub fn register_payload(handle: &str, signature_key: &[u8]) -> Vec<u8> {
        [
            b"hush-register-v1\0",
            handle.as_bytes(),
            b"\0",
            signature_key,
        ]
        .concat()
    }

    /// Signed by a device logging in.
    pub fn login_payload(challenge: &[u8]) -> Vec<u8> {
        [b"hush-login-v1\0".as_slice(), challenge].concat()
    }

    /// Signed by a new device redeeming a link code.
    pub fn link_payload(code: &str, signature_key: &[u8]) -> Vec<u8> {
        [b"hush-link-v1\0", code.as_bytes(), b"\0", signature_key].concat()
    }

    /// The MLS BasicCredential identity of a device: "<user_id>/<device_id>".
    pub fn identity(user_id: &str, device_id: &str) -> String {
        format!("{user_id}/{device_id}")
    }

    /// Splits an identity into (user_id, device_id).
    pub fn parse_identity(identity: &[u8]) -> Option<(&str, &str)> {
        let s = std::str::from_utf8(identity).ok()?;
        let (user, device) = s.split_once('/')?;
        (!user.is_empty() && !device.is_empty() && !device.contains('/')).then_some((user, device))
    }

    /// The WebSocket subprotocol a server speaks.
    pub const WS_PROTOCOL: &str = "hush.v1";
    /// Prefix of the Sec-WebSocket-Protocol value that carries a token.
    pub const WS_TOKEN_PREFIX: &str = "hush.token.";
}

impl v1::Error {
    /// An error with a code and a human-readable message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    /// The error code, `ERROR_CODE_UNSPECIFIED` if the peer sent an unknown one.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Unspecified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::SendMessage(v1::SendMessage {
                group_id: b"g".to_vec(),
                client_msg_id: vec![1; 16],
                message: vec![2; 40],
            })),
        };
        let bytes = frame.encode_to_vec();
        assert_eq!(ClientFrame::decode(bytes.as_slice()).unwrap(), frame);
    }

    /// Frames written by release 0.1.0: the wire format is a contract.
    #[test]
    fn decodes_frames_of_previous_release() {
        // ClientFrame{request_id: 1, ack: {group_id: "g", seq: 5}}
        let ack = [0x08, 0x01, 0xa2, 0x01, 0x05, 0x0a, 0x01, b'g', 0x10, 0x05];
        let f = ClientFrame::decode(&ack[..]).unwrap();
        assert_eq!(f.request_id, 1);
        match f.body {
            Some(client_frame::Body::Ack(a)) => {
                assert_eq!(a.group_id, b"g");
                assert_eq!(a.seq, 5);
            }
            other => panic!("unexpected body {other:?}"),
        }
        // ServerFrame{request_id: 3, error: {code: STALE_EPOCH, message: "x"}}
        let err = [0x08, 0x03, 0x52, 0x05, 0x08, 0x09, 0x12, 0x01, b'x'];
        let f = ServerFrame::decode(&err[..]).unwrap();
        match f.body {
            Some(server_frame::Body::Error(e)) => assert_eq!(e.error_code(), ErrorCode::StaleEpoch),
            other => panic!("unexpected body {other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[0xff, 0xff, 0xff][..],
            &[0x0a, 0x80][..],
            &[0xa2, 0x01, 0x7f][..],
        ] {
            assert!(ClientFrame::decode(bytes).is_err());
        }
    }
}
