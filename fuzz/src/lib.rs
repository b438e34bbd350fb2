//! Fuzz targets for every decoder and validator that sees bytes from
//! outside a Hush node or client. Each target's logic is a module here with
//! a `run(&[u8])` (or a harness method); the fuzz targets in
//! `fuzz_targets/` call it, and the replay tests in the owning crates
//! (`crates/*/tests/fuzz_corpus.rs`) include the same module files and feed
//! it every committed corpus input, so CI guards the corpora without a
//! fuzzer.

#[cfg(feature = "node")]
pub mod client_events;
#[cfg(feature = "node")]
pub mod client_frame;
#[cfg(feature = "node")]
pub mod cluster_msg;
#[cfg(feature = "node")]
pub mod config;
pub mod ds_fixtures;
pub mod ds_mls;
pub mod membership;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod sse_last_event_id;

/// Panics that the code under test catches on purpose must not abort the
/// fuzzer: tls_codec 0.5 has a `debug_assert_eq!` on truncated input that
/// hush-ds turns into `Malformed` with `catch_unwind` (see
/// `crates/hush-ds/src/codec.rs`). Every other panic still aborts (the
/// fuzzer's hook).
pub fn allow_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = info
                .location()
                .is_some_and(|l| l.file().contains("tls_codec"));
            if !caught {
                fuzzer_hook(info);
            }
        }));
    });
}

/// Writes `seeds` as files named `<name>` into the directory named by
/// `HUSH_FUZZ_SEEDS` and exits, when that variable is set: how the seed
/// inputs of the committed corpora were made.
pub fn write_seeds_if_asked(seeds: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let Ok(dir) = std::env::var("HUSH_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed dir");
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
    std::process::exit(0);
}
