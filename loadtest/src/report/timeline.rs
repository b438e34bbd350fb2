//! The chaos timeline as one inline SVG with a shared time axis (seconds
//! after the phase start): a lane per node with its faults, the
//! throughput (acknowledged and delivered per second), the end-to-end
//! latency (p99 and max per second), and a lane per anomaly kind with a
//! tick per anomaly record. Faults shade the panels below them, so a dip
//! or a spike lines up with its cause.

use std::fmt::Write as _;

use super::chaos::{ChaosReport, Second};
use super::svg::esc;
use crate::checker::AnomalyKind;
use crate::history::FaultKind;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 18.0;
const PANEL: f64 = 140.0;
const GAP: f64 = 26.0;

/// A fault kind's colour.
pub fn fault_color(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Kill => "#d62728",
        FaultKind::Pause => "#ff7f0e",
        FaultKind::Restart => "#9467bd",
        FaultKind::RollingRestart => "#8c564b",
        FaultKind::IsolatePeers => "#1f77b4",
        FaultKind::IsolateClients => "#17becf",
        FaultKind::Split => "#2ca02c",
    }
}

fn anomaly_color(k: AnomalyKind) -> &'static str {
    match k {
        AnomalyKind::Deaf | AnomalyKind::Missing | AnomalyKind::AckLost => "#d62728",
        AnomalyKind::Duplicate | AnomalyKind::Reordered => "#ff7f0e",
        AnomalyKind::Unacked | AnomalyKind::DisconnectedAtEnd => "#7f7f7f",
        _ => "#9467bd",
    }
}

/// The x scale: seconds after the start onto the plot's width.
struct X {
    end_s: f64,
}

impl X {
    fn at(&self, secs: f64) -> f64 {
        LEFT + secs.clamp(0.0, self.end_s) / self.end_s * (WIDTH - LEFT - RIGHT)
    }
}

/// A named, coloured line of (seconds, value) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line panel: `lines` at `top`.
fn panel(s: &mut String, x: &X, top: f64, title: &str, unit: &str, lines: &[Line<'_>]) {
    let ymax = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let sy = |y: f64| top + PANEL - y / ymax * PANEL;
    let _ = write!(
        s,
        "<rect x='{LEFT}' y='{top}' width='{}' height='{PANEL}' fill='none' stroke='#888'/>\
         <text x='{LEFT}' y='{}' font-weight='bold'>{}</text>\
         <text x='{}' y='{}' text-anchor='end'>{:.0} {}</text><text x='{}' y='{}' text-anchor='end'>0</text>",
        WIDTH - LEFT - RIGHT,
        top - 6.0,
        esc(title),
        LEFT - 4.0,
        top + 10.0,
        ymax,
        esc(unit),
        LEFT - 4.0,
        top + PANEL
    );
    for (k, (name, color, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(t, y)| format!("{:.1},{:.1}", x.at(*t), sy(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill='none' stroke='{color}' stroke-width='1.4' points='{}'/>\
             <text x='{}' y='{}' fill='{color}' text-anchor='end'>{}</text>",
            path.join(" "),
            WIDTH - RIGHT - 4.0,
            top + 12.0 + 13.0 * k as f64,
            esc(name)
        );
    }
}

fn series(tl: &[Second], f: fn(&Second) -> f64) -> Vec<(f64, f64)> {
    tl.iter().map(|p| (p.t + 0.5, f(p))).collect()
}

/// The timeline of a chaos run.
pub fn svg(c: &ChaosReport) -> String {
    let v = &c.verdict;
    let start = v.start_t;
    let rel = |t: u64| (t as f64 - start as f64) / 1e9;
    let end_s = v
        .faults
        .iter()
        .map(|f| rel(f.end.unwrap_or(v.end_t)))
        .chain(std::iter::once(c.timeline.len() as f64))
        .chain(std::iter::once(rel(v.end_t)))
        .fold(1.0f64, f64::max);
    let x = X { end_s };
    let lanes_top = 30.0;
    let lanes_h = LANE * c.nodes.len() as f64;
    let tp_top = lanes_top + lanes_h + GAP;
    let lat_top = tp_top + PANEL + GAP;
    let kinds: Vec<AnomalyKind> = AnomalyKind::ALL
        .into_iter()
        .filter(|k| v.anomalies.iter().any(|a| a.kind == *k))
        .collect();
    let an_top = lat_top + PANEL + GAP;
    let height = an_top + LANE * kinds.len().max(1) as f64 + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' font-family='sans-serif' font-size='11'>\
         <text x='{LEFT}' y='16' font-size='13' font-weight='bold'>Faults, throughput, latency and anomalies (seconds after the phase start)</text>"
    );
    // Faults: shading over the panels, and a bar in each node's lane.
    for f in &v.faults {
        let (x0, x1) = (x.at(rel(f.start)), x.at(rel(f.end.unwrap_or(v.end_t))));
        let w = (x1 - x0).max(2.0);
        let color = fault_color(f.kind);
        let _ = write!(
            s,
            "<rect x='{x0:.1}' y='{tp_top}' width='{w:.1}' height='{:.1}' fill='{color}' opacity='0.08'/>",
            an_top - tp_top - GAP
        );
        for n in &f.nodes {
            let Some(i) = c.nodes.iter().position(|id| id == n) else {
                continue;
            };
            let y = lanes_top + LANE * i as f64;
            let _ = write!(
                s,
                "<rect x='{x0:.1}' y='{:.1}' width='{w:.1}' height='{:.1}' fill='{color}' opacity='0.8'>\
                 <title>{}</title></rect><text x='{:.1}' y='{:.1}' fill='#fff' font-size='10'>#{} {}</text>",
                y + 2.0,
                LANE - 4.0,
                esc(&super::text::fault_line(f, start)),
                x0 + 2.0,
                y + LANE - 5.0,
                f.id,
                f.kind.name()
            );
        }
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let y = lanes_top + LANE * i as f64;
        let _ = write!(
            s,
            "<text x='{}' y='{:.1}' text-anchor='end'>{}</text>\
             <line x1='{LEFT}' x2='{}' y1='{:.1}' y2='{:.1}' stroke='#eee'/>",
            LEFT - 6.0,
            y + LANE - 5.0,
            esc(n),
            WIDTH - RIGHT,
            y + LANE,
            y + LANE
        );
    }
    let tl = &c.timeline;
    panel(
        &mut s,
        &x,
        tp_top,
        "throughput",
        "/s",
        &[
            ("acked/s", "#1f77b4", series(tl, |p| p.acked as f64)),
            ("delivered/s", "#2ca02c", series(tl, |p| p.delivered as f64)),
            ("refused/s", "#d62728", series(tl, |p| p.refused as f64)),
        ],
    );
    panel(
        &mut s,
        &x,
        lat_top,
        "end-to-end latency (due -> delivered)",
        "ms",
        &[
            ("p99", "#ff7f0e", series(tl, |p| p.e2e_p99_ms)),
            ("max", "#d62728", series(tl, |p| p.e2e_max_ms)),
            ("p50", "#1f77b4", series(tl, |p| p.e2e_p50_ms)),
        ],
    );
    let _ = write!(
        s,
        "<text x='{LEFT}' y='{}' font-weight='bold'>anomalies{}</text>",
        an_top - 6.0,
        if kinds.is_empty() { ": none" } else { "" }
    );
    for (i, k) in kinds.iter().enumerate() {
        let y = an_top + LANE * i as f64;
        let _ = write!(
            s,
            "<text x='{}' y='{:.1}' text-anchor='end'>{}</text>",
            LEFT - 6.0,
            y + LANE - 5.0,
            k.name()
        );
        for a in v.anomalies.iter().filter(|a| a.kind == *k) {
            let _ = write!(
                s,
                "<rect x='{:.1}' y='{:.1}' width='2' height='{:.1}' fill='{}'><title>{}</title></rect>",
                x.at(rel(a.t)),
                y + 2.0,
                LANE - 4.0,
                anomaly_color(*k),
                esc(&super::text::anomaly_line(a, start))
            );
        }
    }
    // The time axis under everything.
    let axis_y = height - 24.0;
    for i in 0..=10 {
        let t = end_s * i as f64 / 10.0;
        let _ = write!(
            s,
            "<text x='{:.1}' y='{axis_y}' text-anchor='middle'>{t:.0}</text>",
            x.at(t)
        );
    }
    let _ = write!(
        s,
        "<text x='{}' y='{}' text-anchor='middle'>seconds after the phase start</text></svg>",
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 8.0
    );
    s
}
