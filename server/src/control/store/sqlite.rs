//! The SQLite engine of the store: a single connection in WAL mode behind a mutex, used from a
//! blocking thread, so every transaction runs alone. Writes that belong together run in one
//! transaction; no HTTP here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use rusqlite_migration::{M, Migrations};

use super::super::WebhookLane;
use super::super::model::{CreatedInvite, FinishedRecording, PageRequest, Standing};
use super::super::{
    Actor, AuditEvent, Clip, ControlError, Delivery, IdentitySecret, Invite, InviteCode, InviteId,
    NewInvite, NewRoom, Page, ParticipantId, Recording, RecordingId, RecordingPolicy,
    RecordingState, Redemption, Role, Room, RoomId, RoomLimits, RoomRecord, RoomWrite,
};
use super::super::{ClaimedWebhook, DeliveryState, NewWebhook, WebhookAttempt, WebhookDelivery};
use super::super::{CreatedReplayLink, NewReplayLink, ReplayLink, ReplayLinkId};
use super::{MIGRATIONS, rules};

mod clips;
mod listen_links;
mod recording_policy;
mod room_webhooks;

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|m| M::up(m.sqlite)).collect())
}

/// Handle to the SQLite database; cheap to clone.
#[derive(Clone)]
pub(super) struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Events are written for the server's own endpoint (`[webhooks] url` is set).
    pub(super) server_webhooks: bool,
}

type Result<T> = std::result::Result<T, ControlError>;

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub(super) fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        SqliteStore::init(conn)
    }

    /// A private in-memory database, for unit tests.
    pub(super) fn open_in_memory() -> Result<SqliteStore> {
        SqliteStore::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore> {
        // FULL: a write acknowledged to a client survives the process being killed.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| ControlError::Storage(format!("migration failed: {e}")))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            server_webhooks: false,
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written (transactions
            // roll back on drop), so a poisoned lock is safe to reuse.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| ControlError::Storage(format!("store task failed: {e}")))?
    }

    pub(super) async fn create_room(
        &self,
        new: NewRoom,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Room> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let room = insert_room(&tx, &new, false, now_ms)?;
            audit(
                &tx,
                &room.id,
                &actor,
                "room.created",
                None,
                rules::room_created_detail(&room),
                now_ms,
            )?;
            tx.commit()?;
            Ok(room)
        })
        .await
    }

    pub(super) async fn room(&self, id: RoomId) -> Result<Room> {
        self.call(move |c| room_by_id(c, &id)?.ok_or(ControlError::RoomNotFound))
            .await
    }

    pub(super) async fn list_rooms(&self, page: PageRequest) -> Result<Page<Room>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, {ROOM_COLUMNS} FROM rooms WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![page.after.unwrap_or(0), page.limit + 1], |r| {
                    Ok((r.get::<_, i64>(0)?, room_from_row(r, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rules::paginate(rows, page.limit))
        })
        .await
    }

    /// Marks the room ended; its invites stop working. Refuses a room already ended.
    /// `record` writes the audit line (a live room writes its own, from the room's events).
    /// Ends a room. With `audit_detail`, its `room.ended` line is written in the same
    /// transaction, so an end is recorded exactly when it happens.
    pub(super) async fn end_room(
        &self,
        id: RoomId,
        actor: Actor,
        now_ms: i64,
        audit_detail: Option<serde_json::Value>,
        webhooks: Vec<NewWebhook>,
    ) -> Result<Room> {
        let to_server = self.server_webhooks;
        self.call(move |c| {
            let tx = c.transaction()?;
            let room = end_in(&tx, &id, &actor, now_ms, audit_detail)?;
            insert_webhooks(&tx, &id, &webhooks, to_server)?;
            tx.commit()?;
            Ok(room)
        })
        .await
    }

    pub(super) async fn create_invite(
        &self,
        room: RoomId,
        new: NewInvite,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedInvite> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let created = insert_invite(&tx, &room, &new, &actor, false, now_ms)?;
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    pub(super) async fn list_invites(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<Invite>> {
        self.call(move |c| {
            room_page(c, "invites", INVITE_COLUMNS, &room, page, |r| {
                invite_from_row(r, 1)
            })
        })
        .await
    }

    /// Revokes an invite of this room. Revoking twice is harmless and logged once.
    pub(super) async fn revoke_invite(
        &self,
        room: RoomId,
        invite: InviteId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Invite> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            let mut found = invite_by_id(&tx, &invite)?
                .filter(|i| i.room_id == room)
                .ok_or(ControlError::InviteNotFound)?;
            revoke_once(&tx, "invites", invite.as_str(), &room, &actor, now_ms)?;
            found.revoked = true;
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    /// Finds an invite by its code, for moderators who kept the link rather than the id.
    pub(super) async fn invite_id_for_code(&self, code: InviteCode) -> Result<InviteId> {
        self.call(move |c| {
            c.query_row(
                "SELECT id FROM invites WHERE code_hash = ?1",
                params![&code.hash()[..]],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(InviteId::from_trusted)
            .ok_or(ControlError::InviteNotFound)
        })
        .await
    }

    /// What an invite link leads to, checked as redeeming would check it but without using it:
    /// the room and the invite. Unknown and revoked codes fail alike (`InviteInvalid`).
    pub(super) async fn preview_invite(
        &self,
        code: InviteCode,
        now_ms: i64,
    ) -> Result<(Room, Invite)> {
        self.call(move |c| {
            let invite = c
                .query_row(
                    &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE code_hash = ?1"),
                    params![&code.hash()[..]],
                    |r| invite_from_row(r, 0),
                )
                .optional()?
                .ok_or(ControlError::InviteInvalid)?;
            let room = room_by_id(c, &invite.room_id)?;
            rules::check_previewable(&invite, room.as_ref(), now_ms)?;
            Ok((room.ok_or(ControlError::InviteInvalid)?, invite))
        })
        .await
    }

    /// Redeems an invite: checks it, refuses banned identities, counts the use atomically and
    /// records the identity, all in one transaction.
    pub(super) async fn redeem(
        &self,
        code: InviteCode,
        display_name: String,
        identity: Option<IdentitySecret>,
        now_ms: i64,
    ) -> Result<Redemption> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let invite = tx
                .query_row(
                    &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE code_hash = ?1"),
                    params![&code.hash()[..]],
                    |r| invite_from_row(r, 0),
                )
                .optional()?
                .ok_or(ControlError::InviteInvalid)?;
            let room = room_by_id(&tx, &invite.room_id)?;
            rules::check_redeemable(&invite, room.as_ref(), now_ms)?;
            let room = room.ok_or(ControlError::InviteInvalid)?;
            let (secret, new_identity) = match identity {
                Some(s) => (s, false),
                None => (IdentitySecret::generate(), true),
            };
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM identities WHERE room_id = ?1 AND secret_hash = ?2",
                    params![room.id.as_str(), &secret.hash()[..]],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = &existing
                && is_banned(&tx, &room.id, id)?
            {
                return Err(ControlError::Banned);
            }
            // The use is counted by a conditional update, so concurrent redemptions can never
            // exceed max_uses whatever the interleaving.
            let counted = tx.execute(
                "UPDATE invites SET uses = uses + 1
                 WHERE id = ?1 AND (max_uses IS NULL OR uses < max_uses)",
                params![invite.id.as_str()],
            )?;
            if counted == 0 {
                return Err(ControlError::InviteUsedUp);
            }
            // A redemption starts a new token generation. What a live room decided stays in
            // force (it is not reset): the new token gets the invite's role or the live role,
            // whichever reaches further, and tokens of earlier generations keep answering to
            // the live role. See `Standing::role`.
            let (participant_id, generation, role) = match existing {
                Some(id) => {
                    let (generation, live_role): (i64, Option<String>) = tx.query_row(
                        "UPDATE identities SET display_name = ?2, last_joined_at = ?3,
                         invite_id = ?4, token_generation = token_generation + 1
                         WHERE id = ?1 RETURNING token_generation, live_role",
                        params![id, display_name, now_ms, invite.id.as_str()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let role = rules::role_after_redemption(live_role.as_deref(), invite.role);
                    (ParticipantId::from_trusted(id), generation, role)
                }
                None => {
                    let id = ParticipantId::generate();
                    tx.execute(
                        "INSERT INTO identities
                         (id, room_id, secret_hash, display_name, invite_id, created_at,
                          last_joined_at, token_generation)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 1)",
                        params![
                            id.as_str(),
                            room.id.as_str(),
                            &secret.hash()[..],
                            display_name,
                            invite.id.as_str(),
                            now_ms
                        ],
                    )?;
                    (id, 1, invite.role)
                }
            };
            // A broadcast invite redeemed by a speaker or moderator (a live role) hears WebRTC.
            let delivery = invite.delivery.for_role(role);
            audit(
                &tx,
                &room.id,
                &Actor::Participant(participant_id.clone()),
                "invite.redeemed",
                Some(invite.id.as_str()),
                rules::redeemed_detail(role, delivery, &display_name),
                now_ms,
            )?;
            tx.commit()?;
            Ok(Redemption {
                room,
                participant_id,
                display_name,
                role,
                delivery,
                generation,
                invite_id: invite.id,
                new_identity: new_identity.then_some(secret),
            })
        })
        .await
    }

    /// Bans a participant identity from a room; optionally revokes the invite they used.
    /// `record` writes the ban's audit line (a live room writes its own); a revoked invite is
    /// always recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ban(
        &self,
        room: RoomId,
        participant: ParticipantId,
        revoke_invite: bool,
        actor: Actor,
        now_ms: i64,
        record: bool,
        webhooks: Vec<NewWebhook>,
    ) -> Result<()> {
        let to_server = self.server_webhooks;
        self.call(move |c| {
            let tx = c.transaction()?;
            let banned = ban_in(
                &tx,
                &room,
                &participant,
                revoke_invite,
                &actor,
                now_ms,
                record,
            )?;
            if banned {
                insert_webhooks(&tx, &room, &webhooks, to_server)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Where an identity stands in its room now: banned, its live role, its last removal.
    pub(super) async fn standing(
        &self,
        room: RoomId,
        participant: ParticipantId,
    ) -> Result<Standing> {
        self.call(move |c| {
            let row: Option<(Option<String>, i64, Option<i64>, i64)> = c
                .query_row(
                    "SELECT live_role, live_role_generation, removed_at, token_generation
                     FROM identities WHERE id = ?1 AND room_id = ?2",
                    params![participant.as_str(), room.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let (role, live_role_generation, removed_at_ms, token_generation) =
                row.unwrap_or((None, 0, None, 0));
            Ok(Standing {
                banned: is_banned(c, &room, participant.as_str())?,
                live_role: role.as_deref().and_then(Role::parse),
                live_role_generation,
                removed_at_ms,
                token_generation,
            })
        })
        .await
    }

    pub(super) async fn is_banned(&self, room: RoomId, participant: ParticipantId) -> Result<bool> {
        self.call(move |c| is_banned(c, &room, participant.as_str()))
            .await
    }

    pub(super) async fn write_room(&self, room: RoomId, write: RoomWrite) -> Result<()> {
        let to_server = self.server_webhooks;
        self.call(move |c| {
            let tx = c.transaction()?;
            for record in write.records {
                record_in(&tx, &room, record)?;
            }
            insert_webhooks(&tx, &room, &write.webhooks, to_server)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn claim_webhooks(
        &self,
        owner: String,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
        lane: WebhookLane,
    ) -> Result<Vec<ClaimedWebhook>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let claimed = {
                let mut stmt = tx.prepare_cached(CLAIM_WEBHOOKS)?;
                let server_lane = lane == WebhookLane::Server;
                stmt.query_map(params![now_ms, limit, server_lane], |r| {
                    Ok(ClaimedWebhook {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        body: r.get(2)?,
                        attempts: r.get(3)?,
                        created_at_ms: r.get(4)?,
                        destination: rules::destination(r.get(5)?, r.get(6)?, r.get(7)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            for row in &claimed {
                tx.execute(
                    "UPDATE webhook_deliveries SET lease_owner = ?2, lease_until = ?3 WHERE seq = ?1",
                    params![row.seq, owner, now_ms + lease_ms],
                )?;
            }
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    pub(super) async fn next_webhook_due(&self, lane: WebhookLane) -> Result<Option<i64>> {
        self.call(move |c| {
            let due = c
                .prepare_cached(NEXT_WEBHOOK_DUE)?
                .query_row(params![lane == WebhookLane::Server], |r| r.get(0))?;
            Ok(due)
        })
        .await
    }

    pub(super) async fn finish_webhook(
        &self,
        seq: i64,
        owner: String,
        attempt: WebhookAttempt,
        now_ms: i64,
    ) -> Result<bool> {
        self.call(move |c| {
            let f = rules::finished_webhook(&attempt, now_ms);
            let changed = c.execute(
                FINISH_WEBHOOK,
                params![
                    seq,
                    owner,
                    f.state,
                    f.next_attempt_at,
                    f.status,
                    f.error,
                    f.finished_at
                ],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    pub(super) async fn list_webhook_deliveries(
        &self,
        state: Option<DeliveryState>,
        page: PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, {WEBHOOK_COLUMNS} FROM webhook_deliveries
                 WHERE (?1 IS NULL OR state = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        state.map(DeliveryState::as_str),
                        page.after.unwrap_or(0),
                        page.limit + 1
                    ],
                    delivery_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rules::paginate(rows, page.limit))
        })
        .await
    }

    pub(super) async fn prune_webhooks(&self, before_ms: i64) -> Result<u64> {
        self.call(move |c| {
            let n = c.execute(
                "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished_at < ?1",
                params![before_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn list_events(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>> {
        self.call(move |c| {
            let columns = "room_id, at, actor, action, target, detail";
            room_page(c, "audit_events", columns, &room, page, |r| {
                let detail: String = r.get(6)?;
                Ok(AuditEvent {
                    seq: r.get(0)?,
                    room_id: RoomId::from_trusted(r.get(1)?),
                    at_ms: r.get(2)?,
                    actor: r.get(3)?,
                    action: r.get(4)?,
                    target: r.get(5)?,
                    detail: rules::parse_detail(&detail),
                })
            })
        })
        .await
    }

    pub(super) async fn create_recording(
        &self,
        room: RoomId,
        node: String,
        now_ms: i64,
    ) -> Result<Recording> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let found = room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            if found.is_ended() {
                return Err(ControlError::RoomEnded);
            }
            let id = RecordingId::generate();
            let inserted = tx.execute(
                "INSERT INTO recordings (id, room_id, state, started_at, node)
                 VALUES (?1, ?2, 'recording', ?3, ?4)",
                params![id.as_str(), room.as_str(), now_ms, node],
            );
            match inserted {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(ControlError::AlreadyRecording);
                }
                other => other?,
            };
            let recording = recording_where(&tx, "id = ?1", id.as_str())?
                .into_iter()
                .next()
                .ok_or(ControlError::RecordingNotFound)?;
            tx.commit()?;
            Ok(recording)
        })
        .await
    }

    pub(super) async fn finish_recording(
        &self,
        id: RecordingId,
        f: FinishedRecording,
        webhooks: Vec<NewWebhook>,
    ) -> Result<bool> {
        let to_server = self.server_webhooks;
        self.call(move |c| {
            let tx = c.transaction()?;
            let room: Option<String> = tx
                .query_row(
                    "UPDATE recordings SET state = ?2, ended_at = ?3, duration_ms = ?4, size_bytes = ?5
                     WHERE id = ?1 AND state = 'recording' RETURNING room_id",
                    params![
                        id.as_str(),
                        f.state.as_str(),
                        f.ended_at_ms,
                        f.duration_ms,
                        f.size_bytes
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(room) = room else {
                return Ok(false);
            };
            insert_webhooks(&tx, &RoomId::from_trusted(room), &webhooks, to_server)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn recording(&self, room: RoomId, id: RecordingId) -> Result<Recording> {
        self.call(move |c| {
            recording_where(c, "id = ?1", id.as_str())?
                .into_iter()
                .find(|r| r.room_id == room)
                .ok_or(ControlError::RecordingNotFound)
        })
        .await
    }

    pub(super) async fn list_recordings(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<Recording>> {
        self.call(move |c| {
            room_page(c, "recordings", RECORDING_COLUMNS, &room, page, |r| {
                recording_from_row(r, 1)
            })
        })
        .await
    }

    pub(super) async fn delete_recording(
        &self,
        room: RoomId,
        id: RecordingId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(Recording, Vec<Clip>)> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let recording = recording_where(&tx, "id = ?1", id.as_str())?
                .into_iter()
                .find(|r| r.room_id == room)
                .ok_or(ControlError::RecordingNotFound)?;
            if recording.state == RecordingState::Recording {
                return Err(ControlError::RecordingInProgress);
            }
            tx.execute(
                "DELETE FROM replay_links WHERE recording_id = ?1",
                params![id.as_str()],
            )?;
            let clips = clips::clips_of_recording(&tx, &id)?;
            tx.execute(
                "DELETE FROM clips WHERE recording_id = ?1",
                params![id.as_str()],
            )?;
            tx.execute("DELETE FROM recordings WHERE id = ?1", params![id.as_str()])?;
            audit(
                &tx,
                &room,
                &actor,
                "recording.deleted",
                None,
                rules::recording_deleted_detail(&recording),
                now_ms,
            )?;
            tx.commit()?;
            Ok((recording, clips))
        })
        .await
    }

    pub(super) async fn unfinished_recordings(&self, node: String) -> Result<Vec<Recording>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RECORDING_COLUMNS} FROM recordings
                 WHERE node = ?1 AND state = 'recording' ORDER BY seq"
            ))?;
            let rows = stmt
                .query_map(params![node], |r| recording_from_row(r, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn create_replay_link(
        &self,
        room: RoomId,
        recording: RecordingId,
        new: NewReplayLink,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedReplayLink> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            recording_where(&tx, "id = ?1", recording.as_str())?
                .into_iter()
                .find(|r| r.room_id == room)
                .ok_or(ControlError::RecordingNotFound)?;
            let created = rules::new_replay_link(&room, &recording, &new, now_ms);
            let link = &created.link;
            tx.execute(
                "INSERT INTO replay_links (id, room_id, recording_id, code_hash, label, max_uses,
                                           expires_at, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    link.id.as_str(),
                    room.as_str(),
                    recording.as_str(),
                    &created.code.hash()[..],
                    link.label,
                    link.max_uses,
                    link.expires_at_ms,
                    now_ms,
                    actor.as_audit_str()
                ],
            )?;
            audit(
                &tx,
                &room,
                &actor,
                "replay_link.created",
                Some(link.id.as_str()),
                rules::replay_link_created_detail(link),
                now_ms,
            )?;
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    pub(super) async fn list_replay_links(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<ReplayLink>> {
        self.call(move |c| {
            room_page(c, "replay_links", REPLAY_LINK_COLUMNS, &room, page, |r| {
                replay_link_from_row(r, 1)
            })
        })
        .await
    }

    pub(super) async fn revoke_replay_link(
        &self,
        room: RoomId,
        link: ReplayLinkId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<ReplayLink> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            let mut found = replay_link_where(&tx, "id = ?1", &link.as_str())?
                .filter(|l| l.room_id == room)
                .ok_or(ControlError::ReplayLinkNotFound)?;
            revoke_once(&tx, "replay_links", link.as_str(), &room, &actor, now_ms)?;
            found.revoked = true;
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    pub(super) async fn redeem_replay_link(
        &self,
        code: InviteCode,
        now_ms: i64,
    ) -> Result<ReplayLink> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut link = replay_link_where(&tx, "code_hash = ?1", &&code.hash()[..])?
                .ok_or(ControlError::ReplayLinkInvalid)?;
            rules::check_replay_redeemable(&link, now_ms)?;
            let counted = tx.execute(
                "UPDATE replay_links SET uses = uses + 1
                 WHERE id = ?1 AND (max_uses IS NULL OR uses < max_uses)",
                params![link.id.as_str()],
            )?;
            if counted == 0 {
                return Err(ControlError::ReplayLinkUsedUp);
            }
            tx.commit()?;
            link.uses += 1;
            Ok(link)
        })
        .await
    }

    pub(super) async fn replay_link(&self, id: ReplayLinkId) -> Result<ReplayLink> {
        self.call(move |c| {
            replay_link_where(c, "id = ?1", &id.as_str())?.ok_or(ControlError::ReplayLinkInvalid)
        })
        .await
    }

    pub(super) async fn display_names(
        &self,
        room: RoomId,
        participants: Vec<ParticipantId>,
    ) -> Result<Vec<(ParticipantId, String)>> {
        let ids = serde_json::to_string(&participants)
            .map_err(|e| ControlError::Storage(e.to_string()))?;
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, display_name FROM identities
                 WHERE room_id = ?1 AND id IN (SELECT value FROM json_each(?2)) ORDER BY id",
            )?;
            let rows = stmt
                .query_map(params![room.as_str(), ids], |r| {
                    Ok((ParticipantId::from_trusted(r.get(0)?), r.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// At start: finds or makes the demo room and gives it a fresh moderator link, revoking
    /// the link printed at the previous start. Returns `None` if the demo room was ended.
    pub(super) async fn startup_link(&self, now_ms: i64) -> Result<Option<(Room, CreatedInvite)>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let demo: Option<Room> = tx
                .query_row(
                    &format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE is_demo = 1 LIMIT 1"),
                    [],
                    |r| room_from_row(r, 0),
                )
                .optional()?;
            let room = match demo {
                Some(room) if room.is_ended() => return Ok(None),
                Some(room) => room,
                None => {
                    let room = insert_room(&tx, &rules::demo_room(), true, now_ms)?;
                    audit(
                        &tx,
                        &room.id,
                        &Actor::System,
                        "room.created",
                        None,
                        rules::room_created_detail(&room),
                        now_ms,
                    )?;
                    room
                }
            };
            tx.execute(
                "UPDATE invites SET revoked_at = ?2
                 WHERE room_id = ?1 AND is_startup = 1 AND revoked_at IS NULL",
                params![room.id.as_str(), now_ms],
            )?;
            let created = insert_invite(
                &tx,
                &room.id,
                &rules::startup_invite(),
                &Actor::System,
                true,
                now_ms,
            )?;
            tx.commit()?;
            Ok(Some((room, created)))
        })
        .await
    }

    /// A trivial query, so liveness means the database answers.
    pub(super) async fn ping(&self) -> Result<()> {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// `PRAGMA integrity_check`, for health checks and the durability tests.
    pub(super) async fn integrity_check(&self) -> Result<String> {
        self.call(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
            .await
    }
}

const ROOM_COLUMNS: &str = "id, title, created_at, ended_at, max_participants, max_stage, \
     webrtc_audience_cap, record_by_default, retention_days";
const INVITE_COLUMNS: &str =
    "id, room_id, role, label, max_uses, uses, expires_at, revoked_at, created_at, delivery";

fn room_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Room> {
    Ok(Room {
        id: RoomId::from_trusted(r.get(at)?),
        title: r.get(at + 1)?,
        created_at_ms: r.get(at + 2)?,
        ended_at_ms: r.get(at + 3)?,
        limits: RoomLimits {
            max_participants: r.get(at + 4)?,
            max_stage: r.get(at + 5)?,
            webrtc_audience_cap: r.get(at + 6)?,
        },
        recording: RecordingPolicy {
            record_by_default: r.get(at + 7)?,
            retention_days: r.get(at + 8)?,
        },
    })
}

fn invite_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Invite> {
    let role: String = r.get(at + 2)?;
    Ok(Invite {
        id: InviteId::from_trusted(r.get(at)?),
        room_id: RoomId::from_trusted(r.get(at + 1)?),
        // The schema's CHECK constraint only admits the three known roles.
        role: Role::parse(&role).unwrap_or(Role::Listener),
        label: r.get(at + 3)?,
        max_uses: r.get(at + 4)?,
        uses: r.get(at + 5)?,
        expires_at_ms: r.get(at + 6)?,
        revoked: r.get::<_, Option<i64>>(at + 7)?.is_some(),
        created_at_ms: r.get(at + 8)?,
        // The schema's CHECK constraint only admits the two known deliveries.
        delivery: Delivery::parse(&r.get::<_, String>(at + 9)?).unwrap_or_default(),
    })
}

const RECORDING_COLUMNS: &str =
    "id, room_id, state, started_at, ended_at, duration_ms, size_bytes, node";

fn recording_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Recording> {
    let state: String = r.get(at + 2)?;
    Ok(Recording {
        id: RecordingId::from_trusted(r.get(at)?),
        room_id: RoomId::from_trusted(r.get(at + 1)?),
        state: RecordingState::parse(&state).unwrap_or(RecordingState::Failed),
        started_at_ms: r.get(at + 3)?,
        ended_at_ms: r.get(at + 4)?,
        duration_ms: r.get(at + 5)?,
        size_bytes: r.get(at + 6)?,
        node: r.get(at + 7)?,
    })
}

fn recording_where(c: &Connection, condition: &str, value: &str) -> Result<Vec<Recording>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {RECORDING_COLUMNS} FROM recordings WHERE {condition}"
    ))?;
    let rows = stmt
        .query_map(params![value], |r| recording_from_row(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

const REPLAY_LINK_COLUMNS: &str =
    "id, room_id, recording_id, label, max_uses, uses, expires_at, revoked_at, created_at";

fn replay_link_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<ReplayLink> {
    Ok(ReplayLink {
        id: ReplayLinkId::from_trusted(r.get(at)?),
        room_id: RoomId::from_trusted(r.get(at + 1)?),
        recording_id: RecordingId::from_trusted(r.get(at + 2)?),
        label: r.get(at + 3)?,
        max_uses: r.get(at + 4)?,
        uses: r.get(at + 5)?,
        expires_at_ms: r.get(at + 6)?,
        revoked: r.get::<_, Option<i64>>(at + 7)?.is_some(),
        created_at_ms: r.get(at + 8)?,
    })
}

/// The replay link matching `condition` on `?1`.
fn replay_link_where(
    c: &Connection,
    condition: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<ReplayLink>> {
    Ok(c.query_row(
        &format!("SELECT {REPLAY_LINK_COLUMNS} FROM replay_links WHERE {condition}"),
        params![value],
        |r| replay_link_from_row(r, 0),
    )
    .optional()?)
}

/// One page of a room's rows of `table` in `seq` order (`seq`, then `columns`), each made by
/// `item`; the room must exist.
fn room_page<T>(
    c: &Connection,
    table: &str,
    columns: &str,
    room: &RoomId,
    page: PageRequest,
    mut item: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Page<T>> {
    room_by_id(c, room)?.ok_or(ControlError::RoomNotFound)?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT seq, {columns} FROM {table} WHERE room_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(
            params![room.as_str(), page.after.unwrap_or(0), page.limit + 1],
            |r| Ok((r.get::<_, i64>(0)?, item(r)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rules::paginate(rows, page.limit))
}

fn room_by_id(c: &Connection, id: &RoomId) -> Result<Option<Room>> {
    Ok(c.query_row(
        &format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = ?1"),
        params![id.as_str()],
        |r| room_from_row(r, 0),
    )
    .optional()?)
}

fn invite_by_id(c: &Connection, id: &InviteId) -> Result<Option<Invite>> {
    Ok(c.query_row(
        &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = ?1"),
        params![id.as_str()],
        |r| invite_from_row(r, 0),
    )
    .optional()?)
}

fn is_banned(c: &Connection, room: &RoomId, participant: &str) -> Result<bool> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM bans WHERE room_id = ?1 AND participant_id = ?2)",
        params![room.as_str(), participant],
        |r| r.get(0),
    )?)
}

fn insert_room(tx: &Transaction<'_>, new: &NewRoom, demo: bool, now_ms: i64) -> Result<Room> {
    let room = rules::new_room(new, now_ms);
    tx.execute(
        "INSERT INTO rooms (id, title, created_at, max_participants, max_stage, is_demo,
                            webrtc_audience_cap, record_by_default, retention_days)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            room.id.as_str(),
            room.title,
            now_ms,
            room.limits.max_participants,
            room.limits.max_stage,
            demo,
            room.limits.webrtc_audience_cap,
            room.recording.record_by_default,
            room.recording.retention_days
        ],
    )?;
    Ok(room)
}

fn insert_invite(
    tx: &Transaction<'_>,
    room: &RoomId,
    new: &NewInvite,
    actor: &Actor,
    startup: bool,
    now_ms: i64,
) -> Result<CreatedInvite> {
    let found = room_by_id(tx, room)?.ok_or(ControlError::RoomNotFound)?;
    if found.is_ended() {
        return Err(ControlError::RoomEnded);
    }
    rules::check_new_invite(new)?;
    let created = rules::new_invite(room, new, now_ms);
    let (invite, code) = (&created.invite, &created.code);
    tx.execute(
        "INSERT INTO invites (id, room_id, code_hash, role, label, max_uses, expires_at,
                              created_at, created_by, is_startup, delivery)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            invite.id.as_str(),
            room.as_str(),
            &code.hash()[..],
            invite.role.as_str(),
            invite.label,
            invite.max_uses,
            invite.expires_at_ms,
            now_ms,
            actor.as_audit_str(),
            startup,
            invite.delivery.as_str()
        ],
    )?;
    audit(
        tx,
        room,
        actor,
        "invite.created",
        Some(invite.id.as_str()),
        rules::invite_created_detail(invite),
        now_ms,
    )?;
    Ok(created)
}

/// Revokes row `id` of `table` (`invites` or `replay_links`) if it is not revoked yet, with its
/// audit line (`invite.revoked`, `replay_link.revoked`).
fn revoke_once(
    tx: &Transaction<'_>,
    table: &str,
    id: &str,
    room: &RoomId,
    actor: &Actor,
    now_ms: i64,
) -> Result<()> {
    let changed = tx.execute(
        &format!("UPDATE {table} SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL"),
        params![id, now_ms],
    )?;
    if changed == 1 {
        let action = rules::revoked_action(table);
        audit(
            tx,
            room,
            actor,
            action,
            Some(id),
            serde_json::json!({}),
            now_ms,
        )?;
    }
    Ok(())
}

fn audit(
    c: &Connection,
    room: &RoomId,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
    now_ms: i64,
) -> Result<()> {
    c.execute(
        "INSERT INTO audit_events (room_id, at, actor, action, target, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            room.as_str(),
            now_ms,
            actor.as_audit_str(),
            action,
            target,
            detail.to_string()
        ],
    )?;
    Ok(())
}

/// Ends a room inside `tx`; refuses one already ended.
fn end_in(
    tx: &Transaction<'_>,
    id: &RoomId,
    actor: &Actor,
    now_ms: i64,
    audit_detail: Option<serde_json::Value>,
) -> Result<Room> {
    let mut room = room_by_id(tx, id)?.ok_or(ControlError::RoomNotFound)?;
    if room.is_ended() {
        return Err(ControlError::RoomEnded);
    }
    tx.execute(
        "UPDATE rooms SET ended_at = ?2 WHERE id = ?1",
        params![id.as_str(), now_ms],
    )?;
    if let Some(detail) = audit_detail {
        audit(tx, id, actor, "room.ended", None, detail, now_ms)?;
    }
    room.ended_at_ms = Some(now_ms);
    Ok(room)
}

/// Adds events to the webhook outbox inside `tx`, due at once: one row per event for the
/// server's endpoint (`to_server`), and one for the room's own endpoint if it has one.
fn insert_webhooks(
    tx: &Transaction<'_>,
    room: &RoomId,
    hooks: &[NewWebhook],
    to_server: bool,
) -> Result<()> {
    if hooks.is_empty() {
        return Ok(());
    }
    let room_endpoint = room_webhooks::endpoint_of(tx, room)?.map(|e| e.id);
    let mut insert = tx.prepare_cached(
        "INSERT INTO webhook_deliveries
             (id, room_id, event_type, body, created_at, next_attempt_at, endpoint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
    )?;
    for hook in hooks {
        if to_server {
            insert.execute(params![
                hook.id,
                room.as_str(),
                hook.event_type,
                hook.body,
                hook.created_at_ms,
                None::<String>
            ])?;
        }
        if let Some(endpoint) = &room_endpoint {
            insert.execute(params![
                rules::room_copy_id(),
                room.as_str(),
                hook.event_type,
                hook.body,
                hook.created_at_ms,
                endpoint
            ])?;
        }
    }
    Ok(())
}

/// A row of `SELECT seq, {WEBHOOK_COLUMNS}` as a page entry.
fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, WebhookDelivery)> {
    let state: String = r.get(4)?;
    Ok((
        r.get::<_, i64>(0)?,
        WebhookDelivery {
            id: r.get(1)?,
            room_id: RoomId::from_trusted(r.get(2)?),
            event_type: r.get(3)?,
            // The schema's CHECK admits the three states only.
            state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
            attempts: r.get(5)?,
            created_at_ms: r.get(6)?,
            next_attempt_at_ms: r.get(7)?,
            last_status: r.get(8)?,
            last_error: r.get(9)?,
            finished_at_ms: r.get(10)?,
            endpoint: r.get(11)?,
        },
    ))
}

/// Bans inside `tx`; `record` writes the ban's audit line. Whether the ban is new.
fn ban_in(
    tx: &Transaction<'_>,
    room: &RoomId,
    participant: &ParticipantId,
    revoke_invite: bool,
    actor: &Actor,
    now_ms: i64,
    record: bool,
) -> Result<bool> {
    room_by_id(tx, room)?.ok_or(ControlError::RoomNotFound)?;
    let invite_id: Option<String> = tx
        .query_row(
            "SELECT invite_id FROM identities WHERE id = ?1 AND room_id = ?2",
            params![participant.as_str(), room.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .ok_or(ControlError::ParticipantNotFound)?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO bans (room_id, participant_id, created_at, created_by)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            room.as_str(),
            participant.as_str(),
            now_ms,
            actor.as_audit_str()
        ],
    )?;
    if revoke_invite
        && let Some(invite_id) = invite_id
        && tx.execute(
            "UPDATE invites SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![invite_id, now_ms],
        )? > 0
    {
        audit(
            tx,
            room,
            actor,
            "invite.revoked",
            Some(&invite_id),
            serde_json::json!({ "because_banned": participant.as_str() }),
            now_ms,
        )?;
    }
    if record && inserted > 0 {
        audit(
            tx,
            room,
            actor,
            "participant.banned",
            Some(participant.as_str()),
            serde_json::json!({}),
            now_ms,
        )?;
    }
    Ok(inserted > 0)
}

const WEBHOOK_COLUMNS: &str = "id, room_id, event_type, state, attempts, created_at,
    CASE WHEN state = 'pending' THEN next_attempt_at END, last_status, last_error, finished_at,
    endpoint";

/// The oldest pending row of each room for each endpoint of one lane (?3: the server's), if
/// it is due and nobody holds it, with where it goes.
const CLAIM_WEBHOOKS: &str = "SELECT d.seq, d.id, d.body, d.attempts, d.created_at,
        d.endpoint, w.url, w.secret
    FROM webhook_deliveries d LEFT JOIN room_webhooks w ON w.id = d.endpoint
    WHERE d.seq IN (SELECT MIN(seq) FROM webhook_deliveries
                    WHERE state = 'pending' AND (endpoint IS NULL) = ?3
                    GROUP BY room_id, endpoint)
      AND d.next_attempt_at <= ?1 AND (d.lease_until IS NULL OR d.lease_until <= ?1)
    ORDER BY d.seq LIMIT ?2";

/// When the next head row of a lane is due (its next attempt, or its lease's end).
const NEXT_WEBHOOK_DUE: &str = "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0)))
    FROM webhook_deliveries
    WHERE seq IN (SELECT MIN(seq) FROM webhook_deliveries
                  WHERE state = 'pending' AND (endpoint IS NULL) = ?1
                  GROUP BY room_id, endpoint)";

/// An attempt's end, only by the lease's holder.
const FINISH_WEBHOOK: &str = "UPDATE webhook_deliveries
    SET state = ?3, attempts = attempts + 1, next_attempt_at = COALESCE(?4, next_attempt_at),
        last_status = ?5, last_error = ?6, finished_at = ?7, lease_owner = NULL, lease_until = NULL
    WHERE seq = ?1 AND lease_owner = ?2 AND state = 'pending'";

/// Writes one of a live room's records inside `tx`.
fn record_in(tx: &Transaction<'_>, room: &RoomId, record: RoomRecord) -> Result<()> {
    match record {
        RoomRecord::Role { participant, role } => {
            tx.execute(
                "UPDATE identities SET live_role = ?2, live_role_generation = token_generation
                 WHERE id = ?1",
                params![participant.as_str(), role.as_str()],
            )?;
        }
        RoomRecord::Removal { participant, at_ms } => {
            tx.execute(
                "UPDATE identities SET removed_at = ?2 WHERE id = ?1",
                params![participant.as_str(), at_ms],
            )?;
        }
        RoomRecord::Ban {
            participant,
            revoke_invite,
            actor,
            at_ms,
        } => {
            ban_in(tx, room, &participant, revoke_invite, &actor, at_ms, false)?;
        }
        RoomRecord::End {
            actor,
            at_ms,
            detail,
        } => match end_in(tx, room, &actor, at_ms, Some(detail)) {
            // A racing `DELETE` ended it first and wrote its own line.
            Ok(_) | Err(ControlError::RoomEnded) => {}
            Err(e) => return Err(e),
        },
        RoomRecord::Audit {
            actor,
            action,
            target,
            detail,
            at_ms,
        } => audit(tx, room, &actor, &action, target.as_deref(), detail, at_ms)?,
    }
    Ok(())
}
