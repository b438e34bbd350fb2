//! Groups: creating and reading a group record (DS state, GroupInfo, tree,
//! head seq, members), its lease, and the membership indexes (the groups of
//! a device, the groups it departed). Invariants: a new group has an empty
//! timeline and no lease (token 0) whatever the caller passes; a new owner
//! gets `token + 1` only once the previous lease has expired or been
//! released, while the same owner renewing keeps its token and never
//! shortens its lease; a multi-statement read (`read_group`) sees one
//! snapshot.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::{deadline, map_err, map_insert_err, next, stored_deadline};
use super::stmt;
use crate::{Departure, DeviceGroup, GroupRecord, Lease, MemberDevice, Result, StoreError};

pub(super) fn op_create_group(conn: &Connection, g: &GroupRecord) -> Result<()> {
    // The timeline of a new group is empty whatever head_seq says: seqs are
    // the store's to assign. No lease: the owner must acquire one.
    stmt::execute(
        conn,
        "INSERT INTO groups (group_id, epoch, head_seq, lease_owner, lease_token, lease_expires_ms)
         VALUES (?1, ?2, 0, '', 0, 0)",
        params![g.group_id, g.epoch],
    )
    .map_err(|e| map_insert_err("insert group", e))?;
    stmt::execute(
        conn,
        "INSERT INTO group_states (group_id, state, group_info, ratchet_tree)
         VALUES (?1, ?2, ?3, ?4)",
        params![g.group_id, g.state, g.group_info, g.ratchet_tree],
    )
    .map_err(|e| map_err("insert group state", e))?;
    for m in &g.members {
        insert_member(conn, &g.group_id, m, 0)?;
    }
    Ok(())
}

pub(super) fn insert_member(
    conn: &Connection,
    group_id: &[u8],
    m: &MemberDevice,
    joined: u64,
) -> Result<()> {
    stmt::execute(
        conn,
        "INSERT INTO members (group_id, device_id, user_id, joined_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, device_id) DO NOTHING",
        params![group_id, m.device_id, m.user_id, joined],
    )
    .map_err(|e| map_err("insert member", e))?;
    Ok(())
}

pub(super) fn read_group(conn: &Connection, group_id: &[u8]) -> Result<Option<GroupRecord>> {
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| map_err("begin read", e))?;
    let group = stmt::query_row(
        &tx,
        "SELECT g.epoch, s.state, s.group_info, s.ratchet_tree, g.head_seq
         FROM groups g JOIN group_states s ON s.group_id = g.group_id WHERE g.group_id = ?1",
        params![group_id],
        |r| {
            Ok(GroupRecord {
                group_id: group_id.to_vec(),
                epoch: r.get(0)?,
                state: r.get(1)?,
                group_info: r.get(2)?,
                ratchet_tree: r.get(3)?,
                head_seq: r.get(4)?,
                members: Vec::new(),
            })
        },
    )
    .optional()
    .map_err(|e| map_err("read group", e))?;
    let Some(mut group) = group else {
        return Ok(None);
    };
    group.members = read_members(&tx, group_id)?;
    Ok(Some(group))
}

/// A group's member devices, sorted.
/// The members that joined (see [`crate::joined_groups`]): created the
/// group (joined at 0), or acked at or past the commit that added them.
/// The members of a group who joined (acked up to the commit that added
/// them); both member reads scan the covering index `members_by_group`.
const JOINED_MEMBERS: &str = "SELECT m.user_id, m.device_id FROM members m
     LEFT JOIN cursors c ON c.device_id = m.device_id AND c.group_id = m.group_id
     WHERE m.group_id = ?1 AND (m.joined_seq = 0 OR c.seq >= m.joined_seq)";
const MEMBERS: &str = "SELECT user_id, device_id FROM members WHERE group_id = ?1";

pub(super) fn read_joined_members(conn: &Connection, group_id: &[u8]) -> Result<Vec<MemberDevice>> {
    query_members(conn, JOINED_MEMBERS, group_id, "read joined members")
}

pub(super) fn read_members(conn: &Connection, group_id: &[u8]) -> Result<Vec<MemberDevice>> {
    query_members(conn, MEMBERS, group_id, "read members")
}

/// The (user_id, device_id) rows `sql` selects for a group, sorted.
fn query_members(
    conn: &Connection,
    sql: &str,
    group_id: &[u8],
    what: &str,
) -> Result<Vec<MemberDevice>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| map_err(what, e))?;
    let mut members = stmt
        .query_map(params![group_id], |r| {
            Ok(MemberDevice {
                user_id: r.get(0)?,
                device_id: r.get(1)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| map_err(what, e))?;
    members.sort();
    Ok(members)
}

struct LeaseRow {
    owner: String,
    token: u64,
    expires_ms: i64,
}

fn lease_row(conn: &Connection, group_id: &[u8]) -> Result<Option<LeaseRow>> {
    stmt::query_row(
        conn,
        "SELECT lease_owner, lease_token, lease_expires_ms FROM groups WHERE group_id = ?1",
        params![group_id],
        |r| {
            Ok(LeaseRow {
                owner: r.get(0)?,
                token: r.get(1)?,
                expires_ms: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(|e| map_err("read lease", e))
}

pub(super) fn op_acquire_lease(
    conn: &Connection,
    group_id: &[u8],
    owner: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Lease> {
    let cur = lease_row(conn, group_id)?.ok_or(StoreError::NotFound)?;
    let now = deadline(now_ms);
    let wanted = deadline(now_ms.saturating_add(ttl_ms));
    let (token, expires) = if cur.token != 0 && cur.owner == owner {
        // Renewal (also after the owner's own lease lapsed: nobody else took
        // it in between, so ownership never changed hands). Never shorten.
        (cur.token, wanted.max(cur.expires_ms))
    } else if cur.token != 0 && now < cur.expires_ms {
        return Err(StoreError::Fenced {
            owner: cur.owner,
            token: cur.token,
        });
    } else {
        (next(cur.token, "lease token")?, wanted)
    };
    stmt::execute(
        conn,
        "UPDATE groups SET lease_owner = ?2, lease_token = ?3, lease_expires_ms = ?4
         WHERE group_id = ?1",
        params![group_id, owner, token, expires],
    )
    .map_err(|e| map_err("write lease", e))?;
    Ok(Lease {
        owner: owner.to_string(),
        token,
        expires_at_ms: stored_deadline(expires),
    })
}

pub(super) fn op_release_lease(
    conn: &Connection,
    group_id: &[u8],
    owner: &str,
    token: u64,
) -> Result<()> {
    stmt::execute(
        conn,
        "UPDATE groups SET lease_expires_ms = 0
         WHERE group_id = ?1 AND lease_owner = ?2 AND lease_token = ?3",
        params![group_id, owner, token],
    )
    .map_err(|e| map_err("release lease", e))?;
    Ok(())
}

pub(super) fn read_groups_of_device(
    conn: &Connection,
    device_id: &str,
) -> Result<Vec<DeviceGroup>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT group_id, joined_seq FROM members WHERE device_id = ?1 ORDER BY group_id",
        )
        .map_err(|e| map_err("read device groups", e))?;
    stmt.query_map(params![device_id], |r| {
        Ok(DeviceGroup {
            group_id: r.get(0)?,
            joined_seq: r.get(1)?,
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(|e| map_err("read device groups", e))
}

pub(super) fn read_departed_groups(conn: &Connection, device_id: &str) -> Result<Vec<Departure>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT group_id, joined_seq, left_seq FROM departures
             WHERE device_id = ?1 ORDER BY group_id",
        )
        .map_err(|e| map_err("read departures", e))?;
    stmt.query_map(params![device_id], |r| {
        Ok(Departure {
            group_id: r.get(0)?,
            joined_seq: r.get(1)?,
            left_seq: r.get(2)?,
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(|e| map_err("read departures", e))
}

#[cfg(test)]
mod tests {
    use super::super::schema::test_db;
    use super::*;

    /// A group's member list is read from one index, never row by row from
    /// the table (see schema v5).
    #[test]
    fn member_lists_are_read_from_the_covering_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = test_db(&dir);
        for sql in [MEMBERS, JOINED_MEMBERS] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("explain")
                .query_map([b"g".as_slice()], |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<rusqlite::Result<_>>()
                .expect("plan rows");
            let members = plan
                .iter()
                .find(|step| step.contains(" m ") || step.contains("members"))
                .unwrap_or_else(|| panic!("no step on members: {plan:?}"));
            assert!(
                members.contains("USING COVERING INDEX members_by_group"),
                "{sql}: {plan:?}"
            );
        }
    }
}
