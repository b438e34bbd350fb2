//! Membership and failure detection: SWIM (foca), sans-IO.
//!
//! [`Membership`] wraps a foca instance. The caller feeds it packets
//! ([`Membership::handle_data`]) and due timers ([`Membership::handle_timer`])
//! and carries out what it asks for ([`Membership::take_effects`]): packets to
//! send (over QUIC datagrams in the node) and timers to schedule. No clock
//! reads, no sockets: the tests drive several members through a simulated
//! network on a virtual clock.
//!
//! The live [`View`] is this node plus every member foca reports up. Its
//! epoch grows with every change seen locally; [`View::digest`] names the
//! member set, so two nodes can tell whether they route by the same view.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{Foca, Notification, PostcardCodec, Runtime, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::placement::View;

/// A node as the membership protocol knows it. `boot` distinguishes
/// successive runs of one node (a restart is a new identity that wins over
/// the old one at the same name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    /// Where its QUIC endpoint listens.
    pub addr: SocketAddr,
    pub boot: u64,
}

impl foca::Identity for NodeId {
    type Addr = String;

    /// Declared down while alive (a long pause, a partition): come back
    /// under a newer identity at once.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            boot: self.boot.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

/// What the caller must do after a call.
#[derive(Debug, Default)]
pub struct Effects {
    /// (destination, packet)
    pub send: Vec<(NodeId, Vec<u8>)>,
    /// (timer, fire after)
    pub timers: Vec<(Timer<NodeId>, Duration)>,
}

#[derive(Default)]
struct Outbox {
    effects: Effects,
    up: Vec<NodeId>,
    down: Vec<NodeId>,
    /// This node was declared down and foca renewed its identity.
    rejoined: Option<NodeId>,
}

impl Runtime<NodeId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        match notification {
            Notification::MemberUp(id) => self.up.push(id.clone()),
            Notification::MemberDown(id) => self.down.push(id.clone()),
            Notification::Rename(old, new) => {
                self.down.push(old.clone());
                self.up.push(new.clone());
            }
            Notification::Rejoin(id) => self.rejoined = Some(id.clone()),
            _ => {}
        }
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.effects.send.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.effects.timers.push((event, after));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

/// One node's membership state.
pub struct Membership {
    foca: Foca<NodeId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>,
    me: NodeId,
    /// Live peers by name (the newest identity of each).
    peers: BTreeSet<NodeId>,
    view: View,
    outbox: Outbox,
}

impl Membership {
    /// `cluster_size` tunes dissemination and suspicion (foca's LAN
    /// defaults: 1 s probes, suspicion scaled with the size); `seed` feeds
    /// the member-selection randomness.
    pub fn new(me: NodeId, cluster_size: u32, probe_period: Duration, seed: u64) -> Self {
        let size = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = probe_period;
        config.probe_rtt = probe_period / 2;
        config.suspect_to_down_after = probe_period * 3;
        // Members declared down (a partition's far side, a node paused past
        // the detector's patience) are asked back every few probe periods,
        // not every 65 s: the two sides of a healed partition merge, and a
        // rejoining node is taken back, within seconds.
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: probe_period * 4,
            num_members: std::num::NonZeroUsize::new(2).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: probe_period * 10,
            num_members: std::num::NonZeroUsize::MIN,
        });
        // Keep packets well inside a QUIC datagram.
        config.max_packet_size =
            std::num::NonZeroUsize::new(1000).unwrap_or(config.max_packet_size);
        let foca = Foca::new(
            me.clone(),
            config,
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        let view = View::new(1, [me.name.clone()]);
        Self {
            foca,
            me,
            peers: BTreeSet::new(),
            view,
            outbox: Outbox::default(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The current live view (this node included).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Live peers with their addresses.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.iter()
    }

    /// Introduces this node to a known peer (a seed from the config).
    pub fn announce(&mut self, peer: NodeId) -> Result<(), MembershipError> {
        let r = self.foca.announce(peer, &mut self.outbox);
        self.settle(r)
    }

    /// A packet from the network.
    pub fn handle_data(&mut self, packet: &[u8]) -> Result<(), MembershipError> {
        let r = self.foca.handle_data(packet, &mut self.outbox);
        self.settle(r)
    }

    /// A timer that fell due.
    pub fn handle_timer(&mut self, timer: Timer<NodeId>) -> Result<(), MembershipError> {
        let r = self.foca.handle_timer(timer, &mut self.outbox);
        self.settle(r)
    }

    /// Leaves gracefully: peers learn it at once instead of by suspicion.
    pub fn leave(&mut self) -> Result<(), MembershipError> {
        let r = self.foca.leave_cluster(&mut self.outbox);
        self.settle(r)
    }

    /// Packets to send and timers to schedule since the last call.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.outbox.effects)
    }

    fn settle(&mut self, r: Result<(), foca::Error>) -> Result<(), MembershipError> {
        let mut changed = false;
        let mut incarnation = self.view.incarnation;
        if let Some(renewed) = self.outbox.rejoined.take() {
            tracing::warn!(
                boot = renewed.boot,
                "this node was declared down by its peers and rejoins"
            );
            self.me = renewed;
            incarnation += 1;
            changed = true;
            // Introduce the new identity to every peer at once rather than
            // waiting for gossip to carry it.
            for peer in self.peers.iter().cloned().collect::<Vec<_>>() {
                if let Err(e) = self.foca.announce(peer, &mut self.outbox) {
                    tracing::debug!(error = %e, "announce after rejoin");
                }
            }
        }
        for down in std::mem::take(&mut self.outbox.down) {
            changed |= self.peers.remove(&down);
        }
        for up in std::mem::take(&mut self.outbox.up) {
            if up.name == self.me.name {
                continue;
            }
            // A newer boot of a peer replaces the older one.
            self.peers.retain(|p| p.name != up.name || p.boot > up.boot);
            if !self.peers.iter().any(|p| p.name == up.name) {
                changed |= self.peers.insert(up);
            }
        }
        if changed {
            let members = std::iter::once(self.me.name.clone())
                .chain(self.peers.iter().map(|p| p.name.clone()));
            self.view = View {
                incarnation,
                ..View::new(self.view.epoch + 1, members)
            };
        }
        r.map_err(|e| MembershipError(e.to_string()))
    }
}
