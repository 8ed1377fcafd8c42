//! The signaling edge: one WebSocket per participant at `/api/v1/signal`. Authenticates the
//! first message, then relays commands to the live room and its events back; no room rules.

pub mod protocol;
pub mod session;

pub use session::signal;
