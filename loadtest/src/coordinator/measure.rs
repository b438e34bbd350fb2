//! Measuring one system (Hush, or Redis in the baseline) through all the
//! scenario's phases: split the work into one plan per worker, start the
//! workers, wait for their setup, then per phase send one command with one
//! start time to all of them (and, for the failover scenario, kill the node
//! on time; for a chaos run, start the fault schedule), follow their
//! counters on the progress bar, and merge their results into the phase's
//! report.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::{now_ns, Clock};
use crate::failover::FailoverReport;
use crate::procmon::Monitor;
use crate::protocol::{
    ConnectJob, FanoutJob, FromWorker, Job, KillCmd, PhaseCmd, PhaseResult, Plan, RedisMode,
    ToWorker,
};
use crate::report::{PhaseReport, Point, TargetReport};
use crate::scenario::{Kind, Scenario};
use crate::stats::Tick;
use crate::worker::WorkerLink;

/// A phase's schedule starts this long after the coordinator sends it, so
/// every worker has the command before its first send is due.
const PHASE_LEAD: Duration = Duration::from_millis(500);

/// How often the progress bar redraws by itself.
const PROGRESS_REDRAW: Duration = Duration::from_millis(200);

/// A system to measure.
pub struct System<'a> {
    /// "hush", "redis" or "redis-streams": the report's name for it.
    pub name: &'static str,
    /// Its gateway URLs (Hush) or address (Redis).
    pub servers: &'a [String],
    /// Its processes (name, pid), whose CPU and RSS count as the target's.
    pub pids: &'a [(String, u32)],
    /// The baseline's Redis: the workers speak RESP to it, this way.
    pub redis: Option<RedisMode>,
    /// Chaos: where the workers write their parts of the history.
    pub history_dir: Option<&'a Path>,
    /// Chaos: started with the first phase's start time (Unix ns); awaited
    /// once the phase's results are in.
    pub faults: Option<&'a (dyn Fn(u64) -> JoinHandle<()> + Sync)>,
}

/// One system through all phases of the scenario; `worker_exe` runs the
/// worker processes (default: this executable).
pub async fn measure(
    sc: &Scenario,
    sys: &System<'_>,
    sources: &[IpAddr],
    monitor: &Monitor,
    worker_exe: Option<&Path>,
    progress_bar: bool,
) -> anyhow::Result<TargetReport> {
    let nworkers = sc.workers.max(1);
    let plans = plans(sc, sys, sources, nworkers);
    let workers = Workers::start(sc.workers, plans, monitor, worker_exe).await?;
    let mut m = Measurement {
        sc,
        sys,
        monitor,
        workers,
        bar: progress(progress_bar),
        ticks: vec![Tick::default(); nworkers],
        series: Vec::new(),
    };
    let (setup_s, registered) = m.setup().await?;
    let mut reports = Vec::new();
    for (index, phase) in phases(sc, nworkers).into_iter().enumerate() {
        reports.push(m.phase(index, phase).await?);
    }
    m.bar.finish_and_clear();
    m.workers.stop().await;
    Ok(TargetReport {
        name: sys.name.to_string(),
        setup_s,
        registered,
        phases: reports,
        series: m.series,
    })
}

/// Every worker's plan: its share of the groups (or connections).
fn plans(sc: &Scenario, sys: &System<'_>, sources: &[IpAddr], nworkers: usize) -> Vec<Plan> {
    let run = run_id();
    (0..nworkers)
        .map(|w| {
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
                Kind::Fanout | Kind::Sustain | Kind::Baseline | Kind::Chaos | Kind::Overload => {
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
                        ack_herd: f.ack_herd,
                        send_window: f.send_window,
                        presence_poll_ms: f.presence_poll_ms,
                        history: sys.history_dir.map(|d| crate::history::part_path(d, w)),
                    };
                    match sys.redis {
                        Some(mode) => Job::Redis(j, mode),
                        None => Job::Fanout(j),
                    }
                }
            };
            Plan {
                worker: w,
                run_id: run.clone(),
                servers: sys.servers.to_vec(),
                sources: sources.to_vec(),
                job,
            }
        })
        .collect()
}

fn run_id() -> String {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

/// `(first, count)` of worker `w`'s share of `n` items.
fn split(n: usize, workers: usize, w: usize) -> (usize, usize) {
    let base = n / workers;
    let extra = n % workers;
    let first = w * base + w.min(extra);
    (first, base + usize::from(w < extra))
}

/// What one phase asks of every worker.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// Fanout: messages/s per group. Connect: attempts/s per worker.
    rate: f64,
    duration_s: f64,
    drain_timeout_s: f64,
}

fn phases(sc: &Scenario, nworkers: usize) -> Vec<Phase> {
    match sc.kind {
        Kind::Connect => {
            let c = &sc.connect;
            vec![Phase {
                rate: c.rate / nworkers as f64,
                duration_s: c.connections as f64 / c.rate + c.hold_s,
                drain_timeout_s: 0.0,
            }]
        }
        Kind::Chaos => {
            let f = &sc.fanout;
            vec![Phase {
                rate: f.rates[0] / f.groups as f64,
                duration_s: sc.chaos.duration_s,
                drain_timeout_s: f.drain_timeout_s,
            }]
        }
        _ => {
            let f = &sc.fanout;
            f.rates
                .iter()
                .map(|r| Phase {
                    rate: r / f.groups as f64,
                    duration_s: f.phase_s,
                    drain_timeout_s: f.drain_timeout_s,
                })
                .collect()
        }
    }
}

/// The coordinator's side of all workers: their links, and their events
/// as one stream of (worker index, event).
struct Workers {
    links: Vec<WorkerLink>,
    events: mpsc::UnboundedReceiver<(usize, FromWorker)>,
}

impl Workers {
    /// `workers = 0`: the one plan runs in this process; else one child
    /// process per plan (`exe worker`, default this executable), sampled
    /// as "worker <i>".
    async fn start(
        workers: usize,
        mut plans: Vec<Plan>,
        monitor: &Monitor,
        exe: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut links = Vec::new();
        if workers == 0 {
            links.push(WorkerLink::in_process(plans.remove(0)));
        } else {
            let exe = match exe {
                Some(p) => p.to_path_buf(),
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
        let (tx, events) = mpsc::unbounded_channel();
        for (i, l) in links.iter_mut().enumerate() {
            let tx = tx.clone();
            let mut erx = std::mem::replace(&mut l.rx, mpsc::unbounded_channel().1);
            tokio::spawn(async move {
                while let Some(e) = erx.recv().await {
                    if tx.send((i, e)).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Self { links, events })
    }

    fn send_all(&self, cmd: &ToWorker) {
        for l in &self.links {
            let _ = l.tx.send(cmd.clone());
        }
    }

    /// Tells every worker to stop, then waits for each.
    async fn stop(self) {
        self.send_all(&ToWorker::Stop);
        for l in self.links {
            l.stop().await;
        }
    }
}

/// The node a phase kills, when, and its pid.
struct Kill {
    cmd: KillCmd,
    pid: u32,
}

impl Kill {
    /// Sends `signal` to the node at its time; the task returns when the
    /// signal was sent (Unix ns).
    fn spawn(&self, signal: String) -> JoinHandle<u64> {
        let clock = Clock::now();
        let (at_ns, pid) = (self.cmd.at_ns, self.pid);
        tokio::spawn(async move {
            tokio::time::sleep_until(clock.instant_at(at_ns)).await;
            let sent = now_ns();
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
            sent
        })
    }
}

/// One system's measurement in progress.
struct Measurement<'a> {
    sc: &'a Scenario,
    sys: &'a System<'a>,
    monitor: &'a Monitor,
    workers: Workers,
    bar: ProgressBar,
    /// Each worker's latest counters.
    ticks: Vec<Tick>,
    /// Their sums over time.
    series: Vec<Point>,
}

impl Measurement<'_> {
    /// Worker `i` sent its counters: returns the sum over all workers.
    fn tick(&mut self, i: usize, t: Tick) -> Tick {
        self.ticks[i] = t;
        let sum = self.ticks.iter().fold(Tick::default(), |a, b| a.plus(*b));
        self.series.push(Point::new(self.monitor.now(), sum));
        sum
    }

    /// The next event from a worker that is neither counters (they go to
    /// the series and to `show`, for the progress bar) nor a failure (that
    /// ends the measurement, `during` says when).
    async fn next_event(
        &mut self,
        during: &str,
        show: impl Fn(&ProgressBar, Tick),
    ) -> anyhow::Result<FromWorker> {
        loop {
            let (i, ev) = self
                .workers
                .events
                .recv()
                .await
                .with_context(|| format!("workers ended during {during}"))?;
            match ev {
                FromWorker::Tick(t) => {
                    let sum = self.tick(i, t);
                    show(&self.bar, sum);
                }
                FromWorker::Failed(e) => {
                    self.bar.finish_and_clear();
                    anyhow::bail!("worker {i} failed during {during}: {e}");
                }
                other => return Ok(other),
            }
        }
    }

    /// Waits until every worker is set up; returns the longest setup time
    /// and the users registered.
    async fn setup(&mut self) -> anyhow::Result<(f64, u64)> {
        let name = self.sys.name;
        self.bar.set_message(format!(
            "{name}: setup (registering, connecting, MLS groups)"
        ));
        let show = |bar: &ProgressBar, sum: Tick| {
            bar.set_message(format!(
                "{name}: setup, {} connections open",
                sum.conns_open
            ));
        };
        let mut ready = 0;
        let mut setup_s: f64 = 0.0;
        let mut registered = 0;
        while ready < self.ticks.len() {
            if let FromWorker::Ready {
                setup_s: s,
                registered: r,
            } = self.next_event("setup", show).await?
            {
                ready += 1;
                setup_s = setup_s.max(s);
                registered += r;
            }
        }
        Ok((setup_s, registered))
    }

    /// Failover: the node to kill `kill_after_s` into the first phase.
    fn kill(&self, index: usize, start_ns: u64) -> anyhow::Result<Option<Kill>> {
        let target = &self.sc.target;
        if index != 0 || target.kill_node.is_empty() || self.sys.redis.is_some() {
            return Ok(None);
        }
        let node = format!("node {}", target.kill_node);
        let server = self
            .sys
            .pids
            .iter()
            .position(|(n, _)| n == &node)
            .with_context(|| format!("kill_node {node} is not one of the started nodes"))?;
        Ok(Some(Kill {
            cmd: KillCmd {
                server,
                at_ns: start_ns + (target.kill_after_s * 1e9) as u64,
            },
            pid: self.sys.pids[server].1,
        }))
    }

    /// Runs phase `index` on every worker and reports it.
    async fn phase(&mut self, index: usize, phase: Phase) -> anyhow::Result<PhaseReport> {
        let start_ns = now_ns() + PHASE_LEAD.as_nanos() as u64;
        let t0 = self.monitor.now() + PHASE_LEAD.as_secs_f64();
        self.monitor.sample_now();
        let kill = self.kill(index, start_ns)?;
        self.workers.send_all(&ToWorker::Phase(PhaseCmd {
            index,
            start_ns,
            duration_s: phase.duration_s,
            rate: phase.rate,
            drain_timeout_s: phase.drain_timeout_s,
            kill: kill.as_ref().map(|k| k.cmd.clone()),
            chaos: self.sc.kind == Kind::Chaos,
        }));
        let killed = kill.map(|k| k.spawn(self.sc.target.kill_signal.clone()));
        let faults = match self.sys.faults {
            Some(start) if index == 0 => Some(start(start_ns)),
            _ => None,
        };
        let mut merged = self.results(index, start_ns, phase.duration_s).await?;
        if let Some(f) = faults {
            let _ = f.await;
        }
        self.monitor.sample_now();
        let t1 = self.monitor.now();
        let mut report = PhaseReport::new(
            self.sc,
            index,
            phase.rate,
            phase.duration_s,
            start_ns,
            t0,
            t1,
            &merged,
            &self.monitor.series(),
            self.sys.pids,
        );
        if let Some(k) = killed {
            let kill_ns = k.await.unwrap_or(0);
            let raw = merged.failover.take().unwrap_or_default();
            report.failover = Some(FailoverReport::new(
                &raw,
                &self.sc.target.kill_node,
                &self.sc.target.kill_signal,
                kill_ns,
                start_ns,
                merged.correctness,
            ));
        }
        Ok(report)
    }

    /// Follows the phase on the progress bar until every worker reported
    /// it; returns their results merged.
    async fn results(
        &mut self,
        index: usize,
        start_ns: u64,
        duration_s: f64,
    ) -> anyhow::Result<PhaseResult> {
        let name = self.sys.name;
        let length_ms = (duration_s * 1000.0) as u64;
        self.bar.set_length(length_ms);
        self.bar.set_position(0);
        let mut merged = PhaseResult {
            index,
            ..PhaseResult::default()
        };
        let show = |bar: &ProgressBar, sum: Tick| {
            let el = (now_ns().saturating_sub(start_ns)) as f64 / 1e6;
            bar.set_position((el.max(0.0) as u64).min(length_ms));
            bar.set_message(format!(
                "{name} phase {index}: sent {} acked {} delivered {} conns {}",
                sum.sent, sum.acked, sum.delivered, sum.conns_open
            ));
        };
        let mut done = 0;
        while done < self.ticks.len() {
            if let FromWorker::PhaseDone(r) = self.next_event("a phase", show).await? {
                merged.merge(&r);
                done += 1;
            }
        }
        Ok(merged)
    }
}

fn progress(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(PROGRESS_REDRAW);
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
