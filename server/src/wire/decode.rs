//! What clients send: JSON text messages with a `type` field, decoded strictly and bounded.
//! Never panics; knows nothing about rooms' rules (mapping a message to a command is the edge's).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::{ParticipantId, Role};

/// A client-chosen request id, echoed in the reply: a short string or a non-negative integer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(u64),
    Text(String),
}

const MAX_ID_CHARS: usize = 64;

/// What a client may send. `join` or `resume` must come first, and only once. Variants
/// without fields are written `{}` so that unknown fields are refused for them too.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Join {
        token: String,
    },
    Resume {
        resume_token: String,
    },
    Ping {},
    Leave {},
    RaiseHand {},
    LowerHand {
        participant: Option<ParticipantId>,
    },
    InviteToStage {
        participant: ParticipantId,
    },
    CancelInvitation {
        participant: ParticipantId,
    },
    AcceptInvitation {},
    DeclineInvitation {},
    JoinStage {},
    LeaveStage {},
    MoveToAudience {
        participant: ParticipantId,
    },
    Mute {
        participant: ParticipantId,
    },
    MuteSelf {},
    Unmute {},
    Remove {
        participant: ParticipantId,
    },
    Ban {
        participant: ParticipantId,
        /// Also revoke the invite they came through, so the link cannot bring them (under
        /// a new identity) back.
        #[serde(default)]
        revoke_invite: bool,
    },
    Promote {
        participant: ParticipantId,
    },
    Demote {
        participant: ParticipantId,
    },
    SetRole {
        participant: ParticipantId,
        role: Role,
    },
    EndRoom {},
    /// A moderator starts recording the room's mix; `speaker_tracks` (optional, a boolean)
    /// asks for each speaker's own track too.
    StartRecording {
        #[serde(default)]
        speaker_tracks: Option<bool>,
    },
    StopRecording {},
    ListAudience {
        after: Option<ParticipantId>,
        limit: Option<u32>,
    },
    /// A WebRTC offer (the client always offers); answered with `media_answer`.
    MediaOffer {
        sdp: String,
    },
    /// Asks for a fresh session token (`session`): the one from `POST /api/v1/join` expires
    /// after `session_ttl_secs`, and the page still needs one for REST (invites, clips).
    RenewSession {},
    /// Asks for a fresh link to the room's broadcast (LL-HLS links rotate; the session token
    /// that REST would need may have expired long before the visit ends).
    BroadcastLink {},
    /// A trickled ICE candidate. The server is ICE-lite and learns the client's address from
    /// its connectivity checks, so these are checked for size and otherwise not needed.
    IceCandidate {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
        username_fragment: Option<String>,
    },
}

const KNOWN_TYPES: &[&str] = &[
    "join",
    "resume",
    "ping",
    "leave",
    "raise_hand",
    "lower_hand",
    "invite_to_stage",
    "cancel_invitation",
    "accept_invitation",
    "decline_invitation",
    "join_stage",
    "leave_stage",
    "move_to_audience",
    "mute",
    "mute_self",
    "unmute",
    "remove",
    "ban",
    "promote",
    "demote",
    "set_role",
    "end_room",
    "start_recording",
    "stop_recording",
    "list_audience",
    "media_offer",
    "ice_candidate",
    "broadcast_link",
    "renew_session",
];

/// Why a message could not be decoded; `code()` is what the client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    InvalidJson(String),
    UnknownType(String),
    InvalidMessage(String),
    InvalidId,
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::InvalidMessage(_) => "invalid_message",
            DecodeError::InvalidId => "invalid_id",
        }
    }

    pub fn message(&self) -> String {
        match self {
            DecodeError::InvalidJson(e) => format!("not valid JSON: {e}"),
            DecodeError::UnknownType(t) => format!("unknown message type {t:?}"),
            DecodeError::InvalidMessage(e) => format!("malformed message: {e}"),
            DecodeError::InvalidId => {
                format!(
                    "id must be a non-negative integer or a string of at most {MAX_ID_CHARS} characters"
                )
            }
        }
    }
}

/// A decoded message: its request id, its `type` and its content.
pub type Decoded = (Option<RequestId>, &'static str, ClientMessage);

/// Decodes one text message. On failure the request id is still returned when it could be
/// read, so the error can be matched to the request.
pub fn decode(text: &str) -> Result<Decoded, (Option<RequestId>, DecodeError)> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| (None, DecodeError::InvalidJson(bounded(e))))?;
    let Value::Object(mut map) = value else {
        return Err((
            None,
            DecodeError::InvalidMessage("expected a JSON object".into()),
        ));
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(raw) => match serde_json::from_value::<RequestId>(raw) {
            Ok(RequestId::Text(s)) if s.chars().count() > MAX_ID_CHARS => {
                return Err((None, DecodeError::InvalidId));
            }
            Ok(id) => Some(id),
            Err(_) => return Err((None, DecodeError::InvalidId)),
        },
    };
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err((
                id,
                DecodeError::InvalidMessage("`type` must be a string".into()),
            ));
        }
        None => return Err((id, DecodeError::InvalidMessage("missing `type`".into()))),
    };
    let Some(known) = KNOWN_TYPES.iter().copied().find(|t| *t == kind) else {
        let shown: String = kind.chars().take(40).collect();
        return Err((id, DecodeError::UnknownType(shown)));
    };
    match serde_json::from_value::<ClientMessage>(Value::Object(map)) {
        Ok(message) => Ok((id, known, message)),
        Err(e) => Err((id, DecodeError::InvalidMessage(bounded(e)))),
    }
}

/// Longest parser detail echoed back in an error: serde quotes field names and values, and a
/// client must not be able to make the server send back most of what it sent.
const MAX_DETAIL_CHARS: usize = 120;

fn bounded(error: serde_json::Error) -> String {
    let detail = error.to_string();
    if detail.chars().count() <= MAX_DETAIL_CHARS {
        return detail;
    }
    let mut cut: String = detail.chars().take(MAX_DETAIL_CHARS).collect();
    cut.push('…');
    cut
}

/// Used by tests and docs: every client type the decoder accepts.
pub fn known_types() -> &'static [&'static str] {
    KNOWN_TYPES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details_are_bounded_whatever_was_sent() {
        let field = "x".repeat(60_000);
        let unknown_field = format!(r#"{{"type":"raise_hand","{field}":1}}"#);
        let broken_json = format!(r#"{{"type":"raise_hand","a":"{field}"#);
        for text in [unknown_field, broken_json] {
            let (_, error) = decode(&text).unwrap_err();
            assert!(
                error.message().chars().count() <= MAX_DETAIL_CHARS + 40,
                "{} chars echoed",
                error.message().len()
            );
        }
    }

    #[test]
    fn decodes_with_and_without_id() {
        assert_eq!(
            decode(r#"{"type":"raise_hand"}"#),
            Ok((None, "raise_hand", ClientMessage::RaiseHand {}))
        );
        assert_eq!(
            decode(r#"{"type":"join","token":"t","id":7}"#),
            Ok((
                Some(RequestId::Number(7)),
                "join",
                ClientMessage::Join { token: "t".into() }
            ))
        );
        let (id, _, msg) =
            decode(r#"{"id":"a1","type":"mute","participant":"pt_AAAAAAAAAAAAAAAA"}"#).unwrap();
        assert_eq!(id, Some(RequestId::Text("a1".into())));
        assert!(matches!(msg, ClientMessage::Mute { .. }));
    }

    #[test]
    fn refusals_have_stable_codes_and_keep_the_id() {
        let code = |text: &str| decode(text).unwrap_err().1.code();
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1]"), "invalid_message");
        assert_eq!(code(r#"{"id":1}"#), "invalid_message");
        assert_eq!(code(r#"{"type":5}"#), "invalid_message");
        assert_eq!(code(r#"{"type":"fly"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"mute"}"#), "invalid_message");
        assert_eq!(
            code(r#"{"type":"mute","participant":3}"#),
            "invalid_message"
        );
        assert_eq!(
            code(r#"{"type":"raise_hand","extra":true}"#),
            "invalid_message"
        );
        assert_eq!(
            code(r#"{"type":"set_role","participant":"pt_AAAAAAAAAAAAAAAA","role":"king"}"#),
            "invalid_message"
        );
        assert_eq!(code(r#"{"type":"ping","id":-1}"#), "invalid_id");
        assert_eq!(code(r#"{"type":"ping","id":{"a":1}}"#), "invalid_id");
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(code(&long), "invalid_id");
        let (id, err) = decode(r#"{"type":"fly","id":"q"}"#).unwrap_err();
        assert_eq!(
            (id, err.code()),
            (Some(RequestId::Text("q".into())), "unknown_type")
        );
    }

    #[test]
    fn every_known_type_decodes_from_a_minimal_message() {
        for t in known_types() {
            let text = match *t {
                "join" => r#"{"type":"join","token":"x"}"#.to_owned(),
                "resume" => r#"{"type":"resume","resume_token":"x"}"#.to_owned(),
                "media_offer" => r#"{"type":"media_offer","sdp":"v=0"}"#.to_owned(),
                "ice_candidate" => {
                    r#"{"type":"ice_candidate","candidate":"candidate:1"}"#.to_owned()
                }
                "set_role" => {
                    r#"{"type":"set_role","participant":"pt_AAAAAAAAAAAAAAAA","role":"speaker"}"#
                        .to_owned()
                }
                "invite_to_stage" | "cancel_invitation" | "move_to_audience" | "mute"
                | "remove" | "ban" | "promote" | "demote" => {
                    format!(r#"{{"type":"{t}","participant":"pt_AAAAAAAAAAAAAAAA"}}"#)
                }
                _ => format!(r#"{{"type":"{t}"}}"#),
            };
            assert!(decode(&text).is_ok(), "{t}: {:?}", decode(&text));
        }
    }
}
