//! Bad input, end to end against an in-process node: every bad input gets a
//! code from the one closed `ErrorCode` list (in an `Error` frame, an HTTP
//! `Error` body, or a WebSocket close code from the documented set), and the
//! node keeps serving everybody else.
//!
//! The node runs in-process (`hush_node::start`) with a [`ManualClock`], so
//! token expiry and rate-limit refills happen when a test moves the clock.
//! Clients are raw WebSockets (tokio-tungstenite), a hand-rolled WebSocket
//! peer over TCP (for peers that must *not* answer pings or read), raw HTTP
//! (reqwest), and the hush-client SDK for real MLS material.
//!
//! Nothing here sleeps to wait: every wait is for an event (a frame, a close,
//! a processed timeline entry) with a generous timeout as a safety net. Two
//! limits are real time by nature — the auth deadline and the heartbeat — and
//! their tests use tiny values.
//!
//! Codes provoked here: MALFORMED, TOO_LARGE, RATE_LIMITED, BAD_TOKEN,
//! TOKEN_EXPIRED, BAD_ORIGIN, UNKNOWN_GROUP, NOT_MEMBER, STALE_EPOCH,
//! WRONG_WIRE_FORMAT, INVALID_MLS, ALREADY_EXISTS, NOT_FOUND, NO_KEY_PACKAGE,
//! FORBIDDEN, UNAUTHENTICATED, TOO_MANY_CONNECTIONS, INVALID_ARGUMENT; close
//! codes 1008, 1009, 4000, 4001, 4002. (UNAVAILABLE and INTERNAL are the
//! node's own conditions, not reactions to bad input.)

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use hush_client::client::Client;
use hush_client::http::Token;
use hush_client::mls::{self, Change};
use hush_client::store::{Identity, StateDb};
use hush_client::ws::WsConn;
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::{auth, v1, ClientFrame, ErrorCode, Message as _, ServerFrame};
use ring::rand::SecureRandom as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{
    alice_and_bob, client, has_text, is_member, processed_to, pump_until, start_node, url, WAIT,
};

/// The error code of an `Error`, which must be one of the closed list.
fn code_of(e: &v1::Error) -> ErrorCode {
    let code = ErrorCode::try_from(e.code)
        .unwrap_or_else(|_| panic!("error code {} is not in the closed list", e.code));
    assert_ne!(code, ErrorCode::Unspecified, "unspecified error: {e:?}");
    code
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut id).expect("rng");
    id
}

fn random_nonce() -> u64 {
    let id = random_id();
    u64::from_le_bytes(id[..8].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// POSTs a protobuf body; `Ok(body)` on 2xx, else `(status, code)` from the
/// `Error` body (which must decode).
async fn post(
    url: &str,
    path: &str,
    body: Vec<u8>,
    bearer: Option<&str>,
) -> Result<Vec<u8>, (u16, ErrorCode)> {
    let mut rb = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(t) = bearer {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    let resp = tokio::time::timeout(WAIT, rb.send())
        .await
        .expect("HTTP answer in time")
        .expect("HTTP request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("HTTP body").to_vec();
    if (200..300).contains(&status) {
        return Ok(bytes);
    }
    let err = v1::Error::decode(bytes.as_slice()).unwrap_or_else(|_| {
        panic!(
            "POST {path}: status {status} without an Error body: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Err((status, code_of(&err)))
}

async fn post_ok<Resp: hush_proto::Message + Default>(
    url: &str,
    path: &str,
    req: &impl hush_proto::Message,
    bearer: Option<&str>,
) -> Resp {
    match post(url, path, req.encode_to_vec(), bearer).await {
        Ok(b) => Resp::decode(b.as_slice()).expect("response decodes"),
        Err(e) => panic!("POST {path} failed: {e:?}"),
    }
}

fn register_request(handle: &str, keys_of: &Identity, signer: &Identity) -> v1::RegisterRequest {
    let key = keys_of.keys.public().to_vec();
    let signature =
        mls::sign_raw(&signer.keys, &auth::register_payload(handle, &key)).expect("sign");
    v1::RegisterRequest {
        handle: handle.into(),
        device_signature_key: key,
        signature,
    }
}

/// A fresh device key (not yet registered).
fn new_keys(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        device_id: String::new(),
        keys: mls::new_device_keys().expect("device key"),
        server: String::new(),
    }
}

/// Registers `handle` over raw HTTP.
async fn register(url: &str, handle: &str) -> Identity {
    let mut id = new_keys(handle);
    let r: v1::RegisterResponse = post_ok(
        url,
        "/v1/register",
        &register_request(handle, &id, &id),
        None,
    )
    .await;
    id.device_id = r.device_id;
    id.server = url.into();
    id
}

async fn challenge(url: &str, device_id: &str) -> Vec<u8> {
    let r: v1::LoginChallengeResponse = post_ok(
        url,
        "/v1/login/challenge",
        &v1::LoginChallengeRequest {
            device_id: device_id.into(),
        },
        None,
    )
    .await;
    r.challenge
}

fn login_request(device_id: &str, challenge: Vec<u8>, signer: &Identity) -> v1::LoginRequest {
    let signature = mls::sign_raw(&signer.keys, &auth::login_payload(&challenge)).expect("sign");
    v1::LoginRequest {
        device_id: device_id.into(),
        challenge,
        signature,
    }
}

/// Logs a device in; returns a fresh token.
async fn login(url: &str, id: &Identity) -> String {
    let ch = challenge(url, &id.device_id).await;
    let r: v1::LoginResponse = post_ok(
        url,
        "/v1/login",
        &login_request(&id.device_id, ch, id),
        None,
    )
    .await;
    r.token
}

// ---------------------------------------------------------------------------
// WebSocket via tokio-tungstenite
// ---------------------------------------------------------------------------

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket client. It reads only when a test asks it to.
struct Ws {
    ws: WsStream,
    next_id: u64,
}

/// Opens `/v1/ws`, optionally with a token subprotocol and an Origin.
async fn try_ws(
    addr: SocketAddr,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    let protocols = match token {
        Some(t) => format!("{}, {}{t}", auth::WS_PROTOCOL, auth::WS_TOKEN_PREFIX),
        None => auth::WS_PROTOCOL.to_string(),
    };
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).expect("header"),
    );
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).expect("header"));
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")?;
    Ok(Ws { ws, next_id: 0 })
}

/// Opens an authenticated connection (token subprotocol).
async fn ws(addr: SocketAddr, token: &str) -> Ws {
    try_ws(addr, Some(token), None)
        .await
        .expect("authenticated WebSocket")
        .authed()
        .await
}

/// A refused upgrade: its HTTP status and the code of its `Error` body.
fn refusal(r: Result<Ws, tungstenite::Error>) -> (u16, ErrorCode) {
    match r {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let err = v1::Error::decode(body.as_slice()).expect("refusal carries an Error body");
            (resp.status().as_u16(), code_of(&err))
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

impl Ws {
    /// Reads the AuthOk that starts an authenticated connection.
    async fn authed(mut self) -> Self {
        let f = self.frame().await;
        assert!(
            matches!(f.body, Some(S::AuthOk(_))),
            "expected AuthOk: {f:?}"
        );
        self
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    async fn send(&mut self, request_id: u64, body: Option<C>) {
        self.send_bytes(ClientFrame { request_id, body }.encode_to_vec())
            .await;
    }

    /// The next server frame (control frames skipped).
    async fn frame(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    return ServerFrame::decode(b.as_ref()).expect("server frame decodes")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a server frame, got {other:?}"),
            }
        }
    }

    /// The next frame must be an `Error` for `request_id` with `code`.
    async fn error_frame(&mut self, request_id: u64, code: ErrorCode) -> v1::Error {
        let f = self.frame().await;
        assert_eq!(f.request_id, request_id, "{f:?}");
        match f.body {
            Some(S::Error(e)) => {
                assert_eq!(code_of(&e), code, "{}", e.message);
                e
            }
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }

    /// Sends a request and returns its answer (pushed frames are skipped).
    async fn request(&mut self, body: C) -> S {
        self.next_id += 1;
        let rid = self.next_id;
        self.send(rid, Some(body)).await;
        loop {
            let f = self.frame().await;
            if f.request_id == rid {
                return f.body.expect("answer has a body");
            }
            assert_eq!(f.request_id, 0, "answer to another request: {f:?}");
        }
    }

    async fn expect_err(&mut self, body: C, code: ErrorCode) -> v1::Error {
        match self.request(body).await {
            S::Error(e) => {
                eprintln!("DEBUG {code:?}: {}", e.message);
                assert_eq!(code_of(&e), code, "{}", e.message);
                e
            }
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }

    /// The connection is served: a Ping gets its Pong.
    async fn ping_ok(&mut self) {
        let nonce = random_nonce();
        match self.request(C::Ping(v1::Ping { nonce })).await {
            S::Pong(p) => assert_eq!(p.nonce, nonce),
            other => panic!("expected Pong, got {other:?}"),
        }
    }

    /// Reads until the server's Close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Closes from our side and waits for the server's Close: by then the
    /// server has detached the connection from its session.
    async fn close_cleanly(mut self) {
        self.ws.close(None).await.expect("send close");
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close answered in time")
            {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("close failed: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A hand-rolled WebSocket peer over TCP: it never answers pings and reads only
// when told to (tungstenite answers pings whenever it is polled).
// ---------------------------------------------------------------------------

struct RawPeer {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

impl RawPeer {
    /// Upgrades with the token subprotocol. `recv_buffer` shrinks the socket's
    /// receive buffer (it also turns off its autotuning).
    async fn connect(addr: SocketAddr, token: &str, recv_buffer: Option<u32>) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let mut tcp = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {}, {}{token}\r\n\r\n",
            auth::WS_PROTOCOL,
            auth::WS_TOKEN_PREFIX
        );
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut peer = Self {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = peer.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(peer.fill().await, "connection closed during the handshake");
        };
        let head = String::from_utf8_lossy(&peer.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        peer.buf.drain(..end);
        peer
    }

    /// Reads more bytes; false at EOF or on a connection error.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("bytes in time")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Sends a client frame (masked, as clients must).
    async fn send(&mut self, frame: &ClientFrame) {
        let payload = frame.encode_to_vec();
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        let mut out = vec![0x80 | OP_BINARY];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&out).await.expect("write frame");
    }

    /// The next frame (opcode, payload); None when the connection ended.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((opcode, payload));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next data frame as a ServerFrame (control frames skipped).
    async fn server_frame(&mut self) -> ServerFrame {
        loop {
            match self.next().await {
                Some((OP_BINARY, p)) => return ServerFrame::decode(p.as_slice()).expect("decodes"),
                Some((OP_CLOSE, p)) => panic!("closed: {:?}", close_code_of(&p)),
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    }
}

/// Parses one unmasked server frame at the start of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, header) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return None;
    }
    Some((opcode, buf[header..header + len].to_vec(), header + len))
}

fn close_code_of(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

// ---------------------------------------------------------------------------
// hush-client SDK helpers (real MLS)
// ---------------------------------------------------------------------------

/// A text from `from` reaches `to`, decrypted.
async fn message_goes_through(from: &mut Client, to: &mut Client, gid: &[u8], text: &str) {
    from.send_text(&hex::encode(gid), text)
        .await
        .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
    pump_until(to, text, |c| has_text(c, gid, text)).await;
}

fn send_message(group_id: &[u8], message: &[u8]) -> C {
    C::SendMessage(v1::SendMessage {
        group_id: group_id.to_vec(),
        client_msg_id: random_id(),
        message: message.to_vec(),
    })
}

fn send_commit(group_id: &[u8], c: &mls::CommitOut, commit: &[u8], group_info: &[u8]) -> C {
    C::SendCommit(v1::SendCommit {
        group_id: group_id.to_vec(),
        commit: commit.to_vec(),
        welcome: c.welcome.clone().unwrap_or_default(),
        group_info: group_info.to_vec(),
        ratchet_tree: c.ratchet_tree.clone(),
        client_msg_id: random_id(),
    })
}

/// A group that sends its handshake messages as PrivateMessage (which Hush
/// clients never do): what the node is asked to register, and a commit and
/// an application message of it.
struct CiphertextGroup {
    create: v1::CreateGroup,
    group_id: Vec<u8>,
    private_commit: Vec<u8>,
    commit_group_info: Vec<u8>,
    application: Vec<u8>,
}

fn ciphertext_group(db: &StateDb, id: &Identity) -> CiphertextGroup {
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::*;
    let provider = db.provider();
    let mut group = MlsGroup::builder()
        .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .ciphersuite(mls::CIPHERSUITE)
        .build(&provider, &id.keys, mls::credential(id))
        .expect("group");
    let group_info = group
        .export_group_info(provider.crypto(), &id.keys, false)
        .expect("group info")
        .to_bytes()
        .expect("encode");
    let ratchet_tree = group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .expect("tree");
    let application = group
        .create_message(&provider, &id.keys, b"from another group")
        .expect("encrypt")
        .to_bytes()
        .expect("encode");
    let bundle = group
        .commit_builder()
        .consume_proposal_store(true)
        .load_psks(provider.storage())
        .expect("psks")
        .create_group_info(true)
        .build(provider.rand(), provider.crypto(), &id.keys, |_| true)
        .expect("commit")
        .stage_commit(&provider)
        .expect("stage");
    let (commit, _welcome, commit_group_info) = bundle.into_messages();
    CiphertextGroup {
        create: v1::CreateGroup {
            group_info,
            ratchet_tree,
        },
        group_id: group.group_id().to_vec(),
        private_commit: commit.to_bytes().expect("encode"),
        commit_group_info: commit_group_info
            .expect("group info")
            .to_bytes()
            .expect("encode"),
        application,
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// MALFORMED, TOO_LARGE, close 1009 and RATE_LIMITED on one node with small
/// limits; a bystander connection is served after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sizes_and_rates() {
    let (node, clock, _dir) = start_node(|c| {
        c.limits.max_frame_bytes = 4096;
        c.limits.max_message_bytes = 1024;
        c.limits.max_key_packages_per_upload = 2;
        c.limits.rate_per_sec = 1.0;
        c.limits.rate_burst = 10.0;
    })
    .await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let gus = register(&url, "gus").await;
        let hal = register(&url, "hal").await;
        let gus_token = login(&url, &gus).await;
        let mut watch = ws(node.addr, &login(&url, &hal).await).await;
        watch.ping_ok().await;

        let mut a = ws(node.addr, &gus_token).await;
        // MALFORMED: bytes that are no ClientFrame. Answered; the connection stays.
        a.send_bytes(vec![0xff, 0xff, 0xff, 0x01]).await;
        a.error_frame(0, ErrorCode::Malformed).await;
        a.ping_ok().await;
        // MALFORMED: a text frame (the protocol is binary only).
        a.ws.send(Message::text("{\"ping\":1}"))
            .await
            .expect("send");
        a.error_frame(0, ErrorCode::Malformed).await;
        // MALFORMED: a frame without a body; the request id is echoed.
        a.send(77, None).await;
        a.error_frame(77, ErrorCode::Malformed).await;
        a.ping_ok().await;
        watch.ping_ok().await;

        // TOO_LARGE: a message above max_message_bytes inside an acceptable frame.
        a.expect_err(
            send_message(&[7; 16], &vec![0u8; 2000]),
            ErrorCode::TooLarge,
        )
        .await;
        // TOO_LARGE: more key packages than one upload may carry.
        a.expect_err(
            C::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages: vec![vec![1u8; 8]; 3],
                last_resort: Vec::new(),
            }),
            ErrorCode::TooLarge,
        )
        .await;
        a.ping_ok().await;
        watch.ping_ok().await;

        // Close 1009: a frame above max_frame_bytes.
        a.send_bytes(vec![0u8; 5000]).await;
        assert_eq!(a.close_code().await, 1009);
        // ... also before authentication.
        let mut anon = try_ws(node.addr, None, None).await.expect("upgrade");
        anon.send_bytes(vec![0u8; 5000]).await;
        assert_eq!(anon.close_code().await, 1009);
        watch.ping_ok().await;

        // HTTP bodies have the same bound: TOO_LARGE in an Error body.
        assert_eq!(
            post(&url, "/v1/register", vec![0u8; 5000], None).await,
            Err((413, ErrorCode::TooLarge))
        );

        // RATE_LIMITED: a fresh connection has rate_burst (10) tokens and the
        // clock stands still, so the 11th and 12th requests are refused...
        let mut r = ws(node.addr, &gus_token).await;
        for rid in 1..=12 {
            r.send(rid, Some(C::Ping(v1::Ping { nonce: rid }))).await;
        }
        // Answers come by request id, not necessarily in order: a refusal
        // is written at once, a Ping's answer when its request completes.
        let mut answers = std::collections::BTreeMap::new();
        for _ in 1..=12 {
            let f = r.frame().await;
            assert!(answers.insert(f.request_id, f.body).is_none());
        }
        assert_eq!(
            answers.keys().copied().collect::<Vec<_>>(),
            (1..=12).collect::<Vec<u64>>()
        );
        for (rid, body) in answers {
            match (rid, body) {
                (1..=10, Some(S::Pong(p))) => assert_eq!(p.nonce, rid),
                (11..=12, Some(S::Error(e))) => assert_eq!(code_of(&e), ErrorCode::RateLimited),
                (_, other) => panic!("request {rid}: unexpected {other:?}"),
            }
        }
        r.next_id = 100;
        r.expect_err(C::Ping(v1::Ping { nonce: 1 }), ErrorCode::RateLimited)
            .await;
        // ... while other connections have their own budget ...
        watch.ping_ok().await;
        // ... and the limited one is not closed: once a second passes it has a
        // token again.
        clock.advance(1000);
        r.ping_ok().await;
        r.expect_err(C::Ping(v1::Ping { nonce: 2 }), ErrorCode::RateLimited)
            .await;
        watch.ping_ok().await;
    }
    node.stop().await;
}

/// Accounts, login, tokens, Origin and connection limits: HTTP and WebSocket
/// errors, with a bystander served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_tokens_origins_and_connection_limits() {
    const GOOD_ORIGIN: &str = "https://app.hush.example";
    let (node, clock, _dir) = start_node(|c| {
        c.gateway.allowed_origins = vec![GOOD_ORIGIN.into()];
        c.auth.token_ttl_ms = 60_000;
        c.limits.max_connections_per_user = 2;
    })
    .await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let addr = node.addr;

        // The bystander authenticates with a first Auth frame.
        let watcher = register(&url, "watcher").await;
        let mut watch = try_ws(addr, None, None).await.expect("upgrade");
        watch
            .send(
                5,
                Some(C::Auth(v1::Auth {
                    token: login(&url, &watcher).await,
                })),
            )
            .await;
        assert!(matches!(watch.frame().await.body, Some(S::AuthOk(_))));
        watch.ping_ok().await;

        // --- registration ---
        // MALFORMED: a body that is not protobuf.
        assert_eq!(
            post(&url, "/v1/register", vec![0xff; 7], None).await,
            Err((400, ErrorCode::Malformed))
        );
        // INVALID_ARGUMENT: handle syntax.
        for bad in ["Dave", "da", "da-ve", "dave!", &"d".repeat(33)] {
            let k = new_keys(bad);
            let req = register_request(bad, &k, &k);
            assert_eq!(
                post(&url, "/v1/register", req.encode_to_vec(), None).await,
                Err((400, ErrorCode::InvalidArgument)),
                "handle {bad:?}"
            );
        }
        // INVALID_ARGUMENT: a device key that is not 32 bytes.
        let k = new_keys("dave");
        let mut req = register_request("dave", &k, &k);
        req.device_signature_key.truncate(16);
        assert_eq!(
            post(&url, "/v1/register", req.encode_to_vec(), None).await,
            Err((400, ErrorCode::InvalidArgument))
        );
        // FORBIDDEN: a registration signed by another key than the one registered.
        let other = new_keys("dave");
        assert_eq!(
            post(
                &url,
                "/v1/register",
                register_request("dave", &k, &other).encode_to_vec(),
                None
            )
            .await,
            Err((403, ErrorCode::Forbidden))
        );
        let dave = register(&url, "dave").await;
        // ALREADY_EXISTS: the handle is taken (new key, properly signed).
        let k = new_keys("dave");
        assert_eq!(
            post(
                &url,
                "/v1/register",
                register_request("dave", &k, &k).encode_to_vec(),
                None
            )
            .await,
            Err((409, ErrorCode::AlreadyExists))
        );
        watch.ping_ok().await;

        // --- login ---
        // FORBIDDEN: a login signed by another key.
        let ch = challenge(&url, &dave.device_id).await;
        assert_eq!(
            post(
                &url,
                "/v1/login",
                login_request(&dave.device_id, ch, &other).encode_to_vec(),
                None
            )
            .await,
            Err((403, ErrorCode::Forbidden))
        );
        // FORBIDDEN: another device's challenge.
        let ch = challenge(&url, &watcher.device_id).await;
        assert_eq!(
            post(
                &url,
                "/v1/login",
                login_request(&dave.device_id, ch, &dave).encode_to_vec(),
                None
            )
            .await,
            Err((403, ErrorCode::Forbidden))
        );
        // NOT_FOUND: a well-signed login for a device that does not exist.
        let ch = challenge(&url, "0123456789abcdef").await;
        assert_eq!(
            post(
                &url,
                "/v1/login",
                login_request("0123456789abcdef", ch, &other).encode_to_vec(),
                None
            )
            .await,
            Err((404, ErrorCode::NotFound))
        );
        // INVALID_ARGUMENT: a challenge for no device.
        assert_eq!(
            post(
                &url,
                "/v1/login/challenge",
                v1::LoginChallengeRequest::default().encode_to_vec(),
                None
            )
            .await,
            Err((400, ErrorCode::InvalidArgument))
        );
        watch.ping_ok().await;

        // --- directory requests on the WebSocket ---
        let dave_token = login(&url, &dave).await;
        let mut d = ws(addr, &dave_token).await;
        d.expect_err(
            C::ClaimKeyPackages(v1::ClaimKeyPackages {
                user_id: "nobody".into(),
            }),
            ErrorCode::NotFound,
        )
        .await;
        d.expect_err(
            C::LookupUser(v1::LookupUser {
                handle: "nobody".into(),
            }),
            ErrorCode::NotFound,
        )
        .await;
        // NO_KEY_PACKAGE: the user exists but uploaded nothing.
        d.expect_err(
            C::ClaimKeyPackages(v1::ClaimKeyPackages {
                user_id: "watcher".into(),
            }),
            ErrorCode::NoKeyPackage,
        )
        .await;
        // FORBIDDEN: uploading a (valid) key package of another device.
        let scratch = StateDb::open_in_memory().expect("db");
        let (kps, _) = mls::new_key_packages(&scratch, &watcher, 1, false).expect("kp");
        d.expect_err(
            C::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages: kps,
                last_resort: Vec::new(),
            }),
            ErrorCode::Forbidden,
        )
        .await;
        // MALFORMED: key package bytes that do not decode.
        d.expect_err(
            C::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages: vec![vec![0x00, 0x01, 0x02]],
                last_resort: Vec::new(),
            }),
            ErrorCode::Malformed,
        )
        .await;
        // INVALID_ARGUMENT: authenticating twice; an Ack without a group.
        d.expect_err(
            C::Auth(v1::Auth {
                token: dave_token.clone(),
            }),
            ErrorCode::InvalidArgument,
        )
        .await;
        d.expect_err(C::Ack(v1::Ack::default()), ErrorCode::InvalidArgument)
            .await;
        d.ping_ok().await;
        watch.ping_ok().await;

        // --- tokens ---
        // Same shape, one character changed inside: the HMAC no longer matches.
        let mut forged = dave_token.clone().into_bytes();
        let mid = forged.len() / 2;
        forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        // BAD_TOKEN: forged or garbled token in the subprotocol -> refused upgrade.
        assert_eq!(
            refusal(try_ws(addr, Some(&forged), None).await),
            (401, ErrorCode::BadToken)
        );
        assert_eq!(
            refusal(try_ws(addr, Some("not-a-token"), None).await),
            (401, ErrorCode::BadToken)
        );
        // BAD_TOKEN in a first Auth frame: Error, then close 1008.
        let mut w = try_ws(addr, None, None).await.expect("upgrade");
        w.send(
            9,
            Some(C::Auth(v1::Auth {
                token: forged.clone(),
            })),
        )
        .await;
        w.error_frame(9, ErrorCode::BadToken).await;
        assert_eq!(w.close_code().await, 1008);
        // BAD_TOKEN on HTTP endpoints.
        assert_eq!(
            post(&url, "/v1/device/link-code", Vec::new(), Some(&forged)).await,
            Err((401, ErrorCode::BadToken))
        );
        assert_eq!(
            post(&url, "/v1/logout", Vec::new(), Some("garbage")).await,
            Err((401, ErrorCode::BadToken))
        );
        // UNAUTHENTICATED: no bearer on HTTP; a request before auth on the
        // WebSocket (Error echoing the request id, then close 1008).
        assert_eq!(
            post(&url, "/v1/logout", Vec::new(), None).await,
            Err((401, ErrorCode::Unauthenticated))
        );
        let mut w = try_ws(addr, None, None).await.expect("upgrade");
        w.send(3, Some(C::Ping(v1::Ping { nonce: 1 }))).await;
        w.error_frame(3, ErrorCode::Unauthenticated).await;
        assert_eq!(w.close_code().await, 1008);
        // MALFORMED before auth: Error, then close 1008.
        let mut w = try_ws(addr, None, None).await.expect("upgrade");
        w.send_bytes(vec![0xff, 0xff, 0xff]).await;
        w.error_frame(0, ErrorCode::Malformed).await;
        assert_eq!(w.close_code().await, 1008);
        d.ping_ok().await;
        watch.ping_ok().await;

        // --- Origin ---
        // BAD_ORIGIN: checked before anything else, token or not.
        assert_eq!(
            refusal(try_ws(addr, Some(&dave_token), Some("https://evil.example")).await),
            (403, ErrorCode::BadOrigin)
        );
        assert_eq!(
            refusal(try_ws(addr, None, Some("null")).await),
            (403, ErrorCode::BadOrigin)
        );
        // An allowed Origin works.
        let mut browser = try_ws(addr, Some(&dave_token), Some(GOOD_ORIGIN))
            .await
            .expect("allowed origin")
            .authed()
            .await;
        browser.ping_ok().await;
        watch.ping_ok().await;

        // --- TOO_MANY_CONNECTIONS: dave has two connections (d, browser) ---
        let mut third = try_ws(addr, Some(&dave_token), None)
            .await
            .expect("upgrade");
        third.error_frame(0, ErrorCode::TooManyConnections).await;
        assert_eq!(third.close_code().await, 1008);
        d.ping_ok().await;
        browser.ping_ok().await;
        watch.ping_ok().await;
        // Once one closes, there is room again.
        browser.close_cleanly().await;
        let mut again = ws(addr, &dave_token).await;
        again.ping_ok().await;

        // --- revoked token: logout revokes the device's tokens and closes its
        // connections (1008) ---
        let _: v1::LogoutResponse =
            post_ok(&url, "/v1/logout", &v1::LogoutRequest {}, Some(&dave_token)).await;
        assert_eq!(d.close_code().await, 1008);
        assert_eq!(again.close_code().await, 1008);
        assert_eq!(
            refusal(try_ws(addr, Some(&dave_token), None).await),
            (401, ErrorCode::BadToken)
        );
        assert_eq!(
            post(&url, "/v1/device/link-code", Vec::new(), Some(&dave_token)).await,
            Err((401, ErrorCode::BadToken))
        );
        let mut fresh = ws(addr, &login(&url, &dave).await).await;
        fresh.ping_ok().await;
        watch.ping_ok().await;

        // --- TOKEN_EXPIRED: the clock passes the token's lifetime ---
        let token = login(&url, &dave).await;
        clock.advance(60_000);
        assert_eq!(
            refusal(try_ws(addr, Some(&token), None).await),
            (401, ErrorCode::TokenExpired)
        );
        assert_eq!(
            post(&url, "/v1/device/link-code", Vec::new(), Some(&token)).await,
            Err((401, ErrorCode::TokenExpired))
        );
        let mut w = try_ws(addr, None, None).await.expect("upgrade");
        w.send(4, Some(C::Auth(v1::Auth { token }))).await;
        w.error_frame(4, ErrorCode::TokenExpired).await;
        assert_eq!(w.close_code().await, 1008);
        // Logging in again works.
        let mut renewed = ws(addr, &login(&url, &dave).await).await;
        renewed.ping_ok().await;
    }
    node.stop().await;
}

/// A connection that never authenticates is closed with 4000 at the auth
/// deadline (real time, 200 ms); an authenticated one is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_deadline_closes_silent_connections() {
    let (node, _clock, _dir) = start_node(|c| c.limits.auth_deadline_ms = 200).await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let ivy = register(&url, "ivy").await;
        let mut healthy = ws(node.addr, &login(&url, &ivy).await).await;
        let mut silent = try_ws(node.addr, None, None).await.expect("upgrade");
        assert_eq!(silent.close_code().await, 4000);
        // The deadline has passed for both; the authenticated one is served.
        healthy.ping_ok().await;
    }
    node.stop().await;
}

/// Group requests: UNKNOWN_GROUP, NOT_MEMBER, TOO_LARGE, MALFORMED,
/// WRONG_WIRE_FORMAT, INVALID_MLS, INVALID_ARGUMENT, FORBIDDEN and
/// STALE_EPOCH (commit race and an old-epoch message), with real MLS
/// material; after each, messages still go through between the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_requests() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_message_bytes = 16 * 1024;
        // Application messages must be from the current epoch.
        c.limits.epoch_window = 0;
    })
    .await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let addr = node.addr;
        let mut alice = client(dir.path(), &url, "alice").await;
        let mut bob = client(dir.path(), &url, "bob").await;
        let carol = client(dir.path(), &url, "carol").await;
        let gid = alice.create_group("room").await.expect("group").group_id;
        alice
            .add_members(&hex::encode(&gid), &["bob".to_string()])
            .await
            .expect("add bob")
            .expect("bob added");
        pump_until(&mut bob, "bob's welcome", |c| is_member(c, &gid)).await;
        message_goes_through(&mut alice, &mut bob, &gid, "hello bob").await;

        let a_id = alice.me().expect("alice");
        let b_id = bob.me().expect("bob");
        let c_id = carol.me().expect("carol");
        let mut a_ws = ws(addr, &login(&url, &a_id).await).await;
        let mut b_ws = ws(addr, &login(&url, &b_id).await).await;
        let mut c_ws = ws(addr, &login(&url, &c_id).await).await;

        // UNKNOWN_GROUP.
        let nowhere = vec![0x42; 16];
        c_ws.expect_err(send_message(&nowhere, b"anything"), ErrorCode::UnknownGroup)
            .await;
        c_ws.expect_err(
            C::GetGroupInfo(v1::GetGroupInfo {
                group_id: nowhere.clone(),
            }),
            ErrorCode::UnknownGroup,
        )
        .await;
        // NOT_MEMBER: carol (registered, not in the group) replays a member's
        // real ciphertext, and asks for the group's state.
        let ciphertext = mls::encrypt(alice.db(), &a_id, &gid, b"members only").expect("encrypt");
        c_ws.expect_err(send_message(&gid, &ciphertext), ErrorCode::NotMember)
            .await;
        c_ws.expect_err(
            C::GetGroupInfo(v1::GetGroupInfo {
                group_id: gid.clone(),
            }),
            ErrorCode::NotMember,
        )
        .await;
        // Acks are answered only when refused (each runs apart from the
        // connection's requests; a refusal comes through its queue, under
        // the ack's request id, synced or not): carol is no member, bob's
        // seq is past the head, and bob's good ack has no answer (the next
        // frame with an id answers his Ping).
        let ack = |seq| {
            C::Ack(v1::Ack {
                group_id: gid.clone(),
                seq,
            })
        };
        c_ws.expect_err(ack(1), ErrorCode::NotMember).await;
        b_ws.expect_err(ack(1_000_000), ErrorCode::InvalidArgument)
            .await;
        b_ws.next_id += 1;
        let good = b_ws.next_id;
        b_ws.send(good, Some(ack(1))).await;
        b_ws.ping_ok().await;
        message_goes_through(&mut bob, &mut alice, &gid, "still here").await;

        // TOO_LARGE: a real encrypted message above max_message_bytes.
        let big = mls::encrypt(alice.db(), &a_id, &gid, &vec![b'x'; 20_000]).expect("encrypt");
        assert!(big.len() > 16 * 1024);
        a_ws.expect_err(send_message(&gid, &big), ErrorCode::TooLarge)
            .await;
        // MALFORMED: a valid frame carrying bytes that are no MLSMessage.
        a_ws.expect_err(
            send_message(&gid, &[0xde, 0xad, 0xbe, 0xef]),
            ErrorCode::Malformed,
        )
        .await;
        // INVALID_ARGUMENT: no client_msg_id; no group id; a message of another
        // group (below).
        a_ws.expect_err(
            C::SendMessage(v1::SendMessage {
                group_id: gid.clone(),
                client_msg_id: Vec::new(),
                message: ciphertext.clone(),
            }),
            ErrorCode::InvalidArgument,
        )
        .await;
        a_ws.expect_err(send_message(&[], &ciphertext), ErrorCode::InvalidArgument)
            .await;
        message_goes_through(&mut alice, &mut bob, &gid, "sizes checked").await;

        // WRONG_WIRE_FORMAT: handshake messages on the application path and the
        // other way round. The commit is built and then dropped locally.
        let x = mls::commit(alice.db(), &a_id, &gid, Change::PendingProposals).expect("commit");
        mls::clear_pending(alice.db(), &gid).expect("clear");
        a_ws.expect_err(send_message(&gid, &x.commit), ErrorCode::WrongWireFormat)
            .await;
        a_ws.expect_err(
            send_message(&gid, &x.group_info),
            ErrorCode::WrongWireFormat,
        )
        .await;
        a_ws.expect_err(
            send_commit(&gid, &x, &ciphertext, &x.group_info),
            ErrorCode::WrongWireFormat,
        )
        .await;
        // ... and a group whose commits are PrivateMessages (the node tracks
        // membership from PublicMessage commits, so it must refuse them on both
        // paths).
        let h = ciphertext_group(alice.db(), &a_id);
        match a_ws.request(C::CreateGroup(h.create.clone())).await {
            S::GroupCreated(g) => assert_eq!(g.group_id, h.group_id),
            other => panic!("expected GroupCreated, got {other:?}"),
        }
        a_ws.expect_err(
            C::SendCommit(v1::SendCommit {
                group_id: h.group_id.clone(),
                commit: h.private_commit.clone(),
                welcome: Vec::new(),
                group_info: h.commit_group_info.clone(),
                ratchet_tree: Vec::new(),
                client_msg_id: random_id(),
            }),
            ErrorCode::WrongWireFormat,
        )
        .await;
        a_ws.expect_err(
            send_message(&h.group_id, &h.private_commit),
            ErrorCode::WrongWireFormat,
        )
        .await;
        // ALREADY_EXISTS: registering that group again.
        a_ws.expect_err(C::CreateGroup(h.create.clone()), ErrorCode::AlreadyExists)
            .await;
        // INVALID_ARGUMENT: an application message of group H sent to the room.
        a_ws.expect_err(
            send_message(&gid, &h.application),
            ErrorCode::InvalidArgument,
        )
        .await;
        message_goes_through(&mut bob, &mut alice, &gid, "wire formats checked").await;

        // A commit race: alice and bob both commit in epoch e.
        let e = mls::epoch(alice.db(), &gid).expect("epoch");
        let old_message = mls::encrypt(bob.db(), &b_id, &gid, b"from epoch e").expect("encrypt");
        let a = mls::commit(alice.db(), &a_id, &gid, Change::PendingProposals).expect("commit");
        let b = mls::commit(bob.db(), &b_id, &gid, Change::PendingProposals).expect("commit");
        assert_eq!((a.epoch, b.epoch), (e, e));

        // INVALID_MLS: alice's commit with a broken signature. The tail of a
        // member's PublicMessage commit is signature (64) | confirmation tag
        // (1+32) | membership tag (1+32); flip a signature byte.
        let mut broken = a.commit.clone();
        let i = broken.len() - 66 - 20;
        broken[i] ^= 0x01;
        a_ws.expect_err(
            send_commit(&gid, &a, &broken, &a.group_info),
            ErrorCode::InvalidMls,
        )
        .await;
        // INVALID_MLS: alice's commit with the GroupInfo of another commit.
        a_ws.expect_err(
            send_commit(&gid, &a, &a.commit, &b.group_info),
            ErrorCode::InvalidMls,
        )
        .await;
        // MALFORMED: a truncated commit.
        a_ws.expect_err(
            send_commit(&gid, &a, &a.commit[..a.commit.len() / 2], &a.group_info),
            ErrorCode::Malformed,
        )
        .await;
        // INVALID_ARGUMENT: a Welcome with a commit that adds nobody.
        let mut with_welcome = send_commit(&gid, &a, &a.commit, &a.group_info);
        if let C::SendCommit(c) = &mut with_welcome {
            c.welcome = x.group_info.clone();
        }
        a_ws.expect_err(with_welcome, ErrorCode::InvalidArgument)
            .await;
        // FORBIDDEN: bob submits alice's (valid) commit as his own.
        b_ws.expect_err(
            send_commit(&gid, &a, &a.commit, &a.group_info),
            ErrorCode::Forbidden,
        )
        .await;
        // None of that moved the group: alice's commit wins epoch e...
        let won = match a_ws
            .request(send_commit(&gid, &a, &a.commit, &a.group_info))
            .await
        {
            S::CommitAccepted(acc) => acc,
            other => panic!("expected CommitAccepted, got {other:?}"),
        };
        assert_eq!(won.epoch, e + 1);
        mls::merge_pending(alice.db(), &gid).expect("merge");
        alice.db().record_own_seq(&gid, won.seq).expect("own seq");
        // ... STALE_EPOCH: bob's commit from the same epoch loses, and the error
        // says where the group is now.
        let err = b_ws
            .expect_err(
                send_commit(&gid, &b, &b.commit, &b.group_info),
                ErrorCode::StaleEpoch,
            )
            .await;
        let now = Some(v1::StaleEpoch {
            current_epoch: e + 1,
            head_seq: won.seq,
        });
        assert_eq!(err.stale_epoch, now);
        // STALE_EPOCH: an application message from epoch e (epoch_window = 0).
        let err = b_ws
            .expect_err(send_message(&gid, &old_message), ErrorCode::StaleEpoch)
            .await;
        assert_eq!(err.stale_epoch, now);
        // bob recovers as the SDK does: drop the losing commit, process the
        // timeline up to head_seq; then both directions work again.
        mls::clear_pending(bob.db(), &gid).expect("clear");
        pump_until(&mut bob, "bob catches up", |c| {
            processed_to(c, &gid, won.seq)
        })
        .await;
        assert_eq!(mls::epoch(bob.db(), &gid).expect("epoch"), e + 1);
        message_goes_through(&mut bob, &mut alice, &gid, "after the race").await;
        message_goes_through(&mut alice, &mut bob, &gid, "and back").await;
        c_ws.ping_ok().await;
    }
    node.stop().await;
}

/// A reader that stops reading while its group is busy is cut off (4001)
/// without holding up anyone: the same device's normal connection receives
/// every message, and the group keeps delivering afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_off() {
    let (node, _clock, dir) = start_node(|c| {
        c.limits.max_connections_per_user = 2;
        c.limits.max_message_bytes = 128 * 1024;
        c.limits.send_buffer_frames = 4;
        c.limits.write_timeout_ms = 300;
        // The slow peer never answers pings; keep the heartbeat out of it.
        c.limits.heartbeat_interval_ms = 300_000;
        c.limits.heartbeat_timeout_ms = 600_000;
    })
    .await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let (mut alice, mut bob, gid, g) = alice_and_bob(dir.path(), &url, "busy").await;

        // A second connection of bob's device (the same session as his normal
        // one, so every delivery reaches both in one step) syncs, then stops
        // reading, with a small socket receive buffer.
        let b_id = bob.me().expect("bob");
        let token = login(&url, &b_id).await;
        let mut slow = RawPeer::connect(node.addr, &token, Some(8 * 1024)).await;
        slow.send(&ClientFrame {
            request_id: 1,
            body: Some(C::Sync(v1::Sync::default())),
        })
        .await;
        while !matches!(slow.server_frame().await.body, Some(S::SyncCaughtUp(_))) {}

        // alice posts 64 KiB messages in batches. After each batch bob's
        // normal connection has received all of it, so the session has
        // handed the batch to both of bob's connections; then a probe asks
        // for a third connection of bob's: refused (TOO_MANY_CONNECTIONS)
        // while the slow one is attached, accepted once the node cut it off.
        let filler = "x".repeat(64 * 1024);
        let mut sent: Vec<u64> = Vec::new();
        let mut probe = loop {
            assert!(sent.len() < 2000, "the slow reader was never cut off");
            for _ in 0..10 {
                let text = format!("{} {filler}", sent.len());
                sent.push(alice.send_text(&g, &text).await.expect("send"));
            }
            let last = *sent.last().expect("sent");
            pump_until(&mut bob, "bob's normal connection", |c| {
                processed_to(c, &gid, last)
            })
            .await;
            let mut p = try_ws(node.addr, Some(&token), None)
                .await
                .expect("upgrade");
            match p.frame().await.body {
                Some(S::AuthOk(_)) => break p,
                Some(S::Error(e)) => {
                    assert_eq!(code_of(&e), ErrorCode::TooManyConnections);
                    assert_eq!(p.close_code().await, 1008);
                }
                other => panic!("probe: unexpected {other:?}"),
            }
        };

        // The slow reader drains what was already in flight, then finds the
        // connection closed with 4001: it did not get everything.
        let mut received = 0usize;
        let close = loop {
            match slow.next().await {
                Some((OP_BINARY, p)) => {
                    let f = ServerFrame::decode(p.as_slice()).expect("decodes");
                    if let Some(S::GroupEvent(ev)) = f.body {
                        if ev.group_id == gid && sent.contains(&ev.seq) {
                            received += 1;
                        }
                    }
                }
                Some((OP_CLOSE, p)) => break close_code_of(&p),
                Some(_) => continue,
                None => break None,
            }
        };
        assert_eq!(close, Some(4001), "slow reader's close");
        assert!(
            received < sent.len(),
            "the slow reader got all {} messages",
            sent.len()
        );
        // Everyone else carries on; bob's device may connect again.
        probe.ping_ok().await;
        message_goes_through(&mut alice, &mut bob, &gid, "after the cut").await;
        message_goes_through(&mut bob, &mut alice, &gid, "still fine").await;
    }
    node.stop().await;
}

/// A peer that never answers the server's pings is closed with 4002 after
/// heartbeat_timeout_ms (real time, tiny values); a peer that answers stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_is_closed_by_heartbeat() {
    let (node, _clock, _dir) = start_node(|c| {
        c.limits.heartbeat_interval_ms = 100;
        c.limits.heartbeat_timeout_ms = 600;
    })
    .await;
    // Clients live in this block: they are gone before the node stops.
    {
        let url = url(&node);
        let jay = register(&url, "jay").await;
        // The SDK's connection answers pings from its reader task.
        let healthy = WsConn::connect(&url, &Token(login(&url, &jay).await))
            .await
            .expect("connect");
        // The dead peer reads (so we can watch) but never writes a byte.
        let mut dead = RawPeer::connect(node.addr, &login(&url, &jay).await, None).await;
        let mut pings = 0;
        let close = loop {
            match dead.next().await {
                Some((OP_PING, _)) => pings += 1,
                Some((OP_CLOSE, p)) => break close_code_of(&p),
                Some((OP_BINARY, p)) => {
                    let f = ServerFrame::decode(p.as_slice()).expect("decodes");
                    assert!(matches!(f.body, Some(S::AuthOk(_))), "{f:?}");
                }
                Some(other) => panic!("unexpected frame {other:?}"),
                None => break None,
            }
        };
        assert_eq!(close, Some(4002), "dead peer's close");
        assert!(pings >= 1, "the server pinged before giving up");
        // The answering connection has outlived the timeout and is served.
        match healthy
            .request(C::Ping(v1::Ping { nonce: 7 }))
            .await
            .expect("ping")
        {
            S::Pong(p) => assert_eq!(p.nonce, 7),
            other => panic!("expected Pong, got {other:?}"),
        }
        assert!(!healthy.is_closed());
        healthy.close().await;
    }
    node.stop().await;
}
