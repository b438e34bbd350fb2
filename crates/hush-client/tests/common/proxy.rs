//! A tiny HTTP proxy for transport tests: it forwards bytes between a client
//! and a node, records the first request head of every connection, can
//! refuse WebSocket upgrades (like a corporate proxy that blocks them), and
//! can cut every open connection at once (a network drop).
//!
//! Only the first request of each connection is inspected; later requests
//! on a kept-alive connection pass through untouched. A WebSocket handshake
//! always opens its own connection, so refusing upgrades is exact.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    heads: Vec<String>,
    open: Vec<TcpStream>,
}

/// A running proxy (threads; it lives until the test process ends, and
/// cuts its connections when dropped).
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

const REFUSAL: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\nupgrades are not allowed";

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`http://host:port`).
    pub fn start(upstream: &str, refuse_upgrades: bool) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let st = st.clone();
                let upstream = upstream.clone();
                std::thread::spawn(move || serve(client, &upstream, refuse_upgrades, &st));
            }
        });
        Self { url, state }
    }

    /// The first request head of every connection so far, lowercased.
    pub fn heads(&self) -> Vec<String> {
        self.state.lock().unwrap().heads.clone()
    }

    /// Request heads whose request line starts with `prefix` (e.g.
    /// `"get /v1/events"`).
    pub fn heads_starting(&self, prefix: &str) -> Vec<String> {
        self.heads()
            .into_iter()
            .filter(|h| h.starts_with(prefix))
            .collect()
    }

    /// Cuts every open connection (both directions, both sides).
    pub fn cut_all(&self) {
        let open = std::mem::take(&mut self.state.lock().unwrap().open);
        for s in open {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut_all();
    }
}

fn serve(mut client: TcpStream, upstream: &str, refuse_upgrades: bool, st: &Mutex<State>) {
    // Read up to the end of the request head.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    st.lock().unwrap().heads.push(head.clone());
    if refuse_upgrades && head.lines().any(|l| l.starts_with("upgrade:")) {
        let _ = client.write_all(REFUSAL);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    if server.write_all(&buf).is_err() {
        return;
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut s = st.lock().unwrap();
        if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
            s.open.push(c3);
            s.open.push(s3);
        }
    }
    let up = std::thread::spawn(move || pipe(client, server));
    pipe(s2, c2);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
