//! `GET /api/v1/rooms/{room}/events`: the room's audit log, oldest first, paginated.

use axum::extract::State;

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, ApiQuery, Caller, room_id};
use super::page_request;
use super::state::AppState;
use super::views::{EventPage, EventView, PageQuery};

/// The room's audit log: who did what, when.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/events", tag = "rooms",
    params(("room" = String, Path, description = "Room id"), PageQuery),
    responses((status = 200, body = EventPage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<EventPage>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let page = state
        .store
        .list_events(room, page_request(&query, &state)?)
        .await?;
    Ok(axum::Json(EventPage::new(page.map(EventView::from))))
}
