//! Three real hush-node processes form a cluster over QUIC (mutual TLS,
//! dev CA created by whichever starts first): every /cluster shows the same
//! three-member view; after kill -9 of one, the survivors drop it; a node
//! that leaves gracefully is dropped at once.
//!
//! The view is state inside other processes, so the test reads /cluster
//! until it shows what is expected (bounded); nothing sleeps blindly.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hush-node");
const PATIENCE: Duration = Duration::from_secs(30);

mod common;
use common::NodeProcess;

struct Proc {
    child: NodeProcess,
    url: String,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

fn start(config: &std::path::Path, node: &str) -> Proc {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--node")
        .arg(node)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hush-node");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{node}: {line:?}"))
        .to_string();
    Proc {
        child: NodeProcess(child),
        url: format!("http://{addr}"),
    }
}

async fn cluster_of(p: &Proc) -> Value {
    hush_client::tls::use_ring(); // reqwest has no rustls provider of its own
    let body = reqwest::get(format!("{}/cluster", p.url))
        .await
        .expect("GET /cluster")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("JSON")
}

async fn wait_members(p: &Proc, want: &[&str]) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = cluster_of(p).await;
        let members: Vec<&str> = v["members"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
            .unwrap_or_default();
        if members == want {
            return v;
        }
        assert!(Instant::now() < deadline, "{} still shows {v}", p.url);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_form_a_view_and_drop_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let mut toml = format!("[store]\npath = \"{root}/hush.sqlite\"\n[cluster]\nprobe_ms = 200\n");
    for n in ["n1", "n2", "n3"] {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nid = \"{n}\"\ngateway = \"127.0.0.1:0\"\nquic = \"127.0.0.1:{}\"\ndata = \"{root}/{n}\"\n",
            free_udp_port()
        ));
    }
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, toml).unwrap();

    let n1 = start(&config, "n1");
    let mut n2 = start(&config, "n2");
    let n3 = start(&config, "n3");
    let all = ["n1", "n2", "n3"];
    let mut digests = Vec::new();
    let mut shards = 0;
    for p in [&n1, &n2, &n3] {
        let v = wait_members(p, &all).await;
        assert_eq!(v["clustered"], true);
        assert_eq!(v["peers"].as_array().map(Vec::len), Some(2), "{v}");
        digests.push(v["view_digest"].as_str().unwrap().to_string());
        shards += v["shards_owned"].as_u64().unwrap();
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_eq!(shards, 4096, "every shard has exactly one owner");
    // One dev CA, created once, shared.
    assert!(dir.path().join("cluster-ca/cluster-ca.key").exists());

    // kill -9 n2.
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    let killed = Instant::now();
    let v1 = wait_members(&n1, &["n1", "n3"]).await;
    wait_members(&n3, &["n1", "n3"]).await;
    eprintln!("survivors dropped n2 after {:?}", killed.elapsed());
    let v3 = cluster_of(&n3).await;
    assert_eq!(
        v1["shards_owned"].as_u64().unwrap() + v3["shards_owned"].as_u64().unwrap(),
        4096
    );

    // n3 stops gracefully (SIGTERM): it leaves the mesh on its way out.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(n3.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    wait_members(&n1, &["n1"]).await;
}
