//! Workers: the coordinator splits a scenario into [`Plan`]s, one per
//! worker; each worker owns whole groups (or a slice of the connections),
//! so senders, receivers and their correctness bookkeeping share one
//! process. A worker runs inside the coordinator (`workers = 0`) or as a
//! child process (`hush-loadtest worker`) speaking JSON lines over
//! stdin/stdout: the [`Plan`] first, then [`ToWorker`] commands; it answers
//! with [`FromWorker`] lines. Histograms travel HDR-V2-encoded and are
//! merged by the coordinator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::scenario::MlsMode;
use crate::stats::{Correctness, Hist, Tick};

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub worker: usize,
    /// Unique per run: user handles and message ids carry it.
    pub run_id: String,
    /// Gateway URLs; member or connection `i` uses `servers[i % len]`.
    pub servers: Vec<String>,
    /// Source addresses, round-robin per connection (empty: the OS picks).
    pub sources: Vec<IpAddr>,
    pub job: Job,
}

/// The workload of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Job {
    /// Hush groups `first_group .. first_group + groups`.
    Fanout(FanoutJob),
    /// Redis pub/sub channels, same shape.
    Redis(FanoutJob),
    /// Idle connections `first .. first + count`.
    Connect(ConnectJob),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutJob {
    pub first_group: usize,
    pub groups: usize,
    /// Groups over all workers (spreads the send schedule).
    pub total_groups: usize,
    pub group_size: usize,
    pub payload_bytes: usize,
    pub mls: MlsMode,
    pub presealed_per_group: usize,
    pub setup_concurrency: usize,
    pub ack_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectJob {
    pub first: usize,
    pub count: usize,
    pub setup_concurrency: usize,
}

/// Coordinator -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one measured phase, then drain and report.
    Phase(PhaseCmd),
    /// Close everything and exit.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseCmd {
    pub index: usize,
    /// Unix ns at which the phase's schedule starts (same for all workers).
    pub start_ns: u64,
    pub duration_s: f64,
    /// Fanout: messages per second per group. Connect: attempts per second
    /// for this worker.
    pub rate: f64,
    pub drain_timeout_s: f64,
    /// Failover: the node killed during this phase.
    #[serde(default)]
    pub kill: Option<KillCmd>,
}

/// The node a phase kills: its index in `Plan::servers` and when (Unix ns).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillCmd {
    pub server: usize,
    pub at_ns: u64,
}

/// One lost socket of a member and its way back (Unix ns; 0 = never).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropRec {
    pub group: u32,
    pub member: u32,
    /// Gateway indexes: lost on `from`, reconnected to `to`.
    pub from: usize,
    pub to: usize,
    pub dropped_ns: u64,
    /// The new WebSocket was open.
    pub reconnected_ns: u64,
    /// The resume Sync caught up (`SyncCaughtUp` on the new node).
    pub resumed_ns: u64,
    /// Connection attempts until one succeeded.
    pub attempts: u32,
    /// The socket was to the killed node, at or after the kill.
    pub expected: bool,
}

/// One message of a failover phase (Unix ns; 0 = never).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MsgRec {
    pub group: u32,
    pub intended_ns: u64,
    /// First MessageAccepted at the sender.
    pub acked_ns: u64,
    /// The last receiver of the group got it.
    pub completed_ns: u64,
    /// Times written to a socket (more than 1: resent with the same id).
    pub attempts: u32,
    /// The accepted answer said "already stored" (a resend of a stored message).
    pub dedup: bool,
}

/// What a worker saw of a failover phase, raw: the coordinator turns it
/// into the failover report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverRaw {
    pub drops: Vec<DropRec>,
    pub messages: Vec<MsgRec>,
    /// Sends written again (after a lost socket or a transient error).
    pub retries: u64,
    /// Accepted answers that said "already stored".
    pub deduplicated: u64,
}

impl FailoverRaw {
    pub fn merge(&mut self, o: &FailoverRaw) {
        self.drops.extend(o.drops.iter().cloned());
        self.messages.extend(o.messages.iter().copied());
        self.retries += o.retries;
        self.deduplicated += o.deduplicated;
    }
}

/// Worker -> coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// Setup finished; its wall time and how many users it registered.
    Ready { setup_s: f64, registered: u64 },
    /// Cumulative counters, about once a second.
    Tick(Tick),
    /// A phase ended (sending and draining).
    PhaseDone(Box<PhaseResult>),
    /// The worker cannot go on.
    Failed(String),
}

/// What one worker measured in one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    pub index: usize,
    pub sent: u64,
    pub acked: u64,
    /// Deliveries to receivers (the sender's own echo not counted).
    pub delivered: u64,
    pub correctness: Correctness,
    /// Named latency histograms ("ack", "e2e", "completion", "handshake").
    pub hists: BTreeMap<String, Hist>,
    /// Unix ns of the last delivery (or last connect) of the phase.
    pub last_event_ns: u64,
    /// Connections open at the end of the phase.
    pub conns_open: u64,
    /// Failover phases only.
    #[serde(default)]
    pub failover: Option<FailoverRaw>,
}

impl PhaseResult {
    /// Adds another worker's result of the same phase.
    pub fn merge(&mut self, o: &PhaseResult) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.correctness = self.correctness.plus(o.correctness);
        for (k, h) in &o.hists {
            self.hists.entry(k.clone()).or_default().merge(h);
        }
        self.last_event_ns = self.last_event_ns.max(o.last_event_ns);
        self.conns_open += o.conns_open;
        if let Some(f) = &o.failover {
            self.failover
                .get_or_insert_with(FailoverRaw::default)
                .merge(f);
        }
    }
}

/// The coordinator's end of one worker.
pub struct WorkerLink {
    pub tx: mpsc::UnboundedSender<ToWorker>,
    pub rx: mpsc::UnboundedReceiver<FromWorker>,
    pub pid: Option<u32>,
    child: Option<tokio::process::Child>,
}

impl WorkerLink {
    /// Runs the worker as a task of this process.
    pub fn in_process(plan: Plan) -> Self {
        let (tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(crate::run_worker(plan, cmd_rx, ev_tx));
        Self {
            tx,
            rx,
            pid: None,
            child: None,
        }
    }

    /// Runs the worker as `<exe> worker`, JSON lines over its stdio.
    pub async fn child(exe: &std::path::Path, plan: &Plan) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id();
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, mut cmd_rx) = mpsc::unbounded_channel::<ToWorker>();
        let (ev_tx, rx) = mpsc::unbounded_channel();
        let first = serde_json::to_string(plan)? + "\n";
        tokio::spawn(async move {
            if stdin.write_all(first.as_bytes()).await.is_err() {
                return;
            }
            while let Some(cmd) = cmd_rx.recv().await {
                let Ok(line) = serde_json::to_string(&cmd) else {
                    return;
                };
                if stdin.write_all((line + "\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => match serde_json::from_str::<FromWorker>(&l) {
                        Ok(ev) => {
                            if ev_tx.send(ev).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = ev_tx.send(FromWorker::Failed(format!("bad worker line: {e}")));
                            return;
                        }
                    },
                    Ok(None) | Err(_) => {
                        let _ = ev_tx.send(FromWorker::Failed("worker exited".into()));
                        return;
                    }
                }
            }
        });
        Ok(Self {
            tx,
            rx,
            pid,
            child: Some(child),
        })
    }

    /// Stops the worker and waits for a child to exit.
    pub async fn stop(mut self) {
        let _ = self.tx.send(ToWorker::Stop);
        if let Some(mut c) = self.child.take() {
            let waited = tokio::time::timeout(std::time::Duration::from_secs(10), c.wait()).await;
            if waited.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

/// The child side: reads the plan and commands from stdin, writes events
/// to stdout.
pub async fn serve_stdio() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let plan: Plan = match lines.next_line().await? {
        Some(l) => serde_json::from_str(&l)?,
        None => anyhow::bail!("no plan on stdin"),
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<FromWorker>();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<ToWorker>(&l) {
                Ok(c) => {
                    if cmd_tx.send(c).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "bad command line");
                    return;
                }
            }
        }
        let _ = cmd_tx.send(ToWorker::Stop);
    });
    let worker = tokio::spawn(crate::run_worker(plan, cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let line = serde_json::to_string(&ev)? + "\n";
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
    }
    let _ = worker.await;
    Ok(())
}
