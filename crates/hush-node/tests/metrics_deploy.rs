//! The monitoring files of the compose deployment agree with the node:
//! Prometheus scrapes exactly the gateways of deploy/compose.toml with the
//! admin token from a file, and every metric the Grafana dashboard queries
//! is a family the node describes (`hush_node::telemetry::FAMILIES`).
//! (scripts/check-compose.sh checks the same in CI with a YAML parser.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hush_node::telemetry::{Kind, FAMILIES};
use hush_node::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn prometheus_scrapes_every_compose_node_with_the_token_from_a_file() {
    let prom = read("deploy/prometheus/prometheus.yml");
    let config = Config::from_file(&root().join("deploy/compose.toml")).expect("compose.toml");
    let want: BTreeSet<String> = config
        .cluster
        .nodes
        .iter()
        .map(|n| n.gateway.to_string())
        .collect();
    // The hush-node job's block: from its name to the next job.
    let job: Vec<&str> = prom
        .lines()
        .skip_while(|l| l.trim() != "- job_name: hush-node")
        .skip(1)
        .take_while(|l| !l.trim().starts_with("- job_name:"))
        .collect();
    assert!(!job.is_empty(), "no hush-node job");
    let targets: BTreeSet<String> = job
        .iter()
        .filter_map(|l| l.trim().strip_prefix("- targets: [\""))
        .map(|t| t.trim_end_matches("\"]").to_owned())
        .collect();
    assert_eq!(targets, want, "scrape targets vs compose.toml gateways");
    assert!(
        job.iter()
            .any(|l| l.trim() == "credentials_file: /etc/prometheus/secrets/admin-token"),
        "the token comes from the file the metrics-token service writes"
    );
    assert!(!prom.contains(config.gateway.admin_token.as_deref().expect("a token")));
    let compose = read("docker-compose.yml");
    assert!(compose.contains("      - metrics-secrets:/etc/prometheus/secrets:ro"));
    assert!(compose.contains("> /var/lib/hush/metrics/admin-token"));
}

#[test]
fn the_dashboard_queries_only_described_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/hush-node.json")).expect("JSON");
    let families: Vec<(&str, Kind)> = FAMILIES.iter().map(|f| (f.name, f.kind)).collect();
    let known = |m: &str| {
        families.iter().any(|(name, kind)| {
            m == *name
                || (*kind == Kind::Histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| m.strip_suffix(s) == Some(name)))
        })
    };
    let mut queried = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("hush_") || word.starts_with("process_") {
                    assert!(known(word), "{}: {word} is not described", panel["title"]);
                    queried += 1;
                }
            }
        }
    }
    assert!(queried > 20, "only {queried} metric references");
    // The ones an operator asked for are on it.
    let text = dash.to_string();
    for m in [
        "hush_build_info",
        "hush_http_requests_total",
        "hush_http_request_duration_seconds_bucket",
        "hush_send_to_deliver_seconds_bucket",
        "hush_auth_failures_total",
        "hush_stream_closes_total",
        "hush_errors_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(m), "dashboard lacks {m}");
    }
}
