//! The hush-node binary as an operator meets it: flags, config file errors,
//! the `listening on` line, /healthz, /metrics and a clean SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::NodeProcess;

const BIN: &str = env!("CARGO_BIN_EXE_hush-node");

fn run_with_config(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_config_key_is_a_startup_error_naming_it() {
    let (ok, err) = run_with_config("[limits]\nmax_frame_bytez = 5\n");
    assert!(!ok);
    assert!(err.contains("max_frame_bytez"), "{err}");
    let (ok, err) = run_with_config("[nonsense]\n");
    assert!(!ok);
    assert!(err.contains("nonsense"), "{err}");
}

#[test]
fn bad_config_value_is_a_startup_error_naming_it() {
    let (ok, err) = run_with_config("[limits]\nrate_per_sec = -1.0\n");
    assert!(!ok);
    assert!(err.contains("limits.rate_per_sec"), "{err}");
    let (ok, err) = run_with_config("[limits]\nmax_frame_bytes = \"big\"\n");
    assert!(!ok);
    assert!(err.contains("max_frame_bytes"), "{err}");
    let (ok, err) = run_with_config("[limits]\nmax_inflight_requests = 0\n");
    assert!(!ok);
    assert!(err.contains("limits.max_inflight_requests"), "{err}");
    // A budget too small for one frame of the largest allowed size.
    let (ok, err) = run_with_config(
        "[limits]\nmax_frame_bytes = 2048\nmax_message_bytes = 1024\nmax_inflight_request_bytes = 1024\n",
    );
    assert!(!ok);
    assert!(err.contains("limits.max_inflight_request_bytes"), "{err}");
    // More acks per batch than operations per batch.
    let (ok, err) = run_with_config("[store]\nmax_batch = 16\nmax_batch_acks = 17\n");
    assert!(!ok);
    assert!(err.contains("store.max_batch_acks"), "{err}");
    // A group-commit delay that would be a stall.
    let (ok, err) = run_with_config("[store]\ncommit_delay_us = 100001\n");
    assert!(!ok);
    assert!(err.contains("store.commit_delay_us"), "{err}");
    // So would acks' wait.
    let (ok, err) = run_with_config("[store]\nack_delay_us = 100001\n");
    assert!(!ok);
    assert!(err.contains("store.ack_delay_us"), "{err}");
    // A WAL that never checkpoints would grow without bound.
    let (ok, err) = run_with_config("[store]\ncheckpoint_pages = 0\n");
    assert!(!ok);
    assert!(err.contains("store.checkpoint_pages"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_file_and_the_node_serves_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    // The file asks for a port the flag overrides.
    std::fs::write(
        &path,
        "[node]\nid = \"n7\"\n[gateway]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let mut child = NodeProcess(
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().expect("a line").expect("utf-8");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:") && addr != "127.0.0.1:1");
    assert!(dir.path().join("data/hush.sqlite").exists());

    hush_client::tls::use_ring(); // reqwest has no rustls provider of its own
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The store wrote the token secret at start: its batch metrics exist.
    for series in ["hush_store_batch_size", "hush_store_batch_seconds"] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }

    // SIGTERM: a graceful, successful exit.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit after SIGTERM: {exit:?}");
}
