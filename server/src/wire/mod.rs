//! The signaling wire format, both directions: decoding what clients send, encoding what the
//! server sends, and the WebSocket close codes. Shapes and bytes only: no rooms, no sockets.
//!
//! The room encodes its events here once per event and fans the bytes out; the signaling
//! session decodes here and encodes its own replies. Room types reach this module only as
//! `Serialize` values, so it sits below the room and knows nothing of its rules.

pub mod close_code;
mod decode;
mod encode;

pub use decode::{ClientMessage, DecodeError, Decoded, RequestId, decode, known_types};
pub use encode::{
    AudiencePageMessage, MediaInfo, ServerMessage, SnapshotMessage, Text, Welcome, event_message,
};
