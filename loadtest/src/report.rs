//! The results: a JSON summary (`summary.json`) and a self-contained HTML
//! report (`report.html`, inline SVG, no scripts or external files).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::failover::FailoverReport;
use crate::procmon::Series;
use crate::scenario::{Kind, Scenario};
use crate::stats::{Correctness, LatencySummary, Tick};
use crate::worker::PhaseResult;
use crate::Options;

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
    /// Connect: (RSS at end - RSS at start) / open connections.
    pub target_rss_per_conn: Option<f64>,
    /// CPU seconds of the generator (coordinator and workers).
    pub generator_cpu_s: f64,
    /// Seconds since the run started.
    pub t_start: f64,
    pub t_end: f64,
    /// Failover: the kill and the way back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverReport>,
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
        let rss = |t: f64| -> u64 {
            series
                .iter()
                .filter(|s| is_target(s))
                .map(|s| s.rss_at(t))
                .sum()
        };
        let (rss0, rss1) = (rss(t0), rss(t1));
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
            target_rss_per_conn: (sc.kind == Kind::Connect && r.conns_open > 0)
                .then(|| (rss1 as f64 - rss0 as f64) / r.conns_open as f64),
            generator_cpu_s: series
                .iter()
                .filter(|s| is_gen(s))
                .map(|s| s.cpu_between(t0, t1))
                .sum(),
            t_start: t0,
            t_end: t1,
            failover: None,
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
    pub fn new(
        sc: &Scenario,
        opts: &Options,
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
            (Some(h), Some(r)) if r.name == "redis" => h
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
            overrides: opts.overrides.clone(),
            started_unix_s,
            started_utc: utc(started_unix_s),
            host: host(),
            load_before: opts.load_before.clone(),
            load_after: loadavg(),
            targets,
            processes,
            sustained_rate,
            ratio_to_redis,
            correctness,
            ok,
        }
    }

    /// A few lines for the terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} ({:?}, mls {:?}) at {} on {}, load average {} before, {} after",
            self.scenario.name,
            self.scenario.kind,
            self.scenario.mls,
            self.started_utc,
            self.host,
            self.load_before,
            self.load_after
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "{}: setup {:.1}s ({} users)",
                t.name, t.setup_s, t.registered
            );
            for p in &t.phases {
                let _ = write!(
                    s,
                    "  phase {} @ {:.0}/s: sent {} acked {} ({:.0}/s) delivered {} ({:.0}/s)",
                    p.index,
                    p.target_rate,
                    p.sent,
                    p.acked,
                    p.acked_per_s,
                    p.delivered,
                    p.deliveries_per_s
                );
                if self.scenario.kind == Kind::Connect {
                    let _ = write!(s, ", open {}", p.conns_open);
                    if let Some(r) = p.target_rss_per_conn {
                        let _ = write!(s, ", node RSS/conn {:.1} KiB", r / 1024.0);
                    }
                }
                let _ = writeln!(s);
                for (k, l) in &p.latency_ms {
                    let _ = writeln!(
                        s,
                        "    {k:<10} n={:<8} p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                        l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                    );
                }
                let _ = write!(
                    s,
                    "    target CPU {:.2}s, generator CPU {:.2}s",
                    p.target_cpu_s, p.generator_cpu_s
                );
                if let Some(c) = p.target_cpu_per_1k_deliveries_s {
                    let _ = write!(s, ", target CPU per 1k deliveries {:.1} ms", c * 1000.0);
                }
                let _ = writeln!(
                    s,
                    ", target RSS {:.1} -> {:.1} MiB",
                    p.target_rss_start as f64 / 1048576.0,
                    p.target_rss_end as f64 / 1048576.0
                );
                if let Some(f) = &p.failover {
                    s.push_str(&failover_text(f));
                }
            }
        }
        if let Some(r) = self.sustained_rate {
            let _ = writeln!(
                s,
                "sustained: {r:.0} msg/s with e2e p99 < {} ms",
                self.scenario.fanout.sustain_p99_ms
            );
        } else if self.scenario.kind == Kind::Sustain {
            let _ = writeln!(s, "sustained: no step passed");
        }
        for r in &self.ratio_to_redis {
            let _ = writeln!(
                s,
                "hush/redis phase {}: deliveries/s x{:.3}, e2e p50 x{}, p99 x{}",
                r.phase,
                r.deliveries_per_s,
                r.e2e_p50.map_or("-".into(), |v| format!("{v:.2}")),
                r.e2e_p99.map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
        let c = &self.correctness;
        let _ = writeln!(
            s,
            "correctness: lost {} duplicated {} reordered {} stored_twice {} unacked {} send_errors {} payload_errors {} closed {} conn_failures {} -> {}",
            c.lost, c.duplicated, c.reordered, c.stored_twice, c.unacked, c.send_errors, c.payload_errors,
            c.closed_unexpected, c.conn_failures,
            if self.ok { "OK" } else { "FAILED" }
        );
        s
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.3} s"))
}

/// The failover lines of the terminal summary.
pub fn failover_text(f: &FailoverReport) -> String {
    format!(
        "    failover: kill -{} {} at {:.2}s; {} connections affected ({} unexpected drops, {} not back, {} attempts)\n\
         \x20     all sockets open {}, all resumed (caught up) {} (p50 {}), every group writable {}, back {}, backlog drained {}\n\
         \x20     during the outage: {} sent, {} acked, {} failed; {} messages resent ({} writes), {} answered as already stored\n",
        f.signal,
        f.killed_node,
        f.kill_at_s,
        f.affected_connections,
        f.unexpected_drops,
        f.not_reconnected,
        f.reconnect_attempts,
        secs(f.sockets_open_s),
        secs(f.reconnected_s),
        secs(f.reconnected_p50_s),
        secs(f.groups_writable_s),
        secs(f.back_s),
        secs(f.drained_s),
        f.outage_sent,
        f.outage_acked,
        f.outage_failed,
        f.resent_messages,
        f.retries,
        f.deduplicated,
    )
}

fn failover_html(f: &FailoverReport) -> String {
    let c = &f.correctness;
    let mut h = String::new();
    let _ = write!(
        h,
        "<h3>Failover: kill -{} {} at {:.2} s into the phase</h3>\
         <table><tr><th>affected connections</th><th>unexpected drops</th><th>not back</th><th>reconnect attempts</th>\
         <th>all sockets open</th><th>all resumed (caught up)</th><th>p50</th><th>every group writable</th><th>back (end of outage)</th><th>backlog drained</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\
         <table><tr><th>sent during outage</th><th>acked</th><th>failed</th><th>messages resent</th><th>resend writes</th>\
         <th>answered already stored</th><th>lost</th><th>duplicated</th><th>reordered</th><th>stored twice</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\
         <p>Times are seconds after the signal. Sockets open = a new WebSocket on a surviving node; resumed = its resume Sync caught up there; \
         writable = every group acknowledged a message scheduled after the kill; drained = every message \
         scheduled before \"back\" acknowledged and delivered to every receiver.</p>",
        esc(&f.signal),
        esc(&f.killed_node),
        f.kill_at_s,
        f.affected_connections,
        f.unexpected_drops,
        f.not_reconnected,
        f.reconnect_attempts,
        secs(f.sockets_open_s),
        secs(f.reconnected_s),
        secs(f.reconnected_p50_s),
        secs(f.groups_writable_s),
        secs(f.back_s),
        secs(f.drained_s),
        f.outage_sent,
        f.outage_acked,
        f.outage_failed,
        f.resent_messages,
        f.retries,
        f.deduplicated,
        c.lost,
        c.duplicated,
        c.reordered,
        c.stored_twice,
    );
    h.push_str("<p>");
    h.push_str(&chart(
        "slowest completion (intended send -> last receiver) by send time",
        "scheduled send time, seconds after the kill",
        "ms",
        &[Line {
            name: "max per 100 ms".into(),
            points: f.latency_by_send_time.clone(),
        }],
        None,
    ));
    h.push_str("</p>");
    h
}

// ---------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A line chart as an inline SVG. `x_labels` replaces numeric x ticks.
fn chart(
    title: &str,
    xl: &str,
    yl: &str,
    lines: &[Line],
    x_labels: Option<&[(f64, String)]>,
) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 300.0, 70.0, 160.0, 30.0, 45.0);
    let pts = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\
         <text x='{}' y='18' font-size='13' font-weight='bold'>{}</text>",
        ml,
        esc(title)
    );
    if x0 > x1 {
        let _ = write!(s, "<text x='{ml}' y='60'>no data</text></svg>");
        return s;
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.05;
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| mt + ph - y / y1 * ph;
    let _ = write!(
        s,
        "<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1='{ml}' x2='{x2}' y1='{yy}' y2='{yy}' stroke='#eee'/><text x='{tx}' y='{ty}' text-anchor='end'>{label}</text>",
            x2 = ml + pw,
            yy = sy(y),
            tx = ml - 4.0,
            ty = sy(y) + 4.0,
            label = fmt_num(y)
        );
    }
    match x_labels {
        Some(labels) => {
            for (x, l) in labels {
                let _ = write!(
                    s,
                    "<text x='{}' y='{}' text-anchor='middle'>{}</text>",
                    sx(*x),
                    mt + ph + 14.0,
                    esc(l)
                );
            }
        }
        None => {
            for i in 0..=5 {
                let x = x0 + (x1 - x0) * i as f64 / 5.0;
                let _ = write!(
                    s,
                    "<text x='{}' y='{}' text-anchor='middle'>{}</text>",
                    sx(x),
                    mt + ph + 14.0,
                    fmt_num(x)
                );
            }
        }
    }
    let _ = write!(
        s,
        "<text x='{}' y='{}' text-anchor='middle'>{}</text>\
         <text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>{}</text>",
        ml + pw / 2.0,
        h - 8.0,
        esc(xl),
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(yl)
    );
    for (i, l) in lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = l
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill='none' stroke='{c}' stroke-width='1.6' points='{}'/>\
             <rect x='{}' y='{}' width='12' height='3' fill='{c}'/><text x='{}' y='{}'>{}</text>",
            path.join(" "),
            ml + pw + 10.0,
            mt + 10.0 + 16.0 * i as f64,
            ml + pw + 26.0,
            mt + 14.0 + 16.0 * i as f64,
            esc(&l.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Per-second rates from cumulative points.
fn rates(points: &[Point], f: fn(&Point) -> u64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut last: Option<&Point> = None;
    for p in points {
        if let Some(l) = last {
            let dt = p.t - l.t;
            if dt >= 0.9 {
                out.push((p.t, (f(p).saturating_sub(f(l))) as f64 / dt));
                last = Some(p);
            }
        } else {
            last = Some(p);
        }
    }
    out
}

/// The self-contained HTML report.
pub fn html(s: &Summary) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset='utf-8'><title>hush-loadtest {}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:20px auto;color:#222}}\
         table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f4f4f4}}.ok{{color:#080;font-weight:bold}}.bad{{color:#b00;font-weight:bold}}\
         pre{{background:#f7f7f7;padding:8px;overflow:auto}}</style></head><body>",
        esc(&s.scenario.name)
    );
    let _ = write!(
        h,
        "<h1>hush-loadtest: {}</h1><p>{}</p><p>Started {} on {} (load average {} before, {} after). Kind <b>{:?}</b>, MLS mode <b>{:?}</b>, \
         {} worker process(es), {} source address(es). Result: <span class='{}'>{}</span></p>",
        esc(&s.scenario.name),
        esc(&s.scenario.description),
        esc(&s.started_utc),
        esc(&s.host),
        esc(&s.load_before),
        esc(&s.load_after),
        s.scenario.kind,
        s.scenario.mls,
        s.scenario.workers,
        s.scenario.source_addrs,
        if s.ok { "ok" } else { "bad" },
        if s.ok { "PASSED (correctness clean)" } else { "FAILED" }
    );
    let c = &s.correctness;
    let _ = write!(
        h,
        "<h2>Correctness</h2><table><tr><th>lost</th><th>duplicated</th><th>reordered</th><th>unacked</th>\
         <th>send errors</th><th>payload errors</th><th>closed</th><th>connect failures</th><th>stored twice</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        c.lost, c.duplicated, c.reordered, c.unacked, c.send_errors, c.payload_errors, c.closed_unexpected,
        c.conn_failures, c.stored_twice
    );
    if let Some(r) = s.sustained_rate {
        let _ = write!(
            h,
            "<p><b>Sustained rate:</b> {r:.0} msg/s with end-to-end p99 under {} ms.</p>",
            s.scenario.fanout.sustain_p99_ms
        );
    }
    if !s.ratio_to_redis.is_empty() {
        h.push_str("<h2>Hush / Redis</h2><table><tr><th>phase</th><th>deliveries/s</th><th>e2e p50</th><th>e2e p99</th></tr>");
        for r in &s.ratio_to_redis {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("×{v:.2}"));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>×{:.3}</td><td>{}</td><td>{}</td></tr>",
                r.phase,
                r.deliveries_per_s,
                f(r.e2e_p50),
                f(r.e2e_p99)
            );
        }
        h.push_str("</table>");
    }
    for t in &s.targets {
        let _ = write!(
            h,
            "<h2>{}</h2><p>Setup {:.1} s ({} users registered).</p><table><tr><th>phase</th><th>rate asked</th>\
             <th>sent</th><th>acked</th><th>acked/s</th><th>delivered</th><th>deliveries/s</th><th>conns</th>\
             <th>target CPU s</th><th>CPU ms / 1k deliveries</th><th>target RSS MiB</th><th>RSS/conn KiB</th><th>generator CPU s</th></tr>",
            esc(&t.name),
            t.setup_s,
            t.registered
        );
        for p in &t.phases {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{:.0}</td><td>{}</td>\
                 <td>{:.2}</td><td>{}</td><td>{:.1} → {:.1}</td><td>{}</td><td>{:.2}</td></tr>",
                p.index,
                p.target_rate,
                p.sent,
                p.acked,
                p.acked_per_s,
                p.delivered,
                p.deliveries_per_s,
                p.conns_open,
                p.target_cpu_s,
                p.target_cpu_per_1k_deliveries_s
                    .map_or("-".into(), |v| format!("{:.1}", v * 1000.0)),
                p.target_rss_start as f64 / 1048576.0,
                p.target_rss_end as f64 / 1048576.0,
                p.target_rss_per_conn
                    .map_or("-".into(), |v| format!("{:.1}", v / 1024.0)),
                p.generator_cpu_s
            );
        }
        h.push_str("</table><table><tr><th>phase</th><th>latency</th><th>n</th><th>p50 ms</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
        for p in &t.phases {
            for (k, l) in &p.latency_ms {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                    p.index, esc(k), l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
        h.push_str("</table>");
        for p in &t.phases {
            if let Some(f) = &p.failover {
                h.push_str(&failover_html(f));
            }
        }
        // Latency percentiles: x is the percentile's position in the list.
        let labels: Vec<(f64, String)> = [
            "0", "50", "75", "90", "95", "99", "99.5", "99.9", "99.95", "99.99", "100",
        ]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect();
        let mut lines = Vec::new();
        for p in &t.phases {
            for (k, curve) in &p.curves {
                lines.push(Line {
                    name: format!("p{} {k}", p.index),
                    points: curve
                        .iter()
                        .enumerate()
                        .map(|(i, (_, ms))| (i as f64, *ms))
                        .collect(),
                });
            }
        }
        h.push_str("<p>");
        h.push_str(&chart(
            &format!("{}: latency by percentile", t.name),
            "percentile",
            "ms",
            &lines,
            Some(&labels),
        ));
        h.push_str("</p><p>");
        h.push_str(&chart(
            &format!("{}: throughput", t.name),
            "seconds since start",
            "per second",
            &[
                Line {
                    name: "sent/s".into(),
                    points: rates(&t.series, |p| p.sent),
                },
                Line {
                    name: "acked/s".into(),
                    points: rates(&t.series, |p| p.acked),
                },
                Line {
                    name: "delivered/s".into(),
                    points: rates(&t.series, |p| p.delivered),
                },
            ],
            None,
        ));
        h.push_str("</p><p>");
        h.push_str(&chart(
            &format!("{}: open connections", t.name),
            "seconds since start",
            "connections",
            &[Line {
                name: "open".into(),
                points: t
                    .series
                    .iter()
                    .map(|p| (p.t, p.conns_open as f64))
                    .collect(),
            }],
            None,
        ));
        h.push_str("</p>");
    }
    let rss: Vec<Line> = s
        .processes
        .iter()
        .map(|p| Line {
            name: p.name.clone(),
            points: p
                .samples
                .iter()
                .map(|x| (x.t, x.rss as f64 / 1048576.0))
                .collect(),
        })
        .collect();
    let cpu: Vec<Line> = s
        .processes
        .iter()
        .map(|p| Line {
            name: p.name.clone(),
            points: p
                .samples
                .windows(2)
                .filter(|w| w[1].t - w[0].t > 0.05)
                .map(|w| {
                    (
                        w[1].t,
                        100.0 * (w[1].cpu_s - w[0].cpu_s) / (w[1].t - w[0].t),
                    )
                })
                .collect(),
        })
        .collect();
    h.push_str("<h2>Processes (from /proc)</h2><p>");
    h.push_str(&chart("RSS", "seconds since start", "MiB", &rss, None));
    h.push_str("</p><p>");
    h.push_str(&chart(
        "CPU (100% = one core)",
        "seconds since start",
        "% CPU",
        &cpu,
        None,
    ));
    h.push_str("</p>");
    let _ = write!(
        h,
        "<h2>Scenario</h2><pre>{}</pre><p>Overrides: {}</p></body></html>",
        esc(&toml::to_string_pretty(&s.scenario).unwrap_or_default()),
        esc(&s.overrides.join(" "))
    );
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
