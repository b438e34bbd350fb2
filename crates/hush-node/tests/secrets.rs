//! Secrets at rest (issue 14, finding 3): a local user or a backup reader
//! must not be able to mint tokens.
//!
//! - The data directory is 0700 and every file in it 0600 (the SQLite file,
//!   its WAL and SHM, `node.lock`, `lease-owner`, `token.key`); a directory
//!   left 0755 by an earlier run is fixed at start.
//! - The token key lives in its own file, not in the store; a key an
//!   earlier release kept in the store moves into the file and leaves the
//!   store, and tokens signed with it keep working.
//! - A token whose expiry lies beyond the node's lifetime is refused even
//!   with a good tag.
//! - Rotation: the new key signs, the old one verifies for one token
//!   lifetime, then not; running nodes take a rotated file on reload
//!   (SIGHUP on the binary, or the file watcher).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hush_ds::{TokenClaims, TokenKey, TokenKeys};
use hush_node::{Clock as _, Config, ManualClock, RunningNode, SystemClock};
use hush_proto::{client_frame::Body as C, v1, ClientFrame, Message as _};
use hush_store::Store as _;

mod common;
use common::{client, login, NodeProcess, WAIT};

fn config_in(data: &Path) -> Config {
    let mut config = Config::default();
    config.node.data = data.to_path_buf();
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.workers = 2;
    config.limits.rate_burst = 100_000.0;
    config.rate_limits.ip_burst = 100_000.0;
    config.rate_limits.account_burst = 100_000.0;
    config
}

async fn start(config: Config) -> (RunningNode, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let node = hush_node::start(config, clock.clone())
        .await
        .expect("node starts");
    (node, clock)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The HTTP status of an authenticated request (a Ping over POST /v1/rpc).
async fn auth_status(addr: SocketAddr, token: &str) -> u16 {
    let frame = ClientFrame {
        request_id: 1,
        body: Some(C::Ping(v1::Ping { nonce: 1 })),
    };
    let resp = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/rpc"))
            .header("authorization", format!("Bearer {token}"))
            .body(frame.encode_to_vec())
            .send(),
    )
    .await
    .expect("answer in time")
    .expect("request");
    resp.status().as_u16()
}

fn claims(user: &str, device: &str, expires_at_ms: u64) -> TokenClaims {
    TokenClaims {
        user_id: user.into(),
        device_id: device.into(),
        generation: 0,
        expires_at_ms,
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    // As an earlier release (or a umask of 022) left it.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("lease-owner"), "n1#0123456789abcdef\n").unwrap();
    std::fs::set_permissions(
        data.join("lease-owner"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let (node, _clock) = start(config_in(&data)).await;
    {
        // Writes, so the WAL and SHM exist.
        let mut alice = client(dir.path(), &format!("http://{}", node.addr), "alice").await;
        alice.create_group("g").await.expect("group");
        alice.close().await;
    }
    assert_eq!(mode(&data), 0o700, "data directory");
    for file in [
        "hush.sqlite",
        "hush.sqlite-wal",
        "hush.sqlite-shm",
        "node.lock",
        "lease-owner",
        "token.key",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_key_moves_to_its_file_and_long_expiries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let legacy = [0x5au8; 32];
    let now = SystemClock.now_ms();
    // A store as an earlier release left it: the key in `secrets`, a user.
    {
        std::fs::create_dir(&data).unwrap();
        let store =
            hush_store::SqliteStore::open(hush_store::SqliteConfig::new(data.join("hush.sqlite")))
                .await
                .expect("store");
        store
            .get_or_create_secret(hush_node::secrets::LEGACY_STORE_SECRET, &legacy)
            .await
            .expect("legacy key");
        store
            .create_user(&hush_store::Device {
                user_id: "alice".into(),
                device_id: "d1".into(),
                signature_key: vec![7; 32],
                token_generation: 0,
                created_at_ms: now,
            })
            .await
            .expect("user");
    }
    let config = config_in(&data);
    let ttl = config.auth.token_ttl_ms;
    let (node, clock) = start(config).await;

    // The store no longer holds a key; the file does, and it is the old one:
    // a token an earlier run issued still works.
    assert_eq!(
        node.store()
            .take_secret(hush_node::secrets::LEGACY_STORE_SECRET)
            .await
            .expect("store"),
        None
    );
    let text = std::fs::read_to_string(data.join("token.key")).expect("key file");
    let keys = TokenKeys::parse(&text).expect("key file parses");
    let old = TokenKey::new(&legacy);
    let earlier = old.issue(&claims("alice", "d1", clock.now_ms() + ttl));
    assert_eq!(auth_status(node.addr, &earlier).await, 200);
    assert_eq!(
        keys.issue(&claims("alice", "d1", clock.now_ms() + ttl)),
        earlier,
        "the file's current key is the store's old one"
    );

    // Well signed, but valid for ten years: refused.
    let forever = old.issue(&claims(
        "alice",
        "d1",
        clock.now_ms() + 10 * 365 * 24 * 3_600_000,
    ));
    assert_eq!(auth_status(node.addr, &forever).await, 401);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_verifies_for_one_token_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut config = config_in(&data);
    // Reloads come from the watcher in this test.
    config.node.watch_ms = 20;
    let (node, clock) = start(config.clone()).await;
    let url = format!("http://{}", node.addr);
    let alice = client(dir.path(), &url, "alice").await;
    let me = alice.me().expect("identity");
    let before = login(&url, &me).await;
    let old =
        TokenKeys::parse(&std::fs::read_to_string(config.token_key_file()).unwrap()).expect("keys");

    let mut reloads = node.watch_reloads();
    let rotated = hush_node::secrets::rotate_token_key(&config, clock.now_ms()).expect("rotate");
    tokio::time::timeout(WAIT, reloads.changed())
        .await
        .expect("the watcher reloads the rotated file")
        .expect("watch");
    let lifetime = config.auth.token_ttl_ms + config.auth.max_clock_skew_ms;
    assert_eq!(rotated.previous_until_ms(), Some(clock.now_ms() + lifetime));

    // The token from before still works; new logins are signed with the new
    // key, which the old one does not verify.
    assert_eq!(auth_status(node.addr, &before).await, 200);
    let after = login(&url, &me).await;
    assert_eq!(auth_status(node.addr, &after).await, 200);
    assert!(
        old.verify(&after, clock.now_ms(), u64::MAX).is_err(),
        "new tokens are signed with the new key"
    );

    // One lifetime later the old key is gone, even for a token it signs
    // now with a valid expiry.
    clock.advance(lifetime);
    let fresh =
        |k: &TokenKeys| k.issue(&claims(&me.user_id, &me.device_id, clock.now_ms() + 60_000));
    assert_eq!(auth_status(node.addr, &fresh(&old)).await, 401);
    assert_eq!(auth_status(node.addr, &fresh(&rotated)).await, 200);
    drop(alice);
    node.stop().await;
}

/// The operator's path: `hush-node rotate-token-key`, then SIGHUP.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_rotates_with_a_command_and_reloads_on_sighup() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_hush-node");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let conf = dir.path().join("node.toml");
    // No watcher: only SIGHUP reloads.
    std::fs::write(&conf, "[node]\nwatch_ms = 0\n").unwrap();
    let mut child = NodeProcess(
        Command::new(BIN)
            .arg("--config")
            .arg(&conf)
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("listening line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address");
    // The node's log, line by line, from a thread.
    let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(l);
        }
    });

    // A device to sign for (tokens are checked against the store too).
    {
        let mut alice = hush_client::client::Client::open(
            &dir.path().join("alice"),
            Some(&format!("http://{addr}")),
        )
        .expect("client");
        alice.register("alice").await.expect("register");
        alice.close().await;
    }
    let store =
        hush_store::SqliteStore::open(hush_store::SqliteConfig::new(data.join("hush.sqlite")))
            .await
            .expect("store");
    let device = store.devices_of_user("alice").await.expect("devices")[0].clone();
    let token_for = |keys: &TokenKeys| {
        keys.issue(&claims(
            "alice",
            &device.device_id,
            SystemClock.now_ms() + 3_600_000,
        ))
    };

    let out = Command::new(BIN)
        .arg("rotate-token-key")
        .arg("--config")
        .arg(&conf)
        .arg("--data")
        .arg(&data)
        .output()
        .expect("rotate-token-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated =
        TokenKeys::parse(&std::fs::read_to_string(data.join("token.key")).unwrap()).expect("keys");
    // The running node still has the old keys until it is told.
    assert_eq!(auth_status(addr, &token_for(&rotated)).await, 401);

    let hup = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let l = log_rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the node logs its reload");
        if l.contains("reloaded on SIGHUP") {
            break;
        }
    }
    assert_eq!(auth_status(addr, &token_for(&rotated)).await, 200);

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}
