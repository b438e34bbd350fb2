//! One in-process hush-node (SQLite store in a temporary directory, port 0,
//! a manual clock so tokens never expire and rate buckets never matter),
//! with a registered user `alice` who owns a real group, for the targets
//! that need a live node: client frames through the gateway, and the SDK
//! client's handling of server frames.
//!
//! Group ids in inputs: every occurrence of [`NodeHarness::placeholder`]
//! (as long as a real group id) is replaced by the id of alice's group
//! before use, so committed inputs reach the real group in every run.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hush_client::client::Client;
use hush_node::{Clock as _, ManualClock, SystemClock};

/// How long an answer may take before the node counts as hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NodeHarness {
    pub rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    pub token: String,
    pub group_id: Vec<u8>,
    /// Alice's SDK client (disconnected after set-up).
    pub client: Client,
    http: Option<Http1>,
    _node: hush_node::RunningNode,
    _dir: tempfile::TempDir,
}

impl NodeHarness {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (node, token, group_id, client) = rt.block_on(set_up(dir.path()));
        Self {
            rt,
            addr: node.addr,
            token,
            group_id,
            client,
            http: None,
            _node: node,
            _dir: dir,
        }
    }

    /// Stands in for alice's group id in inputs.
    pub fn placeholder(&self) -> Vec<u8> {
        b"FUZZ-GROUP-"
            .iter()
            .copied()
            .cycle()
            .take(self.group_id.len())
            .collect()
    }

    /// `data` with every placeholder replaced by the real group id.
    pub fn with_group(&self, data: &[u8]) -> Vec<u8> {
        let ph = self.placeholder();
        let mut out = data.to_vec();
        if ph.is_empty() {
            return out;
        }
        let mut i = 0;
        while i + ph.len() <= out.len() {
            if out[i..i + ph.len()] == ph[..] {
                out[i..i + ph.len()].copy_from_slice(&self.group_id);
                i += ph.len();
            } else {
                i += 1;
            }
        }
        out
    }

    /// The inverse of [`with_group`](Self::with_group), for making seeds.
    pub fn to_placeholder(&self, data: &[u8]) -> Vec<u8> {
        let ph = self.placeholder();
        let mut out = data.to_vec();
        let g = &self.group_id;
        let mut i = 0;
        while !g.is_empty() && i + g.len() <= out.len() {
            if out[i..i + g.len()] == g[..] {
                out[i..i + g.len()].copy_from_slice(&ph);
                i += g.len();
            } else {
                i += 1;
            }
        }
        out
    }

    /// `POST /v1/rpc` with alice's token over a kept-alive HTTP/1.1
    /// connection: (status, body).
    pub fn rpc(&mut self, body: &[u8]) -> (u16, Vec<u8>) {
        for attempt in 0..2 {
            if self.http.is_none() {
                self.http = Some(Http1::connect(self.addr));
            }
            let http = self.http.as_mut().expect("connected");
            match http.post("/v1/rpc", &self.token, body) {
                Ok((status, resp, keep)) => {
                    if !keep {
                        self.http = None;
                    }
                    return (status, resp);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("node did not answer within {ANSWER_TIMEOUT:?}")
                }
                Err(e) => {
                    // The node closed a kept-alive connection: once more
                    // on a fresh one.
                    self.http = None;
                    assert!(attempt == 0, "POST /v1/rpc failed twice: {e}");
                }
            }
        }
        unreachable!("the loop returns or panics")
    }
}

async fn set_up(dir: &Path) -> (hush_node::RunningNode, String, Vec<u8>, Client) {
    let mut config = hush_node::Config::default();
    config.node.data = dir.join("node");
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.workers = 1;
    config.limits.rate_burst = 1e15;
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let node = hush_node::start(config, clock).await.expect("node starts");
    let url = format!("http://{}", node.addr);
    let mut client = Client::open(&dir.join("alice"), Some(&url)).expect("open client");
    client.register("alice").await.expect("register");
    let group = client.create_group("fuzz").await.expect("create group");
    let id = client.me().expect("identity");
    let http = hush_client::http::Http::new(&url).expect("server url");
    let challenge = http
        .login_challenge(&id.device_id)
        .await
        .expect("challenge");
    let payload = hush_proto::auth::login_payload(&challenge);
    let signature = hush_client::mls::sign_raw(&id.keys, &payload).expect("sign");
    let (token, _) = http
        .login(&id.device_id, challenge, signature)
        .await
        .expect("login");
    client.close().await;
    (node, token.0, group.group_id, client)
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct Http1 {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Http1 {
    fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).expect("connect to the node");
        tcp.set_read_timeout(Some(ANSWER_TIMEOUT)).expect("timeout");
        tcp.set_nodelay(true).expect("nodelay");
        Self {
            tcp,
            buf: Vec::new(),
        }
    }

    /// (status, body, connection kept alive)
    fn post(
        &mut self,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>, bool)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.tcp.write_all(&req)?;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let keep = header("connection:").is_none_or(|v| v != "close");
        let body = if let Some(n) = header("content-length:") {
            let n: usize = n.parse().expect("content-length");
            while self.buf.len() < n {
                self.fill()?;
            }
            self.buf.drain(..n).collect()
        } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            self.chunked()?
        } else {
            Vec::new()
        };
        Ok((status, body, keep))
    }

    fn chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill()?;
            };
            let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            let n = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            self.buf.drain(..end + 2);
            while self.buf.len() < n + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..n));
            self.buf.drain(..2);
            if n == 0 {
                return Ok(body);
            }
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tcp.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
