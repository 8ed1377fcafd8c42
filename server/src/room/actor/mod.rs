//! The live room's task: one tokio task per room owning its `RoomState`, fed through a queue,
//! and the map that finds it by id. It carries out what the state machine decided; it decides
//! nothing itself.
//!
//! - `rooms.rs`: the map of live rooms, and the handles callers send through;
//! - `task.rs`: the loop: messages in, the state machine applied, slow sockets let go;
//! - `fanout.rs`: events and replies encoded once and queued to the sockets that may see them;
//! - `persist.rs`: bans, roles, removals, the end and the audit log, as records;
//! - `hooks.rs`: webhook events derived from what the room decided, in one place;
//! - `records.rs`: the room's writer: its records written to the store in order, off the task;
//! - `media.rs`: offers, send rights and closes handed to media;
//! - `keep.rs`: in a cluster, the room's live state kept in Redis for the next home, and taken
//!   back from there;
//! - the [`Recorder`]: recordings started and stopped, and the speakers' timeline.

mod fanout;
mod hooks;
mod keep;
mod media;
mod persist;
mod records;
mod rooms;
mod task;

use tokio::sync::{mpsc, oneshot};

use super::{Actor, Command, ConnectionId, ParticipantView, RecordingOptions, Refusal};
use crate::control::{Delivery, ParticipantId, Role};
use crate::wire::{RequestId, Text};

pub use media::answer_text;
pub use rooms::{LiveRooms, RoomHandle};

use std::future::Future;
use std::pin::Pin;

use crate::control::RoomId;

/// A future a [`Recorder`] returns.
pub type RecorderFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What writes a room's recording (the `recording` module, above this layer). The room
/// decides when; the recorder does it, and reports a recording that stopped by itself
/// through [`LiveRooms::recording_lost`].
pub trait Recorder: Send + Sync + 'static {
    /// Starts recording the room's mix; an error says why it could not (logged; the room is
    /// told the recording stopped).
    fn start<'a>(
        &'a self,
        room: &'a RoomId,
        options: RecordingOptions,
    ) -> RecorderFuture<'a, Result<(), String>>;
    /// Stops it and closes its file; returns once the file is closed and its row says so.
    /// Called after the room's own records of the stop are written, so that what the
    /// recorder writes (`recording.ready`) follows them.
    fn stop<'a>(&'a self, room: &'a RoomId) -> RecorderFuture<'a, ()>;
    /// Who speaks now, loudest first, for the recording's timeline: as it starts
    /// (`from_start`), or after a change that happened at `at_ms` (the room's clock; a
    /// moment ago when media heard it). Must not block.
    fn speakers(&self, room: &RoomId, speakers: &[ParticipantId], from_start: bool, at_ms: u64);
    /// The room became live on this node (`true`) or stopped being live (`false`): its last
    /// seconds may be kept for clips meanwhile. Must not block.
    fn live(&self, _room: &RoomId, _live: bool) {}
}

/// Who counts the room's anonymous listeners: those on its listen links, known only by their
/// players' heartbeats (the `broadcast` module, above this layer). Read a few times a second;
/// must not block.
pub trait AnonymousListeners: Send + Sync + 'static {
    /// Anonymous listeners of the room heard from in the last minute.
    fn count(&self, room: &RoomId) -> u32;
}

/// A server without listen links (unit tests of the room task).
pub struct NoAnonymousListeners;

impl AnonymousListeners for NoAnonymousListeners {
    fn count(&self, _: &RoomId) -> u32 {
        0
    }
}

/// A server that records nothing (unit tests of the room task).
pub struct NoRecorder;

impl Recorder for NoRecorder {
    fn start<'a>(
        &'a self,
        _: &'a RoomId,
        _: RecordingOptions,
    ) -> RecorderFuture<'a, Result<(), String>> {
        Box::pin(async { Err("this server does not record".to_owned()) })
    }

    fn stop<'a>(&'a self, _: &'a RoomId) -> RecorderFuture<'a, ()> {
        Box::pin(async {})
    }

    fn speakers(&self, _: &RoomId, _: &[ParticipantId], _: bool, _: u64) {}
}

/// What a room sends to one signaling socket.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded message; the same bytes may be queued to many sockets.
    Text(Text),
    /// Close the socket with this WebSocket close code and reason code.
    Close { code: u16, reason: &'static str },
}

pub type Outbox = mpsc::Sender<Outbound>;

/// A socket asking to join (or resume its place in) a live room.
pub struct Connect {
    pub participant: ParticipantId,
    pub display_name: String,
    /// The role to join with: the token's, or the one a live room gave this identity since.
    pub role: Role,
    /// How the token says they hear the room (the room keeps it for listeners only).
    pub delivery: Delivery,
    /// `Some(nonce)` to resume: the nonce of the resume token presented.
    pub resume: Option<u64>,
    /// The nonce inside the resume token this connection's welcome hands out.
    pub resume_nonce: u64,
    pub connection: ConnectionId,
    pub outbox: Outbox,
    pub request_id: Option<RequestId>,
    pub resume_token: String,
    /// Another node opened this socket as an edge of the room: the person's media connection
    /// is on that node, not here.
    pub via_edge: bool,
}

#[derive(Debug)]
pub enum ConnectError {
    Refused(Refusal),
    /// The room is not live and the server already runs `max_live_rooms` rooms.
    TooManyRooms,
    /// The server is stopping: its rooms were closed, and none starts again.
    Stopping,
}

/// Why a REST call could not act on the live room.
#[derive(Debug)]
pub enum LiveError {
    NotLive,
    Refused(Refusal),
    /// Done in the room, but its records could not be written yet: the store is unavailable
    /// (they stay queued and are written when it is back) or the room's queue is full.
    Store(crate::control::ControlError),
}

/// What reaches a room's task through its queue.
enum RoomMsg {
    Connect(Box<Connect>, oneshot::Sender<Result<(), ConnectOutcome>>),
    Disconnect {
        participant: ParticipantId,
        connection: ConnectionId,
    },
    FromSocket {
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        command: Command,
    },
    ListAudience {
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        after: Option<ParticipantId>,
        limit: usize,
    },
    Rest {
        actor: Actor,
        command: Command,
        reply: oneshot::Sender<Result<(), LiveError>>,
    },
    Participants {
        after: Option<ParticipantId>,
        limit: usize,
        reply: oneshot::Sender<(Vec<ParticipantView>, Option<ParticipantId>)>,
    },
    /// Who the participant on `connection` is in the room now (for a renewed session token);
    /// `None` if that connection no longer speaks for them.
    Whoami {
        participant: ParticipantId,
        connection: ConnectionId,
        reply: oneshot::Sender<Option<Whoami>>,
    },
    /// The participant's WebRTC offer; the answer goes out through their socket.
    MediaOffer {
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        sdp: String,
    },
    /// From media: who is speaking, loudest first, as they have been since `heard`.
    Speaking {
        levels: Vec<(ParticipantId, u8)>,
        heard: std::time::Instant,
    },
    /// From the recorder: the recording stopped by itself.
    RecordingLost,
    /// The room's own webhook endpoint was set (or deleted): events are made from now on (or
    /// only if the server has an endpoint). `done` once the room took it in.
    Webhooks {
        room_endpoint: bool,
        done: oneshot::Sender<()>,
    },
    /// The server is stopping: tell every socket why, then end the task. With a node's
    /// signaling address, its people are sent there (`moved`): the room goes on on that node.
    Shutdown {
        moved_to: Option<std::sync::Arc<str>>,
    },
}

/// A participant as the room sees them now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whoami {
    pub role: Role,
    pub display_name: String,
    pub delivery: Delivery,
}

enum ConnectOutcome {
    Failed(ConnectError),
    /// The room task was shutting down; start a new one and try again.
    Gone(Box<Connect>),
}
