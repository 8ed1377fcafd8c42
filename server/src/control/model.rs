//! Plain data the control plane stores and returns: rooms, invites, redemptions, audit
//! events, pages. No behaviour beyond small derived facts.

use super::{
    Delivery, IdentitySecret, InviteCode, InviteId, ParticipantId, RecordingId, ReplayLinkId, Role,
    RoomId,
};

/// Optional per-room bounds; `None` means the server-wide default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomLimits {
    pub max_participants: Option<u32>,
    pub max_stage: Option<u32>,
    /// Listeners on WebRTC at once; those who join past it hear the broadcast.
    pub webrtc_audience_cap: Option<u32>,
}

/// A room's own recording policy; `None` means the server's `[recording]` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordingPolicy {
    /// A recording starts whenever the room goes live.
    pub record_by_default: Option<bool>,
    /// Days its recordings and live clips are kept; 0 keeps them.
    pub retention_days: Option<u32>,
}

/// The longest retention a room may ask for, as the server's own.
pub const MAX_RETENTION_DAYS: u32 = crate::config::MAX_RETENTION_DAYS;

impl RecordingPolicy {
    /// Whether the room records when it goes live, given the server's default.
    pub fn records_by_default(&self, server: bool) -> bool {
        self.record_by_default.unwrap_or(server)
    }

    /// A change to a policy: `Some(None)` goes back to the server's setting, `None` keeps it.
    pub fn changed(self, change: &RecordingPolicyChange) -> RecordingPolicy {
        RecordingPolicy {
            record_by_default: change.record_by_default.unwrap_or(self.record_by_default),
            retention_days: change.retention_days.unwrap_or(self.retention_days),
        }
    }
}

/// What `PATCH /rooms/{room}` changes of a room's recording policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordingPolicyChange {
    pub record_by_default: Option<Option<bool>>,
    pub retention_days: Option<Option<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub title: String,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub limits: RoomLimits,
    pub recording: RecordingPolicy,
}

impl Room {
    pub fn is_ended(&self) -> bool {
        self.ended_at_ms.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct NewRoom {
    pub title: String,
    pub limits: RoomLimits,
    pub recording: RecordingPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub id: InviteId,
    pub room_id: RoomId,
    pub role: Role,
    /// How its listeners hear the room.
    pub delivery: Delivery,
    pub label: Option<String>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug)]
pub struct NewInvite {
    pub role: Role,
    /// `Broadcast` only with `Role::Listener`.
    pub delivery: Delivery,
    pub label: Option<String>,
    pub max_uses: Option<u32>,
    pub expires_in_secs: Option<u64>,
}

/// The result of redeeming an invite: who the person is in this room, and as what.
#[derive(Clone, Debug)]
pub struct Redemption {
    pub room: Room,
    pub participant_id: ParticipantId,
    pub display_name: String,
    pub role: Role,
    /// The invite's delivery, if the role allows it (see [`Delivery::for_role`]).
    pub delivery: Delivery,
    /// The identity's token generation this redemption started; its session token carries it.
    pub generation: i64,
    pub invite_id: InviteId,
    /// Present when the server made a new identity: the client must keep it to come back
    /// as the same participant.
    pub new_identity: Option<IdentitySecret>,
}

/// What live rooms decided about an identity, which outranks what its session token says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    pub banned: bool,
    /// The role a live room last gave it, if any…
    pub live_role: Option<Role>,
    /// …and the identity's token generation when it did: tokens of this generation or older
    /// act with the live role whatever role they claim.
    pub live_role_generation: i64,
    /// When it was last removed; tokens issued before then are void.
    pub removed_at_ms: Option<i64>,
    /// The identity's token generation now (its latest redemption's): what a session token
    /// renewed for it carries.
    pub token_generation: i64,
}

impl Standing {
    /// The role to act with, given the role a token claims and the generation it was issued
    /// at. A token issued before the room last changed the role gets the room's role; only a
    /// token from a later redemption carries its own (which that redemption already derived
    /// from the live role and the invite's role).
    pub fn role(&self, token_role: Role, token_generation: i64) -> Role {
        match self.live_role {
            Some(live) if token_generation <= self.live_role_generation => live,
            _ => token_role,
        }
    }

    /// Whether a token issued at `issued_at_ms` was voided by a later removal.
    pub fn removed_since(&self, issued_at_ms: i64) -> bool {
        self.removed_at_ms.is_some_and(|at| at >= issued_at_ms)
    }
}

/// A freshly created invite and its code, shown once.
#[derive(Clone, Debug)]
pub struct CreatedInvite {
    pub invite: Invite,
    pub code: InviteCode,
}

/// A replay link: like an invite, but role-less and for one recording, which it lets its
/// holder play (detail, who spoke when, audio) and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayLink {
    pub id: ReplayLinkId,
    pub room_id: RoomId,
    pub recording_id: RecordingId,
    pub label: Option<String>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug)]
pub struct NewReplayLink {
    pub label: Option<String>,
    pub max_uses: Option<u32>,
    pub expires_in_secs: Option<u64>,
}

/// A freshly made replay link and its code, shown once.
#[derive(Clone, Debug)]
pub struct CreatedReplayLink {
    pub link: ReplayLink,
    pub code: InviteCode,
}

/// Who does something: asks a room for a change, or appears in the audit log. Permissions are
/// always decided from the actor's live state in the room, never from a role the caller claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The REST API key: every moderator action, without being a participant.
    Operator,
    /// A participant, through their signaling session or their session token on REST.
    Participant(ParticipantId),
    /// The server itself: startup links, the room task's timer (`Tick`), media (`SetSpeaking`).
    /// Kept apart so no client message can ever be mapped onto those commands by mistake.
    System,
}

impl Actor {
    /// `"operator"`, `"system"` or a participant id (they start with `pt_`, so the three
    /// cannot be confused).
    pub fn as_audit_str(&self) -> &str {
        match self {
            Actor::Operator => "operator",
            Actor::Participant(id) => id.as_str(),
            Actor::System => "system",
        }
    }

    pub fn participant(&self) -> Option<&ParticipantId> {
        match self {
            Actor::Participant(id) => Some(id),
            Actor::Operator | Actor::System => None,
        }
    }
}

impl serde::Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_audit_str())
    }
}

/// One thing a live room decided that is written down, in the order the room decided it (see
/// `room/actor/records.rs`). Times are when the room decided, not when the line is written.
#[derive(Clone, Debug)]
pub enum RoomRecord {
    /// The role the room gave this identity, for its session tokens from now on.
    Role {
        participant: ParticipantId,
        role: Role,
    },
    /// The room removed this identity: its session tokens issued before now stop working.
    Removal {
        participant: ParticipantId,
        at_ms: i64,
    },
    /// The room banned this identity (its audit line is a record of its own).
    Ban {
        participant: ParticipantId,
        revoke_invite: bool,
        actor: Actor,
        at_ms: i64,
    },
    /// The room ended; its `room.ended` line is written with it. Already ended is no error.
    End {
        actor: Actor,
        at_ms: i64,
        detail: serde_json::Value,
    },
    /// A line of the room's audit log.
    Audit {
        actor: Actor,
        action: String,
        target: Option<String>,
        detail: serde_json::Value,
        at_ms: i64,
    },
}

/// What one command of a live room writes down, in one transaction: its records, and the
/// webhook events that report them (or report what is not stored otherwise, like a join).
#[derive(Clone, Debug, Default)]
pub struct RoomWrite {
    pub records: Vec<RoomRecord>,
    pub webhooks: Vec<NewWebhook>,
}

impl RoomWrite {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.webhooks.is_empty()
    }
}

/// A webhook event for the outbox: its `webhook-id` and the JSON body sent on every attempt.
#[derive(Clone, Debug)]
pub struct NewWebhook {
    pub id: String,
    pub event_type: String,
    pub body: String,
    pub created_at_ms: i64,
}

/// An outbox row this node took to send, under a lease.
#[derive(Clone, Debug)]
pub struct ClaimedWebhook {
    pub seq: i64,
    pub id: String,
    pub body: String,
    /// Attempts before this one.
    pub attempts: u32,
    pub created_at_ms: i64,
    pub destination: Destination,
}

/// Where an outbox row goes, as it stands when the row is taken (a room's endpoint may have
/// been moved or given a new secret since the event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The server's `[webhooks] url`, signed with its secret.
    Server,
    /// A room's own endpoint.
    Room { url: String, secret: String },
    /// A room's endpoint deleted while this row was being taken: it is given up.
    RoomGone,
}

/// Which of the outbox's two lanes a sender drains: rows for the server's endpoint, or rows
/// for rooms' own endpoints. Each lane has its own attempts in flight, so a room's failing
/// receiver never delays the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookLane {
    Server,
    Rooms,
}

/// A room's own webhook endpoint (`PUT /api/v1/rooms/{room}/webhook`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomWebhook {
    /// `rwh_…`, named on the outbox rows meant for it.
    pub id: String,
    pub room_id: RoomId,
    pub url: String,
    /// `whsec_…`: shown once, when made or rotated.
    pub secret: String,
    pub created_at_ms: i64,
    /// `operator` or the participant id of the moderator who set it.
    pub created_by: String,
    pub updated_at_ms: i64,
    pub secret_rotated_at_ms: i64,
}

/// What setting a room's endpoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomWebhookChange {
    /// The room had none: made, with the new secret.
    Created,
    /// The room had one: its URL replaced, its secret kept.
    Updated,
}

/// How an attempt to send an outbox row ended.
#[derive(Clone, Debug)]
pub enum WebhookAttempt {
    Delivered {
        status: u16,
    },
    /// Failed; tried again at `next_at_ms`.
    Retry {
        status: Option<u16>,
        error: String,
        next_at_ms: i64,
    },
    /// Failed, and the last attempt allowed: given up.
    GivenUp {
        status: Option<u16>,
        error: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A row of the webhook outbox, for operators.
#[derive(Clone, Debug)]
pub struct WebhookDelivery {
    pub id: String,
    pub room_id: RoomId,
    /// The room endpoint (`rwh_…`) it is for; `None`: the server's.
    pub endpoint: Option<String>,
    pub event_type: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub created_at_ms: i64,
    pub next_attempt_at_ms: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub finished_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub seq: i64,
    pub room_id: RoomId,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: serde_json::Value,
}

/// Keyset pagination: items after `after` (an opaque cursor), at most `limit`.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    pub after: Option<i64>,
    pub limit: u32,
}

#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Where a recording stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// Being written now (or was, by a node that has not come back since).
    Recording,
    /// Finished: the file is whole and playable.
    Ready,
    /// Nothing playable came of it.
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Ready => "ready",
            RecordingState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "recording" => Some(RecordingState::Recording),
            "ready" => Some(RecordingState::Ready),
            "failed" => Some(RecordingState::Failed),
            _ => None,
        }
    }
}

/// A recording of a room's mix. Its file is on `node`, in that node's data folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    pub id: RecordingId,
    pub room_id: RoomId,
    pub state: RecordingState,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// Playable audio, once finished.
    pub duration_ms: i64,
    pub size_bytes: i64,
    /// The name of the node that holds the file.
    pub node: String,
}

/// How a recording ended, written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedRecording {
    pub state: RecordingState,
    pub ended_at_ms: i64,
    pub duration_ms: i64,
    pub size_bytes: i64,
}
