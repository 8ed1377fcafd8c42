//! Writing down what the room decided: roles, removals, bans, the room's end and the audit
//! log. Awaited in order, so a REST call that returns has its lines written; a failure is
//! logged and the room carries on (the live state is already right).

use serde_json::json;

use super::task::{RoomTask, log_failure};
use crate::control::{ControlError, ParticipantId, Role};
use crate::room::{Actor, AuditAction};

impl RoomTask {
    pub(super) async fn record_role(&self, participant: ParticipantId, role: Role) {
        if let Err(e) = self
            .deps
            .store
            .set_live_role(participant.clone(), role)
            .await
        {
            tracing::error!(%participant, error = %e, "could not record a role");
        }
    }

    pub(super) async fn record_removal(&self, participant: ParticipantId) {
        let now = self.deps.clock.now_ms();
        let result = self.deps.store.mark_removed(participant, now).await;
        log_failure(self.state.room(), result);
    }

    pub(super) async fn persist_ban(
        &self,
        participant: ParticipantId,
        by: Actor,
        revoke_invite: bool,
    ) {
        let now = self.deps.clock.now_ms();
        let room = self.state.room().clone();
        let result = self
            .deps
            .store
            .ban(
                room,
                participant,
                revoke_invite,
                by.recorded_as(),
                now,
                false,
            )
            .await;
        log_failure(self.state.room(), result);
    }

    pub(super) async fn persist_end(&self, by: Actor, participants: usize) {
        let now = self.deps.clock.now_ms();
        let room = self.state.room().clone();
        let detail = json!({ "participants": participants });
        let result = match self
            .deps
            .store
            .end_room(room, by.recorded_as(), now, Some(detail))
            .await
        {
            // A racing `DELETE` ended it first and wrote its own line.
            Err(ControlError::RoomEnded) => Ok(()),
            other => other.map(|_| ()),
        };
        log_failure(self.state.room(), result);
    }

    pub(super) async fn audit(
        &self,
        actor: Actor,
        action: AuditAction,
        target: Option<ParticipantId>,
        detail: serde_json::Value,
    ) {
        let now = self.deps.clock.now_ms();
        let room = self.state.room().clone();
        let result = self
            .deps
            .store
            .record_audit(
                room,
                actor.recorded_as(),
                action.as_str().to_owned(),
                target.map(|t| t.to_string()),
                detail,
                now,
            )
            .await;
        log_failure(self.state.room(), result);
    }
}
