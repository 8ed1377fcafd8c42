//! What the server sends: replies, the messages that carry a room's view, and room events with
//! their `seq`. The room's own types come in as any `Serialize`, so this file needs no room.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::RequestId;

/// One encoded text message, cheap to clone: a room event is encoded once and the same bytes
/// are queued to every recipient. Always valid UTF-8 (it is made from a `String`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(Bytes::from(text))
    }
}

/// Replies and notices that carry nothing of the room's view (see [`Welcome`],
/// [`SnapshotMessage`], [`AudiencePageMessage`] and [`event_message`] for those).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The answer to a `media_offer`.
    MediaAnswer {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        sdp: &'a str,
    },
    /// A request was carried out (its effects arrive as events).
    Ok { id: &'a RequestId },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: &'a str,
        message: &'a str,
    },
    /// How many people are in the audience; coalesced, a few per second at most.
    /// `count` includes the `anonymous` listeners on the room's listen links (absent when 0).
    AudienceCount {
        count: u32,
        #[serde(skip_serializing_if = "is_zero")]
        anonymous: u32,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    /// The room lives on another node: join or resume there, at `signal_url`, with the same
    /// token. The socket closes with 4307 next.
    Moved { signal_url: &'a str },
    /// The answer to `broadcast_link`.
    BroadcastLink {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        playlist_url: &'a str,
        expires_at: &'a str,
    },
    /// The answer to `renew_session`: a session token as `POST /api/v1/join` gives, with the
    /// role the room gives its holder now.
    Session {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        token: &'a str,
        expires_at: &'a str,
    },
    /// Sent just before the server closes the socket on purpose.
    Closed { reason: &'a str },
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise")
    }
}

/// First message after a successful `join` or `resume`; `S` is the room's snapshot.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "welcome")]
pub struct Welcome<'a, S> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RequestId>,
    pub room_title: &'a str,
    pub seq: u64,
    pub resume_token: &'a str,
    pub resume_grace_secs: u64,
    /// What the client's WebRTC offer must look like.
    pub media: MediaInfo,
    pub snapshot: &'a S,
}

/// The whole view again, when something changed that is easier to resend than to patch.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "snapshot")]
pub struct SnapshotMessage<'a, S> {
    pub seq: u64,
    pub snapshot: &'a S,
}

/// The answer to `list_audience`; `P` is the room's page, whose fields are inlined.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "audience_page")]
pub struct AudiencePageMessage<'a, P> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a RequestId>,
    #[serde(flatten)]
    pub page: &'a P,
}

impl<S: Serialize> Welcome<'_, S> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("welcomes serialise")
    }
}

impl<S: Serialize> SnapshotMessage<'_, S> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("snapshots serialise")
    }
}

impl<P: Serialize> AudiencePageMessage<'_, P> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audience pages serialise")
    }
}

/// Media parameters a client needs before it offers.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MediaInfo {
    /// Audio sections to offer: one per slot (the loudest speakers); the first may send.
    pub slots: usize,
    /// The server has no media connection of this participant's (the room moved to this
    /// node after its previous one died or stopped): make a new one. Absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reconnect: bool,
}

/// A room event as sent: its own fields (`type` among them) plus the room-wide `seq`.
pub fn event_message(seq: u64, event: &impl Serialize) -> String {
    let mut value = serde_json::to_value(event).expect("events serialise");
    if let Value::Object(map) = &mut value {
        map.insert("seq".into(), Value::from(seq));
    }
    value.to_string()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_carry_type_and_seq() {
        let text = event_message(9, &json!({ "type": "active_speakers", "speakers": [] }));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "active_speakers");
        assert_eq!(v["seq"], 9);
    }

    #[test]
    fn view_messages_are_tagged_like_the_others() {
        let id = RequestId::Number(3);
        let snapshot = json!({ "room": "rm_x" });
        let welcome = Welcome {
            id: Some(&id),
            room_title: "T",
            seq: 4,
            resume_token: "rs1.x",
            resume_grace_secs: 30,
            media: MediaInfo {
                slots: 3,
                reconnect: false,
            },
            snapshot: &snapshot,
        };
        let v: Value = serde_json::from_str(&welcome.to_json()).unwrap();
        assert_eq!(v["type"], "welcome");
        assert_eq!((v["id"].clone(), v["seq"].clone()), (json!(3), json!(4)));
        assert_eq!(v["media"]["slots"], 3);
        assert_eq!(v["snapshot"]["room"], "rm_x");

        let v: Value = serde_json::from_str(
            &SnapshotMessage {
                seq: 5,
                snapshot: &snapshot,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({ "type": "snapshot", "seq": 5, "snapshot": { "room": "rm_x" } })
        );

        let page = json!({ "participants": [], "next": null });
        let v: Value = serde_json::from_str(
            &AudiencePageMessage {
                id: None,
                page: &page,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({ "type": "audience_page", "participants": [], "next": null })
        );
    }
}
