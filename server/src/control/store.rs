//! The one way into the durable facts: `Store`, over one of two engines — SQLite embedded in
//! the process (the default, one node) or a PostgreSQL server that many nodes share. Both give
//! the same answers with the same transactional guarantees; no HTTP here.

mod postgres;
mod rules;
mod sqlite;
#[cfg(test)]
mod tests;

use std::path::Path;

use super::model::{CreatedInvite, FinishedRecording, PageRequest, Standing};
use super::{
    Actor, AuditEvent, ControlError, IdentitySecret, Invite, InviteCode, InviteId, NewInvite,
    NewRoom, Page, ParticipantId, Recording, RecordingId, Redemption, Role, Room, RoomId,
};

/// One schema version in both dialects.
struct Migration {
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every schema version, oldest first. A new version is one more line here and one file of the
/// same number in each folder (`migrations/` for SQLite, `migrations/postgres/`).
const MIGRATIONS: &[Migration] = &[
    Migration {
        sqlite: include_str!("migrations/0001_init.sql"),
        postgres: include_str!("migrations/postgres/0001_init.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0002_identity_standing.sql"),
        postgres: include_str!("migrations/postgres/0002_identity_standing.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0003_token_generation.sql"),
        postgres: include_str!("migrations/postgres/0003_token_generation.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0004_invite_delivery.sql"),
        postgres: include_str!("migrations/postgres/0004_invite_delivery.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0005_room_webrtc_audience_cap.sql"),
        postgres: include_str!("migrations/postgres/0005_room_webrtc_audience_cap.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0006_recordings.sql"),
        postgres: include_str!("migrations/postgres/0006_recordings.sql"),
    },
];

/// Handle to the control-plane database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

type Result<T> = std::result::Result<T, ControlError>;

/// Calls the same method on whichever engine this store has.
macro_rules! on_engine {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.engine {
            Engine::Sqlite(engine) => engine.$method($($arg),*).await,
            Engine::Postgres(engine) => engine.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (creating if needed) an SQLite database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store {
            engine: Engine::Sqlite(sqlite::SqliteStore::open(path)?),
        })
    }

    /// A private in-memory SQLite database, for unit tests.
    pub fn open_in_memory() -> Result<Store> {
        Ok(Store {
            engine: Engine::Sqlite(sqlite::SqliteStore::open_in_memory()?),
        })
    }

    /// Connects to PostgreSQL at `url` (`postgres://user:password@host:port/database`) with a
    /// pool of at most `max_connections`, and brings the schema up to date (one node at a
    /// time). Fails if the server cannot be reached or refuses the credentials.
    pub async fn connect_postgres(url: &str, max_connections: usize) -> Result<Store> {
        Ok(Store {
            engine: Engine::Postgres(postgres::PgStore::connect(url, max_connections).await?),
        })
    }

    /// `"sqlite"` or `"postgres"`, for logs.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    pub async fn create_room(&self, new: NewRoom, actor: Actor, now_ms: i64) -> Result<Room> {
        on_engine!(self.create_room(new, actor, now_ms))
    }

    pub async fn room(&self, id: RoomId) -> Result<Room> {
        on_engine!(self.room(id))
    }

    pub async fn list_rooms(&self, page: PageRequest) -> Result<Page<Room>> {
        on_engine!(self.list_rooms(page))
    }

    /// Marks the room ended; its invites stop working. Refuses a room already ended. With
    /// `audit_detail`, its `room.ended` line is written in the same transaction, so an end is
    /// recorded exactly when it happens (a live room writes its own line).
    pub async fn end_room(
        &self,
        id: RoomId,
        actor: Actor,
        now_ms: i64,
        audit_detail: Option<serde_json::Value>,
    ) -> Result<Room> {
        on_engine!(self.end_room(id, actor, now_ms, audit_detail))
    }

    pub async fn create_invite(
        &self,
        room: RoomId,
        new: NewInvite,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedInvite> {
        on_engine!(self.create_invite(room, new, actor, now_ms))
    }

    pub async fn list_invites(&self, room: RoomId, page: PageRequest) -> Result<Page<Invite>> {
        on_engine!(self.list_invites(room, page))
    }

    /// Revokes an invite of this room. Revoking twice is harmless and logged once.
    pub async fn revoke_invite(
        &self,
        room: RoomId,
        invite: InviteId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Invite> {
        on_engine!(self.revoke_invite(room, invite, actor, now_ms))
    }

    /// Finds an invite by its code, for moderators who kept the link rather than the id.
    pub async fn invite_id_for_code(&self, code: InviteCode) -> Result<InviteId> {
        on_engine!(self.invite_id_for_code(code))
    }

    /// What an invite link leads to, checked as redeeming would check it but without using it:
    /// the room and the invite. Unknown and revoked codes fail alike (`InviteInvalid`).
    pub async fn preview_invite(&self, code: InviteCode, now_ms: i64) -> Result<(Room, Invite)> {
        on_engine!(self.preview_invite(code, now_ms))
    }

    /// Redeems an invite: checks it, refuses banned identities, counts the use atomically and
    /// records the identity, all in one transaction. Concurrent redemptions never count more
    /// than `max_uses`, on either engine.
    pub async fn redeem(
        &self,
        code: InviteCode,
        display_name: String,
        identity: Option<IdentitySecret>,
        now_ms: i64,
    ) -> Result<Redemption> {
        on_engine!(self.redeem(code, display_name, identity, now_ms))
    }

    /// Bans a participant identity from a room; optionally revokes the invite they used.
    /// `record` writes the ban's audit line (a live room writes its own); a revoked invite is
    /// always recorded.
    pub async fn ban(
        &self,
        room: RoomId,
        participant: ParticipantId,
        revoke_invite: bool,
        actor: Actor,
        now_ms: i64,
        record: bool,
    ) -> Result<()> {
        on_engine!(self.ban(room, participant, revoke_invite, actor, now_ms, record))
    }

    /// Where an identity stands in its room now: banned, its live role, its last removal.
    pub async fn standing(&self, room: RoomId, participant: ParticipantId) -> Result<Standing> {
        on_engine!(self.standing(room, participant))
    }

    /// Records a role a live room gave this identity, at its current token generation: every
    /// session token issued so far now acts with this role.
    pub async fn set_live_role(&self, participant: ParticipantId, role: Role) -> Result<()> {
        on_engine!(self.set_live_role(participant, role))
    }

    /// Records that a live room removed this identity.
    pub async fn mark_removed(&self, participant: ParticipantId, now_ms: i64) -> Result<()> {
        on_engine!(self.mark_removed(participant, now_ms))
    }

    pub async fn is_banned(&self, room: RoomId, participant: ParticipantId) -> Result<bool> {
        on_engine!(self.is_banned(room, participant))
    }

    /// Appends to a room's audit log (moderation done in the live room lands here).
    pub async fn record_audit(
        &self,
        room: RoomId,
        actor: Actor,
        action: String,
        target: Option<String>,
        detail: serde_json::Value,
        now_ms: i64,
    ) -> Result<()> {
        on_engine!(self.record_audit(room, actor, action, target, detail, now_ms))
    }

    pub async fn list_events(&self, room: RoomId, page: PageRequest) -> Result<Page<AuditEvent>> {
        on_engine!(self.list_events(room, page))
    }

    /// A new recording of a live room, on `node`, in state `recording`. Refuses an ended room,
    /// and a room being recorded already (`AlreadyRecording`).
    pub async fn create_recording(
        &self,
        room: RoomId,
        node: String,
        now_ms: i64,
    ) -> Result<Recording> {
        on_engine!(self.create_recording(room, node, now_ms))
    }

    /// Closes a recording that is still `recording`; one already closed is left alone
    /// (`false`).
    pub async fn finish_recording(
        &self,
        id: RecordingId,
        finished: FinishedRecording,
    ) -> Result<bool> {
        on_engine!(self.finish_recording(id, finished))
    }

    /// One recording of a room (`RecordingNotFound` for another room's).
    pub async fn recording(&self, room: RoomId, id: RecordingId) -> Result<Recording> {
        on_engine!(self.recording(room, id))
    }

    /// A room's recordings, oldest first.
    pub async fn list_recordings(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<Recording>> {
        on_engine!(self.list_recordings(room, page))
    }

    /// Recordings `node` left in state `recording` (it was killed while writing them).
    pub async fn unfinished_recordings(&self, node: String) -> Result<Vec<Recording>> {
        on_engine!(self.unfinished_recordings(node))
    }

    /// At start: finds or makes the demo room and gives it a fresh moderator link, revoking
    /// the link printed at the previous start. Returns `None` if the demo room was ended.
    pub async fn startup_link(&self, now_ms: i64) -> Result<Option<(Room, CreatedInvite)>> {
        on_engine!(self.startup_link(now_ms))
    }

    /// A trivial query, so liveness means the database answers.
    pub async fn ping(&self) -> Result<()> {
        on_engine!(self.ping())
    }

    /// SQLite's `PRAGMA integrity_check`; PostgreSQL checks its own pages and answers `ok`
    /// whenever it answers. For health checks and the durability tests.
    pub async fn integrity_check(&self) -> Result<String> {
        on_engine!(self.integrity_check())
    }
}
