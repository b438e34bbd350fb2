//! Timelines: appending messages, proposals and commits with the next seq,
//! and reading entries by cursor. Every append first checks the fence
//! against the lease token stored *now* (inside the write transaction), then
//! the client_msg_id, then (proposals and commits) the epoch. Invariants:
//! `groups.head_seq` is the largest seq in `entries` for the group and both
//! change only together; a commit's state, entry, membership change
//! (departures recorded, new members joined at its seq) and Welcome inbox
//! items are written in one operation; inbox seqs come from
//! `inbox_counters`, which only grows.

use std::collections::BTreeSet;

use rusqlite::{params, Connection, OptionalExtension};

use super::error::{deadline, map_err, next};
use super::groups::insert_member;
use super::stmt;
use crate::{
    AppendOutcome, CommitWrite, Entry, EntryKind, NewEntry, Result, StoreError, WelcomeWrite,
};

/// The group's head as seen inside the write transaction, after the fence
/// check passed.
struct Head {
    epoch: u64,
    head_seq: u64,
}

/// Checks `fence` against the lease token stored *now* (inside the write
/// transaction). Token 0 means no lease was ever taken: nobody may append.
fn check_fence(conn: &Connection, group_id: &[u8], fence: u64) -> Result<Head> {
    let row: Option<(u64, u64, String, u64)> = stmt::query_row(
        conn,
        "SELECT epoch, head_seq, lease_owner, lease_token FROM groups WHERE group_id = ?1",
        params![group_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .map_err(|e| map_err("read group head", e))?;
    let (epoch, head_seq, owner, token) = row.ok_or(StoreError::NotFound)?;
    if token == 0 || fence != token {
        return Err(StoreError::Fenced { owner, token });
    }
    Ok(Head { epoch, head_seq })
}

fn existing_seq(conn: &Connection, group_id: &[u8], client_msg_id: &[u8]) -> Result<Option<u64>> {
    stmt::query_row(
        conn,
        "SELECT seq FROM entries WHERE group_id = ?1 AND client_msg_id = ?2",
        params![group_id, client_msg_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("look up client message id", e))
}

fn insert_entry(conn: &Connection, group_id: &[u8], seq: u64, e: &NewEntry) -> Result<()> {
    stmt::execute(conn,
        "INSERT INTO entries (group_id, seq, kind, epoch, sender, client_msg_id, message, server_time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            group_id,
            seq,
            e.kind as i64,
            e.epoch,
            e.sender,
            e.client_msg_id,
            e.message,
            e.server_time_ms
        ],
    )
    .map_err(|err| map_err("insert entry", err))?;
    Ok(())
}

/// The hot path: two statements for a new message. The fence check and the
/// seq allocation are one conditional `UPDATE ... RETURNING`; the entry goes
/// in with `ON CONFLICT (group_id, client_msg_id) DO NOTHING`. Only a
/// refused fence or a retried id (both rare) read more: the refusal's
/// reason, or the original seq (after giving the allocated one back, inside
/// the same write transaction, so the head stays the largest seq).
pub(super) fn op_append_message(
    conn: &Connection,
    group_id: &[u8],
    fence: u64,
    entry: &NewEntry,
) -> Result<AppendOutcome> {
    let seq: Option<u64> = stmt::query_row(
        conn,
        "UPDATE groups SET head_seq = head_seq + 1
         WHERE group_id = ?1 AND lease_token = ?2 AND lease_token != 0
         RETURNING head_seq",
        params![group_id, fence],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("advance head seq", e))?;
    let Some(seq) = seq else {
        // Not applied: say why (missing group or stale fence).
        check_fence(conn, group_id, fence)?;
        return Err(StoreError::Backend(
            "fenced append refused although the fence matches".into(),
        ));
    };
    let inserted = stmt::execute(
        conn,
        "INSERT INTO entries (group_id, seq, kind, epoch, sender, client_msg_id, message, server_time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (group_id, client_msg_id) DO NOTHING",
        params![
            group_id,
            seq,
            entry.kind as i64,
            entry.epoch,
            entry.sender,
            entry.client_msg_id,
            entry.message,
            entry.server_time_ms
        ],
    )
    .map_err(|err| map_err("insert entry", err))?;
    if inserted == 1 {
        return Ok(AppendOutcome::Appended { seq });
    }
    stmt::execute(
        conn,
        "UPDATE groups SET head_seq = ?2 WHERE group_id = ?1",
        params![group_id, seq - 1],
    )
    .map_err(|e| map_err("give back head seq", e))?;
    let original = existing_seq(conn, group_id, &entry.client_msg_id)?
        .ok_or_else(|| StoreError::Backend("duplicate entry without its seq".into()))?;
    Ok(AppendOutcome::Duplicate { seq: original })
}

pub(super) fn op_append_proposal(
    conn: &Connection,
    group_id: &[u8],
    fence: u64,
    entry: &NewEntry,
    state: &[u8],
) -> Result<AppendOutcome> {
    let head = check_fence(conn, group_id, fence)?;
    if let Some(seq) = existing_seq(conn, group_id, &entry.client_msg_id)? {
        return Ok(AppendOutcome::Duplicate { seq });
    }
    if head.epoch != entry.epoch {
        return Err(StoreError::EpochConflict {
            current_epoch: head.epoch,
            head_seq: head.head_seq,
        });
    }
    let seq = next(head.head_seq, "seq")?;
    insert_entry(conn, group_id, seq, entry)?;
    stmt::execute(
        conn,
        "UPDATE groups SET head_seq = ?2 WHERE group_id = ?1",
        params![group_id, seq],
    )
    .map_err(|e| map_err("advance head seq with proposal", e))?;
    stmt::execute(
        conn,
        "UPDATE group_states SET state = ?2 WHERE group_id = ?1",
        params![group_id, state],
    )
    .map_err(|e| map_err("update group state", e))?;
    Ok(AppendOutcome::Appended { seq })
}

pub(super) fn op_append_commit(conn: &Connection, w: &CommitWrite) -> Result<AppendOutcome> {
    let head = check_fence(conn, &w.group_id, w.fence)?;
    // A retried commit that already applied is a duplicate, not a conflict.
    if let Some(seq) = existing_seq(conn, &w.group_id, &w.entry.client_msg_id)? {
        return Ok(AppendOutcome::Duplicate { seq });
    }
    if head.epoch != w.expected_epoch {
        return Err(StoreError::EpochConflict {
            current_epoch: head.epoch,
            head_seq: head.head_seq,
        });
    }
    let seq = next(head.head_seq, "seq")?;
    insert_entry(conn, &w.group_id, seq, &w.entry)?;
    stmt::execute(
        conn,
        "UPDATE groups SET head_seq = ?2, epoch = ?3 WHERE group_id = ?1",
        params![w.group_id, seq, w.new_epoch],
    )
    .map_err(|e| map_err("update group", e))?;
    stmt::execute(
        conn,
        "UPDATE group_states SET state = ?2, group_info = ?3, ratchet_tree = ?4 WHERE group_id = ?1",
        params![w.group_id, w.state, w.group_info, w.ratchet_tree],
    )
    .map_err(|e| map_err("update group state", e))?;

    let current: BTreeSet<String> = {
        let mut stmt = conn
            .prepare_cached("SELECT device_id FROM members WHERE group_id = ?1")
            .map_err(|e| map_err("read members", e))?;
        let rows = stmt
            .query_map(params![w.group_id], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<BTreeSet<_>>>())
            .map_err(|e| map_err("read members", e))?;
        rows
    };
    let next_members: BTreeSet<&str> = w.members.iter().map(|m| m.device_id.as_str()).collect();
    for gone in current
        .iter()
        .filter(|d| !next_members.contains(d.as_str()))
    {
        stmt::execute(
            conn,
            "INSERT INTO departures (device_id, group_id, joined_seq, left_seq)
             SELECT device_id, group_id, joined_seq, ?3 FROM members
             WHERE group_id = ?1 AND device_id = ?2
             ON CONFLICT (device_id, group_id)
             DO UPDATE SET joined_seq = excluded.joined_seq, left_seq = excluded.left_seq",
            params![w.group_id, gone, seq],
        )
        .map_err(|e| map_err("record departure", e))?;
        stmt::execute(
            conn,
            "DELETE FROM members WHERE group_id = ?1 AND device_id = ?2",
            params![w.group_id, gone],
        )
        .map_err(|e| map_err("remove member", e))?;
    }
    for m in w.members.iter().filter(|m| !current.contains(&m.device_id)) {
        insert_member(conn, &w.group_id, m, seq)?;
    }
    if let Some(welcome) = &w.welcome {
        insert_welcome(conn, &w.group_id, seq, welcome, &w.ratchet_tree)?;
    }
    Ok(AppendOutcome::Appended { seq })
}

/// The commit's Welcome and tree, once, and an inbox item referring to
/// them for each device it welcomes.
fn insert_welcome(
    conn: &Connection,
    group_id: &[u8],
    seq: u64,
    welcome: &WelcomeWrite,
    ratchet_tree: &[u8],
) -> Result<()> {
    let devices: BTreeSet<&str> = welcome.device_ids.iter().map(String::as_str).collect();
    if devices.is_empty() {
        // Nobody to refer to it: a row here would never be released.
        return Ok(());
    }
    stmt::execute(
        conn,
        "INSERT INTO welcomes (group_id, commit_seq, welcome, ratchet_tree, pending)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![group_id, seq, welcome.welcome, ratchet_tree, devices.len()],
    )
    .map_err(|e| map_err("insert welcome", e))?;
    for device_id in devices {
        let inbox_seq: u64 = stmt::query_row(
            conn,
            "INSERT INTO inbox_counters (device_id, last_seq) VALUES (?1, 1)
                 ON CONFLICT (device_id) DO UPDATE SET last_seq = last_seq + 1
                 RETURNING last_seq",
            params![device_id],
            |r| r.get(0),
        )
        .map_err(|e| map_err("advance inbox seq", e))?;
        stmt::execute(
            conn,
            "INSERT INTO inbox (device_id, inbox_seq, group_id, commit_seq) VALUES (?1, ?2, ?3, ?4)",
            params![device_id, inbox_seq, group_id, seq],
        )
        .map_err(|e| map_err("insert inbox item", e))?;
    }
    Ok(())
}

pub(super) fn read_timeline(
    conn: &Connection,
    group_id: &[u8],
    after: u64,
    limit: u32,
) -> Result<Vec<Entry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, kind, epoch, sender, client_msg_id, message, server_time_ms
             FROM entries WHERE group_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(|e| map_err("read timeline", e))?;
    let rows = stmt
        .query_map(params![group_id, deadline(after), limit], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, u64>(6)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| map_err("read timeline", e))?;
    rows.into_iter()
        .map(
            |(seq, kind, epoch, sender, client_msg_id, message, server_time_ms)| {
                let kind = EntryKind::from_i64(kind).ok_or_else(|| {
                    StoreError::Backend(format!("corrupt entry kind {kind} at seq {seq}"))
                })?;
                Ok(Entry {
                    seq,
                    kind,
                    epoch,
                    sender,
                    client_msg_id,
                    message,
                    server_time_ms,
                })
            },
        )
        .collect()
}
