//! Why a control-plane operation did not happen. Each variant maps to one stable API code
//! at the edge; this module does not know about HTTP.

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no such room")]
    RoomNotFound,
    #[error("no such invite")]
    InviteNotFound,
    #[error("no such listen link")]
    ListenLinkNotFound,
    /// Unknown or revoked listen link: the same answer, so codes cannot be probed.
    #[error("this listen link is not valid")]
    ListenLinkInvalid,
    #[error("this listen link has expired")]
    ListenLinkExpired,
    #[error("no such recording")]
    RecordingNotFound,
    /// The room is being recorded already (one recording at a time per room).
    #[error("the room is being recorded already")]
    AlreadyRecording,
    /// A recording still being written cannot be deleted (stop it first).
    #[error("the recording is still being written; stop it first")]
    RecordingInProgress,
    /// Unknown clip code (or a deleted clip).
    #[error("no such clip")]
    ClipNotFound,
    #[error("no such participant")]
    ParticipantNotFound,
    /// The room has no webhook endpoint of its own.
    #[error("this room has no webhook endpoint")]
    RoomWebhookNotFound,
    #[error("the room has ended")]
    RoomEnded,
    /// Unknown or revoked code: deliberately the same answer, so codes cannot be probed.
    #[error("this invite link is not valid")]
    InviteInvalid,
    #[error("this invite link has expired")]
    InviteExpired,
    #[error("this invite link has been used the maximum number of times")]
    InviteUsedUp,
    /// Unknown or revoked replay link: the same answer, as for invites.
    #[error("this replay link is not valid")]
    ReplayLinkInvalid,
    #[error("this replay link has expired")]
    ReplayLinkExpired,
    #[error("this replay link has been used the maximum number of times")]
    ReplayLinkUsedUp,
    /// A replay link a moderator manages (by id) that this room does not have.
    #[error("no such replay link")]
    ReplayLinkNotFound,
    #[error("you are banned from this room")]
    Banned,
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    /// The database cannot be reached now (PostgreSQL down, restarting, or every pooled
    /// connection busy for too long): the call was not acknowledged and may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

impl ControlError {
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        ControlError::Invalid {
            code,
            detail: detail.into(),
        }
    }
}

impl From<rusqlite::Error> for ControlError {
    fn from(e: rusqlite::Error) -> Self {
        ControlError::Storage(e.to_string())
    }
}

/// An error and its causes, `outer: inner: …` (drivers and clients often say only the outer).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}
