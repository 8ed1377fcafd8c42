//! The room's pure state machine fed arbitrary command sequences from arbitrary participants,
//! the operator and the system, with its rules checked after every step (see
//! `stoa::fuzzing::RoomHarness`).
#![no_main]

use arbitrary::Arbitrary;
use stoa::control::{Delivery, ParticipantId, Role};
use stoa::fuzzing::RoomHarness;
use stoa::room::{Actor, Command, ConnectionId, RecordingOptions};

/// Participants are drawn from a small set, so commands keep finding their targets.
const PEOPLE: u8 = 12;

#[derive(Arbitrary, Debug)]
struct Script {
    max_participants: u8,
    max_stage: u8,
    /// The resume grace period, in tenths of a second.
    grace: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct Step {
    who: Who,
    what: What,
    /// Time passing before the step, in 40 ms units (hand cooldowns, grace periods).
    wait: u8,
}

#[derive(Arbitrary, Debug)]
enum Who {
    Participant(u8),
    Operator,
    System,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RolePick {
    Listener,
    Speaker,
    Moderator,
}

#[derive(Arbitrary, Debug)]
enum What {
    Join {
        name: String,
        role: RolePick,
        connection: u8,
        /// The token asked for the broadcast tier.
        broadcast: bool,
    },
    /// `presented` is the resume token's nonce; a join's token gets its connection's number.
    Resume {
        connection: u8,
        presented: u8,
    },
    Disconnect {
        connection: u8,
    },
    Leave,
    Tick,
    RaiseHand,
    LowerHand {
        target: Option<u8>,
    },
    InviteToStage(u8),
    CancelInvitation(u8),
    AcceptInvitation,
    DeclineInvitation,
    JoinStage,
    LeaveStage,
    MoveToAudience(u8),
    Mute(u8),
    MuteSelf,
    Unmute,
    Remove(u8),
    Ban(u8, bool),
    Promote(u8),
    Demote(u8),
    SetRole(u8, RolePick),
    End,
    /// Levels, and when media heard them (ms on the room's clock: past, now or wrong).
    SetSpeaking(Vec<(u8, u8)>, u32),
    /// With or without per-speaker tracks, or the server's default.
    StartRecording(Option<bool>),
    StopRecording,
    RecordingLost,
}

fn person(n: u8) -> ParticipantId {
    RoomHarness::participant(n % PEOPLE)
}

fn role(pick: RolePick) -> Role {
    match pick {
        RolePick::Listener => Role::Listener,
        RolePick::Speaker => Role::Speaker,
        RolePick::Moderator => Role::Moderator,
    }
}

fn command(what: What) -> Command {
    match what {
        What::Join {
            name,
            role: pick,
            connection,
            broadcast,
        } => Command::Join {
            display_name: name.chars().take(40).collect(),
            role: role(pick),
            delivery: if broadcast {
                Delivery::Broadcast
            } else {
                Delivery::Webrtc
            },
            connection: ConnectionId(u64::from(connection)),
            resume_nonce: u64::from(connection),
        },
        What::Resume {
            connection,
            presented,
        } => Command::Resume {
            connection: ConnectionId(u64::from(connection)),
            presented: u64::from(presented),
            resume_nonce: u64::from(connection),
        },
        What::Disconnect { connection } => Command::Disconnect {
            connection: ConnectionId(u64::from(connection)),
        },
        What::Leave => Command::Leave,
        What::Tick => Command::Tick,
        What::RaiseHand => Command::RaiseHand,
        What::LowerHand { target } => Command::LowerHand {
            target: target.map(person),
        },
        What::InviteToStage(t) => Command::InviteToStage { target: person(t) },
        What::CancelInvitation(t) => Command::CancelInvitation { target: person(t) },
        What::AcceptInvitation => Command::AcceptInvitation,
        What::DeclineInvitation => Command::DeclineInvitation,
        What::JoinStage => Command::JoinStage,
        What::LeaveStage => Command::LeaveStage,
        What::MoveToAudience(t) => Command::MoveToAudience { target: person(t) },
        What::Mute(t) => Command::Mute { target: person(t) },
        What::MuteSelf => Command::MuteSelf,
        What::Unmute => Command::Unmute,
        What::Remove(t) => Command::Remove { target: person(t) },
        What::Ban(t, revoke_invite) => Command::Ban {
            target: person(t),
            revoke_invite,
        },
        What::Promote(t) => Command::Promote { target: person(t) },
        What::Demote(t) => Command::Demote { target: person(t) },
        What::SetRole(t, pick) => Command::SetRole {
            target: person(t),
            role: role(pick),
        },
        What::End => Command::End,
        What::StartRecording(speaker_tracks) => {
            Command::StartRecording(RecordingOptions { speaker_tracks })
        }
        What::StopRecording => Command::StopRecording,
        What::RecordingLost => Command::RecordingLost,
        What::SetSpeaking(levels, heard_at_ms) => Command::SetSpeaking {
            levels: levels
                .into_iter()
                .take(16)
                .map(|(who, level)| (person(who), level % 128))
                .collect(),
            heard_at_ms: u64::from(heard_at_ms),
        },
    }
}

libfuzzer_sys::fuzz_target!(|script: Script| {
    let mut room = RoomHarness::new(
        1 + u32::from(script.max_participants % 16),
        1 + u32::from(script.max_stage % 8),
        u64::from(script.grace) * 100,
    );
    for step in script.steps.into_iter().take(256) {
        let actor = match step.who {
            Who::Participant(n) => Actor::Participant(person(n)),
            Who::Operator => Actor::Operator,
            Who::System => Actor::System,
        };
        room.step(&actor, command(step.what), u64::from(step.wait) * 40);
    }
});
