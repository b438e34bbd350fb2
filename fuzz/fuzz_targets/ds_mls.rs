#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use hush_fuzz::ds_mls::Ds;
use libfuzzer_sys::fuzz_target;

static DS: OnceLock<Ds> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let ds = DS.get_or_init(|| {
        hush_fuzz::allow_caught_panics();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Ok(dir) = std::env::var("HUSH_FUZZ_SEEDS") {
            hush_fuzz::ds_fixtures::generate(&root.join("fixtures/ds"), Path::new(&dir));
            std::process::exit(0);
        }
        Ds::load(&root.join("fixtures/ds"))
    });
    ds.run(data);
});
