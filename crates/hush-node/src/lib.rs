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
//! - leaves: `directory`, `shutdown`, `config`, `clock`, `error`, `secrets`
//!   (owner-only data directory and files, the token key file), `telemetry`
//!   (every metric the node exports, described in one list).

pub mod admission;
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
pub mod secrets;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hush_store::{ScyllaStore, SqliteConfig, SqliteStore, Store};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ring::rand::SecureRandom as _;
use secrets::TokenKeyHandle;

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
    #[error("secrets: {0}")]
    Secrets(#[from] secrets::SecretsError),
    #[error("gateway TLS: {0}")]
    Tls(#[from] gateway::tls::TlsError),
    #[error("startup failed: {0}")]
    Other(String),
}

/// A running node.
pub struct RunningNode {
    /// The gateway's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Whether the gateway serves HTTPS/WSS (`[gateway.tls]`).
    pub tls: bool,
    store: Arc<dyn Store>,
    route: Arc<Route>,
    groups: Arc<Groups>,
    sessions: Arc<Sessions>,
    shutdown: Shutdown,
    gateway: gateway::Running,
    reloader: Arc<Reloader>,
    /// Checks the files the node reloads (see [`RunningNode::reload`]).
    watcher: Option<tokio::task::JoinHandle<()>>,
    app: Arc<AppState>,
    /// Deletes what expired, every `rate_limits.sweep_interval_ms`.
    sweeper: tokio::task::JoinHandle<()>,
    /// Held (locked) while the node runs: see [`claim_data_dir`].
    _data_lock: std::fs::File,
}

impl RunningNode {
    /// The gateway's URL: `http://` or `https://` and the bound address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The store the node uses (tests inspect it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The highest send-path queue depths seen since start (see
    /// `admission.rs`), and the sends in flight now.
    pub fn admission_peaks(&self) -> (admission::Peaks, usize) {
        let a = self.app.api.admission();
        (a.peaks(), a.inflight())
    }

    /// The requests of any kind in flight on this node now (each holds a
    /// place in `limits.max_inflight_requests` until it is answered).
    pub fn requests_in_flight(&self) -> usize {
        self.app.api.admission().requests()
    }

    /// Follows the number of live GroupActors on this node.
    pub fn watch_group_actors(&self) -> tokio::sync::watch::Receiver<usize> {
        self.groups.watch_count()
    }

    /// Follows the number of live SessionActors on this node.
    pub fn watch_session_actors(&self) -> tokio::sync::watch::Receiver<usize> {
        self.sessions.watch_count()
    }

    /// Re-reads the files an operator may change while the node runs (the
    /// token key file, the gateway's TLS certificate and key; SIGHUP does
    /// this, and so does a change the node notices every `node.watch_ms`).
    /// A file that does not load leaves what is in use unchanged and is an
    /// error.
    pub fn reload(&self) -> Result<(), StartError> {
        self.reloader.reload()
    }

    /// Deletes what has expired by the node's clock (link codes, used
    /// login challenges, idle rate-limit entries) now, as the sweeper does
    /// every `rate_limits.sweep_interval_ms`.
    pub async fn sweep(&self) -> gateway::SweepReport {
        self.app.sweep().await
    }

    /// Counts the successful reloads (SIGHUP, the file watcher, or
    /// [`RunningNode::reload`]).
    pub fn watch_reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloader.count.subscribe()
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
        if let Some(w) = &self.watcher {
            w.abort();
        }
        self.sweeper.abort();
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

/// Buckets of the histograms that count things (a batch's operations).
const COUNT_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often histogram samples are drained when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ])
                // Counts, not seconds.
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hush_store_batch_size".into()),
                        &COUNT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hush_cluster_batch_deliveries".into()),
                        &COUNT_BUCKETS,
                    )
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (several nodes in one
            // test process): then this node's page shows that one's metrics.
            let _ = metrics::set_global_recorder(recorder);
            // Histogram samples wait in buffers until drained: a scrape
            // drains them, and so does this, every few seconds, so that a
            // node nobody scrapes does not grow with every sample.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                });
            handle
        })
        .clone()
}

/// Opens the store `[store] kind` selects. The CQL store returns at once
/// and connects in the background with backoff, logging each failure with
/// the contact points: the node starts and serves `/readyz` = 503 until the
/// cluster answers, so a cluster that is down never blocks the start.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if config.store.kind == "scylla" {
        let scylla = config.scylla_config()?;
        let points = scylla.contact_points.join(", ");
        let store = ScyllaStore::start(scylla).map_err(StartError::ScyllaStore)?;
        tracing::info!(contact_points = %points, "cql store connecting in the background");
        return Ok(Arc::new(store));
    }
    let path = config.store_path();
    // Owner-only before SQLite ever opens it; its WAL and SHM follow its mode.
    secrets::prepare_sqlite_file(&path)?;
    let mut store_config = SqliteConfig::new(path.clone());
    store_config.max_batch = config.store.max_batch;
    store_config.max_batch_acks = config.store.max_batch_acks;
    store_config.commit_delay = std::time::Duration::from_micros(config.store.commit_delay_us);
    store_config.ack_delay = std::time::Duration::from_micros(config.store.ack_delay_us);
    store_config.checkpoint_pages = config.store.checkpoint_pages;
    let store = SqliteStore::open(store_config)
        .await
        .map_err(|source| StartError::Store {
            path: path.clone(),
            source,
        })?;
    secrets::sqlite_files_private(&path)?;
    Ok(Arc::new(store))
}

/// Runs [`AppState::sweep`] every `rate_limits.sweep_interval_ms`.
fn spawn_sweeper(app: &Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        let period = Duration::from_millis(app.config.rate_limits.sweep_interval_ms);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let swept = app.sweep().await;
            tracing::debug!(?swept, "swept expired state");
        }
    })
}

/// What the node reloads while it runs: the token key file.
struct Reloader {
    config: Config,
    tokens: TokenKeyHandle,
    /// The gateway's certificate, with TLS.
    cert: Option<Arc<gateway::tls::GatewayCert>>,
    /// Successful reloads so far.
    count: tokio::sync::watch::Sender<u64>,
}

impl Reloader {
    fn reload(&self) -> Result<(), StartError> {
        let keys = secrets::read_token_keys(&self.config.token_key_file())?;
        let until = keys.previous_until_ms();
        self.tokens.set(keys);
        if let Some(cert) = &self.cert {
            cert.reload()?;
            tracing::info!("gateway certificate loaded");
        }
        self.count.send_modify(|n| *n += 1);
        tracing::info!(previous_key_until_ms = ?until, "token keys loaded");
        Ok(())
    }

    /// Reloads whenever a watched file's length or modification time
    /// changes (checked every `node.watch_ms`; 0: never).
    fn watch(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.config.node.watch_ms;
        if period == 0 {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut paths = vec![me.config.token_key_file()];
            if let Some(cert) = &me.cert {
                paths.extend(cert.paths().iter().map(|p| p.to_path_buf()));
            }
            let stamps = |paths: &[std::path::PathBuf]| {
                paths
                    .iter()
                    .map(|p| secrets::file_stamp(p))
                    .collect::<Vec<_>>()
            };
            let mut seen = stamps(&paths);
            let mut tick = tokio::time::interval(Duration::from_millis(period));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamps(&paths);
                if now != seen {
                    seen = now;
                    if let Err(e) = me.reload() {
                        tracing::error!(error = %e, "a watched file changed but does not load; keeping what is loaded");
                    }
                }
            }
        }))
    }
}

/// Boots a node. Must be called on a multi-thread tokio runtime: actors run
/// on it; the gateway runs on its own worker threads.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningNode, StartError> {
    config.validate()?;
    // Every rustls configuration of the node names ring explicitly; this
    // makes ring the process default too, for code that asks for the
    // default (reqwest, built without a provider of its own). Keeps one
    // installed earlier.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // Installed first, so that start-up work (the store) is measured too.
    let metrics = metrics_handle();
    telemetry::install();
    // Owner-only (0700), fixed if an earlier run or an operator left it wider.
    secrets::private_dir(&config.node.data)?;
    let (data_lock, lease_owner) = claim_data_dir(&config)?;
    let store = open_store(&config).await?;
    let tokens = TokenKeyHandle::new(secrets::token_keys_at_start(&config, store.as_ref()).await?);

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
        Arc::new(Connections::new(
            config.limits.max_queued_deliveries_per_conn,
        )),
        route.clone(),
        store.clone(),
        clock.clone(),
        runtime.clone(),
        shutdown.clone(),
        SessionLimits {
            max_connections_per_user: config.limits.max_connections_per_user,
            presence_grace_ms: config.actors.presence_grace_ms,
            presence_push_max_members: config.actors.presence_push_max_members,
            max_session_actors: config.actors.max_session_actors,
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
            max_group_actors: config.actors.max_group_actors,
        },
    ));
    let api = Arc::new(Api::new(
        store.clone(),
        groups.clone(),
        sessions.clone(),
        route.clone(),
        clock.clone(),
        ApiLimits::from_config(&config),
    ));
    Arc::new(peer::Peer::new(
        route.clone(),
        api.clone(),
        sessions.clone(),
        groups.clone(),
        shutdown.clone(),
    ))
    .start(&runtime);

    let mut challenge_secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut challenge_secret)
        .map_err(|_| StartError::Other("no randomness".into()))?;
    let app = Arc::new(AppState::new(
        config.clone(),
        store.clone(),
        tokens.clone(),
        clock,
        api,
        sessions.clone(),
        route.clone(),
        shutdown.clone(),
        &challenge_secret,
    ));
    let cert = match &config.gateway.tls {
        Some(t) => Some(Arc::new(gateway::tls::GatewayCert::load(&t.cert, &t.key)?)),
        None => None,
    };
    let gateway = gateway::serve(app.clone(), metrics, cert.clone())
        .map_err(|(addr, source)| StartError::Bind { addr, source })?;
    let sweeper = spawn_sweeper(&app);
    let addr = gateway.addr;
    tracing::info!(node = %config.node.id, %addr, "node started");
    let tls = cert.is_some();
    let reloader = Arc::new(Reloader {
        config,
        tokens,
        cert,
        count: tokio::sync::watch::Sender::new(0),
    });
    let watcher = reloader.watch();
    Ok(RunningNode {
        addr,
        tls,
        store,
        route,
        groups,
        sessions,
        shutdown,
        gateway,
        reloader,
        watcher,
        app,
        sweeper,
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
    let lock = secrets::private_options()
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
    secrets::private_file(&dir.join("node.lock"))?;
    let path = dir.join("lease-owner");
    secrets::private_file(&path)?;
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
    let _ = std::fs::remove_file(&tmp);
    secrets::private_options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{owner}\n").as_bytes()))
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok((lock, owner))
}

#[cfg(test)]
mod store_selection_tests {
    use super::*;

    /// Real: `[store] kind = "scylla"` pointed at a loopback port nobody
    /// listens on does not block the start: the store opens at once and
    /// says it is unavailable, naming the contact point, and once the first
    /// background attempt failed, that ScyllaDB could not be reached there.
    #[tokio::test]
    async fn an_unreachable_scylla_is_a_clear_error_and_never_blocks_the_start() {
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
        let store = tokio::time::timeout(Duration::from_secs(5), open_store(&config))
            .await
            .expect("opening a CQL store does not wait for the cluster")
            .expect("a CQL store opens while its cluster is down");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let err = match store.ready().await {
                Ok(()) => panic!("a closed port cannot host ScyllaDB"),
                Err(hush_store::StoreError::Unavailable(e)) => e,
                Err(other) => panic!("expected Unavailable, got {other:?}"),
            };
            assert!(err.contains(&point), "{err}");
            if err.contains("ScyllaDB") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failed attempt reported: {err}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
