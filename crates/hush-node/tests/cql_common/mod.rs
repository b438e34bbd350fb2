//! What the tests on the live CQL cluster share (`e2e_cql.rs`,
//! `cql_walkthrough.rs`): real `hush-node` processes started from a config
//! file with `[store] kind = "scylla"`, each logging to its own file, and
//! reads of their `/readyz` and `/cluster`.
//!
//! Both tests stop and start nodes of the `scripts/cql.sh` cluster, so each
//! lives in its own test binary (cargo runs test binaries one at a time)
//! and leaves every CQL node running when it ends.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_hush-node");

/// Upper bound for anything a test waits for (a node listening, ready, a
/// view); tests wait on events or read state until it holds, this only
/// stops a hung test. Generous: three JVMs and three nodes share 2 cores.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A port these tests may give a node for good: free now and below the
/// kernel's ephemeral range, so that no outgoing connection (the node's own
/// to Cassandra, a client's) takes it while its node is down between a
/// `kill -9` and the restart. A port from `bind(0)` is ephemeral and can be.
fn fixed_port(free: impl Fn(u16) -> bool) -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u16, low.saturating_sub(10_000).max(1));
    // Successive calls start apart, so two nodes of one test never get the
    // same port (each port is free only until its node binds it).
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = call * 101
        + std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    (0..u64::from(span))
        .map(|i| first + ((seed + i * 31) % u64::from(span)) as u16)
        .find(|p| free(*p))
        .expect("a free port below the ephemeral range")
}

pub fn free_tcp_port() -> u16 {
    fixed_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

pub fn free_udp_port() -> u16 {
    fixed_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// The `[store]` section for a CQL keyspace.
pub fn store_section(points: &[String], keyspace: &str, replication_factor: u32) -> String {
    let points: Vec<String> = points.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[store]\nkind = \"scylla\"\ncontact_points = [{}]\nkeyspace = \"{keyspace}\"\n\
         replication_factor = {replication_factor}\nconsistency = \"quorum\"\n",
        points.join(", ")
    )
}

/// One hush-node process: `hush-node --config <config> --node <id>` plus
/// `args`, its stderr (the logs) appended to `log`.
pub struct NodeProc {
    pub id: String,
    pub url: String,
    pub log: PathBuf,
    config: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn start(config: &Path, id: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        let mut node = Self {
            id: id.into(),
            url: String::new(),
            log: log.to_path_buf(),
            config: config.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        node.spawn();
        node
    }

    /// Starts the process and waits for its `listening on` line (it prints
    /// it whether or not its store answers).
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(&self.id)
            .args(&self.args)
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
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "{} did not start listening; log:\n{}",
                self.id,
                self.log_text()
            )
        });
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again with the same config, id and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} still running", self.id);
        self.spawn();
    }

    /// Everything the node wrote to its log so far (every run).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET url`: status and body, or `None` when nothing answers.
pub async fn get(url: &str) -> Option<(u16, String)> {
    // reqwest is built without a TLS provider of its own: the process
    // default must be set before its first client (ring, as in the node).
    hush_client::tls::use_ring();
    let res = reqwest::get(url).await.ok()?;
    let status = res.status().as_u16();
    Some((status, res.text().await.ok()?))
}

/// Reads `/readyz` until it answers `want` (200 or 503); returns the body.
pub async fn wait_readyz(node: &NodeProc, want: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    loop {
        let got = get(&format!("{}/readyz", node.url)).await;
        if let Some((status, body)) = &got {
            if *status == want {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz never answered {want}; last {last:?}",
            node.id
        );
        last = got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/cluster` of a node as JSON.
pub async fn cluster_status(url: &str, query: &str) -> Option<Value> {
    let (_, body) = get(&format!("{url}/cluster{query}")).await?;
    serde_json::from_str(&body).ok()
}

/// Waits until every running node shows exactly `members` in its view.
pub async fn wait_view(nodes: &[NodeProc], members: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    for node in nodes.iter().filter(|n| n.running()) {
        loop {
            let seen: Vec<String> = cluster_status(&node.url, "")
                .await
                .and_then(|v| v["members"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect();
            if seen == members {
                break;
            }
            assert!(Instant::now() < deadline, "{}: view {seen:?}", node.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(i) = hay[at..].iter().position(|&b| b == first) {
        let start = at + i + 1;
        if hay.len() - start >= rest.len() && &hay[start..start + rest.len()] == rest {
            return true;
        }
        at = start;
    }
    false
}

/// Every file under `dir` whose bytes contain `needle`, and how many files
/// and bytes were searched.
pub fn files_containing(dir: &Path, needle: &[u8]) -> (Vec<String>, usize, u64) {
    let (mut hits, mut files, mut bytes) = (Vec::new(), 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(data) = std::fs::read(&path) {
                files += 1;
                bytes += data.len() as u64;
                if contains(&data, needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    (hits, files, bytes)
}
