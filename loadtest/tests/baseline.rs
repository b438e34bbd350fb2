//! The baseline scenario against a real redis-server, both ways: pub/sub,
//! and streams with Hush's promises (an append-only file fsynced before
//! every reply, receivers' cursors stored). A real hush-node process and a
//! real redis-server process each; CI-sized; asserts counts, never a timing.
//!
//! Needs `redis-server` on the PATH (Debian's `redis-server` package): the
//! test prints SKIPPED without it, and fails instead when
//! `HUSH_REQUIRE_REDIS=1` (CI installs it and sets that).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hush_loadtest::protocol::RedisMode;
use hush_loadtest::redis::{command, read_resp, Resp};
use hush_loadtest::{run, Options};
use tokio::io::AsyncWriteExt as _;

#[path = "../../crates/hush-client/tests/common/node_bin.rs"]
mod node_bin;
use node_bin::node_bin;

const GROUPS: u64 = 4;
const GROUP_SIZE: u64 = 3;

/// A redis-server on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("HUSH_REQUIRE_REDIS").as_deref() != Ok("1"),
            "HUSH_REQUIRE_REDIS=1 but redis-server is not on the PATH \
             (Debian: apt-get install redis-server)"
        );
        eprintln!("SKIPPED: redis-server is not on the PATH (apt-get install redis-server)");
    }
    found
}

/// Starts redis-server as `loadtest/scripts/baseline.sh` does for `mode`
/// and returns once it logs that it accepts connections.
fn start_redis(mode: RedisMode) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    // redis-server takes no port 0: take a free one from the OS.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let persist: &[&str] = match mode {
        RedisMode::PubSub => &["--appendonly", "no"],
        RedisMode::Streams => &["--appendonly", "yes", "--appendfsync", "always"],
    };
    let mut child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(persist)
        .arg("--dir")
        .arg(dir.path())
        .args(["--protected-mode", "no", "--daemonize", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    // Its log goes to stdout; "Ready to accept connections" is the event.
    let mut log = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        match log.next() {
            Some(Ok(line)) if line.contains("Ready to accept connections") => break,
            Some(Ok(line)) => seen.push(line),
            _ => panic!(
                "redis-server exited before it was ready:\n{}",
                seen.join("\n")
            ),
        }
    }
    // The rest of its log is drained, so the pipe never fills.
    std::thread::spawn(move || log.for_each(drop));
    Redis {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

/// One command on a connection of its own, and its reply (the baseline's
/// own RESP code, `hush_loadtest::redis`).
async fn query(addr: SocketAddr, args: &[&str]) -> Resp {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&command(&args)).await.unwrap();
    read_resp(&mut tokio::io::BufReader::new(s)).await.unwrap()
}

/// The keys an array reply names.
fn names(reply: Resp) -> Vec<String> {
    let Resp::Array(items) = reply else {
        panic!("not an array: {reply:?}");
    };
    items
        .into_iter()
        .map(|i| match i {
            Resp::Bulk(b) => String::from_utf8(b).unwrap(),
            other => panic!("not a bulk string: {other:?}"),
        })
        .collect()
}

async fn baseline(redis: &Redis, mode: RedisMode) -> hush_loadtest::report::Summary {
    let out = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/baseline.toml");
    let overrides = [
        format!("fanout.groups={GROUPS}"),
        format!("fanout.group_size={GROUP_SIZE}"),
        "fanout.rates=[20.0]".into(),
        "fanout.phase_s=2.0".into(),
        "fanout.presealed_per_group=4".into(),
        "fanout.setup_concurrency=4".into(),
        "fanout.ack_interval_ms=100".into(),
    ];
    let o = run(Options {
        scenario,
        overrides: overrides.to_vec(),
        out: Some(out.path().to_path_buf()),
        node_bin: Some(node_bin()),
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_hush-loadtest"))),
        redis: Some(redis.addr.to_string()),
        redis_pid: Some(redis.child.id()),
        redis_mode: mode,
        progress: false,
        ..Options::default()
    })
    .await
    .expect("baseline run");
    let s = o.summary;
    assert!(s.correctness.ok(), "{:?}", s.correctness);
    assert!(s.ok);
    assert_eq!(s.targets.len(), 2, "Hush, then Redis");
    for t in &s.targets {
        let p = &t.phases[0];
        assert!(p.sent > 0, "{}", t.name);
        assert_eq!(p.acked, p.sent, "{}: every send acknowledged", t.name);
        assert_eq!(
            p.delivered,
            p.sent * (GROUP_SIZE - 1),
            "{}: every receiver got every message once",
            t.name
        );
        assert_eq!(p.latency_ms["completion"].count, p.sent, "{}", t.name);
    }
    assert_eq!(s.ratio_to_redis.len(), 1, "a Hush / Redis ratio per phase");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_against_redis_pubsub_and_streams() {
    if !redis_server_available() {
        return;
    }
    let redis = start_redis(RedisMode::PubSub);
    assert_eq!(
        query(redis.addr, &["PING"]).await,
        Resp::Simple("PONG".into())
    );
    let s = baseline(&redis, RedisMode::PubSub).await;
    assert_eq!(s.targets[1].name, "redis");
    assert_eq!(
        query(redis.addr, &["DBSIZE"]).await,
        Resp::Int(0),
        "pub/sub keeps nothing"
    );
    drop(redis);

    let redis = start_redis(RedisMode::Streams);
    let s = baseline(&redis, RedisMode::Streams).await;
    assert_eq!(s.targets[1].name, "redis-streams");
    let sent = s.targets[1].phases[0].sent;
    // What Redis kept: a stream per group holding every message, and a
    // stored cursor per receiver.
    let (cursors, streams): (Vec<String>, Vec<String>) =
        names(query(redis.addr, &["KEYS", "*"]).await)
            .into_iter()
            .partition(|k| k.contains(":cursor:"));
    assert_eq!(streams.len() as u64, GROUPS, "{streams:?}");
    let mut kept = 0;
    for key in &streams {
        let Resp::Int(len) = query(redis.addr, &["XLEN", key]).await else {
            panic!("XLEN {key} is not a length");
        };
        kept += u64::try_from(len).unwrap();
    }
    assert_eq!(kept, sent, "every acknowledged message is in its stream");
    assert_eq!(
        cursors.len() as u64,
        GROUPS * (GROUP_SIZE - 1),
        "every receiver stored its cursor: {cursors:?}"
    );
    // ... durably: the append-only file has them.
    let aof_bytes: u64 = std::fs::read_dir(redis.dir.join("appendonlydir"))
        .expect("an append-only directory")
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(aof_bytes > 0);
}
