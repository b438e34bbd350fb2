//! The config loader (`crates/hush-node/src/config.rs`): a TOML string
//! parsed over the defaults and validated, then everything `start` derives
//! from it before touching the network or the disk.

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = hush_node::Config::from_toml(text) else {
        return;
    };
    if config.select_cluster_node().is_err() {
        return;
    }
    let _ = config.validate();
    let _ = config.cluster_node();
    let _ = config.cluster_ca_dir();
    let _ = config.store_path();
    let _ = config.scylla_config();
    let _ = config.heartbeat_interval();
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("empty".to_string(), Vec::new())];
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/../cluster.toml");
    if let Ok(text) = std::fs::read(cluster) {
        out.push(("cluster_toml".into(), text));
    }
    out.push((
        "limits".into(),
        b"[limits]\nmax_frame_bytes = 65536\nrate_per_sec = 0.5\nrate_burst = 1e300\n\
          heartbeat_interval_ms = 0\nsync_page = 1\n[store]\nkind = \"scylla\"\n\
          contact_points = [\"127.0.0.1:9042\"]\nconsistency = \"quorum\"\n"
            .to_vec(),
    ));
    out
}
