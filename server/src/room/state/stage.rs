//! The stage: hands, invitations and their answers, stepping on and off, mutes, who is speaking.
//! Rules only; media enforces the resulting send rights on its own path.

use crate::control::{ParticipantId, Role};
use crate::room::permissions::Action;
use crate::room::state::{Changed, RoomState, audit};
use crate::room::{Actor, Audience, AuditAction, EventKind, Outcome, Participant, Refusal};

/// Shortest time between two raises of one listener's hand.
pub const HAND_COOLDOWN_MS: u64 = 2_000;

impl RoomState {
    pub(super) fn raise_hand(
        &mut self,
        actor: &Actor,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::RaiseHand)?;
        if participant.hand_raised {
            return Ok(());
        }
        if participant
            .hand_raised_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < HAND_COOLDOWN_MS)
        {
            return Err(Refusal::TooSoon);
        }
        let id = participant.id.clone();
        let changed = self.change(&id, out, |p| {
            p.hand_raised = true;
            p.hand_raised_at_ms = Some(now_ms);
        });
        out.event(
            changed.audience(Audience::Moderators),
            EventKind::HandRaised {
                participant: changed.view,
            },
        );
        Ok(())
    }

    pub(super) fn lower_hand(
        &mut self,
        actor: &Actor,
        target: Option<ParticipantId>,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        // Naming oneself is lowering one's own hand (the rules: `OnYourself::Becomes`).
        let someone_else = target.filter(|target| actor.participant() != Some(target));
        let (id, changes) = match &someone_else {
            None => {
                let participant = self.member(actor, Action::LowerOwnHand)?;
                (participant.id.clone(), participant.hand_raised)
            }
            Some(target) => {
                let (participant, changes) = self.target(actor, Action::LowerHand, target)?;
                (participant.id.clone(), changes)
            }
        };
        if !changes {
            return Ok(());
        }
        let changed = self.change(&id, out, |p| p.hand_raised = false);
        if someone_else.is_some() {
            out.effect(audit(actor, AuditAction::LowerHand, &changed.view));
        }
        out.event(
            changed.audience(Audience::ModeratorsAnd(id)),
            EventKind::HandLowered {
                participant: changed.view,
                by: actor.clone(),
            },
        );
        Ok(())
    }

    pub(super) fn invite_to_stage(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        if !self.target(actor, Action::InviteToStage, target)?.1 {
            return Ok(());
        }
        // Checked again on accepting; refusing here spares the listener an invitation they
        // cannot take up.
        if self.stage_is_full() {
            return Err(Refusal::StageFull);
        }
        let changed = self.change(target, out, |p| p.invited = true);
        out.event(
            Audience::ModeratorsAnd(target.clone()),
            EventKind::InvitedToStage {
                participant: target.clone(),
                by: actor.clone(),
            },
        );
        out.effect(audit(actor, AuditAction::InviteToStage, &changed.view));
        Ok(())
    }

    pub(super) fn cancel_invitation(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        if !self.target(actor, Action::CancelInvitation, target)?.1 {
            return Ok(());
        }
        let changed = self.change(target, out, |p| p.invited = false);
        out.event(
            Audience::ModeratorsAnd(target.clone()),
            EventKind::InvitationCancelled {
                participant: target.clone(),
                by: actor.clone(),
            },
        );
        out.effect(audit(actor, AuditAction::CancelInvitation, &changed.view));
        Ok(())
    }

    pub(super) fn accept_invitation(
        &mut self,
        actor: &Actor,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::AcceptInvitation)?;
        if !participant.invited {
            return Err(Refusal::NoInvitation);
        }
        if self.stage_is_full() {
            return Err(Refusal::StageFull);
        }
        let id = participant.id.clone();
        // Accepting is the consent to use the microphone, so they come up unmuted.
        let changed = self.change(&id, out, |p| {
            p.invited = false;
            p.hand_raised = false;
            p.role = Role::Speaker;
            p.on_stage = true;
            p.muted = false;
        });
        out.event(
            Audience::Everyone,
            EventKind::JoinedStage {
                participant: changed.view,
            },
        );
        Ok(())
    }

    pub(super) fn decline_invitation(
        &mut self,
        actor: &Actor,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::DeclineInvitation)?;
        if !participant.invited {
            return Err(Refusal::NoInvitation);
        }
        let id = participant.id.clone();
        // The invitation answered the raised hand, so the hand goes down with it.
        let changed = self.change(&id, out, |p| {
            p.invited = false;
            p.hand_raised = false;
        });
        out.event(
            Audience::ModeratorsAnd(id.clone()),
            EventKind::InvitationDeclined {
                participant: id.clone(),
            },
        );
        if changed.was_public {
            out.event(
                Audience::Everyone,
                EventKind::HandLowered {
                    participant: changed.view,
                    by: actor.clone(),
                },
            );
        }
        Ok(())
    }

    pub(super) fn join_stage(&mut self, actor: &Actor, out: &mut Outcome) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::JoinStage)?;
        if participant.on_stage {
            return Ok(());
        }
        if self.stage_is_full() {
            return Err(Refusal::StageFull);
        }
        let id = participant.id.clone();
        let changed = self.change(&id, out, |p| p.on_stage = true);
        out.event(
            Audience::Everyone,
            EventKind::JoinedStage {
                participant: changed.view,
            },
        );
        Ok(())
    }

    pub(super) fn leave_stage(&mut self, actor: &Actor, out: &mut Outcome) -> Result<(), Refusal> {
        let id = self.member(actor, Action::LeaveStage)?.id.clone();
        self.step_off_stage(&id, actor, out);
        Ok(())
    }

    pub(super) fn move_to_audience(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        if !self.target(actor, Action::MoveToAudience, target)?.1 {
            return Ok(());
        }
        let changed = self.step_off_stage(target, actor, out);
        out.effect(audit(actor, AuditAction::MoveToAudience, &changed.view));
        Ok(())
    }

    /// A speaker becomes a listener; a moderator stays moderator, in the audience.
    fn step_off_stage(&mut self, id: &ParticipantId, by: &Actor, out: &mut Outcome) -> Changed {
        let changed = self.change(id, out, |p| {
            p.on_stage = false;
            p.muted = false;
            if p.role == Role::Speaker {
                p.role = Role::Listener;
            }
        });
        out.event(
            Audience::Everyone,
            EventKind::LeftStage {
                participant: changed.view.clone(),
                by: by.clone(),
            },
        );
        changed
    }

    pub(super) fn mute(
        &mut self,
        actor: &Actor,
        target: &ParticipantId,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        if !self.target(actor, Action::Mute, target)?.1 {
            return Ok(());
        }
        let changed = self.set_muted(target, true, actor, out);
        out.effect(audit(actor, AuditAction::Mute, &changed.view));
        Ok(())
    }

    pub(super) fn mute_self(&mut self, actor: &Actor, out: &mut Outcome) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::MuteSelf)?;
        if !participant.muted {
            let id = participant.id.clone();
            self.set_muted(&id, true, actor, out);
        }
        Ok(())
    }

    /// Only for oneself: a moderator may silence someone, never open their microphone.
    pub(super) fn unmute(&mut self, actor: &Actor, out: &mut Outcome) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::Unmute)?;
        if participant.muted {
            let id = participant.id.clone();
            self.set_muted(&id, false, actor, out);
        }
        Ok(())
    }

    fn set_muted(
        &mut self,
        id: &ParticipantId,
        muted: bool,
        by: &Actor,
        out: &mut Outcome,
    ) -> Changed {
        let changed = self.change(id, out, |p| p.muted = muted);
        let participant = changed.view.clone();
        let kind = if muted {
            EventKind::Muted {
                participant,
                by: by.clone(),
            }
        } else {
            EventKind::Unmuted { participant }
        };
        out.event(Audience::Everyone, kind);
        changed
    }

    /// Media's report replaces the speaker list; the events are sent by `apply` when the set
    /// of speakers changes. Reports lag behind stage changes, so anyone who may not send now
    /// (or is unknown) is dropped from it rather than refused.
    pub(super) fn set_speaking(
        &mut self,
        actor: &Actor,
        levels: Vec<(ParticipantId, u8)>,
    ) -> Result<(), Refusal> {
        self.permit(actor, Action::ReportSpeakers)?;
        let mut heard: Vec<(ParticipantId, u8)> = levels
            .into_iter()
            .filter(|(id, _)| self.participants.get(id).is_some_and(Participant::may_send))
            .collect();
        // One entry per participant, their loudest (RFC 6464: lower is louder).
        heard.sort();
        heard.dedup_by(|later, first| later.0 == first.0);
        heard.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let speakers: Vec<ParticipantId> = heard.into_iter().map(|(id, _)| id).collect();
        for id in &self.speakers {
            if let Some(p) = self.participants.get_mut(id) {
                p.speaking = false;
            }
        }
        for id in &speakers {
            if let Some(p) = self.participants.get_mut(id) {
                p.speaking = true;
            }
        }
        self.speakers = speakers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::HAND_COOLDOWN_MS;
    use crate::control::{ParticipantId, Role};
    use crate::room::state::testkit::*;
    use crate::room::{Actor, Audience, AuditAction, Command, Effect};

    #[test]
    fn the_whole_stage_flow() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let target = Some(listener.clone());

        let out = room.ok(&who(&listener), Command::RaiseHand);
        assert_eq!(types(&out), ["hand_raised"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        let hands = room.state.snapshot_for(&host).unwrap().raised_hands;
        assert_eq!(hands.len(), 1);
        assert_eq!(hands[0].id, listener);

        let out = room.ok(
            &who(&host),
            Command::InviteToStage {
                target: listener.clone(),
            },
        );
        assert_eq!(types(&out), ["invited_to_stage"]);
        assert_eq!(
            out.events[0].audience,
            Audience::ModeratorsAnd(listener.clone())
        );
        assert_eq!(audits(&out), [(AuditAction::InviteToStage, target.clone())]);
        assert!(send_permissions(&out).is_empty());
        assert!(
            room.state
                .snapshot_for(&listener)
                .unwrap()
                .invitation_pending
        );
        assert_eq!(
            room.state.snapshot_for(&host).unwrap().pending_invitations,
            Some(vec![listener.clone()])
        );

        let out = room.ok(&who(&listener), Command::AcceptInvitation);
        assert_eq!(types(&out), ["joined_stage"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(send_permissions(&out), [(listener.clone(), true)]);
        let p = room.get(&listener);
        assert_eq!(p.role, Role::Speaker);
        assert!(p.on_stage && !p.hand_raised && !p.invited && !p.muted);
        assert_eq!(room.state.audience_count(), 0);

        let out = room.ok(&who(&listener), Command::LeaveStage);
        assert_eq!(types(&out), ["left_stage"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(send_permissions(&out), [(listener.clone(), false)]);
        let p = room.get(&listener);
        assert_eq!(p.role, Role::Listener);
        assert!(!p.on_stage);
        assert_eq!(room.state.audience_count(), 1);
    }

    #[test]
    fn declining_lowers_the_hand_and_tells_the_moderators() {
        let mut room = TestRoom::new();
        room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        room.ok(
            &Actor::Operator,
            Command::InviteToStage {
                target: listener.clone(),
            },
        );
        let out = room.ok(&who(&listener), Command::DeclineInvitation);
        assert_eq!(types(&out), ["invitation_declined", "hand_lowered"]);
        assert_eq!(
            out.events[0].audience,
            Audience::ModeratorsAnd(listener.clone())
        );
        assert_eq!(out.events[1].audience, Audience::Everyone);
        assert!(!room.get(&listener).invited && !room.get(&listener).hand_raised);
        assert_eq!(
            room.refused(&who(&listener), Command::AcceptInvitation),
            "no_invitation"
        );
    }

    #[test]
    fn a_cancelled_invitation_cannot_be_accepted() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let target = listener.clone();
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: target.clone(),
            },
        );
        let out = room.ok(
            &who(&host),
            Command::CancelInvitation {
                target: target.clone(),
            },
        );
        assert_eq!(types(&out), ["invitation_cancelled"]);
        assert_eq!(
            audits(&out),
            [(AuditAction::CancelInvitation, Some(target))]
        );
        assert_eq!(
            room.refused(&who(&listener), Command::AcceptInvitation),
            "no_invitation"
        );
    }

    #[test]
    fn the_stage_limit_holds_for_invitations_acceptances_and_moderators() {
        let mut room = TestRoom::with_limits(10, 2, 30_000);
        let host = room.join("host", Role::Moderator);
        let early = room.join("early", Role::Listener);
        let late = room.join("late", Role::Listener);
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: early.clone(),
            },
        );
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: late.clone(),
            },
        );
        room.ok(&who(&early), Command::AcceptInvitation);

        assert_eq!(
            room.refused(&who(&late), Command::AcceptInvitation),
            "stage_full"
        );
        assert!(
            room.get(&late).invited,
            "the invitation waits for a free place"
        );
        let third = room.join("third", Role::Listener);
        assert_eq!(
            room.refused(&who(&host), Command::InviteToStage { target: third }),
            "stage_full"
        );
        room.ok(&who(&host), Command::LeaveStage);
        room.ok(&who(&late), Command::AcceptInvitation);
        assert_eq!(room.refused(&who(&host), Command::JoinStage), "stage_full");
    }

    #[test]
    fn a_moderator_steps_on_and_off_the_stage_and_stays_moderator() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let out = room.ok(&who(&host), Command::LeaveStage);
        assert_eq!(types(&out), ["left_stage"]);
        assert_eq!(send_permissions(&out), [(host.clone(), false)]);
        assert_eq!(room.get(&host).role, Role::Moderator);
        assert!(!room.get(&host).on_stage);

        let out = room.ok(&who(&host), Command::JoinStage);
        assert_eq!(types(&out), ["joined_stage"]);
        assert_eq!(send_permissions(&out), [(host.clone(), true)]);
    }

    #[test]
    fn a_muted_speaker_unmutes_themselves_and_no_moderator_can_do_it_for_them() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let speaker = room.join("speaker", Role::Speaker);

        let out = room.ok(
            &who(&host),
            Command::Mute {
                target: speaker.clone(),
            },
        );
        assert_eq!(types(&out), ["muted"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(send_permissions(&out), [(speaker.clone(), false)]);
        assert_eq!(audits(&out), [(AuditAction::Mute, Some(speaker.clone()))]);

        // Unmute always means "myself": the host is not muted, so nothing happens to anyone.
        assert!(room.ok(&who(&host), Command::Unmute).is_empty());
        assert!(
            room.ok(
                &Actor::Operator,
                Command::Mute {
                    target: speaker.clone()
                }
            )
            .is_empty()
        );
        assert_eq!(
            room.refused(&Actor::Operator, Command::Unmute),
            "not_permitted"
        );
        assert!(room.get(&speaker).muted);

        let out = room.ok(&who(&speaker), Command::Unmute);
        assert_eq!(types(&out), ["unmuted"]);
        assert_eq!(send_permissions(&out), [(speaker.clone(), true)]);
        assert!(!room.get(&speaker).muted);
    }

    #[test]
    fn muting_oneself_is_not_audited() {
        let mut room = TestRoom::new();
        let speaker = room.join("speaker", Role::Speaker);
        let out = room.ok(&who(&speaker), Command::MuteSelf);
        assert_eq!(types(&out), ["muted"]);
        assert_eq!(send_permissions(&out), [(speaker.clone(), false)]);
        assert!(audits(&out).is_empty());
        assert!(room.ok(&who(&speaker), Command::MuteSelf).is_empty());
    }

    #[test]
    fn moving_a_speaker_to_the_audience_revokes_sending_and_is_audited() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let speaker = room.join("speaker", Role::Speaker);
        let out = room.ok(
            &who(&host),
            Command::MoveToAudience {
                target: speaker.clone(),
            },
        );
        assert_eq!(types(&out), ["left_stage"]);
        assert_eq!(send_permissions(&out), [(speaker.clone(), false)]);
        assert_eq!(
            audits(&out),
            [(AuditAction::MoveToAudience, Some(speaker.clone()))]
        );
        assert_eq!(room.get(&speaker).role, Role::Listener);
        // Already in the audience: nothing to do.
        assert!(
            room.ok(&who(&host), Command::MoveToAudience { target: speaker })
                .is_empty()
        );
    }

    #[test]
    fn a_hand_cannot_be_raised_again_straight_away() {
        let mut room = TestRoom::new();
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        room.ok(&who(&listener), Command::LowerHand { target: None });
        room.now += HAND_COOLDOWN_MS - 1;
        assert_eq!(
            room.refused(&who(&listener), Command::RaiseHand),
            "too_soon"
        );
        room.now += 1;
        let out = room.ok(&who(&listener), Command::RaiseHand);
        assert_eq!(types(&out), ["hand_raised"]);
    }

    #[test]
    fn a_moderator_lowers_someone_elses_hand() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        let out = room.ok(
            &who(&host),
            Command::LowerHand {
                target: Some(listener.clone()),
            },
        );
        assert_eq!(types(&out), ["hand_lowered"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(
            audits(&out),
            [(AuditAction::LowerHand, Some(listener.clone()))]
        );

        // Naming oneself as the target is the same as lowering one's own hand.
        room.now += HAND_COOLDOWN_MS;
        room.ok(&who(&listener), Command::RaiseHand);
        let out = room.ok(
            &who(&listener),
            Command::LowerHand {
                target: Some(listener.clone()),
            },
        );
        assert_eq!(types(&out), ["hand_lowered"]);
        assert!(audits(&out).is_empty());
    }

    #[test]
    fn only_the_stage_unmuted_and_connected_can_be_speaking() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let speaker = room.join("speaker", Role::Speaker);
        let listener = room.join("listener", Role::Listener);

        let report = |levels: &[(&ParticipantId, u8)]| Command::SetSpeaking {
            levels: levels.iter().map(|(id, l)| ((*id).clone(), *l)).collect(),
            heard_at_ms: 0,
        };
        let out = room.ok(
            &Actor::System,
            report(&[(&listener, 0), (&speaker, 40), (&host, 10), (&speaker, 90)]),
        );
        assert_eq!(types(&out), ["active_speakers"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(
            room.state.active_speakers(),
            [host.clone(), speaker.clone()]
        );
        assert!(room.get(&speaker).speaking && !room.get(&listener).speaking);

        // Same people, new order: no event, but the order is kept for the next one.
        let out = room.ok(&Actor::System, report(&[(&speaker, 5), (&host, 10)]));
        assert!(out.is_empty());
        assert_eq!(
            room.state.active_speakers(),
            [speaker.clone(), host.clone()]
        );

        // A mute silences at once, without waiting for media's next report.
        let out = room.ok(
            &who(&host),
            Command::Mute {
                target: speaker.clone(),
            },
        );
        assert_eq!(types(&out), ["muted", "active_speakers"]);
        assert_eq!(room.state.active_speakers(), std::slice::from_ref(&host));
        assert!(!room.get(&speaker).speaking);

        let connection = room.get(&host).connection;
        let out = room.ok(&who(&host), Command::Disconnect { connection });
        assert_eq!(types(&out), ["presence_changed", "active_speakers"]);
        assert!(room.state.active_speakers().is_empty());

        let out = room.ok(&Actor::System, report(&[(&speaker, 0), (&host, 0)]));
        assert!(out.is_empty());
    }

    #[test]
    fn send_rights_follow_every_stage_change() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let l = || listener.clone();

        type Step = (Actor, Command, Vec<(ParticipantId, bool)>);
        let steps: Vec<Step> = vec![
            (who(&host), Command::InviteToStage { target: l() }, vec![]),
            (who(&l()), Command::AcceptInvitation, vec![(l(), true)]),
            (who(&l()), Command::MuteSelf, vec![(l(), false)]),
            (who(&l()), Command::Unmute, vec![(l(), true)]),
            (
                who(&host),
                Command::Mute { target: l() },
                vec![(l(), false)],
            ),
            (who(&l()), Command::Unmute, vec![(l(), true)]),
            (Actor::Operator, Command::Promote { target: l() }, vec![]),
            (Actor::Operator, Command::Demote { target: l() }, vec![]),
            (who(&l()), Command::LeaveStage, vec![(l(), false)]),
            (who(&host), Command::LeaveStage, vec![(host.clone(), false)]),
            (who(&host), Command::JoinStage, vec![(host.clone(), true)]),
            (who(&host), Command::MuteSelf, vec![(host.clone(), false)]),
            // Stepping off clears the mute, so stepping on again sends at once.
            (who(&host), Command::LeaveStage, vec![]),
            (who(&host), Command::JoinStage, vec![(host.clone(), true)]),
        ];
        for (actor, command, expected) in steps {
            let out = room.ok(&actor, command.clone());
            assert_eq!(send_permissions(&out), expected, "after {command:?}");
        }
        let granted: Vec<_> = room.state.participants().filter(|p| p.may_send()).collect();
        assert_eq!(granted.len(), 1);
        assert!(room.get(&host).may_send());
    }

    /// Who had their role written down, in order.
    fn recorded_roles(out: &crate::room::Outcome) -> Vec<(ParticipantId, Role)> {
        out.effects
            .iter()
            .filter_map(|e| match e {
                Effect::RecordRole { participant, role } => Some((participant.clone(), *role)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_role_the_room_changes_is_recorded_and_nothing_else() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: listener.clone(),
            },
        );
        let out = room.ok(&who(&listener), Command::AcceptInvitation);
        assert_eq!(recorded_roles(&out), [(listener.clone(), Role::Speaker)]);
        let out = room.ok(&who(&listener), Command::LeaveStage);
        assert_eq!(recorded_roles(&out), [(listener.clone(), Role::Listener)]);
        let out = room.ok(
            &who(&host),
            Command::Promote {
                target: listener.clone(),
            },
        );
        assert_eq!(recorded_roles(&out), [(listener.clone(), Role::Moderator)]);
        // A moderator stepping on and off the stage keeps their role: nothing to record.
        for command in [Command::JoinStage, Command::MuteSelf, Command::LeaveStage] {
            let out = room.ok(&who(&listener), command);
            assert!(recorded_roles(&out).is_empty(), "{out:?}");
        }
        let out = room.ok(
            &who(&host),
            Command::Demote {
                target: listener.clone(),
            },
        );
        assert_eq!(recorded_roles(&out), [(listener, Role::Listener)]);
    }

    #[test]
    fn a_broadcast_listener_gets_media_only_with_the_stage() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let fan = room.join_with("fan", Role::Listener, Delivery::Broadcast);
        let refused = |room: &TestRoom| room.get(&fan).may_connect_media().err().map(|r| r.code());
        assert_eq!(refused(&room), Some("broadcast_delivery"));
        assert_eq!(
            room.state.snapshot_for(&fan).unwrap().delivery,
            Delivery::Broadcast
        );
        // In the audience like anyone: a hand, an invitation; media waits for the answer.
        room.ok(&who(&fan), Command::RaiseHand);
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: fan.clone(),
            },
        );
        assert_eq!(refused(&room), Some("broadcast_delivery"));
        room.ok(&who(&fan), Command::DeclineInvitation);
        assert_eq!(refused(&room), Some("broadcast_delivery"));
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: fan.clone(),
            },
        );
        room.ok(&who(&fan), Command::AcceptInvitation);
        assert_eq!(refused(&room), None);
        assert_eq!(
            room.state.snapshot_for(&fan).unwrap().delivery,
            Delivery::Webrtc
        );
        // Back in the audience they keep their WebRTC connection.
        room.ok(&who(&fan), Command::LeaveStage);
        assert_eq!(room.get(&fan).role, Role::Listener);
        assert_eq!(refused(&room), None);
        // A reconnect of the same identity keeps what the room decided.
        room.rejoin(&fan, Role::Listener);
        assert_eq!(refused(&room), None);

        // Made a moderator from the broadcast: WebRTC at once (they may step on stage any time).
        let other = room.join_with("other", Role::Listener, Delivery::Broadcast);
        room.ok(
            &Actor::Operator,
            Command::Promote {
                target: other.clone(),
            },
        );
        assert_eq!(room.get(&other).delivery, Delivery::Webrtc);
        // Only listeners are ever on the broadcast, whatever a token asks.
        for role in [Role::Speaker, Role::Moderator] {
            let id = room.join_with(role.as_str(), role, Delivery::Broadcast);
            assert_eq!(room.get(&id).delivery, Delivery::Webrtc, "{role}");
        }
    }
}
