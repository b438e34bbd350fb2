//! Running a worker: in the coordinator's process (`workers = 0`) or as a
//! child process (`hush-loadtest worker`) speaking the worker protocol
//! ([`crate::protocol`]) as JSON lines over stdin/stdout: the [`Plan`]
//! first, then [`ToWorker`] commands; it answers with [`FromWorker`] lines.
//! [`run_worker`] starts the plan's workload ([`crate::fanout`],
//! [`crate::connect`] or [`crate::redis`]) either way.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::protocol::{FromWorker, Job, Plan, ToWorker};
use crate::workload::Channels;
use crate::{connect, fanout, redis};

/// How long a stopped child worker may take to exit before it is killed.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one worker's plan (in this process or in a `worker` child).
pub async fn run_worker(
    plan: Plan,
    cmds: mpsc::UnboundedReceiver<ToWorker>,
    events: mpsc::UnboundedSender<FromWorker>,
) {
    let failed = events.clone();
    let ch = Channels { cmds, events };
    let r = match plan.job.clone() {
        Job::Fanout(j) => fanout::run(plan, j, ch).await,
        Job::Redis(j, mode) => redis::run(plan, j, mode, ch).await,
        Job::Connect(j) => connect::run(plan, j, ch).await,
    };
    if let Err(e) = r {
        let _ = failed.send(FromWorker::Failed(format!("{e:#}")));
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
        tokio::spawn(run_worker(plan, cmd_rx, ev_tx));
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
            let waited = tokio::time::timeout(CHILD_EXIT_TIMEOUT, c.wait()).await;
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
    let worker = tokio::spawn(run_worker(plan, cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let line = serde_json::to_string(&ev)? + "\n";
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
    }
    let _ = worker.await;
    Ok(())
}
