//! `--repeat N`: one scenario run N times, each with its own output
//! directory (`<out>/run-<i>`), and the headline figures of every run with
//! their median, min and max (`repeat.json`, and a table on the terminal).
//! Single runs on a shared machine drift; the median of several, with the
//! load average of each run beside it, is the figure to quote.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::report::Summary;

/// The headline figures of one run, by name (`hush.p0.e2e.p99_ms`, ...).
pub fn headline(s: &Summary) -> BTreeMap<String, f64> {
    let mut h = BTreeMap::new();
    for t in &s.targets {
        for p in &t.phases {
            let k = |name: &str| format!("{}.p{}.{name}", t.name, p.index);
            h.insert(k("acked_per_s"), p.acked_per_s);
            if p.delivered > 0 {
                h.insert(k("deliveries_per_s"), p.deliveries_per_s);
            }
            for (name, l) in &p.latency_ms {
                h.insert(k(&format!("{name}.p50_ms")), l.p50_ms);
                h.insert(k(&format!("{name}.p99_ms")), l.p99_ms);
                h.insert(k(&format!("{name}.p999_ms")), l.p999_ms);
            }
            if let Some(c) = p.target_cpu_per_1k_deliveries_s {
                h.insert(k("cpu_ms_per_1k_deliveries"), c * 1000.0);
            }
            if let Some(r) = p.target_rss_per_conn {
                h.insert(k("rss_kib_per_conn"), r / 1024.0);
            }
            h.insert(k("conns_open"), p.conns_open as f64);
            if let Some(f) = &p.failover {
                let mut opt = |name: &str, v: Option<f64>| {
                    if let Some(v) = v {
                        h.insert(k(&format!("failover.{name}")), v);
                    }
                };
                opt("sockets_open_s", f.sockets_open_s);
                opt("reconnected_s", f.reconnected_s);
                opt("groups_writable_s", f.groups_writable_s);
                opt("back_s", f.back_s);
                opt("drained_s", f.drained_s);
                h.insert(
                    k("failover.affected_connections"),
                    f.affected_connections as f64,
                );
                h.insert(k("failover.outage_sent"), f.outage_sent as f64);
                h.insert(k("failover.outage_acked"), f.outage_acked as f64);
                h.insert(k("failover.outage_failed"), f.outage_failed as f64);
            }
        }
    }
    let redis = s.baseline_name();
    for r in &s.ratio_to_redis {
        let k = |name: &str| format!("hush/{redis}.p{}.{name}", r.phase);
        h.insert(k("deliveries_per_s"), r.deliveries_per_s);
        if let Some(v) = r.e2e_p50 {
            h.insert(k("e2e.p50"), v);
        }
        if let Some(v) = r.e2e_p99 {
            h.insert(k("e2e.p99"), v);
        }
    }
    if let Some(r) = s.sustained_rate {
        h.insert("sustained_rate".into(), r);
    }
    let c = &s.correctness;
    h.insert(
        "correctness.lost+dup+reordered".into(),
        (c.lost + c.duplicated + c.reordered + c.stored_twice) as f64,
    );
    h
}

/// Median, min and max of one figure over the runs that have it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    pub runs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

/// Median (the mean of the middle two for an even count), min, max.
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        runs: n,
        median,
        min: v[0],
        max: v[n - 1],
        values: values.to_vec(),
    })
}

/// One run of a repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub out_dir: String,
    pub started_utc: String,
    pub load_before: String,
    pub load_after: String,
    pub ok: bool,
}

/// `repeat.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repeat {
    pub scenario: String,
    pub overrides: Vec<String>,
    pub runs: Vec<RunInfo>,
    pub figures: BTreeMap<String, Spread>,
}

impl Repeat {
    pub fn new(summaries: &[(String, Summary)]) -> Self {
        let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (_, s) in summaries {
            for (k, v) in headline(s) {
                all.entry(k).or_default().push(v);
            }
        }
        let first = summaries.first().map(|(_, s)| s);
        Self {
            scenario: first.map(|s| s.scenario.name.clone()).unwrap_or_default(),
            overrides: first.map(|s| s.overrides.clone()).unwrap_or_default(),
            runs: summaries
                .iter()
                .map(|(dir, s)| RunInfo {
                    out_dir: dir.clone(),
                    started_utc: s.started_utc.clone(),
                    load_before: s.load_before.clone(),
                    load_after: s.load_after.clone(),
                    ok: s.ok,
                })
                .collect(),
            figures: all
                .into_iter()
                .filter_map(|(k, v)| spread(&v).map(|s| (k, s)))
                .collect(),
        }
    }

    /// The table for the terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "repeat: {} x{} {}",
            self.scenario,
            self.runs.len(),
            self.overrides.join(" ")
        );
        for (i, r) in self.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  run {}: {} load {} -> {} {} ({})",
                i + 1,
                r.started_utc,
                r.load_before,
                r.load_after,
                if r.ok { "ok" } else { "FAILED" },
                r.out_dir
            );
        }
        let _ = writeln!(
            s,
            "  {:<44} {:>11} {:>11} {:>11}  runs",
            "figure", "median", "min", "max"
        );
        for (k, v) in &self.figures {
            let _ = writeln!(
                s,
                "  {k:<44} {:>11.3} {:>11.3} {:>11.3}  {}",
                v.median, v.min, v.max, v.runs
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_median_min_max() {
        let s = super::spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = super::spread(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(super::spread(&[]).is_none());
    }
}
