//! `GET /api/v1/cluster/nodes`: the nodes of the cluster, with their addresses and load;
//! `POST /api/v1/cluster/drain`: this node takes no more people and hands its rooms over.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::Caller;
use super::state::AppState;
use crate::cluster::{Load, NodeInfo};

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Whether this node is one of a cluster (`[cluster] redis_url`); alone, it lists itself.
    pub clustered: bool,
    /// The node that answered.
    pub this_node: String,
    /// Every node that is up, by name.
    pub nodes: Vec<NodeInfo>,
}

/// The nodes that are up (operator only).
#[utoipa::path(get, path = "/api/v1/cluster/nodes", tag = "system",
    responses(
        (status = 200, body = NodeList),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
        (status = 503, description = "Redis is unreachable", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<NodeList>, ApiError> {
    caller.require_operator()?;
    let nodes = match &state.cluster {
        Some(cluster) => cluster.nodes().await.map_err(|e| {
            tracing::warn!(error = %e, "cannot list the cluster's nodes");
            ApiError::cluster_unavailable()
        })?,
        None => {
            let mut me = (*state.node).clone();
            me.load = Load {
                connections: u32::try_from(state.metrics.signal_sockets.get()).unwrap_or(0),
                rooms: u32::try_from(state.live.live_count()).unwrap_or(u32::MAX),
                cpu_percent: 0.0,
            };
            me.heartbeat_at = crate::clock::rfc3339(state.clock.now_ms());
            vec![me]
        }
    };
    Ok(axum::Json(NodeList {
        clustered: state.cluster.is_some(),
        this_node: state.node.name.clone(),
        nodes,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Drained {
    /// The node that is draining (the one that answered).
    pub node: String,
    pub draining: bool,
    /// Live rooms handed over by this call (none when the node was draining already).
    pub rooms_handed_over: usize,
    /// The node their people were sent to, when there were any.
    pub moved_to: Option<String>,
}

/// Drain this node (operator only): it leaves the node list, no room is placed here, and
/// people who reach it are sent to their room's node; its live rooms are handed over as on a
/// stop (everyone gets `moved` and resumes on the least full other node, the rooms' live state
/// kept). The node goes on running, empty, until it is stopped. Repeating it changes nothing.
#[utoipa::path(post, path = "/api/v1/cluster/drain", tag = "system",
    responses(
        (status = 200, body = Drained),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
        (status = 409, description = "`not_clustered`: a node alone has nowhere to send its people; `no_other_node`: no other node is up", body = Problem),
        (status = 503, description = "Redis is unreachable", body = Problem),
    ),
    security(("bearer" = [])))]
pub async fn drain(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Drained>, ApiError> {
    caller.require_operator()?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_clustered",
            "this node is not one of a cluster (no redis_url): there is no other node to drain to",
        ));
    };
    let answer = |rooms_handed_over, moved_to| Drained {
        node: state.node.name.clone(),
        draining: true,
        rooms_handed_over,
        moved_to,
    };
    if cluster.draining() {
        return Ok(axum::Json(answer(0, None)));
    }
    let nodes = cluster.nodes().await.map_err(|e| {
        tracing::warn!(error = %e, "cannot list the cluster's nodes");
        ApiError::cluster_unavailable()
    })?;
    if nodes.iter().all(|n| n.name == state.node.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_other_node",
            "no other node of the cluster is up to take this node's people",
        ));
    }
    cluster.start_draining();
    let rooms = state.live.live_count();
    let successor = state.hand_rooms_over().await;
    tracing::info!(rooms, to = ?successor.as_ref().map(|n| &n.name), "draining: rooms handed over");
    Ok(axum::Json(answer(rooms, successor.map(|n| n.name))))
}

/// `POST` / `DELETE /internal/v1/relay-links`: an edge asks this node, the room's home, to
/// send a room's audio on a link it granted (again each heartbeat), or gives the link back.
/// Only the cluster's nodes call it: the `Stoa-Node-Call` header, which covers the body, names
/// the calling node. Not part of the public API (operators need not expose `/internal/`).
pub async fn relay_link(
    State(state): State<AppState>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    use crate::signal::relay_links::{GRANTS_PATH, Grant};
    let Some(links) = state.signal.relay_links.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node is not part of a cluster",
        ));
    };
    let now = state.clock.now_ms();
    let Some(from) = state
        .forwarding
        .verify_call(&headers, &method, GRANTS_PATH, &body, now)
    else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_node",
            "only the cluster's nodes may call this, with a valid Stoa-Node-Call header",
        ));
    };
    let grant: Grant = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            format!("not a relay grant: {e}"),
        )
    })?;
    if method == axum::http::Method::DELETE {
        links.withdraw(&from, &grant);
        return Ok(StatusCode::NO_CONTENT);
    }
    if state.live.get(&grant.room).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "room_not_here",
            "the room is not live on this node",
        ));
    }
    match links.grant(&from, &grant).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => {
            let status = match e {
                crate::signal::relay_links::GrantError::Taken => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(ApiError::new(
                status,
                e.code(),
                "the relay grant was refused",
            ))
        }
    }
}
