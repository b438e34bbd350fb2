//! End-to-end: the `hush` binary against a real hush-node, driven as a
//! subprocess with `--json`.
//!
//! Runs only when `HUSH_NODE_BIN` names a hush-node binary (for example
//! `HUSH_NODE_BIN=target/debug/hush-node cargo test -p hush-client --test e2e_cli`);
//! otherwise it prints a note and passes, so the crate's tests do not depend
//! on the server being built.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node() -> Option<Node> {
    let bin = std::env::var_os("HUSH_NODE_BIN")?;
    let data = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(bin)
        .arg("--data")
        .arg(data.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hush-node");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "hush-node did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Node {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _data: data,
    })
}

struct Dev {
    home: PathBuf,
    server: String,
}

impl Dev {
    fn new(root: &Path, name: &str, server: &str) -> Self {
        Self {
            home: root.join(name),
            server: server.to_string(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hush"))
            .arg("--server")
            .arg(&self.server)
            .arg("--home")
            .arg(&self.home)
            .arg("--json")
            .args(args)
            .output()
            .expect("run hush")
    }

    /// Runs a command that must succeed; returns its JSON lines.
    fn ok(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hush {args:?} failed: stdout={} stderr={}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out)
    }

    /// Runs a command that must fail; returns its error code.
    fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "hush {args:?} unexpectedly succeeded"
        );
        let v = lines(&out);
        v.last()
            .and_then(|e| e["error"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    fn texts(&self) -> Vec<(String, String)> {
        self.ok(&["sync"])
            .into_iter()
            .filter(|v| v.get("text").is_some())
            .map(|v| {
                (
                    v["sender"].as_str().unwrap_or_default().to_string(),
                    v["text"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn chat_flow_through_a_real_node() {
    let Some(node) = start_node() else {
        eprintln!("HUSH_NODE_BIN not set: skipping the end-to-end CLI test");
        return;
    };
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
    alice.ok(&["sync"]);
    carol.ok(&["sync"]);
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
    let code = alice.ok(&["device", "link-code"])[0]["code"]
        .as_str()
        .unwrap()
        .to_string();
    let laptop = Dev::new(root.path(), "alice-laptop", &node.url);
    let linked = laptop.ok(&["device", "link", &code]);
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
