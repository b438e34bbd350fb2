//! End-to-end: many `hush` processes on one home at once. Two homes (alice,
//! bob) share a group; in each home a `hush listen` runs and a chat-like
//! reader (the SDK client doing what `hush chat` does: stay connected,
//! apply every pushed event, show the group's log) runs beside it, while
//! 100 `hush send` processes, split over both homes, start at the same
//! moment. Every send must succeed, every message must be decrypted exactly
//! once per home (no process ever processes an entry another one already
//! applied, no stale MLS state is ever used), every reader must show every
//! message once, and the MLS state must be intact afterwards.
//!
//! The node is started with per-user connection and login limits raised:
//! 50 simultaneous logins of one device are what this test is about, not
//! what the server's abuse limits are for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{node_bin, texts, Dev, Msg, PATIENCE};
use hush_client::client::Client;
use hush_client::store::LogRow;
use serde_json::Value;

/// Sends per home.
const SENDS_PER_HOME: usize = 50;

/// What no process on a shared home may ever log or print.
const FORBIDDEN: &[&str] = &[
    "database is locked",
    "does not process",
    "Malformed",
    "deferred action failed",
    "undecodable",
];

struct NodeProc {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node() -> NodeProc {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_connections_per_user = 256\n\n\
         [rate_limits]\nip_per_sec = 10000.0\nip_burst = 10000.0\n\
         account_per_sec = 10000.0\naccount_burst = 10000.0\n",
    )
    .unwrap();
    let mut child = Command::new(node_bin())
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hush-node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(PATIENCE).expect("hush-node listening");
    NodeProc {
        child,
        url: format!("http://{addr}"),
        _dir: dir,
    }
}

/// A `hush listen` whose stdout lines arrive on a channel and whose stderr
/// (warnings on) goes to a file.
struct Listen {
    child: Child,
    rx: mpsc::Receiver<Value>,
    stderr: std::path::PathBuf,
}

impl Listen {
    fn start(dev: &Dev, stderr: &Path) -> Self {
        let mut child = dev
            .command(&["listen"])
            .env("RUST_LOG", "hush_client=warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("spawn hush listen");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            rx,
            stderr: stderr.to_path_buf(),
        }
    }

    /// Text lines until `want` distinct texts were printed (panics after
    /// [`PATIENCE`]).
    fn texts_until(&mut self, want: usize) -> Vec<Msg> {
        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while got
            .iter()
            .map(|m: &Msg| &m.text)
            .collect::<BTreeSet<_>>()
            .len()
            < want
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => got.extend(texts(&[v])),
                Err(_) => panic!(
                    "listen printed only {} texts: {got:?}; exit: {:?}; stderr:\n{}",
                    got.len(),
                    self.child.try_wait(),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
        // Anything printed right behind (a duplicate) is caught too.
        while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(300)) {
            got.extend(texts(&[v]));
        }
        got
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chat-like reader: the SDK client on `home`, connected, applying
/// every pushed event as `hush chat` does, until `stop`; returns the
/// group's log as the chat would show it.
fn chat_reader(
    home: std::path::PathBuf,
    server: String,
    gid: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<LogRow>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = Client::open(&home, Some(&server)).unwrap();
            while !stop.load(Ordering::SeqCst) {
                if !client.is_connected() {
                    // As `hush chat`: a lost connection is reconnected.
                    if let Err(e) = client.connect().await {
                        assert!(e.is_transient(), "reader: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                match tokio::time::timeout(Duration::from_millis(200), client.wait_event()).await {
                    Err(_) => {}
                    Ok(Ok(p)) => {
                        if let Err(e) = client.handle(p).await {
                            assert!(e.is_transient(), "reader: {e}");
                            client.close().await;
                        }
                    }
                    Ok(Err(_)) => client.close().await,
                }
            }
            client.close().await;
            client.db().recent_log(&gid, 10_000).unwrap()
        })
    })
}

fn assert_clean(what: &str, text: &str) {
    for bad in FORBIDDEN {
        assert!(!text.contains(bad), "{what} reported {bad:?}:\n{text}");
    }
}

#[test]
fn one_home_many_processes_nothing_lost_nothing_doubled() {
    let started = Instant::now();
    let node = start_node();
    let root = tempfile::tempdir().unwrap();
    let alice = Dev::new(root.path(), "alice", &node.url);
    let bob = Dev::new(root.path(), "bob", &node.url);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    let gid = alice.ok(&["group", "create", "room"])[0]["group"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "add", "room", "bob"]);
    bob.ok(&["sync"]);
    let gid_bytes = hex::decode(&gid).unwrap();

    let logs = root.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut listen_a = Listen::start(&alice, &logs.join("listen-alice"));
    let mut listen_b = Listen::start(&bob, &logs.join("listen-bob"));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_a = chat_reader(
        alice.home.clone(),
        node.url.clone(),
        gid_bytes.clone(),
        stop.clone(),
    );
    let reader_b = chat_reader(
        bob.home.clone(),
        node.url.clone(),
        gid_bytes.clone(),
        stop.clone(),
    );

    // 100 sends at once, alternating homes.
    let mut sends = Vec::new();
    for i in 0..2 * SENDS_PER_HOME {
        let (dev, who) = if i % 2 == 0 {
            (&alice, "alice")
        } else {
            (&bob, "bob")
        };
        let text = format!("{who} #{i}");
        let child = dev
            .command(&["send", "room", &text])
            .env("RUST_LOG", "hush_client=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hush send");
        sends.push((who, text, child));
    }
    let mut sent: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (who, text, child) in sends {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "send {text:?} failed: stdout={} stderr={stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_clean(&format!("send {text:?}"), &stderr);
        let seq = common::lines(&out)[0]["seq"].as_u64().expect("a seq");
        sent.insert(text, (who.to_string(), seq));
    }
    let seqs: BTreeSet<u64> = sent.values().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len(), 2 * SENDS_PER_HOME, "every message its own seq");

    // Each listen prints every message of the other home exactly once (a
    // home's own messages were shown by the `send` that sent them).
    for (listen, me, other) in [
        (&mut listen_a, "alice", "bob"),
        (&mut listen_b, "bob", "alice"),
    ] {
        let got = listen.texts_until(SENDS_PER_HOME);
        let mut seen = BTreeSet::new();
        for m in &got {
            assert!(
                seen.insert(m.text.clone()),
                "{me}'s listen printed {m:?} twice"
            );
            let (sender, seq) = &sent[&m.text];
            assert_eq!((&m.sender, m.seq), (sender, *seq), "{me}'s listen: {m:?}");
            assert_eq!(
                m.sender, other,
                "{me}'s listen printed its own message {m:?}"
            );
        }
        assert_eq!(seen.len(), SENDS_PER_HOME);
    }

    // Each chat-like reader shows all 100 messages once, in seq order.
    stop.store(true, Ordering::SeqCst);
    for (reader, me) in [(reader_a, "alice"), (reader_b, "bob")] {
        let log = reader.join().expect("reader thread");
        let shown: Vec<(u64, String, String)> = log
            .iter()
            .filter(|r| r.kind == "text")
            .map(|r| (r.seq, r.sender.clone(), r.body.clone()))
            .collect();
        let mut want: Vec<(u64, String, String)> = sent
            .iter()
            .map(|(text, (who, seq))| (*seq, who.clone(), text.clone()))
            .collect();
        want.sort();
        assert_eq!(
            shown, want,
            "{me}'s chat shows every message once, in order"
        );
        assert!(
            !log.iter().any(|r| r.kind == "forged"),
            "{me}: refused entries: {log:?}"
        );
    }
    for l in [&listen_a, &listen_b] {
        assert_clean("listen", &std::fs::read_to_string(&l.stderr).unwrap());
    }

    // The MLS state is intact: one more message each way.
    let a = alice.send("room", "after the storm, from alice");
    let b = bob.send("room", "after the storm, from bob");
    assert!(listen_b
        .texts_until(1)
        .iter()
        .any(|m| m.seq == a && m.text == "after the storm, from alice"));
    assert!(listen_a
        .texts_until(1)
        .iter()
        .any(|m| m.seq == b && m.text == "after the storm, from bob"));
    eprintln!("e2e_cli_concurrency took {:?}", started.elapsed());
}
