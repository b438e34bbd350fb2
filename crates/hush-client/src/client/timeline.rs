//! Pushed events and the group timelines: each group's entries are applied
//! in seq order, exactly once, and acknowledged; Welcomes from the inbox
//! start groups; what an entry calls for afterwards (commit a member's
//! leave, tell a joiner the name, top up KeyPackages) is queued as an
//! [`Action`] for `sync.rs` to run.
//!
//! Processing rules (the invariants that keep every device on the same epoch
//! sequence):
//! - timeline entries of a group are applied strictly in seq order, each one
//!   once: an entry is applied only when its seq is `last_seq + 1`; earlier
//!   seqs are duplicates and dropped, later ones wait in a buffer (at most
//!   [`MAX_BUFFERED_PER_GROUP`] for a group not joined yet);
//! - applying an entry (MLS state, cursor, log line) is one SQLite
//!   transaction holding the home's write lock, and it re-reads the cursor
//!   under that lock: when another process on the same home applied the
//!   entry first, this one skips it (and, for an entry it had not applied
//!   in order, waits for the gap to fill from its buffer or the next sync);
//!   then the seq is acknowledged to the server (acks are coalesced);
//! - entries this device submitted (`hush_own_seqs`) are skipped: their
//!   effect was applied when the server accepted them; so are application
//!   messages the server attributes to this device that another process on
//!   the same home has not recorded yet (that process logs them);
//! - an entry that fails MLS processing is skipped with a warning (it cannot
//!   become valid later), so one bad message never wedges a group;
//! - every entry is authenticated before it is applied: the MLS sender must
//!   be the device the server says submitted it, and every leaf the entry's
//!   sender uses or a commit adds or changes must carry the key pinned from
//!   the directory for that device, with its identity unchanged
//!   ([`crate::trust`]). A device not pinned yet makes the entry wait while
//!   the directory is asked (the savepoint is rolled back, the entry goes
//!   back to the buffer); an entry that does not authenticate is refused
//!   loudly: a `forged` log line names the reason, its text is never shown,
//!   and a refused commit is not merged (the group stops there for this
//!   device rather than follow a forged tree). A Welcome is checked the same
//!   way over the whole tree it brings;
//! - if the connection breaks while a commit of this device is in flight,
//!   its pending commit is kept: if the server accepted it, it comes back in
//!   the timeline and is merged here (openmls recognises its own pending
//!   commit).

use std::collections::BTreeSet;

use hush_proto::client_frame;
use hush_proto::v1::{self, GroupEvent, InboxEvent};

use super::{identities_json, log_row, Action, Client};
use crate::envelope::Envelope;
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::{now_ms, GroupRow, GroupStatus, Identity, LogRow, StateDb};
use crate::trust::{self, Verdict};
use crate::ws::Pushed;

/// Cap of entries buffered for a group this device has not joined (yet).
const MAX_BUFFERED_PER_GROUP: usize = 10_000;

impl Client {
    /// Processes a pushed event and everything already queued behind it,
    /// acknowledges, and runs deferred work (commits of pending proposals,
    /// name messages, KeyPackage top-ups).
    pub async fn handle(&mut self, first: Pushed) -> Result<()> {
        self.process_pushed(first).await?;
        while let Some(p) = self.conn.as_mut().and_then(|c| c.try_next_event()) {
            self.process_pushed(p).await?;
        }
        self.flush_acks()?;
        self.run_actions().await
    }

    /// Processes one pushed event (no acks sent, no deferred work run). It
    /// may ask the directory (a request on the connection) about a sender.
    pub(super) async fn process_pushed(&mut self, p: Pushed) -> Result<()> {
        match p {
            Pushed::Group(ev) => self.on_group_event(ev).await,
            Pushed::Inbox(ev) => self.on_inbox(ev).await,
            Pushed::CaughtUp => {
                self.caught_up = true;
                Ok(())
            }
            Pushed::Ephemeral(ev) => {
                self.on_ephemeral(ev);
                Ok(())
            }
            Pushed::Presence { user_id, online } => {
                self.live.presence_changed(user_id, online);
                Ok(())
            }
            Pushed::KeyPackagesLow => {
                if !self.actions.contains(&Action::CheckKeyPackages) {
                    self.actions.push(Action::CheckKeyPackages);
                }
                Ok(())
            }
            Pushed::Closed(reason) => {
                let _ = self.flush_acks();
                self.conn = None;
                Err(ClientError::Disconnected(reason))
            }
        }
    }

    /// Sends the coalesced acknowledgements (one per group).
    pub(super) fn flush_acks(&mut self) -> Result<()> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_ref() else {
            return Ok(());
        };
        for (group_id, seq) in self.acks.drain() {
            conn.send_oneway(client_frame::Body::Ack(v1::Ack { group_id, seq }))?;
        }
        Ok(())
    }

    async fn on_group_event(&mut self, ev: GroupEvent) -> Result<()> {
        let gid = ev.group_id.clone();
        if ev.kind == v1::EntryKind::Application as i32 {
            // A message from someone ends their typing notice.
            self.live.typing_stopped(&gid, mls::user_of(&ev.sender));
        }
        match self.db.group(&gid)? {
            Some(g) if g.status == GroupStatus::Active => {
                if ev.seq <= g.last_seq {
                    return Ok(()); // already processed
                }
                self.buffered
                    .entry(gid.clone())
                    .or_default()
                    .insert(ev.seq, ev);
                self.drain_group(&gid).await
            }
            Some(g) => {
                // A group this device left or was removed from: nothing to
                // apply, but move the cursor so it is not sent again.
                if ev.seq > g.last_seq {
                    self.db.set_last_seq(&gid, ev.seq)?;
                    self.acks.insert(gid, ev.seq);
                }
                Ok(())
            }
            None => {
                // Possibly a group whose Welcome has not arrived yet.
                let buf = self.buffered.entry(gid).or_default();
                if buf.len() < MAX_BUFFERED_PER_GROUP {
                    buf.insert(ev.seq, ev);
                }
                Ok(())
            }
        }
    }

    /// Applies the buffered entries of a group that are next in line. An
    /// entry whose sender's device is not pinned goes back to the buffer
    /// while the directory is asked, then is applied (each user is asked at
    /// most once per call, so this ends).
    async fn drain_group(&mut self, gid: &[u8]) -> Result<()> {
        let me = self.me()?;
        let mut asked = BTreeSet::new();
        loop {
            let Some(g) = self.db.group(gid)? else {
                return Ok(());
            };
            let Some(buf) = self.buffered.get_mut(gid) else {
                return Ok(());
            };
            while buf.first_key_value().is_some_and(|(s, _)| *s <= g.last_seq) {
                buf.pop_first();
            }
            if g.status != GroupStatus::Active {
                // Removed while draining: what remains is moot.
                if let Some((s, _)) = buf.last_key_value() {
                    let s = *s;
                    self.db.set_last_seq(gid, s)?;
                    self.acks.insert(gid.to_vec(), s);
                }
                self.buffered.remove(gid);
                return Ok(());
            }
            let next = match buf.first_key_value() {
                Some((s, _)) if *s == g.last_seq + 1 => buf.pop_first().map(|(_, e)| e),
                Some((s, _)) => {
                    tracing::debug!(group = %hex::encode(gid), next = s, last = g.last_seq, "waiting for a missing seq");
                    None
                }
                None => None,
            };
            let Some(ev) = next else {
                if self.buffered.get(gid).is_some_and(|b| b.is_empty()) {
                    self.buffered.remove(gid);
                }
                return Ok(());
            };
            let seq = ev.seq;
            let applied = self.db.atomically(|db| {
                // Another process on this home (a `listen` beside a `send`)
                // may have applied it since `g` was read: under the lock,
                // the stored cursor decides.
                match db.group(gid)? {
                    Some(now) if now.status == GroupStatus::Active && now.last_seq + 1 == seq => {
                        let actions = apply_entry(db, &me, &now, &ev, &asked)?;
                        db.set_last_seq(gid, seq)?;
                        Ok(actions)
                    }
                    _ => Ok(Vec::new()),
                }
            });
            let actions = match applied {
                Ok(actions) => actions,
                Err(ClientError::NeedDirectory(user)) => {
                    // Nothing was applied: the entry waits for the answer.
                    self.buffered
                        .entry(gid.to_vec())
                        .or_default()
                        .insert(seq, ev);
                    self.refresh_user(&user).await?;
                    asked.insert(user);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for a in actions {
                if !self.actions.contains(&a) {
                    self.actions.push(a);
                }
            }
            self.acks.insert(gid.to_vec(), seq);
        }
    }

    async fn on_inbox(&mut self, ev: InboxEvent) -> Result<()> {
        if ev.inbox_seq != 0 && ev.inbox_seq <= self.db.inbox_seq()? {
            return Ok(());
        }
        let gid = ev.group_id.clone();
        let already = self
            .db
            .group(&gid)?
            .is_some_and(|g| g.status == GroupStatus::Active && g.last_seq >= ev.commit_seq)
            && mls::has_group(&self.db, &gid)?;
        if !already {
            let mut asked = BTreeSet::new();
            let r = loop {
                let r = self.db.atomically(|db| {
                    // Another process on this home may have joined from
                    // this Welcome since the check above.
                    let joined_meanwhile = db.group(&gid)?.is_some_and(|g| {
                        g.status == GroupStatus::Active && g.last_seq >= ev.commit_seq
                    }) && mls::has_group(db, &gid)?;
                    if joined_meanwhile {
                        return db.set_inbox_seq(ev.inbox_seq);
                    }
                    let joined = mls::join_from_welcome(db, &ev.welcome, &ev.ratchet_tree)?;
                    if joined != gid {
                        return Err(ClientError::Protocol(
                            "Welcome is for another group than announced".into(),
                        ));
                    }
                    // The whole tree must authenticate: a forged leaf in it
                    // would speak under someone else's name from the start.
                    let leaves = mls::leaves(db, &gid)?;
                    let verdict = trust::check_leaves(
                        db,
                        leaves.iter().map(|(i, k)| (i.as_str(), k.as_slice())),
                    )?;
                    judge(verdict, &asked)?;
                    db.upsert_group(&gid, ev.commit_seq)?;
                    let members = mls::members(db, &gid)?;
                    let body = identities_json(members.into_iter().map(|m| m.identity));
                    db.log(&gid, &log_row(ev.commit_seq, "", "joined", body), false)?;
                    db.set_inbox_seq(ev.inbox_seq)
                });
                match r {
                    Err(ClientError::NeedDirectory(user)) => {
                        self.refresh_user(&user).await?;
                        asked.insert(user);
                    }
                    r => break r,
                }
            };
            match r {
                Ok(()) => {
                    tracing::info!(group = %hex::encode(&gid), seq = ev.commit_seq, "joined from welcome");
                    // Acknowledging the adding commit is the join the server
                    // waits for before it shows our presence to the group.
                    self.acks.insert(gid.clone(), ev.commit_seq);
                    self.actions.push(Action::CheckKeyPackages);
                }
                Err(ClientError::Forged(why)) => {
                    tracing::warn!(group = %hex::encode(&gid), reason = %why, "refusing a forged welcome");
                    self.db.atomically(|db| {
                        db.log(&gid, &forged_row(ev.commit_seq, "", &why), false)?;
                        db.set_inbox_seq(ev.inbox_seq)
                    })?;
                }
                Err(e) => {
                    // A Welcome that does not process cannot get better.
                    tracing::warn!(group = %hex::encode(&gid), error = %e, "dropping welcome");
                    self.db.set_inbox_seq(ev.inbox_seq)?;
                }
            }
        } else {
            self.db.set_inbox_seq(ev.inbox_seq)?;
        }
        if let Some(conn) = self.conn.as_ref() {
            conn.send_oneway(client_frame::Body::AckInbox(v1::AckInbox {
                inbox_seq: ev.inbox_seq,
            }))?;
        }
        self.drain_group(&gid).await
    }
}

/// A verdict as the outcome of an authentication: `Ok` for a trusted one;
/// an unknown device is `NeedDirectory` unless its user was just asked
/// (then it is not in the directory: forged).
fn judge(verdict: Verdict, asked: &BTreeSet<String>) -> Result<()> {
    match verdict {
        Verdict::Trusted => Ok(()),
        Verdict::Forged(why) => Err(ClientError::Forged(why)),
        Verdict::Unknown { user } if asked.contains(&user) => Err(ClientError::Forged(format!(
            "a device of {user} that the directory does not list"
        ))),
        Verdict::Unknown { user } => Err(ClientError::NeedDirectory(user)),
    }
}

/// Authenticates what processing a timeline entry asks about: the server's
/// sender is the MLS sender, the sender's leaf is trusted, and a commit
/// keeps every leaf's identity and adds or changes only trusted leaves.
fn authenticate(
    db: &StateDb,
    ev: &GroupEvent,
    a: &mls::Authenticate<'_>,
    asked: &BTreeSet<String>,
) -> Result<()> {
    if let Some(why) = trust::check_sender(&ev.sender, a.sender) {
        return Err(ClientError::Forged(why));
    }
    let verdict = match trust::check_commit(db, a.changed_leaves)? {
        Verdict::Trusted => trust::check_leaf(db, a.sender, a.sender_key)?,
        other => other,
    };
    judge(verdict, asked)
}

/// The log line of a refused entry or Welcome: `sender` is the handle the
/// server attributed it to.
fn forged_row(seq: u64, sender: &str, why: &str) -> LogRow {
    log_row(seq, sender, "forged", why.to_string())
}

/// Applies one timeline entry inside the caller's savepoint. Returns the
/// deferred work it calls for. `NeedDirectory` means nothing may be applied
/// yet (the caller rolls back, asks the directory and tries again); a
/// forged entry is logged as such and otherwise skipped.
fn apply_entry(
    db: &StateDb,
    me: &Identity,
    g: &GroupRow,
    ev: &GroupEvent,
    asked: &BTreeSet<String>,
) -> Result<Vec<Action>> {
    let gid = &g.group_id;
    let mut actions = Vec::new();
    if db.is_own_seq(gid, ev.seq)? {
        return Ok(actions);
    }
    if ev.kind == v1::EntryKind::Application as i32 && ev.sender == me.mls_identity() {
        // A message another process on this home sent and has not recorded
        // as its own yet: this device's sending ratchet has moved past it,
        // so it cannot be decrypted here, and the process that sent it logs
        // it once the server accepts it. (The server's attribution can only
        // make this device skip an entry, which a server can do anyway.)
        return Ok(actions);
    }
    let processed = match mls::process(db, gid, &ev.message, |a| authenticate(db, ev, a, asked)) {
        Ok(p) => p,
        Err(e @ ClientError::NeedDirectory(_)) => return Err(e),
        Err(ClientError::Forged(why)) => {
            tracing::warn!(group = %hex::encode(gid), seq = ev.seq, sender = %ev.sender, reason = %why, "refusing a forged timeline entry");
            db.log(
                gid,
                &forged_row(ev.seq, mls::user_of(&ev.sender), &why),
                false,
            )?;
            return Ok(actions);
        }
        Err(e) => {
            tracing::warn!(group = %hex::encode(gid), seq = ev.seq, sender = %ev.sender, error = %e, "skipping timeline entry that does not process");
            return Ok(actions);
        }
    };
    let ts_ms = if ev.server_time_ms > 0 {
        ev.server_time_ms
    } else {
        now_ms()
    };
    let line = |kind: &str, sender: &str, body: String| LogRow {
        seq: ev.seq,
        sender: mls::user_of(sender).to_string(),
        kind: kind.to_string(),
        body,
        ts_ms,
    };
    match processed {
        mls::Processed::Application { sender, plaintext } => match Envelope::decode(&plaintext) {
            Ok(Envelope::Text { body, .. }) => db.log(gid, &line("text", &sender, body), false)?,
            Ok(Envelope::Name { name }) => {
                let changed = db.group(gid)?.and_then(|g| g.name) != Some(name.clone());
                db.set_group_name(gid, &name)?;
                if changed {
                    db.log(gid, &line("name", &sender, name), false)?;
                }
            }
            Ok(Envelope::Typing | Envelope::Unknown) => {}
            Err(e) => {
                tracing::warn!(group = %hex::encode(gid), seq = ev.seq, error = %e, "undecodable payload")
            }
        },
        mls::Processed::Proposal { .. } => actions.push(Action::CommitPending(gid.clone())),
        mls::Processed::Commit {
            sender,
            added,
            removed,
            left,
            self_removed,
            external,
        } => {
            for (kind, ids) in [("added", added), ("removed", removed)] {
                if !ids.is_empty() {
                    db.log(gid, &line(kind, &sender, identities_json(ids)), false)?;
                }
            }
            // A leave reads as a leave: "bob left", by the leaver, not
            // "alice removed bob" by whoever committed it. (One row: the
            // log keeps one line per seq and kind.)
            if let Some(first) = left.first() {
                let row = LogRow {
                    sender: mls::user_of(first).to_string(),
                    ..line("left", &sender, identities_json(left.clone()))
                };
                db.log(gid, &row, false)?;
            }
            if self_removed {
                db.set_status(gid, GroupStatus::Removed)?;
                mls::delete_group(db, gid)?;
            } else if external && g.name.is_some() {
                // The joiner cannot know the name; the member with the lowest
                // leaf (other than the joiner) tells it.
                let members = mls::members(db, gid)?;
                let namer = members
                    .iter()
                    .find(|m| m.identity != sender)
                    .map(|m| m.identity.clone());
                if namer.as_deref() == Some(me.mls_identity().as_str()) {
                    actions.push(Action::SendName(gid.clone()));
                }
            }
        }
        mls::Processed::OwnCommit | mls::Processed::OwnMessage => {}
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    //! The timeline's authentication, driven with real openmls clients and
    //! entries crafted as a malicious server (or a malicious member whose
    //! commit a server accepted) would deliver them.

    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::*;

    use super::*;
    use crate::trust::DirectoryDevice;

    fn device(user: &str, dev: &str) -> (StateDb, Identity) {
        let db = StateDb::open_in_memory().unwrap();
        let id = Identity {
            user_id: user.into(),
            device_id: dev.into(),
            keys: mls::new_device_keys().unwrap(),
            server: "http://test".into(),
        };
        db.save_identity(&id).unwrap();
        (db, id)
    }

    /// `db` pins what the directory says about `id`'s user.
    fn pin(db: &StateDb, me: &str, ids: &[&Identity]) {
        let devices: Vec<DirectoryDevice> = ids
            .iter()
            .map(|i| DirectoryDevice {
                device_id: i.device_id.clone(),
                signature_key: i.keys.public().to_vec(),
            })
            .collect();
        trust::pin_directory(db, me, &ids[0].user_id, &devices).unwrap();
    }

    fn entry(seq: u64, kind: v1::EntryKind, sender: &str, message: Vec<u8>) -> GroupEvent {
        GroupEvent {
            group_id: Vec::new(),
            seq,
            kind: kind as i32,
            epoch: 0,
            sender: sender.into(),
            message,
            server_time_ms: 1,
        }
    }

    /// alice (the honest viewer), bob and mallory in one group; alice pins
    /// all three from the directory.
    struct World {
        adb: StateDb,
        alice: Identity,
        bdb: StateDb,
        bob: Identity,
        mdb: StateDb,
        mallory: Identity,
        gid: Vec<u8>,
    }

    fn world() -> World {
        let (adb, alice) = device("alice", "a1");
        let (bdb, bob) = device("bob", "b1");
        let (mdb, mallory) = device("mallory", "m1");
        let gid = mls::create_group(&adb, &alice).unwrap().group_id;
        let kps = [(&bdb, &bob), (&mdb, &mallory)]
            .iter()
            .map(|(db, id)| {
                let (kp, _) = mls::new_key_packages(db, id, 1, false).unwrap();
                mls::parse_key_package(&adb, &kp[0]).unwrap()
            })
            .collect();
        let c = mls::commit(&adb, &alice, &gid, mls::Change::Add(kps)).unwrap();
        mls::merge_pending(&adb, &gid).unwrap();
        let w = c.welcome.unwrap();
        mls::join_from_welcome(&bdb, &w, &c.ratchet_tree).unwrap();
        mls::join_from_welcome(&mdb, &w, &c.ratchet_tree).unwrap();
        adb.upsert_group(&gid, 1).unwrap();
        for id in [&alice, &bob, &mallory] {
            pin(&adb, "alice", &[id]);
        }
        World {
            adb,
            alice,
            bdb,
            bob,
            mdb,
            mallory,
            gid,
        }
    }

    /// Applies an entry the way `drain_group` does (one savepoint, cursor
    /// moved), with every user already asked about.
    fn apply(w: &World, ev: &GroupEvent) -> Result<Vec<Action>> {
        let g = w.adb.group(&w.gid).unwrap().unwrap();
        let asked = ["alice", "bob", "mallory"].map(String::from).into();
        w.adb.atomically(|db| {
            let a = apply_entry(db, &w.alice, &g, ev, &asked)?;
            db.set_last_seq(&w.gid, ev.seq)?;
            Ok(a)
        })
    }

    fn log(w: &World) -> Vec<LogRow> {
        w.adb.recent_log(&w.gid, 100).unwrap()
    }

    /// The exploit: mallory's self-update gives her leaf the
    /// credential "bob/b1" (with mallory's key), then she sends from it.
    /// Before this check alice merged the commit and showed "bob: please
    /// wire the 500 EUR today"; now the commit is refused loudly and nothing
    /// is shown under bob's name.
    #[test]
    fn a_self_update_that_takes_another_identity_is_refused() {
        let w = world();
        let epoch = mls::epoch(&w.adb, &w.gid).unwrap();
        let commit = {
            let provider = w.mdb.provider();
            let mut g = mls::load_group(&w.mdb, &w.gid).unwrap();
            let forged = CredentialWithKey {
                credential: BasicCredential::new(w.bob.mls_identity().into_bytes()).into(),
                signature_key: w.mallory.keys.public().into(),
            };
            let bundle = g
                .commit_builder()
                .leaf_node_parameters(
                    LeafNodeParameters::builder()
                        .with_credential_with_key(forged)
                        .build(),
                )
                .force_self_update(true)
                .load_psks(provider.storage())
                .unwrap()
                .build(provider.rand(), provider.crypto(), &w.mallory.keys, |_| {
                    true
                })
                .unwrap()
                .stage_commit(&provider)
                .unwrap();
            g.merge_pending_commit(&provider).unwrap();
            let (commit, _, _) = bundle.into_messages();
            commit.tls_serialize_detached().unwrap()
        };
        let text = Envelope::Text {
            body: "please wire the 500 EUR today".into(),
            ts: 1,
        };
        let wire = mls::encrypt(&w.mdb, &w.mallory, &w.gid, &text.encode()).unwrap();

        apply(&w, &entry(2, v1::EntryKind::Commit, "mallory/m1", commit)).unwrap();
        apply(
            &w,
            &entry(3, v1::EntryKind::Application, "mallory/m1", wire),
        )
        .unwrap();

        let rows = log(&w);
        assert!(
            !rows.iter().any(|r| r.kind == "text"),
            "a forged message was shown: {rows:?}"
        );
        let forged: Vec<&LogRow> = rows.iter().filter(|r| r.kind == "forged").collect();
        assert_eq!(forged.len(), 1, "{rows:?}");
        assert_eq!((forged[0].seq, forged[0].sender.as_str()), (2, "mallory"));
        assert!(
            forged[0]
                .body
                .contains("changed its identity from mallory/m1 to bob/b1"),
            "{forged:?}"
        );
        assert_eq!(mls::epoch(&w.adb, &w.gid).unwrap(), epoch, "not merged");
        assert_eq!(w.adb.group(&w.gid).unwrap().unwrap().last_seq, 3);
    }

    /// A server that attributes bob's (genuine) message to another device,
    /// or delivers a message from a revoked device's leaf.
    #[test]
    fn a_message_the_server_misattributes_or_from_a_revoked_device_is_refused() {
        let w = world();
        let m = mls::encrypt(
            &w.bdb,
            &w.bob,
            &w.gid,
            b"{\"t\":\"text\",\"body\":\"hi\",\"ts\":1}",
        )
        .unwrap();
        apply(&w, &entry(2, v1::EntryKind::Application, "mallory/m1", m)).unwrap();
        let rows = log(&w);
        assert!(!rows.iter().any(|r| r.kind == "text"), "{rows:?}");
        assert!(
            rows.iter().any(|r| r.kind == "forged"
                && r.body
                    .contains("the server says mallory/m1 sent it, but it is signed as bob/b1")),
            "{rows:?}"
        );

        // The same kind of message, rightly attributed, is shown under bob.
        let m = mls::encrypt(
            &w.bdb,
            &w.bob,
            &w.gid,
            b"{\"t\":\"text\",\"body\":\"hello\",\"ts\":1}",
        )
        .unwrap();
        apply(&w, &entry(3, v1::EntryKind::Application, "bob/b1", m)).unwrap();
        assert!(log(&w)
            .iter()
            .any(|r| r.kind == "text" && r.sender == "bob" && r.body == "hello"));

        // The directory stops listing bob's device (revoked): its leaf is no
        // longer trusted, even though it is still in the tree.
        trust::pin_directory(&w.adb, "alice", "bob", &[]).unwrap();
        let m = mls::encrypt(
            &w.bdb,
            &w.bob,
            &w.gid,
            b"{\"t\":\"text\",\"body\":\"stolen\",\"ts\":1}",
        )
        .unwrap();
        apply(&w, &entry(4, v1::EntryKind::Application, "bob/b1", m)).unwrap();
        let rows = log(&w);
        assert!(!rows.iter().any(|r| r.body == "stolen"), "{rows:?}");
        assert!(
            rows.iter()
                .any(|r| r.seq == 4 && r.kind == "forged" && r.body.contains("revoked")),
            "{rows:?}"
        );
    }

    /// A sender whose device is not pinned yet: nothing is applied (the
    /// MLS state is rolled back), and once the directory answered, the
    /// same entry applies.
    #[test]
    fn an_unpinned_sender_waits_for_the_directory() {
        let (adb, alice) = device("alice", "a1");
        let (bdb, bob) = device("bob", "b1");
        let gid = mls::create_group(&adb, &alice).unwrap().group_id;
        let (kp, _) = mls::new_key_packages(&bdb, &bob, 1, false).unwrap();
        let kp = mls::parse_key_package(&adb, &kp[0]).unwrap();
        let c = mls::commit(&adb, &alice, &gid, mls::Change::Add(vec![kp])).unwrap();
        mls::merge_pending(&adb, &gid).unwrap();
        mls::join_from_welcome(&bdb, c.welcome.as_ref().unwrap(), &c.ratchet_tree).unwrap();
        adb.upsert_group(&gid, 1).unwrap();
        let g = adb.group(&gid).unwrap().unwrap();
        let m = mls::encrypt(
            &bdb,
            &bob,
            &gid,
            b"{\"t\":\"text\",\"body\":\"hi\",\"ts\":1}",
        )
        .unwrap();
        let ev = entry(2, v1::EntryKind::Application, "bob/b1", m);
        let none = BTreeSet::new();
        let first = adb.atomically(|db| apply_entry(db, &alice, &g, &ev, &none));
        assert!(
            matches!(first, Err(ClientError::NeedDirectory(ref u)) if u == "bob"),
            "{first:?}"
        );
        // Asked, and still unknown: forged.
        let asked: BTreeSet<String> = ["bob".to_string()].into();
        adb.atomically(|db| apply_entry(db, &alice, &g, &ev, &asked))
            .unwrap();
        assert_eq!(adb.recent_log(&gid, 10).unwrap()[0].kind, "forged");
        // With bob pinned, the message (its ratchet was rolled back) decrypts.
        pin(&adb, "alice", &[&bob]);
        let g2 = GroupRow { last_seq: 1, ..g };
        let ev3 = GroupEvent { seq: 3, ..ev };
        adb.atomically(|db| apply_entry(db, &alice, &g2, &ev3, &none))
            .unwrap();
        assert!(adb
            .recent_log(&gid, 10)
            .unwrap()
            .iter()
            .any(|r| r.kind == "text" && r.sender == "bob" && r.body == "hi"));
    }
}
