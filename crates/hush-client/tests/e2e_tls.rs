//! A TLS node the way the README makes one (`hush-node gen-cert`, then
//! `[gateway.tls]`), and the `hush` CLI over `https://` and `wss://` with
//! `--ca`: a chat over the WebSocket and over SSE; without `--ca` the
//! development CA is not trusted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{node_bin, Dev};

#[test]
fn cli_chats_over_https_and_wss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    let gen = Command::new(node_bin())
        .args(["gen-cert", "--out"])
        .arg(&tls)
        .output()
        .expect("gen-cert");
    assert!(gen.status.success(), "{gen:?}");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[gateway.tls]\ncert = {:?}\nkey = {:?}\n",
            tls.join("cert.pem"),
            tls.join("key.pem")
        ),
    )
    .expect("config");
    let mut node = Command::new(node_bin())
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hush-node");
    let line = BufReader::new(node.stdout.take().expect("stdout"))
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let ca = tls.join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let root = dir.path().join("homes");
    let alice = Dev::new(&root, "alice", &url).with_args(&["--ca", ca, "--transport", "ws"]);
    let bob = Dev::new(&root, "bob", &url).with_args(&["--ca", ca, "--transport", "sse"]);
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    alice.ok(&["group", "create", "tls"]);
    alice.ok(&["group", "add", "tls", "bob"]);
    alice.send("tls", "over wss");
    let texts = bob.sync_texts();
    assert!(
        texts.iter().any(|m| m.text == "over wss"),
        "bob (https + sse) reads what alice sent over wss: {texts:?}"
    );

    // Without --ca the system's roots are used: they do not know the CA.
    let carol = Dev::new(&root, "carol", &url);
    let out = carol.run(&["register", "carol"]);
    assert!(!out.status.success(), "an unknown CA must be refused");

    node.kill().expect("kill");
    node.wait().expect("reap");
}
