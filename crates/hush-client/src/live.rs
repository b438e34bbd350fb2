//! What the client knows that is live only and never stored: co-members'
//! presence (pushed by the server on change, or fetched with `GetPresence`)
//! and who is typing in which group (from ephemeral MLS messages). Plain
//! data with the time passed in, so it is tested without a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A typing notice shows for this long unless renewed (senders renew every
/// [`TYPING_RESEND_MS`] while the user types).
pub const TYPING_TTL_MS: u64 = 6_000;
/// How often a client re-sends its typing notice while its user types.
pub const TYPING_RESEND_MS: u64 = 3_000;

/// Presence and typing state.
#[derive(Debug, Default)]
pub struct LiveState {
    presence: BTreeMap<String, bool>,
    changes: Vec<(String, bool)>,
    /// group -> user -> when the last typing notice arrived (ms).
    typing: HashMap<Vec<u8>, BTreeMap<String, u64>>,
    /// Groups whose last snapshot said their changes are not pushed.
    unpushed: BTreeSet<Vec<u8>>,
}

impl LiveState {
    /// A pushed presence change (kept for [`LiveState::take_changes`]).
    pub fn presence_changed(&mut self, user_id: String, online: bool) {
        self.presence.insert(user_id.clone(), online);
        self.changes.push((user_id, online));
    }

    /// A snapshot (`GetPresence`): current state, not a change. `pushed`:
    /// whether the server pushes the group's changes (false above its
    /// group size limit: the snapshot must be asked for again).
    pub fn presence_snapshot(
        &mut self,
        group_id: &[u8],
        pushed: bool,
        users: impl IntoIterator<Item = (String, bool)>,
    ) {
        self.presence.extend(users);
        if pushed {
            self.unpushed.remove(group_id);
        } else {
            self.unpushed.insert(group_id.to_vec());
        }
    }

    /// Whether a group's presence changes are pushed (as its last snapshot
    /// said; true before any).
    pub fn presence_pushed(&self, group_id: &[u8]) -> bool {
        !self.unpushed.contains(group_id)
    }

    /// The last known presence of a user.
    pub fn presence(&self, user_id: &str) -> Option<bool> {
        self.presence.get(user_id).copied()
    }

    /// The pushed changes since the last call, in arrival order.
    pub fn take_changes(&mut self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.changes)
    }

    /// A typing notice from `user_id` in a group arrived at `now_ms`.
    pub fn typing_seen(&mut self, group_id: &[u8], user_id: &str, now_ms: u64) {
        self.typing
            .entry(group_id.to_vec())
            .or_default()
            .insert(user_id.to_owned(), now_ms);
    }

    /// `user_id` stopped typing (its message arrived).
    pub fn typing_stopped(&mut self, group_id: &[u8], user_id: &str) {
        if let Some(g) = self.typing.get_mut(group_id) {
            g.remove(user_id);
        }
    }

    /// Who is typing in a group at `now_ms`, by name.
    pub fn typing_in(&self, group_id: &[u8], now_ms: u64) -> Vec<String> {
        self.typing
            .get(group_id)
            .map(|g| {
                g.iter()
                    .filter(|(_, at)| now_ms.saturating_sub(**at) < TYPING_TTL_MS)
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_changes_and_snapshots() {
        let mut l = LiveState::default();
        assert_eq!(l.presence("bob"), None);
        assert!(l.presence_pushed(b"g"));
        l.presence_snapshot(
            b"g",
            false,
            [("bob".to_string(), true), ("carol".to_string(), false)],
        );
        assert!(!l.presence_pushed(b"g"));
        assert_eq!(l.presence("bob"), Some(true));
        assert!(l.take_changes().is_empty());
        l.presence_changed("bob".into(), false);
        l.presence_changed("bob".into(), true);
        assert_eq!(
            l.take_changes(),
            vec![("bob".to_string(), false), ("bob".to_string(), true)]
        );
        assert!(l.take_changes().is_empty());
        assert_eq!(l.presence("bob"), Some(true));
        l.presence_snapshot(b"g", true, []);
        assert!(l.presence_pushed(b"g"));
    }

    #[test]
    fn typing_expires_and_stops() {
        let mut l = LiveState::default();
        l.typing_seen(b"g", "bob", 1_000);
        l.typing_seen(b"g", "carol", 2_000);
        assert_eq!(l.typing_in(b"g", 2_000), vec!["bob", "carol"]);
        assert!(l.typing_in(b"other", 2_000).is_empty());
        assert_eq!(l.typing_in(b"g", 1_000 + TYPING_TTL_MS), vec!["carol"]);
        l.typing_stopped(b"g", "carol");
        assert!(l.typing_in(b"g", 2_500).iter().all(|u| u != "carol"));
    }
}
