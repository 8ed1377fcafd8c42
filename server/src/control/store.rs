//! The one way into SQLite: a single connection in WAL mode behind a mutex, used from a
//! blocking thread. Writes that belong together run in one transaction; no HTTP here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use rusqlite_migration::{M, Migrations};

use super::model::{CreatedInvite, PageRequest, Standing};
use super::{
    Actor, AuditEvent, ControlError, Delivery, IdentitySecret, Invite, InviteCode, InviteId,
    NewInvite, NewRoom, Page, ParticipantId, Redemption, Role, Room, RoomId, RoomLimits,
};

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("migrations/0001_init.sql")),
        M::up(include_str!("migrations/0002_identity_standing.sql")),
        M::up(include_str!("migrations/0003_token_generation.sql")),
        M::up(include_str!("migrations/0004_invite_delivery.sql")),
        M::up(include_str!("migrations/0005_room_webrtc_audience_cap.sql")),
    ])
}

/// Handle to the control-plane database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

type Result<T> = std::result::Result<T, ControlError>;

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        Store::init(conn)
    }

    /// A private in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
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
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
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

    pub async fn create_room(&self, new: NewRoom, actor: Actor, now_ms: i64) -> Result<Room> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let room = insert_room(&tx, &new, false, now_ms)?;
            audit(
                &tx,
                &room.id,
                &actor,
                "room.created",
                None,
                serde_json::json!({ "title": room.title }),
                now_ms,
            )?;
            tx.commit()?;
            Ok(room)
        })
        .await
    }

    pub async fn room(&self, id: RoomId) -> Result<Room> {
        self.call(move |c| room_by_id(c, &id)?.ok_or(ControlError::RoomNotFound))
            .await
    }

    pub async fn list_rooms(&self, page: PageRequest) -> Result<Page<Room>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, {ROOM_COLUMNS} FROM rooms WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![page.after.unwrap_or(0), page.limit + 1], |r| {
                    Ok((r.get::<_, i64>(0)?, room_from_row(r, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(paginate(rows, page.limit))
        })
        .await
    }

    /// Marks the room ended; its invites stop working. Refuses a room already ended.
    /// `record` writes the audit line (a live room writes its own, from the room's events).
    /// Ends a room. With `audit_detail`, its `room.ended` line is written in the same
    /// transaction, so an end is recorded exactly when it happens.
    pub async fn end_room(
        &self,
        id: RoomId,
        actor: Actor,
        now_ms: i64,
        audit_detail: Option<serde_json::Value>,
    ) -> Result<Room> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut room = room_by_id(&tx, &id)?.ok_or(ControlError::RoomNotFound)?;
            if room.is_ended() {
                return Err(ControlError::RoomEnded);
            }
            tx.execute(
                "UPDATE rooms SET ended_at = ?2 WHERE id = ?1",
                params![id.as_str(), now_ms],
            )?;
            if let Some(detail) = audit_detail {
                audit(&tx, &id, &actor, "room.ended", None, detail, now_ms)?;
            }
            tx.commit()?;
            room.ended_at_ms = Some(now_ms);
            Ok(room)
        })
        .await
    }

    pub async fn create_invite(
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

    pub async fn list_invites(&self, room: RoomId, page: PageRequest) -> Result<Page<Invite>> {
        self.call(move |c| {
            room_by_id(c, &room)?.ok_or(ControlError::RoomNotFound)?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, {INVITE_COLUMNS} FROM invites
                 WHERE room_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(
                    params![room.as_str(), page.after.unwrap_or(0), page.limit + 1],
                    |r| Ok((r.get::<_, i64>(0)?, invite_from_row(r, 1)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(paginate(rows, page.limit))
        })
        .await
    }

    /// Revokes an invite of this room. Revoking twice is harmless and logged once.
    pub async fn revoke_invite(
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
            if !found.revoked {
                tx.execute(
                    "UPDATE invites SET revoked_at = ?2 WHERE id = ?1",
                    params![invite.as_str(), now_ms],
                )?;
                audit(
                    &tx,
                    &room,
                    &actor,
                    "invite.revoked",
                    Some(invite.as_str()),
                    serde_json::json!({}),
                    now_ms,
                )?;
                found.revoked = true;
            }
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    /// Finds an invite by its code, for moderators who kept the link rather than the id.
    pub async fn invite_id_for_code(&self, code: InviteCode) -> Result<InviteId> {
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
    pub async fn preview_invite(&self, code: InviteCode, now_ms: i64) -> Result<(Room, Invite)> {
        self.call(move |c| {
            let invite = c
                .query_row(
                    &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE code_hash = ?1"),
                    params![&code.hash()[..]],
                    |r| invite_from_row(r, 0),
                )
                .optional()?
                .ok_or(ControlError::InviteInvalid)?;
            if invite.revoked {
                return Err(ControlError::InviteInvalid);
            }
            let room = room_by_id(c, &invite.room_id)?.ok_or(ControlError::InviteInvalid)?;
            if room.is_ended() {
                return Err(ControlError::RoomEnded);
            }
            if invite.expires_at_ms.is_some_and(|at| at <= now_ms) {
                return Err(ControlError::InviteExpired);
            }
            if invite.max_uses.is_some_and(|max| invite.uses >= max) {
                return Err(ControlError::InviteUsedUp);
            }
            Ok((room, invite))
        })
        .await
    }

    /// Redeems an invite: checks it, refuses banned identities, counts the use atomically and
    /// records the identity, all in one transaction.
    pub async fn redeem(
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
            if invite.revoked {
                return Err(ControlError::InviteInvalid);
            }
            let room = room_by_id(&tx, &invite.room_id)?.ok_or(ControlError::InviteInvalid)?;
            if room.is_ended() {
                return Err(ControlError::RoomEnded);
            }
            if invite.expires_at_ms.is_some_and(|at| at <= now_ms) {
                return Err(ControlError::InviteExpired);
            }
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
                    let live_role = live_role.as_deref().and_then(Role::parse);
                    let role = live_role.map_or(invite.role, |live| live.max(invite.role));
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
            audit(
                &tx,
                &room.id,
                &Actor::Participant(participant_id.clone()),
                "invite.redeemed",
                Some(invite.id.as_str()),
                serde_json::json!({
                    "role": role,
                    "delivery": invite.delivery.for_role(role),
                    "display_name": display_name,
                }),
                now_ms,
            )?;
            tx.commit()?;
            Ok(Redemption {
                room,
                participant_id,
                display_name,
                role,
                delivery: invite.delivery.for_role(role),
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
    pub async fn ban(
        &self,
        room: RoomId,
        participant: ParticipantId,
        revoke_invite: bool,
        actor: Actor,
        now_ms: i64,
        record: bool,
    ) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
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
                    &tx,
                    &room,
                    &actor,
                    "invite.revoked",
                    Some(&invite_id),
                    serde_json::json!({ "because_banned": participant.as_str() }),
                    now_ms,
                )?;
            }
            if record && inserted > 0 {
                audit(
                    &tx,
                    &room,
                    &actor,
                    "participant.banned",
                    Some(participant.as_str()),
                    serde_json::json!({}),
                    now_ms,
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Where an identity stands in its room now: banned, its live role, its last removal.
    pub async fn standing(&self, room: RoomId, participant: ParticipantId) -> Result<Standing> {
        self.call(move |c| {
            let row: Option<(Option<String>, i64, Option<i64>)> = c
                .query_row(
                    "SELECT live_role, live_role_generation, removed_at FROM identities
                     WHERE id = ?1 AND room_id = ?2",
                    params![participant.as_str(), room.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let (role, live_role_generation, removed_at_ms) = row.unwrap_or((None, 0, None));
            Ok(Standing {
                banned: is_banned(c, &room, participant.as_str())?,
                live_role: role.as_deref().and_then(Role::parse),
                live_role_generation,
                removed_at_ms,
            })
        })
        .await
    }

    /// Records a role a live room gave this identity, at its current token generation: every
    /// session token issued so far now acts with this role.
    pub async fn set_live_role(&self, participant: ParticipantId, role: Role) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE identities SET live_role = ?2, live_role_generation = token_generation
                 WHERE id = ?1",
                params![participant.as_str(), role.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that a live room removed this identity.
    pub async fn mark_removed(&self, participant: ParticipantId, now_ms: i64) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE identities SET removed_at = ?2 WHERE id = ?1",
                params![participant.as_str(), now_ms],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn is_banned(&self, room: RoomId, participant: ParticipantId) -> Result<bool> {
        self.call(move |c| is_banned(c, &room, participant.as_str()))
            .await
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
        self.call(move |c| {
            audit(c, &room, &actor, &action, target.as_deref(), detail, now_ms)?;
            Ok(())
        })
        .await
    }

    pub async fn list_events(&self, room: RoomId, page: PageRequest) -> Result<Page<AuditEvent>> {
        self.call(move |c| {
            room_by_id(c, &room)?.ok_or(ControlError::RoomNotFound)?;
            let mut stmt = c.prepare_cached(
                "SELECT seq, room_id, at, actor, action, target, detail FROM audit_events
                 WHERE room_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(
                    params![room.as_str(), page.after.unwrap_or(0), page.limit + 1],
                    |r| {
                        let detail: String = r.get(6)?;
                        let seq: i64 = r.get(0)?;
                        Ok((
                            seq,
                            AuditEvent {
                                seq,
                                room_id: RoomId::from_trusted(r.get(1)?),
                                at_ms: r.get(2)?,
                                actor: r.get(3)?,
                                action: r.get(4)?,
                                target: r.get(5)?,
                                detail: serde_json::from_str(&detail)
                                    .unwrap_or(serde_json::Value::Null),
                            },
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(paginate(rows, page.limit))
        })
        .await
    }

    /// At start: finds or makes the demo room and gives it a fresh moderator link, revoking
    /// the link printed at the previous start. Returns `None` if the demo room was ended.
    pub async fn startup_link(&self, now_ms: i64) -> Result<Option<(Room, CreatedInvite)>> {
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
                    let new = NewRoom {
                        title: "Demo room".into(),
                        limits: RoomLimits::default(),
                    };
                    let room = insert_room(&tx, &new, true, now_ms)?;
                    audit(
                        &tx,
                        &room.id,
                        &Actor::System,
                        "room.created",
                        None,
                        serde_json::json!({ "title": room.title }),
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
            let new = NewInvite {
                role: Role::Moderator,
                delivery: Delivery::Webrtc,
                label: Some("startup link".into()),
                max_uses: None,
                expires_in_secs: Some(24 * 3600),
            };
            let created = insert_invite(&tx, &room.id, &new, &Actor::System, true, now_ms)?;
            tx.commit()?;
            Ok(Some((room, created)))
        })
        .await
    }

    /// A trivial query, so liveness means the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// `PRAGMA integrity_check`, for health checks and the durability tests.
    pub async fn integrity_check(&self) -> Result<String> {
        self.call(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
            .await
    }
}

const ROOM_COLUMNS: &str =
    "id, title, created_at, ended_at, max_participants, max_stage, webrtc_audience_cap";
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
    let room = Room {
        id: RoomId::generate(),
        title: new.title.clone(),
        created_at_ms: now_ms,
        ended_at_ms: None,
        limits: new.limits,
    };
    tx.execute(
        "INSERT INTO rooms (id, title, created_at, max_participants, max_stage, is_demo,
                            webrtc_audience_cap)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            room.id.as_str(),
            room.title,
            now_ms,
            room.limits.max_participants,
            room.limits.max_stage,
            demo,
            room.limits.webrtc_audience_cap
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
    if new.delivery.for_role(new.role) != new.delivery {
        return Err(ControlError::invalid(
            "invalid_delivery",
            format!(
                "only listener invites may have broadcast delivery, not {} invites",
                new.role
            ),
        ));
    }
    let code = InviteCode::generate();
    let expires_at_ms = new
        .expires_in_secs
        .map(|s| now_ms.saturating_add((s as i64).saturating_mul(1000)));
    let invite = Invite {
        id: InviteId::generate(),
        room_id: room.clone(),
        role: new.role,
        delivery: new.delivery,
        label: new.label.clone(),
        max_uses: new.max_uses,
        uses: 0,
        expires_at_ms,
        revoked: false,
        created_at_ms: now_ms,
    };
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
            expires_at_ms,
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
        serde_json::json!({
            "role": invite.role,
            "delivery": invite.delivery,
            "label": invite.label,
            "max_uses": invite.max_uses,
            "expires_at_ms": expires_at_ms,
        }),
        now_ms,
    )?;
    Ok(CreatedInvite { invite, code })
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

fn paginate<T>(mut rows: Vec<(i64, T)>, limit: u32) -> Page<T> {
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(|(_, item)| item).collect(),
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room_new(title: &str) -> NewRoom {
        NewRoom {
            title: title.into(),
            limits: RoomLimits::default(),
        }
    }

    fn invite_new(max_uses: Option<u32>) -> NewInvite {
        NewInvite {
            role: Role::Listener,
            delivery: Delivery::Webrtc,
            label: None,
            max_uses,
            expires_in_secs: Some(60),
        }
    }

    #[tokio::test]
    async fn redeem_counts_uses_and_keeps_identity() {
        let store = Store::open_in_memory().unwrap();
        let room = store
            .create_room(room_new("t"), Actor::Operator, 1_000)
            .await
            .unwrap();
        let created = store
            .create_invite(room.id.clone(), invite_new(Some(2)), Actor::Operator, 1_000)
            .await
            .unwrap();
        let first = store
            .redeem(created.code.clone(), "Ada".into(), None, 2_000)
            .await
            .unwrap();
        let secret = first.new_identity.clone().unwrap();
        let again = store
            .redeem(created.code.clone(), "Ada L".into(), Some(secret), 3_000)
            .await
            .unwrap();
        assert_eq!(first.participant_id, again.participant_id);
        assert!(again.new_identity.is_none());
        let third = store
            .redeem(created.code.clone(), "Bob".into(), None, 3_000)
            .await;
        assert!(matches!(third, Err(ControlError::InviteUsedUp)));
        // Expiry is checked against the time passed in.
        let later = store
            .create_invite(room.id.clone(), invite_new(None), Actor::Operator, 0)
            .await
            .unwrap();
        assert!(matches!(
            store.redeem(later.code, "C".into(), None, 60_000).await,
            Err(ControlError::InviteExpired)
        ));
    }

    #[tokio::test]
    async fn a_live_role_outranks_every_older_token_across_redemptions() {
        let store = Store::open_in_memory().unwrap();
        let room = store
            .create_room(room_new("t"), Actor::Operator, 1_000)
            .await
            .unwrap();
        let invite = |role| NewInvite {
            role,
            ..invite_new(None)
        };
        let moderators = store
            .create_invite(
                room.id.clone(),
                invite(Role::Moderator),
                Actor::Operator,
                1_000,
            )
            .await
            .unwrap();
        let public = store
            .create_invite(
                room.id.clone(),
                invite(Role::Listener),
                Actor::Operator,
                1_000,
            )
            .await
            .unwrap();
        let first = store
            .redeem(moderators.code.clone(), "Ada".into(), None, 2_000)
            .await
            .unwrap();
        let (id, secret) = (first.participant_id.clone(), first.new_identity.clone());
        let standing = || store.standing(room.id.clone(), id.clone());
        store
            .set_live_role(id.clone(), Role::Listener)
            .await
            .unwrap();
        assert_eq!(
            standing().await.unwrap().role(first.role, first.generation),
            Role::Listener
        );
        // Redeeming the public link again neither resets the live role for the old token nor
        // gives the new one more than the room left.
        let again = store
            .redeem(public.code.clone(), "Ada".into(), secret.clone(), 3_000)
            .await
            .unwrap();
        assert!(again.generation > first.generation);
        assert_eq!(again.role, Role::Listener);
        let now = standing().await.unwrap();
        assert_eq!(now.role(first.role, first.generation), Role::Listener);
        assert_eq!(now.role(again.role, again.generation), Role::Listener);
        // A moderator link redeemed on purpose grants the role to the new token only.
        let promoted = store
            .redeem(moderators.code.clone(), "Ada".into(), secret.clone(), 4_000)
            .await
            .unwrap();
        assert_eq!(promoted.role, Role::Moderator);
        let now = standing().await.unwrap();
        assert_eq!(
            now.role(promoted.role, promoted.generation),
            Role::Moderator
        );
        assert_eq!(now.role(first.role, first.generation), Role::Listener);
        // A role the room gave is kept when a lower link is redeemed again.
        store
            .set_live_role(id.clone(), Role::Speaker)
            .await
            .unwrap();
        let lower = store
            .redeem(public.code.clone(), "Ada".into(), secret, 5_000)
            .await
            .unwrap();
        assert_eq!(lower.role, Role::Speaker);
        let now = standing().await.unwrap();
        assert_eq!(now.role(promoted.role, promoted.generation), Role::Speaker);
        assert_eq!(now.role(lower.role, lower.generation), Role::Speaker);
    }

    #[tokio::test]
    async fn pages_follow_the_cursor() {
        let store = Store::open_in_memory().unwrap();
        for i in 0..5 {
            store
                .create_room(room_new(&format!("r{i}")), Actor::Operator, i)
                .await
                .unwrap();
        }
        let first = store
            .list_rooms(PageRequest {
                after: None,
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(first.items.len(), 2);
        let second = store
            .list_rooms(PageRequest {
                after: first.next_cursor,
                limit: 2,
            })
            .await
            .unwrap();
        let third = store
            .list_rooms(PageRequest {
                after: second.next_cursor,
                limit: 2,
            })
            .await
            .unwrap();
        let titles: Vec<_> = [first, second, third]
            .into_iter()
            .flat_map(|p| p.items)
            .map(|r| r.title)
            .collect();
        assert_eq!(titles, ["r0", "r1", "r2", "r3", "r4"]);
    }
}
