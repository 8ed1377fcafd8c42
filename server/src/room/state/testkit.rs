//! A room under test: deterministic ids, a clock set by hand, and checks after every command
//! (invariants hold, indexes agree, a refusal changed nothing). Test-only; no rules live here.

use std::collections::BTreeSet;

pub use crate::control::Delivery;
use crate::control::{ParticipantId, Role, RoomId};
use crate::room::state::RoomState;
use crate::room::{
    Actor, AuditAction, Command, ConnectionId, Effect, Outcome, Participant, Presence, Refusal,
    RoomLimits,
};

/// `pt_` + the name padded to the 16 characters an id has; names sort as ids do.
pub(crate) fn pid(name: &str) -> ParticipantId {
    ParticipantId::parse(&format!("pt_{name:_<16}")).expect("test names are short and URL-safe")
}

pub(crate) fn who(id: &ParticipantId) -> Actor {
    Actor::Participant(id.clone())
}

pub(crate) struct TestRoom {
    pub state: RoomState,
    pub now: u64,
    pub next_connection: u64,
}

impl TestRoom {
    pub fn new() -> Self {
        Self::with_limits(50, 6, 30_000)
    }

    /// A room whose WebRTC audience cap is `cap` listeners.
    pub fn with_webrtc_audience_cap(cap: u32) -> Self {
        let mut room = Self::new();
        let mut limits = room.state.limits();
        limits.webrtc_audience_cap = Some(cap);
        room.state = RoomState::new(room.state.room().clone(), limits, 0);
        room
    }

    pub fn with_limits(max_participants: u32, max_stage: u32, resume_grace_ms: u64) -> Self {
        let limits = RoomLimits {
            max_participants,
            max_stage,
            resume_grace_ms,
            webrtc_audience_cap: None,
        };
        let room = RoomId::parse("rm_testroom________").expect("a valid room id");
        TestRoom {
            state: RoomState::new(room, limits, 0),
            now: 0,
            next_connection: 0,
        }
    }

    pub fn connect(&mut self) -> ConnectionId {
        self.next_connection += 1;
        ConnectionId(self.next_connection)
    }

    /// A resume by the newest token of `id` (each connection's token nonce is its number).
    pub fn resume(&self, id: &ParticipantId, connection: ConnectionId) -> Command {
        Command::Resume {
            connection,
            presented: self.state.participant(id).map_or(0, |p| p.resume_nonce),
            resume_nonce: connection.0,
        }
    }

    /// Applies a command as the room task would, then checks what must always hold.
    pub fn apply(&mut self, actor: &Actor, command: Command) -> Result<Outcome, Refusal> {
        let before = self.state.clone();
        let result = self.state.apply(actor, command, self.now);
        if result.is_err() {
            assert_eq!(self.state, before, "a refused command changed the room");
        }
        self.state.assert_invariants();
        result
    }

    pub fn ok(&mut self, actor: &Actor, command: Command) -> Outcome {
        let shown = format!("{command:?}");
        self.apply(actor, command)
            .unwrap_or_else(|refusal| panic!("{actor:?} {shown} refused: {}", refusal.code()))
    }

    pub fn refused(&mut self, actor: &Actor, command: Command) -> &'static str {
        let shown = format!("{command:?}");
        match self.apply(actor, command) {
            Ok(out) => panic!("{actor:?} {shown} was accepted: {out:?}"),
            Err(refusal) => refusal.code(),
        }
    }

    /// Joins with a fresh connection; the display name is the name.
    pub fn join(&mut self, name: &str, role: Role) -> ParticipantId {
        self.join_with(name, role, Delivery::Webrtc)
    }

    /// Joins with a session token that asked for `delivery`.
    pub fn join_with(&mut self, name: &str, role: Role, delivery: Delivery) -> ParticipantId {
        let id = pid(name);
        let connection = self.connect();
        self.ok(
            &who(&id),
            Command::Join {
                display_name: name.into(),
                role,
                delivery,
                connection,
                resume_nonce: connection.0,
            },
        );
        id
    }

    pub fn rejoin(&mut self, id: &ParticipantId, role: Role) -> Outcome {
        let connection = self.connect();
        self.ok(
            &who(id),
            Command::Join {
                display_name: "again".into(),
                role,
                delivery: Delivery::Webrtc,
                connection,
                resume_nonce: connection.0,
            },
        )
    }

    pub fn get(&self, id: &ParticipantId) -> &Participant {
        self.state
            .participant(id)
            .expect("the participant is in the room")
    }
}

/// One of each kind of participant, plus targets in each state a command may need.
pub(crate) struct Cast {
    pub listener: ParticipantId,
    pub speaker: ParticipantId,
    pub mod_on: ParticipantId,
    pub mod_off: ParticipantId,
    /// A listener with a raised hand.
    pub hand: ParticipantId,
    /// A listener invited to the stage.
    pub invited: ParticipantId,
    pub other_speaker: ParticipantId,
    /// A moderator on stage, to be demoted.
    pub other_mod: ParticipantId,
}

impl Cast {
    /// The actors of the role table, in its column order.
    pub fn actors(&self) -> [Actor; 5] {
        [
            who(&self.listener),
            who(&self.speaker),
            who(&self.mod_on),
            who(&self.mod_off),
            Actor::Operator,
        ]
    }
}

pub(crate) fn cast_room() -> (TestRoom, Cast) {
    let mut room = TestRoom::new();
    let cast = Cast {
        mod_on: room.join("modon", Role::Moderator),
        mod_off: room.join("modoff", Role::Moderator),
        speaker: room.join("speaker", Role::Speaker),
        listener: room.join("listener", Role::Listener),
        hand: room.join("hand", Role::Listener),
        invited: room.join("invited", Role::Listener),
        other_speaker: room.join("otherspeaker", Role::Speaker),
        other_mod: room.join("othermod", Role::Moderator),
    };
    room.ok(&who(&cast.mod_off), Command::LeaveStage);
    room.ok(&who(&cast.hand), Command::RaiseHand);
    room.ok(
        &Actor::Operator,
        Command::InviteToStage {
            target: cast.invited.clone(),
        },
    );
    (room, cast)
}

/// One command of every kind, aimed at cast members; `command_kind` keeps it complete.
pub(crate) fn every_command(cast: &Cast) -> Vec<Command> {
    let t = || cast.other_speaker.clone();
    let commands = vec![
        Command::Join {
            display_name: "x".into(),
            role: Role::Listener,
            delivery: Delivery::Webrtc,
            connection: ConnectionId(1_000),
            resume_nonce: 1_000,
        },
        Command::Resume {
            connection: ConnectionId(1_001),
            presented: 0,
            resume_nonce: 1_001,
        },
        Command::Disconnect {
            connection: ConnectionId(1),
        },
        Command::Leave,
        Command::Tick,
        Command::RaiseHand,
        Command::LowerHand {
            target: Some(cast.hand.clone()),
        },
        Command::InviteToStage {
            target: cast.listener.clone(),
        },
        Command::CancelInvitation {
            target: cast.invited.clone(),
        },
        Command::AcceptInvitation,
        Command::DeclineInvitation,
        Command::JoinStage,
        Command::LeaveStage,
        Command::MoveToAudience { target: t() },
        Command::Mute { target: t() },
        Command::MuteSelf,
        Command::Unmute,
        Command::Remove { target: t() },
        Command::Ban {
            target: t(),
            revoke_invite: false,
        },
        Command::Promote { target: t() },
        Command::Demote {
            target: cast.other_mod.clone(),
        },
        Command::SetRole {
            target: t(),
            role: Role::Listener,
        },
        Command::End,
        Command::StartRecording(Default::default()),
        Command::StopRecording,
        Command::RecordingLost,
        Command::SetSpeaking {
            levels: vec![(t(), 0)],
            heard_at_ms: 0,
        },
    ];
    let kinds: BTreeSet<usize> = commands.iter().map(command_kind).collect();
    assert_eq!(kinds.len(), COMMAND_KINDS, "every_command misses a kind");
    commands
}

const COMMAND_KINDS: usize = 27;

/// Exhaustive on purpose: a new command kind does not compile until it is listed here.
fn command_kind(command: &Command) -> usize {
    match command {
        Command::Join { .. } => 0,
        Command::Resume { .. } => 1,
        Command::Disconnect { .. } => 2,
        Command::Leave => 3,
        Command::Tick => 4,
        Command::RaiseHand => 5,
        Command::LowerHand { .. } => 6,
        Command::InviteToStage { .. } => 7,
        Command::CancelInvitation { .. } => 8,
        Command::AcceptInvitation => 9,
        Command::DeclineInvitation => 10,
        Command::JoinStage => 11,
        Command::LeaveStage => 12,
        Command::MoveToAudience { .. } => 13,
        Command::Mute { .. } => 14,
        Command::MuteSelf => 15,
        Command::Unmute => 16,
        Command::Remove { .. } => 17,
        Command::Ban { .. } => 18,
        Command::Promote { .. } => 19,
        Command::Demote { .. } => 20,
        Command::SetRole { .. } => 21,
        Command::End => 22,
        Command::SetSpeaking { .. } => 23,
        Command::StartRecording(_) => 24,
        Command::StopRecording => 25,
        Command::RecordingLost => 26,
    }
}

/// The wire `type` of each event, in order.
pub(crate) fn types(out: &Outcome) -> Vec<String> {
    out.events
        .iter()
        .map(|event| {
            let json = serde_json::to_value(&event.kind).expect("events serialise");
            json["type"].as_str().expect("a type tag").to_owned()
        })
        .collect()
}

pub(crate) fn send_permissions(out: &Outcome) -> Vec<(ParticipantId, bool)> {
    out.effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::SendPermission {
                participant,
                allowed,
            } => Some((participant.clone(), *allowed)),
            _ => None,
        })
        .collect()
}

pub(crate) fn audits(out: &Outcome) -> Vec<(AuditAction, Option<ParticipantId>)> {
    out.effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Audit { action, target, .. } => Some((*action, target.clone())),
            _ => None,
        })
        .collect()
}

/// Who each effect that names an actor (audit lines, bans, the end) names.
pub(crate) fn recorded_actors(out: &Outcome) -> Vec<crate::control::Actor> {
    out.effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Audit { actor, .. }
            | Effect::PersistBan { by: actor, .. }
            | Effect::PersistRoomEnded { by: actor, .. } => Some(actor.recorded_as()),
            _ => None,
        })
        .collect()
}

impl RoomState {
    /// The invariants `Participant` documents, and indexes that agree with the participants.
    pub(crate) fn assert_invariants(&self) {
        for (id, p) in &self.participants {
            assert_eq!(id, &p.id);
            match p.role {
                Role::Speaker => assert!(p.on_stage, "a speaker off stage: {p:?}"),
                Role::Listener => assert!(!p.on_stage, "a listener on stage: {p:?}"),
                Role::Moderator => {}
            }
            if p.hand_raised || p.invited {
                assert_eq!(p.role, Role::Listener, "hand or invitation: {p:?}");
            }
            if p.delivery == Delivery::Broadcast {
                assert_eq!(p.role, Role::Listener, "a broadcast non-listener: {p:?}");
            }
            if p.muted {
                assert!(p.on_stage, "muted off stage: {p:?}");
            }
            if p.speaking {
                assert!(p.may_send(), "speaking without the right to send: {p:?}");
            }
        }
        let with = |keep: fn(&Participant) -> bool| -> BTreeSet<ParticipantId> {
            self.participants
                .values()
                .filter(|p| keep(p))
                .map(|p| p.id.clone())
                .collect()
        };
        let set = |ids: &[ParticipantId]| -> BTreeSet<ParticipantId> {
            let set: BTreeSet<_> = ids.iter().cloned().collect();
            assert_eq!(set.len(), ids.len(), "a duplicate in an index: {ids:?}");
            set
        };
        assert_eq!(set(&self.stage), with(|p| p.on_stage));
        assert_eq!(set(&self.hands), with(|p| p.hand_raised));
        assert_eq!(set(&self.speakers), with(|p| p.speaking));
        assert_eq!(self.moderators, with(|p| p.role == Role::Moderator));
        let deadlines: BTreeSet<_> = self
            .participants
            .values()
            .filter_map(|p| match p.presence {
                Presence::Reconnecting { deadline_ms } => Some((deadline_ms, p.id.clone())),
                Presence::Connected => None,
            })
            .collect();
        assert_eq!(self.deadlines, deadlines);
        let webrtc_listeners = with(|p| p.role == Role::Listener && p.delivery == Delivery::Webrtc);
        assert_eq!(self.webrtc_listeners as usize, webrtc_listeners.len());
        assert!(self.stage.len() <= self.limits.max_stage as usize);
    }
}
