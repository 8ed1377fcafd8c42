//! The PostgreSQL engine's clips: remember one (with its audit line and its webhook events),
//! find one by its code. Deleting a recording's clips is part of deleting the recording. Locks
//! in the usual order (the room, then the recording). Only SQL here.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::super::super::{
    Actor, Clip, ClipCode, ClipId, ControlError, NewClip, NewWebhook, RecordingId, RoomId,
};
use super::{PgStore, Result, audit, insert_webhooks, room_by_id};

pub(super) const COLUMNS: &str =
    "id, room_id, recording_id, start_ms, duration_ms, size_bytes, node, created_at, created_by";

pub(super) fn from_row(r: &Row) -> Result<Clip> {
    Ok(Clip {
        id: ClipId::from_trusted(r.try_get(0)?),
        room_id: RoomId::from_trusted(r.try_get(1)?),
        recording_id: r
            .try_get::<_, Option<String>>(2)?
            .map(RecordingId::from_trusted),
        start_ms: r.try_get(3)?,
        duration_ms: r.try_get(4)?,
        size_bytes: r.try_get(5)?,
        node: r.try_get(6)?,
        created_at_ms: r.try_get(7)?,
        created_by: r.try_get(8)?,
    })
}

/// Deletes the clips cut from `recording` inside `tx`; what they were.
pub(super) async fn delete_clips_of_recording(
    tx: &impl GenericClient,
    recording: &RecordingId,
) -> Result<Vec<Clip>> {
    tx.query(
        &format!("DELETE FROM clips WHERE recording_id = $1 RETURNING {COLUMNS}"),
        &[&recording.as_str()],
    )
    .await?
    .iter()
    .map(from_row)
    .collect()
}

impl PgStore {
    pub(in super::super) async fn create_clip(
        &self,
        room: RoomId,
        new: NewClip,
        actor: Actor,
        created_by: String,
        now_ms: i64,
        webhooks: Vec<NewWebhook>,
    ) -> Result<Clip> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        if let Some(recording) = &new.recording_id {
            // Deleted while the clip was cut: no clip either.
            let found = tx
                .query_opt(
                    "SELECT 1 FROM recordings WHERE id = $1 AND room_id = $2 FOR SHARE",
                    &[&recording.as_str(), &room.as_str()],
                )
                .await?;
            if found.is_none() {
                return Err(ControlError::RecordingNotFound);
            }
        }
        let clip = new.clip(&room, created_by, now_ms);
        tx.execute(
            "INSERT INTO clips (id, room_id, recording_id, code_hash, start_ms, duration_ms,
                                size_bytes, node, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &clip.id.as_str(),
                &room.as_str(),
                &clip.recording_id.as_ref().map(|r| r.as_str()),
                &&new.code.hash()[..],
                &clip.start_ms,
                &clip.duration_ms,
                &clip.size_bytes,
                &clip.node,
                &now_ms,
                &clip.created_by,
            ],
        )
        .await?;
        let target = Some(clip.id.as_str());
        audit(
            &tx,
            &room,
            &actor,
            "clip.created",
            target,
            new.audit_detail(),
            now_ms,
        )
        .await?;
        insert_webhooks(&tx, &room, &webhooks, self.server_webhooks).await?;
        tx.commit().await?;
        Ok(clip)
    }

    pub(in super::super) async fn clip_by_code(&self, code: ClipCode) -> Result<Clip> {
        let c = self.client().await?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM clips WHERE code_hash = $1"),
            &[&&code.hash()[..]],
        )
        .await?
        .map(|r| from_row(&r))
        .transpose()?
        .ok_or(ControlError::ClipNotFound)
    }
}
