//! Whether each session of this node announced its user online, as its
//! SessionActor last published it: `GetPresence` on a group of 1,000 reads
//! a flag per member under one lock instead of calling 1,000 actors.
//!
//! The SessionActor stays the only one that decides its user's presence;
//! after each change it publishes here, and removes its entry when it
//! stops. (Deliveries do not pass through sessions: a fan-out writes to the
//! connections of the member devices on each node, `conns.rs`.)

use std::collections::HashMap;
use std::sync::Mutex;

use ractor::ActorId;

/// A published session: which actor (a newer one may replace it) and
/// whether it announced its user online (and offline not yet).
struct Published {
    actor: ActorId,
    online: bool,
}

#[derive(Default)]
pub struct SessionIndex {
    inner: Mutex<HashMap<String, Published>>,
}

impl SessionIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Published>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records whether the session `actor` of `user_id` announced its user
    /// online.
    pub fn publish(&self, user_id: &str, actor: ActorId, online: bool) {
        self.lock()
            .insert(user_id.to_owned(), Published { actor, online });
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
        if map.get(user_id).is_some_and(|p| p.actor == id) {
            map.remove(user_id);
        }
    }
}
