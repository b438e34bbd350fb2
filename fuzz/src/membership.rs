//! Cluster membership packets: QUIC datagrams from other nodes,
//! `[name length u8][sender name][foca packet]`, split as the mesh splits
//! them (`crates/hush-cluster/src/mesh.rs`, `read_datagrams`) and handed
//! to `Membership::handle_data`. The state machine is sans-IO, so one input
//! is a whole conversation: several datagrams, with the timers each step
//! schedules fired in between (time moving on), on one node's membership.
//!
//! Input: datagrams as `[len u16 BE][datagram]`, up to [`MAX_PACKETS`].

use std::net::SocketAddr;
use std::time::Duration;

use hush_cluster::membership::{Membership, NodeId};

const MAX_PACKETS: usize = 16;
/// Timers fired after each step (the rest wait for the next step).
const MAX_TIMERS_PER_STEP: usize = 32;
const PROBE: Duration = Duration::from_millis(500);

fn id(name: &str, port: u16, boot: u64) -> NodeId {
    NodeId {
        name: name.into(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        boot,
    }
}

/// The node under test.
fn me() -> NodeId {
    id("n1", 7401, 1)
}

pub fn run(data: &[u8]) {
    let mut m = Membership::new(me(), 3, PROBE, 7);
    let _ = m.announce(id("n2", 7402, 1));
    let mut timers = m.take_effects().timers;
    let mut rest = data;
    for _ in 0..MAX_PACKETS {
        if rest.len() < 2 {
            break;
        }
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let (datagram, tail) = rest[2..].split_at(n.min(rest.len() - 2));
        rest = tail;
        if let Some(packet) = packet_of(datagram) {
            let _ = m.handle_data(packet);
        }
        let due: Vec<_> = timers
            .drain(..timers.len().min(MAX_TIMERS_PER_STEP))
            .collect();
        for (timer, _after) in due {
            let _ = m.handle_timer(timer);
        }
        let effects = m.take_effects();
        timers.extend(effects.timers);
        for (to, packet) in &effects.send {
            assert!(
                packet.len() <= 1000,
                "packet to {} above max_packet_size",
                to.name
            );
        }
        assert!(
            m.view().members.contains(&m.me().name),
            "this node left its own view"
        );
    }
}

/// The foca packet of a datagram, as the mesh reads it.
fn packet_of(datagram: &[u8]) -> Option<&[u8]> {
    let (&len, rest) = datagram.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    std::str::from_utf8(&rest[..len]).ok()?;
    Some(&rest[len..])
}

/// A real exchange: node n2 announces itself to n1 and they talk for a
/// while; every datagram n1 received is framed as one input, and the whole
/// conversation as another.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut n1 = Membership::new(me(), 3, PROBE, 7);
    let mut n2 = Membership::new(id("n2", 7402, 1), 3, PROBE, 8);
    let _ = n2.announce(me());
    let frame = |from: &str, packet: &[u8]| {
        let mut d = vec![from.len() as u8];
        d.extend_from_slice(from.as_bytes());
        d.extend_from_slice(packet);
        let mut v = (d.len() as u16).to_be_bytes().to_vec();
        v.extend(d);
        v
    };
    let mut to_n1 = Vec::new();
    for _ in 0..6 {
        let e2 = n2.take_effects();
        for (_, p) in e2.send {
            to_n1.push(frame("n2", &p));
            let _ = n1.handle_data(&p);
        }
        for (t, _) in e2.timers.into_iter().take(4) {
            let _ = n2.handle_timer(t);
        }
        let e1 = n1.take_effects();
        for (_, p) in e1.send {
            let _ = n2.handle_data(&p);
        }
        for (t, _) in e1.timers.into_iter().take(4) {
            let _ = n1.handle_timer(t);
        }
    }
    let mut out: Vec<(String, Vec<u8>)> = to_n1
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("from_n2_{i}"), d.clone()))
        .collect();
    out.push(("conversation".into(), to_n1.concat()));
    out
}
