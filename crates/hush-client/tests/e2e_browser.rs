//! The browser client (`web/`) end to end, in headless Chromium against a
//! real hush-node that serves the page itself: two browser users (MLS in
//! the page with ts-mls) and one `hush` CLI user (openmls) in one group.
//! `web/tests/e2e.mjs` (playwright-core) drives the browsers and the CLI:
//! create, the browser adds the CLI user and the CLI adds a browser user,
//! messages all ways, self-updates on both sides, remove, unread marks,
//! presence and typing, a page reload, the SSE fallback with a resume, and
//! device linking both ways by Add + Welcome (the page links a CLI device,
//! the CLI links a new browser; each new device shows the group by name and
//! exchanges messages both ways). It writes screenshots to
//! `target/browser-screenshots/`.
//!
//! This side checks what the page is served with (CSP, the embedded bundle
//! is the committed one), the canary: a string typed in the browser never
//! reaches the node's store files or its debug log, and the padding: every
//! short message, from the page or the CLI, is stored with the same size.
//!
//! Needs Node.js, Chromium (`/usr/bin/chromium` or `HUSH_CHROMIUM`) and
//! `web/node_modules` (`cd web && npm ci`). Without them the test prints
//! SKIPPED and passes, unless `HUSH_REQUIRE_BROWSER=1` (CI sets it).

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::proxy::Proxy;
use common::{canary, files_containing, Node};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/hush-client is two levels down")
        .to_path_buf()
}

/// What is missing to run the browser test, if anything.
fn missing_tools(web: &Path, chromium: &Path) -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("`node` (Node.js) is not on PATH".into());
    }
    if !chromium.exists() {
        return Some(format!("{} does not exist", chromium.display()));
    }
    if !web.join("node_modules/playwright-core").exists() {
        return Some("web/node_modules is missing (cd web && npm ci)".into());
    }
    None
}

/// The stored size of every application message, in seq order per group.
fn application_sizes(store: &Path) -> Vec<usize> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open node store");
    let mut st = conn
        .prepare("SELECT length(message) FROM entries WHERE kind = 3 ORDER BY group_id, seq")
        .expect("prepare");
    st.query_map([], |r| r.get::<_, i64>(0))
        .expect("query")
        .map(|n| n.expect("row") as usize)
        .collect()
}

/// A plain HTTP/1.1 GET: (head, body).
fn get(url: &str, path: &str) -> (String, Vec<u8>) {
    let addr = url.strip_prefix("http://").expect("http url");
    let mut s = TcpStream::connect(addr).expect("connect to the node");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    (head, raw[split + 4..].to_vec())
}

/// The web directory and Chromium, or `None` (after printing SKIPPED) when
/// a tool is missing and `HUSH_REQUIRE_BROWSER` is not 1.
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let web = repo_root().join("web");
    let chromium = std::env::var_os("HUSH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if let Some(why) = missing_tools(&web, &chromium) {
        if std::env::var("HUSH_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("HUSH_REQUIRE_BROWSER=1 but {why}");
        }
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n=== SKIPPED {test}: {why} (set HUSH_REQUIRE_BROWSER=1 to make this a failure) ===\n"
        );
        return None;
    }
    Some((web, chromium))
}

/// The page's trust code in Chromium (`web/tests/unit.mjs`): the safety
/// number vectors of `trust.rs`, pinning, and the client refusing crafted
/// entries (a forged self-update, a misattributed message, a revoked
/// device's message) as a malicious server would deliver them.
#[test]
fn the_page_refuses_forged_entries_and_agrees_on_safety_numbers() {
    let Some((web, chromium)) = browser_tools("e2e_browser unit checks") else {
        return;
    };
    let status = Command::new("node")
        .arg(web.join("tests/unit.mjs"))
        .arg("--chromium")
        .arg(&chromium)
        .current_dir(&web)
        .status()
        .expect("run node web/tests/unit.mjs");
    assert!(
        status.success(),
        "the page's unit checks failed (see above)"
    );
}

#[test]
fn two_browsers_and_the_cli_share_a_group() {
    let Some((web, chromium)) = browser_tools("e2e_browser") else {
        return;
    };

    let mut node = Node::start_with_env(&[("RUST_LOG", "debug")]);

    // The page comes from the node, with its policy, and is the committed bundle.
    let (head, body) = get(&node.url, "/");
    assert!(head.starts_with("http/1.1 200"), "GET /: {head}");
    for part in [
        "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(part), "GET / lacks {part:?}: {head}");
    }
    assert!(
        !head.contains("unsafe-"),
        "the policy allows unsafe-*: {head}"
    );
    assert_eq!(body, std::fs::read(web.join("dist/index.html")).unwrap());
    let (head, js) = get(&node.url, "/assets/app.js");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert_eq!(
        js,
        std::fs::read(web.join("dist/app.js")).unwrap(),
        "the node serves another app.js than web/dist (rebuild hush-node)"
    );

    let canary = canary();
    let work = tempfile::tempdir().unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("browser-screenshots");
    // dave reaches the node through a proxy that refuses WebSocket upgrades;
    // the page shows "online (SSE)" once it fell back (checked in e2e.mjs).
    let proxy = Proxy::start(&node.url, true);
    let started = std::time::Instant::now();
    let status = Command::new("node")
        .arg(web.join("tests/e2e.mjs"))
        .arg("--url")
        .arg(&node.url)
        .arg("--hush")
        .arg(env!("CARGO_BIN_EXE_hush"))
        .arg("--work")
        .arg(work.path())
        .arg("--screenshots")
        .arg(&shots)
        .arg("--canary")
        .arg(&canary)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--no-upgrade-url")
        .arg(&proxy.url)
        .current_dir(&web)
        .status()
        .expect("run node web/tests/e2e.mjs");
    eprintln!(
        "browser scenario took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert!(status.success(), "the browser scenario failed (see above)");
    assert!(
        !proxy.heads_starting("get /v1/ws").is_empty(),
        "dave's page never tried the WebSocket"
    );

    // The canary was typed in a browser; the node must never have seen it.
    node.kill9();
    // Padding: every message of the scenario is short, from the page or the
    // CLI, so every stored application message has the same size (the
    // envelopes are padded the same way before encryption on both sides).
    let sizes = application_sizes(&node.store_file());
    assert!(sizes.len() >= 20, "too few messages stored: {sizes:?}");
    let distinct: std::collections::BTreeSet<usize> = sizes.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        1,
        "short messages are told apart by their size: {sizes:?}"
    );
    let hits = files_containing(&node.data, canary.as_bytes());
    assert!(hits.is_empty(), "canary found in store files: {hits:?}");
    let log = node.log_text();
    assert!(!log.is_empty(), "the node logged nothing at debug level");
    assert!(!log.contains(&canary), "canary found in the node's log");
    // Positive control: it did reach the CLI member, who decrypted it.
    assert!(
        !files_containing(&work.path().join("carol"), canary.as_bytes()).is_empty(),
        "the canary cannot be found even in the CLI member's state"
    );
}
