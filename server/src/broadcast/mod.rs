//! The broadcast tier: a room's stage mixed once (Opus decode, mix, encode) and served as
//! Low-Latency HLS, for audiences larger than WebRTC per listener should carry. The server's
//! cost does not grow with the audience: every part is immutable, and any HTTP cache or CDN in
//! front serves the listeners.
//!
//! - [`mix`]: the sans-IO mixer (jitter buffers, concealment, the loudest voices, one encoder).
//! - [`mp4`]: Opus in fragmented MP4 (CMAF).
//! - [`hls`]: parts, segments and the media playlist.
//! - [`audience`]: the anonymous listeners (listen links), counted from their heartbeats.
//! - [`ring`]: the last seconds of the mix, kept for clips while the mix runs.
//! - this file: a room's mix as a task fed by the media workers' tap
//!   ([`crate::media::tap`]), started on demand, stopped when nobody asks for it and nothing
//!   records it; its encoded frames go to the HLS stream and to a recording, if one is
//!   attached ([`Broadcasts::record`]); and the signed, rotating links that give access to it.
//!
//! Access: a broadcast's files live under `/broadcast/{room}/{period}.{signature}/`. The
//! signature (HMAC of the room and the period with a key derived from the signing key) is the
//! same for everyone in the room during a period, so caches keep one copy; a link works for
//! one to two periods (5 minutes each by default), so a leaked one soon stops working.

pub mod audience;
pub mod hls;
pub mod mix;
pub mod mp4;
pub mod ring;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::config::BroadcastSettings;
use crate::control::{RoomId, Store};
use crate::media::Media;
use crate::metrics::BroadcastMetrics;
use hls::{HlsSettings, Position, Stream};
use mix::{MixSettings, Mixer};

/// Speaker packets waiting for the mixer (about a second of five voices).
const TAP_QUEUE: usize = 256;
/// How often the mixer looks at whether its room still exists.
const ROOM_CHECK: Duration = Duration::from_secs(2);

/// Why a broadcast cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    #[error("no such room")]
    RoomNotFound,
    #[error("the room has ended")]
    RoomEnded,
    #[error("broadcasts are turned off on this server")]
    Disabled,
    #[error("this server mixes as many rooms as it may; try again later")]
    Full,
    #[error("the server could not start the mix")]
    Internal,
}

/// A link to a room's broadcast.
#[derive(Debug, Clone)]
pub struct Link {
    /// Path of the playlist, from the server's root (`/broadcast/…/playlist.m3u8`).
    pub path: String,
    /// When the link stops working, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl Link {
    /// The playlist as an absolute URL under the server's public URL.
    pub fn url(&self, base_url: &str) -> String {
        format!("{base_url}{}", self.path)
    }

    /// When the link stops working, RFC 3339.
    pub fn expires_at(&self) -> String {
        crate::clock::rfc3339(self.expires_at_ms)
    }
}

/// What the access part of a broadcast path is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Valid,
    /// It was valid; its time is over.
    Expired,
    /// It never was (another room's, forged, malformed).
    Invalid,
}

/// What a room's mix hands a recording, in the order the mix saw it.
pub enum Recorded {
    /// One encoded 20 ms frame of the mix.
    Mix(Bytes),
    /// A speaker's packet as the tap delivered it (a reference, not a copy), for speaker
    /// tracks: it arrived after the mix frames before it in the queue.
    Speaker {
        packet: Arc<crate::media::worker::Forwarded>,
        /// In how many frames the mix plays it (0: the next one), or `None` if it came too
        /// late for the mix.
        plays_in: Option<u64>,
    },
}

/// Where a recording's end of the mix is fed. A full queue drops (the writer is seconds
/// behind: something is badly wrong with the disk); speaker packets are counted.
struct RecorderSink {
    queue: mpsc::Sender<Recorded>,
    /// The recording keeps speaker tracks: the speakers' packets go to it too.
    speakers: bool,
    dropped: Arc<AtomicU64>,
    metrics: BroadcastMetrics,
}

/// A room's recording, and what it needs to start in step with the mix.
#[derive(Default)]
struct Recorder {
    sink: Option<RecorderSink>,
    /// Frames the mix made so far.
    frames: u64,
    /// The last [`mix::PREROLL_FRAMES`] of them, a recording's pre-roll.
    recent: std::collections::VecDeque<Bytes>,
    /// The speaker packets the mix holds and has not played yet, each with the frame that
    /// plays it: a recording with speaker tracks that starts now gets them first, so that a
    /// voice already speaking starts in its track where it does in the mix.
    waiting: std::collections::VecDeque<(Arc<crate::media::worker::Forwarded>, u64)>,
}

/// Packets [`Recorder::waiting`] keeps at most (what the mix holds of ten voices).
const HELD_FOR_RECORDINGS: usize = 10 * (mix::PLAYOUT_DELAY_FRAMES as usize + 2);

impl Recorder {
    /// Attaches a recording: a recording with speaker tracks gets the packets the mix holds.
    /// Returns its pre-roll: the frames just before the next one the recording gets.
    fn attach(&mut self, sink: RecorderSink) -> Vec<Bytes> {
        if sink.speakers {
            for (packet, plays_at) in &self.waiting {
                let _ = sink.queue.try_send(Recorded::Speaker {
                    packet: Arc::clone(packet),
                    plays_in: Some(plays_at - self.frames),
                });
            }
        }
        self.sink = Some(sink);
        self.recent.iter().cloned().collect()
    }

    /// The mix made `frame`: to the recording, if one is attached; whether one is.
    fn frame(&mut self, frame: &Bytes) -> bool {
        self.frames += 1;
        let frames = self.frames;
        self.waiting.retain(|(_, plays_at)| *plays_at >= frames);
        if self.recent.len() == mix::PREROLL_FRAMES as usize {
            self.recent.pop_front();
        }
        self.recent.push_back(frame.clone());
        let Some(sink) = self.sink.as_ref() else {
            return false;
        };
        match sink.queue.try_send(Recorded::Mix(frame.clone())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("a recording's writer is behind; a frame is dropped");
                sink.metrics.recording_frames_dropped.inc();
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.sink = None;
                false
            }
        }
    }
}

/// Frames waiting for a recording's writer (about five seconds).
const RECORD_QUEUE: usize = 256;
/// With speaker tracks, room for the speakers' packets too (five seconds of six voices).
const RECORD_QUEUE_WITH_SPEAKERS: usize = 256 * 7;

/// A recording's end of a room's mix.
pub struct Feed {
    /// The mix's encoded frames from now on, and its speakers' packets if asked for; closed
    /// when the mix stops (the room ended).
    pub frames: mpsc::Receiver<Recorded>,
    /// The mix's frames from just before `frames`, when the recording starts on a running mix
    /// (a file that starts mid-stream needs them for its decoder to settle): written first.
    pub preroll: Vec<Bytes>,
    /// Samples a player drops at the start: the encoder's lookahead, and the pre-roll.
    pub pre_skip: u16,
    /// The room's tap: whose each speaker packet's source is.
    pub tap: Arc<crate::media::tap::RoomTap>,
    /// Speaker packets the queue had no room for.
    pub dropped: Arc<AtomicU64>,
}

/// A room's mix while it runs.
pub struct Live {
    pub stream: Mutex<Stream>,
    /// Where frames go besides the stream: a recording of the room, while it is recorded.
    recorder: Mutex<Recorder>,
    pre_skip: u16,
    /// The last part published; changes wake blocked playlist requests.
    published: watch::Sender<Option<Position>>,
    /// Set when the room ended: the playlist then ends too.
    ended: watch::Sender<bool>,
    /// Requests so far; while the count moves, someone listens.
    requests: AtomicU64,
    /// Listeners on listen links, by their heartbeats.
    anonymous: Mutex<audience::AnonymousAudience>,
    /// The last seconds of the mix, for clips.
    ring: Mutex<ring::Ring>,
    /// Kept running while its room is live, for clips of the last seconds
    /// ([`Broadcasts::hold`]).
    held: std::sync::atomic::AtomicBool,
}

impl Live {
    /// Notes that someone asked for the broadcast (it keeps the mix running).
    pub fn touch(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Position>> {
        self.published.subscribe()
    }

    pub fn ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// A heartbeat from an anonymous listener's player, which calls itself `client`.
    pub fn heard(&self, client: &str, now_ms: i64) {
        self.anonymous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heard(client, now_ms);
    }

    /// Anonymous listeners heard from in the last 30 to 60 seconds.
    pub fn anonymous_listeners(&self, now_ms: i64) -> u32 {
        self.anonymous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(now_ms)
    }

    /// The mix's last seconds now, and the stream's pre-skip.
    pub fn last_frames(&self) -> (ring::Window, u16) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (ring.window(), self.pre_skip)
    }

    /// Bytes of audio the clip ring holds.
    pub fn ring_bytes(&self) -> usize {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).bytes()
    }

    /// Keeps the mix running while `held` (its room is live and clips of it may be made).
    pub fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    /// Hands a frame to the recording, if one is attached; whether one is (a recording keeps
    /// the mix running). A recording that stopped has closed its end: it is let go here.
    fn offer_to_recorder(&self, frame: &Bytes) -> bool {
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .frame(frame)
    }

    /// Hands a speaker's packet to a recording that keeps speaker tracks; a full queue drops
    /// it (counted: the track fills its place with silence). Kept until the mix plays it, for
    /// a recording that starts meanwhile.
    fn offer_packet_to_recorder(
        &self,
        packet: &Arc<crate::media::worker::Forwarded>,
        plays_in: Option<u64>,
    ) {
        let mut recorder = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plays_in) = plays_in {
            if recorder.waiting.len() >= HELD_FOR_RECORDINGS {
                recorder.waiting.pop_front();
            }
            let plays_at = recorder.frames + plays_in;
            recorder.waiting.push_back((Arc::clone(packet), plays_at));
        }
        if let Some(sink) = recorder.sink.as_ref().filter(|s| s.speakers)
            && sink
                .queue
                .try_send(Recorded::Speaker {
                    packet: Arc::clone(packet),
                    plays_in,
                })
                .is_err()
        {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
            sink.metrics.track_packets_dropped.inc();
        }
    }
}

#[derive(Clone)]
pub struct Broadcasts {
    inner: Arc<Inner>,
}

struct Inner {
    settings: BroadcastSettings,
    hls: HlsSettings,
    media: Media,
    store: Store,
    clock: Clock,
    key: [u8; 32],
    metrics: BroadcastMetrics,
    live: DashMap<RoomId, Arc<Live>>,
    /// Frames each mix keeps for clips (`[recording] live_clip_secs`, and a little more for
    /// the decoder to settle before a clip's first frame).
    ring_frames: std::sync::atomic::AtomicUsize,
}

impl Broadcasts {
    pub fn new(
        settings: BroadcastSettings,
        media: Media,
        store: Store,
        clock: Clock,
        key: [u8; 32],
        metrics: BroadcastMetrics,
    ) -> Self {
        Broadcasts {
            inner: Arc::new(Inner {
                metrics,
                settings,
                hls: HlsSettings::default(),
                media,
                store,
                clock,
                key,
                live: DashMap::new(),
                ring_frames: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Keeps this many frames of every mix for clips (set once at start).
    pub fn keep_frames_for_clips(&self, frames: usize) {
        self.inner.ring_frames.store(frames, Ordering::Relaxed);
    }

    /// Starts the room's mix (with broadcasts turned off too, like a recording) so that clips
    /// of its last seconds can be made; [`Live::set_held`] keeps it running.
    pub async fn hold(&self, room: &RoomId) -> Result<Arc<Live>, BroadcastError> {
        Ok(self.start_mix(room, None).await?.0)
    }

    pub fn settings(&self) -> &BroadcastSettings {
        &self.inner.settings
    }

    /// The room's mix if it is running (it is not started).
    pub fn get(&self, room: &RoomId) -> Option<Arc<Live>> {
        self.inner.live.get(room).map(|l| l.clone())
    }

    pub fn hls_settings(&self) -> HlsSettings {
        self.inner.hls
    }

    /// Anonymous listeners of the room's broadcast heard from in the last minute, on this
    /// node (0 when its mix does not run here).
    pub fn anonymous_listeners(&self, room: &RoomId) -> u32 {
        self.get(room).map_or(0, |live| {
            live.anonymous_listeners(self.inner.clock.now_ms())
        })
    }

    /// Rooms being mixed now.
    pub fn running(&self) -> usize {
        self.inner.live.len()
    }

    fn period_ms(&self) -> i64 {
        (self.inner.settings.link_period_secs.max(1) * 1000) as i64
    }

    fn signature(&self, room: &RoomId, period: i64) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.inner.key).expect("HMAC accepts any key length");
        mac.update(room.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(&period.to_be_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..12])
    }

    /// The link to a room's broadcast valid now.
    pub fn link(&self, room: &RoomId) -> Link {
        let now = self.inner.clock.now_ms();
        let period = now.div_euclid(self.period_ms());
        Link {
            path: format!(
                "/broadcast/{room}/{period}.{}/playlist.m3u8",
                self.signature(room, period)
            ),
            expires_at_ms: (period + 2) * self.period_ms(),
        }
    }

    /// Checks the `{period}.{signature}` part of a path.
    pub fn check_access(&self, room: &RoomId, access: &str) -> Access {
        let Some((period, signature)) = access.split_once('.') else {
            return Access::Invalid;
        };
        if period.is_empty() || period.len() > 15 || !period.bytes().all(|b| b.is_ascii_digit()) {
            return Access::Invalid;
        }
        let Ok(period) = period.parse::<i64>() else {
            return Access::Invalid;
        };
        let expected = self.signature(room, period);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            signature.as_bytes(),
        )) {
            return Access::Invalid;
        }
        let now = self.inner.clock.now_ms().div_euclid(self.period_ms());
        if period == now || period + 1 == now {
            Access::Valid
        } else {
            Access::Expired
        }
    }

    /// The room's running mix, started if it is not running.
    pub async fn ensure(&self, room: &RoomId) -> Result<Arc<Live>, BroadcastError> {
        if !self.inner.settings.enabled {
            return Err(BroadcastError::Disabled);
        }
        Ok(self.start_mix(room, None).await?.0)
    }

    /// The room's mix from now on, for a recording: the mix is started if it is not running
    /// (with broadcasts turned off too: recordings are made from the same mix) and keeps
    /// running while the feed is held. One recording per room: a new feed replaces the old.
    /// With `speakers`, the speakers' packets come too, for speaker tracks.
    pub async fn record(&self, room: &RoomId, speakers: bool) -> Result<Feed, BroadcastError> {
        let depth = if speakers {
            RECORD_QUEUE_WITH_SPEAKERS
        } else {
            RECORD_QUEUE
        };
        let (tx, rx) = mpsc::channel(depth);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = RecorderSink {
            queue: tx,
            speakers,
            dropped: dropped.clone(),
            metrics: self.inner.metrics.clone(),
        };
        let (live, preroll) = self.start_mix(room, Some(sink)).await?;
        let pre_skip = live.pre_skip + (preroll.len() * mix::FRAME) as u16;
        Ok(Feed {
            frames: rx,
            preroll,
            pre_skip,
            tap: self.inner.media.tap(room),
            dropped,
        })
    }

    /// The room's mix, started if it is not running, with `recorder` attached before any
    /// packet reaches a new mix (a speaker track then has every packet the mix had); with the
    /// recorder's pre-roll (none for a new mix).
    async fn start_mix(
        &self,
        room: &RoomId,
        recorder: Option<RecorderSink>,
    ) -> Result<(Arc<Live>, Vec<Bytes>), BroadcastError> {
        let attached = |live: Arc<Live>, recorder: Option<RecorderSink>| {
            let preroll = match recorder {
                Some(sink) => live
                    .recorder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .attach(sink),
                None => Vec::new(),
            };
            (live, preroll)
        };
        if let Some(live) = self.inner.live.get(room) {
            return Ok(attached(live.clone(), recorder));
        }
        match self.inner.store.room(room.clone()).await {
            Ok(r) if r.is_ended() => return Err(BroadcastError::RoomEnded),
            Ok(_) => {}
            Err(crate::control::ControlError::RoomNotFound) => {
                return Err(BroadcastError::RoomNotFound);
            }
            Err(_) => return Err(BroadcastError::Internal),
        }
        if self.inner.live.len() >= self.inner.settings.max_rooms {
            return Err(BroadcastError::Full);
        }
        let mut mixer = Mixer::new(MixSettings {
            voices: self.inner.settings.voices.max(1),
            bitrate: self.inner.settings.bitrate as i32,
        })
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start a mix");
            BroadcastError::Internal
        })?;
        let now = self.inner.clock.now_ms();
        let stream = Stream::new(
            self.inner.hls,
            crate::media::random_alnum(10),
            mp4::OpusTrack {
                channels: 1,
                pre_skip: mixer.pre_skip(),
            },
            now,
        );
        let live = Arc::new(Live {
            stream: Mutex::new(stream),
            recorder: Mutex::new(Recorder::default()),
            pre_skip: mixer.pre_skip(),
            published: watch::channel(None).0,
            ended: watch::channel(false).0,
            requests: AtomicU64::new(0),
            anonymous: Mutex::new(audience::AnonymousAudience::new(now)),
            ring: Mutex::new(ring::Ring::new(
                self.inner.ring_frames.load(Ordering::Relaxed),
            )),
            held: std::sync::atomic::AtomicBool::new(false),
        });
        // Two requests may race to start it: the first one in the map wins.
        let (live, preroll) = match self.inner.live.entry(room.clone()) {
            dashmap::mapref::entry::Entry::Occupied(e) => {
                return Ok(attached(e.get().clone(), recorder));
            }
            dashmap::mapref::entry::Entry::Vacant(e) => {
                let (live, preroll) = attached(live, recorder);
                e.insert(live.clone());
                (live, preroll)
            }
        };
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        self.inner.media.tap(room).attach(tx);
        // Silence until the first speaker is heard: the stream starts at once.
        let _ = mixer.tick();
        tracing::info!(room = %room, "broadcast started");
        tokio::spawn(self.clone().run(room.clone(), live.clone(), mixer, rx));
        Ok((live, preroll))
    }

    /// Mixes every 20 ms until nobody asks for the broadcast any more.
    async fn run(
        self,
        room: RoomId,
        live: Arc<Live>,
        mut mixer: Mixer,
        mut packets: mpsc::Receiver<Arc<crate::media::worker::Forwarded>>,
    ) {
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        // Late ticks are caught up: the stream's timeline has no holes.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut room_check = tokio::time::interval(ROOM_CHECK);
        let idle = Duration::from_secs(self.inner.settings.idle_secs);
        let mut idle_since = tokio::time::Instant::now();
        let mut last_seen = live.requests.load(Ordering::Relaxed);
        let mut reported = mix::MixStats::default();
        let mut counted = mix::MixStats::default();
        let metrics = &self.inner.metrics;
        let tap = self.inner.media.tap(&room);
        metrics.mixes.inc();
        loop {
            tokio::select! {
                Some(packet) = packets.recv() => take_packet(&room, &mut mixer, &live, &packet),
                _ = ticker.tick() => {
                    let frame = match tick(&mut mixer, &mut packets, |mixer, packet| {
                        take_packet(&room, mixer, &live, packet)
                    }) {
                        Ok(frame) => Bytes::copy_from_slice(frame),
                        Err(e) => {
                            tracing::error!(room = %room, error = %e, "mix failed");
                            break;
                        }
                    };
                    let stats = mixer.stats();
                    metrics.frames.inc();
                    metrics.concealed.inc_by(stats.concealed - counted.concealed);
                    metrics.late.inc_by(stats.late - counted.late);
                    counted = stats;
                    // Recorded, or held for clips: kept running whoever listens.
                    let needed = live.offer_to_recorder(&frame) | live.held.load(Ordering::Relaxed);
                    live.ring.lock().unwrap_or_else(|e| e.into_inner()).push(&frame);
                    let now = self.inner.clock.now_ms();
                    let published = live
                        .stream
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_frame(frame, now);
                    if let Some(position) = published {
                        live.published.send_replace(Some(position));
                        let seen = live.requests.load(Ordering::Relaxed);
                        if seen != last_seen || needed {
                            last_seen = seen;
                            idle_since = tokio::time::Instant::now();
                        } else if idle_since.elapsed() >= idle {
                            break;
                        }
                    }
                }
                _ = room_check.tick() => {
                    metrics.tap_dropped.inc_by(tap.take_dropped());
                    let stats = mixer.stats();
                    if stats.late > reported.late {
                        tracing::info!(
                            room = %room,
                            late = stats.late - reported.late,
                            concealed = stats.concealed - reported.concealed,
                            "speakers' packets came after their tick: concealed in the mix"
                        );
                    }
                    reported = stats;
                    match self.inner.store.room(room.clone()).await {
                        Ok(r) if !r.is_ended() => {}
                        // Ended (or gone): players see the end of the playlist, then it stops.
                        _ => {
                            live.ended.send_replace(true);
                            break;
                        }
                    }
                }
            }
        }
        self.inner.media.untap(&room);
        metrics.tap_dropped.inc_by(tap.take_dropped());
        metrics.mixes.dec();
        self.inner
            .live
            .remove_if(&room, |_, running| Arc::ptr_eq(running, &live));
        tracing::info!(room = %room, "broadcast stopped");
    }
}

/// One tick of the mix: first every packet that came before it, then the next 20 ms mixed.
/// After a stall of the mix's task, its late ticks and the packets queued meanwhile are ready
/// at once, and `select!` picks between them at random: without draining the queue first,
/// ticks would run ahead of packets that came in time, and the mix (and a recording's tracks)
/// would conceal them, then drop them as late. CI caught this as a dip in a broadcast and gaps
/// in a speaker track on a loaded machine.
fn tick<'m>(
    mixer: &'m mut Mixer,
    packets: &mut mpsc::Receiver<Arc<crate::media::worker::Forwarded>>,
    mut take: impl FnMut(&mut Mixer, &Arc<crate::media::worker::Forwarded>),
) -> Result<&'m [u8], mix::MixError> {
    for _ in 0..TAP_QUEUE {
        let Ok(packet) = packets.try_recv() else {
            break;
        };
        take(mixer, &packet);
    }
    mixer.tick()
}

/// A speaker's packet, to the mixer and to a recording's tracks.
fn take_packet(
    room: &RoomId,
    mixer: &mut Mixer,
    live: &Live,
    packet: &Arc<crate::media::worker::Forwarded>,
) {
    let plays_in = mixer
        .push(
            packet.source,
            packet.seq,
            packet.payload.clone(),
            packet.level.map(|l| l.level),
        )
        .unwrap_or_else(|e| {
            tracing::warn!(room = %room, error = %e, "mixer refused a packet");
            None
        });
    live.offer_packet_to_recorder(packet, plays_in);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_on_a_running_mix_gets_the_frames_just_before_its_first_as_pre_roll() {
        let sink = || {
            let (queue, rx) = mpsc::channel(16);
            let dropped = Arc::new(AtomicU64::new(0));
            let sink = RecorderSink {
                queue,
                speakers: false,
                dropped,
                metrics: BroadcastMetrics::default(),
            };
            (sink, rx)
        };
        let frame = |n: u8| Bytes::from(vec![n; 3]);
        // A new mix: nothing before the recording's first frame.
        let mut fresh = Recorder::default();
        assert!(fresh.attach(sink().0).is_empty());
        // A mix that made ten frames: the last four, then the eleventh through the queue.
        let mut recorder = Recorder::default();
        for n in 0..10 {
            assert!(!recorder.frame(&frame(n)), "nobody records yet");
        }
        let (sink, mut rx) = sink();
        let preroll = recorder.attach(sink);
        assert_eq!(preroll, (6..10).map(frame).collect::<Vec<_>>());
        assert_eq!(preroll.len() as u64, mix::PREROLL_FRAMES);
        assert!(recorder.frame(&frame(10)));
        match rx.try_recv() {
            Ok(Recorded::Mix(first)) => assert_eq!(first, frame(10)),
            _ => panic!("the recording's first frame is the one after its pre-roll"),
        }
    }

    fn broadcasts(clock: Clock) -> Broadcasts {
        // A media service is needed for the type only; links never touch it.
        let store = Store::open_in_memory().unwrap();
        let (media, _) = Media::start(
            &crate::media::MediaOptions {
                settings: crate::config::MediaSettings {
                    workers: 1,
                    tcp: false,
                    ..Default::default()
                },
                bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: None,
                public_ip: None,
            },
            &crate::metrics::Metrics::default().media,
        )
        .unwrap();
        Broadcasts::new(
            BroadcastSettings::default(),
            media,
            store,
            clock,
            [7; 32],
            BroadcastMetrics::default(),
        )
    }

    #[tokio::test]
    async fn links_are_the_same_for_everyone_and_stop_working_after_two_periods() {
        let clock = Clock::manual();
        let b = broadcasts(clock.clone());
        let room = RoomId::parse("rm_AAAAAAAAAAAAAAAA").unwrap();
        let other = RoomId::parse("rm_BBBBBBBBBBBBBBBB").unwrap();
        let link = b.link(&room);
        assert_eq!(
            link.path,
            b.link(&room).path,
            "one link per room and period"
        );
        let access = link.path.split('/').nth(3).unwrap().to_owned();
        assert_eq!(b.check_access(&room, &access), Access::Valid);
        assert_eq!(
            b.check_access(&other, &access),
            Access::Invalid,
            "another room's link"
        );
        let (period, _) = access.split_once('.').unwrap();
        assert_eq!(
            b.check_access(&room, &format!("{period}.AAAA")),
            Access::Invalid
        );
        assert_eq!(b.check_access(&room, "1.2.3"), Access::Invalid);
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            b.check_access(&room, &access),
            Access::Valid,
            "the next period too"
        );
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            b.check_access(&room, &access),
            Access::Expired,
            "then it has expired"
        );
        assert!(link.expires_at_ms <= clock.now_ms());
        assert_ne!(b.link(&room).path, link.path, "a new link replaces it");
    }

    /// A speaker's packet as a worker hands it to the tap.
    fn packet(seq: u16, payload: Bytes) -> Arc<crate::media::worker::Forwarded> {
        Arc::new(crate::media::worker::Forwarded {
            room: crate::media::worker::RoomKey(1),
            source: 7,
            seq,
            timestamp: u32::from(seq) * 960,
            marker: false,
            level: None,
            payload,
            redundancy: Default::default(),
            arrived: std::time::Instant::now(),
        })
    }

    /// A mix whose queue is full loses packets, and says how many (for `/metrics`), once.
    #[test]
    fn a_full_mix_queue_counts_what_the_tap_dropped() {
        let tap = crate::media::tap::RoomTap::default();
        let (tx, mut rx) = mpsc::channel(2);
        tap.offer(&packet(0, Bytes::from_static(b"x")));
        assert_eq!(
            tap.take_dropped(),
            0,
            "nobody mixes: nothing is offered or lost"
        );
        tap.attach(tx);
        for seq in 0..5 {
            tap.offer(&packet(seq, Bytes::from_static(b"x")));
        }
        assert_eq!(tap.take_dropped(), 3);
        assert_eq!(tap.take_dropped(), 0, "counted once");
        assert_eq!(rx.try_recv().unwrap().seq, 0);
    }

    /// The mix's task stalled (a busy machine) while a speaker's packets kept coming in time:
    /// the first late tick takes them all, and the ticks that catch up play them, in order,
    /// with nothing concealed.
    #[test]
    fn a_late_tick_mixes_every_packet_queued_before_it() {
        let mut mixer = Mixer::new(mix::MixSettings::default()).unwrap();
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
        let (tx, mut rx) = mpsc::channel(TAP_QUEUE);
        let mut tone = (0u16..).map(move |seq| {
            let pcm: Vec<i16> = (0..mix::FRAME)
                .map(|i| {
                    let t = (usize::from(seq) * mix::FRAME + i) as f64 / 48_000.0;
                    ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            packet(seq, Bytes::from(encoder.encode_vec(&pcm, 4000).unwrap()))
        });
        let take = |mixer: &mut Mixer, p: &Arc<crate::media::worker::Forwarded>| {
            mixer
                .push(p.source, p.seq, p.payload.clone(), None)
                .unwrap();
        };
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0i16; 3 * mix::FRAME];
        let mut levels = Vec::new();
        for round in 0..5 {
            // Half a second in time, then 200 ms of the task not running.
            for _ in 0..25 {
                tx.try_send(tone.next().unwrap()).unwrap();
                let frame = tick(&mut mixer, &mut rx, take).unwrap();
                let n = decoder.decode(frame, &mut pcm, false).unwrap();
                levels.push((round, pcm[..n].iter().map(|&x| i64::from(x).abs()).max()));
            }
            for _ in 0..10 {
                tx.try_send(tone.next().unwrap()).unwrap();
            }
            for _ in 0..10 {
                let frame = tick(&mut mixer, &mut rx, take).unwrap();
                let n = decoder.decode(frame, &mut pcm, false).unwrap();
                levels.push((round, pcm[..n].iter().map(|&x| i64::from(x).abs()).max()));
            }
        }
        // After the jitter buffer filled and the encoder's start, every frame is the tone at
        // its level: nothing was concealed, nothing came late.
        let faded: Vec<_> = levels[mix::PLAYOUT_DELAY_FRAMES as usize + 1..]
            .iter()
            .filter(|(_, peak)| peak.unwrap_or(0) < 4000)
            .collect();
        assert_eq!(faded, Vec::<&(usize, Option<i64>)>::new(), "{levels:?}");
        assert!(rx.is_empty());
    }
}
