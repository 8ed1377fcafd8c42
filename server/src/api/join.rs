//! `POST /api/v1/join`: redeem an invite for a session token. The one call without an API
//! key, so it is rate-limited per client address before anything else happens.

use axum::extract::State;
use axum::http::StatusCode;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, JoinAllowance};
use super::state::AppState;
use super::views::{JoinAnswer, JoinRequest};
use crate::clock::rfc3339;
use crate::cluster::Home;
use crate::control::{ControlError, Delivery, IdentitySecret, InviteCode, Role, validate};
use crate::session::Claims;

/// Redeem an invite: display name and code in, session token out.
#[utoipa::path(post, path = "/api/v1/join", tag = "join",
    request_body = JoinRequest,
    responses(
        (status = 200, body = JoinAnswer),
        (status = 400, description = "Malformed code", body = Problem),
        (status = 403, description = "Banned", body = Problem),
        (status = 404, description = "Unknown or revoked code", body = Problem),
        (status = 410, description = "Expired, used up, or the room ended", body = Problem),
        (status = 422, body = Problem),
        (status = 429, description = "Too many attempts; see Retry-After", body = Problem),
        (status = 503, description = "The cluster cannot place the room (Redis unreachable); see Retry-After", body = Problem),
    ))]
pub async fn redeem(
    State(state): State<AppState>,
    _allowed: JoinAllowance,
    body: Result<ApiJson<JoinRequest>, ApiError>,
) -> Result<axum::Json<JoinAnswer>, ApiError> {
    let result = match body {
        Ok(ApiJson(body)) => redeem_checked(&state, body).await,
        Err(e) => Err(e),
    };
    state.metrics.join_outcome(match &result {
        Ok(_) => "ok",
        Err(e) => e.code,
    });
    result.map(axum::Json)
}

async fn redeem_checked(state: &AppState, body: JoinRequest) -> Result<JoinAnswer, ApiError> {
    let code = InviteCode::parse(&body.invite).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_invite",
            "that is not an invite code or link",
        )
    })?;
    let display_name = validate::display_name(&body.display_name)?;
    let identity = body
        .identity
        .as_deref()
        .map(|s| {
            IdentitySecret::parse(s).ok_or_else(|| {
                ControlError::invalid(
                    "invalid_identity",
                    "identity must be 22 to 128 URL-safe characters",
                )
            })
        })
        .transpose()?;
    let now = state.clock.now_ms();
    // Placed before redeeming, so a join the cluster cannot serve spends no use of the invite.
    let signal_url = match &state.cluster {
        Some(cluster) => match state.store.preview_invite(code.clone(), now).await {
            Ok((room, invite)) => match cluster.place(room.id.as_str()).await {
                Ok(home) => {
                    let home = match home {
                        Home::Here(_) => cluster.me(),
                        Home::Elsewhere(node, _) => *node,
                    };
                    // A full home's new listeners go to an edge. The stage stays home, and so
                    // do moderators, who start on it when it has room.
                    let edge = match invite.role {
                        Role::Speaker | Role::Moderator => None,
                        Role::Listener => cluster
                            .edge_for(room.id.as_str(), &home, None)
                            .await
                            .ok()
                            .flatten(),
                    };
                    let target = edge.unwrap_or(home);
                    cluster.placed_on(&target.name).await;
                    target.signal_url
                }
                Err(e) => {
                    tracing::warn!(room = %room.id, error = %e, "cannot place the room");
                    return Err(ApiError::cluster_unavailable());
                }
            },
            // Redeeming gives the same refusal with its own words.
            Err(_) => state.signal_url(),
        },
        None => state.signal_url(),
    };
    let redemption = state
        .store
        .redeem(code, display_name, identity, now)
        .await?;
    let ttl_ms = (state.config.limits.session_ttl_secs as i64).saturating_mul(1000);
    // A server whose broadcasts were turned off since the invite was made serves it over WebRTC.
    // A listener past the live room's WebRTC audience cap hears the broadcast (the room
    // decides again when they connect, and its snapshot says which).
    let past_cap = || {
        redemption.role == Role::Listener
            && state
                .live
                .get(&redemption.room.id)
                .is_some_and(|room| room.webrtc_audience_full())
    };
    let delivery = match redemption.delivery {
        Delivery::Broadcast if state.broadcasts.settings().enabled => Delivery::Broadcast,
        Delivery::Webrtc if past_cap() => Delivery::Broadcast,
        _ => Delivery::Webrtc,
    };
    let claims = Claims {
        room: redemption.room.id.clone(),
        participant: redemption.participant_id.clone(),
        role: redemption.role,
        name: redemption.display_name.clone(),
        iat: now,
        exp: now.saturating_add(ttl_ms),
        generation: redemption.generation,
        delivery,
    };
    tracing::info!(room = %claims.room, participant = %claims.participant, role = %claims.role, %delivery, "invite redeemed");
    Ok(JoinAnswer {
        token: state.signer.sign(&claims),
        expires_at: rfc3339(claims.exp),
        participant_id: redemption.participant_id,
        role: redemption.role,
        room_id: redemption.room.id,
        room_title: redemption.room.title,
        display_name: redemption.display_name,
        signal_url,
        identity: redemption.new_identity.map(|s| s.as_str().to_owned()),
        delivery,
        broadcast: (delivery == Delivery::Broadcast).then(|| state.broadcast_link(&claims.room)),
    })
}
