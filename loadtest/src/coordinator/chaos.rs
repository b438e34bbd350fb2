//! A chaos run end to end: the network namespaces, the cluster in them,
//! the fault schedule (written out or generated from the seed), the
//! fan-out load through one measured phase while the faults run, the
//! drain, then the history merged (`history.jsonl`), the store read, the
//! checker's verdict, and the report.
//!
//! The run's own events (meta, marks, faults) go to a part of their own
//! (`history-coordinator.jsonl`); the workers write theirs; the merge
//! makes one history ordered by time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use super::measure::{measure, System};
use super::{Options, Outcome, SAMPLE_INTERVAL};
use crate::chaos::faults::{self, Target};
use crate::chaos::net::Net;
use crate::chaos::nodes::Cluster;
use crate::chaos::schedule::{self, FaultSpec, Params};
use crate::chaos::store;
use crate::checker::{self, CheckOptions};
use crate::clock::now_ns;
use crate::history::{self, Event, FaultKind, Mark, Recorder};
use crate::node::{self, NodeCmd};
use crate::procmon::Monitor;
use crate::report::{self, ChaosReport, Summary};
use crate::scenario::{Chaos, Scenario};

/// Node ports inside their namespaces (each namespace has its own).
const GATEWAY_PORT: u16 = 7300;
const QUIC_PORT: u16 = 7400;

/// The coordinator's part of the history.
const COORDINATOR_PART: &str = "history-coordinator.jsonl";

/// Runs a chaos scenario in `out_dir`.
pub async fn run(
    sc: &Scenario,
    opts: &Options,
    out_dir: &Path,
    started_unix_s: u64,
) -> anyhow::Result<Outcome> {
    let c = &sc.chaos;
    let ids = c.node_ids();
    let net = if c.netns {
        let clients = usize::from(sc.source_addrs);
        let subnet = c.subnet.clone();
        let n = c.nodes;
        Some(Arc::new(
            tokio::task::spawn_blocking(move || Net::create(n, clients, &subnet)).await??,
        ))
    } else {
        None
    };
    let bin = node::node_bin(opts.node_bin.as_deref())?;
    let base = std::fs::read_to_string(&sc.target.cluster_config)
        .with_context(|| format!("read {}", sc.target.cluster_config))?;
    let mut addrs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (gw, quic) = match &net {
            Some(n) => (
                SocketAddr::new(IpAddr::V4(n.node_addr(i)), GATEWAY_PORT),
                SocketAddr::new(IpAddr::V4(n.node_addr(i)), QUIC_PORT),
            ),
            None => (free_addr(false)?, free_addr(true)?),
        };
        addrs.push((id.clone(), gw, quic));
    }
    let config_text = node::cluster_config_for(&base, &sc.target.node_config, &addrs)?;
    let config_path = out_dir.join("cluster.toml");
    std::fs::write(&config_path, &config_text)?;
    let timings = Timings::of(&config_text);
    let cmds: Vec<NodeCmd> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let node_args = [
                "--config".to_string(),
                config_path.display().to_string(),
                "--node".into(),
                id.clone(),
            ];
            let (program, args) = match &net {
                Some(n) => {
                    let mut a = n.exec_prefix(i);
                    a.push(bin.display().to_string());
                    a.extend(node_args);
                    (PathBuf::from("ip"), a)
                }
                None => (bin.clone(), node_args.to_vec()),
            };
            NodeCmd {
                id: id.clone(),
                program,
                args,
                cwd: out_dir.to_path_buf(),
                log: out_dir.join(format!("{id}.log")),
                rust_log: NodeCmd::log_level("info"),
            }
        })
        .collect();
    let monitor = Monitor::start(
        vec![("generator".into(), std::process::id())],
        SAMPLE_INTERVAL,
    );
    let cluster = Arc::new(Cluster::start(cmds, monitor.watcher()).await?);
    for (name, pid) in cluster.first_pids() {
        monitor.watcher().watch(name, pid);
    }
    let run = Run {
        sc,
        opts,
        out_dir,
        started_unix_s,
        monitor: &monitor,
        timings,
    };
    let result = run.measure(&cluster, net.clone()).await;
    // Stopped (and the namespaces gone) however the run ended.
    cluster.stop_all().await;
    drop(net);
    let (summary, history_events) = result?;
    finish(sc, out_dir, summary, history_events).await
}

/// What a chaos run is run with.
struct Run<'a> {
    sc: &'a Scenario,
    opts: &'a Options,
    out_dir: &'a Path,
    started_unix_s: u64,
    monitor: &'a Monitor,
    timings: Timings,
}

impl Run<'_> {
    /// The measured phase with its faults, then the merged history.
    async fn measure(
        &self,
        cluster: &Arc<Cluster>,
        net: Option<Arc<Net>>,
    ) -> anyhow::Result<(Summary, Vec<Event>)> {
        let Run {
            sc,
            opts,
            out_dir,
            started_unix_s,
            monitor,
            timings,
        } = *self;
        let c = &sc.chaos;
        let (seed, plan) = plan(c);
        let rec = Recorder::create(&out_dir.join(COORDINATOR_PART))?;
        rec.record(Event::Meta {
            t: now_ns(),
            run: out_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            nodes: cluster.ids().to_vec(),
            seed,
            lease_ttl_ms: timings.lease_ttl_ms,
            probe_ms: timings.probe_ms,
        });
        let target = Arc::new(Target {
            cluster: cluster.clone(),
            net: net.clone(),
            history: rec.clone(),
        });
        let duration_ns = (c.duration_s * 1e9) as u64;
        let start_faults = {
            let (rec, plan) = (rec.clone(), plan.clone());
            move |start_ns: u64| -> JoinHandle<()> {
                rec.record(Event::Mark {
                    t: start_ns,
                    what: Mark::PhaseStart,
                });
                rec.record(Event::Mark {
                    t: start_ns + duration_ns,
                    what: Mark::SendingEnd,
                });
                faults::spawn(target.clone(), plan.clone(), start_ns)
            }
        };
        let sources: Vec<IpAddr> = match &net {
            Some(n) => n.client_addrs().into_iter().map(IpAddr::V4).collect(),
            None => (1..=sc.source_addrs)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
        };
        let pids = cluster.first_pids();
        let system = System {
            name: "hush",
            servers: cluster.urls(),
            pids: &pids,
            redis: None,
            history_dir: Some(out_dir),
            faults: Some(&start_faults),
        };
        let exe = opts.worker_exe.as_deref();
        let target_report = measure(sc, &system, &sources, monitor, exe, opts.progress).await?;
        rec.record(Event::Mark {
            t: now_ns(),
            what: Mark::Drained,
        });
        rec.flush().await;
        monitor.sample_now();
        let mut parts: Vec<PathBuf> = (0..sc.workers.max(1))
            .map(|w| history::part_path(out_dir, w))
            .collect();
        // The coordinator's events (faults from concurrent tasks, marks stamped
        // ahead) in time order; no member's events are among them.
        let own = out_dir.join(COORDINATOR_PART);
        let mut mine = history::read(&own)?;
        mine.sort_by_key(Event::t);
        let sorted = out_dir.join("history-coordinator-sorted.jsonl");
        write_events(&sorted, &mine)?;
        let _ = std::fs::remove_file(&own);
        parts.push(sorted);
        let events = history::merge_parts(&parts, &out_dir.join("history.jsonl"))?;
        let mut summary = Summary::new(
            sc,
            &opts.overrides,
            &opts.load_before,
            started_unix_s,
            vec![target_report],
            monitor.series(),
        );
        summary.chaos = Some(ChaosReport::planned(
            seed,
            c.schedule.is_empty(),
            cluster.ids().to_vec(),
            c.netns,
            plan,
            timings.lease_ttl_ms,
            timings.probe_ms,
        ));
        Ok((summary, events))
    }
}

/// After the nodes stopped: the store, the verdict, the report files.
async fn finish(
    sc: &Scenario,
    out_dir: &Path,
    mut summary: Summary,
    events: Vec<Event>,
) -> anyhow::Result<Outcome> {
    let gids: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Group { gid, .. } => Some(gid.clone()),
            _ => None,
        })
        .collect();
    let store_path = out_dir.join(node::CHAOS_STORE);
    let dump = tokio::task::spawn_blocking(move || store::read(&store_path, &gids)).await?;
    let c = &sc.chaos;
    let opts = CheckOptions {
        context_before_ns: (c.context_before_s * 1e9) as u64,
        context_after_ns: (c.context_after_s * 1e9) as u64,
        ..CheckOptions::default()
    };
    let (verdict, store_error) = match &dump {
        Ok(d) => (checker::check(&events, Some(d), &opts), None),
        Err(e) => (checker::check(&events, None, &opts), Some(format!("{e:#}"))),
    };
    if let Some(ch) = summary.chaos.as_mut() {
        ch.judged(verdict, store_error, &events);
    }
    summary.ok &= summary.chaos.as_ref().is_some_and(|c| c.verdict.ok);
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(out_dir.join("report.html"), report::html(&summary))?;
    Ok(Outcome {
        ok: summary.ok,
        out_dir: out_dir.to_path_buf(),
        summary,
    })
}

fn write_events(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for e in events {
        serde_json::to_writer(&mut w, e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// The seed and the schedule: the written-out one, or one generated from
/// the seed (0: a seed from the clock).
fn plan(c: &Chaos) -> (u64, Vec<FaultSpec>) {
    if !c.schedule.is_empty() {
        let ids = c.node_ids();
        let specs = c
            .schedule
            .iter()
            .enumerate()
            .map(|(i, f)| FaultSpec {
                id: i as u32 + 1,
                at_ms: (f.at_s * 1000.0) as u64,
                kind: f.fault,
                nodes: if f.nodes.is_empty() {
                    (0..c.nodes).collect()
                } else {
                    f.nodes
                        .iter()
                        .filter_map(|n| ids.iter().position(|id| id == n))
                        .collect()
                },
                duration_ms: (f.duration_s * 1000.0) as u64,
            })
            .collect();
        return (c.seed, specs);
    }
    let seed = if c.seed == 0 {
        now_ns() % 1_000_000_007
    } else {
        c.seed
    };
    let ms = |s: f64| (s * 1000.0) as u64;
    let pair = |r: [u64; 2]| (r[0], r[1]);
    let kinds: Vec<FaultKind> = c
        .faults
        .iter()
        .copied()
        .filter(|k| c.netns || !k.is_network())
        .collect();
    let p = Params {
        nodes: c.nodes,
        window_ms: ms(c.duration_s),
        first_ms: ms(c.first_fault_s),
        settle_ms: ms(c.settle_s),
        gap_ms: (ms(c.gap_s[0]), ms(c.gap_s[1])),
        overlap: c.overlap,
        max_concurrent: c.max_concurrent,
        kinds,
        pause_short_ms: pair(c.pause_short_ms),
        pause_long_ms: pair(c.pause_long_ms),
        down_ms: pair(c.down_ms),
        partition_ms: pair(c.partition_ms),
        restart_ms: c.restart_ms,
    };
    (seed, schedule::generate(&p, seed))
}

/// The cluster's lease and failure-detector timings, for the history's
/// meta and the report (defaults as hush-node's when not set).
#[derive(Debug, Clone, Copy)]
struct Timings {
    lease_ttl_ms: u64,
    probe_ms: u64,
}

impl Timings {
    fn of(config: &str) -> Self {
        let t: toml::Table = toml::from_str(config).unwrap_or_default();
        let get = |section: &str, key: &str, default: u64| {
            t.get(section)
                .and_then(|s| s.get(key))
                .and_then(toml::Value::as_integer)
                .map_or(default, |v| v as u64)
        };
        Self {
            lease_ttl_ms: get("actors", "lease_ttl_ms", 30_000),
            probe_ms: get("cluster", "probe_ms", 500),
        }
    }
}

fn free_addr(udp: bool) -> anyhow::Result<SocketAddr> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?
    })
}
