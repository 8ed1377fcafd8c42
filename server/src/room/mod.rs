//! The live room: a pure state machine that takes a command and returns events and effects.
//! No I/O, clock, randomness or async here; the room task and the edges carry the results out.

pub mod actor;
pub mod command;
pub mod event;
pub mod participant;
pub mod permissions;
pub mod refusal;
pub mod saved;
pub mod snapshot;
pub mod state;

pub use actor::{
    AnonymousListeners, Connect, ConnectError, LiveError, LiveRooms, NoRecorder, Outbound, Outbox,
    Recorder, RecorderFuture, RoomHandle, answer_text,
};
pub use command::{Actor, Command, ConnectionId, RecordingOptions};
pub use event::{
    Audience, AuditAction, CloseReason, Effect, Event, EventKind, LeaveReason, Outcome,
};
pub use participant::{Participant, ParticipantView, Presence};
pub use refusal::Refusal;
pub use saved::{SavedParticipant, SavedRefusal, SavedRoom};
pub use snapshot::{AudiencePage, Snapshot};
pub use state::{RoomLimits, RoomState};
