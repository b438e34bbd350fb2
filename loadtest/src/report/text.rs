//! The report as a few lines for the terminal (what `hush-loadtest run`
//! prints at the end).

use std::fmt::Write as _;

use super::chaos::ChaosReport;
use super::model::{correctness_figures, FailoverFigures, Figure, PhaseReport, Summary};
use crate::checker::{Anomaly, FaultSpan};
use crate::scenario::Kind;

/// `label value, label value, ...`
fn figures_line(figures: &[Figure]) -> String {
    figures
        .iter()
        .map(|(l, v)| format!("{l} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refusals by code: "RATE_LIMITED 12, UNAVAILABLE 3".
pub fn refusals(p: &PhaseReport) -> String {
    p.refusals
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One phase: counts and rates, a line per histogram, resources, and the
/// failover figures if a node was killed in it.
fn phase_text(s: &mut String, kind: Kind, p: &PhaseReport) {
    let _ = write!(
        s,
        "  phase {} @ {:.0}/s: sent {} acked {} ({:.0}/s) delivered {} ({:.0}/s)",
        p.index, p.target_rate, p.sent, p.acked, p.acked_per_s, p.delivered, p.deliveries_per_s
    );
    if kind == Kind::Connect {
        let _ = write!(s, ", open {}", p.conns_open);
        if let Some(r) = p.target_rss_per_conn {
            let _ = write!(s, ", node RSS/conn {:.1} KiB", r / 1024.0);
        }
    }
    let _ = writeln!(s);
    if !p.refusals.is_empty() {
        let _ = writeln!(s, "    refused {} (each retried with backoff)", refusals(p));
    }
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
        ", target RSS {:.1} -> {:.1} MiB (max {:.1})",
        p.target_rss_start as f64 / 1048576.0,
        p.target_rss_end as f64 / 1048576.0,
        p.target_rss_max as f64 / 1048576.0
    );
    if !p.target_thread_cpu_s.is_empty() {
        let _ = writeln!(s, "    target CPU by thread: {}", thread_cpu(p));
    }
    if let Some(f) = &p.failover {
        let f = FailoverFigures::new(f);
        let _ = writeln!(s, "    {}", f.title);
        for row in &f.rows {
            let _ = writeln!(s, "      {}", figures_line(row));
        }
    }
}

impl Summary {
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
                phase_text(&mut s, self.scenario.kind, p);
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
        let redis = self.baseline_name();
        for r in &self.ratio_to_redis {
            let _ = writeln!(
                s,
                "hush/{redis} phase {}: deliveries/s x{:.3}, e2e p50 x{}, p99 x{}",
                r.phase,
                r.deliveries_per_s,
                r.e2e_p50.map_or("-".into(), |v| format!("{v:.2}")),
                r.e2e_p99.map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
        for n in &self.resources {
            let _ = writeln!(
                s,
                "resources of {} after warm-up ({:.0}-{:.0} s):",
                n.name, n.from_s, n.to_s
            );
            for (what, v) in n.rows() {
                let _ = writeln!(s, "    {what:<15} {v}");
            }
        }
        if let Some(c) = &self.chaos {
            chaos_text(&mut s, c);
        }
        let _ = writeln!(
            s,
            "correctness: {} -> {}",
            figures_line(&correctness_figures(&self.correctness)),
            if self.ok { "OK" } else { "FAILED" }
        );
        s
    }
}

/// Anomaly records the terminal shows (all are in `summary.json`).
const ANOMALY_LINES: usize = 25;

/// Seconds of `t` (Unix ns) after `start`, signed.
fn rel(t: u64, start: u64) -> f64 {
    (t as f64 - start as f64) / 1e9
}

/// A fault as it happened, on one line.
pub fn fault_line(f: &FaultSpan, start: u64) -> String {
    let end = f
        .end
        .map_or("never healed".into(), |e| format!("{:.2} s", rel(e, start)));
    let mut line = format!(
        "#{} {} {} at {:.2} s, ended {end}",
        f.id,
        f.kind.name(),
        f.nodes.join(","),
        rel(f.start, start)
    );
    if !f.notes.is_empty() {
        line += &format!(" ({})", f.notes.join("; "));
    }
    line
}

/// An anomaly record on one line.
pub fn anomaly_line(a: &Anomaly, start: u64) -> String {
    let who = match a.m {
        Some(m) => format!("g{} m{}", a.g, m),
        None => format!("g{}", a.g),
    };
    let on = a
        .node
        .as_deref()
        .map_or(String::new(), |n| format!(" on {n}"));
    let faults = if a.faults.is_empty() {
        "no fault around".into()
    } else {
        let ids: Vec<String> = a.faults.iter().map(|f| format!("#{f}")).collect();
        format!("faults {}", ids.join(" "))
    };
    format!(
        "{} {who}{on} at {:.2} s: {} [{faults}]",
        a.kind.name(),
        rel(a.t, start),
        a.detail
    )
}

/// The chaos run: schedule, faults as they happened, verdict, anomalies.
fn chaos_text(s: &mut String, c: &ChaosReport) {
    let v = &c.verdict;
    let _ =
        writeln!(
        s,
        "chaos: {} nodes{}, seed {} ({}), lease {} ms, probe {} ms, {} faults, {} history events",
        c.nodes.len(),
        if c.netns { " in network namespaces" } else { "" },
        c.seed,
        if c.generated { "generated" } else { "written-out schedule" },
        c.lease_ttl_ms,
        c.probe_ms,
        v.faults.len(),
        c.history_events
    );
    for f in &v.faults {
        let _ = writeln!(s, "  {}", fault_line(f, v.start_t));
    }
    if let Some(e) = &c.store_error {
        let _ = writeln!(s, "  store not checked: {e}");
    }
    let counts: Vec<String> = v
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{} {n} {}", k.name(), k.unit()))
        .collect();
    let _ = writeln!(
        s,
        "checker: {} -> {}",
        if counts.is_empty() {
            "no anomaly".to_string()
        } else {
            counts.join(", ")
        },
        if v.ok { "OK" } else { "FAILED" }
    );
    for a in v.anomalies.iter().take(ANOMALY_LINES) {
        let _ = writeln!(s, "  {}", anomaly_line(a, v.start_t));
    }
    let more =
        v.anomalies.len().saturating_sub(ANOMALY_LINES) as u64 + v.omitted.values().sum::<u64>();
    if more > 0 {
        let _ = writeln!(s, "  ... {more} more records in summary.json / report.html");
    }
}

/// The target's CPU by thread name, the busiest first, in seconds and as
/// a share of one core over the phase, e.g. `actix-server wo 6.10s (0.47
/// core)`; names under 1% of the total are left out.
fn thread_cpu(p: &PhaseReport) -> String {
    let total: f64 = p.target_thread_cpu_s.values().sum();
    let span = (p.t_end - p.t_start).max(1e-9);
    let mut by: Vec<(&String, &f64)> = p
        .target_thread_cpu_s
        .iter()
        .filter(|(_, &c)| c > 0.01 * total)
        .collect();
    by.sort_by(|a, b| b.1.total_cmp(a.1));
    by.iter()
        .map(|(name, &c)| format!("{name} {c:.2}s ({:.2} core)", c / span))
        .collect::<Vec<_>>()
        .join(", ")
}
