//! The load generator's message header, carried end to end.
//!
//! 24 bytes: `"HLT1"`, the intended send time (Unix nanoseconds, u64 LE),
//! the group index (u32 LE) and the sender's message counter (u64 LE).
//! With `--mls live` it is the start of the MLS plaintext (padded to the
//! payload size); with `--mls presealed` it is the PrivateMessage's
//! authenticated data, written into a presealed ciphertext at send time.

/// Header length in bytes.
pub const HEADER_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"HLT1";

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Intended send time, Unix nanoseconds.
    pub sent_ns: u64,
    /// Group index in the run.
    pub group: u32,
    /// The sender's counter (0, 1, 2, ...).
    pub counter: u64,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.sent_ns.to_le_bytes());
        b[12..16].copy_from_slice(&self.group.to_le_bytes());
        b[16..24].copy_from_slice(&self.counter.to_le_bytes());
        b
    }

    /// Decodes a header from the start of `b`.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b = b.get(..HEADER_LEN)?;
        if &b[..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let mut g = [0u8; 4];
        g.copy_from_slice(&b[12..16]);
        Some(Self {
            sent_ns: u64_at(4),
            group: u32::from_le_bytes(g),
            counter: u64_at(16),
        })
    }

    /// A plaintext of `len` bytes (at least the header) starting with it.
    pub fn plaintext(&self, len: usize) -> Vec<u8> {
        let mut p = self.encode().to_vec();
        p.resize(len.max(HEADER_LEN), b'.');
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            sent_ns: 1_700_000_000_123_456_789,
            group: 7,
            counter: 42,
        };
        assert_eq!(Header::decode(&h.plaintext(64)), Some(h));
        assert_eq!(Header::decode(&[0; 10]), None);
        assert_eq!(Header::decode(&[0; 30]), None);
    }
}
