//! The SQLite engine's room webhook endpoints: set (or move) one, rotate its secret, delete it
//! with the rows still waiting for it, each with its audit line; list what was sent to a
//! room's endpoints. Only SQL here; what a valid URL is is decided before.

use rusqlite::{OptionalExtension, Row, params};

use super::super::super::model::PageRequest;
use super::super::super::{
    Actor, ControlError, DeliveryState, Page, RoomId, RoomWebhook, RoomWebhookChange,
    WebhookDelivery,
};
use super::super::rules;
use super::{Result, SqliteStore, WEBHOOK_COLUMNS, audit, delivery_from_row, room_by_id};

const COLUMNS: &str =
    "id, room_id, url, secret, created_at, created_by, updated_at, secret_rotated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<RoomWebhook> {
    Ok(RoomWebhook {
        id: r.get(0)?,
        room_id: RoomId::from_trusted(r.get(1)?),
        url: r.get(2)?,
        secret: r.get(3)?,
        created_at_ms: r.get(4)?,
        created_by: r.get(5)?,
        updated_at_ms: r.get(6)?,
        secret_rotated_at_ms: r.get(7)?,
    })
}

/// The room's endpoint, if it has one.
pub(super) fn endpoint_of(c: &rusqlite::Connection, room: &RoomId) -> Result<Option<RoomWebhook>> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM room_webhooks WHERE room_id = ?1"),
        params![room.as_str()],
        from_row,
    )
    .optional()?)
}

impl SqliteStore {
    pub(in super::super) async fn set_room_webhook(
        &self,
        room: RoomId,
        url: String,
        new_secret: String,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(RoomWebhook, RoomWebhookChange)> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let found = room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            if found.is_ended() {
                return Err(ControlError::RoomEnded);
            }
            let (change, action) = match endpoint_of(&tx, &room)? {
                Some(_) => {
                    tx.execute(
                        "UPDATE room_webhooks SET url = ?2, updated_at = ?3 WHERE room_id = ?1",
                        params![room.as_str(), url, now_ms],
                    )?;
                    (RoomWebhookChange::Updated, "webhook.updated")
                }
                None => {
                    tx.execute(
                        &format!(
                            "INSERT INTO room_webhooks ({COLUMNS})
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?5)"
                        ),
                        params![
                            rules::new_room_webhook_id(),
                            room.as_str(),
                            url,
                            new_secret,
                            now_ms,
                            actor.as_audit_str()
                        ],
                    )?;
                    (RoomWebhookChange::Created, "webhook.created")
                }
            };
            let set = endpoint_of(&tx, &room)?.ok_or(ControlError::RoomWebhookNotFound)?;
            audit(
                &tx,
                &room,
                &actor,
                action,
                Some(&set.id),
                serde_json::json!({ "url": url }),
                now_ms,
            )?;
            tx.commit()?;
            Ok((set, change))
        })
        .await
    }

    pub(in super::super) async fn room_webhook(&self, room: RoomId) -> Result<RoomWebhook> {
        self.call(move |c| {
            room_by_id(c, &room)?.ok_or(ControlError::RoomNotFound)?;
            endpoint_of(c, &room)?.ok_or(ControlError::RoomWebhookNotFound)
        })
        .await
    }

    pub(in super::super) async fn room_webhook_backlog(
        &self,
        endpoint: String,
    ) -> Result<(u64, u64)> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FILTER (WHERE state = 'pending'),
                        COUNT(*) FILTER (WHERE state = 'failed')
                 FROM webhook_deliveries WHERE endpoint = ?1",
                params![endpoint],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
        .await
    }

    pub(in super::super) async fn rotate_room_webhook_secret(
        &self,
        room: RoomId,
        secret: String,
        actor: Actor,
        now_ms: i64,
    ) -> Result<RoomWebhook> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            let changed = tx.execute(
                "UPDATE room_webhooks SET secret = ?2, secret_rotated_at = ?3 WHERE room_id = ?1",
                params![room.as_str(), secret, now_ms],
            )?;
            if changed == 0 {
                return Err(ControlError::RoomWebhookNotFound);
            }
            let set = endpoint_of(&tx, &room)?.ok_or(ControlError::RoomWebhookNotFound)?;
            let detail = serde_json::json!({});
            audit(
                &tx,
                &room,
                &actor,
                "webhook.secret_rotated",
                Some(&set.id),
                detail,
                now_ms,
            )?;
            tx.commit()?;
            Ok(set)
        })
        .await
    }

    pub(in super::super) async fn delete_room_webhook(
        &self,
        room: RoomId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<u64> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            let set = endpoint_of(&tx, &room)?.ok_or(ControlError::RoomWebhookNotFound)?;
            // Nothing can sign them any more: what waited for this endpoint goes with it.
            let dropped = tx.execute(
                "DELETE FROM webhook_deliveries WHERE endpoint = ?1 AND state = 'pending'",
                params![set.id],
            )?;
            tx.execute("DELETE FROM room_webhooks WHERE id = ?1", params![set.id])?;
            let detail = serde_json::json!({ "url": set.url, "pending_dropped": dropped });
            audit(
                &tx,
                &room,
                &actor,
                "webhook.deleted",
                Some(&set.id),
                detail,
                now_ms,
            )?;
            tx.commit()?;
            Ok(dropped as u64)
        })
        .await
    }

    pub(in super::super) async fn list_room_webhook_deliveries(
        &self,
        room: RoomId,
        state: Option<DeliveryState>,
        page: PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        self.call(move |c| {
            room_by_id(c, &room)?.ok_or(ControlError::RoomNotFound)?;
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, {WEBHOOK_COLUMNS} FROM webhook_deliveries
                 WHERE room_id = ?1 AND endpoint IS NOT NULL AND (?2 IS NULL OR state = ?2)
                   AND seq > ?3
                 ORDER BY seq LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        room.as_str(),
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
}
