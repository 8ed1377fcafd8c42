//! What both engines decide the same way: whether an invite or a replay link may be redeemed or
//! previewed, the shape of new rooms, invites and replay links, the role a redemption grants,
//! audit details, pages. Plain functions over values; no SQL here.

use super::super::model::CreatedInvite;
use super::super::{
    ControlError, CreatedReplayLink, Delivery, Invite, InviteCode, InviteId, NewInvite,
    NewReplayLink, NewRoom, Page, RecordingId, ReplayLink, ReplayLinkId, Role, Room, RoomId,
    RoomLimits,
};

type Result<T> = std::result::Result<T, ControlError>;

/// The checks redeeming makes before counting a use (the use itself is counted by a conditional
/// update in the engine, so concurrent redemptions cannot pass `max_uses`). Unknown and revoked
/// codes fail alike (`InviteInvalid`), so codes cannot be probed.
pub(super) fn check_redeemable(invite: &Invite, room: Option<&Room>, now_ms: i64) -> Result<()> {
    if invite.revoked {
        return Err(ControlError::InviteInvalid);
    }
    let room = room.ok_or(ControlError::InviteInvalid)?;
    if room.is_ended() {
        return Err(ControlError::RoomEnded);
    }
    if invite.expires_at_ms.is_some_and(|at| at <= now_ms) {
        return Err(ControlError::InviteExpired);
    }
    Ok(())
}

/// What previewing a link checks: everything redeeming would, the remaining uses included.
pub(super) fn check_previewable(invite: &Invite, room: Option<&Room>, now_ms: i64) -> Result<()> {
    check_redeemable(invite, room, now_ms)?;
    if invite.max_uses.is_some_and(|max| invite.uses >= max) {
        return Err(ControlError::InviteUsedUp);
    }
    Ok(())
}

/// The role a redemption by a known identity grants: the invite's role or the role a live room
/// gave the identity, whichever reaches further (what the room decided stays in force).
pub(super) fn role_after_redemption(live_role: Option<&str>, invite_role: Role) -> Role {
    live_role
        .and_then(Role::parse)
        .map_or(invite_role, |live| live.max(invite_role))
}

pub(super) fn new_room(new: &NewRoom, now_ms: i64) -> Room {
    Room {
        id: RoomId::generate(),
        title: new.title.clone(),
        created_at_ms: now_ms,
        ended_at_ms: None,
        limits: new.limits,
        recording: new.recording,
    }
}

/// Whether a new invite may be made as asked, once its room is known to be open: only
/// listener invites may have broadcast delivery.
pub(super) fn check_new_invite(new: &NewInvite) -> Result<()> {
    if new.delivery.for_role(new.role) != new.delivery {
        return Err(ControlError::invalid(
            "invalid_delivery",
            format!(
                "only listener invites may have broadcast delivery, not {} invites",
                new.role
            ),
        ));
    }
    Ok(())
}

/// A fresh invite of `room` and its code; the caller has checked the room is open and the
/// invite allowed (`check_new_invite`).
pub(super) fn new_invite(room: &RoomId, new: &NewInvite, now_ms: i64) -> CreatedInvite {
    let expires_at_ms = expires_at(new.expires_in_secs, now_ms);
    CreatedInvite {
        invite: Invite {
            id: InviteId::generate(),
            room_id: room.clone(),
            role: new.role,
            delivery: new.delivery,
            label: new.label.clone(),
            max_uses: new.max_uses,
            uses: 0,
            expires_at_ms,
            revoked: false,
            created_at_ms: now_ms,
        },
        code: InviteCode::generate(),
    }
}

/// Whether a replay link may be redeemed now, before its use is counted (the count itself is a
/// conditional update in the engine). Unknown and revoked codes fail alike.
pub(super) fn check_replay_redeemable(link: &ReplayLink, now_ms: i64) -> Result<()> {
    if link.revoked {
        return Err(ControlError::ReplayLinkInvalid);
    }
    if link.expires_at_ms.is_some_and(|at| at <= now_ms) {
        return Err(ControlError::ReplayLinkExpired);
    }
    Ok(())
}

/// A fresh replay link of `recording` (of `room`) and its code.
pub(super) fn new_replay_link(
    room: &RoomId,
    recording: &RecordingId,
    new: &NewReplayLink,
    now_ms: i64,
) -> CreatedReplayLink {
    CreatedReplayLink {
        link: ReplayLink {
            id: ReplayLinkId::generate(),
            room_id: room.clone(),
            recording_id: recording.clone(),
            label: new.label.clone(),
            max_uses: new.max_uses,
            uses: 0,
            expires_at_ms: expires_at(new.expires_in_secs, now_ms),
            revoked: false,
            created_at_ms: now_ms,
        },
        code: InviteCode::generate(),
    }
}

pub(super) fn replay_link_created_detail(link: &ReplayLink) -> serde_json::Value {
    serde_json::json!({
        "recording_id": link.recording_id,
        "label": link.label,
        "max_uses": link.max_uses,
        "expires_at_ms": link.expires_at_ms,
    })
}

pub(super) fn recording_deleted_detail(recording: &super::super::Recording) -> serde_json::Value {
    serde_json::json!({
        "recording_id": recording.id,
        "duration_ms": recording.duration_ms,
        "size_bytes": recording.size_bytes,
    })
}

/// The audit action of revoking a row of `table`.
pub(super) fn revoked_action(table: &str) -> &'static str {
    match table {
        "replay_links" => "replay_link.revoked",
        _ => "invite.revoked",
    }
}

fn expires_at(expires_in_secs: Option<u64>, now_ms: i64) -> Option<i64> {
    expires_in_secs.map(|s| now_ms.saturating_add((s as i64).saturating_mul(1000)))
}

/// The room `startup_link` makes when there is none.
pub(super) fn demo_room() -> NewRoom {
    NewRoom {
        title: "Demo room".into(),
        limits: RoomLimits::default(),
        recording: Default::default(),
    }
}

/// The moderator link printed at every start.
pub(super) fn startup_invite() -> NewInvite {
    NewInvite {
        role: Role::Moderator,
        delivery: Delivery::Webrtc,
        label: Some("startup link".into()),
        max_uses: None,
        expires_in_secs: Some(24 * 3600),
    }
}

/// What a `room.updated` line says: the fields changed, as they are now (`null`: the server's).
pub(super) fn room_updated_detail(
    change: &super::super::RecordingPolicyChange,
) -> serde_json::Value {
    let mut detail = serde_json::Map::new();
    if let Some(value) = change.record_by_default {
        detail.insert("record_by_default".into(), serde_json::json!(value));
    }
    if let Some(value) = change.retention_days {
        detail.insert("retention_days".into(), serde_json::json!(value));
    }
    serde_json::Value::Object(detail)
}

pub(super) fn room_created_detail(room: &Room) -> serde_json::Value {
    serde_json::json!({ "title": room.title })
}

pub(super) fn invite_created_detail(invite: &Invite) -> serde_json::Value {
    serde_json::json!({
        "role": invite.role,
        "delivery": invite.delivery,
        "label": invite.label,
        "max_uses": invite.max_uses,
        "expires_at_ms": invite.expires_at_ms,
    })
}

pub(super) fn redeemed_detail(
    role: Role,
    delivery: Delivery,
    display_name: &str,
) -> serde_json::Value {
    serde_json::json!({ "role": role, "delivery": delivery, "display_name": display_name })
}

/// An audit line's detail as stored (JSON text); unreadable text reads as `null`.
pub(super) fn parse_detail(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// Rows fetched with `LIMIT limit + 1`, as a page: the extra row only says there is more.
pub(super) fn paginate<T>(mut rows: Vec<(i64, T)>, limit: u32) -> Page<T> {
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(|(_, item)| item).collect(),
        next_cursor,
    }
}

/// The columns an attempt's end sets, the same on both engines.
pub(super) struct FinishedWebhook {
    pub state: &'static str,
    /// The next try, for a retry.
    pub next_attempt_at: Option<i64>,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub finished_at: Option<i64>,
}

pub(super) fn finished_webhook(
    attempt: &super::super::WebhookAttempt,
    now_ms: i64,
) -> FinishedWebhook {
    use super::super::WebhookAttempt;
    match attempt {
        WebhookAttempt::Delivered { status } => FinishedWebhook {
            state: "delivered",
            next_attempt_at: None,
            status: Some(i64::from(*status)),
            error: None,
            finished_at: Some(now_ms),
        },
        WebhookAttempt::Retry {
            status,
            error,
            next_at_ms,
        } => FinishedWebhook {
            state: "pending",
            next_attempt_at: Some(*next_at_ms),
            status: status.map(i64::from),
            error: Some(error.clone()),
            finished_at: None,
        },
        WebhookAttempt::GivenUp { status, error } => FinishedWebhook {
            state: "failed",
            next_attempt_at: None,
            status: status.map(i64::from),
            error: Some(error.clone()),
            finished_at: Some(now_ms),
        },
    }
}

/// A new room endpoint's id, `rwh_` + 16 URL-safe characters like every id.
pub(super) fn new_room_webhook_id() -> String {
    format!("rwh_{}", super::super::random_token(12))
}

/// The `webhook-id` of an event's copy for a room's endpoint: an id of its own, so that each
/// endpoint's receiver deduplicates its own deliveries and the outbox keeps one id per row.
pub(super) fn room_copy_id() -> String {
    format!("msg_{}", super::super::random_token(16))
}

/// Whether a claimed row's destination columns (`endpoint`, and the room endpoint's URL and
/// secret found for it) say server, room, or a room endpoint deleted meanwhile.
pub(super) fn destination(
    endpoint: Option<String>,
    url: Option<String>,
    secret: Option<String>,
) -> super::super::Destination {
    use super::super::Destination;
    match (endpoint, url, secret) {
        (None, _, _) => Destination::Server,
        (Some(_), Some(url), Some(secret)) => Destination::Room { url, secret },
        (Some(_), _, _) => Destination::RoomGone,
    }
}
