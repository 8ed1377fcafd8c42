//! What one participant is shown of a room when they (re)connect, and pages of the audience.
//! Shapes only: `RoomState` fills them in, and hides the audience from non-moderators.

use serde::Serialize;

use crate::control::{Delivery, ParticipantId, RoomId};
use crate::room::ParticipantView;

/// The room as one viewer may see it. Everything public (stage, raised hands, speakers) is
/// always in it; the audience itself only for moderators, since it may be thousands long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub room: RoomId,
    pub you: ParticipantView,
    /// A moderator invited you to the stage and you have not answered yet.
    pub invitation_pending: bool,
    /// `broadcast` while you hear the room over its broadcast tier (LL-HLS); absent on WebRTC.
    #[serde(skip_serializing_if = "Delivery::is_webrtc")]
    pub delivery: Delivery,
    /// In the order they came on stage.
    pub stage: Vec<ParticipantView>,
    /// In the order the hands went up.
    pub raised_hands: Vec<ParticipantView>,
    /// Loudest first.
    pub active_speakers: Vec<ParticipantId>,
    /// The room's mix is being recorded (absent when it is not).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recording: bool,
    /// Everyone not on stage, including moderators in the audience and the anonymous
    /// listeners below.
    pub audience_count: u32,
    /// Of `audience_count`, listeners on the room's listen links (its public broadcast), who
    /// never join; absent when there are none.
    #[serde(skip_serializing_if = "is_zero")]
    pub anonymous: u32,
    /// Moderators only: the first page of everyone not on stage (`next` continues it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<AudiencePage>,
    /// Moderators only: listeners invited to the stage who have not answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_invitations: Option<Vec<ParticipantId>>,
}

/// A slice of the audience in participant-id order; pass `next` back as `after` to go on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AudiencePage {
    pub participants: Vec<ParticipantView>,
    pub next: Option<ParticipantId>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
