//! One participant's live state in a room, and the view of it that clients and tools see.
//! Only `RoomState` changes a participant, so the invariants below hold between commands.

use serde::{Serialize, Serializer};

use crate::control::{Delivery, ParticipantId, Role};
use crate::room::{ConnectionId, Refusal};

/// Invariants kept by `RoomState`: a speaker is always on stage and a listener never is; only a
/// listener has a raised hand or a pending invitation; only someone on stage is muted or
/// speaking, and speaking implies `may_send`; only a listener hears the broadcast, and whoever
/// stops being a listener is on WebRTC from then on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub id: ParticipantId,
    pub display_name: String,
    pub role: Role,
    /// How they hear the room. Media offers are refused on the broadcast tier.
    pub delivery: Delivery,
    pub on_stage: bool,
    pub hand_raised: bool,
    pub muted: bool,
    /// A moderator invited this listener to the stage and they have not answered yet.
    pub invited: bool,
    pub presence: Presence,
    /// The signaling connection that currently speaks for this identity.
    pub connection: ConnectionId,
    /// The nonce of the one resume token that may take this identity back (the token handed
    /// to `connection`); any other, older one is refused.
    pub resume_nonce: u64,
    pub joined_at_ms: u64,
    pub speaking: bool,
    /// When the hand last went up, for the cooldown between raises.
    pub hand_raised_at_ms: Option<u64>,
}

impl Participant {
    /// Whether media may accept audio from them right now.
    pub fn may_send(&self) -> bool {
        self.on_stage && !self.muted && self.presence == Presence::Connected
    }

    /// Whether media may set up a WebRTC connection for them: not while they hear the
    /// broadcast (they are brought onto WebRTC when they come on stage).
    pub fn may_connect_media(&self) -> Result<(), Refusal> {
        match self.delivery {
            Delivery::Webrtc => Ok(()),
            Delivery::Broadcast => Err(Refusal::BroadcastDelivery),
        }
    }

    /// Everyone in the room follows the stage and the raised hands; the rest of the audience
    /// is followed by moderators only, so a room of thousands is not flooded by listeners.
    pub fn is_public(&self) -> bool {
        self.on_stage || self.hand_raised
    }

    /// Gone for good once the grace period after a dropped connection has run out.
    pub fn expired(&self, now_ms: u64) -> bool {
        matches!(self.presence, Presence::Reconnecting { deadline_ms } if deadline_ms <= now_ms)
    }

    pub fn view(&self) -> ParticipantView {
        ParticipantView {
            id: self.id.clone(),
            display_name: self.display_name.clone(),
            role: self.role,
            on_stage: self.on_stage,
            hand_raised: self.hand_raised,
            muted: self.muted,
            speaking: self.speaking,
            presence: self.presence,
        }
    }
}

/// Whether the participant's signaling connection is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Connected,
    /// The socket dropped; they keep their place until `deadline_ms` unless they resume.
    Reconnecting {
        deadline_ms: u64,
    },
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Connected => "connected",
            Presence::Reconnecting { .. } => "reconnecting",
        }
    }
}

/// Clients see `"connected"` or `"reconnecting"`; the deadline is the server's business.
impl Serialize for Presence {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A participant as sent to clients and tools (signaling and REST alike).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ParticipantView {
    pub id: ParticipantId,
    pub display_name: String,
    pub role: Role,
    pub on_stage: bool,
    pub hand_raised: bool,
    pub muted: bool,
    pub speaking: bool,
    /// `connected` or `reconnecting`.
    #[schema(value_type = String, example = "connected")]
    pub presence: Presence,
}
