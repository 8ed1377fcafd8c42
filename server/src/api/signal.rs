//! `GET /api/v1/signal`: the HTTP side of the signaling WebSocket. Counts sockets per client
//! address, sets the socket's bounds and hands it to `signal`, which runs the protocol.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::StatusCode;
use axum::response::Response;

use super::error::{ApiError, Problem};
use super::extract::ClientIp;
use super::state::AppState;
use crate::signal;

/// The signaling WebSocket.
#[utoipa::path(get, path = "/api/v1/signal", tag = "signal",
    responses(
        (status = 101, description = "WebSocket upgrade; see docs/protocol.md"),
        (status = 426, description = "Not a WebSocket upgrade request", body = Problem),
        (status = 429, description = "Too many sockets from this address", body = Problem),
    ))]
pub async fn signal(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(_) => return Ok(upgrade_required()),
    };
    // Counted before the upgrade, so one address cannot hold an unbounded number of sockets
    // (each costs a task and buffers, authenticated or not).
    let slot = SocketSlot::take(&state, ip).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sockets",
            "too many signaling connections from your address",
        )
    })?;
    // Opened by another node for someone it serves as an edge of a room that lives here: the
    // person is counted where they are, so the socket is not part of this node's load.
    let from_edge = state.cluster.is_some()
        && state
            .forwarding
            .verify(
                &headers,
                &axum::http::Method::GET,
                "/api/v1/signal",
                state.clock.now_ms(),
            )
            .is_some();
    // Messages up to this size are read and refused politely; larger ones end the socket.
    let hard_cap = (state.config.signal.max_message_bytes * 16).max(1 << 20);
    Ok(upgrade
        // tungstenite reserves its read buffer up front, 128 KiB by default: for a protocol
        // whose messages are a few hundred bytes that was half of a listener's memory. Bigger
        // messages are still read whole, in several reads.
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| async move {
            let open = match from_edge {
                true => state.metrics.signal_sockets_from_edges.clone(),
                false => state.metrics.signal_sockets.clone(),
            };
            open.inc();
            signal::run(socket, state.signal.clone(), ip, from_edge).await;
            open.dec();
            drop(slot);
        }))
}

/// Bytes a signaling socket reads at a time (and keeps reserved for it).
const SOCKET_READ_BUFFER: usize = 4 * 1024;
/// Bytes of outgoing frames gathered before a write (each message is flushed anyway).
const SOCKET_WRITE_BUFFER: usize = 8 * 1024;

/// A plain HTTP request to the WebSocket endpoint: 426 as problem+json, naming the protocol
/// and version it takes (RFC 9110, section 15.5.22; RFC 6455, section 4.4).
fn upgrade_required() -> Response {
    use axum::http::{HeaderValue, header};
    use axum::response::IntoResponse;
    let mut response = ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        "this endpoint is the signaling WebSocket; open it with a WebSocket client",
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    response
}

/// One of the signaling sockets an address may hold; given back when dropped.
struct SocketSlot {
    counts: std::sync::Arc<dashmap::DashMap<std::net::IpAddr, u32>>,
    ip: std::net::IpAddr,
}

impl SocketSlot {
    fn take(state: &AppState, ip: std::net::IpAddr) -> Option<SocketSlot> {
        let limit = state.config.signal.max_sockets_per_address;
        let mut count = state.sockets_per_address.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(SocketSlot {
            counts: state.sockets_per_address.clone(),
            ip,
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.counts.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}
