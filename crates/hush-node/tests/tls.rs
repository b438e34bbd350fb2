//! The gateway over TLS (`[gateway.tls]`): HTTPS and WSS with a certificate
//! from a development CA (`gen-cert`), HSTS, a CSP that allows only `wss://`,
//! no plain HTTP on the TLS port, and a certificate swapped on reload.

mod common;

use common::{start_node, WAIT};
use hush_client::http::Token;
use hush_client::tls::Trust;
use hush_client::ws::WsConn;
use hush_node::config::GatewayTls;
use hush_node::gateway::tls::gen_dev_certs;

fn names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_a_private_ca() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let certs = gen_dev_certs(&certs_dir.path().join("a"), &names()).expect("gen-cert");
    let tls = GatewayTls {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
    };
    let (node, _clock, dir) = start_node(|c| c.gateway.tls = Some(tls)).await;
    let url = node.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let trust = Trust::ca_file(&certs.ca_cert).expect("ca");

    // The system's roots do not know the development CA.
    let untrusted = hush_client::http::Http::new(&url).expect("client");
    let e = untrusted
        .login_challenge("0123456789abcdef")
        .await
        .expect_err("an unknown CA is refused");
    assert!(!e.to_string().is_empty());

    // Register and log in over HTTPS with the CA trusted; a WebSocket over
    // WSS with the token; a request on it.
    let mut c =
        hush_client::client::Client::open(&dir.path().join("alice"), Some(&url)).expect("open");
    c.set_trust(trust.clone()).expect("trust");
    c.set_transport(hush_client::conn::Transport::Ws);
    c.register("alice").await.expect("register over https");
    c.connect().await.expect("connect over wss");
    assert_eq!(
        c.connected_transport(),
        Some(hush_client::conn::Transport::Ws)
    );
    c.close().await;
    let id = c.db().identity().expect("db").expect("identity");
    let http = hush_client::http::Http::with_trust(&url, &trust).expect("http");
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
    let ws = tokio::time::timeout(WAIT, WsConn::connect_with(&url, &token, &trust))
        .await
        .expect("in time")
        .expect("wss");
    assert!(!ws.is_closed());
    ws.close().await;
    // The same token over WSS without the CA: the handshake fails.
    assert!(WsConn::connect(&url, &Token(token.0.clone()))
        .await
        .is_err());

    // HSTS on every answer; the page may connect back only over wss.
    let web = trust
        .reqwest_builder(&url)
        .expect("builder")
        .build()
        .expect("reqwest");
    let health = web
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(health.status().is_success());
    assert_eq!(
        health.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let page = web.get(format!("{url}/")).send().await.expect("index");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        csp.contains(&format!("connect-src 'self' wss://{};", node.addr)),
        "{csp}"
    );
    assert!(!csp.contains("ws://"), "{csp}");

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", node.addr))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.expect("answer").status().is_success(),
        "plain http is not served on the TLS port"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let first = gen_dev_certs(&certs_dir.path().join("a"), &names()).expect("gen-cert");
    let tls = GatewayTls {
        cert: first.cert.clone(),
        key: first.key.clone(),
    };
    // No file watcher: only the explicit reload (SIGHUP's path) swaps.
    let (node, _clock, _dir) = start_node(|c| {
        c.gateway.tls = Some(tls);
        c.node.watch_ms = 0;
    })
    .await;
    let url = node.url();
    // A fresh trust per request: one client configuration would resume
    // its earlier TLS session, which skips the certificate.
    let old_ca = first.ca_cert.clone();
    let healthy = |ca: std::path::PathBuf| {
        let url = url.clone();
        async move {
            let trust = Trust::ca_file(&ca).expect("ca");
            let client = trust
                .reqwest_builder(&url)
                .expect("builder")
                .build()
                .expect("reqwest");
            client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    assert!(healthy(old_ca.clone()).await);

    // A pair from another CA, written over the files the node reads.
    let second = gen_dev_certs(&certs_dir.path().join("b"), &names()).expect("gen-cert");
    let new_ca = second.ca_cert.clone();
    std::fs::copy(&second.key, &first.key).expect("key");
    std::fs::copy(&second.cert, &first.cert).expect("cert");
    assert!(!healthy(new_ca.clone()).await, "not before the reload");
    node.reload().expect("reload");
    assert!(
        healthy(new_ca.clone()).await,
        "the new certificate is served"
    );
    assert!(!healthy(old_ca).await, "the old one is not");

    // A broken pair does not load; the one in use stays.
    std::fs::write(&first.cert, b"not a certificate").expect("write");
    assert!(node.reload().is_err());
    assert!(healthy(new_ca).await);
    node.stop().await;
}
