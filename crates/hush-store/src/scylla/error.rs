//! Driver errors as [`StoreError`]s, and the bounded retry of transient
//! ones. Invariant: only errors that say the request, sent again, could
//! succeed are `Unavailable` (no connection, a node down or overloaded, a
//! timeout, a lost connection); errors that say the request itself is wrong
//! (syntax, invalid, unauthorized, a value that does not serialize, a reply
//! that does not parse) are `Backend`, never retried: they are bugs or
//! configuration errors, and retrying would only hide them.

use std::time::Duration;

use ::scylla::errors::{
    DbError, ExecutionError, NextPageError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError, RequestError,
};

use crate::{Result, StoreError};

/// How often one store operation retries after transient errors before it
/// answers `Unavailable`, and the first pause (doubling each time): the
/// pauses add up to 1.5 s, time for the driver to route around a node that
/// just died, short enough that a cluster that is gone is reported quickly.
pub(super) const TRANSIENT_RETRIES: u32 = 4;
pub(super) const TRANSIENT_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Whether the server refused the request itself (retrying cannot help).
fn refused(db: &DbError) -> bool {
    matches!(
        db,
        DbError::SyntaxError
            | DbError::Invalid
            | DbError::AlreadyExists { .. }
            | DbError::FunctionFailure { .. }
            | DbError::AuthenticationError
            | DbError::Unauthorized
            | DbError::ConfigError
            | DbError::ProtocolError
    )
}

fn attempt_is_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => !refused(db),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        // Serialization, parsing, unexpected responses: a bug on one side.
        _ => false,
    }
}

fn prepare_is_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_transient(first_attempt),
        PrepareError::PreparedStatementIdsMismatch => false,
        _ => true,
    }
}

/// A failure to prepare statement `name` as a store error.
pub(super) fn prepare_error(name: &str, e: PrepareError) -> StoreError {
    exec_error(&format!("prepare {name}"), ExecutionError::PrepareError(e))
}

/// Whether executing the statement again could succeed.
pub(crate) fn is_transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(attempt) => attempt_is_transient(attempt),
        ExecutionError::BadQuery(_) => false,
        ExecutionError::PrepareError(e) => prepare_is_transient(e),
        // No connection, empty plan, client-side timeout, schema agreement
        // or metadata trouble, keyspace switch: the cluster, not the request.
        _ => true,
    }
}

/// The same for a failed page fetch.
fn request_is_transient(e: &RequestError) -> bool {
    match e {
        RequestError::LastAttemptError(attempt) => attempt_is_transient(attempt),
        _ => true,
    }
}

fn request_error(name: &str, e: RequestError) -> StoreError {
    if request_is_transient(&e) {
        StoreError::Unavailable(format!("{name}: {e}"))
    } else {
        StoreError::Backend(format!("{name}: {e}"))
    }
}

/// An execution error of statement `name` as a store error.
pub(super) fn exec_error(name: &str, e: ExecutionError) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(format!("{name}: {e}"))
    } else {
        StoreError::Backend(format!("{name}: {e}"))
    }
}

/// A paged execution's error as a store error.
pub(super) fn pager_error(name: &str, e: PagerExecutionError) -> StoreError {
    match e {
        PagerExecutionError::NextPageError(NextPageError::RequestFailure(e)) => {
            request_error(name, e)
        }
        other => StoreError::Backend(format!("{name}: {other}")),
    }
}

/// An error while walking the pages of a result as a store error.
pub(super) fn next_row_error(name: &str, e: NextRowError) -> StoreError {
    match e {
        NextRowError::NextPageError(NextPageError::RequestFailure(e)) => request_error(name, e),
        other => StoreError::Backend(format!("{name}: {other}")),
    }
}

/// Counts the transient retries of one operation.
pub(super) struct Transient {
    retries: u32,
    first_pause: Duration,
}

impl Transient {
    pub(super) fn new() -> Self {
        Self {
            retries: 0,
            first_pause: TRANSIENT_FIRST_PAUSE,
        }
    }

    /// The pause before retry number `n` (0-based).
    fn pause(&self, n: u32) -> Duration {
        self.first_pause * 2u32.pow(n)
    }

    /// Pauses and returns `Ok` if `e` is `Unavailable` and retries are
    /// left; otherwise returns `e`.
    pub(super) async fn retry_after(&mut self, e: StoreError) -> Result<()> {
        if !matches!(e, StoreError::Unavailable(_)) || self.retries >= TRANSIENT_RETRIES {
            return Err(e);
        }
        tokio::time::sleep(self.pause(self.retries)).await;
        self.retries += 1;
        tracing::debug!(error = %e, retry = self.retries, "cql store retrying after a transient error");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ::scylla::errors::{BadQuery, ConnectionPoolError, WriteType};

    use super::*;

    fn db(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "msg".into()))
    }

    #[test]
    fn cluster_trouble_is_unavailable_and_bad_requests_are_backend_errors() {
        let transient = [
            db(DbError::Unavailable {
                consistency: ::scylla::statement::Consistency::Quorum,
                required: 2,
                alive: 1,
            }),
            db(DbError::WriteTimeout {
                consistency: ::scylla::statement::Consistency::Quorum,
                received: 1,
                required: 2,
                write_type: WriteType::Cas,
            }),
            db(DbError::Overloaded),
            db(DbError::IsBootstrapping),
            ExecutionError::RequestTimeout(Duration::from_secs(5)),
            ExecutionError::EmptyPlan,
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing),
            ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId),
        ];
        for e in transient {
            let text = e.to_string();
            assert!(
                matches!(exec_error("s", e), StoreError::Unavailable(_)),
                "{text}"
            );
        }
        let bugs = [
            db(DbError::SyntaxError),
            db(DbError::Invalid),
            db(DbError::Unauthorized),
            db(DbError::ConfigError),
            ExecutionError::BadQuery(BadQuery::PartitionKeyExtraction),
        ];
        for e in bugs {
            let text = e.to_string();
            assert!(
                matches!(exec_error("s", e), StoreError::Backend(_)),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_a_bounded_number_of_times() {
        let t = Transient::new();
        let total: Duration = (0..TRANSIENT_RETRIES).map(|n| t.pause(n)).sum();
        assert_eq!(total, Duration::from_millis(1500));
        let mut t = Transient {
            retries: 0,
            first_pause: Duration::ZERO,
        };
        for _ in 0..TRANSIENT_RETRIES {
            t.retry_after(StoreError::Unavailable("x".into()))
                .await
                .expect("retry");
        }
        assert!(matches!(
            t.retry_after(StoreError::Unavailable("x".into())).await,
            Err(StoreError::Unavailable(_))
        ));
        let mut t = Transient::new();
        assert!(matches!(
            t.retry_after(StoreError::Backend("bug".into())).await,
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            t.retry_after(StoreError::NotFound).await,
            Err(StoreError::NotFound)
        ));
    }
}
