//! End-to-end: the `hush` binary against a real hush-node, driven as a
//! subprocess with `--json`.
//! The node binary comes from `common::node_bin` (built by cargo if needed).

mod common;

use common::{Dev, Node};

impl Dev {
    fn texts(&self) -> Vec<(String, String)> {
        self.sync_texts()
            .into_iter()
            .map(|m| (m.sender, m.text))
            .collect()
    }
}

#[test]
fn chat_flow_through_a_real_node() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    let carol = Dev::new(root.path(), "carol", &node.url);

    let r = alice.ok(&["register", "alice"]);
    assert_eq!(r[0]["user_id"], "alice");
    assert_eq!(r[0]["device_id"].as_str().unwrap().len(), 16);
    bob.ok(&["register", "bob"]);
    carol.ok(&["register", "carol"]);
    assert_eq!(
        Dev::new(root.path(), "bob2", &node.url).err(&["register", "bob"]),
        "ALREADY_EXISTS"
    );

    let g = alice.ok(&["group", "create", "friends"]);
    let gid = g[0]["group"].as_str().unwrap().to_string();
    let added = alice.ok(&["group", "add", "friends", "bob"]);
    assert_eq!(added[0]["added"], serde_json::json!(["bob"]));

    let seq = alice.ok(&["send", "friends", "hello bob"])[0]["seq"]
        .as_u64()
        .unwrap();
    assert!(seq > 0);
    let synced = bob.ok(&["sync"]);
    assert!(synced
        .iter()
        .any(|v| v["event"] == "joined" && v["group"] == gid.as_str()));
    assert!(synced
        .iter()
        .any(|v| v["event"] == "name" && v["name"] == "friends"));
    let text = synced
        .iter()
        .find(|v| v.get("text").is_some())
        .expect("bob sees the text");
    assert_eq!(text["sender"], "alice");
    assert_eq!(text["text"], "hello bob");
    assert_eq!(text["group"], gid.as_str());
    assert_eq!(text["seq"].as_u64(), Some(seq));
    // Nothing is printed twice.
    assert!(bob.texts().is_empty());

    // bob knows the group by name now.
    bob.ok(&["send", "friends", "hi alice"]);
    assert_eq!(
        alice.texts(),
        vec![("bob".to_string(), "hi alice".to_string())]
    );

    // carol joins; both others can talk to her.
    alice.ok(&["group", "add", &gid[..8], "carol"]);
    bob.ok(&["send", "friends", "welcome carol"]);
    assert_eq!(
        carol.texts(),
        vec![("bob".to_string(), "welcome carol".to_string())]
    );

    // bob leaves; a remaining member commits his proposal.
    bob.ok(&["group", "leave", "friends"]);
    // alice's client commits bob's leave; her log (what her chat shows)
    // has it as bob leaving, not as her removing him.
    alice.ok(&["sync"]);
    let events: Vec<(String, String)> = {
        let db = rusqlite::Connection::open(alice.home.join("hush.db")).unwrap();
        let mut st = db
            .prepare("SELECT kind, sender FROM hush_log WHERE kind IN ('left', 'removed')")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(events, vec![("left".to_string(), "bob".to_string())]);
    // A leave reads as a leave, not as a removal by whoever committed it.
    let c = carol.ok(&["sync"]);
    assert!(
        c.iter()
            .any(|v| v["event"] == "left" && v["members"] == serde_json::json!(["bob"])),
        "{c:?}"
    );
    assert!(!c.iter().any(|v| v["event"] == "removed"), "{c:?}");
    alice.ok(&["send", "friends", "bye bob"]);
    assert_eq!(
        carol.texts(),
        vec![("alice".to_string(), "bye bob".to_string())]
    );
    let list = alice.ok(&["group", "list"]);
    let members = list[0]["members"].as_array().unwrap();
    assert!(
        !members.iter().any(|m| m == "bob"),
        "bob still listed: {members:?}"
    );

    // alice removes carol.
    alice.ok(&["group", "remove", "friends", "carol"]);
    let c = carol.ok(&["sync"]);
    assert!(c.iter().any(|v| v["event"] == "removed"));
    assert_eq!(carol.err(&["send", &gid, "hello?"]), "NOT_MEMBER");

    // A second device of alice joins her groups and reads new messages.
    let code = alice.ok(&["device", "link-code", "--wait", "0"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let laptop = Dev::new(root.path(), "alice-laptop", &node.url);
    let linked = laptop.ok(&["device", "link", &code, "--wait", "0"]);
    assert_eq!(linked[0]["user_id"], "alice");
    assert_eq!(linked[0]["joined"], serde_json::json!([gid]));
    alice.ok(&["send", &gid, "to all my devices"]);
    let seen = laptop.texts();
    assert!(
        seen.contains(&("alice".to_string(), "to all my devices".to_string())),
        "{seen:?}"
    );

    // Unknown groups and users are clean errors.
    assert_eq!(alice.err(&["send", "nope", "x"]), "GROUP_NOT_FOUND");
    let code = alice.err(&["group", "add", "friends", "nobody_here"]);
    assert!(code == "NOT_FOUND" || code == "NO_KEY_PACKAGE", "{code}");
}
