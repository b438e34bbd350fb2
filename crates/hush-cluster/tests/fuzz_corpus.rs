//! Replays the committed `membership` fuzz corpus
//! (`fuzz/corpus/membership/`) through the same code the fuzz target runs
//! (included from `fuzz/src/membership.rs`), so CI guards every input
//! without a fuzzer.

#![allow(dead_code)] // the included module also holds the seed maker

#[path = "../../../fuzz/src/membership.rs"]
mod membership;

use std::path::PathBuf;

#[test]
fn membership_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/membership");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    for f in files {
        membership::run(&std::fs::read(&f).expect("read corpus file"));
    }
}
