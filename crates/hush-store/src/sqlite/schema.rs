//! The schema: the SQLite tables (version [`SCHEMA_VERSION`], kept in
//! `PRAGMA user_version`) and the migration that creates or upgrades them at
//! open. Invariants: a database written by a newer binary is refused, never
//! downgraded; the version check and the DDL run in one `BEGIN IMMEDIATE`
//! transaction, so several processes opening a fresh file at once migrate it
//! exactly once.

use rusqlite::Connection;

use super::error::map_err;
use crate::{Result, StoreError};

/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 6;

const SCHEMA_V1: &str = r#"
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE devices (
    id               INTEGER PRIMARY KEY,
    device_id        TEXT NOT NULL UNIQUE,
    user_id          TEXT NOT NULL REFERENCES users(user_id),
    signature_key    BLOB NOT NULL,
    token_generation INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL
);
CREATE INDEX devices_by_user ON devices(user_id, id);
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE link_codes (
    code_hash     BLOB PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL,
    hash_ref    BLOB NOT NULL UNIQUE,
    data        BLOB NOT NULL,
    last_resort INTEGER NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages(device_id) WHERE last_resort = 1;
CREATE TABLE key_package_tombstones (
    hash_ref BLOB PRIMARY KEY NOT NULL
);
CREATE TABLE groups (
    group_id         BLOB PRIMARY KEY NOT NULL,
    epoch            INTEGER NOT NULL,
    state            BLOB NOT NULL,
    group_info       BLOB NOT NULL,
    ratchet_tree     BLOB NOT NULL,
    head_seq         INTEGER NOT NULL,
    lease_owner      TEXT NOT NULL,
    lease_token      INTEGER NOT NULL,
    lease_expires_ms INTEGER NOT NULL
);
CREATE TABLE entries (
    group_id       BLOB NOT NULL REFERENCES groups(group_id),
    seq            INTEGER NOT NULL,
    kind           INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    sender         TEXT NOT NULL,
    client_msg_id  BLOB NOT NULL,
    message        BLOB NOT NULL,
    server_time_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq),
    UNIQUE (group_id, client_msg_id)
);
CREATE TABLE members (
    group_id   BLOB NOT NULL REFERENCES groups(group_id),
    device_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX members_by_device ON members(device_id, group_id);
-- A removed device may still read its group up to the commit that removed
-- it; the row goes when its cursor reaches left_seq.
CREATE TABLE departures (
    device_id  TEXT NOT NULL,
    group_id   BLOB NOT NULL REFERENCES groups(group_id),
    joined_seq INTEGER NOT NULL,
    left_seq   INTEGER NOT NULL,
    PRIMARY KEY (device_id, group_id)
);
CREATE TABLE cursors (
    device_id TEXT NOT NULL,
    group_id  BLOB NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (device_id, group_id)
);
CREATE TABLE inbox (
    device_id    TEXT NOT NULL,
    inbox_seq    INTEGER NOT NULL,
    group_id     BLOB NOT NULL,
    commit_seq   INTEGER NOT NULL,
    welcome      BLOB NOT NULL,
    ratchet_tree BLOB NOT NULL,
    PRIMARY KEY (device_id, inbox_seq)
);
CREATE TABLE inbox_counters (
    device_id TEXT PRIMARY KEY NOT NULL,
    last_seq  INTEGER NOT NULL
);
"#;

/// Version 2: devices whose last-resort package was handed out since they
/// last uploaded (see `Store::set_last_resort_claimed`).
const SCHEMA_V2: &str = r#"
CREATE TABLE last_resort_claims (
    device_id TEXT PRIMARY KEY NOT NULL
);
"#;

/// Version 3: a commit's Welcome and the ratchet tree its new members join
/// with are kept once per commit (`welcomes`), and inbox items refer to
/// them. In v2 every inbox item held its own copy of both: O(added x group
/// size) bytes per commit, 323 MB for one group of 1,000 formed by one
/// commit. `pending` counts the inbox items still referring to a row; the
/// ack that deletes the last one deletes it. The migration keeps every
/// item (a v2 commit's copies are identical: one Welcome per commit).
const SCHEMA_V3: &str = r#"
CREATE TABLE welcomes (
    group_id     BLOB NOT NULL,
    commit_seq   INTEGER NOT NULL,
    welcome      BLOB NOT NULL,
    ratchet_tree BLOB NOT NULL,
    pending      INTEGER NOT NULL,
    PRIMARY KEY (group_id, commit_seq)
);
INSERT INTO welcomes (group_id, commit_seq, welcome, ratchet_tree, pending)
    SELECT group_id, commit_seq, welcome, ratchet_tree, COUNT(*)
    FROM inbox GROUP BY group_id, commit_seq;
CREATE TABLE inbox_v3 (
    device_id  TEXT NOT NULL,
    inbox_seq  INTEGER NOT NULL,
    group_id   BLOB NOT NULL,
    commit_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, inbox_seq)
) WITHOUT ROWID;
INSERT INTO inbox_v3 (device_id, inbox_seq, group_id, commit_seq)
    SELECT device_id, inbox_seq, group_id, commit_seq FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_v3 RENAME TO inbox;
"#;

/// Version 4: a group's DS state, GroupInfo and ratchet tree move out of
/// `groups` into `group_states`, so that the row every append and every
/// ack reads (head seq, epoch, lease) is a few bytes. With the blobs in it,
/// SQLite walked their overflow pages to reach `head_seq` (stored after
/// them) and rewrote the whole record for each message's new head: in a
/// group of 1,000 (a ~0.5 MB tree) the ack check alone was 15% of the
/// node's CPU. `DROP COLUMN` rewrites `groups` in place, keeping the
/// foreign keys that point at it.
const SCHEMA_V4: &str = r#"
CREATE TABLE group_states (
    group_id     BLOB PRIMARY KEY NOT NULL REFERENCES groups(group_id),
    state        BLOB NOT NULL,
    group_info   BLOB NOT NULL,
    ratchet_tree BLOB NOT NULL
);
INSERT INTO group_states (group_id, state, group_info, ratchet_tree)
    SELECT group_id, state, group_info, ratchet_tree FROM groups;
ALTER TABLE groups DROP COLUMN state;
ALTER TABLE groups DROP COLUMN group_info;
ALTER TABLE groups DROP COLUMN ratchet_tree;
"#;

/// Version 5: a group's member rows read from one index. `members` keeps
/// its rows in rowid order behind its primary key, so reading a group's
/// list looked up each row in the table after finding it in the key's
/// index: two B-tree descents per member, and a `GetPresence` of a group of
/// 1,000 (which reads the list twice) spent most of its ~3 ms there. This
/// index covers every column those reads use, in the order they return.
const SCHEMA_V5: &str = r#"
CREATE INDEX members_by_group ON members(group_id, user_id, device_id, joined_seq);
"#;

/// Creates or upgrades the schema. Idempotent, and safe against another
/// process doing the same at the same time (the check and the DDL share one
/// `BEGIN IMMEDIATE` transaction).
/// Version 6: the tables every ack reads by their primary key (`members`,
/// `departures`) keep their rows in that key's B-tree (`WITHOUT ROWID`),
/// not in a rowid table behind an index on it: one descent per row read
/// instead of two. `cursors` stays a rowid table: its rows lie in the order
/// devices first acked, and the acks that share a transaction come from
/// the members a message reached together, so they share pages; keyed by
/// device id they scattered over the table (the large-group scenario wrote
/// six times the WAL frames).
const SCHEMA_V6: &str = r#"
CREATE TABLE members_v6 (
    group_id   BLOB NOT NULL REFERENCES groups(group_id),
    device_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id)
) WITHOUT ROWID;
INSERT INTO members_v6 (group_id, device_id, user_id, joined_seq)
    SELECT group_id, device_id, user_id, joined_seq FROM members;
DROP TABLE members;
ALTER TABLE members_v6 RENAME TO members;
CREATE INDEX members_by_device ON members(device_id, group_id);
CREATE INDEX members_by_group ON members(group_id, user_id, device_id, joined_seq);

CREATE TABLE departures_v6 (
    device_id  TEXT NOT NULL,
    group_id   BLOB NOT NULL REFERENCES groups(group_id),
    joined_seq INTEGER NOT NULL,
    left_seq   INTEGER NOT NULL,
    PRIMARY KEY (device_id, group_id)
) WITHOUT ROWID;
INSERT INTO departures_v6 (device_id, group_id, joined_seq, left_seq)
    SELECT device_id, group_id, joined_seq, left_seq FROM departures;
DROP TABLE departures;
ALTER TABLE departures_v6 RENAME TO departures;
"#;

pub(super) fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| map_err("begin migration", e))?;
    let result = (|| {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| map_err("read schema version", e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this binary's {SCHEMA_VERSION}"
            )));
        }
        if version < 1 {
            conn.execute_batch(SCHEMA_V1)
                .map_err(|e| map_err("create schema v1", e))?;
        }
        if version < 2 {
            conn.execute_batch(SCHEMA_V2)
                .map_err(|e| map_err("create schema v2", e))?;
        }
        if version < 3 {
            conn.execute_batch(SCHEMA_V3)
                .map_err(|e| map_err("upgrade schema to v3", e))?;
        }
        if version < 4 {
            conn.execute_batch(SCHEMA_V4)
                .map_err(|e| map_err("upgrade schema to v4", e))?;
        }
        if version < 5 {
            conn.execute_batch(SCHEMA_V5)
                .map_err(|e| map_err("upgrade schema to v5", e))?;
        }
        if version < 6 {
            conn.execute_batch(SCHEMA_V6)
                .map_err(|e| map_err("upgrade schema to v6", e))?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| map_err("write schema version", e))?;
        Ok(())
    })();
    match result {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(|e| map_err("commit migration", e)),
        Err(e) => {
            // Best effort: the error above is the one worth reporting.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// A migrated database in `dir`, for the store's unit tests.
#[cfg(test)]
pub(super) fn test_db(dir: &tempfile::TempDir) -> Connection {
    let path = dir.path().join("t.db");
    let conn =
        super::connection::open_connection(&path, std::time::Duration::ZERO, false).expect("open");
    migrate(&conn).expect("migrate");
    conn
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::connection::open_connection;
    use super::*;

    #[test]
    fn migration_is_idempotent_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_connection(&dir.path().join("t.db"), Duration::ZERO, false).expect("open");
        migrate(&conn).expect("first migration");
        migrate(&conn).expect("second migration is a no-op");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
        assert!(matches!(migrate(&conn), Err(StoreError::Backend(_))));
    }

    /// A v2 file's group (blobs in its row: v4 moves them to
    /// `group_states`) and inbox items (each with its own copy of the
    /// commit's Welcome and tree) read the same after the upgrade, the
    /// items from one copy per commit, which the last item's ack deletes.
    #[test]
    fn upgrades_keep_every_v2_group_and_inbox_item() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_connection(&dir.path().join("t.db"), Duration::ZERO, false).expect("open");
        conn.execute_batch(SCHEMA_V1).expect("v1");
        conn.execute_batch(SCHEMA_V2).expect("v2");
        conn.pragma_update(None, "user_version", 2)
            .expect("v2 version");
        for (device, seq, commit) in [("bob-1", 1, 5), ("bob-2", 1, 5), ("bob-1", 2, 9)] {
            conn.execute(
                "INSERT INTO inbox (device_id, inbox_seq, group_id, commit_seq, welcome, ratchet_tree)
                 VALUES (?1, ?2, x'67', ?3, CAST('welcome-' || ?3 AS BLOB), CAST('tree-' || ?3 AS BLOB))",
                rusqlite::params![device, seq, commit],
            )
            .expect("v2 item");
        }
        // A v2 group (blobs in its row), with a member and an entry whose
        // foreign keys point at it.
        conn.execute_batch(
            "INSERT INTO groups (group_id, epoch, state, group_info, ratchet_tree, head_seq,
                                 lease_owner, lease_token, lease_expires_ms)
             VALUES (x'67', 3, x'5354', x'4749', x'5254', 1, 'node-a', 2, 99);
             INSERT INTO members (group_id, device_id, user_id, joined_seq)
             VALUES (x'67', 'bob-1', 'bob', 0);
             INSERT INTO cursors (device_id, group_id, seq) VALUES ('bob-1', x'67', 1);
             INSERT INTO departures (device_id, group_id, joined_seq, left_seq)
             VALUES ('carol-1', x'67', 0, 1);
             INSERT INTO entries (group_id, seq, kind, epoch, sender, client_msg_id, message,
                                  server_time_ms)
             VALUES (x'67', 1, 1, 3, 'bob/bob-1', x'01', x'02', 5);",
        )
        .expect("v2 group");
        migrate(&conn).expect("upgrade");
        let group = super::super::groups::read_group(&conn, b"g")
            .expect("read group")
            .expect("the group");
        assert_eq!(
            (
                group.epoch,
                group.head_seq,
                group.state,
                group.group_info,
                group.ratchet_tree,
                group.members.len()
            ),
            (3, 1, b"ST".to_vec(), b"GI".to_vec(), b"RT".to_vec(), 1)
        );
        let fk_problems: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .expect("foreign key check");
        assert_eq!(fk_problems, 0);
        // v6: the ack's tables, rebuilt without rowids, keep their rows.
        let (state, _) = super::super::sync::read_ack_row(&conn, "bob-1", b"g").expect("bob");
        assert_eq!(state.cursor, Some(1));
        assert_eq!(state.standing, crate::Standing::Member { joined_seq: 0 });
        let (state, left) =
            super::super::sync::read_ack_row(&conn, "carol-1", b"g").expect("carol");
        let departed = crate::Standing::Departed {
            joined_seq: 0,
            left_seq: 1,
        };
        assert_eq!((state.standing, left), (departed, Some(1)));

        let read = |device: &str| {
            super::super::sync::read_inbox(&conn, device, 0, 10)
                .expect("read")
                .into_iter()
                .map(|i| (i.inbox_seq, i.commit_seq, i.welcome, i.ratchet_tree))
                .collect::<Vec<_>>()
        };
        let item = |seq, commit: u64| {
            (
                seq,
                commit,
                format!("welcome-{commit}").into_bytes(),
                format!("tree-{commit}").into_bytes(),
            )
        };
        assert_eq!(read("bob-1"), vec![item(1, 5), item(2, 9)]);
        assert_eq!(read("bob-2"), vec![item(1, 5)]);
        let copies = || -> i64 {
            conn.query_row("SELECT COUNT(*) FROM welcomes", [], |r| r.get(0))
                .expect("count")
        };
        assert_eq!(copies(), 2);
        super::super::sync::op_ack_inbox(&conn, "bob-1", 2).expect("ack");
        assert_eq!(copies(), 1, "commit 5 is still bob-2's");
        assert_eq!(read("bob-2"), vec![item(1, 5)]);
        super::super::sync::op_ack_inbox(&conn, "bob-2", 1).expect("ack");
        assert_eq!(copies(), 0);
    }
}
