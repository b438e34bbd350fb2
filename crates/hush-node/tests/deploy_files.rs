//! The docker-compose deployment files agree with each other and with the
//! config loader: deploy/compose.toml loads and validates for every node the
//! way `hush-node --config ... --node nX` loads it, docker-compose.yml gives
//! each service the addresses, ports, mounts and node id that file expects,
//! and every file the compose setup references exists.
//!
//! docker-compose.yml is checked line by line, not with a YAML parser: the
//! checks look for exact lines inside one service's block, so a change of
//! layout fails here rather than passing unnoticed. The YAML itself is
//! validated by a real compose tool in CI (scripts/check-compose.sh).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use hush_node::Config;

const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Where docker-compose.yml mounts deploy/compose.toml in every node.
const CONFIG_IN_CONTAINER: &str = "/etc/hush/compose.toml";
/// Where the `certs` init service writes each node's certificate volume
/// (`<this>/<node>`), and where each node mounts its own, read-only.
const CERTS_IN_CONTAINER: &str = "/var/lib/hush/certs";
/// The volume the nodes share for the token key file.
const SECRETS_IN_CONTAINER: &str = "/var/lib/hush/secrets";
/// Where the `certs` service keeps the CA key.
const CA_IN_CONTAINER: &str = "/var/lib/hush/ca";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `hush-node --config deploy/compose.toml --node <node>` runs with:
/// the same calls, in the same order, as main.rs.
fn load(node: &str) -> Config {
    let mut config = Config::from_file(&root().join("deploy/compose.toml"))
        .unwrap_or_else(|e| panic!("deploy/compose.toml: {e}"));
    config.node.id = node.into();
    config
        .select_cluster_node()
        .unwrap_or_else(|e| panic!("deploy/compose.toml --node {node}: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("deploy/compose.toml --node {node}: {e}"));
    config
}

/// The lines of a top-level section (`services:`, `volumes:`...), without
/// the header.
fn section<'a>(yaml: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("{name}:");
    let mut lines = yaml.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "docker-compose.yml: no `{header}`");
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .collect()
}

/// The lines of one service's block (indented as in the file), comments
/// and blank lines dropped.
fn service<'a>(yaml: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let services = section(yaml, "services");
    let mut lines = services.iter().skip_while(|l| **l != header);
    assert!(
        lines.next().is_some(),
        "docker-compose.yml: no service `{name}`"
    );
    lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("   "))
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .copied()
        .collect()
}

/// The single value of `key: value` in a block.
fn value<'a>(block: &[&'a str], key: &str) -> &'a str {
    let prefix = format!("{key}: ");
    let found: Vec<&str> = block
        .iter()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(found.len(), 1, "expected one `{key}:` in {block:#?}");
    found[0].trim_matches('"')
}

fn has_line(block: &[&str], line: &str) -> bool {
    block.iter().any(|l| l.trim() == line)
}

fn ipv4(addr: SocketAddr) -> Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => panic!("compose network is IPv4, got {ip}"),
    }
}

#[test]
fn compose_toml_loads_and_validates_for_every_node() {
    for node in NODES {
        let c = load(node);
        assert_eq!(c.store.kind, "scylla", "{node}");
        let scylla = c.scylla_config().unwrap();
        assert_eq!(scylla.replication_factor, 1, "one ScyllaDB node in compose");
        assert_eq!(c.cluster.nodes.len(), 3);
        let entry = c.cluster_node().expect("an entry for every node");
        // The gateway binds exactly its entry's address, inside the container.
        assert_eq!(c.gateway.listen, entry.gateway, "{node}");
        assert_eq!(entry.gateway.ip(), entry.quic.ip(), "{node}: one container");
        // Certificates issued by the init service, one directory per node;
        // no node gets the CA key (no dev CA directory of its own).
        let tls = c.cluster.tls.as_ref().expect("[cluster.tls]");
        for path in [&tls.ca, &tls.cert, &tls.key] {
            assert!(
                path.starts_with(CERTS_IN_CONTAINER) && path.to_string_lossy().contains("{node}"),
                "{node}: {} should be under {CERTS_IN_CONTAINER}/{{node}}",
                path.display()
            );
        }
        assert_eq!(c.node.data, PathBuf::from("/var/lib/hush/data"));
        assert!(c.token_key_file().starts_with(SECRETS_IN_CONTAINER));
        let port = entry.gateway.port();
        for origin in [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
        ] {
            assert!(
                c.gateway.allowed_origins.contains(&origin),
                "{node}: {origin} not in gateway.allowed_origins"
            );
        }
    }
}

#[test]
fn docker_compose_yml_agrees_with_compose_toml() {
    let yaml = read("docker-compose.yml");

    // The fixed subnet holds every address.
    let networks = section(&yaml, "networks");
    let networks: Vec<&str> = networks.iter().map(|l| l.trim()).collect();
    let subnet = value(&networks, "- subnet");
    let (net, bits) = subnet.split_once('/').expect("subnet a.b.c.d/n");
    let net: Ipv4Addr = net.parse().unwrap();
    let bits: u32 = bits.parse().unwrap();
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    let in_subnet = |ip: Ipv4Addr| u32::from(ip) & mask == u32::from(net) & mask;

    // ScyllaDB: the contact point is the service's address and CQL port.
    let c = load("n1");
    let scylla = service(&yaml, "scylla");
    let scylla_ip: Ipv4Addr = value(&scylla, "ipv4_address").parse().unwrap();
    assert!(in_subnet(scylla_ip), "{scylla_ip} not in {subnet}");
    assert_eq!(
        c.store.contact_points,
        [format!("{scylla_ip}:9042")],
        "store.contact_points vs the scylla service"
    );
    for flag in ["listen-address", "rpc-address", "seeds"] {
        let line = format!("- --{flag}={scylla_ip}");
        assert!(has_line(&scylla, &line), "scylla: missing `{line}`");
    }
    assert!(
        scylla.iter().any(|l| l.contains("cqlsh")),
        "scylla healthcheck"
    );

    // Named volumes used below are declared.
    let volumes: Vec<&str> = section(&yaml, "volumes").iter().map(|l| l.trim()).collect();

    let mut ips = vec![scylla_ip];
    for node in NODES {
        let c = load(node);
        let entry = c.cluster_node().unwrap();
        let svc = service(&yaml, node);
        let ip: Ipv4Addr = value(&svc, "ipv4_address").parse().unwrap();
        assert_eq!(ip, ipv4(entry.gateway), "{node}: ipv4_address vs gateway");
        assert_eq!(ip, ipv4(entry.quic), "{node}: ipv4_address vs quic");
        assert!(in_subnet(ip), "{node}: {ip} not in {subnet}");
        ips.push(ip);

        let command = value(&svc, "command");
        assert_eq!(
            command,
            format!("[\"--config\", \"{CONFIG_IN_CONTAINER}\", \"--node\", \"{node}\"]"),
            "{node}: command"
        );
        assert_eq!(
            value(&svc, "build"),
            ".",
            "{node}: built from the Dockerfile"
        );

        // Published on the host at the same port, loopback only.
        let port = entry.gateway.port();
        let published = format!("- \"127.0.0.1:{port}:{port}\"");
        assert!(has_line(&svc, &published), "{node}: missing {published}");

        // The config file, this node's certificates (read only), the shared
        // token key volume and this node's own data volume; never the CA.
        let data_volume = format!("{node}-data");
        let certs_volume = format!("{node}-certs");
        for mount in [
            format!("- ./deploy/compose.toml:{CONFIG_IN_CONTAINER}:ro"),
            format!("- {certs_volume}:{CERTS_IN_CONTAINER}/{node}:ro"),
            format!("- hush-secrets:{SECRETS_IN_CONTAINER}"),
            format!("- {data_volume}:{}", c.node.data.display()),
        ] {
            assert!(has_line(&svc, &mount), "{node}: missing volume `{mount}`");
        }
        assert!(
            !svc.iter()
                .any(|l| l.contains("hush-ca") || l.contains(CA_IN_CONTAINER)),
            "{node} must not mount the CA key volume"
        );
        for v in ["hush-secrets", certs_volume.as_str(), data_volume.as_str()] {
            assert!(has_line(&volumes, &format!("{v}:")), "volume {v} declared");
        }

        // The healthcheck probes this node's own gateway.
        let probe = format!("/dev/tcp/{}/{}", ip, port);
        assert!(
            svc.iter().any(|l| l.contains(&probe)),
            "{node}: healthcheck should probe {probe}"
        );
        // Everyone waits for ScyllaDB; n2 and n3 also for n1, which creates
        // the dev CA key (so they never race to create it).
        let depends_on: Vec<&str> = svc
            .iter()
            .skip_while(|l| **l != "    depends_on:")
            .skip(1)
            .take_while(|l| l.starts_with("      "))
            .copied()
            .collect();
        let waits_for: Vec<&str> = depends_on
            .iter()
            .filter(|l| !l.starts_with("       "))
            .map(|l| l.trim().trim_end_matches(':'))
            .collect();
        let expected: &[&str] = if node == "n1" {
            &["scylla", "certs"]
        } else {
            &["scylla", "certs", "n1"]
        };
        assert_eq!(waits_for, expected, "{node}: depends_on");
        assert_eq!(
            depends_on
                .iter()
                .filter(|l| l.trim() == "condition: service_healthy")
                .count(),
            expected.len() - 1,
            "{node}: every service dependency must be healthy, not just started"
        );
        assert!(
            has_line(&depends_on, "condition: service_completed_successfully"),
            "{node}: waits for the certificates to be issued"
        );
    }
    let unique: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len(), "addresses must be distinct");

    // The init service: the only holder of the CA key, issuing every node's
    // certificate into that node's volume, with no network at all.
    let certs = service(&yaml, "certs");
    let mut want = format!(
        "[\"gen-node-certs\", \"--ca-dir\", \"{CA_IN_CONTAINER}\", \"--out\", \"{CERTS_IN_CONTAINER}\""
    );
    for node in NODES {
        want.push_str(&format!(", \"--for\", \"{node}\""));
    }
    want.push(']');
    assert_eq!(value(&certs, "command"), want, "certs: command");
    assert_eq!(value(&certs, "network_mode"), "none");
    assert!(has_line(&certs, &format!("- hush-ca:{CA_IN_CONTAINER}")));
    for node in NODES {
        let mount = format!("- {node}-certs:{CERTS_IN_CONTAINER}/{node}");
        assert!(has_line(&certs, &mount), "certs: missing `{mount}`");
    }
    assert!(has_line(&volumes, "hush-ca:"), "volume hush-ca declared");
}

#[test]
fn files_the_compose_setup_references_exist() {
    let yaml = read("docker-compose.yml");
    let services = section(&yaml, "services");
    let mut checked = 0;
    for line in services.iter().map(|l| l.trim()) {
        if let Some(ctx) = line.strip_prefix("build: ") {
            assert!(root().join(ctx).join("Dockerfile").is_file(), "{line}");
            checked += 1;
        }
        // Bind mounts (named volumes have no path).
        if let Some(src) = line
            .strip_prefix("- ./")
            .and_then(|rest| rest.split(':').next())
        {
            assert!(root().join(src).exists(), "bind mount {src} is missing");
            checked += 1;
        }
    }
    assert!(checked >= 6, "found only {checked} references");

    // The Dockerfile builds the binaries these crates define, and creates
    // the mount points docker-compose.yml uses (so named volumes inherit
    // the unprivileged user's ownership).
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked --bin hush-node --bin hush"));
    assert!(read("crates/hush-node/Cargo.toml").contains("name = \"hush-node\""));
    assert!(read("crates/hush-client/Cargo.toml").contains("name = \"hush\""));
    let c = load("n1");
    let mut dirs = vec![
        CA_IN_CONTAINER.to_string(),
        SECRETS_IN_CONTAINER.to_string(),
        c.node.data.display().to_string(),
    ];
    dirs.extend(NODES.iter().map(|n| format!("{CERTS_IN_CONTAINER}/{n}")));
    for dir in dirs {
        assert!(
            dockerfile
                .lines()
                .any(|l| l.contains("mkdir -p") && l.split_whitespace().any(|w| w == dir)),
            "Dockerfile should create {dir}"
        );
    }

    // The build context keeps what the build needs.
    let ignore = read(".dockerignore");
    for needed in ["Cargo.toml", "Cargo.lock", "crates", "proto"] {
        assert!(
            !ignore.lines().any(|l| {
                let l = l.trim().trim_end_matches('/');
                l == needed || l == format!("/{needed}")
            }),
            ".dockerignore must not exclude {needed}"
        );
    }
}
