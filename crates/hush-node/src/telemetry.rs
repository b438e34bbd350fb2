//! Every metric the node exports, in one place: [`FAMILIES`] lists each
//! family with its type, unit and help text. [`install`] describes them all
//! (so `/metrics` has `# HELP` and `# TYPE` for every family), registers
//! every series whose labels are known up front at zero (so `rate()` and
//! alerts work before the first error), sets `hush_build_info` and the
//! process collector (`process_*`: RSS, CPU seconds, open and max fds,
//! start time, threads), which [`collect_process`] refreshes at each scrape.
//!
//! A new metric is added here first; `tests/metrics.rs` fails on a family
//! the page shows that this list does not name, and
//! `scripts/check-compose.sh` on a dashboard query naming one it does not.
//!
//! Send-to-deliver latency ([`SEND_TO_DELIVER`]) is measured on this node's
//! monotonic clock, from the moment the group owner has the entry durable
//! (fan-out starts right after the store's append returned) to its frames
//! queued on the connections of the owner's node: one sample per entry,
//! when the last of them was queued (the fan-out queues them in one batch,
//! `Connections::write_many`); an entry forwarded to another node is not
//! timed there (two nodes share no clock).

use std::sync::OnceLock;

use metrics::Unit;

/// The node's version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the node was built from ("unknown" outside git).
pub const GIT_SHA: &str = env!("HUSH_GIT_SHA");

/// The send-to-deliver histogram.
pub const SEND_TO_DELIVER: &str = "hush_send_to_deliver_seconds";

/// What kind of family a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: name, kind, unit and help text.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        unit: Unit::Count,
        help,
    }
}

const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        unit,
        help,
    }
}

const fn histogram(name: &'static str, unit: Unit, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Histogram,
        unit,
        help,
    }
}

/// Every family the node exports (the `process_*` ones are described by
/// the process collector with the same texts).
pub const FAMILIES: &[Family] = &[
    // --- build and process ---
    gauge("hush_build_info", Unit::Count, "Always 1; labels: version, git_sha of this build."),
    counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
    gauge("process_open_fds", Unit::Count, "Number of open file descriptors."),
    gauge("process_max_fds", Unit::Count, "Maximum number of open file descriptors."),
    gauge("process_virtual_memory_bytes", Unit::Bytes, "Virtual memory size in bytes."),
    gauge("process_virtual_memory_max_bytes", Unit::Bytes, "Maximum amount of virtual memory available in bytes."),
    gauge("process_resident_memory_bytes", Unit::Bytes, "Resident memory size in bytes."),
    gauge("process_start_time_seconds", Unit::Seconds, "Start time of the process since unix epoch in seconds."),
    gauge("process_threads", Unit::Count, "Number of OS threads in the process."),
    // --- HTTP gateway ---
    counter("hush_http_requests_total", "HTTP requests answered, by route pattern, method and status code (a WebSocket upgrade counts once, as 101)."),
    histogram("hush_http_request_duration_seconds", Unit::Seconds, "Time to answer an HTTP request (the response head; a stream's body is not included), by route pattern and method."),
    counter("hush_errors_total", "Error answers sent to clients, by wire error code."),
    counter("hush_auth_failures_total", "Failed authentications (token checks, logins, device links), by reason."),
    counter("hush_admin_refused_total", "Requests for an admin page (/metrics, /cluster) refused: not loopback and no admin token."),
    counter("hush_connections_refused_total", "Connections refused at the edge, by why (per_ip: over gateway.max_connections_per_ip)."),
    counter("hush_body_timeouts_total", "Request bodies not received within gateway.body_timeout_ms."),
    counter("hush_rate_limited_total", "Account-endpoint requests refused by a rate limit, by what (this address, this account)."),
    counter("hush_rate_table_full_total", "Rate-limit checks refused because the table of tracked keys was full."),
    counter("hush_rpc_requests_total", "Requests through POST /v1/rpc."),
    // --- client streams (WebSocket, SSE) ---
    gauge("hush_connections", Unit::Count, "Open WebSocket connections."),
    gauge("hush_sse_streams", Unit::Count, "Open SSE streams."),
    gauge("hush_connections_attached", Unit::Count, "Client connections (WebSocket or SSE) attached to a session."),
    counter("hush_stream_closes_total", "Client streams ended, by transport (ws, sse) and reason (the WebSocket close code's name; gone: no close frame)."),
    counter("hush_frames_in_total", "WebSocket frames received from clients."),
    counter("hush_frames_out_total", "Frames written to client streams."),
    counter("hush_frames_direct_total", "Group entries the fan-out wrote to a WebSocket's queue itself, without waking the connection's task (part of hush_frames_out_total; the rest went through the connection's queue)."),
    counter("hush_slow_consumers_cut_total", "Client streams cut off for reading too slowly."),
    counter("hush_attach_deferred_total", "Stream attaches deferred while the session's node changed."),
    counter("hush_gap_fills_total", "Live deliveries preceded by a gap read from the store."),
    counter("hush_resyncs_total", "Stream resyncs after an attach or a session move, by whether they read the store or a later Sync's read already covered them (covered=true|false)."),
    histogram(SEND_TO_DELIVER, Unit::Seconds, "From the owner's durable append of an entry to its frames queued on the connections of the owner's node (node clock; one sample per fan-out, when its last frame was queued)."),
    // --- groups, sessions, messages ---
    counter("hush_messages_in_total", "Timeline entries accepted, by kind (application, commit, proposal)."),
    counter("hush_ephemeral_messages_total", "Ephemeral messages (typing) relayed."),
    counter("hush_deliveries_total", "Device deliveries handed to sessions (one per member device per entry)."),
    counter("hush_presence_changes_total", "Users going online or offline, by online."),
    counter(
        "hush_presence_orphans_total",
        "Users announced offline by their witness because their node died with them.",
    ),
    gauge(
        "hush_sends_inflight",
        Unit::Count,
        "Group sends admitted and not yet answered on this node (limits.max_inflight_sends bounds it).",
    ),
    counter(
        "hush_sends_refused_total",
        "Sends refused early by a bound, by bound (group, node, fanout, pipelined).",
    ),
    gauge(
        "hush_requests_inflight",
        Unit::Count,
        "Client requests of any kind being served on this node (limits.max_inflight_requests bounds it).",
    ),
    counter(
        "hush_requests_refused_total",
        "Requests refused because the node had limits.max_inflight_requests (or _bytes) in flight.",
    ),
    counter("hush_key_package_claims_limited_total", "KeyPackage claims refused by a limit, by (claimer, target)."),
    counter("hush_unknown_group_requests_total", "Requests for a group id the store does not know (answered without an actor)."),
    counter("hush_actor_limit_refusals_total", "Actor activations refused at the per-node cap, by actor."),
    counter("hush_group_activations_total", "GroupActors started."),
    gauge("hush_group_actors", Unit::Count, "Live GroupActors."),
    gauge("hush_session_actors", Unit::Count, "Live SessionActors."),
    // --- store ---
    counter("hush_store_ops_total", "Embedded-store write operations, by op."),
    counter("hush_store_commits_total", "Embedded-store batches committed, by sync (full: fsynced before the reply; deferred: acks alone, made durable by the next full commit or checkpoint)."),
    counter("hush_store_commit_delays_total", "Times an embedded-store write waited group commit's delay for others to share its commit (store.commit_delay_us)."),
    counter("hush_store_ack_waits_total", "Times acks alone waited for more acks to share their embedded-store transaction (store.ack_delay_us)."),
    histogram("hush_store_batch_size", Unit::Count, "Write operations per embedded-store transaction."),
    histogram("hush_store_batch_seconds", Unit::Seconds, "Time to run and commit one embedded-store batch."),
    histogram("hush_store_write_wait_seconds", Unit::Seconds, "Time an embedded-store write waited for its batch, by lane (urgent: everything but acks; ack: cursor and inbox acks, written after the rest)."),
    // --- cluster ---
    gauge("hush_cluster_members", Unit::Count, "Nodes in this node's cluster view."),
    counter("hush_cluster_view_changes_total", "Changes of this node's cluster view."),
    counter("hush_cluster_packets_in_total", "Cluster membership packets received."),
    counter("hush_cluster_packets_out_total", "Cluster membership packets sent."),
    counter("hush_cluster_bad_packets_total", "Cluster membership packets that did not decode."),
    counter("hush_cluster_messages_in_total", "Node-to-node requests received, by kind."),
    counter("hush_cluster_messages_out_total", "Node-to-node requests sent, by kind."),
    counter("hush_cluster_bad_messages_total", "Node-to-node requests that did not decode or were not expected."),
    counter("hush_cluster_impostor_requests_total", "Node-to-node requests refused: the sender's certificate names another node."),
    counter("hush_cluster_stale_view_rejections_total", "Forwarded calls refused because the sender's view was stale."),
    counter("hush_cluster_stale_view_pushes_total", "Deliveries refused because the sender's view was stale."),
    counter("hush_cluster_rerouted_total", "Forwarded calls routed again, by why (stale_view, unreachable)."),
    counter("hush_cluster_rehomes_total", "Actors stopped here because their key moved to another node, by actor."),
    counter("hush_cluster_deliveries_dropped_total", "Deliveries to another node dropped, by why."),
    histogram("hush_cluster_batch_deliveries", Unit::Count, "Deliveries per node-to-node delivery batch."),
];

/// Auth failure reasons (`hush_auth_failures_total{reason}`).
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "missing_token",
    "malformed_token",
    "bad_token_signature",
    "token_expired",
    "token_expiry_too_far",
    "token_revoked",
    "no_auth_frame",
    "bad_challenge",
    "unknown_device",
    "bad_login_signature",
    "challenge_replayed",
    "bad_link_signature",
    "bad_link_code",
];

/// WebSocket close reasons (`hush_stream_closes_total{transport="ws"}`),
/// see [`ws_close_reason`].
pub const WS_CLOSE_REASONS: &[&str] = &[
    "normal",
    "away",
    "protocol",
    "policy",
    "too_large",
    "auth_deadline",
    "slow_consumer",
    "heartbeat",
    "going_away",
    "gone",
    "other",
];

/// SSE stream end reasons (`hush_stream_closes_total{transport="sse"}`).
pub const SSE_CLOSE_REASONS: &[&str] = &["closed", "slow_consumer", "id_too_long", "going_away"];

/// The label of a WebSocket close by its code (None: the stream ended
/// without a close frame of ours, e.g. the peer vanished).
pub fn ws_close_reason(code: Option<u16>) -> &'static str {
    match code {
        None => "gone",
        Some(1000) => "normal",
        Some(1001) => "away",
        Some(1002) => "protocol",
        Some(1008) => "policy",
        Some(1009) => "too_large",
        Some(4000) => "auth_deadline",
        Some(4001) => "slow_consumer",
        Some(4002) => "heartbeat",
        Some(4004) => "going_away",
        Some(_) => "other",
    }
}

/// Counts a client stream's end.
pub fn stream_closed(transport: &'static str, reason: &'static str) {
    metrics::counter!("hush_stream_closes_total", "transport" => transport, "reason" => reason)
        .increment(1);
}

/// Counts a WebSocket's end by its close code.
pub fn ws_closed(code: Option<u16>) {
    stream_closed("ws", ws_close_reason(code));
}

/// Counts a failed authentication (`reason` is one of
/// [`AUTH_FAILURE_REASONS`]).
pub fn auth_failed(reason: &'static str) {
    metrics::counter!("hush_auth_failures_total", "reason" => reason).increment(1);
}

/// The reason label of a token that did not verify.
pub fn token_failure_reason(e: &hush_ds::TokenError) -> &'static str {
    match e {
        hush_ds::TokenError::Malformed => "malformed_token",
        hush_ds::TokenError::BadSignature => "bad_token_signature",
        hush_ds::TokenError::Expired => "token_expired",
        hush_ds::TokenError::ExpiryTooFar => "token_expiry_too_far",
    }
}

/// Records one send-to-deliver latency: `durable_at` is when the owner had
/// the entry durable.
pub fn delivered_since(durable_at: std::time::Instant) {
    let seconds = durable_at.elapsed().as_secs_f64();
    match HOT.get() {
        Some(h) => h.send_to_deliver.record(seconds),
        None => metrics::histogram!(SEND_TO_DELIVER).record(seconds),
    }
}

/// One frame written to a client stream (`hush_frames_out_total`).
pub fn frame_out() {
    match HOT.get() {
        Some(h) => h.frames_out.increment(1),
        None => metrics::counter!("hush_frames_out_total").increment(1),
    }
}

/// Group entries a fan-out wrote to WebSockets directly
/// (`hush_frames_direct_total`), counted once per fan-out.
pub fn frames_direct(n: u64) {
    match HOT.get() {
        Some(h) => h.frames_direct.increment(n),
        None => metrics::counter!("hush_frames_direct_total").increment(n),
    }
}

/// One WebSocket frame read from a client (`hush_frames_in_total`).
pub fn frame_in() {
    match HOT.get() {
        Some(h) => h.frames_in.increment(1),
        None => metrics::counter!("hush_frames_in_total").increment(1),
    }
}

/// The sends in flight on the node (`hush_sends_inflight`), set at each
/// admission and each release.
pub fn sends_inflight(n: usize) {
    match HOT.get() {
        Some(h) => h.sends_inflight.set(n as f64),
        None => metrics::gauge!("hush_sends_inflight").set(n as f64),
    }
}

/// The requests in flight on the node (`hush_requests_inflight`), set at
/// each admission and each release.
pub fn requests_inflight(n: usize) {
    match HOT.get() {
        Some(h) => h.requests_inflight.set(n as f64),
        None => metrics::gauge!("hush_requests_inflight").set(n as f64),
    }
}

/// Handles of the series recorded once per frame or per request, taken
/// once the recorder is in: no key lookup (hash, registry lock) each time
/// (four per send were ~1% of the node's CPU at 40,000 msg/s offered).
struct Hot {
    send_to_deliver: metrics::Histogram,
    frames_out: metrics::Counter,
    frames_direct: metrics::Counter,
    frames_in: metrics::Counter,
    sends_inflight: metrics::Gauge,
    requests_inflight: metrics::Gauge,
}

static HOT: OnceLock<Hot> = OnceLock::new();

fn collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Refreshes the `process_*` gauges (called at each scrape).
pub fn collect_process() {
    collector().collect();
}

/// Describes every family, registers every known series at zero, sets
/// `hush_build_info` and reads the process metrics once. Call once the
/// recorder is installed; calling again changes nothing.
pub fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for f in FAMILIES.iter().filter(|f| !f.name.starts_with("process_")) {
            match f.kind {
                Kind::Counter => metrics::describe_counter!(f.name, f.unit, f.help),
                Kind::Gauge => metrics::describe_gauge!(f.name, f.unit, f.help),
                Kind::Histogram => metrics::describe_histogram!(f.name, f.unit, f.help),
            }
        }
        collector().describe();
        register_at_zero();
        let _ = HOT.set(Hot {
            send_to_deliver: metrics::histogram!(SEND_TO_DELIVER),
            frames_out: metrics::counter!("hush_frames_out_total"),
            frames_direct: metrics::counter!("hush_frames_direct_total"),
            frames_in: metrics::counter!("hush_frames_in_total"),
            sends_inflight: metrics::gauge!("hush_sends_inflight"),
            requests_inflight: metrics::gauge!("hush_requests_inflight"),
        });
        metrics::gauge!("hush_build_info", "version" => VERSION, "git_sha" => GIT_SHA).set(1.0);
        collect_process();
    });
}

/// Every series whose labels are known up front, at zero.
fn register_at_zero() {
    // Families with labels (registered below, or as they come).
    const LABELED: &[&str] = &[
        "hush_build_info",
        "hush_http_requests_total",
        "hush_http_request_duration_seconds",
        "hush_errors_total",
        "hush_auth_failures_total",
        "hush_connections_refused_total",
        "hush_rate_limited_total",
        "hush_stream_closes_total",
        "hush_messages_in_total",
        "hush_presence_changes_total",
        "hush_sends_refused_total",
        "hush_key_package_claims_limited_total",
        "hush_actor_limit_refusals_total",
        "hush_store_ops_total",
        "hush_store_commits_total",
        "hush_cluster_messages_in_total",
        "hush_cluster_messages_out_total",
        "hush_cluster_rerouted_total",
        "hush_cluster_rehomes_total",
        "hush_cluster_deliveries_dropped_total",
        "hush_resyncs_total",
    ];
    // Every family without labels.
    for f in FAMILIES
        .iter()
        .filter(|f| !f.name.starts_with("process_") && !LABELED.contains(&f.name))
    {
        match f.kind {
            Kind::Counter => metrics::counter!(f.name).increment(0),
            Kind::Gauge => metrics::gauge!(f.name).increment(0.0),
            Kind::Histogram => {
                let _ = metrics::histogram!(f.name);
            }
        }
    }
    // Every wire error code.
    for code in (0..64).filter_map(|i| hush_proto::ErrorCode::try_from(i).ok()) {
        if code != hush_proto::ErrorCode::Unspecified {
            metrics::counter!("hush_errors_total", "code" => code.as_str_name()).increment(0);
        }
    }
    for reason in AUTH_FAILURE_REASONS {
        metrics::counter!("hush_auth_failures_total", "reason" => *reason).increment(0);
    }
    for reason in WS_CLOSE_REASONS {
        metrics::counter!("hush_stream_closes_total", "transport" => "ws", "reason" => *reason)
            .increment(0);
    }
    for reason in SSE_CLOSE_REASONS {
        metrics::counter!("hush_stream_closes_total", "transport" => "sse", "reason" => *reason)
            .increment(0);
    }
    let closed_sets: &[(&'static str, &'static str, &[&'static str])] = &[
        ("hush_connections_refused_total", "why", &["per_ip"]),
        (
            "hush_rate_limited_total",
            "what",
            &["this address", "this account"],
        ),
        (
            "hush_messages_in_total",
            "kind",
            &["application", "commit", "proposal"],
        ),
        ("hush_presence_changes_total", "online", &["true", "false"]),
        ("hush_store_commits_total", "sync", &["full", "deferred"]),
        (
            "hush_sends_refused_total",
            "bound",
            &["group", "node", "fanout", "pipelined"],
        ),
        (
            "hush_key_package_claims_limited_total",
            "by",
            &["claimer", "target"],
        ),
        (
            "hush_cluster_rerouted_total",
            "why",
            &["stale_view", "unreachable"],
        ),
        ("hush_cluster_rehomes_total", "actor", &["group", "session"]),
        ("hush_resyncs_total", "covered", &["true", "false"]),
        (
            "hush_cluster_deliveries_dropped_total",
            "why",
            &["not_a_member", "queue_full", "unreachable"],
        ),
    ];
    for (name, label, values) in closed_sets {
        for v in *values {
            metrics::counter!(*name, *label => *v).increment(0);
        }
    }
}
