//! The signaling protocol's messages as types: participants, the snapshot, `welcome`, and the
//! room events (`docs/protocol.md` in the Stoa repository describes each, with transcripts).
//! Parsing only: what the client sends is built where it is sent.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// A participant's id, `pt_…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct ParticipantId(String);

impl ParticipantId {
    /// Wraps an id as the server wrote it.
    pub fn new(id: impl Into<String>) -> Self {
        ParticipantId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ParticipantId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ParticipantId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// What someone may do in the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Hears the room; may raise a hand.
    Listener,
    /// On stage: may speak.
    Speaker,
    /// Runs the room; on stage or in the audience.
    Moderator,
    /// A role this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Role {
    /// As the protocol writes it: `listener`, `speaker`, `moderator`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Listener => "listener",
            Role::Speaker => "speaker",
            Role::Moderator => "moderator",
            Role::Unknown => "unknown",
        })
    }
}

/// Whether a participant's signaling socket is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Connected.
    Connected,
    /// The socket dropped; the place is held for the grace period.
    Reconnecting,
    /// A presence this client does not know.
    #[serde(other)]
    Unknown,
}

/// A participant as every message shows them: their whole state after the change an event is
/// about.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Participant {
    /// Their id.
    pub id: ParticipantId,
    /// The name they gave when redeeming the invite.
    pub display_name: String,
    /// Their role.
    pub role: Role,
    /// On the stage (speakers always, listeners never, moderators either).
    pub on_stage: bool,
    /// A raised hand (only listeners have one).
    pub hand_raised: bool,
    /// Muted (only someone on stage is).
    pub muted: bool,
    /// Heard speaking now.
    pub speaking: bool,
    /// Whether their socket is connected.
    pub presence: Presence,
}

/// One page of the audience (moderators' snapshots, `list_audience`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AudiencePage {
    /// People not on stage, in id order.
    pub participants: Vec<Participant>,
    /// Where the next page starts, or `None` on the last page.
    pub next: Option<ParticipantId>,
}

/// The room as one participant may see it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    /// The room's id, `rm_…`.
    pub room: String,
    /// This client's own participant.
    pub you: Participant,
    /// A moderator invited this client to the stage and it has not answered.
    pub invitation_pending: bool,
    /// Who is on stage, in the order they came up.
    pub stage: Vec<Participant>,
    /// Listeners with a raised hand, in the order the hands went up.
    pub raised_hands: Vec<Participant>,
    /// Who is speaking now, loudest first.
    pub active_speakers: Vec<ParticipantId>,
    /// Everyone not on stage.
    pub audience_count: u64,
    /// Moderators only: the first page of the audience.
    #[serde(default)]
    pub audience: Option<AudiencePage>,
    /// Moderators only: listeners invited to the stage who have not answered.
    #[serde(default)]
    pub pending_invitations: Option<Vec<ParticipantId>>,
}

/// The server's answer to `join` and `resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The room's title.
    pub room_title: String,
    /// The number of the latest room event when this client came in.
    pub seq: u64,
    /// The credential to take this place back after a dropped connection.
    pub resume_token: String,
    /// How long the place is held after the socket drops.
    pub resume_grace_secs: u64,
    /// How many audio sections a media offer should have.
    pub slots: usize,
    /// The server has no media connection of this client's (the room moved to another node
    /// and this client took its place back there): a new one must be made.
    pub reconnect_media: bool,
    /// The room as this client may see it.
    pub snapshot: Snapshot,
}

impl Welcome {
    /// Reads a `welcome` message.
    pub fn parse(message: &Value) -> Result<Welcome, String> {
        #[derive(Deserialize)]
        struct Media {
            slots: usize,
            #[serde(default)]
            reconnect: bool,
        }
        #[derive(Deserialize)]
        struct Wire {
            room_title: String,
            seq: u64,
            resume_token: String,
            resume_grace_secs: u64,
            media: Media,
            snapshot: Snapshot,
        }
        let wire = Wire::deserialize(message).map_err(|e| format!("welcome: {e}: {message}"))?;
        Ok(Welcome {
            room_title: wire.room_title,
            seq: wire.seq,
            resume_token: wire.resume_token,
            resume_grace_secs: wire.resume_grace_secs,
            slots: wire.media.slots,
            reconnect_media: wire.media.reconnect,
            snapshot: wire.snapshot,
        })
    }
}

/// Who did something: a participant, or the operator (the REST API with the operator key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum By {
    /// The operator.
    Operator,
    /// A participant of the room.
    Participant(ParticipantId),
}

impl<'de> Deserialize<'de> for By {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let by = String::deserialize(deserializer)?;
        Ok(if by == "operator" {
            By::Operator
        } else {
            By::Participant(ParticipantId(by))
        })
    }
}

/// Something that happened in the room, or to this client's connection to it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Someone came in (everyone sees newcomers on stage; moderators see everyone).
    ParticipantJoined(Participant),
    /// Someone left: `left`, `removed`, `banned` or `timed_out`.
    ParticipantLeft {
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: String,
    },
    /// Someone's socket dropped or came back.
    PresenceChanged(Participant),
    /// A listener raised a hand.
    HandRaised(Participant),
    /// A hand went down.
    HandLowered {
        /// Whose.
        participant: Participant,
        /// The listener, or the moderator who lowered it.
        by: By,
    },
    /// A moderator invited a listener to the stage (seen by moderators and that listener).
    InvitedToStage {
        /// The listener.
        participant: ParticipantId,
        /// The moderator.
        by: By,
    },
    /// An invitation was withdrawn.
    InvitationCancelled {
        /// The listener.
        participant: ParticipantId,
        /// The moderator.
        by: By,
    },
    /// The invited listener said no.
    InvitationDeclined {
        /// The listener.
        participant: ParticipantId,
    },
    /// Someone came on stage.
    JoinedStage(Participant),
    /// Someone left the stage (a speaker becomes a listener).
    LeftStage {
        /// Who, as they are now.
        participant: Participant,
        /// They themselves, or the moderator who moved them.
        by: By,
    },
    /// Someone on stage was muted.
    Muted {
        /// Who.
        participant: Participant,
        /// A moderator, the operator, or they themselves.
        by: By,
    },
    /// Someone unmuted themselves.
    Unmuted(Participant),
    /// Someone's role changed.
    RoleChanged {
        /// Who, as they are now.
        participant: Participant,
        /// Who changed it.
        by: By,
    },
    /// Who is speaking now, loudest first.
    ActiveSpeakers(Vec<ParticipantId>),
    /// The room ended for everyone; the socket closes next.
    RoomEnded {
        /// Who ended it.
        by: By,
    },
    /// How many people are not on stage.
    AudienceCount(u64),
    /// What this client may see changed (its role went to or from moderator): the whole room
    /// anew.
    Snapshot(Box<Snapshot>),
    /// The signaling connection dropped; the client is resuming (see
    /// [`Room`](crate::Room)).
    Reconnecting,
    /// The client took its place back; the room as it is now (what happened meanwhile is in
    /// it, not in events).
    Resumed(Box<Snapshot>),
    /// The server no longer had this client's media connection (the room moved to another
    /// node, or the place was taken again after its grace period): a new one is connected,
    /// and [`Listener`](crate::Listener)s hear it. A microphone that was playing plays on if
    /// its owner is still on stage.
    MediaReconnected,
    /// A new media connection could not be made (why); the room goes on without audio.
    MediaLost(String),
    /// Events were dropped because they were not read fast enough; the view is current.
    Missed(u64),
    /// The connection ended for good (`left`, `removed`, `banned`, `room_ended`, `replaced`,
    /// `resume_expired`, …).
    Closed {
        /// The WebSocket close code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// A message of a type this client does not know (a newer server).
    Unknown(Value),
}

impl Event {
    /// The event a server message carries, or `None` for answers (`ok`, `error`, `pong`,
    /// `media_answer`, `audience_page`), `welcome` and `closed`, which are not events.
    pub fn parse(message: &Value) -> Option<Event> {
        #[derive(Deserialize)]
        struct About<P> {
            participant: P,
        }
        #[derive(Deserialize)]
        struct AboutBy<P> {
            participant: P,
            by: By,
        }
        #[derive(Deserialize)]
        struct Left {
            participant: ParticipantId,
            reason: String,
        }
        #[derive(Deserialize)]
        struct Speakers {
            speakers: Vec<ParticipantId>,
        }
        #[derive(Deserialize)]
        struct ByOnly {
            by: By,
        }
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        #[derive(Deserialize)]
        struct Whole {
            snapshot: Snapshot,
        }
        fn read<T: for<'de> Deserialize<'de>>(message: &Value) -> Result<T, serde_json::Error> {
            T::deserialize(message)
        }
        let kind = message["type"].as_str()?;
        let event = match kind {
            "ok" | "error" | "pong" | "media_answer" | "audience_page" | "welcome" | "closed" => {
                return None;
            }
            "participant_joined" => {
                read::<About<Participant>>(message).map(|a| Event::ParticipantJoined(a.participant))
            }
            "participant_left" => read::<Left>(message).map(|l| Event::ParticipantLeft {
                participant: l.participant,
                reason: l.reason,
            }),
            "presence_changed" => {
                read::<About<Participant>>(message).map(|a| Event::PresenceChanged(a.participant))
            }
            "hand_raised" => {
                read::<About<Participant>>(message).map(|a| Event::HandRaised(a.participant))
            }
            "hand_lowered" => read::<AboutBy<Participant>>(message).map(|a| Event::HandLowered {
                participant: a.participant,
                by: a.by,
            }),
            "invited_to_stage" => {
                read::<AboutBy<ParticipantId>>(message).map(|a| Event::InvitedToStage {
                    participant: a.participant,
                    by: a.by,
                })
            }
            "invitation_cancelled" => {
                read::<AboutBy<ParticipantId>>(message).map(|a| Event::InvitationCancelled {
                    participant: a.participant,
                    by: a.by,
                })
            }
            "invitation_declined" => {
                read::<About<ParticipantId>>(message).map(|a| Event::InvitationDeclined {
                    participant: a.participant,
                })
            }
            "joined_stage" => {
                read::<About<Participant>>(message).map(|a| Event::JoinedStage(a.participant))
            }
            "left_stage" => read::<AboutBy<Participant>>(message).map(|a| Event::LeftStage {
                participant: a.participant,
                by: a.by,
            }),
            "muted" => read::<AboutBy<Participant>>(message).map(|a| Event::Muted {
                participant: a.participant,
                by: a.by,
            }),
            "unmuted" => read::<About<Participant>>(message).map(|a| Event::Unmuted(a.participant)),
            "role_changed" => read::<AboutBy<Participant>>(message).map(|a| Event::RoleChanged {
                participant: a.participant,
                by: a.by,
            }),
            "active_speakers" => {
                read::<Speakers>(message).map(|s| Event::ActiveSpeakers(s.speakers))
            }
            "room_ended" => read::<ByOnly>(message).map(|b| Event::RoomEnded { by: b.by }),
            "audience_count" => read::<Count>(message).map(|c| Event::AudienceCount(c.count)),
            "snapshot" => read::<Whole>(message).map(|w| Event::Snapshot(Box::new(w.snapshot))),
            _ => Ok(Event::Unknown(message.clone())),
        };
        // A known type in a shape this client cannot read is passed on as it came.
        Some(event.unwrap_or_else(|_| Event::Unknown(message.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lee(hand: bool) -> Value {
        json!({"display_name":"Lee","hand_raised":hand,"id":"pt_iTNBkiZNpSv37e_v","muted":false,
               "on_stage":false,"presence":"connected","role":"listener","speaking":false})
    }

    #[test]
    fn events_read_as_the_protocol_documents_them() {
        let lee_id = ParticipantId::new("pt_iTNBkiZNpSv37e_v");
        let ada = By::Participant(ParticipantId::new("pt_cvSdqjTGlBRCPizn"));
        let cases = [
            (
                json!({"participant":lee(true),"seq":5,"type":"hand_raised"}),
                Event::HandRaised(serde_json::from_value(lee(true)).unwrap()),
            ),
            (
                json!({"by":"pt_cvSdqjTGlBRCPizn","participant":lee(false),"seq":19,"type":"hand_lowered"}),
                Event::HandLowered {
                    participant: serde_json::from_value(lee(false)).unwrap(),
                    by: ada.clone(),
                },
            ),
            (
                json!({"by":"pt_cvSdqjTGlBRCPizn","participant":"pt_iTNBkiZNpSv37e_v","seq":6,"type":"invited_to_stage"}),
                Event::InvitedToStage {
                    participant: lee_id.clone(),
                    by: ada,
                },
            ),
            (
                json!({"participant":"pt_iTNBkiZNpSv37e_v","reason":"timed_out","seq":8,"type":"participant_left"}),
                Event::ParticipantLeft {
                    participant: lee_id.clone(),
                    reason: "timed_out".into(),
                },
            ),
            (
                json!({"seq":9,"speakers":["pt_iTNBkiZNpSv37e_v"],"type":"active_speakers"}),
                Event::ActiveSpeakers(vec![lee_id]),
            ),
            (
                json!({"by":"operator","seq":8,"type":"room_ended"}),
                Event::RoomEnded { by: By::Operator },
            ),
            (
                json!({"type":"audience_count","count":2}),
                Event::AudienceCount(2),
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(Event::parse(&message), Some(expected), "{message}");
        }
        for answer in ["ok", "error", "pong", "media_answer", "closed"] {
            assert_eq!(Event::parse(&json!({ "type": answer, "id": 1 })), None);
        }
        // Unknown types and known types in an unknown shape are passed on, not lost.
        let novel = json!({"type":"slot_speakers","slots":[]});
        assert_eq!(Event::parse(&novel), Some(Event::Unknown(novel.clone())));
        let odd = json!({"type":"muted","participant":7});
        assert_eq!(Event::parse(&odd), Some(Event::Unknown(odd.clone())));
    }

    #[test]
    fn a_welcome_reads_with_and_without_the_moderator_fields() {
        let welcome = json!({
            "type":"welcome","id":1,"room_title":"Friday jam","seq":3,"resume_token":"rs1.x",
            "resume_grace_secs":20,"media":{"slots":3},
            "snapshot":{"room":"rm_gZaaXMHO84eMsErS","you":lee(false),"invitation_pending":false,
                        "stage":[],"raised_hands":[],"active_speakers":[],"audience_count":1}
        });
        let read = Welcome::parse(&welcome).unwrap();
        assert_eq!((read.slots, read.seq, read.resume_grace_secs), (3, 3, 20));
        assert_eq!(read.snapshot.you.role, Role::Listener);
        assert_eq!(read.snapshot.audience, None);
        let mut moderator = welcome.clone();
        moderator["snapshot"]["audience"] = json!({"participants":[lee(false)],"next":null});
        moderator["snapshot"]["pending_invitations"] = json!([]);
        let read = Welcome::parse(&moderator).unwrap();
        assert_eq!(read.snapshot.audience.unwrap().participants.len(), 1);
        assert!(Welcome::parse(&json!({"type":"welcome"})).is_err());
    }
}
