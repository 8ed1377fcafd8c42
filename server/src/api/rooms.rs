//! `/api/v1/rooms`: create, list, show, change (the recording policy) and end rooms. Thin:
//! authenticate, validate the body, ask the store, render.

use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, room_id};
use super::page_request;
use super::state::AppState;
use super::views::{CreateRoom, PageQuery, RoomDetail, RoomPage, RoomView, UpdateRoom};
use crate::control::{
    ControlError, MAX_RETENTION_DAYS, NewRoom, RecordingPolicy, RecordingPolicyChange, Room,
    RoomLimits, validate,
};
use crate::room::{Command, LiveError};

/// How many participants `GET /rooms/{room}` lists; the participants endpoint pages the rest.
const ROOM_DETAIL_PARTICIPANTS: usize = 200;

fn live_view(state: &AppState, room: &Room) -> RoomView {
    let count = state.live.get(&room.id).map(|h| h.participant_count());
    RoomView {
        anonymous_listeners: state.broadcasts.anonymous_listeners(&room.id),
        ..RoomView::new(room, count.is_some_and(|c| c > 0), count.unwrap_or(0))
    }
}

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

/// A room's retention, within 0 (keep) to [`MAX_RETENTION_DAYS`].
fn retention(days: Option<u32>) -> Result<Option<u32>, ApiError> {
    match days {
        Some(d) if d > MAX_RETENTION_DAYS => Err(ControlError::invalid(
            "invalid_retention",
            format!("retention_days must be between 0 and {MAX_RETENTION_DAYS}, got {d}"),
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
            webrtc_audience_cap: bounded(
                body.webrtc_audience_cap,
                100_000,
                "invalid_limit",
                "webrtc_audience_cap",
            )?,
        },
        recording: RecordingPolicy {
            record_by_default: body.record_by_default,
            retention_days: retention(body.retention_days)?,
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
        page.map(|room| live_view(&state, &room)),
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
    ApiPath(room): ApiPath<String>,
) -> Result<axum::Json<RoomDetail>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let room = state.store.room(room).await?;
    let participants = match state
        .live
        .participants(&room.id, None, ROOM_DETAIL_PARTICIPANTS)
        .await
    {
        Ok((people, _)) => people,
        Err(_) => Vec::new(),
    };
    Ok(axum::Json(RoomDetail {
        room: live_view(&state, &room),
        participants,
    }))
}

/// Change the room's recording policy: whether it records whenever it goes live, and how
/// long its recordings and live clips are kept.
#[utoipa::path(patch, path = "/api/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    request_body = UpdateRoom,
    responses((status = 200, description = "The room as it is now", body = RoomView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn update_room(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateRoom>,
) -> Result<axum::Json<RoomView>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let change = RecordingPolicyChange {
        record_by_default: body.record_by_default,
        retention_days: body.retention_days.map(retention).transpose()?,
    };
    let room = if change == RecordingPolicyChange::default() {
        state.store.room(room).await?
    } else {
        let now = state.clock.now_ms();
        let room = state
            .store
            .update_recording_policy(room, change, caller.actor(), now)
            .await?;
        tracing::info!(room = %room.id, "room's recording policy changed");
        room
    };
    Ok(axum::Json(live_view(&state, &room)))
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
    ApiPath(room): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    // A live room ends through its task (everyone is disconnected, the end is recorded);
    // a room nobody is in is ended in the store directly.
    match state
        .live
        .command(&room, caller.room_actor(), Command::End)
        .await
    {
        Ok(()) => {}
        Err(LiveError::NotLive) => {
            // After what the room recorded last: the end is the last thing said of it.
            state.live.settled(&room).await?;
            let now = state.clock.now_ms();
            let actor = caller.actor();
            // Written for the endpoints that want it (the server's, the room's), if any.
            let webhooks = vec![crate::webhooks::room_ended(
                &room,
                actor.as_audit_str(),
                now,
            )];
            state
                .store
                .end_room(
                    room.clone(),
                    actor,
                    now,
                    Some(serde_json::json!({})),
                    webhooks,
                )
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%room, "room ended");
    Ok(StatusCode::NO_CONTENT)
}
