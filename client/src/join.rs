//! Getting in: an invite link (`https://host/i/<code>`, or a code and the server's address)
//! and redeeming it (`POST /api/v1/join`) for a session token, a participant id and the
//! signaling URL.

use std::fmt;

use serde::Deserialize;
use serde_json::json;

use crate::Error;
use crate::api::post_anonymous;
use crate::protocol::{ParticipantId, Role};
/// The longest invite code this client sends (real ones are 22 characters).
const MAX_CODE_LEN: usize = 128;

/// Where to join and with which invite: the server's base URL and the invite code.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteLink {
    base: String,
    code: String,
}

impl InviteLink {
    /// Reads a link as Stoa prints it, `http(s)://host[:port][/prefix]/i/<code>`.
    pub fn parse(link: &str) -> Result<InviteLink, Error> {
        let link = link.trim();
        let (base, code) = link
            .rsplit_once("/i/")
            .ok_or_else(|| Error::InvalidLink(format!("{link:?} has no /i/<code>")))?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidLink(format!(
                "{link:?} is not an http:// or https:// link"
            )));
        }
        InviteLink::new(base, code.trim_end_matches('/'))
    }

    /// A code given on its own, for the server at `base` (`http(s)://host[:port]`).
    pub fn new(base: &str, code: &str) -> Result<InviteLink, Error> {
        let valid = !code.is_empty()
            && code.len() <= MAX_CODE_LEN
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::InvalidLink(format!(
                "{code:?} is not an invite code (letters, digits, - and _)"
            )));
        }
        Ok(InviteLink {
            base: base.trim_end_matches('/').to_owned(),
            code: code.to_owned(),
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The invite code (a credential: it is not printed by `Debug`).
    pub fn code(&self) -> &str {
        &self.code
    }
}

impl fmt::Debug for InviteLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteLink({}/i/…)", self.base)
    }
}

/// The server's answer to redeeming an invite.
#[derive(Clone, Deserialize)]
pub struct JoinAnswer {
    /// The session token the signaling `join` presents (a credential).
    pub token: String,
    /// This participant's id in the room.
    pub participant_id: ParticipantId,
    /// The role the invite grants.
    pub role: Role,
    /// The room's id.
    pub room_id: String,
    /// Where the signaling WebSocket is.
    pub signal_url: String,
    /// The identity secret a ban binds: present it (see [`redeem`]) to come back as the same
    /// participant (a credential).
    #[serde(default)]
    pub identity: Option<String>,
    /// The signaling URL of the server the invite named (in a cluster, the shared address
    /// any node answers), for when the room's own node cannot be reached.
    #[serde(skip)]
    pub fallback_signal_url: Option<String>,
}

impl fmt::Debug for JoinAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinAnswer")
            .field("participant_id", &self.participant_id)
            .field("role", &self.role)
            .field("room_id", &self.room_id)
            .field("signal_url", &self.signal_url)
            .finish_non_exhaustive()
    }
}

/// Redeems `link` as `display_name`. With `identity` (from an earlier [`JoinAnswer`]), the
/// server recognises the same person.
pub async fn redeem(
    link: &InviteLink,
    display_name: &str,
    identity: Option<&str>,
) -> Result<JoinAnswer, Error> {
    let mut body = json!({ "invite": link.code, "display_name": display_name });
    if let Some(identity) = identity {
        body["identity"] = json!(identity);
    }
    let answer = post_anonymous(&format!("{}/api/v1/join", link.base), &body).await?;
    let mut joined = JoinAnswer::deserialize(&answer)
        .map_err(|e| Error::Protocol(format!("a join answer without {e}")))?;
    let ws = link
        .base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    joined.fallback_signal_url = Some(format!("{ws}/api/v1/signal"));
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_codes() {
        let link = InviteLink::parse("https://stoa.example/i/AbC-12_x").unwrap();
        assert_eq!(
            (link.base(), link.code()),
            ("https://stoa.example", "AbC-12_x")
        );
        let link = InviteLink::parse(" http://127.0.0.1:8080/rooms/i/abc/ ").unwrap();
        assert_eq!(
            (link.base(), link.code()),
            ("http://127.0.0.1:8080/rooms", "abc")
        );
        assert_eq!(
            format!("{link:?}"),
            "InviteLink(http://127.0.0.1:8080/rooms/i/…)"
        );
        for bad in [
            "https://stoa.example/join/abc",
            "ftp://stoa.example/i/abc",
            "https://stoa.example/i/",
            "https://stoa.example/i/a b",
            "https://stoa.example/i/a?b",
        ] {
            assert!(
                matches!(InviteLink::parse(bad), Err(Error::InvalidLink(_))),
                "{bad}"
            );
        }
        assert!(InviteLink::new("http://h", &"x".repeat(MAX_CODE_LEN + 1)).is_err());
    }
}
