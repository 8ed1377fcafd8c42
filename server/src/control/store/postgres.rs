//! The PostgreSQL engine of the store: a pool of connections (deadpool) to a server that many
//! nodes share. Transactions run at READ COMMITTED and take row locks for what they decide
//! on, always in the order rooms → identities → invites, so concurrent writers on any node
//! wait for each other instead of deadlocking; no HTTP here.

use std::path::Path;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::{NoTls, Row};

use super::super::WebhookLane;
use super::super::error_chain as chain;
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

type Result<T> = std::result::Result<T, ControlError>;

/// Advisory lock keys (any two constants nobody else uses): one node migrates at a time, and
/// one node at a time makes the demo room's startup link.
const MIGRATION_LOCK: i64 = 0x5354_4f41_0001;
const STARTUP_LINK_LOCK: i64 = 0x5354_4f41_0002;

/// How long a request waits for a connection, or for a new one to be made, before it is
/// answered `store_unavailable`: a database that is down is reported, not waited for.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the pool; cheap to clone.
#[derive(Clone)]
pub(super) struct PgStore {
    pool: Pool,
    /// A call without an answer after this is given up (the server's own statement timeout,
    /// the same, cancels what runs; this covers a server that does not answer at all).
    patience: Duration,
    /// Events are written for the server's own endpoint (`[webhooks] url` is set).
    pub(super) server_webhooks: bool,
}

impl PgStore {
    pub(super) async fn connect(
        url: &str,
        max_connections: usize,
        tls_ca: Option<&Path>,
        statement_timeout: Duration,
    ) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            ControlError::Storage(format!("the database URL is not a PostgreSQL URL: {e}"))
        })?;
        let tls = match (config.get_ssl_mode(), tls_ca) {
            (SslMode::Require, ca) => Some(tls_connector(ca)?),
            (_, Some(_)) => {
                return Err(ControlError::Storage(
                    "a CA for the database is set (tls_ca) but its URL does not ask for TLS: \
                     add ?sslmode=require"
                        .into(),
                ));
            }
            // `prefer` (the default) and `disable`: plain TCP, as libpq would do with a server
            // that offers no TLS. Asking for TLS is `sslmode=require`.
            _ => {
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        // A peer that vanished without closing (a host down, a network cut) is noticed in
        // about half a minute instead of the kernel's two hours.
        config.keepalives_idle(Duration::from_secs(15));
        config.tcp_user_timeout(Duration::from_secs(30));
        // A statement stuck behind somebody's lock, or running away, is cancelled by the
        // server (SQLSTATE 57014) rather than holding a request and a pooled connection.
        let timeout_ms = statement_timeout.as_millis().max(1);
        let options = match config.get_options() {
            Some(given) if given.contains("statement_timeout") => given.to_owned(),
            Some(given) => format!("{given} -c statement_timeout={timeout_ms}"),
            None => format!("-c statement_timeout={timeout_ms}"),
        };
        config.options(&options);
        let target = describe(&config);
        // Checks a pooled connection with a round trip before handing it out, so one left
        // broken by a database restart is replaced instead of failing a request.
        let checked = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, checked),
            None => Manager::from_config(config, NoTls, checked),
        };
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| ControlError::Storage(format!("cannot build the connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            let reason = match &e {
                PoolError::Backend(e) => chain(e),
                other => chain(other),
            };
            ControlError::Storage(format!(
                "cannot connect to PostgreSQL at {target}: {reason}"
            ))
        })?;
        migrate(&mut client)
            .await
            .map_err(|e| ControlError::Storage(format!("migration failed: {e}")))?;
        Ok(PgStore {
            pool,
            // Beyond the server's own timeout: the server cancels first when it can.
            patience: statement_timeout + POOL_TIMEOUT,
            server_webhooks: false,
        })
    }

    /// `call`, given up as `Unavailable` when the database has not answered within this
    /// store's patience (a server that is stopped or cut off keeps TCP open, never answering).
    /// A write given up this way may still be committed later: it was not acknowledged.
    pub(super) async fn bounded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.patience, call).await {
            Ok(answer) => answer,
            Err(_) => Err(ControlError::Unavailable(format!(
                "PostgreSQL did not answer within {} s",
                self.patience.as_secs()
            ))),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }

    pub(super) async fn create_room(
        &self,
        new: NewRoom,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Room> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let room = insert_room(&tx, &new, false, now_ms).await?;
        let detail = rules::room_created_detail(&room);
        audit(&tx, &room.id, &actor, "room.created", None, detail, now_ms).await?;
        tx.commit().await?;
        Ok(room)
    }

    pub(super) async fn room(&self, id: RoomId) -> Result<Room> {
        let c = self.client().await?;
        room_by_id(&c, &id, "")
            .await?
            .ok_or(ControlError::RoomNotFound)
    }

    pub(super) async fn list_rooms(&self, page: PageRequest) -> Result<Page<Room>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT seq, {ROOM_COLUMNS} FROM rooms WHERE seq > $1 ORDER BY seq LIMIT $2"
                ),
                &[&page.after.unwrap_or(0), &(i64::from(page.limit) + 1)],
            )
            .await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, room_from_row(r, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(super) async fn end_room(
        &self,
        id: RoomId,
        actor: Actor,
        now_ms: i64,
        audit_detail: Option<serde_json::Value>,
        webhooks: Vec<NewWebhook>,
    ) -> Result<Room> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let room = end_in(&tx, &id, &actor, now_ms, audit_detail).await?;
        insert_webhooks(&tx, &id, &webhooks, self.server_webhooks).await?;
        tx.commit().await?;
        Ok(room)
    }

    pub(super) async fn create_invite(
        &self,
        room: RoomId,
        new: NewInvite,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedInvite> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let created = insert_invite(&tx, &room, &new, &actor, false, now_ms).await?;
        tx.commit().await?;
        Ok(created)
    }

    pub(super) async fn list_invites(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<Invite>> {
        let c = self.client().await?;
        let rows = room_page(&c, "invites", INVITE_COLUMNS, &room, page).await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, invite_from_row(r, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(super) async fn revoke_invite(
        &self,
        room: RoomId,
        invite: InviteId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Invite> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let mut found = invite_where(&tx, "id = $1", &invite.as_str(), "FOR UPDATE")
            .await?
            .filter(|i| i.room_id == room)
            .ok_or(ControlError::InviteNotFound)?;
        revoke_once(&tx, "invites", invite.as_str(), &room, &actor, now_ms).await?;
        found.revoked = true;
        tx.commit().await?;
        Ok(found)
    }

    pub(super) async fn invite_id_for_code(&self, code: InviteCode) -> Result<InviteId> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT id FROM invites WHERE code_hash = $1",
                &[&&code.hash()[..]],
            )
            .await?;
        match row {
            Some(row) => Ok(InviteId::from_trusted(row.try_get(0)?)),
            None => Err(ControlError::InviteNotFound),
        }
    }

    pub(super) async fn preview_invite(
        &self,
        code: InviteCode,
        now_ms: i64,
    ) -> Result<(Room, Invite)> {
        let c = self.client().await?;
        let invite = invite_where(&c, "code_hash = $1", &&code.hash()[..], "")
            .await?
            .ok_or(ControlError::InviteInvalid)?;
        let room = room_by_id(&c, &invite.room_id, "").await?;
        rules::check_previewable(&invite, room.as_ref(), now_ms)?;
        Ok((room.ok_or(ControlError::InviteInvalid)?, invite))
    }

    pub(super) async fn redeem(
        &self,
        code: InviteCode,
        display_name: String,
        identity: Option<IdentitySecret>,
        now_ms: i64,
    ) -> Result<Redemption> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let hash = code.hash();
        // The first read only finds the room; the locks are then taken in the usual order and
        // the invite read again under its lock, so what is checked is what is counted.
        let room_id = invite_where(&tx, "code_hash = $1", &&hash[..], "")
            .await?
            .ok_or(ControlError::InviteInvalid)?
            .room_id;
        let room = room_by_id(&tx, &room_id, "FOR SHARE").await?;
        let (secret, new_identity) = match identity {
            Some(s) => (s, false),
            None => (IdentitySecret::generate(), true),
        };
        let existing: Option<String> = tx
            .query_opt(
                "SELECT id FROM identities WHERE room_id = $1 AND secret_hash = $2 FOR UPDATE",
                &[&room_id.as_str(), &&secret.hash()[..]],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let invite = invite_where(&tx, "code_hash = $1", &&hash[..], "FOR UPDATE")
            .await?
            .ok_or(ControlError::InviteInvalid)?;
        rules::check_redeemable(&invite, room.as_ref(), now_ms)?;
        let room = room.ok_or(ControlError::InviteInvalid)?;
        if let Some(id) = &existing
            && is_banned(&tx, &room.id, id).await?
        {
            return Err(ControlError::Banned);
        }
        // The invite row is locked, and the update is conditional besides: concurrent
        // redemptions on any number of nodes never count past max_uses.
        let counted = tx
            .execute(
                "UPDATE invites SET uses = uses + 1
                 WHERE id = $1 AND (max_uses IS NULL OR uses < max_uses)",
                &[&invite.id.as_str()],
            )
            .await?;
        if counted == 0 {
            return Err(ControlError::InviteUsedUp);
        }
        let (participant_id, generation, role) = match existing {
            Some(id) => {
                let row = tx
                    .query_one(
                        "UPDATE identities SET display_name = $2, last_joined_at = $3,
                         invite_id = $4, token_generation = token_generation + 1
                         WHERE id = $1 RETURNING token_generation, live_role",
                        &[&id, &display_name, &now_ms, &invite.id.as_str()],
                    )
                    .await?;
                let live_role: Option<String> = row.try_get(1)?;
                let role = rules::role_after_redemption(live_role.as_deref(), invite.role);
                (ParticipantId::from_trusted(id), row.try_get(0)?, role)
            }
            None => {
                let id = ParticipantId::generate();
                tx.execute(
                    "INSERT INTO identities
                     (id, room_id, secret_hash, display_name, invite_id, created_at,
                      last_joined_at, token_generation)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, 1)",
                    &[
                        &id.as_str(),
                        &room.id.as_str(),
                        &&secret.hash()[..],
                        &display_name,
                        &invite.id.as_str(),
                        &now_ms,
                    ],
                )
                .await?;
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
        )
        .await?;
        tx.commit().await?;
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
    }

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
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let banned = ban_in(
            &tx,
            &room,
            &participant,
            revoke_invite,
            &actor,
            now_ms,
            record,
        )
        .await?;
        if banned {
            insert_webhooks(&tx, &room, &webhooks, self.server_webhooks).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn standing(
        &self,
        room: RoomId,
        participant: ParticipantId,
    ) -> Result<Standing> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT live_role, live_role_generation, removed_at, token_generation
                 FROM identities WHERE id = $1 AND room_id = $2",
                &[&participant.as_str(), &room.as_str()],
            )
            .await?;
        type Row = (Option<String>, i64, Option<i64>, i64);
        let (role, live_role_generation, removed_at_ms, token_generation): Row = match row {
            Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
            None => (None, 0, None, 0),
        };
        Ok(Standing {
            banned: is_banned(&c, &room, participant.as_str()).await?,
            live_role: role.as_deref().and_then(Role::parse),
            live_role_generation,
            removed_at_ms,
            token_generation,
        })
    }

    pub(super) async fn is_banned(&self, room: RoomId, participant: ParticipantId) -> Result<bool> {
        let c = self.client().await?;
        is_banned(&c, &room, participant.as_str()).await
    }

    pub(super) async fn write_room(&self, room: RoomId, write: RoomWrite) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        for record in write.records {
            record_in(&tx, &room, record).await?;
        }
        insert_webhooks(&tx, &room, &write.webhooks, self.server_webhooks).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn claim_webhooks(
        &self,
        owner: String,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
        lane: WebhookLane,
    ) -> Result<Vec<ClaimedWebhook>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Rows another node is claiming right now are locked: skipped, not waited for. A row
        // it claimed before carries its lease.
        let rows = tx
            .query(
                "SELECT d.seq, d.id, d.body, d.attempts, d.created_at, d.endpoint, w.url, w.secret
                 FROM webhook_deliveries d LEFT JOIN room_webhooks w ON w.id = d.endpoint
                 WHERE d.seq IN (SELECT MIN(seq) FROM webhook_deliveries
                                 WHERE state = 'pending' AND (endpoint IS NULL) = $3
                                 GROUP BY room_id, endpoint)
                   AND d.next_attempt_at <= $1
                   AND (d.lease_until IS NULL OR d.lease_until <= $1)
                 ORDER BY d.seq LIMIT $2
                 FOR UPDATE OF d SKIP LOCKED",
                &[&now_ms, &i64::from(limit), &(lane == WebhookLane::Server)],
            )
            .await?;
        let claimed = rows
            .iter()
            .map(|r| {
                Ok(ClaimedWebhook {
                    seq: r.try_get(0)?,
                    id: r.try_get(1)?,
                    body: r.try_get(2)?,
                    attempts: to_u32(r.try_get(3)?),
                    created_at_ms: r.try_get(4)?,
                    destination: rules::destination(r.try_get(5)?, r.try_get(6)?, r.try_get(7)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
        tx.execute(
            "UPDATE webhook_deliveries SET lease_owner = $2, lease_until = $3
             WHERE seq = ANY($1)",
            &[&seqs, &owner, &(now_ms + lease_ms)],
        )
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    pub(super) async fn next_webhook_due(&self, lane: WebhookLane) -> Result<Option<i64>> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, 0)))
                 FROM webhook_deliveries
                 WHERE seq IN (SELECT MIN(seq) FROM webhook_deliveries
                               WHERE state = 'pending' AND (endpoint IS NULL) = $1
                               GROUP BY room_id, endpoint)",
                &[&(lane == WebhookLane::Server)],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub(super) async fn finish_webhook(
        &self,
        seq: i64,
        owner: String,
        attempt: WebhookAttempt,
        now_ms: i64,
    ) -> Result<bool> {
        let f = rules::finished_webhook(&attempt, now_ms);
        let c = self.client().await?;
        let changed = c
            .execute(
                "UPDATE webhook_deliveries
                 SET state = $3, attempts = attempts + 1,
                     next_attempt_at = COALESCE($4, next_attempt_at), last_status = $5,
                     last_error = $6, finished_at = $7, lease_owner = NULL, lease_until = NULL
                 WHERE seq = $1 AND lease_owner = $2 AND state = 'pending'",
                &[
                    &seq,
                    &owner,
                    &f.state,
                    &f.next_attempt_at,
                    &f.status,
                    &f.error,
                    &f.finished_at,
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    pub(super) async fn list_webhook_deliveries(
        &self,
        state: Option<DeliveryState>,
        page: PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT seq, {WEBHOOK_COLUMNS} FROM webhook_deliveries
                     WHERE ($1::TEXT IS NULL OR state = $1) AND seq > $2 ORDER BY seq LIMIT $3"
                ),
                &[
                    &state.map(DeliveryState::as_str),
                    &page.after.unwrap_or(0),
                    &(i64::from(page.limit) + 1),
                ],
            )
            .await?;
        let rows = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(super) async fn prune_webhooks(&self, before_ms: i64) -> Result<u64> {
        let c = self.client().await?;
        Ok(c.execute(
            "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished_at < $1",
            &[&before_ms],
        )
        .await?)
    }

    pub(super) async fn list_events(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>> {
        let c = self.client().await?;
        let columns = "room_id, at, actor, action, target, detail";
        let rows = room_page(&c, "audit_events", columns, &room, page).await?;
        let rows = rows
            .iter()
            .map(|r| {
                let seq: i64 = r.try_get(0)?;
                let detail: String = r.try_get(6)?;
                Ok((
                    seq,
                    AuditEvent {
                        seq,
                        room_id: RoomId::from_trusted(r.try_get(1)?),
                        at_ms: r.try_get(2)?,
                        actor: r.try_get(3)?,
                        action: r.try_get(4)?,
                        target: r.try_get(5)?,
                        detail: rules::parse_detail(&detail),
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(super) async fn create_recording(
        &self,
        room: RoomId,
        node: String,
        now_ms: i64,
    ) -> Result<Recording> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let found = room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        if found.is_ended() {
            return Err(ControlError::RoomEnded);
        }
        let id = RecordingId::generate();
        let inserted = tx
            .query_one(
                &format!(
                    "INSERT INTO recordings (id, room_id, state, started_at, node)
                     VALUES ($1, $2, 'recording', $3, $4) RETURNING {RECORDING_COLUMNS}"
                ),
                &[&id.as_str(), &room.as_str(), &now_ms, &node],
            )
            .await;
        let row = match inserted {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                return Err(ControlError::AlreadyRecording);
            }
            other => other?,
        };
        let recording = recording_from_row(&row, 0)?;
        tx.commit().await?;
        Ok(recording)
    }

    pub(super) async fn finish_recording(
        &self,
        id: RecordingId,
        f: FinishedRecording,
        webhooks: Vec<NewWebhook>,
    ) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let room = tx
            .query_opt(
                "UPDATE recordings SET state = $2, ended_at = $3, duration_ms = $4, size_bytes = $5
                 WHERE id = $1 AND state = 'recording' RETURNING room_id",
                &[
                    &id.as_str(),
                    &f.state.as_str(),
                    &f.ended_at_ms,
                    &f.duration_ms,
                    &f.size_bytes,
                ],
            )
            .await?;
        let Some(room) = room else {
            return Ok(false);
        };
        let room = RoomId::from_trusted(room.try_get(0)?);
        insert_webhooks(&tx, &room, &webhooks, self.server_webhooks).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn recording(&self, room: RoomId, id: RecordingId) -> Result<Recording> {
        let c = self.client().await?;
        c.query_opt(
            &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = $1 AND room_id = $2"),
            &[&id.as_str(), &room.as_str()],
        )
        .await?
        .map(|r| recording_from_row(&r, 0))
        .transpose()?
        .ok_or(ControlError::RecordingNotFound)
    }

    pub(super) async fn list_recordings(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<Recording>> {
        let c = self.client().await?;
        let rows = room_page(&c, "recordings", RECORDING_COLUMNS, &room, page).await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, recording_from_row(r, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(super) async fn delete_recording(
        &self,
        room: RoomId,
        id: RecordingId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(Recording, Vec<Clip>)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RecordingNotFound)?;
        let recording = tx
            .query_opt(
                &format!(
                    "SELECT {RECORDING_COLUMNS} FROM recordings
                     WHERE id = $1 AND room_id = $2 FOR UPDATE"
                ),
                &[&id.as_str(), &room.as_str()],
            )
            .await?
            .map(|r| recording_from_row(&r, 0))
            .transpose()?
            .ok_or(ControlError::RecordingNotFound)?;
        if recording.state == RecordingState::Recording {
            return Err(ControlError::RecordingInProgress);
        }
        tx.execute(
            "DELETE FROM replay_links WHERE recording_id = $1",
            &[&id.as_str()],
        )
        .await?;
        let clips = clips::delete_clips_of_recording(&tx, &id).await?;
        tx.execute("DELETE FROM recordings WHERE id = $1", &[&id.as_str()])
            .await?;
        let detail = rules::recording_deleted_detail(&recording);
        audit(
            &tx,
            &room,
            &actor,
            "recording.deleted",
            None,
            detail,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok((recording, clips))
    }

    pub(super) async fn unfinished_recordings(&self, node: String) -> Result<Vec<Recording>> {
        let c = self.client().await?;
        c.query(
            &format!(
                "SELECT {RECORDING_COLUMNS} FROM recordings
                 WHERE node = $1 AND state = 'recording' ORDER BY seq"
            ),
            &[&node],
        )
        .await?
        .iter()
        .map(|r| recording_from_row(r, 0))
        .collect()
    }

    pub(super) async fn create_replay_link(
        &self,
        room: RoomId,
        recording: RecordingId,
        new: NewReplayLink,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedReplayLink> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let found = tx
            .query_opt(
                "SELECT 1 FROM recordings WHERE id = $1 AND room_id = $2 FOR SHARE",
                &[&recording.as_str(), &room.as_str()],
            )
            .await?;
        if found.is_none() {
            return Err(ControlError::RecordingNotFound);
        }
        let created = rules::new_replay_link(&room, &recording, &new, now_ms);
        let link = &created.link;
        tx.execute(
            "INSERT INTO replay_links (id, room_id, recording_id, code_hash, label, max_uses,
                                       expires_at, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &link.id.as_str(),
                &room.as_str(),
                &recording.as_str(),
                &&created.code.hash()[..],
                &link.label,
                &link.max_uses.map(i64::from),
                &link.expires_at_ms,
                &now_ms,
                &actor.as_audit_str(),
            ],
        )
        .await?;
        let detail = rules::replay_link_created_detail(link);
        let target = Some(link.id.as_str());
        audit(
            &tx,
            &room,
            &actor,
            "replay_link.created",
            target,
            detail,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    pub(super) async fn list_replay_links(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<ReplayLink>> {
        let c = self.client().await?;
        let rows = room_page(&c, "replay_links", REPLAY_LINK_COLUMNS, &room, page).await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, replay_link_from_row(r, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(super) async fn revoke_replay_link(
        &self,
        room: RoomId,
        link: ReplayLinkId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<ReplayLink> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let mut found = replay_link_where(&tx, "id = $1", &link.as_str(), "FOR UPDATE")
            .await?
            .filter(|l| l.room_id == room)
            .ok_or(ControlError::ReplayLinkNotFound)?;
        revoke_once(&tx, "replay_links", link.as_str(), &room, &actor, now_ms).await?;
        found.revoked = true;
        tx.commit().await?;
        Ok(found)
    }

    pub(super) async fn redeem_replay_link(
        &self,
        code: InviteCode,
        now_ms: i64,
    ) -> Result<ReplayLink> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let mut link = replay_link_where(&tx, "code_hash = $1", &&code.hash()[..], "FOR UPDATE")
            .await?
            .ok_or(ControlError::ReplayLinkInvalid)?;
        rules::check_replay_redeemable(&link, now_ms)?;
        // Locked, and conditional besides: concurrent redemptions never count past max_uses.
        let counted = tx
            .execute(
                "UPDATE replay_links SET uses = uses + 1
                 WHERE id = $1 AND (max_uses IS NULL OR uses < max_uses)",
                &[&link.id.as_str()],
            )
            .await?;
        if counted == 0 {
            return Err(ControlError::ReplayLinkUsedUp);
        }
        tx.commit().await?;
        link.uses += 1;
        Ok(link)
    }

    pub(super) async fn replay_link(&self, id: ReplayLinkId) -> Result<ReplayLink> {
        let c = self.client().await?;
        replay_link_where(&c, "id = $1", &id.as_str(), "")
            .await?
            .ok_or(ControlError::ReplayLinkInvalid)
    }

    pub(super) async fn display_names(
        &self,
        room: RoomId,
        participants: Vec<ParticipantId>,
    ) -> Result<Vec<(ParticipantId, String)>> {
        let c = self.client().await?;
        let ids: Vec<&str> = participants.iter().map(|p| p.as_str()).collect();
        let rows = c
            .query(
                "SELECT id, display_name FROM identities
                 WHERE room_id = $1 AND id = ANY($2) ORDER BY id",
                &[&room.as_str(), &ids],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((ParticipantId::from_trusted(r.try_get(0)?), r.try_get(1)?)))
            .collect()
    }

    pub(super) async fn startup_link(&self, now_ms: i64) -> Result<Option<(Room, CreatedInvite)>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Nodes starting together make one demo room between them, not one each.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&STARTUP_LINK_LOCK])
            .await?;
        let demo = tx
            .query_opt(
                &format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE is_demo LIMIT 1 FOR SHARE"),
                &[],
            )
            .await?
            .map(|r| room_from_row(&r, 0))
            .transpose()?;
        let room = match demo {
            Some(room) if room.is_ended() => return Ok(None),
            Some(room) => room,
            None => {
                let room = insert_room(&tx, &rules::demo_room(), true, now_ms).await?;
                let detail = rules::room_created_detail(&room);
                audit(
                    &tx,
                    &room.id,
                    &Actor::System,
                    "room.created",
                    None,
                    detail,
                    now_ms,
                )
                .await?;
                room
            }
        };
        tx.execute(
            "UPDATE invites SET revoked_at = $2
             WHERE room_id = $1 AND is_startup AND revoked_at IS NULL",
            &[&room.id.as_str(), &now_ms],
        )
        .await?;
        let created = insert_invite(
            &tx,
            &room.id,
            &rules::startup_invite(),
            &Actor::System,
            true,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(Some((room, created)))
    }

    pub(super) async fn ping(&self) -> Result<()> {
        let c = self.client().await?;
        c.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    pub(super) async fn integrity_check(&self) -> Result<String> {
        self.ping().await?;
        Ok("ok".into())
    }
}

/// Brings the schema up to date in one transaction, holding a lock so that nodes starting
/// together migrate one after the other. Refuses a schema newer than this build knows.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    // A migration may rightly take longer than a request's statement timeout.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS stoa_schema_version (version BIGINT NOT NULL)")
        .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM stoa_schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(ControlError::Storage(format!(
            "the database has schema version {current}, newer than this build's {known}; \
             run a newer stoa"
        )));
    }
    for migration in &MIGRATIONS[current as usize..] {
        tx.batch_execute(migration.postgres).await?;
    }
    if current < known {
        tx.execute("DELETE FROM stoa_schema_version", &[]).await?;
        tx.execute(
            "INSERT INTO stoa_schema_version (version) VALUES ($1)",
            &[&known],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `user@host:port/database`, never the password, for error messages.
/// TLS for `sslmode=require`. Unlike libpq's `require`, the server's certificate is always
/// verified, name included (libpq's `verify-full`): against `ca` (PEM, one or more
/// certificates) when given, else against the system's roots. A password is never sent to a
/// server that has not proven who it is.
fn tls_connector(ca: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    ControlError::Storage(format!(
                        "cannot read the database CA {}: {e}",
                        path.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(ControlError::Storage(format!(
                    "the database CA {} holds no certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    ControlError::Storage(format!(
                        "the database CA {} is not usable: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ControlError::Storage(
                    "sslmode=require, but the system has no root certificates: set the \
                     database's tls_ca"
                        .into(),
                ));
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ControlError::Storage(format!("TLS for the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

const ROOM_COLUMNS: &str = "id, title, created_at, ended_at, max_participants, max_stage, \
     webrtc_audience_cap, record_by_default, retention_days";
const INVITE_COLUMNS: &str =
    "id, room_id, role, label, max_uses, uses, expires_at, revoked_at, created_at, delivery";

/// Counts and bounds are `u32` in the model and `BIGINT` in the schema (PostgreSQL has no
/// unsigned types); the schema's checks keep them in range.
fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Retention days are `INTEGER` in the schema; the API bounds them to 36500.
fn days_to_i32(days: u32) -> i32 {
    i32::try_from(days).unwrap_or(i32::MAX)
}

const RECORDING_COLUMNS: &str =
    "id, room_id, state, started_at, ended_at, duration_ms, size_bytes, node";

fn recording_from_row(r: &Row, at: usize) -> Result<Recording> {
    let state: String = r.try_get(at + 2)?;
    Ok(Recording {
        id: RecordingId::from_trusted(r.try_get(at)?),
        room_id: RoomId::from_trusted(r.try_get(at + 1)?),
        state: RecordingState::parse(&state).unwrap_or(RecordingState::Failed),
        started_at_ms: r.try_get(at + 3)?,
        ended_at_ms: r.try_get(at + 4)?,
        duration_ms: r.try_get(at + 5)?,
        size_bytes: r.try_get(at + 6)?,
        node: r.try_get(at + 7)?,
    })
}

fn room_from_row(r: &Row, at: usize) -> Result<Room> {
    Ok(Room {
        id: RoomId::from_trusted(r.try_get(at)?),
        title: r.try_get(at + 1)?,
        created_at_ms: r.try_get(at + 2)?,
        ended_at_ms: r.try_get(at + 3)?,
        limits: RoomLimits {
            max_participants: r.try_get::<_, Option<i64>>(at + 4)?.map(to_u32),
            max_stage: r.try_get::<_, Option<i64>>(at + 5)?.map(to_u32),
            webrtc_audience_cap: r.try_get::<_, Option<i64>>(at + 6)?.map(to_u32),
        },
        recording: RecordingPolicy {
            record_by_default: r.try_get(at + 7)?,
            retention_days: r
                .try_get::<_, Option<i32>>(at + 8)?
                .map(|d| to_u32(d.into())),
        },
    })
}

fn invite_from_row(r: &Row, at: usize) -> Result<Invite> {
    let role: String = r.try_get(at + 2)?;
    Ok(Invite {
        id: InviteId::from_trusted(r.try_get(at)?),
        room_id: RoomId::from_trusted(r.try_get(at + 1)?),
        // The schema's CHECK constraint only admits the three known roles.
        role: Role::parse(&role).unwrap_or(Role::Listener),
        label: r.try_get(at + 3)?,
        max_uses: r.try_get::<_, Option<i64>>(at + 4)?.map(to_u32),
        uses: to_u32(r.try_get(at + 5)?),
        expires_at_ms: r.try_get(at + 6)?,
        revoked: r.try_get::<_, Option<i64>>(at + 7)?.is_some(),
        created_at_ms: r.try_get(at + 8)?,
        // The schema's CHECK constraint only admits the two known deliveries.
        delivery: Delivery::parse(r.try_get(at + 9)?).unwrap_or_default(),
    })
}

/// The room, read plainly (`lock` empty) or under a row lock (`FOR SHARE`, …).
/// One page of a room's rows of `table` in `seq` order (`seq`, then `columns`), one row more
/// than the page for [`rules::paginate`]; the room must exist.
async fn room_page(
    c: &impl GenericClient,
    table: &str,
    columns: &str,
    room: &RoomId,
    page: PageRequest,
) -> Result<Vec<Row>> {
    room_by_id(c, room, "")
        .await?
        .ok_or(ControlError::RoomNotFound)?;
    Ok(c.query(
        &format!(
            "SELECT seq, {columns} FROM {table} WHERE room_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        ),
        &[
            &room.as_str(),
            &page.after.unwrap_or(0),
            &(i64::from(page.limit) + 1),
        ],
    )
    .await?)
}

async fn room_by_id(c: &impl GenericClient, id: &RoomId, lock: &str) -> Result<Option<Room>> {
    c.query_opt(
        &format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1 {lock}"),
        &[&id.as_str()],
    )
    .await?
    .map(|r| room_from_row(&r, 0))
    .transpose()
}

/// The invite matching `condition` on `$1`, read plainly or under a row lock.
async fn invite_where(
    c: &impl GenericClient,
    condition: &str,
    value: &(dyn tokio_postgres::types::ToSql + Sync),
    lock: &str,
) -> Result<Option<Invite>> {
    c.query_opt(
        &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE {condition} {lock}"),
        &[value],
    )
    .await?
    .map(|r| invite_from_row(&r, 0))
    .transpose()
}

const REPLAY_LINK_COLUMNS: &str =
    "id, room_id, recording_id, label, max_uses, uses, expires_at, revoked_at, created_at";

fn replay_link_from_row(r: &Row, at: usize) -> Result<ReplayLink> {
    Ok(ReplayLink {
        id: ReplayLinkId::from_trusted(r.try_get(at)?),
        room_id: RoomId::from_trusted(r.try_get(at + 1)?),
        recording_id: RecordingId::from_trusted(r.try_get(at + 2)?),
        label: r.try_get(at + 3)?,
        max_uses: r.try_get::<_, Option<i64>>(at + 4)?.map(to_u32),
        uses: to_u32(r.try_get(at + 5)?),
        expires_at_ms: r.try_get(at + 6)?,
        revoked: r.try_get::<_, Option<i64>>(at + 7)?.is_some(),
        created_at_ms: r.try_get(at + 8)?,
    })
}

/// The replay link matching `condition` on `$1`, read plainly or under a row lock.
async fn replay_link_where(
    c: &impl GenericClient,
    condition: &str,
    value: &(dyn tokio_postgres::types::ToSql + Sync),
    lock: &str,
) -> Result<Option<ReplayLink>> {
    c.query_opt(
        &format!("SELECT {REPLAY_LINK_COLUMNS} FROM replay_links WHERE {condition} {lock}"),
        &[value],
    )
    .await?
    .map(|r| replay_link_from_row(&r, 0))
    .transpose()
}

async fn is_banned(c: &impl GenericClient, room: &RoomId, participant: &str) -> Result<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM bans WHERE room_id = $1 AND participant_id = $2)",
        &[&room.as_str(), &participant],
    )
    .await?
    .try_get(0)?)
}

async fn insert_room(
    tx: &deadpool_postgres::Transaction<'_>,
    new: &NewRoom,
    demo: bool,
    now_ms: i64,
) -> Result<Room> {
    let room = rules::new_room(new, now_ms);
    tx.execute(
        "INSERT INTO rooms (id, title, created_at, max_participants, max_stage, is_demo,
                            webrtc_audience_cap, record_by_default, retention_days)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &room.id.as_str(),
            &room.title,
            &now_ms,
            &room.limits.max_participants.map(i64::from),
            &room.limits.max_stage.map(i64::from),
            &demo,
            &room.limits.webrtc_audience_cap.map(i64::from),
            &room.recording.record_by_default,
            &room.recording.retention_days.map(days_to_i32),
        ],
    )
    .await?;
    Ok(room)
}

async fn insert_invite(
    tx: &deadpool_postgres::Transaction<'_>,
    room: &RoomId,
    new: &NewInvite,
    actor: &Actor,
    startup: bool,
    now_ms: i64,
) -> Result<CreatedInvite> {
    let found = room_by_id(tx, room, "FOR SHARE")
        .await?
        .ok_or(ControlError::RoomNotFound)?;
    if found.is_ended() {
        return Err(ControlError::RoomEnded);
    }
    rules::check_new_invite(new)?;
    let created = rules::new_invite(room, new, now_ms);
    let invite = &created.invite;
    tx.execute(
        "INSERT INTO invites (id, room_id, code_hash, role, label, max_uses, expires_at,
                              created_at, created_by, is_startup, delivery)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &invite.id.as_str(),
            &room.as_str(),
            &&created.code.hash()[..],
            &invite.role.as_str(),
            &invite.label,
            &invite.max_uses.map(i64::from),
            &invite.expires_at_ms,
            &now_ms,
            &actor.as_audit_str(),
            &startup,
            &invite.delivery.as_str(),
        ],
    )
    .await?;
    let detail = rules::invite_created_detail(invite);
    let target = Some(invite.id.as_str());
    audit(tx, room, actor, "invite.created", target, detail, now_ms).await?;
    Ok(created)
}

/// Revokes row `id` of `table` (`invites` or `replay_links`, locked by the caller) if it is not
/// revoked yet, with its audit line (`invite.revoked`, `replay_link.revoked`).
async fn revoke_once(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    id: &str,
    room: &RoomId,
    actor: &Actor,
    now_ms: i64,
) -> Result<()> {
    let changed = tx
        .execute(
            &format!("UPDATE {table} SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"),
            &[&id, &now_ms],
        )
        .await?;
    if changed == 1 {
        let action = rules::revoked_action(table);
        let detail = serde_json::json!({});
        audit(tx, room, actor, action, Some(id), detail, now_ms).await?;
    }
    Ok(())
}

async fn audit(
    c: &impl GenericClient,
    room: &RoomId,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
    now_ms: i64,
) -> Result<()> {
    c.execute(
        "INSERT INTO audit_events (room_id, at, actor, action, target, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &room.as_str(),
            &now_ms,
            &actor.as_audit_str(),
            &action,
            &target,
            &detail.to_string(),
        ],
    )
    .await?;
    Ok(())
}

/// Whether an error means "the database is not there now" (answered 503 `store_unavailable`)
/// rather than "the database refused this" (a bug or a broken schema: 500).
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 08: connection exceptions; 57P0x: the server shutting down or starting up;
        // 53300: too many connections.
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                // The statement timeout: the database is too busy (or locked) to answer now.
                SqlState::QUERY_CANCELED,
            ]
            .contains(code);
    }
    // No answer from the server at all: the socket failed, or it timed out.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
}

impl From<tokio_postgres::Error> for ControlError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            ControlError::Unavailable(chain(&e))
        } else {
            ControlError::Storage(chain(&e))
        }
    }
}

fn pool_error(e: PoolError) -> ControlError {
    match e {
        PoolError::Backend(e) => e.into(),
        PoolError::Timeout(_) | PoolError::Closed => ControlError::Unavailable(e.to_string()),
        other => ControlError::Storage(other.to_string()),
    }
}

/// Ends a room inside `tx`, holding its row against new invites and redemptions; refuses one
/// already ended.
async fn end_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &RoomId,
    actor: &Actor,
    now_ms: i64,
    audit_detail: Option<serde_json::Value>,
) -> Result<Room> {
    let mut room = room_by_id(tx, id, "FOR NO KEY UPDATE")
        .await?
        .ok_or(ControlError::RoomNotFound)?;
    if room.is_ended() {
        return Err(ControlError::RoomEnded);
    }
    tx.execute(
        "UPDATE rooms SET ended_at = $2 WHERE id = $1",
        &[&id.as_str(), &now_ms],
    )
    .await?;
    if let Some(detail) = audit_detail {
        audit(tx, id, actor, "room.ended", None, detail, now_ms).await?;
    }
    room.ended_at_ms = Some(now_ms);
    Ok(room)
}

/// Adds events to the webhook outbox inside `tx`, due at once: one row per event for the
/// server's endpoint (`to_server`), and one for the room's own endpoint if it has one.
async fn insert_webhooks(
    tx: &deadpool_postgres::Transaction<'_>,
    room: &RoomId,
    hooks: &[NewWebhook],
    to_server: bool,
) -> Result<()> {
    if hooks.is_empty() {
        return Ok(());
    }
    let room_endpoint = room_webhooks::endpoint_of(tx, room).await?.map(|e| e.id);
    let insert = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries
                 (id, room_id, event_type, body, created_at, next_attempt_at, endpoint)
             VALUES ($1, $2, $3, $4, $5, $5, $6)",
        )
        .await?;
    for hook in hooks {
        if to_server {
            tx.execute(
                &insert,
                &[
                    &hook.id,
                    &room.as_str(),
                    &hook.event_type,
                    &hook.body,
                    &hook.created_at_ms,
                    &None::<String>,
                ],
            )
            .await?;
        }
        if let Some(endpoint) = &room_endpoint {
            tx.execute(
                &insert,
                &[
                    &rules::room_copy_id(),
                    &room.as_str(),
                    &hook.event_type,
                    &hook.body,
                    &hook.created_at_ms,
                    endpoint,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

const WEBHOOK_COLUMNS: &str = "id, room_id, event_type, state, attempts, created_at,
    CASE WHEN state = 'pending' THEN next_attempt_at END, last_status, last_error, finished_at,
    endpoint";

/// A row of `SELECT seq, {WEBHOOK_COLUMNS}` as a page entry.
fn delivery_from_row(r: &tokio_postgres::Row) -> Result<(i64, WebhookDelivery)> {
    let state: String = r.try_get(4)?;
    Ok((
        r.try_get(0)?,
        WebhookDelivery {
            id: r.try_get(1)?,
            room_id: RoomId::from_trusted(r.try_get(2)?),
            event_type: r.try_get(3)?,
            // The schema's CHECK admits the three states only.
            state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
            attempts: to_u32(r.try_get(5)?),
            created_at_ms: r.try_get(6)?,
            next_attempt_at_ms: r.try_get(7)?,
            last_status: r
                .try_get::<_, Option<i64>>(8)?
                .and_then(|s| u16::try_from(s).ok()),
            last_error: r.try_get(9)?,
            finished_at_ms: r.try_get(10)?,
            endpoint: r.try_get(11)?,
        },
    ))
}

/// Bans inside `tx`; `record` writes the ban's audit line. Whether the ban is new.
async fn ban_in(
    tx: &deadpool_postgres::Transaction<'_>,
    room: &RoomId,
    participant: &ParticipantId,
    revoke_invite: bool,
    actor: &Actor,
    now_ms: i64,
    record: bool,
) -> Result<bool> {
    room_by_id(tx, room, "FOR SHARE")
        .await?
        .ok_or(ControlError::RoomNotFound)?;
    // Locked, so a redemption by this identity either finishes first (and the invite it
    // used is the one revoked) or waits and then sees the ban.
    let invite_id: Option<String> = tx
        .query_opt(
            "SELECT invite_id FROM identities WHERE id = $1 AND room_id = $2 FOR UPDATE",
            &[&participant.as_str(), &room.as_str()],
        )
        .await?
        .ok_or(ControlError::ParticipantNotFound)?
        .try_get(0)?;
    let inserted = tx
        .execute(
            "INSERT INTO bans (room_id, participant_id, created_at, created_by)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[
                &room.as_str(),
                &participant.as_str(),
                &now_ms,
                &actor.as_audit_str(),
            ],
        )
        .await?;
    if revoke_invite
        && let Some(invite_id) = invite_id
        && tx
            .execute(
                "UPDATE invites SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&invite_id, &now_ms],
            )
            .await?
            > 0
    {
        let detail = serde_json::json!({ "because_banned": participant.as_str() });
        let target = Some(invite_id.as_str());
        audit(tx, room, actor, "invite.revoked", target, detail, now_ms).await?;
    }
    if record && inserted > 0 {
        let detail = serde_json::json!({});
        let target = Some(participant.as_str());
        audit(
            tx,
            room,
            actor,
            "participant.banned",
            target,
            detail,
            now_ms,
        )
        .await?;
    }
    Ok(inserted > 0)
}

/// Writes one of a live room's records inside `tx`.
async fn record_in(
    tx: &deadpool_postgres::Transaction<'_>,
    room: &RoomId,
    record: RoomRecord,
) -> Result<()> {
    match record {
        RoomRecord::Role { participant, role } => {
            tx.execute(
                "UPDATE identities SET live_role = $2, live_role_generation = token_generation
                 WHERE id = $1",
                &[&participant.as_str(), &role.as_str()],
            )
            .await?;
        }
        RoomRecord::Removal { participant, at_ms } => {
            tx.execute(
                "UPDATE identities SET removed_at = $2 WHERE id = $1",
                &[&participant.as_str(), &at_ms],
            )
            .await?;
        }
        RoomRecord::Ban {
            participant,
            revoke_invite,
            actor,
            at_ms,
        } => {
            ban_in(tx, room, &participant, revoke_invite, &actor, at_ms, false).await?;
        }
        RoomRecord::End {
            actor,
            at_ms,
            detail,
        } => match end_in(tx, room, &actor, at_ms, Some(detail)).await {
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
        } => {
            let target = target.as_deref();
            audit(tx, room, &actor, &action, target, detail, at_ms).await?;
        }
    }
    Ok(())
}
