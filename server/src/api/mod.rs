//! The HTTP edge: the moderator REST API, health, metrics and the OpenAPI document.
//! Handlers parse, authenticate, call the store or the room, and render; no rules here.

mod auth_throttle;
mod broadcast;
mod clips;
mod cluster;
mod error;
mod events;
mod extract;
mod forward;
mod headers;
mod invites;
mod join;
mod listen;
mod origin;
mod participants;
mod recordings;
mod replays;
mod room_webhooks;
mod rooms;
mod signal;
mod state;
mod system;
pub mod views;
pub mod web;
mod webhooks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, Problem};
pub use extract::{Caller, ClientIp};
pub use state::AppState;

use crate::control::PageRequest;
use crate::metrics::HttpLabels;

#[derive(OpenApi)]
#[openapi(
    info(title = "Stoa API", description = "Moderator REST API of Stoa, a server for live invite-only audio rooms."),
    modifiers(&BearerAuth),
    tags(
        (name = "rooms", description = "Rooms and their audit log"),
        (name = "invites", description = "Invite links"),
        (name = "join", description = "Redeeming an invite"),
        (name = "participants", description = "Live participants and moderation"),
        (name = "recordings", description = "Recording a room's mix, and the recordings"),
        (name = "listen", description = "Listen links: a room's public broadcast, without joining"),
        (name = "signal", description = "The signaling WebSocket (see docs/protocol.md)"),
        (name = "webhooks", description = "A room's own webhook endpoint (see docs/webhooks.md)"),
        (name = "system", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator API key, or a moderator's session token"))
                    .build(),
            ),
        );
    }
}

/// Problem answers are `application/problem+json`, not plain JSON; utoipa cannot say so per
/// response without repeating it everywhere, so the document is corrected here, once.
struct ProblemContentType;

impl Modify for ProblemContentType {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for response in operation.responses.responses.values_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let is_problem = response.content.get("application/json").is_some_and(|c| {
                        matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"))
                    });
                    if is_problem
                        && let Some(content) = response.content.shift_remove("application/json")
                    {
                        response
                            .content
                            .insert("application/problem+json".to_owned(), content);
                    }
                }
            }
        }
    }
}

/// Every route the server answers, with its OpenAPI description alongside.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(rooms::create_room, rooms::list_rooms))
        .routes(routes!(
            rooms::get_room,
            rooms::update_room,
            rooms::end_room
        ))
        .routes(routes!(invites::create_invite, invites::list_invites))
        .routes(routes!(invites::revoke_invite))
        .routes(routes!(join::redeem))
        .routes(routes!(participants::list_participants))
        .routes(routes!(participants::set_role))
        .routes(routes!(participants::mute))
        .routes(routes!(participants::remove))
        .routes(routes!(events::list_events))
        .routes(routes!(
            recordings::start_recording,
            recordings::stop_recording
        ))
        .routes(routes!(recordings::list_recordings))
        .routes(routes!(
            recordings::get_recording,
            recordings::delete_recording
        ))
        .routes(routes!(recordings::download_audio))
        .routes(routes!(recordings::download_track))
        .routes(routes!(replays::create_replay_link))
        .routes(routes!(replays::list_replay_links))
        .routes(routes!(replays::revoke_replay_link))
        .routes(routes!(replays::redeem_replay))
        .routes(routes!(clips::clip_live_room))
        .routes(routes!(clips::clip_recording))
        .routes(routes!(clips::get_clip))
        .routes(routes!(clips::download_clip))
        .routes(routes!(broadcast::broadcast_link))
        .routes(routes!(
            listen::create_listen_link,
            listen::list_listen_links
        ))
        .routes(routes!(listen::revoke_listen_link))
        .routes(routes!(listen::open_listen_link))
        .routes(routes!(cluster::list_nodes))
        .routes(routes!(cluster::drain))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(
            room_webhooks::set_room_webhook,
            room_webhooks::get_room_webhook,
            room_webhooks::delete_room_webhook
        ))
        .routes(routes!(room_webhooks::rotate_room_webhook_secret))
        .routes(routes!(room_webhooks::list_room_webhook_deliveries))
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(signal::signal))
}

/// The OpenAPI document as served at `/api/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut openapi = api_routes().split_for_parts().1;
    // Paths are added by the router after `ApiDoc`'s own modifiers ran.
    ProblemContentType.modify(&mut openapi);
    openapi
}

/// Assembles the whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (router, mut openapi) = api_routes().split_for_parts();
    ProblemContentType.modify(&mut openapi);
    let _ = state.openapi_json.set(
        openapi
            .to_pretty_json()
            .expect("the OpenAPI document serialises"),
    );
    router
        .merge(web::routes())
        .route(
            "/broadcast/{room}/{access}/{file}",
            axum::routing::get(broadcast::broadcast_file),
        )
        .route(
            "/broadcast/{room}/{access}/heartbeat",
            axum::routing::post(listen::heartbeat),
        )
        .route(
            crate::signal::relay_links::GRANTS_PATH,
            axum::routing::post(cluster::relay_link).delete(cluster::relay_link),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::to_home,
        ))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized_bodies,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            origin::check_origin,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn(close_after_refusals))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            headers::add_security_headers,
        ))
        .with_state(state)
}

/// Refusals often come before the body is read (401, 403, 429, 413 …); hyper then cannot reuse
/// the connection and would drop it silently, so the client's next request on it would fail.
/// An error answer to a request that sent a body therefore says `Connection: close`. A request
/// framed both by `Content-Length` and by `Transfer-Encoding` is refused and its connection
/// closed (RFC 9112, section 6.3): a proxy in front of us might have framed it the other way.
async fn close_after_refusals(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut response = if chunked && headers.contains_key(header::CONTENT_LENGTH) {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "ambiguous_length",
            "a request may not have both Content-Length and Transfer-Encoding",
        )
        .into_response()
    } else {
        next.run(request).await
    };
    let has_body = chunked || declared.is_some_and(|n| n > 0);
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

/// Oversized bodies we still read (and drop) before answering, up to this size.
const DRAIN_LIMIT: usize = 1 << 20;

/// Refuses a body whose declared length is over the limit. A moderately oversized body is read
/// and dropped first (bounded in size and time): closing a connection with unread data makes
/// the kernel reset it, and the client would see a broken connection instead of our 413.
async fn refuse_oversized_bodies(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(len) if len > limit => {
            if len <= DRAIN_LIMIT {
                let drain = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            }
            ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than the {limit} bytes the server accepts"),
            )
            .into_response()
        }
        _ => next.run(request).await,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    // A fixed set, so made-up methods cannot mint new series.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Turns `?limit=&cursor=` into a store page request, refusing nonsense.
fn page_request(q: &views::PageQuery, state: &AppState) -> Result<PageRequest, ApiError> {
    let (after, limit) = page_bounds(q, state, |c| c.parse::<i64>().ok().filter(|n| *n >= 0))?;
    Ok(PageRequest { after, limit })
}

/// The checked `limit` and the cursor, parsed by `cursor` (each list has its own kind).
fn page_bounds<C>(
    q: &views::PageQuery,
    state: &AppState,
    cursor: impl Fn(&str) -> Option<C>,
) -> Result<(Option<C>, u32), ApiError> {
    let max = state.config.limits.max_page_size;
    let limit = q.limit.unwrap_or(50.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {max}"),
        ));
    }
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(cursor(c).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor must be a next_cursor value from an earlier page",
            )
        })?),
    };
    Ok((after, limit))
}
