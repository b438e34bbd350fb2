//! What an operator scrapes: `/metrics` of a fresh node has `# HELP` and
//! `# TYPE` for every family (each one named in the node's list,
//! `hush_node::telemetry::FAMILIES`), build info, process metrics, and the
//! error, close and auth-failure counters at 0 before any traffic; real
//! WebSocket clients sending and receiving move the per-route counters, the
//! send-to-deliver histogram and the close-reason counters; the binary's
//! first log line carries the version.
//!
//! The metrics recorder is one per process, so the in-process checks are
//! one test (a second test in this binary would move the counters it reads).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{client, has_text, is_member, pump_until, start_node, url, NodeProcess, WAIT};
use hush_node::telemetry::{Kind, AUTH_FAILURE_REASONS, FAMILIES, GIT_SHA, VERSION};

const BIN: &str = env!("CARGO_BIN_EXE_hush-node");

/// One sample: family-level name (as printed) and its labels.
type Labels = BTreeMap<String, String>;

/// A parsed exposition page.
#[derive(Default)]
struct Page {
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
    samples: Vec<(String, Labels, f64)>,
}

impl Page {
    fn parse(text: &str) -> Page {
        let mut page = Page::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("a name");
                assert!(page.help.insert(name.to_owned()), "HELP twice: {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().expect("a name").to_owned();
                let kind = parts.next().expect("a type").to_owned();
                assert!(
                    page.types.insert(name, kind).is_none(),
                    "TYPE twice: {line}"
                );
            } else if line.starts_with('#') {
                continue;
            } else {
                page.samples.push(parse_sample(line));
            }
        }
        page
    }

    /// The family a sample belongs to (histogram samples carry suffixes).
    fn family_of(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.types.get(base).is_some_and(|t| t == "histogram") {
                    return base.to_owned();
                }
            }
        }
        sample.to_owned()
    }

    /// The value of the sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// The samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.2)
            .sum()
    }
}

/// `name{k="v",...} value` (label values here never hold `"` or `,`).
fn parse_sample(line: &str) -> (String, Labels, f64) {
    let (head, value) = line.rsplit_once(' ').expect("a value");
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value: {line}"));
    let (name, labels) = match head.split_once('{') {
        None => (head.to_owned(), Labels::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let labels = body
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").expect("k=\"v\"");
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels)
        }
    };
    (name, labels, value)
}

async fn scrape(base: &str) -> Page {
    let resp = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    Page::parse(&resp.text().await.expect("body"))
}

/// Scrapes until `done` holds (the node counts a close after the client's
/// close frame arrives, a moment after the client returned).
async fn scrape_until(base: &str, what: &str, done: impl Fn(&Page) -> bool) -> Page {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = scrape(base).await;
        if done(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every family on the page has HELP and TYPE, its TYPE is the one the
/// node's list gives, and the list names it.
fn every_family_described(page: &Page) {
    let listed: BTreeMap<&str, Kind> = FAMILIES.iter().map(|f| (f.name, f.kind)).collect();
    let families: BTreeSet<String> = page
        .samples
        .iter()
        .map(|(n, _, _)| page.family_of(n))
        .collect();
    for f in &families {
        assert!(page.help.contains(f), "no HELP for {f}");
        let ty = page
            .types
            .get(f)
            .unwrap_or_else(|| panic!("no TYPE for {f}"));
        let kind = listed
            .get(f.as_str())
            .unwrap_or_else(|| panic!("{f} is not in telemetry::FAMILIES"));
        let want = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(ty, want, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_described_preregistered_and_move_with_real_traffic() {
    hush_client::tls::use_ring();
    // Keep-alives every 200 ms: the node learns of the dropped SSE client
    // at its next write.
    let (node, _clock, dir) = start_node(|c| c.limits.heartbeat_interval_ms = 200).await;
    let base = url(&node);

    // --- a fresh node, before any client traffic ---
    let fresh = scrape(&base).await;
    every_family_described(&fresh);
    assert_eq!(
        fresh.get(
            "hush_build_info",
            &[("version", VERSION), ("git_sha", GIT_SHA)]
        ),
        1.0
    );
    assert!(!GIT_SHA.is_empty());
    // CPU seconds count in clock ticks: a fresh process may show 0.
    assert!(fresh.get("process_cpu_seconds_total", &[]) >= 0.0);
    for p in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(fresh.get(p, &[]) > 0.0, "{p}");
    }
    for code in [
        "BAD_TOKEN",
        "UNAUTHENTICATED",
        "INTERNAL",
        "RATE_LIMITED",
        "MALFORMED",
    ] {
        assert_eq!(
            fresh.get("hush_errors_total", &[("code", code)]),
            0.0,
            "{code}"
        );
    }
    for reason in AUTH_FAILURE_REASONS {
        assert_eq!(
            fresh.get("hush_auth_failures_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    for reason in ["normal", "policy", "slow_consumer", "heartbeat", "gone"] {
        assert_eq!(
            fresh.get(
                "hush_stream_closes_total",
                &[("transport", "ws"), ("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    for reason in ["closed", "slow_consumer"] {
        assert_eq!(
            fresh.get(
                "hush_stream_closes_total",
                &[("transport", "sse"), ("reason", reason)]
            ),
            0.0
        );
    }
    assert_eq!(fresh.get("hush_send_to_deliver_seconds_count", &[]), 0.0);
    for covered in ["true", "false"] {
        assert_eq!(
            fresh.get("hush_resyncs_total", &[("covered", covered)]),
            0.0
        );
    }
    assert_eq!(fresh.get("hush_connections", &[]), 0.0);
    // Only the scrapes themselves so far.
    assert_eq!(
        fresh.sum("hush_http_requests_total", &[("route", "/v1/ws")]),
        0.0
    );

    // --- two WebSocket clients: alice sends, bob receives ---
    let mut alice = client(dir.path(), &base, "alice").await;
    let mut bob = client(dir.path(), &base, "bob").await;
    let gid = alice.create_group("room").await.expect("group").group_id;
    alice
        .add_members(&hex::encode(&gid), &["bob".to_string()])
        .await
        .expect("add bob")
        .expect("bob added");
    pump_until(&mut bob, "bob's welcome", |c| is_member(c, &gid)).await;
    alice
        .send_text(&hex::encode(&gid), "hello bob")
        .await
        .expect("send");
    pump_until(&mut bob, "alice's message", |c| {
        has_text(c, &gid, "hello bob")
    })
    .await;
    bob.close().await;
    alice.close().await;

    // An SSE stream that its client drops.
    let token = common::login(&base, &alice.me().expect("alice")).await;
    let mut events = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    events.chunk().await.expect("a first event").expect("bytes");
    drop(events);

    // Two wrong tokens: a missing one and a malformed one.
    let http = reqwest::Client::new();
    let missing = http
        .get(format!("{base}/v1/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(missing.status(), 401);
    let malformed = http
        .get(format!("{base}/v1/events"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("events");
    assert_eq!(malformed.status(), 401);

    let after = scrape_until(&base, "both WebSockets and the SSE stream closed", |p| {
        p.get(
            "hush_stream_closes_total",
            &[("transport", "ws"), ("reason", "normal")],
        ) >= 2.0
            && p.get(
                "hush_stream_closes_total",
                &[("transport", "sse"), ("reason", "closed")],
            ) >= 1.0
    })
    .await;
    every_family_described(&after);

    // Per-route counts, by pattern, and their latencies.
    assert!(
        after.get(
            "hush_http_requests_total",
            &[("route", "/v1/ws"), ("method", "GET"), ("status", "101")]
        ) >= 2.0
    );
    assert!(
        after.get(
            "hush_http_requests_total",
            &[
                ("route", "/v1/register"),
                ("method", "POST"),
                ("status", "200")
            ]
        ) >= 2.0
    );
    assert_eq!(
        after.get(
            "hush_http_requests_total",
            &[
                ("route", "/v1/events"),
                ("method", "GET"),
                ("status", "401")
            ]
        ),
        2.0
    );
    assert!(
        after.get(
            "hush_http_request_duration_seconds_count",
            &[("route", "/v1/ws"), ("method", "GET")]
        ) >= 2.0
    );
    assert!(after.sum("hush_http_requests_total", &[("route", "/metrics")]) >= 1.0);
    // Application, commit and Welcome traffic: every entry reached a
    // connection on this node, timed from its durable append.
    let delivered = after.get("hush_send_to_deliver_seconds_count", &[]);
    assert!(delivered >= 1.0, "send-to-deliver count {delivered}");
    assert!(after.get("hush_send_to_deliver_seconds_sum", &[]) > 0.0);
    assert!(after.get("hush_messages_in_total", &[("kind", "application")]) >= 1.0);
    // Every store write is timed from its queueing to its batch; the
    // batch sizes are counted in operations, not in seconds' buckets.
    let waited = after.get("hush_store_write_wait_seconds_count", &[("lane", "urgent")]);
    assert!(waited >= 1.0, "urgent writes timed {waited}");
    assert!(
        after
            .value("hush_store_batch_size_bucket", &[("le", "256")])
            .is_some(),
        "batch sizes have no bucket at 256"
    );
    // The writer's handles are live (taken on its thread, once).
    let batches = after.get("hush_store_batch_size_count", &[]);
    assert!(batches >= 1.0, "batches counted {batches}");
    assert!(after.get("hush_store_commits_total", &[("sync", "full")]) >= 1.0);
    assert!(after.sum("hush_store_ops_total", &[]) >= batches);
    // Auth failures by reason, and the errors they were answered with.
    assert_eq!(
        after.get("hush_auth_failures_total", &[("reason", "missing_token")]),
        1.0
    );
    assert_eq!(
        after.get("hush_auth_failures_total", &[("reason", "malformed_token")]),
        1.0
    );
    assert!(after.get("hush_errors_total", &[("code", "UNAUTHENTICATED")]) >= 1.0);
    assert!(after.get("hush_errors_total", &[("code", "BAD_TOKEN")]) >= 1.0);
    assert_eq!(after.get("hush_connections", &[]), 0.0);
    assert_eq!(after.get("hush_sse_streams", &[]), 0.0);
    // Every attach queues a resync; a stream whose Sync read the store
    // after it skips it rather than reading everything again (three
    // streams here; an attach slower than the inline wait would resync).
    assert!(after.get("hush_resyncs_total", &[("covered", "true")]) >= 1.0);
    // Nothing else closed: no slow consumers, no policy closes.
    for reason in ["policy", "slow_consumer", "heartbeat", "auth_deadline"] {
        assert_eq!(
            after.get(
                "hush_stream_closes_total",
                &[("transport", "ws"), ("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_log_line_names_the_version_and_the_page_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = NodeProcess(
        Command::new(BIN)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let mut errs = BufReader::new(stderr).lines();
    let first = errs.next().expect("a log line").expect("utf-8");
    assert!(first.contains("hush-node starting"), "{first}");
    assert!(first.contains(VERSION), "{first}");
    assert!(first.contains(GIT_SHA), "{first}");
    // Keep draining stderr so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in errs {});

    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    hush_client::tls::use_ring();
    let page = scrape(&addr).await;
    every_family_described(&page);
    assert_eq!(
        page.get(
            "hush_build_info",
            &[("version", VERSION), ("git_sha", GIT_SHA)]
        ),
        1.0
    );
    let start = page.get("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start > now - 600.0 && start <= now + 1.0,
        "start {start}, now {now}"
    );
    assert!(page.get("process_resident_memory_bytes", &[]) > 1e6);

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}
