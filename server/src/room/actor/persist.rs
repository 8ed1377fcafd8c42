//! Writing down what the room decided: roles, removals, bans, the room's end and the audit
//! log, as records of the command being carried out; the task hands them, with the command's
//! webhook events, to the room's writer (`records.rs`). The room never waits for the store.

use serde_json::json;

use super::task::RoomTask;
use crate::control::{ParticipantId, Role, RoomRecord};
use crate::room::{Actor, AuditAction};

impl RoomTask {
    fn now_ms(&self) -> i64 {
        self.deps.clock.now_ms()
    }

    pub(super) fn record_role(&mut self, participant: ParticipantId, role: Role) {
        self.pending
            .records
            .push(RoomRecord::Role { participant, role });
    }

    pub(super) fn record_removal(&mut self, participant: ParticipantId) {
        let at_ms = self.now_ms();
        self.pending
            .records
            .push(RoomRecord::Removal { participant, at_ms });
    }

    pub(super) fn persist_ban(
        &mut self,
        participant: ParticipantId,
        by: Actor,
        revoke_invite: bool,
    ) {
        self.pending.records.push(RoomRecord::Ban {
            participant,
            revoke_invite,
            actor: by.recorded_as(),
            at_ms: self.now_ms(),
        });
    }

    pub(super) fn persist_end(&mut self, by: Actor, participants: usize) {
        self.pending.records.push(RoomRecord::End {
            actor: by.recorded_as(),
            at_ms: self.now_ms(),
            detail: json!({ "participants": participants }),
        });
    }

    pub(super) fn audit(
        &mut self,
        actor: Actor,
        action: AuditAction,
        target: Option<ParticipantId>,
        detail: serde_json::Value,
    ) {
        self.pending.records.push(RoomRecord::Audit {
            actor: actor.recorded_as(),
            action: action.as_str().to_owned(),
            target: target.map(|t| t.to_string()),
            detail,
            at_ms: self.now_ms(),
        });
    }
}
