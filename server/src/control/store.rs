//! The one way into the durable facts: `Store`, over one of two engines — SQLite embedded in
//! the process (the default, one node) or a PostgreSQL server that many nodes share. Both give
//! the same answers with the same transactional guarantees; no HTTP here.

mod postgres;
mod rules;
mod sqlite;
#[cfg(test)]
mod tests;

use std::path::Path;

use tokio::sync::watch;

use super::model::{CreatedInvite, FinishedRecording, PageRequest, Standing};
use super::{
    Actor, AuditEvent, ControlError, IdentitySecret, Invite, InviteCode, InviteId, NewInvite,
    NewRoom, Page, ParticipantId, Recording, RecordingId, Redemption, Room, RoomId, RoomWrite,
};
use super::{ClaimedWebhook, DeliveryState, NewWebhook, WebhookAttempt, WebhookDelivery};
use super::{Clip, ClipCode, ClipId, NewClip, RecordingPolicyChange};
use super::{CreatedListenLink, ListenCode, ListenLink, ListenLinkId, NewListenLink};
use super::{CreatedReplayLink, NewReplayLink, ReplayLink, ReplayLinkId};
use super::{RoomWebhook, RoomWebhookChange, WebhookLane};

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
    Migration {
        sqlite: include_str!("migrations/0007_webhooks.sql"),
        postgres: include_str!("migrations/postgres/0007_webhooks.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0008_replay_links.sql"),
        postgres: include_str!("migrations/postgres/0008_replay_links.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0009_listen_links.sql"),
        postgres: include_str!("migrations/postgres/0009_listen_links.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0010_clips.sql"),
        postgres: include_str!("migrations/postgres/0010_clips.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0011_room_recording_policy.sql"),
        postgres: include_str!("migrations/postgres/0011_room_recording_policy.sql"),
    },
    Migration {
        sqlite: include_str!("migrations/0012_room_webhooks.sql"),
        postgres: include_str!("migrations/postgres/0012_room_webhooks.sql"),
    },
];

/// Handle to the control-plane database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
    /// Bumped after every committed write that may have added rows to the webhook outbox,
    /// so this node's sender looks at it then rather than polling (see `watch_outbox`).
    outbox: watch::Sender<u64>,
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
            Engine::Postgres(engine) => engine.bounded(engine.$method($($arg),*)).await,
        }
    };
}

impl Store {
    fn new(engine: Engine) -> Store {
        Store {
            engine,
            outbox: watch::channel(0).0,
        }
    }

    /// Changes each time a write on this node has committed webhook rows (and possibly at
    /// other times): the sender waits on it instead of polling an outbox that is usually
    /// empty. Rows written by other nodes are not seen here; their own senders take them.
    pub fn watch_outbox(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    /// `result` of a write that carried `webhooks` rows: on success, the outbox's watchers
    /// are told (after the commit, so what they read has the rows).
    fn wrote_webhooks<T>(&self, result: Result<T>, webhooks: bool) -> Result<T> {
        if result.is_ok() && webhooks {
            self.outbox.send_modify(|n| *n = n.wrapping_add(1));
        }
        result
    }

    /// Opens (creating if needed) an SQLite database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store::new(Engine::Sqlite(sqlite::SqliteStore::open(path)?)))
    }

    /// A private in-memory SQLite database, for unit tests.
    pub fn open_in_memory() -> Result<Store> {
        Ok(Store::new(Engine::Sqlite(
            sqlite::SqliteStore::open_in_memory()?,
        )))
    }

    /// Connects to PostgreSQL at `url` (`postgres://user:password@host:port/database`) with a
    /// pool of at most `max_connections`, and brings the schema up to date (one node at a
    /// time). Fails if the server cannot be reached or refuses the credentials.
    pub async fn connect_postgres(url: &str, max_connections: usize) -> Result<Store> {
        let timeout = std::time::Duration::from_millis(crate::config::DEFAULT_STATEMENT_TIMEOUT_MS);
        Store::connect_postgres_tls(url, max_connections, None, timeout).await
    }

    /// Like [`Store::connect_postgres`]; with `sslmode=require` in the URL the connection is TLS,
    /// the server's certificate verified against `tls_ca` (PEM) or the system's roots. A
    /// statement that runs (or waits for a lock) longer than `statement_timeout` is cancelled,
    /// and a call that gets no answer within it is given up: either is `Unavailable`.
    pub async fn connect_postgres_tls(
        url: &str,
        max_connections: usize,
        tls_ca: Option<&Path>,
        statement_timeout: std::time::Duration,
    ) -> Result<Store> {
        let store =
            postgres::PgStore::connect(url, max_connections, tls_ca, statement_timeout).await?;
        Ok(Store::new(Engine::Postgres(store)))
    }

    /// Writes every webhook event for the server's own endpoint too (`[webhooks] url` is
    /// set), besides the room's endpoint if it has one. Off by default: events are then
    /// written only for rooms that have an endpoint of their own.
    pub fn with_server_webhooks(mut self, on: bool) -> Store {
        match &mut self.engine {
            Engine::Sqlite(engine) => engine.server_webhooks = on,
            Engine::Postgres(engine) => engine.server_webhooks = on,
        }
        self
    }

    /// Whether other nodes write to this store too (PostgreSQL): then what this node has not
    /// written itself is seen only by looking.
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
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

    /// Changes a room's recording policy, with its `room.updated` audit line, in one
    /// transaction; the room as it is now. An ended room's too: its retention still counts.
    pub async fn update_recording_policy(
        &self,
        room: RoomId,
        change: RecordingPolicyChange,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Room> {
        on_engine!(self.update_recording_policy(room, change, actor, now_ms))
    }

    /// Up to `limit` finished recordings whose file `node` holds and whose retention has run
    /// out at `now_ms` (counted from their start): their room's `retention_days`, or
    /// `default_days` where the room has none; 0 keeps them. Oldest first; never one still
    /// being written.
    pub async fn expired_recordings(
        &self,
        node: String,
        default_days: u32,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Recording>> {
        on_engine!(self.expired_recordings(node, default_days, now_ms, limit))
    }

    /// Up to `limit` clips of live rooms (not of recordings: those go with their recording)
    /// whose file `node` holds and whose retention has run out, as for recordings.
    pub async fn expired_live_clips(
        &self,
        node: String,
        default_days: u32,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Clip>> {
        on_engine!(self.expired_live_clips(node, default_days, now_ms, limit))
    }

    /// Forgets a clip of a live room with its `clip.deleted` audit line, in one transaction;
    /// the caller then deletes its file. `ClipNotFound` if it is gone already (or is a clip of
    /// a recording, which goes with its recording).
    pub async fn delete_live_clip(
        &self,
        room: RoomId,
        id: ClipId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Clip> {
        on_engine!(self.delete_live_clip(room, id, actor, now_ms))
    }

    /// Marks the room ended; its invites stop working. Refuses a room already ended. With
    /// `audit_detail`, its `room.ended` line is written in the same transaction, so an end is
    /// recorded exactly when it happens (a live room writes its own line), and so are
    /// `webhooks` (the events that report it).
    pub async fn end_room(
        &self,
        id: RoomId,
        actor: Actor,
        now_ms: i64,
        audit_detail: Option<serde_json::Value>,
        webhooks: Vec<NewWebhook>,
    ) -> Result<Room> {
        let wrote = !webhooks.is_empty();
        let result = on_engine!(self.end_room(id, actor, now_ms, audit_detail, webhooks));
        self.wrote_webhooks(result, wrote)
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

    /// Makes a listen link of an open room (its public broadcast), written in the audit log.
    pub async fn create_listen_link(
        &self,
        room: RoomId,
        new: NewListenLink,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedListenLink> {
        on_engine!(self.create_listen_link(room, new, actor, now_ms))
    }

    pub async fn list_listen_links(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<ListenLink>> {
        on_engine!(self.list_listen_links(room, page))
    }

    /// Revokes a listen link of this room. Revoking twice is harmless and logged once.
    pub async fn revoke_listen_link(
        &self,
        room: RoomId,
        link: ListenLinkId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<ListenLink> {
        on_engine!(self.revoke_listen_link(room, link, actor, now_ms))
    }

    /// What a listen link leads to now: its room and itself. Unknown and revoked codes fail
    /// alike (`ListenLinkInvalid`); an expired one is `ListenLinkExpired`, an ended room
    /// `RoomEnded`. Reads only.
    pub async fn open_listen_link(
        &self,
        code: ListenCode,
        now_ms: i64,
    ) -> Result<(Room, ListenLink)> {
        on_engine!(self.open_listen_link(code, now_ms))
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
    /// always recorded. `webhooks` (the events that report it) are written with a new ban.
    #[allow(clippy::too_many_arguments)]
    pub async fn ban(
        &self,
        room: RoomId,
        participant: ParticipantId,
        revoke_invite: bool,
        actor: Actor,
        now_ms: i64,
        record: bool,
        webhooks: Vec<NewWebhook>,
    ) -> Result<()> {
        let wrote = !webhooks.is_empty();
        let result = on_engine!(self.ban(
            room,
            participant,
            revoke_invite,
            actor,
            now_ms,
            record,
            webhooks
        ));
        self.wrote_webhooks(result, wrote)
    }

    /// Where an identity stands in its room now: banned, its live role, its last removal.
    pub async fn standing(&self, room: RoomId, participant: ParticipantId) -> Result<Standing> {
        on_engine!(self.standing(room, participant))
    }

    pub async fn is_banned(&self, room: RoomId, participant: ParticipantId) -> Result<bool> {
        on_engine!(self.is_banned(room, participant))
    }

    /// Writes what one command of a live room decided (its records and webhook events) in
    /// one transaction. `ControlError::Unavailable` means nothing was written and the same
    /// call may be made again.
    pub async fn write_room(&self, room: RoomId, write: RoomWrite) -> Result<()> {
        let wrote = !write.webhooks.is_empty();
        let result = on_engine!(self.write_room(room, write));
        self.wrote_webhooks(result, wrote)
    }

    /// Takes up to `limit` webhook rows of `lane` to send now, each the oldest pending row of
    /// its room for its endpoint and due, leased to `owner` for `lease_ms`: a row leased to
    /// another node (or this one) is not taken again until its lease ends, so two senders
    /// never send the same row at once, and a room's next row for an endpoint waits until the
    /// one before it is finished (its rows for another endpoint do not).
    pub async fn claim_webhooks(
        &self,
        owner: String,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
        lane: WebhookLane,
    ) -> Result<Vec<ClaimedWebhook>> {
        on_engine!(self.claim_webhooks(owner, now_ms, lease_ms, limit, lane))
    }

    /// When the earliest row of `lane` that is not due yet becomes due: the oldest pending
    /// row of each room for each endpoint, at its next attempt or when its lease ends (None
    /// when the lane has nothing pending). A sender sleeps until then.
    pub async fn next_webhook_due(&self, lane: WebhookLane) -> Result<Option<i64>> {
        on_engine!(self.next_webhook_due(lane))
    }

    /// Records how an attempt ended, if `owner` still holds the row's lease (false if not).
    pub async fn finish_webhook(
        &self,
        seq: i64,
        owner: String,
        attempt: WebhookAttempt,
        now_ms: i64,
    ) -> Result<bool> {
        on_engine!(self.finish_webhook(seq, owner, attempt, now_ms))
    }

    /// The outbox, oldest first, optionally only rows in `state`.
    pub async fn list_webhook_deliveries(
        &self,
        state: Option<DeliveryState>,
        page: PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        on_engine!(self.list_webhook_deliveries(state, page))
    }

    /// Sets the room's own webhook endpoint to `url`: made with `new_secret` if the room has
    /// none, its URL replaced (secret kept) if it has one; with its audit line. An ended room
    /// gets none.
    pub async fn set_room_webhook(
        &self,
        room: RoomId,
        url: String,
        new_secret: String,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(RoomWebhook, RoomWebhookChange)> {
        on_engine!(self.set_room_webhook(room, url, new_secret, actor, now_ms))
    }

    /// The room's own webhook endpoint.
    pub async fn room_webhook(&self, room: RoomId) -> Result<RoomWebhook> {
        on_engine!(self.room_webhook(room))
    }

    /// How many rows for a room endpoint (`rwh_…`) wait, and how many were given up.
    pub async fn room_webhook_backlog(&self, endpoint: String) -> Result<(u64, u64)> {
        on_engine!(self.room_webhook_backlog(endpoint))
    }

    /// Replaces the secret of the room's endpoint; attempts from now on are signed with it.
    pub async fn rotate_room_webhook_secret(
        &self,
        room: RoomId,
        secret: String,
        actor: Actor,
        now_ms: i64,
    ) -> Result<RoomWebhook> {
        on_engine!(self.rotate_room_webhook_secret(room, secret, actor, now_ms))
    }

    /// Deletes the room's endpoint and the rows still waiting for it (returns how many); its
    /// delivered and failed rows stay listed.
    pub async fn delete_room_webhook(
        &self,
        room: RoomId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<u64> {
        on_engine!(self.delete_room_webhook(room, actor, now_ms))
    }

    /// What was sent (or waits, or failed) to the room's own endpoints, oldest first.
    pub async fn list_room_webhook_deliveries(
        &self,
        room: RoomId,
        state: Option<DeliveryState>,
        page: PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        on_engine!(self.list_room_webhook_deliveries(room, state, page))
    }

    /// Forgets delivered rows finished before `before_ms`; returns how many.
    pub async fn prune_webhooks(&self, before_ms: i64) -> Result<u64> {
        on_engine!(self.prune_webhooks(before_ms))
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

    /// Closes a recording that is still `recording`, with `webhooks` (the events that report
    /// it) in the same transaction; one already closed is left alone (`false`, nothing
    /// written).
    pub async fn finish_recording(
        &self,
        id: RecordingId,
        finished: FinishedRecording,
        webhooks: Vec<NewWebhook>,
    ) -> Result<bool> {
        let wrote = !webhooks.is_empty();
        let result = on_engine!(self.finish_recording(id, finished, webhooks));
        self.wrote_webhooks(result, wrote)
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

    /// Forgets a finished recording of `room` with its replay links and its clips, and writes
    /// `recording.deleted` to the audit log, in one transaction; the caller then deletes the
    /// files (the recording's and its clips', returned). Refuses one still being written
    /// (`RecordingInProgress`).
    pub async fn delete_recording(
        &self,
        room: RoomId,
        id: RecordingId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(Recording, Vec<Clip>)> {
        on_engine!(self.delete_recording(room, id, actor, now_ms))
    }

    /// Remembers a clip whose file is written, with its `clip.created` audit line and
    /// `webhooks`, in one transaction. A clip of a recording deleted meanwhile is refused
    /// (`RecordingNotFound`): the caller deletes its file. `created_by` names who made it (a
    /// replay link's id when that is all that is known).
    pub async fn create_clip(
        &self,
        room: RoomId,
        new: NewClip,
        actor: Actor,
        created_by: String,
        now_ms: i64,
        webhooks: Vec<NewWebhook>,
    ) -> Result<Clip> {
        let wrote = !webhooks.is_empty();
        let result = on_engine!(self.create_clip(room, new, actor, created_by, now_ms, webhooks));
        self.wrote_webhooks(result, wrote)
    }

    /// The clip a link's code opens (`ClipNotFound` for an unknown code or a deleted clip).
    pub async fn clip_by_code(&self, code: ClipCode) -> Result<Clip> {
        on_engine!(self.clip_by_code(code))
    }

    /// Recordings `node` left in state `recording` (it was killed while writing them).
    pub async fn unfinished_recordings(&self, node: String) -> Result<Vec<Recording>> {
        on_engine!(self.unfinished_recordings(node))
    }

    /// A replay link for one recording of `room` (`RecordingNotFound` for another room's),
    /// written with its audit line. The recording may be of an ended room.
    pub async fn create_replay_link(
        &self,
        room: RoomId,
        recording: RecordingId,
        new: NewReplayLink,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedReplayLink> {
        on_engine!(self.create_replay_link(room, recording, new, actor, now_ms))
    }

    /// A room's replay links (of all its recordings), oldest first, without their codes.
    pub async fn list_replay_links(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<ReplayLink>> {
        on_engine!(self.list_replay_links(room, page))
    }

    /// Revokes a replay link of this room; tokens it gave stop working at once. Revoking twice
    /// is harmless and logged once.
    pub async fn revoke_replay_link(
        &self,
        room: RoomId,
        link: ReplayLinkId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<ReplayLink> {
        on_engine!(self.revoke_replay_link(room, link, actor, now_ms))
    }

    /// Redeems a replay link: checks it and counts the use atomically (concurrent redemptions
    /// never count past `max_uses`). Unknown and revoked codes fail alike
    /// (`ReplayLinkInvalid`).
    pub async fn redeem_replay_link(&self, code: InviteCode, now_ms: i64) -> Result<ReplayLink> {
        on_engine!(self.redeem_replay_link(code, now_ms))
    }

    /// A replay link by id, as its tokens are checked (`ReplayLinkInvalid` if it is gone).
    pub async fn replay_link(&self, id: ReplayLinkId) -> Result<ReplayLink> {
        on_engine!(self.replay_link(id))
    }

    /// The display names `participants` of `room` last gave, for a recording's timeline;
    /// unknown ids are left out.
    pub async fn display_names(
        &self,
        room: RoomId,
        participants: Vec<ParticipantId>,
    ) -> Result<Vec<(ParticipantId, String)>> {
        on_engine!(self.display_names(room, participants))
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
