//! What the delivery service does per message and per commit, on the
//! committed fixture group the fuzz target and `tests/fuzz_corpus.rs` use
//! (`fuzz/fixtures/ds/`: a real openmls group of two at epoch 1, made by
//! `fuzz/src/ds_fixtures.rs`): `check_application` (every send),
//! `apply_commit` of a self-update (every commit), and `GroupTracker::load`
//! (a GroupActor's activation, from the stored snapshot).
//!   cargo bench -p hush-ds --bench validate

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hush_ds::GroupTracker;

fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn benches(c: &mut Criterion) {
    let snapshot = fixture("fixtures/ds/snapshot.bin");
    let commit = fixture("fixtures/ds/commit.bin");
    // A corpus seed is the fuzz target's op byte, then the input.
    let message = fixture("corpus/ds_mls/application")[1..].to_vec();
    let tracker = GroupTracker::load(&snapshot).expect("fixture snapshot");

    let mut group = c.benchmark_group("ds");
    group.bench_function("check_application", |b| {
        b.iter(|| {
            tracker
                .check_application(black_box(&message), 5)
                .expect("valid")
        })
    });
    group.bench_function("apply_commit_self_update", |b| {
        b.iter_batched(
            || GroupTracker::load(&snapshot).expect("load"),
            |mut t| t.apply_commit(black_box(&commit)).expect("valid commit"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("load_snapshot", |b| {
        b.iter(|| GroupTracker::load(black_box(&snapshot)).expect("load"))
    });
    group.finish();
}

criterion_group!(validate, benches);
criterion_main!(validate);
