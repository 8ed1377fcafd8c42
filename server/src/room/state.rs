//! The room's rules: `RoomState::apply` checks a command against the live roles and changes the
//! state, or refuses and changes nothing. Pure: time comes in as `now_ms`, results go out as data.

mod membership;
mod moderation;
mod recording;
mod saving;
mod stage;
#[cfg(test)]
mod testkit;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde_json::json;

use crate::control::{Delivery, ParticipantId, Role, RoomId};
use crate::room::permissions::{self, Action, OnTarget, OnYourself, Permit, Standing};
use crate::room::{
    Actor, Audience, AudiencePage, AuditAction, Command, Effect, EventKind, LeaveReason, Outcome,
    Participant, ParticipantView, Presence, Refusal, Snapshot,
};
use membership::NewConnection;

/// Per-room limits, fixed when the room goes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLimits {
    /// Everyone in the room, connected or within their grace period. Moderators may join past
    /// it, so a full room never locks out the people who run it.
    pub max_participants: u32,
    /// Speakers and moderators on stage together.
    pub max_stage: u32,
    /// How long a participant whose connection dropped keeps their place.
    pub resume_grace_ms: u64,
    /// Listeners on WebRTC at once: a listener who joins past it hears the broadcast. `None`
    /// when the server serves no broadcasts (then there is nowhere else to put them).
    pub webrtc_audience_cap: Option<u32>,
}

/// One live room. Change it only through `apply`; read it through the accessors.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomState {
    room: RoomId,
    limits: RoomLimits,
    created_at_ms: u64,
    ended: bool,
    participants: BTreeMap<ParticipantId, Participant>,
    /// Banned while this room was live. The store keeps bans for new redemptions, but a session
    /// token issued before the ban must not get back in either.
    banned: BTreeSet<ParticipantId>,
    // Indexes over `participants` so that nothing per command scans a large audience. They are
    // kept in step in one place, `reindex`, through `admit`, `change` and `depart`.
    /// On stage, in the order they came up.
    stage: Vec<ParticipantId>,
    /// Raised hands, in the order they went up (moderators take them first come, first served).
    hands: Vec<ParticipantId>,
    moderators: BTreeSet<ParticipantId>,
    /// Grace-period deadlines of dropped connections, soonest first.
    deadlines: BTreeSet<(u64, ParticipantId)>,
    /// Speaking now, loudest first.
    speakers: Vec<ParticipantId>,
    /// Listeners on WebRTC (not on the broadcast), for the audience cap.
    webrtc_listeners: u32,
    /// The room's mix is being recorded.
    recording: bool,
}

/// How many audience members a moderator's snapshot lists; `list_audience` pages the rest.
pub const SNAPSHOT_AUDIENCE_PAGE: usize = 200;

impl RoomState {
    pub fn new(room: RoomId, limits: RoomLimits, now_ms: u64) -> Self {
        Self {
            room,
            limits,
            created_at_ms: now_ms,
            ended: false,
            participants: BTreeMap::new(),
            banned: BTreeSet::new(),
            stage: Vec::new(),
            hands: Vec::new(),
            moderators: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            speakers: Vec::new(),
            webrtc_listeners: 0,
            recording: false,
        }
    }

    /// The only way to change the room. A refusal leaves the state exactly as it was.
    ///
    /// The room task should deliver the events, then carry out the effects, so that people are
    /// told why before their socket closes.
    pub fn apply(
        &mut self,
        actor: &Actor,
        command: Command,
        now_ms: u64,
    ) -> Result<Outcome, Refusal> {
        if self.ended {
            return Err(Refusal::RoomEnded);
        }
        // A moderator's REST call while they are in the room is theirs as a participant: their
        // live role decides, as it would on their socket.
        let in_room;
        let actor = match actor {
            Actor::RestModerator(id) if self.participants.contains_key(id) => {
                in_room = Actor::Participant(id.clone());
                &in_room
            }
            actor => actor,
        };
        let speakers_before = self.speakers.clone();
        // When a change of who speaks happened: now, or when media heard it.
        let changed_at_ms = match &command {
            Command::SetSpeaking { heard_at_ms, .. } => (*heard_at_ms).min(now_ms),
            _ => now_ms,
        };
        let mut out = Outcome::default();
        match command {
            Command::Join {
                display_name,
                role,
                delivery,
                connection,
                resume_nonce,
            } => self.join(
                actor,
                display_name,
                (role, delivery),
                NewConnection {
                    connection,
                    resume_nonce,
                },
                now_ms,
                &mut out,
            ),
            Command::Resume {
                connection,
                presented,
                resume_nonce,
            } => self.resume(
                actor,
                presented,
                NewConnection {
                    connection,
                    resume_nonce,
                },
                now_ms,
                &mut out,
            ),
            Command::Disconnect { connection } => {
                self.disconnect(actor, connection, now_ms, &mut out)
            }
            Command::Leave => self.leave(actor, &mut out),
            Command::Tick => self.tick(actor, now_ms, &mut out),
            Command::RaiseHand => self.raise_hand(actor, now_ms, &mut out),
            Command::LowerHand { target } => self.lower_hand(actor, target, &mut out),
            Command::InviteToStage { target } => self.invite_to_stage(actor, &target, &mut out),
            Command::CancelInvitation { target } => {
                self.cancel_invitation(actor, &target, &mut out)
            }
            Command::AcceptInvitation => self.accept_invitation(actor, &mut out),
            Command::DeclineInvitation => self.decline_invitation(actor, &mut out),
            Command::JoinStage => self.join_stage(actor, &mut out),
            Command::LeaveStage => self.leave_stage(actor, &mut out),
            Command::MoveToAudience { target } => self.move_to_audience(actor, &target, &mut out),
            Command::Mute { target } => self.mute(actor, &target, &mut out),
            Command::MuteSelf => self.mute_self(actor, &mut out),
            Command::Unmute => self.unmute(actor, &mut out),
            Command::Remove { target } => self.remove(actor, &target, None, &mut out),
            Command::Ban {
                target,
                revoke_invite,
            } => self.remove(actor, &target, Some(revoke_invite), &mut out),
            Command::Promote { target } => self.promote(actor, &target, &mut out),
            Command::Demote { target } => self.demote(actor, &target, &mut out),
            Command::SetRole { target, role } => self.set_role(actor, &target, role, &mut out),
            Command::End => self.end(actor, &mut out),
            Command::StartRecording(options) => {
                self.start_recording(actor, options, now_ms, &mut out)
            }
            Command::StopRecording => self.stop_recording(actor, &mut out),
            Command::RecordingLost => self.lose_recording(actor, &mut out),
            Command::SetSpeaking { levels, .. } => self.set_speaking(actor, levels),
        }?;
        // Any command can silence a speaker (mute, leave, a dropped connection), so the speaker
        // list is compared once here rather than in every handler.
        if !self.ended && !same_members(&speakers_before, &self.speakers) {
            out.event(
                Audience::Everyone,
                EventKind::ActiveSpeakers {
                    speakers: self.speakers.clone(),
                },
            );
            if self.recording {
                out.effect(Effect::RecordSpeakers {
                    speakers: self.speakers.clone(),
                    from_start: false,
                    at_ms: changed_at_ms,
                });
            }
        }
        Ok(out)
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn limits(&self) -> RoomLimits {
        self.limits
    }

    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The room's mix is being recorded.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// No one is in the room, not even within a grace period.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    pub fn participant(&self, id: &ParticipantId) -> Option<&Participant> {
        self.participants.get(id)
    }

    /// Everyone in the room, in participant-id order.
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }

    pub fn participant_count(&self) -> u32 {
        saturate(self.participants.len())
    }

    /// Listeners on WebRTC, connected or within their grace period: what the audience cap
    /// counts. Speakers and moderators are not in it; nor are listeners on the broadcast.
    pub fn webrtc_listeners(&self) -> u32 {
        self.webrtc_listeners
    }

    /// Whether a listener joining now would be past the WebRTC audience cap.
    pub fn webrtc_audience_full(&self) -> bool {
        self.limits
            .webrtc_audience_cap
            .is_some_and(|cap| self.webrtc_listeners >= cap)
    }

    /// Everyone not on stage. The room task coalesces changes of it into periodic updates,
    /// rather than the room sending an event to everyone per listener who comes and goes.
    pub fn audience_count(&self) -> u32 {
        saturate(self.participants.len() - self.stage.len())
    }

    /// On stage, in the order they came up.
    pub fn stage(&self) -> impl Iterator<Item = &Participant> {
        self.stage.iter().map(|id| &self.participants[id])
    }

    /// Who `Audience::Moderators` means right now.
    pub fn moderators(&self) -> impl Iterator<Item = &ParticipantId> {
        self.moderators.iter()
    }

    /// Speaking now, loudest first.
    pub fn active_speakers(&self) -> &[ParticipantId] {
        &self.speakers
    }

    /// When the next grace period runs out: the room task should send `Tick` then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// What `viewer` is shown on (re)connecting; `None` if they are not in the room. Moderators
    /// get the first page of the audience; the rest is paged on request, so a snapshot of a
    /// huge room stays small.
    pub fn snapshot_for(&self, viewer: &ParticipantId) -> Option<Snapshot> {
        let you = self.participants.get(viewer)?;
        let is_moderator = you.role == Role::Moderator;
        let views =
            |ids: &[ParticipantId]| ids.iter().map(|id| self.participants[id].view()).collect();
        Some(Snapshot {
            room: self.room.clone(),
            you: you.view(),
            invitation_pending: you.invited,
            delivery: you.delivery,
            stage: views(&self.stage),
            raised_hands: views(&self.hands),
            active_speakers: self.speakers.clone(),
            recording: self.recording,
            audience_count: self.audience_count(),
            anonymous: 0,
            audience: is_moderator.then(|| self.audience_page(None, SNAPSHOT_AUDIENCE_PAGE)),
            pending_invitations: is_moderator.then(|| {
                self.participants
                    .values()
                    .filter(|p| p.invited)
                    .map(|p| p.id.clone())
                    .collect()
            }),
        })
    }

    /// Up to `limit` audience members after `after`, in participant-id order.
    pub fn audience_page(&self, after: Option<&ParticipantId>, limit: usize) -> AudiencePage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = self
            .participants
            .range::<ParticipantId, _>((start, Bound::Unbounded))
            .map(|(_, p)| p)
            .filter(|p| !p.on_stage);
        let participants: Vec<ParticipantView> =
            rest.by_ref().take(limit).map(Participant::view).collect();
        let more = rest.next().is_some();
        let next = match participants.last() {
            Some(last) if more => Some(last.id.clone()),
            _ => None,
        };
        AudiencePage { participants, next }
    }

    fn stage_is_full(&self) -> bool {
        self.stage.len() >= to_usize(self.limits.max_stage)
    }

    /// Checks `action` against the room's rules (`permissions.rs`) for this actor's standing,
    /// and returns the acting participant, if the actor is one.
    fn permit(&self, actor: &Actor, action: Action) -> Result<Option<&Participant>, Refusal> {
        let rule = permissions::rule(action);
        let (standing, member) = match actor {
            Actor::Participant(id) => match self.participants.get(id) {
                Some(p) => (Standing::of(p), Some(p)),
                None => return Err(rule.for_stranger()),
            },
            Actor::Operator | Actor::RestModerator(_) => (Standing::Operator, None),
            Actor::System => (Standing::System, None),
        };
        match rule.for_actor(standing) {
            Permit::Allowed => Ok(member),
            Permit::Refused(refusal) => Err(refusal),
        }
    }

    /// The acting participant, for an action on oneself.
    fn member(&self, actor: &Actor, action: Action) -> Result<&Participant, Refusal> {
        self.permit(actor, action)?.ok_or(Refusal::NotPermitted)
    }

    /// The target of an action on someone else, and whether the action changes them (the
    /// rules say so from who they are and, for some actions, from their state).
    fn target(
        &self,
        actor: &Actor,
        action: Action,
        target: &ParticipantId,
    ) -> Result<(&Participant, bool), Refusal> {
        self.permit(actor, action)?;
        let rule = permissions::rule(action)
            .target
            .expect("an action on someone else has a rule for its target");
        if actor.participant() == Some(target) {
            match rule.yourself {
                OnYourself::Allowed => {}
                OnYourself::Refused(refusal) => return Err(refusal),
                // Routed to that other action by the command before it gets here.
                OnYourself::Becomes(_) => return Err(Refusal::InvalidTarget),
            }
        }
        let participant = self
            .participants
            .get(target)
            .ok_or(Refusal::ParticipantNotFound)?;
        match rule.on(Standing::of(participant)) {
            OnTarget::Applies => {
                let changes = rule.only_if.is_none_or(|c| c.holds(participant));
                Ok((participant, changes))
            }
            OnTarget::NoChange => Ok((participant, false)),
            OnTarget::Refused(refusal) => Err(refusal),
        }
    }

    /// A participant identity present in the room, for a connection's own life (resuming),
    /// which is not an action of the rules: no one else can resume for them.
    fn present(&self, actor: &Actor) -> Result<&Participant, Refusal> {
        match actor {
            Actor::Participant(id) => self.participants.get(id).ok_or(Refusal::NotInRoom),
            Actor::Operator | Actor::RestModerator(_) | Actor::System => Err(Refusal::NotPermitted),
        }
    }

    /// Adds a participant and indexes them.
    fn admit(&mut self, participant: Participant, out: &mut Outcome) {
        let id = participant.id.clone();
        let marks = Marks::of(&participant);
        self.participants.insert(id.clone(), participant);
        self.reindex(&id, Marks::ABSENT, marks, out);
    }

    /// Changes one participant who the caller has checked is present, and keeps the indexes
    /// and media's send rights in step.
    fn change(
        &mut self,
        id: &ParticipantId,
        out: &mut Outcome,
        edit: impl FnOnce(&mut Participant),
    ) -> Changed {
        let participant = self
            .participants
            .get_mut(id)
            .expect("commands check that their subject is in the room before changing it");
        let before = Marks::of(participant);
        let was_public = participant.is_public();
        let old_role = participant.role;
        edit(participant);
        if !participant.may_send() {
            participant.speaking = false;
        }
        // Whoever may be on stage is on WebRTC: a listener who accepted an invitation, or was
        // made a moderator, may offer media from now on.
        participant.delivery = participant.delivery.for_role(participant.role);
        let after = Marks::of(participant);
        let changed = Changed {
            was_public,
            is_public: participant.is_public(),
            view: participant.view(),
        };
        self.reindex(id, before, after, out);
        if changed.view.role != old_role {
            out.effect(Effect::RecordRole {
                participant: id.clone(),
                role: changed.view.role,
            });
        }
        changed
    }

    /// Takes a participant out of the room and tells whoever could see them.
    fn depart(&mut self, id: &ParticipantId, reason: LeaveReason, out: &mut Outcome) {
        let Some(participant) = self.participants.remove(id) else {
            return;
        };
        self.reindex(id, Marks::of(&participant), Marks::ABSENT, out);
        out.effect(Effect::CloseMedia {
            participant: id.clone(),
        });
        let audience = if participant.is_public() {
            Audience::Everyone
        } else {
            Audience::Moderators
        };
        out.event(
            audience,
            EventKind::ParticipantLeft {
                participant: id.clone(),
                reason,
            },
        );
    }

    fn reindex(&mut self, id: &ParticipantId, before: Marks, after: Marks, out: &mut Outcome) {
        if before.on_stage != after.on_stage {
            set_membership(&mut self.stage, id, after.on_stage);
        }
        if before.hand != after.hand {
            set_membership(&mut self.hands, id, after.hand);
        }
        if before.moderator != after.moderator {
            if after.moderator {
                self.moderators.insert(id.clone());
            } else {
                self.moderators.remove(id);
            }
        }
        if before.deadline != after.deadline {
            if let Some(deadline) = before.deadline {
                self.deadlines.remove(&(deadline, id.clone()));
            }
            if let Some(deadline) = after.deadline {
                self.deadlines.insert((deadline, id.clone()));
            }
        }
        if before.webrtc_listener != after.webrtc_listener {
            if after.webrtc_listener {
                self.webrtc_listeners += 1;
            } else {
                self.webrtc_listeners -= 1;
            }
        }
        if before.may_send != after.may_send {
            if !after.may_send {
                self.speakers.retain(|speaker| speaker != id);
            }
            out.effect(Effect::SendPermission {
                participant: id.clone(),
                allowed: after.may_send,
            });
        }
    }
}

/// The facts about a participant that the indexes and media's send rights depend on.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Marks {
    on_stage: bool,
    hand: bool,
    moderator: bool,
    may_send: bool,
    deadline: Option<u64>,
    webrtc_listener: bool,
}

impl Marks {
    const ABSENT: Marks = Marks {
        on_stage: false,
        hand: false,
        moderator: false,
        may_send: false,
        deadline: None,
        webrtc_listener: false,
    };

    fn of(participant: &Participant) -> Self {
        Marks {
            on_stage: participant.on_stage,
            hand: participant.hand_raised,
            moderator: participant.role == Role::Moderator,
            may_send: participant.may_send(),
            deadline: match participant.presence {
                Presence::Connected => None,
                Presence::Reconnecting { deadline_ms } => Some(deadline_ms),
            },
            webrtc_listener: participant.role == Role::Listener
                && participant.delivery == Delivery::Webrtc,
        }
    }
}

/// A participant just after a change, with what the audience of the news depends on.
struct Changed {
    was_public: bool,
    is_public: bool,
    view: ParticipantView,
}

impl Changed {
    /// Everyone if the participant is or was visible to everyone, so that every client can add
    /// or drop them; otherwise `private`.
    fn audience(&self, private: Audience) -> Audience {
        if self.was_public || self.is_public {
            Audience::Everyone
        } else {
            private
        }
    }
}

/// An audit line naming the target as they were at the time (they may be gone later).
fn audit(actor: &Actor, action: AuditAction, target: &ParticipantView) -> Effect {
    Effect::Audit {
        actor: actor.clone(),
        action,
        target: Some(target.id.clone()),
        detail: json!({
            "display_name": target.display_name,
            "role": target.role,
            "on_stage": target.on_stage,
        }),
    }
}

fn set_membership(list: &mut Vec<ParticipantId>, id: &ParticipantId, member: bool) {
    if member {
        list.push(id.clone());
    } else {
        list.retain(|other| other != id);
    }
}

fn same_members(a: &[ParticipantId], b: &[ParticipantId]) -> bool {
    a.len() == b.len() && a.iter().all(|id| b.contains(id))
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testkit::*;
    use crate::control::{ParticipantId, Role};
    use crate::room::permissions::{
        self, Action, OnTarget, OnYourself, PERMISSIONS, Permit, Standing,
    };
    use crate::room::{Actor, Audience, Command, ConnectionId};

    type Expected = Result<(), &'static str>;
    const OK: Expected = Ok(());
    const NOT_PERMITTED: Expected = Err("not_permitted");
    const NOT_A_LISTENER: Expected = Err("not_a_listener");
    const NOT_ON_STAGE: Expected = Err("not_on_stage");
    const NO_INVITATION: Expected = Err("no_invitation");
    /// Allowed for moderators, on stage or not, and for the operator.
    const MODERATION: [Expected; 5] = [NOT_PERMITTED, NOT_PERMITTED, OK, OK, OK];

    /// An action of the product's role table: an optional setup (done by the operator), then
    /// the command under test.
    struct Row {
        name: &'static str,
        setup: fn(&Cast) -> Vec<Command>,
        command: fn(&Cast) -> Command,
        /// Columns: listener, speaker, moderator on stage, moderator in the audience, operator.
        expected: [Expected; 5],
    }

    fn none(_: &Cast) -> Vec<Command> {
        Vec::new()
    }

    /// The product's role table written out by hand, not derived from `permissions::PERMISSIONS`:
    /// this is what checks that table (which the state machine reads) says what the product says.
    const ROLE_TABLE: &[Row] = &[
        Row {
            name: "raise hand",
            setup: none,
            command: |_| Command::RaiseHand,
            expected: [
                OK,
                NOT_A_LISTENER,
                NOT_A_LISTENER,
                NOT_A_LISTENER,
                NOT_PERMITTED,
            ],
        },
        Row {
            name: "lower own hand",
            setup: none,
            command: |_| Command::LowerHand { target: None },
            expected: [
                OK,
                NOT_A_LISTENER,
                NOT_A_LISTENER,
                NOT_A_LISTENER,
                NOT_PERMITTED,
            ],
        },
        Row {
            name: "lower someone else's hand",
            setup: none,
            command: |c| Command::LowerHand {
                target: Some(c.hand.clone()),
            },
            expected: MODERATION,
        },
        Row {
            name: "invite a listener to speak",
            setup: none,
            command: |c| Command::InviteToStage {
                target: c.hand.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "cancel an invitation",
            setup: none,
            command: |c| Command::CancelInvitation {
                target: c.invited.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "accept an invitation",
            setup: |c| {
                vec![Command::InviteToStage {
                    target: c.listener.clone(),
                }]
            },
            command: |_| Command::AcceptInvitation,
            expected: [
                OK,
                NO_INVITATION,
                NO_INVITATION,
                NO_INVITATION,
                NOT_PERMITTED,
            ],
        },
        Row {
            name: "decline an invitation",
            setup: |c| {
                vec![Command::InviteToStage {
                    target: c.listener.clone(),
                }]
            },
            command: |_| Command::DeclineInvitation,
            expected: [
                OK,
                NO_INVITATION,
                NO_INVITATION,
                NO_INVITATION,
                NOT_PERMITTED,
            ],
        },
        Row {
            name: "step onto the stage",
            setup: none,
            command: |_| Command::JoinStage,
            expected: [NOT_PERMITTED, OK, OK, OK, NOT_PERMITTED],
        },
        Row {
            name: "leave the stage",
            setup: none,
            command: |_| Command::LeaveStage,
            expected: [NOT_ON_STAGE, OK, OK, NOT_ON_STAGE, NOT_PERMITTED],
        },
        Row {
            name: "mute self",
            setup: none,
            command: |_| Command::MuteSelf,
            expected: [NOT_ON_STAGE, OK, OK, NOT_ON_STAGE, NOT_PERMITTED],
        },
        Row {
            name: "unmute self",
            setup: |c| {
                vec![
                    Command::Mute {
                        target: c.speaker.clone(),
                    },
                    Command::Mute {
                        target: c.mod_on.clone(),
                    },
                ]
            },
            command: |_| Command::Unmute,
            expected: [NOT_ON_STAGE, OK, OK, NOT_ON_STAGE, NOT_PERMITTED],
        },
        Row {
            name: "move a speaker to the audience",
            setup: none,
            command: |c| Command::MoveToAudience {
                target: c.other_speaker.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "mute another speaker",
            setup: none,
            command: |c| Command::Mute {
                target: c.other_speaker.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "remove a participant",
            setup: none,
            command: |c| Command::Remove {
                target: c.hand.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "ban a participant",
            setup: none,
            command: |c| Command::Ban {
                target: c.hand.clone(),
                revoke_invite: false,
            },
            expected: MODERATION,
        },
        Row {
            name: "promote to moderator",
            setup: none,
            command: |c| Command::Promote {
                target: c.hand.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "demote from moderator",
            setup: none,
            command: |c| Command::Demote {
                target: c.other_mod.clone(),
            },
            expected: MODERATION,
        },
        Row {
            name: "set a role (REST)",
            setup: none,
            command: |c| Command::SetRole {
                target: c.hand.clone(),
                role: Role::Speaker,
            },
            expected: MODERATION,
        },
        Row {
            name: "end the room",
            setup: none,
            command: |_| Command::End,
            expected: MODERATION,
        },
        Row {
            name: "leave the room",
            setup: none,
            command: |_| Command::Leave,
            expected: [OK, OK, OK, OK, NOT_PERMITTED],
        },
        Row {
            name: "tick (the server only)",
            setup: none,
            command: |_| Command::Tick,
            expected: [NOT_PERMITTED; 5],
        },
        Row {
            name: "report speakers (media only)",
            setup: none,
            command: |c| Command::SetSpeaking {
                levels: vec![(c.speaker.clone(), 0)],
                heard_at_ms: 0,
            },
            expected: [NOT_PERMITTED; 5],
        },
    ];

    #[test]
    fn the_role_table() {
        let mut failures = Vec::new();
        // Ids are deterministic, so one cast names the actors of every fresh room below.
        let (_, cast) = cast_room();
        for action in ROLE_TABLE {
            for (actor, expected) in cast.actors().iter().zip(action.expected) {
                let (mut room, cast) = cast_room();
                for command in (action.setup)(&cast) {
                    room.ok(&Actor::Operator, command);
                }
                let got = room
                    .apply(actor, (action.command)(&cast))
                    .map(|_| ())
                    .map_err(|refusal| refusal.code());
                if got != expected {
                    failures.push(format!(
                        "{}: {actor:?} expected {expected:?}, got {got:?}",
                        action.name
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    /// The command for a moderation action aimed at `target`; `None` for the REST role call,
    /// whose effect depends on the role asked for (it has its own tests).
    fn command_on(action: Action, target: ParticipantId) -> Option<Command> {
        Some(match action {
            Action::LowerHand => Command::LowerHand {
                target: Some(target),
            },
            Action::InviteToStage => Command::InviteToStage { target },
            Action::CancelInvitation => Command::CancelInvitation { target },
            Action::MoveToAudience => Command::MoveToAudience { target },
            Action::Mute => Command::Mute { target },
            Action::Remove => Command::Remove { target },
            Action::Ban => Command::Ban {
                target,
                revoke_invite: false,
            },
            Action::Promote => Command::Promote { target },
            Action::Demote => Command::Demote { target },
            _ => return None,
        })
    }

    /// The rules' target columns (what a moderator's client offers for each person) are what
    /// the room does: every action on someone else, against a participant of each kind.
    #[test]
    fn the_rules_for_targets_are_what_the_room_does() {
        let (_, cast) = cast_room();
        let targets = [
            (Standing::Listener, &cast.listener),
            (Standing::Listener, &cast.hand),
            (Standing::Listener, &cast.invited),
            (Standing::Speaker, &cast.other_speaker),
            (Standing::ModeratorOnStage, &cast.other_mod),
            (Standing::ModeratorInAudience, &cast.mod_off),
        ];
        let mut checked = 0;
        for rule in PERMISSIONS {
            let Some(on) = &rule.target else {
                continue;
            };
            if command_on(rule.action, cast.listener.clone()).is_none() {
                assert_eq!(rule.action, Action::SetRole);
                continue;
            }
            let command = |target: &ParticipantId| command_on(rule.action, target.clone());
            for (standing, id) in targets {
                let (mut room, _) = cast_room();
                let before = room.get(id).clone();
                let got = room.apply(&Actor::Operator, command(id).unwrap());
                let shown = format!("{:?} on {standing:?} {id}: {got:?}", rule.action);
                match on.on(standing) {
                    OnTarget::Refused(refusal) => assert_eq!(got, Err(refusal), "{shown}"),
                    OnTarget::NoChange => assert!(got.unwrap().is_empty(), "{shown}"),
                    OnTarget::Applies => {
                        let changes = on.only_if.is_none_or(|c| c.holds(&before));
                        assert_eq!(!got.unwrap().is_empty(), changes, "{shown}");
                    }
                }
                checked += 1;
            }
            // Aimed by a moderator at themselves.
            let (mut room, _) = cast_room();
            let got = room
                .apply(&who(&cast.mod_on), command(&cast.mod_on).unwrap())
                .map(|_| ());
            let expected = match on.yourself {
                OnYourself::Allowed => Ok(()),
                OnYourself::Refused(refusal) => Err(refusal),
                OnYourself::Becomes(own) => {
                    match permissions::rule(own).for_actor(Standing::ModeratorOnStage) {
                        Permit::Allowed => Ok(()),
                        Permit::Refused(refusal) => Err(refusal),
                    }
                }
            };
            assert_eq!(got, expected, "{:?} on oneself", rule.action);
        }
        assert_eq!(
            checked,
            9 * targets.len(),
            "an action on someone else went unchecked"
        );
    }

    #[test]
    fn only_the_stage_may_send_audio() {
        let (room, cast) = cast_room();
        for (id, may_send) in [
            (&cast.listener, false),
            (&cast.hand, false),
            (&cast.invited, false),
            (&cast.speaker, true),
            (&cast.mod_on, true),
            (&cast.mod_off, false),
        ] {
            assert_eq!(room.get(id).may_send(), may_send, "{id}");
        }
    }

    #[test]
    fn moderation_commands_act_on_someone_else_who_is_here() {
        let (_, cast) = cast_room();
        let me = || cast.mod_on.clone();
        let ghost = || pid("ghost");
        let cases: Vec<(Command, &str)> = vec![
            (Command::Remove { target: me() }, "invalid_target"),
            (
                Command::Ban {
                    target: me(),
                    revoke_invite: false,
                },
                "invalid_target",
            ),
            (Command::Mute { target: me() }, "invalid_target"),
            (Command::MoveToAudience { target: me() }, "invalid_target"),
            (Command::InviteToStage { target: me() }, "invalid_target"),
            (Command::CancelInvitation { target: me() }, "invalid_target"),
            (Command::Promote { target: me() }, "invalid_target"),
            (Command::Remove { target: ghost() }, "participant_not_found"),
            (
                Command::Ban {
                    target: ghost(),
                    revoke_invite: false,
                },
                "participant_not_found",
            ),
            (Command::Mute { target: ghost() }, "participant_not_found"),
            (
                Command::MoveToAudience { target: ghost() },
                "participant_not_found",
            ),
            (
                Command::InviteToStage { target: ghost() },
                "participant_not_found",
            ),
            (
                Command::CancelInvitation { target: ghost() },
                "participant_not_found",
            ),
            (
                Command::Promote { target: ghost() },
                "participant_not_found",
            ),
            (Command::Demote { target: ghost() }, "participant_not_found"),
            (
                Command::LowerHand {
                    target: Some(ghost()),
                },
                "participant_not_found",
            ),
            (
                Command::InviteToStage {
                    target: cast.speaker.clone(),
                },
                "not_a_listener",
            ),
            (
                Command::InviteToStage {
                    target: cast.mod_off.clone(),
                },
                "not_a_listener",
            ),
            (
                Command::Mute {
                    target: cast.listener.clone(),
                },
                "not_on_stage",
            ),
            (
                Command::Mute {
                    target: cast.mod_off.clone(),
                },
                "not_on_stage",
            ),
        ];
        for (command, code) in cases {
            let (mut room, _) = cast_room();
            assert_eq!(
                room.refused(&who(&me()), command.clone()),
                code,
                "{command:?}"
            );
        }
    }

    #[test]
    fn someone_not_in_the_room_can_do_nothing_but_disconnect() {
        let (_, cast) = cast_room();
        let stranger = who(&pid("stranger"));
        for command in every_command(&cast) {
            let (mut room, _) = cast_room();
            match command {
                // A stranger joining is a newcomer; a stale socket closing is harmless.
                Command::Join { .. } | Command::Disconnect { .. } => {
                    room.ok(&stranger, command);
                }
                Command::Tick | Command::SetSpeaking { .. } | Command::RecordingLost => {
                    assert_eq!(room.refused(&stranger, command), "not_permitted");
                }
                command => {
                    assert_eq!(
                        room.refused(&stranger, command.clone()),
                        "not_in_room",
                        "{command:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_command_from_every_actor_keeps_the_room_consistent() {
        // The harness checks invariants and that refusals change nothing; this drives it
        // through every command from every kind of actor.
        let (_, cast) = cast_room();
        let mut actors = cast.actors().to_vec();
        actors.extend([Actor::System, who(&cast.hand), who(&cast.invited)]);
        for command in every_command(&cast) {
            for actor in &actors {
                let (mut room, _) = cast_room();
                let _ = room.apply(actor, command.clone());
            }
        }
    }

    #[test]
    fn repeating_a_change_is_a_silent_success() {
        let (mut room, cast) = cast_room();
        let host = who(&cast.mod_on);
        let t = || cast.other_speaker.clone();
        room.ok(&host, Command::Mute { target: t() });
        let repeats: Vec<(Actor, Command)> = vec![
            (who(&cast.hand), Command::RaiseHand),
            (who(&cast.listener), Command::LowerHand { target: None }),
            (
                host.clone(),
                Command::LowerHand {
                    target: Some(cast.listener.clone()),
                },
            ),
            (
                host.clone(),
                Command::InviteToStage {
                    target: cast.invited.clone(),
                },
            ),
            (
                host.clone(),
                Command::CancelInvitation {
                    target: cast.hand.clone(),
                },
            ),
            (host.clone(), Command::Mute { target: t() }),
            (
                host.clone(),
                Command::MoveToAudience {
                    target: cast.listener.clone(),
                },
            ),
            (
                host.clone(),
                Command::Promote {
                    target: cast.other_mod.clone(),
                },
            ),
            (host.clone(), Command::Demote { target: t() }),
            (
                host.clone(),
                Command::SetRole {
                    target: cast.listener.clone(),
                    role: Role::Listener,
                },
            ),
            (who(&cast.speaker), Command::JoinStage),
            (host.clone(), Command::JoinStage),
            (who(&cast.speaker), Command::Unmute),
            (
                Actor::System,
                Command::SetSpeaking {
                    levels: Vec::new(),
                    heard_at_ms: 0,
                },
            ),
            (Actor::System, Command::Tick),
        ];
        for (actor, command) in repeats {
            let before = room.state.clone();
            let out = room.ok(&actor, command.clone());
            assert!(out.is_empty(), "{command:?} produced {out:?}");
            assert_eq!(room.state, before, "{command:?}");
        }
    }

    #[test]
    fn snapshots_show_the_audience_to_moderators_only() {
        let (room, cast) = cast_room();
        let listener = room.state.snapshot_for(&cast.listener).unwrap();
        assert_eq!(listener.you.id, cast.listener);
        assert!(listener.audience.is_none() && listener.pending_invitations.is_none());
        let stage: Vec<_> = listener.stage.iter().map(|p| &p.id).collect();
        assert_eq!(
            stage,
            [
                &cast.mod_on,
                &cast.speaker,
                &cast.other_speaker,
                &cast.other_mod
            ]
        );
        assert_eq!(listener.raised_hands.len(), 1);
        assert_eq!(listener.audience_count, 4);
        let json = serde_json::to_value(&listener).unwrap();
        assert!(json.get("audience").is_none());

        let host = room.state.snapshot_for(&cast.mod_off).unwrap();
        assert_eq!(host.audience.map(|a| a.participants.len()), Some(4));
        assert_eq!(host.pending_invitations, Some(vec![cast.invited.clone()]));
        assert!(room.state.snapshot_for(&pid("stranger")).is_none());
        assert!(
            room.state
                .snapshot_for(&cast.invited)
                .unwrap()
                .invitation_pending
        );
    }

    #[test]
    fn the_audience_pages_in_id_order_and_skips_the_stage() {
        let mut room = TestRoom::new();
        room.join("a_speaker", Role::Speaker);
        for name in ["b", "c", "d", "e", "f"] {
            room.join(name, Role::Listener);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = room.state.audience_page(after.as_ref(), 2);
            seen.extend(page.participants.iter().map(|p| p.display_name.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["b", "c", "d", "e", "f"]);
        assert!(room.state.audience_page(None, 0).next.is_none());
    }

    #[test]
    fn wire_shapes() {
        let mut room = TestRoom::new();
        let host = room.join("host", Role::Moderator);
        let out = room.rejoin(&host, Role::Moderator);
        assert!(out.events.is_empty());
        let view = room.get(&host).view();
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            json!({
                "id": host.as_str(),
                "display_name": "host",
                "role": "moderator",
                "on_stage": true,
                "hand_raised": false,
                "muted": false,
                "speaking": false,
                "presence": "connected",
            })
        );
        let speaker = pid("speaker");
        let out = room.ok(
            &who(&speaker),
            Command::Join {
                display_name: "S".into(),
                role: Role::Speaker,
                delivery: Delivery::Webrtc,
                connection: ConnectionId(77),
                resume_nonce: ConnectionId(77).0,
            },
        );
        assert_eq!(out.events[0].audience, Audience::Everyone);
        let out = room.ok(
            &who(&host),
            Command::Mute {
                target: speaker.clone(),
            },
        );
        let json = serde_json::to_value(&out.events[0].kind).unwrap();
        assert_eq!(json["type"], "muted");
        assert_eq!(json["by"], host.as_str());
        assert_eq!(json["participant"]["muted"], true);
        let out = room.ok(&Actor::Operator, Command::Remove { target: speaker });
        let json = serde_json::to_value(&out.events[0].kind).unwrap();
        assert_eq!(json["reason"], "removed");
        assert_eq!(serde_json::to_value(Actor::Operator).unwrap(), "operator");
    }
}
