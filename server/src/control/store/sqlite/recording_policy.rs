//! The SQLite engine's recording policy of rooms: changing it, and what retention finds
//! expired (a node's finished recordings and live clips past their room's or the server's
//! retention) and deletes. Only SQL here; deleting a recording is the store's usual delete.

use rusqlite::{OptionalExtension, Row, params};

use super::super::super::{
    Actor, Clip, ClipId, ControlError, Recording, RecordingPolicyChange, Room, RoomId,
};
use super::{
    RECORDING_COLUMNS, Result, SqliteStore, audit, clips, recording_from_row, room_by_id, rules,
};

/// Up to `?4` rows of `table` (as `columns`) held by node `?1` that `condition` admits and
/// whose room's retention, or `?2` days, has run out at `?3`, counted from `at`; 0 keeps them.
/// Oldest first.
fn due(table: &str, columns: &str, condition: &str, at: &str) -> String {
    format!(
        "SELECT {columns} FROM {table} t
         WHERE node = ?1 AND {condition} AND EXISTS (
             SELECT 1 FROM rooms r WHERE r.id = t.room_id
             AND COALESCE(r.retention_days, ?2) > 0
             AND t.{at} <= ?3 - COALESCE(r.retention_days, ?2) * 86400000)
         ORDER BY seq LIMIT ?4"
    )
}

impl SqliteStore {
    pub(in super::super) async fn update_recording_policy(
        &self,
        room: RoomId,
        change: RecordingPolicyChange,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Room> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let found = room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            let policy = found.recording.changed(&change);
            tx.execute(
                "UPDATE rooms SET record_by_default = ?2, retention_days = ?3 WHERE id = ?1",
                params![
                    room.as_str(),
                    policy.record_by_default,
                    policy.retention_days
                ],
            )?;
            let detail = rules::room_updated_detail(&change);
            audit(&tx, &room, &actor, "room.updated", None, detail, now_ms)?;
            tx.commit()?;
            Ok(Room {
                recording: policy,
                ..found
            })
        })
        .await
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
        self.expired(query, (node, default_days, now_ms, limit), |r| {
            recording_from_row(r, 0)
        })
        .await
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
        self.expired(query, (node, default_days, now_ms, limit), clips::from_row)
            .await
    }

    /// The rows a query made by [`due`] finds, with its four parameters, each made by `read`.
    async fn expired<T: Send + 'static>(
        &self,
        query: String,
        (node, default_days, now_ms, limit): (String, u32, i64, u32),
        read: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&query)?;
            let rows = stmt
                .query_map(params![node, default_days, now_ms, limit], read)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub(in super::super) async fn delete_live_clip(
        &self,
        room: RoomId,
        id: ClipId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Clip> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let clip = tx
                .query_row(
                    &format!(
                        "DELETE FROM clips WHERE id = ?1 AND room_id = ?2
                         AND recording_id IS NULL RETURNING {}",
                        clips::COLUMNS
                    ),
                    params![id.as_str(), room.as_str()],
                    clips::from_row,
                )
                .optional()?
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
            )?;
            tx.commit()?;
            Ok(clip)
        })
        .await
    }
}
