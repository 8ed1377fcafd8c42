//! The API's one error type, rendered as RFC 9457 problem+json with a stable `code`.
//! Lower layers' errors are converted here, once; handlers just use `?`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::control::ControlError;
use crate::room::{LiveError, Refusal};
use crate::session::TokenError;

/// An RFC 9457 problem document. `code` is stable and meant for programs; `detail` for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:stoa:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_secs: None,
        }
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// The cluster cannot say where a room lives, or which nodes are up (Redis unreachable).
    pub fn cluster_unavailable() -> Self {
        ApiError {
            retry_after_secs: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                "the cluster's Redis cannot be reached; try again in a few seconds",
            )
        }
    }

    pub fn room_not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "room_not_found", "no such room")
    }

    pub fn room_not_live() -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "room_not_live",
            "nobody is in this room right now",
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {retry_after_secs} s"),
            )
        }
    }

    /// The caller's address failed authentication too often (see `AuthThrottle`).
    pub fn too_many_failures(retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "too many failed authentications from this address; retry in {retry_after_secs} s"
                ),
            )
        }
    }

    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        match status.as_u16() {
            500.. => tracing::error!(code = self.code, detail = %self.detail, "request failed"),
            401 | 403 | 429 => tracing::info!(
                code = self.code,
                status = status.as_u16(),
                "request refused"
            ),
            _ => {
                tracing::debug!(code = self.code, status = status.as_u16(), detail = %self.detail, "request refused")
            }
        }
        let problem = Problem {
            kind: format!("urn:stoa:problem:{}", self.code),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What a 503 `store_unavailable` suggests waiting: about as long as a database restart takes.
const STORE_RETRY_AFTER_SECS: u64 = 5;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        use StatusCode as S;
        let detail = e.to_string();
        match e {
            ControlError::RoomNotFound => ApiError::room_not_found(),
            ControlError::InviteNotFound => ApiError::new(S::NOT_FOUND, "invite_not_found", detail),
            ControlError::ParticipantNotFound => {
                ApiError::new(S::NOT_FOUND, "participant_not_found", detail)
            }
            ControlError::RoomWebhookNotFound => {
                ApiError::new(S::NOT_FOUND, "webhook_not_found", detail)
            }
            ControlError::RecordingNotFound => {
                ApiError::new(S::NOT_FOUND, "recording_not_found", detail)
            }
            ControlError::RecordingInProgress => {
                ApiError::new(S::CONFLICT, "recording_in_progress", detail)
            }
            ControlError::AlreadyRecording => {
                ApiError::new(S::CONFLICT, "already_recording", detail)
            }
            ControlError::RoomEnded => ApiError::new(S::GONE, "room_ended", detail),
            ControlError::InviteInvalid => ApiError::new(S::NOT_FOUND, "invite_invalid", detail),
            ControlError::InviteExpired => ApiError::new(S::GONE, "invite_expired", detail),
            ControlError::InviteUsedUp => ApiError::new(S::GONE, "invite_used_up", detail),
            ControlError::ReplayLinkInvalid => {
                ApiError::new(S::NOT_FOUND, "replay_link_invalid", detail)
            }
            ControlError::ReplayLinkExpired => {
                ApiError::new(S::GONE, "replay_link_expired", detail)
            }
            ControlError::ReplayLinkUsedUp => ApiError::new(S::GONE, "replay_link_used_up", detail),
            ControlError::ClipNotFound => ApiError::new(S::NOT_FOUND, "clip_not_found", detail),
            ControlError::ReplayLinkNotFound => {
                ApiError::new(S::NOT_FOUND, "replay_link_not_found", detail)
            }
            ControlError::ListenLinkNotFound => {
                ApiError::new(S::NOT_FOUND, "listen_link_not_found", detail)
            }
            ControlError::ListenLinkInvalid => {
                ApiError::new(S::NOT_FOUND, "listen_link_invalid", detail)
            }
            ControlError::ListenLinkExpired => {
                ApiError::new(S::GONE, "listen_link_expired", detail)
            }
            ControlError::Banned => ApiError::new(S::FORBIDDEN, "banned", detail),
            ControlError::Invalid { code, detail } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, code, detail)
            }
            ControlError::Unavailable(message) => {
                tracing::warn!(%message, "database unavailable");
                ApiError {
                    retry_after_secs: Some(STORE_RETRY_AFTER_SECS),
                    ..ApiError::new(
                        S::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the database is unavailable; try again shortly",
                    )
                }
            }
            ControlError::Storage(message) => {
                tracing::error!(%message, "storage error");
                ApiError::internal()
            }
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Expired => "token_expired",
            TokenError::Malformed | TokenError::BadSignature => "invalid_token",
        };
        ApiError::unauthorized(code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        use StatusCode as S;
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::new(S::BAD_REQUEST, "invalid_json", e.body_text())
            }
            JsonRejection::JsonDataError(e) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_body", e.body_text())
            }
            other if other.status() == S::PAYLOAD_TOO_LARGE => ApiError::new(
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the server accepts",
            ),
            other => ApiError::new(S::BAD_REQUEST, "invalid_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        use StatusCode as S;
        let status = match r {
            Refusal::NotPermitted | Refusal::NotInRoom | Refusal::Banned => S::FORBIDDEN,
            Refusal::ParticipantNotFound => S::NOT_FOUND,
            Refusal::InvalidTarget => S::UNPROCESSABLE_ENTITY,
            Refusal::RoomEnded => S::GONE,
            Refusal::TooSoon => S::TOO_MANY_REQUESTS,
            Refusal::NotOnStage
            | Refusal::NotAListener
            | Refusal::NoInvitation
            | Refusal::StageFull
            | Refusal::RoomFull
            | Refusal::LastModerator
            | Refusal::BroadcastDelivery => S::CONFLICT,
        };
        ApiError::new(status, r.code(), r.message())
    }
}

impl From<LiveError> for ApiError {
    fn from(e: LiveError) -> Self {
        match e {
            LiveError::NotLive => ApiError::room_not_live(),
            LiveError::Refused(r) => r.into(),
            LiveError::Store(e) => e.into(),
        }
    }
}
