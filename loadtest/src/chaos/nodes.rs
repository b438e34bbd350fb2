//! The chaos run's nodes: each started from its [`NodeCmd`] (in its own
//! namespace when there is one), and what the faults do to them: kill -9,
//! SIGSTOP/SIGCONT, a graceful stop, and a start again on the same data
//! directory and addresses (the same command), which waits for the node's
//! `listening on` line. A node started again is watched by the /proc
//! monitor under a new name (`node n2 #2`).

use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::Mutex;

use crate::node::{NodeCmd, NodeProc};
use crate::procmon::Watcher;

/// One node: how to start it, and its process while it has one.
struct Slot {
    cmd: NodeCmd,
    proc: Option<NodeProc>,
    paused: bool,
    starts: u32,
}

/// The nodes, by index (node `i` is `n{i+1}`).
pub struct Cluster {
    slots: Vec<Mutex<Slot>>,
    ids: Vec<String>,
    urls: Vec<String>,
    first_pids: Vec<u32>,
    watcher: Watcher,
}

impl Cluster {
    /// Starts every node, one after the other.
    pub async fn start(cmds: Vec<NodeCmd>, watcher: Watcher) -> anyhow::Result<Self> {
        let mut slots = Vec::new();
        let (mut ids, mut urls, mut first_pids) = (Vec::new(), Vec::new(), Vec::new());
        for cmd in cmds {
            let p = NodeProc::spawn(&cmd).await?;
            ids.push(cmd.id.clone());
            urls.push(p.url.clone());
            first_pids.push(p.pid);
            slots.push(Mutex::new(Slot {
                cmd,
                proc: Some(p),
                paused: false,
                starts: 1,
            }));
        }
        Ok(Self {
            slots,
            ids,
            urls,
            first_pids,
            watcher,
        })
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Gateway URLs, by node index.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// ("node <id>", pid) of each node's first process.
    pub fn first_pids(&self) -> Vec<(String, u32)> {
        self.ids
            .iter()
            .zip(&self.first_pids)
            .map(|(id, p)| (format!("node {id}"), *p))
            .collect()
    }

    fn slot(&self, i: usize) -> anyhow::Result<&Mutex<Slot>> {
        self.slots
            .get(i)
            .with_context(|| format!("no node with index {i}"))
    }

    /// kill -9; the node is down until [`Cluster::start_again`].
    pub async fn kill(&self, i: usize) -> anyhow::Result<String> {
        let mut s = self.slot(i)?.lock().await;
        let mut p = s.proc.take().context("the node is down already")?;
        p.kill().await;
        s.paused = false;
        Ok(format!("killed pid {}", p.pid))
    }

    /// SIGSTOP.
    pub async fn pause(&self, i: usize) -> anyhow::Result<String> {
        let mut s = self.slot(i)?.lock().await;
        let p = s.proc.as_ref().context("the node is down")?;
        p.signal("STOP")?;
        let note = format!("SIGSTOP pid {}", p.pid);
        s.paused = true;
        Ok(note)
    }

    /// SIGCONT.
    pub async fn resume(&self, i: usize) -> anyhow::Result<String> {
        let mut s = self.slot(i)?.lock().await;
        let p = s.proc.as_ref().context("the node is down")?;
        p.signal("CONT")?;
        let note = format!("SIGCONT pid {}", p.pid);
        s.paused = false;
        Ok(note)
    }

    /// SIGTERM and wait for the exit (SIGKILL if it takes too long).
    pub async fn stop(&self, i: usize) -> anyhow::Result<String> {
        let mut s = self.slot(i)?.lock().await;
        let mut p = s.proc.take().context("the node is down already")?;
        if s.paused {
            let _ = p.signal("CONT");
            s.paused = false;
        }
        let t = Instant::now();
        let graceful = p.terminate().await;
        let secs = t.elapsed().as_secs_f64();
        Ok(if graceful {
            format!("{} stopped (SIGTERM) in {secs:.2} s", self.ids[i])
        } else {
            format!(
                "{} did not exit {secs:.1} s after SIGTERM: killed",
                self.ids[i]
            )
        })
    }

    /// Starts a node that is down again, with the same command (data
    /// directory, addresses), and waits until it listens.
    pub async fn start_again(&self, i: usize) -> anyhow::Result<String> {
        let mut s = self.slot(i)?.lock().await;
        anyhow::ensure!(s.proc.is_none(), "the node is still running");
        let t = Instant::now();
        let p = NodeProc::spawn(&s.cmd).await?;
        s.starts += 1;
        self.watcher
            .watch(format!("node {} #{}", self.ids[i], s.starts), p.pid);
        let note = format!(
            "{} listening again after {:.2} s (pid {})",
            self.ids[i],
            t.elapsed().as_secs_f64(),
            p.pid
        );
        s.proc = Some(p);
        Ok(note)
    }

    /// Stops every node that runs (a paused one is continued first).
    pub async fn stop_all(&self) {
        for slot in &self.slots {
            let mut s = slot.lock().await;
            if let Some(mut p) = s.proc.take() {
                if s.paused {
                    let _ = p.signal("CONT");
                }
                p.terminate().await;
            }
        }
    }
}
