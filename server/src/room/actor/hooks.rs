//! Webhook events from what the room decided: the one place a command's events and effects
//! become webhook events (`docs/webhooks.md`). They join the command's records, so the writer
//! stores each with the fact it reports, in one transaction; the sender posts them later.

use serde_json::{Value, json};

use super::task::RoomTask;
use crate::control::{ControlError, ParticipantId};
use crate::room::{AuditAction, Effect, EventKind, LeaveReason, Outcome};
use crate::webhooks::{self, event_type};

impl RoomTask {
    /// Whether this room makes events, when it starts: always if the server has an endpoint,
    /// else if the room has one of its own. A store that cannot say counts as yes: the store
    /// writes events only for the endpoints there are, so making one too many costs a write.
    pub(super) async fn look_up_webhooks(&mut self) {
        if self.deps.webhooks {
            self.webhooks = true;
            return;
        }
        self.webhooks = match self
            .deps
            .store
            .room_webhook(self.state.room().clone())
            .await
        {
            Ok(_) => true,
            Err(ControlError::RoomWebhookNotFound | ControlError::RoomNotFound) => false,
            Err(e) => {
                tracing::warn!(room = %self.state.room(), error = %e,
                    "cannot tell whether the room has a webhook endpoint; making its events");
                true
            }
        };
    }

    /// The room became live on this node.
    pub(super) fn webhook_room_started(&mut self, at_ms: i64) {
        let data = json!({ "title": self.title });
        self.webhook(event_type::ROOM_STARTED, data, at_ms);
    }

    /// The webhook events an applied command stands for, in the order it decided them.
    pub(super) fn webhooks_for(&mut self, outcome: &Outcome, at_ms: i64) {
        if !self.webhooks {
            return;
        }
        for event in &outcome.events {
            let (kind, data) = match &event.kind {
                EventKind::ParticipantJoined { participant } => (
                    event_type::PARTICIPANT_JOINED,
                    json!({ "participant": participant }),
                ),
                EventKind::ParticipantLeft {
                    participant,
                    reason,
                } => {
                    // A removal or a ban is reported first, with who did it.
                    let moderation = match reason {
                        LeaveReason::Removed => Some(event_type::PARTICIPANT_REMOVED),
                        LeaveReason::Banned => Some(event_type::PARTICIPANT_BANNED),
                        LeaveReason::Left | LeaveReason::TimedOut => None,
                    };
                    if let Some(kind) = moderation {
                        let data = json!({
                            "participant": { "id": participant },
                            "by": moderator_of(outcome, participant),
                        });
                        self.webhook(kind, data, at_ms);
                    }
                    let data = json!({ "participant": { "id": participant }, "reason": reason });
                    (event_type::PARTICIPANT_LEFT, data)
                }
                EventKind::InvitedToStage { participant, by } => (
                    event_type::STAGE_INVITED,
                    json!({ "participant": { "id": participant }, "by": by }),
                ),
                EventKind::JoinedStage { participant } => (
                    event_type::STAGE_JOINED,
                    json!({ "participant": participant }),
                ),
                EventKind::LeftStage { participant, by } => (
                    event_type::STAGE_LEFT,
                    json!({ "participant": participant, "by": by }),
                ),
                EventKind::Muted { participant, by } => (
                    event_type::PARTICIPANT_MUTED,
                    json!({ "participant": participant, "by": by }),
                ),
                EventKind::RoleChanged { participant, by } => (
                    event_type::PARTICIPANT_ROLE_CHANGED,
                    json!({ "participant": participant, "by": by }),
                ),
                EventKind::RoomEnded { by } => (event_type::ROOM_ENDED, json!({ "by": by })),
                EventKind::RecordingStarted { by } => {
                    (event_type::RECORDING_STARTED, json!({ "by": by }))
                }
                EventKind::RecordingStopped { by } => {
                    (event_type::RECORDING_STOPPED, json!({ "by": by }))
                }
                _ => continue,
            };
            self.webhook(kind, data, at_ms);
        }
    }

    fn webhook(&mut self, kind: &str, mut data: Value, at_ms: i64) {
        if !self.webhooks {
            return;
        }
        data["room_id"] = json!(self.state.room());
        self.pending
            .webhooks
            .push(webhooks::event(kind, data, at_ms));
    }
}

/// Who removed or banned `participant` in this outcome, as its audit line names them.
fn moderator_of(outcome: &Outcome, participant: &ParticipantId) -> Value {
    outcome
        .effects
        .iter()
        .find_map(|effect| match effect {
            Effect::Audit {
                actor,
                action: AuditAction::Remove | AuditAction::Ban,
                target: Some(target),
                ..
            } if target == participant => Some(json!(actor)),
            _ => None,
        })
        .unwrap_or(Value::Null)
}
