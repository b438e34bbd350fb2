#![no_main]

use std::cell::RefCell;

use hush_fuzz::node::NodeHarness;
use libfuzzer_sys::fuzz_target;

thread_local! {
    // libFuzzer runs every input on its main thread; the node (and its
    // runtime) lives as long as the process.
    static NODE: RefCell<Option<NodeHarness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    NODE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let h = slot.get_or_insert_with(|| {
            hush_fuzz::allow_caught_panics();
            let mut h = NodeHarness::start();
            hush_fuzz::write_seeds_if_asked(|| hush_fuzz::client_frame::seeds(&mut h));
            h
        });
        hush_fuzz::client_frame::run(h, data);
    });
});
