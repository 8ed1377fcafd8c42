//! What can be asked of a live room: who is asking (`Actor`) and what they ask (`Command`).
//! Plain data only: parsing protocol messages and authenticating callers belong to the edges.

use serde::Serialize;

use crate::control::{self, Delivery, ParticipantId, Role};

/// Who asks the room for something. What they may do is decided from their live standing in the
/// room (`RoomState::apply`), never from a role the caller claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A participant, through their signaling session.
    Participant(ParticipantId),
    /// The REST API with the operator's key: every moderator action, without being in the room.
    Operator,
    /// The REST API with a moderator's session token. While they are in the room they act as
    /// the participant they are (their live role decides); away from it, with the operator's
    /// reach, since their token proved the role. Either way the audit log names them.
    RestModerator(ParticipantId),
    /// The server itself: the room task's timer (`Tick`), media (`SetSpeaking`). Kept apart so
    /// no client message can ever be mapped onto those commands by mistake.
    System,
}

impl Actor {
    /// The participant acting from inside the room, if that is who this is.
    pub fn participant(&self) -> Option<&ParticipantId> {
        match self {
            Actor::Participant(id) => Some(id),
            Actor::Operator | Actor::RestModerator(_) | Actor::System => None,
        }
    }

    /// Who the audit log and the store name for what this actor did.
    pub fn recorded_as(&self) -> control::Actor {
        match self {
            Actor::Participant(id) | Actor::RestModerator(id) => {
                control::Actor::Participant(id.clone())
            }
            Actor::Operator => control::Actor::Operator,
            Actor::System => control::Actor::System,
        }
    }
}

/// Events name who acted (`by`). A moderator acting over REST from outside the room is shown
/// as the operator: the people in the room have never seen them, and the audit log names them.
impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Actor::Participant(id) => serializer.serialize_str(id.as_str()),
            Actor::Operator | Actor::RestModerator(_) => serializer.serialize_str("operator"),
            Actor::System => serializer.serialize_str("system"),
        }
    }
}

/// One signaling connection, numbered by the edge (a process-wide counter is enough). It lets
/// the room tell a stale "socket dropped" from the live connection that replaced it, and lets
/// the edge close exactly the older socket of an identity that connected twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConnectionId(pub u64);

/// A request to the room. Commands about "myself" take the identity from the `Actor`; commands
/// about someone else name a `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A new signaling connection for the actor. `role` comes from the session token and is
    /// used only when the identity is not already in the room; an identity already present is
    /// reattached with its live state and its older connection is closed. `resume_nonce` is the
    /// nonce of the resume token this connection is given: from now on only that token resumes.
    /// `delivery` too (the token's) is kept only for a listener.
    Join {
        display_name: String,
        role: Role,
        delivery: Delivery,
        connection: ConnectionId,
        resume_nonce: u64,
    },
    /// A new connection for an identity still in the room (within the grace period after a
    /// dropped socket, or while the old socket is not yet known to be dead), by the resume
    /// token whose nonce is `presented`. Only the newest token works, and only once: the new
    /// connection's token (`resume_nonce`) replaces it.
    Resume {
        connection: ConnectionId,
        presented: u64,
        resume_nonce: u64,
    },
    /// The socket `connection` dropped: the participant gets the grace period to resume.
    Disconnect {
        connection: ConnectionId,
    },
    /// The actor leaves for good.
    Leave,
    /// Time passes: participants whose grace period ran out leave. System only.
    Tick,
    RaiseHand,
    /// `None` or the actor's own id: lower one's own hand. Anyone else's: a moderator action.
    LowerHand {
        target: Option<ParticipantId>,
    },
    /// Invite a listener to the stage; they must accept before their microphone is used.
    InviteToStage {
        target: ParticipantId,
    },
    CancelInvitation {
        target: ParticipantId,
    },
    AcceptInvitation,
    DeclineInvitation,
    /// A moderator in the audience steps onto the stage.
    JoinStage,
    /// A speaker becomes a listener; a moderator steps off the stage and stays moderator.
    LeaveStage,
    /// Like `LeaveStage`, done to someone else by a moderator.
    MoveToAudience {
        target: ParticipantId,
    },
    /// Mute someone else on stage; only they can unmute themselves.
    Mute {
        target: ParticipantId,
    },
    MuteSelf,
    Unmute,
    /// Disconnect someone; they may come back by redeeming an invite again (the edge refuses
    /// tokens issued before the removal).
    Remove {
        target: ParticipantId,
    },
    /// Remove and keep them out of this room for good; `revoke_invite` also revokes the invite
    /// they came through, so the link cannot bring them back under a new identity.
    Ban {
        target: ParticipantId,
        revoke_invite: bool,
    },
    /// Make someone a moderator; they keep their place on or off the stage.
    Promote {
        target: ParticipantId,
    },
    /// A moderator becomes a speaker if on stage, else a listener.
    Demote {
        target: ParticipantId,
    },
    /// The REST role call, expressed with the commands above: to listener moves to the audience
    /// (and demotes), a listener to speaker is invited, a moderator to speaker is demoted onto
    /// the stage, anyone to moderator is promoted.
    SetRole {
        target: ParticipantId,
        role: Role,
    },
    /// End the room for everyone.
    End,
    /// Record the room's mix from now on (a repeat while it is recorded changes nothing, its
    /// options included).
    StartRecording(RecordingOptions),
    /// Stop recording it (nothing while it is not recorded).
    StopRecording,
    /// The recording stopped without being asked to (it could not start, the disk failed, the
    /// mix stopped). System only: the recorder's report.
    RecordingLost,
    /// From media: the participants heard speaking since the last report, each with its
    /// RFC 6464 audio level (-dBov: 0 is loudest, 127 silence). Anyone not listed is silent.
    /// They have been so since `heard_at_ms` (when media heard the audio that made it so,
    /// a moment before the report). System only.
    SetSpeaking {
        levels: Vec<(ParticipantId, u8)>,
        heard_at_ms: u64,
    },
}

/// How a recording is made, as asked when it starts; what is not asked is the server's
/// default (`[recording]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecordingOptions {
    /// Besides the mix, a track of each speaker's own audio.
    pub speaker_tracks: Option<bool>,
}
