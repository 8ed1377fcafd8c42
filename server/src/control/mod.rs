//! The control plane: durable facts (rooms, invites, identities, bans, the audit log,
//! recordings) and the
//! rules for creating and redeeming them. Knows SQLite and PostgreSQL; knows nothing of HTTP or
//! sockets.

mod clip;
mod error;
mod ids;
mod invite_code;
mod listen_link;
mod model;
mod store;
pub mod validate;

pub use clip::{Clip, ClipCode, NewClip};
pub use error::{ControlError, error_chain};
pub use ids::{
    ClipId, Delivery, InviteId, ListenLinkId, ParticipantId, RecordingId, ReplayLinkId, Role,
    RoomId, random_token,
};
pub use invite_code::{IdentitySecret, InviteCode};
pub use listen_link::{CreatedListenLink, ListenCode, ListenLink, NewListenLink};
pub use model::{
    Actor, AuditEvent, ClaimedWebhook, CreatedInvite, CreatedReplayLink, DeliveryState,
    FinishedRecording, Invite, MAX_RETENTION_DAYS, NewInvite, NewReplayLink, NewRoom, NewWebhook,
    Page, PageRequest, Recording, RecordingPolicy, RecordingPolicyChange, RecordingState,
    Redemption, ReplayLink, Room, RoomLimits, RoomRecord, RoomWrite, Standing, WebhookAttempt,
    WebhookDelivery,
};
pub use model::{Destination, RoomWebhook, RoomWebhookChange, WebhookLane};
pub use store::Store;
