//! Who may do what in a live room, as one table: the state machine's checks read it, the
//! security matrix derives its expectations from it, and clients get it as JSON
//! (`client-web/permissions.json`). Data only; the commands themselves live in `state/`.
//!
//! A rule says, for each kind of actor, whether an action is allowed or which refusal it
//! gets; for an action on someone else, what it does to each kind of target. What depends on
//! the moment rather than on who (a full stage, a hand raised too soon, no pending invitation)
//! is checked by the command itself.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::control::Role;
use crate::room::{Participant, Refusal};

/// An actor or a target as far as permissions go: a participant's live role and place, the
/// operator (and a moderator acting over REST from outside the room), or the server itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Listener,
    Speaker,
    ModeratorOnStage,
    ModeratorInAudience,
    Operator,
    System,
}

impl Standing {
    /// In the order of a rule's columns.
    pub const ALL: [Standing; 6] = [
        Standing::Listener,
        Standing::Speaker,
        Standing::ModeratorOnStage,
        Standing::ModeratorInAudience,
        Standing::Operator,
        Standing::System,
    ];

    /// The four a participant can be; the columns of a rule's `target`.
    pub const PARTICIPANTS: [Standing; 4] = [
        Standing::Listener,
        Standing::Speaker,
        Standing::ModeratorOnStage,
        Standing::ModeratorInAudience,
    ];

    pub fn of(participant: &Participant) -> Standing {
        match participant.role {
            Role::Listener => Standing::Listener,
            Role::Speaker => Standing::Speaker,
            Role::Moderator if participant.on_stage => Standing::ModeratorOnStage,
            Role::Moderator => Standing::ModeratorInAudience,
        }
    }

    fn column(self) -> usize {
        self as usize
    }
}

/// Everything people (and the server) can ask of a room, besides joining and leaving a
/// connection. Named as in the signaling protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RaiseHand,
    /// `lower_hand` without a participant, or naming oneself.
    LowerOwnHand,
    /// `lower_hand` naming someone else.
    LowerHand,
    InviteToStage,
    CancelInvitation,
    AcceptInvitation,
    DeclineInvitation,
    JoinStage,
    LeaveStage,
    MoveToAudience,
    Mute,
    MuteSelf,
    Unmute,
    Remove,
    Ban,
    Promote,
    Demote,
    SetRole,
    EndRoom,
    StartRecording,
    StopRecording,
    /// The recorder's report that a recording stopped by itself.
    LoseRecording,
    Leave,
    /// The room task's timer: grace periods run out.
    Tick,
    /// Media's report of who is speaking.
    ReportSpeakers,
}

/// What one kind of actor gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    Refused(Refusal),
}

/// What an action on someone else does to one kind of target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTarget {
    /// It changes them (when `only_if` holds, if the rule has one).
    Applies,
    /// Accepted, and changes nothing: they are already where the action would put them.
    NoChange,
    Refused(Refusal),
}

/// A fact about the target, beyond its standing, without which the action changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    HandRaised,
    Invited,
    NotInvited,
    NotMuted,
}

impl Condition {
    pub fn holds(self, target: &Participant) -> bool {
        match self {
            Condition::HandRaised => target.hand_raised,
            Condition::Invited => target.invited,
            Condition::NotInvited => !target.invited,
            Condition::NotMuted => !target.muted,
        }
    }
}

/// An action on someone else aimed at the actor themselves (only ever by a participant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnYourself {
    Allowed,
    Refused(Refusal),
    /// It is this other action, about oneself, with its own rule.
    Becomes(Action),
}

/// For an action on someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetRule {
    pub yourself: OnYourself,
    /// Columns: listener, speaker, moderator on stage, moderator in the audience.
    pub standing: [OnTarget; 4],
    pub only_if: Option<Condition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// The signaling message that asks for it; `None` for the server's own.
    pub message: Option<&'static str>,
    /// Columns in `Standing::ALL` order.
    pub actors: [Permit; 6],
    pub target: Option<TargetRule>,
}

impl TargetRule {
    pub fn on(&self, standing: Standing) -> OnTarget {
        match standing {
            Standing::Listener => self.standing[0],
            Standing::Speaker => self.standing[1],
            Standing::ModeratorOnStage => self.standing[2],
            Standing::ModeratorInAudience => self.standing[3],
            // Only participants are targets.
            Standing::Operator | Standing::System => OnTarget::Refused(Refusal::InvalidTarget),
        }
    }
}

impl Rule {
    pub fn for_actor(&self, standing: Standing) -> Permit {
        self.actors[standing.column()]
    }

    /// What someone not in the room gets: the refusal every participant gets, if they all
    /// get the same one (nobody here could do it either); otherwise `NotInRoom`.
    pub fn for_stranger(&self) -> Refusal {
        let mut columns = Standing::PARTICIPANTS.iter().map(|s| self.for_actor(*s));
        match columns.next() {
            Some(Permit::Refused(first))
                if columns.all(|other| other == Permit::Refused(first)) =>
            {
                first
            }
            _ => Refusal::NotInRoom,
        }
    }
}

use OnTarget::{Applies, NoChange};
use Permit::Allowed;

const NOT_PERMITTED: Permit = Permit::Refused(Refusal::NotPermitted);
const NOT_A_LISTENER: Permit = Permit::Refused(Refusal::NotAListener);
const NOT_ON_STAGE: Permit = Permit::Refused(Refusal::NotOnStage);
const NO_INVITATION: Permit = Permit::Refused(Refusal::NoInvitation);

/// Moderators, on stage or not, and the operator.
const MODERATION: [Permit; 6] = [
    NOT_PERMITTED,
    NOT_PERMITTED,
    Allowed,
    Allowed,
    Allowed,
    NOT_PERMITTED,
];
/// Listeners about themselves.
const LISTENERS: [Permit; 6] = [
    Allowed,
    NOT_A_LISTENER,
    NOT_A_LISTENER,
    NOT_A_LISTENER,
    NOT_PERMITTED,
    NOT_PERMITTED,
];
/// Whoever is on stage, about themselves.
const ON_STAGE: [Permit; 6] = [
    NOT_ON_STAGE,
    Allowed,
    Allowed,
    NOT_ON_STAGE,
    NOT_PERMITTED,
    NOT_PERMITTED,
];
/// A listener answering an invitation (only listeners are ever invited).
const INVITED: [Permit; 6] = [
    Allowed,
    NO_INVITATION,
    NO_INVITATION,
    NO_INVITATION,
    NOT_PERMITTED,
    NOT_PERMITTED,
];
const SYSTEM: [Permit; 6] = [
    NOT_PERMITTED,
    NOT_PERMITTED,
    NOT_PERMITTED,
    NOT_PERMITTED,
    NOT_PERMITTED,
    Allowed,
];

const fn on(
    yourself: OnYourself,
    standing: [OnTarget; 4],
    only_if: Option<Condition>,
) -> Option<TargetRule> {
    Some(TargetRule {
        yourself,
        standing,
        only_if,
    })
}

const INVALID_TARGET: OnYourself = OnYourself::Refused(Refusal::InvalidTarget);

/// The room's rules of who may do what, one row per action.
pub const PERMISSIONS: &[Rule] = &[
    Rule {
        action: Action::RaiseHand,
        message: Some("raise_hand"),
        actors: LISTENERS,
        target: None,
    },
    Rule {
        action: Action::LowerOwnHand,
        message: Some("lower_hand"),
        actors: LISTENERS,
        target: None,
    },
    Rule {
        action: Action::LowerHand,
        message: Some("lower_hand"),
        actors: MODERATION,
        target: on(
            OnYourself::Becomes(Action::LowerOwnHand),
            [Applies, NoChange, NoChange, NoChange],
            Some(Condition::HandRaised),
        ),
    },
    Rule {
        action: Action::InviteToStage,
        message: Some("invite_to_stage"),
        actors: MODERATION,
        target: on(
            INVALID_TARGET,
            [
                Applies,
                OnTarget::Refused(Refusal::NotAListener),
                OnTarget::Refused(Refusal::NotAListener),
                OnTarget::Refused(Refusal::NotAListener),
            ],
            Some(Condition::NotInvited),
        ),
    },
    Rule {
        action: Action::CancelInvitation,
        message: Some("cancel_invitation"),
        actors: MODERATION,
        target: on(
            INVALID_TARGET,
            [Applies, NoChange, NoChange, NoChange],
            Some(Condition::Invited),
        ),
    },
    Rule {
        action: Action::AcceptInvitation,
        message: Some("accept_invitation"),
        actors: INVITED,
        target: None,
    },
    Rule {
        action: Action::DeclineInvitation,
        message: Some("decline_invitation"),
        actors: INVITED,
        target: None,
    },
    Rule {
        action: Action::JoinStage,
        message: Some("join_stage"),
        // Listeners come up only by accepting an invitation.
        actors: [
            NOT_PERMITTED,
            Allowed,
            Allowed,
            Allowed,
            NOT_PERMITTED,
            NOT_PERMITTED,
        ],
        target: None,
    },
    Rule {
        action: Action::LeaveStage,
        message: Some("leave_stage"),
        actors: ON_STAGE,
        target: None,
    },
    Rule {
        action: Action::MoveToAudience,
        message: Some("move_to_audience"),
        actors: MODERATION,
        target: on(INVALID_TARGET, [NoChange, Applies, Applies, NoChange], None),
    },
    Rule {
        action: Action::Mute,
        message: Some("mute"),
        actors: MODERATION,
        target: on(
            INVALID_TARGET,
            [
                OnTarget::Refused(Refusal::NotOnStage),
                Applies,
                Applies,
                OnTarget::Refused(Refusal::NotOnStage),
            ],
            Some(Condition::NotMuted),
        ),
    },
    Rule {
        action: Action::MuteSelf,
        message: Some("mute_self"),
        actors: ON_STAGE,
        target: None,
    },
    Rule {
        action: Action::Unmute,
        message: Some("unmute"),
        actors: ON_STAGE,
        target: None,
    },
    Rule {
        action: Action::Remove,
        message: Some("remove"),
        actors: MODERATION,
        target: on(INVALID_TARGET, [Applies; 4], None),
    },
    Rule {
        action: Action::Ban,
        message: Some("ban"),
        actors: MODERATION,
        target: on(INVALID_TARGET, [Applies; 4], None),
    },
    Rule {
        action: Action::Promote,
        message: Some("promote"),
        actors: MODERATION,
        target: on(INVALID_TARGET, [Applies, Applies, NoChange, NoChange], None),
    },
    Rule {
        action: Action::Demote,
        message: Some("demote"),
        actors: MODERATION,
        // Stepping down is the one moderation a moderator may aim at themselves.
        target: on(
            OnYourself::Allowed,
            [NoChange, NoChange, Applies, Applies],
            None,
        ),
    },
    Rule {
        action: Action::SetRole,
        message: Some("set_role"),
        actors: MODERATION,
        // What it does depends on the role asked for: it is carried out as the actions above.
        target: on(OnYourself::Allowed, [Applies; 4], None),
    },
    Rule {
        action: Action::EndRoom,
        message: Some("end_room"),
        actors: MODERATION,
        target: None,
    },
    Rule {
        action: Action::StartRecording,
        message: Some("start_recording"),
        // The server too: a room that records by default starts when it goes live.
        actors: [
            NOT_PERMITTED,
            NOT_PERMITTED,
            Allowed,
            Allowed,
            Allowed,
            Allowed,
        ],
        target: None,
    },
    Rule {
        action: Action::StopRecording,
        message: Some("stop_recording"),
        actors: MODERATION,
        target: None,
    },
    Rule {
        action: Action::LoseRecording,
        message: None,
        actors: SYSTEM,
        target: None,
    },
    Rule {
        action: Action::Leave,
        message: Some("leave"),
        actors: [
            Allowed,
            Allowed,
            Allowed,
            Allowed,
            NOT_PERMITTED,
            NOT_PERMITTED,
        ],
        target: None,
    },
    Rule {
        action: Action::Tick,
        message: None,
        actors: SYSTEM,
        target: None,
    },
    Rule {
        action: Action::ReportSpeakers,
        message: None,
        actors: SYSTEM,
        target: None,
    },
];

/// The rule for `action` (the table is in `Action` order; a test keeps it so).
pub fn rule(action: Action) -> &'static Rule {
    &PERMISSIONS[action as usize]
}

impl Serialize for Permit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Permit::Allowed => serializer.serialize_str("allowed"),
            Permit::Refused(refusal) => serializer.serialize_str(refusal.code()),
        }
    }
}

impl Serialize for OnYourself {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            OnYourself::Allowed => serializer.serialize_str("allowed"),
            OnYourself::Refused(refusal) => serializer.serialize_str(refusal.code()),
            OnYourself::Becomes(action) => action.serialize(serializer),
        }
    }
}

impl Serialize for OnTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            OnTarget::Applies => serializer.serialize_str("applies"),
            OnTarget::NoChange => serializer.serialize_str("no_change"),
            OnTarget::Refused(refusal) => serializer.serialize_str(refusal.code()),
        }
    }
}

fn name<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => unreachable!("names serialise as strings"),
    }
}

/// The whole table as JSON, for clients: `actions.<action>.actors.<standing>` is `allowed` or
/// the refusal's code; `target.<standing>` is `applies`, `no_change` or a refusal's code, and
/// `only_if` the target's state without which nothing changes.
pub fn role_table_json() -> Value {
    let mut actions = Map::new();
    for rule in PERMISSIONS {
        let mut entry = Map::new();
        entry.insert("message".into(), json!(rule.message));
        let actors: Map<String, Value> = Standing::ALL
            .iter()
            .map(|s| (name(s), json!(rule.for_actor(*s))))
            .collect();
        entry.insert("actors".into(), Value::Object(actors));
        if let Some(target) = &rule.target {
            let mut on: Map<String, Value> = Standing::PARTICIPANTS
                .iter()
                .zip(target.standing)
                .map(|(s, t)| (name(s), json!(t)))
                .collect();
            on.insert("yourself".into(), json!(target.yourself));
            entry.insert("target".into(), Value::Object(on));
            entry.insert("only_if".into(), json!(target.only_if));
        }
        actions.insert(name(rule.action), Value::Object(entry));
    }
    json!({
        "about": "Who may do what in a live room. Generated from server/src/room/permissions.rs \
                  by its tests; do not edit by hand.",
        "actions": actions,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_action_has_its_rule_in_its_place() {
        for (i, rule) in PERMISSIONS.iter().enumerate() {
            assert_eq!(rule.action as usize, i, "{:?} is out of place", rule.action);
        }
        assert_eq!(PERMISSIONS.len(), Action::ReportSpeakers as usize + 1);
    }

    /// The web client reads `client-web/permissions.json`; it must say what the server does.
    #[test]
    fn the_web_clients_copy_of_the_table_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-web/permissions.json");
        let wanted = serde_json::to_string_pretty(&role_table_json()).unwrap() + "\n";
        if std::env::var_os("STOA_WRITE_PERMISSIONS").is_some() {
            std::fs::write(&path, &wanted).expect("client-web/permissions.json is writable");
            return;
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == wanted,
            "client-web/permissions.json differs from the server's table \
             (server/src/room/permissions.rs); regenerate it with\n    \
             STOA_WRITE_PERMISSIONS=1 cargo test --release -p stoa --lib \
             the_web_clients_copy_of_the_table_is_current"
        );
    }
}
