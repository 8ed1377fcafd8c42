//! Whether the room is recorded: moderators start and stop it (and the server starts it when a
//! room that records by default goes live), everyone is told, the audit log names who; the
//! recorder's own failure ends it too. The file is the recorder's business.

use serde_json::json;

use crate::room::permissions::Action;
use crate::room::state::RoomState;
use crate::room::{
    Actor, Audience, AuditAction, Effect, EventKind, Outcome, RecordingOptions, Refusal,
};

impl RoomState {
    pub(super) fn start_recording(
        &mut self,
        actor: &Actor,
        options: RecordingOptions,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        self.permit(actor, Action::StartRecording)?;
        if self.recording {
            return Ok(());
        }
        self.recording = true;
        out.event(
            Audience::Everyone,
            EventKind::RecordingStarted { by: actor.clone() },
        );
        out.effect(Effect::StartRecording(options));
        let mut audit = recording_audit(actor, AuditAction::StartRecording);
        if let (Actor::System, Effect::Audit { detail, .. }) = (actor, &mut audit) {
            // The server starts a recording only for a room that records by default.
            *detail = json!({ "reason": "record_by_default" });
        }
        out.effect(audit);
        // The timeline starts with whoever is speaking now.
        if !self.speakers.is_empty() {
            out.effect(Effect::RecordSpeakers {
                speakers: self.speakers.clone(),
                from_start: true,
                at_ms: now_ms,
            });
        }
        Ok(())
    }

    pub(super) fn stop_recording(
        &mut self,
        actor: &Actor,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        self.permit(actor, Action::StopRecording)?;
        if !self.recording {
            return Ok(());
        }
        self.recording = false;
        out.event(
            Audience::Everyone,
            EventKind::RecordingStopped { by: actor.clone() },
        );
        // The audit line first: it is written with `recording.stopped`, before the recorder
        // closes the file and reports it ready.
        out.effect(recording_audit(actor, AuditAction::StopRecording));
        out.effect(Effect::StopRecording);
        Ok(())
    }

    pub(super) fn lose_recording(
        &mut self,
        actor: &Actor,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        self.permit(actor, Action::LoseRecording)?;
        if !self.recording {
            return Ok(());
        }
        self.recording = false;
        out.event(
            Audience::Everyone,
            EventKind::RecordingStopped { by: Actor::System },
        );
        out.effect(recording_audit(actor, AuditAction::StopRecording));
        Ok(())
    }
}

fn recording_audit(actor: &Actor, action: AuditAction) -> Effect {
    Effect::Audit {
        actor: actor.clone(),
        action,
        target: None,
        detail: json!({}),
    }
}

#[cfg(test)]
mod tests {
    use crate::room::command::RecordingOptions;
    use crate::room::state::testkit::{audits, cast_room, types, who};
    use crate::room::{Actor, Audience, AuditAction, Command, Effect, EventKind};

    #[test]
    fn moderators_start_and_stop_it_everyone_is_told_and_the_audit_names_them() {
        let (mut room, cast) = cast_room();
        for refused in [&cast.listener, &cast.speaker] {
            assert_eq!(
                room.refused(&who(refused), Command::StartRecording(Default::default())),
                "not_permitted"
            );
        }
        let out = room.ok(
            &who(&cast.mod_off),
            Command::StartRecording(Default::default()),
        );
        assert_eq!(types(&out), ["recording_started"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(
            out.events[0].kind,
            EventKind::RecordingStarted {
                by: who(&cast.mod_off)
            }
        );
        assert!(
            out.effects
                .contains(&Effect::StartRecording(Default::default()))
        );
        assert_eq!(audits(&out), [(AuditAction::StartRecording, None)]);
        assert!(room.state.is_recording());
        let snapshot = room.state.snapshot_for(&cast.listener).unwrap();
        assert!(snapshot.recording);
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["recording"], true);

        // A repeat changes nothing; a listener cannot stop it.
        assert!(
            room.ok(
                &who(&cast.mod_on),
                Command::StartRecording(Default::default())
            )
            .is_empty()
        );
        assert_eq!(
            room.refused(&who(&cast.listener), Command::StopRecording),
            "not_permitted"
        );
        let out = room.ok(&Actor::Operator, Command::StopRecording);
        assert_eq!(types(&out), ["recording_stopped"]);
        assert!(out.effects.contains(&Effect::StopRecording));
        assert_eq!(audits(&out), [(AuditAction::StopRecording, None)]);
        assert!(!room.state.is_recording());
        let json = serde_json::to_value(room.state.snapshot_for(&cast.listener).unwrap()).unwrap();
        assert!(json.get("recording").is_none(), "absent when not recorded");
        assert!(room.ok(&Actor::Operator, Command::StopRecording).is_empty());
    }

    #[test]
    fn the_server_starts_a_room_that_records_by_default_and_a_moderator_stops_it() {
        let (mut room, cast) = cast_room();
        let out = room.ok(&Actor::System, Command::StartRecording(Default::default()));
        assert_eq!(types(&out), ["recording_started"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(
            out.events[0].kind,
            EventKind::RecordingStarted { by: Actor::System }
        );
        assert!(
            out.effects
                .contains(&Effect::StartRecording(Default::default()))
        );
        assert!(out.effects.contains(&Effect::Audit {
            actor: Actor::System,
            action: AuditAction::StartRecording,
            target: None,
            detail: serde_json::json!({ "reason": "record_by_default" }),
        }));
        assert!(room.state.is_recording());
        assert!(room.state.snapshot_for(&cast.listener).unwrap().recording);
        // Once started, the server asking again changes nothing; nor can a speaker stop it.
        assert!(
            room.ok(&Actor::System, Command::StartRecording(Default::default()))
                .is_empty()
        );
        assert_eq!(
            room.refused(&who(&cast.speaker), Command::StopRecording),
            "not_permitted"
        );
        let out = room.ok(&who(&cast.mod_on), Command::StopRecording);
        assert_eq!(
            out.events[0].kind,
            EventKind::RecordingStopped {
                by: who(&cast.mod_on)
            }
        );
        assert!(out.effects.contains(&Effect::StopRecording));
        assert!(!room.state.is_recording());
        // The server stops nothing by itself: only the recorder's loss does.
        assert_eq!(
            room.refused(&Actor::System, Command::StopRecording),
            "not_permitted"
        );
    }

    #[test]
    fn speakers_are_written_to_the_timeline_while_recorded_only() {
        let (mut room, cast) = cast_room();
        let speak = |levels: Vec<_>, heard_at_ms| Command::SetSpeaking {
            levels,
            heard_at_ms,
        };
        let now = room.now;
        let out = room.ok(&Actor::System, speak(vec![(cast.speaker.clone(), 10)], now));
        assert!(
            !out.effects
                .iter()
                .any(|e| matches!(e, Effect::RecordSpeakers { .. }))
        );
        room.now += 1000;
        let out = room.ok(
            &who(&cast.mod_on),
            Command::StartRecording(Default::default()),
        );
        // The line it starts with, then a change, at the moment media heard it.
        assert!(out.effects.contains(&Effect::RecordSpeakers {
            speakers: vec![cast.speaker.clone()],
            from_start: true,
            at_ms: room.now,
        }));
        room.now += 1000;
        let out = room.ok(&Actor::System, speak(vec![], room.now - 240));
        assert!(out.effects.contains(&Effect::RecordSpeakers {
            speakers: vec![],
            from_start: false,
            at_ms: room.now - 240,
        }));
        // Never later than now, whatever the report says.
        room.now += 1000;
        let out = room.ok(
            &Actor::System,
            speak(vec![(cast.speaker.clone(), 10)], room.now + 50),
        );
        assert!(out.effects.contains(&Effect::RecordSpeakers {
            speakers: vec![cast.speaker.clone()],
            from_start: false,
            at_ms: room.now,
        }));
        // A change made by a command happened when it was made.
        room.now += 1000;
        let out = room.ok(
            &who(&cast.mod_on),
            Command::Mute {
                target: cast.speaker.clone(),
            },
        );
        assert!(out.effects.contains(&Effect::RecordSpeakers {
            speakers: vec![],
            from_start: false,
            at_ms: room.now,
        }));
    }

    #[test]
    fn a_lost_recording_is_reported_by_the_system_and_the_end_stops_it() {
        let (mut room, cast) = cast_room();
        assert_eq!(
            room.refused(&who(&cast.mod_on), Command::RecordingLost),
            "not_permitted"
        );
        assert!(room.ok(&Actor::System, Command::RecordingLost).is_empty());
        room.ok(
            &who(&cast.mod_on),
            Command::StartRecording(Default::default()),
        );
        let out = room.ok(&Actor::System, Command::RecordingLost);
        assert_eq!(
            out.events[0].kind,
            EventKind::RecordingStopped { by: Actor::System }
        );
        assert!(!out.effects.contains(&Effect::StopRecording));
        // What was asked goes to the recorder as it was asked.
        let tracks = RecordingOptions {
            speaker_tracks: Some(true),
        };
        let out = room.ok(&who(&cast.mod_on), Command::StartRecording(tracks));
        assert!(out.effects.contains(&Effect::StartRecording(tracks)));
        let out = room.ok(&who(&cast.mod_on), Command::End);
        assert!(out.effects.contains(&Effect::StopRecording));
        assert_eq!(types(&out), ["room_ended"]);
    }
}
