//! The broadcast tier over HTTP: a room's LL-HLS playlist, parts and segments under a signed
//! path (`/broadcast/{room}/{period}.{signature}/…`), and the REST call that hands out that
//! path. See `docs/broadcast.md`.
//!
//! Made for shared caches: parts, segments and the init segment never change once published
//! (`immutable`, a year); a playlist may be a second old, or, for a blocking request (its URL
//! names the part it waits for), a few seconds. Nothing depends on who asks: no cookie, no
//! per-user query string, the same bytes for everyone.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{ApiPath, Caller, room_id};
use super::state::AppState;
use super::views::BroadcastLink;
use crate::broadcast::hls::{Resource, parse_name};
use crate::broadcast::{Access, BroadcastError, Live};
use crate::control::RoomId;

/// How long a blocking request waits for the part it names: three target durations.
const BLOCK_FOR: Duration = Duration::from_secs(3);
/// Parts ahead of the live edge a request may wait for (the spec's "Advance Part Limit").
const ADVANCE_PARTS: u32 = 3;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const MEDIA_TYPE: &str = "audio/mp4";

/// The link to the room's broadcast (the stage mixed once, over LL-HLS). The same link for
/// everyone during its period, so caches in front of the server keep one copy.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/broadcast",
    tag = "rooms",
    params(("room" = String, Path, description = "Room id")),
    responses(
        (status = 200, description = "The link", body = BroadcastLink),
        (status = 401, description = "No valid credential", body = super::Problem),
        (status = 403, description = "A token for another room", body = super::Problem),
        (status = 404, description = "No such room, or broadcasts are off", body = super::Problem),
        (status = 410, description = "The room has ended", body = super::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn broadcast_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
) -> Result<Json<BroadcastLink>, ApiError> {
    let room = room_id(&room)?;
    // The operator, or anyone whose session is for this room: the broadcast carries nothing
    // they cannot already hear.
    if let Caller::Participant(claims) = &caller
        && claims.room != room
    {
        return Err(ApiError::forbidden(
            "wrong_room",
            "this token is for another room",
        ));
    }
    if !state.broadcasts.settings().enabled {
        return Err(refusal(BroadcastError::Disabled));
    }
    let stored = state.store.room(room.clone()).await?;
    if stored.is_ended() {
        return Err(refusal(BroadcastError::RoomEnded));
    }
    Ok(Json(state.broadcast_link(&room)))
}

pub(super) fn refusal(error: BroadcastError) -> ApiError {
    let (status, code) = match error {
        BroadcastError::RoomNotFound => (StatusCode::NOT_FOUND, "room_not_found"),
        BroadcastError::RoomEnded => (StatusCode::GONE, "room_ended"),
        BroadcastError::Disabled => (StatusCode::NOT_FOUND, "broadcast_disabled"),
        BroadcastError::Full => (StatusCode::SERVICE_UNAVAILABLE, "broadcast_full"),
        BroadcastError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, code, error.to_string())
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such file in this broadcast (it may be too old, or from an earlier broadcast)",
    )
}

fn bad_request(detail: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_hls_request", detail)
}

/// `_HLS_msn` and `_HLS_part` of a playlist request (RFC 8216bis, 6.2.5.2); other parameters
/// (`_HLS_skip`: we send no delta playlists) are ignored.
fn blocking_params(query: Option<&str>) -> Result<Option<(u64, Option<u32>)>, ApiError> {
    let (mut msn, mut part) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            (value.len() <= 12 && !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad_request("_HLS_msn and _HLS_part are decimal numbers"))
        };
        match key {
            "_HLS_msn" => msn = Some(number()?),
            "_HLS_part" => {
                part = Some(
                    u32::try_from(number()?).map_err(|_| bad_request("_HLS_part is too large"))?,
                )
            }
            _ => {}
        }
    }
    match (msn, part) {
        (None, Some(_)) => Err(bad_request("_HLS_part needs _HLS_msn")),
        (None, None) => Ok(None),
        (Some(msn), part) => Ok(Some((msn, part))),
    }
}

/// Every file of a broadcast: the playlist (which starts the mix if it is not running) and
/// the media it lists.
pub async fn broadcast_file(
    State(state): State<AppState>,
    Path((room, access, name)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    match serve(&state, &room, &access, &name, query.as_deref()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn serve(
    state: &AppState,
    room: &str,
    access: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(room).ok_or_else(ApiError::room_not_found)?;
    check_link(state, &room, access)?;
    if name == "playlist.m3u8" {
        let blocking = blocking_params(query)?;
        let live = state.broadcasts.ensure(&room).await.map_err(refusal)?;
        live.touch();
        return playlist(&live, blocking).await;
    }
    let live = state.broadcasts.get(&room).ok_or_else(not_found)?;
    live.touch();
    let resource = {
        let stream = live.stream.lock().unwrap_or_else(|e| e.into_inner());
        parse_name(stream.id(), name).ok_or_else(not_found)?
    };
    media(&live, resource).await
}

/// Refuses a request whose `{period}.{signature}` part is not a valid link to the room now.
pub(super) fn check_link(state: &AppState, room: &RoomId, access: &str) -> Result<(), ApiError> {
    match state.broadcasts.check_access(room, access) {
        Access::Valid => Ok(()),
        Access::Expired => Err(ApiError::forbidden(
            "broadcast_link_expired",
            "this broadcast link has expired; ask for a new one",
        )),
        Access::Invalid => Err(ApiError::forbidden(
            "broadcast_link_invalid",
            "this is not a valid broadcast link",
        )),
    }
}

async fn playlist(live: &Live, blocking: Option<(u64, Option<u32>)>) -> Result<Response, ApiError> {
    if let Some((msn, part)) = blocking {
        {
            let stream = live.stream.lock().unwrap_or_else(|e| e.into_inner());
            let next = stream.next_part();
            let too_far = msn > next.msn + 2
                || (msn == next.msn && part.is_some_and(|p| p > next.part + ADVANCE_PARTS));
            if too_far {
                return Err(bad_request("that part is too far ahead of the live edge"));
            }
        }
        wait_for(live, |stream| stream.has(msn, part)).await?;
    } else {
        // A broadcast that just started lists no segment yet; players that read only whole
        // segments (ffmpeg) would find nothing to play. Its first second is worth the wait.
        wait_for(live, |stream| stream.has(0, None)).await?;
    }
    let text = live
        .stream
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .playlist(live.ended());
    // A blocking request's answer holds the part it asked for, whenever it is served again.
    let cache = if blocking.is_some() {
        "public, max-age=10"
    } else {
        "public, max-age=1"
    };
    Ok(respond(text.into(), PLAYLIST_TYPE, cache))
}

async fn media(live: &Live, resource: Resource) -> Result<Response, ApiError> {
    let found = live
        .stream
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&resource);
    let bytes = match found {
        Some(bytes) => bytes,
        // The part the playlist hints at (or a little later): served as soon as it exists.
        None => {
            let Resource::Part(at) = resource else {
                return Err(not_found());
            };
            let next = live
                .stream
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_part();
            if at < next
                || at.msn > next.msn + 1
                || (at.msn == next.msn && at.part > next.part + ADVANCE_PARTS)
            {
                return Err(not_found());
            }
            wait_for(live, |stream| stream.has(at.msn, Some(at.part))).await?;
            live.stream
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&resource)
                .ok_or_else(not_found)?
        }
    };
    Ok(respond(
        bytes,
        MEDIA_TYPE,
        "public, max-age=31536000, immutable",
    ))
}

/// Waits (at most [`BLOCK_FOR`]) until the stream satisfies `ready`.
async fn wait_for(
    live: &Live,
    ready: impl Fn(&crate::broadcast::hls::Stream) -> bool,
) -> Result<(), ApiError> {
    let mut published = live.subscribe();
    let deadline = tokio::time::Instant::now() + BLOCK_FOR;
    loop {
        if ready(&live.stream.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(());
        }
        if live.ended() {
            return Err(not_found());
        }
        match tokio::time::timeout_at(deadline, published.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broadcast_stalled",
                    "the part did not come in time",
                ));
            }
        }
    }
}

fn respond(body: bytes::Bytes, content_type: &'static str, cache: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    // Access is the signed path: pages of any origin (a CDN's) may load it.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        axum::http::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_parameters_are_read_strictly() {
        assert_eq!(blocking_params(None).unwrap(), None);
        assert_eq!(
            blocking_params(Some("_HLS_msn=4")).unwrap(),
            Some((4, None))
        );
        assert_eq!(
            blocking_params(Some("_HLS_msn=4&_HLS_part=2&_HLS_skip=YES")).unwrap(),
            Some((4, Some(2)))
        );
        for bad in [
            "_HLS_part=2",
            "_HLS_msn=-1",
            "_HLS_msn=1e3",
            "_HLS_msn=",
            "_HLS_msn=99999999999999",
            "_HLS_msn=1&_HLS_part=99999999999",
        ] {
            assert!(blocking_params(Some(bad)).is_err(), "{bad}");
        }
    }
}
