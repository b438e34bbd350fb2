//! Accounts: users, their devices (with the token generation that revokes
//! old bearer tokens), named secrets and one-time device link codes.
//! Invariants: a user and its first device are created in one operation, so
//! no user exists without a device; a device id is unique across users; a
//! secret, once stored, is what every caller gets back (concurrent first
//! callers included); a link code is returned at most once and deleted by the
//! first attempt to take it, expired or not, and an expired one by the next
//! sweep; a secret taken is returned to one caller and gone.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::{deadline, map_err, map_insert_err};
use super::stmt;
use crate::{Device, Result, StoreError, REVOKED_GENERATION};

fn insert_device(conn: &Connection, d: &Device) -> Result<()> {
    stmt::execute(
        conn,
        "INSERT INTO devices (device_id, user_id, signature_key, token_generation, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            d.device_id,
            d.user_id,
            d.signature_key,
            d.token_generation,
            d.created_at_ms
        ],
    )
    .map_err(|e| map_insert_err("insert device", e))?;
    Ok(())
}

pub(super) fn op_create_user(conn: &Connection, d: &Device) -> Result<()> {
    stmt::execute(
        conn,
        "INSERT INTO users (user_id, created_at_ms) VALUES (?1, ?2)",
        params![d.user_id, d.created_at_ms],
    )
    .map_err(|e| map_insert_err("insert user", e))?;
    insert_device(conn, d)
}

pub(super) fn op_add_device(conn: &Connection, d: &Device) -> Result<()> {
    let user: Option<i64> = stmt::query_row(
        conn,
        "SELECT 1 FROM users WHERE user_id = ?1",
        params![d.user_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("find user", e))?;
    if user.is_none() {
        return Err(StoreError::NotFound);
    }
    insert_device(conn, d)
}

fn row_to_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        user_id: r.get(0)?,
        device_id: r.get(1)?,
        signature_key: r.get(2)?,
        token_generation: r.get(3)?,
        created_at_ms: r.get(4)?,
    })
}

pub(super) fn op_bump_token_generation(conn: &Connection, device_id: &str) -> Result<u64> {
    stmt::query_row(
        conn,
        "UPDATE devices SET token_generation = token_generation + 1
         WHERE device_id = ?1 AND token_generation < ?2 - 1
         RETURNING token_generation",
        params![device_id, REVOKED_GENERATION as i64],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("bump token generation", e))?
    .ok_or(StoreError::NotFound)
}

pub(super) fn op_revoke_device(conn: &Connection, device_id: &str) -> Result<()> {
    let changed = stmt::execute(
        conn,
        "UPDATE devices SET token_generation = ?2 WHERE device_id = ?1 AND token_generation < ?2",
        params![device_id, REVOKED_GENERATION as i64],
    )
    .map_err(|e| map_err("revoke device", e))?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(super) fn op_get_or_create_secret(
    conn: &Connection,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>> {
    stmt::execute(
        conn,
        "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, candidate],
    )
    .map_err(|e| map_err("insert secret", e))?;
    stmt::query_row(
        conn,
        "SELECT value FROM secrets WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
    .map_err(|e| map_err("read secret", e))
}

/// Deletes the secret `name` and returns it (at most one caller gets it).
pub(super) fn op_take_secret(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>> {
    stmt::query_row(
        conn,
        "DELETE FROM secrets WHERE name = ?1 RETURNING value",
        params![name],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_err("take secret", e))
}

/// Deletes every link code expired at `now_ms`; returns how many.
pub(super) fn op_sweep_link_codes(conn: &Connection, now_ms: u64) -> Result<u64> {
    let n = stmt::execute(
        conn,
        "DELETE FROM link_codes WHERE expires_at_ms <= ?1",
        params![deadline(now_ms)],
    )
    .map_err(|e| map_err("sweep link codes", e))?;
    Ok(n as u64)
}

pub(super) fn op_take_link_code(
    conn: &Connection,
    code_hash: &[u8],
    now_ms: u64,
) -> Result<Option<String>> {
    let row: Option<(String, i64)> = stmt::query_row(
        conn,
        "DELETE FROM link_codes WHERE code_hash = ?1 RETURNING user_id, expires_at_ms",
        params![code_hash],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(|e| map_err("take link code", e))?;
    Ok(row.and_then(|(user, expires)| (deadline(now_ms) < expires).then_some(user)))
}

pub(super) fn read_device(conn: &Connection, device_id: &str) -> Result<Option<Device>> {
    stmt::query_row(
        conn,
        "SELECT user_id, device_id, signature_key, token_generation, created_at_ms
         FROM devices WHERE device_id = ?1 AND token_generation < ?2",
        params![device_id, REVOKED_GENERATION as i64],
        row_to_device,
    )
    .optional()
    .map_err(|e| map_err("read device", e))
}

/// A user's devices in creation order.
pub(super) fn read_devices_of_user(conn: &Connection, user_id: &str) -> Result<Vec<Device>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT user_id, device_id, signature_key, token_generation, created_at_ms
             FROM devices WHERE user_id = ?1 AND token_generation < ?2 ORDER BY id",
        )
        .map_err(|e| map_err("read devices", e))?;
    stmt.query_map(params![user_id, REVOKED_GENERATION as i64], row_to_device)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| map_err("read devices", e))
}

pub(super) fn op_put_link_code(
    conn: &Connection,
    code_hash: &[u8],
    user_id: &str,
    expires_at_ms: u64,
) -> Result<()> {
    stmt::execute(
        conn,
        "INSERT INTO link_codes (code_hash, user_id, expires_at_ms) VALUES (?1, ?2, ?3)",
        params![code_hash, user_id, deadline(expires_at_ms)],
    )
    .map_err(|e| map_insert_err("insert link code", e))?;
    Ok(())
}
