//! A run's history: what the chaos checker ([`crate::checker`]) reads.
//! Every send attempt (with its `client_msg_id`), every acknowledgement
//! (with its seq), every refusal, every delivery to every member (with its
//! seq and epoch), every epoch a member learns, every socket opened or lost,
//! every resume that caught up, and every fault with its wall time, as one
//! JSON object per line (`history.jsonl` in the run's directory).
//!
//! Times are Unix nanoseconds, read on the process that saw the event (all
//! processes of a run share the machine's clock). A member is `(g, m)`:
//! group index and member index (member 0 created the group and sends).
//! A connection's `node` is its gateway's index in [`Event::Meta`]'s `nodes`.
//!
//! Each worker writes its own part ([`Recorder`], a thread that owns the
//! file, so recording never blocks a connection task); the coordinator
//! writes the run's own events (meta, marks, faults) to another part, and
//! [`merge_parts`] merges them by time into the history. The merge never
//! reorders the events of one part, so one member's events stay in the
//! order its connection saw them.

use std::collections::BinaryHeap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// What a fault does (the schedule's vocabulary, see `chaos::schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9, down for the fault's duration, then started again on the
    /// same data directory.
    Kill,
    /// SIGSTOP, then SIGCONT after the fault's duration.
    Pause,
    /// SIGTERM (graceful stop), down for the fault's duration, start again.
    Restart,
    /// A graceful restart of every node in turn, each waiting for the
    /// previous one to listen again.
    RollingRestart,
    /// The node's namespace drops everything to and from the other nodes;
    /// its clients still reach it.
    IsolatePeers,
    /// The node's namespace drops everything to and from the clients; its
    /// peers still reach it.
    IsolateClients,
    /// The nodes split into a minority (the fault's nodes) and the rest,
    /// which cannot reach each other; clients still reach every node.
    Split,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Restart,
        FaultKind::RollingRestart,
        FaultKind::IsolatePeers,
        FaultKind::IsolateClients,
        FaultKind::Split,
    ];

    /// The kebab-case name, as in scenario files and the history.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::RollingRestart => "rolling-restart",
            FaultKind::IsolatePeers => "isolate-peers",
            FaultKind::IsolateClients => "isolate-clients",
            FaultKind::Split => "split",
        }
    }

    /// Whether it needs network namespaces.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::IsolatePeers | FaultKind::IsolateClients | FaultKind::Split
        )
    }
}

/// Where a fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// It was applied (the signal sent, the rules loaded).
    Start,
    /// Something happened in between (a node of a rolling restart is back,
    /// a graceful stop had to be forced).
    Info,
    /// It was healed (SIGCONT, restarted and listening, rules removed).
    End,
}

/// A mark of the run's course, from the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mark {
    /// The measured phase's schedule starts.
    PhaseStart,
    /// The phase's last send was due.
    SendingEnd,
    /// Every worker finished draining (or its drain timed out).
    Drained,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "kebab-case")]
pub enum Event {
    /// The run: its id, the node ids in gateway order, the seed of the
    /// fault schedule, the lease and the SWIM probe period.
    Meta {
        t: u64,
        run: String,
        nodes: Vec<String>,
        seed: u64,
        lease_ttl_ms: u64,
        probe_ms: u64,
    },
    Mark {
        t: u64,
        what: Mark,
    },
    /// Fault `id` (`kind` on `nodes`): started, progressed or ended.
    Fault {
        t: u64,
        id: u32,
        kind: FaultKind,
        nodes: Vec<String>,
        step: Step,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        note: String,
    },
    /// Group `g` was created with this id (hex).
    Group {
        t: u64,
        g: u32,
        gid: String,
    },
    /// Member `m` of group `g` must receive every seq after `after`.
    Join {
        t: u64,
        g: u32,
        m: u32,
        after: u64,
    },
    /// The member's epoch of the group is now `e`.
    Epoch {
        t: u64,
        g: u32,
        m: u32,
        e: u64,
    },
    /// A WebSocket of the member opened on gateway `node`.
    Connect {
        t: u64,
        g: u32,
        m: u32,
        node: usize,
    },
    /// The member's WebSocket to gateway `node` was lost.
    Disconnect {
        t: u64,
        g: u32,
        m: u32,
        node: usize,
        why: String,
    },
    /// The member's (re)sync caught up (`SyncCaughtUp`).
    CaughtUp {
        t: u64,
        g: u32,
        m: u32,
    },
    /// Message `c` of group `g` written to a socket (every attempt), with
    /// its `client_msg_id` (hex) and when it was due (the open-loop
    /// schedule's intended time).
    Send {
        t: u64,
        g: u32,
        m: u32,
        c: u64,
        id: String,
        due: u64,
    },
    /// Message `c` accepted under seq `s` (`dup`: it was stored already).
    Ack {
        t: u64,
        g: u32,
        m: u32,
        c: u64,
        s: u64,
        dup: bool,
    },
    /// Message `c` answered with an error (`code`).
    Refused {
        t: u64,
        g: u32,
        m: u32,
        c: u64,
        code: String,
    },
    /// The member received seq `s` (epoch `e`); `c` is the message's
    /// counter when it is one of the generator's application messages.
    Deliver {
        t: u64,
        g: u32,
        m: u32,
        s: u64,
        e: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<u64>,
    },
}

impl Event {
    /// When it happened (Unix ns).
    pub fn t(&self) -> u64 {
        match self {
            Event::Meta { t, .. }
            | Event::Mark { t, .. }
            | Event::Fault { t, .. }
            | Event::Group { t, .. }
            | Event::Join { t, .. }
            | Event::Epoch { t, .. }
            | Event::Connect { t, .. }
            | Event::Disconnect { t, .. }
            | Event::CaughtUp { t, .. }
            | Event::Send { t, .. }
            | Event::Ack { t, .. }
            | Event::Refused { t, .. }
            | Event::Deliver { t, .. } => *t,
        }
    }
}

enum Cmd {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// Appends events to one part file from any task, without blocking it: a
/// thread owns the file. Cloning shares the file.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    /// Creates (truncates) `path` and starts its writer thread, which ends
    /// when every clone is dropped.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(1 << 16, file);
                while let Some(cmd) = rx.blocking_recv() {
                    match cmd {
                        Cmd::Event(ev) => {
                            // An event always serializes (plain fields).
                            if let Ok(line) = serde_json::to_string(&ev) {
                                let _ = out.write_all(line.as_bytes());
                                let _ = out.write_all(b"\n");
                            }
                        }
                        Cmd::Flush(done) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                    }
                }
                let _ = out.flush();
            })?;
        Ok(Self { tx })
    }

    pub fn record(&self, ev: Event) {
        let _ = self.tx.send(Cmd::Event(ev));
    }

    /// Returns once everything recorded before is in the file.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The part file of worker `w` in `dir`.
pub fn part_path(dir: &Path, w: usize) -> PathBuf {
    dir.join(format!("history-w{w}.jsonl"))
}

/// Reads a history (or part) file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    use anyhow::Context as _;
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Merges parts by time; events of one part keep their order (a k-way
/// merge that only ever takes a part's next event).
pub fn merge(parts: Vec<Vec<Event>>) -> Vec<Event> {
    let total = parts.iter().map(Vec::len).sum();
    let mut iters: Vec<std::vec::IntoIter<Event>> = parts.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<Event>> = iters.iter_mut().map(Iterator::next).collect();
    // Min-heap of (t, part index).
    let mut heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = heads
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.as_ref().map(|e| std::cmp::Reverse((e.t(), i))))
        .collect();
    let mut out = Vec::with_capacity(total);
    while let Some(std::cmp::Reverse((_, i))) = heap.pop() {
        if let Some(ev) = heads[i].take() {
            out.push(ev);
        }
        heads[i] = iters[i].next();
        if let Some(e) = &heads[i] {
            heap.push(std::cmp::Reverse((e.t(), i)));
        }
    }
    out
}

/// Reads the part files, merges them into `out` (the history) and returns
/// the merged events; the parts are removed.
pub fn merge_parts(parts: &[PathBuf], out: &Path) -> anyhow::Result<Vec<Event>> {
    let mut all = Vec::new();
    for p in parts {
        if p.exists() {
            all.push(read(p)?);
        }
    }
    let events = merge(all);
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    for ev in &events {
        serde_json::to_writer(&mut w, ev)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    for p in parts {
        let _ = std::fs::remove_file(p);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(t: u64, m: u32, s: u64) -> Event {
        Event::Deliver {
            t,
            g: 0,
            m,
            s,
            e: 1,
            c: Some(s),
        }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_parts_order() {
        // Part 0 recorded t=5 before t=4 (two tasks raced to the channel):
        // the merge must not swap them.
        let a = vec![deliver(1, 0, 1), deliver(5, 0, 2), deliver(4, 0, 3)];
        let b = vec![deliver(2, 1, 1), deliver(6, 1, 2)];
        let m = merge(vec![a, b]);
        let order: Vec<(u32, u64)> = m
            .iter()
            .map(|e| match e {
                Event::Deliver { m, s, .. } => (*m, *s),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![(0, 1), (1, 1), (0, 2), (0, 3), (1, 2)]);
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let evs = vec![
            Event::Fault {
                t: 7,
                id: 1,
                kind: FaultKind::Pause,
                nodes: vec!["n2".into()],
                step: Step::Start,
                note: String::new(),
            },
            deliver(9, 2, 11),
            Event::Deliver {
                t: 10,
                g: 1,
                m: 0,
                s: 1,
                e: 0,
                c: None,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let text: String = evs
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        assert!(text.contains(r#""k":"fault""#), "{text}");
        assert!(!text.contains("note"), "empty notes are left out: {text}");
        std::fs::write(&p, text).unwrap();
        assert_eq!(read(&p).unwrap(), evs);
    }
}
