//! `/api/v1/rooms/{room}/webhook`: a room's own webhook endpoint — set or move it, see it,
//! make it a new secret, delete it, and list what was sent to it. For those who manage the
//! room: its moderators and the operator. The URL is checked here (shape, and where it
//! points: `webhooks/address.rs`); the store keeps it; the live room is told, so its events
//! are made from the moment this answers.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, room_id};
use super::page_request;
use super::state::AppState;
use super::views::PageQuery;
use super::webhooks::{DeliveryPage, DeliveryQuery, DeliveryView};
use crate::clock::rfc3339;
use crate::control::{RoomId, RoomWebhook, RoomWebhookChange};
use crate::webhooks::address::{AddressPolicy, Refusal};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoomWebhook {
    /// Where the room's events are POSTed: `http://…`, at most 2048 bytes, no credentials,
    /// on a public address unless the operator allows others.
    pub url: String,
}

/// A room's endpoint. `secret` only in the answer that made it (or a new one): keep it then.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomWebhookView {
    /// `rwh_…`; the `endpoint` of its deliveries.
    pub id: String,
    pub room_id: String,
    pub url: String,
    /// `whsec_…`, the signing secret: shown when made and when rotated, null otherwise.
    pub secret: Option<String>,
    pub created_at: String,
    /// `operator` or the id of the moderator who set it.
    pub created_by: String,
    pub updated_at: String,
    pub secret_rotated_at: String,
    /// Events waiting to be sent to it.
    pub pending: u64,
    /// Events given up on (listed by `…/webhook/deliveries?state=failed`).
    pub failed: u64,
}

impl RoomWebhookView {
    fn new(w: RoomWebhook, show_secret: bool, (pending, failed): (u64, u64)) -> Self {
        RoomWebhookView {
            id: w.id,
            room_id: w.room_id.to_string(),
            url: w.url,
            secret: show_secret.then_some(w.secret),
            created_at: rfc3339(w.created_at_ms),
            created_by: w.created_by,
            updated_at: rfc3339(w.updated_at_ms),
            secret_rotated_at: rfc3339(w.secret_rotated_at_ms),
            pending,
            failed,
        }
    }
}

fn refused(r: Refusal) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code(), r.detail())
}

/// The room, if the caller manages it.
fn managed_room(caller: &Caller, room: &str) -> Result<RoomId, ApiError> {
    let room = room_id(room)?;
    caller.require_moderator_of(&room)?;
    Ok(room)
}

/// Set the room's endpoint: made with a new secret (201, the secret in the answer, once), or
/// its URL replaced and its secret kept (200). The live room makes events from this answer on.
#[utoipa::path(put, path = "/api/v1/rooms/{room}/webhook", tag = "webhooks",
    params(("room" = String, Path, description = "Room id")),
    request_body = SetRoomWebhook,
    responses((status = 201, description = "Made: the answer has the secret", body = RoomWebhookView),
        (status = 200, description = "URL replaced", body = RoomWebhookView),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 410, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_room_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiJson(body): ApiJson<SetRoomWebhook>,
) -> Result<(StatusCode, axum::Json<RoomWebhookView>), ApiError> {
    let room = managed_room(&caller, &room)?;
    let policy = AddressPolicy::new(&state.config.webhooks);
    let url = policy.check_url(&body.url).map_err(refused)?;
    policy.check_resolved(&url).await.map_err(refused)?;
    let (set, change) = state
        .store
        .set_room_webhook(
            room.clone(),
            url.to_string(),
            crate::webhooks::new_secret(),
            caller.actor(),
            state.clock.now_ms(),
        )
        .await?;
    state.live.room_webhook_changed(&room, true).await;
    let backlog = state.store.room_webhook_backlog(set.id.clone()).await?;
    let created = change == RoomWebhookChange::Created;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(RoomWebhookView::new(set, created, backlog)),
    ))
}

/// The room's endpoint, without its secret.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/webhook", tag = "webhooks",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomWebhookView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_room_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
) -> Result<axum::Json<RoomWebhookView>, ApiError> {
    let room = managed_room(&caller, &room)?;
    let set = state.store.room_webhook(room).await?;
    let backlog = state.store.room_webhook_backlog(set.id.clone()).await?;
    Ok(axum::Json(RoomWebhookView::new(set, false, backlog)))
}

/// Delete the room's endpoint. Events still waiting for it are dropped (the audit line says
/// how many); what was delivered or given up stays listed.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/webhook", tag = "webhooks",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_room_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let room = managed_room(&caller, &room)?;
    state
        .store
        .delete_room_webhook(room.clone(), caller.actor(), state.clock.now_ms())
        .await?;
    state.live.room_webhook_changed(&room, false).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret for the room's endpoint, in the answer (once). Every attempt from now on is
/// signed with it, events already waiting included; the old one stops working at once.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/webhook/secret", tag = "webhooks",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomWebhookView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn rotate_room_webhook_secret(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
) -> Result<axum::Json<RoomWebhookView>, ApiError> {
    let room = managed_room(&caller, &room)?;
    let set = state
        .store
        .rotate_room_webhook_secret(
            room,
            crate::webhooks::new_secret(),
            caller.actor(),
            state.clock.now_ms(),
        )
        .await?;
    let backlog = state.store.room_webhook_backlog(set.id.clone()).await?;
    Ok(axum::Json(RoomWebhookView::new(set, true, backlog)))
}

/// What was sent to the room's own endpoints (this one and earlier ones), oldest first; the
/// server's `[webhooks] url` deliveries are the operator's (`/api/v1/webhooks/deliveries`).
#[utoipa::path(get, path = "/api/v1/rooms/{room}/webhook/deliveries", tag = "webhooks",
    params(("room" = String, Path, description = "Room id"), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_room_webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    let room = managed_room(&caller, &room)?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let found = state
        .store
        .list_room_webhook_deliveries(room, query.state, page_request(&page, &state)?)
        .await?;
    Ok(axum::Json(DeliveryPage {
        items: found.items.into_iter().map(DeliveryView::from).collect(),
        next_cursor: found.next_cursor.map(|c| c.to_string()),
    }))
}
