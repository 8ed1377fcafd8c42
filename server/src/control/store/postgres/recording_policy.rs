//! The PostgreSQL engine's recording policy of rooms: changing it, and what retention finds
//! expired (a node's finished recordings and live clips past their room's or the server's
//! retention) and deletes. Locks the room first, as everywhere. Only SQL here; deleting a
//! recording is the store's usual delete.

use tokio_postgres::Row;

use super::super::super::{
    Actor, Clip, ClipId, ControlError, Recording, RecordingPolicyChange, Room, RoomId,
};
use super::{
    PgStore, RECORDING_COLUMNS, Result, audit, clips, days_to_i32, recording_from_row, room_by_id,
    rules,
};

/// Up to `$4` rows of `table` (as `columns`) held by node `$1` that `condition` admits and
/// whose room's retention, or `$2` days, has run out at `$3`, counted from `at`; 0 keeps them.
/// Oldest first.
fn due(table: &str, columns: &str, condition: &str, at: &str) -> String {
    format!(
        "SELECT {columns} FROM {table} t
         WHERE node = $1 AND {condition} AND EXISTS (
             SELECT 1 FROM rooms r WHERE r.id = t.room_id
             AND COALESCE(r.retention_days::BIGINT, $2) > 0
             AND t.{at} <= $3 - COALESCE(r.retention_days::BIGINT, $2) * 86400000)
         ORDER BY seq LIMIT $4"
    )
}

impl PgStore {
    pub(in super::super) async fn update_recording_policy(
        &self,
        room: RoomId,
        change: RecordingPolicyChange,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Room> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let found = room_by_id(&tx, &room, "FOR UPDATE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let policy = found.recording.changed(&change);
        tx.execute(
            "UPDATE rooms SET record_by_default = $2, retention_days = $3 WHERE id = $1",
            &[
                &room.as_str(),
                &policy.record_by_default,
                &policy.retention_days.map(days_to_i32),
            ],
        )
        .await?;
        let detail = rules::room_updated_detail(&change);
        audit(&tx, &room, &actor, "room.updated", None, detail, now_ms).await?;
        tx.commit().await?;
        Ok(Room {
            recording: policy,
            ..found
        })
    }

    pub(in super::super) async fn expired_recordings(
        &self,
        node: String,
        default_days: u32,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Recording>> {
        let query = due(
            "recordings",
            RECORDING_COLUMNS,
            "state <> 'recording'",
            "started_at",
        );
        let rows = self
            .expired(query, node, default_days, now_ms, limit)
            .await?;
        rows.iter().map(|r| recording_from_row(r, 0)).collect()
    }

    pub(in super::super) async fn expired_live_clips(
        &self,
        node: String,
        default_days: u32,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Clip>> {
        let query = due(
            "clips",
            clips::COLUMNS,
            "recording_id IS NULL",
            "created_at",
        );
        let rows = self
            .expired(query, node, default_days, now_ms, limit)
            .await?;
        rows.iter().map(clips::from_row).collect()
    }

    /// The rows a query made by [`due`] finds.
    async fn expired(
        &self,
        query: String,
        node: String,
        default_days: u32,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Row>> {
        let c = self.client().await?;
        let days = i64::from(default_days);
        Ok(c.query(&query, &[&node, &days, &now_ms, &i64::from(limit)])
            .await?)
    }

    pub(in super::super) async fn delete_live_clip(
        &self,
        room: RoomId,
        id: ClipId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Clip> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::ClipNotFound)?;
        let clip = tx
            .query_opt(
                &format!(
                    "DELETE FROM clips WHERE id = $1 AND room_id = $2
                     AND recording_id IS NULL RETURNING {}",
                    clips::COLUMNS
                ),
                &[&id.as_str(), &room.as_str()],
            )
            .await?
            .map(|r| clips::from_row(&r))
            .transpose()?
            .ok_or(ControlError::ClipNotFound)?;
        let detail = serde_json::json!({ "duration_ms": clip.duration_ms });
        audit(
            &tx,
            &room,
            &actor,
            "clip.deleted",
            Some(id.as_str()),
            detail,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(clip)
    }
}
