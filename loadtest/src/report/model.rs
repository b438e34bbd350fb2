//! What a report holds, computed from the results: per phase, the counts,
//! rates, latency percentiles, CPU and RSS of the system under test and the
//! generator, correctness and failover figures ([`PhaseReport`]); per
//! system measured, its phases and throughput series ([`TargetReport`]);
//! for the run, everything plus the verdict ([`Summary`], which is
//! `summary.json`). Also the figures both renderings list by label
//! ([`correctness_figures`], [`FailoverFigures`]), so the terminal text and
//! the HTML name and format them the same way from one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::failover::FailoverReport;
use crate::procmon::Series;
use crate::protocol::PhaseResult;
use crate::scenario::{Kind, Scenario};
use crate::stats::{Correctness, LatencySummary, Tick};

/// Cumulative counters at a time (seconds since the run started).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub t: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub conns_open: u64,
}

impl Point {
    pub fn new(t: f64, k: Tick) -> Self {
        Self {
            t,
            sent: k.sent,
            acked: k.acked,
            delivered: k.delivered,
            conns_open: k.conns_open,
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    pub index: usize,
    /// Fanout: total messages/s asked for. Connect: connection attempts/s.
    pub target_rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Acked messages (or connections) per second over the sending window.
    pub acked_per_s: f64,
    /// Deliveries per second from the phase start to the last delivery.
    pub deliveries_per_s: f64,
    pub latency_ms: BTreeMap<String, LatencySummary>,
    /// (percentile, ms) per histogram, for plots.
    pub curves: BTreeMap<String, Vec<(f64, f64)>>,
    pub correctness: Correctness,
    pub conns_open: u64,
    /// CPU seconds of the system under test during the phase (all its processes).
    pub target_cpu_s: f64,
    pub target_cpu_per_1k_deliveries_s: Option<f64>,
    pub target_rss_start: u64,
    pub target_rss_end: u64,
    /// The largest RSS sampled during the phase (summed over the target's
    /// processes per sample time).
    #[serde(default)]
    pub target_rss_max: u64,
    /// Connect: (RSS at end - RSS at start) / open connections.
    pub target_rss_per_conn: Option<f64>,
    /// CPU seconds of the system under test during the phase by thread
    /// name (e.g. `actix-server wo`, `tokio-rt-worker`, `hush-store-writ`),
    /// over the threads alive at both edges of the phase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_thread_cpu_s: BTreeMap<String, f64>,
    /// CPU seconds of the generator (coordinator and workers).
    pub generator_cpu_s: f64,
    /// Seconds since the run started.
    pub t_start: f64,
    pub t_end: f64,
    /// Failover: the kill and the way back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverReport>,
    /// Error answers to sends, by error code (RATE_LIMITED, UNAVAILABLE:
    /// retried with backoff under the same `client_msg_id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refusals: BTreeMap<String, u64>,
}

impl PhaseReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sc: &Scenario,
        index: usize,
        rate: f64,
        duration_s: f64,
        start_ns: u64,
        t0: f64,
        t1: f64,
        r: &PhaseResult,
        series: &[Series],
        target_pids: &[(String, u32)],
    ) -> Self {
        let target_rate = match sc.kind {
            Kind::Connect => sc.connect.rate,
            _ => rate * sc.fanout.groups as f64,
        };
        let span = if r.last_event_ns > start_ns {
            ((r.last_event_ns - start_ns) as f64 / 1e9).max(duration_s)
        } else {
            duration_s
        };
        let is_target = |s: &Series| target_pids.iter().any(|(_, p)| *p == s.pid);
        let is_gen = |s: &Series| s.name == "generator" || s.name.starts_with("worker ");
        let target_cpu_s: f64 = series
            .iter()
            .filter(|s| is_target(s))
            .map(|s| s.cpu_between(t0, t1))
            .sum();
        let mut target_thread_cpu_s = BTreeMap::new();
        for s in series.iter().filter(|s| is_target(s)) {
            for (name, cpu) in s.thread_cpu_between(t0, t1) {
                *target_thread_cpu_s.entry(name).or_insert(0.0) += cpu;
            }
        }
        let rss = |t: f64| -> u64 {
            series
                .iter()
                .filter(|s| is_target(s))
                .map(|s| s.rss_at(t))
                .sum()
        };
        let (rss0, rss1) = (rss(t0), rss(t1));
        // Sample times of the target inside the phase; the RSS summed at each.
        let rss_max = series
            .iter()
            .filter(|s| is_target(s))
            .flat_map(|s| s.samples.iter().filter(|x| x.t >= t0 && x.t <= t1))
            .map(|x| rss(x.t))
            .chain([rss0, rss1])
            .max()
            .unwrap_or(0);
        let connect_span = if sc.kind == Kind::Connect && r.last_event_ns > start_ns {
            (r.last_event_ns - start_ns) as f64 / 1e9
        } else {
            duration_s
        };
        Self {
            index,
            target_rate,
            duration_s,
            sent: r.sent,
            acked: r.acked,
            delivered: r.delivered,
            acked_per_s: if sc.kind == Kind::Connect {
                r.acked as f64 / connect_span.max(1e-9)
            } else {
                r.acked as f64 / duration_s
            },
            deliveries_per_s: r.delivered as f64 / span,
            latency_ms: r
                .hists
                .iter()
                .filter(|(_, h)| !h.0.is_empty())
                .map(|(k, h)| (k.clone(), h.summary()))
                .collect(),
            curves: r
                .hists
                .iter()
                .filter(|(_, h)| !h.0.is_empty())
                .map(|(k, h)| (k.clone(), h.percentile_curve()))
                .collect(),
            correctness: r.correctness,
            conns_open: r.conns_open,
            target_cpu_s,
            target_cpu_per_1k_deliveries_s: (r.delivered > 0 && !target_pids.is_empty())
                .then(|| target_cpu_s / (r.delivered as f64 / 1000.0)),
            target_rss_start: rss0,
            target_rss_end: rss1,
            target_rss_max: rss_max,
            target_rss_per_conn: (sc.kind == Kind::Connect && r.conns_open > 0)
                .then(|| (rss1 as f64 - rss0 as f64) / r.conns_open as f64),
            target_thread_cpu_s,
            generator_cpu_s: series
                .iter()
                .filter(|s| is_gen(s))
                .map(|s| s.cpu_between(t0, t1))
                .sum(),
            t_start: t0,
            t_end: t1,
            failover: None,
            refusals: r.refusals.clone(),
        }
    }

    fn p99(&self, h: &str) -> Option<f64> {
        self.latency_ms.get(h).map(|l| l.p99_ms)
    }
}

/// One system measured (Hush, or Redis in the baseline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub setup_s: f64,
    pub registered: u64,
    pub phases: Vec<PhaseReport>,
    pub series: Vec<Point>,
}

/// Hush / Redis for one phase of the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub phase: usize,
    pub deliveries_per_s: f64,
    pub e2e_p50: Option<f64>,
    pub e2e_p99: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub overrides: Vec<String>,
    pub started_unix_s: u64,
    pub started_utc: String,
    pub host: String,
    /// /proc/loadavg when the run started and when it ended (the machine
    /// is shared: say how busy it was).
    #[serde(default)]
    pub load_before: String,
    #[serde(default)]
    pub load_after: String,
    pub targets: Vec<TargetReport>,
    pub processes: Vec<Series>,
    /// Sustain: the highest rate whose e2e p99 stayed under the bound with
    /// nothing lost and at least 95% of the asked rate acked.
    pub sustained_rate: Option<f64>,
    /// Baseline: Hush divided by Redis, per phase.
    pub ratio_to_redis: Vec<Ratio>,
    pub correctness: Correctness,
    pub ok: bool,
    /// Chaos runs: the schedule, the checker's verdict, the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<super::ChaosReport>,
    /// Per spawned node, RSS, open files, actors and store size after
    /// warm-up, with their slopes (what a soak run is judged on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<crate::resources::NodeTrends>,
}

fn host() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

/// The 1/5/15-minute load averages (the first three fields of /proc/loadavg).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days).
pub fn utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl Summary {
    /// The baseline's second system, Hush's ratios are against ("redis"
    /// or "redis-streams"; `RedisMode::name`).
    pub fn baseline_name(&self) -> &str {
        self.targets.get(1).map_or("redis", |t| t.name.as_str())
    }

    /// `overrides`: the command line's `--set`s; `load_before`: the load
    /// average when the run started.
    pub fn new(
        sc: &Scenario,
        overrides: &[String],
        load_before: &str,
        started_unix_s: u64,
        targets: Vec<TargetReport>,
        processes: Vec<Series>,
    ) -> Self {
        let mut correctness = Correctness::default();
        let mut ok = true;
        for t in &targets {
            // Correctness counts are cumulative: the last phase has them all.
            if let Some(p) = t.phases.last() {
                correctness = correctness.plus(p.correctness);
                if sc.kind == Kind::Connect && p.conns_open < sc.connect.connections as u64 {
                    ok = false;
                }
            }
            // A failover run fails if a connection never got back.
            if t.phases.iter().any(|p| {
                p.failover
                    .as_ref()
                    .is_some_and(|f| f.not_reconnected > 0 || f.drained_s.is_none())
            }) {
                ok = false;
            }
        }
        ok &= correctness.ok();
        let sustained_rate = (sc.kind == Kind::Sustain)
            .then(|| {
                targets.first().and_then(|t| {
                    t.phases
                        .iter()
                        .filter(|p| {
                            p.correctness.ok()
                                && p.p99("e2e").is_some_and(|v| v < sc.fanout.sustain_p99_ms)
                                && p.acked_per_s >= 0.95 * p.target_rate
                        })
                        .map(|p| p.target_rate)
                        .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))))
                })
            })
            .flatten();
        let ratio_to_redis = match (targets.first(), targets.get(1)) {
            (Some(h), Some(r)) if sc.kind == Kind::Baseline => h
                .phases
                .iter()
                .zip(&r.phases)
                .map(|(h, r)| {
                    let lat = |p: &PhaseReport, f: fn(&LatencySummary) -> f64| {
                        p.latency_ms.get("e2e").map(f)
                    };
                    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    };
                    Ratio {
                        phase: h.index,
                        deliveries_per_s: h.deliveries_per_s / r.deliveries_per_s.max(1e-9),
                        e2e_p50: div(lat(h, |l| l.p50_ms), lat(r, |l| l.p50_ms)),
                        e2e_p99: div(lat(h, |l| l.p99_ms), lat(r, |l| l.p99_ms)),
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            scenario: sc.clone(),
            overrides: overrides.to_vec(),
            started_unix_s,
            started_utc: utc(started_unix_s),
            host: host(),
            load_before: load_before.to_string(),
            load_after: loadavg(),
            targets,
            processes,
            sustained_rate,
            ratio_to_redis,
            correctness,
            ok,
            chaos: None,
            resources: Vec::new(),
        }
    }
}

/// One figure as both renderings show it: its label and formatted value.
pub type Figure = (&'static str, String);

/// The correctness counts by label, in the order both renderings list them.
pub fn correctness_figures(c: &Correctness) -> Vec<Figure> {
    [
        ("lost", c.lost),
        ("duplicated", c.duplicated),
        ("reordered", c.reordered),
        ("stored twice", c.stored_twice),
        ("unacked", c.unacked),
        ("send errors", c.send_errors),
        ("payload errors", c.payload_errors),
        ("closed", c.closed_unexpected),
        ("connect failures", c.conn_failures),
    ]
    .into_iter()
    .map(|(l, v)| (l, v.to_string()))
    .collect()
}

/// Seconds after the signal, or "never".
fn secs(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.3} s"))
}

/// A failover phase's figures as both renderings show them: a title, then
/// rows of labelled figures (the terminal prints a row per line, the HTML
/// a table per row).
#[derive(Debug, Clone)]
pub struct FailoverFigures {
    pub title: String,
    pub rows: Vec<Vec<Figure>>,
}

impl FailoverFigures {
    pub fn new(f: &FailoverReport) -> Self {
        let n = |v: u64| v.to_string();
        let c = &f.correctness;
        Self {
            title: format!(
                "Failover: kill -{} {} at {:.2} s into the phase",
                f.signal, f.killed_node, f.kill_at_s
            ),
            rows: vec![
                vec![
                    ("affected connections", n(f.affected_connections)),
                    ("unexpected drops", n(f.unexpected_drops)),
                    ("not back", n(f.not_reconnected)),
                    ("reconnect attempts", n(f.reconnect_attempts)),
                    ("all sockets open", secs(f.sockets_open_s)),
                    ("all resumed (caught up)", secs(f.reconnected_s)),
                    ("resumed p50", secs(f.reconnected_p50_s)),
                    ("every group writable", secs(f.groups_writable_s)),
                    ("back (end of outage)", secs(f.back_s)),
                    ("backlog drained", secs(f.drained_s)),
                ],
                vec![
                    ("sent during outage", n(f.outage_sent)),
                    ("acked", n(f.outage_acked)),
                    ("failed", n(f.outage_failed)),
                    ("messages resent", n(f.resent_messages)),
                    ("resend writes", n(f.retries)),
                    ("answered already stored", n(f.deduplicated)),
                    ("lost", n(c.lost)),
                    ("duplicated", n(c.duplicated)),
                    ("reordered", n(c.reordered)),
                    ("stored twice", n(c.stored_twice)),
                ],
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn failover_figures_name_every_figure_once() {
        let f = FailoverReport {
            killed_node: "n2".into(),
            signal: "KILL".into(),
            kill_at_s: 1.0,
            drained_s: Some(2.5),
            ..FailoverReport::default()
        };
        let v = FailoverFigures::new(&f);
        assert_eq!(v.title, "Failover: kill -KILL n2 at 1.00 s into the phase");
        let all: Vec<&Figure> = v.rows.iter().flatten().collect();
        assert_eq!(all.len(), 20);
        assert!(all.contains(&&("backlog drained", "2.500 s".to_string())));
        assert!(all.contains(&&("back (end of outage)", "never".to_string())));
        let mut labels: Vec<&str> = v.rows[0].iter().map(|(l, _)| *l).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), v.rows[0].len());
    }
}
