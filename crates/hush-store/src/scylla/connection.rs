//! Connecting: one attempt ([`establish`]: session, server kind, keyspace,
//! migrations, prepared statements) and the background connector that
//! repeats it with backoff until it succeeds. Invariants: a store is usable
//! only once a whole attempt succeeded (the [`Link`] is set exactly once,
//! never unset: after that the driver reconnects to nodes that come back by
//! itself); every attempt is bounded by the configured timeouts, so start-up
//! never blocks forever; every failure names the contact points.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::errors::ExecutionError;
use ::scylla::policies::retry::DefaultRetryPolicy;
use ::scylla::statement::unprepared::Statement;
use ::scylla::statement::{Consistency, SerialConsistency};

use super::error::exec_error;
use super::store::Prepared;
use super::{
    added_column, create_keyspace_cql, server_from, split_statements, ConsistencyLevel,
    ScyllaConfig, Server, MIGRATIONS,
};
use crate::{Result, StoreError};

/// How often the driver asks whether every node has a schema change, after
/// each DDL statement of a migration (the driver's default is 200 ms, and a
/// migration is about twenty statements).
const SCHEMA_AGREEMENT_POLL: Duration = Duration::from_millis(20);

/// How long the driver waits after a schema change for every node to have
/// it (its default is 60 s). A node that missed the push (its internode
/// connection was being re-established) gets the change by a pull once it
/// hears of the new schema version by gossip, up to a minute later on
/// Cassandra (`cassandra.migration_delay_ms`): waiting longer than that
/// lets a migration ride it out instead of failing the store's start.
pub const SCHEMA_AGREEMENT_TIMEOUT: Duration = Duration::from_secs(180);

/// The client-side timeout of a schema change (keyspace creation, each
/// migration statement): the server applies it on every node before the
/// driver sees agreement, which takes seconds on a busy Cassandra cluster,
/// longer than an ordinary request may.
pub const SCHEMA_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A schema change statement with [`SCHEMA_CHANGE_TIMEOUT`].
pub fn schema_change(cql: impl Into<String>) -> Statement {
    let mut statement = Statement::new(cql.into());
    statement.set_request_timeout(Some(SCHEMA_CHANGE_TIMEOUT));
    statement
}

/// The background connector's first pause after a failed attempt, doubled
/// after each failure up to the longest.
const CONNECT_FIRST_PAUSE: Duration = Duration::from_millis(250);
const CONNECT_MAX_PAUSE: Duration = Duration::from_secs(10);

/// A store's connection: set once, when an attempt succeeded.
#[derive(Default)]
pub(super) struct Link {
    connected: OnceLock<Connected>,
    /// Why the last attempt failed (for `ready` and operations before the
    /// first success).
    last_error: Mutex<Option<String>>,
}

/// What a successful attempt built.
pub(super) struct Connected {
    pub(super) session: Arc<Session>,
    pub(super) server: Server,
    pub(super) prepared: Prepared,
}

impl Link {
    pub(super) fn connected(c: Connected) -> Self {
        let link = Self::default();
        let _ = link.connected.set(c);
        link
    }

    pub(super) fn get(&self) -> Option<&Connected> {
        self.connected.get()
    }

    /// The connection, or `Unavailable` saying why there is none yet.
    pub(super) fn require(&self, config: &ScyllaConfig) -> Result<&Connected> {
        self.connected.get().ok_or_else(|| {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
                .unwrap_or_else(|| "first attempt still running".into());
            StoreError::Unavailable(format!(
                "not connected to the CQL cluster at {} yet: {why}",
                config.contact_points.join(", ")
            ))
        })
    }

    fn failed(&self, e: &StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e.to_string());
    }
}

/// Repeats [`establish`] with backoff until it succeeds or the store is
/// dropped.
pub(super) async fn connect_in_background(config: ScyllaConfig, link: Weak<Link>) {
    let points = config.contact_points.join(", ");
    let mut pause = CONNECT_FIRST_PAUSE;
    loop {
        let attempt = establish(&config).await;
        let Some(shared) = link.upgrade() else {
            return;
        };
        match attempt {
            Ok(connected) => {
                let _ = shared.connected.set(connected);
                return;
            }
            Err(e) => {
                tracing::error!(
                    contact_points = %points,
                    error = %e,
                    retry_in_ms = pause.as_millis() as u64,
                    "cql store cannot connect"
                );
                shared.failed(&e);
            }
        }
        drop(shared);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(CONNECT_MAX_PAUSE);
    }
}

/// One connection attempt: a session on the contact points, the server
/// kind, the keyspace (created if missing), the migrations, the statements.
pub(super) async fn establish(config: &ScyllaConfig) -> Result<Connected> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency.consistency())
        .serial_consistency(Some(config.consistency.serial()))
        .request_timeout(Some(config.request_timeout))
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .build();
    let session = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(config.request_timeout)
        // Only this keyspace's replication (for token-aware routing):
        // neither other keyspaces nor table and column metadata, which
        // the driver would otherwise re-read after every schema change.
        .keyspaces_to_fetch([config.keyspace.clone()])
        .fetch_full_schema_metadata(false)
        .schema_agreement_interval(SCHEMA_AGREEMENT_POLL)
        .schema_agreement_timeout(SCHEMA_AGREEMENT_TIMEOUT)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot reach ScyllaDB at {}: {e}",
                config.contact_points.join(", ")
            ))
        })?;
    let session = Arc::new(session);
    let server = detect_server(&session).await?;
    let ddl = create_keyspace_cql(
        &config.keyspace,
        config.replication_factor,
        server,
        config.tablets,
    )?;
    session
        .query_unpaged(schema_change(ddl), ())
        .await
        .map_err(|e| exec_error("create keyspace", e))?;
    session
        .use_keyspace(&config.keyspace, false)
        .await
        .map_err(|e| StoreError::Unavailable(format!("use keyspace: {e}")))?;
    migrate(&session, &config.keyspace).await?;
    let serial_read = match config.consistency.serial() {
        SerialConsistency::LocalSerial => Consistency::LocalSerial,
        SerialConsistency::Serial => Consistency::Serial,
    };
    let strong = match config.consistency {
        ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
        ConsistencyLevel::One | ConsistencyLevel::Quorum => Consistency::Quorum,
    };
    let prepared = Prepared::prepare(&session, serial_read, strong, config.page_size).await?;
    tracing::info!(keyspace = %config.keyspace, ?server, "cql store connected");
    Ok(Connected {
        session,
        server,
        prepared,
    })
}

/// Asks the cluster which server it runs (see [`server_from`]).
pub(super) async fn detect_server(session: &Session) -> Result<Server> {
    let tables: Vec<String> = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'system_schema'",
            (),
        )
        .await
        .map_err(|e| exec_error("detect server", e))?
        .into_rows_result()
        .map_err(|e| StoreError::Backend(format!("detect server: {e}")))?
        .rows::<(String,)>()
        .map_err(|e| StoreError::Backend(format!("detect server: {e}")))?
        .map(|r| r.map(|(t,)| t))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| StoreError::Backend(format!("detect server: {e}")))?;
    if server_from(&tables, None) == Server::Cassandra {
        return Ok(Server::Cassandra);
    }
    let features = session
        .query_unpaged("SELECT supported_features FROM system.local", ())
        .await
        .map_err(|e| exec_error("detect server features", e))?
        .into_rows_result()
        .map_err(|e| StoreError::Backend(format!("detect server features: {e}")))?
        .maybe_first_row::<(Option<String>,)>()
        .map_err(|e| StoreError::Backend(format!("detect server features: {e}")))?
        .and_then(|(f,)| f);
    Ok(server_from(&tables, features.as_deref()))
}

/// Applies every migration, each statement idempotently (`IF NOT EXISTS`,
/// or an added column only when it is missing: see [`apply`]), so two
/// nodes migrating at once, or a migration interrupted half-way, converge
/// on re-run.
async fn migrate(session: &Session, keyspace: &str) -> Result<()> {
    for (version, cql) in MIGRATIONS {
        for statement in split_statements(cql) {
            apply(session, keyspace, &statement)
                .await
                .map_err(|e| exec_error(&format!("schema v{version}"), e))?;
        }
        session
            .query_unpaged(
                "INSERT INTO schema_version (version, applied_at_ms) VALUES (?, toUnixTimestamp(now()))",
                (*version,),
            )
            .await
            .map_err(|e| exec_error(&format!("record schema v{version}"), e))?;
    }
    Ok(())
}

/// Runs one migration statement. An `ALTER TABLE ... ADD` ([`added_column`])
/// runs only when the column is missing, and its failure counts as success
/// when the column is there afterwards (another node added it meanwhile).
async fn apply(
    session: &Session,
    keyspace: &str,
    statement: &str,
) -> std::result::Result<(), ExecutionError> {
    let Some((table, column)) = added_column(statement) else {
        return session
            .query_unpaged(schema_change(statement), ())
            .await
            .map(drop);
    };
    if has_column(session, keyspace, table, column).await? {
        return Ok(());
    }
    match session.query_unpaged(schema_change(statement), ()).await {
        Ok(_) => Ok(()),
        Err(e) => match has_column(session, keyspace, table, column).await {
            Ok(true) => Ok(()),
            _ => Err(e),
        },
    }
}

/// Whether the schema (as the coordinator knows it) has the column.
async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> std::result::Result<bool, ExecutionError> {
    let result = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await?;
    // A result that is not rows would be a server bug: read it as "missing"
    // (the ALTER then says what is wrong).
    Ok(result
        .into_rows_result()
        .is_ok_and(|rows| rows.rows_num() > 0))
}
