//! Stoa: a self-hosted server for live, invite-only audio rooms.
//! The library holds every layer so tests can start a whole server in-process; `main.rs` is the CLI.

pub mod api;
pub mod broadcast;
pub mod clock;
pub mod config;
pub mod connection;
pub mod control;
// The fuzz targets' harness: built for `fuzz/` (which turns the feature on) and for unit tests,
// never into a release build.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod layering;
pub mod media;
pub mod metrics;
pub mod room;
pub mod server;
pub mod session;
pub mod signal;
pub mod wire;

pub use clock::Clock;
pub use config::Config;
pub use server::{RunningServer, start};
