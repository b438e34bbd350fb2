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
//!
//! **Padding.** Senders pad the JSON with ASCII spaces (JSON allows trailing
//! whitespace, so every decoder, old ones included, reads it unchanged) to
//! [`padded_len`]: at least [`PAD_MIN`] bytes, then PADME (Nikitin et al.,
//! "Reducing metadata leakage from encrypted files and communication with
//! PURBs", 2019): a length `L` with `E = floor(log2 L)` keeps its top
//! `floor(log2 E) + 1` bits and rounds the rest up, at most 12% overhead.
//! Every message up to 128 bytes of JSON (a text of about 90 bytes) looks the
//! same to the server; above that it learns about `log2 log2 L` bits of the
//! length. The web client pads the same way (`web/src/envelope.ts`) and turns
//! off ts-mls' own MLS-level padding, so the same text gives the same
//! ciphertext size from either client.

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

/// The smallest padded envelope, in bytes.
pub const PAD_MIN: usize = 128;

/// PADME: `len` rounded up so that only its top `floor(log2 E) + 1` bits
/// vary, where `E = floor(log2 len)`.
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1
    let mask = (1usize << (e - s)) - 1;
    (len + mask) & !mask
}

/// The length an envelope of `len` JSON bytes is padded to.
pub fn padded_len(len: usize) -> usize {
    padme(len.max(PAD_MIN))
}

impl Envelope {
    /// Encodes to canonical JSON (compact, unpadded).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Encodes to the bytes a sender encrypts: the JSON padded with spaces
    /// to [`padded_len`].
    pub fn encode_padded(&self) -> Vec<u8> {
        let mut bytes = self.encode();
        bytes.resize(padded_len(bytes.len()), b' ');
        bytes
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

    /// The vectors `web/tests/unit.mjs` checks too (computed first by an
    /// independent Python implementation).
    #[test]
    fn padme_vectors() {
        let cases = [
            (0, 0),
            (1, 1),
            (2, 2),
            (9, 10),
            (127, 128),
            (128, 128),
            (129, 144),
            (200, 208),
            (1000, 1024),
            (5000, 5120),
            (65_537, 65_536 + 2048),
        ];
        for (len, want) in cases {
            assert_eq!(padme(len), want, "padme({len})");
            assert!(padme(len) >= len);
            assert!(
                padme(len) as f64 <= len as f64 * 1.125 + 1.0,
                "overhead of {len}"
            );
        }
        for (len, want) in [(0, 128), (100, 128), (128, 128), (129, 144), (300, 304)] {
            assert_eq!(padded_len(len), want, "padded_len({len})");
        }
    }

    #[test]
    fn padded_envelopes_decode_and_hide_short_lengths() {
        let short = Envelope::Text {
            body: "hi".into(),
            ts: 1,
        };
        let longer = Envelope::Text {
            body: "a somewhat longer message, still short".into(),
            ts: 1_700_000_000_000,
        };
        let (a, b) = (short.encode_padded(), longer.encode_padded());
        assert_eq!((a.len(), b.len()), (PAD_MIN, PAD_MIN));
        assert!(
            a.starts_with(b"{") && a.ends_with(b"     "),
            "spaces after the JSON"
        );
        assert_eq!(Envelope::decode(&a).unwrap(), short);
        assert_eq!(Envelope::decode(&b).unwrap(), longer);
        assert_eq!(
            Envelope::decode(&Envelope::Typing.encode_padded()).unwrap(),
            Envelope::Typing
        );
        // What the web client sends (JSON.stringify, then spaces) decodes too.
        let mut web = br#"{"t":"text","body":"from the page","ts":5}"#.to_vec();
        web.resize(128, b' ');
        assert!(
            matches!(Envelope::decode(&web).unwrap(), Envelope::Text { body, .. } if body == "from the page")
        );
        let big = Envelope::Text {
            body: "x".repeat(1000),
            ts: 1,
        };
        assert_eq!(big.encode_padded().len(), padme(big.encode().len()));
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
