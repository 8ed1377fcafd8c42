//! Replay links: made, listed and revoked by a room's moderators or the operator
//! (`/api/v1/rooms/{room}/…/replay-links`), redeemed by anyone who holds one
//! (`POST /api/v1/replay`) for a replay token that opens that one recording — its detail and
//! its audio — and nothing else. The rules are the store's; this parses and renders.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, ClientIp, JoinAllowance, room_id};
use super::invites::check_uses_and_expiry;
use super::page_request;
use super::state::AppState;
use super::views::{
    CreateReplayLink, CreatedReplayLinkView, PageQuery, RedeemReplay, ReplayAnswer, ReplayLinkPage,
    ReplayLinkView,
};
use crate::clock::rfc3339;
use crate::control::{
    ControlError, InviteCode, NewReplayLink, RecordingId, ReplayLinkId, RoomId, validate,
};
use crate::session::{REPLAY_PREFIX, ReplayClaims};

/// A replay token lives this long at most (less if its link expires sooner): long enough to
/// play a long recording through, since every request checks its link is not revoked.
const REPLAY_TOKEN_TTL_MS: i64 = 12 * 3600 * 1000;

/// Make a replay link for one recording of the room.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/recordings/{recording}/replay-links", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id")),
    request_body = CreateReplayLink,
    responses((status = 201, body = CreatedReplayLinkView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_replay_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((room, recording)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<CreateReplayLink>,
) -> Result<(StatusCode, axum::Json<CreatedReplayLinkView>), ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let recording = RecordingId::parse(&recording).ok_or(ControlError::RecordingNotFound)?;
    check_uses_and_expiry(body.max_uses, body.expires_in_secs)?;
    let new = NewReplayLink {
        label: body.label.as_deref().map(validate::label).transpose()?,
        max_uses: body.max_uses,
        expires_in_secs: body.expires_in_secs,
    };
    let created = state
        .store
        .create_replay_link(room, recording, new, caller.actor(), state.clock.now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedReplayLinkView {
            link: ReplayLinkView::from(&created.link),
            url: state.replay_url(created.code.as_str()),
            code: created.code.as_str().to_owned(),
        }),
    ))
}

/// The room's replay links (of all its recordings), without their codes.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/replay-links", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), PageQuery),
    responses((status = 200, body = ReplayLinkPage), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_replay_links(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<ReplayLinkPage>, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let page = state
        .store
        .list_replay_links(room, page_request(&query, &state)?)
        .await?;
    Ok(axum::Json(ReplayLinkPage::new(
        page.map(|l| ReplayLinkView::from(&l)),
    )))
}

/// Revoke a replay link: it cannot be redeemed again, and the tokens it gave stop working.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/replay-links/{link}", tag = "recordings",
    params(("room" = String, Path, description = "Room id"), ("link" = String, Path, description = "Replay link id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_replay_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((room, link)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let room = room_id(&room)?;
    caller.require_moderator_of(&room)?;
    let link = ReplayLinkId::parse(&link).ok_or(ControlError::ReplayLinkNotFound)?;
    state
        .store
        .revoke_replay_link(room, link, caller.actor(), state.clock.now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Redeem a replay link (no credentials needed; rate-limited per address like joining): a
/// token that opens its recording's detail and audio, and nothing else.
#[utoipa::path(post, path = "/api/v1/replay", tag = "recordings",
    request_body = RedeemReplay,
    responses((status = 200, body = ReplayAnswer),
        (status = 400, description = "Malformed code", body = Problem),
        (status = 404, description = "Unknown or revoked link", body = Problem),
        (status = 410, description = "Expired or used up", body = Problem),
        (status = 422, body = Problem),
        (status = 429, description = "Too many attempts; see Retry-After", body = Problem)))]
pub async fn redeem_replay(
    State(state): State<AppState>,
    _allowed: JoinAllowance,
    ApiJson(body): ApiJson<RedeemReplay>,
) -> Result<axum::Json<ReplayAnswer>, ApiError> {
    let code = InviteCode::parse(&body.link).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_replay_link",
            "that is not a replay link or its code",
        )
    })?;
    let now = state.clock.now_ms();
    let link = state.store.redeem_replay_link(code, now).await?;
    let exp = link.expires_at_ms.map_or(now + REPLAY_TOKEN_TTL_MS, |at| {
        at.min(now + REPLAY_TOKEN_TTL_MS)
    });
    let token = state.signer.sign_replay(&ReplayClaims {
        room: link.room_id.clone(),
        recording: link.recording_id.clone(),
        link: link.id.clone(),
        exp,
    });
    let recording_path = format!(
        "/api/v1/rooms/{}/recordings/{}",
        link.room_id, link.recording_id
    );
    Ok(axum::Json(ReplayAnswer {
        audio_url: format!("{recording_path}/audio?access_token={token}"),
        recording_path,
        token,
        expires_at: rfc3339(exp),
        room_id: link.room_id,
        recording_id: link.recording_id,
    }))
}

/// Who may read a recording: a moderator of its room or the operator ([`Caller`]), or the
/// holder of a replay token for that very recording. The token comes as
/// `Authorization: Bearer rp1.…` or, where no header can be set (an `<audio>` element), as
/// `?access_token=rp1.…`.
pub enum Viewer {
    Caller(Caller),
    Replay(ReplayClaims),
}

impl Viewer {
    /// May this viewer read recording `recording` (as the path names it) of `room`?
    pub async fn require_reader_of(
        &self,
        state: &AppState,
        room: &RoomId,
        recording: Option<&RecordingId>,
    ) -> Result<(), ApiError> {
        let claims = match self {
            Viewer::Caller(caller) => return caller.require_moderator_of(room),
            Viewer::Replay(claims) => claims,
        };
        if &claims.room != room {
            return Err(ApiError::forbidden(
                "wrong_room",
                "this replay token belongs to another room",
            ));
        }
        if recording != Some(&claims.recording) {
            return Err(ApiError::forbidden(
                "wrong_recording",
                "this replay token opens another recording",
            ));
        }
        let link = state.store.replay_link(claims.link.clone()).await?;
        if link.revoked {
            return Err(ApiError::unauthorized(
                "replay_link_revoked",
                "the replay link this token came from was revoked",
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = replay_token(parts) else {
            return Ok(Viewer::Caller(
                Caller::from_request_parts(parts, state).await?,
            ));
        };
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        if let Err(wait) = state.auth_throttle.check(ip) {
            state.metrics.auth_throttled.inc();
            return Err(ApiError::too_many_failures(wait));
        }
        match state.signer.verify_replay(&token, state.clock.now_ms()) {
            Ok(claims) => Ok(Viewer::Replay(claims)),
            Err(e) => {
                let e = ApiError::from(e);
                if e.code == "invalid_token"
                    && let Some(wait) = state.auth_throttle.failed(ip)
                {
                    state.metrics.auth_throttled.inc();
                    return Err(ApiError::too_many_failures(wait));
                }
                Err(e)
            }
        }
    }
}

/// A replay token in the `Authorization` header or the `access_token` query parameter.
fn replay_token(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| token.starts_with(REPLAY_PREFIX));
    if let Some(token) = bearer {
        return Some(token.to_owned());
    }
    axum::extract::Query::<AccessToken>::try_from_uri(&parts.uri)
        .ok()?
        .0
        .access_token
}

#[derive(serde::Deserialize)]
struct AccessToken {
    access_token: Option<String>,
}
