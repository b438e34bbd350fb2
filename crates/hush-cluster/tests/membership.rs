//! SWIM membership driven through a simulated network on a virtual clock:
//! three nodes converge on one view, a killed node is declared down by the
//! survivors, and its restart (a newer boot) rejoins — all deterministic.

use std::net::SocketAddr;
use std::time::Duration;

use foca::Timer;
use hush_cluster::membership::{Membership, NodeId};

const PROBE: Duration = Duration::from_millis(500);
const LINK_DELAY_MS: u64 = 1;

enum Ev {
    Deliver {
        to: String,
        packet: Vec<u8>,
    },
    Timer {
        /// The node's slot in `Sim::nodes` (a restart takes a new slot;
        /// a rejoin after a pause keeps its slot but renews its boot).
        slot: usize,
        timer: Timer<NodeId>,
    },
}

struct Sim {
    now_ms: u64,
    seq: u64,
    queue: Vec<(u64, u64, Ev)>,
    nodes: Vec<(Membership, bool)>,
    /// Paused (SIGSTOP) until this virtual time: packets to it are lost,
    /// its timers fire late.
    paused_until: Vec<u64>,
}

impl Sim {
    fn new() -> Self {
        Self {
            now_ms: 0,
            seq: 0,
            queue: Vec::new(),
            nodes: Vec::new(),
            paused_until: Vec::new(),
        }
    }

    fn id(name: &str, boot: u64) -> NodeId {
        let port = 7400 + name[1..].parse::<u16>().unwrap();
        NodeId {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot,
        }
    }

    fn add(&mut self, name: &str, boot: u64) -> usize {
        let m = Membership::new(Self::id(name, boot), 3, PROBE, 7 + boot);
        self.nodes.push((m, true));
        self.paused_until.push(0);
        self.nodes.len() - 1
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|(m, alive)| *alive && m.me().name == name)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push((at, self.seq, ev));
    }

    fn flush(&mut self, i: usize) {
        let (m, _) = &mut self.nodes[i];
        let effects = m.take_effects();
        for (to, packet) in effects.send {
            self.push(
                self.now_ms + LINK_DELAY_MS,
                Ev::Deliver {
                    to: to.name,
                    packet,
                },
            );
        }
        for (timer, after) in effects.timers {
            self.push(
                self.now_ms + after.as_millis() as u64,
                Ev::Timer { slot: i, timer },
            );
        }
    }

    fn announce(&mut self, from: &str, to: NodeId) {
        let i = self.idx(from).unwrap();
        self.nodes[i].0.announce(to).unwrap();
        self.flush(i);
    }

    /// Runs events until `done` holds (checked after each) or `limit_ms`
    /// of virtual time passes; returns the virtual time it took.
    fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> Option<u64> {
        let start = self.now_ms;
        while !done(self) {
            let next = self
                .queue
                .iter()
                .enumerate()
                .min_by_key(|(_, (at, seq, _))| (*at, *seq))
                .map(|(i, _)| i)?;
            let (at, _, ev) = self.queue.swap_remove(next);
            if at > start + limit_ms {
                return None;
            }
            self.now_ms = at;
            match ev {
                Ev::Deliver { to, packet } => {
                    if let Some(i) = self.idx(&to).filter(|&i| self.paused_until[i] <= at) {
                        // Bad packets are the peer's problem, not a crash.
                        let _ = self.nodes[i].0.handle_data(&packet);
                        self.flush(i);
                    }
                }
                Ev::Timer { slot, timer } => {
                    if self.paused_until[slot] > at {
                        let resume = self.paused_until[slot];
                        self.push(resume, Ev::Timer { slot, timer });
                    } else if self.nodes[slot].1 {
                        self.nodes[slot].0.handle_timer(timer).unwrap();
                        self.flush(slot);
                    }
                }
            }
        }
        Some(self.now_ms - start)
    }

    fn view_of(&self, name: &str) -> Vec<String> {
        let i = self.idx(name).unwrap();
        self.nodes[i].0.view().members.iter().cloned().collect()
    }

    fn pause(&mut self, name: &str, for_ms: u64) {
        let i = self.idx(name).unwrap();
        self.paused_until[i] = self.now_ms + for_ms;
    }

    fn node(&self, name: &str) -> &Membership {
        &self.nodes[self.idx(name).unwrap()].0
    }

    fn kill(&mut self, name: &str) {
        let i = self.idx(name).unwrap();
        self.nodes[i].1 = false;
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn converge_detect_a_dead_node_and_take_it_back_after_restart() {
    let mut sim = Sim::new();
    sim.add("n1", 0);
    sim.add("n2", 0);
    sim.add("n3", 0);
    // Seeds: everyone knows n1.
    sim.announce("n2", Sim::id("n1", 0));
    sim.announce("n3", Sim::id("n1", 0));

    let all = names(&["n1", "n2", "n3"]);
    let took = sim
        .run_until(30_000, |s| {
            ["n1", "n2", "n3"].iter().all(|n| s.view_of(n) == all)
        })
        .expect("views converge");
    let digests: Vec<u64> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| sim.nodes[sim.idx(n).unwrap()].0.view().digest())
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    eprintln!("converged after {took} ms of virtual time");

    // kill -9 n2: no more packets, no more timers.
    sim.kill("n2");
    let survivors = names(&["n1", "n3"]);
    let detected = sim
        .run_until(30_000, |s| {
            s.view_of("n1") == survivors && s.view_of("n3") == survivors
        })
        .expect("survivors declare n2 down");
    eprintln!("n2 declared down after {detected} ms of virtual time");
    assert!(
        detected <= 10 * PROBE.as_millis() as u64,
        "detection took {detected} ms"
    );
    let epoch_after_loss = sim.nodes[sim.idx("n1").unwrap()].0.view().epoch;

    // n2 restarts (a newer boot) and announces itself to n1.
    sim.add("n2", 1);
    sim.announce("n2", Sim::id("n1", 0));
    sim.run_until(30_000, |s| {
        ["n1", "n2", "n3"].iter().all(|n| s.view_of(n) == all)
    })
    .expect("the restarted node rejoins");
    let n1 = &sim.nodes[sim.idx("n1").unwrap()].0;
    assert!(n1.view().epoch > epoch_after_loss);
    let n2_seen: Vec<u64> = n1
        .peers()
        .filter(|p| p.name == "n2")
        .map(|p| p.boot)
        .collect();
    assert_eq!(n2_seen, [1], "n1 tracks the new boot of n2 only");
}

/// SIGSTOP longer than the failure detector's patience: the others declare
/// the node down and forget what it had attached to them; when it resumes it
/// must learn that (its view's incarnation grows) and come back under a new
/// boot, not carry on as if nothing happened.
#[test]
fn a_paused_node_declared_down_learns_it_and_rejoins() {
    let mut sim = Sim::new();
    for n in ["n1", "n2", "n3"] {
        sim.add(n, 0);
    }
    sim.announce("n2", Sim::id("n1", 0));
    sim.announce("n3", Sim::id("n1", 0));
    let all = names(&["n1", "n2", "n3"]);
    sim.run_until(30_000, |s| {
        ["n1", "n2", "n3"].iter().all(|n| s.view_of(n) == all)
    })
    .expect("views converge");
    assert_eq!(sim.node("n2").view().incarnation, 0);

    sim.pause("n2", 20 * PROBE.as_millis() as u64);
    let survivors = names(&["n1", "n3"]);
    sim.run_until(30_000, |s| {
        s.view_of("n1") == survivors && s.view_of("n3") == survivors
    })
    .expect("the others declare the paused node down");
    // Still paused: it has not noticed anything.
    assert_eq!(sim.node("n2").view().incarnation, 0);

    sim.run_until(60_000, |s| {
        s.node("n2").view().incarnation == 1
            && ["n1", "n2", "n3"].iter().all(|n| s.view_of(n) == all)
    })
    .expect("the resumed node learns it was declared down and everyone takes it back");
    assert_eq!(sim.node("n2").me().boot, 1, "it rejoined under a new boot");
    let n2_seen: Vec<u64> = sim
        .node("n1")
        .peers()
        .filter(|p| p.name == "n2")
        .map(|p| p.boot)
        .collect();
    assert_eq!(n2_seen, [1]);
    assert_eq!(sim.node("n1").view().incarnation, 0, "n1 was never down");
}

#[test]
fn garbage_packets_are_errors_not_panics() {
    let mut m = Membership::new(Sim::id("n1", 0), 3, PROBE, 1);
    for packet in [&b""[..], b"\x00", b"\xff\xff\xff\xff", &[7u8; 2000][..]] {
        assert!(m.handle_data(packet).is_err());
    }
    assert_eq!(m.view().members.len(), 1);
}
