//! `/api/v1/rooms/{room}/participants`: who is here and the moderation calls. They act on
//! the live room; a ban is also recorded durably, so it works when nobody is connected.

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Caller, room_id};
use super::state::AppState;
use super::views::{PageQuery, ParticipantPage, RemoveQuery, SetRole};
use crate::control::{ControlError, ParticipantId, RoomId};

async fn live_room(state: &AppState, caller: &Caller, room: &str) -> Result<RoomId, ApiError> {
    let room = room_id(room)?;
    caller.require_moderator_of(&room)?;
    let found = state.store.room(room.clone()).await?;
    if found.is_ended() {
        return Err(ControlError::RoomEnded.into());
    }
    Ok(room)
}

fn participant_id(raw: &str) -> Result<ParticipantId, ApiError> {
    ParticipantId::parse(raw).ok_or_else(|| ControlError::ParticipantNotFound.into())
}

/// Who is in the room now, with role, hand, mute and speaking state.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/participants", tag = "participants",
    params(("room" = String, Path, description = "Room id"), PageQuery),
    responses((status = 200, body = ParticipantPage), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, description = "Nobody is connected", body = Problem)),
    security(("bearer" = [])))]
pub async fn list_participants(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    ApiQuery(_query): ApiQuery<PageQuery>,
) -> Result<axum::Json<ParticipantPage>, ApiError> {
    live_room(&state, &caller, &room).await?;
    Err(ApiError::room_not_live())
}

/// Change a participant's role. Moving a listener up to speaker is an invitation they accept.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/participants/{participant}/role", tag = "participants",
    params(("room" = String, Path, description = "Room id"), ("participant" = String, Path, description = "Participant id")),
    request_body = SetRole,
    responses((status = 204, description = "Done (or invitation sent)"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((room, participant)): Path<(String, String)>,
    ApiJson(_body): ApiJson<SetRole>,
) -> Result<StatusCode, ApiError> {
    live_room(&state, &caller, &room).await?;
    participant_id(&participant)?;
    Err(ApiError::room_not_live())
}

/// Mute a speaker (they may unmute themselves).
#[utoipa::path(post, path = "/api/v1/rooms/{room}/participants/{participant}/mute", tag = "participants",
    params(("room" = String, Path, description = "Room id"), ("participant" = String, Path, description = "Participant id")),
    responses((status = 204, description = "Muted"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn mute(
    State(state): State<AppState>,
    caller: Caller,
    Path((room, participant)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    live_room(&state, &caller, &room).await?;
    participant_id(&participant)?;
    Err(ApiError::room_not_live())
}

/// Remove a participant; `?ban=true` also bans their identity from the room.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/participants/{participant}", tag = "participants",
    params(("room" = String, Path, description = "Room id"), ("participant" = String, Path, description = "Participant id"), RemoveQuery),
    responses((status = 204, description = "Removed (and banned)"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((room, participant)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    let participant = participant_id(&participant)?;
    if caller.participant() == Some(&participant) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_target",
            "you cannot remove yourself; leave the room instead",
        ));
    }
    if !query.ban {
        return Err(ApiError::room_not_live());
    }
    state
        .store
        .ban(
            room,
            participant,
            query.revoke_invite,
            caller.actor(),
            state.clock.now_ms(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
