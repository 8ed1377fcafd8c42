//! Clips: made by anyone in a live room (its last seconds, `POST /api/v1/rooms/{room}/clips`)
//! or by whoever may read a recording (a range of it, `POST …/recordings/{recording}/clips`);
//! opened by anyone who holds a clip's link (`GET /api/v1/clips/{code}` and its audio, with
//! range requests). Cutting is the `recording` module's; this checks, limits and renders.

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, Caller, ClientIp, ListenerAllowance, room_id};
use super::recordings::{find, on_its_node, serve_file};
use super::replays::Viewer;
use super::state::AppState;
use crate::clock::rfc3339;
use crate::control::{
    Actor, Clip, ClipCode, ClipId, ControlError, NewClip, RecordingId, RecordingState, RoomId,
};
use crate::recording::ClipError;
use crate::recording::clips::ClipAudio;
use crate::webhooks::{self, event_type};

/// A range of a recording to clip, in milliseconds of its audio.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipRange {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A clip. `code` and `url` come only with the answer that made it (and `url` is how anyone
/// opens it: keep it).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ClipView {
    #[schema(value_type = String)]
    pub id: ClipId,
    #[schema(value_type = String)]
    pub room_id: RoomId,
    /// The recording it was cut from; absent for the last seconds of a live room.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<RecordingId>,
    /// Where it starts in its recording (0 for a live clip).
    pub start_ms: i64,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub created_at: String,
    /// The clip's audio (Ogg Opus), with range requests; path from the server's root.
    pub audio_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The clip's page, `…/c/{code}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ClipView {
    fn new(clip: Clip, code: &str) -> Self {
        ClipView {
            id: clip.id,
            room_id: clip.room_id,
            recording_id: clip.recording_id,
            start_ms: clip.start_ms,
            duration_ms: clip.duration_ms,
            size_bytes: clip.size_bytes,
            created_at: rfc3339(clip.created_at_ms),
            audio_path: format!("/api/v1/clips/{code}/audio"),
            code: None,
            url: None,
        }
    }
}

/// Clip the last seconds of a live room (`[recording] live_clip_secs`, 30 by default). Anyone
/// in the room may, whatever their role, and the operator.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/clips", tag = "recordings",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 201, body = ClipView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, description = "`room_not_live`: its mix does not run here; `nothing_to_clip`", body = Problem),
        (status = 410, body = Problem), (status = 429, description = "`too_many_clips`; see Retry-After", body = Problem)),
    security(("bearer" = [])))]
pub async fn clip_live_room(
    State(state): State<AppState>,
    caller: Caller,
    ClientIp(ip): ClientIp,
    ApiPath(room): ApiPath<String>,
) -> Result<(StatusCode, axum::Json<ClipView>), ApiError> {
    let room = room_id(&room)?;
    if let Caller::Participant(claims) = &caller
        && claims.room != room
    {
        return Err(ApiError::forbidden(
            "wrong_room",
            "this session token belongs to another room",
        ));
    }
    if state.store.room(room.clone()).await?.is_ended() {
        return Err(ControlError::RoomEnded.into());
    }
    let who = caller
        .participant()
        .map_or_else(|| "operator".to_owned(), |p| p.to_string());
    let live = state
        .live
        .get(&room)
        .is_some_and(|handle| handle.participant_count() > 0);
    if !live {
        return Err(ApiError::room_not_live());
    }
    state.clip_allowance(&who, ip)?;
    let audio = state.recordings.clip_live(&room).map_err(clip_error)?;
    let made = save(&state, &room, caller.actor(), who, None, 0, audio).await?;
    Ok((StatusCode::CREATED, axum::Json(made)))
}

/// Clip a range of a recording (at most `[recording] max_clip_secs`, 120 by default): for
/// moderators of its room, the operator, and holders of a replay token for it.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/recordings/{recording}/clips", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id")),
    request_body = ClipRange,
    responses((status = 201, body = ClipView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, description = "`recording_not_ready`", body = Problem),
        (status = 422, description = "`invalid_range`, `clip_too_long`, `range_outside_recording`", body = Problem),
        (status = 429, description = "`too_many_clips`; see Retry-After", body = Problem)),
    security(("bearer" = [])))]
pub async fn clip_recording(
    State(state): State<AppState>,
    viewer: Viewer,
    ClientIp(ip): ClientIp,
    ApiPath((room, id)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let recording = find(&state, &viewer, &room, &id).await?;
    // Cut where the file is.
    if state.holds_elsewhere(&recording.node) {
        let answer = on_its_node(&state, &recording.node, request).await;
        return answer.unwrap_or_else(|| Err(ApiError::internal()));
    }
    let ApiJson(range) = ApiJson::<ClipRange>::from_request(request, &state).await?;
    let (actor, who) = match &viewer {
        Viewer::Caller(caller) => (
            caller.actor(),
            caller
                .participant()
                .map_or_else(|| "operator".to_owned(), |p| p.to_string()),
        ),
        Viewer::Replay(claims) => (Actor::System, claims.link.to_string()),
    };
    check_range(&state, &range, recording.state, recording.duration_ms)?;
    state.clip_allowance(&who, ip)?;
    let audio = state
        .recordings
        .clip_recording(&recording.id, range.start_ms, range.end_ms)
        .await
        .map_err(clip_error)?;
    let made = save(
        &state,
        &recording.room_id,
        actor,
        who,
        Some(recording.id),
        range.start_ms as i64,
        audio,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(made)).into_response())
}

/// A range that may be clipped from a recording in `state` holding `duration_ms` of audio.
fn check_range(
    state: &AppState,
    range: &ClipRange,
    recording: RecordingState,
    duration_ms: i64,
) -> Result<(), ApiError> {
    let unprocessable = |code, detail: String| {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            detail,
        ))
    };
    if range.end_ms <= range.start_ms {
        return unprocessable("invalid_range", "end_ms must be after start_ms".to_owned());
    }
    let max_ms = u64::from(state.config.recording.max_clip_secs) * 1000;
    if range.end_ms - range.start_ms > max_ms {
        return unprocessable(
            "clip_too_long",
            format!("a clip is at most {max_ms} ms long"),
        );
    }
    if recording != RecordingState::Ready {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "recording_not_ready",
            "only a finished recording can be clipped",
        ));
    }
    if range.end_ms > duration_ms.max(0) as u64 {
        return unprocessable(
            "range_outside_recording",
            format!("the recording is {duration_ms} ms long"),
        );
    }
    Ok(())
}

fn clip_error(e: ClipError) -> ApiError {
    match e {
        ClipError::NotLive => ApiError::room_not_live(),
        ClipError::Empty => ApiError::new(
            StatusCode::CONFLICT,
            "nothing_to_clip",
            "the room's mix has made no audio yet; try again in a moment",
        ),
        ClipError::OutOfRange => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "range_outside_recording",
            "the recording's file does not hold that range",
        ),
        ClipError::Unreadable | ClipError::Io(_) => {
            tracing::error!(error = %e, "cannot make a clip");
            ApiError::internal()
        }
    }
}

/// Writes the clip's file, then its row (with `clip.created`); a file whose row could not be
/// written is deleted again.
async fn save(
    state: &AppState,
    room: &RoomId,
    actor: Actor,
    created_by: String,
    recording: Option<RecordingId>,
    start_ms: i64,
    audio: ClipAudio,
) -> Result<ClipView, ApiError> {
    let new = NewClip {
        id: ClipId::generate(),
        code: ClipCode::generate(),
        recording_id: recording,
        start_ms,
        duration_ms: audio.duration_ms as i64,
        size_bytes: audio.bytes.len() as i64,
        node: state.node.name.clone(),
    };
    state
        .recordings
        .save_clip(&new.id, &audio)
        .await
        .map_err(clip_error)?;
    let now = state.clock.now_ms();
    let url = state.clip_url(new.code.as_str());
    // The store writes it for the endpoints that want it (the server's, the room's), if any.
    let data = serde_json::json!({
        "room_id": room,
        "clip_id": new.id,
        "recording_id": new.recording_id,
        "start_ms": new.start_ms,
        "duration_ms": new.duration_ms,
        "size_bytes": new.size_bytes,
        "url": url,
        "by": created_by,
    });
    let events = vec![webhooks::event(event_type::CLIP_CREATED, data, now)];
    let code = new.code.clone();
    let id = new.id.clone();
    let saved = state
        .store
        .create_clip(room.clone(), new, actor, created_by, now, events)
        .await;
    let clip = match saved {
        Ok(clip) => clip,
        Err(e) => {
            state.recordings.delete_clip_files(&[id]).await;
            return Err(e.into());
        }
    };
    Ok(ClipView {
        code: Some(code.as_str().to_owned()),
        url: Some(url),
        ..ClipView::new(clip, code.as_str())
    })
}

async fn by_code(state: &AppState, code: &str) -> Result<(Clip, ClipCode), ApiError> {
    let code = ClipCode::parse(code).ok_or(ControlError::ClipNotFound)?;
    Ok((state.store.clip_by_code(code.clone()).await?, code))
}

/// What a clip's link opens (no credentials: the code is the key). Rate-limited per address
/// like a listen link's entry point.
#[utoipa::path(get, path = "/api/v1/clips/{code}", tag = "recordings",
    params(("code" = String, Path, description = "The clip's code (from its link)")),
    responses((status = 200, body = ClipView), (status = 404, body = Problem), (status = 429, body = Problem)))]
pub async fn get_clip(
    State(state): State<AppState>,
    _allowed: ListenerAllowance,
    ApiPath(code): ApiPath<String>,
) -> Result<axum::Json<ClipView>, ApiError> {
    let (clip, code) = by_code(&state, &code).await?;
    Ok(axum::Json(ClipView::new(clip, code.as_str())))
}

/// A clip's audio (Ogg Opus), with HTTP range requests.
#[utoipa::path(get, path = "/api/v1/clips/{code}/audio", tag = "recordings",
    params(("code" = String, Path, description = "The clip's code (from its link)"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=start-end`, `bytes=start-` or `bytes=-suffix`")),
    responses((status = 200, description = "The whole file", content_type = "audio/ogg"),
        (status = 206, description = "The range asked for", content_type = "audio/ogg"),
        (status = 404, body = Problem), (status = 416, description = "The range is past the end", body = Problem)))]
pub async fn download_clip(
    State(state): State<AppState>,
    ApiPath(code): ApiPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (clip, _) = by_code(&state, &code).await?;
    let headers = request.headers().clone();
    if let Some(answer) = on_its_node(&state, &clip.node, request).await {
        return answer;
    }
    serve_file(&state.recordings.clip_path(&clip.id), &headers).await
}
