#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hush_fuzz::write_seeds_if_asked(hush_fuzz::sse_last_event_id::seeds);
    hush_fuzz::sse_last_event_id::run(data);
});
