//! An SDP offer from `media_offer`: the server's checks, then the answer `rtc` builds for it
//! (new connection or renegotiation), configured as a media worker configures it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stoa::fuzzing::sdp_offer(data));
