//! The coordinator: runs a scenario end to end. It starts the system under
//! test (one `hush-node`, the nodes of a cluster, or gateways handed in),
//! the /proc sampler, then measures Hush (and Redis, for the baseline)
//! through all phases (`measure`), and writes `summary.json` and
//! `report.html`. A chaos scenario runs its own way (`chaos`: a cluster in
//! network namespaces under faults, judged by the checker). [`run_repeat`]
//! runs a scenario several times.

mod chaos;
mod measure;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use self::measure::{measure, System};
use crate::clock::now_ns;
use crate::node::{self, NodeProc};
use crate::procmon::Monitor;
use crate::protocol::RedisMode;
use crate::repeat::Repeat;
use crate::report::{self, Summary};
use crate::resources::{node_trends, steady_window, Prober, PROBE_INTERVAL};
use crate::scenario::{Kind, Scenario, Spawn};

/// How often the /proc sampler reads CPU and RSS (and at every phase edge).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Command-line options of `hush-loadtest run`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub scenario: PathBuf,
    pub overrides: Vec<String>,
    /// Output directory (default `target/loadtest/<name>-<unix time>`).
    pub out: Option<PathBuf>,
    /// With `target.spawn = "none"`: gateway URLs and node pids.
    pub servers: Vec<String>,
    pub node_pids: Vec<u32>,
    pub node_bin: Option<PathBuf>,
    /// Baseline: the redis-server address and pid (started by the script).
    pub redis: Option<String>,
    pub redis_pid: Option<u32>,
    /// Baseline: what the workers do with Redis (the script starts it to
    /// match: no persistence for pub/sub, `appendfsync always` for streams).
    pub redis_mode: RedisMode,
    pub progress: bool,
    /// Keep a spawned node's data directory (`<out>/node-data`) after the
    /// run; by default it is removed once the node has stopped.
    pub keep_data: bool,
    /// The executable run as `worker` children (default: this one).
    pub worker_exe: Option<PathBuf>,
    /// Set by [`run`]: /proc/loadavg when it started.
    pub load_before: String,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub out_dir: PathBuf,
    pub summary: Summary,
}

/// The system under test as started: the nodes this run owns (stopped at
/// the end), the gateway URLs, and the processes to sample as "node <id>".
struct Started {
    nodes: Vec<NodeProc>,
    servers: Vec<String>,
    pids: Vec<(String, u32)>,
}

impl Started {
    /// Stops the nodes, then removes a spawned node's data directory
    /// unless `keep_data`: it holds every entry of the run (hundreds of
    /// MiB after a baseline), and a series of runs would fill the disk.
    async fn stop(self, keep_data: bool) {
        for n in self.nodes {
            let data = n.data_dir.clone();
            n.stop().await;
            if let (Some(d), false) = (data, keep_data) {
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    tracing::warn!("could not remove {}: {e}", d.display());
                }
            }
        }
    }
}

/// Starts what the scenario's `target.spawn` says, in `out_dir`.
async fn start_system(sc: &Scenario, opts: &Options, out_dir: &Path) -> anyhow::Result<Started> {
    let pid_of = |n: &NodeProc| (format!("node {}", n.id), n.pid);
    let nodes = match sc.target.spawn {
        Spawn::Node => {
            let bin = node::node_bin(opts.node_bin.as_deref())?;
            vec![node::start_single(&bin, out_dir, &sc.target.node_config).await?]
        }
        Spawn::Cluster => {
            let bin = node::node_bin(opts.node_bin.as_deref())?;
            node::start_cluster(
                &bin,
                out_dir,
                Path::new(&sc.target.cluster_config),
                &sc.target.cluster_nodes,
                &sc.target.node_config,
                sc.target.free_ports,
            )
            .await?
        }
        Spawn::None => {
            anyhow::ensure!(
                !opts.servers.is_empty(),
                "target.spawn = \"none\" needs --server URL"
            );
            return Ok(Started {
                nodes: Vec::new(),
                servers: opts.servers.clone(),
                pids: opts
                    .node_pids
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("node {}", i + 1), *p))
                    .collect(),
            });
        }
    };
    Ok(Started {
        servers: nodes.iter().map(|n| n.url.clone()).collect(),
        pids: nodes.iter().map(pid_of).collect(),
        nodes,
    })
}

/// Runs a scenario end to end and writes `summary.json` and `report.html`.
pub async fn run(mut opts: Options) -> anyhow::Result<Outcome> {
    opts.load_before = report::loadavg();
    let sc = Scenario::load(&opts.scenario, &opts.overrides)?;
    let started_unix_s = now_ns() / 1_000_000_000;
    let out_dir = opts.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("target/loadtest/{}-{}", sc.name, started_unix_s))
    });
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let out_dir = out_dir.canonicalize()?;
    if sc.kind == Kind::Chaos {
        return chaos::run(&sc, &opts, &out_dir, started_unix_s).await;
    }

    let system = start_system(&sc, &opts, &out_dir).await?;
    let mut watched = system.pids.clone();
    watched.push(("generator".into(), std::process::id()));
    if let Some(p) = opts.redis_pid {
        watched.push(("redis-server".into(), p));
    }
    let monitor = Monitor::start(watched, SAMPLE_INTERVAL);
    let prober = Prober::start(
        system
            .nodes
            .iter()
            .map(|n| (format!("node {}", n.id), n.url.clone(), n.data_dir.clone()))
            .collect(),
        monitor.started(),
        PROBE_INTERVAL,
    );
    let sources: Vec<IpAddr> = (1..=sc.source_addrs)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();

    let exe = opts.worker_exe.as_deref();
    let mut targets = Vec::new();
    let hush = System {
        name: "hush",
        servers: &system.servers,
        pids: &system.pids,
        redis: None,
        history_dir: None,
        faults: None,
    };
    match measure(&sc, &hush, &sources, &monitor, exe, opts.progress).await {
        Ok(t) => targets.push(t),
        Err(e) => {
            system.stop(opts.keep_data).await;
            return Err(e);
        }
    }
    if sc.kind == Kind::Baseline {
        let addr = opts
            .redis
            .clone()
            .context("the baseline scenario needs --redis HOST:PORT (loadtest/scripts/baseline.sh starts one)")?;
        let redis_pid: Vec<(String, u32)> = opts
            .redis_pid
            .map(|p| vec![("redis-server".to_string(), p)])
            .unwrap_or_default();
        let redis = System {
            name: opts.redis_mode.name(),
            servers: &[addr],
            pids: &redis_pid,
            redis: Some(opts.redis_mode),
            history_dir: None,
            faults: None,
        };
        targets.push(measure(&sc, &redis, &sources, &monitor, exe, opts.progress).await?);
    }
    monitor.sample_now();
    system.stop(opts.keep_data).await;
    let mut summary = Summary::new(
        &sc,
        &opts.overrides,
        &opts.load_before,
        started_unix_s,
        targets,
        monitor.series(),
    );
    // Resource trends over the first system's steady window (a baseline's
    // second system, Redis, is not probed).
    summary.resources = summary
        .targets
        .first()
        .and_then(|t| steady_window(&t.series))
        .map(|(from, to, acked)| node_trends(&summary.processes, &prober.series(), from, to, acked))
        .unwrap_or_default();
    let ok = summary.ok;
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(out_dir.join("report.html"), report::html(&summary))?;
    Ok(Outcome {
        ok,
        out_dir,
        summary,
    })
}

/// Runs a scenario `n` times (`<out>/run-<i>`), prints each run's summary,
/// and writes `<out>/repeat.json` with the median, min and max of the
/// headline figures. `ok` is false if any run failed its correctness check.
pub async fn run_repeat(opts: Options, n: usize) -> anyhow::Result<(bool, Repeat, PathBuf)> {
    let sc = Scenario::load(&opts.scenario, &opts.overrides)?;
    let base = opts.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "target/loadtest/{}-repeat-{}",
            sc.name,
            now_ns() / 1_000_000_000
        ))
    });
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let base = base.canonicalize()?;
    let mut summaries = Vec::new();
    let mut ok = true;
    for i in 1..=n {
        let mut o = opts.clone();
        o.out = Some(base.join(format!("run-{i}")));
        let r = run(o).await.with_context(|| format!("run {i} of {n}"))?;
        print!("run {i}/{n}: {}", r.summary.text());
        ok &= r.ok;
        summaries.push((r.out_dir.display().to_string(), r.summary));
    }
    let rep = Repeat::new(&summaries);
    std::fs::write(
        base.join("repeat.json"),
        serde_json::to_string_pretty(&rep)?,
    )?;
    Ok((ok, rep, base))
}
