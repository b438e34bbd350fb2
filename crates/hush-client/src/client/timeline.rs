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
//! - applying an entry (MLS state, cursor, log line) is one SQLite savepoint,
//!   then the seq is acknowledged to the server (acks are coalesced);
//! - entries this device submitted (`hush_own_seqs`) are skipped: their
//!   effect was applied when the server accepted them;
//! - an entry that fails MLS processing is skipped with a warning (it cannot
//!   become valid later), so one bad message never wedges a group;
//! - if the connection breaks while a commit of this device is in flight,
//!   its pending commit is kept: if the server accepted it, it comes back in
//!   the timeline and is merged here (openmls recognises its own pending
//!   commit).

use hush_proto::client_frame;
use hush_proto::v1::{self, GroupEvent, InboxEvent};

use super::{identities_json, log_row, Action, Client};
use crate::envelope::Envelope;
use crate::error::{ClientError, Result};
use crate::mls;
use crate::store::{now_ms, GroupRow, GroupStatus, Identity, LogRow, StateDb};
use crate::ws::Pushed;

/// Cap of entries buffered for a group this device has not joined (yet).
const MAX_BUFFERED_PER_GROUP: usize = 10_000;

impl Client {
    /// Processes a pushed event and everything already queued behind it,
    /// acknowledges, and runs deferred work (commits of pending proposals,
    /// name messages, KeyPackage top-ups).
    pub async fn handle(&mut self, first: Pushed) -> Result<()> {
        self.process_pushed(first)?;
        while let Some(p) = self.conn.as_mut().and_then(|c| c.try_next_event()) {
            self.process_pushed(p)?;
        }
        self.flush_acks()?;
        self.run_actions().await
    }

    /// Processes one pushed event (no acks sent, no deferred work run).
    pub(super) fn process_pushed(&mut self, p: Pushed) -> Result<()> {
        match p {
            Pushed::Group(ev) => self.on_group_event(ev),
            Pushed::Inbox(ev) => self.on_inbox(ev),
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

    fn on_group_event(&mut self, ev: GroupEvent) -> Result<()> {
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
                self.drain_group(&gid)
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

    /// Applies the buffered entries of a group that are next in line.
    fn drain_group(&mut self, gid: &[u8]) -> Result<()> {
        let me = self.me()?;
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
            let actions = self.db.atomically(|db| {
                let actions = apply_entry(db, &me, &g, &ev)?;
                db.set_last_seq(gid, seq)?;
                Ok(actions)
            })?;
            for a in actions {
                if !self.actions.contains(&a) {
                    self.actions.push(a);
                }
            }
            self.acks.insert(gid.to_vec(), seq);
        }
    }

    fn on_inbox(&mut self, ev: InboxEvent) -> Result<()> {
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
            let r = self.db.atomically(|db| {
                let joined = mls::join_from_welcome(db, &ev.welcome, &ev.ratchet_tree)?;
                if joined != gid {
                    return Err(ClientError::Protocol(
                        "Welcome is for another group than announced".into(),
                    ));
                }
                db.upsert_group(&gid, ev.commit_seq)?;
                let members = mls::members(db, &gid)?;
                let body = identities_json(members.into_iter().map(|m| m.identity));
                db.log(&gid, &log_row(ev.commit_seq, "", "joined", body), false)?;
                db.set_inbox_seq(ev.inbox_seq)
            });
            match r {
                Ok(()) => {
                    tracing::info!(group = %hex::encode(&gid), seq = ev.commit_seq, "joined from welcome");
                    // Acknowledging the adding commit is the join the server
                    // waits for before it shows our presence to the group.
                    self.acks.insert(gid.clone(), ev.commit_seq);
                    self.actions.push(Action::CheckKeyPackages);
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
        self.drain_group(&gid)
    }
}

/// Applies one timeline entry inside the caller's savepoint. Returns the
/// deferred work it calls for.
fn apply_entry(db: &StateDb, me: &Identity, g: &GroupRow, ev: &GroupEvent) -> Result<Vec<Action>> {
    let gid = &g.group_id;
    let mut actions = Vec::new();
    if db.is_own_seq(gid, ev.seq)? {
        return Ok(actions);
    }
    let processed = match mls::process(db, gid, &ev.message) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(group = %hex::encode(gid), seq = ev.seq, error = %e, "skipping timeline entry that does not process");
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
            self_removed,
            external,
        } => {
            for (kind, ids) in [("added", added), ("removed", removed)] {
                if !ids.is_empty() {
                    db.log(gid, &line(kind, &sender, identities_json(ids)), false)?;
                }
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
