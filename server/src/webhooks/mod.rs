//! Standard Webhooks for integrations: the event types and their JSON bodies, the signature,
//! and the sender that drains the store's outbox. Events are made by the room task and
//! written to the outbox with the facts they report; nothing here runs on a room's task.
//!
//! - `delivery.rs`: the sender: takes due rows (one per room and endpoint at a time, under a
//!   lease), POSTs them, records the outcome, retries with backoff, gives up after the
//!   configured limit.
//! - `address.rs`: where a room's own endpoint may point (no private addresses by default).

pub mod address;
mod delivery;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::rfc3339;
use crate::control::{NewWebhook, ParticipantId, RoomId, random_token};

pub use delivery::start as start_sender;

/// Every event type sent, as it appears in `type`. A new one is one line here and one call
/// where it happens (`docs/webhooks.md` lists their payloads).
pub mod event_type {
    pub const ROOM_STARTED: &str = "room.started";
    pub const ROOM_ENDED: &str = "room.ended";
    pub const PARTICIPANT_JOINED: &str = "participant.joined";
    pub const PARTICIPANT_LEFT: &str = "participant.left";
    pub const STAGE_INVITED: &str = "stage.invited";
    pub const STAGE_JOINED: &str = "stage.joined";
    pub const STAGE_LEFT: &str = "stage.left";
    pub const PARTICIPANT_MUTED: &str = "participant.muted";
    pub const PARTICIPANT_ROLE_CHANGED: &str = "participant.role_changed";
    pub const PARTICIPANT_REMOVED: &str = "participant.removed";
    pub const PARTICIPANT_BANNED: &str = "participant.banned";
    pub const RECORDING_STARTED: &str = "recording.started";
    pub const RECORDING_STOPPED: &str = "recording.stopped";
    pub const RECORDING_READY: &str = "recording.ready";
    pub const CLIP_CREATED: &str = "clip.created";
}

/// An event for the outbox: a fresh `webhook-id` and the body every attempt sends,
/// `{"type", "timestamp", "data"}`.
pub fn event(event_type: &str, data: serde_json::Value, at_ms: i64) -> NewWebhook {
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": rfc3339(at_ms),
        "data": data,
    });
    NewWebhook {
        id: format!("msg_{}", random_token(16)),
        event_type: event_type.to_owned(),
        body: body.to_string(),
        created_at_ms: at_ms,
    }
}

/// `room.ended` for a room ended through REST while nobody was in it (a live room reports its
/// own end, in `room/actor/hooks.rs`, with the same shape).
pub fn room_ended(room: &RoomId, by: &str, at_ms: i64) -> NewWebhook {
    let data = serde_json::json!({ "room_id": room, "by": by });
    event(event_type::ROOM_ENDED, data, at_ms)
}

/// `participant.banned` for a ban through REST of someone not in the room.
pub fn participant_banned(
    room: &RoomId,
    participant: &ParticipantId,
    by: &str,
    at_ms: i64,
) -> NewWebhook {
    let data = serde_json::json!({
        "room_id": room,
        "participant": { "id": participant },
        "by": by,
    });
    event(event_type::PARTICIPANT_BANNED, data, at_ms)
}

/// A fresh signing secret for a room's endpoint: `whsec_` + base64 of 32 random bytes, the
/// shape `[webhooks] secret` has.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random generator is unavailable");
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` value for one attempt: `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` with the secret's key.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example in the Standard Webhooks specification.
        let key = crate::config::signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_new_secret_is_a_valid_one_and_never_the_same() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(crate::config::signing_key(&a).unwrap().len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn an_event_body_has_type_timestamp_and_data() {
        let made = event(
            event_type::ROOM_STARTED,
            serde_json::json!({ "room_id": "rm_x" }),
            0,
        );
        let body: serde_json::Value = serde_json::from_str(&made.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "room.started",
                "timestamp": "1970-01-01T00:00:00Z",
                "data": { "room_id": "rm_x" },
            })
        );
        assert!(made.id.starts_with("msg_") && made.id.len() > 20);
    }
}
