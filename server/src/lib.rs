//! Stoa: a self-hosted server for live, invite-only audio rooms.
//! The library holds every layer so tests can start a whole server in-process; `main.rs` is the CLI.

pub mod api;
pub mod clock;
pub mod config;
pub mod connection;
pub mod control;
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
