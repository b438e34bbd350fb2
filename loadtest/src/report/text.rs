//! The report as a few lines for the terminal (what `hush-loadtest run`
//! prints at the end).

use std::fmt::Write as _;

use super::model::{correctness_figures, FailoverFigures, Figure, PhaseReport, Summary};
use crate::scenario::Kind;

/// `label value, label value, ...`
fn figures_line(figures: &[Figure]) -> String {
    figures
        .iter()
        .map(|(l, v)| format!("{l} {v}"))
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
        let _ = writeln!(
            s,
            "correctness: {} -> {}",
            figures_line(&correctness_figures(&self.correctness)),
            if self.ok { "OK" } else { "FAILED" }
        );
        s
    }
}
