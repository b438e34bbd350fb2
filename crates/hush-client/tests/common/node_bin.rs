//! Which `hush-node` executable the end-to-end tests run. Shared by the
//! hush-client tests and loadtest's smoke test (included by `#[path]`).
//!
//! `HUSH_NODE_BIN` when set; else the one `cargo test --workspace` built
//! next to the running test if no node source is newer (same dependency
//! features, so nothing is rebuilt); else `cargo build -p hush-node`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The hush-node executable.
pub fn node_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HUSH_NODE_BIN") {
            return PathBuf::from(p);
        }
        // `cargo test --workspace` has just built it (hush-node has
        // integration tests, so its binary is part of the test build, with
        // the same dependency features): use it if no source is newer.
        if let Some(bin) = fresh_workspace_node_bin() {
            return bin;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "hush-node",
                "--bin",
                "hush-node",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build for hush-node");
        assert!(out.status.success(), "building hush-node failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact")
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no hush-node executable")
    })
    .clone()
}

/// `target/<profile>/hush-node` next to this test binary, if it is newer
/// than every source file it is built from.
fn fresh_workspace_node_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> -> target/<profile>/hush-node
    let bin = exe.parent()?.parent()?.join("hush-node");
    let built = std::fs::metadata(&bin).ok()?.modified().ok()?;
    // The workspace root: the first ancestor with the lock file.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())?;
    let sources = [
        "crates/hush-node",
        "crates/hush-cluster",
        "crates/hush-store",
        "crates/hush-ds",
        "crates/hush-proto",
        "proto",
        "web/dist",
        "Cargo.lock",
    ];
    let newest = sources
        .iter()
        .filter_map(|s| newest_mtime(&root.join(s)))
        .max()?;
    (built >= newest).then_some(bin)
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}
