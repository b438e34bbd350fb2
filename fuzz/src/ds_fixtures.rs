//! Makes the `ds_mls` fixture (a real one-member group's tracker snapshot
//! and a valid commit for it) and seed inputs, with the client SDK's MLS
//! code. Run once; the outputs are committed (`fuzz/fixtures/ds/`,
//! `fuzz/corpus/ds_mls/`).

use std::path::Path;

use hush_client::mls::{self, Change};
use hush_client::store::{Identity, StateDb};
use hush_ds::GroupTracker;

fn identity(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        device_id: format!("{user}-dev"),
        keys: mls::new_device_keys().expect("keys"),
        server: String::new(),
    }
}

/// Writes the fixture into `fixtures` and the seeds into `corpus`.
pub fn generate(fixtures: &Path, corpus: &Path) {
    std::fs::create_dir_all(fixtures).expect("fixture dir");
    std::fs::create_dir_all(corpus).expect("corpus dir");
    let alice_db = StateDb::open_in_memory().expect("db");
    let alice = identity("alice");
    let bob_db = StateDb::open_in_memory().expect("db");
    let bob = identity("bob");

    let g = mls::create_group(&alice_db, &alice).expect("group");
    let tracker = GroupTracker::create(&g.group_info, &g.ratchet_tree).expect("tracker");
    let snapshot = tracker.snapshot().expect("snapshot");
    let app = mls::encrypt(&alice_db, &alice, &g.group_id, b"hello").expect("encrypt");

    let (kps, _) = mls::new_key_packages(&bob_db, &bob, 1, false).expect("kp");
    let kp = mls::parse_key_package(&alice_db, &kps[0]).expect("parse kp");
    let out = mls::commit(&alice_db, &alice, &g.group_id, Change::Add(vec![kp])).expect("commit");

    std::fs::write(fixtures.join("snapshot.bin"), &snapshot).expect("write");
    std::fs::write(fixtures.join("commit.bin"), &out.commit).expect("write");

    let seed = |name: &str, op: u8, bytes: &[u8]| {
        let mut v = vec![op];
        v.extend_from_slice(bytes);
        std::fs::write(corpus.join(name), v).expect("write seed");
    };
    seed("key_package", 0, &kps[0]);
    let mut create = (g.group_info.len() as u16).to_be_bytes().to_vec();
    create.extend_from_slice(&g.group_info);
    create.extend_from_slice(&g.ratchet_tree);
    seed("create", 1, &create);
    seed("commit", 2, &out.commit);
    seed("proposal_is_commit", 3, &out.commit);
    seed("application", 4, &app);
    seed("group_info_after_commit", 5, &out.group_info);
    seed("snapshot", 6, &snapshot);
    if let Some(w) = &out.welcome {
        seed("welcome_as_commit", 2, w);
    }
}
