//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) of the
//! node-side and client-side targets through the same code the fuzz
//! targets run (the modules are included from `fuzz/src/`), so CI guards
//! every input, crash regressions included, without a fuzzer.
//! `fuzz/README.md` says how to fuzz.

#![allow(dead_code)] // the included modules also hold seed makers

#[path = "../../../fuzz/src/client_events.rs"]
mod client_events;
#[path = "../../../fuzz/src/client_frame.rs"]
mod client_frame;
#[path = "../../../fuzz/src/cluster_msg.rs"]
mod cluster_msg;
#[path = "../../../fuzz/src/config.rs"]
mod config;
#[path = "../../../fuzz/src/node.rs"]
mod node;
#[path = "../../../fuzz/src/sse_last_event_id.rs"]
mod sse_last_event_id;

use std::path::PathBuf;

/// The corpus files of a target, in name order (at least one).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect()
}

#[test]
fn sse_last_event_id_corpus() {
    for (_name, data) in corpus("sse_last_event_id") {
        sse_last_event_id::run(&data);
    }
}

#[test]
fn config_corpus() {
    for (_name, data) in corpus("config") {
        config::run(&data);
    }
}

#[test]
fn cluster_msg_corpus() {
    for (_name, data) in corpus("cluster_msg") {
        cluster_msg::run(&data);
    }
}

#[test]
fn client_frame_and_client_events_corpora() {
    // One node for both (each test binary runs its tests in threads; the
    // node harness owns its runtime).
    let mut h = node::NodeHarness::start();
    for (_name, data) in corpus("client_frame") {
        client_frame::run(&mut h, &data);
    }
    for (_name, data) in corpus("client_events") {
        client_events::run(&mut h, &data);
    }
}
