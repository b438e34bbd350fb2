//! Starting the system under test: `hush-node` processes on loopback (port
//! 0, fresh data directory), waiting for their `listening on` line rather
//! than sleeping; or a `redis-server` handed in by the baseline script.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a starting node may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The hush-node executable: `--node-bin`, else `HUSH_NODE_BIN`, else the
/// `hush-node` next to this executable (both come out of one
/// `cargo build --release -p hush-node -p hush-loadtest`).
pub fn node_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    // Nodes run in the run's directory: a relative path must not be
    // resolved from there.
    let absolute = |p: PathBuf| -> anyhow::Result<PathBuf> {
        p.canonicalize()
            .with_context(|| format!("hush-node binary {}", p.display()))
    };
    if let Some(p) = explicit {
        return absolute(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HUSH_NODE_BIN") {
        return absolute(PathBuf::from(p));
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

/// How to start (and start again) one node.
#[derive(Debug, Clone)]
pub struct NodeCmd {
    pub id: String,
    /// `hush-node`, or a wrapper that execs it (`ip netns exec ...`).
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Its stderr, appended to (a restarted node continues the file).
    pub log: PathBuf,
    /// Its `RUST_LOG`.
    pub rust_log: String,
}

impl NodeCmd {
    /// `RUST_LOG` for nodes: `HUSH_NODE_LOG`, else `default`.
    pub fn log_level(default: &str) -> String {
        std::env::var("HUSH_NODE_LOG").unwrap_or_else(|_| default.into())
    }
}

/// A running node we started.
pub struct NodeProc {
    pub id: String,
    pub url: String,
    pub pid: u32,
    /// Its data folder, when the generator chose it (a single node).
    pub data_dir: Option<PathBuf>,
    child: tokio::process::Child,
}

impl NodeProc {
    /// Starts `bin` with `args` in `cwd`, stderr to `log`, and waits (up to
    /// [`START_TIMEOUT`]) for `listening on <url>` on stdout.
    pub async fn start(
        id: &str,
        bin: &Path,
        args: &[String],
        cwd: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn(&NodeCmd {
            id: id.to_string(),
            program: bin.to_path_buf(),
            args: args.to_vec(),
            cwd: cwd.to_path_buf(),
            log: log.to_path_buf(),
            rust_log: NodeCmd::log_level("warn"),
        })
        .await
    }

    /// Starts `cmd` and waits (up to [`START_TIMEOUT`]) for `listening on
    /// <url>` on stdout.
    pub async fn spawn(cmd: &NodeCmd) -> anyhow::Result<Self> {
        let (id, log) = (&cmd.id, &cmd.log);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut child = tokio::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .current_dir(&cmd.cwd)
            .env("RUST_LOG", &cmd.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", cmd.program.display()))?;
        let pid = child.id().context("node exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
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
            data_dir: None,
            child,
        })
    }

    /// SIGKILL (the failover fault), and wait for the process.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        anyhow::ensure!(ok, "kill -{signal} {} failed", self.pid);
        Ok(())
    }

    /// SIGTERM, then wait (SIGKILL after [`STOP_TIMEOUT`]); false if it
    /// had to be killed.
    pub async fn terminate(&mut self) -> bool {
        let _ = self.signal("TERM");
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            return false;
        }
        true
    }

    /// SIGTERM, then wait (SIGKILL after [`STOP_TIMEOUT`]).
    pub async fn stop(mut self) {
        self.terminate().await;
    }
}

/// Starts one node on a fresh data directory under `dir`.
pub async fn start_single(bin: &Path, dir: &Path, extra_config: &str) -> anyhow::Result<NodeProc> {
    let data = dir.join("node-data");
    std::fs::create_dir_all(&data)?;
    let cfg = dir.join("node.toml");
    std::fs::write(&cfg, generator_config(extra_config)?)?;
    let args = vec![
        "--data".to_string(),
        data.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    let mut node = NodeProc::start("n1", bin, &args, dir, &dir.join("node.log")).await?;
    node.data_dir = Some(data);
    wait_ready(&node.url).await?;
    Ok(node)
}

/// Waits (up to [`START_TIMEOUT`]) until the node at `url` answers
/// `/readyz` with 200. A node prints `listening on` before its store
/// answers: a CQL store connects in the background (keyspace, schema),
/// and until then every request is refused with UNAVAILABLE.
pub async fn wait_ready(url: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = url
        .strip_prefix("http://")
        .with_context(|| format!("node url {url} is not http://"))?
        .trim_end_matches('/')
        .to_string();
    let ready = || async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if ready().await == Some(true) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("node at {url} not ready (/readyz) after {START_TIMEOUT:?}")
}

/// What every node the generator spawns gets under the scenario's
/// `node_config`: the generator is thousands of users behind a few source
/// addresses, so the per-address and per-account budgets a public node
/// keeps for strangers (`[rate_limits]`, `gateway.max_connections_per_ip`)
/// would refuse its setup. A scenario that measures those limits sets them
/// in its own `node_config`, which wins.
const GENERATOR_NODE_CONFIG: &str = r#"
[rate_limits]
ip_per_sec = 1000000.0
ip_burst = 1000000.0
account_per_sec = 1000000.0
account_burst = 1000000.0

[gateway]
max_connections_per_ip = 1000000
"#;

/// [`GENERATOR_NODE_CONFIG`] with the scenario's `extra` merged over it,
/// and a CQL store completed by [`cql_store`] from `HUSH_SCYLLA_URI`.
fn generator_config(extra: &str) -> anyhow::Result<String> {
    let mut t: toml::Table = toml::from_str(GENERATOR_NODE_CONFIG).context("generator defaults")?;
    if !extra.trim().is_empty() {
        merge(&mut t, toml::from_str(extra).context("target.node_config")?);
    }
    let uri = std::env::var(CQL_URI_VAR).ok();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    cql_store(&mut t, uri.as_deref(), &format!("loadtest_{now_ms}"))?;
    Ok(toml::to_string(&t)?)
}

/// The CQL cluster's contact points, as `scripts/cql.sh up` prints them
/// ("host:port[,host:port...]").
const CQL_URI_VAR: &str = "HUSH_SCYLLA_URI";

/// Completes a `[store] kind = "scylla"` section (nothing else is
/// touched): contact points it does not list come from `uri` (the
/// cluster `scripts/cql.sh up` started), with one replica per contact
/// point up to 3 unless it sets `replication_factor`; without a
/// `keyspace`, the run gets the fresh one `keyspace` (every node of the
/// run shares it, as each run of the SQLite scenarios has a fresh file).
fn cql_store(t: &mut toml::Table, uri: Option<&str>, keyspace: &str) -> anyhow::Result<()> {
    let Some(store) = t.get_mut("store").and_then(|s| s.as_table_mut()) else {
        return Ok(());
    };
    if store.get("kind").and_then(|k| k.as_str()) != Some("scylla") {
        return Ok(());
    }
    if !store.contains_key("contact_points") {
        let points: Vec<&str> = uri
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        anyhow::ensure!(
            !points.is_empty(),
            "[store] kind = \"scylla\" without contact_points needs {CQL_URI_VAR} \
             (start a cluster with scripts/cql.sh up; it prints the line to export)"
        );
        store
            .entry("replication_factor")
            .or_insert_with(|| (points.len().min(3) as i64).into());
        store.insert(
            "contact_points".into(),
            points
                .iter()
                .map(|p| toml::Value::from(*p))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    store.entry("keyspace").or_insert_with(|| keyspace.into());
    Ok(())
}

/// Starts the listed nodes of a cluster config, from a copy of it in `dir`
/// (so its relative data paths land in the run's directory). `extra` (TOML
/// text, may be empty) is merged over the copy, table by table. With
/// `free_ports`, every node's gateway and QUIC address get free loopback
/// ports instead of the file's, so a run never collects with a local
/// cluster or another run on the machine.
pub async fn start_cluster(
    bin: &Path,
    dir: &Path,
    config: &Path,
    nodes: &[String],
    extra: &str,
    free_ports: bool,
) -> anyhow::Result<Vec<NodeProc>> {
    let cfg = dir.join("cluster.toml");
    let text =
        std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    let text = cluster_config(&text, extra, free_ports)?;
    std::fs::write(&cfg, text)?;
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
    for n in &out {
        wait_ready(&n.url).await?;
    }
    Ok(out)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn free_port(udp: bool) -> anyhow::Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// The cluster config text a run uses (see [`start_cluster`]).
fn cluster_config(text: &str, extra: &str, free_ports: bool) -> anyhow::Result<String> {
    let mut t: toml::Table = toml::from_str(text).context("cluster config")?;
    merge(&mut t, toml::from_str(&generator_config(extra)?)?);
    if free_ports {
        let nodes = t
            .get_mut("cluster")
            .and_then(|c| c.get_mut("nodes"))
            .and_then(|n| n.as_array_mut())
            .context("no [[cluster.nodes]] in the cluster config")?;
        for n in nodes {
            let n = n.as_table_mut().context("cluster.nodes entry")?;
            n.insert(
                "gateway".into(),
                format!("127.0.0.1:{}", free_port(false)?).into(),
            );
            n.insert(
                "quic".into(),
                format!("127.0.0.1:{}", free_port(true)?).into(),
            );
        }
    }
    Ok(toml::to_string(&t)?)
}

/// Where the chaos cluster's store is, relative to the run's directory.
pub const CHAOS_STORE: &str = "hush-cluster/hush.sqlite";

/// A cluster config for nodes `(id, gateway, quic)` (the chaos run's, in
/// their namespaces): `text` (the base config: actors, cluster timings)
/// with `extra` merged over it, its nodes replaced by these (data in
/// `./hush-cluster/<id>`), on the embedded store at [`CHAOS_STORE`].
pub fn cluster_config_for(
    text: &str,
    extra: &str,
    nodes: &[(String, std::net::SocketAddr, std::net::SocketAddr)],
) -> anyhow::Result<String> {
    let mut t: toml::Table = toml::from_str(text).context("cluster config")?;
    merge(&mut t, toml::from_str(&generator_config(extra)?)?);
    let mut store = toml::Table::new();
    store.insert("kind".into(), "embedded".into());
    store.insert("path".into(), format!("./{CHAOS_STORE}").into());
    merge(
        &mut t,
        [("store".to_string(), store.into())].into_iter().collect(),
    );
    let entries: Vec<toml::Value> = nodes
        .iter()
        .map(|(id, gw, quic)| {
            let mut n = toml::Table::new();
            n.insert("id".into(), id.clone().into());
            n.insert("gateway".into(), gw.to_string().into());
            n.insert("quic".into(), quic.to_string().into());
            n.insert("data".into(), format!("./hush-cluster/{id}").into());
            n.into()
        })
        .collect();
    let cluster = t
        .entry("cluster")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .context("[cluster] is not a table")?;
    cluster.insert("nodes".into(), entries.into());
    Ok(toml::to_string(&t)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_config_merges_and_moves_ports() {
        let text = "[actors]\nlease_ttl_ms = 3000\n[cluster]\nprobe_ms = 500\n\
                    [[cluster.nodes]]\nid = \"n1\"\ngateway = \"127.0.0.1:7301\"\nquic = \"127.0.0.1:7401\"\n";
        let out = super::cluster_config(text, "[actors]\nlease_ttl_ms = 1000\n", true).unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["actors"]["lease_ttl_ms"].as_integer(), Some(1000));
        assert_eq!(t["cluster"]["probe_ms"].as_integer(), Some(500));
        let n = &t["cluster"]["nodes"][0];
        assert_eq!(n["id"].as_str(), Some("n1"));
        assert_ne!(n["gateway"].as_str(), Some("127.0.0.1:7301"));
        assert!(n["quic"].as_str().unwrap().starts_with("127.0.0.1:"));
        // The generator's room for its many users, which a scenario can
        // take back.
        let plain = super::cluster_config(text, "", false).unwrap();
        let plain: toml::Table = toml::from_str(&plain).unwrap();
        let n = &plain["cluster"]["nodes"][0];
        assert_eq!(n["gateway"].as_str(), Some("127.0.0.1:7301"));
        assert_eq!(
            plain["rate_limits"]["ip_burst"].as_float(),
            Some(1_000_000.0)
        );
        let strict = super::cluster_config(text, "[rate_limits]\nip_burst = 5.0\n", false).unwrap();
        let strict: toml::Table = toml::from_str(&strict).unwrap();
        assert_eq!(strict["rate_limits"]["ip_burst"].as_float(), Some(5.0));
        assert_eq!(
            strict["rate_limits"]["ip_per_sec"].as_float(),
            Some(1_000_000.0)
        );
    }

    #[test]
    fn cql_store_takes_the_cluster_from_the_uri() {
        let store = |text: &str, uri: Option<&str>| -> anyhow::Result<toml::Table> {
            let mut t: toml::Table = toml::from_str(text).unwrap();
            super::cql_store(&mut t, uri, "loadtest_1")?;
            Ok(t["store"].as_table().unwrap().clone())
        };
        let scylla = "[store]\nkind = \"scylla\"\n";
        let s = store(scylla, Some("127.0.0.1:9042,127.0.0.2:9042")).unwrap();
        let points: Vec<&str> = s["contact_points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(points, ["127.0.0.1:9042", "127.0.0.2:9042"]);
        assert_eq!(s["replication_factor"].as_integer(), Some(2));
        assert_eq!(s["keyspace"].as_str(), Some("loadtest_1"));
        let four = "127.0.0.1:9042,127.0.0.2:9042,127.0.0.3:9042,127.0.0.4:9042";
        let s = store(scylla, Some(four)).unwrap();
        assert_eq!(s["replication_factor"].as_integer(), Some(3));
        // What the scenario sets wins.
        let fixed = "[store]\nkind = \"scylla\"\ncontact_points = [\"10.0.0.1:9042\"]\n\
                     keyspace = \"hush\"\nreplication_factor = 1\n";
        let s = store(fixed, Some(four)).unwrap();
        assert_eq!(s["contact_points"][0].as_str(), Some("10.0.0.1:9042"));
        assert_eq!(s["keyspace"].as_str(), Some("hush"));
        assert_eq!(s["replication_factor"].as_integer(), Some(1));
        let s = store(
            "[store]\nkind = \"scylla\"\nreplication_factor = 1\n",
            Some(four),
        )
        .unwrap();
        assert_eq!(s["replication_factor"].as_integer(), Some(1));
        // No cluster named anywhere: a clear error.
        let e = store(scylla, None).unwrap_err().to_string();
        assert!(
            e.contains("HUSH_SCYLLA_URI") && e.contains("scripts/cql.sh up"),
            "{e}"
        );
        assert!(store(scylla, Some(" ")).is_err());
        // Other stores are left alone.
        let s = store("[store]\nkind = \"embedded\"\n", Some(four)).unwrap();
        assert_eq!(s.len(), 1);
        let mut none: toml::Table = toml::from_str("[actors]\nlease_ttl_ms = 1\n").unwrap();
        super::cql_store(&mut none, Some(four), "k").unwrap();
        assert!(!none.contains_key("store"));
    }

    #[tokio::test]
    async fn wait_ready_waits_for_readyz_200() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Two 503 answers (a store still connecting), then 200.
        let server = tokio::spawn(async move {
            for status in [
                "503 Service Unavailable",
                "503 Service Unavailable",
                "200 OK",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /readyz "));
                s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        super::wait_ready(&url).await.unwrap();
        server.await.unwrap();
    }

    #[test]
    fn chaos_config_replaces_the_nodes_and_the_store() {
        let text = "[store]\nkind = \"embedded\"\npath = \"./x.sqlite\"\n[actors]\nlease_ttl_ms = 3000\n\
                    [[cluster.nodes]]\nid = \"n1\"\ngateway = \"127.0.0.1:7301\"\nquic = \"127.0.0.1:7401\"\n";
        let a = |s: &str| s.parse().unwrap();
        let nodes: Vec<(String, std::net::SocketAddr, std::net::SocketAddr)> = (1..=5)
            .map(|i| {
                (
                    format!("n{i}"),
                    a(&format!("10.77.0.{i}:7300")),
                    a(&format!("10.77.0.{i}:7400")),
                )
            })
            .collect();
        let out = super::cluster_config_for(text, "[cluster]\nprobe_ms = 200\n", &nodes).unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(
            t["store"]["path"].as_str(),
            Some("./hush-cluster/hush.sqlite")
        );
        assert_eq!(t["actors"]["lease_ttl_ms"].as_integer(), Some(3000));
        assert_eq!(t["cluster"]["probe_ms"].as_integer(), Some(200));
        let n = t["cluster"]["nodes"].as_array().unwrap();
        assert_eq!(n.len(), 5);
        assert_eq!(n[4]["gateway"].as_str(), Some("10.77.0.5:7300"));
        assert_eq!(n[4]["data"].as_str(), Some("./hush-cluster/n5"));
    }
}
