//! The end-to-end payload carried inside MLS application messages.
//!
//! The server never sees these bytes in clear: they are the plaintext of an
//! MLS PrivateMessage. The format is a small JSON object tagged by `"t"`:
//!
//! ```text
//! {"t":"text","body":"hello","ts":1700000000000}
//! {"t":"name","name":"friends"}
//! {"t":"typing"}
//! ```
//!
//! `typing` travels only as an ephemeral message (`SendEphemeral`): the
//! server never stores it and delivers it only to devices online now.
//!
//! Unknown tags decode to [`Envelope::Unknown`] so a newer client can add
//! kinds without breaking older ones.

use serde::{Deserialize, Serialize};

/// One application payload.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Envelope {
    /// A chat message.
    Text {
        /// The message text.
        body: String,
        /// Sender's clock, Unix milliseconds.
        ts: u64,
    },
    /// The group's display name (sent by a committer after creating the
    /// group or adding members, so that the members learn it).
    Name {
        /// The display name.
        name: String,
    },
    /// The sender is typing (ephemeral: never stored; shown for a few
    /// seconds by the receivers).
    Typing,
    /// A kind this client does not know.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Debug for Envelope {
    // Client payloads are redacted: they must not end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Envelope::Text { body, ts } => f
                .debug_struct("Text")
                .field("body_len", &body.len())
                .field("ts", ts)
                .finish(),
            Envelope::Name { name } => f
                .debug_struct("Name")
                .field("name_len", &name.len())
                .finish(),
            Envelope::Typing => f.write_str("Typing"),
            Envelope::Unknown => f.write_str("Unknown"),
        }
    }
}

impl Envelope {
    /// Encodes to the wire bytes (compact JSON).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes wire bytes. Malformed bytes are an error; unknown kinds are
    /// [`Envelope::Unknown`].
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_shape() {
        let e = Envelope::Text {
            body: "hi \"there\" ✓".into(),
            ts: 42,
        };
        let bytes = e.encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["t"], "text");
        assert_eq!(v["body"], "hi \"there\" ✓");
        assert_eq!(v["ts"], 42);
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn name_round_trip() {
        let e = Envelope::Name {
            name: "friends".into(),
        };
        assert_eq!(e.encode(), br#"{"t":"name","name":"friends"}"#);
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn typing_shape() {
        assert_eq!(Envelope::Typing.encode(), br#"{"t":"typing"}"#);
        assert_eq!(
            Envelope::decode(br#"{"t":"typing"}"#).unwrap(),
            Envelope::Typing
        );
    }

    #[test]
    fn unknown_kinds_and_garbage() {
        assert_eq!(
            Envelope::decode(br#"{"t":"reaction","emoji":"x"}"#).unwrap(),
            Envelope::Unknown
        );
        assert!(Envelope::decode(b"\xff\x00").is_err());
        assert!(Envelope::decode(br#"{"body":"no tag"}"#).is_err());
    }

    #[test]
    fn debug_redacts_payload() {
        let e = Envelope::Text {
            body: "secret words".into(),
            ts: 1,
        };
        assert!(!format!("{e:?}").contains("secret"));
    }
}
