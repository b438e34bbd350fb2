//! Typed, validated node configuration.
//!
//! Defaults live in code ([`Config::default`]); a TOML file (the same format
//! as `cluster.toml`) overrides them; command-line flags override the file.
//! Unknown keys are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything a node needs to start.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub store: StoreSection,
    pub gateway: GatewaySection,
    pub limits: Limits,
    pub auth: AuthSection,
    pub actors: ActorSection,
    pub cluster: ClusterSection,
    pub rate_limits: RateLimitSection,
}

/// The most threads `gateway.workers` and `node.actor_threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// The longest group-commit delay `store.commit_delay_us` (and acks' wait,
/// `store.ack_delay_us`) accepts (100 ms): past that it is a stall, not a
/// batch.
pub const MAX_COMMIT_DELAY_US: u64 = 100_000;

/// The longest WAL `store.checkpoint_pages` accepts (1 GiB at 4 KiB pages):
/// the WAL is read through at start after a crash, and every reader's page
/// lookup goes through its index.
pub const MAX_CHECKPOINT_PAGES: u32 = 262_144;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Stable node name (lease owner, logs).
    pub id: String,
    /// Data directory (SQLite file, generated secrets). Kept 0700, its
    /// files 0600 (fixed at start if wider).
    pub data: PathBuf,
    /// How often the node checks its token key file (and TLS certificate)
    /// for changes and reloads them, in ms; 0 = only on SIGHUP.
    pub watch_ms: u64,
    /// Worker threads of the runtime the actors (sessions, groups), the
    /// store's client side and the mesh run on; 0 = half the available
    /// CPUs, at least one (see [`Config::actor_threads`]).
    pub actor_threads: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// "embedded" (SQLite) or "scylla" (ScyllaDB).
    pub kind: String,
    /// SQLite file; defaults to `<data>/hush.sqlite`.
    pub path: Option<PathBuf>,
    /// Most operations written in one group-commit transaction.
    pub max_batch: usize,
    /// Most cursor and inbox acks in one of those transactions that also
    /// carries other writes (embedded store): acks wait in a lane of their
    /// own, after the other writes, so a herd of them (every member of a
    /// group acking one message) delays a send by at most one batch. A
    /// transaction with nothing else to write takes up to `max_batch`.
    pub max_batch_acks: usize,
    /// Group commit's delay, in microseconds (embedded store; default
    /// 2,000; 0: off): a write that finds the writer idle, with fewer than
    /// 4 others queued, waits up to this long for more to share its commit
    /// and fsync, and only while writes arrive more often than once per
    /// delay (a lone write commits at once). Less CPU per message at
    /// moderate load for up to this much latency; a busy writer never
    /// waits. At most 100,000.
    pub commit_delay_us: u64,
    /// How long acks alone wait for more acks to share their transaction,
    /// in microseconds (embedded store; default 5,000; 0: off): until the
    /// oldest has waited this long or any other write arrives (a full
    /// transaction of acks does not wait). Nobody waits on an ack's commit;
    /// a cursor (and a device's join announcement) moves up to this much
    /// later. At most 100,000.
    pub ack_delay_us: u64,
    /// The WAL's length in pages (4 KiB each) past which a commit copies it
    /// into the database file (embedded store; default 10,000; SQLite's
    /// `wal_autocheckpoint`): fewer checkpoints write each hot page fewer
    /// times, for a longer WAL on disk. 1 to 262,144.
    pub checkpoint_pages: u32,
    /// ScyllaDB: "host:port" of one or more nodes.
    pub contact_points: Vec<String>,
    /// ScyllaDB keyspace (created at start if missing).
    pub keyspace: String,
    /// ScyllaDB: replication factor used when creating the keyspace.
    pub replication_factor: u32,
    /// ScyllaDB: "quorum", "local_quorum" or "one".
    pub consistency: String,
    /// ScyllaDB: client-side timeout of every request, in milliseconds.
    pub request_timeout_ms: u64,
    /// ScyllaDB: timeline retention in days (0 = forever).
    pub retention_days: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Address the HTTP/WebSocket gateway listens on. Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Origins allowed to open WebSockets (browser requests carry Origin).
    /// Requests without an Origin header (native clients) are allowed.
    pub allowed_origins: Vec<String>,
    /// actix-web worker threads, which serve the client connections; 0 =
    /// one per available CPU (see [`Config::gateway_workers`]).
    pub workers: usize,
    /// TCP_NODELAY on client connections. Chat frames are small and
    /// latency-bound; with Nagle's algorithm a small write can wait for
    /// the peer's delayed ACK (about 40 ms on Linux).
    pub tcp_nodelay: bool,
    /// Live connections one source address (IPv6: one /64) may hold; the
    /// requests of one more get TOO_MANY_CONNECTIONS and it is closed.
    pub max_connections_per_ip: usize,
    /// A request's head (request line and headers) must arrive within this
    /// long of the connection or the previous request (else 408 and close).
    pub header_timeout_ms: u64,
    /// A request's body must arrive whole within this long of its head
    /// (a trickled body is cut: MALFORMED and close). Not for WebSockets.
    pub body_timeout_ms: u64,
    /// An idle kept-alive connection is closed after this long.
    pub keep_alive_ms: u64,
    /// After the node closes a connection, the peer gets this long to
    /// acknowledge before the socket is dropped.
    pub disconnect_timeout_ms: u64,
    /// HTTPS and WSS with this certificate and key (PEM); absent: plain
    /// HTTP (loopback, or behind a TLS-terminating proxy).
    pub tls: Option<GatewayTls>,
    /// With TLS: `Strict-Transport-Security: max-age=<this>` on every
    /// answer (0: no header).
    pub hsts_max_age_secs: u64,
    /// The admin pages (`/metrics`, `/cluster`) are answered to loopback
    /// peers. Off: only with the admin token (behind a proxy on the same
    /// host every peer is loopback: turn this off there).
    pub admin_loopback: bool,
    /// A bearer token that opens the admin pages from anywhere (at least
    /// 16 characters); absent: loopback only.
    pub admin_token: Option<String>,
}

/// `[gateway.tls]`: the gateway's certificate chain (leaf first) and its
/// private key, PEM. Reloaded on SIGHUP and when the files change.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Rate limits on the account endpoints: register, login challenge,
/// login, link code, link. Per source address (IPv6: per /64) on all five;
/// per account on what only the account can do (a login whose signature
/// verified: per device; a link code: per user), so a stranger can never
/// spend someone else's budget. Refusals are RATE_LIMITED with a
/// `Retry-After` header.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    /// Sustained requests per second from one source address.
    pub ip_per_sec: f64,
    /// Burst from one source address.
    pub ip_burst: f64,
    /// Sustained logins per second of one device, link codes of one user.
    pub account_per_sec: f64,
    /// Burst per account.
    pub account_burst: f64,
    /// Most source addresses, accounts and used login challenges kept in
    /// memory, each; past it new ones are refused (RATE_LIMITED) until
    /// entries expire.
    pub tracked_keys: usize,
    /// How often expired link codes, used challenges and idle rate-limit
    /// entries are deleted (judged by the node clock).
    pub sweep_interval_ms: u64,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            ip_per_sec: 10.0,
            ip_burst: 100.0,
            account_per_sec: 1.0,
            account_burst: 20.0,
            tracked_keys: 100_000,
            sweep_interval_ms: 60_000,
        }
    }
}

/// Explicit limits; every one is enforced and tested.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket frame (and HTTP body) accepted, bytes. Larger: close 1009.
    pub max_frame_bytes: usize,
    /// Largest MLS message inside a frame (application message, commit), bytes.
    pub max_message_bytes: usize,
    /// Sustained requests per second per connection.
    pub rate_per_sec: f64,
    /// Burst of requests per connection above the sustained rate.
    pub rate_burst: f64,
    /// Concurrent connections per user (all devices).
    pub max_connections_per_user: usize,
    /// A connection must authenticate within this many ms (first-frame auth).
    pub auth_deadline_ms: u64,
    /// Server pings every this many ms.
    pub heartbeat_interval_ms: u64,
    /// A connection silent for this many ms is closed (4002).
    pub heartbeat_timeout_ms: u64,
    /// Frames queued for one connection before it is cut off as a slow reader.
    pub send_buffer_frames: usize,
    /// A single write may block at most this long before the reader is cut off.
    pub write_timeout_ms: u64,
    /// Application messages may be this many epochs behind the current one.
    pub epoch_window: u64,
    /// Key packages per upload request.
    pub max_key_packages_per_upload: usize,
    /// Unclaimed key packages one device may store; an upload that would go
    /// past it is refused (TOO_LARGE) and stores nothing.
    pub max_key_packages_per_device: u32,
    /// KeyPackage claims one user may make: sustained per minute...
    pub claims_per_claimer_per_min: f64,
    /// ...and burst above that.
    pub claims_per_claimer_burst: f64,
    /// Claims of one user's KeyPackages, by anyone: sustained per minute...
    /// (RFC 9750's guidance against draining a user's packages.)
    pub claims_per_target_per_min: f64,
    /// ...and burst above that.
    pub claims_per_target_burst: f64,
    /// Users whose claim buckets this node holds at most, per set (claimers,
    /// targets): memory stays bounded. Buckets that refilled are forgotten
    /// first; when every held one is in use, a user new to the set is
    /// refused (RATE_LIMITED, fail closed) until one refills.
    pub claims_tracked_users: usize,
    /// Timeline entries per page when sending a backlog.
    pub sync_page: u32,
    /// Group sends (`SendMessage`, `SendEphemeral`) in flight on this node
    /// at once, from admission to ack; one more is refused UNAVAILABLE.
    /// Bounds the group mailboxes and the store writer's queue.
    pub max_inflight_sends: usize,
    /// Group sends waiting for one group at once; one more is refused
    /// RATE_LIMITED. A group sequences one message at a time, so this
    /// bounds the ack latency of a hot group.
    pub max_pending_per_group: usize,
    /// Frames waiting in this node's connection queues (fan-out not yet
    /// written to the sockets; each connection counts at most
    /// `max_queued_deliveries_per_conn`) past which sends are refused
    /// UNAVAILABLE.
    pub max_queued_deliveries: usize,
    /// The most frames of one connection's queue that count towards
    /// `max_queued_deliveries`: a few slow readers (each cut off once its
    /// own queue is full) must not refuse everyone's sends.
    pub max_queued_deliveries_per_conn: usize,
    /// Sends are refused UNAVAILABLE while even the quickest delivery of
    /// the last `fanout_delay_window_ms` waited longer than this in its
    /// connection queue: the node's fan-out is behind for everyone, not
    /// just for a few slow readers (see `admission.rs`).
    pub fanout_delay_target_ms: u64,
    /// The window over which that quickest delivery is taken.
    pub fanout_delay_window_ms: u64,
    /// The `retry_after_ms` hint an overload refusal carries while
    /// refusals are rare; it doubles per half second in which refusals
    /// outnumber admissions two to one (see `admission.rs`).
    pub overload_retry_after_ms: u64,
    /// The longest that hint grows to under sustained overload.
    pub overload_retry_after_max_ms: u64,
    /// Requests one WebSocket connection has in flight at once (a client
    /// may send its next frame before the previous answer); one more is
    /// refused RATE_LIMITED with the overload hint. Reading goes on while
    /// they wait, so a busy sender is refused early instead of piling up
    /// unread in its socket.
    pub max_pipelined_requests: usize,
    /// Requests of any kind (WebSocket, HTTP RPC) in flight on the node at
    /// once; one more is refused UNAVAILABLE with the overload hint. The
    /// node-wide bound over every connection's pipeline.
    pub max_inflight_requests: usize,
    /// Bytes of request frames those requests may hold at once (at least
    /// `max_frame_bytes`); one more frame is refused UNAVAILABLE.
    pub max_inflight_request_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Token lifetime.
    pub token_ttl_ms: u64,
    /// Login challenge lifetime.
    pub challenge_ttl_ms: u64,
    /// Device link code lifetime.
    pub link_code_ttl_ms: u64,
    /// The token key file (secret, 0600). Default: `token.key` next to the
    /// embedded store's file (shared by the nodes of a local cluster), or in
    /// the data directory with ScyllaDB. Every node of a cluster must read
    /// the same keys.
    pub token_key_file: Option<PathBuf>,
    /// Clock difference allowed between nodes: a token whose expiry is
    /// more than `token_ttl_ms + max_clock_skew_ms` ahead is refused, and a
    /// rotated-out key verifies that long after the rotation.
    pub max_clock_skew_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorSection {
    /// A GroupActor with no traffic for this long passivates.
    pub group_idle_ms: u64,
    /// Group ownership lease length; renewed while the actor lives.
    pub lease_ttl_ms: u64,
    /// How long a user with no connection left still shows as online, so a
    /// quick reconnect does not flap its presence (0: offline at once).
    pub presence_grace_ms: u64,
    /// Presence changes are pushed to groups of at most this many member
    /// devices; in larger ones members ask (`GetPresence`). Pushing costs a
    /// frame per member on every change: forming a group of 1,000 pushed
    /// about a million (each join tells everyone). 0: never pushed.
    pub presence_push_max_members: usize,
    /// The most GroupActors this node runs at once; activating one more is
    /// refused (UNAVAILABLE, retry later).
    pub max_group_actors: usize,
    /// The most SessionActors (online users whose session lives here) this
    /// node runs at once; one more is refused (UNAVAILABLE).
    pub max_session_actors: usize,
}

/// The cluster this node belongs to (see cluster.toml). No nodes listed:
/// a single node, no mesh.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Every node of the cluster, this one included (chosen by `node.id`).
    pub nodes: Vec<ClusterNode>,
    /// Where the development CA key lives when no `cluster.tls` is given:
    /// shared by the local nodes, created by the first to start. Default:
    /// `cluster-ca` next to the store file.
    pub ca_dir: Option<PathBuf>,
    /// Production certificates (PEM): the CA to trust, this node's chain
    /// and key. `{node}` in a path is replaced by the node id.
    pub tls: Option<ClusterTls>,
    /// SWIM probe period; failure detection takes a few of them.
    pub probe_ms: u64,
    /// How long a node keeps routing a group request to the group's owner
    /// (following view changes) before answering UNAVAILABLE.
    pub forward_timeout_ms: u64,
    /// Deliveries queued per peer node before new ones are dropped (and
    /// counted); the store stays the truth.
    pub peer_queue: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    pub id: String,
    /// Its client gateway (HTTP/WebSocket).
    pub gateway: SocketAddr,
    /// Its node-to-node QUIC endpoint.
    pub quic: SocketAddr,
    /// Its data directory (default: `node.data`).
    pub data: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            ca_dir: None,
            tls: None,
            probe_ms: 500,
            forward_timeout_ms: 10_000,
            peer_queue: 65_536,
        }
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: "n1".into(),
            data: PathBuf::from("./hush-data"),
            watch_ms: 5_000,
            actor_threads: 0,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            kind: "embedded".into(),
            path: None,
            max_batch: 256,
            max_batch_acks: 32,
            commit_delay_us: hush_store::SqliteConfig::DEFAULT_COMMIT_DELAY.as_micros() as u64,
            ack_delay_us: hush_store::SqliteConfig::DEFAULT_ACK_DELAY.as_micros() as u64,
            checkpoint_pages: hush_store::SqliteConfig::DEFAULT_CHECKPOINT_PAGES,
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: hush_store::ScyllaConfig::DEFAULT_KEYSPACE.into(),
            replication_factor: 1,
            consistency: "quorum".into(),
            request_timeout_ms: 5_000,
            retention_days: 0,
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            allowed_origins: vec![
                "http://127.0.0.1:7300".into(),
                "http://localhost:7300".into(),
            ],
            workers: 0,
            tcp_nodelay: true,
            max_connections_per_ip: 1_000,
            header_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            keep_alive_ms: 5_000,
            disconnect_timeout_ms: 2_000,
            tls: None,
            hsts_max_age_secs: 31_536_000,
            admin_loopback: true,
            admin_token: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1 << 20,
            max_message_bytes: 256 << 10,
            rate_per_sec: 200.0,
            rate_burst: 400.0,
            max_connections_per_user: 16,
            auth_deadline_ms: 10_000,
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            send_buffer_frames: 1024,
            write_timeout_ms: 10_000,
            epoch_window: 5,
            max_key_packages_per_upload: 100,
            max_key_packages_per_device: 200,
            claims_per_claimer_per_min: 30.0,
            claims_per_claimer_burst: 100.0,
            claims_per_target_per_min: 2.0,
            claims_per_target_burst: 10.0,
            claims_tracked_users: 65_536,
            sync_page: 256,
            max_inflight_sends: 1024,
            max_pending_per_group: 64,
            // 1,000 connections 16 frames behind each: about a third of a
            // second of this node's fan-out (loadtest/README.md); fewer than
            // 1,024 slow readers can never reach it.
            max_queued_deliveries: 16_384,
            max_queued_deliveries_per_conn: 16,
            fanout_delay_target_ms: 50,
            fanout_delay_window_ms: 200,
            overload_retry_after_ms: 200,
            overload_retry_after_max_ms: 10_000,
            max_pipelined_requests: 32,
            // Four times the sends' bound (acks, presence, key packages
            // and commits share it); 64 frames of the largest size.
            max_inflight_requests: 4_096,
            max_inflight_request_bytes: 64 << 20,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            token_ttl_ms: 24 * 3600 * 1000,
            challenge_ttl_ms: 60_000,
            link_code_ttl_ms: 10 * 60_000,
            token_key_file: None,
            max_clock_skew_ms: 60_000,
        }
    }
}

impl Default for ActorSection {
    fn default() -> Self {
        Self {
            group_idle_ms: 5 * 60_000,
            lease_ttl_ms: 30_000,
            presence_grace_ms: 5_000,
            // Discord's largest `large_threshold`: above it, no presence
            // pushes for a guild's offline members.
            presence_push_max_members: 250,
            max_group_actors: 20_000,
            max_session_actors: 100_000,
        }
    }
}

/// A configuration error; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad config value `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// The gateway's worker threads: `gateway.workers`, or by default one
    /// per available CPU (actix's own default).
    ///
    /// The actor runtime takes only half (see [`Config::actor_threads`]):
    /// the gateway does most of a node's work (a `send` per delivered frame,
    /// a `recv` per request: 60-70% of one node's CPU against the actors'
    /// 5-15%), and its connections are split over its workers, so a large
    /// group's burst of frames goes out on every core at once. One thread
    /// per CPU in both pools was too many: on 2 CPUs, at 7,000 msg/s
    /// offered, 45-52k deliveries/s at 23-25 ms of CPU per 1k, against ~62k
    /// at 20-21 ms with one thread each. Two gateway threads and one actor
    /// thread deliver as much as one and one at saturation (67k
    /// deliveries/s at 7,500 msg/s, three pairs), a 1,000-member group's
    /// burst in p99 23.7 ms instead of 30.2 and e2e p99 at 3,000 msg/s in
    /// 13.4 ms instead of 21.6 (medians of 3; README, Performance).
    pub fn gateway_workers(&self) -> usize {
        match self.gateway.workers {
            0 => thread_split(available_cpus()).0,
            n => n,
        }
    }

    /// The actor runtime's worker threads: `node.actor_threads`, or by
    /// default half the available CPUs, rounded down, at least one (see
    /// [`Config::gateway_workers`]).
    pub fn actor_threads(&self) -> usize {
        match self.node.actor_threads {
            0 => thread_split(available_cpus()).1,
            n => n,
        }
    }

    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text over the defaults and validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// In a cluster, adopts this node's entry (`node.id` picks it): its
    /// gateway address and data directory. Call before applying flags, so
    /// flags still override. A no-op without `cluster.nodes`.
    pub fn select_cluster_node(&mut self) -> Result<(), ConfigError> {
        if self.cluster.nodes.is_empty() {
            return Ok(());
        }
        let Some(entry) = self.cluster.nodes.iter().find(|n| n.id == self.node.id) else {
            return Err(ConfigError::Invalid {
                key: "cluster.nodes",
                message: format!("no entry with id {:?} (set --node)", self.node.id),
            });
        };
        self.gateway.listen = entry.gateway;
        if let Some(d) = &entry.data {
            self.node.data = d.clone();
        }
        Ok(())
    }

    /// This node's cluster entry, if it runs in a cluster.
    pub fn cluster_node(&self) -> Option<&ClusterNode> {
        self.cluster.nodes.iter().find(|n| n.id == self.node.id)
    }

    /// The directory of the development cluster CA.
    pub fn cluster_ca_dir(&self) -> PathBuf {
        self.cluster.ca_dir.clone().unwrap_or_else(|| {
            self.store_path()
                .parent()
                .map(|p| p.join("cluster-ca"))
                .unwrap_or_else(|| PathBuf::from("cluster-ca"))
        })
    }

    /// The token key file (`auth.token_key_file`, see there for the default).
    pub fn token_key_file(&self) -> PathBuf {
        if let Some(p) = &self.auth.token_key_file {
            return p.clone();
        }
        let dir = if self.store.kind == "embedded" {
            self.store_path()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.node.data.clone())
        } else {
            self.node.data.clone()
        };
        dir.join("token.key")
    }

    /// The SQLite file of the embedded store.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.node.data.join("hush.sqlite"))
    }

    /// The ScyllaDB backend's configuration from `[store]`, validated.
    pub fn scylla_config(&self) -> Result<hush_store::ScyllaConfig, ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        let s = &self.store;
        if s.contact_points.is_empty() || s.contact_points.iter().any(|p| p.trim().is_empty()) {
            return Err(invalid(
                "store.contact_points",
                "must list at least one \"host:port\"",
            ));
        }
        hush_store::scylla::validate_keyspace(&s.keyspace)
            .map_err(|m| invalid("store.keyspace", m))?;
        if s.replication_factor == 0 {
            return Err(invalid("store.replication_factor", "must be at least 1"));
        }
        let consistency = s
            .consistency
            .parse()
            .map_err(|m| invalid("store.consistency", m))?;
        if s.request_timeout_ms == 0 {
            return Err(invalid("store.request_timeout_ms", "must be at least 1"));
        }
        let mut c = hush_store::ScyllaConfig::new(s.contact_points.clone());
        c.keyspace = s.keyspace.clone();
        c.replication_factor = s.replication_factor;
        c.consistency = consistency;
        c.request_timeout = Duration::from_millis(s.request_timeout_ms);
        c.retention_days = s.retention_days;
        Ok(c)
    }

    /// Checks ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        let l = &self.limits;
        if self.node.id.is_empty() || self.node.id.len() > 64 {
            return Err(invalid("node.id", "must be 1..=64 characters"));
        }
        match self.store.kind.as_str() {
            "embedded" => {}
            "scylla" => {
                self.scylla_config()?;
            }
            other => {
                return Err(invalid(
                    "store.kind",
                    format!("unknown store kind {other:?} (expected \"embedded\" or \"scylla\")"),
                ))
            }
        }
        for (key, threads) in [
            ("gateway.workers", self.gateway.workers),
            ("node.actor_threads", self.node.actor_threads),
        ] {
            if threads > MAX_THREADS {
                return Err(invalid(key, format!("must be at most {MAX_THREADS}")));
            }
        }
        if self.store.max_batch == 0 {
            return Err(invalid("store.max_batch", "must be at least 1"));
        }
        if self.store.max_batch_acks == 0 || self.store.max_batch_acks > self.store.max_batch {
            return Err(invalid(
                "store.max_batch_acks",
                "must be at least 1 and at most store.max_batch",
            ));
        }
        if self.store.commit_delay_us > MAX_COMMIT_DELAY_US {
            return Err(invalid(
                "store.commit_delay_us",
                format!("must be at most {MAX_COMMIT_DELAY_US} (0 turns it off)"),
            ));
        }
        if self.store.ack_delay_us > MAX_COMMIT_DELAY_US {
            return Err(invalid(
                "store.ack_delay_us",
                format!("must be at most {MAX_COMMIT_DELAY_US} (0 turns it off)"),
            ));
        }
        if !(1..=MAX_CHECKPOINT_PAGES).contains(&self.store.checkpoint_pages) {
            return Err(invalid(
                "store.checkpoint_pages",
                format!("must be at least 1 and at most {MAX_CHECKPOINT_PAGES}"),
            ));
        }
        if l.max_frame_bytes < 1024 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 1024"));
        }
        if l.max_message_bytes == 0 || l.max_message_bytes > l.max_frame_bytes {
            return Err(invalid(
                "limits.max_message_bytes",
                "must be in 1..=limits.max_frame_bytes",
            ));
        }
        // Written so that NaN fails too.
        let rate_ok = l.rate_per_sec.is_finite() && l.rate_per_sec > 0.0;
        if !rate_ok {
            return Err(invalid("limits.rate_per_sec", "must be a number > 0"));
        }
        let burst_ok = l.rate_burst.is_finite() && l.rate_burst >= 1.0;
        if !burst_ok {
            return Err(invalid("limits.rate_burst", "must be a number >= 1"));
        }
        if l.max_connections_per_user == 0 {
            return Err(invalid(
                "limits.max_connections_per_user",
                "must be at least 1",
            ));
        }
        if l.send_buffer_frames == 0 {
            return Err(invalid("limits.send_buffer_frames", "must be at least 1"));
        }
        for (key, v) in [
            ("limits.max_inflight_sends", l.max_inflight_sends),
            ("limits.max_pending_per_group", l.max_pending_per_group),
            ("limits.max_queued_deliveries", l.max_queued_deliveries),
            (
                "limits.max_queued_deliveries_per_conn",
                l.max_queued_deliveries_per_conn,
            ),
            ("limits.max_pipelined_requests", l.max_pipelined_requests),
            ("limits.max_inflight_requests", l.max_inflight_requests),
            (
                "limits.fanout_delay_target_ms",
                usize::try_from(l.fanout_delay_target_ms).unwrap_or(usize::MAX),
            ),
            (
                "limits.fanout_delay_window_ms",
                usize::try_from(l.fanout_delay_window_ms).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_inflight_request_bytes < l.max_frame_bytes {
            return Err(invalid(
                "limits.max_inflight_request_bytes",
                "must be at least limits.max_frame_bytes",
            ));
        }
        if l.overload_retry_after_max_ms < l.overload_retry_after_ms {
            return Err(invalid(
                "limits.overload_retry_after_max_ms",
                "must be at least limits.overload_retry_after_ms",
            ));
        }
        if l.heartbeat_interval_ms == 0 || l.heartbeat_timeout_ms <= l.heartbeat_interval_ms {
            return Err(invalid(
                "limits.heartbeat_timeout_ms",
                "must be greater than limits.heartbeat_interval_ms (> 0)",
            ));
        }
        if l.max_key_packages_per_upload == 0 {
            return Err(invalid(
                "limits.max_key_packages_per_upload",
                "must be at least 1",
            ));
        }
        if l.max_key_packages_per_device == 0 {
            return Err(invalid(
                "limits.max_key_packages_per_device",
                "must be at least 1",
            ));
        }
        if l.claims_tracked_users == 0 {
            return Err(invalid("limits.claims_tracked_users", "must be at least 1"));
        }
        for (key, rate, burst) in [
            (
                (
                    "limits.claims_per_claimer_per_min",
                    "limits.claims_per_claimer_burst",
                ),
                l.claims_per_claimer_per_min,
                l.claims_per_claimer_burst,
            ),
            (
                (
                    "limits.claims_per_target_per_min",
                    "limits.claims_per_target_burst",
                ),
                l.claims_per_target_per_min,
                l.claims_per_target_burst,
            ),
        ] {
            // Written so that NaN fails too.
            if !(rate.is_finite() && rate > 0.0) {
                return Err(invalid(key.0, "must be a number > 0"));
            }
            if !(burst.is_finite() && burst >= 1.0) {
                return Err(invalid(key.1, "must be a number >= 1"));
            }
        }
        if l.sync_page == 0 {
            return Err(invalid("limits.sync_page", "must be at least 1"));
        }
        if self.auth.token_ttl_ms == 0 {
            return Err(invalid("auth.token_ttl_ms", "must be > 0"));
        }
        if self
            .auth
            .token_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("auth.token_key_file", "must be a file path"));
        }
        if self.auth.max_clock_skew_ms > self.auth.token_ttl_ms {
            return Err(invalid(
                "auth.max_clock_skew_ms",
                "must not exceed auth.token_ttl_ms",
            ));
        }
        let c = &self.cluster;
        if !c.nodes.is_empty() {
            let ids: std::collections::BTreeSet<&str> =
                c.nodes.iter().map(|n| n.id.as_str()).collect();
            if ids.len() != c.nodes.len() {
                return Err(invalid("cluster.nodes", "node ids must be unique"));
            }
            if ids.iter().any(|id| id.is_empty() || id.len() > 64) {
                return Err(invalid(
                    "cluster.nodes",
                    "node ids must be 1..=64 characters",
                ));
            }
            let quic: std::collections::BTreeSet<SocketAddr> =
                c.nodes.iter().map(|n| n.quic).collect();
            if quic.len() != c.nodes.len() {
                return Err(invalid("cluster.nodes", "quic addresses must be unique"));
            }
            if c.probe_ms < 50 {
                return Err(invalid("cluster.probe_ms", "must be at least 50"));
            }
            if c.forward_timeout_ms < 100 {
                return Err(invalid(
                    "cluster.forward_timeout_ms",
                    "must be at least 100",
                ));
            }
            if c.peer_queue == 0 {
                return Err(invalid("cluster.peer_queue", "must be at least 1"));
            }
        }
        if self.actors.lease_ttl_ms < 1000 {
            return Err(invalid("actors.lease_ttl_ms", "must be at least 1000"));
        }
        let g = &self.gateway;
        if g.max_connections_per_ip == 0 {
            return Err(invalid(
                "gateway.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        for (key, v) in [
            ("gateway.header_timeout_ms", g.header_timeout_ms),
            ("gateway.body_timeout_ms", g.body_timeout_ms),
            ("gateway.keep_alive_ms", g.keep_alive_ms),
            ("gateway.disconnect_timeout_ms", g.disconnect_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if g.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "gateway.admin_token",
                "must be at least 16 characters",
            ));
        }
        if let Some(t) = &g.tls {
            if t.cert.as_os_str().is_empty() {
                return Err(invalid("gateway.tls.cert", "must be a file path"));
            }
            if t.key.as_os_str().is_empty() {
                return Err(invalid("gateway.tls.key", "must be a file path"));
            }
        }
        let r = &self.rate_limits;
        // Written so that NaN fails too.
        for (key, v) in [
            ("rate_limits.ip_per_sec", r.ip_per_sec),
            ("rate_limits.account_per_sec", r.account_per_sec),
        ] {
            let ok = v.is_finite() && v > 0.0;
            if !ok {
                return Err(invalid(key, "must be a number > 0"));
            }
        }
        for (key, v) in [
            ("rate_limits.ip_burst", r.ip_burst),
            ("rate_limits.account_burst", r.account_burst),
        ] {
            let ok = v.is_finite() && v >= 1.0;
            if !ok {
                return Err(invalid(key, "must be a number >= 1"));
            }
        }
        if r.tracked_keys == 0 {
            return Err(invalid("rate_limits.tracked_keys", "must be at least 1"));
        }
        if r.sweep_interval_ms < 100 {
            return Err(invalid(
                "rate_limits.sweep_interval_ms",
                "must be at least 100",
            ));
        }
        if self.actors.max_group_actors == 0 {
            return Err(invalid("actors.max_group_actors", "must be at least 1"));
        }
        if self.actors.max_session_actors == 0 {
            return Err(invalid("actors.max_session_actors", "must be at least 1"));
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.limits.heartbeat_interval_ms)
    }
}

/// The CPUs this process may use (its affinity and cgroup quota), 1 if
/// unknown.
fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default threads on `cpus` CPUs: (gateway workers, actor threads),
/// one per CPU for the gateway, half as many for the actors, at least one
/// each (`cpus` is at least 1).
fn thread_split(cpus: usize) -> (usize, usize) {
    (cpus, (cpus / 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_gateway_takes_every_cpu_and_the_actors_half_unless_set() {
        assert_eq!(thread_split(1), (1, 1));
        assert_eq!(thread_split(2), (2, 1));
        assert_eq!(thread_split(3), (3, 1));
        assert_eq!(thread_split(8), (8, 4));
        let split = thread_split(available_cpus());
        let c = Config::default();
        assert_eq!((c.gateway_workers(), c.actor_threads()), split);
        let c = Config::from_toml("[node]\nactor_threads = 3\n[gateway]\nworkers = 5\n").unwrap();
        assert_eq!((c.gateway_workers(), c.actor_threads()), (5, 3));
        for key in ["[node]\nactor_threads", "[gateway]\nworkers"] {
            let err = Config::from_toml(&format!("{key} = 1025\n")).unwrap_err();
            let name = key.replace("[", "").replace("]\n", ".");
            assert!(err.to_string().contains(&name), "{err}");
        }
    }

    #[test]
    fn file_overrides_defaults() {
        let c = Config::from_toml(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_frame_bytes = 4096\nmax_message_bytes = 2048\n",
        )
        .unwrap();
        assert_eq!(c.gateway.listen.port(), 0);
        assert_eq!(c.limits.max_frame_bytes, 4096);
        assert_eq!(c.limits.rate_per_sec, Limits::default().rate_per_sec);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_frame_byte = 1\n").unwrap_err();
        assert!(err.to_string().contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::from_toml("[limits]\nmax_message_bytes = 0\n").unwrap_err();
        assert!(
            err.to_string().contains("limits.max_message_bytes"),
            "{err}"
        );
        let err = Config::from_toml("[gateway]\nlisten = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::from_toml("[store]\nkind = \"mongo\"\n").unwrap_err();
        assert!(err.to_string().contains("store.kind"), "{err}");
    }

    #[test]
    fn key_package_limits_are_validated_by_name() {
        let c = Config::from_toml(
            "[limits]\nmax_key_packages_per_device = 50\nclaims_per_claimer_per_min = 6.0\n\
             claims_per_claimer_burst = 20.0\nclaims_per_target_per_min = 1.0\n\
             claims_per_target_burst = 3.0\nclaims_tracked_users = 7\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_key_packages_per_device, 50);
        assert_eq!(c.limits.claims_per_claimer_per_min, 6.0);
        assert_eq!(c.limits.claims_per_claimer_burst, 20.0);
        assert_eq!(c.limits.claims_per_target_per_min, 1.0);
        assert_eq!(c.limits.claims_per_target_burst, 3.0);
        assert_eq!(c.limits.claims_tracked_users, 7);
        for (toml, key) in [
            (
                "max_key_packages_per_device = 0",
                "limits.max_key_packages_per_device",
            ),
            (
                "max_key_packages_per_upload = 0",
                "limits.max_key_packages_per_upload",
            ),
            (
                "claims_per_claimer_per_min = 0.0",
                "limits.claims_per_claimer_per_min",
            ),
            (
                "claims_per_claimer_per_min = nan",
                "limits.claims_per_claimer_per_min",
            ),
            (
                "claims_per_claimer_burst = 0.5",
                "limits.claims_per_claimer_burst",
            ),
            (
                "claims_per_target_per_min = -1.0",
                "limits.claims_per_target_per_min",
            ),
            (
                "claims_per_target_per_min = inf",
                "limits.claims_per_target_per_min",
            ),
            (
                "claims_per_target_burst = 0.0",
                "limits.claims_per_target_burst",
            ),
            ("claims_tracked_users = 0", "limits.claims_tracked_users"),
        ] {
            let err = Config::from_toml(&format!("[limits]\n{toml}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn abuse_limits_are_validated_by_key() {
        for (toml, key) in [
            (
                "[gateway]\nmax_connections_per_ip = 0",
                "gateway.max_connections_per_ip",
            ),
            ("[gateway]\nbody_timeout_ms = 0", "gateway.body_timeout_ms"),
            ("[gateway]\nadmin_token = \"short\"", "gateway.admin_token"),
            (
                "[gateway.tls]\ncert = \"\"\nkey = \"k.pem\"",
                "gateway.tls.cert",
            ),
            (
                "[gateway.tls]\ncert = \"c.pem\"\nkey = \"\"",
                "gateway.tls.key",
            ),
            (
                "[gateway]\nheader_timeout_ms = 0",
                "gateway.header_timeout_ms",
            ),
            ("[rate_limits]\nip_per_sec = 0.0", "rate_limits.ip_per_sec"),
            ("[rate_limits]\nip_per_sec = nan", "rate_limits.ip_per_sec"),
            (
                "[rate_limits]\naccount_burst = 0.5",
                "rate_limits.account_burst",
            ),
            (
                "[rate_limits]\ntracked_keys = 0",
                "rate_limits.tracked_keys",
            ),
            (
                "[rate_limits]\nsweep_interval_ms = 5",
                "rate_limits.sweep_interval_ms",
            ),
            ("[actors]\nmax_group_actors = 0", "actors.max_group_actors"),
            (
                "[auth]\nmax_clock_skew_ms = 999999999999",
                "auth.max_clock_skew_ms",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn scylla_store_section_is_typed_and_validated() {
        let c = Config::from_toml(
            "[store]\nkind = \"scylla\"\ncontact_points = [\"10.0.0.1:9042\", \"10.0.0.2:9042\"]\n\
             keyspace = \"hush_prod\"\nreplication_factor = 3\nconsistency = \"local_quorum\"\n\
             request_timeout_ms = 1500\nretention_days = 30\n",
        )
        .unwrap();
        let s = c.scylla_config().unwrap();
        assert_eq!(s.contact_points, ["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(s.keyspace, "hush_prod");
        assert_eq!(s.replication_factor, 3);
        assert_eq!(s.consistency, hush_store::ConsistencyLevel::LocalQuorum);
        assert_eq!(s.request_timeout, Duration::from_millis(1500));
        assert_eq!(s.retention_days, 30);
        for (toml, key) in [
            ("consistency = \"all\"", "store.consistency"),
            ("keyspace = \"a;b\"", "store.keyspace"),
            ("contact_points = []", "store.contact_points"),
            ("replication_factor = 0", "store.replication_factor"),
            ("request_timeout_ms = 0", "store.request_timeout_ms"),
        ] {
            let err =
                Config::from_toml(&format!("[store]\nkind = \"scylla\"\n{toml}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn the_repository_cluster_toml_is_valid_and_selects_each_node() {
        let text = include_str!("../../../cluster.toml");
        for (n, port) in [("n1", 7301), ("n2", 7302), ("n3", 7303)] {
            let mut c = Config::from_toml(text).unwrap();
            c.node.id = n.into();
            c.select_cluster_node().unwrap();
            c.validate().unwrap();
            assert_eq!(c.gateway.listen.port(), port);
            assert_eq!(c.node.data, PathBuf::from(format!("./hush-cluster/{n}")));
            assert_eq!(c.cluster_node().map(|e| e.quic.port()), Some(port + 100));
            assert_eq!(
                c.cluster_ca_dir(),
                PathBuf::from("./hush-cluster/cluster-ca")
            );
        }
    }

    #[test]
    fn cluster_mistakes_are_named() {
        let node = |id: &str, quic: u16| {
            format!("[[cluster.nodes]]\nid = \"{id}\"\ngateway = \"127.0.0.1:0\"\nquic = \"127.0.0.1:{quic}\"\n")
        };
        let mut c = Config::from_toml(&node("n1", 7401)).unwrap();
        c.node.id = "n7".into();
        let err = c.select_cluster_node().unwrap_err().to_string();
        assert!(err.contains("cluster.nodes") && err.contains("n7"), "{err}");
        let err = Config::from_toml(&(node("n1", 7401) + &node("n1", 7402)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unique"), "{err}");
        let err = Config::from_toml(&(node("n1", 7401) + &node("n2", 7401)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("quic"), "{err}");
        let err = Config::from_toml("[[cluster.nodes]]\nid = \"n1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway"), "{err}");
    }
}
