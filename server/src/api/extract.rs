//! Request extractors for the edge: strict JSON and query parsing with problem+json
//! rejections, the caller's credentials, and the client address. No business rules.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use super::error::ApiError;
use super::state::AppState;
use crate::clock::retry_after_secs;
use crate::control::{Actor, ParticipantId, Role, RoomId};
use crate::session::{API_KEY_PREFIX, Claims, REPLAY_PREFIX};

/// A JSON body that must be an object of exactly the expected shape; rejections are
/// problem+json. (serde alone would also accept a struct written as a JSON array.)
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                e.to_string(),
            )
        })
    }
}

/// A JSON body that may be left out: an empty body (whatever its `Content-Type` says) is
/// `T::default()`; one that is sent is read as [`ApiJson`].
pub struct OptionalApiJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than the server accepts",
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Ok(OptionalApiJson(T::default()));
        }
        let mut sent = axum::extract::Request::new(axum::body::Body::from(bytes));
        if let Some(content_type) = content_type {
            sent.headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        let ApiJson(body) = ApiJson::from_request(sent, state).await?;
        Ok(OptionalApiJson(body))
    }
}

/// `axum::extract::Path` whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Who is calling: the operator (API key) or a participant (session token).
#[derive(Clone, Debug)]
pub enum Caller {
    Operator,
    Participant(Claims),
}

impl Caller {
    /// Who the store and the audit log name for this call.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Operator => Actor::Operator,
            Caller::Participant(c) => Actor::Participant(c.participant.clone()),
        }
    }

    /// Who asks a live room: the operator, or a moderator over REST (whom the room treats as
    /// the participant they are while they are in it).
    pub fn room_actor(&self) -> crate::room::Actor {
        match self {
            Caller::Operator => crate::room::Actor::Operator,
            Caller::Participant(c) => crate::room::Actor::RestModerator(c.participant.clone()),
        }
    }

    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Participant(_) => Err(ApiError::forbidden(
                "operator_only",
                "this call needs the operator API key",
            )),
        }
    }

    /// The operator, or a moderator whose token is for this very room.
    pub fn require_moderator_of(&self, room: &RoomId) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Participant(c) if &c.room != room => Err(ApiError::forbidden(
                "wrong_room",
                "this session token belongs to another room",
            )),
            Caller::Participant(c) if c.role != Role::Moderator => Err(ApiError::forbidden(
                "moderator_only",
                "only moderators of this room may do this",
            )),
            Caller::Participant(_) => Ok(()),
        }
    }

    pub fn participant(&self) -> Option<&ParticipantId> {
        match self {
            Caller::Operator => None,
            Caller::Participant(c) => Some(&c.participant),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION).cloned() else {
            return Err(ApiError::unauthorized(
                "missing_credentials",
                "send `Authorization: Bearer <api key or session token>`",
            ));
        };
        // An address that failed too often is refused before its credential is looked at.
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        if let Err(wait) = state.auth_throttle.check(ip) {
            state.metrics.auth_throttled.inc();
            return Err(ApiError::too_many_failures(wait));
        }
        match authenticate(&value, state).await {
            Err(e)
                if matches!(
                    e.code,
                    "invalid_credentials" | "invalid_api_key" | "invalid_token"
                ) =>
            {
                match state.auth_throttle.failed(ip) {
                    Some(wait) => {
                        state.metrics.auth_throttled.inc();
                        tracing::warn!(%ip, "throttling an address that failed authentication too often");
                        Err(ApiError::too_many_failures(wait))
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }
}

/// Checks a credential: the operator key, or a session token read against what the room
/// decided since it was issued.
async fn authenticate(
    value: &axum::http::HeaderValue,
    state: &AppState,
) -> Result<Caller, ApiError> {
    let value = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credential)| credential.trim())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_credentials",
                "the Authorization header must be `Bearer <credential>`",
            )
        })?;
    // Checked first, whatever its shape: an operator may set any strong STOA_API_KEY.
    if state.operator_key.matches(value) {
        return Ok(Caller::Operator);
    }
    if value.starts_with(REPLAY_PREFIX) {
        return Err(ApiError::forbidden(
            "replay_only",
            "a replay token opens its recording (detail and audio) and nothing else",
        ));
    }
    if value.starts_with(API_KEY_PREFIX) {
        return Err(ApiError::unauthorized(
            "invalid_api_key",
            "the API key is not valid",
        ));
    }
    let mut claims = state.signer.verify(value, state.clock.now_ms())?;
    // What the room decided since the token was issued outranks the token: a ban or a
    // removal voids it at once, and a role changed live replaces the role it claims (for
    // every token issued before the change, whatever was redeemed since).
    let standing = state
        .store
        .standing(claims.room.clone(), claims.participant.clone())
        .await?;
    if standing.banned {
        return Err(ApiError::forbidden(
            "banned",
            "you are banned from this room",
        ));
    }
    if standing.removed_since(claims.iat) {
        return Err(ApiError::unauthorized(
            "removed",
            "you were removed from this room; this token no longer works",
        ));
    }
    claims.role = standing.role(claims.role, claims.generation);
    Ok(Caller::Participant(claims))
}

/// The client's address, for rate limits: the peer address, or the right-most entry of all
/// `X-Forwarded-For` lines together when the operator said a trusted proxy sits in front.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Passed on by another node of the cluster, which vouches for the client's address.
        if state.cluster.is_some()
            && let Some(ip) = state.forwarding.verify(
                &parts.headers,
                &parts.method,
                parts.uri.path(),
                state.clock.now_ms(),
            )
        {
            return Ok(ClientIp(ip));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(ApiError::internal)?;
        Ok(ClientIp(client_ip(state, &parts.headers, peer)))
    }
}

/// The client's address for a request from `peer`: the right-most `X-Forwarded-For` entry
/// when the operator trusts the proxy in front, else the peer.
pub fn client_ip(state: &AppState, headers: &axum::http::HeaderMap, peer: IpAddr) -> IpAddr {
    if state.config.trust_forwarded_for
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            // Every header line, in order, is one list: a proxy that appends a line of its
            // own (HAProxy's `option forwardfor`) reads like one that extends the last.
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|entry| entry.trim_ascii())
            .rfind(|entry| !entry.is_empty())
            // The right-most entry is the one our proxy added; earlier ones are whatever
            // the client claimed.
            .and_then(|entry| std::str::from_utf8(entry).ok()?.parse::<IpAddr>().ok())
    {
        return ip;
    }
    peer
}

/// Parses a `{room}` path segment; a malformed id is simply a room that does not exist.
pub fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(raw).ok_or_else(ApiError::room_not_found)
}

/// The join rate limit, checked before the body is even read, so a flood of junk costs the
/// server as little as possible and counts against the sender.
pub struct JoinAllowance;

impl FromRequestParts<AppState> for JoinAllowance {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        match state.join_limiter.check_key(&ip) {
            Ok(()) => Ok(JoinAllowance),
            Err(not_until) => {
                state.metrics.join_outcome("rate_limited");
                Err(ApiError::rate_limited(retry_after_secs(
                    &not_until,
                    &state.clock,
                )))
            }
        }
    }
}

/// The rate limit of anonymous listeners' calls (a listen link's entry point, heartbeats),
/// per client address, checked before anything else.
pub struct ListenerAllowance;

impl FromRequestParts<AppState> for ListenerAllowance {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        state
            .listener_limiter
            .check_key(&ip)
            .map(|()| ListenerAllowance)
            .map_err(|not_until| ApiError::rate_limited(retry_after_secs(&not_until, &state.clock)))
    }
}
