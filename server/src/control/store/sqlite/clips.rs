//! The SQLite engine's clips: remember one (with its audit line and its webhook events), find
//! one by its code. Deleting a recording's clips is part of deleting the recording. Only SQL
//! here.

use rusqlite::{OptionalExtension, Row, params};

use super::super::super::{
    Actor, Clip, ClipCode, ClipId, ControlError, NewClip, NewWebhook, RecordingId, RoomId,
};
use super::{Result, SqliteStore, audit, insert_webhooks, room_by_id};

pub(super) const COLUMNS: &str =
    "id, room_id, recording_id, start_ms, duration_ms, size_bytes, node, created_at, created_by";

pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Clip> {
    Ok(Clip {
        id: ClipId::from_trusted(r.get(0)?),
        room_id: RoomId::from_trusted(r.get(1)?),
        recording_id: r
            .get::<_, Option<String>>(2)?
            .map(RecordingId::from_trusted),
        start_ms: r.get(3)?,
        duration_ms: r.get(4)?,
        size_bytes: r.get(5)?,
        node: r.get(6)?,
        created_at_ms: r.get(7)?,
        created_by: r.get(8)?,
    })
}

/// The clips cut from `recording`, inside a transaction that is about to delete them.
pub(super) fn clips_of_recording(
    c: &rusqlite::Connection,
    recording: &RecordingId,
) -> Result<Vec<Clip>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM clips WHERE recording_id = ?1 ORDER BY seq"
    ))?;
    let clips = stmt
        .query_map(params![recording.as_str()], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(clips)
}

impl SqliteStore {
    pub(in super::super) async fn create_clip(
        &self,
        room: RoomId,
        new: NewClip,
        actor: Actor,
        created_by: String,
        now_ms: i64,
        webhooks: Vec<NewWebhook>,
    ) -> Result<Clip> {
        let to_server = self.server_webhooks;
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            if let Some(recording) = &new.recording_id {
                // Deleted while the clip was cut: no clip either.
                let found: Option<String> = tx
                    .query_row(
                        "SELECT room_id FROM recordings WHERE id = ?1",
                        params![recording.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if found.as_deref() != Some(room.as_str()) {
                    return Err(ControlError::RecordingNotFound);
                }
            }
            let clip = new.clip(&room, created_by, now_ms);
            tx.execute(
                "INSERT INTO clips (id, room_id, recording_id, code_hash, start_ms, duration_ms,
                                    size_bytes, node, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    clip.id.as_str(),
                    room.as_str(),
                    clip.recording_id.as_ref().map(|r| r.as_str()),
                    &new.code.hash()[..],
                    clip.start_ms,
                    clip.duration_ms,
                    clip.size_bytes,
                    clip.node,
                    now_ms,
                    clip.created_by,
                ],
            )?;
            let target = Some(clip.id.as_str());
            audit(
                &tx,
                &room,
                &actor,
                "clip.created",
                target,
                new.audit_detail(),
                now_ms,
            )?;
            insert_webhooks(&tx, &room, &webhooks, to_server)?;
            tx.commit()?;
            Ok(clip)
        })
        .await
    }

    pub(in super::super) async fn clip_by_code(&self, code: ClipCode) -> Result<Clip> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM clips WHERE code_hash = ?1"),
                params![&code.hash()[..]],
                from_row,
            )
            .optional()?
            .ok_or(ControlError::ClipNotFound)
        })
        .await
    }
}
