//! Cached statements. Every statement the hot paths run (appends, cursor
//! and inbox writes, timeline reads, the savepoints of a write batch) goes
//! through the connection's prepared-statement cache, so SQLite parses each
//! SQL text once per connection instead of once per call (the parser was a
//! large share of the writer thread's time under load). Invariant: the SQL
//! passed here is a constant string; parameters are always bound.

use rusqlite::{Connection, Params, Row};

/// Prepared statements kept per connection (more than the distinct SQL
/// texts the store runs, so none is evicted and parsed again).
pub(super) const STATEMENT_CACHE: usize = 128;

/// `Connection::execute` through the statement cache.
pub(super) fn execute<P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache.
pub(super) fn query_row<T, P, F>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: F,
) -> rusqlite::Result<T>
where
    P: Params,
    F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
{
    conn.prepare_cached(sql)?.query_row(params, f)
}
