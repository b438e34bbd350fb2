#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_fuzz::write_seeds_if_asked(hush_fuzz::cluster_msg::seeds);
    hush_fuzz::cluster_msg::run(data);
});
