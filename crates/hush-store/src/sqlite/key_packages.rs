//! Key packages: upload, single-use claim and counts. Ordinary packages are
//! handed out oldest first and deleted when claimed; a device's one
//! last-resort package is handed out only when no ordinary one is left, and
//! kept. Invariants: a claimed ordinary package leaves a tombstone (its
//! hash_ref), so a re-upload of it is skipped and it is never handed out
//! twice; a hash_ref is stored at most once across the whole store.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::map_err;
use super::stmt;
use crate::{ClaimedKeyPackage, KeyPackageRecord, Result};

fn unclaimed_count(conn: &Connection, device_id: &str) -> Result<u32> {
    let n: i64 = stmt::query_row(
        conn,
        "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND last_resort = 0",
        params![device_id],
        |r| r.get(0),
    )
    .map_err(|e| map_err("count key packages", e))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn key_package_known(conn: &Connection, hash_ref: &[u8]) -> Result<bool> {
    let known: Option<i64> = stmt::query_row(
        conn,
        "SELECT 1 FROM key_packages WHERE hash_ref = ?1
             UNION ALL SELECT 1 FROM key_package_tombstones WHERE hash_ref = ?1 LIMIT 1",
        params![hash_ref],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("look up key package", e))?;
    Ok(known.is_some())
}

pub(super) fn op_put_key_packages(
    conn: &Connection,
    device_id: &str,
    packages: &[KeyPackageRecord],
    last_resort: Option<&KeyPackageRecord>,
) -> Result<u32> {
    for p in packages {
        if key_package_known(conn, &p.hash_ref)? {
            continue;
        }
        stmt::execute(conn,
            "INSERT INTO key_packages (device_id, hash_ref, data, last_resort) VALUES (?1, ?2, ?3, 0)",
            params![device_id, p.hash_ref, p.data],
        )
        .map_err(|e| map_err("insert key package", e))?;
    }
    if let Some(lr) = last_resort {
        // A hash_ref already stored (this very last-resort package, or any
        // other package) or already claimed is skipped like any duplicate;
        // the device keeps its current last-resort package then.
        if !key_package_known(conn, &lr.hash_ref)? {
            stmt::execute(
                conn,
                "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                params![device_id],
            )
            .map_err(|e| map_err("delete last-resort key package", e))?;
            stmt::execute(conn,
                "INSERT INTO key_packages (device_id, hash_ref, data, last_resort) VALUES (?1, ?2, ?3, 1)",
                params![device_id, lr.hash_ref, lr.data],
            )
            .map_err(|e| map_err("insert last-resort key package", e))?;
        }
    }
    unclaimed_count(conn, device_id)
}

pub(super) fn op_claim_key_package(
    conn: &Connection,
    device_id: &str,
) -> Result<Option<ClaimedKeyPackage>> {
    let oldest: Option<(i64, Vec<u8>, Vec<u8>)> = stmt::query_row(
        conn,
        "SELECT id, hash_ref, data FROM key_packages
             WHERE device_id = ?1 AND last_resort = 0 ORDER BY id LIMIT 1",
        params![device_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
    .map_err(|e| map_err("find key package", e))?;
    if let Some((id, hash_ref, data)) = oldest {
        stmt::execute(conn, "DELETE FROM key_packages WHERE id = ?1", params![id])
            .map_err(|e| map_err("delete claimed key package", e))?;
        stmt::execute(
            conn,
            "INSERT INTO key_package_tombstones (hash_ref) VALUES (?1) ON CONFLICT DO NOTHING",
            params![hash_ref],
        )
        .map_err(|e| map_err("tombstone claimed key package", e))?;
        return Ok(Some(ClaimedKeyPackage {
            data,
            last_resort: false,
        }));
    }
    let last_resort: Option<Vec<u8>> = stmt::query_row(
        conn,
        "SELECT data FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
        params![device_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("find last-resort key package", e))?;
    Ok(last_resort.map(|data| ClaimedKeyPackage {
        data,
        last_resort: true,
    }))
}

pub(super) fn read_key_package_count(conn: &Connection, device_id: &str) -> Result<(u32, bool)> {
    let n = unclaimed_count(conn, device_id)?;
    let lr: Option<i64> = stmt::query_row(
        conn,
        "SELECT 1 FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
        params![device_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("find last-resort key package", e))?;
    Ok((n, lr.is_some()))
}

/// Sets or clears the device's last-resort claim mark; returns the mark as
/// it was (inserted: it was not marked; deleted: it was).
pub(super) fn op_set_last_resort_claimed(
    conn: &Connection,
    device_id: &str,
    claimed: bool,
) -> Result<bool> {
    let changed = if claimed {
        stmt::execute(
            conn,
            "INSERT INTO last_resort_claims (device_id) VALUES (?1) ON CONFLICT DO NOTHING",
            params![device_id],
        )
    } else {
        stmt::execute(
            conn,
            "DELETE FROM last_resort_claims WHERE device_id = ?1",
            params![device_id],
        )
    }
    .map_err(|e| map_err("mark last-resort claim", e))?;
    Ok((changed == 1) != claimed)
}
