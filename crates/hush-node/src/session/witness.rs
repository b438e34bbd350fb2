//! Presence after a crash: a user whose session and connections all die
//! with a node would stay "online" for its co-members forever, since the
//! only record of its announcement was in the dead session. So each
//! announcement is also told to the user's *witness*: the node that would
//! own the user's session if this node left the view
//! ([`Placement::owner_without`]; with rendezvous hashing, the node that
//! takes the session over when this one dies). The witness keeps the user
//! and the node that announced it. When a view change drops that node, the
//! witness waits one presence grace (connections elsewhere re-attach to the
//! new owner meanwhile, which announces online again), asks the cluster
//! whether the user is online, and if not announces it offline to its
//! co-members, as its session would have.
//!
//! The table is bounded by the users whose sessions the cluster holds
//! (each online user is witnessed by one node); entries whose announcer is
//! alive but no longer owns the user are dropped at each view change, and
//! every node tells its witnesses again which of its users are online
//! (the witness may have changed with the view).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hush_cluster::Placement;

use super::Sessions;
use crate::route::{lock, session_key};

/// Who announced what, for presence after a crash (see the module doc).
#[derive(Default)]
pub struct Witness {
    /// Users whose sessions on this node announced them online.
    announced: Mutex<HashSet<String>>,
    /// Users another node announced online, with that node: this node is
    /// their witness.
    witnessed: Mutex<HashMap<String, String>>,
}

impl Sessions {
    /// A session here announced `user_id` online or offline: record it and
    /// tell the user's witness.
    pub(super) fn tell_witness(&self, user_id: &str, online: bool) {
        {
            let mut announced = lock(&self.witness.announced);
            if online {
                announced.insert(user_id.to_owned());
            } else {
                announced.remove(user_id);
            }
        }
        let Some(placement) = self.route.placement() else {
            return;
        };
        let Some(node) = placement.owner_without(&session_key(user_id), self.route.me()) else {
            return;
        };
        let user = vec![user_id.to_owned()];
        let (on, off) = if online {
            (user, Vec::new())
        } else {
            (Vec::new(), user)
        };
        self.route.tell_witness(node, on, off);
    }

    /// `from` says these users are online (or offline now) on its sessions.
    pub fn witness(&self, from: &str, online: Vec<String>, offline: Vec<String>) {
        let mut w = lock(&self.witness.witnessed);
        for user in offline {
            if w.get(&user).is_some_and(|n| n == from) {
                w.remove(&user);
            }
        }
        for user in online {
            w.insert(user, from.to_owned());
        }
    }

    /// Part of following a view: users witnessed for a node that left are
    /// checked after the grace (and announced offline if nobody holds them
    /// online); entries of nodes that no longer own their user are dropped;
    /// this node's own online users are told to their (new) witnesses.
    pub(super) fn witness_follow_view(self: &Arc<Self>, placement: &Placement) {
        let me = self.route.me();
        let members = &placement.view().members;
        let mut orphans = BTreeSet::new();
        lock(&self.witness.witnessed).retain(|user, node| {
            if !members.contains(node) {
                orphans.insert(user.clone());
                false
            } else {
                placement.owner(&session_key(user)) == node
            }
        });
        let mut by_witness: BTreeMap<String, Vec<String>> = BTreeMap::new();
        lock(&self.witness.announced).retain(|user| {
            let key = session_key(user);
            if placement.owner(&key) != me {
                return false; // moved: its new owner announces it
            }
            if let Some(node) = placement.owner_without(&key, me) {
                by_witness
                    .entry(node.to_owned())
                    .or_default()
                    .push(user.clone());
            }
            true
        });
        for (node, users) in by_witness {
            self.route.tell_witness(&node, users, Vec::new());
        }
        if orphans.is_empty() {
            return;
        }
        let sessions = self.clone();
        let grace = Duration::from_millis(self.limits.presence_grace_ms);
        self.runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            sessions.announce_orphans_offline(orphans).await;
        });
    }

    /// Users whose announcing node died: those the cluster does not hold
    /// online now are announced offline.
    async fn announce_orphans_offline(&self, users: BTreeSet<String>) {
        let online = match self.online_users(&users).await {
            Ok(online) => online,
            Err(e) => {
                tracing::warn!(users = users.len(), error = %e, "presence: orphan check failed");
                return;
            }
        };
        for user in users.difference(&online) {
            metrics::counter!("hush_presence_orphans_total").increment(1);
            tracing::info!(user = %user, "presence: its node died with it: offline");
            self.announce_offline_for_the_dead(user).await;
        }
    }
}
