//! Sync state: per-device cursors and inboxes. Invariants: a cursor only
//! moves forward, and moving it to or past a departure's `left_seq` settles
//! that departure (the device has read the commit that removed it); inbox
//! items are deleted by ack but their seqs are never reused.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::error::{deadline, map_err};
use super::stmt;
use crate::{AckDecision, AckState, InboxItem, Result, Standing};

pub(super) fn op_set_cursor(
    conn: &Connection,
    device_id: &str,
    group_id: &[u8],
    seq: u64,
) -> Result<()> {
    op_move_cursor(conn, device_id, group_id, seq)?;
    op_settle_departure(conn, device_id, group_id, seq)
}

/// An ack in one writer operation (`Store::ack_cursor`): the state read,
/// and the cursor moved (and a departure settled) if `decide` says so.
pub(super) fn op_ack_cursor(
    conn: &Connection,
    device_id: &str,
    group_id: &[u8],
    seq: u64,
    decide: AckDecision,
) -> Result<(AckState, bool)> {
    let (state, departure) = read_ack_row(conn, device_id, group_id)?;
    let moves = decide(&state);
    if moves {
        op_move_cursor(conn, device_id, group_id, seq)?;
        // A statement only where there is a departure to settle: most acks
        // are a member's.
        if departure.is_some_and(|left_seq| left_seq <= seq) {
            op_settle_departure(conn, device_id, group_id, seq)?;
        }
    }
    Ok((state, moves))
}

/// Moves the cursor forward to `seq` (never back).
pub(super) fn op_move_cursor(
    conn: &Connection,
    device_id: &str,
    group_id: &[u8],
    seq: u64,
) -> Result<()> {
    stmt::execute(
        conn,
        "INSERT INTO cursors (device_id, group_id, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, group_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        params![device_id, group_id, seq],
    )
    .map_err(|e| map_err("set cursor", e))?;
    Ok(())
}

/// Forgets the device's departure from the group once it acknowledged up
/// to the removing commit.
pub(super) fn op_settle_departure(
    conn: &Connection,
    device_id: &str,
    group_id: &[u8],
    seq: u64,
) -> Result<()> {
    stmt::execute(
        conn,
        "DELETE FROM departures WHERE device_id = ?1 AND group_id = ?2 AND left_seq <= ?3",
        params![device_id, group_id, seq],
    )
    .map_err(|e| map_err("settle departure", e))?;
    Ok(())
}

pub(super) fn read_inbox(
    conn: &Connection,
    device_id: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<InboxItem>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT i.inbox_seq, i.group_id, i.commit_seq, w.welcome, w.ratchet_tree
             FROM inbox i JOIN welcomes w ON w.group_id = i.group_id AND w.commit_seq = i.commit_seq
             WHERE i.device_id = ?1 AND i.inbox_seq > ?2 ORDER BY i.inbox_seq LIMIT ?3",
        )
        .map_err(|e| map_err("read inbox", e))?;
    stmt.query_map(params![device_id, deadline(after), limit], |r| {
        Ok(InboxItem {
            inbox_seq: r.get(0)?,
            group_id: r.get(1)?,
            commit_seq: r.get(2)?,
            welcome: r.get(3)?,
            ratchet_tree: r.get(4)?,
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(|e| map_err("read inbox", e))
}

/// A device's cursors: (group_id, seq).
pub(super) fn read_cursors(conn: &Connection, device_id: &str) -> Result<Vec<(Vec<u8>, u64)>> {
    let mut stmt = conn
        .prepare_cached("SELECT group_id, seq FROM cursors WHERE device_id = ?1 ORDER BY group_id")
        .map_err(|e| map_err("read cursors", e))?;
    stmt.query_map(params![device_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| map_err("read cursors", e))
}

/// Deletes the device's items up to `upto`, and each Welcome whose last
/// item that was.
pub(super) fn op_ack_inbox(conn: &Connection, device_id: &str, upto: u64) -> Result<()> {
    let mut released: BTreeMap<(Vec<u8>, u64), u64> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "DELETE FROM inbox WHERE device_id = ?1 AND inbox_seq <= ?2
                 RETURNING group_id, commit_seq",
            )
            .map_err(|e| map_err("ack inbox", e))?;
        let mut rows = stmt
            .query(params![device_id, deadline(upto)])
            .map_err(|e| map_err("ack inbox", e))?;
        while let Some(r) = rows.next().map_err(|e| map_err("ack inbox", e))? {
            let key = (
                r.get(0).map_err(|e| map_err("ack inbox", e))?,
                r.get(1).map_err(|e| map_err("ack inbox", e))?,
            );
            *released.entry(key).or_default() += 1;
        }
    }
    for ((group_id, commit_seq), n) in released {
        stmt::execute(
            conn,
            "UPDATE welcomes SET pending = pending - ?3 WHERE group_id = ?1 AND commit_seq = ?2",
            params![group_id, commit_seq, n],
        )
        .map_err(|e| map_err("release welcome", e))?;
        stmt::execute(
            conn,
            "DELETE FROM welcomes WHERE group_id = ?1 AND commit_seq = ?2 AND pending <= 0",
            params![group_id, commit_seq],
        )
        .map_err(|e| map_err("release welcome", e))?;
    }
    Ok(())
}

/// The last inbox seq ever given to the device (0 if none).
pub(super) fn read_inbox_head(conn: &Connection, device_id: &str) -> Result<u64> {
    stmt::query_row(
        conn,
        "SELECT last_seq FROM inbox_counters WHERE device_id = ?1",
        params![device_id],
        |r| r.get::<_, u64>(0),
    )
    .optional()
    .map(Option::unwrap_or_default)
    .map_err(|e| map_err("read inbox head", e))
}

/// Everything an ack is checked against, in one statement (one snapshot):
/// the cursor, the member row (which wins over a departure), the departure
/// and the head seq.
pub(super) fn read_ack_state(
    conn: &Connection,
    device_id: &str,
    group_id: &[u8],
) -> Result<AckState> {
    Ok(read_ack_row(conn, device_id, group_id)?.0)
}

/// The ack state, and the `left_seq` of the device's departure from the
/// group if one is stored (also when it was added again since: the row
/// waits for an ack past the removal all the same).
pub(super) fn read_ack_row(
    conn: &Connection,
    device_id: &str,
    group_id: &[u8],
) -> Result<(AckState, Option<u64>)> {
    type Row = (
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
    );
    let (cursor, joined, departed_joined, left, head): Row = stmt::query_row(
        conn,
        "SELECT
           (SELECT seq FROM cursors WHERE device_id = ?1 AND group_id = ?2),
           (SELECT joined_seq FROM members WHERE group_id = ?2 AND device_id = ?1),
           d.joined_seq, d.left_seq,
           (SELECT head_seq FROM groups WHERE group_id = ?2)
         FROM (SELECT 1) LEFT JOIN departures d ON d.device_id = ?1 AND d.group_id = ?2",
        params![device_id, group_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .map_err(|e| map_err("read ack state", e))?;
    let standing = match (joined, departed_joined, left) {
        (Some(joined_seq), _, _) => Standing::Member { joined_seq },
        (None, Some(joined_seq), Some(left_seq)) => Standing::Departed {
            joined_seq,
            left_seq,
        },
        _ => Standing::Stranger,
    };
    let state = AckState {
        cursor,
        standing,
        head_seq: head.unwrap_or(0),
    };
    Ok((state, left))
}
