//! What a long run watches for leaks: per node the process's RSS and open
//! files (from the process monitor's samples), its actor counts (the
//! node's own `/metrics` gauges `hush_group_actors` and
//! `hush_session_actors`) and the size of its store folder, sampled every
//! [`PROBE_INTERVAL`]; and the trend of each after warm-up (least-squares
//! slope per 10 minutes), which is what a soak run reports. A leaking actor
//! or buffer shows as a slope that does not go to zero; the store grows by
//! design, so its figure is bytes per acknowledged message.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::procmon::Series;
use crate::report::Point;
use crate::sync::lock;

/// How often a node's `/metrics` and store folder are read.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// One probe of one node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NodeSample {
    /// Seconds since the monitor started (the process monitor's clock).
    pub t: f64,
    pub group_actors: Option<f64>,
    pub session_actors: Option<f64>,
    /// Bytes of every file under the node's data folder (store, WAL).
    pub store_bytes: Option<u64>,
}

/// The probes of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSeries {
    pub name: String,
    pub samples: Vec<NodeSample>,
}

/// Reads `/metrics` and the data folder of nodes until dropped.
pub struct Prober {
    series: Arc<Mutex<Vec<NodeSeries>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Prober {
    /// Probes each `(name, base url, data folder)` every `every`; `start`
    /// is the process monitor's start, so both share one time axis.
    pub fn start(
        nodes: Vec<(String, String, Option<PathBuf>)>,
        start: Instant,
        every: Duration,
    ) -> Self {
        let series = Arc::new(Mutex::new(Vec::new()));
        // reqwest is built with rustls but no provider chosen: the SDK's.
        hush_client::tls::use_ring();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let tasks = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (name, url, data))| {
                lock(&series).push(NodeSeries {
                    name,
                    samples: Vec::new(),
                });
                let (series, http) = (series.clone(), http.clone());
                tokio::spawn(async move {
                    let mut iv = tokio::time::interval(every);
                    loop {
                        iv.tick().await;
                        let s = probe(&http, &url, data.as_deref(), start).await;
                        lock(&series)[i].samples.push(s);
                    }
                })
            })
            .collect();
        Self { series, tasks }
    }

    /// The probes so far.
    pub fn series(&self) -> Vec<NodeSeries> {
        lock(&self.series).clone()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn probe(
    http: &reqwest::Client,
    url: &str,
    data: Option<&Path>,
    start: Instant,
) -> NodeSample {
    let text = match http.get(format!("{url}/metrics")).send().await {
        Ok(r) if r.status().is_success() => r.text().await.ok(),
        _ => None,
    };
    let gauge = |name: &str| text.as_deref().and_then(|t| gauge_value(t, name));
    NodeSample {
        t: start.elapsed().as_secs_f64(),
        group_actors: gauge("hush_group_actors"),
        session_actors: gauge("hush_session_actors"),
        store_bytes: data.map(folder_bytes),
    }
}

/// The value of an unlabelled gauge in Prometheus text.
fn gauge_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Bytes of every regular file under `dir` (0 if it is gone).
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// One quantity's trend after warm-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trend {
    /// Value at the first sample after warm-up, and at the last.
    pub first: f64,
    pub last: f64,
    pub max: f64,
    /// Least-squares slope, per 10 minutes.
    pub slope_per_10min: f64,
}

/// Every watched quantity of one node after warm-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeTrends {
    pub name: String,
    /// Seconds since the start the trends begin (the warm-up's end) and end.
    pub from_s: f64,
    pub to_s: f64,
    pub rss_bytes: Option<Trend>,
    pub open_files: Option<Trend>,
    pub group_actors: Option<Trend>,
    pub session_actors: Option<Trend>,
    pub store_bytes: Option<Trend>,
    /// Store growth per acknowledged message over the same window.
    pub store_bytes_per_acked: Option<f64>,
}

/// The trend of `(t, value)` points from `from_s` on (`None` with fewer
/// than two points there).
pub fn trend(points: &[(f64, f64)], from_s: f64) -> Option<Trend> {
    let p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, _)| *t >= from_s)
        .collect();
    if p.len() < 2 {
        return None;
    }
    let n = p.len() as f64;
    let mt = p.iter().map(|x| x.0).sum::<f64>() / n;
    let mv = p.iter().map(|x| x.1).sum::<f64>() / n;
    let cov: f64 = p.iter().map(|(t, v)| (t - mt) * (v - mv)).sum();
    let var: f64 = p.iter().map(|(t, _)| (t - mt) * (t - mt)).sum();
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    Some(Trend {
        first: p[0].1,
        last: p[p.len() - 1].1,
        max: p.iter().map(|x| x.1).fold(f64::MIN, f64::max),
        slope_per_10min: slope * 600.0,
    })
}

/// The window a run's trends cover, from its counters over time: from the
/// end of warm-up (the first send plus a fifth of the sending time, at
/// most two minutes) to the last send, and the messages acknowledged in it.
pub fn steady_window(series: &[Point]) -> Option<(f64, f64, u64)> {
    let first = series.iter().find(|p| p.sent > 0)?;
    let last_sent = series.last()?.sent;
    let last = series.iter().find(|p| p.sent == last_sent)?;
    let from = first.t + ((last.t - first.t) / 5.0).min(120.0);
    let acked_at = |t: f64| {
        series
            .iter()
            .take_while(|p| p.t <= t)
            .last()
            .map_or(0, |p| p.acked)
    };
    Some((
        from,
        last.t,
        acked_at(last.t).saturating_sub(acked_at(from)),
    ))
}

/// Trends of every node from `from_s` to `to_s`: processes named like a
/// probe series (`node <id>`) give RSS and open files. `acked` is the
/// number of messages acknowledged between the two times.
pub fn node_trends(
    processes: &[Series],
    probes: &[NodeSeries],
    from_s: f64,
    to_s: f64,
    acked: u64,
) -> Vec<NodeTrends> {
    probes
        .iter()
        .map(|n| {
            let within = |t: f64| t <= to_s;
            let proc_ = processes.iter().find(|p| p.name == n.name);
            let of_proc = |f: fn(&crate::procmon::Sample) -> Option<f64>| {
                proc_.and_then(|p| {
                    let pts: Vec<(f64, f64)> = p
                        .samples
                        .iter()
                        .filter(|s| within(s.t))
                        .filter_map(|s| f(s).map(|v| (s.t, v)))
                        .collect();
                    trend(&pts, from_s)
                })
            };
            let of_probe = |f: fn(&NodeSample) -> Option<f64>| {
                let pts: Vec<(f64, f64)> = n
                    .samples
                    .iter()
                    .filter(|s| within(s.t))
                    .filter_map(|s| f(s).map(|v| (s.t, v)))
                    .collect();
                trend(&pts, from_s)
            };
            let store_bytes = of_probe(|s| s.store_bytes.map(|b| b as f64));
            NodeTrends {
                name: n.name.clone(),
                from_s,
                to_s,
                rss_bytes: of_proc(|s| Some(s.rss as f64)),
                open_files: of_proc(|s| s.fds),
                group_actors: of_probe(|s| s.group_actors),
                session_actors: of_probe(|s| s.session_actors),
                store_bytes_per_acked: store_bytes
                    .as_ref()
                    .filter(|_| acked > 0)
                    .map(|b| (b.last - b.first) / acked as f64),
                store_bytes,
            }
        })
        .collect()
}

impl NodeTrends {
    /// (quantity, "first -> last (max M), slope S per 10 min") for each
    /// quantity measured, formatted once for the text and HTML reports.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mib = 1048576.0;
        let row = |t: &Trend, div: f64, unit: &str| {
            format!(
                "{:.1} -> {:.1} {unit} (max {:.1}), slope {:+.2} {unit} per 10 min",
                t.first / div,
                t.last / div,
                t.max / div,
                t.slope_per_10min / div
            )
        };
        let mut out = Vec::new();
        if let Some(t) = &self.rss_bytes {
            out.push(("RSS", row(t, mib, "MiB")));
        }
        if let Some(t) = &self.open_files {
            out.push(("open files", row(t, 1.0, "")));
        }
        if let Some(t) = &self.group_actors {
            out.push(("group actors", row(t, 1.0, "")));
        }
        if let Some(t) = &self.session_actors {
            out.push(("session actors", row(t, 1.0, "")));
        }
        if let Some(t) = &self.store_bytes {
            let per = self
                .store_bytes_per_acked
                .map_or(String::new(), |b| format!("; {b:.0} B per acked message"));
            out.push(("store", format!("{}{per}", row(t, mib, "MiB"))));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_has_no_slope_and_a_line_has_its_own() {
        let flat: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 5.0)).collect();
        let t = trend(&flat, 10.0).unwrap();
        assert_eq!(
            (t.first, t.last, t.max, t.slope_per_10min),
            (5.0, 5.0, 5.0, 0.0)
        );
        // 2 per second = 1,200 per 10 minutes; warm-up points are ignored.
        let mut line: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 2.0 * i as f64)).collect();
        line[0].1 = 1e9;
        let t = trend(&line, 1.0).unwrap();
        assert!((t.slope_per_10min - 1200.0).abs() < 1e-6, "{t:?}");
        assert_eq!(t.first, 2.0);
        assert!(trend(&line, 99.0).is_none(), "one point is no trend");
    }

    #[test]
    fn the_steady_window_skips_warm_up_and_counts_its_acks() {
        let pt = |t: f64, sent: u64, acked: u64| Point {
            t,
            sent,
            acked,
            delivered: 0,
            conns_open: 0,
        };
        // Setup until 10 s, sending 10..110 s, drain after.
        let mut s = vec![pt(0.0, 0, 0), pt(10.0, 1, 0)];
        s.extend((1..=100).map(|i| pt(10.0 + i as f64, 10 * i, 10 * i - 5)));
        s.push(pt(200.0, 1000, 1000));
        let (from, to, acked) = steady_window(&s).unwrap();
        assert_eq!((from, to), (30.0, 110.0));
        assert_eq!(acked, 995 - 195);
        assert!(steady_window(&[pt(0.0, 0, 0)]).is_none());
    }

    #[test]
    fn reads_an_unlabelled_gauge() {
        let text = "# HELP hush_group_actors x\n# TYPE hush_group_actors gauge\n\
                    hush_group_actors 12\nhush_group_actors_total 99\nhush_session_actors 3.5\n";
        assert_eq!(gauge_value(text, "hush_group_actors"), Some(12.0));
        assert_eq!(gauge_value(text, "hush_session_actors"), Some(3.5));
        assert_eq!(gauge_value(text, "hush_missing"), None);
    }

    #[test]
    fn counts_a_folder_and_its_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(folder_bytes(dir.path()), 15);
        assert_eq!(folder_bytes(&dir.path().join("gone")), 0);
    }
}
