//! The stage, mixed once: each speaker's Opus packets wait in a small jitter buffer, are
//! decoded (concealment for a lost one), the loudest few are summed, and the sum is encoded as
//! one Opus stream. Sans-IO: packets and ticks in, one encoded 20 ms frame out per tick; the
//! caller owns the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use opus::{Application, Bitrate, Channels, Decoder, Encoder};

/// Samples per 20 ms frame at 48 kHz, mono: one tick of the mix.
pub const FRAME: usize = 960;
/// Ticks a source's first packet waits before it is played (then the rest follow in order):
/// 300 ms, so a speaker whose machine or network stalls for up to ~280 ms more than its
/// packets' spacing is played as sent, not concealed (on a loaded machine a speaker stalling
/// for 200 ms was heard as fading, then silence, with 40 ms). A broadcast is seconds behind
/// live anyway; recordings' timelines move changes by it. Counted in ticks, not packets, so
/// that where a packet is played depends only on when the first one came: recordings'
/// speaker tracks place packets in step with the mix by it.
pub const PLAYOUT_DELAY_FRAMES: u64 = 15;
/// Packets a source may hold; past that it skips ahead: a speaker whose packets came in a
/// burst (after a stall, or as a connection starts) must not keep their voice further behind
/// than the jitter buffer means to, for the rest of the broadcast.
const MAX_WAITING: usize = PLAYOUT_DELAY_FRAMES as usize + 25;
/// Ticks without a packet after which a source stops playing (and starts buffering anew).
const IDLE_TICKS: u32 = 10;
/// Frames a stream that starts in the middle of the mix's (a clip, a recording started on a
/// running mix) carries before its start, for the decoder to settle on: 80 ms, the least RFC
/// 7845 (section 4.6) asks for. The pre-skip drops them.
pub const PREROLL_FRAMES: u64 = 4;
/// The largest Opus packet (RFC 6716: 1275 bytes per frame, up to 3 frames of 20 ms).
const MAX_PACKET: usize = 4000;
/// Silence, in RFC 6464 terms (-127 dBov).
const SILENT: u8 = 127;

#[derive(Clone, Copy, Debug)]
pub struct MixSettings {
    /// How many speakers are heard at once (the loudest), like a WebRTC listener's slots.
    pub voices: usize,
    pub bitrate: i32,
}

impl Default for MixSettings {
    fn default() -> Self {
        MixSettings {
            voices: 3,
            bitrate: 32_000,
        }
    }
}

/// What goes wrong in the codec (never expected with valid settings: libopus refused).
#[derive(Debug, thiserror::Error)]
#[error("opus: {0}")]
pub struct MixError(#[from] opus::Error);

struct Source {
    decoder: Decoder,
    /// Extended sequence number → (payload, level), in order.
    waiting: BTreeMap<u64, (Bytes, u8)>,
    /// The sequence number to decode next, once playing.
    next: Option<u64>,
    /// The extended sequence number of the last packet received (for unwrapping).
    last: Option<u64>,
    /// Decoded samples not yet mixed.
    pcm: VecDeque<i16>,
    playing: bool,
    /// Ticks the first packet has waited, while not playing.
    held: u64,
    idle: u32,
    /// Level of the audio being played (0 loudest, 127 silence).
    level: u8,
}

impl Source {
    fn new() -> Result<Self, MixError> {
        Ok(Source {
            decoder: Decoder::new(48_000, Channels::Mono)?,
            waiting: BTreeMap::new(),
            next: None,
            last: None,
            pcm: VecDeque::with_capacity(4 * FRAME),
            playing: false,
            held: 0,
            idle: 0,
            level: SILENT,
        })
    }

    /// Extends a 16-bit sequence number to the one nearest the last seen.
    fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.last {
            None => (1 << 16) + u64::from(seq),
            Some(last) => {
                let base = last & !0xffff;
                let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
                candidates
                    .into_iter()
                    .map(|b| b + u64::from(seq))
                    .min_by_key(|c| c.abs_diff(last))
                    .unwrap_or(base + u64::from(seq))
            }
        };
        self.last = Some(self.last.map_or(ext, |l| l.max(ext)));
        ext
    }

    /// Keeps a packet for its tick: how many ticks from now it will be played, or `None` if
    /// it came too late for the mix.
    fn push(&mut self, seq: u16, payload: Bytes, level: u8) -> Option<u64> {
        let ext = self.extend(seq);
        if self.next.is_some_and(|next| ext < next) {
            return None; // too late: its time has passed
        }
        self.waiting.insert(ext, (payload, level));
        while self.waiting.len() > MAX_WAITING {
            self.waiting.pop_first();
            if let (Some(next), Some((&first, _))) = (self.next, self.waiting.first_key_value()) {
                self.next = Some(next.max(first));
            }
        }
        if !self.waiting.contains_key(&ext) {
            return None;
        }
        match self.next {
            Some(next) => Some(ext - next),
            None => {
                let first = *self.waiting.first_key_value()?.0;
                Some(PLAYOUT_DELAY_FRAMES - self.held + (ext - first))
            }
        }
    }

    /// Decodes until a frame's worth of samples is ready, or there is nothing to decode; the
    /// frames concealed.
    fn fill(&mut self, scratch: &mut [i16; 3 * FRAME]) -> Result<u64, MixError> {
        let mut concealed = 0;
        if !self.playing {
            if self.waiting.is_empty() {
                return Ok(0);
            }
            if self.held < PLAYOUT_DELAY_FRAMES {
                self.held += 1;
                return Ok(0);
            }
            self.playing = true;
            self.held = 0;
            self.next = self.waiting.first_key_value().map(|(k, _)| *k);
        }
        while self.pcm.len() < FRAME {
            let Some(next) = self.next else { break };
            let decoded = match self.waiting.remove(&next) {
                Some((payload, level)) => {
                    self.level = level;
                    self.idle = 0;
                    self.decoder.decode(&payload, scratch, false)?
                }
                // Lost (a later one is here): concealment fills its 20 ms.
                None if !self.waiting.is_empty() => {
                    concealed += 1;
                    self.decoder.decode(&[], &mut scratch[..FRAME], false)?
                }
                // Nothing here yet: the packet is late (a stalled sender or network) or the
                // speaker went quiet. Concealment keeps the voice going in time, as a WebRTC
                // receiver's would, instead of a gap of silence in everyone's broadcast; the
                // packet is dropped as too late if it still comes.
                None if self.idle < IDLE_TICKS => {
                    self.idle += 1;
                    concealed += 1;
                    self.decoder.decode(&[], &mut scratch[..FRAME], false)?
                }
                None => break,
            };
            self.pcm.extend(&scratch[..decoded]);
            self.next = Some(next + 1);
        }
        if self.pcm.len() < FRAME {
            // Nothing for IDLE_TICKS: the voice stops, and buffers anew when it comes back.
            self.playing = false;
            self.next = None;
            self.pcm.clear();
            self.level = SILENT;
            self.idle = 0;
            self.decoder.reset_state()?;
        }
        Ok(concealed)
    }
}

/// What the mixer had to make up for, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MixStats {
    /// 20 ms of a voice synthesized by Opus concealment: a lost or late packet, and the
    /// moments after a voice stops.
    pub concealed: u64,
    /// Packets that came after their tick had passed (dropped).
    pub late: u64,
}

/// The mixer of one room.
pub struct Mixer {
    settings: MixSettings,
    stats: MixStats,
    sources: HashMap<u32, Source>,
    encoder: Encoder,
    scratch: Box<[i16; 3 * FRAME]>,
    sum: Box<[i32; FRAME]>,
    frame: Box<[i16; FRAME]>,
    packet: Box<[u8; MAX_PACKET]>,
    chosen: Vec<u32>,
    pre_skip: u16,
}

impl Mixer {
    pub fn new(settings: MixSettings) -> Result<Self, MixError> {
        let mut encoder = Encoder::new(48_000, Channels::Mono, Application::Audio)?;
        encoder.set_bitrate(Bitrate::Bits(settings.bitrate))?;
        let pre_skip = encoder.get_lookahead()? as u16;
        Ok(Mixer {
            settings,
            stats: MixStats::default(),
            sources: HashMap::new(),
            encoder,
            scratch: Box::new([0; 3 * FRAME]),
            sum: Box::new([0; FRAME]),
            frame: Box::new([0; FRAME]),
            packet: Box::new([0; MAX_PACKET]),
            chosen: Vec::with_capacity(settings.voices),
            pre_skip,
        })
    }

    pub fn stats(&self) -> MixStats {
        self.stats
    }

    /// Samples a player drops at the start of the stream (the encoder's lookahead).
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// A speaker's packet: `level` is its RFC 6464 level (0 loudest), if it had one. Says in
    /// how many ticks it will be played (0: the next), or `None` if it came too late for that.
    pub fn push(
        &mut self,
        source: u32,
        seq: u16,
        payload: Bytes,
        level: Option<u8>,
    ) -> Result<Option<u64>, MixError> {
        let entry = match self.sources.entry(source) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Source::new()?),
        };
        let plays_in = entry.push(seq, payload, level.unwrap_or(SILENT / 2));
        self.stats.late += u64::from(plays_in.is_none());
        Ok(plays_in)
    }

    /// A speaker left: their voice stops at once.
    pub fn forget(&mut self, source: u32) {
        self.sources.remove(&source);
    }

    /// Mixes the next 20 ms and encodes it: the Opus packet of this tick.
    pub fn tick(&mut self) -> Result<&[u8], MixError> {
        let scratch = &mut *self.scratch;
        for source in self.sources.values_mut() {
            self.stats.concealed += source.fill(scratch)?;
        }
        // The loudest voices with something to say this tick.
        self.chosen.clear();
        self.chosen.extend(
            self.sources
                .iter()
                .filter(|(_, s)| s.pcm.len() >= FRAME)
                .map(|(id, _)| *id),
        );
        let sources = &self.sources;
        self.chosen
            .sort_unstable_by_key(|id| (sources[id].level, *id));
        self.chosen.truncate(self.settings.voices);
        self.sum.fill(0);
        for id in &self.chosen {
            let source = self.sources.get_mut(id).expect("chosen from the map");
            for (acc, sample) in self.sum.iter_mut().zip(source.pcm.drain(..FRAME)) {
                *acc += i32::from(sample);
            }
        }
        // Voices not chosen move on too, so they are in time when they become loud.
        for (id, source) in &mut self.sources {
            if !self.chosen.contains(id) && source.pcm.len() >= FRAME {
                source.pcm.drain(..FRAME);
            }
        }
        for (out, acc) in self.frame.iter_mut().zip(self.sum.iter()) {
            *out = (*acc).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
        let n = self.encoder.encode(&self.frame[..], &mut self.packet[..])?;
        Ok(&self.packet[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opus packets of a sine tone, 20 ms each.
    fn tone(freq: f64, frames: usize) -> Vec<Bytes> {
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Audio).unwrap();
        (0..frames)
            .map(|f| {
                let pcm: Vec<i16> = (0..FRAME)
                    .map(|i| {
                        let t = (f * FRAME + i) as f64 / 48_000.0;
                        ((t * freq * std::f64::consts::TAU).sin() * 8000.0) as i16
                    })
                    .collect();
                Bytes::from(enc.encode_vec(&pcm, MAX_PACKET).unwrap())
            })
            .collect()
    }

    /// Decodes a run of mixer output and measures the power at `freq` (Goertzel), relative
    /// to the total power: near 1 for a pure tone at that frequency.
    fn share_at(packets: &[Vec<u8>], freq: f64) -> f64 {
        let mut dec = Decoder::new(48_000, Channels::Mono).unwrap();
        let mut pcm = Vec::new();
        let mut buf = [0i16; 3 * FRAME];
        for p in packets {
            let n = dec.decode(p, &mut buf, false).unwrap();
            pcm.extend_from_slice(&buf[..n]);
        }
        let pcm = &pcm[pcm.len() / 2..];
        let k = 2.0 * (std::f64::consts::TAU * freq / 48_000.0).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        let mut total = 0.0;
        for &x in pcm {
            let x = f64::from(x);
            let s = x + k * s1 - s2;
            s2 = s1;
            s1 = s;
            total += x * x;
        }
        let power = s1 * s1 + s2 * s2 - k * s1 * s2;
        power / (total * pcm.len() as f64 / 2.0)
    }

    #[test]
    fn one_speaker_comes_out_as_they_went_in_with_lost_and_late_packets() {
        let mut mixer = Mixer::new(MixSettings::default()).unwrap();
        let packets = tone(440.0, 100);
        let mut out = Vec::new();
        for i in 0..packets.len() {
            // Every tenth is lost; the sixth and seventh of ten arrive swapped. The sequence
            // numbers wrap around 65535 on the way.
            if i % 10 != 3 {
                let seq = match i % 10 {
                    5 => i + 1,
                    6 => i - 1,
                    _ => i,
                };
                let wire_seq = (65_500 + seq as u32) as u16;
                mixer
                    .push(7, wire_seq, packets[seq].clone(), Some(30))
                    .unwrap();
            }
            out.push(mixer.tick().unwrap().to_vec());
        }
        assert!(share_at(&out, 440.0) > 0.8, "{}", share_at(&out, 440.0));
    }

    /// Decodes each of the mixer's packets on its own and returns each frame's RMS.
    fn frame_levels(packets: &[Vec<u8>]) -> Vec<f64> {
        let mut dec = Decoder::new(48_000, Channels::Mono).unwrap();
        let mut buf = [0i16; 3 * FRAME];
        packets
            .iter()
            .map(|p| {
                let n = dec.decode(p, &mut buf, false).unwrap();
                let sum: f64 = buf[..n].iter().map(|&x| f64::from(x).powi(2)).sum();
                (sum / n.max(1) as f64).sqrt()
            })
            .collect()
    }

    #[test]
    fn a_stalled_speaker_is_concealed_not_silenced() {
        let mut mixer = Mixer::new(MixSettings::default()).unwrap();
        let d = PLAYOUT_DELAY_FRAMES as usize;
        let packets = tone(440.0, 3 * d + 60);
        let mut out = Vec::new();
        let mut sent = 0;
        // The speaker's packets are held up (a loaded sender) for four ticks longer than the
        // jitter buffer holds, then come in a burst with the ones of that moment.
        let stall = 2 * d + 10..3 * d + 14;
        for tick in 0..3 * d + 60 {
            let due = if stall.contains(&tick) {
                sent
            } else {
                tick + 1
            };
            while sent < due.min(packets.len()) {
                mixer
                    .push(7, sent as u16, packets[sent].clone(), Some(30))
                    .unwrap();
                sent += 1;
            }
            out.push(mixer.tick().unwrap().to_vec());
        }
        let levels = frame_levels(&out);
        let steady = levels[d + 5..d + 15].iter().sum::<f64>() / 10.0;
        // From the moment the voice plays (after the jitter buffer and the encoder's lookahead)
        // to the end, no frame falls silent: the stall is concealed.
        let quietest = levels[d + 2..]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        assert!(
            quietest > steady / 10.0,
            "a frame at {quietest:.0} RMS against {steady:.0}: {levels:.0?}"
        );
        assert!(share_at(&out, 440.0) > 0.8);
    }

    /// Where a voice starts depends on when its first packet came, not on how the next ones
    /// came: recordings' speaker tracks rely on it to stay in step with the mix.
    #[test]
    fn a_voice_starts_a_fixed_delay_after_its_first_packet_in_a_burst_or_not() {
        let packets = tone(440.0, 30);
        let onset = |burst: bool| {
            let mut mixer = Mixer::new(MixSettings::default()).unwrap();
            let mut out = Vec::new();
            for tick in 0..30 {
                if tick >= 5 {
                    // A burst: the first six at once, then the rest in their time.
                    let due = match (burst, tick) {
                        (true, 5) => 0..6,
                        (true, 6..=10) => 0..0,
                        (_, _) => tick - 5..tick - 4,
                    };
                    for i in due.filter(|i| *i < packets.len()) {
                        let plays_in = mixer
                            .push(7, i as u16, packets[i].clone(), Some(30))
                            .unwrap();
                        // Where it says each packet will be played: one frame after another
                        // from the first one's place.
                        assert_eq!(
                            plays_in.map(|n| n as usize + tick),
                            Some(5 + PLAYOUT_DELAY_FRAMES as usize + i),
                            "packet {i} at tick {tick}"
                        );
                    }
                }
                out.push(mixer.tick().unwrap().to_vec());
            }
            let levels = frame_levels(&out);
            levels
                .iter()
                .position(|l| *l > 100.0)
                .expect("the voice is heard")
        };
        let (spaced, burst) = (onset(false), onset(true));
        assert_eq!(spaced, burst);
        // Its first packet came before tick 5: it plays in frame 5 + the delay, which the
        // decoder hears within the encoder's lookahead (under a frame).
        assert!(
            (5 + PLAYOUT_DELAY_FRAMES as usize..=6 + PLAYOUT_DELAY_FRAMES as usize)
                .contains(&spaced),
            "{spaced}"
        );
    }

    #[test]
    fn two_speakers_are_both_heard_and_silence_is_encoded_when_nobody_speaks() {
        let mut mixer = Mixer::new(MixSettings::default()).unwrap();
        let (a, b) = (tone(440.0, 100), tone(1000.0, 100));
        let mut out = Vec::new();
        for i in 0..100 {
            mixer.push(1, i as u16, a[i].clone(), Some(20)).unwrap();
            mixer.push(2, i as u16, b[i].clone(), Some(25)).unwrap();
            out.push(mixer.tick().unwrap().to_vec());
        }
        let (at_a, at_b) = (share_at(&out, 440.0), share_at(&out, 1000.0));
        assert!(at_a > 0.3 && at_b > 0.3, "440 Hz {at_a}, 1 kHz {at_b}");
        // Nobody: the stream goes on, quietly.
        let quiet: Vec<Vec<u8>> = (0..50).map(|_| mixer.tick().unwrap().to_vec()).collect();
        assert!(quiet.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn only_the_loudest_voices_are_mixed() {
        let mut mixer = Mixer::new(MixSettings {
            voices: 1,
            ..MixSettings::default()
        })
        .unwrap();
        let (a, b) = (tone(440.0, 100), tone(1000.0, 100));
        let mut out = Vec::new();
        for i in 0..100 {
            mixer.push(1, i as u16, a[i].clone(), Some(50)).unwrap();
            mixer.push(2, i as u16, b[i].clone(), Some(10)).unwrap();
            out.push(mixer.tick().unwrap().to_vec());
        }
        assert!(share_at(&out, 1000.0) > 0.8);
        assert!(share_at(&out, 440.0) < 0.05);
    }
}
