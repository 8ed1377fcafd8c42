//! Why a room refused a command, with a stable machine-readable code for clients and tools.
//! Rendering (problem+json, signaling errors, HTTP status) belongs to the edges, not here.

use std::fmt;

/// A refused command changed nothing in the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The actor's live role does not allow this command.
    NotPermitted,
    /// The actor is a participant who is not (or no longer) in the room.
    NotInRoom,
    /// The target of the command is not in the room.
    ParticipantNotFound,
    /// A command that acts on someone else named the actor themselves.
    InvalidTarget,
    /// The command needs someone on the stage.
    NotOnStage,
    /// The command needs a listener (raising a hand, being invited to speak).
    NotAListener,
    /// Accepting or declining with no pending invitation.
    NoInvitation,
    StageFull,
    RoomFull,
    /// The last moderator in the room cannot step down.
    LastModerator,
    /// A hand raised again too soon after the last raise: every raise reaches the whole room,
    /// so one listener toggling their hand must not flood thousands of others.
    TooSoon,
    /// This identity was banned from the room.
    Banned,
    RoomEnded,
    /// A media offer from someone who hears the room over the broadcast tier: they get a
    /// WebRTC connection once they come on stage.
    BroadcastDelivery,
}

impl Refusal {
    /// Stable across releases: clients and scripts match on it.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NotPermitted => "not_permitted",
            Refusal::NotInRoom => "not_in_room",
            Refusal::ParticipantNotFound => "participant_not_found",
            Refusal::InvalidTarget => "invalid_target",
            Refusal::NotOnStage => "not_on_stage",
            Refusal::NotAListener => "not_a_listener",
            Refusal::NoInvitation => "no_invitation",
            Refusal::StageFull => "stage_full",
            Refusal::RoomFull => "room_full",
            Refusal::LastModerator => "last_moderator",
            Refusal::TooSoon => "too_soon",
            Refusal::Banned => "banned",
            Refusal::RoomEnded => "room_ended",
            Refusal::BroadcastDelivery => "broadcast_delivery",
        }
    }

    /// For people; may be reworded at any time.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotPermitted => "your role in this room does not allow that",
            Refusal::NotInRoom => "you are not in this room",
            Refusal::ParticipantNotFound => "that participant is not in this room",
            Refusal::InvalidTarget => "this action cannot be applied to yourself",
            Refusal::NotOnStage => "that needs someone on the stage",
            Refusal::NotAListener => "that is only for listeners",
            Refusal::NoInvitation => "there is no pending invitation to the stage",
            Refusal::StageFull => "the stage is full",
            Refusal::RoomFull => "the room is full",
            Refusal::LastModerator => "the last moderator in the room cannot step down",
            Refusal::TooSoon => "wait a moment before raising your hand again",
            Refusal::Banned => "you are banned from this room",
            Refusal::RoomEnded => "the room has ended",
            Refusal::BroadcastDelivery => {
                "you hear this room over its broadcast; media connections come with the stage"
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Refusal {}
