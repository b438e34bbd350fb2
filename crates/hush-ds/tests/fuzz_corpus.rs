//! Replays the committed `ds_mls` fuzz corpus (`fuzz/corpus/ds_mls/`)
//! through the same code the fuzz target runs (included from
//! `fuzz/src/ds_mls.rs`), against the committed fixture group
//! (`fuzz/fixtures/ds/`), so CI guards every input without a fuzzer.

#[path = "../../../fuzz/src/ds_mls.rs"]
mod ds_mls;

use std::path::PathBuf;

#[test]
fn ds_mls_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let ds = ds_mls::Ds::load(&root.join("fixtures/ds"));
    let dir = root.join("corpus/ds_mls");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    for f in files {
        ds.run(&std::fs::read(&f).expect("read corpus file"));
    }
}
