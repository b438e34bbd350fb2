//! Scenario files (`loadtest/scenarios/*.toml`): typed, validated, with
//! defaults in code. Unknown keys are errors that name the key. Command-line
//! `--set a.b=value` overrides are applied to the TOML tree before it is
//! typed, so they are checked exactly like the file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::FaultKind;

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// G groups of k members, one sender per group, total rate R.
    Fanout,
    /// Ramp to N idle authenticated connections and hold them.
    Connect,
    /// Fan-out phases at increasing rates; the highest rate whose p99 stays
    /// under `sustain_p99_ms` wins.
    Sustain,
    /// The fanout workload against Hush and against Redis pub/sub, in one run.
    Baseline,
    /// The fanout workload (one phase of `chaos.duration_s` at the first
    /// rate) over a cluster in network namespaces, under a schedule of
    /// faults; the checker judges the recorded history and the store.
    Chaos,
    /// Fan-out phases at rates past one node's peak: refusals by code,
    /// accepted messages' latency and the node's RSS over time.
    Overload,
}

/// How message payloads are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlsMode {
    /// Every message encrypted by the sender and decrypted by every receiver
    /// (openmls in the generator).
    Live,
    /// Ciphertexts sealed once by the real MLS group, replayed with fresh
    /// client message ids; the timestamp rides in the PrivateMessage's
    /// authenticated data (see the README). Receivers do not decrypt.
    Presealed,
}

/// Where the system under test comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spawn {
    /// Start one `hush-node` on a fresh data directory, port 0.
    Node,
    /// Start the nodes of `cluster_config` (scripts/local-cluster.sh layout).
    Cluster,
    /// Use `--server` URLs (and `--node-pid` for /proc sampling).
    None,
}

/// A scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Used in output directory names and the report title.
    pub name: String,
    /// One line for the report.
    #[serde(default)]
    pub description: String,
    pub kind: Kind,
    #[serde(default = "default_mls")]
    pub mls: MlsMode,
    /// Worker processes; 0 runs the single worker inside this process.
    #[serde(default)]
    pub workers: usize,
    /// Client sockets bind to 127.0.0.1 .. 127.0.0.N before connecting
    /// (round-robin), to get past ~28k ports per address pair.
    #[serde(default = "one")]
    pub source_addrs: u8,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub fanout: Fanout,
    #[serde(default)]
    pub connect: Connect,
    #[serde(default)]
    pub chaos: Chaos,
}

/// The system under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default = "default_spawn")]
    pub spawn: Spawn,
    /// Extra hush-node config (TOML text) for spawned nodes; `limits` here
    /// must allow the per-connection send rate of the scenario. For a
    /// cluster it is merged over the cluster config.
    #[serde(default)]
    pub node_config: String,
    /// With `spawn = "cluster"`: the cluster config (relative to the
    /// workspace root) and the node ids to start.
    #[serde(default = "default_cluster_config")]
    pub cluster_config: String,
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// With `spawn = "cluster"`: give the nodes free loopback ports instead
    /// of the config's (`node_config` is merged over the config too).
    #[serde(default)]
    pub free_ports: bool,
    /// With `spawn = "cluster"`: kill -9 this node id this many seconds into
    /// the first measured phase (the failover scenario). Empty: no kill.
    #[serde(default)]
    pub kill_node: String,
    #[serde(default)]
    pub kill_after_s: f64,
    /// The signal for `kill_node`: "KILL" (crash, default) or "TERM"
    /// (graceful: the node closes its clients with 4004 "going away").
    #[serde(default = "default_signal")]
    pub kill_signal: String,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            spawn: default_spawn(),
            node_config: String::new(),
            cluster_config: default_cluster_config(),
            cluster_nodes: Vec::new(),
            free_ports: false,
            kill_node: String::new(),
            kill_after_s: 0.0,
            kill_signal: default_signal(),
        }
    }
}

/// The fan-out workload (kinds fanout, sustain, baseline).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fanout {
    pub groups: usize,
    /// Members per group, the sender included (k >= 2).
    pub group_size: usize,
    /// Plaintext size of each message in bytes (>= 24: the header).
    pub payload_bytes: usize,
    /// Total messages per second over all groups, one entry per phase.
    pub rates: Vec<f64>,
    /// Length of each phase's sending window.
    pub phase_s: f64,
    /// After a phase stops sending: how long to wait for every ack and
    /// every delivery before counting what is missing as lost.
    pub drain_timeout_s: f64,
    /// Receivers acknowledge their highest contiguous seq this often (as the
    /// SDK does after processing); 0 = never. Each at its own phase, the
    /// receivers spread evenly over the interval, as independent clients
    /// do; see `ack_herd`.
    pub ack_interval_ms: u64,
    /// Every receiver acks at the same instant instead (the worst case:
    /// every member of every group at once, one herd per interval).
    #[serde(default)]
    pub ack_herd: bool,
    /// Each sender keeps at most this many sends in flight, holds the rest
    /// in order, and holds every send while a refusal's retry hint lasts,
    /// as a client pacing itself by the server's answers does. 0 (the
    /// default): every send is written when due and each refusal is resent
    /// on its own (past the node's peak, resends grow with the backlog).
    #[serde(default)]
    pub send_window: usize,
    /// Every member asks for its group's presence (`GetPresence`) this
    /// often, the members spread evenly over the interval, as `hush chat`
    /// and the web page do in a group whose changes are not pushed;
    /// 0 = never.
    #[serde(default)]
    pub presence_poll_ms: u64,
    /// Sustain: a phase passes while its end-to-end p99 stays under this.
    pub sustain_p99_ms: f64,
    /// Distinct presealed ciphertexts per group (replayed round-robin).
    pub presealed_per_group: usize,
    /// Groups set up concurrently (registration, KeyPackages, commit).
    pub setup_concurrency: usize,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            groups: 10,
            group_size: 5,
            payload_bytes: 64,
            rates: vec![100.0],
            phase_s: 10.0,
            drain_timeout_s: 30.0,
            ack_interval_ms: 200,
            ack_herd: false,
            send_window: 0,
            presence_poll_ms: 0,
            sustain_p99_ms: 50.0,
            presealed_per_group: 16,
            setup_concurrency: 16,
        }
    }
}

/// The connect workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Connect {
    /// Idle authenticated connections to open (over all workers).
    pub connections: usize,
    /// Connection attempts per second (open loop).
    pub rate: f64,
    /// How long to hold them all open after the ramp.
    pub hold_s: f64,
    /// Concurrent registrations during setup.
    pub setup_concurrency: usize,
}

impl Default for Connect {
    fn default() -> Self {
        Self {
            connections: 100,
            rate: 100.0,
            hold_s: 5.0,
            setup_concurrency: 32,
        }
    }
}

/// A fault in a written-out schedule (`[[chaos.schedule]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedFault {
    /// Seconds into the measured window.
    pub at_s: f64,
    pub fault: FaultKind,
    /// Node ids ("n2"); a rolling restart takes all of them in order when
    /// empty.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Pause and partition: how long. Kill and restart: down time.
    /// Rolling restart: the wait between nodes.
    #[serde(default)]
    pub duration_s: f64,
}

/// The chaos run (kind `chaos`). The load is the `[fanout]` section's
/// (groups, group_size, the first of `rates`, drain); the nodes come from
/// `target.cluster_config` (timings, store) with their entries replaced by
/// `nodes` nodes in network namespaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chaos {
    /// Cluster size (ids n1..nN): 3 or 5 usually.
    pub nodes: usize,
    /// The measured window with faults, seconds (the drain follows).
    pub duration_s: f64,
    /// Seed of the generated schedule; 0 takes one from the clock (the
    /// history's meta and the report say which).
    pub seed: u64,
    /// Kinds the generator picks from.
    pub faults: Vec<FaultKind>,
    /// A written-out schedule; when not empty, used instead of generating.
    pub schedule: Vec<PlannedFault>,
    /// No fault before this many seconds, none in the last `settle_s`.
    pub first_fault_s: f64,
    pub settle_s: f64,
    /// Seconds from a fault's end to the next fault's start (uniform).
    pub gap_s: [f64; 2],
    /// Probability that the next fault starts while this one is active.
    pub overlap: f64,
    /// Most faults active at once.
    pub max_concurrent: usize,
    /// Pauses shorter than the lease and the failure detector, and longer
    /// than the lease (ms, uniform); they alternate.
    pub pause_short_ms: [u64; 2],
    pub pause_long_ms: [u64; 2],
    /// How long a killed or stopped node stays down (ms, uniform).
    pub down_ms: [u64; 2],
    /// How long a partition lasts (ms, uniform).
    pub partition_ms: [u64; 2],
    /// What a stop and start again is assumed to take, for planning (ms).
    pub restart_ms: u64,
    /// Each node in its own network namespace (root, `ip`, `nft`);
    /// required by the partition faults.
    pub netns: bool,
    /// The namespaces' /24 as "A.B.C"; empty: the first free 10.77.Y.
    pub subnet: String,
    /// A fault is an anomaly's context when active from `context_before_s`
    /// before it to `context_after_s` after it.
    pub context_before_s: f64,
    pub context_after_s: f64,
}

impl Default for Chaos {
    fn default() -> Self {
        Self {
            nodes: 3,
            duration_s: 120.0,
            seed: 0,
            faults: FaultKind::ALL.to_vec(),
            schedule: Vec::new(),
            first_fault_s: 5.0,
            settle_s: 10.0,
            gap_s: [3.0, 15.0],
            overlap: 0.25,
            max_concurrent: 2,
            pause_short_ms: [200, 1_000],
            pause_long_ms: [5_000, 9_000],
            down_ms: [1_000, 5_000],
            partition_ms: [5_000, 15_000],
            restart_ms: 4_000,
            netns: true,
            subnet: String::new(),
            context_before_s: 10.0,
            context_after_s: 1.0,
        }
    }
}

impl Chaos {
    /// Node ids n1..nN.
    pub fn node_ids(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("n{i}")).collect()
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |key, why: String| Err(ScenarioError::Invalid { key, why });
        if !(2..=9).contains(&self.nodes) {
            return bad("chaos.nodes", "must be 2..=9".into());
        }
        if !positive(self.duration_s) {
            return bad("chaos.duration_s", "must be > 0".into());
        }
        let ranges = [
            ("chaos.pause_short_ms", self.pause_short_ms),
            ("chaos.pause_long_ms", self.pause_long_ms),
            ("chaos.down_ms", self.down_ms),
            ("chaos.partition_ms", self.partition_ms),
        ];
        for (key, [lo, hi]) in ranges {
            if lo > hi {
                return bad(key, format!("[{lo}, {hi}] is not a range"));
            }
        }
        if self.gap_s[0] > self.gap_s[1] || self.gap_s[0] < 0.0 {
            return bad("chaos.gap_s", "must be [min, max] seconds".into());
        }
        if !(0.0..=1.0).contains(&self.overlap) {
            return bad("chaos.overlap", "must be in 0..=1".into());
        }
        if self.max_concurrent == 0 {
            return bad("chaos.max_concurrent", "must be > 0".into());
        }
        let ids = self.node_ids();
        let network = |k: &FaultKind| k.is_network();
        if !self.netns
            && (self.faults.iter().any(network) && self.schedule.is_empty()
                || self.schedule.iter().any(|f| network(&f.fault)))
        {
            return bad(
                "chaos.netns",
                "partition faults (isolate-peers, isolate-clients, split) need network namespaces"
                    .into(),
            );
        }
        for f in &self.schedule {
            if !(f.at_s >= 0.0 && f.at_s < self.duration_s) {
                return bad(
                    "chaos.schedule.at_s",
                    format!("{} is outside the window", f.at_s),
                );
            }
            if f.nodes.is_empty() && f.fault != FaultKind::RollingRestart {
                return bad(
                    "chaos.schedule.nodes",
                    format!("{} needs a node", f.fault.name()),
                );
            }
            if let Some(n) = f.nodes.iter().find(|n| !ids.contains(n)) {
                return bad(
                    "chaos.schedule.nodes",
                    format!("no node {n} (nodes are n1..n{})", self.nodes),
                );
            }
            if !(f.duration_s >= 0.0 && f.duration_s.is_finite()) {
                return bad("chaos.schedule.duration_s", "must be >= 0".into());
            }
        }
        Ok(())
    }
}

/// Finite and > 0 (false for NaN).
fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn default_mls() -> MlsMode {
    MlsMode::Presealed
}
fn default_spawn() -> Spawn {
    Spawn::Node
}
fn default_cluster_config() -> String {
    "cluster.toml".into()
}
fn default_signal() -> String {
    "KILL".into()
}
fn one() -> u8 {
    1
}

/// A scenario that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("bad override `{0}`: expected key.path=value")]
    Override(String),
    #[error("bad scenario value `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
}

impl Scenario {
    /// Reads a scenario file and applies `key.path=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, overrides)
    }

    /// Parses scenario text and applies overrides.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self, ScenarioError> {
        let mut tree: toml::Table =
            toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        let s: Scenario = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |key, why: &str| {
            Err(ScenarioError::Invalid {
                key,
                why: why.into(),
            })
        };
        if self.source_addrs == 0 {
            return bad("source_addrs", "must be 1..=255");
        }
        if matches!(
            self.kind,
            Kind::Fanout | Kind::Sustain | Kind::Baseline | Kind::Chaos | Kind::Overload
        ) {
            let f = &self.fanout;
            if f.groups == 0 {
                return bad("fanout.groups", "must be > 0");
            }
            if f.group_size < 2 {
                return bad(
                    "fanout.group_size",
                    "must be >= 2 (a sender and a receiver)",
                );
            }
            if f.payload_bytes < crate::payload::HEADER_LEN {
                return bad("fanout.payload_bytes", "must be >= 24 (the header)");
            }
            if f.rates.is_empty() || f.rates.iter().any(|r| !positive(*r)) {
                return bad("fanout.rates", "must be a non-empty list of rates > 0");
            }
            if !positive(f.phase_s) {
                return bad("fanout.phase_s", "must be > 0");
            }
            if f.presealed_per_group == 0 {
                return bad("fanout.presealed_per_group", "must be > 0");
            }
            if f.setup_concurrency == 0 {
                return bad("fanout.setup_concurrency", "must be > 0");
            }
        }
        if self.kind == Kind::Connect {
            let c = &self.connect;
            if c.connections == 0 || !positive(c.rate) || c.setup_concurrency == 0 {
                return bad(
                    "connect",
                    "connections, rate and setup_concurrency must be > 0",
                );
            }
        }
        if !matches!(self.target.kill_signal.as_str(), "KILL" | "TERM") {
            return bad("target.kill_signal", "must be \"KILL\" or \"TERM\"");
        }
        if !self.target.kill_node.is_empty()
            && !self.target.cluster_nodes.contains(&self.target.kill_node)
        {
            return bad("target.kill_node", "must be one of target.cluster_nodes");
        }
        if self.kind == Kind::Chaos {
            self.chaos.validate()?;
        }
        if self.target.spawn == Spawn::Cluster && self.target.cluster_nodes.is_empty() {
            return bad("target.cluster_nodes", "list the node ids to start");
        }
        Ok(())
    }
}

/// `fanout.groups=10`: the value is parsed as TOML, or taken as a string.
fn apply_override(tree: &mut toml::Table, o: &str) -> Result<(), ScenarioError> {
    let (key, value) = o
        .split_once('=')
        .ok_or_else(|| ScenarioError::Override(o.into()))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts
        .pop()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ScenarioError::Override(o.into()))?;
    let mut t = tree;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ScenarioError::Override(o.into()))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_unknown_keys() {
        let s = Scenario::parse(
            "name = \"x\"\nkind = \"fanout\"\n[fanout]\ngroups = 2\ngroup_size = 3\npayload_bytes = 64\nrates = [10.0]\nphase_s = 1.0\ndrain_timeout_s = 5.0\nack_interval_ms = 0\nsustain_p99_ms = 50.0\npresealed_per_group = 4\nsetup_concurrency = 2\n",
            &["fanout.groups=7".into(), "mls=live".into()],
        )
        .unwrap();
        assert_eq!(s.fanout.groups, 7);
        assert_eq!(s.mls, MlsMode::Live);
        let e = Scenario::parse("name = \"x\"\nkind = \"fanout\"\nbogus = 1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Scenario::parse(
            "name = \"x\"\nkind = \"connect\"\n",
            &["connect.rate=0".into()],
        );
        assert!(e.is_err());
    }
}
