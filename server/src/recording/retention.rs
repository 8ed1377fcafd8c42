//! Retention: each node deletes the recordings and the live clips whose files it holds once
//! their room's `retention_days` (or the server's `[recording] retention_days`) has run out,
//! counted from when they started. No HTTP here; the store decides what is due.
//!
//! A pass runs at start and every `retention_check_secs`, and deletes at most [`BATCH`]
//! recordings and [`BATCH`] live clips; a full batch runs the next pass a second later, so a
//! backlog drains without one pass holding the database for long. Deletes go through the
//! store's atomic deletes (a recording with its clips and replay links, as a moderator's
//! `DELETE` does), so two passes racing (a restart, two processes with one node name) delete a
//! row once and the other finds it gone. A recording still being written is never due. The
//! row goes first, then the files: a failure in between leaves a file, never a listed
//! recording without its audio.

use std::time::Duration;

use crate::control::{Actor, ControlError};

use super::Recordings;

/// The most recordings, and the most live clips, one pass deletes.
pub const BATCH: u32 = 100;
/// The wait before the next pass when this one found a full batch.
const CATCH_UP: Duration = Duration::from_secs(1);

/// What one pass deleted, and whether more may be due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub recordings: usize,
    pub clips: usize,
    pub more: bool,
}

impl Recordings {
    /// Runs retention passes for ever: one now, then every `retention_check_secs`.
    pub async fn keep_retention(self) {
        let every = Duration::from_secs(self.inner.settings.retention_check_secs.max(1));
        loop {
            let pass = self.retention_pass().await;
            tokio::time::sleep(if pass.more { CATCH_UP } else { every }).await;
        }
    }

    /// Deletes up to a batch of this node's recordings and of its live clips whose retention
    /// ran out. Stops early (to try again next pass) when the store is unavailable.
    pub async fn retention_pass(&self) -> Pass {
        let now = self.inner.clock.now_ms();
        let mut pass = Pass::default();
        let Some((recordings, more)) = self.expire_recordings(now).await else {
            return pass;
        };
        pass.recordings = recordings;
        pass.more = more;
        if let Some((clips, more)) = self.expire_live_clips(now).await {
            pass.clips = clips;
            pass.more |= more;
        }
        pass
    }

    /// How many recordings it deleted, and whether more may be due; `None` if the store
    /// became unavailable.
    async fn expire_recordings(&self, now: i64) -> Option<(usize, bool)> {
        let inner = &self.inner;
        let due = inner
            .store
            .expired_recordings(
                inner.node.clone(),
                inner.settings.retention_days,
                now,
                BATCH,
            )
            .await;
        let (due, full) = listed(due, "recordings")?;
        let mut deleted = 0;
        for recording in due {
            let (room, id) = (recording.room_id, recording.id);
            match inner
                .store
                .delete_recording(room, id.clone(), Actor::System, now)
                .await
            {
                Ok((recording, clips)) => {
                    if let Err(e) = self.delete_files(&recording.id).await {
                        tracing::error!(recording = %recording.id, error = %e,
                            "cannot delete a recording's files");
                    }
                    let clips: Vec<_> = clips.into_iter().map(|c| c.id).collect();
                    self.delete_clip_files(&clips).await;
                    inner.metrics.retention_deleted("recording", 1);
                    inner.metrics.retention_deleted("clip", clips.len() as u64);
                    tracing::info!(room = %recording.room_id, recording = %recording.id,
                        started_at_ms = recording.started_at_ms, clips = clips.len(),
                        "retention: deleted a recording and its clips");
                    deleted += 1;
                }
                // Deleted meanwhile (by a moderator, or a racing pass): nothing left to do.
                Err(ControlError::RecordingNotFound) => {}
                Err(e) => failed(e, id.as_str())?,
            }
        }
        Some((deleted, full && deleted > 0))
    }

    /// The same for live clips.
    async fn expire_live_clips(&self, now: i64) -> Option<(usize, bool)> {
        let inner = &self.inner;
        let due = inner
            .store
            .expired_live_clips(
                inner.node.clone(),
                inner.settings.retention_days,
                now,
                BATCH,
            )
            .await;
        let (due, full) = listed(due, "clips")?;
        let mut deleted = 0;
        for clip in due {
            let (room, id) = (clip.room_id, clip.id);
            match inner
                .store
                .delete_live_clip(room, id.clone(), Actor::System, now)
                .await
            {
                Ok(clip) => {
                    self.delete_clip_files(std::slice::from_ref(&clip.id)).await;
                    inner.metrics.retention_deleted("clip", 1);
                    tracing::info!(room = %clip.room_id, clip = %clip.id,
                        created_at_ms = clip.created_at_ms, "retention: deleted a live clip");
                    deleted += 1;
                }
                Err(ControlError::ClipNotFound) => {}
                Err(e) => failed(e, id.as_str())?,
            }
        }
        Some((deleted, full && deleted > 0))
    }
}

/// What is due and whether it filled a batch; `None` (logged) if the store could not say.
fn listed<T>(due: Result<Vec<T>, ControlError>, what: &str) -> Option<(Vec<T>, bool)> {
    match due {
        Ok(due) => {
            let full = due.len() == BATCH as usize;
            Some((due, full))
        }
        Err(e) => {
            tracing::warn!(error = %e, "retention: cannot list the expired {what}");
            None
        }
    }
}

/// A deletion that failed: logged; `None` ends the pass when the store is unavailable (the
/// next pass tries again), otherwise the pass goes on with the next one.
fn failed(e: ControlError, id: &str) -> Option<()> {
    if let ControlError::Unavailable(_) = e {
        tracing::warn!(error = %e, "retention: the store is unavailable");
        return None;
    }
    tracing::error!(id, error = %e, "retention: cannot delete");
    Some(())
}
