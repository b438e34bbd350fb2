//! hush-loadtest: a load generator that drives real Hush clients over the
//! real protocol and measures honestly (open loop, latency from the
//! intended send time into HDR histograms, correctness checked every run).
//!
//! Layers (top-down):
//! - [`run`] (this file): the coordinator: starts the system under test,
//!   the workers and the /proc sampler, runs the phases, writes the report;
//! - [`worker`]: plans, the worker protocol (in-process or child process);
//! - [`fanout`], [`connect`], [`redis`]: the workloads a worker runs;
//! - [`conn`], [`account`], [`mls`]: the client side of the protocol;
//! - [`stats`], [`payload`], [`procmon`], [`report`], [`scenario`], [`node`].

pub mod account;
pub mod conn;
pub mod connect;
pub mod failover;
pub mod fanout;
pub mod mls;
pub mod node;
pub mod payload;
pub mod procmon;
pub mod redis;
pub mod repeat;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod worker;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::failover::FailoverReport;
use crate::payload::now_ns;
use crate::report::{PhaseReport, Point, Summary, TargetReport};
use crate::scenario::{Kind, Scenario, Spawn};
use crate::stats::Tick;
use crate::worker::{
    ConnectJob, FanoutJob, FromWorker, Job, KillCmd, PhaseCmd, PhaseResult, Plan, ToWorker,
    WorkerLink,
};

/// Maps Unix nanoseconds to tokio instants (taken once per worker, so a
/// schedule never drifts with the wall clock's adjustments mid-run).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: tokio::time::Instant,
    unix_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            at: tokio::time::Instant::now(),
            unix_ns: now_ns(),
        }
    }

    /// The instant of a Unix-ns time (now, if it is in the past).
    pub fn instant_at(&self, unix_ns: u64) -> tokio::time::Instant {
        self.at + Duration::from_nanos(unix_ns.saturating_sub(self.unix_ns))
    }
}

/// Sends the counters to the coordinator once a second.
pub fn spawn_ticker(
    events: mpsc::UnboundedSender<FromWorker>,
    tick: impl Fn() -> Tick + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_millis(500));
        loop {
            iv.tick().await;
            if events.send(FromWorker::Tick(tick())).is_err() {
                return;
            }
        }
    })
}

/// Runs one worker's plan (in this process or in a `worker` child).
pub async fn run_worker(
    plan: Plan,
    cmds: mpsc::UnboundedReceiver<ToWorker>,
    events: mpsc::UnboundedSender<FromWorker>,
) {
    let r = match plan.job.clone() {
        Job::Fanout(j) => fanout::run(plan, j, cmds, events.clone()).await,
        Job::Redis(j) => redis::run(plan, j, cmds, events.clone()).await,
        Job::Connect(j) => connect::run(plan, j, cmds, events.clone()).await,
    };
    if let Err(e) = r {
        let _ = events.send(FromWorker::Failed(format!("{e:#}")));
    }
}

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
    pub progress: bool,
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

fn run_id() -> String {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
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

    // The system under test.
    let mut nodes = Vec::new();
    let (servers, node_pids): (Vec<String>, Vec<(String, u32)>) = match sc.target.spawn {
        Spawn::Node => {
            let bin = node::node_bin(opts.node_bin.as_deref())?;
            let n = node::start_single(&bin, &out_dir, &sc.target.node_config).await?;
            let r = (vec![n.url.clone()], vec![(format!("node {}", n.id), n.pid)]);
            nodes.push(n);
            r
        }
        Spawn::Cluster => {
            let bin = node::node_bin(opts.node_bin.as_deref())?;
            let ns = node::start_cluster(
                &bin,
                &out_dir,
                Path::new(&sc.target.cluster_config),
                &sc.target.cluster_nodes,
                &sc.target.node_config,
                sc.target.free_ports,
            )
            .await?;
            let r = (
                ns.iter().map(|n| n.url.clone()).collect(),
                ns.iter()
                    .map(|n| (format!("node {}", n.id), n.pid))
                    .collect(),
            );
            nodes = ns;
            r
        }
        Spawn::None => {
            anyhow::ensure!(
                !opts.servers.is_empty(),
                "target.spawn = \"none\" needs --server URL"
            );
            (
                opts.servers.clone(),
                opts.node_pids
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("node {}", i + 1), *p))
                    .collect(),
            )
        }
    };
    let mut watched = node_pids.clone();
    watched.push(("generator".into(), std::process::id()));
    if let Some(p) = opts.redis_pid {
        watched.push(("redis-server".into(), p));
    }
    let monitor = procmon::Monitor::start(watched, Duration::from_millis(250));
    let sources: Vec<IpAddr> = (1..=sc.source_addrs)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();

    let mut targets = Vec::new();
    let hush = measure(
        &sc, "hush", &servers, &sources, false, &monitor, &node_pids, &opts,
    )
    .await;
    let hush = match hush {
        Ok(t) => t,
        Err(e) => {
            for n in nodes {
                n.stop().await;
            }
            return Err(e);
        }
    };
    targets.push(hush);
    if sc.kind == Kind::Baseline {
        let addr = opts
            .redis
            .clone()
            .context("the baseline scenario needs --redis HOST:PORT (loadtest/scripts/baseline.sh starts one)")?;
        let redis_pid: Vec<(String, u32)> = opts
            .redis_pid
            .map(|p| vec![("redis-server".to_string(), p)])
            .unwrap_or_default();
        targets.push(
            measure(
                &sc,
                "redis",
                &[addr],
                &sources,
                true,
                &monitor,
                &redis_pid,
                &opts,
            )
            .await?,
        );
    }
    monitor.sample_now();
    for n in nodes {
        n.stop().await;
    }
    let summary = Summary::new(
        &sc,
        &opts.overrides,
        &opts.load_before,
        started_unix_s,
        targets,
        monitor.series(),
    );
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
pub async fn run_repeat(
    opts: Options,
    n: usize,
) -> anyhow::Result<(bool, repeat::Repeat, PathBuf)> {
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
    let rep = repeat::Repeat::new(&summaries);
    std::fs::write(
        base.join("repeat.json"),
        serde_json::to_string_pretty(&rep)?,
    )?;
    Ok((ok, rep, base))
}

/// One target (Hush or Redis) through all phases of the scenario.
#[allow(clippy::too_many_arguments)]
async fn measure(
    sc: &Scenario,
    name: &str,
    servers: &[String],
    sources: &[IpAddr],
    redis: bool,
    monitor: &procmon::Monitor,
    target_pids: &[(String, u32)],
    opts: &Options,
) -> anyhow::Result<TargetReport> {
    let nworkers = sc.workers.max(1);
    let run = run_id();
    let mut plans = Vec::new();
    for w in 0..nworkers {
        let job = match sc.kind {
            Kind::Connect => {
                let c = &sc.connect;
                let (first, count) = split(c.connections, nworkers, w);
                Job::Connect(ConnectJob {
                    first,
                    count,
                    setup_concurrency: c.setup_concurrency,
                })
            }
            Kind::Fanout | Kind::Sustain | Kind::Baseline => {
                let f = &sc.fanout;
                let (first_group, groups) = split(f.groups, nworkers, w);
                let j = FanoutJob {
                    first_group,
                    groups,
                    total_groups: f.groups,
                    group_size: f.group_size,
                    payload_bytes: f.payload_bytes,
                    mls: sc.mls,
                    presealed_per_group: f.presealed_per_group,
                    setup_concurrency: f.setup_concurrency,
                    ack_interval_ms: f.ack_interval_ms,
                };
                if redis {
                    Job::Redis(j)
                } else {
                    Job::Fanout(j)
                }
            }
        };
        plans.push(Plan {
            worker: w,
            run_id: run.clone(),
            servers: servers.to_vec(),
            sources: sources.to_vec(),
            job,
        });
    }
    let mut links = Vec::new();
    if sc.workers == 0 {
        links.push(WorkerLink::in_process(plans.remove(0)));
    } else {
        let exe = match &opts.worker_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        for p in &plans {
            let l = WorkerLink::child(&exe, p).await?;
            if let Some(pid) = l.pid {
                monitor.watch(format!("worker {}", p.worker), pid);
            }
            links.push(l);
        }
    }
    // One stream of (worker, event).
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, FromWorker)>();
    let mut cmd_txs = Vec::new();
    let mut closers = Vec::new();
    for (i, mut l) in links.into_iter().enumerate() {
        cmd_txs.push(l.tx.clone());
        let tx = tx.clone();
        let mut erx = std::mem::replace(&mut l.rx, mpsc::unbounded_channel().1);
        tokio::spawn(async move {
            while let Some(e) = erx.recv().await {
                if tx.send((i, e)).is_err() {
                    return;
                }
            }
        });
        closers.push(l);
    }
    drop(tx);

    let bar = progress(opts.progress);
    bar.set_message(format!(
        "{name}: setup (registering, connecting, MLS groups)"
    ));
    let mut ticks = vec![Tick::default(); nworkers];
    let mut series: Vec<Point> = Vec::new();
    let t_setup = monitor.now();
    let mut ready = 0;
    let mut setup_s: f64 = 0.0;
    let mut registered = 0;
    while ready < nworkers {
        let (i, ev) = rx.recv().await.context("workers ended during setup")?;
        match ev {
            FromWorker::Ready {
                setup_s: s,
                registered: r,
            } => {
                ready += 1;
                setup_s = setup_s.max(s);
                registered += r;
            }
            FromWorker::Tick(t) => {
                ticks[i] = t;
                let sum = ticks.iter().fold(Tick::default(), |a, b| a.plus(*b));
                bar.set_message(format!(
                    "{name}: setup, {} connections open",
                    sum.conns_open
                ));
                series.push(Point::new(monitor.now(), sum));
            }
            FromWorker::Failed(e) => {
                bar.finish_and_clear();
                anyhow::bail!("worker {i} failed during setup: {e}");
            }
            FromWorker::PhaseDone(_) => {}
        }
    }
    let _ = t_setup;

    let phases: Vec<(f64, f64, f64)> = match sc.kind {
        Kind::Connect => {
            let c = &sc.connect;
            vec![(
                c.rate / nworkers as f64,
                c.connections as f64 / c.rate + c.hold_s,
                0.0,
            )]
        }
        _ => {
            let f = &sc.fanout;
            f.rates
                .iter()
                .map(|r| (r / f.groups as f64, f.phase_s, f.drain_timeout_s))
                .collect()
        }
    };
    let mut reports = Vec::new();
    for (index, (rate, duration_s, drain)) in phases.iter().copied().enumerate() {
        let start_ns = now_ns() + 500_000_000;
        let t0 = monitor.now() + 0.5;
        monitor.sample_now();
        // Failover: kill a node `kill_after_s` into the first phase.
        let kill = if index == 0 && !sc.target.kill_node.is_empty() && !redis {
            let node = format!("node {}", sc.target.kill_node);
            let server = target_pids
                .iter()
                .position(|(n, _)| n == &node)
                .with_context(|| format!("kill_node {node} is not one of the started nodes"))?;
            let pid = target_pids[server].1;
            let at_ns = start_ns + (sc.target.kill_after_s * 1e9) as u64;
            Some((KillCmd { server, at_ns }, pid))
        } else {
            None
        };
        for tx in &cmd_txs {
            let _ = tx.send(ToWorker::Phase(PhaseCmd {
                index,
                start_ns,
                duration_s,
                rate,
                drain_timeout_s: drain,
                kill: kill.as_ref().map(|(k, _)| k.clone()),
            }));
        }
        let killed = kill.as_ref().map(|(k, pid)| {
            let clock = Clock::now();
            let (at_ns, pid) = (k.at_ns, *pid);
            let signal = sc.target.kill_signal.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(clock.instant_at(at_ns)).await;
                let sent = now_ns();
                let _ = std::process::Command::new("kill")
                    .args([format!("-{signal}"), pid.to_string()])
                    .status();
                sent
            })
        });
        bar.set_length((duration_s * 1000.0) as u64);
        bar.set_position(0);
        let mut merged = PhaseResult {
            index,
            ..PhaseResult::default()
        };
        let mut done = 0;
        while done < nworkers {
            let (i, ev) = rx.recv().await.context("workers ended during a phase")?;
            match ev {
                FromWorker::Tick(t) => {
                    ticks[i] = t;
                    let sum = ticks.iter().fold(Tick::default(), |a, b| a.plus(*b));
                    let el = (now_ns().saturating_sub(start_ns)) as f64 / 1e6;
                    bar.set_position((el.max(0.0) as u64).min((duration_s * 1000.0) as u64));
                    bar.set_message(format!(
                        "{name} phase {index}: sent {} acked {} delivered {} conns {}",
                        sum.sent, sum.acked, sum.delivered, sum.conns_open
                    ));
                    series.push(Point::new(monitor.now(), sum));
                }
                FromWorker::PhaseDone(r) => {
                    merged.merge(&r);
                    done += 1;
                }
                FromWorker::Failed(e) => {
                    bar.finish_and_clear();
                    anyhow::bail!("worker {i} failed: {e}");
                }
                FromWorker::Ready { .. } => {}
            }
        }
        monitor.sample_now();
        let t1 = monitor.now();
        let mut report = PhaseReport::new(
            sc,
            index,
            rate,
            duration_s,
            start_ns,
            t0,
            t1,
            &merged,
            &monitor.series(),
            target_pids,
        );
        if let Some(k) = killed {
            let kill_ns = k.await.unwrap_or(0);
            let raw = merged.failover.take().unwrap_or_default();
            report.failover = Some(FailoverReport::new(
                &raw,
                &sc.target.kill_node,
                &sc.target.kill_signal,
                kill_ns,
                start_ns,
                merged.correctness,
            ));
        }
        reports.push(report);
    }
    bar.finish_and_clear();
    for tx in &cmd_txs {
        let _ = tx.send(ToWorker::Stop);
    }
    for l in closers {
        l.stop().await;
    }
    Ok(TargetReport {
        name: name.to_string(),
        setup_s,
        registered,
        phases: reports,
        series,
    })
}

/// `(first, count)` of worker `w`'s share of `n` items.
fn split(n: usize, workers: usize, w: usize) -> (usize, usize) {
    let base = n / workers;
    let extra = n % workers;
    let first = w * base + w.min(extra);
    (first, base + usize::from(w < extra))
}

fn progress(enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_covers_everything_once() {
        for n in [0, 1, 7, 100] {
            for w in 1..5 {
                let parts: Vec<_> = (0..w).map(|i| super::split(n, w, i)).collect();
                assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), n);
                for i in 1..w {
                    assert_eq!(parts[i].0, parts[i - 1].0 + parts[i - 1].1);
                }
            }
        }
    }
}
