//! Where the connections of this node's sessions are, as each SessionActor
//! last published them: the fan-out reads it to write to the connections
//! without a message to every recipient's actor. It also holds whether each
//! session announced its user online, so that `GetPresence` on a group of
//! 1,000 reads a flag per member instead of calling 1,000 actors.
//!
//! The SessionActor stays the only one that decides which connections its
//! user has (attach, detach, kick, view changes); after each change it
//! publishes a snapshot here, and removes it when it stops. A delivery reads
//! the snapshot under a short lock and writes outside it. A delivery that
//! races an attach may miss the new connection: that connection reads from
//! the store what it missed (its Sync, or the resync after a move), as it
//! always did for deliveries in flight; the per-stream `sent` positions
//! drop what it gets twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::{ActorId, ActorRef};

use hush_store::MemberDevice;

use super::SessionMsg;
use crate::wire::ConnRef;

/// One user's connections (wherever they are) and their devices.
pub type ConnList = Arc<[(ConnRef, String)]>;

/// The connections a delivery goes to (see [`SessionIndex::connections_of`]).
pub struct Recipients {
    /// This node's: (index of the user's first device, connection id).
    pub local: Vec<(usize, u64)>,
    /// Other nodes': (index of the user's first device, where it is).
    pub remote: Vec<(usize, ConnRef)>,
}

/// A published session: its actor (to tell it about connections found
/// gone) and its connections.
#[derive(Clone)]
pub struct Published {
    pub actor: ActorRef<SessionMsg>,
    pub conns: ConnList,
    /// Online announced (and offline not yet), as the actor last set it.
    pub online: bool,
}

#[derive(Default)]
pub struct SessionIndex {
    inner: Mutex<HashMap<String, Published>>,
}

impl SessionIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Published>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session of `user_id` on this node, if it runs.
    pub fn get(&self, user_id: &str) -> Option<Published> {
        self.lock().get(user_id).cloned()
    }

    /// The connections of `devices` (one lookup per run of a user's
    /// devices; member lists are sorted by user, but any order is
    /// correct), under one lock: this node's (`me`) by id, the others with
    /// their node; each with the index in `devices` of its user's first
    /// device there, for the caller to name the user.
    pub fn connections_of(&self, devices: &[MemberDevice], me: &str) -> Recipients {
        let mut found = Recipients {
            local: Vec::with_capacity(devices.len()),
            remote: Vec::new(),
        };
        let map = self.lock();
        let mut start = 0;
        while let Some(first) = devices.get(start) {
            let user = first.user_id.as_str();
            let n = devices[start..]
                .iter()
                .take_while(|d| d.user_id == user)
                .count();
            let mine = &devices[start..start + n];
            if let Some(session) = map.get(user) {
                for ((node, conn_id), device_id) in session.conns.iter() {
                    if !mine.iter().any(|d| d.device_id == *device_id) {
                        continue;
                    }
                    if node == me {
                        found.local.push((start, *conn_id));
                    } else {
                        found.remote.push((start, (node.clone(), *conn_id)));
                    }
                }
            }
            start += n;
        }
        found
    }

    /// Records the connections of the session `actor` of `user_id`, and
    /// whether it announced its user online.
    pub fn publish(
        &self,
        user_id: &str,
        actor: ActorRef<SessionMsg>,
        conns: impl Iterator<Item = (ConnRef, String)>,
        online: bool,
    ) {
        let conns: ConnList = conns.collect();
        self.lock().insert(
            user_id.to_owned(),
            Published {
                actor,
                conns,
                online,
            },
        );
    }

    /// Those of `users` whose session on this node announced them online,
    /// under one lock.
    pub fn online_among(&self, mut users: Vec<String>) -> Vec<String> {
        let map = self.lock();
        users.retain(|u| map.get(u).is_some_and(|p| p.online));
        users
    }

    /// Forgets the session of `user_id` if it is still the actor `id` (a
    /// newer one may have started meanwhile).
    pub fn remove(&self, user_id: &str, id: ActorId) {
        let mut map = self.lock();
        if map.get(user_id).is_some_and(|p| p.actor.get_id() == id) {
            map.remove(user_id);
        }
    }
}
