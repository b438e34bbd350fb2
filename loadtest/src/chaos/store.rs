//! Reading the store after a chaos run (the cluster's one SQLite file,
//! once every node has stopped) into the checker's [`StoreDump`]: for each
//! of the run's groups its epoch, head seq and every entry's seq, kind,
//! epoch and `client_msg_id`. Read straight from the tables (the schema of
//! `hush-store`'s embedded backend), not through the `Store` trait, so
//! nothing in the node's code path decides what the checker sees.

use std::path::Path;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

use crate::checker::{StoreDump, StoredEntry, StoredGroup};

/// The groups `gids` (hex ids) as the store at `path` holds them; a group
/// it does not have is left out.
pub fn read(path: &Path, gids: &[String]) -> anyhow::Result<StoreDump> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open the store {}", path.display()))?;
    let mut dump = StoreDump::default();
    let mut group = conn.prepare("SELECT epoch, head_seq FROM groups WHERE group_id = ?1")?;
    let mut entries = conn.prepare(
        "SELECT seq, kind, epoch, client_msg_id FROM entries WHERE group_id = ?1 ORDER BY seq",
    )?;
    for gid in gids {
        let id = hex::decode(gid).with_context(|| format!("group id {gid}"))?;
        let head: Option<(i64, i64)> = group
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .next()
            .transpose()?;
        let Some((epoch, head_seq)) = head else {
            continue;
        };
        let rows = entries.query_map([&id], |r| {
            Ok(StoredEntry {
                seq: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                epoch: r.get::<_, i64>(2)? as u64,
                id: hex::encode(r.get::<_, Vec<u8>>(3)?),
            })
        })?;
        dump.groups.insert(
            gid.clone(),
            StoredGroup {
                epoch: epoch as u64,
                head_seq: head_seq as u64,
                entries: rows.collect::<Result<_, _>>()?,
            },
        );
    }
    Ok(dump)
}

#[cfg(test)]
mod tests {
    use hush_store::{
        EntryKind, GroupRecord, NewEntry, NewGroup, SqliteConfig, SqliteStore, Store,
    };

    #[tokio::test]
    async fn reads_what_the_embedded_store_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hush.sqlite");
        let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
        let gid = vec![0xa0, 0x01];
        store
            .create_group(&NewGroup {
                group: GroupRecord {
                    group_id: gid.clone(),
                    epoch: 1,
                    state: b"s".to_vec(),
                    group_info: b"gi".to_vec(),
                    ratchet_tree: b"t".to_vec(),
                    head_seq: 0,
                    members: Vec::new(),
                },
            })
            .await
            .unwrap();
        let lease = store.acquire_lease(&gid, "n1", 1_000, 3_000).await.unwrap();
        for id in [b"m0", b"m1", b"m0"] {
            let e = NewEntry {
                kind: EntryKind::Application,
                epoch: 1,
                sender: "u/d".into(),
                client_msg_id: id.to_vec(),
                message: b"x".to_vec(),
                server_time_ms: 1_000,
            };
            store.append_message(&gid, lease.token, &e).await.unwrap();
        }
        drop(store);
        let dump = super::read(&path, &[hex::encode(&gid), "ff".into()]).unwrap();
        assert_eq!(dump.groups.len(), 1, "an unknown group is left out");
        let g = &dump.groups[&hex::encode(&gid)];
        assert_eq!((g.epoch, g.head_seq), (1, 2));
        let got: Vec<(u64, i64, String)> = g
            .entries
            .iter()
            .map(|e| (e.seq, e.kind, e.id.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(1, 3, hex::encode(b"m0")), (2, 3, hex::encode(b"m1"))]
        );
    }
}
