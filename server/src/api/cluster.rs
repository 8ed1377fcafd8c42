//! `GET /api/v1/cluster/nodes`: the nodes of the cluster, with their addresses and load.

use axum::extract::State;
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
