//! End-to-end: linking a second CLI device by Add + Welcome. The device
//! that prints the code waits for the new one and adds it to each of its
//! groups, then tells each group its name in the new epoch; the new device
//! waits for those Welcomes. Before this, a linked device joined by external
//! commit and learnt no group name until the member with the lowest leaf
//! synced: `send friends` failed on it with `no group matches "friends"`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{texts, Dev, Node};

#[test]
fn a_linked_cli_device_is_added_to_every_group_and_knows_their_names() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    let friends = alice.ok(&["group", "create", "friends"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", "friends", "bob"]);
    let work = alice.ok(&["group", "create", "work"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.send("friends", "before the laptop");
    // bob is in "friends" only, and is offline throughout the link (the
    // lowest-leaf member of neither group but alice herself).

    // alice's phone prints a code and waits for the new device.
    let mut waiter = alice
        .command(&["device", "link-code", "--wait", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn link-code");
    let mut out = BufReader::new(waiter.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).expect("code line");
    let code = first["code"].as_str().expect("a code").to_string();

    let laptop = Dev::new(root.path(), "alice-laptop", &node.url);
    let linked = laptop.ok(&["device", "link", &code]);
    assert_eq!(linked[0]["user_id"], "alice");
    let mut joined: Vec<String> = linked[0]["joined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    joined.sort();
    let mut both = vec![friends.clone(), work.clone()];
    both.sort();
    assert_eq!(joined, both);

    // The waiting device reports what it did and exits.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = waiter.wait().unwrap();
    assert!(status.success(), "link-code failed: {rest}");
    let done: serde_json::Value = serde_json::from_str(rest.trim()).expect("linked line");
    let device = linked[0]["device_id"].as_str().unwrap();
    assert_eq!(done["linked"], device);
    let mut added: Vec<String> = done["added_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    added.sort();
    assert_eq!(added, both);
    assert_eq!(done["failed"], serde_json::json!([]));

    // The new device knows both groups by name right away.
    let names: Vec<String> = laptop
        .ok(&["group", "list"])
        .iter()
        .filter_map(|g| g["name"].as_str().map(String::from))
        .collect();
    assert!(
        names.contains(&"friends".to_string()) && names.contains(&"work".to_string()),
        "{names:?}"
    );
    let seq = laptop.send("friends", "hello from the laptop");
    laptop.send("work", "laptop at work");

    // bob reads the laptop's message under alice's name, and answers.
    let seen = bob.sync_texts();
    assert!(
        seen.iter()
            .any(|m| m.seq == seq && m.sender == "alice" && m.text == "hello from the laptop"),
        "{seen:?}"
    );
    bob.send("friends", "hi alice's laptop");
    let on_laptop = texts(&laptop.ok(&["sync"]));
    assert!(
        on_laptop
            .iter()
            .any(|m| m.sender == "bob" && m.text == "hi alice's laptop"),
        "{on_laptop:?}"
    );
    // The phone reads the laptop too.
    let on_phone = alice.sync_texts();
    assert!(
        on_phone
            .iter()
            .any(|m| m.sender == "alice" && m.text == "laptop at work"),
        "{on_phone:?}"
    );
}
