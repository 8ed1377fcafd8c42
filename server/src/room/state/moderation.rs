//! Moderation beyond the stage: remove, ban, promote, demote, the REST role call, ending the room.
//! Every action here is audited, whoever did it; persisting is left to the edges as effects.

use crate::control::{ParticipantId, Role};
use crate::room::permissions::Action;
use crate::room::state::{RoomState, audit};
use crate::room::{
    Actor, Audience, AuditAction, CloseReason, Effect, EventKind, LeaveReason, Outcome, Presence,
    Refusal,
};

impl RoomState {
    /// `ban` is `Some(revoke_invite)` for a ban, `None` for a removal.
    pub(super) fn remove(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        ban: Option<bool>,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let action = if ban.is_some() {
            Action::Ban
        } else {
            Action::Remove
        };
        let (participant, _) = self.target(actor, action, target)?;
        let (view, connection) = (participant.view(), participant.connection);
        let (reason, close, action) = if ban.is_some() {
            (LeaveReason::Banned, CloseReason::Banned, AuditAction::Ban)
        } else {
            (
                LeaveReason::Removed,
                CloseReason::Removed,
                AuditAction::Remove,
            )
        };
        self.depart(target, reason, out);
        if ban.is_none() {
            out.effect(Effect::RecordRemoval {
                participant: target.clone(),
            });
        }
        // Even while reconnecting: a half-dead socket the edge still holds must not linger.
        out.effect(Effect::CloseConnection {
            participant: target.clone(),
            connection,
            reason: close,
        });
        if let Some(revoke_invite) = ban {
            self.banned.insert(target.clone());
            out.effect(Effect::PersistBan {
                participant: target.clone(),
                by: actor.clone(),
                revoke_invite,
            });
        }
        out.effect(audit(actor, action, &view));
        Ok(())
    }

    /// A promoted participant keeps their place: a speaker stays on stage, a listener in the
    /// audience (with hand and invitation cleared, which are for listeners only).
    pub(super) fn promote(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        if !self.target(actor, Action::Promote, target)?.1 {
            return Ok(());
        }
        self.set_live_role(actor, target, Role::Moderator, AuditAction::Promote, out);
        Ok(())
    }

    /// A moderator on stage becomes a speaker, one in the audience a listener.
    pub(super) fn demote(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let (participant, changes) = self.target(actor, Action::Demote, target)?;
        if !changes {
            return Ok(());
        }
        let role = if participant.on_stage {
            Role::Speaker
        } else {
            Role::Listener
        };
        self.demote_to(actor, target, role, out)
    }

    /// The REST role call, mapped onto the commands people use, so it follows the same rules:
    /// a listener asked to speak is only invited.
    pub(super) fn set_role(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        role: Role,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let current = self.target(actor, Action::SetRole, target)?.0.role;
        match (current, role) {
            (Role::Listener, Role::Listener)
            | (Role::Speaker, Role::Speaker)
            | (Role::Moderator, Role::Moderator) => Ok(()),
            (Role::Listener | Role::Speaker, Role::Moderator) => self.promote(actor, target, out),
            (Role::Listener, Role::Speaker) => self.invite_to_stage(actor, target, out),
            (Role::Speaker, Role::Listener) => self.move_to_audience(actor, target, out),
            (Role::Moderator, role) => self.demote_to(actor, target, role, out),
        }
    }

    /// `role` is speaker (on stage) or listener (in the audience).
    ///
    /// A participant may not leave the room without a moderator by stepping down, so that
    /// someone present can still run it. The operator may: the REST API can always moderate,
    /// and an operator demoting the last moderator means it on purpose.
    fn demote_to(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        role: Role,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        // The actor is a moderator too, so only the last moderator demoting themselves gets here
        // with a single moderator in the room.
        if actor.participant().is_some() && self.moderators.len() <= 1 {
            return Err(Refusal::LastModerator);
        }
        let on_stage = role != Role::Listener;
        if on_stage && !self.participants[target].on_stage && self.stage_is_full() {
            return Err(Refusal::StageFull);
        }
        self.set_live_role(actor, target, role, AuditAction::Demote, out);
        Ok(())
    }

    fn set_live_role(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        role: Role,
        action: AuditAction,
        out: &mut Outcome,
    ) {
        let changed = self.change(target, out, |p| {
            match role {
                Role::Listener => {
                    p.on_stage = false;
                    p.muted = false;
                }
                Role::Speaker => p.on_stage = true,
                Role::Moderator => {}
            }
            if role != Role::Listener {
                p.hand_raised = false;
                p.invited = false;
            }
            p.role = role;
        });
        out.event(
            changed.audience(Audience::ModeratorsAnd(target.clone())),
            EventKind::RoleChanged {
                participant: changed.view.clone(),
                by: actor.clone(),
            },
        );
        // Gaining or losing moderator changes what they may see (the audience list).
        out.effect(Effect::RefreshSnapshot {
            participant: target.clone(),
        });
        out.effect(audit(actor, action, &changed.view));
    }

    /// Everyone is disconnected and the room refuses everything from now on. No per-person
    /// leave events: one `room_ended` tells everyone at once.
    pub(super) fn end(&mut self, actor: &Actor, out: &mut Outcome) -> Result<(), Refusal> {
        self.permit(actor, Action::EndRoom)?;
        // The recording's file is closed before anyone is told the room ended.
        if std::mem::take(&mut self.recording) {
            out.effect(Effect::StopRecording);
        }
        let participants = std::mem::take(&mut self.participants);
        for participant in participants.values() {
            if participant.may_send() {
                out.effect(Effect::SendPermission {
                    participant: participant.id.clone(),
                    allowed: false,
                });
            }
            if participant.presence == Presence::Connected {
                out.effect(Effect::CloseConnection {
                    participant: participant.id.clone(),
                    connection: participant.connection,
                    reason: CloseReason::RoomEnded,
                });
            }
        }
        self.stage.clear();
        self.hands.clear();
        self.moderators.clear();
        self.deadlines.clear();
        self.speakers.clear();
        self.webrtc_listeners = 0;
        self.ended = true;
        out.event(
            Audience::Everyone,
            EventKind::RoomEnded { by: actor.clone() },
        );
        out.effect(Effect::CloseRoomMedia);
        out.effect(Effect::PersistRoomEnded {
            by: actor.clone(),
            participants: participants.len(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::control::{ParticipantId, Role};
    use crate::room::state::testkit::*;
    use crate::room::{Actor, Audience, AuditAction, CloseReason, Command, Effect, EventKind};

    #[test]
    fn removing_closes_the_connection_revokes_sending_and_is_audited() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let speaker = room.join("speaker", Role::Speaker);
        let connection = room.get(&speaker).connection;

        let out = room.ok(
            &who(&host),
            Command::Remove {
                target: speaker.clone(),
            },
        );
        assert_eq!(types(&out), ["participant_left"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(send_permissions(&out), [(speaker.clone(), false)]);
        assert!(out.effects.contains(&Effect::CloseConnection {
            participant: speaker.clone(),
            connection,
            reason: CloseReason::Removed,
        }));
        assert_eq!(audits(&out), [(AuditAction::Remove, Some(speaker.clone()))]);
        assert!(
            !out.effects
                .iter()
                .any(|e| matches!(e, Effect::PersistBan { .. }))
        );

        // The room keeps no ban for a removal: the edge refuses tokens issued before it (the
        // store records it), so this rejoin stands for a fresh redemption of an invite.
        room.join("speaker", Role::Speaker);
    }

    #[test]
    fn banning_persists_the_ban_and_keeps_them_out() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let connection = room.get(&listener).connection;

        let out = room.ok(
            &who(&host),
            Command::Ban {
                target: listener.clone(),
                revoke_invite: false,
            },
        );
        assert_eq!(types(&out), ["participant_left"]);
        assert_eq!(out.events[0].audience, Audience::Moderators);
        assert!(out.effects.contains(&Effect::CloseConnection {
            participant: listener.clone(),
            connection,
            reason: CloseReason::Banned,
        }));
        assert!(out.effects.contains(&Effect::PersistBan {
            participant: listener.clone(),
            by: who(&host),
            revoke_invite: false,
        }));
        assert_eq!(audits(&out), [(AuditAction::Ban, Some(listener.clone()))]);

        let connection = room.connect();
        let join = Command::Join {
            display_name: "Back".into(),
            role: Role::Listener,
            delivery: Delivery::Webrtc,
            connection,
            resume_nonce: connection.0,
        };
        assert_eq!(room.refused(&who(&listener), join), "banned");
    }

    #[test]
    fn the_last_moderator_cannot_step_down_but_the_operator_can_demote_them() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        for command in [
            Command::Demote {
                target: host.clone(),
            },
            Command::SetRole {
                target: host.clone(),
                role: Role::Listener,
            },
            Command::SetRole {
                target: host.clone(),
                role: Role::Speaker,
            },
        ] {
            assert_eq!(room.refused(&who(&host), command), "last_moderator");
        }

        let out = room.ok(
            &Actor::Operator,
            Command::Demote {
                target: host.clone(),
            },
        );
        assert_eq!(types(&out), ["role_changed"]);
        assert_eq!(room.get(&host).role, Role::Speaker);
        assert!(room.get(&host).on_stage);
        assert_eq!(audits(&out), [(AuditAction::Demote, Some(host.clone()))]);
        assert!(out.effects.contains(&Effect::RefreshSnapshot {
            participant: host.clone(),
        }));
        assert_eq!(room.state.moderators().count(), 0);
    }

    #[test]
    fn a_moderator_may_step_down_while_another_remains() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let cohost = room.join("cohost", Role::Moderator);
        room.ok(&who(&cohost), Command::LeaveStage);
        let out = room.ok(
            &who(&cohost),
            Command::Demote {
                target: cohost.clone(),
            },
        );
        // An audience moderator becoming a listener is nobody else's business but moderators'.
        assert_eq!(
            out.events[0].audience,
            Audience::ModeratorsAnd(cohost.clone())
        );
        assert_eq!(room.get(&cohost).role, Role::Listener);
        assert_eq!(
            room.refused(
                &who(&host),
                Command::Demote {
                    target: host.clone()
                }
            ),
            "last_moderator"
        );
    }

    #[test]
    fn promotion_keeps_the_place_and_clears_listener_only_state() {
        let mut room = TestRoom::new();
        let speaker = room.join("speaker", Role::Speaker);
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        room.ok(
            &Actor::Operator,
            Command::InviteToStage {
                target: listener.clone(),
            },
        );

        let out = room.ok(
            &Actor::Operator,
            Command::Promote {
                target: speaker.clone(),
            },
        );
        assert_eq!(types(&out), ["role_changed"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert!(send_permissions(&out).is_empty());
        assert!(room.get(&speaker).on_stage);

        let out = room.ok(
            &Actor::Operator,
            Command::Promote {
                target: listener.clone(),
            },
        );
        // Their hand was public, so everyone sees it go down with the promotion.
        assert_eq!(out.events[0].audience, Audience::Everyone);
        let p = room.get(&listener);
        assert_eq!(p.role, Role::Moderator);
        assert!(!p.on_stage && !p.hand_raised && !p.invited);
        assert!(
            room.state
                .snapshot_for(&listener)
                .unwrap()
                .audience
                .is_some()
        );
        assert!(
            room.ok(&Actor::Operator, Command::Promote { target: listener })
                .is_empty()
        );
    }

    #[test]
    fn the_rest_role_call_follows_the_same_rules_as_people() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let speaker = room.join("speaker", Role::Speaker);
        let cohost = room.join("cohost", Role::Moderator);
        let set = |target: &ParticipantId, role| Command::SetRole {
            target: target.clone(),
            role,
        };

        // A listener moved up is invited, not put on stage.
        let out = room.ok(&Actor::Operator, set(&listener, Role::Speaker));
        assert_eq!(types(&out), ["invited_to_stage"]);
        assert_eq!(room.get(&listener).role, Role::Listener);
        assert!(room.get(&listener).invited);

        let out = room.ok(&who(&host), set(&speaker, Role::Listener));
        assert_eq!(types(&out), ["left_stage"]);
        assert_eq!(room.get(&speaker).role, Role::Listener);

        // An on-stage moderator to listener: off the stage and demoted, in one change.
        let out = room.ok(&who(&host), set(&cohost, Role::Listener));
        assert_eq!(types(&out), ["role_changed"]);
        assert_eq!(send_permissions(&out), [(cohost.clone(), false)]);
        assert_eq!(room.get(&cohost).role, Role::Listener);
        assert!(!room.get(&cohost).on_stage);

        // An audience moderator to speaker: demoted onto the stage.
        room.ok(&Actor::Operator, set(&cohost, Role::Moderator));
        assert!(!room.get(&cohost).on_stage);
        let out = room.ok(&who(&host), set(&cohost, Role::Speaker));
        assert_eq!(types(&out), ["role_changed"]);
        assert_eq!(send_permissions(&out), [(cohost.clone(), true)]);
        assert_eq!(room.get(&cohost).role, Role::Speaker);
        assert!(room.get(&cohost).on_stage);

        assert!(room.ok(&who(&host), set(&cohost, Role::Speaker)).is_empty());
        assert_eq!(
            room.refused(&who(&host), set(&pid("ghost"), Role::Speaker)),
            "participant_not_found"
        );
        assert_eq!(
            room.refused(&who(&speaker), set(&listener, Role::Speaker)),
            "not_permitted"
        );
    }

    #[test]
    fn demoting_onto_a_full_stage_is_refused() {
        let mut room = TestRoom::with_limits(10, 1, 30_000);
        let host = room.join("host", Role::Moderator);
        let cohost = room.join("cohost", Role::Moderator);
        assert!(!room.get(&cohost).on_stage);
        let command = Command::SetRole {
            target: cohost.clone(),
            role: Role::Speaker,
        };
        assert_eq!(room.refused(&who(&host), command), "stage_full");
    }

    #[test]
    fn ending_closes_everyone_and_refuses_everything_after() {
        let (mut ended, cast) = cast_room();
        let host = cast.mod_on.clone();
        let reconnecting = cast.listener.clone();
        let connection = ended.get(&reconnecting).connection;
        ended.ok(&who(&reconnecting), Command::Disconnect { connection });
        let present = ended.state.participant_count() as usize;

        let out = ended.ok(&who(&host), Command::End);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(out.events[0].kind, EventKind::RoomEnded { by: who(&host) });
        let closed: Vec<_> = out
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::CloseConnection {
                    participant,
                    reason: CloseReason::RoomEnded,
                    ..
                } => Some(participant.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(closed.len(), present - 1, "all but the one already gone");
        assert!(!closed.contains(&reconnecting));
        // The end is recorded with its audit line in one effect, not as a separate line.
        assert!(out.effects.contains(&Effect::PersistRoomEnded {
            by: who(&host),
            participants: present,
        }));
        assert!(audits(&out).is_empty());
        assert!(out.effects.contains(&Effect::CloseRoomMedia));
        assert!(ended.state.is_ended() && ended.state.is_empty());
        assert_eq!(ended.state.audience_count(), 0);

        let actors = [
            who(&host),
            who(&cast.listener),
            Actor::Operator,
            Actor::System,
        ];
        for command in every_command(&cast) {
            for actor in &actors {
                let code = ended.refused(actor, command.clone());
                assert_eq!(code, "room_ended", "{actor:?} {command:?}");
            }
        }
    }

    #[test]
    fn the_operator_can_end_a_room_and_others_cannot() {
        let (mut room, cast) = cast_room();
        assert_eq!(
            room.refused(&who(&cast.speaker), Command::End),
            "not_permitted"
        );
        assert_eq!(room.refused(&Actor::System, Command::End), "not_permitted");
        let out = room.ok(&Actor::Operator, Command::End);
        assert_eq!(
            out.events[0].kind,
            EventKind::RoomEnded {
                by: Actor::Operator
            }
        );
    }

    #[test]
    fn a_ban_carries_who_banned_and_whether_to_revoke_the_invite() {
        for revoke_invite in [false, true] {
            let mut room = TestRoom::new();
            let host = room.join("host", Role::Moderator);
            let listener = room.join("listener", Role::Listener);
            let out = room.ok(
                &who(&host),
                Command::Ban {
                    target: listener.clone(),
                    revoke_invite,
                },
            );
            let bans: Vec<_> = out
                .effects
                .iter()
                .filter(|e| matches!(e, Effect::PersistBan { .. }))
                .collect();
            assert_eq!(
                bans,
                [&Effect::PersistBan {
                    participant: listener.clone(),
                    by: who(&host),
                    revoke_invite,
                }]
            );
            // A ban is not a removal: the identity stays out, its tokens need no voiding.
            assert!(
                !out.effects
                    .iter()
                    .any(|e| matches!(e, Effect::RecordRemoval { .. }))
            );
        }
    }

    #[test]
    fn a_removal_is_recorded_before_the_socket_closes() {
        let mut room = TestRoom::new();
        let listener = room.join("listener", Role::Listener);
        let out = room.ok(
            &Actor::Operator,
            Command::Remove {
                target: listener.clone(),
            },
        );
        let at = |wanted: fn(&Effect) -> bool| out.effects.iter().position(wanted);
        let recorded = at(|e| matches!(e, Effect::RecordRemoval { .. })).expect("recorded");
        let closed = at(|e| matches!(e, Effect::CloseConnection { .. })).expect("closed");
        assert!(recorded < closed, "{:?}", out.effects);
        assert!(out.effects.contains(&Effect::RecordRemoval {
            participant: listener.clone(),
        }));
        assert!(out.effects.contains(&Effect::CloseMedia {
            participant: listener,
        }));
    }

    #[test]
    fn a_moderator_over_rest_from_outside_acts_with_the_operators_reach_and_is_named() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let speaker = room.join("speaker", Role::Speaker);
        // Their token says moderator; they are not in the room.
        let remote = Actor::RestModerator(pid("remote"));
        let out = room.ok(
            &remote,
            Command::Mute {
                target: speaker.clone(),
            },
        );
        // People are told the operator did it (they have never seen this moderator)…
        let json = serde_json::to_value(&out.events[0].kind).unwrap();
        assert_eq!(json["by"], "operator");
        // …and the audit log names them.
        assert_eq!(
            recorded_actors(&out),
            [crate::control::Actor::Participant(pid("remote"))]
        );
        // With the operator's reach, they may demote the last moderator present.
        room.ok(&remote, Command::Demote { target: host });
        let out = room.ok(
            &remote,
            Command::Ban {
                target: speaker.clone(),
                revoke_invite: true,
            },
        );
        assert!(out.effects.contains(&Effect::PersistBan {
            participant: speaker,
            by: remote.clone(),
            revoke_invite: true,
        }));
        // Nothing of a participant's own: they are not one here.
        assert_eq!(room.refused(&remote, Command::RaiseHand), "not_permitted");
    }

    #[test]
    fn a_moderator_over_rest_from_inside_acts_as_the_participant_they_are() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let cohost = room.join("cohost", Role::Moderator);
        let speaker = room.join("speaker", Role::Speaker);
        let rest = Actor::RestModerator(cohost.clone());
        let out = room.ok(
            &rest,
            Command::Mute {
                target: speaker.clone(),
            },
        );
        let json = serde_json::to_value(&out.events[0].kind).unwrap();
        assert_eq!(json["by"], cohost.as_str());
        assert_eq!(
            recorded_actors(&out),
            [crate::control::Actor::Participant(cohost.clone())]
        );
        // Themselves is themselves, not "someone else" as for the operator.
        assert_eq!(
            room.refused(
                &rest,
                Command::Remove {
                    target: cohost.clone()
                }
            ),
            "invalid_target"
        );
        // Demoted live, their token no longer lets them moderate.
        room.ok(
            &who(&host),
            Command::Demote {
                target: cohost.clone(),
            },
        );
        assert_eq!(
            room.refused(&rest, Command::Mute { target: speaker }),
            "not_permitted"
        );
    }
}
