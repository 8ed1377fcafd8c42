//! The PostgreSQL engine's room webhook endpoints: set (or move) one, rotate its secret,
//! delete it with the rows still waiting for it, each with its audit line; list what was sent
//! to a room's endpoints. Changes lock the room's row first, as everything else here does.
//! Only SQL here.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::super::super::model::PageRequest;
use super::super::super::{
    Actor, ControlError, DeliveryState, Page, RoomId, RoomWebhook, RoomWebhookChange,
    WebhookDelivery,
};
use super::super::rules;
use super::{PgStore, Result, WEBHOOK_COLUMNS, audit, delivery_from_row, room_by_id};

const COLUMNS: &str =
    "id, room_id, url, secret, created_at, created_by, updated_at, secret_rotated_at";

fn from_row(r: &Row) -> Result<RoomWebhook> {
    Ok(RoomWebhook {
        id: r.try_get(0)?,
        room_id: RoomId::from_trusted(r.try_get(1)?),
        url: r.try_get(2)?,
        secret: r.try_get(3)?,
        created_at_ms: r.try_get(4)?,
        created_by: r.try_get(5)?,
        updated_at_ms: r.try_get(6)?,
        secret_rotated_at_ms: r.try_get(7)?,
    })
}

/// The room's endpoint, if it has one.
pub(super) async fn endpoint_of(
    c: &impl GenericClient,
    room: &RoomId,
) -> Result<Option<RoomWebhook>> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM room_webhooks WHERE room_id = $1"),
        &[&room.as_str()],
    )
    .await?
    .map(|r| from_row(&r))
    .transpose()
}

impl PgStore {
    pub(in super::super) async fn set_room_webhook(
        &self,
        room: RoomId,
        url: String,
        new_secret: String,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(RoomWebhook, RoomWebhookChange)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let found = room_by_id(&tx, &room, "FOR UPDATE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        if found.is_ended() {
            return Err(ControlError::RoomEnded);
        }
        let (change, action) = match endpoint_of(&tx, &room).await? {
            Some(_) => {
                tx.execute(
                    "UPDATE room_webhooks SET url = $2, updated_at = $3 WHERE room_id = $1",
                    &[&room.as_str(), &url, &now_ms],
                )
                .await?;
                (RoomWebhookChange::Updated, "webhook.updated")
            }
            None => {
                tx.execute(
                    &format!(
                        "INSERT INTO room_webhooks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $5, $5)"
                    ),
                    &[
                        &rules::new_room_webhook_id(),
                        &room.as_str(),
                        &url,
                        &new_secret,
                        &now_ms,
                        &actor.as_audit_str(),
                    ],
                )
                .await?;
                (RoomWebhookChange::Created, "webhook.created")
            }
        };
        let set = endpoint_of(&tx, &room)
            .await?
            .ok_or(ControlError::RoomWebhookNotFound)?;
        let detail = serde_json::json!({ "url": url });
        audit(&tx, &room, &actor, action, Some(&set.id), detail, now_ms).await?;
        tx.commit().await?;
        Ok((set, change))
    }

    pub(in super::super) async fn room_webhook(&self, room: RoomId) -> Result<RoomWebhook> {
        let c = self.client().await?;
        room_by_id(&c, &room, "")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        endpoint_of(&c, &room)
            .await?
            .ok_or(ControlError::RoomWebhookNotFound)
    }

    pub(in super::super) async fn room_webhook_backlog(
        &self,
        endpoint: String,
    ) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE state = 'pending'),
                        COUNT(*) FILTER (WHERE state = 'failed')
                 FROM webhook_deliveries WHERE endpoint = $1",
                &[&endpoint],
            )
            .await?;
        let count = |i: usize| -> Result<u64> { Ok(row.try_get::<_, i64>(i)?.max(0) as u64) };
        Ok((count(0)?, count(1)?))
    }

    pub(in super::super) async fn rotate_room_webhook_secret(
        &self,
        room: RoomId,
        secret: String,
        actor: Actor,
        now_ms: i64,
    ) -> Result<RoomWebhook> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR UPDATE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let changed = tx
            .execute(
                "UPDATE room_webhooks SET secret = $2, secret_rotated_at = $3 WHERE room_id = $1",
                &[&room.as_str(), &secret, &now_ms],
            )
            .await?;
        if changed == 0 {
            return Err(ControlError::RoomWebhookNotFound);
        }
        let set = endpoint_of(&tx, &room)
            .await?
            .ok_or(ControlError::RoomWebhookNotFound)?;
        let detail = serde_json::json!({});
        audit(
            &tx,
            &room,
            &actor,
            "webhook.secret_rotated",
            Some(&set.id),
            detail,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(set)
    }

    pub(in super::super) async fn delete_room_webhook(
        &self,
        room: RoomId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR UPDATE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let set = endpoint_of(&tx, &room)
            .await?
            .ok_or(ControlError::RoomWebhookNotFound)?;
        // Nothing can sign them any more: what waited for this endpoint goes with it. A row
        // another node holds now is skipped by its sender when it finds the endpoint gone.
        let dropped = tx
            .execute(
                "DELETE FROM webhook_deliveries WHERE endpoint = $1 AND state = 'pending'",
                &[&set.id],
            )
            .await?;
        tx.execute("DELETE FROM room_webhooks WHERE id = $1", &[&set.id])
            .await?;
        let detail = serde_json::json!({ "url": set.url, "pending_dropped": dropped });
        audit(
            &tx,
            &room,
            &actor,
            "webhook.deleted",
            Some(&set.id),
            detail,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(dropped)
    }

    pub(in super::super) async fn list_room_webhook_deliveries(
        &self,
        room: RoomId,
        state: Option<DeliveryState>,
        page: PageRequest,
    ) -> Result<Page<WebhookDelivery>> {
        let c = self.client().await?;
        room_by_id(&c, &room, "")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let rows = c
            .query(
                &format!(
                    "SELECT seq, {WEBHOOK_COLUMNS} FROM webhook_deliveries
                     WHERE room_id = $1 AND endpoint IS NOT NULL
                       AND ($2::TEXT IS NULL OR state = $2) AND seq > $3
                     ORDER BY seq LIMIT $4"
                ),
                &[
                    &room.as_str(),
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
}
