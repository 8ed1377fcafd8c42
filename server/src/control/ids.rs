//! Identifiers and roles shared by every layer: newtypes so a room id can never be passed
//! where a participant id is expected. Generation uses the OS random generator; no I/O here.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Random bytes from the operating system, encoded URL-safe without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random generator is unavailable");
    URL_SAFE_NO_PAD.encode(&buf)
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String)]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s).ok_or_else(|| format!("not a valid {} id", $prefix))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id with 96 bits of OS randomness.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, random_token(12)))
            }

            /// Accepts only strings that look like ids of this kind (prefix + 16 URL-safe chars).
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                let ok = rest.len() == 16
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                ok.then(|| Self(s.to_owned()))
            }

            /// For values read back from our own store.
            pub(crate) fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A room, e.g. `rm_3kPq0s9XvB1c2d3e`.
    RoomId,
    "rm_"
);
prefixed_id!(
    /// A participant identity within one room; stable across visits when the browser keeps
    /// its identity secret.
    ParticipantId,
    "pt_"
);
prefixed_id!(
    /// An invite, as moderators manage it (the secret code is never stored).
    InviteId,
    "inv_"
);
prefixed_id!(
    /// A replay link, as moderators manage it (its secret code is never stored).
    ReplayLinkId,
    "rpl_"
);
prefixed_id!(
    /// A recording of a room's mix, e.g. `rc_3kPq0s9XvB1c2d3e`; also its file's name.
    RecordingId,
    "rc_"
);

prefixed_id!(
    /// A clip of a room's mix, e.g. `cl_3kPq0s9XvB1c2d3e`; also its file's name.
    ClipId,
    "cl_"
);

prefixed_id!(
    /// A listen link (a room's public broadcast), as moderators manage it; its code is never
    /// stored.
    ListenLinkId,
    "ll_"
);

/// What a participant may do in a room; see the role table in the product brief. Ordered by
/// reach: listener < speaker < moderator.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Listener,
    Speaker,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Listener => "listener",
            Role::Speaker => "speaker",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "listener" => Some(Role::Listener),
            "speaker" => Some(Role::Speaker),
            "moderator" => Some(Role::Moderator),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a participant hears the room: over WebRTC, ready to be brought on stage within a
/// second, or on the broadcast tier (the stage mixed once per room, LL-HLS through any HTTP
/// cache, about two seconds behind). Only a listener hears the broadcast: whoever may speak is
/// on WebRTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    #[default]
    Webrtc,
    Broadcast,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Webrtc => "webrtc",
            Delivery::Broadcast => "broadcast",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webrtc" => Some(Delivery::Webrtc),
            "broadcast" => Some(Delivery::Broadcast),
            _ => None,
        }
    }

    pub fn is_webrtc(&self) -> bool {
        *self == Delivery::Webrtc
    }

    /// The delivery someone with `role` gets when this one was asked for: the broadcast is
    /// for listeners only.
    pub fn for_role(self, role: Role) -> Delivery {
        if role == Role::Listener {
            self
        } else {
            Delivery::Webrtc
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_foreign_shapes() {
        let room = RoomId::generate();
        assert_eq!(RoomId::parse(room.as_str()), Some(room.clone()));
        assert_eq!(ParticipantId::parse(room.as_str()), None);
        assert_eq!(RoomId::parse("rm_short"), None);
        assert_eq!(RoomId::parse("rm_0123456789abcde!"), None);
        assert_eq!(RoomId::parse(""), None);
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token(16), random_token(16));
        assert_eq!(random_token(16).len(), 22);
    }
}
