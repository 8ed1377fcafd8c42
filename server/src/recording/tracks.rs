//! Speaker tracks: each speaker's own Opus packets, as the room's tap delivered them, remuxed
//! into an Ogg Opus stream of their own on the recording's timeline. Sans-IO: the mix's frames
//! (the clock) and speakers' packets in, pages out as bytes per track; the recording's task
//! owns the files. Nothing is decoded, and nothing is allocated per packet.
//!
//! Timing: a packet goes where its RTP timestamp says, counted from where the mix played its
//! source's first packet (the mix says, with each packet, in how many frames it plays it). A
//! source whose timestamps stray more than [`RESYNC_SAMPLES`] from where the mix plays its
//! packets (a new sender, a stalled clock) is placed anew where the mix plays it. Every gap (silence, DTX,
//! mute, off stage, loss) is filled with a precomputed 20 ms Opus frame of silence, so a track
//! plays in step with the mix from the recording's first sample (pre-skip 0) and decoders need
//! no support for granule jumps.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::ogg::{OggOpusWriter, StreamInfo};
use crate::control::ParticipantId;

/// Tracks one recording keeps at most; later speakers are heard in the mix only (listed as
/// `untracked`).
pub const MAX_TRACKS: usize = 10;
/// Samples of the silence frame (20 ms at 48 kHz).
const FRAME: u64 = 960;
/// A quiet track is filled with silence up to this many frames behind the mix; a packet later
/// than that is dropped (counted). A recording has nobody waiting for it live, so it waits far
/// longer than a listener's jitter buffer would: a speaker whose machine stalls for half a
/// second still has every packet in their track (it was 6 until CI caught gaps on a loaded
/// machine).
const HOLD_FRAMES: u64 = 25;
/// A source whose timestamps put a packet further than this from its arrival is re-anchored
/// (a new sender clock). More than a packet may be late and still be placed, so that a late
/// packet goes where its timestamp says.
pub const RESYNC_SAMPLES: i64 =
    2 * (HOLD_FRAMES + crate::broadcast::mix::PLAYOUT_DELAY_FRAMES) as i64 * FRAME as i64;
/// Sources (connections) one recording remembers; packets of more are not tracked.
const MAX_SOURCES: usize = 1024;
/// Speakers beyond [`MAX_TRACKS`] that a recording lists.
const MAX_UNTRACKED: usize = 100;
/// The longest Opus packet (RFC 6716: 120 ms).
const MAX_PACKET_SAMPLES: u32 = 5760;

/// What a recording says about one of its tracks (and the manifest beside it keeps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrackEntry {
    /// 1 for the first speaker heard, then in the order they were first heard.
    pub track: u32,
    #[schema(value_type = String)]
    pub participant: ParticipantId,
    /// Playable audio, in milliseconds (0 until the recording is finished).
    pub duration_ms: u64,
    /// The file's size (what is written so far while recording).
    pub size_bytes: u64,
}

/// The tracks of one recording, kept beside it as `{id}.tracks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub tracks: Vec<TrackEntry>,
    /// Speakers heard once every track was taken: in the mix only.
    pub untracked: Vec<ParticipantId>,
}

/// Packets not written to a track, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Too late for their place (the track had moved past it).
    pub late: u64,
    /// Not an Opus packet (no TOC, a bad frame count).
    pub malformed: u64,
    /// Of a speaker without a track (over the cap, or unknown).
    pub untracked: u64,
}

/// One speaker's stream being written.
pub struct Track {
    pub participant: ParticipantId,
    ogg: Option<OggOpusWriter>,
    /// Samples written: the track's granule (its pre-skip is 0).
    written: u64,
    /// Pages (the headers, at first) waiting for the file.
    pending: Vec<u8>,
}

impl Track {
    /// Playable audio so far, in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.written * 1000 / super::ogg::GRANULE_RATE
    }

    fn push(&mut self, packet: &[u8], samples: u32) {
        let Some(ogg) = self.ogg.as_mut() else { return };
        if let Some(page) = ogg.push_samples(packet, samples) {
            self.pending.extend_from_slice(page);
        }
        self.written += u64::from(samples);
    }

    /// Silence until `written` is within half a frame of `to`.
    fn fill_to(&mut self, to: u64) {
        while self.written + FRAME / 2 < to {
            self.push(silence(), FRAME as u32);
        }
    }
}

struct Source {
    track: Option<usize>,
    /// An RTP timestamp of this source and the track position (samples) it maps to.
    anchor: Option<(u32, u64)>,
}

/// The speaker tracks of one recording.
pub struct SpeakerTracks {
    tracks: Vec<Track>,
    sources: HashMap<u32, Source>,
    untracked: Vec<ParticipantId>,
    /// Mix frames written since the recording started: the clock.
    mix_frames: u64,
    pub skipped: Skipped,
}

impl Default for SpeakerTracks {
    fn default() -> Self {
        Self::new()
    }
}

impl SpeakerTracks {
    pub fn new() -> Self {
        SpeakerTracks {
            tracks: Vec::with_capacity(MAX_TRACKS),
            sources: HashMap::new(),
            untracked: Vec::new(),
            mix_frames: 0,
            skipped: Skipped::default(),
        }
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn untracked(&self) -> &[ParticipantId] {
        &self.untracked
    }

    /// The pages track `index` has waiting for its file.
    pub fn pending(&self, index: usize) -> &[u8] {
        &self.tracks[index].pending
    }

    /// They reached the file.
    pub fn written(&mut self, index: usize) {
        self.tracks[index].pending.clear();
    }

    /// The mix wrote a frame: 20 ms passed. Quiet tracks are filled with silence up to a
    /// little behind it, so they keep writing a page a second.
    pub fn mix_frame(&mut self) {
        self.mix_frames += 1;
        let horizon = self.mix_frames.saturating_sub(HOLD_FRAMES) * FRAME;
        for track in &mut self.tracks {
            track.fill_to(horizon);
        }
    }

    /// A speaker's packet (`source` as the tap names it, its RTP timestamp and Opus payload);
    /// `plays_in` is how many frames after the ones written so far the mix plays it (`None`:
    /// it came too late for the mix). `who` says whose the source is, asked once per source.
    /// The track it went to, and whether that track is new (its file must be made).
    pub fn packet(
        &mut self,
        source: u32,
        timestamp: u32,
        payload: &[u8],
        plays_in: Option<u64>,
        who: impl FnOnce(u32) -> Option<ParticipantId>,
    ) -> Option<(usize, bool)> {
        let Some(samples) = opus_samples(payload) else {
            self.skipped.malformed += 1;
            return None;
        };
        let mut new = false;
        if !self.sources.contains_key(&source) {
            if self.sources.len() >= MAX_SOURCES {
                self.skipped.untracked += 1;
                return None;
            }
            let track = who(source).and_then(|p| {
                let (index, created) = self.track_of(p)?;
                new = created;
                Some(index)
            });
            self.sources.insert(
                source,
                Source {
                    track,
                    anchor: None,
                },
            );
        }
        // Where the mix plays it; one too late for the mix would have been played about now.
        let arrival = (self.mix_frames + plays_in.unwrap_or(0)) * FRAME;
        let state = self.sources.get_mut(&source)?;
        let Some(index) = state.track else {
            self.skipped.untracked += 1;
            return None;
        };
        let mut at = match state.anchor {
            Some((ts, pos)) => pos as i64 + i64::from(timestamp.wrapping_sub(ts) as i32),
            None => arrival as i64,
        };
        if state.anchor.is_none() || (at - arrival as i64).abs() > RESYNC_SAMPLES {
            state.anchor = Some((timestamp, arrival));
            at = arrival as i64;
        }
        let track = &mut self.tracks[index];
        if at + i64::from(samples / 2) < track.written as i64 {
            self.skipped.late += 1;
            return None;
        }
        track.fill_to(at.max(0) as u64);
        track.push(payload, samples);
        Some((index, new))
    }

    /// The track of `participant`, made if there is room: its index and whether it is new.
    /// `None` once every track is taken (they are listed as untracked).
    fn track_of(&mut self, participant: ParticipantId) -> Option<(usize, bool)> {
        if let Some(i) = self
            .tracks
            .iter()
            .position(|t| t.participant == participant)
        {
            return Some((i, false));
        }
        if self.tracks.len() >= MAX_TRACKS {
            if self.untracked.len() < MAX_UNTRACKED && !self.untracked.contains(&participant) {
                tracing::info!(%participant, "every speaker track is taken: in the mix only");
                self.untracked.push(participant);
            }
            return None;
        }
        let (ogg, head) = OggOpusWriter::new(
            StreamInfo {
                serial: super::rand_serial(),
                channels: 1,
                pre_skip: 0,
                frame_samples: FRAME as u32,
                flush_frames: super::FLUSH_FRAMES,
            },
            super::VENDOR,
        );
        let mut pending = Vec::with_capacity(16 * 1024);
        pending.extend_from_slice(&head);
        self.tracks.push(Track {
            participant,
            ogg: Some(ogg),
            written: 0,
            pending,
        });
        Some((self.tracks.len() - 1, true))
    }

    /// The recording stops: every track is filled with silence to the mix's length
    /// (`mix_pre_skip` is the mix's) and ends with its last page, left pending. The packets
    /// placed past that length (the last tick's) are trimmed by the last page's granule.
    pub fn finish(&mut self, mix_pre_skip: u16) {
        let end = (self.mix_frames * FRAME).saturating_sub(u64::from(mix_pre_skip));
        for track in &mut self.tracks {
            track.fill_to(end);
            if let Some(ogg) = track.ogg.take() {
                let (last, granule) = ogg.finish_at(end);
                track.pending.extend_from_slice(&last);
                track.written = granule;
            }
        }
    }
}

/// A track's number as a path names it (`1` to [`MAX_TRACKS`], no sign, no leading zero).
pub fn track_number(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit());
    let n: u32 = digits.then(|| text.parse().ok()).flatten()?;
    (!text.starts_with('0') && (1..=MAX_TRACKS as u32).contains(&n)).then_some(n)
}

/// Samples (at 48 kHz) an Opus packet holds, from its TOC byte (RFC 6716 section 3.1); `None`
/// if it is not a valid packet's start.
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let per_frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let samples = per_frame * frames;
    (frames > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
}

/// 20 ms of silence as Opus (mono, 48 kHz), encoded once.
fn silence() -> &'static [u8] {
    static SILENCE: OnceLock<Vec<u8>> = OnceLock::new();
    SILENCE.get_or_init(|| {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
                .expect("libopus makes a mono encoder");
        let pcm = [0i16; FRAME as usize];
        let mut packet = [0u8; 256];
        // The first frames carry the encoder's start; a later one is plain silence.
        let mut len = 0;
        for _ in 0..4 {
            len = encoder
                .encode(&pcm, &mut packet)
                .expect("libopus encodes silence");
        }
        packet[..len].to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the mix plays a packet that came in time, after a voice's first.
    const LATENCY_FRAMES: u64 = crate::broadcast::mix::PLAYOUT_DELAY_FRAMES;

    fn pt(n: u8) -> ParticipantId {
        ParticipantId::parse(&format!("pt_{n:0>16}")).unwrap()
    }

    /// A 20 ms SILK packet (config 1, code 0) marked with `tag`.
    fn voice(tag: u8) -> [u8; 4] {
        [1 << 3, tag, tag, tag]
    }

    /// The packets of a track's pending pages, in order, with the granule of each page.
    fn packets(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut reader = super::super::ogg::PacketReader::new(bytes).expect("an Ogg Opus stream");
        assert_eq!(reader.pre_skip, 0);
        std::iter::from_fn(|| reader.next_packet()).collect()
    }

    #[test]
    fn opus_packet_lengths_come_from_the_toc() {
        let cases: [(&[u8], Option<u32>); 9] = [
            (&[0x08], Some(960)),             // SILK NB 20 ms, one frame
            (&[0x18], Some(2880)),            // SILK NB 60 ms
            (&[0x09, 0, 0], Some(1920)),      // two frames of 20 ms
            (&[0x0b, 0x03], Some(2880)),      // code 3, three frames
            (&[0x0b, 0x07], None),            // seven 20 ms frames: 140 ms is too long
            (&[0x0b, 0x00], None),            // code 3 without frames
            (&[0x0b], None),                  // code 3 without its count
            (&[0xf8, 0xff, 0xfe], Some(960)), // CELT FB 20 ms
            (&[], None),
        ];
        for (packet, samples) in cases {
            assert_eq!(opus_samples(packet), samples, "{packet:02x?}");
        }
        assert_eq!(opus_samples(silence()), Some(960));
        // A quiet hour of a track: 180,000 of these and their lacing bytes, plus page headers.
        assert!(silence().len() <= 8, "{} bytes", silence().len());
    }

    #[test]
    fn track_numbers_in_paths() {
        for (text, n) in [
            ("1", Some(1)),
            ("10", Some(10)),
            ("11", None),
            ("0", None),
            ("01", None),
            ("+1", None),
            ("", None),
            ("99999999999", None),
        ] {
            assert_eq!(track_number(text), n, "{text:?}");
        }
    }

    #[test]
    fn packets_land_on_the_timeline_with_silence_in_the_gaps() {
        let a = pt(0);
        let mut t = SpeakerTracks::new();
        // Two seconds of the mix before anyone speaks.
        for _ in 0..100 {
            t.mix_frame();
        }
        // The first packet goes where the mix plays it, a few ticks after its arrival.
        let at = 100 + LATENCY_FRAMES;
        let (i, new) = t
            .packet(7, 5000, &voice(1), Some(LATENCY_FRAMES), |_| {
                Some(a.clone())
            })
            .unwrap();
        assert_eq!((i, new), (0, true));
        assert_eq!(t.tracks()[0].written, (at + 1) * 960);
        t.mix_frame();
        t.packet(7, 5960, &voice(2), Some(LATENCY_FRAMES), |_| unreachable!())
            .unwrap();
        // A 60 ms gap in the timestamps (lost packets, DTX): three frames of silence.
        t.mix_frame();
        t.packet(
            7,
            5960 + 4 * 960,
            &voice(3),
            Some(LATENCY_FRAMES),
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!(t.tracks()[0].written, (at + 1 + 1 + 3 + 1) * 960);
        // A duplicate, and a packet from before the track's position: too late.
        assert!(
            t.packet(7, 5960, &voice(2), Some(LATENCY_FRAMES), |_| unreachable!())
                .is_none()
        );
        assert_eq!(t.skipped.late, 1);
        t.finish(0);
        let got = packets(t.pending(0));
        let at = at as usize;
        assert_eq!(got.len(), at + 1 + 1 + 3 + 1);
        assert!(got[..at].iter().all(|p| p == silence()));
        assert_eq!(got[at], voice(1));
        assert_eq!(got[at + 1], voice(2));
        assert!(got[at + 2..at + 5].iter().all(|p| p == silence()));
        assert_eq!(got[at + 5], voice(3));
    }

    #[test]
    fn a_quiet_track_keeps_up_with_the_mix_and_ends_with_it() {
        let mut t = SpeakerTracks::new();
        t.packet(1, 0, &voice(1), Some(LATENCY_FRAMES), |_| Some(pt(0)))
            .unwrap();
        for _ in 0..510 {
            t.mix_frame();
        }
        // Silence up to a little behind the mix: pages keep reaching the file.
        assert_eq!(t.tracks()[0].written, (510 - HOLD_FRAMES) * 960);
        assert!(t.pending(0).len() > 10 * 27, "a page a second");
        t.finish(312);
        let track = &t.tracks()[0];
        // The mix plays 510 frames less its pre-skip: so does the track, trimmed by its last
        // page's granule. (Had a page ended exactly at the end, nothing could be trimmed: the
        // track would be 312 samples longer.)
        assert_eq!(track.written, 510 * 960 - 312);
        assert_eq!(track.duration_ms(), 10_193);
        let tail = super::super::ogg::read_tail(t.pending(0)).unwrap();
        assert_eq!(tail.granule, track.written);
    }

    #[test]
    fn a_source_that_strays_is_placed_by_arrival_and_a_new_source_continues_its_track() {
        let a = pt(0);
        let mut t = SpeakerTracks::new();
        t.packet(1, 1_000_000, &voice(1), Some(LATENCY_FRAMES), |_| {
            Some(a.clone())
        })
        .unwrap();
        for _ in 0..50 {
            t.mix_frame();
        }
        // A jump of a minute in the timestamps (the sender restarted its clock): by arrival.
        t.packet(
            1,
            1_000_000 + 60 * 48_000,
            &voice(2),
            Some(LATENCY_FRAMES),
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!(t.tracks()[0].written, (50 + LATENCY_FRAMES + 1) * 960);
        // The same speaker on a new connection (off stage and back): the same track.
        for _ in 0..50 {
            t.mix_frame();
        }
        let (i, new) = t
            .packet(2, 77, &voice(3), Some(LATENCY_FRAMES), |_| Some(a.clone()))
            .unwrap();
        assert_eq!((i, new), (0, false));
        assert_eq!(t.tracks()[0].written, (100 + LATENCY_FRAMES + 1) * 960);
        // Timestamps wrap around 2^32 without a jump.
        t.mix_frame();
        t.packet(3, u32::MAX - 959, &voice(4), Some(LATENCY_FRAMES), |_| {
            Some(a.clone())
        })
        .unwrap();
        t.mix_frame();
        t.packet(3, 0, &voice(5), Some(LATENCY_FRAMES), |_| unreachable!())
            .unwrap();
        assert_eq!(t.tracks()[0].written, (101 + LATENCY_FRAMES + 2) * 960);
    }

    /// A speaker's machine stalls for 400 ms, then sends what it held back at once: every
    /// packet goes where its timestamp says (the mix has to conceal them; a recording can wait).
    #[test]
    fn a_stalled_speakers_late_packets_all_reach_their_places() {
        let mut t = SpeakerTracks::new();
        let mut ts = 0u32;
        let mut next = |t: &mut SpeakerTracks| {
            let placed = t.packet(1, ts, &voice(ts as u8), Some(LATENCY_FRAMES), |_| {
                Some(pt(0))
            });
            ts += 960;
            placed.is_some()
        };
        for _ in 0..50 {
            assert!(next(&mut t));
            t.mix_frame();
        }
        for _ in 0..20 {
            t.mix_frame();
        }
        for _ in 0..21 {
            assert!(next(&mut t), "a late packet was dropped");
        }
        for _ in 0..50 {
            t.mix_frame();
            assert!(next(&mut t));
        }
        assert_eq!(t.skipped.late, 0);
        t.finish(0);
        let got = packets(t.pending(0));
        let lat = LATENCY_FRAMES as usize;
        assert!(got[..lat].iter().all(|p| p == silence()));
        let spoken: Vec<u8> = (0..121u32).map(|n| (n * 960) as u8).collect();
        let heard: Vec<u8> = got[lat..lat + 121].iter().map(|p| p[3]).collect();
        assert_eq!(heard, spoken, "in order, in place, no silence in between");
    }

    #[test]
    fn tracks_are_capped_and_the_rest_are_listed_once() {
        let mut t = SpeakerTracks::new();
        for n in 0..MAX_TRACKS as u32 + 2 {
            let who = pt(n as u8);
            let made = t.packet(n, 0, &voice(1), Some(LATENCY_FRAMES), |_| Some(who));
            assert_eq!(made.is_some(), (n as usize) < MAX_TRACKS, "speaker {n}");
        }
        t.packet(
            MAX_TRACKS as u32,
            960,
            &voice(1),
            Some(LATENCY_FRAMES),
            |_| unreachable!(),
        );
        assert_eq!(t.tracks().len(), MAX_TRACKS);
        assert_eq!(
            t.untracked(),
            [pt(MAX_TRACKS as u8), pt(MAX_TRACKS as u8 + 1)]
        );
        assert_eq!(t.skipped.untracked, 3);
        // An unknown source (its connection closed before its packet was read) has no track.
        assert!(
            t.packet(99, 0, &voice(1), Some(LATENCY_FRAMES), |_| None)
                .is_none()
        );
        // Not Opus.
        assert!(
            t.packet(1, 960, &[], Some(LATENCY_FRAMES), |_| unreachable!())
                .is_none()
        );
        assert_eq!(t.skipped.malformed, 1);
    }
}
