//! Abuse limits on every endpoint (issue 14, finding 7).
//!
//! - Register, login and link codes are rate limited per source address
//!   (RATE_LIMITED, 429, `Retry-After`), and logins and link codes per
//!   account, where only the account can spend its budget: a stranger who
//!   floods someone's device id with challenges and bad logins does not lock
//!   it out.
//! - A captured login challenge and signature log in once.
//! - Expired link codes are deleted by the sweeper (the review made 1,000
//!   in 3.6 s and they stayed forever).
//! - Slow clients are cut off: a trickled request head, a trickled body, an
//!   idle kept-alive connection; and one address holds at most
//!   `gateway.max_connections_per_ip` connections.
//!
//! Rate limits run on the node's manual clock. The deadlines are real time
//! by nature; their tests use ~1 s values and check that the cut comes long
//! before the trickle would have ended.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hush_client::mls;
use hush_client::store::Identity;
use hush_proto::{auth, v1, ErrorCode, Message as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod common;
use common::{client, start_node, url, WAIT};

const OTHER_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A POST with a protobuf body from `from` (None: the default address).
/// Returns the status, the `Retry-After` header and the body.
async fn post(
    url: &str,
    path: &str,
    body: Vec<u8>,
    bearer: Option<&str>,
    from: Option<IpAddr>,
) -> (u16, Option<String>, Vec<u8>) {
    let client = reqwest::Client::builder()
        .local_address(from)
        .build()
        .expect("client");
    let mut rb = client
        .post(format!("{url}{path}"))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(t) = bearer {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    let resp = tokio::time::timeout(WAIT, rb.send())
        .await
        .expect("answer in time")
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, resp.bytes().await.expect("body").to_vec())
}

fn code(body: &[u8]) -> ErrorCode {
    let e = v1::Error::decode(body).expect("an Error body");
    ErrorCode::try_from(e.code).expect("a known code")
}

fn register_body(handle: &str) -> Vec<u8> {
    let keys = mls::new_device_keys().expect("keys");
    let key = keys.public().to_vec();
    let signature = mls::sign_raw(&keys, &auth::register_payload(handle, &key)).expect("sign");
    v1::RegisterRequest {
        handle: handle.into(),
        device_signature_key: key,
        signature,
    }
    .encode_to_vec()
}

/// A challenge for `device_id` (must succeed).
async fn challenge(url: &str, device_id: &str, from: Option<IpAddr>) -> Vec<u8> {
    let body = v1::LoginChallengeRequest {
        device_id: device_id.into(),
    }
    .encode_to_vec();
    let (status, _, body) = post(url, "/v1/login/challenge", body, None, from).await;
    assert_eq!(status, 200);
    v1::LoginChallengeResponse::decode(body.as_slice())
        .expect("challenge")
        .challenge
}

fn login_body(id: &Identity, challenge: Vec<u8>, sign: bool) -> Vec<u8> {
    let signature = if sign {
        mls::sign_raw(&id.keys, &auth::login_payload(&challenge)).expect("sign")
    } else {
        vec![0u8; 64]
    };
    v1::LoginRequest {
        device_id: id.device_id.clone(),
        challenge,
        signature,
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_endpoints_are_limited_per_address_with_retry_after() {
    let (node, clock, _dir) = start_node(|c| {
        c.rate_limits.ip_per_sec = 1.0;
        c.rate_limits.ip_burst = 5.0;
    })
    .await;
    let url = url(&node);
    for i in 0..5 {
        let (status, _, _) = post(
            &url,
            "/v1/register",
            register_body(&format!("user{i}")),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "registration {i}");
    }
    // The sixth from this address: refused, with when to come back.
    let (status, retry, body) =
        post(&url, "/v1/register", register_body("user5"), None, None).await;
    assert_eq!((status, code(&body)), (429, ErrorCode::RateLimited));
    assert_eq!(retry.as_deref(), Some("1"));
    // Every account endpoint shares the address's budget.
    let (status, _, body) = post(
        &url,
        "/v1/login/challenge",
        v1::LoginChallengeRequest {
            device_id: "d".into(),
        }
        .encode_to_vec(),
        None,
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (429, ErrorCode::RateLimited));
    // Another address has its own.
    let (status, _, _) = post(
        &url,
        "/v1/register",
        register_body("user6"),
        None,
        Some(OTHER_ADDRESS),
    )
    .await;
    assert_eq!(status, 200);
    // After the Retry-After, one more.
    clock.advance(1_000);
    let (status, _, _) = post(&url, "/v1/register", register_body("user5"), None, None).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_login_replays_never_and_strangers_cannot_lock_a_device_out() {
    let (node, _clock, dir) = start_node(|c| {
        c.rate_limits.account_per_sec = 1.0;
        c.rate_limits.account_burst = 3.0;
    })
    .await;
    let url = url(&node);
    let mut alice = client(dir.path(), &url, "alice").await;
    alice.close().await;
    let id = alice.me().expect("identity");
    // (Registering logged alice in once: two logins left in her bucket.)

    // A stranger floods alice's device from another address: challenges
    // and logins with bad signatures. None of it is alice's budget.
    for _ in 0..20 {
        let c = challenge(&url, &id.device_id, Some(OTHER_ADDRESS)).await;
        let (status, _, body) = post(
            &url,
            "/v1/login",
            login_body(&id, c, false),
            None,
            Some(OTHER_ADDRESS),
        )
        .await;
        assert_eq!((status, code(&body)), (403, ErrorCode::Forbidden));
    }

    // Alice logs in; the same challenge and signature, captured, are
    // refused the second time.
    let c = challenge(&url, &id.device_id, None).await;
    let body = login_body(&id, c, true);
    let (status, _, _) = post(&url, "/v1/login", body.clone(), None, None).await;
    assert_eq!(status, 200, "alice's own login");
    let (status, _, replay) =
        post(&url, "/v1/login", body.clone(), None, Some(OTHER_ADDRESS)).await;
    assert_eq!(
        (status, code(&replay)),
        (403, ErrorCode::Forbidden),
        "a replay"
    );

    // Her third login is in budget; the fourth waits.
    let c = challenge(&url, &id.device_id, None).await;
    let (status, _, _) = post(&url, "/v1/login", login_body(&id, c, true), None, None).await;
    assert_eq!(status, 200);
    let c = challenge(&url, &id.device_id, None).await;
    let (status, retry, body) = post(&url, "/v1/login", login_body(&id, c, true), None, None).await;
    assert_eq!((status, code(&body)), (429, ErrorCode::RateLimited));
    assert!(retry.is_some());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_codes_are_limited_per_user_and_expired_ones_are_swept() {
    let (node, clock, dir) = start_node(|c| {
        c.rate_limits.account_per_sec = 0.01;
        c.rate_limits.account_burst = 4.0;
    })
    .await;
    let url = url(&node);
    let mut alice = client(dir.path(), &url, "alice").await;
    let mut bob = client(dir.path(), &url, "bob").await;
    let a = common::login(&url, &alice.me().expect("identity")).await;
    let b = common::login(&url, &bob.me().expect("identity")).await;
    alice.close().await;
    bob.close().await;
    // Link codes are counted per user (logins per device): four for alice.
    for _ in 0..4 {
        let (status, _, _) = post(&url, "/v1/device/link-code", Vec::new(), Some(&a), None).await;
        assert_eq!(status, 200);
    }
    let (status, retry, body) =
        post(&url, "/v1/device/link-code", Vec::new(), Some(&a), None).await;
    assert_eq!((status, code(&body)), (429, ErrorCode::RateLimited));
    assert_eq!(retry.as_deref(), Some("100"), "0.01/s: one more in 100 s");
    // bob's budget is his own.
    let (status, _, _) = post(&url, "/v1/device/link-code", Vec::new(), Some(&b), None).await;
    assert_eq!(status, 200);

    let rows = || {
        let db = rusqlite::Connection::open(dir.path().join("node/hush.sqlite")).expect("db");
        db.query_row("SELECT COUNT(*) FROM link_codes", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("count")
    };
    assert_eq!(rows(), 5);
    // Not yet expired: the sweep keeps them.
    assert_eq!(node.sweep().await.link_codes, 0);
    clock.advance(hush_node::Config::default().auth.link_code_ttl_ms);
    let swept = node.sweep().await;
    assert_eq!(swept.link_codes, 5);
    assert_eq!(rows(), 0);
    node.stop().await;
}

/// What a raw socket hears back before the node closes it, and how long it
/// took.
struct Cut {
    head: String,
    after: Duration,
}

/// Connects from `from` (None: 127.0.0.1), writes `head`, then `trickle`
/// one byte every `every`, and reads until the node closes the socket.
async fn trickle(
    addr: SocketAddr,
    from: Option<IpAddr>,
    head: &str,
    trickle: &'static [u8],
    every: Duration,
) -> Cut {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind");
    }
    let stream = socket.connect(addr).await.expect("connect");
    let start = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.expect("head");
    let writer = tokio::spawn(async move {
        for b in trickle {
            tokio::time::sleep(every).await;
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
        }
        // Keep the socket open: only the node may end it.
        std::future::pending::<()>().await;
    });
    let mut heard = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => heard.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the node kept a trickling socket for {WAIT:?}"),
        }
    }
    writer.abort();
    Cut {
        head: String::from_utf8_lossy(&heard).into_owned(),
        after: start.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off() {
    let (node, _clock, _dir) = start_node(|c| {
        c.gateway.header_timeout_ms = 1_000;
        c.gateway.body_timeout_ms = 1_000;
        c.gateway.keep_alive_ms = 1_000;
    })
    .await;
    let addr = node.addr;
    const SLOW: Duration = Duration::from_secs(2);
    // The trickles below would take a minute; the cuts must come at the
    // deadlines (about a second), well before.
    const SOON: Duration = Duration::from_secs(4);

    // A request head trickled one byte every 2 s.
    let head = trickle(
        addr,
        None,
        "POST /v1/register HTTP/1.1\r\nHost: x\r\n",
        b"X-Slow: 123456789012345678901234567890\r\n",
        SLOW,
    );
    // A body trickled one byte every 2 s after a complete head.
    let body = trickle(
        addr,
        None,
        "POST /v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 30\r\n\r\n",
        b"012345678901234567890123456789",
        SLOW,
    );
    // An answered request, then silence on the kept-alive connection.
    let idle = trickle(
        addr,
        None,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
        SLOW,
    );
    let (head, body, idle) = tokio::join!(head, body, idle);

    assert!(head.after < SOON, "trickled head held {:?}", head.after);
    assert!(
        head.head.is_empty() || head.head.starts_with("HTTP/1.1 408"),
        "{:?}",
        head.head
    );
    assert!(body.after < SOON, "trickled body held {:?}", body.after);
    assert!(body.head.starts_with("HTTP/1.1 400"), "{:?}", body.head);
    assert!(body.head.contains("body_timeout_ms"), "{:?}", body.head);
    assert!(idle.after < SOON, "idle connection held {:?}", idle.after);
    assert!(idle.head.starts_with("HTTP/1.1 200"), "{:?}", idle.head);
    node.stop().await;
}

/// One GET on a new kept-alive connection from `from`; returns the socket
/// (still open) and the status.
async fn get_keep(addr: SocketAddr, from: IpAddr) -> (tokio::net::TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let (node, _clock, _dir) = start_node(|c| {
        c.gateway.max_connections_per_ip = 3;
    })
    .await;
    let addr = node.addr;
    let here = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, status) = get_keep(addr, here).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(s);
    }
    // The fourth from this address is refused and closed.
    let (mut s, status) = get_keep(addr, here).await;
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the refused connection is closed"
    );
    // Another address is not affected.
    let (_other, status) = get_keep(addr, OTHER_ADDRESS).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // One of the three goes: once the node has noticed, there is room.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, status) = get_keep(addr, here).await;
        if status.starts_with("HTTP/1.1 200") {
            held.push(s);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}
