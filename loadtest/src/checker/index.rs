//! The history, indexed for the checks: per member its joins, deliveries,
//! sockets and epoch; per message its sends and acknowledgements; the
//! faults as spans; the groups' ids.

use std::collections::{BTreeMap, HashMap};

use super::model::{FaultSpan, Totals};
use crate::history::{Event, Mark, Step};

/// A member: (group index, member index).
pub type MemberId = (u32, u32);
/// A message: (group index, the sender's counter).
pub type MsgId = (u32, u64);

/// One member's events, in the order its connection saw them.
#[derive(Debug, Default)]
pub struct MemberLog {
    /// It must receive every seq after this one.
    pub after: Option<u64>,
    /// (time, seq, message counter if it is one of ours).
    pub deliveries: Vec<(u64, u64, Option<u64>)>,
    /// (time, node while connected / `None` when the socket was lost, why).
    pub sockets: Vec<(u64, Option<usize>, String)>,
    pub epoch: Option<u64>,
}

impl MemberLog {
    /// The node it was connected to at `t` (`None`: no socket then).
    pub fn node_at(&self, t: u64) -> Option<usize> {
        let i = self.sockets.partition_point(|(st, _, _)| *st <= t);
        i.checked_sub(1).and_then(|i| self.sockets[i].1)
    }

    /// Whether its socket was lost at some time after `t`.
    pub fn lost_after(&self, t: u64) -> bool {
        self.sockets
            .iter()
            .any(|(st, node, _)| *st > t && node.is_none())
    }
}

/// One message's sends and answers.
#[derive(Debug, Default)]
pub struct MsgLog {
    /// `client_msg_id` (hex) of its first send.
    pub id: String,
    pub first_send: u64,
    pub due: u64,
    pub attempts: u64,
    /// (time, seq, duplicate).
    pub acks: Vec<(u64, u64, bool)>,
    pub refusals: u64,
}

#[derive(Debug, Default)]
pub struct Index {
    pub nodes: Vec<String>,
    pub faults: Vec<FaultSpan>,
    pub start_t: u64,
    pub end_t: u64,
    /// Group index -> group id (hex).
    pub gids: BTreeMap<u32, String>,
    pub members: BTreeMap<MemberId, MemberLog>,
    pub msgs: HashMap<MsgId, MsgLog>,
    /// `client_msg_id` (hex) -> message.
    pub by_id: HashMap<String, MsgId>,
    pub totals: Totals,
}

impl Index {
    pub fn new(history: &[Event]) -> Self {
        let mut ix = Index {
            start_t: history.first().map_or(0, Event::t),
            end_t: history.iter().map(Event::t).max().unwrap_or(0),
            ..Index::default()
        };
        let mut phase_start = None;
        for ev in history {
            ix.add(ev, &mut phase_start);
        }
        if let Some(p) = phase_start {
            ix.start_t = p;
        }
        ix.totals.groups = ix.gids.len() as u64;
        ix.totals.members = ix.members.values().filter(|m| m.after.is_some()).count() as u64;
        ix.totals.messages = ix.msgs.len() as u64;
        ix.totals.acked = ix.msgs.values().filter(|m| !m.acks.is_empty()).count() as u64;
        ix.totals.faults = ix.faults.len() as u64;
        ix
    }

    fn member(&mut self, g: u32, m: u32) -> &mut MemberLog {
        self.members.entry((g, m)).or_default()
    }

    fn add(&mut self, ev: &Event, phase_start: &mut Option<u64>) {
        match ev {
            Event::Meta { nodes, .. } => self.nodes = nodes.clone(),
            Event::Mark { t, what } => {
                if *what == Mark::PhaseStart {
                    *phase_start = Some(*t);
                }
            }
            Event::Fault {
                t,
                id,
                kind,
                nodes,
                step,
                note,
            } => {
                let i = match self.faults.iter().position(|f| f.id == *id) {
                    Some(i) => i,
                    None => {
                        self.faults.push(FaultSpan {
                            id: *id,
                            kind: *kind,
                            nodes: nodes.clone(),
                            start: *t,
                            end: None,
                            notes: Vec::new(),
                        });
                        self.faults.len() - 1
                    }
                };
                let f = &mut self.faults[i];
                match step {
                    Step::Start => f.start = *t,
                    Step::End => f.end = Some(*t),
                    Step::Info => {}
                }
                if !note.is_empty() {
                    f.notes.push(note.clone());
                }
            }
            Event::Group { g, gid, .. } => {
                self.gids.insert(*g, gid.clone());
            }
            Event::Join { g, m, after, .. } => self.member(*g, *m).after = Some(*after),
            Event::Epoch { g, m, e, .. } => self.member(*g, *m).epoch = Some(*e),
            Event::Connect { t, g, m, node } => {
                self.totals.connects += 1;
                self.member(*g, *m)
                    .sockets
                    .push((*t, Some(*node), String::new()));
            }
            Event::Disconnect { t, g, m, why, .. } => {
                self.totals.disconnects += 1;
                self.member(*g, *m).sockets.push((*t, None, why.clone()));
            }
            Event::CaughtUp { .. } => {}
            Event::Send {
                t, g, c, id, due, ..
            } => {
                self.totals.send_attempts += 1;
                let msg = self.msgs.entry((*g, *c)).or_default();
                if msg.attempts == 0 {
                    msg.id = id.clone();
                    msg.first_send = *t;
                    msg.due = *due;
                }
                msg.attempts += 1;
                // Every id a message went out under (a client that changed
                // it on a resend could get it stored twice).
                self.by_id.insert(id.clone(), (*g, *c));
            }
            Event::Ack {
                t, g, c, s, dup, ..
            } => self
                .msgs
                .entry((*g, *c))
                .or_default()
                .acks
                .push((*t, *s, *dup)),
            Event::Refused { g, c, .. } => {
                self.totals.refusals += 1;
                self.msgs.entry((*g, *c)).or_default().refusals += 1;
            }
            Event::Deliver { t, g, m, s, c, .. } => {
                self.totals.deliveries += 1;
                self.member(*g, *m).deliveries.push((*t, *s, *c));
            }
        }
    }

    /// The node id of gateway `i` (its index if the meta is missing).
    pub fn node_name(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    }

    /// Ids of the faults active at some time in `[from, to]`.
    pub fn faults_between(&self, from: u64, to: u64) -> Vec<u32> {
        self.faults
            .iter()
            .filter(|f| f.start <= to && f.end.unwrap_or(self.end_t) >= from)
            .map(|f| f.id)
            .collect()
    }
}
