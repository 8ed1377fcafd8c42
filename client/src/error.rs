//! The one error type of the crate: what went wrong, with the server's stable code where the
//! server refused something.

use std::fmt;
use std::io;

/// Why a call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The text is not an invite link or code.
    InvalidLink(String),
    /// The server could not be reached, or the connection broke.
    Transport(String),
    /// The server refused a REST call (an `application/problem+json` answer).
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's stable `code`.
        code: String,
        /// The problem's `detail`, for people.
        detail: String,
    },
    /// The server refused a signaling request or a media offer (an `error` message).
    Rejected {
        /// The stable error code (`not_permitted`, `stage_full`, …).
        code: String,
        /// The server's explanation, for people.
        message: String,
    },
    /// The signaling socket is closed.
    Closed {
        /// The WebSocket close code (1006 when the connection broke without one).
        code: u16,
        /// The close reason (`left`, `removed`, `room_ended`, …).
        reason: String,
    },
    /// What was awaited did not happen in time.
    Timeout(String),
    /// The server sent something this client does not understand.
    Protocol(String),
    /// The WebRTC library failed.
    WebRtc(String),
    /// A call that does not fit the state it was made in (speaking while speaking already,
    /// listening without media, …).
    Usage(String),
    /// Reading or writing a file.
    Io(io::Error),
}

impl Error {
    /// The server's stable code: of a REST problem, a refused request or offer, or the reason
    /// the socket was closed.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused { code, .. } | Error::Rejected { code, .. } => Some(code),
            Error::Closed { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidLink(what) => write!(f, "not an invite link: {what}"),
            Error::Transport(what) => write!(f, "connection: {what}"),
            Error::Refused {
                status,
                code,
                detail,
            } => write!(f, "refused ({status} {code}): {detail}"),
            Error::Rejected { code, message } => write!(f, "refused: {code}: {message}"),
            Error::Closed { code, reason } => write!(f, "socket closed ({code} {reason})"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Protocol(what) => write!(f, "protocol: {what}"),
            Error::WebRtc(what) => write!(f, "webrtc: {what}"),
            Error::Usage(what) => write!(f, "{what}"),
            Error::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

/// `webrtc`'s errors are `rtc`'s.
impl From<rtc::shared::error::Error> for Error {
    fn from(error: rtc::shared::error::Error) -> Self {
        Error::WebRtc(error.to_string())
    }
}
