//! A Rust client for Stoa live audio rooms (the self-hosted server in this repository), for
//! bots and integrations: join a room with an invite link, hear it (decoded PCM with the
//! speaker's id), speak into it (PCM in, Opus out), raise a hand and accept an invitation to
//! the stage, moderate with a moderator's link, and follow the room as typed events. The
//! connection resumes by itself after a network hiccup.
//!
//! # Quick start: a bot in a page
//!
//! A moderator hands out an invite link; the bot joins with it, raises its hand, and once
//! invited on stage accepts and plays a tone:
//!
//! ```no_run
//! use stoa_client::{Event, InviteLink, JoinOptions, Room, audio};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), stoa_client::Error> {
//!     let link = InviteLink::parse("http://127.0.0.1:8080/i/Tq3v0Gd6pWcJm2xYb1Lk9A")?;
//!     let mut room = Room::join(&link, JoinOptions::new("Greeter")).await?;
//!     room.raise_hand().await?;
//!     while let Some(event) = room.next_event().await {
//!         match event {
//!             // A moderator asks us up: accept, then say something.
//!             Event::InvitedToStage { participant, .. } if &participant == room.me() => {
//!                 room.accept_invitation().await?;
//!                 room.speak(audio::AudioSource::tone(440.0, -20.0)).await?;
//!             }
//!             Event::Closed { reason, .. } => println!("the room is over for us: {reason}"),
//!             _ => {}
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Hearing it, frame by frame:
//!
//! ```no_run
//! # async fn ears(room: &stoa_client::Room) -> Result<(), stoa_client::Error> {
//! let mut listener = room.listen()?;
//! while let Some(frame) = listener.next().await {
//!     let level = stoa_client::audio::dbov(&frame.pcm);
//!     println!("{:?} on slot {}: {level:.0} dBov", frame.speaker, frame.slot);
//! }
//! # Ok(()) }
//! ```
//!
//! # How it fits together
//!
//! - [`InviteLink`] and [`redeem`](join::redeem): `POST /api/v1/join` turns a link into a
//!   session token, a participant id and the signaling URL.
//! - [`Room`]: the participant. A task of its own reads the signaling socket (so keep-alive
//!   pings are answered whatever your code does), keeps a [`RoomView`] current, matches
//!   answers to requests and resumes a dropped connection with the server's resume token.
//! - [`media::MediaPeer`]: the WebRTC side (the `webrtc` crate, Opus through libopus): one
//!   audio section per slot the server offers (the loudest few speakers), the first one also
//!   the microphone once on stage.
//! - [`signal`]: the socket and one session on it, without a task, for tools that want to
//!   drive the protocol step by step; [`protocol`]: the messages as types.
//! - [`api::Api`]: the REST API with the operator key or a moderator's token (rooms, invites).
//! - [`fleet`]: many `rtc` sans-IO peers on one thread, for load tools (Linux).
//!
//! # Examples
//!
//! Three complete bots in `examples/`, each a `run` function plus a `main` that parses its
//! arguments (the end-to-end tests call the same `run` against a real server):
//!
//! - `stage_player`: waits with its hand raised; invited on stage, plays a WAV file once.
//! - `recorder`: writes what it hears, every slot mixed, to a WAV file.
//! - `loudness_moderator`: with a moderator's link, mutes whoever stays louder than a
//!   threshold.
//!
//! ```text
//! cargo run --release -p stoa-client --example recorder -- http://127.0.0.1:8080/i/<code> room.wav 60
//! ```
//!
//! The protocol itself is described, with transcripts, in the Stoa repository's
//! `docs/protocol.md`; the REST API in `docs/api.md`.
//!
//! # Limits
//!
//! Plain `http://` and `ws://` only for now (put a TLS-terminating proxy in front of a bot, or
//! run it next to the server). Audio is 48 kHz mono 16-bit PCM in 20 ms frames.

#![warn(missing_docs)]

pub mod api;
pub mod audio;
mod error;
#[cfg(target_os = "linux")]
pub mod fleet;
pub mod join;
pub mod media;
pub mod protocol;
mod room;
pub mod signal;
mod view;

pub use error::Error;
pub use join::InviteLink;
pub use protocol::{By, Event, Participant, ParticipantId, Role};
pub use room::{AudioFrame, JoinOptions, Listener, Room};
pub use signal::Session;
pub use view::RoomView;
