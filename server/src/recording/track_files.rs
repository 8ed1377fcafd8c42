//! Speaker tracks on disk, beside their recording: `{id}.track{n}.ogg` per speaker and
//! `{id}.tracks.json`, the manifest saying whose each track is (replaced whole, by rename, when
//! a track is added and when the recording ends). The recording's task drives [`TrackFiles`];
//! reading, recovery after a crash and deletion are here too. Timing is [`super::tracks`]'.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::tracks::{MAX_TRACKS, Manifest, SpeakerTracks, TrackEntry};
use super::write_page;
use crate::control::RecordingId;
use crate::media::tap::RoomTap;
use crate::media::worker::Forwarded;

/// The largest manifest read back (ten tracks and a hundred untracked speakers are ~10 kB).
const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

pub fn track_path(dir: &Path, id: &RecordingId, track: u32) -> PathBuf {
    dir.join(format!("{id}.track{track}.ogg"))
}

fn manifest_path(dir: &Path, id: &RecordingId) -> PathBuf {
    dir.join(format!("{id}.tracks.json"))
}

/// The recording's speaker tracks, if it was recorded with them. Sizes are the files' now
/// (they grow while it is recorded).
pub async fn read(dir: &Path, id: &RecordingId) -> Option<Manifest> {
    let path = manifest_path(dir, id);
    let meta = tokio::fs::metadata(&path).await.ok()?;
    if meta.len() > MAX_MANIFEST_BYTES {
        tracing::warn!(recording = %id, "speaker tracks' manifest too large to serve");
        return None;
    }
    let text = tokio::fs::read(&path).await.ok()?;
    let mut manifest: Manifest = match serde_json::from_slice(&text) {
        Ok(manifest) => manifest,
        Err(e) => {
            tracing::warn!(recording = %id, error = %e, "unreadable speaker tracks' manifest");
            return None;
        }
    };
    for entry in &mut manifest.tracks {
        if let Ok(meta) = tokio::fs::metadata(track_path(dir, id, entry.track)).await {
            entry.size_bytes = meta.len();
        }
    }
    Some(manifest)
}

async fn write_manifest(dir: &Path, id: &RecordingId, manifest: &Manifest) -> std::io::Result<()> {
    let path = manifest_path(dir, id);
    let next = path.with_extension("json.next");
    let text = serde_json::to_vec(manifest).map_err(std::io::Error::other)?;
    tokio::fs::write(&next, text).await?;
    tokio::fs::rename(&next, &path).await
}

/// Closes the tracks of a recording a killed process left open: each file is cut after its
/// last whole page and measured. Nothing if it had none.
pub async fn settle(dir: &Path, id: &RecordingId) {
    let Some(mut manifest) = read(dir, id).await else {
        return;
    };
    for entry in &mut manifest.tracks {
        let path = track_path(dir, id, entry.track);
        let measured = tokio::task::spawn_blocking(move || super::settle_file(&path))
            .await
            .ok()
            .flatten();
        (entry.duration_ms, entry.size_bytes) = match measured {
            Some((tail, size)) => (tail.duration_ms(), size),
            None => (0, 0),
        };
    }
    if let Err(e) = write_manifest(dir, id, &manifest).await {
        tracing::error!(recording = %id, error = %e, "cannot close the speaker tracks");
    }
}

/// Deletes a recording's tracks and their manifest. A file already gone is not an error.
pub async fn delete(dir: &Path, id: &RecordingId) -> std::io::Result<()> {
    let manifest = manifest_path(dir, id);
    let next = manifest.with_extension("json.next");
    let tracks = (1..=MAX_TRACKS as u32).map(|n| track_path(dir, id, n));
    for path in [manifest, next].into_iter().chain(tracks) {
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The speaker tracks of a recording being written.
pub struct TrackFiles {
    dir: PathBuf,
    id: RecordingId,
    tracks: SpeakerTracks,
    /// One per track; `None` once writing it failed (the others and the mix go on).
    files: Vec<Option<tokio::fs::File>>,
    /// Whose each packet's source is.
    tap: Arc<RoomTap>,
    /// Speaker packets the mix could not hand over (its queue to this task was full).
    dropped: Arc<AtomicU64>,
}

impl TrackFiles {
    /// Starts a recording's tracks: an empty manifest says it keeps them.
    pub async fn start(
        dir: &Path,
        id: &RecordingId,
        tap: Arc<RoomTap>,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        write_manifest(dir, id, &Manifest::default()).await?;
        Ok(TrackFiles {
            dir: dir.to_owned(),
            id: id.clone(),
            tracks: SpeakerTracks::new(),
            files: Vec::with_capacity(MAX_TRACKS),
            tap,
            dropped,
        })
    }

    /// The mix wrote a frame: quiet tracks catch up with silence.
    pub async fn mix_frame(&mut self) {
        self.tracks.mix_frame();
        for index in 0..self.files.len() {
            self.write_pending(index).await;
        }
    }

    /// A speaker's packet, to their track (made at their first packet, while there is room);
    /// `plays_in` is where the mix plays it ([`super::tracks::SpeakerTracks::packet`]).
    pub async fn packet(&mut self, packet: &Forwarded, plays_in: Option<u64>) {
        let tap = &self.tap;
        let heard = self.tracks.packet(
            packet.source,
            packet.timestamp,
            &packet.payload,
            plays_in,
            |source| tap.speaker(source),
        );
        let Some((index, new)) = heard else { return };
        if new {
            self.open(index).await;
        }
        self.write_pending(index).await;
    }

    async fn open(&mut self, index: usize) {
        let number = index as u32 + 1;
        let path = track_path(&self.dir, &self.id, number);
        let file = match tokio::fs::File::create(&path).await {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::error!(recording = %self.id, track = number, error = %e, "cannot make a speaker track");
                None
            }
        };
        self.files.push(file);
        if let Err(e) = write_manifest(&self.dir, &self.id, &self.manifest()).await {
            tracing::error!(recording = %self.id, error = %e, "cannot write the speaker tracks' manifest");
        }
    }

    async fn write_pending(&mut self, index: usize) {
        let pending = self.tracks.pending(index);
        if pending.is_empty() {
            return;
        }
        if let Some(file) = self.files[index].as_mut()
            && let Err(e) = write_page(file, pending).await
        {
            tracing::error!(recording = %self.id, track = index + 1, error = %e, "cannot write a speaker track");
            self.files[index] = None;
        }
        self.tracks.written(index);
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            tracks: self
                .tracks
                .tracks()
                .iter()
                .enumerate()
                .map(|(i, track)| TrackEntry {
                    track: i as u32 + 1,
                    participant: track.participant.clone(),
                    duration_ms: 0,
                    size_bytes: 0,
                })
                .collect(),
            untracked: self.tracks.untracked().to_vec(),
        }
    }

    /// The recording stopped: every track is filled to the mix's length, ended, synced, and
    /// the manifest says how long each plays.
    pub async fn finish(mut self, mix_pre_skip: u16) {
        self.tracks.finish(mix_pre_skip);
        let mut manifest = self.manifest();
        for index in 0..self.files.len() {
            self.write_pending(index).await;
            let entry = &mut manifest.tracks[index];
            entry.duration_ms = self.tracks.tracks()[index].duration_ms();
            if let Some(file) = self.files[index].as_mut() {
                let _ = file.sync_all().await;
                entry.size_bytes = file.metadata().await.map_or(0, |m| m.len());
            }
        }
        if let Err(e) = write_manifest(&self.dir, &self.id, &manifest).await {
            tracing::error!(recording = %self.id, error = %e, "cannot write the speaker tracks' manifest");
        }
        let skipped = self.tracks.skipped;
        tracing::info!(
            recording = %self.id,
            tracks = manifest.tracks.len(),
            untracked = manifest.untracked.len(),
            late = skipped.late,
            malformed = skipped.malformed,
            dropped = self.dropped.load(Ordering::Relaxed),
            "speaker tracks closed"
        );
    }
}
