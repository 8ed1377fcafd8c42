//! The JSON shapes the API speaks: request bodies (strict: unknown fields refused) and
//! answers. Conversions from domain types live here; decisions do not.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::clock::rfc3339;
use crate::control::{
    AuditEvent, Delivery, Invite, ParticipantId, Recording, RecordingId, RecordingState,
    ReplayLink, Role, Room, RoomId,
};
use crate::recording::SpeakersAt;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// 1 to 100 characters, no control characters.
    pub title: String,
    /// Most people in the room at once (1 to 100000); default: no room-specific limit.
    pub max_participants: Option<u32>,
    /// Most people on stage at once (1 to 100).
    pub max_stage: Option<u32>,
    /// Most listeners on WebRTC at once (1 to 100000); listeners who join past it hear the
    /// room over its broadcast. Default: the server's `[broadcast] webrtc_audience_cap`.
    pub webrtc_audience_cap: Option<u32>,
    /// Record whenever the room goes live. Default: the server's
    /// `[recording] record_by_default`.
    pub record_by_default: Option<bool>,
    /// Days its recordings and live clips are kept (0 to 36500; 0 keeps them). Default: the
    /// server's `[recording] retention_days`.
    pub retention_days: Option<u32>,
}

/// `PATCH /api/v1/rooms/{room}`: each field given changes; `null` goes back to the server's
/// setting; a field left out stays as it is.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoom {
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = Option<bool>)]
    pub record_by_default: Option<Option<bool>>,
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = Option<u32>)]
    pub retention_days: Option<Option<u32>>,
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
fn given<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomView {
    pub id: RoomId,
    pub title: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; set once the room was ended.
    pub ended_at: Option<String>,
    pub live: bool,
    pub participant_count: u32,
    /// Listeners on the room's listen links (its public broadcast) heard from in the last
    /// minute; they are not participants.
    pub anonymous_listeners: u32,
    pub max_participants: Option<u32>,
    pub max_stage: Option<u32>,
    pub webrtc_audience_cap: Option<u32>,
    /// The room's own; `null`: the server's `[recording] record_by_default`.
    pub record_by_default: Option<bool>,
    /// The room's own; `null`: the server's `[recording] retention_days`.
    pub retention_days: Option<u32>,
}

impl RoomView {
    pub fn new(room: &Room, live: bool, participant_count: u32) -> Self {
        RoomView {
            id: room.id.clone(),
            title: room.title.clone(),
            created_at: rfc3339(room.created_at_ms),
            ended_at: room.ended_at_ms.map(rfc3339),
            live,
            participant_count,
            anonymous_listeners: 0,
            max_participants: room.limits.max_participants,
            max_stage: room.limits.max_stage,
            webrtc_audience_cap: room.limits.webrtc_audience_cap,
            record_by_default: room.recording.record_by_default,
            retention_days: room.recording.retention_days,
        }
    }
}

/// A room with the people in it right now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomDetail {
    #[serde(flatten)]
    pub room: RoomView,
    pub participants: Vec<ParticipantView>,
}

pub use crate::room::ParticipantView;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvite {
    /// The role the invite grants; default `listener`.
    #[serde(default = "default_role")]
    pub role: Role,
    /// How its people hear the room: `webrtc` (default) or `broadcast` (the stage mixed once,
    /// over LL-HLS; listener invites only).
    #[serde(default)]
    pub delivery: Delivery,
    /// Up to 100 characters, shown to moderators only.
    pub label: Option<String>,
    /// 1 to 1000000; default unlimited.
    pub max_uses: Option<u32>,
    /// 1 s to 1 year; default never expires.
    pub expires_in_secs: Option<u64>,
}

fn default_role() -> Role {
    Role::Listener
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InviteView {
    pub id: String,
    pub room_id: RoomId,
    pub role: Role,
    pub delivery: Delivery,
    pub label: Option<String>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub created_at: String,
}

impl From<&Invite> for InviteView {
    fn from(i: &Invite) -> Self {
        InviteView {
            id: i.id.to_string(),
            room_id: i.room_id.clone(),
            role: i.role,
            delivery: i.delivery,
            label: i.label.clone(),
            max_uses: i.max_uses,
            uses: i.uses,
            expires_at: i.expires_at_ms.map(rfc3339),
            revoked: i.revoked,
            created_at: rfc3339(i.created_at_ms),
        }
    }
}

/// An invite as created: the only time its `code` is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedInviteView {
    #[serde(flatten)]
    pub invite: InviteView,
    pub code: String,
    /// The link to share: `<public url>/i/<code>`.
    pub url: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The invite code, or the whole invite link.
    pub invite: String,
    /// 1 to 40 characters, no control characters.
    pub display_name: String,
    /// The secret from an earlier join's `identity`, to come back as the same participant.
    pub identity: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JoinAnswer {
    /// Session token: present it in the first signaling message.
    pub token: String,
    pub expires_at: String,
    pub participant_id: ParticipantId,
    pub role: Role,
    pub room_id: RoomId,
    pub room_title: String,
    pub display_name: String,
    pub signal_url: String,
    /// Set when the server made a new identity: keep it and send it on the next join.
    pub identity: Option<String>,
    /// How this participant hears the room: `webrtc` (a `media_offer` over signaling) or
    /// `broadcast` (the LL-HLS playlist in `broadcast`; media offers are refused until on stage).
    pub delivery: Delivery,
    /// With `broadcast` delivery: the link to play.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastLink>,
}

/// A link to a room's broadcast.
#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastLink {
    /// The LL-HLS media playlist: give it to any HLS player (or the web client).
    pub playlist_url: String,
    /// When the link stops working (RFC 3339); ask again before then.
    pub expires_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: Role,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Also ban the identity from this room.
    #[serde(default)]
    pub ban: bool,
    /// With `ban`: also revoke the invite they came through.
    #[serde(default)]
    pub revoke_invite: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub at: String,
    /// `operator`, `system` or a participant id.
    pub actor: String,
    /// e.g. `room.created`, `invite.revoked`, `participant.banned`.
    pub action: String,
    pub target: Option<String>,
    pub detail: serde_json::Value,
}

impl From<AuditEvent> for EventView {
    fn from(e: AuditEvent) -> Self {
        EventView {
            id: e.seq,
            at: rfc3339(e.at_ms),
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
        }
    }
}

macro_rules! page_view {
    ($name:ident, $item:ty) => {
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Pass as `cursor` for the next page; null on the last page.
            pub next_cursor: Option<String>,
        }

        impl $name {
            pub fn new(page: crate::control::Page<$item>) -> Self {
                $name {
                    items: page.items,
                    next_cursor: page.next_cursor.map(|c| c.to_string()),
                }
            }
        }
    };
}

page_view!(RoomPage, RoomView);
page_view!(InvitePage, InviteView);
page_view!(EventPage, EventView);
page_view!(RecordingPage, RecordingView);
page_view!(ReplayLinkPage, ReplayLinkView);
page_view!(ListenLinkPage, ListenLinkView);

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateListenLink {
    /// Up to 100 characters, shown to moderators only.
    pub label: Option<String>,
    /// 1 to 31536000 (a year); default: until revoked or the room ends.
    pub expires_in_secs: Option<u64>,
}

/// A listen link: anyone holding it hears the room's broadcast, without joining.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenLinkView {
    pub id: String,
    pub room_id: RoomId,
    pub label: Option<String>,
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub created_at: String,
}

impl From<&crate::control::ListenLink> for ListenLinkView {
    fn from(l: &crate::control::ListenLink) -> Self {
        ListenLinkView {
            id: l.id.to_string(),
            room_id: l.room_id.clone(),
            label: l.label.clone(),
            expires_at: l.expires_at_ms.map(rfc3339),
            revoked: l.revoked,
            created_at: rfc3339(l.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedListenLinkView {
    #[serde(flatten)]
    pub link: ListenLinkView,
    pub code: String,
    /// The link to share: `<public url>/l/<code>`.
    pub url: String,
}

/// What a listen link leads to now: the room's broadcast and where its player reports in.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenView {
    pub room_id: RoomId,
    pub title: String,
    /// The LL-HLS media playlist, valid until `expires_at`: ask this entry point again before.
    pub playlist_url: String,
    pub expires_at: String,
    /// Where the player sends `POST {"client": "<its random id>"}` every `heartbeat_secs`, so
    /// the room counts it in its audience.
    pub heartbeat_url: String,
    pub heartbeat_secs: u64,
}

/// A recording of a room's mix (Ogg Opus, mono, 48 kHz).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingView {
    #[schema(value_type = String)]
    pub id: crate::control::RecordingId,
    #[schema(value_type = String)]
    pub room_id: RoomId,
    /// `recording` while it is written, then `ready` (playable) or `failed`.
    pub state: RecordingState,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Playable audio, in milliseconds (0 until it is finished).
    pub duration_ms: i64,
    pub size_bytes: i64,
    /// The node that holds the file.
    pub node: String,
    /// The audio, with range requests (path from the server's root).
    pub audio_path: String,
}

impl From<Recording> for RecordingView {
    fn from(r: Recording) -> Self {
        RecordingView {
            audio_path: format!("/api/v1/rooms/{}/recordings/{}/audio", r.room_id, r.id),
            id: r.id,
            room_id: r.room_id,
            state: r.state,
            started_at: rfc3339(r.started_at_ms),
            ended_at: r.ended_at_ms.map(rfc3339),
            duration_ms: r.duration_ms,
            size_bytes: r.size_bytes,
            node: r.node,
        }
    }
}

/// How to record, when starting (all optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRecording {
    /// Besides the mix, a track of each speaker's own audio; default `[recording]
    /// speaker_tracks` (false).
    pub speaker_tracks: Option<bool>,
}

/// A recording and who spoke when in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingDetail {
    #[serde(flatten)]
    pub recording: RecordingView,
    /// Each change of who was speaking, from the recording's start: from `at_ms` on, these
    /// were speaking, loudest first (an empty list: nobody).
    pub speakers: Vec<SpeakersAt>,
    /// The display name of each participant the timeline or a track names (the name they
    /// last gave).
    pub names: std::collections::BTreeMap<String, String>,
    /// It was recorded with a track of each speaker.
    pub speaker_tracks: bool,
    /// Those tracks, in the order their speakers were first heard.
    pub tracks: Vec<TrackView>,
    /// Speakers heard once every track was taken: in the mix only.
    #[schema(value_type = Vec<String>)]
    pub untracked: Vec<crate::control::ParticipantId>,
}

/// One speaker's own track of a recording.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackView {
    #[serde(flatten)]
    pub track: crate::recording::tracks::TrackEntry,
    /// Its audio, with range requests (path from the server's root).
    pub audio_path: String,
}
page_view!(ParticipantPage, ParticipantView);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReplayLink {
    /// Up to 100 characters, shown to moderators only.
    pub label: Option<String>,
    /// 1 to 1000000; default unlimited. Each redemption is one use.
    pub max_uses: Option<u32>,
    /// 1 s to 1 year; default never expires.
    pub expires_in_secs: Option<u64>,
}

/// A replay link: opens one recording (its detail, who spoke when, its audio) and nothing
/// else.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayLinkView {
    pub id: String,
    #[schema(value_type = String)]
    pub room_id: RoomId,
    #[schema(value_type = String)]
    pub recording_id: RecordingId,
    pub label: Option<String>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub created_at: String,
}

impl From<&ReplayLink> for ReplayLinkView {
    fn from(l: &ReplayLink) -> Self {
        ReplayLinkView {
            id: l.id.to_string(),
            room_id: l.room_id.clone(),
            recording_id: l.recording_id.clone(),
            label: l.label.clone(),
            max_uses: l.max_uses,
            uses: l.uses,
            expires_at: l.expires_at_ms.map(rfc3339),
            revoked: l.revoked,
            created_at: rfc3339(l.created_at_ms),
        }
    }
}

/// A replay link as made: the only time its `code` is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedReplayLinkView {
    #[serde(flatten)]
    pub link: ReplayLinkView,
    pub code: String,
    /// The link to share: `<public url>/r/<code>`, the replay page.
    pub url: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemReplay {
    /// The replay link's code, or the whole link.
    pub link: String,
}

/// A redeemed replay link: a token that opens its recording, and where.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    /// `Authorization: Bearer <token>` on the recording's detail and audio (or
    /// `?access_token=<token>` where a header cannot be set, as for an `<audio>` element).
    pub token: String,
    pub expires_at: String,
    #[schema(value_type = String)]
    pub room_id: RoomId,
    #[schema(value_type = String)]
    pub recording_id: RecordingId,
    /// The recording's detail (path from the server's root).
    pub recording_path: String,
    /// The audio with the token in the query, for an `<audio>` element.
    pub audio_url: String,
}
