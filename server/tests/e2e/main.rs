//! The tests that run the real `stoa` binary as a child process (its command line, kill -9
//! durability, the cluster of nodes with PostgreSQL, Redis and nginx, what its logs leave out,
//! webhooks across a restart), built as one binary: each test binary links the whole server
//! again. Run one concern with a filter: `cargo test --release -p stoa --test e2e cluster::`.
//!
//! The browser suite (`tests/browser.rs`) stays a binary of its own: it drives Chromium and
//! Firefox for minutes and must not share the machine with other tests.

mod cli;
mod cluster;
mod common;
mod durability;
mod secrets_in_logs;
mod webhooks_restart;
