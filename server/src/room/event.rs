//! What a room answers to a command: events for people (with who may see each one) and effects
//! for the edges (close a socket, persist a ban, audit, media rights). Data only; nothing sends.

use serde::Serialize;

use crate::control::{ParticipantId, Role};
use crate::room::{Actor, ConnectionId, ParticipantView, RecordingOptions};

/// The result of an accepted command. Both lists may be empty (an idempotent repeat).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub effects: Vec<Effect>,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.effects.is_empty()
    }

    pub(crate) fn event(&mut self, audience: Audience, kind: EventKind) {
        self.events.push(Event { audience, kind });
    }

    pub(crate) fn effect(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

/// Who receives an event, resolved by the room task against the live roles after the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    /// Every participant whose live role is moderator, on stage or not.
    Moderators,
    /// Moderators and one more participant, who is usually the subject of the event.
    ModeratorsAnd(ParticipantId),
    Only(ParticipantId),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub audience: Audience,
    /// What goes on the wire (serialise this, not the `Event`).
    pub kind: EventKind,
}

/// Events carry the subject's whole view after the change, so a client that never saw that
/// participant (a listener who just became visible) can show them at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    ParticipantJoined {
        participant: ParticipantView,
    },
    ParticipantLeft {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    PresenceChanged {
        participant: ParticipantView,
    },
    HandRaised {
        participant: ParticipantView,
    },
    HandLowered {
        participant: ParticipantView,
        by: Actor,
    },
    InvitedToStage {
        participant: ParticipantId,
        by: Actor,
    },
    InvitationCancelled {
        participant: ParticipantId,
        by: Actor,
    },
    InvitationDeclined {
        participant: ParticipantId,
    },
    /// An accepted invitation, or a moderator stepping up.
    JoinedStage {
        participant: ParticipantView,
    },
    /// Left by themselves (`by` is them) or moved to the audience by a moderator.
    LeftStage {
        participant: ParticipantView,
        by: Actor,
    },
    Muted {
        participant: ParticipantView,
        by: Actor,
    },
    Unmuted {
        participant: ParticipantView,
    },
    RoleChanged {
        participant: ParticipantView,
        by: Actor,
    },
    /// Loudest first; sent when the set of speakers changes, not on every level report.
    ActiveSpeakers {
        speakers: Vec<ParticipantId>,
    },
    RoomEnded {
        by: Actor,
    },
    /// The room's mix is recorded from now on.
    RecordingStarted {
        by: Actor,
    },
    /// It is no longer recorded (`by` is `system` when the recorder stopped by itself).
    RecordingStopped {
        by: Actor,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Left,
    Removed,
    Banned,
    /// Their connection dropped and they did not come back within the grace period.
    TimedOut,
}

/// Work for the edges, in the order given. Each one says all the edges need to carry it out:
/// the room task adds no context of its own.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Close this signaling connection with this reason; a connection already gone is ignored.
    CloseConnection {
        participant: ParticipantId,
        connection: ConnectionId,
        reason: CloseReason,
    },
    /// Their role changed to or from moderator, which changes what they may see: send them a
    /// fresh `snapshot_for` (it includes or drops the audience list).
    RefreshSnapshot { participant: ParticipantId },
    /// Media: may this participant send audio now (on stage, not muted, connected)? Sent on
    /// every change, including to false when they leave.
    SendPermission {
        participant: ParticipantId,
        allowed: bool,
    },
    /// Media: they left the room; close their WebRTC connection.
    CloseMedia { participant: ParticipantId },
    /// Media: the room ended; close every connection it has.
    CloseRoomMedia,
    /// They were removed: write it down, so that session tokens issued before now stop working
    /// (they may come back only by redeeming an invite again).
    RecordRemoval { participant: ParticipantId },
    /// The room changed their role: write it down, so that a session token issued earlier
    /// cannot bring back the old role (on a rejoin, or on REST), even after the room is gone.
    RecordRole {
        participant: ParticipantId,
        role: Role,
    },
    /// Keep this identity out of the room for good; `revoke_invite` also revokes the invite it
    /// came through. `by` is who banned them.
    PersistBan {
        participant: ParticipantId,
        by: Actor,
        revoke_invite: bool,
    },
    /// The room ended: record it with its audit line (`room.ended`, `by`, how many people were
    /// in), both in one write. A room the store already had ended (a racing `DELETE` that wrote
    /// its own line) is left as it is, so the end is recorded once.
    PersistRoomEnded { by: Actor, participants: usize },
    /// Start recording the room's mix (the recorder reports `RecordingLost` if it cannot).
    StartRecording(RecordingOptions),
    /// Stop recording it, and close the file.
    StopRecording,
    /// A line in the recording's timeline, loudest first: who speaks as the recording starts
    /// (`from_start`), or who speaks after a change while it runs, made at `at_ms`.
    RecordSpeakers {
        speakers: Vec<ParticipantId>,
        from_start: bool,
        at_ms: u64,
    },
    /// One line in the room's audit log, for every moderation action whoever did it.
    Audit {
        actor: Actor,
        action: AuditAction,
        target: Option<ParticipantId>,
        detail: serde_json::Value,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// They left the room by asking to.
    Left,
    /// The same identity connected again elsewhere.
    Replaced,
    Removed,
    Banned,
    RoomEnded,
}

impl CloseReason {
    /// Stable: sent to the client before the socket closes.
    pub fn code(self) -> &'static str {
        match self {
            CloseReason::Left => "left",
            CloseReason::Replaced => "replaced",
            CloseReason::Removed => "removed",
            CloseReason::Banned => "banned",
            CloseReason::RoomEnded => "room_ended",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    LowerHand,
    InviteToStage,
    CancelInvitation,
    MoveToAudience,
    Mute,
    Remove,
    Ban,
    Promote,
    Demote,
    StartRecording,
    StopRecording,
}

impl AuditAction {
    /// Stable: stored in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::LowerHand => "participant.hand_lowered",
            AuditAction::InviteToStage => "participant.invited_to_stage",
            AuditAction::CancelInvitation => "participant.invitation_cancelled",
            AuditAction::MoveToAudience => "participant.moved_to_audience",
            AuditAction::Mute => "participant.muted",
            AuditAction::Remove => "participant.removed",
            AuditAction::Ban => "participant.banned",
            AuditAction::Promote => "participant.promoted",
            AuditAction::Demote => "participant.demoted",
            AuditAction::StartRecording => "recording.started",
            AuditAction::StopRecording => "recording.stopped",
        }
    }
}
