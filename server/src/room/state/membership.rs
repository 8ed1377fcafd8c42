//! Coming and going: join, replaced and resumed connections, dropped sockets and their grace
//! period, leaving. Who may do what on stage and in moderation lives beside this file.

use crate::control::{Delivery, ParticipantId, Role};
use crate::room::permissions::Action;
use crate::room::state::{RoomState, to_usize};
use crate::room::{
    Actor, Audience, CloseReason, ConnectionId, Effect, EventKind, LeaveReason, Outcome,
    Participant, Presence, Refusal,
};

/// A signaling connection taking over an identity, and the nonce of the resume token it is
/// handed (the only one that may take the identity back after it).
pub(super) struct NewConnection {
    pub connection: ConnectionId,
    pub resume_nonce: u64,
}

impl RoomState {
    pub(super) fn join(
        &mut self,
        actor: &Actor,
        display_name: String,
        (role, delivery): (Role, Delivery),
        new: NewConnection,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let Actor::Participant(id) = actor else {
            return Err(Refusal::NotPermitted);
        };
        if self.banned.contains(id) {
            return Err(Refusal::Banned);
        }
        let existing = self.participants.get(id);
        if existing.is_some_and(|p| !p.expired(now_ms)) {
            // The token's role may be stale (promoted, moved to the audience since): the live
            // state wins.
            self.reattach(id, new, out);
            return Ok(());
        }
        // An entry whose grace ran out is gone, only not yet ticked away: it must not count
        // against the limits, and the newcomer starts afresh.
        let stale = existing.is_some();
        let stale_on_stage = existing.is_some_and(|p| p.on_stage);
        let present = self.participants.len() - usize::from(stale);
        if role != Role::Moderator && present >= to_usize(self.limits.max_participants) {
            return Err(Refusal::RoomFull);
        }
        let stage_has_room =
            self.stage.len() - usize::from(stale_on_stage) < to_usize(self.limits.max_stage);
        if role == Role::Speaker && !stage_has_room {
            return Err(Refusal::StageFull);
        }
        if stale {
            self.depart(id, LeaveReason::TimedOut, out);
        }
        // Past the WebRTC audience cap a listener hears the broadcast; whoever may speak never
        // is (`for_role`), and whoever comes on stage later moves to WebRTC.
        let delivery = match delivery.for_role(role) {
            Delivery::Webrtc if role == Role::Listener && self.webrtc_audience_full() => {
                Delivery::Broadcast
            }
            kept => kept,
        };
        let participant = Participant {
            id: id.clone(),
            display_name,
            role,
            delivery,
            on_stage: match role {
                Role::Listener => false,
                Role::Speaker => true,
                // A moderator starts where they can run the room best, and in the audience
                // when the stage is full rather than being turned away.
                Role::Moderator => stage_has_room,
            },
            hand_raised: false,
            muted: false,
            invited: false,
            presence: Presence::Connected,
            connection: new.connection,
            resume_nonce: new.resume_nonce,
            joined_at_ms: now_ms,
            speaking: false,
            hand_raised_at_ms: None,
        };
        let audience = if participant.is_public() {
            Audience::Everyone
        } else {
            Audience::Moderators
        };
        let view = participant.view();
        self.admit(participant, out);
        out.event(audience, EventKind::ParticipantJoined { participant: view });
        Ok(())
    }

    /// Only the newest resume token works, and only once: a stale or replayed one is refused
    /// as if the identity were gone, revealing nothing.
    pub(super) fn resume(
        &mut self,
        actor: &Actor,
        presented: u64,
        new: NewConnection,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let participant = self.present(actor)?;
        if participant.expired(now_ms) || participant.resume_nonce != presented {
            return Err(Refusal::NotInRoom);
        }
        let id = participant.id.clone();
        self.reattach(&id, new, out);
        Ok(())
    }

    /// A new connection takes over an identity that is still in the room, with all its state.
    fn reattach(&mut self, id: &ParticipantId, new: NewConnection, out: &mut Outcome) {
        let participant = self
            .participants
            .get_mut(id)
            .expect("reattach is called for someone in the room");
        // Whatever else happens, only the token handed to this connection resumes from now on
        // (the nonce is no index and no right, so it needs no `change`).
        participant.resume_nonce = new.resume_nonce;
        let connection = new.connection;
        let (old_connection, old_presence) = (participant.connection, participant.presence);
        if old_connection == connection && old_presence == Presence::Connected {
            return;
        }
        let changed = self.change(id, out, |p| {
            p.connection = connection;
            p.presence = Presence::Connected;
        });
        match old_presence {
            // The old socket may still look alive (a network switch is usually noticed by the
            // new connection first): close it so one identity never has two.
            Presence::Connected => out.effect(Effect::CloseConnection {
                participant: id.clone(),
                connection: old_connection,
                reason: CloseReason::Replaced,
            }),
            Presence::Reconnecting { .. } => out.event(
                changed.audience(Audience::Moderators),
                EventKind::PresenceChanged {
                    participant: changed.view,
                },
            ),
        }
    }

    pub(super) fn disconnect(
        &mut self,
        actor: &Actor,
        connection: ConnectionId,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        let Actor::Participant(id) = actor else {
            return Err(Refusal::NotPermitted);
        };
        // A socket closing after its participant left, or after a newer connection replaced
        // it, is expected and changes nothing.
        let Some(participant) = self.participants.get(id) else {
            return Ok(());
        };
        if participant.connection != connection || participant.presence != Presence::Connected {
            return Ok(());
        }
        let deadline_ms = now_ms.saturating_add(self.limits.resume_grace_ms);
        let changed = self.change(id, out, |p| {
            p.presence = Presence::Reconnecting { deadline_ms }
        });
        out.event(
            changed.audience(Audience::Moderators),
            EventKind::PresenceChanged {
                participant: changed.view,
            },
        );
        Ok(())
    }

    /// They go for good, and the socket they asked through is closed (after their answer).
    pub(super) fn leave(&mut self, actor: &Actor, out: &mut Outcome) -> Result<(), Refusal> {
        let participant = self.member(actor, Action::Leave)?;
        let (id, connection) = (participant.id.clone(), participant.connection);
        self.depart(&id, LeaveReason::Left, out);
        out.effect(Effect::CloseConnection {
            participant: id,
            connection,
            reason: CloseReason::Left,
        });
        Ok(())
    }

    pub(super) fn tick(
        &mut self,
        actor: &Actor,
        now_ms: u64,
        out: &mut Outcome,
    ) -> Result<(), Refusal> {
        self.permit(actor, Action::Tick)?;
        while let Some((deadline_ms, id)) = self.deadlines.first().cloned() {
            if deadline_ms > now_ms {
                break;
            }
            self.depart(&id, LeaveReason::TimedOut, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::control::{ParticipantId, Role};
    use crate::room::state::testkit::*;
    use crate::room::{Actor, Audience, CloseReason, Command, ConnectionId, Effect, Presence};

    #[test]
    fn a_listener_joining_is_news_for_moderators_only() {
        let mut room = TestRoom::new();
        room.join("host", Role::Moderator);
        let listener = pid("listener");
        let connection = room.connect();
        let out = room.ok(
            &who(&listener),
            Command::Join {
                display_name: "Listener".into(),
                role: Role::Listener,
                delivery: Delivery::Webrtc,
                connection,
                resume_nonce: connection.0,
            },
        );
        assert_eq!(types(&out), ["participant_joined"]);
        assert!(
            out.events
                .iter()
                .all(|e| e.audience == Audience::Moderators)
        );
        assert_eq!(room.state.audience_count(), 1);

        let out = room.ok(&who(&listener), Command::Leave);
        assert_eq!(types(&out), ["participant_left"]);
        assert!(
            out.events
                .iter()
                .all(|e| e.audience == Audience::Moderators)
        );
        assert_eq!(room.state.audience_count(), 0);
    }

    #[test]
    fn stage_members_joining_and_leaving_are_news_for_everyone() {
        let mut room = TestRoom::new();
        for role in [Role::Speaker, Role::Moderator] {
            let id = pid(role.as_str());
            let connection = room.connect();
            let out = room.ok(
                &who(&id),
                Command::Join {
                    display_name: role.as_str().into(),
                    role,
                    delivery: Delivery::Webrtc,
                    connection,
                    resume_nonce: connection.0,
                },
            );
            assert_eq!(types(&out), ["participant_joined"]);
            assert_eq!(out.events[0].audience, Audience::Everyone);
            assert_eq!(send_permissions(&out), [(id.clone(), true)]);
            let out = room.ok(&who(&id), Command::Leave);
            assert_eq!(types(&out), ["participant_left"]);
            assert_eq!(out.events[0].audience, Audience::Everyone);
            assert_eq!(send_permissions(&out), [(id, false)]);
        }
    }

    #[test]
    fn joining_again_replaces_the_old_connection_and_keeps_live_state() {
        let mut room = TestRoom::with_limits(2, 6, 30_000);
        room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        let old = room.get(&listener).connection;

        // The token still says listener and the room is full: neither matters for a replacement.
        let new = room.connect();
        let out = room.ok(
            &who(&listener),
            Command::Join {
                display_name: "Listener".into(),
                role: Role::Listener,
                delivery: Delivery::Webrtc,
                connection: new,
                resume_nonce: new.0,
            },
        );
        assert!(out.events.is_empty());
        assert_eq!(
            out.effects,
            [Effect::CloseConnection {
                participant: listener.clone(),
                connection: old,
                reason: CloseReason::Replaced,
            }]
        );
        let p = room.get(&listener);
        assert!(p.hand_raised);
        assert_eq!(p.connection, new);
        assert_eq!(room.state.participant_count(), 2);

        // The old socket's drop arrives late: it must not mark the new connection as gone.
        let out = room.ok(&who(&listener), Command::Disconnect { connection: old });
        assert!(out.is_empty());
        assert_eq!(room.get(&listener).presence, Presence::Connected);
    }

    #[test]
    fn a_replacement_keeps_a_role_changed_since_the_token_was_issued() {
        let mut room = TestRoom::new();
        let listener = room.join("listener", Role::Listener);
        room.ok(
            &Actor::Operator,
            Command::Promote {
                target: listener.clone(),
            },
        );
        room.rejoin(&listener, Role::Listener);
        assert_eq!(room.get(&listener).role, Role::Moderator);
    }

    #[test]
    fn a_full_room_turns_away_all_but_moderators() {
        let mut room = TestRoom::with_limits(2, 6, 30_000);
        room.join("one", Role::Listener);
        room.join("two", Role::Speaker);
        for role in [Role::Listener, Role::Speaker] {
            let connection = room.connect();
            let code = room.refused(
                &who(&pid("three")),
                Command::Join {
                    display_name: "Three".into(),
                    role,
                    delivery: Delivery::Webrtc,
                    connection,
                    resume_nonce: connection.0,
                },
            );
            assert_eq!(code, "room_full");
        }
        let host = room.join("host", Role::Moderator);
        assert_eq!(room.get(&host).role, Role::Moderator);
        assert_eq!(room.state.participant_count(), 3);
    }

    #[test]
    fn a_full_stage_turns_away_speakers_and_seats_moderators_in_the_audience() {
        let mut room = TestRoom::with_limits(10, 1, 30_000);
        room.join("speaker", Role::Speaker);
        let connection = room.connect();
        let code = room.refused(
            &who(&pid("second")),
            Command::Join {
                display_name: "Second".into(),
                role: Role::Speaker,
                delivery: Delivery::Webrtc,
                connection,
                resume_nonce: connection.0,
            },
        );
        assert_eq!(code, "stage_full");
        let host = room.join("host", Role::Moderator);
        assert!(!room.get(&host).on_stage);
    }

    #[test]
    fn only_participants_join_and_banned_ones_never_again() {
        let mut room = TestRoom::new();
        let connection = room.connect();
        let join = Command::Join {
            display_name: "Op".into(),
            role: Role::Moderator,
            delivery: Delivery::Webrtc,
            connection,
            resume_nonce: connection.0,
        };
        assert_eq!(
            room.refused(&Actor::Operator, join.clone()),
            "not_permitted"
        );
        assert_eq!(room.refused(&Actor::System, join), "not_permitted");

        let listener = room.join("listener", Role::Listener);
        room.ok(
            &Actor::Operator,
            Command::Ban {
                target: listener.clone(),
                revoke_invite: false,
            },
        );
        let connection = room.connect();
        let code = room.refused(
            &who(&listener),
            Command::Join {
                display_name: "Again".into(),
                role: Role::Listener,
                delivery: Delivery::Webrtc,
                connection,
                resume_nonce: connection.0,
            },
        );
        assert_eq!(code, "banned");
    }

    #[test]
    fn a_dropped_connection_keeps_its_place_until_the_grace_runs_out() {
        let mut room = TestRoom::with_limits(10, 6, 30_000);
        room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        let connection = room.get(&listener).connection;

        room.now = 1_000;
        let out = room.ok(&who(&listener), Command::Disconnect { connection });
        assert_eq!(types(&out), ["presence_changed"]);
        // Their raised hand is public, so everyone is told they are reconnecting.
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert_eq!(
            room.get(&listener).presence,
            Presence::Reconnecting {
                deadline_ms: 31_000
            }
        );
        assert_eq!(room.state.next_deadline(), Some(31_000));

        room.now = 30_999;
        assert!(room.ok(&Actor::System, Command::Tick).is_empty());
        assert!(room.state.participant(&listener).is_some());

        room.now = 31_000;
        let out = room.ok(&Actor::System, Command::Tick);
        assert_eq!(types(&out), ["participant_left"]);
        assert_eq!(out.events[0].audience, Audience::Everyone);
        assert!(room.state.participant(&listener).is_none());
        assert_eq!(room.state.next_deadline(), None);
        assert!(
            room.state
                .snapshot_for(&pid("host"))
                .unwrap()
                .raised_hands
                .is_empty()
        );
    }

    #[test]
    fn resuming_within_the_grace_keeps_hand_and_stage() {
        let mut room = TestRoom::new();
        room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let speaker = room.join("speaker", Role::Speaker);
        room.ok(&who(&listener), Command::RaiseHand);
        for id in [&listener, &speaker] {
            let connection = room.get(id).connection;
            room.ok(&who(id), Command::Disconnect { connection });
        }

        room.now = 29_000;
        let connection = room.connect();
        let out = room.ok(&who(&listener), room.resume(&listener, connection));
        assert_eq!(types(&out), ["presence_changed"]);
        assert!(room.get(&listener).hand_raised);
        assert_eq!(room.get(&listener).presence, Presence::Connected);

        let connection = room.connect();
        let out = room.ok(&who(&speaker), room.resume(&speaker, connection));
        assert_eq!(send_permissions(&out), [(speaker.clone(), true)]);
        assert!(room.get(&speaker).on_stage);

        room.now = 100_000;
        assert!(room.ok(&Actor::System, Command::Tick).is_empty());
        assert_eq!(room.state.participant_count(), 3);
    }

    #[test]
    fn a_quiet_listener_reconnecting_is_news_for_moderators_only() {
        let mut room = TestRoom::new();
        room.join("host", Role::Moderator);
        let listener = room.join("listener", Role::Listener);
        let connection = room.get(&listener).connection;
        let out = room.ok(&who(&listener), Command::Disconnect { connection });
        assert_eq!(out.events[0].audience, Audience::Moderators);
    }

    #[test]
    fn after_the_grace_a_resume_is_refused_and_a_join_starts_afresh() {
        let mut room = TestRoom::new();
        let listener = room.join("listener", Role::Listener);
        room.ok(&who(&listener), Command::RaiseHand);
        let connection = room.get(&listener).connection;
        room.ok(&who(&listener), Command::Disconnect { connection });

        room.now = 30_000;
        let connection = room.connect();
        assert_eq!(
            room.refused(&who(&listener), room.resume(&listener, connection)),
            "not_in_room"
        );
        let out = room.ok(
            &who(&listener),
            Command::Join {
                display_name: "Listener".into(),
                role: Role::Listener,
                delivery: Delivery::Webrtc,
                connection,
                resume_nonce: connection.0,
            },
        );
        assert_eq!(types(&out), ["participant_left", "participant_joined"]);
        assert!(!room.get(&listener).hand_raised);
        assert_eq!(room.state.next_deadline(), None);
    }

    #[test]
    fn resuming_a_live_connection_replaces_it() {
        let mut room = TestRoom::new();
        let speaker = room.join("speaker", Role::Speaker);
        let old = room.get(&speaker).connection;
        let new = room.connect();
        let out = room.ok(&who(&speaker), room.resume(&speaker, new));
        assert!(out.events.is_empty());
        assert_eq!(
            out.effects,
            [Effect::CloseConnection {
                participant: speaker.clone(),
                connection: old,
                reason: CloseReason::Replaced,
            }]
        );
        assert_eq!(
            room.refused(
                &who(&pid("stranger")),
                room.resume(&pid("stranger"), ConnectionId(99))
            ),
            "not_in_room"
        );
    }

    #[test]
    fn a_socket_closing_after_its_participant_left_changes_nothing() {
        let mut room = TestRoom::new();
        let listener = room.join("listener", Role::Listener);
        let connection = room.get(&listener).connection;
        room.ok(&who(&listener), Command::Leave);
        assert!(
            room.ok(&who(&listener), Command::Disconnect { connection })
                .is_empty()
        );
    }

    #[test]
    fn leaving_closes_the_socket_it_was_asked_on_and_the_media() {
        let mut room = TestRoom::new();
        let speaker = room.join("speaker", Role::Speaker);
        let connection = room.get(&speaker).connection;
        let out = room.ok(&who(&speaker), Command::Leave);
        assert!(out.effects.contains(&Effect::CloseConnection {
            participant: speaker.clone(),
            connection,
            reason: CloseReason::Left,
        }));
        assert!(out.effects.contains(&Effect::CloseMedia {
            participant: speaker.clone(),
        }));
    }

    #[test]
    fn every_departure_closes_the_media_of_whoever_left() {
        let mut room = TestRoom::with_limits(10, 6, 1_000);
        let listener = room.join("listener", Role::Listener);
        let connection = room.get(&listener).connection;
        let out = room.ok(&who(&listener), Command::Disconnect { connection });
        assert!(
            !out.effects
                .iter()
                .any(|e| matches!(e, Effect::CloseMedia { .. })),
            "a dropped socket keeps its place, and its media, for the grace period"
        );
        room.now = 1_000;
        let out = room.ok(&Actor::System, Command::Tick);
        assert_eq!(
            out.effects,
            [Effect::CloseMedia {
                participant: listener
            }]
        );
    }

    #[test]
    fn only_the_newest_resume_token_resumes_and_only_once() {
        let mut room = TestRoom::new();
        let listener = room.join("listener", Role::Listener);
        let first = room.get(&listener).resume_nonce;
        let resume = |presented: u64, connection: u64| Command::Resume {
            connection: ConnectionId(connection),
            presented,
            resume_nonce: connection,
        };
        assert_eq!(
            room.refused(&who(&listener), resume(first + 1, 50)),
            "not_in_room"
        );
        room.ok(&who(&listener), resume(first, 51));
        assert_eq!(room.get(&listener).resume_nonce, 51);
        // The token just used is spent; the one handed to the new connection works.
        assert_eq!(
            room.refused(&who(&listener), resume(first, 52)),
            "not_in_room"
        );
        room.ok(&who(&listener), resume(51, 53));
        // A join (a fresh session token) hands out a new resume token too.
        room.rejoin(&listener, Role::Listener);
        assert_eq!(room.refused(&who(&listener), resume(53, 54)), "not_in_room");
    }

    #[test]
    fn listeners_past_the_webrtc_audience_cap_hear_the_broadcast() {
        let mut room = TestRoom::with_webrtc_audience_cap(2);
        let delivery = |room: &TestRoom, id: &ParticipantId| room.get(id).delivery;
        let first = room.join("first", Role::Listener);
        let second = room.join("second", Role::Listener);
        assert!(room.state.webrtc_audience_full());
        let third = room.join("third", Role::Listener);
        assert_eq!(delivery(&room, &first), Delivery::Webrtc);
        assert_eq!(delivery(&room, &second), Delivery::Webrtc);
        assert_eq!(delivery(&room, &third), Delivery::Broadcast);
        assert_eq!(room.state.webrtc_listeners(), 2);
        // Whoever may speak is never capped.
        let host = room.join("host", Role::Moderator);
        let guest = room.join("guest", Role::Speaker);
        assert_eq!(delivery(&room, &host), Delivery::Webrtc);
        assert_eq!(delivery(&room, &guest), Delivery::Webrtc);
        // One leaves: the next listener gets their place on WebRTC.
        room.ok(&who(&first), Command::Leave);
        assert_eq!(room.state.webrtc_listeners(), 1);
        let fourth = room.join("fourth", Role::Listener);
        assert_eq!(delivery(&room, &fourth), Delivery::Webrtc);
        // A capped listener brought on stage moves to WebRTC, and stays there in the audience
        // afterwards, past the cap: the cap decides who comes in, it moves no one out.
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: third.clone(),
            },
        );
        room.ok(&who(&third), Command::AcceptInvitation);
        assert_eq!(delivery(&room, &third), Delivery::Webrtc);
        room.ok(&who(&third), Command::LeaveStage);
        assert_eq!(delivery(&room, &third), Delivery::Webrtc);
        assert_eq!(room.state.webrtc_listeners(), 3);
        let fifth = room.join("fifth", Role::Listener);
        assert_eq!(delivery(&room, &fifth), Delivery::Broadcast);
        // A reconnect keeps what the room decided.
        room.rejoin(&fifth, Role::Listener);
        assert_eq!(delivery(&room, &fifth), Delivery::Broadcast);
    }
}
