//! Audio as Stoa clients make and check it: 48 kHz mono 16-bit PCM in 20 ms frames, the sources
//! a microphone plays (tones, WAV files, pushed samples), WAV files, and measurements (RMS level
//! in dBov, the RFC 6464 audio level, Goertzel tone detection). Pure functions and small types;
//! no I/O but reading a file when asked.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opus clock and the rate Stoa clients encode and decode at.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz (one RTP packet).
pub const FRAME_SAMPLES: usize = 960;
/// Duration of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
/// Samples in one analysis window (100 ms).
pub const WINDOW_SAMPLES: usize = 4_800;
/// Frames louder than this (dBov) are flagged as voice in the audio-level extension.
pub const VOICE_THRESHOLD_DBOV: f64 = -50.0;

/// Windows quieter than this (dBov) carry no tone.
const SILENCE_DBOV: f64 = -60.0;
/// Share of a window's power a frequency must carry to count as present. Above one half, so at
/// most one frequency can be present in a window (a 50/50 mix of two tones has none).
const TONE_SHARE: f64 = 0.6;

// ---------------------------------------------------------------------------------------------
// Sources: tones and WAV files
// ---------------------------------------------------------------------------------------------

/// What a speaking peer sends. All sources are mono, 48 kHz, played in real time, one 20 ms
/// frame at a time.
#[derive(Clone, Debug)]
pub enum AudioSource {
    /// A sine tone at `hz` whose RMS level is `dbov` dB below full scale (a full-scale sine is
    /// -3.01 dBov, the loudest a tone can be).
    Tone {
        /// Frequency in Hz.
        hz: f32,
        /// RMS level in dB below full scale.
        dbov: f32,
    },
    /// 16-bit samples, played in a loop.
    Pcm(Arc<[i16]>),
    /// 16-bit samples, played once, then silence.
    Once(Arc<[i16]>),
    /// Samples pushed while speaking, through a [`LiveAudio`] handle (silence when none wait).
    Live(LiveAudio),
    /// Digital silence (audio level 127, no voice).
    Silence,
}

impl AudioSource {
    /// A sine tone; see [`AudioSource::Tone`].
    pub fn tone(hz: f32, dbov: f32) -> Self {
        AudioSource::Tone { hz, dbov }
    }

    /// Reads a WAV file to play in a loop: 16-bit PCM, mono, 48 kHz (other formats are
    /// refused). [`read_wav`] reads one to play [`AudioSource::Once`].
    pub fn wav_file(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(AudioSource::Pcm(read_wav(path)?.into()))
    }

    /// Parses a WAV file's bytes; see [`AudioSource::wav_file`].
    pub fn wav_bytes(bytes: &[u8]) -> io::Result<Self> {
        Ok(AudioSource::Pcm(parse_wav(bytes)?.into()))
    }
}

/// PCM pushed in while speaking: the microphone takes 960 samples (20 ms) per frame, and plays
/// silence when fewer are waiting. Clones share one buffer. Samples beyond its capacity are
/// refused, so a producer faster than real time cannot grow it without bound.
#[derive(Clone, Debug)]
pub struct LiveAudio {
    buffer: Arc<Mutex<VecDeque<i16>>>,
    capacity: usize,
}

impl LiveAudio {
    /// A buffer holding at most `capacity` of audio.
    pub fn new(capacity: Duration) -> Self {
        let capacity = (capacity.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize;
        LiveAudio {
            buffer: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(1 << 20)))),
            capacity,
        }
    }

    /// Queues samples (48 kHz mono) to be played after those already waiting; returns how many
    /// were taken (fewer than given when the buffer is full).
    pub fn push(&self, samples: &[i16]) -> usize {
        let mut buffer = self.lock();
        let taken = samples
            .len()
            .min(self.capacity - buffer.len().min(self.capacity));
        buffer.extend(&samples[..taken]);
        taken
    }

    /// Samples waiting to be played.
    pub fn queued(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<i16>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self, frame: &mut [i16]) {
        let mut buffer = self.lock();
        for sample in frame.iter_mut() {
            *sample = buffer.pop_front().unwrap_or(0);
        }
    }
}

/// Amplitude of a sine whose RMS is `dbov` below full scale, clipped to full scale.
fn tone_amplitude(dbov: f32) -> f64 {
    (32768.0 * 10f64.powf(f64::from(dbov) / 20.0) * std::f64::consts::SQRT_2).min(32767.0)
}

/// Sample `n` of a sine at `hz` with the given amplitude (phase 0 at n = 0).
fn tone_sample(hz: f32, amplitude: f64, n: u64) -> i16 {
    let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * (n as f64) / f64::from(SAMPLE_RATE);
    (amplitude * phase.sin()).round() as i16
}

/// `len` samples of a sine tone at `hz` and `dbov` (RMS), as [`AudioSource::Tone`] plays it.
pub fn tone_pcm(hz: f32, dbov: f32, len: usize) -> Vec<i16> {
    let amplitude = tone_amplitude(dbov);
    (0..len as u64)
        .map(|n| tone_sample(hz, amplitude, n))
        .collect()
}

/// Plays a source frame by frame; tones keep their phase across frames.
pub(crate) struct Player {
    source: AudioSource,
    position: u64,
}

impl Player {
    pub(crate) fn new(source: AudioSource) -> Self {
        Player {
            source,
            position: 0,
        }
    }

    pub(crate) fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        match &self.source {
            AudioSource::Tone { hz, dbov } => {
                let amplitude = tone_amplitude(*dbov);
                for (i, sample) in frame.iter_mut().enumerate() {
                    *sample = tone_sample(*hz, amplitude, self.position + i as u64);
                }
            }
            AudioSource::Pcm(samples) if !samples.is_empty() => {
                for (i, sample) in frame.iter_mut().enumerate() {
                    *sample = samples[((self.position + i as u64) % samples.len() as u64) as usize];
                }
            }
            AudioSource::Once(samples) => {
                let start = (self.position as usize).min(samples.len());
                let end = (start + FRAME_SAMPLES).min(samples.len());
                frame[..end - start].copy_from_slice(&samples[start..end]);
            }
            AudioSource::Live(live) => live.fill(&mut frame),
            AudioSource::Pcm(_) | AudioSource::Silence => {}
        }
        self.position += FRAME_SAMPLES as u64;
        frame
    }
}

/// A WAV file (16-bit PCM, mono, 48 kHz) holding `pcm`: to save what a slot received.
pub fn wav_bytes(pcm: &[i16]) -> Vec<u8> {
    let data_len = (pcm.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + pcm.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for sample in pcm {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

/// Reads a WAV file's samples: 16-bit PCM, mono, 48 kHz (other formats are refused).
pub fn read_wav(path: impl AsRef<Path>) -> io::Result<Vec<i16>> {
    parse_wav(&std::fs::read(path)?)
}

/// Parses a WAV file's bytes; see [`read_wav`]. Chunks before `data` other than `fmt ` are
/// skipped.
pub fn parse_wav(bytes: &[u8]) -> io::Result<Vec<i16>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("WAV: {what}"));
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(invalid("not a RIFF/WAVE file"));
    }
    let mut format_ok = false;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| invalid("truncated chunk"))?;
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(invalid("short fmt chunk"));
                }
                let field = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let (format, channels, bits) = (field(0), field(2), field(14));
                if format != 1 || channels != 1 || bits != 16 || rate != SAMPLE_RATE {
                    return Err(invalid(&format!(
                        "need 16-bit PCM mono 48 kHz, got format {format}, {channels} channels, \
                         {bits} bits, {rate} Hz"
                    )));
                }
                format_ok = true;
            }
            b"data" => {
                if !format_ok {
                    return Err(invalid("data before fmt"));
                }
                if body.is_empty() {
                    return Err(invalid("no samples"));
                }
                return Ok(body
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect());
            }
            _ => {}
        }
        at += 8 + len + (len & 1); // chunks are padded to even lengths
    }
    Err(invalid("no data chunk"))
}

// ---------------------------------------------------------------------------------------------
// Analysis: levels and tones
// ---------------------------------------------------------------------------------------------

/// Mean power of the samples (squared sample value, averaged); 0 for an empty slice.
pub fn mean_power(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64
}

/// RMS level in dBov (0 = full-scale square wave); -inf for silence.
pub fn dbov(pcm: &[i16]) -> f64 {
    10.0 * (mean_power(pcm) / (32768.0 * 32768.0)).log10()
}

/// The RFC 6464 audio level of a frame: `-dBov` of its RMS, rounded and clamped to 0..=127
/// (127 = silence), and whether it counts as voice (louder than [`VOICE_THRESHOLD_DBOV`]).
pub fn audio_level(pcm: &[i16]) -> (u8, bool) {
    let level = dbov(pcm);
    (
        (-level).round().clamp(0.0, 127.0) as u8,
        level > VOICE_THRESHOLD_DBOV,
    )
}

/// Power of the `hz` component of `window` (Goertzel), scaled like [`mean_power`]: a sine of
/// amplitude A at exactly `hz` gives about A²/2, the same as its mean power.
pub fn goertzel_power(window: &[i16], hz: f32) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    let omega = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in window {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let magnitude_squared = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * magnitude_squared / (window.len() as f64).powi(2)
}

/// The share of the window's power at `hz` (0..≈1), or 0 for a window quieter than -60 dBov.
fn tone_share(window: &[i16], hz: f32) -> f64 {
    let total = mean_power(window);
    if dbov(window) < SILENCE_DBOV || total == 0.0 {
        return 0.0;
    }
    goertzel_power(window, hz) / total
}

/// Whether a tone at `hz` dominates `window`: it carries at least 60% of the power of a window
/// louder than -60 dBov. Use windows of [`WINDOW_SAMPLES`] (100 ms: 10 Hz resolution).
pub fn tone_present(window: &[i16], hz: f32) -> bool {
    tone_share(window, hz) >= TONE_SHARE
}

/// Which of `candidates` is the tone in `window`, if any: None for silence, noise, or a mix in
/// which no single candidate carries 60% of the power. Candidates should be at least two
/// resolution steps apart (20 Hz for a 100 ms window).
pub fn dominant_tone(window: &[i16], candidates: &[f32]) -> Option<f32> {
    candidates
        .iter()
        .map(|&hz| (hz, tone_share(window, hz)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|&(_, share)| share >= TONE_SHARE)
        .map(|(hz, _)| hz)
}

/// The fraction of the consecutive 100 ms windows of `pcm` in which `hz` is present (see
/// [`tone_present`]); 0 when `pcm` is shorter than one window. A partial last window is ignored.
pub fn tone_fraction(pcm: &[i16], hz: f32) -> f64 {
    let windows = pcm.chunks_exact(WINDOW_SAMPLES);
    let total = windows.len();
    if total == 0 {
        return 0.0;
    }
    let with_tone = windows.filter(|w| tone_present(w, hz)).count();
    with_tone as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn tones_have_the_level_asked_for() {
        for dbov_asked in [-3.0f32, -10.0, -20.0, -40.0] {
            let pcm = tone_pcm(440.0, dbov_asked, WINDOW_SAMPLES);
            let measured = dbov(&pcm);
            assert!(
                (measured - f64::from(dbov_asked)).abs() < 0.1,
                "{dbov_asked} dBov tone measured {measured}"
            );
        }
        // Louder than a full-scale sine is clipped to full scale.
        assert!((dbov(&tone_pcm(440.0, 0.0, WINDOW_SAMPLES)) + 3.01).abs() < 0.05);
        // The player continues the phase across frames.
        let mut player = Player::new(AudioSource::tone(440.0, -20.0));
        let played: Vec<i16> = (0..5).flat_map(|_| player.next_frame()).collect();
        assert_eq!(played, tone_pcm(440.0, -20.0, 5 * FRAME_SAMPLES));
    }

    #[test]
    fn audio_level_follows_rfc_6464() {
        assert_eq!(audio_level(&[i16::MAX; FRAME_SAMPLES]), (0, true));
        assert_eq!(audio_level(&[0; FRAME_SAMPLES]), (127, false));
        assert_eq!(audio_level(&[]), (127, false));
        assert_eq!(
            audio_level(&tone_pcm(440.0, -20.0, FRAME_SAMPLES)),
            (20, true)
        );
        assert_eq!(
            audio_level(&tone_pcm(440.0, -49.0, FRAME_SAMPLES)),
            (49, true)
        );
        assert_eq!(
            audio_level(&tone_pcm(440.0, -55.0, FRAME_SAMPLES)),
            (55, false)
        );
        // 1 LSB of noise is about -90 dBov: still within range.
        assert_eq!(audio_level(&[1; FRAME_SAMPLES]).0, 90);
    }

    #[test]
    fn goertzel_measures_the_power_of_a_tone() {
        let pcm = tone_pcm(440.0, -20.0, WINDOW_SAMPLES);
        let total = mean_power(&pcm);
        let at_440 = goertzel_power(&pcm, 440.0);
        assert!((at_440 / total - 1.0).abs() < 0.01, "{at_440} vs {total}");
        assert!(goertzel_power(&pcm, 880.0) / total < 0.001);
        assert!(goertzel_power(&pcm, 550.0) / total < 0.01);
        // A frequency between bins (443 Hz) is measured at its own frequency.
        let off_bin = tone_pcm(443.0, -20.0, WINDOW_SAMPLES);
        assert!(goertzel_power(&off_bin, 443.0) / mean_power(&off_bin) > 0.99);
        assert_eq!(goertzel_power(&[], 440.0), 0.0);
    }

    #[test]
    fn dominant_tone_picks_a_candidate_or_none() {
        let candidates = [440.0, 550.0, 660.0, 880.0];
        for hz in candidates {
            let pcm = tone_pcm(hz, -30.0, WINDOW_SAMPLES);
            assert_eq!(dominant_tone(&pcm, &candidates), Some(hz));
        }
        // Silence, a tone too quiet to count, and a tone that is not a candidate.
        assert_eq!(dominant_tone(&[0; WINDOW_SAMPLES], &candidates), None);
        assert_eq!(
            dominant_tone(&tone_pcm(440.0, -65.0, WINDOW_SAMPLES), &candidates),
            None
        );
        assert_eq!(
            dominant_tone(&tone_pcm(1000.0, -20.0, WINDOW_SAMPLES), &candidates),
            None
        );
        // Noise has no tone.
        let mut rng = StdRng::seed_from_u64(7);
        let noise: Vec<i16> = (0..WINDOW_SAMPLES)
            .map(|_| rng.random_range(-3000..3000))
            .collect();
        assert_eq!(dominant_tone(&noise, &candidates), None);
        // An even mix of two candidates has no dominant one; a clearly louder one wins.
        let mix = |louder: f32, quieter_db: f32| -> Vec<i16> {
            tone_pcm(louder, -20.0, WINDOW_SAMPLES)
                .iter()
                .zip(tone_pcm(880.0, quieter_db, WINDOW_SAMPLES))
                .map(|(a, b)| a + b)
                .collect()
        };
        assert_eq!(dominant_tone(&mix(440.0, -20.0), &candidates), None);
        assert_eq!(dominant_tone(&mix(440.0, -30.0), &candidates), Some(440.0));
    }

    #[test]
    fn tone_fraction_counts_windows() {
        let mut pcm = tone_pcm(440.0, -20.0, 3 * WINDOW_SAMPLES);
        pcm.extend(vec![0; WINDOW_SAMPLES]);
        pcm.extend(tone_pcm(880.0, -20.0, WINDOW_SAMPLES + 100));
        assert_eq!(tone_fraction(&pcm, 440.0), 0.6);
        assert_eq!(tone_fraction(&pcm, 880.0), 0.2);
        assert_eq!(tone_fraction(&pcm[..WINDOW_SAMPLES - 1], 440.0), 0.0);
    }

    #[test]
    fn wav_round_trip_and_refusals() {
        let pcm = tone_pcm(440.0, -20.0, 1000);
        let AudioSource::Pcm(parsed) = AudioSource::wav_bytes(&wav_bytes(&pcm)).unwrap() else {
            panic!("a WAV file gives PCM");
        };
        assert_eq!(&parsed[..], &pcm[..]);
        let mut player = Player::new(AudioSource::Pcm(parsed));
        let looped: Vec<i16> = (0..2).flat_map(|_| player.next_frame()).collect();
        assert_eq!(looped[1000..1010], pcm[..10], "PCM sources loop");

        let mut stereo = wav_bytes(&pcm);
        stereo[22] = 2;
        let error = AudioSource::wav_bytes(&stereo).unwrap_err().to_string();
        assert!(error.contains("2 channels"), "{error}");
        let mut slow = wav_bytes(&pcm);
        slow[24..28].copy_from_slice(&44_100u32.to_le_bytes());
        assert!(AudioSource::wav_bytes(&slow).is_err());
        assert!(AudioSource::wav_bytes(b"RIFF\0\0\0\0WAVE").is_err());
        assert!(AudioSource::wav_bytes(&wav_bytes(&[])).is_err());
    }

    #[test]
    fn once_plays_its_samples_then_silence_and_live_audio_is_bounded() {
        let pcm = tone_pcm(440.0, -20.0, FRAME_SAMPLES + 100);
        let mut player = Player::new(AudioSource::Once(pcm.clone().into()));
        let played: Vec<i16> = (0..3).flat_map(|_| player.next_frame()).collect();
        assert_eq!(played[..pcm.len()], pcm[..]);
        assert!(played[pcm.len()..].iter().all(|&s| s == 0));

        let live = LiveAudio::new(Duration::from_millis(30));
        let long = tone_pcm(440.0, -20.0, 2000);
        assert_eq!(live.push(&long), 1440, "30 ms at 48 kHz");
        assert_eq!(live.push(&long), 0, "full");
        let mut player = Player::new(AudioSource::Live(live.clone()));
        assert_eq!(player.next_frame()[..], long[..FRAME_SAMPLES]);
        let second = player.next_frame();
        assert_eq!(second[..480], long[FRAME_SAMPLES..1440]);
        assert!(
            second[480..].iter().all(|&s| s == 0),
            "silence when nothing waits"
        );
        assert_eq!(live.queued(), 0);
    }
}
