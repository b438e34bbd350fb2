//! Hand-made histories, one clean and one per anomaly kind: each test
//! states every nonzero count it expects, so an anomaly that drags others
//! along says so here.

use std::collections::BTreeMap;

use super::*;
use crate::history::{FaultKind, Mark, Step};

/// The clean run: group 0 ("a0"), members 0 (sender, on n1), 1 (n2) and
/// 2 (n3) joined after the setup commit at seq 1 (epoch 1); messages 0..=3
/// sent at 100, 200, 300, 400 ms, acknowledged 5 ms later as seqs 2..=5,
/// delivered to every member 10 ms after the send.
struct H {
    ev: Vec<Event>,
}

const T0: u64 = 1_000_000_000_000;

fn ms(v: u64) -> u64 {
    T0 + v * 1_000_000
}

fn id(c: u64) -> String {
    format!("0000000000000000{c:016x}")
}

impl H {
    fn empty() -> Self {
        let mut h = H { ev: Vec::new() };
        h.ev.push(Event::Meta {
            t: ms(0),
            run: "r".into(),
            nodes: vec!["n1".into(), "n2".into(), "n3".into()],
            seed: 1,
            lease_ttl_ms: 3000,
            probe_ms: 500,
        });
        h.ev.push(Event::Mark {
            t: ms(0),
            what: Mark::PhaseStart,
        });
        h.ev.push(Event::Group {
            t: ms(0),
            g: 0,
            gid: "a0".into(),
        });
        for m in 0..3 {
            h.ev.push(Event::Connect {
                t: ms(0),
                g: 0,
                m,
                node: m as usize,
            });
            h.ev.push(Event::Join {
                t: ms(0),
                g: 0,
                m,
                after: 1,
            });
            h.ev.push(Event::Epoch {
                t: ms(0),
                g: 0,
                m,
                e: 1,
            });
        }
        h
    }

    fn clean() -> Self {
        let mut h = Self::empty();
        for c in 0..4 {
            h.send(ms(100 * (c + 1)), c, &id(c));
            h.ack(ms(100 * (c + 1) + 5), c, c + 2);
            for m in 0..3 {
                h.deliver(ms(100 * (c + 1) + 10), m, c + 2, Some(c));
            }
        }
        h
    }

    fn send(&mut self, t: u64, c: u64, id: &str) {
        self.ev.push(Event::Send {
            t,
            g: 0,
            m: 0,
            c,
            id: id.into(),
            due: t,
        });
    }

    fn ack(&mut self, t: u64, c: u64, s: u64) {
        self.ev.push(Event::Ack {
            t,
            g: 0,
            m: 0,
            c,
            s,
            dup: false,
        });
    }

    fn deliver(&mut self, t: u64, m: u32, s: u64, c: Option<u64>) {
        self.ev.push(Event::Deliver {
            t,
            g: 0,
            m,
            s,
            e: 1,
            c,
        });
    }

    /// Removes member `m`'s deliveries of the seqs in `seqs`.
    fn undeliver(&mut self, m: u32, seqs: &[u64]) {
        self.ev.retain(
            |e| !matches!(e, Event::Deliver { m: mm, s, .. } if *mm == m && seqs.contains(s)),
        );
    }

    fn socket(&mut self, t: u64, m: u32, node: Option<usize>) {
        self.ev.push(match node {
            Some(node) => Event::Connect { t, g: 0, m, node },
            None => Event::Disconnect {
                t,
                g: 0,
                m,
                node: 0,
                why: "closed".into(),
            },
        });
    }

    fn fault(&mut self, id: u32, kind: FaultKind, node: &str, from: u64, to: u64) {
        for (t, step) in [(from, Step::Start), (to, Step::End)] {
            self.ev.push(Event::Fault {
                t,
                id,
                kind,
                nodes: vec![node.into()],
                step,
                note: String::new(),
            });
        }
    }

    fn check(&self, store: Option<&StoreDump>) -> Verdict {
        let mut ev = self.ev.clone();
        ev.sort_by_key(Event::t); // stable: a member's events keep their order
        check(&ev, store, &CheckOptions::default())
    }
}

/// The store after the clean run: the setup commit, then messages 0..=3.
fn store() -> StoreDump {
    let mut entries = vec![StoredEntry {
        seq: 1,
        kind: COMMIT,
        epoch: 0,
        id: "c0mm17".into(),
    }];
    for c in 0..4 {
        entries.push(StoredEntry {
            seq: c + 2,
            kind: APPLICATION,
            epoch: 1,
            id: id(c),
        });
    }
    StoreDump {
        groups: [(
            "a0".to_string(),
            StoredGroup {
                epoch: 1,
                head_seq: 5,
                entries,
            },
        )]
        .into_iter()
        .collect(),
    }
}

fn nonzero(v: &Verdict) -> BTreeMap<&'static str, u64> {
    v.counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.name(), *n))
        .collect()
}

fn expect(v: &Verdict, want: &[(&'static str, u64)]) {
    let want: BTreeMap<&'static str, u64> = want.iter().copied().collect();
    assert_eq!(nonzero(v), want, "{:#?}", v.anomalies);
    assert_eq!(v.ok, want.is_empty());
}

fn records(v: &Verdict, kind: AnomalyKind) -> Vec<&Anomaly> {
    v.anomalies.iter().filter(|a| a.kind == kind).collect()
}

#[test]
fn a_clean_run_passes_with_and_without_the_store() {
    let h = H::clean();
    let v = h.check(Some(&store()));
    expect(&v, &[]);
    assert!(v.store_checked);
    assert_eq!(v.totals.messages, 4);
    assert_eq!(v.totals.acked, 4);
    assert_eq!(v.totals.deliveries, 12);
    assert_eq!(v.totals.stored, 5);
    assert_eq!(v.totals.members, 3);
    assert_eq!(v.nodes, vec!["n1", "n2", "n3"]);
    expect(&h.check(None), &[]);
}

#[test]
fn an_acknowledged_message_missing_from_the_store() {
    let mut s = store();
    s.groups
        .get_mut("a0")
        .unwrap()
        .entries
        .retain(|e| e.seq != 4);
    let v = H::clean().check(Some(&s));
    expect(&v, &[("ack-lost", 1), ("seq-gap", 1)]);
    let a = records(&v, AnomalyKind::AckLost)[0];
    assert_eq!(a.seqs, Some((4, 4)));
    assert_eq!(a.t, ms(305));
}

#[test]
fn the_store_holds_another_message_at_an_acknowledged_seq() {
    let mut s = store();
    s.groups.get_mut("a0").unwrap().entries[2].id = "ff".into(); // seq 3
    let v = H::clean().check(Some(&s));
    // Message 1 (seq 3) is gone; seq 3 holds an entry no client sent, and
    // every member received message 1 where the store has that entry.
    expect(
        &v,
        &[
            ("ack-mismatch", 1),
            ("unknown-entry", 1),
            ("delivery-mismatch", 3),
        ],
    );
}

#[test]
fn a_message_acknowledged_under_two_seqs_and_a_seq_under_two_messages() {
    let mut h = H::clean();
    h.ack(ms(450), 3, 6);
    expect(&h.check(Some(&store())), &[("ack-conflict", 1)]);

    let mut h = H::clean();
    h.ev.retain(|e| !matches!(e, Event::Ack { c: 3, .. }));
    h.ack(ms(405), 3, 4); // seq 4 is message 2's
    expect(
        &h.check(Some(&store())),
        &[("ack-conflict", 1), ("ack-mismatch", 1)],
    );
}

#[test]
fn a_message_stored_twice() {
    // Message 3 resent under a new client_msg_id (a client bug), and the
    // store kept both copies: seq 6 is the second, which nobody received.
    let mut h = H::clean();
    h.send(ms(420), 3, "beef");
    let mut s = store();
    let g = s.groups.get_mut("a0").unwrap();
    g.entries.push(StoredEntry {
        seq: 6,
        kind: APPLICATION,
        epoch: 1,
        id: "beef".into(),
    });
    g.head_seq = 6;
    expect(&h.check(Some(&s)), &[("stored-twice", 1), ("deaf", 3)]);
}

#[test]
fn a_deaf_member_and_one_whose_resume_missed_a_seq() {
    let mut h = H::clean();
    h.fault(7, FaultKind::Pause, "n2", ms(250), ms(290));
    // Member 1 (on n2) stays connected and gets nothing after seq 3.
    h.undeliver(1, &[4, 5]);
    // Member 2 loses its socket at 350 ms, resumes on n1 and gets seq 5
    // but never seq 4 (acked at 305 ms, while it was still on n3).
    h.undeliver(2, &[4, 5]);
    h.socket(ms(350), 2, None);
    h.socket(ms(360), 2, Some(0));
    h.deliver(ms(415), 2, 5, Some(3));
    let v = h.check(Some(&store()));
    expect(&v, &[("deaf", 2), ("missing", 1), ("reordered", 1)]);
    let deaf = records(&v, AnomalyKind::Deaf)[0];
    assert_eq!(
        (deaf.m, deaf.seqs, deaf.node.as_deref()),
        (Some(1), Some((4, 5)), Some("n2"))
    );
    assert_eq!(deaf.faults, vec![7], "the pause was active 10 s around it");
    let missing = records(&v, AnomalyKind::Missing)[0];
    assert_eq!(
        (missing.m, missing.seqs, missing.node.as_deref()),
        (Some(2), Some((4, 4)), Some("n3"))
    );
}

#[test]
fn a_duplicate_and_a_reordered_delivery() {
    let mut h = H::clean();
    h.undeliver(1, &[3, 4, 5]);
    for (t, s) in [(310, 4), (320, 3), (330, 3), (410, 5)] {
        h.deliver(ms(t), 1, s, Some(s - 2));
    }
    let v = h.check(Some(&store()));
    expect(&v, &[("duplicate", 1), ("reordered", 1)]);
    assert_eq!(records(&v, AnomalyKind::Reordered)[0].seqs, Some((4, 4)));
    assert_eq!(records(&v, AnomalyKind::Duplicate)[0].t, ms(330));
}

#[test]
fn deliveries_that_do_not_match_the_store() {
    let mut h = H::clean();
    h.undeliver(2, &[3]);
    h.deliver(ms(210), 2, 3, Some(9));
    h.deliver(ms(500), 2, 7, Some(5)); // beyond the head
    let v = h.check(Some(&store()));
    expect(&v, &[("delivery-mismatch", 2)]);
    assert_eq!(records(&v, AnomalyKind::DeliveryMismatch).len(), 1);
}

#[test]
fn a_member_on_another_epoch() {
    let mut h = H::clean();
    h.ev.push(Event::Epoch {
        t: ms(500),
        g: 0,
        m: 2,
        e: 2,
    });
    expect(&h.check(Some(&store())), &[("epoch-divergence", 1)]);
    // Without the store, most members' epoch is the reference.
    expect(&h.check(None), &[("epoch-divergence", 1)]);
    let mut s = store();
    s.groups.get_mut("a0").unwrap().epoch = 2;
    expect(&h.check(Some(&s)), &[("epoch-divergence", 2)]);
}

#[test]
fn a_client_left_disconnected_and_a_send_never_acknowledged() {
    let mut h = H::clean();
    h.socket(ms(600), 1, None);
    h.send(ms(500), 4, &id(4));
    let v = h.check(Some(&store()));
    expect(&v, &[("disconnected-at-end", 1), ("unacked", 1)]);
    let d = records(&v, AnomalyKind::DisconnectedAtEnd)[0];
    assert_eq!((d.m, d.node.as_deref()), (Some(1), Some("n2")));
}

#[test]
fn a_group_missing_from_the_store() {
    let v = H::clean().check(Some(&StoreDump::default()));
    expect(&v, &[("ack-lost", 4)]);
}

#[test]
fn stored_seqs_with_holes_or_past_the_head() {
    let mut s = store();
    let g = s.groups.get_mut("a0").unwrap();
    g.head_seq = 7;
    let v = H::clean().check(Some(&s));
    // 6 and 7 are missing from the entries, and so every member misses
    // them too (deaf: connected throughout).
    expect(&v, &[("seq-gap", 2), ("deaf", 6)]);
    let mut s = store();
    s.groups.get_mut("a0").unwrap().head_seq = 4;
    // Seq 5 is stored past head_seq.
    expect(&H::clean().check(Some(&s)), &[("seq-gap", 1)]);
}

#[test]
fn records_are_capped_but_counts_are_not() {
    let mut h = H::clean();
    h.undeliver(1, &[5]);
    h.undeliver(2, &[5]);
    let mut ev = h.ev.clone();
    ev.sort_by_key(Event::t);
    let v = check(
        &ev,
        Some(&store()),
        &CheckOptions {
            max_records_per_kind: 1,
            ..CheckOptions::default()
        },
    );
    assert_eq!(v.counts[&AnomalyKind::Deaf], 2);
    assert_eq!(records(&v, AnomalyKind::Deaf).len(), 1);
    assert_eq!(v.omitted[&AnomalyKind::Deaf], 1);
}
