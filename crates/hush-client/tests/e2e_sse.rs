//! The SSE transport end to end: a real hush-node process, `hush` CLI
//! processes with `--transport ws|sse|auto`, and a small proxy (see
//! `common/proxy.rs`) that refuses WebSocket upgrades or cuts connections.

mod common;

use common::proxy::Proxy;
use common::{Dev, Msg, Node};
use serde_json::Value;

fn msg(seq: u64, sender: &str, text: &str) -> Msg {
    Msg {
        seq,
        sender: sender.into(),
        text: text.into(),
    }
}

fn others(me: &str, all: &[Msg]) -> Vec<Msg> {
    let mut v: Vec<Msg> = all.iter().filter(|m| m.sender != me).cloned().collect();
    v.sort();
    v
}

fn has_event(values: &[Value], event: &str) -> bool {
    values.iter().any(|v| v["event"] == event)
}

/// One member on SSE (`--transport sse`), the others on WebSocket: live
/// delivery reaches both kinds of listeners in order, the SSE member's
/// sends and commits (a key rotation, adding a member) go through
/// `POST /v1/rpc`, and every member ends with the same timeline.
#[test]
fn mixed_group_with_one_member_on_sse_converses_normally() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url).with_args(&["--transport", "ws"]);
    let bob = Dev::new(root.path(), "bob", &node.url).with_args(&["--transport", "sse"]);
    let carol = Dev::new(root.path(), "carol", &node.url).with_args(&["--transport", "ws"]);
    let dave = Dev::new(root.path(), "dave", &node.url).with_args(&["--transport", "ws"]);
    for (dev, name) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&carol, "carol"),
        (&dave, "dave"),
    ] {
        dev.ok(&["register", name]);
    }
    let gid = alice.ok(&["group", "create", "mixed"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", &gid, "bob", "carol"]);

    // Live: bob listens over SSE, carol over WebSocket. Each has synced
    // once it printed the group's name; what alice sends then is pushed.
    let bob_live = bob.listen();
    let carol_live = carol.listen();
    bob_live.values_until(|v| has_event(v, "name"));
    carol_live.values_until(|v| has_event(v, "name"));
    let live: Vec<Msg> = (0..5)
        .map(|i| {
            let text = format!("live {i}");
            msg(alice.send(&gid, &text), "alice", &text)
        })
        .collect();
    assert_eq!(bob_live.texts_until(|g| g.len() >= live.len()), live);
    assert_eq!(carol_live.texts_until(|g| g.len() >= live.len()), live);
    drop(bob_live);
    drop(carol_live);

    // Everyone talks, the SSE member included, and commits over SSE.
    let mut talk = Vec::new();
    for round in 0..3 {
        for (dev, name) in [(&bob, "bob"), (&alice, "alice"), (&carol, "carol")] {
            let text = format!("round {round} from {name}");
            talk.push(msg(dev.send(&gid, &text), name, &text));
        }
    }
    let rotated = bob.ok(&["group", "update", &gid]);
    assert!(rotated[0]["epoch"].as_u64().unwrap() >= 2, "{rotated:?}");
    let added = bob.ok(&["group", "add", &gid, "dave"]);
    assert_eq!(added[0]["added"], serde_json::json!(["dave"]));
    let mut after_dave = Vec::new();
    for (dev, name) in [(&dave, "dave"), (&bob, "bob"), (&alice, "alice")] {
        let text = format!("with dave from {name}");
        after_dave.push(msg(dev.send(&gid, &text), name, &text));
    }
    let all: Vec<Msg> = live
        .iter()
        .chain(&talk)
        .chain(&after_dave)
        .cloned()
        .collect();
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "sends are sequential: {all:?}"
    );
    let since_live: Vec<Msg> = talk.iter().chain(&after_dave).cloned().collect();

    // Each prints exactly the others' messages it has not shown yet, in
    // seq order: alice never synced, bob and carol printed `live` already.
    assert_eq!(alice.sync_texts(), others("alice", &all));
    assert_eq!(bob.sync_texts(), others("bob", &since_live));
    assert_eq!(carol.sync_texts(), others("carol", &since_live));
    assert_eq!(dave.sync_texts(), others("dave", &after_dave));
    for dev in [&alice, &bob, &carol, &dave] {
        assert!(dev.sync_texts().is_empty(), "a second sync repeated");
    }
    // Everyone is in the same epoch with the same members.
    let views: Vec<Value> = [&alice, &bob, &carol, &dave]
        .iter()
        .map(|d| d.ok(&["group", "list"])[0].clone())
        .collect();
    for v in &views {
        assert_eq!(v["epoch"], views[0]["epoch"], "{views:?}");
        assert_eq!(
            v["members"],
            serde_json::json!(["alice", "bob", "carol", "dave"])
        );
    }
}

/// Behind a proxy that refuses WebSocket upgrades, `--transport ws` fails,
/// `auto` (the default) falls back to SSE and works; a listener on the
/// fallback survives a cut of every connection by resuming its stream with
/// `Last-Event-ID` (no new login) and prints every message exactly once.
#[test]
fn auto_falls_back_to_sse_when_upgrades_are_refused_and_resumes_after_a_drop() {
    let node = Node::start();
    let proxy = Proxy::start(&node.url, true);
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    alice.ok(&["register", "alice"]);

    // Registering over the proxy: the upgrade is refused, SSE takes over.
    let bob = Dev::new(root.path(), "bob", &proxy.url);
    bob.ok(&["register", "bob"]);
    let refused = proxy
        .heads()
        .into_iter()
        .filter(|h| h.starts_with("get /v1/ws") && h.contains("upgrade: websocket"))
        .count();
    assert!(
        refused >= 1,
        "no upgrade was attempted: {:?}",
        proxy.heads()
    );
    assert!(
        !proxy.heads_starting("post /v1/rpc").is_empty(),
        "requests did not go to /v1/rpc: {:?}",
        proxy.heads()
    );
    let ws_only = Dev::new(root.path(), "bob", &proxy.url).with_args(&["--transport", "ws"]);
    assert_eq!(ws_only.err(&["sync"]), "WEBSOCKET");

    let gid = alice.ok(&["group", "create", "fallback"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", &gid, "bob"]);
    let listener = bob.listen();
    listener.values_until(|v| has_event(v, "name"));
    let streams_before = proxy.heads_starting("get /v1/events").len();
    assert!(streams_before >= 1, "no event stream: {:?}", proxy.heads());
    let logins_before = proxy.heads_starting("post /v1/login").len();

    let first = msg(
        alice.send(&gid, "before the cut"),
        "alice",
        "before the cut",
    );
    assert_eq!(listener.texts_until(|g| !g.is_empty()), vec![first.clone()]);

    proxy.cut_all();
    let rest: Vec<Msg> = (0..3)
        .map(|i| {
            let text = format!("after the cut {i}");
            msg(alice.send(&gid, &text), "alice", &text)
        })
        .collect();
    assert_eq!(listener.texts_until(|g| g.len() >= rest.len()), rest);
    let resumed: Vec<String> = proxy
        .heads_starting("get /v1/events")
        .into_iter()
        .skip(streams_before)
        .collect();
    assert!(
        resumed.iter().any(|h| h.contains("last-event-id: v1.")),
        "the stream was not resumed with Last-Event-ID: {resumed:?}"
    );
    assert_eq!(
        proxy.heads_starting("post /v1/login").len(),
        logins_before,
        "the listener logged in again instead of resuming"
    );
    drop(listener);

    // bob's replies (over SSE) reach alice (WebSocket), and nothing is
    // printed twice on either side.
    let reply = msg(bob.send(&gid, "got them all"), "bob", "got them all");
    assert_eq!(alice.sync_texts(), vec![reply]);
    assert!(bob.sync_texts().is_empty());
}
