//! Carrying out a fault schedule against the running cluster: each fault
//! in its own task, started at its time after the measured window's start,
//! recorded in the history when it is applied (`start`), as it progresses
//! (`info`: a node of a rolling restart back, a stop that had to be
//! forced) and when it is healed (`end`). A fault that cannot be applied
//! (its node is down because of an overlapping fault in a hand-written
//! schedule) is recorded with the reason and ends at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::net::{Net, NetFault};
use super::nodes::Cluster;
use super::schedule::FaultSpec;
use crate::clock::{now_ns, Clock};
use crate::history::{Event, FaultKind, Recorder, Step};

/// What the faults act on.
pub struct Target {
    pub cluster: Arc<Cluster>,
    /// `None`: no namespaces (network faults refused at validation).
    pub net: Option<Arc<Net>>,
    pub history: Recorder,
}

impl Target {
    fn record(&self, f: &FaultSpec, step: Step, note: String) {
        let ids = self.cluster.ids();
        self.history.record(Event::Fault {
            t: now_ns(),
            id: f.id,
            kind: f.kind,
            nodes: f
                .nodes
                .iter()
                .filter_map(|i| ids.get(*i).cloned())
                .collect(),
            step,
            note,
        });
    }

    /// Applies `f`, waits its duration, heals it.
    async fn run(&self, f: &FaultSpec) {
        let d = Duration::from_millis(f.duration_ms);
        let c = &self.cluster;
        let first = f.nodes.first().copied().unwrap_or(0);
        let noted = |r: anyhow::Result<String>| r.unwrap_or_else(|e| format!("failed: {e:#}"));
        match f.kind {
            FaultKind::Kill => {
                self.record(f, Step::Start, noted(c.kill(first).await));
                tokio::time::sleep(d).await;
                self.record(f, Step::End, noted(c.start_again(first).await));
            }
            FaultKind::Pause => {
                self.record(f, Step::Start, noted(c.pause(first).await));
                tokio::time::sleep(d).await;
                self.record(f, Step::End, noted(c.resume(first).await));
            }
            FaultKind::Restart => {
                self.record(f, Step::Start, "SIGTERM".into());
                self.record(f, Step::Info, noted(c.stop(first).await));
                tokio::time::sleep(d).await;
                self.record(f, Step::End, noted(c.start_again(first).await));
            }
            FaultKind::RollingRestart => {
                self.record(f, Step::Start, String::new());
                for (k, &i) in f.nodes.iter().enumerate() {
                    if k > 0 {
                        tokio::time::sleep(d).await;
                    }
                    self.record(f, Step::Info, noted(c.stop(i).await));
                    self.record(f, Step::Info, noted(c.start_again(i).await));
                }
                self.record(f, Step::End, String::new());
            }
            FaultKind::IsolatePeers | FaultKind::IsolateClients | FaultKind::Split => {
                let Some(net) = &self.net else {
                    self.record(f, Step::Start, "failed: no network namespaces".into());
                    self.record(f, Step::End, String::new());
                    return;
                };
                let nf = NetFault {
                    id: f.id,
                    kind: f.kind,
                    nodes: f.nodes.clone(),
                };
                let started = net.start(nf).await.map(|_| String::new());
                self.record(f, Step::Start, noted(started));
                tokio::time::sleep(d).await;
                let healed = net.heal(f.id).await.map(|_| String::new());
                self.record(f, Step::End, noted(healed));
            }
        }
    }
}

/// Runs `schedule` from `start_ns` (Unix ns, the measured window's
/// start); the task ends when every fault has ended.
pub fn spawn(target: Arc<Target>, schedule: Vec<FaultSpec>, start_ns: u64) -> JoinHandle<()> {
    let clock = Clock::now();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for f in schedule {
            let target = target.clone();
            let at = clock.instant_at(start_ns + f.at_ms * 1_000_000);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                target.run(&f).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    })
}
