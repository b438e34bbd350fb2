//! SSE `Last-Event-ID` (`GET /v1/events`): the resume position a client
//! sends back on reconnect, parsed by `ResumeId::parse`
//! (`crates/hush-node/src/gateway/sse.rs`). The header reaches the parser
//! as `&str` (actix's `to_str`, visible ASCII); the parser must hold for
//! any string.

use hush_node::gateway::sse::{ResumeId, MAX_ID_BYTES};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(id) = ResumeId::parse(text) else {
        return;
    };
    assert!(text.len() <= MAX_ID_BYTES, "accepted an id above the cap");
    for g in id.groups.keys() {
        assert!(
            !g.is_empty() && g.len() <= hush_ds::MAX_GROUP_ID_BYTES,
            "accepted a bad group id"
        );
    }
    // What the server accepted, it writes back in its own form, and that
    // form means the same position.
    let again = id.encode();
    assert_eq!(
        ResumeId::parse(&again).as_ref(),
        Some(&id),
        "re-encoded id {again:?} does not parse back"
    );
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut id = ResumeId::default();
    let mut out = vec![("empty_v1".to_string(), id.encode().into_bytes())];
    id.inbox_seq = 42;
    id.groups.insert(b"group-a".to_vec(), 7);
    id.groups.insert(vec![0xff, 0x00, 0x2e], u64::MAX);
    out.push(("two_groups".into(), id.encode().into_bytes()));
    out.push(("junk_v2".into(), b"v2.1".to_vec()));
    out.push(("bad_b64".into(), b"v1.1.YQ=:3".to_vec()));
    out
}
