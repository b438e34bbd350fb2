#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_fuzz::write_seeds_if_asked(hush_fuzz::membership::seeds);
    hush_fuzz::membership::run(data);
});
