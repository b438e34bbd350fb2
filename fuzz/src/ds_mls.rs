//! hush-ds on arbitrary MLS bytes: every function the node calls on what a
//! client uploads — KeyPackage validation, group creation from GroupInfo +
//! ratchet tree, commits, standalone proposals, the application-message
//! screen, the GroupInfo and the Welcome that travel with a commit — plus
//! the tracker snapshot decoder (store bytes). Calls go to a real tracker,
//! restored for every input from a committed snapshot of a real group
//! (`fuzz/fixtures/ds/`), so each input sees the same state.
//!
//! Input: the first byte picks the call, the rest are its bytes.

use std::path::Path;

use hush_ds::{check_welcome, validate_key_package, AddedMember, GroupTracker};

/// The epoch window the node's default config uses.
const EPOCH_WINDOW: u64 = 5;

pub struct Ds {
    /// A one-member group at epoch 0.
    snapshot: Vec<u8>,
    /// A valid commit for it (adds a second member).
    commit: Vec<u8>,
}

impl Ds {
    /// Loads the fixture from `dir` (`fuzz/fixtures/ds`).
    pub fn load(dir: &Path) -> Self {
        let read =
            |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("fixture {f}: {e}"));
        Self {
            snapshot: read("snapshot.bin"),
            commit: read("commit.bin"),
        }
    }

    fn tracker(&self) -> GroupTracker {
        GroupTracker::load(&self.snapshot).expect("fixture snapshot loads")
    }

    pub fn run(&self, data: &[u8]) {
        let Some((&op, bytes)) = data.split_first() else {
            return;
        };
        match op % 8 {
            0 => {
                let _ = validate_key_package(bytes);
            }
            1 => {
                let (gi, tree) = split(bytes);
                if let Ok(t) = GroupTracker::create(gi, tree) {
                    round_trip(&t);
                }
            }
            2 => {
                let mut t = self.tracker();
                let before = t.epoch();
                match t.apply_commit(bytes) {
                    Ok(effect) => {
                        assert_eq!(effect.epoch_before, before);
                        assert_eq!(effect.new_epoch, t.epoch());
                        assert_eq!(effect.members_after.len(), t.members().len());
                        round_trip(&t);
                    }
                    Err(_) => assert_eq!(t.epoch(), before, "a refused commit changed the epoch"),
                }
            }
            3 => {
                let mut t = self.tracker();
                let before = t.pending_proposals();
                if t.apply_proposal(bytes).is_err() {
                    assert_eq!(
                        t.pending_proposals(),
                        before,
                        "a refused proposal was queued"
                    );
                } else {
                    round_trip(&t);
                }
            }
            4 => {
                let t = self.tracker();
                if let Ok(epoch) = t.check_application(bytes, EPOCH_WINDOW) {
                    assert!(epoch <= t.epoch());
                }
            }
            5 => {
                let mut t = self.tracker();
                t.apply_commit(&self.commit)
                    .expect("fixture commit applies");
                let _ = t.check_group_info(bytes);
            }
            6 => {
                if let Ok(t) = GroupTracker::load(bytes) {
                    let _ = (t.members(), t.pending_proposals(), t.ratchet_tree());
                }
            }
            _ => {
                // The Welcome of a commit bundle, against the members the
                // commit added (a fixed one: a Welcome naming its
                // KeyPackageRef passes).
                let added = [AddedMember {
                    identity: b"bob/laptop".to_vec(),
                    signature_key: vec![7; 32],
                    key_package_ref: vec![0x42; 32],
                }];
                let _ = check_welcome(bytes, &added);
                let _ = check_welcome(bytes, &[]);
            }
        }
    }
}

/// `[len u16 BE][first][second]`; a short input is all `first`.
fn split(bytes: &[u8]) -> (&[u8], &[u8]) {
    if bytes.len() < 2 {
        return (bytes, &[]);
    }
    let n = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let rest = &bytes[2..];
    rest.split_at(n.min(rest.len()))
}

/// A tracker's snapshot loads back to the same state.
fn round_trip(t: &GroupTracker) {
    let snap = t.snapshot().expect("snapshot");
    let back = GroupTracker::load(&snap).expect("own snapshot loads");
    assert_eq!(back.epoch(), t.epoch());
    assert_eq!(back.group_id(), t.group_id());
    assert_eq!(back.members(), t.members());
    assert_eq!(back.pending_proposals(), t.pending_proposals());
}
