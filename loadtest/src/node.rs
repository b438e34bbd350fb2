//! Starting the system under test: `hush-node` processes on loopback (port
//! 0, fresh data directory), waiting for their `listening on` line rather
//! than sleeping; or a `redis-server` handed in by the baseline script.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The hush-node executable: `--node-bin`, else `HUSH_NODE_BIN`, else the
/// `hush-node` next to this executable (both come out of one
/// `cargo build --release -p hush-node -p hush-loadtest`).
pub fn node_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HUSH_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("executable has no directory")?
        .join("hush-node");
    anyhow::ensure!(
        bin.exists(),
        "no hush-node next to {} (build it: cargo build --release -p hush-node -p hush-loadtest, or pass --node-bin / HUSH_NODE_BIN)",
        exe.display()
    );
    Ok(bin)
}

/// A running node we started.
pub struct NodeProc {
    pub id: String,
    pub url: String,
    pub pid: u32,
    child: tokio::process::Child,
}

impl NodeProc {
    /// Starts `bin` with `args` in `cwd`, stderr to `log`, and waits (up to
    /// 60 s) for `listening on <url>` on stdout.
    pub async fn start(
        id: &str,
        bin: &Path,
        args: &[String],
        cwd: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .current_dir(cwd)
            .env(
                "RUST_LOG",
                std::env::var("HUSH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id().context("node exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(u) = l.strip_prefix("listening on ") {
                    return Some(u.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "node {id} never printed `listening on` (log: {})",
                log.display()
            )
        })?;
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            id: id.to_string(),
            url,
            pid,
            child,
        })
    }

    /// SIGKILL (the failover fault).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Starts one node on a fresh data directory under `dir`.
pub async fn start_single(bin: &Path, dir: &Path, extra_config: &str) -> anyhow::Result<NodeProc> {
    let data = dir.join("node-data");
    std::fs::create_dir_all(&data)?;
    let mut args = vec![
        "--data".to_string(),
        data.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    if !extra_config.trim().is_empty() {
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, extra_config)?;
        args.push("--config".into());
        args.push(cfg.display().to_string());
    }
    NodeProc::start("n1", bin, &args, dir, &dir.join("node.log")).await
}

/// Starts the listed nodes of a cluster config, from a copy of it in `dir`
/// (so its relative data paths land in the run's directory).
pub async fn start_cluster(
    bin: &Path,
    dir: &Path,
    config: &Path,
    nodes: &[String],
) -> anyhow::Result<Vec<NodeProc>> {
    let cfg = dir.join("cluster.toml");
    std::fs::copy(config, &cfg).with_context(|| format!("copy {}", config.display()))?;
    let mut out = Vec::new();
    for n in nodes {
        let args = vec![
            "--config".to_string(),
            cfg.display().to_string(),
            "--node".into(),
            n.clone(),
        ];
        out.push(NodeProc::start(n, bin, &args, dir, &dir.join(format!("{n}.log"))).await?);
    }
    Ok(out)
}
