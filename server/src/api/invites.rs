//! `/api/v1/rooms/{room}/invites`: make, list and revoke invite links. The code is shown
//! once, in the answer to create; afterwards invites are managed by id.

use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, room_id};
use super::page_request;
use super::state::AppState;
use super::views::{CreateInvite, CreatedInviteView, InvitePage, InviteView, PageQuery};
use crate::control::{ControlError, Delivery, InviteCode, InviteId, NewInvite, validate};

const MAX_USES: u32 = 1_000_000;
const MAX_EXPIRY_SECS: u64 = 365 * 24 * 3600;

/// Refuses an `expires_in_secs` (of an invite or a listen link) out of its bounds.
pub(super) fn check_expiry(expires_in_secs: Option<u64>) -> Result<(), ControlError> {
    match expires_in_secs {
        Some(s) if !(1..=MAX_EXPIRY_SECS).contains(&s) => Err(ControlError::invalid(
            "invalid_expiry",
            format!("expires_in_secs must be between 1 and {MAX_EXPIRY_SECS}, got {s}"),
        )),
        _ => Ok(()),
    }
}

/// Make an invite link.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/invites", tag = "invites",
    params(("room" = String, Path, description = "Room id")),
    request_body = CreateInvite,
    responses((status = 201, body = CreatedInviteView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_invite(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiJson(body): ApiJson<CreateInvite>,
) -> Result<(StatusCode, axum::Json<CreatedInviteView>), ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    check_uses_and_expiry(body.max_uses, body.expires_in_secs)?;
    if body.delivery == Delivery::Broadcast && !state.broadcasts.settings().enabled {
        return Err(ControlError::invalid(
            "broadcast_disabled",
            "broadcasts are turned off on this server",
        )
        .into());
    }
    let new = NewInvite {
        role: body.role,
        delivery: body.delivery,
        label: body.label.as_deref().map(validate::label).transpose()?,
        max_uses: body.max_uses,
        expires_in_secs: body.expires_in_secs,
    };
    let created = state
        .store
        .create_invite(room, new, caller.actor(), state.clock.now_ms())
        .await?;
    state.metrics.invites_created.inc();
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedInviteView {
            invite: InviteView::from(&created.invite),
            url: state.invite_url(created.code.as_str()),
            code: created.code.as_str().to_owned(),
        }),
    ))
}

/// The bounds of a link's `max_uses` and `expires_in_secs` (invites and replay links alike;
/// listen links have no uses).
pub(super) fn check_uses_and_expiry(
    max_uses: Option<u32>,
    expires_in_secs: Option<u64>,
) -> Result<(), ControlError> {
    if let Some(n) = max_uses
        && !(1..=MAX_USES).contains(&n)
    {
        return Err(ControlError::invalid(
            "invalid_max_uses",
            format!("max_uses must be between 1 and {MAX_USES}, got {n}"),
        ));
    }
    check_expiry(expires_in_secs)
}

/// List a room's invites (without their codes).
#[utoipa::path(get, path = "/api/v1/rooms/{room}/invites", tag = "invites",
    params(("room" = String, Path, description = "Room id"), PageQuery),
    responses((status = 200, body = InvitePage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_invites(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<InvitePage>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let page = state
        .store
        .list_invites(room, page_request(&query, &state)?)
        .await?;
    Ok(axum::Json(InvitePage::new(
        page.map(|i| InviteView::from(&i)),
    )))
}

/// Revoke an invite, named by its `id` (or by its code, if that is what you kept).
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/invites/{invite}", tag = "invites",
    params(("room" = String, Path, description = "Room id"), ("invite" = String, Path, description = "Invite id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((room, invite)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let invite = match InviteId::parse(&invite) {
        Some(id) => id,
        None => match InviteCode::parse(&invite) {
            Some(code) => state.store.invite_id_for_code(code).await?,
            None => return Err(ControlError::InviteNotFound.into()),
        },
    };
    state
        .store
        .revoke_invite(room, invite, caller.actor(), state.clock.now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
