//! The end-to-end tests of the `stoa-tests` package, one module per concern, built as one
//! binary: each test binary links the whole server and its HTTP client again, so one binary
//! instead of twenty-five takes most of the suite's build time away (docs/reliability.md,
//! "The test suite"). Run one concern with a filter: `cargo test --release -p stoa-tests
//! --test e2e media::`.
//!
//! The soak (`tests/soak.rs`) stays a binary of its own: it measures the server over a minute
//! of churn and must not share the machine with other tests.

mod broadcast;
mod broadcast_delivery;
mod client;
mod clips;
mod control_plane;
mod interop;
mod limits;
mod listen;
mod live_rooms;
mod loadgen;
mod media;
mod protocol_doc;
mod recording;
mod red;
mod relay;
mod replay;
mod retention;
mod room_records;
mod room_webhooks;
mod security;
mod speaker_tracks;
mod switch;
mod tls;
mod web;
mod webhooks;
