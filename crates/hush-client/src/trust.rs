//! Trusting the server no more than this device must: who said what is
//! checked against the device keys this device pinned from the directory,
//! and people can compare safety numbers to check the directory itself.
//! Sans-IO: every function takes the state database (and the directory's
//! answer when there is one); the network side is `client/directory.rs`.
//!
//! **Pinning (trust on first use).** The first directory answer for a user
//! is pinned as it is. Every later answer is compared with the pins: a new
//! device, a device that disappeared (revoked) or a device whose key changed
//! is recorded, the contact is flagged `changed` (warn until the person looks
//! at the safety number again), a verified contact becomes unverified, and an
//! alert is raised. A device that disappeared stays pinned as not current, so
//! a leaf that still carries it is refused.
//!
//! **Leaves.** A leaf is trusted when its identity is `<user>/<device>`,
//! that device is pinned as current for that user, and its signature key is
//! the pinned one ([`check_leaf`]). A device this device has never pinned is
//! [`Verdict::Unknown`]: the caller asks the directory and checks again. A
//! commit may change a leaf's keys but never its identity ([`check_commit`]).
//!
//! **Senders.** The server names the device that submitted each timeline
//! entry; the MLS sender must be that same device ([`check_sender`]), so a
//! server (or a member) cannot make one member's words appear under
//! another's name without this device noticing.
//!
//! **Safety numbers** ([`safety_number`]): Signal's numeric fingerprint
//! (`NumericFingerprintGenerator`, version 0, 5200 iterations of SHA-512) with
//! a user's current device keys, sorted bytewise and concatenated, as the
//! public key and the handle as the stable identifier. Each user's
//! fingerprint is 30 digits (six 5-byte big-endian chunks of the hash, each
//! mod 100000); the safety number is the two fingerprints, the smaller first,
//! so both people see the same 60 digits. The web client implements the same
//! function (`web/src/trust.ts`) and both test the same vectors.

use serde::Serialize;

use crate::error::Result;
use crate::mls::ChangedLeaf;
use crate::store::{now_ms, StateDb};

/// A device as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryDevice {
    /// The server-assigned device id.
    pub device_id: String,
    /// Its Ed25519 public key.
    pub signature_key: Vec<u8>,
}

/// How a user's devices changed compared with the pins (device ids).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceChange {
    /// Devices the directory lists that were not pinned.
    pub added: Vec<String>,
    /// Pinned devices the directory no longer lists (revoked).
    pub removed: Vec<String>,
    /// Devices whose key is not the pinned one (a red flag: device keys never
    /// change in Hush).
    pub rekeyed: Vec<String>,
    /// The contact was verified before this change (and is not any more).
    pub was_verified: bool,
}

impl DeviceChange {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.rekeyed.is_empty()
    }
}

/// What pinning a directory answer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// The user was not pinned yet: the answer is pinned as it is.
    First,
    /// The same devices with the same keys.
    Same,
    /// The devices changed: recorded, flagged, alerted.
    Changed(DeviceChange),
}

/// The alert kind for a change of another user's devices.
pub const ALERT_DEVICES_CHANGED: &str = "devices_changed";
/// The alert kind for a change of this device's own user's devices (a new
/// device nobody here linked is the classic ghost device).
pub const ALERT_OWN_DEVICES_CHANGED: &str = "own_devices_changed";

/// Pins the directory's answer for `user` (see the module docs) and raises
/// an alert when it changed. `me` is this device's own user id.
pub fn pin_directory(
    db: &StateDb,
    me: &str,
    user: &str,
    devices: &[DirectoryDevice],
) -> Result<PinOutcome> {
    db.atomically(|db| {
        let now = now_ms();
        let Some(contact) = db.contact(user)? else {
            db.put_contact(user, false, false, now)?;
            for d in devices {
                db.pin_device(user, &d.device_id, &d.signature_key, now)?;
            }
            return Ok(PinOutcome::First);
        };
        let mut change = DeviceChange::default();
        for d in devices {
            match contact.devices.iter().find(|p| p.device_id == d.device_id) {
                Some(p) if p.current && p.signature_key == d.signature_key => continue,
                Some(p) if p.signature_key != d.signature_key => {
                    change.rekeyed.push(d.device_id.clone())
                }
                // Pinned once, then gone, now listed again.
                Some(_) | None => change.added.push(d.device_id.clone()),
            }
            db.pin_device(user, &d.device_id, &d.signature_key, now)?;
        }
        for p in contact.devices.iter().filter(|p| p.current) {
            if !devices.iter().any(|d| d.device_id == p.device_id) {
                change.removed.push(p.device_id.clone());
                db.unpin_device(user, &p.device_id)?;
            }
        }
        if change.is_empty() {
            db.put_contact(user, contact.verified, contact.changed, now)?;
            return Ok(PinOutcome::Same);
        }
        change.was_verified = contact.verified;
        db.put_contact(user, false, true, now)?;
        let kind = if user == me {
            ALERT_OWN_DEVICES_CHANGED
        } else {
            ALERT_DEVICES_CHANGED
        };
        let body = serde_json::to_string(&change).unwrap_or_else(|_| "{}".into());
        db.add_alert(user, kind, &body)?;
        Ok(PinOutcome::Changed(change))
    })
}

/// Whether a leaf may be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its device is pinned as current with this key.
    Trusted,
    /// Its device is not pinned: ask the directory about this user, then
    /// check again (a device still unknown then is forged).
    Unknown {
        /// The user to look up.
        user: String,
    },
    /// It must not be trusted; the reason, for the person.
    Forged(String),
}

/// Checks one leaf (identity `<user>/<device>` and, when known, its
/// signature key) against the pins.
pub fn check_leaf(db: &StateDb, identity: &str, key: Option<&[u8]>) -> Result<Verdict> {
    let Some((user, device)) = hush_proto::auth::parse_identity(identity.as_bytes()) else {
        return Ok(Verdict::Forged(format!(
            "{identity:?} is not a Hush device identity"
        )));
    };
    let Some(contact) = db.contact(user)? else {
        return Ok(Verdict::Unknown {
            user: user.to_string(),
        });
    };
    let Some(pin) = contact.devices.iter().find(|d| d.device_id == device) else {
        return Ok(Verdict::Unknown {
            user: user.to_string(),
        });
    };
    if !pin.current {
        return Ok(Verdict::Forged(format!(
            "device {device} of {user} was revoked"
        )));
    }
    match key {
        Some(k) if k != pin.signature_key.as_slice() => Ok(Verdict::Forged(format!(
            "the key of {identity} is not the one the directory lists for that device"
        ))),
        _ => Ok(Verdict::Trusted),
    }
}

/// Checks the server's `sender` of a timeline entry against the MLS
/// sender: `Some(reason)` when they differ.
pub fn check_sender(server_sender: &str, mls_sender: &str) -> Option<String> {
    (server_sender != mls_sender).then(|| {
        format!("the server says {server_sender} sent it, but it is signed as {mls_sender}")
    })
}

/// Checks what a commit did to the tree: no kept leaf changes its identity,
/// and every added or changed leaf is trusted.
pub fn check_commit(db: &StateDb, leaves: &[ChangedLeaf]) -> Result<Verdict> {
    for l in leaves {
        if let Some(prev) = &l.previous_identity {
            if prev != &l.identity {
                return Ok(Verdict::Forged(format!(
                    "leaf {} changed its identity from {prev} to {}",
                    l.leaf, l.identity
                )));
            }
        }
    }
    check_leaves(
        db,
        leaves
            .iter()
            .map(|l| (l.identity.as_str(), l.signature_key.as_slice())),
    )
}

/// Checks leaves (identity, key): the first forged one wins, then the
/// first unknown one.
pub fn check_leaves<'a>(
    db: &StateDb,
    leaves: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Verdict> {
    let mut unknown = None;
    for (identity, key) in leaves {
        match check_leaf(db, identity, Some(key))? {
            Verdict::Trusted => {}
            v @ Verdict::Forged(_) => return Ok(v),
            v @ Verdict::Unknown { .. } => {
                unknown.get_or_insert(v);
            }
        }
    }
    Ok(unknown.unwrap_or(Verdict::Trusted))
}

/// Signal's fingerprint version (its `NumericFingerprintGenerator`).
const FINGERPRINT_VERSION: u16 = 0;
/// Signal's iteration count.
const FINGERPRINT_ITERATIONS: usize = 5200;

/// A user's 30-digit fingerprint over its device keys (any order).
pub fn fingerprint(user_id: &str, keys: &[Vec<u8>]) -> String {
    let mut sorted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    sorted.sort();
    let key: Vec<u8> = sorted.concat();
    let mut hash: Vec<u8> = [
        &FINGERPRINT_VERSION.to_be_bytes()[..],
        &key,
        user_id.as_bytes(),
    ]
    .concat();
    for _ in 0..FINGERPRINT_ITERATIONS {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(&hash);
        ctx.update(&key);
        hash = ctx.finish().as_ref().to_vec();
    }
    hash[..30]
        .chunks(5)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", v % 100_000)
        })
        .collect()
}

/// The 60-digit safety number of two users (the same whichever side
/// computes it).
pub fn safety_number(a: (&str, &[Vec<u8>]), b: (&str, &[Vec<u8>])) -> String {
    let fa = fingerprint(a.0, a.1);
    let fb = fingerprint(b.0, b.1);
    if fa <= fb {
        fa + &fb
    } else {
        fb + &fa
    }
}

/// A safety number as people read it: groups of five digits.
pub fn format_number(digits: &str) -> String {
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, key: u8) -> DirectoryDevice {
        DirectoryDevice {
            device_id: id.into(),
            signature_key: vec![key; 32],
        }
    }

    /// The vectors `web/tests/unit.mjs` checks too (both computed by an
    /// independent Python `hashlib` script first): both clients compute the
    /// same safety numbers.
    #[test]
    fn safety_number_vectors() {
        let alice = vec![vec![1u8; 32], vec![2u8; 32]];
        let bob = vec![vec![3u8; 32]];
        let fa = fingerprint("alice", &alice);
        let fb = fingerprint("bob", &bob);
        assert_eq!(fa, "673725225975756951624951916358");
        assert_eq!(fb, "028981640375223615382481479101");
        // Key order does not matter; the handle does.
        assert_eq!(
            fingerprint("alice", &[alice[1].clone(), alice[0].clone()]),
            fa
        );
        assert_ne!(fingerprint("alicf", &alice), fa);
        let n = safety_number(("alice", &alice), ("bob", &bob));
        assert_eq!(n, safety_number(("bob", &bob), ("alice", &alice)));
        assert_eq!(n, format!("{fb}{fa}"));
        assert_eq!(
            format_number(&n),
            "02898 16403 75223 61538 24814 79101 67372 52259 75756 95162 49519 16358"
        );
        // A new device changes the number.
        let more = [bob.clone(), vec![vec![4u8; 32]]].concat();
        assert_ne!(safety_number(("alice", &alice), ("bob", &more)), n);
    }

    #[test]
    fn pins_first_answer_then_flags_every_change() {
        let db = StateDb::open_in_memory().unwrap();
        assert_eq!(
            pin_directory(&db, "me", "bob", &[dev("b1", 1)]).unwrap(),
            PinOutcome::First
        );
        assert!(db.take_alerts().unwrap().is_empty(), "first use is silent");
        assert_eq!(
            pin_directory(&db, "me", "bob", &[dev("b1", 1)]).unwrap(),
            PinOutcome::Same
        );
        // Verified, then a ghost device appears.
        let c = db.contact("bob").unwrap().unwrap();
        db.put_contact("bob", true, false, c.refreshed_ms).unwrap();
        match pin_directory(&db, "me", "bob", &[dev("b1", 1), dev("b2", 2)]).unwrap() {
            PinOutcome::Changed(c) => {
                assert_eq!(c.added, vec!["b2"]);
                assert!(c.was_verified);
            }
            other => panic!("{other:?}"),
        }
        let c = db.contact("bob").unwrap().unwrap();
        assert!(!c.verified && c.changed, "{c:?}");
        let alerts = db.take_alerts().unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, ALERT_DEVICES_CHANGED);
        assert!(alerts[0].body.contains("\"added\":[\"b2\"]"), "{alerts:?}");
        assert!(db.take_alerts().unwrap().is_empty(), "shown once");
        // A revoked device stays pinned but not current; a changed key is flagged.
        match pin_directory(&db, "me", "bob", &[dev("b2", 9)]).unwrap() {
            PinOutcome::Changed(c) => {
                assert_eq!(
                    (c.removed, c.rekeyed),
                    (vec!["b1".into()], vec!["b2".into()])
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            check_leaf(&db, "bob/b1", Some(&[1; 32])).unwrap(),
            Verdict::Forged("device b1 of bob was revoked".into())
        );
        assert_eq!(
            check_leaf(&db, "bob/b2", Some(&[9; 32])).unwrap(),
            Verdict::Trusted
        );
        // The own user's changes are their own kind of alert.
        pin_directory(&db, "me", "me", &[dev("m1", 5)]).unwrap();
        pin_directory(&db, "me", "me", &[dev("m1", 5), dev("ghost", 6)]).unwrap();
        assert_eq!(
            db.take_alerts().unwrap().last().unwrap().kind,
            ALERT_OWN_DEVICES_CHANGED
        );
    }

    #[test]
    fn leaves_and_senders() {
        let db = StateDb::open_in_memory().unwrap();
        pin_directory(&db, "me", "alice", &[dev("a1", 1)]).unwrap();
        assert_eq!(
            check_leaf(&db, "alice/a1", Some(&[1; 32])).unwrap(),
            Verdict::Trusted
        );
        assert_eq!(check_leaf(&db, "alice/a1", None).unwrap(), Verdict::Trusted);
        assert!(matches!(
            check_leaf(&db, "alice/a1", Some(&[2; 32])).unwrap(),
            Verdict::Forged(_)
        ));
        assert_eq!(
            check_leaf(&db, "alice/a2", Some(&[1; 32])).unwrap(),
            Verdict::Unknown {
                user: "alice".into()
            }
        );
        assert_eq!(
            check_leaf(&db, "carol/c1", None).unwrap(),
            Verdict::Unknown {
                user: "carol".into()
            }
        );
        assert!(matches!(
            check_leaf(&db, "alice", None).unwrap(),
            Verdict::Forged(_)
        ));
        assert_eq!(check_sender("alice/a1", "alice/a1"), None);
        assert!(check_sender("bob/b1", "alice/a1").is_some());

        // A kept leaf may not change its identity; a removed-then-reused one may.
        let leaf = |prev: Option<&str>, id: &str, key: u8| ChangedLeaf {
            leaf: 1,
            identity: id.into(),
            signature_key: vec![key; 32],
            previous_identity: prev.map(str::to_string),
        };
        assert!(matches!(
            check_commit(&db, &[leaf(Some("bob/b1"), "alice/a1", 1)]).unwrap(),
            Verdict::Forged(why) if why.contains("changed its identity")
        ));
        assert_eq!(
            check_commit(&db, &[leaf(None, "alice/a1", 1)]).unwrap(),
            Verdict::Trusted
        );
        assert_eq!(
            check_commit(&db, &[leaf(Some("alice/a1"), "alice/a1", 1)]).unwrap(),
            Verdict::Trusted
        );
        assert!(matches!(
            check_commit(&db, &[leaf(None, "carol/c1", 3), leaf(None, "alice/a1", 7)]).unwrap(),
            Verdict::Forged(_)
        ));
    }
}
