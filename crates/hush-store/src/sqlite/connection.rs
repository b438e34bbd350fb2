//! Connections: how every connection to the database file is opened (WAL,
//! `synchronous=FULL`, `foreign_keys=ON`, the busy timeout; readers also
//! `query_only`) and the pool of idle reader connections. Invariants: a
//! connection that is not in WAL mode is refused, never used; a reader that
//! leaves a transaction open is dropped rather than put back (it would pin an
//! old snapshot).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::error::map_err;
use crate::{Result, StoreError};

/// The first and the longest pause between two attempts to switch a fresh
/// file to WAL.
const WAL_RETRY_FIRST_BACKOFF: Duration = Duration::from_millis(1);
const WAL_RETRY_MAX_BACKOFF: Duration = Duration::from_millis(50);

pub(super) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
    reader: bool,
) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| map_err(&format!("open {}", path.display()), e))?;
    set_busy_wait(&conn, busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(super::stmt::STATEMENT_CACHE);
    // Query plans that never depend on bound values. Without this, SQLite
    // marks a statement whose `LIMIT ?` (or any value the planner may peek
    // at) is bound as expired on every bind, and parses it again on every
    // step: the inbox read of every Sync was 17% of the node's CPU in the
    // connect benchmark, all of it in `sqlite3Reprepare`, the statement
    // cache notwithstanding. Our statements each have one good plan.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| map_err("enable the query planner stability guarantee", e))?;
    let mode = set_wal(&conn, busy_timeout)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(|e| map_err("set pragmas", e))?;
    if reader {
        conn.execute_batch("PRAGMA query_only=ON;")
            .map_err(|e| map_err("set query_only", e))?;
    }
    Ok(conn)
}

/// How a connection waits for a lock another process holds (several nodes
/// of a local cluster share one file): tries again after [`BUSY_FIRST_PAUSE`]
/// for the first [`BUSY_FIRST_TRIES`] tries, then every [`BUSY_PAUSE`], until
/// `busy_timeout` is spent (zero: fail at once).
///
/// Not SQLite's own busy timeout: it sleeps 1, 2, 5, 10, 15, 20, 25 ms...
/// between tries, while another node's commit holds the write lock for
/// about one fsync (0.2-1 ms here). In a three-node cluster on one file the
/// writers slept 0.65 s of every 4 s that way (strace), and a write that
/// lost the lock three times waited 8 ms for a lock free after 1. Polling
/// every 250 us cut the cluster's e2e p99 from 22 to 6 ms for about 4% more
/// CPU (fewer writes share each commit).
fn set_busy_wait(conn: &Connection, busy_timeout: Duration) -> Result<()> {
    if busy_timeout.is_zero() {
        return conn
            .busy_handler(None)
            .map_err(|e| map_err("clear the busy handler", e));
    }
    let limit_us = usize::try_from(busy_timeout.as_micros()).unwrap_or(usize::MAX);
    // SAFETY: `busy_wait` never unwinds and treats its argument as a number
    // (the limit in microseconds), never as a pointer to anything; the handle
    // is this open connection's.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_busy_handler(
            conn.handle(),
            Some(busy_wait),
            limit_us as *mut std::ffi::c_void,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "set the busy handler: SQLite code {rc}"
        )))
    }
}

const BUSY_FIRST_PAUSE: Duration = Duration::from_micros(250);
const BUSY_FIRST_TRIES: u64 = 8;
const BUSY_PAUSE: Duration = Duration::from_millis(1);

/// How long the tries before try `tries` (counted from 0) waited, about.
fn busy_waited(tries: u64) -> Duration {
    let first = tries.min(BUSY_FIRST_TRIES);
    BUSY_FIRST_PAUSE * first as u32 + BUSY_PAUSE * (tries - first).min(u32::MAX as u64) as u32
}

/// SQLite's busy callback: 1 to try again after a pause, 0 to fail with
/// SQLITE_BUSY. `limit` is the busy timeout in microseconds.
extern "C" fn busy_wait(limit: *mut std::ffi::c_void, tries: std::ffi::c_int) -> std::ffi::c_int {
    let tries = u64::try_from(tries).unwrap_or(0);
    let limit = Duration::from_micros(limit as usize as u64);
    if busy_waited(tries) >= limit {
        return 0;
    }
    std::thread::sleep(if tries < BUSY_FIRST_TRIES {
        BUSY_FIRST_PAUSE
    } else {
        BUSY_PAUSE
    });
    1
}

/// Switches the file to WAL (persistent in the file; a no-op once done).
///
/// When several processes open a fresh file at once, the switch can fail
/// with "database is locked" without SQLite calling the busy handler, so it
/// is retried here until the busy timeout is spent.
fn set_wal(conn: &Connection, busy_timeout: Duration) -> Result<String> {
    let started = Instant::now();
    let mut backoff = WAL_RETRY_FIRST_BACKOFF;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => return Ok(mode),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && started.elapsed() < busy_timeout =>
            {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(WAL_RETRY_MAX_BACKOFF);
            }
            Err(e) => return Err(map_err("set journal_mode=WAL", e)),
        }
    }
}

/// Idle reader connections; a read takes one (or opens a new one) and puts
/// it back afterwards. How many run at once is the caller's to bound.
pub(super) struct ReaderPool {
    pub(super) path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration, capacity: usize) -> Self {
        Self {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::with_capacity(capacity)),
        }
    }

    fn take(&self) -> Result<Connection> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, self.busy_timeout, true),
        }
    }

    pub(super) fn put_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
    }

    /// Runs `f` on a pooled reader connection.
    pub(super) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.take()?;
        let result = f(&conn);
        // A read that left a transaction open would pin an old snapshot:
        // drop that connection rather than reuse it.
        if conn.is_autocommit() {
            self.put_back(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, StatementStatus};

    use super::*;

    /// A cached statement whose `LIMIT` is a bound value runs again with a
    /// new value without being parsed again (SQLite re-prepares it on
    /// every bind unless plans are stable; see `open_connection`).
    #[test]
    fn bound_limits_do_not_re_prepare_statements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_connection(&dir.path().join("t.db"), Duration::ZERO, false).expect("open");
        conn.execute_batch(
            "CREATE TABLE t (k TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (k, n));
             INSERT INTO t VALUES ('a', 1), ('a', 2), ('a', 3);",
        )
        .expect("schema");
        let sql = "SELECT n FROM t WHERE k = ?1 AND n > ?2 ORDER BY n LIMIT ?3";
        for (after, limit, rows) in [(0, 1, 1), (0, 10, 3), (1, 2, 2), (3, 5, 0)] {
            let mut stmt = conn.prepare_cached(sql).expect("prepare");
            let got: Vec<i64> = stmt
                .query_map(params!["a", after, limit], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .expect("query");
            assert_eq!(got.len(), rows, "after {after}, limit {limit}");
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "parsed again for limit {limit}"
            );
        }
    }

    /// A write waits for a lock another connection holds, gets it once that
    /// one lets go, and fails with SQLITE_BUSY (never waits on) when the
    /// lock stays held past its busy timeout; with a zero timeout it fails
    /// at once.
    #[test]
    fn a_writer_waits_for_a_held_lock_within_its_busy_timeout_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let holder = open_connection(&path, Duration::ZERO, false).expect("open");
        holder
            .execute_batch("CREATE TABLE t (n INTEGER NOT NULL)")
            .expect("schema");
        let busy = |e: rusqlite::Error| e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy);

        let impatient = open_connection(&path, Duration::ZERO, false).expect("open");
        let short = open_connection(&path, Duration::from_millis(30), false).expect("open");
        holder.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let err = impatient
            .execute("INSERT INTO t VALUES (1)", [])
            .unwrap_err();
        assert!(busy(err), "no wait with a zero timeout");
        let err = short.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
        assert!(busy(err), "the lock outlived the 30 ms timeout");

        // Let go while a patient writer waits: it gets the lock and writes.
        let patient = std::thread::spawn(move || {
            let conn = open_connection(&path, Duration::from_secs(30), false).expect("open");
            conn.execute("INSERT INTO t VALUES (3)", [])
        });
        std::thread::sleep(Duration::from_millis(20));
        holder.execute_batch("COMMIT").expect("unlock");
        assert_eq!(patient.join().expect("thread").expect("insert"), 1);
        let rows: Vec<i64> = holder
            .prepare("SELECT n FROM t")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("read");
        assert_eq!(rows, [3]);
    }

    #[test]
    fn the_busy_wait_polls_finely_first_then_every_millisecond() {
        assert_eq!(busy_waited(0), Duration::ZERO);
        assert_eq!(busy_waited(4), Duration::from_millis(1));
        assert_eq!(busy_waited(8), Duration::from_millis(2));
        assert_eq!(busy_waited(12), Duration::from_millis(6));
        // Five seconds (the default timeout) take about five thousand tries.
        assert!(busy_waited(5_005) < Duration::from_secs(5));
        assert!(busy_waited(5_006) >= Duration::from_secs(5));
        assert_eq!(
            busy_waited(u64::MAX),
            BUSY_FIRST_PAUSE * 8 + BUSY_PAUSE * u32::MAX
        );
    }
}
