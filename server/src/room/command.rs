//! What can be asked of a live room: who is asking (`Actor`) and what they ask (`Command`).
//! Plain data only: parsing protocol messages and authenticating callers belong to the edges.

use serde::Serialize;

use crate::control::{ParticipantId, Role};

pub use crate::control::Actor;

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
    /// reattached with its live state and its older connection is closed.
    Join {
        display_name: String,
        role: Role,
        connection: ConnectionId,
    },
    /// A new connection for an identity still in the room (within the grace period after a
    /// dropped socket, or while the old socket is not yet known to be dead).
    Resume {
        connection: ConnectionId,
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
    /// Remove and keep them out of this room for good.
    Ban {
        target: ParticipantId,
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
    /// From media: the participants heard speaking since the last report, each with its
    /// RFC 6464 audio level (-dBov: 0 is loudest, 127 silence). Anyone not listed is silent.
    /// System only.
    SetSpeaking {
        levels: Vec<(ParticipantId, u8)>,
    },
}
