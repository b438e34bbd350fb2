//! Compact, self-delimiting encoding of a tracker's storage map.
//!
//! openmls persists a `PublicGroup` through its storage trait, and
//! `openmls_memory_storage` keeps each entity as serde JSON. JSON spells every
//! byte of a key or signature as a decimal number (about 3.6 bytes per byte),
//! so the snapshot re-encodes each JSON value in a small tagged binary form:
//! arrays of small integers become raw byte strings and object keys are
//! interned. Decoding restores the same JSON values (modulo key order, which
//! serde does not care about).
//!
//! ```text
//! snapshot := body sha256(body)
//! body     := "HDS" 0x01 varint(len) group_id varint(count) entry*
//! entry    := varint(len) key kind value       (entries sorted by key)
//! kind     := 0x00 varint(len) raw_bytes        (value was not JSON)
//!           | 0x01 compact_json
//! ```
//!
//! The SHA-256 trailer catches corruption before anything is parsed: the
//! storage provider underneath openmls panics on values it cannot
//! deserialize, so only intact snapshots may reach it. (Snapshots are
//! server-written data, not client input; the digest is an integrity check,
//! not authentication.)
//!
//! This is a storage format: changing it needs a new magic/version byte and
//! a decoder for the old one.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use crate::error::DsError;

const MAGIC: &[u8; 4] = b"HDS\x01";
const MAX_DEPTH: usize = 128;
const DIGEST_LEN: usize = 32;

const T_NULL: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
const T_UINT: u8 = 3;
const T_NEGINT: u8 = 4;
const T_FLOAT: u8 = 5;
const T_STRING: u8 = 6;
const T_ARRAY: u8 = 7;
const T_BYTES: u8 = 8;
const T_OBJECT: u8 = 9;

const KIND_RAW: u8 = 0;
const KIND_JSON: u8 = 1;

/// The storage provider's key/value map.
pub(crate) type Values = HashMap<Vec<u8>, Vec<u8>>;

pub(crate) fn encode(group_id: &[u8], entries: &Values) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + entries.values().map(|v| v.len() / 3).sum::<usize>());
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, group_id);
    put_varint(&mut out, entries.len() as u64);
    let mut keys: Vec<&Vec<u8>> = entries.keys().collect();
    keys.sort();
    let mut enc = Encoder::default();
    for k in keys {
        put_bytes(&mut out, k);
        let raw = &entries[k];
        match serde_json::from_slice::<Value>(raw) {
            Ok(v) => {
                out.push(KIND_JSON);
                enc.value(&mut out, &v);
            }
            Err(_) => {
                out.push(KIND_RAW);
                put_bytes(&mut out, raw);
            }
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

/// Group id and storage map. Never panics; every length is checked against
/// the remaining input before anything is allocated.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Vec<u8>, Values), DsError> {
    let bad = |what: &str| DsError::Malformed(format!("snapshot: {what}"));
    let body_len = bytes
        .len()
        .checked_sub(DIGEST_LEN)
        .ok_or_else(|| bad("too short"))?;
    let (body, digest) = bytes.split_at(body_len);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != digest {
        return Err(bad("checksum mismatch (corrupted or truncated)"));
    }
    let mut r = Reader { buf: body };
    if r.take(4).ok_or_else(|| bad("too short"))? != MAGIC {
        return Err(bad("unknown magic or version"));
    }
    let group_id = r.bytes().ok_or_else(|| bad("group id"))?.to_vec();
    let count = r.varint().ok_or_else(|| bad("entry count"))?;
    let mut map = HashMap::new();
    let mut dec = Decoder::default();
    for _ in 0..count {
        let key = r.bytes().ok_or_else(|| bad("entry key"))?.to_vec();
        let value = match r.u8().ok_or_else(|| bad("entry kind"))? {
            KIND_RAW => r.bytes().ok_or_else(|| bad("raw entry"))?.to_vec(),
            KIND_JSON => {
                let v = dec.value(&mut r, 0).ok_or_else(|| bad("json entry"))?;
                serde_json::to_vec(&v).map_err(|e| DsError::malformed("snapshot json", e))?
            }
            _ => return Err(bad("entry kind")),
        };
        map.insert(key, value);
    }
    if !r.buf.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((group_id, map))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[derive(Default)]
struct Encoder {
    keys: HashMap<String, u64>,
}

impl Encoder {
    fn value(&mut self, out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::Null => out.push(T_NULL),
            Value::Bool(false) => out.push(T_FALSE),
            Value::Bool(true) => out.push(T_TRUE),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    out.push(T_UINT);
                    put_varint(out, u);
                } else if let Some(i) = n.as_i64() {
                    // Negative (non-negative values took the branch above).
                    out.push(T_NEGINT);
                    put_varint(out, !(i as u64));
                } else {
                    out.push(T_FLOAT);
                    out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_be_bytes());
                }
            }
            Value::String(s) => {
                out.push(T_STRING);
                put_bytes(out, s.as_bytes());
            }
            Value::Array(items) => {
                let as_bytes: Option<Vec<u8>> = if items.is_empty() {
                    None
                } else {
                    items
                        .iter()
                        .map(|i| i.as_u64().and_then(|u| u8::try_from(u).ok()))
                        .collect()
                };
                match as_bytes {
                    Some(b) => {
                        out.push(T_BYTES);
                        put_bytes(out, &b);
                    }
                    None => {
                        out.push(T_ARRAY);
                        put_varint(out, items.len() as u64);
                        for i in items {
                            self.value(out, i);
                        }
                    }
                }
            }
            Value::Object(map) => {
                out.push(T_OBJECT);
                put_varint(out, map.len() as u64);
                for (k, v) in map {
                    // Interned keys: 0 = new key follows, n = n-th seen key.
                    match self.keys.get(k) {
                        Some(&id) => put_varint(out, id + 1),
                        None => {
                            put_varint(out, 0);
                            put_bytes(out, k.as_bytes());
                            let id = self.keys.len() as u64;
                            self.keys.insert(k.clone(), id);
                        }
                    }
                    self.value(out, v);
                }
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.varint()?).ok()?;
        // Every length or count is bounded by the bytes that remain (each
        // element takes at least one byte), so hostile counts cannot make
        // us allocate.
        (n <= self.buf.len()).then_some(n)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[derive(Default)]
struct Decoder {
    keys: Vec<String>,
}

impl Decoder {
    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        Some(match r.u8()? {
            T_NULL => Value::Null,
            T_FALSE => Value::Bool(false),
            T_TRUE => Value::Bool(true),
            T_UINT => Value::Number(Number::from(r.varint()?)),
            T_NEGINT => Value::Number(Number::from(!r.varint()? as i64)),
            T_FLOAT => {
                let mut b = [0u8; 8];
                b.copy_from_slice(r.take(8)?);
                Value::Number(Number::from_f64(f64::from_bits(u64::from_be_bytes(b)))?)
            }
            T_STRING => Value::String(r.string()?),
            T_BYTES => Value::Array(r.bytes()?.iter().map(|&b| Value::from(b)).collect()),
            T_ARRAY => {
                let n = r.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(r, depth + 1)?);
                }
                Value::Array(items)
            }
            T_OBJECT => {
                let n = r.len()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = match r.varint()? {
                        0 => {
                            let k = r.string()?;
                            self.keys.push(k.clone());
                            k
                        }
                        id => self.keys.get(usize::try_from(id - 1).ok()?)?.clone(),
                    };
                    let v = self.value(r, depth + 1)?;
                    map.insert(key, v);
                }
                Value::Object(map)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_json_and_raw_values() {
        let mut m = HashMap::new();
        m.insert(b"a".to_vec(), br#"{"vec":[1,2,255],"n":-5,"f":1.5,"s":"x","z":null,"t":true,"e":[],"big":[256,1],"nested":[{"vec":[0]},{"vec":[9]}]}"#.to_vec());
        m.insert(b"b".to_vec(), b"\xffnot json".to_vec());
        m.insert(b"c".to_vec(), b"[[1,2],[3]]".to_vec());
        let enc = encode(b"gid", &m);
        let (gid, back) = decode(&enc).unwrap();
        assert_eq!(gid, b"gid");
        assert_eq!(back.len(), 3);
        assert_eq!(back[&b"b".to_vec()], m[&b"b".to_vec()]);
        for k in [b"a".to_vec(), b"c".to_vec()] {
            let x: Value = serde_json::from_slice(&m[&k]).unwrap();
            let y: Value = serde_json::from_slice(&back[&k]).unwrap();
            assert_eq!(x, y);
        }
        // Deterministic.
        assert_eq!(enc, encode(b"gid", &m));
    }

    #[test]
    fn garbage_and_truncations_are_errors() {
        let mut m = HashMap::new();
        m.insert(
            b"k".to_vec(),
            br#"{"vec":[1,2,3],"o":{"vec":[4]}}"#.to_vec(),
        );
        let enc = encode(b"g", &m);
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..300 {
            let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            let _ = decode(&bytes);
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(MAGIC);
                let _ = decode(&bytes);
            }
        }
        // Hostile counts, deep nesting and bad tags behind a valid digest.
        let mut deep = MAGIC.to_vec();
        deep.extend_from_slice(&[1, b'g', 1, 1, b'k', KIND_JSON]);
        deep.extend(std::iter::repeat_n(T_ARRAY, 10_000).flat_map(|t| [t, 1]));
        assert!(decode(&sealed(deep)).is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[1, b'g', 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&sealed(huge)).is_err());
        let mut tags = MAGIC.to_vec();
        tags.extend_from_slice(&[1, b'g', 1, 1, b'k', KIND_JSON, 0xee]);
        assert!(decode(&sealed(tags)).is_err());
        for len in 0..300 {
            let mut body = MAGIC.to_vec();
            body.extend((0..len).map(|_| xorshift(&mut seed) as u8));
            let _ = decode(&sealed(body));
        }
        // The valid one still decodes.
        assert!(decode(&enc).is_ok());
    }

    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let d = ring::digest::digest(&ring::digest::SHA256, &body);
        body.extend_from_slice(d.as_ref());
        body
    }

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
}
