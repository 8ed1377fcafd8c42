//! Recordings: a room's broadcast mix (decoded and mixed once, [`crate::broadcast`]) written
//! to an Ogg Opus file as it happens, with a timeline of who spoke when beside it. The room
//! decides when to record ([`crate::room::Recorder`]); this writes the file, keeps its row in
//! the store, and on start closes what a killed process left open. No HTTP here.
//!
//! - [`ogg`]: the sans-IO Ogg Opus writer and the reader of a file's last good page.
//! - [`tracks`], [`track_files`]: speaker tracks, each speaker's own packets remuxed beside
//!   the mix when a recording asks for them.
//! - [`retention`]: recordings and live clips deleted once their retention runs out.
//! - this file: one task per recorded room, the files under `{data_dir}/recordings/`, and
//!   recovery.
//!
//! A page is written (to the kernel, not synced) at least every second, so a process killed
//! mid-recording loses at most the last second and leaves a playable file; at start each
//! recording this node left `recording` is cut to its last whole page and closed as `ready`.

pub mod clips;
pub mod ogg;
pub mod retention;
pub mod track_files;
pub mod tracks;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::broadcast::{Broadcasts, Feed, Recorded};
use crate::clock::Clock;
use crate::config::RecordingSettings;
use crate::control::{
    ClipId, ControlError, FinishedRecording, ParticipantId, Recording, RecordingId, RecordingState,
    RoomId, Store,
};
use crate::room::{LiveRooms, Recorder, RecorderFuture, RecordingOptions};
use crate::webhooks::{self, event_type};
use clips::ClipAudio;
use ogg::{OggOpusWriter, StreamInfo};
use track_files::TrackFiles;

/// Frames per page: a page a second (50 frames of 20 ms).
const FLUSH_FRAMES: usize = 50;
/// Changes of speakers waiting for the writer.
const TIMELINE_QUEUE: usize = 64;
/// The largest timeline the API reads back (about a day of changes every few seconds).
pub const MAX_TIMELINE_BYTES: u64 = 4 * 1024 * 1024;
pub(crate) const VENDOR: &str = concat!("stoa ", env!("CARGO_PKG_VERSION"));

/// One moment of a recording's timeline: from `at_ms` (into the recording's audio) these were
/// speaking, loudest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpeakersAt {
    pub at_ms: u64,
    #[schema(value_type = Vec<String>)]
    pub speakers: Vec<ParticipantId>,
}

#[derive(Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

struct Inner {
    broadcasts: Broadcasts,
    store: Store,
    clock: Clock,
    dir: PathBuf,
    node: String,
    active: DashMap<RoomId, Active>,
    /// Told when a recording stops by itself; set once the live rooms exist.
    rooms: OnceLock<LiveRooms>,
    settings: RecordingSettings,
    /// Live rooms whose mix is held for clips of their last seconds.
    held: std::sync::Mutex<std::collections::HashSet<RoomId>>,
    /// Where retention counts what it deleted.
    metrics: crate::metrics::Metrics,
}

/// A recording being written.
struct Active {
    recording: Recording,
    stop: oneshot::Sender<()>,
    speakers: mpsc::Sender<SpeakersNow>,
    writer: JoinHandle<()>,
}

/// A line for a recording's timeline, from the room.
struct SpeakersNow {
    speakers: Vec<ParticipantId>,
    /// Who speaks as the recording starts (its first line), not a change while it runs.
    from_start: bool,
    /// When the change happened (the clock's ms): media hears a voice start a moment before
    /// the room is told.
    at_ms: u64,
}

/// How far back a change of speakers is placed at most: a report older than this is taken
/// as this old (the room's queue was stuck), so a line never jumps far back.
const TIMELINE_BACKDATE_MAX_MS: u64 = 1_000;

impl Recordings {
    /// Recordings of this node (`node`, its name in the store) under `data_dir/recordings`.
    pub fn new(
        broadcasts: Broadcasts,
        store: Store,
        clock: Clock,
        data_dir: &Path,
        node: String,
        settings: RecordingSettings,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        // Exported from the start, at 0.
        for kind in ["recording", "clip"] {
            metrics.retention_deleted(kind, 0);
        }
        if settings.live_clip_secs > 0 {
            let frames = settings.live_clip_secs as usize * 50 + clips::PREROLL_FRAMES as usize;
            broadcasts.keep_frames_for_clips(frames);
        }
        Recordings {
            inner: Arc::new(Inner {
                broadcasts,
                store,
                clock,
                dir: data_dir.join("recordings"),
                node,
                active: DashMap::new(),
                rooms: OnceLock::new(),
                settings,
                held: Default::default(),
                metrics,
            }),
        }
    }

    /// The live rooms, told when a recording stops by itself.
    pub fn attach_rooms(&self, rooms: LiveRooms) {
        let _ = self.inner.rooms.set(rooms);
    }

    /// This node's name, as recordings in the store name the node holding the file.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Where a recording's audio is (on the node that holds it).
    pub fn audio_path(&self, id: &RecordingId) -> PathBuf {
        self.inner.dir.join(format!("{id}.ogg"))
    }

    /// Where one of a recording's speaker tracks is (on the node that holds it).
    pub fn track_path(&self, id: &RecordingId, track: u32) -> PathBuf {
        track_files::track_path(&self.inner.dir, id, track)
    }

    /// A recording's speaker tracks, if it was made with them (files on this node).
    pub async fn tracks(&self, recording: &Recording) -> Option<tracks::Manifest> {
        track_files::read(&self.inner.dir, &recording.id).await
    }

    fn timeline_path(&self, id: &RecordingId) -> PathBuf {
        self.inner.dir.join(format!("{id}.speakers.jsonl"))
    }

    /// The room's recording being written now, if any.
    pub fn current(&self, room: &RoomId) -> Option<Recording> {
        self.inner.active.get(room).map(|a| a.recording.clone())
    }

    /// Recordings being written on this node.
    pub fn running(&self) -> usize {
        self.inner.active.len()
    }

    /// Who spoke when, as written so far. Lines a crash tore are skipped.
    pub async fn timeline(&self, id: &RecordingId) -> Vec<SpeakersAt> {
        let path = self.timeline_path(id);
        let Ok(meta) = tokio::fs::metadata(&path).await else {
            return Vec::new();
        };
        if meta.len() > MAX_TIMELINE_BYTES {
            tracing::warn!(recording = %id, "timeline too large to serve");
            return Vec::new();
        }
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Deletes a recording's files (its audio, its timeline, its speaker tracks) from this
    /// node, once the store has forgotten it. A file already gone is not an error.
    pub async fn delete_files(&self, id: &RecordingId) -> std::io::Result<()> {
        track_files::delete(&self.inner.dir, id).await?;
        for path in [self.audio_path(id), self.timeline_path(id)] {
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Closes every recording this node left `recording` (it was killed while writing them):
    /// each file is cut after its last whole page and the row says how long it plays. Run at
    /// start, before any room is live.
    pub async fn recover(&self) -> Result<usize, ControlError> {
        let left = self
            .inner
            .store
            .unfinished_recordings(self.inner.node.clone())
            .await?;
        for recording in &left {
            track_files::settle(&self.inner.dir, &recording.id).await;
            let finished = self.settle(&recording.id).await;
            tracing::info!(
                recording = %recording.id,
                state = finished.state.as_str(),
                duration_ms = finished.duration_ms,
                "closed a recording left open by a crash"
            );
            self.finish(recording, finished).await?;
        }
        Ok(left.len())
    }

    /// Closes a recording's row, with `recording.ready` in the same transaction when it is.
    async fn finish(
        &self,
        recording: &Recording,
        finished: FinishedRecording,
    ) -> Result<bool, ControlError> {
        let mut events = Vec::new();
        // A finished recording's `recording.ready` is written for the endpoints that want it
        // (the server's, the room's own), if any: the store decides.
        if finished.state == RecordingState::Ready {
            let data = serde_json::json!({
                "room_id": recording.room_id,
                "recording_id": recording.id,
                "duration_ms": finished.duration_ms,
                "size_bytes": finished.size_bytes,
            });
            let at = finished.ended_at_ms;
            events.push(webhooks::event(event_type::RECORDING_READY, data, at));
        }
        self.inner
            .store
            .finish_recording(recording.id.clone(), finished, events)
            .await
    }

    /// What a file on disk holds: cut after its last whole page, measured.
    async fn settle(&self, id: &RecordingId) -> FinishedRecording {
        let path = self.audio_path(id);
        let ended_at_ms = self.inner.clock.now_ms();
        let measured = tokio::task::spawn_blocking(move || settle_file(&path))
            .await
            .ok()
            .flatten();
        match measured {
            Some((tail, size)) => FinishedRecording {
                state: RecordingState::Ready,
                ended_at_ms,
                duration_ms: tail.duration_ms() as i64,
                size_bytes: size as i64,
            },
            None => FinishedRecording {
                state: RecordingState::Failed,
                ended_at_ms,
                duration_ms: 0,
                size_bytes: 0,
            },
        }
    }

    async fn start_recording(
        &self,
        room: &RoomId,
        options: RecordingOptions,
    ) -> Result<(), String> {
        if self.inner.active.contains_key(room) {
            return Ok(());
        }
        tokio::fs::create_dir_all(&self.inner.dir)
            .await
            .map_err(|e| format!("cannot make {}: {e}", self.inner.dir.display()))?;
        let speaker_tracks = options
            .speaker_tracks
            .unwrap_or(self.inner.settings.speaker_tracks);
        let feed = self
            .inner
            .broadcasts
            .record(room, speaker_tracks)
            .await
            .map_err(|e| format!("no mix: {e}"))?;
        let now = self.inner.clock.now_ms();
        let recording = self
            .inner
            .store
            .create_recording(room.clone(), self.inner.node.clone(), now)
            .await
            .map_err(|e| e.to_string())?;
        let (writer, head) = OggOpusWriter::new(
            StreamInfo {
                serial: rand_serial(),
                channels: 1,
                pre_skip: feed.pre_skip,
                frame_samples: crate::broadcast::mix::FRAME as u32,
                flush_frames: FLUSH_FRAMES,
            },
            VENDOR,
        );
        let opened = async {
            let mut audio = tokio::fs::File::create(self.audio_path(&recording.id)).await?;
            audio.write_all(&head).await?;
            audio.flush().await?;
            let timeline = tokio::fs::File::create(self.timeline_path(&recording.id)).await?;
            let tracks = if speaker_tracks {
                let (tap, dropped) = (feed.tap.clone(), feed.dropped.clone());
                Some(TrackFiles::start(&self.inner.dir, &recording.id, tap, dropped).await?)
            } else {
                None
            };
            std::io::Result::Ok((audio, timeline, tracks))
        }
        .await;
        let (audio, timeline, tracks) = match opened {
            Ok(files) => files,
            Err(e) => {
                let failed = self.settle(&recording.id).await;
                let _ = self.finish(&recording, failed).await;
                return Err(format!("cannot write the recording: {e}"));
            }
        };
        let (stop, stopped) = oneshot::channel();
        let (speakers, speakers_rx) = mpsc::channel(TIMELINE_QUEUE);
        let task = Writer {
            recordings: self.clone(),
            room: room.clone(),
            recording: recording.clone(),
            ogg: writer,
            audio,
            timeline,
            tracks,
            last_line_ms: 0,
        };
        let handle = tokio::spawn(task.run(feed, stopped, speakers_rx));
        tracing::info!(%room, recording = %recording.id, "recording started");
        self.inner.active.insert(
            room.clone(),
            Active {
                recording,
                stop,
                speakers,
                writer: handle,
            },
        );
        Ok(())
    }

    async fn stop_recording(&self, room: &RoomId) {
        let Some((_, active)) = self.inner.active.remove(room) else {
            return;
        };
        let _ = active.stop.send(());
        let _ = active.writer.await;
    }
}

/// Why a clip could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// Its room's mix does not run on this node (nobody is in the room, or live clips are
    /// turned off).
    #[error("the room is not live here")]
    NotLive,
    /// The mix has made no audio yet.
    #[error("nothing has been heard yet")]
    Empty,
    #[error("the recording does not hold that range")]
    OutOfRange,
    #[error("the recording's file cannot be read")]
    Unreadable,
    #[error("cannot write the clip: {0}")]
    Io(#[from] std::io::Error),
}

impl Recordings {
    pub fn settings(&self) -> &RecordingSettings {
        &self.inner.settings
    }

    /// Where a clip's audio is (on the node that holds it).
    pub fn clip_path(&self, id: &ClipId) -> PathBuf {
        self.inner
            .dir
            .with_file_name("clips")
            .join(format!("{id}.ogg"))
    }

    /// The last seconds of a live room's mix on this node.
    pub fn clip_live(&self, room: &RoomId) -> Result<ClipAudio, ClipError> {
        let secs = self.inner.settings.live_clip_secs;
        let live = self
            .inner
            .broadcasts
            .get(room)
            .filter(|_| secs > 0)
            .ok_or(ClipError::NotLive)?;
        let (window, pre_skip) = live.last_frames();
        clips::cut_live(&window, pre_skip, secs).ok_or(ClipError::Empty)
    }

    /// `start_ms..end_ms` of a recording whose file is on this node.
    pub async fn clip_recording(
        &self,
        id: &RecordingId,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<ClipAudio, ClipError> {
        let path = self.audio_path(id);
        let cut = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path).map_err(|_| ClipError::Unreadable)?;
            clips::cut_recording(std::io::BufReader::new(file), start_ms, end_ms).map_err(|e| {
                match e {
                    clips::CutError::OutOfRange => ClipError::OutOfRange,
                    clips::CutError::Unreadable => ClipError::Unreadable,
                }
            })
        });
        cut.await.map_err(|_| ClipError::Unreadable)?
    }

    /// Writes a clip's file, synced: the store will say it exists.
    pub async fn save_clip(&self, id: &ClipId, audio: &ClipAudio) -> Result<(), ClipError> {
        let path = self.clip_path(id);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::File::create(&path).await?;
        file.write_all(&audio.bytes).await?;
        file.sync_all().await?;
        Ok(())
    }

    /// Deletes clips' files from this node, once the store has forgotten them.
    pub async fn delete_clip_files(&self, ids: &[ClipId]) {
        for id in ids {
            match tokio::fs::remove_file(self.clip_path(id)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::error!(clip = %id, error = %e, "cannot delete a clip's file");
                }
                _ => {}
            }
        }
    }

    /// Holds the room's mix while it is live, so its last seconds can be clipped.
    fn hold_for_clips(&self, room: &RoomId, live: bool) {
        if self.inner.settings.live_clip_secs == 0 {
            return;
        }
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if !live {
            held.remove(room);
            if let Some(mix) = self.inner.broadcasts.get(room) {
                mix.set_held(false);
            }
            return;
        }
        held.insert(room.clone());
        drop(held);
        let this = self.clone();
        let room = room.clone();
        tokio::spawn(async move {
            match this.inner.broadcasts.hold(&room).await {
                Ok(mix) => {
                    // Under the lock: a room that stopped being live meanwhile is let go.
                    let held = this.inner.held.lock().unwrap_or_else(|e| e.into_inner());
                    mix.set_held(held.contains(&room));
                }
                Err(e) => tracing::warn!(%room, error = %e, "no mix to clip from"),
            }
        });
    }
}

impl Recorder for Recordings {
    fn live(&self, room: &RoomId, live: bool) {
        self.hold_for_clips(room, live);
    }

    fn start<'a>(
        &'a self,
        room: &'a RoomId,
        options: RecordingOptions,
    ) -> RecorderFuture<'a, Result<(), String>> {
        Box::pin(self.start_recording(room, options))
    }

    fn stop<'a>(&'a self, room: &'a RoomId) -> RecorderFuture<'a, ()> {
        Box::pin(self.stop_recording(room))
    }

    fn speakers(&self, room: &RoomId, speakers: &[ParticipantId], from_start: bool, at_ms: u64) {
        if let Some(active) = self.inner.active.get(room) {
            let _ = active.speakers.try_send(SpeakersNow {
                speakers: speakers.to_vec(),
                from_start,
                at_ms,
            });
        }
    }
}

/// What a recording's task handles next.
enum Input {
    /// The mix's next frame or speaker packet; `None`: the mix stopped.
    Frame(Option<Recorded>),
    Stop,
    Speakers(SpeakersNow),
}

/// The next input: a stop, then frames, then a change of speakers. A change is placed by where
/// the file is, so the frames the mix made before it came must be in the file by then. Taken
/// at random (as `select!` does), a writer that had fallen behind (a slow disk, a loaded
/// machine) put the line up to its lag too early in the file.
async fn next_input(
    frames: &mut mpsc::Receiver<Recorded>,
    stop: &mut oneshot::Receiver<()>,
    speakers: &mut mpsc::Receiver<SpeakersNow>,
) -> Input {
    tokio::select! {
        biased;
        _ = stop => Input::Stop,
        frame = frames.recv() => Input::Frame(frame),
        Some(now) = speakers.recv() => Input::Speakers(now),
    }
}

/// One recording's task: frames to pages to the file, speakers to the timeline.
struct Writer {
    recordings: Recordings,
    room: RoomId,
    recording: Recording,
    ogg: OggOpusWriter,
    audio: tokio::fs::File,
    timeline: tokio::fs::File,
    /// The speakers' own tracks, if asked for.
    tracks: Option<TrackFiles>,
    /// Where the last timeline line went: lines never go back in time.
    last_line_ms: u64,
}

/// Why a recording's task ended.
enum End {
    /// Asked to.
    Stopped,
    /// The mix stopped (the room ended) or the disk failed.
    Lost,
}

impl Writer {
    async fn run(
        mut self,
        mut feed: Feed,
        mut stop: oneshot::Receiver<()>,
        mut speakers: mpsc::Receiver<SpeakersNow>,
    ) {
        let mut failed = false;
        // A recording started on a running mix begins with the frames just before its start,
        // which the pre-skip drops: its decoder has settled by its first sample.
        let preroll = std::mem::take(&mut feed.preroll);
        let preroll_samples = (preroll.len() * crate::broadcast::mix::FRAME) as u16;
        for frame in &preroll {
            if let Some(page) = self.ogg.push(frame)
                && let Err(e) = write_page(&mut self.audio, page).await
            {
                tracing::error!(recording = %self.recording.id, error = %e, "cannot write");
                failed = true;
            }
        }
        let end = loop {
            if failed {
                break End::Lost;
            }
            let frame = match next_input(&mut feed.frames, &mut stop, &mut speakers).await {
                Input::Frame(Some(Recorded::Mix(frame))) => frame,
                Input::Frame(Some(Recorded::Speaker { packet, plays_in })) => {
                    if let Some(tracks) = self.tracks.as_mut() {
                        tracks.packet(&packet, plays_in).await;
                    }
                    continue;
                }
                Input::Frame(None) => break End::Lost,
                Input::Stop => break End::Stopped,
                Input::Speakers(now) => {
                    self.note_speakers(now, feed.pre_skip).await;
                    continue;
                }
            };
            if let Some(tracks) = self.tracks.as_mut() {
                tracks.mix_frame().await;
            }
            if let Some(page) = self.ogg.push(&frame)
                && let Err(e) = write_page(&mut self.audio, page).await
            {
                tracing::error!(recording = %self.recording.id, error = %e, "cannot write");
                failed = true;
                break End::Lost;
            }
        };
        let id = self.recording.id.clone();
        let tail = ogg::Tail {
            valid_len: 0,
            granule: self.ogg.granule(),
            pre_skip: feed.pre_skip,
        };
        drop(feed);
        if let Some(tracks) = self.tracks.take() {
            // Tracks start with the recording's first frame, after the pre-roll.
            tracks.finish(tail.pre_skip - preroll_samples).await;
        }
        if !failed {
            let last = self.ogg.finish();
            if let Err(e) = write_page(&mut self.audio, &last).await {
                tracing::error!(recording = %id, error = %e, "cannot write the last page");
                failed = true;
            }
        }
        failed |= self.audio.sync_all().await.is_err();
        let _ = self.timeline.flush().await;
        let size = self.audio.metadata().await.map(|m| m.len());
        drop(self.audio);
        let finished = match size {
            Ok(size) if !failed => FinishedRecording {
                state: RecordingState::Ready,
                ended_at_ms: self.recordings.inner.clock.now_ms(),
                duration_ms: tail.duration_ms() as i64,
                size_bytes: size as i64,
            },
            // Whatever the disk kept, measured as after a crash.
            _ => self.recordings.settle(&id).await,
        };
        if let Err(e) = self.recordings.finish(&self.recording, finished).await {
            // Left `recording`: the next start closes it from the file.
            tracing::error!(recording = %id, error = %e, "cannot record the end of a recording");
        }
        tracing::info!(room = %self.room, recording = %id, "recording stopped");
        if let End::Lost = end {
            let inner = &self.recordings.inner;
            inner
                .active
                .remove_if(&self.room, |_, a| a.recording.id == id);
            if let Some(rooms) = inner.rooms.get() {
                rooms.recording_lost(&self.room);
            }
        }
    }

    /// Times are the audio's own: the moment of the file being written now.
    async fn note_speakers(&mut self, now: SpeakersNow, pre_skip: u16) {
        let at = ogg::Tail {
            valid_len: 0,
            granule: self.ogg.granule(),
            pre_skip,
        };
        // A change is heard in the mix once its jitter buffer has played out after the audio
        // that made it arrived, `ago` before now: that is where the line goes. The line a
        // recording starts with says who speaks from its start (the mix's first moments are
        // from just before, with the same people, most likely).
        let at_ms = if now.from_start {
            at.duration_ms()
        } else {
            let clock_ms = self.recordings.inner.clock.now_ms().max(0) as u64;
            let ago = clock_ms
                .saturating_sub(now.at_ms)
                .min(TIMELINE_BACKDATE_MAX_MS);
            (at.duration_ms() + crate::broadcast::mix::PLAYOUT_DELAY_FRAMES * 20)
                .saturating_sub(ago)
        }
        .max(self.last_line_ms);
        self.last_line_ms = at_ms;
        let line = SpeakersAt {
            at_ms,
            speakers: now.speakers,
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        if let Err(e) = write_page(&mut self.timeline, text.as_bytes()).await {
            tracing::warn!(recording = %self.recording.id, error = %e, "cannot write the timeline");
        }
    }
}

/// Writes and hands to the kernel before returning: a kill after this loses none of it.
async fn write_page(file: &mut tokio::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).await?;
    file.flush().await
}

/// Cuts a file after its last whole page; its tail and size. `None` if it holds no stream.
fn settle_file(path: &Path) -> Option<(ogg::Tail, u64)> {
    let bytes = std::fs::read(path).ok()?;
    let tail = ogg::read_tail(&bytes)?;
    if tail.valid_len < bytes.len() as u64 {
        let file = std::fs::OpenOptions::new().write(true).open(path).ok()?;
        file.set_len(tail.valid_len).ok()?;
        file.sync_all().ok()?;
    }
    Some((tail, tail.valid_len))
}

pub(crate) fn rand_serial() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random generator is unavailable");
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames the mix made before a change of speakers came are written before it is placed,
    /// however many are queued; a stop comes before both.
    #[tokio::test]
    async fn queued_frames_go_in_before_a_change_of_speakers() {
        let (frames_tx, mut frames) = mpsc::channel(16);
        let (speakers_tx, mut speakers) = mpsc::channel(4);
        let (stop_tx, mut stop) = oneshot::channel();
        speakers_tx
            .try_send(SpeakersNow {
                speakers: Vec::new(),
                from_start: false,
                at_ms: 0,
            })
            .unwrap();
        for i in 0..8u8 {
            frames_tx
                .try_send(Recorded::Mix(bytes::Bytes::from(vec![i])))
                .unwrap();
        }
        for i in 0..8u8 {
            match next_input(&mut frames, &mut stop, &mut speakers).await {
                Input::Frame(Some(Recorded::Mix(frame))) => assert_eq!(frame[..], [i]),
                _ => panic!("frame {i} was not next"),
            }
        }
        assert!(matches!(
            next_input(&mut frames, &mut stop, &mut speakers).await,
            Input::Speakers(_)
        ));
        frames_tx
            .try_send(Recorded::Mix(bytes::Bytes::new()))
            .unwrap();
        stop_tx.send(()).unwrap();
        assert!(matches!(
            next_input(&mut frames, &mut stop, &mut speakers).await,
            Input::Stop
        ));
    }
}
