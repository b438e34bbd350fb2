//! End to end, the `hush` binary against a real node: trusting the server
//! no more than necessary. Safety numbers agree on both sides and can be
//! marked verified; a contact's new device (or one that appears on your own
//! account) is warned about and unverifies the contact.

mod common;

use common::{Dev, Node};
use serde_json::Value;

fn warnings(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l.get("warning").is_some())
        .collect()
}

#[test]
fn safety_numbers_agree_and_a_new_device_is_warned_about() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    alice.ok(&["group", "create", "friends"]);
    alice.ok(&["group", "add", "friends", "bob"]);
    bob.ok(&["sync"]);

    // The same 60 digits on both sides.
    let a = alice.ok(&["verify", "bob"]);
    let b = bob.ok(&["verify", "alice"]);
    let number = a[0]["safety_number"].as_str().unwrap().to_string();
    assert_eq!(number.len(), 60, "{a:?}");
    assert!(number.bytes().all(|c| c.is_ascii_digit()), "{number}");
    assert_eq!(b[0]["safety_number"], number.as_str());
    assert_eq!(a[0]["verified"], false);
    assert_eq!(a[0]["devices"].as_array().unwrap().len(), 1);
    let marked = alice.ok(&["verify", "bob", "--mark"]);
    assert_eq!(marked[0]["verified"], true);
    assert_eq!(alice.ok(&["verify", "bob"])[0]["verified"], true);
    assert_eq!(alice.err(&["verify", "alice"]), "INVALID_ARGUMENT");
    assert_eq!(alice.err(&["verify", "nobody_here"]), "NOT_FOUND");

    // bob links a second device: it joins the group by external commit.
    let code = bob.ok(&["device", "link-code", "--wait", "0"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let laptop = Dev::new(root.path(), "bob-laptop", &node.url);
    laptop.ok(&["device", "link", &code, "--wait", "0"]);
    let laptop_id = laptop.ok(&["verify", "alice"])[0]["own_devices"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(laptop_id, 2, "the laptop sees both of bob's devices");

    // alice is warned once (she was verified with bob: not any more).
    let lines = alice.ok(&["sync"]);
    let w = warnings(&lines);
    assert_eq!(w.len(), 1, "{lines:?}");
    assert_eq!(w[0]["warning"], "devices_changed");
    assert_eq!(w[0]["user"], "bob");
    assert_eq!(w[0]["added"].as_array().unwrap().len(), 1);
    assert_eq!(w[0]["was_verified"], true);
    assert!(warnings(&alice.ok(&["sync"])).is_empty(), "warned twice");
    // bob's first device is warned about its own account.
    let lines = bob.ok(&["sync"]);
    let w = warnings(&lines);
    assert_eq!(w.len(), 1, "{lines:?}");
    assert_eq!(w[0]["warning"], "own_devices_changed");

    // Marking needs a fresh look at the new number first.
    assert_eq!(alice.err(&["verify", "bob", "--mark"]), "INVALID_ARGUMENT");
    let a = alice.ok(&["verify", "bob"]);
    assert_eq!(a[0]["verified"], false);
    assert_eq!(a[0]["changed"], true);
    assert_ne!(a[0]["safety_number"], number.as_str(), "the number changed");
    assert_eq!(
        bob.ok(&["verify", "alice"])[0]["safety_number"],
        a[0]["safety_number"]
    );
    assert_eq!(
        laptop.ok(&["verify", "alice"])[0]["safety_number"],
        a[0]["safety_number"],
        "every device of bob shows the same number"
    );
    assert_eq!(alice.ok(&["verify", "bob"])[0]["changed"], false);
    assert_eq!(alice.ok(&["verify", "bob", "--mark"])[0]["verified"], true);

    // Messages keep flowing and are attributed right.
    laptop.ok(&["send", "friends", "from bob's laptop"]);
    let texts = alice.sync_texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(
        (texts[0].sender.as_str(), texts[0].text.as_str()),
        ("bob", "from bob's laptop")
    );
}

#[test]
fn a_revoked_device_is_cut_off_and_removed_from_its_groups() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    alice.ok(&["group", "create", "friends"]);
    alice.ok(&["group", "add", "friends", "bob"]);
    bob.ok(&["sync"]);

    // alice links a laptop; it joins the group by external commit.
    let code = alice.ok(&["device", "link-code", "--wait", "0"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let laptop = Dev::new(root.path(), "alice-laptop", &node.url);
    let linked = laptop.ok(&["device", "link", &code, "--wait", "0"]);
    let laptop_id = linked[0]["device_id"].as_str().unwrap().to_string();
    assert_eq!(linked[0]["joined"].as_array().unwrap().len(), 1);
    bob.ok(&["sync"]);

    let list = alice.ok(&["device", "list"]);
    assert_eq!(list.len(), 2, "{list:?}");
    let this: Vec<bool> = list
        .iter()
        .map(|d| d["this_device"].as_bool().unwrap())
        .collect();
    assert_eq!(this, [true, false], "{list:?}");
    assert_eq!(list[1]["device_id"], laptop_id.as_str());
    assert_eq!(list[1]["signature_key"].as_str().unwrap().len(), 64);

    // The laptop is online when it is revoked.
    let listener = laptop.listen();
    bob.send("friends", "before the revocation");
    listener.texts_until(|t| t.iter().any(|m| m.text == "before the revocation"));

    assert_eq!(alice.err(&["device", "revoke", "nope"]), "INVALID_ARGUMENT");
    let mine = list[0]["device_id"].as_str().unwrap();
    assert_eq!(alice.err(&["device", "revoke", mine]), "INVALID_ARGUMENT");
    assert_eq!(
        laptop.err(&["device", "revoke", "zz_not_a_device"]),
        "INVALID_ARGUMENT"
    );

    let revoked = alice.ok(&["device", "revoke", &laptop_id[..8]]);
    assert_eq!(revoked[0]["device_id"], laptop_id.as_str());
    let removed_from = revoked[0]["removed_from"].as_array().unwrap();
    assert_eq!(removed_from.len(), 1, "{revoked:?}");

    // Its live connection was closed, and it cannot log in again.
    let seen = listener.values_until(|v| v.iter().any(|l| l.get("error").is_some()));
    let err = seen.iter().find_map(|l| l.get("error")).unwrap();
    assert_eq!(err, "NOT_FOUND", "{seen:?}");
    assert_eq!(laptop.err(&["sync"]), "NOT_FOUND");
    assert_eq!(laptop.err(&["device", "link-code"]), "NOT_FOUND");

    // The directory no longer lists it: one device left, and no warning
    // for alice's own revocation.
    let list = alice.ok(&["device", "list"]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        alice.ok(&["verify", "bob"])[0]["own_devices"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let lines = alice.ok(&["sync"]);
    assert!(
        warnings(&lines).is_empty(),
        "alice is not warned about her own revocation: {lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["text"] == "before the revocation")
            .count(),
        1
    );

    // bob's client processes the remove; the group goes on without the leaf.
    let lines = bob.ok(&["sync"]);
    assert!(
        lines.iter().any(|l| l["event"] == "removed"),
        "bob saw no remove: {lines:?}"
    );
    assert_eq!(
        bob.ok(&["verify", "alice"])[0]["devices"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    bob.send("friends", "after the revocation");
    let texts = alice.sync_texts();
    assert_eq!(
        texts.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["after the revocation"]
    );
}
