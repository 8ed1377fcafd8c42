//! The signaling edge: one session per WebSocket at `/api/v1/signal`. Authenticates the first
//! message, then relays commands to the live room and its events back; no room rules.
//! The wire format is `wire`'s; the HTTP upgrade is the API's.

pub mod relay_links;
pub mod session;

pub use relay_links::RelayLinks;
pub use session::{SignalContext, run};
