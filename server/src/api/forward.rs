//! In a cluster, REST calls that act on a live room, and its broadcast's files, are answered by
//! the node where the room lives: any other node passes the request on and hands back the
//! answer (a shared cache in front keeps caching it: the answer's headers pass unchanged).
//!
//! Either way the answer names the room's node in a `Stoa-Node` header.
//!
//! The passed-on request carries `Stoa-Forwarded: v1 {node} {client ip} {unix ms} {mac}`, an
//! HMAC (with a key derived from the cluster's signing key) over those fields, the method and
//! the path. The home node trusts the client address in it for rate limits and the failed
//! authentication throttle, and never passes such a request on again. A header that does not
//! verify is ignored: the request is handled as the client's own.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::cluster::Home;

use crate::cluster::HEADER;

/// The room a path acts on live, if it is one of those paths: `/api/v1/rooms/{room}`,
/// everything under `/api/v1/rooms/{room}/participants`, starting and stopping its recording
/// (`/api/v1/rooms/{room}/recording`), clipping its last seconds (`/api/v1/rooms/{room}/clips`),
/// its webhook endpoint (`/api/v1/rooms/{room}/webhook`: the live room is told when it
/// changes), and the room's broadcast files under `/broadcast/{room}/` (its mix runs where its
/// media is).
fn live_room_in(path: &str) -> Option<&str> {
    if let Some(rest) = path.strip_prefix("/broadcast/") {
        let (room, _) = rest.split_once('/')?;
        return (!room.is_empty()).then_some(room);
    }
    let rest = path.strip_prefix("/api/v1/rooms/")?;
    let (room, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let live = tail.is_empty()
        || tail == "participants"
        || tail.starts_with("participants/")
        || tail == "recording"
        || tail == "clips"
        || tail == "webhook";
    (live && !room.is_empty()).then_some(room)
}

/// Middleware: passes a call on a live room to the room's home node when that is another.
pub async fn to_home(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    let Some(room) = live_room_in(&path) else {
        return next.run(request).await;
    };
    let now = state.clock.now_ms();
    if request.headers().contains_key(HEADER)
        && state
            .forwarding
            .verify(request.headers(), request.method(), &path, now)
            .is_some()
    {
        return next.run(request).await;
    }
    // Live here: this node is its home (a lease it lost is noticed at the next renewal, within
    // a heartbeat), and Redis need not be asked on every call or broadcast file.
    if crate::control::RoomId::parse(room).is_some_and(|id| state.live.get(&id).is_some()) {
        let mut response = next.run(request).await;
        // Said the same way as by a node that passed the call on.
        if let Ok(name) = HeaderValue::from_str(&state.node.name) {
            response.headers_mut().insert("stoa-node", name);
        }
        return response;
    }
    // Where the room lives now; not live anywhere, here, or Redis unreachable: answered here
    // (a room that is not live needs no home, and its durable facts are in the shared store).
    let node = match cluster.home_of(room).await {
        Ok(Some(Home::Elsewhere(node, _))) => node,
        _ => return next.run(request).await,
    };
    let client_ip = match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => super::extract::client_ip(&state, request.headers(), addr.ip()),
        None => return ApiError::internal().into_response(),
    };
    match pass_on(&state, node.reach(), &node.name, client_ip, request, now).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "the room's node did not answer");
            ApiError {
                retry_after_secs: Some(2),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node_unreachable",
                    "the node this room lives on did not answer; try again in a moment",
                )
            }
            .into_response()
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the forwarder sets itself.
fn passes(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
            | HEADER
    )
}

pub(super) async fn pass_on(
    state: &AppState,
    node_url: &str,
    node_name: &str,
    client_ip: IpAddr,
    request: Request,
    now: i64,
) -> Result<Response, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let target = match parts.uri.query() {
        Some(query) => format!("{node_url}{path}?{query}"),
        None => format!("{node_url}{path}"),
    };
    // The body limit layer already bounded it.
    let body = axum::body::to_bytes(body, state.config.limits.max_body_bytes)
        .await
        .unwrap_or_default();
    let mut outgoing = state
        .forwarding
        .http()
        .request(parts.method.clone(), target)
        .body(body);
    for (name, value) in &parts.headers {
        if passes(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let me = state.node.name.as_str();
    outgoing = outgoing.header(
        HEADER,
        state
            .forwarding
            .header(me, client_ip, now, &parts.method, path),
    );
    let answer = outgoing.send().await?;
    tracing::debug!(node = %node_name, status = %answer.status(), %path, "passed on to the room's node");
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if passes(name) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await?;
    Ok(response
        .header(
            "stoa-node",
            HeaderValue::from_str(node_name).unwrap_or(HeaderValue::from_static("?")),
        )
        .body(Body::from(bytes))
        .unwrap_or_else(|_| ApiError::internal().into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calls_on_live_rooms_are_passed_on() {
        assert_eq!(live_room_in("/api/v1/rooms/rm_x"), Some("rm_x"));
        assert_eq!(
            live_room_in("/api/v1/rooms/rm_x/participants"),
            Some("rm_x")
        );
        assert_eq!(
            live_room_in("/api/v1/rooms/rm_x/participants/pt_y/mute"),
            Some("rm_x")
        );
        assert_eq!(live_room_in("/api/v1/rooms/rm_x/recording"), Some("rm_x"));
        assert_eq!(live_room_in("/api/v1/rooms/rm_x/clips"), Some("rm_x"));
        // A finished recording is served by the node that holds its file, not the room's.
        assert_eq!(live_room_in("/api/v1/rooms/rm_x/recordings"), None);
        assert_eq!(live_room_in("/api/v1/rooms/rm_x/invites"), None);
        assert_eq!(live_room_in("/api/v1/rooms/rm_x/events"), None);
        assert_eq!(live_room_in("/api/v1/rooms/rm_x/participantsx"), None);
        assert_eq!(live_room_in("/api/v1/rooms"), None);
        assert_eq!(live_room_in("/api/v1/rooms/"), None);
        assert_eq!(live_room_in("/api/v1/join"), None);
        assert_eq!(
            live_room_in("/broadcast/rm_x/123.sig/playlist.m3u8"),
            Some("rm_x")
        );
        assert_eq!(live_room_in("/broadcast/"), None);
        assert_eq!(live_room_in("/broadcast//x"), None);
    }
}
