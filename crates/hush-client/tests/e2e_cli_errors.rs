//! End-to-end: the errors a person meets, each naming the thing that is
//! wrong, from the `hush` binary against a real hush-node (and against one
//! that is gone).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::Instant;

use common::{Dev, Node, PATIENCE};

/// stderr of a command that must fail, and its JSON error object.
fn fails(dev: &Dev, args: &[&str]) -> (String, serde_json::Value) {
    let out: Output = dev.run(args);
    assert!(
        !out.status.success(),
        "hush {args:?} unexpectedly succeeded"
    );
    let err = common::lines(&out)
        .last()
        .cloned()
        .expect("an error object on stdout");
    (String::from_utf8_lossy(&out.stderr).to_string(), err)
}

#[test]
fn errors_name_what_is_wrong() {
    let mut node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "dupuser"]);

    // A duplicate group name is accepted, with a warning that says how to
    // pick one of them later.
    let first = alice.ok(&["group", "create", "friends"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    let out = alice.run(&["group", "create", "friends"]);
    assert!(out.status.success());
    let second = common::lines(&out)[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains(&format!(
            "you already have a group named \"friends\" (id {}",
            &first[..8]
        )),
        "{warning}"
    );

    // Using the name now is ambiguous, and the error says how to pick.
    let (stderr, err) = fails(&alice, &["send", "friends", "hi"]);
    assert_eq!(err["error"], "AMBIGUOUS_GROUP");
    for id in [&first, &second] {
        assert!(
            stderr.contains(&format!("friends (id {}…)", &id[..8])),
            "{stderr}"
        );
    }
    assert!(stderr.contains("use the id prefix"), "{stderr}");
    let g = &first[..8];

    // A missing handle is named.
    let (stderr, err) = fails(&alice, &["group", "add", g, "dupuser", "zed"]);
    assert_eq!(err["error"], "NOT_FOUND");
    assert!(stderr.contains("no user named zed"), "{stderr}");

    // A removed member is told so, by the group's name.
    alice.ok(&["group", "add", g, "dupuser"]);
    bob.ok(&["sync"]);
    alice.ok(&["group", "remove", g, "dupuser"]);
    bob.ok(&["sync"]);
    let (stderr, err) = fails(&bob, &["send", "friends", "still here?"]);
    assert_eq!(err["error"], "NOT_MEMBER");
    assert!(stderr.contains("you were removed from friends"), "{stderr}");
    let list = bob.ok(&["group", "list"]);
    assert_eq!(list[0]["status"], "removed", "{list:?}");

    // A mistyped --home: a clear error, and no new state behind it.
    let typo = Dev::new(root.path(), "alcie", &node.url);
    let (stderr, err) = fails(&typo, &["send", "friends", "x"]);
    assert_eq!(err["error"], "NOT_REGISTERED");
    assert!(
        stderr.contains(&format!("no account in {}", typo.home.display())),
        "{stderr}"
    );
    assert!(stderr.contains("hush register"), "{stderr}");
    assert!(
        !typo.home.join("hush.db").exists(),
        "a state file was created"
    );
    let (_, err) = fails(&typo, &["group", "list"]);
    assert_eq!(err["error"], "NOT_REGISTERED");
    assert!(!typo.home.exists(), "the mistyped home was created");

    // The server goes away.
    node.kill9();
    let hint = format!(
        "cannot reach {}: is hush-node running? (connection refused)",
        node.url
    );
    let (stderr, err) = fails(&alice, &["send", g, "anyone?"]);
    assert_eq!(err["error"], "UNREACHABLE");
    assert!(stderr.contains(&hint), "{stderr}");

    // `group list` works offline, from local state.
    let out = alice.run(&["group", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = common::lines(&out)
        .iter()
        .map(|v| v["group"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.contains(&first) && listed.contains(&second));
    assert!(String::from_utf8_lossy(&out.stderr).contains("offline"));

    // `listen` says so and retries, visibly, with growing waits.
    let mut child = alice
        .command(&["listen"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut retries = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        assert!(line.contains(&hint), "{line}");
        retries.push(line);
        if retries.len() == 3 || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(retries.len(), 3, "{retries:?}");
    assert!(retries[0].contains("retrying in 250 ms"), "{retries:?}");
    assert!(retries[1].contains("retrying in 500 ms"), "{retries:?}");
    assert!(retries[2].contains("retrying in 1.0 s"), "{retries:?}");
}

#[test]
fn register_against_nothing_names_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let root = tempfile::tempdir().unwrap();
    let dev = Dev::new(root.path(), "carol", &url);
    let (stderr, err) = fails(&dev, &["register", "carol"]);
    assert_eq!(err["error"], "UNREACHABLE");
    assert!(
        stderr.contains(&format!(
            "cannot reach {url}: is hush-node running? (connection refused)"
        )),
        "{stderr}"
    );
}
