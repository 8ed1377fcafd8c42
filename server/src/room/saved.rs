//! A live room's state as another node can take it back: the stage in order, raised hands in
//! order, mutes, pending invitations, moderators and live bans, as compact versioned JSON.
//! Pure: `RoomState` writes and reads it; where it is kept (Redis) is the cluster's business.

use serde::{Deserialize, Serialize};

use crate::control::{Delivery, ParticipantId, Role, RoomId};

/// The format's version; a saved room of another version is refused.
pub const SAVED_VERSION: u32 = 1;
/// People a saved room holds at most: the stage, moderators and invitations first, then the
/// raised hands in order. Past it the latest hands are left out (they come back lowered).
pub const MAX_SAVED_PARTICIPANTS: usize = 2_000;
/// Live bans a saved room holds at most (the store has them all; these are the latest).
pub const MAX_SAVED_BANS: usize = 1_000;

/// The part of a room worth carrying to another node. A listener with nothing to keep (not on
/// stage, no hand, no invitation) is left out: they come back by joining again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRoom {
    pub v: u32,
    pub room: RoomId,
    /// When it was taken, on the saving node's clock.
    pub at: u64,
    /// In the order they are to be admitted again: the stage in its order, the others, then
    /// the raised hands in the order they went up.
    pub people: Vec<SavedParticipant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub banned: Vec<ParticipantId>,
}

/// One participant, with short field names: a room with a long queue of hands is saved often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedParticipant {
    pub id: ParticipantId,
    /// Display name.
    pub n: String,
    /// Role.
    pub r: Role,
    /// On stage.
    #[serde(default, skip_serializing_if = "is_false")]
    pub s: bool,
    /// Hand raised.
    #[serde(default, skip_serializing_if = "is_false")]
    pub h: bool,
    /// Muted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub m: bool,
    /// Invited to the stage, not answered yet.
    #[serde(default, skip_serializing_if = "is_false")]
    pub i: bool,
    /// How they hear the room (absent: WebRTC).
    #[serde(default, skip_serializing_if = "Delivery::is_webrtc")]
    pub d: Delivery,
    /// The nonce of the one resume token that takes this place back.
    pub k: u64,
    /// Joined at (ms).
    pub j: u64,
    /// When the hand last went up (ms), for the cooldown between raises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a saved room was not taken back. The room then starts from the store, as it would
/// without one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SavedRefusal {
    #[error("not valid saved-room JSON: {0}")]
    Unparsable(String),
    #[error("format version {0}, this node reads {SAVED_VERSION}")]
    WrongVersion(u32),
    #[error("saved for room {0}")]
    OtherRoom(String),
    #[error("{0} people or {1} bans, more than a saved room holds")]
    TooMany(usize, usize),
    #[error("participant {0}: {1}")]
    Inconsistent(String, &'static str),
}

impl SavedRefusal {
    /// A stable word for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SavedRefusal::Unparsable(_) => "unparsable",
            SavedRefusal::WrongVersion(_) => "wrong_version",
            SavedRefusal::OtherRoom(_) => "other_room",
            SavedRefusal::TooMany(..) => "too_many",
            SavedRefusal::Inconsistent(..) => "inconsistent",
        }
    }
}

impl SavedRoom {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a saved room serialises")
    }

    /// Reads a saved room for `room`, checking everything a `RoomState` relies on: nothing
    /// read here can break the room's invariants or panic it.
    pub fn parse(json: &str, room: &RoomId) -> Result<SavedRoom, SavedRefusal> {
        // The version first, so a newer format is named as such rather than as unparsable.
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version =
            serde_json::from_str(json).map_err(|e| SavedRefusal::Unparsable(e.to_string()))?;
        if version.v != SAVED_VERSION {
            return Err(SavedRefusal::WrongVersion(version.v));
        }
        let saved: SavedRoom =
            serde_json::from_str(json).map_err(|e| SavedRefusal::Unparsable(e.to_string()))?;
        if &saved.room != room {
            return Err(SavedRefusal::OtherRoom(saved.room.to_string()));
        }
        if saved.people.len() > MAX_SAVED_PARTICIPANTS || saved.banned.len() > MAX_SAVED_BANS {
            return Err(SavedRefusal::TooMany(
                saved.people.len(),
                saved.banned.len(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &saved.people {
            let wrong = |why| Err(SavedRefusal::Inconsistent(p.id.to_string(), why));
            if !seen.insert(&p.id) {
                return wrong("listed twice");
            }
            if crate::control::validate::display_name(&p.n).is_err() {
                return wrong("not a valid display name");
            }
            if saved.banned.contains(&p.id) {
                return wrong("banned");
            }
            match p.r {
                Role::Speaker if !p.s => return wrong("a speaker off stage"),
                Role::Listener if p.s => return wrong("a listener on stage"),
                _ => {}
            }
            if (p.h || p.i) && (p.r != Role::Listener) {
                return wrong("a hand or an invitation that is not a listener's");
            }
            if p.m && !p.s {
                return wrong("muted off stage");
            }
            if p.d == Delivery::Broadcast && p.r != Role::Listener {
                return wrong("on the broadcast but may speak");
            }
        }
        Ok(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::parse("rm_SavedRoom0000000").unwrap()
    }

    fn person(name: &str, r: Role) -> SavedParticipant {
        SavedParticipant {
            id: ParticipantId::parse(&format!("pt_{name:0<16}")).unwrap(),
            n: name.into(),
            r,
            s: r != Role::Listener,
            h: false,
            m: false,
            i: false,
            d: Delivery::Webrtc,
            k: 7,
            j: 1,
            ha: None,
        }
    }

    fn saved(people: Vec<SavedParticipant>) -> String {
        SavedRoom {
            v: SAVED_VERSION,
            room: room(),
            at: 5,
            people,
            banned: Vec::new(),
        }
        .to_json()
    }

    #[test]
    fn a_saved_room_reads_back_and_refuses_what_would_break_the_room() {
        let ok = saved(vec![
            person("Ada", Role::Moderator),
            person("Lee", Role::Listener),
        ]);
        assert_eq!(SavedRoom::parse(&ok, &room()).unwrap().people.len(), 2);
        // The short shape: defaults left out.
        assert!(
            ok.contains(r#""n":"Lee","r":"listener","k":7,"j":1}"#),
            "{ok}"
        );

        let other = RoomId::parse("rm_AnotherRoom00000").unwrap();
        let refused = |json: &str| SavedRoom::parse(json, &room()).unwrap_err().code();
        assert_eq!(
            SavedRoom::parse(&ok, &other).unwrap_err().code(),
            "other_room"
        );
        assert_eq!(refused("garbage"), "unparsable");
        assert_eq!(refused(r#"{"v":2,"anything":true}"#), "wrong_version");
        assert_eq!(
            refused(&ok.replace(r#""v":1"#, r#""v":1,"x":0"#)),
            "unparsable"
        );
        let mut offstage = person("Sam", Role::Speaker);
        offstage.s = false;
        let mut hand = person("Mo", Role::Moderator);
        hand.h = true;
        let mut muted = person("Lee", Role::Listener);
        muted.m = true;
        let mut nameless = person("Bo", Role::Listener);
        nameless.n = String::new();
        for bad in [
            vec![offstage],
            vec![hand],
            vec![muted],
            vec![nameless],
            vec![person("Ada", Role::Speaker), person("Ada", Role::Speaker)],
        ] {
            assert_eq!(refused(&saved(bad.clone())), "inconsistent", "{bad:?}");
        }
        let many = vec![person("Lee", Role::Listener); MAX_SAVED_PARTICIPANTS + 1];
        assert_eq!(refused(&saved(many)), "too_many");
    }
}
