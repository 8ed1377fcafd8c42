//! Listen links: a room's public broadcast. Whoever holds one hears the room's broadcast
//! (the stage mixed once, over LL-HLS) without joining: no role, no identity, no signaling.
//! Like an invite it has a label and an expiry and can be revoked; nobody redeems it, so it
//! has no uses. Plain data and the rules both store engines apply; no SQL here.

use super::{ControlError, InviteCode, ListenLinkId, Room, RoomId};

/// The secret part of a listen link (`/l/<code>`): 128 random bits, as an invite code, kept
/// only as a hash.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ListenCode(InviteCode);

impl ListenCode {
    pub fn generate() -> Self {
        ListenCode(InviteCode::generate())
    }

    /// Accepts a bare code or a whole link ending in `/l/<code>`.
    pub fn parse(input: &str) -> Option<Self> {
        InviteCode::parse(input).map(ListenCode)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn hash(&self) -> [u8; 32] {
        self.0.hash()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenLink {
    pub id: ListenLinkId,
    pub room_id: RoomId,
    pub label: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct NewListenLink {
    pub label: Option<String>,
    pub expires_in_secs: Option<u64>,
}

/// A link just made: the only time its code is known.
#[derive(Clone, Debug)]
pub struct CreatedListenLink {
    pub link: ListenLink,
    pub code: ListenCode,
}

/// Whether a listen link leads to its room's broadcast now. Unknown and revoked codes fail
/// alike (`ListenLinkInvalid`), so codes cannot be probed.
pub(crate) fn check_open(
    link: &ListenLink,
    room: Option<&Room>,
    now_ms: i64,
) -> Result<(), ControlError> {
    if link.revoked {
        return Err(ControlError::ListenLinkInvalid);
    }
    let room = room.ok_or(ControlError::ListenLinkInvalid)?;
    if room.is_ended() {
        return Err(ControlError::RoomEnded);
    }
    if link.expires_at_ms.is_some_and(|at| at <= now_ms) {
        return Err(ControlError::ListenLinkExpired);
    }
    Ok(())
}

/// A fresh listen link of `room` and its code; the caller has checked the room is open.
pub(crate) fn new_listen_link(
    room: &RoomId,
    new: &NewListenLink,
    now_ms: i64,
) -> CreatedListenLink {
    let expires_at_ms = new
        .expires_in_secs
        .map(|s| now_ms.saturating_add((s as i64).saturating_mul(1000)));
    CreatedListenLink {
        link: ListenLink {
            id: ListenLinkId::generate(),
            room_id: room.clone(),
            label: new.label.clone(),
            expires_at_ms,
            revoked: false,
            created_at_ms: now_ms,
        },
        code: ListenCode::generate(),
    }
}

pub(crate) fn created_detail(link: &ListenLink) -> serde_json::Value {
    serde_json::json!({ "label": link.label, "expires_at_ms": link.expires_at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(ended: bool) -> Room {
        Room {
            id: RoomId::generate(),
            title: "t".into(),
            created_at_ms: 0,
            ended_at_ms: ended.then_some(5),
            limits: Default::default(),
            recording: Default::default(),
        }
    }

    #[test]
    fn a_link_opens_until_it_is_revoked_expires_or_its_room_ends() {
        let open = room(false);
        let new = NewListenLink {
            label: None,
            expires_in_secs: Some(10),
        };
        let mut link = new_listen_link(&open.id, &new, 1_000).link;
        assert_eq!(link.expires_at_ms, Some(11_000));
        assert!(check_open(&link, Some(&open), 10_999).is_ok());
        assert!(matches!(
            check_open(&link, Some(&open), 11_000),
            Err(ControlError::ListenLinkExpired)
        ));
        assert!(matches!(
            check_open(&link, Some(&room(true)), 2_000),
            Err(ControlError::RoomEnded)
        ));
        link.revoked = true;
        assert!(matches!(
            check_open(&link, Some(&open), 2_000),
            Err(ControlError::ListenLinkInvalid)
        ));
    }

    #[test]
    fn codes_parse_from_links_and_hide_in_debug() {
        let code = ListenCode::generate();
        let url = format!("https://host/l/{}", code.as_str());
        assert_eq!(ListenCode::parse(&url), Some(code.clone()));
        assert!(!format!("{code:?}").contains(code.as_str()));
        assert!(ListenCode::parse("short").is_none());
    }
}
