//! Clips: a short piece of a room's mix (the last seconds of a live room, or a range of a
//! recording) as its own Ogg Opus file and its own link (`/c/<code>`). Whoever holds the link
//! hears the clip and nothing else. Plain data and what both store engines share; no SQL here.

use super::{ClipId, InviteCode, RecordingId, RoomId};

/// The secret part of a clip's link: 128 random bits, as an invite code, kept only as a hash.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClipCode(InviteCode);

impl ClipCode {
    pub fn generate() -> Self {
        ClipCode(InviteCode::generate())
    }

    /// Accepts a bare code or a whole link ending in `/c/<code>`.
    pub fn parse(input: &str) -> Option<Self> {
        InviteCode::parse(input).map(ClipCode)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn hash(&self) -> [u8; 32] {
        self.0.hash()
    }
}

/// A clip. Its file is `{id}.ogg` on `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clip {
    pub id: ClipId,
    pub room_id: RoomId,
    /// The recording it was cut from; `None` for a clip of a live room.
    pub recording_id: Option<RecordingId>,
    /// Where it starts in its recording (ms); 0 for a live clip.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub node: String,
    pub created_at_ms: i64,
    /// Who made it, as the audit log names them.
    pub created_by: String,
}

/// A clip whose file is written, for the store to remember.
#[derive(Clone, Debug)]
pub struct NewClip {
    pub id: ClipId,
    pub code: ClipCode,
    pub recording_id: Option<RecordingId>,
    pub start_ms: i64,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub node: String,
}

impl NewClip {
    /// The row the store keeps of it.
    pub(crate) fn clip(&self, room: &RoomId, created_by: String, now_ms: i64) -> Clip {
        Clip {
            id: self.id.clone(),
            room_id: room.clone(),
            recording_id: self.recording_id.clone(),
            start_ms: self.start_ms,
            duration_ms: self.duration_ms,
            size_bytes: self.size_bytes,
            node: self.node.clone(),
            created_at_ms: now_ms,
            created_by,
        }
    }

    pub(crate) fn audit_detail(&self) -> serde_json::Value {
        serde_json::json!({
            "recording_id": self.recording_id,
            "start_ms": self.start_ms,
            "duration_ms": self.duration_ms,
        })
    }
}
