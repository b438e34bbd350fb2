//! The server never sees plaintext: a unique canary string sent through
//! every path a client uses never appears in the node's store files
//! (database, WAL, shared memory) or in its logs, even at debug level. The
//! paths: WebSocket and SSE + HTTP clients, live fan-out and stored backlog,
//! group names, device linking, proposals, removals and self-updates.

mod common;

use std::path::Path;

use common::{canary, files_containing, Dev, Node};

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn canary_never_reaches_store_files_or_logs() {
    let mut node = Node::start_with_env(&[("RUST_LOG", "debug")]);
    let canary = canary();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    // bob uses the HTTP fallback: SSE stream in, POST /v1/rpc out.
    let bob = Dev::new(root.path(), "bob", &node.url).with_args(&["--transport", "sse"]);
    let carol = Dev::new(root.path(), "carol", &node.url);
    for (dev, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        dev.ok(&["register", name]);
    }

    // The group name is secret too (it travels inside MLS).
    let name = format!("{canary} room");
    let gid = alice.ok(&["group", "create", &name])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", &gid, "bob", "carol"]);
    // carol online (live fan-out path), bob offline (stored backlog path).
    let carol_live = carol.listen();
    let first = format!("{canary} first from alice");
    alice.send(&gid, &first);
    let live = carol_live.texts_until(|got| got.iter().any(|m| m.text == first));
    assert!(live.iter().any(|m| m.text == first));
    let synced = bob.ok(&["sync"]);
    assert!(
        synced.iter().any(|v| v["text"] == first.as_str()),
        "bob did not receive the canary: {synced:?}"
    );
    assert!(
        synced.iter().any(|v| v["name"] == name.as_str()),
        "bob did not learn the group name: {synced:?}"
    );
    bob.send(&gid, &format!("{canary} reply from bob"));

    // A second device of alice joins by external commit and writes.
    let code = alice.ok(&["device", "link-code", "--wait", "0"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let laptop = Dev::new(root.path(), "alice-laptop", &node.url);
    laptop.ok(&["device", "link", &code, "--wait", "0"]);
    laptop.send(&gid, &format!("{canary} from the laptop"));

    // Membership changes: bob leaves (a proposal committed by another
    // member), carol is removed, the laptop rotates its keys; then more
    // traffic in the new epoch.
    bob.ok(&["group", "leave", &gid]);
    alice.ok(&["sync"]);
    alice.ok(&["group", "remove", &gid, "carol"]);
    // A self-update (key rotation) by the laptop, then more traffic.
    let updated = laptop.ok(&["group", "update", &gid]);
    assert!(updated[0]["epoch"].as_u64().is_some(), "{updated:?}");
    alice.send(&gid, &format!("{canary} after the changes"));
    let seen = laptop.sync_texts();
    assert!(
        seen.iter().any(|m| m.text.contains(&canary)),
        "the laptop read nothing: {seen:?}"
    );
    drop(carol_live);

    // Crash the node so the WAL keeps what it has (no checkpoint on exit).
    node.kill9();
    let data_files = files_in(&node.data);
    assert!(
        data_files.iter().any(|f| f.ends_with("-wal")),
        "expected a WAL file to check, found {data_files:?}"
    );
    let hits = files_containing(&node.data, canary.as_bytes());
    assert!(hits.is_empty(), "canary found in store files: {hits:?}");
    let log = node.log_text();
    assert!(!log.is_empty(), "the node logged nothing at debug level");
    assert!(!log.contains(&canary), "canary found in the node's log");

    // Positive control: the same search finds it where it belongs — in the
    // clients' own state.
    let client_hits = files_containing(&alice.home, canary.as_bytes());
    assert!(
        !client_hits.is_empty(),
        "the search cannot find the canary even in the client's state"
    );
}
