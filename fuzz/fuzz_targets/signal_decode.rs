//! A client → server signaling message: size bound, decoder, reply and command mapping, as a
//! signaling session screens it. See `stoa::fuzzing::signal_message` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stoa::fuzzing::signal_message(data));
