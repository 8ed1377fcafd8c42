//! `/api/v1/rooms`: create, list, show and end rooms. Thin: authenticate, validate the
//! body, ask the store, render.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Caller, room_id};
use super::page_request;
use super::state::AppState;
use super::views::{CreateRoom, PageQuery, RoomDetail, RoomPage, RoomView};
use crate::control::{ControlError, NewRoom, RoomLimits, validate};

fn bounded(
    value: Option<u32>,
    max: u32,
    code: &'static str,
    what: &str,
) -> Result<Option<u32>, ApiError> {
    match value {
        Some(v) if v == 0 || v > max => Err(ControlError::invalid(
            code,
            format!("{what} must be between 1 and {max}, got {v}"),
        )
        .into()),
        other => Ok(other),
    }
}

/// Create a room.
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms",
    request_body = CreateRoom,
    responses(
        (status = 201, description = "The new room", body = RoomView),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn create_room(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, axum::Json<RoomView>), ApiError> {
    caller.require_operator()?;
    let new = NewRoom {
        title: validate::title(&body.title)?,
        limits: RoomLimits {
            max_participants: bounded(
                body.max_participants,
                100_000,
                "invalid_limit",
                "max_participants",
            )?,
            max_stage: bounded(body.max_stage, 100, "invalid_limit", "max_stage")?,
        },
    };
    let room = state
        .store
        .create_room(new, caller.actor(), state.clock.now_ms())
        .await?;
    state.metrics.rooms_created.inc();
    tracing::info!(room = %room.id, "room created");
    Ok((
        StatusCode::CREATED,
        axum::Json(RoomView::new(&room, false, 0)),
    ))
}

/// List rooms, oldest first.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    params(PageQuery),
    responses((status = 200, body = RoomPage), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_rooms(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<RoomPage>, ApiError> {
    caller.require_operator()?;
    let page = state
        .store
        .list_rooms(page_request(&query, &state)?)
        .await?;
    Ok(axum::Json(RoomPage::new(
        page.map(|room| RoomView::new(&room, false, 0)),
    )))
}

/// One room, with the people in it now.
#[utoipa::path(get, path = "/api/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomDetail), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_room(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<axum::Json<RoomDetail>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let room = state.store.room(room).await?;
    Ok(axum::Json(RoomDetail {
        room: RoomView::new(&room, false, 0),
        participants: Vec::new(),
    }))
}

/// End the room for everyone: links stop working.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 204, description = "Ended"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, description = "Already ended", body = Problem)),
    security(("bearer" = [])))]
pub async fn end_room(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    state
        .store
        .end_room(room.clone(), caller.actor(), state.clock.now_ms())
        .await?;
    tracing::info!(%room, "room ended");
    Ok(StatusCode::NO_CONTENT)
}
