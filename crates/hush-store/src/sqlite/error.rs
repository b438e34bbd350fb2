//! Errors and value conversions shared by every SQLite operation: rusqlite
//! errors become [`StoreError`]s (a busy or locked database is
//! `Unavailable`, which callers may retry; a UNIQUE or PRIMARY KEY violation
//! on insert is `AlreadyExists`; anything else is `Backend`), and u64 values
//! meet SQLite's i64 integers here. Invariant: no conversion wraps: a
//! deadline past `i64::MAX` saturates to "never", a negative stored deadline
//! reads as 0, and a counter that would overflow is an error.

use rusqlite::ErrorCode;

use crate::{Result, StoreError};

pub(super) fn map_err(context: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("{context}: {e}"))
        }
        _ => StoreError::Backend(format!("{context}: {e}")),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            f.code == ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
        }
        _ => false,
    }
}

/// Maps a UNIQUE/PRIMARY KEY violation to `AlreadyExists`, anything else
/// like [`map_err`].
pub(super) fn map_insert_err(context: &str, e: rusqlite::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::AlreadyExists
    } else {
        map_err(context, e)
    }
}

pub(super) fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::AlreadyExists => StoreError::AlreadyExists,
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Fenced { owner, token } => StoreError::Fenced {
            owner: owner.clone(),
            token: *token,
        },
        StoreError::EpochConflict {
            current_epoch,
            head_seq,
        } => StoreError::EpochConflict {
            current_epoch: *current_epoch,
            head_seq: *head_seq,
        },
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Backend(m) => StoreError::Backend(m.clone()),
    }
}

/// A deadline as stored: SQLite integers are i64, and a deadline past
/// `i64::MAX` ms is as good as never.
pub(super) fn deadline(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(super) fn stored_deadline(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

pub(super) fn next(value: u64, what: &str) -> Result<u64> {
    value
        .checked_add(1)
        .ok_or_else(|| StoreError::Backend(format!("{what} overflow")))
}
