//! Listen links over HTTP: a room's public broadcast. Moderators make, list and revoke them
//! (`/api/v1/rooms/{room}/listen-links`); anyone holding one asks its entry point
//! (`GET /api/v1/listen/{code}`) for the room's title and the current signed broadcast path,
//! and their player reports in with a heartbeat (`POST /broadcast/{room}/{access}/heartbeat`)
//! so the room counts them. See `docs/broadcast.md`.
//!
//! Nothing here knows who listens: no identity, no cookie. The entry point's answer is the
//! same for everyone with the link (a shared cache may keep it a few seconds); heartbeats are
//! never cached and are answered by the node where the room's mix runs, with its files.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::broadcast::{check_link, refusal};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, ClientIp, ListenerAllowance, room_id};
use super::invites::check_expiry;
use super::page_request;
use super::state::AppState;
use super::views::{
    CreateListenLink, CreatedListenLinkView, ListenLinkPage, ListenLinkView, ListenView, PageQuery,
};
use crate::broadcast::BroadcastError;
use crate::broadcast::audience::HEARTBEAT_SECS;
use crate::control::{ControlError, ListenCode, ListenLinkId, NewListenLink, RoomId, validate};

/// A heartbeat is `{"client": "<id>"}`; anything much longer is not one.
const MAX_HEARTBEAT_BYTES: usize = 256;
/// How long a shared cache may keep the entry point's answer: a revoked link stops this much
/// later at most.
const ENTRY_CACHE: &str = "public, max-age=5";

/// Open the room's public broadcast: a link anyone may use to hear it, without joining.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/listen-links", tag = "listen",
    params(("room" = String, Path, description = "Room id")),
    request_body = CreateListenLink,
    responses((status = 201, body = CreatedListenLinkView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_listen_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiJson(body): ApiJson<CreateListenLink>,
) -> Result<(StatusCode, axum::Json<CreatedListenLinkView>), ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    check_expiry(body.expires_in_secs)?;
    if !state.broadcasts.settings().enabled {
        return Err(ControlError::invalid(
            "broadcast_disabled",
            "broadcasts are turned off on this server",
        )
        .into());
    }
    let new = NewListenLink {
        label: body.label.as_deref().map(validate::label).transpose()?,
        expires_in_secs: body.expires_in_secs,
    };
    let created = state
        .store
        .create_listen_link(room, new, caller.actor(), state.clock.now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedListenLinkView {
            link: ListenLinkView::from(&created.link),
            url: state.listen_url(created.code.as_str()),
            code: created.code.as_str().to_owned(),
        }),
    ))
}

/// List a room's listen links (without their codes).
#[utoipa::path(get, path = "/api/v1/rooms/{room}/listen-links", tag = "listen",
    params(("room" = String, Path, description = "Room id"), PageQuery),
    responses((status = 200, body = ListenLinkPage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_listen_links(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<ListenLinkPage>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let page = state
        .store
        .list_listen_links(room, page_request(&query, &state)?)
        .await?;
    Ok(axum::Json(ListenLinkPage::new(
        page.map(|l| ListenLinkView::from(&l)),
    )))
}

/// Revoke a listen link, named by its `id`: its entry point stops at once, and the broadcast
/// path it handed out within five to ten minutes.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/listen-links/{link}", tag = "listen",
    params(("room" = String, Path, description = "Room id"), ("link" = String, Path, description = "Listen link id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_listen_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((room, link)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let link = ListenLinkId::parse(&link).ok_or(ControlError::ListenLinkNotFound)?;
    state
        .store
        .revoke_listen_link(room, link, caller.actor(), state.clock.now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A listen link's entry point: the room's title and its broadcast, for anyone with the link.
/// Rate-limited per client address; a code that is not valid counts as a failed
/// authentication.
#[utoipa::path(get, path = "/api/v1/listen/{code}", tag = "listen",
    params(("code" = String, Path, description = "The listen link's code")),
    responses((status = 200, body = ListenView), (status = 404, body = Problem), (status = 410, body = Problem),
        (status = 429, body = Problem)))]
pub async fn open_listen_link(
    State(state): State<AppState>,
    _allowance: ListenerAllowance,
    ClientIp(ip): ClientIp,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.auth_throttle.check(ip) {
        state.metrics.auth_throttled.inc();
        return Err(ApiError::too_many_failures(wait));
    }
    let opened = match ListenCode::parse(&code) {
        Some(code) => {
            state
                .store
                .open_listen_link(code, state.clock.now_ms())
                .await
        }
        None => Err(ControlError::ListenLinkInvalid),
    };
    let (room, _) = match opened {
        Err(ControlError::ListenLinkInvalid) => {
            if let Some(wait) = state.auth_throttle.failed(ip) {
                state.metrics.auth_throttled.inc();
                return Err(ApiError::too_many_failures(wait));
            }
            return Err(ControlError::ListenLinkInvalid.into());
        }
        other => other?,
    };
    if !state.broadcasts.settings().enabled {
        return Err(refusal(BroadcastError::Disabled));
    }
    let link = state.broadcasts.link(&room.id);
    let access = link.path.trim_end_matches("playlist.m3u8");
    let view = ListenView {
        room_id: room.id.clone(),
        title: room.title,
        playlist_url: link.url(&state.base_url),
        expires_at: link.expires_at(),
        heartbeat_url: format!("{}{access}heartbeat", state.base_url),
        heartbeat_secs: HEARTBEAT_SECS,
    };
    let mut response = axum::Json(view).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(ENTRY_CACHE));
    Ok(response)
}

/// An anonymous listener's player reports in: it counts in the room's audience for the next
/// 30 to 60 seconds. Never cached; answered where the room's mix runs.
pub async fn heartbeat(
    State(state): State<AppState>,
    _allowance: ListenerAllowance,
    Path((room, access)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let room = RoomId::parse(&room).ok_or_else(ApiError::room_not_found)?;
    check_link(&state, &room, &access)?;
    let bytes = axum::body::to_bytes(body, MAX_HEARTBEAT_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a heartbeat is at most {MAX_HEARTBEAT_BYTES} bytes"),
            )
        })?;
    let client = client_of(&bytes).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_heartbeat",
            "a heartbeat is {\"client\": \"<16 to 64 letters, digits, - or _>\"}",
        )
    })?;
    let live = state.broadcasts.ensure(&room).await.map_err(refusal)?;
    if live.ended() {
        return Err(refusal(BroadcastError::RoomEnded));
    }
    live.heard(&client, state.clock.now_ms());
    Ok(StatusCode::NO_CONTENT)
}

/// The client id of a heartbeat's body, if it is one.
fn client_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Heartbeat {
        client: String,
    }
    // An object only: serde would also read the struct from an array.
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !value.is_object() {
        return None;
    }
    let Heartbeat { client } = serde_json::from_value(value).ok()?;
    let well_formed = (16..=64).contains(&client.len())
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_read_strictly() {
        assert_eq!(
            client_of(br#"{"client":"abcdefghijklmnop"}"#).as_deref(),
            Some("abcdefghijklmnop")
        );
        for bad in [
            &br#"{"client":"short"}"#[..],
            br#"{"client":"abcdefghijklmnop!"}"#,
            br#"{"client":"abcdefghijklmnop","extra":1}"#,
            br#"{"client":12345678901234567}"#,
            br#"["abcdefghijklmnop"]"#,
            b"not json",
            b"",
        ] {
            assert!(client_of(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"client":"{}"}}"#, "a".repeat(65));
        assert!(client_of(long.as_bytes()).is_none());
    }
}
