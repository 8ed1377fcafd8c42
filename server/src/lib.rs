//! Stoa: a self-hosted server for live, invite-only audio rooms. The library holds every layer
//! so tests can start a whole server in-process; `main.rs` is the command line.
//!
//! # The model on one page
//!
//! Layers, each knowing only those below it (`layering.rs` tests it on every build):
//!
//! | layer | what it is |
//! |---|---|
//! | [`control`] | durable facts: rooms, invites, identities, bans, the audit log, in one [`control::Store`] |
//! | [`room`] | a live room: a task per room around a pure state machine, [`room::RoomState`] |
//! | [`wire`] | the signaling protocol's JSON, both ways (`docs/protocol.md`) |
//! | [`media`] | WebRTC: worker threads, each with one UDP socket, forwarding the loudest speakers |
//! | [`broadcast`] | the stage mixed once per room, served as LL-HLS for audiences of any size |
//! | [`recording`] | a room's mix written as Ogg Opus while a moderator records it |
//! | [`signal`], [`api`] | the edges: a WebSocket session per participant; REST, pages, HLS files |
//!
//! Every rule about who may do what lives in the room's state machine: a command from an actor
//! goes in, events (who is told what) and effects (what the rest of the server must do) come
//! out, or a refusal with a stable code. No I/O, no clock of its own, no async:
//!
//! ```
//! use stoa::control::{Delivery, ParticipantId, Role, RoomId};
//! use stoa::room::{Actor, Command, ConnectionId, Effect, EventKind, RoomLimits, RoomState};
//!
//! let limits = RoomLimits {
//!     max_participants: 100,
//!     max_stage: 8,
//!     resume_grace_ms: 20_000,
//!     webrtc_audience_cap: None,
//! };
//! let mut room = RoomState::new(RoomId::parse("rm_FridayJam0000000").unwrap(), limits, 0);
//! let ada = ParticipantId::parse("pt_Ada0000000000000").unwrap();
//! let sam = ParticipantId::parse("pt_Sam0000000000000").unwrap();
//! for (n, (who, role)) in [(&ada, Role::Moderator), (&sam, Role::Speaker)].into_iter().enumerate() {
//!     let join = Command::Join {
//!         display_name: "someone".into(),
//!         role,
//!         delivery: Delivery::Webrtc,
//!         connection: ConnectionId(n as u64),
//!         resume_nonce: n as u64,
//!     };
//!     room.apply(&Actor::Participant(who.clone()), join, 0).unwrap();
//! }
//!
//! // Ada, a moderator, mutes Sam: everyone is told, and media must stop forwarding Sam.
//! let out = room
//!     .apply(&Actor::Participant(ada.clone()), Command::Mute { target: sam.clone() }, 1_000)
//!     .unwrap();
//! assert!(matches!(out.events[0].kind, EventKind::Muted { .. }));
//! assert!(out.effects.iter().any(|e| matches!(
//!     e,
//!     Effect::SendPermission { participant, allowed: false } if *participant == sam
//! )));
//!
//! // Sam may not mute Ada: a speaker does not moderate.
//! let refused = room
//!     .apply(&Actor::Participant(sam.clone()), Command::Mute { target: ada.clone() }, 2_000)
//!     .unwrap_err();
//! assert_eq!(refused.code(), "not_permitted");
//! ```
//!
//! # The life of a mute, from click to packet
//!
//! 1. Ada clicks *Mute* in Sam's menu. The web client (`client-web/people.js`) offers it
//!    because the permission table (`client-web/permissions.json`, written from
//!    [`room::permissions`]) lets a moderator mute someone on stage, and sends
//!    `{"type":"mute","id":7,"participant":"pt_…"}` on Ada's WebSocket.
//! 2. Ada's [`signal`] session decodes it with [`wire`] (bounded, strictly typed; a bad message
//!    gets an `error` with a stable code) and asks Ada's room task: `Command::Mute`.
//! 3. The room task ([`room::actor`]) runs [`room::RoomState::apply`]. The state machine checks
//!    the table and the standing (Sam on stage, not already muted) and returns the `muted` event
//!    for everyone and `Effect::SendPermission { allowed: false }` for Sam.
//! 4. The task carries the outcome out: the event is encoded once and the same bytes go to every
//!    socket in the room (then Ada's `ok`, after the events her request caused); the effect
//!    becomes [`media::Media::set_send_permission`], a control message to the worker that holds
//!    Sam's WebRTC connection; an audit line is written to the store.
//! 5. The worker sets Sam's connection's `may_send` to false. From the next packet on, Sam's
//!    audio is dropped right after decryption, before any listener or the broadcast mix sees it
//!    (counted in `stoa_media_dropped_total{reason="not_allowed"}`): nobody hears Sam, whatever
//!    Sam's browser does, and unmuting needs no renegotiation. The slots Sam held pass to the
//!    next loudest speakers.
//! 6. Everyone's client applies the `muted` event to its copy of the room and redraws.

pub mod api;
pub mod broadcast;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod http_client;
// The fuzz targets' harness: built for `fuzz/` (which turns the feature on) and for unit tests,
// never into a release build.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod layering;
pub mod media;
pub mod metrics;
pub mod recording;
pub mod room;
pub mod server;
pub mod session;
pub mod signal;
pub mod webhooks;
pub mod wire;

pub use clock::Clock;
pub use config::Config;
pub use server::{RunningServer, start};
