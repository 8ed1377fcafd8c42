//! The browser client: its files (embedded at build time from `client-web/`) and the pages
//! that start it. `/i/{code}` looks the invite up without using it, so the landing page can
//! show the room's title before anyone joins; `/r/{code}` is the replay page of a replay link,
//! `/l/{code}` a listen link's page, `/c/{code}` a clip's.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Value, json};

use super::extract::JoinAllowance;
use super::{ApiError, AppState};
use crate::control::{ControlError, InviteCode};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/client_assets.rs"));
}

/// Where the invite data goes in `index.html`.
const MARKER: &str = "<!--STOA_INVITE-->";

/// The client is only its own files; the signaling socket is the same origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// The pages and files, each answering GET (and HEAD). Kept as one table so the list the
/// tests check (`paths`) is the list the router serves.
fn table() -> [(&'static str, MethodRouter<AppState>); 6] {
    [
        ("/", get(home)),
        ("/i/{code}", get(invite_page)),
        ("/r/{code}", get(replay_page)),
        ("/l/{code}", get(listen_page)),
        ("/c/{code}", get(clip_page)),
        ("/app/{file}", get(asset)),
    ]
}

pub fn routes() -> Router<AppState> {
    table()
        .into_iter()
        .fold(Router::new(), |router, (path, route)| {
            router.route(path, route)
        })
}

/// The path templates `routes` serves, for the tests that must cover every route.
pub fn paths() -> Vec<&'static str> {
    table().into_iter().map(|(path, _)| path).collect()
}

/// The embedded files, by name (for tests and the docs).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    assets::ASSETS.iter().map(|(name, _)| *name)
}

fn find(name: &str) -> Option<&'static [u8]> {
    assets::ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("webmanifest") => "application/manifest+json",
        Some("wav") => "audio/wav",
        _ => "application/octet-stream",
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match find(&file) {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&file)),
                (header::CACHE_CONTROL, "no-cache"),
                // `index.html` opened as a file must run under the page's policy.
                (header::CONTENT_SECURITY_POLICY, CSP),
            ],
            bytes,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response(),
    }
}

async fn home() -> Response {
    page(
        StatusCode::OK,
        json!({
            "valid": false,
            "reason": "no_invite",
            "message": "Open an invite link to join a room.",
        }),
    )
}

/// Rate-limited like redeeming, since it also tells whether a code is valid.
async fn invite_page(
    State(state): State<AppState>,
    allowance: Result<JoinAllowance, ApiError>,
    Path(code): Path<String>,
) -> Response {
    if let Err(limited) = allowance {
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            json!({
                "code": code,
                "valid": false,
                "reason": "rate_limited",
                "message": "Too many attempts from your network. Wait a minute and reload.",
            }),
        );
        if let Some(secs) = limited.retry_after_secs
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let checked = match InviteCode::parse(&code) {
        Some(parsed) => {
            state
                .store
                .preview_invite(parsed, state.clock.now_ms())
                .await
        }
        None => Err(ControlError::InviteInvalid),
    };
    let (status, info) = match checked {
        Ok((room, invite)) => (
            StatusCode::OK,
            json!({
                "code": code,
                "valid": true,
                "room_id": room.id,
                "room_title": room.title,
                "role": invite.role,
                // The page keeps the code no longer than the invite works.
                "expires_at": invite.expires_at_ms.map(crate::clock::rfc3339),
            }),
        ),
        Err(e) => {
            let (status, reason, message) = match e {
                ControlError::InviteInvalid => (
                    StatusCode::NOT_FOUND,
                    "invite_invalid",
                    "This invite link is not valid. Ask the person who sent it for a new one.",
                ),
                ControlError::InviteExpired => (
                    StatusCode::GONE,
                    "invite_expired",
                    "This invite link has expired. Ask for a new one.",
                ),
                ControlError::InviteUsedUp => (
                    StatusCode::GONE,
                    "invite_used_up",
                    "This invite link has been used as many times as it allows.",
                ),
                ControlError::RoomEnded => (StatusCode::GONE, "room_ended", "This room has ended."),
                other => {
                    tracing::error!(error = %other, "could not look up an invite");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Something went wrong on the server. Try again in a moment.",
                    )
                }
            };
            (
                status,
                json!({ "code": code, "valid": false, "reason": reason, "message": message }),
            )
        }
    };
    page(status, info)
}

/// The replay page of a replay link. It redeems the link itself (`POST /api/v1/replay`), so
/// the page is the same for every code and looks nothing up.
async fn replay_page() -> Response {
    match find("replay.html") {
        Some(html) => html_page(StatusCode::OK, html),
        None => client_missing(),
    }
}

/// A listen link's page: the room's public broadcast. The page reads its code from its own
/// address and asks the link's entry point (rate-limited there), so serving it costs nothing.
async fn listen_page() -> Response {
    match find("listen.html") {
        Some(html) => html_page(StatusCode::OK, html),
        None => client_missing(),
    }
}

/// A clip's page: a player for one clip. It reads its code from its own address and asks the
/// clip's entry point (rate-limited there).
async fn clip_page() -> Response {
    match find("clip.html") {
        Some(html) => html_page(StatusCode::OK, html),
        None => client_missing(),
    }
}

fn client_missing() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "client_missing",
        "this build has no browser client",
    )
    .into_response()
}

/// A page of the client, under the client's policy.
fn html_page(status: StatusCode, html: impl IntoResponse) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

/// `index.html` with the invite data in place of the marker, as a JSON data block. `<` is
/// escaped so no value (a room title) can close the block.
fn page(status: StatusCode, info: Value) -> Response {
    let Some(index) = find("index.html") else {
        return client_missing();
    };
    let data = info.to_string().replace('<', "\\u003c");
    let html = String::from_utf8_lossy(index).replacen(
        MARKER,
        &format!(r#"<script type="application/json" id="stoa-invite">{data}</script>"#),
        1,
    );
    html_page(status, html)
}
