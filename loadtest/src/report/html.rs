//! The report as one self-contained HTML page (`report.html`: inline CSS
//! and SVG, no scripts or external files): the verdict and correctness,
//! the Redis ratios, per system measured its phases, latencies, failover
//! figures and charts, the processes' CPU and RSS, and the scenario.

use std::fmt::Write as _;

use super::chaos::ChaosReport;
use super::model::{
    correctness_figures, FailoverFigures, Figure, Point, Ratio, Summary, TargetReport,
};
use super::svg::{chart, esc, Line};
use crate::failover::FailoverReport;
use crate::procmon::{Sample, Series};

/// The self-contained HTML report.
pub fn html(s: &Summary) -> String {
    let mut h = String::new();
    head(&mut h, s);
    h.push_str("<h2>Correctness</h2>");
    h.push_str(&figures_table(&correctness_figures(&s.correctness)));
    if let Some(c) = &s.chaos {
        chaos_section(&mut h, c);
    }
    if let Some(r) = s.sustained_rate {
        let _ = write!(
            h,
            "<p><b>Sustained rate:</b> {r:.0} msg/s with end-to-end p99 under {} ms.</p>",
            s.scenario.fanout.sustain_p99_ms
        );
    }
    if !s.ratio_to_redis.is_empty() {
        ratio_table(&mut h, &s.ratio_to_redis);
    }
    for t in &s.targets {
        target_section(&mut h, t);
    }
    process_charts(&mut h, &s.processes);
    for n in &s.resources {
        let _ = write!(
            h,
            "<h3>{} after warm-up ({:.0}-{:.0} s)</h3>",
            esc(&n.name),
            n.from_s,
            n.to_s
        );
        h.push_str(&figures_table(&n.rows()));
    }
    let _ = write!(
        h,
        "<h2>Scenario</h2><pre>{}</pre><p>Overrides: {}</p></body></html>",
        esc(&toml::to_string_pretty(&s.scenario).unwrap_or_default()),
        esc(&s.overrides.join(" "))
    );
    h
}

/// The document head and the run's first lines: what, when, where, verdict.
fn head(h: &mut String, s: &Summary) {
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
}

/// One row of labelled figures as a table: labels above, values below.
fn figures_table(figures: &[Figure]) -> String {
    let mut t = String::from("<table><tr>");
    for (label, _) in figures {
        let _ = write!(t, "<th>{}</th>", esc(label));
    }
    t.push_str("</tr><tr>");
    for (_, value) in figures {
        let _ = write!(t, "<td>{}</td>", esc(value));
    }
    t.push_str("</tr></table>");
    t
}

fn ratio_table(h: &mut String, ratios: &[Ratio]) {
    h.push_str("<h2>Hush / Redis</h2><table><tr><th>phase</th><th>deliveries/s</th><th>e2e p50</th><th>e2e p99</th></tr>");
    for r in ratios {
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

/// One system measured: its phases, latencies, failover figures, charts.
fn target_section(h: &mut String, t: &TargetReport) {
    phase_table(h, t);
    latency_table(h, t);
    for p in &t.phases {
        if let Some(f) = &p.failover {
            failover_section(h, f);
        }
    }
    target_charts(h, t);
}

fn phase_table(h: &mut String, t: &TargetReport) {
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
    h.push_str("</table>");
    for p in t.phases.iter().filter(|p| !p.refusals.is_empty()) {
        let _ = write!(
            h,
            "<p>Phase {}: sends refused {} (each retried with backoff, same client_msg_id).</p>",
            p.index,
            esc(&super::text::refusals(p))
        );
    }
}

fn latency_table(h: &mut String, t: &TargetReport) {
    h.push_str("<table><tr><th>phase</th><th>latency</th><th>n</th><th>p50 ms</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
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
}

fn failover_section(h: &mut String, f: &FailoverReport) {
    let figures = FailoverFigures::new(f);
    let _ = write!(h, "<h3>{}</h3>", esc(&figures.title));
    for row in &figures.rows {
        h.push_str(&figures_table(row));
    }
    h.push_str(
        "<p>Times are seconds after the signal. Sockets open = a new WebSocket on a surviving node; resumed = its resume Sync caught up there; \
         writable = every group acknowledged a message scheduled after the kill; drained = every message \
         scheduled before \"back\" acknowledged and delivered to every receiver.</p>",
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
}

/// Latency by percentile, throughput and open connections over time.
fn target_charts(h: &mut String, t: &TargetReport) {
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
    let rate = |name: &str, f: fn(&Point) -> u64| Line {
        name: name.into(),
        points: rates(&t.series, f),
    };
    let charts = [
        chart(
            &format!("{}: latency by percentile", t.name),
            "percentile",
            "ms",
            &lines,
            Some(&labels),
        ),
        chart(
            &format!("{}: throughput", t.name),
            "seconds since start",
            "per second",
            &[
                rate("sent/s", |p| p.sent),
                rate("acked/s", |p| p.acked),
                rate("delivered/s", |p| p.delivered),
            ],
            None,
        ),
        chart(
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
        ),
    ];
    for c in charts {
        let _ = write!(h, "<p>{c}</p>");
    }
}

/// Per-second rates from cumulative points (over at least 0.9 s each).
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

/// RSS and CPU of every watched process over the run.
fn process_charts(h: &mut String, processes: &[Series]) {
    let per_process = |points: fn(&[Sample]) -> Vec<(f64, f64)>| -> Vec<Line> {
        processes
            .iter()
            .map(|p| Line {
                name: p.name.clone(),
                points: points(&p.samples),
            })
            .collect()
    };
    let rss = per_process(|samples| {
        samples
            .iter()
            .map(|x| (x.t, x.rss as f64 / 1048576.0))
            .collect()
    });
    // CPU % between consecutive samples at least 50 ms apart.
    let cpu = per_process(|samples| {
        samples
            .windows(2)
            .filter(|w| w[1].t - w[0].t > 0.05)
            .map(|w| {
                (
                    w[1].t,
                    100.0 * (w[1].cpu_s - w[0].cpu_s) / (w[1].t - w[0].t),
                )
            })
            .collect()
    });
    let fds = per_process(|samples| {
        samples
            .iter()
            .filter_map(|x| x.fds.map(|f| (x.t, f)))
            .collect()
    });
    h.push_str("<h2>Processes (from /proc)</h2><p>");
    h.push_str(&chart("RSS", "seconds since start", "MiB", &rss, None));
    h.push_str("</p><p>");
    h.push_str(&chart(
        "Open files",
        "seconds since start",
        "files",
        &fds,
        None,
    ));
    h.push_str("</p><p>");
    h.push_str(&chart(
        "CPU (100% = one core)",
        "seconds since start",
        "% CPU",
        &cpu,
        None,
    ));
    h.push_str("</p>");
}

/// The chaos run: the checker's verdict by kind, the timeline, the faults
/// as they happened, and the anomaly records with their context.
fn chaos_section(h: &mut String, c: &ChaosReport) {
    let v = &c.verdict;
    let _ = write!(
        h,
        "<h2>Chaos: checker <span class='{}'>{}</span></h2><p>{} nodes{}; seed {} ({}); lease {} ms, SWIM probe {} ms; \
         {} faults; {} events in history.jsonl; store {}.</p>",
        if v.ok { "ok" } else { "bad" },
        if v.ok { "OK" } else { "FAILED" },
        c.nodes.len(),
        if c.netns { " in network namespaces" } else { "" },
        c.seed,
        if c.generated { "generated" } else { "written-out schedule" },
        c.lease_ttl_ms,
        c.probe_ms,
        v.faults.len(),
        c.history_events,
        match &c.store_error {
            Some(e) => format!("not checked ({})", esc(e)),
            None if v.store_checked => "checked".into(),
            None => "not checked".into(),
        }
    );
    h.push_str("<table><tr><th>anomaly</th><th>count</th><th>of</th><th>records</th></tr>");
    for (k, n) in &v.counts {
        let records = v.anomalies.iter().filter(|a| a.kind == *k).count() as u64
            + v.omitted.get(k).copied().unwrap_or(0);
        let _ = write!(
            h,
            "<tr><td style='text-align:left' class='{}'>{}</td><td>{n}</td><td>{}</td><td>{records}</td></tr>",
            if *n > 0 { "bad" } else { "" },
            k.name(),
            k.unit()
        );
    }
    let t = &v.totals;
    let _ = write!(
        h,
        "</table><p>History: {} groups, {} members, {} messages ({} writes, {} acknowledged, {} refusals), \
         {} deliveries, {} sockets opened, {} lost; {} entries of these groups in the store.</p><p>{}</p>",
        t.groups,
        t.members,
        t.messages,
        t.send_attempts,
        t.acked,
        t.refusals,
        t.deliveries,
        t.connects,
        t.disconnects,
        t.stored,
        super::timeline::svg(c)
    );
    h.push_str("<h3>Faults</h3><table><tr><th>#</th><th>kind</th><th>nodes</th><th>start s</th><th>end s</th><th>notes</th></tr>");
    let rel = |t: u64| (t as f64 - v.start_t as f64) / 1e9;
    for f in &v.faults {
        let _ = write!(
            h,
            "<tr><td>{}</td><td style='color:{}'>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td style='text-align:left'>{}</td></tr>",
            f.id,
            super::timeline::fault_color(f.kind),
            f.kind.name(),
            esc(&f.nodes.join(", ")),
            rel(f.start),
            f.end.map_or("never".into(), |e| format!("{:.2}", rel(e))),
            esc(&f.notes.join("; "))
        );
    }
    h.push_str("</table>");
    if v.anomalies.is_empty() {
        return;
    }
    h.push_str(
        "<h3>Anomalies</h3><p>Each record: a member (group g, member m; m0 sends) and the seqs it \
         concerns, the node it was connected to then, when (seconds after the phase start; for a \
         seq, when it was first acknowledged), and the faults active from 10 s before to 1 s after.</p>\
         <table><tr><th>kind</th><th>at s</th><th>group</th><th>member</th><th>node</th><th>seqs</th>\
         <th>count</th><th>faults</th><th>detail</th></tr>",
    );
    for a in &v.anomalies {
        let faults: Vec<String> = a.faults.iter().map(|f| format!("#{f}")).collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style='text-align:left'>{}</td></tr>",
            a.kind.name(),
            rel(a.t),
            a.g,
            a.m.map_or("-".into(), |m| m.to_string()),
            esc(a.node.as_deref().unwrap_or("-")),
            a.seqs.map_or("-".into(), |(x, y)| if x == y { x.to_string() } else { format!("{x}..={y}") }),
            a.count,
            faults.join(" "),
            esc(&a.detail)
        );
    }
    h.push_str("</table>");
}
