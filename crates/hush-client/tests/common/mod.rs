//! Harness for the end-to-end tests: real `hush-node` processes on loopback
//! and real `hush` CLI processes, each device with its own home directory.
//!
//! The node binary is `HUSH_NODE_BIN` when set; else the one `cargo test
//! --workspace` built next to this test if no node source is newer; else
//! `cargo build -p hush-node` builds it. So `cargo test --workspace` on a
//! fresh checkout runs these tests for real, and `cargo test -p hush-client`
//! never runs a stale node.

#![allow(dead_code)] // each test binary uses a different part

mod node_bin;
pub mod proxy;

pub use node_bin::node_bin;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Generous upper bound for anything a test waits for; tests wait on events
/// (a line printed, a process exiting), this only stops a hung test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Starts `hush-node --config <config> --node <id>` plus `extra` flags and
/// waits for the line it prints once it listens. Returns the process and
/// its URL (`http://addr`). Its stderr is discarded.
pub fn spawn_from_config(config: &Path, id: &str, extra: &[&std::ffi::OsStr]) -> (Child, String) {
    let mut child = Command::new(node_bin())
        .arg("--config")
        .arg(config)
        .arg("--node")
        .arg(id)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hush-node");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{id}: {line:?}"))
        .to_string();
    (child, format!("http://{addr}"))
}

/// Sends `sig` (`-STOP`, `-CONT`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// SIGSTOPs node process `pid`, one of several sharing the SQLite file
/// `store`, at a moment it holds no write transaction on it.
///
/// A process stopped inside a write transaction keeps the file's write
/// lock: every other node's writes are then refused (UNAVAILABLE, after
/// the busy timeout) until it resumes or dies. That is the shared file's
/// nature, not something a node can undo (nothing takes an fcntl lock
/// from a live process), and why a cluster that must survive a paused
/// node runs on the CQL store. The tests that pause a node to see what the
/// others do meanwhile want the pause the ScyllaDB deployment would see,
/// so this checks the lock is free (a write transaction begins and rolls
/// back) and, if the stop landed inside a write, resumes the node for a
/// moment and stops it again.
pub fn stop_outside_store_writes(pid: u32, store: &Path) {
    let probe = rusqlite::Connection::open(store).expect("open the shared store");
    // Longer than any write batch of a running node.
    probe
        .busy_timeout(Duration::from_secs(2))
        .expect("busy timeout");
    for _ in 0..20 {
        signal(pid, "-STOP");
        match probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
            Ok(()) => return,
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                eprintln!("node {pid} was stopped inside a store write; resuming it a moment");
                signal(pid, "-CONT");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("probing the shared store's write lock: {e}"),
        }
    }
    panic!("node {pid} held the shared store's write lock at 20 stops in a row");
}

/// One hush-node process with its own data directory and log file.
pub struct Node {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` (stable across restarts).
    pub url: String,
    pub listen: String,
    pub data: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts a node on a free port; `env` is passed to the process (e.g.
    /// `RUST_LOG`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = Node {
            child: None,
            url: String::new(),
            listen: "127.0.0.1:0".into(),
            data: dir.path().join("data"),
            log: dir.path().join("node.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        node.spawn();
        node
    }

    /// Starts the process and waits for its `listening on` line.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let mut child = Command::new(node_bin())
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(&self.listen)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn hush-node");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("hush-node did not start listening; log:\n{log}")
        });
        // Restarts reuse the port, so clients keep their server URL.
        self.listen = addr.clone();
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL hush-node");
            c.wait().expect("reap hush-node");
        }
    }

    /// Starts the node again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node still running");
        self.spawn();
    }

    /// Everything the node process wrote to stderr (its logs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The embedded store's SQLite file.
    pub fn store_file(&self) -> PathBuf {
        self.data.join("hush.sqlite")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            self.keep_log();
        }
    }
}

impl Node {
    /// A failed test's node log outlives its tempdir: copied under the
    /// target directory (`test-logs/<test>.node.log`), its tail printed, so
    /// a CI failure says what the node did.
    fn keep_log(&self) {
        let log = self.log_text();
        let name = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("test-logs");
        let kept = dir.join(format!("{name}.{}.node.log", std::process::id()));
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&kept, &log));
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        match saved {
            Ok(()) => eprintln!(
                "node log kept in {}; its last lines:\n{tail}",
                kept.display()
            ),
            Err(e) => eprintln!("node log not kept ({e}); its last lines:\n{tail}"),
        }
    }
}

/// One device: a `hush` home directory.
pub struct Dev {
    pub home: PathBuf,
    pub server: String,
    /// Global options given to every command (e.g. `--transport sse`).
    pub extra: Vec<String>,
}

impl Dev {
    pub fn new(root: &Path, name: &str, server: &str) -> Self {
        Self {
            home: root.join(name),
            server: server.to_string(),
            extra: Vec::new(),
        }
    }

    /// The same device with global options added to every command.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hush"));
        c.arg("--server")
            .arg(&self.server)
            .arg("--home")
            .arg(&self.home)
            .arg("--json")
            .args(&self.extra)
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run hush")
    }

    /// Runs a command that must succeed; returns its JSON lines.
    pub fn ok(&self, args: &[&str]) -> Vec<Value> {
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
    pub fn err(&self, args: &[&str]) -> String {
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

    /// `send`, returning the acknowledged seq.
    pub fn send(&self, group: &str, text: &str) -> u64 {
        self.ok(&["send", group, text])[0]["seq"]
            .as_u64()
            .expect("send prints a seq")
    }

    /// `sync`, returning the text messages as (seq, sender, text).
    pub fn sync_texts(&self) -> Vec<Msg> {
        texts(&self.ok(&["sync"]))
    }

    /// Starts `hush listen`; its JSON lines arrive on the returned receiver.
    pub fn listen(&self) -> Listener {
        let mut child = self
            .command(&["listen"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hush listen");
        let stdout = child.stdout.take().expect("listen stdout");
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
        Listener { child, rx }
    }
}

/// A running `hush listen`.
pub struct Listener {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Listener {
    /// Collects text messages until `done` says enough (or panics after
    /// [`PATIENCE`]).
    pub fn texts_until(&self, mut done: impl FnMut(&[Msg]) -> bool) -> Vec<Msg> {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => got.extend(texts(&[v])),
                Err(_) => panic!("listener saw only {got:?}"),
            }
        }
        got
    }

    /// Collects every JSON line until `done` says enough (or panics after
    /// [`PATIENCE`]).
    pub fn values_until(&self, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => got.push(v),
                Err(_) => panic!("listener saw only {got:?}"),
            }
        }
        got
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A decrypted text message as the CLI prints it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    pub seq: u64,
    pub sender: String,
    pub text: String,
}

pub fn texts(values: &[Value]) -> Vec<Msg> {
    values
        .iter()
        .filter(|v| v.get("text").is_some())
        .map(|v| Msg {
            seq: v["seq"].as_u64().expect("seq"),
            sender: v["sender"].as_str().unwrap_or_default().to_string(),
            text: v["text"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

pub fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Timeline entries as stored by the node: (seq, kind, epoch, message).
pub fn stored_entries(node: &Node, group_id: &[u8]) -> Vec<(u64, i64, u64, Vec<u8>)> {
    stored_entries_at(&node.store_file(), group_id)
}

/// Timeline entries in the store file at `path`.
pub fn stored_entries_at(path: &Path, group_id: &[u8]) -> Vec<(u64, i64, u64, Vec<u8>)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open node store");
    let mut stmt = conn
        .prepare("SELECT seq, kind, epoch, message FROM entries WHERE group_id = ?1 ORDER BY seq")
        .expect("prepare");
    stmt.query_map([group_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .expect("query")
    .collect::<Result<Vec<_>, _>>()
    .expect("rows")
}

/// Copies a device's home (its whole MLS state) for offline experiments.
pub fn snapshot_home(dev: &Dev, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(&dev.home).expect("read home") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy state");
    }
    to.to_path_buf()
}

/// A unique string to send and then look for where it must not be.
pub fn canary() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("CANARY-{nanos}")
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` whose bytes contain `needle` (the canary checks).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if contains(&std::fs::read(&path).expect("read file"), needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}
