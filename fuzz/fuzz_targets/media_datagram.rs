//! Any datagram into a media worker's connection: the RFC 7983 demux, the STUN routing key,
//! and `rtc`'s read path on an answered connection (fresh, after a valid binding request, or
//! connected to a real client, also with plaintext RTP the client encrypts).
#![no_main]

use std::cell::RefCell;

use stoa::fuzzing::MediaHarness;

thread_local! {
    static HARNESS: RefCell<MediaHarness> = RefCell::new(MediaHarness::new());
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.borrow_mut().datagrams(data));
});
