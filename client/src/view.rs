//! A participant's picture of the room, kept current the way the protocol says: start from the
//! snapshot, then apply each event; every event about someone carries their whole state, so
//! the view replaces its copy of them and re-files them by `on_stage` and `hand_raised`.

use crate::protocol::{Event, Participant, ParticipantId, Snapshot};

/// The room as this client sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    /// The room's title.
    pub title: String,
    /// The latest snapshot with every event since applied.
    pub snapshot: Snapshot,
}

impl RoomView {
    /// A view starting from a snapshot.
    pub fn new(title: impl Into<String>, snapshot: Snapshot) -> Self {
        RoomView {
            title: title.into(),
            snapshot,
        }
    }

    /// This client's own participant.
    pub fn me(&self) -> &Participant {
        &self.snapshot.you
    }

    /// Someone this client can see: on stage, with a raised hand, in the audience page a
    /// moderator has, or itself.
    pub fn participant(&self, id: &ParticipantId) -> Option<&Participant> {
        let s = &self.snapshot;
        std::iter::once(&s.you)
            .chain(&s.stage)
            .chain(&s.raised_hands)
            .chain(s.audience.iter().flat_map(|a| &a.participants))
            .find(|p| &p.id == id)
    }

    /// Applies one event. Events that are not about the room (connection events) change
    /// nothing; a new snapshot replaces everything.
    pub fn apply(&mut self, event: &Event) {
        let s = &mut self.snapshot;
        match event {
            Event::ParticipantJoined(p)
            | Event::PresenceChanged(p)
            | Event::HandRaised(p)
            | Event::HandLowered { participant: p, .. }
            | Event::JoinedStage(p)
            | Event::LeftStage { participant: p, .. }
            | Event::Muted { participant: p, .. }
            | Event::Unmuted(p)
            | Event::RoleChanged { participant: p, .. } => {
                if matches!(event, Event::JoinedStage(_)) {
                    self.answered(&p.id);
                }
                self.upsert(p.clone());
            }
            Event::ParticipantLeft { participant, .. } => {
                s.stage.retain(|p| &p.id != participant);
                s.raised_hands.retain(|p| &p.id != participant);
                s.active_speakers.retain(|p| p != participant);
                if let Some(audience) = &mut s.audience {
                    audience.participants.retain(|p| &p.id != participant);
                }
                self.answered(participant);
            }
            Event::InvitedToStage { participant, .. } => {
                if participant == &s.you.id {
                    s.invitation_pending = true;
                }
                if let Some(pending) = &mut s.pending_invitations
                    && !pending.contains(participant)
                {
                    pending.push(participant.clone());
                }
            }
            Event::InvitationCancelled { participant, .. }
            | Event::InvitationDeclined { participant } => self.answered(participant),
            Event::ActiveSpeakers(speakers) => {
                s.active_speakers = speakers.clone();
                for p in s.stage.iter_mut().chain(std::iter::once(&mut s.you)) {
                    p.speaking = speakers.contains(&p.id);
                }
            }
            Event::AudienceCount(count) => s.audience_count = *count,
            Event::Snapshot(snapshot) | Event::Resumed(snapshot) => {
                self.snapshot = (**snapshot).clone();
            }
            Event::RoomEnded { .. }
            | Event::Reconnecting
            | Event::MediaReconnected
            | Event::MediaLost(_)
            | Event::Missed(_)
            | Event::Closed { .. }
            | Event::Unknown(_) => {}
        }
    }

    /// An invitation to `who` is no longer pending.
    fn answered(&mut self, who: &ParticipantId) {
        let s = &mut self.snapshot;
        if who == &s.you.id {
            s.invitation_pending = false;
        }
        if let Some(pending) = &mut s.pending_invitations {
            pending.retain(|p| p != who);
        }
    }

    /// Replaces the copy of `p` and files it where its state says.
    fn upsert(&mut self, p: Participant) {
        let s = &mut self.snapshot;
        if p.id == s.you.id {
            s.you = p.clone();
        }
        refile(&mut s.stage, &p, p.on_stage);
        refile(&mut s.raised_hands, &p, p.hand_raised);
        if let Some(audience) = &mut s.audience {
            refile(&mut audience.participants, &p, !p.on_stage);
        }
    }
}

/// Replaces `p` in `list` where it is, appends it if it belongs and is not there, and takes it
/// out if it does not belong.
fn refile(list: &mut Vec<Participant>, p: &Participant, belongs: bool) {
    match (list.iter().position(|q| q.id == p.id), belongs) {
        (Some(i), true) => list[i] = p.clone(),
        (Some(i), false) => {
            list.remove(i);
        }
        (None, true) => list.push(p.clone()),
        (None, false) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{By, Presence, Role};

    fn person(id: &str, role: Role, on_stage: bool) -> Participant {
        Participant {
            id: ParticipantId::new(id),
            display_name: id.to_owned(),
            role,
            on_stage,
            hand_raised: false,
            muted: false,
            speaking: false,
            presence: Presence::Connected,
        }
    }

    #[test]
    fn a_hand_an_invitation_and_a_move_are_filed_where_they_belong() {
        let me = person("pt_lee", Role::Listener, false);
        let ada = person("pt_ada", Role::Moderator, true);
        let mut view = RoomView::new(
            "Friday jam",
            Snapshot {
                room: "rm_1".into(),
                you: me.clone(),
                invitation_pending: false,
                stage: vec![ada.clone()],
                raised_hands: vec![],
                active_speakers: vec![],
                audience_count: 1,
                audience: None,
                pending_invitations: None,
            },
        );
        let by_ada = By::Participant(ada.id.clone());
        let mut hand = me.clone();
        hand.hand_raised = true;
        view.apply(&Event::HandRaised(hand.clone()));
        assert_eq!(view.snapshot.raised_hands, [hand.clone()]);
        assert!(view.me().hand_raised);

        view.apply(&Event::InvitedToStage {
            participant: me.id.clone(),
            by: by_ada.clone(),
        });
        assert!(view.snapshot.invitation_pending);
        let mut up = me.clone();
        up.role = Role::Speaker;
        up.on_stage = true;
        view.apply(&Event::JoinedStage(up.clone()));
        assert!(!view.snapshot.invitation_pending);
        assert!(
            view.snapshot.raised_hands.is_empty(),
            "accepting lowers the hand"
        );
        assert_eq!(view.snapshot.stage, [ada.clone(), up.clone()]);

        view.apply(&Event::ActiveSpeakers(vec![up.id.clone()]));
        assert!(view.me().speaking && !view.snapshot.stage[0].speaking);

        view.apply(&Event::LeftStage {
            participant: me.clone(),
            by: by_ada,
        });
        assert_eq!(view.snapshot.stage, std::slice::from_ref(&ada));
        assert_eq!(view.me(), &me);

        view.apply(&Event::ParticipantLeft {
            participant: ada.id.clone(),
            reason: "left".into(),
        });
        assert!(view.snapshot.stage.is_empty());
        assert_eq!(view.participant(&ada.id), None);
        assert_eq!(view.participant(&me.id), Some(&me));
    }
}
