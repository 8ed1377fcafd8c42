//! Taking a room's live state out ([`SavedRoom`]) and putting it back into a new, empty room
//! on another node. The people put back wait for their resume like after a dropped socket.

use crate::control::{ParticipantId, Role};
use crate::room::saved::{MAX_SAVED_BANS, MAX_SAVED_PARTICIPANTS, SAVED_VERSION};
use crate::room::state::RoomState;
use crate::room::{ConnectionId, Outcome, Participant, Presence, SavedParticipant, SavedRoom};

impl RoomState {
    /// What another node needs to take this room over: the stage in order, everyone else with
    /// something to keep, the raised hands in order (cut at [`MAX_SAVED_PARTICIPANTS`]).
    pub fn saved(&self, now_ms: u64) -> SavedRoom {
        let stage = self.stage.iter();
        let others = self
            .participants
            .values()
            .filter(|p| !p.on_stage && !p.hand_raised && (p.invited || p.role != Role::Listener))
            .map(|p| &p.id);
        let people = stage
            .chain(others)
            .chain(self.hands.iter())
            .take(MAX_SAVED_PARTICIPANTS)
            .map(|id| saved_participant(&self.participants[id]))
            .collect();
        SavedRoom {
            v: SAVED_VERSION,
            room: self.room.clone(),
            at: now_ms,
            people,
            banned: self.banned.iter().take(MAX_SAVED_BANS).cloned().collect(),
        }
    }

    /// Puts a saved room back into this room, which nobody has joined yet. Everyone comes back
    /// as after a dropped socket: in their place, until the grace period runs out from now.
    /// Returns who was put back. `saved` must have passed [`SavedRoom::parse`].
    pub fn restore(&mut self, saved: SavedRoom, now_ms: u64) -> Vec<ParticipantId> {
        assert!(self.participants.is_empty(), "restored into a room in use");
        let deadline_ms = now_ms.saturating_add(self.limits.resume_grace_ms);
        // Nobody is connected: the send rights and events this makes are for no one.
        let mut nobody = Outcome::default();
        let mut back = Vec::with_capacity(saved.people.len());
        for p in saved.people {
            back.push(p.id.clone());
            let participant = Participant {
                id: p.id,
                display_name: p.n,
                role: p.r,
                delivery: p.d.for_role(p.r),
                on_stage: p.s,
                hand_raised: p.h,
                muted: p.m,
                invited: p.i,
                presence: Presence::Reconnecting { deadline_ms },
                // No socket here yet; a resume or join brings a new one.
                connection: ConnectionId(0),
                resume_nonce: p.k,
                joined_at_ms: p.j,
                speaking: false,
                hand_raised_at_ms: p.ha,
            };
            self.admit(participant, &mut nobody);
        }
        self.banned.extend(saved.banned);
        back
    }
}

fn saved_participant(p: &Participant) -> SavedParticipant {
    SavedParticipant {
        id: p.id.clone(),
        n: p.display_name.clone(),
        r: p.role,
        s: p.on_stage,
        h: p.hand_raised,
        m: p.muted,
        i: p.invited,
        d: p.delivery,
        k: p.resume_nonce,
        j: p.joined_at_ms,
        ha: p.hand_raised_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use crate::control::{ParticipantId, Role};
    use crate::room::state::testkit::*;
    use crate::room::{Actor, Command, Presence, RoomState, SavedRoom};

    /// A room with a speaker and a muted speaker on stage, two hands in order, a pending
    /// invitation and a moderator in the audience, saved and read back into a new room: the
    /// same stage, hands, mutes and invitation, everyone waiting for their resume, and the
    /// room goes on from there (the invitation accepted, a hand lowered).
    #[test]
    fn a_saved_room_comes_back_whole_on_another_node() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        room.join("sam", Role::Speaker);
        let muted = room.join("muted", Role::Speaker);
        let second = room.join("second", Role::Listener);
        let first = room.join("first", Role::Listener);
        let invited = room.join("invited", Role::Listener);
        let plain = room.join("plain", Role::Listener);
        let off = room.join("off", Role::Moderator);
        room.ok(&who(&off), Command::LeaveStage);
        room.ok(&who(&first), Command::RaiseHand);
        room.ok(&who(&second), Command::RaiseHand);
        room.ok(
            &who(&host),
            Command::Mute {
                target: muted.clone(),
            },
        );
        room.ok(
            &who(&host),
            Command::InviteToStage {
                target: invited.clone(),
            },
        );

        let json = room.state.saved(1_000).to_json();
        let saved = SavedRoom::parse(&json, room.state.room()).unwrap();
        let mut moved = RoomState::new(room.state.room().clone(), room.state.limits(), 2_000);
        let back = moved.restore(saved, 2_000);
        assert!(!back.contains(&plain), "a plain listener joins again");
        assert_eq!(back.len(), 7);

        let ids = |it: Vec<&crate::room::Participant>| -> Vec<ParticipantId> {
            it.into_iter().map(|p| p.id.clone()).collect()
        };
        assert_eq!(
            ids(moved.stage().collect()),
            ids(room.state.stage().collect())
        );
        let hands: Vec<_> = moved.snapshot_for(&host).unwrap().raised_hands;
        let hands: Vec<_> = hands.into_iter().map(|p| p.id).collect();
        assert_eq!(hands, [first.clone(), second.clone()]);
        assert!(moved.participant(&muted).unwrap().muted);
        assert!(moved.participant(&invited).unwrap().invited);
        assert!(!moved.participant(&off).unwrap().on_stage);
        for id in &back {
            let p = moved.participant(id).unwrap();
            assert_eq!(
                p.presence,
                Presence::Reconnecting {
                    deadline_ms: 2_000 + room.state.limits().resume_grace_ms
                }
            );
            assert!(!p.may_send());
            let before = room.get(id);
            assert_eq!(
                (p.role, &p.display_name, p.resume_nonce),
                (before.role, &before.display_name, before.resume_nonce)
            );
        }

        // The room goes on: the invitation is accepted, a hand lowered.
        let mut moved = TestRoom {
            state: moved,
            now: 2_000,
            ..TestRoom::new()
        };
        moved.rejoin(&invited, Role::Listener);
        moved.ok(&who(&invited), Command::AcceptInvitation);
        assert!(moved.get(&invited).on_stage);
        moved.rejoin(&host, Role::Moderator);
        moved.ok(
            &who(&host),
            Command::LowerHand {
                target: Some(first.clone()),
            },
        );
        assert!(!moved.get(&first).hand_raised);
        assert!(moved.get(&second).hand_raised);
        // Nobody came back but those two: the rest leave when the grace runs out.
        let grace = moved.state.limits().resume_grace_ms;
        moved.now = 2_000 + grace;
        moved.ok(&Actor::System, Command::Tick);
        assert_eq!(moved.state.participant_count(), 2);
    }

    #[test]
    fn a_saved_room_keeps_its_size_bounded() {
        let mut room = TestRoom::with_limits(5_000, 6, 30_000);
        room.join("host", Role::Moderator);
        for n in 0..crate::room::saved::MAX_SAVED_PARTICIPANTS + 10 {
            let id = room.join(&format!("l{n}"), Role::Listener);
            room.ok(&who(&id), Command::RaiseHand);
        }
        let saved = room.state.saved(0);
        assert_eq!(
            saved.people.len(),
            crate::room::saved::MAX_SAVED_PARTICIPANTS
        );
        assert_eq!(saved.people[0].r, Role::Moderator);
        assert!(SavedRoom::parse(&saved.to_json(), room.state.room()).is_ok());
    }

    /// The figure in docs/operations.md: a room with 10 on stage and 100 raised hands (display
    /// names of 12 characters), what one write to Redis carries, and what taking it costs.
    #[test]
    fn the_size_of_a_saved_room_with_10_on_stage_and_100_hands() {
        let mut room = TestRoom::with_limits(1_000, 10, 30_000);
        room.join("host", Role::Moderator);
        for n in 0..9 {
            room.join(&format!("Speaker_{n:04}"), Role::Speaker);
        }
        for n in 0..100 {
            let id = room.join(&format!("Listener{n:04}"), Role::Listener);
            room.ok(&who(&id), Command::RaiseHand);
        }
        for n in 0..400 {
            room.join(&format!("Quiet{n:04}"), Role::Listener);
        }
        let started = std::time::Instant::now();
        let json = room.state.saved(0).to_json();
        let took = started.elapsed();
        println!(
            "a saved room with 10 on stage, 100 hands and 400 quiet listeners: {} bytes, \
             taken and encoded in {took:?}",
            json.len()
        );
        assert_eq!(
            SavedRoom::parse(&json, room.state.room())
                .unwrap()
                .people
                .len(),
            110
        );
        assert!(json.len() < 16 * 1024, "{}", json.len());
    }
}
