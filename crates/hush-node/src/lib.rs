//! hush-node: one Hush server node.
//!
//! [`start`] boots a node from a [`Config`] — store, route, sessions,
//! groups, API, peer side of the mesh, gateway — and returns once it
//! accepts connections; the binary and the integration tests both use it.
//!
//! Modules, top-down (each uses only those below it; ARCHITECTURE.md has
//! the map):
//! - `gateway/` (actix: HTTP, WebSocket, SSE, RPC) and `peer` (other nodes'
//!   messages, view changes): the two ways in.
//! - `api`: a client request, routed to its group's owner or served here.
//! - `presence` (GetPresence), `keys` (KeyPackages, group creation),
//!   `group/` (GroupActors), `session/` (SessionActors, fan-out).
//! - `route`: the owner of a key, and messages to other nodes.
//! - `conns` (this node's connection queues), `wire` (what travels between
//!   the parts: Caller, Outbound, encoded frames).
//! - leaves: `directory`, `shutdown`, `config`, `clock`, `error`.

pub mod api;
pub mod clock;
pub mod config;
pub mod conns;
pub mod directory;
pub mod error;
pub mod gateway;
pub mod group;
pub mod keys;
pub mod peer;
pub mod presence;
pub mod route;
pub mod session;
pub mod shutdown;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hush_store::{ScyllaStore, SqliteConfig, SqliteStore, Store};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ring::rand::SecureRandom as _;

use api::{Api, ApiLimits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
use conns::Connections;
use gateway::AppState;
use group::{GroupLimits, Groups};
use route::Route;
use session::{SessionLimits, Sessions};
use shutdown::Shutdown;

/// How long a graceful stop waits for each GroupActor to stop (and release
/// its lease).
const GROUP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: hush_store::StoreError,
    },
    /// The ScyllaDB store could not be opened (the message names the
    /// contact points when the cluster is unreachable).
    #[error("cannot open the ScyllaDB store: {0}")]
    ScyllaStore(hush_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("startup failed: {0}")]
    Other(String),
}

/// A running node.
pub struct RunningNode {
    /// The gateway's bound address (useful with port 0).
    pub addr: SocketAddr,
    store: Arc<dyn Store>,
    route: Arc<Route>,
    groups: Arc<Groups>,
    sessions: Arc<Sessions>,
    shutdown: Shutdown,
    gateway: gateway::Running,
    /// Held (locked) while the node runs: see [`claim_data_dir`].
    _data_lock: std::fs::File,
}

impl RunningNode {
    /// The store the node uses (tests inspect it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Follows the number of live GroupActors on this node.
    pub fn watch_group_actors(&self) -> tokio::sync::watch::Receiver<usize> {
        self.groups.watch_count()
    }

    /// Follows the number of live SessionActors on this node.
    pub fn watch_session_actors(&self) -> tokio::sync::watch::Receiver<usize> {
        self.sessions.watch_count()
    }

    /// Graceful stop: refuse new work (forwarded calls are refused as a
    /// stale view, so their senders route again); leave the cluster view
    /// (peers learn it at once, so a client that reconnects elsewhere is not
    /// routed back here); tell every client with 4004 (reconnect to another
    /// node: reads resume there from the store, a send in flight is resent
    /// by id and answered once) without waiting for the groups; stop every
    /// group actor and wait for it, which releases its lease so the new
    /// owner takes the group without waiting for the lease to expire; then
    /// stop the gateway.
    pub async fn stop(self) {
        let started = std::time::Instant::now();
        self.shutdown.begin();
        if let Some(mesh) = self.route.mesh() {
            mesh.leave().await;
        }
        self.shutdown.close_connections();
        let left = started.elapsed();
        self.groups.stop_all(GROUP_STOP_TIMEOUT).await;
        let released = started.elapsed();
        self.gateway.stop().await;
        tracing::info!(
            left_ms = left.as_millis() as u64,
            groups_released_ms = released.as_millis() as u64,
            stopped_ms = started.elapsed().as_millis() as u64,
            "graceful stop"
        );
    }
}

/// Starts this node's side of the cluster mesh: certificates (the dev CA or
/// the configured PEM files), then membership over QUIC with every other
/// listed node as a seed.
async fn join_cluster(
    config: &Config,
    entry: &config::ClusterNode,
) -> Result<hush_cluster::mesh::Mesh, StartError> {
    let id = &config.node.id;
    let identity = match &config.cluster.tls {
        Some(t) => {
            let path = |p: &std::path::Path| {
                std::path::PathBuf::from(p.to_string_lossy().replace("{node}", id))
            };
            hush_cluster::NodeIdentity::from_pem_files(
                id,
                &path(&t.ca),
                &path(&t.cert),
                &path(&t.key),
            )
        }
        None => hush_cluster::NodeIdentity::dev(&config.cluster_ca_dir(), id),
    }
    .map_err(|e| StartError::Other(format!("cluster certificates: {e}")))?;
    let seeds = config
        .cluster
        .nodes
        .iter()
        .filter(|n| n.id != *id)
        .map(|n| (n.id.clone(), n.quic))
        .collect();
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    let mesh = hush_cluster::mesh::Mesh::start(
        &identity,
        hush_cluster::mesh::MeshConfig {
            name: id.clone(),
            bind: entry.quic,
            seeds,
            probe_period: std::time::Duration::from_millis(config.cluster.probe_ms),
            cluster_size: config.cluster.nodes.len() as u32,
            boot,
        },
    )
    .await
    .map_err(|e| StartError::Other(format!("cluster endpoint on {}: {e}", entry.quic)))?;
    tracing::info!(node = %id, quic = %mesh.local_addr(), "joined the cluster mesh");
    Ok(mesh)
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (several nodes in one
            // test process): then this node's page shows that one's metrics.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Opens the store `[store] kind` selects.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if config.store.kind == "scylla" {
        // Never exercised against a live cluster (see hush_store::scylla).
        let store = ScyllaStore::connect(config.scylla_config()?)
            .await
            .map_err(StartError::ScyllaStore)?;
        return Ok(Arc::new(store));
    }
    let path = config.store_path();
    let mut store_config = SqliteConfig::new(path.clone());
    store_config.max_batch = config.store.max_batch;
    Ok(Arc::new(
        SqliteStore::open(store_config)
            .await
            .map_err(|source| StartError::Store { path, source })?,
    ))
}

/// Boots a node. Must be called on a multi-thread tokio runtime: actors run
/// on it; the gateway runs on its own worker threads.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningNode, StartError> {
    config.validate()?;
    // Installed first, so that start-up work (the store) is measured too.
    let metrics = metrics_handle();
    std::fs::create_dir_all(&config.node.data).map_err(|source| StartError::DataDir {
        path: config.node.data.clone(),
        source,
    })?;
    let (data_lock, lease_owner) = claim_data_dir(&config)?;
    let store = open_store(&config).await?;
    let mut candidate = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut candidate)
        .map_err(|_| StartError::Other("no randomness".into()))?;
    let secret = store
        .get_or_create_secret("token-hmac-v1", &candidate)
        .await
        .map_err(|e| StartError::Other(format!("token secret: {e}")))?;
    let tokens = hush_ds::TokenKey::new(&secret);

    let runtime = tokio::runtime::Handle::current();
    let route = Arc::new(match config.cluster_node().cloned() {
        Some(entry) => Route::clustered(
            Arc::new(join_cluster(&config, &entry).await?),
            runtime.clone(),
            Duration::from_millis(config.cluster.forward_timeout_ms),
            config.cluster.peer_queue,
        ),
        None => Route::lone(&config.node.id, runtime.clone()),
    });
    let shutdown = Shutdown::default();
    let sessions = Arc::new(Sessions::new(
        Arc::new(Connections::default()),
        route.clone(),
        store.clone(),
        clock.clone(),
        runtime.clone(),
        shutdown.clone(),
        SessionLimits {
            max_connections_per_user: config.limits.max_connections_per_user,
            presence_grace_ms: config.actors.presence_grace_ms,
        },
    ));
    let groups = Arc::new(Groups::new(
        store.clone(),
        sessions.clone(),
        clock.clone(),
        runtime.clone(),
        shutdown.clone(),
        lease_owner,
        GroupLimits {
            max_message_bytes: config.limits.max_message_bytes,
            epoch_window: config.limits.epoch_window,
            lease_ttl_ms: config.actors.lease_ttl_ms,
            group_idle_ms: config.actors.group_idle_ms,
        },
    ));
    let api = Arc::new(Api::new(
        store.clone(),
        groups.clone(),
        sessions.clone(),
        route.clone(),
        ApiLimits {
            max_message_bytes: config.limits.max_message_bytes,
            max_key_packages_per_upload: config.limits.max_key_packages_per_upload,
        },
    ));
    Arc::new(peer::Peer::new(
        route.clone(),
        api.clone(),
        sessions.clone(),
        groups.clone(),
        shutdown.clone(),
    ))
    .start(&runtime);

    let app = Arc::new(AppState::new(
        config.clone(),
        store.clone(),
        tokens,
        clock,
        api,
        sessions.clone(),
        route.clone(),
        shutdown.clone(),
    ));
    let gateway =
        gateway::serve(app, metrics).map_err(|(addr, source)| StartError::Bind { addr, source })?;
    let addr = gateway.addr;
    tracing::info!(node = %config.node.id, %addr, "node started");
    Ok(RunningNode {
        addr,
        store,
        route,
        groups,
        sessions,
        shutdown,
        gateway,
        _data_lock: data_lock,
    })
}

/// Locks the node's data directory for this process and returns the name
/// it takes group leases under.
///
/// The lease owner is the node id plus a nonce kept in the data directory
/// (`lease-owner`), made on its first start. The exclusive lock
/// (`node.lock`, released when the process ends, however it ends) proves
/// that no other live process uses this directory, so a node restarted on
/// its directory — after a crash too — is the same owner and renews its
/// leases at once. A process started with the same id on *another*
/// directory is a different owner: it waits for the leases to expire and
/// can never reuse their fence tokens; and a second process on the same
/// directory, even one whose first is only frozen, does not start.
fn claim_data_dir(config: &Config) -> Result<(std::fs::File, String), StartError> {
    let dir = &config.node.data;
    let io = |source| StartError::DataDir {
        path: dir.clone(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("node.lock"))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StartError::Other(format!(
                "data directory {} is in use by another hush-node process",
                dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let path = dir.join("lease-owner");
    let prefix = format!("{}#", config.node.id);
    let kept = std::fs::read_to_string(&path).ok().and_then(|s| {
        let s = s.trim();
        let nonce = s.strip_prefix(&prefix)?;
        (nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_owned())
    });
    if let Some(owner) = kept {
        return Ok((lock, owner));
    }
    let mut nonce = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| StartError::Other("no randomness".into()))?;
    let owner = format!("{prefix}{}", hex::encode(nonce));
    let tmp = dir.join("lease-owner.tmp");
    std::fs::write(&tmp, format!("{owner}\n")).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok((lock, owner))
}

#[cfg(test)]
mod store_selection_tests {
    use super::*;

    /// Real: `[store] kind = "scylla"` pointed at a loopback port nobody
    /// listens on fails at start with the contact point in the message.
    #[tokio::test]
    async fn an_unreachable_scylla_is_a_clear_startup_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("probe a free port")
            .port();
        let point = format!("127.0.0.1:{port}");
        let mut config = Config::default();
        config.store.kind = "scylla".into();
        config.store.contact_points = vec![point.clone()];
        config.store.request_timeout_ms = 2_000;
        config.validate().expect("valid config");
        let err = match open_store(&config).await {
            Ok(_) => panic!("a closed port cannot host ScyllaDB"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("ScyllaDB"), "{err}");
        assert!(err.contains(&point), "{err}");
    }
}
