//! REST request bodies and query strings, through the real router, extractors, handlers and
//! an in-memory store. No answer may be a server error or a problem without a code.
#![no_main]

use std::cell::RefCell;

use stoa::fuzzing::RestHarness;

thread_local! {
    static HARNESS: RefCell<Option<RestHarness>> = const { RefCell::new(None) };
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| {
        h.borrow_mut()
            .get_or_insert_with(RestHarness::new)
            .request(data)
    });
});
