//! `/api/v1/rooms/{room}/participants`: who is here and the moderation calls. They act on
//! the live room; a ban is also recorded durably, so it works when nobody is connected.

use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, room_id};
use super::page_bounds;
use super::state::AppState;
use super::views::{PageQuery, ParticipantPage, RemoveQuery, SetRole};
use crate::control::{ControlError, ParticipantId, RoomId};
use crate::room::{Command, LiveError, Refusal};

/// The room a moderator's (or the operator's) call acts on live: it exists and has not ended.
pub(super) async fn live_room(
    state: &AppState,
    caller: &Caller,
    room: &str,
) -> Result<RoomId, ApiError> {
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
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<ParticipantPage>, ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    let (after, limit) = page_bounds(&query, &state, ParticipantId::parse)?;
    let (people, next) = state
        .live
        .participants(&room, after, limit as usize)
        .await?;
    Ok(axum::Json(ParticipantPage {
        items: people,
        next_cursor: next.map(|id| id.to_string()),
    }))
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
    ApiPath((room, participant)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SetRole>,
) -> Result<StatusCode, ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    let target = participant_id(&participant)?;
    let command = Command::SetRole {
        target,
        role: body.role,
    };
    state
        .live
        .command(&room, caller.room_actor(), command)
        .await?;
    Ok(StatusCode::NO_CONTENT)
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
    ApiPath((room, participant)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    let target = participant_id(&participant)?;
    state
        .live
        .command(&room, caller.room_actor(), Command::Mute { target })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a participant; `?ban=true` also bans their identity from the room, live or not.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/participants/{participant}", tag = "participants",
    params(("room" = String, Path, description = "Room id"), ("participant" = String, Path, description = "Participant id"), RemoveQuery),
    responses((status = 204, description = "Removed (and banned)"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((room, participant)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    let target = participant_id(&participant)?;
    if caller.participant() == Some(&target) {
        return Err(Refusal::InvalidTarget.into());
    }
    let command = if query.ban {
        Command::Ban {
            target: target.clone(),
            revoke_invite: query.revoke_invite,
        }
    } else {
        Command::Remove {
            target: target.clone(),
        }
    };
    match state
        .live
        .command(&room, caller.room_actor(), command)
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        // Someone who is not in the room right now can still be banned: the ban is recorded
        // and keeps them out of every later visit.
        Err(LiveError::NotLive | LiveError::Refused(Refusal::ParticipantNotFound)) if query.ban => {
            // After what the room recorded last (someone's leaving, a moment ago).
            state.live.settled(&room).await?;
            let now = state.clock.now_ms();
            let actor = caller.actor();
            // Written for the endpoints that want it (the server's, the room's), if any.
            let webhooks = vec![crate::webhooks::participant_banned(
                &room,
                &target,
                actor.as_audit_str(),
                now,
            )];
            state
                .store
                .ban(
                    room,
                    target,
                    query.revoke_invite,
                    actor,
                    now,
                    true,
                    webhooks,
                )
                .await?;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => Err(e.into()),
    }
}
