//! `GET /api/v1/webhooks/deliveries`: the webhook outbox for operators — what is waiting,
//! what was delivered, and what was given up (`?state=failed`), oldest first, paginated.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, Caller};
use super::page_request;
use super::state::AppState;
use super::views::PageQuery;
use crate::clock::rfc3339;
use crate::control::{DeliveryState, WebhookDelivery};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only deliveries in this state: `pending`, `delivered` or `failed`.
    #[param(value_type = Option<String>)]
    pub state: Option<DeliveryState>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` every attempt carried.
    pub id: String,
    pub room_id: String,
    /// The room endpoint (`rwh_…`) it is for; null: the server's `[webhooks] url`.
    pub endpoint: Option<String>,
    /// The event's `type`, e.g. `participant.banned`.
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (given up).
    #[schema(value_type = String)]
    pub state: DeliveryState,
    pub attempts: u32,
    pub created_at: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    /// The HTTP status of the last answer, if there was one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed (status and the start of the answer, or the network error).
    pub last_error: Option<String>,
    /// When it was delivered or given up.
    pub finished_at: Option<String>,
}

impl From<WebhookDelivery> for DeliveryView {
    fn from(d: WebhookDelivery) -> Self {
        DeliveryView {
            id: d.id,
            room_id: d.room_id.to_string(),
            endpoint: d.endpoint,
            event_type: d.event_type,
            state: d.state,
            attempts: d.attempts,
            created_at: rfc3339(d.created_at_ms),
            next_attempt_at: d.next_attempt_at_ms.map(rfc3339),
            last_status: d.last_status,
            last_error: d.last_error,
            finished_at: d.finished_at_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The webhook outbox (operator only).
#[utoipa::path(get, path = "/api/v1/webhooks/deliveries", tag = "system",
    params(DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    caller.require_operator()?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let found = state
        .store
        .list_webhook_deliveries(query.state, page_request(&page, &state)?)
        .await?;
    Ok(axum::Json(DeliveryPage {
        items: found.items.into_iter().map(DeliveryView::from).collect(),
        next_cursor: found.next_cursor.map(|c| c.to_string()),
    }))
}
