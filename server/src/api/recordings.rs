//! `/api/v1/rooms/{room}/recording` (start, stop) and `/api/v1/rooms/{room}/recordings` (list,
//! who spoke when, the audio with range requests). Moderators of the room or the operator; a
//! recording's detail and audio also open to a replay token for it (see [`super::replays`]).
//! Starting and stopping ask the live room (forwarded to its node in a cluster); a recording's
//! file is served by the node that holds it.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, ApiQuery, Caller, OptionalApiJson, room_id};
use super::page_request;
use super::participants::live_room;
use super::replays::Viewer;
use super::state::AppState;
use super::views::{
    PageQuery, RecordingDetail, RecordingPage, RecordingView, StartRecording, TrackView,
};
use crate::control::{ControlError, ParticipantId, Recording, RecordingId};
use crate::recording::SpeakersAt;
use crate::room::{Command, RecordingOptions};

/// Start recording the room's mix (and, if asked, a track of each speaker). Everyone in the
/// room is told; the audit log names who. Starting a room that is recorded already answers its
/// current recording.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/recording", tag = "recordings",
    params(("room" = String, Path, description = "Room id")),
    request_body(content = Option<StartRecording>, description = "Optional"),
    responses((status = 201, body = RecordingView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, description = "Nobody is in the room", body = Problem),
        (status = 410, body = Problem), (status = 503, description = "The recording could not start", body = Problem)),
    security(("bearer" = [])))]
pub async fn start_recording(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    OptionalApiJson(body): OptionalApiJson<StartRecording>,
) -> Result<(StatusCode, axum::Json<RecordingView>), ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    let options = RecordingOptions {
        speaker_tracks: body.speaker_tracks,
    };
    state
        .live
        .command(&room, caller.room_actor(), Command::StartRecording(options))
        .await?;
    match state.recordings.current(&room) {
        Some(recording) => Ok((StatusCode::CREATED, axum::Json(recording.into()))),
        None => Err(ApiError {
            retry_after_secs: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recording_unavailable",
                "the server could not start recording this room (see its log)",
            )
        }),
    }
}

/// Stop recording; the file is closed when this answers.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/recording", tag = "recordings",
    params(("room" = String, Path, description = "Room id")),
    responses((status = 204, description = "Stopped (or was not recorded)"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 410, body = Problem)),
    security(("bearer" = [])))]
pub async fn stop_recording(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let room = live_room(&state, &caller, &room).await?;
    state
        .live
        .command(&room, caller.room_actor(), Command::StopRecording)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The room's recordings, oldest first (ended rooms' too).
#[utoipa::path(get, path = "/api/v1/rooms/{room}/recordings", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), PageQuery),
    responses((status = 200, body = RecordingPage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_recordings(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<RecordingPage>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let page = state
        .store
        .list_recordings(room, page_request(&query, &state)?)
        .await?;
    Ok(axum::Json(RecordingPage::new(
        page.map(RecordingView::from),
    )))
}

/// The recording of `room` named by `id`, for a moderator of that room, the operator, or the
/// holder of a replay token for it.
pub(super) async fn find(
    state: &AppState,
    viewer: &Viewer,
    room: &str,
    id: &str,
) -> Result<Recording, ApiError> {
    let room = room_id(room)?;
    let id = RecordingId::parse(id);
    viewer.require_reader_of(state, &room, id.as_ref()).await?;
    let id = id.ok_or(ControlError::RecordingNotFound)?;
    Ok(state.store.recording(room, id).await?)
}

/// In a cluster, a request about a file another node holds is answered by that node.
pub(super) async fn on_its_node(
    state: &AppState,
    holder: &str,
    request: Request,
) -> Option<Result<Response, ApiError>> {
    let cluster = state.cluster.as_ref()?;
    if holder == state.node.name {
        return None;
    }
    let node = match cluster.node(holder).await {
        Ok(Some(node)) => node,
        _ => {
            return Some(Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_unreachable",
                "the node that holds this recording is not in the cluster now",
            )));
        }
    };
    let client_ip = match request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
    {
        Some(ConnectInfo(addr)) => super::extract::client_ip(state, request.headers(), addr.ip()),
        None => return Some(Err(ApiError::internal())),
    };
    let now = state.clock.now_ms();
    Some(
        super::forward::pass_on(state, node.reach(), &node.name, client_ip, request, now)
            .await
            .map_err(|e| {
                tracing::warn!(node = %node.name, error = %e, "the recording's node did not answer");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node_unreachable",
                    "the node that holds this recording did not answer; try again in a moment",
                )
            }),
    )
}

/// One recording, with who spoke when.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/recordings/{recording}", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id")),
    responses((status = 200, body = RecordingDetail), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_recording(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiPath((room, id)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let recording = find(&state, &viewer, &room, &id).await?;
    if let Some(answer) = on_its_node(&state, &recording.node, request).await {
        return answer;
    }
    let speakers = state.recordings.timeline(&recording.id).await;
    let manifest = state.recordings.tracks(&recording).await;
    let tracked = manifest
        .iter()
        .flat_map(|m| &m.tracks)
        .map(|t| &t.participant);
    let names = speaker_names(&state, &recording, &speakers, tracked).await?;
    let (speaker_tracks, manifest) = match manifest {
        Some(manifest) => (true, manifest),
        None => (false, Default::default()),
    };
    let base = format!(
        "/api/v1/rooms/{}/recordings/{}",
        recording.room_id, recording.id
    );
    let tracks = manifest
        .tracks
        .into_iter()
        .map(|track| TrackView {
            audio_path: format!("{base}/tracks/{}/audio", track.track),
            track,
        })
        .collect();
    Ok(axum::Json(RecordingDetail {
        recording: recording.into(),
        speakers,
        names,
        speaker_tracks,
        tracks,
        untracked: manifest.untracked,
    })
    .into_response())
}

/// Delete a recording: its file, its timeline, its replay links and its clips. A recording still being
/// written must be stopped first.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/recordings/{recording}", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "Still being written", body = Problem)),
    security(("bearer" = [])))]
pub async fn delete_recording(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((room, id)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let recording = find(&state, &Viewer::Caller(caller.clone()), &room, &id).await?;
    if let Some(answer) = on_its_node(&state, &recording.node, request).await {
        return answer;
    }
    let (deleted, clips) = state
        .store
        .delete_recording(
            recording.room_id,
            recording.id,
            caller.actor(),
            state.clock.now_ms(),
        )
        .await?;
    // The row is gone first: a file left behind by a failure here costs disk, never a
    // recording listed without its audio.
    if let Err(e) = state.recordings.delete_files(&deleted.id).await {
        tracing::error!(recording = %deleted.id, error = %e, "cannot delete a recording's files");
    }
    // Clips of a recording are cut on the node that holds it: their files are here too.
    let clips: Vec<_> = clips.into_iter().map(|c| c.id).collect();
    state.recordings.delete_clip_files(&clips).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The most participants a detail names (the timeline itself is bounded in bytes).
const MAX_NAMED: usize = 1000;

/// Display names of who the timeline says spoke, and of whose tracks there are.
async fn speaker_names<'a>(
    state: &AppState,
    recording: &Recording,
    timeline: &'a [SpeakersAt],
    tracked: impl Iterator<Item = &'a ParticipantId>,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let ids: std::collections::BTreeSet<&ParticipantId> = timeline
        .iter()
        .flat_map(|at| &at.speakers)
        .chain(tracked)
        .collect();
    let ids = ids.into_iter().take(MAX_NAMED).cloned().collect();
    let names = state
        .store
        .display_names(recording.room_id.clone(), ids)
        .await?;
    Ok(names
        .into_iter()
        .map(|(id, name)| (id.to_string(), name))
        .collect())
}

/// The recording's audio (Ogg Opus), with HTTP range requests. A recording still being
/// written can be fetched too: up to its last whole page.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/recordings/{recording}/audio", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id"),
        ("access_token" = Option<String>, Query, description = "A replay token, where no Authorization header can be sent (an `<audio>` element)"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=start-end`, `bytes=start-` or `bytes=-suffix`")),
    responses((status = 200, description = "The whole file", content_type = "audio/ogg"),
        (status = 206, description = "The range asked for", content_type = "audio/ogg"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 416, description = "The range is past the end", body = Problem)),
    security(("bearer" = [])))]
pub async fn download_audio(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiPath((room, id)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let (recording, headers) = match held_here(&state, &viewer, &room, &id, request).await? {
        Held::Here(recording, headers) => (recording, headers),
        Held::There(answer) => return Ok(answer),
    };
    serve_file(&state.recordings.audio_path(&recording.id), &headers).await
}

/// Where a recording's files are, for a download.
enum Held {
    /// On this node: the recording and the request's headers (its `Range`).
    Here(Recording, HeaderMap),
    /// Another node holds them; its answer.
    There(Response),
}

/// The recording a viewer may read, if this node holds its files; else what the node that
/// does answered.
async fn held_here(
    state: &AppState,
    viewer: &Viewer,
    room: &str,
    id: &str,
    request: Request,
) -> Result<Held, ApiError> {
    let recording = find(state, viewer, room, id).await?;
    let headers = request.headers().clone();
    match on_its_node(state, &recording.node, request).await {
        Some(answer) => answer.map(Held::There),
        None => Ok(Held::Here(recording, headers)),
    }
}

/// One speaker's track of a recording (Ogg Opus), with HTTP range requests, open to whoever
/// may play the recording. A recording still being written can be fetched too.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/recordings/{recording}/tracks/{track}/audio", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id"),
        ("track" = u32, Path, description = "The track's number, from 1"),
        ("access_token" = Option<String>, Query, description = "A replay token, where no Authorization header can be sent (an `<audio>` element)"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=start-end`, `bytes=start-` or `bytes=-suffix`")),
    responses((status = 200, description = "The whole file", content_type = "audio/ogg"),
        (status = 206, description = "The range asked for", content_type = "audio/ogg"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No such recording, or no such track of it", body = Problem),
        (status = 416, description = "The range is past the end", body = Problem)),
    security(("bearer" = [])))]
pub async fn download_track(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiPath((room, id, track)): ApiPath<(String, String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let (recording, headers) = match held_here(&state, &viewer, &room, &id, request).await? {
        Held::Here(recording, headers) => (recording, headers),
        Held::There(answer) => return Ok(answer),
    };
    let no_track = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "track_not_found",
            "this recording has no such speaker track",
        )
    };
    let track = crate::recording::tracks::track_number(&track).ok_or_else(no_track)?;
    let known = state.recordings.tracks(&recording).await;
    if !known.is_some_and(|m| m.tracks.iter().any(|t| t.track == track)) {
        return Err(no_track());
    }
    serve_file(&state.recordings.track_path(&recording.id, track), &headers).await
}

pub(super) async fn serve_file(
    path: &std::path::Path,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "recording_not_found",
                "this recording has no audio",
            ));
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open a recording");
            return Err(ApiError::internal());
        }
    };
    let len = file
        .metadata()
        .await
        .map_err(|_| ApiError::internal())?
        .len();
    let asked = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match asked {
        None | Some(RangeAsked::Ignored) => (StatusCode::OK, 0, len),
        Some(RangeAsked::Bytes(start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(RangeAsked::Unsatisfiable) => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {len} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|_| ApiError::internal())?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(end - start)));
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "audio/ogg")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CACHE_CONTROL, "private, no-store");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    response.body(body).map_err(|_| ApiError::internal())
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsked {
    /// Bytes `start..end` (end exclusive).
    Bytes(u64, u64),
    /// Past the end: 416.
    Unsatisfiable,
    /// Not one byte range we understand (several ranges, another unit, malformed): the whole
    /// file is served, as RFC 9110 allows.
    Ignored,
}

fn parse_range(value: &str, len: u64) -> RangeAsked {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAsked::Ignored;
    };
    if spec.contains(',') {
        return RangeAsked::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsked::Ignored;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.is_empty(), number(first), number(last)) {
        // `-n`: the last n bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                RangeAsked::Unsatisfiable
            } else {
                RangeAsked::Bytes(len.saturating_sub(suffix), len)
            }
        }
        (false, Some(start), None) if last.is_empty() => {
            if start >= len {
                RangeAsked::Unsatisfiable
            } else {
                RangeAsked::Bytes(start, len)
            }
        }
        (false, Some(start), Some(end)) if start <= end => {
            if start >= len {
                RangeAsked::Unsatisfiable
            } else {
                RangeAsked::Bytes(start, end.min(len - 1) + 1)
            }
        }
        _ => RangeAsked::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsked::*;
        let cases = [
            ("bytes=0-99", Bytes(0, 100)),
            ("bytes=100-", Bytes(100, 1000)),
            ("bytes=-100", Bytes(900, 1000)),
            ("bytes=-5000", Bytes(0, 1000)),
            ("bytes=990-5000", Bytes(990, 1000)),
            ("bytes=999-999", Bytes(999, 1000)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-2000", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=5-4", Ignored),
            ("bytes=0-1,5-6", Ignored),
            ("items=0-1", Ignored),
            ("bytes=a-b", Ignored),
            ("bytes=-", Ignored),
            ("bytes=99999999999999999999999-", Ignored),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_range(header, 1000), expected, "{header}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }
}
