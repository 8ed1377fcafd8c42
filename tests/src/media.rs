//! A media test client: a `webrtc` peer connection that takes Stoa's audio slots, speaks a tone
//! or a WAV file as Opus, and records and decodes what every slot receives. Pure analysis
//! helpers (Goertzel tone detection, RFC 6464 levels) make the assertions.
//!
//! The library calls and their traps are in `docs/media-notes.md`. In short: one loopback host
//! candidate and no STUN, Opus PT 111 plus the audio-level extension and nothing else, and the
//! client is always the offerer (the server is ICE-lite and learns our address from our checks,
//! so no trickle is sent).
//!
//! ```ignore
//! // A speaker and a listener, each with its own signaling socket (`SignalClient::join`).
//! let slots = media_slots(&ann_signal.welcome);
//! let tone = AudioSource::tone(440.0, -20.0);
//! let ann = MediaPeer::new(MediaConfig::speaker("ann", slots, tone)).await?;
//! ann.negotiate(&mut ann_signal).await?;
//! let bob = MediaPeer::new(MediaConfig::listener("bob", slots)).await?;
//! bob.negotiate(&mut bob_signal).await?;
//! bob.wait_connected(WAIT).await;
//! bob.wait_for_tone(0, 440.0, WAIT).await;
//! assert!(bob.report().slots[0].is_continuous());
//! //! ```

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rtc::media::Sample;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCPeerConnectionState, RTCSessionDescription, Registry,
    StatsSelector, configure_rtcp_reports,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use crate::signal::SignalClient;

/// Opus clock and the rate we encode and decode at.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz (one RTP packet).
pub const FRAME_SAMPLES: usize = 960;
/// Duration of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
/// Samples in one analysis window (100 ms).
pub const WINDOW_SAMPLES: usize = 4_800;
/// The Opus payload type Stoa negotiates.
pub const OPUS_PT: u8 = 111;
/// The Opus fmtp line Stoa negotiates.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
/// RFC 6464 client-to-mixer audio level header extension.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Frames louder than this (dBov) are flagged as voice in the audio-level extension.
pub const VOICE_THRESHOLD_DBOV: f64 = -50.0;

/// Windows quieter than this (dBov) carry no tone.
const SILENCE_DBOV: f64 = -60.0;
/// Share of a window's power a frequency must carry to count as present. Above one half, so at
/// most one frequency can be present in a window (a 50/50 mix of two tones has none).
const TONE_SHARE: f64 = 0.6;
/// Longer gaps are not concealed: the decoder just starts again at the next packet.
const MAX_CONCEALED_FRAMES: u16 = 10;
/// A packet this far behind the last decoded one starts a new stream instead of being dropped
/// as late (a sender that restarted its numbering).
const RESYNC_DISTANCE: i16 = 1_000;
/// Largest decoded frame Opus can return (120 ms).
const MAX_FRAME_SAMPLES: usize = 5_760;
/// How often waits look at the state again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Loss the encoder is told to expect, so that it puts in-band FEC into its packets.
const ENCODER_EXPECTED_LOSS_PERCENT: i32 = 10;

// ---------------------------------------------------------------------------------------------
// Sources: tones and WAV files
// ---------------------------------------------------------------------------------------------

/// What a speaking peer sends. All sources are mono, 48 kHz.
#[derive(Clone, Debug)]
pub enum AudioSource {
    /// A sine tone at `hz` whose RMS level is `dbov` dB below full scale (a full-scale sine is
    /// -3.01 dBov, the loudest a tone can be).
    Tone { hz: f32, dbov: f32 },
    /// 16-bit samples, played in a loop.
    Pcm(Arc<[i16]>),
    /// Digital silence (audio level 127, no voice).
    Silence,
}

impl AudioSource {
    /// A sine tone; see [`AudioSource::Tone`].
    pub fn tone(hz: f32, dbov: f32) -> Self {
        AudioSource::Tone { hz, dbov }
    }

    /// Reads a WAV file: 16-bit PCM, mono, 48 kHz (other formats are refused).
    pub fn wav_file(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::wav_bytes(&std::fs::read(path)?)
    }

    /// Parses a WAV file's bytes; see [`AudioSource::wav_file`].
    pub fn wav_bytes(bytes: &[u8]) -> io::Result<Self> {
        Ok(AudioSource::Pcm(parse_wav(bytes)?.into()))
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
struct Player {
    source: AudioSource,
    position: u64,
}

impl Player {
    fn new(source: AudioSource) -> Self {
        Player {
            source,
            position: 0,
        }
    }

    fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
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

fn parse_wav(bytes: &[u8]) -> io::Result<Vec<i16>> {
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

// ---------------------------------------------------------------------------------------------
// Receive side: sequence bookkeeping and decoding with concealment
// ---------------------------------------------------------------------------------------------

/// What a slot's RTP sequence numbers looked like, in arrival order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Arrivals whose number was not the previous arrival's + 1 (mod 2^16).
    pub breaks: u64,
    /// Numbers skipped by forward jumps (a late packet may still fill one in).
    pub missing: u64,
    /// Arrivals of a number seen among the last 256 arrivals.
    pub duplicates: u64,
    /// Arrivals behind the highest number seen that were not duplicates.
    pub reordered: u64,
    /// The highest number seen (mod 2^16 order).
    pub highest: Option<u16>,
}

#[derive(Default)]
struct SeqTracker {
    stats: SeqStats,
    previous: Option<u16>,
    recent: VecDeque<u16>,
}

impl SeqTracker {
    const RECENT: usize = 256;

    fn record(&mut self, seq: u16) {
        let stats = &mut self.stats;
        match (self.previous, stats.highest) {
            (Some(previous), Some(highest)) => {
                if seq != previous.wrapping_add(1) {
                    stats.breaks += 1;
                }
                if self.recent.contains(&seq) {
                    stats.duplicates += 1;
                } else {
                    let ahead = seq.wrapping_sub(highest) as i16;
                    if ahead > 0 {
                        stats.missing += (ahead - 1) as u64;
                        stats.highest = Some(seq);
                    } else {
                        stats.reordered += 1;
                    }
                }
            }
            _ => stats.highest = Some(seq),
        }
        self.previous = Some(seq);
        if self.recent.len() == Self::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(seq);
    }
}

/// How a decoded frame came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameOrigin {
    /// Decoded from a packet that arrived.
    Packet,
    /// A missing packet rebuilt from the next packet's in-band FEC (libopus falls back to
    /// concealment when that packet carries no FEC data).
    Fec,
    /// A missing packet concealed by libopus (packet loss concealment).
    Plc,
}

/// The frames one packet produced.
#[derive(Default)]
struct Decoded {
    frames: Vec<(FrameOrigin, Vec<i16>)>,
    errors: u64,
    /// A late or duplicate packet that was not decoded.
    skipped: bool,
}

/// One Opus stream's decoder: decodes packets in sequence order and conceals the ones missing
/// before each (PLC for all but the last, in-band FEC of the arriving packet for the last),
/// assuming 20 ms per packet.
struct OpusReceiver {
    decoder: opus::Decoder,
    last_seq: Option<u16>,
    buffer: Vec<i16>,
}

impl OpusReceiver {
    fn new() -> Self {
        OpusReceiver {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
                .expect("an Opus decoder for 48 kHz mono"),
            last_seq: None,
            buffer: vec![0; MAX_FRAME_SAMPLES],
        }
    }

    /// Forget the sequence position: the next packet starts a new stream (a new SSRC).
    fn resync(&mut self) {
        self.last_seq = None;
    }

    fn receive(&mut self, seq: u16, payload: &[u8]) -> Decoded {
        let mut out = Decoded::default();
        let missing = match self.last_seq {
            None => 0,
            Some(last) => {
                let ahead = seq.wrapping_sub(last) as i16;
                if ahead <= 0 && ahead > -RESYNC_DISTANCE {
                    out.skipped = true;
                    return out;
                }
                let missing = ahead.saturating_sub(1).max(0) as u16;
                if missing > MAX_CONCEALED_FRAMES {
                    0
                } else {
                    missing
                }
            }
        };
        self.last_seq = Some(seq);
        for i in 0..missing {
            let frame = &mut self.buffer[..FRAME_SAMPLES];
            let (origin, result) = if i + 1 == missing {
                (FrameOrigin::Fec, self.decoder.decode(payload, frame, true))
            } else {
                (FrameOrigin::Plc, self.decoder.decode(&[], frame, false))
            };
            match result {
                Ok(n) => out.frames.push((origin, frame[..n].to_vec())),
                Err(_) => out.errors += 1,
            }
        }
        match self.decoder.decode(payload, &mut self.buffer, false) {
            Ok(n) => out
                .frames
                .push((FrameOrigin::Packet, self.buffer[..n].to_vec())),
            Err(_) => out.errors += 1,
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// SDP helpers
// ---------------------------------------------------------------------------------------------

/// The m-sections of an SDP, each as its lines (the `m=` line first).
fn media_sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(section) = sections.last_mut() {
            section.push(line);
        }
    }
    sections
}

/// The direction attribute of an m-section (sendrecv when absent).
fn section_direction<'a>(section: &[&'a str]) -> &'a str {
    section
        .iter()
        .find_map(|line| {
            ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| line.strip_prefix("a=") == Some(*d))
        })
        .unwrap_or("sendrecv")
}

/// Whether an answer accepts the offerer's audio on the first m-line (the microphone's): the
/// answerer's direction there is `recvonly` or `sendrecv`.
pub fn answer_accepts_audio(answer_sdp: &str) -> bool {
    media_sections(answer_sdp)
        .first()
        .is_some_and(|section| matches!(section_direction(section), "recvonly" | "sendrecv"))
}

/// Checks an offer against what Stoa expects: exactly `slots` audio m-lines and nothing else,
/// Opus PT 111 with our fmtp and the audio-level extension on each, the first `sendrecv` when
/// the microphone is attached, all others `recvonly`.
fn check_offer(sdp: &str, slots: usize, with_microphone: bool) -> Result<(), String> {
    let sections = media_sections(sdp);
    if sections.len() != slots {
        return Err(format!("{} m-lines, expected {slots}", sections.len()));
    }
    for (index, section) in sections.iter().enumerate() {
        let has = |prefix: &str, needle: &str| {
            section
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle))
        };
        if !section[0].starts_with("m=audio ") {
            return Err(format!("m-line {index} is not audio: {}", section[0]));
        }
        if !has("a=rtpmap:111 ", "opus/48000/2") {
            return Err(format!("m-line {index} lacks opus/48000/2 at PT 111"));
        }
        if !(has("a=fmtp:111 ", "minptime=10") && has("a=fmtp:111 ", "useinbandfec=1")) {
            return Err(format!("m-line {index} lacks the Opus fmtp {OPUS_FMTP}"));
        }
        if !has("a=extmap:", AUDIO_LEVEL_URI) {
            return Err(format!("m-line {index} lacks the audio-level extension"));
        }
        let expected = if index == 0 && with_microphone {
            "sendrecv"
        } else {
            "recvonly"
        };
        let direction = section_direction(section);
        if direction != expected {
            return Err(format!(
                "m-line {index} is {direction}, expected {expected}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors and the offer channel
// ---------------------------------------------------------------------------------------------

/// Why negotiation or a media call failed.
#[derive(Debug)]
pub enum MediaError {
    /// The server answered the offer with `{"type":"error"}`.
    Refused { code: String, message: String },
    /// The server answered with something that is neither `media_answer` nor `error`.
    Protocol(String),
    /// The `webrtc` library failed.
    WebRtc(webrtc::error::Error),
}

impl MediaError {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            MediaError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for MediaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaError::Refused { code, message } => write!(f, "refused: {code}: {message}"),
            MediaError::Protocol(what) => write!(f, "protocol: {what}"),
            MediaError::WebRtc(error) => write!(f, "webrtc: {error}"),
        }
    }
}

impl std::error::Error for MediaError {}

impl From<webrtc::error::Error> for MediaError {
    fn from(error: webrtc::error::Error) -> Self {
        MediaError::WebRtc(error)
    }
}

/// Where offers go and answers come from: the signaling socket in end-to-end tests, or an
/// in-process answerer in this module's own tests.
#[async_trait::async_trait]
pub trait OfferChannel: Send {
    /// Sends an offer SDP and returns the answer SDP.
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, MediaError>;
}

#[async_trait::async_trait]
impl OfferChannel for SignalClient {
    /// `media_offer` → `media_answer` (or `error`, returned as [`MediaError::Refused`]).
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, MediaError> {
        let reply = self
            .request(json!({ "type": "media_offer", "sdp": offer_sdp }))
            .await;
        match reply["type"].as_str() {
            Some("media_answer") => reply["sdp"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| MediaError::Protocol(format!("media_answer without sdp: {reply}"))),
            Some("error") => Err(MediaError::Refused {
                code: reply["code"].as_str().unwrap_or_default().to_owned(),
                message: reply["message"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => Err(MediaError::Protocol(format!(
                "unexpected reply to media_offer: {reply}"
            ))),
        }
    }
}

/// The number of audio slots from a `welcome` message (`media.slots`).
#[track_caller]
pub fn media_slots(welcome: &Value) -> usize {
    welcome["media"]["slots"]
        .as_u64()
        .unwrap_or_else(|| panic!("welcome without media.slots: {welcome}")) as usize
}

// ---------------------------------------------------------------------------------------------
// Configuration and reports
// ---------------------------------------------------------------------------------------------

/// How to build a [`MediaPeer`].
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Shown in log lines and used in track ids.
    pub name: String,
    /// Audio slots to offer (from `welcome.media.slots`).
    pub slots: usize,
    /// A microphone in the first offer (a speaker from the start), playing this source.
    pub microphone: Option<AudioSource>,
    /// Send even when the answer refuses our audio (a listener that sends anyway).
    pub rogue: bool,
    /// Fraction of incoming RTP packets dropped at random before decoding (0 ≤ x < 1).
    pub receive_loss: f64,
    /// Seed of the loss generator (each slot derives its own stream from it).
    pub loss_seed: u64,
    /// How much decoded audio (and packet log) each slot keeps.
    pub keep_audio: Duration,
    /// The local address the connection gathers its one host candidate on.
    pub local_ip: std::net::IpAddr,
    /// Gather no UDP candidate, only an active ICE-TCP one: a client on a network that blocks
    /// UDP, which reaches the server through its passive TCP candidate.
    pub tcp_only: bool,
}

impl MediaConfig {
    /// Receives on every slot and sends nothing.
    pub fn listener(name: &str, slots: usize) -> Self {
        MediaConfig {
            name: name.to_owned(),
            slots,
            microphone: None,
            rogue: false,
            receive_loss: 0.0,
            loss_seed: 1,
            keep_audio: Duration::from_secs(30),
            local_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            tcp_only: false,
        }
    }

    /// Offers its microphone (first m-line sendrecv) from the first offer on.
    pub fn speaker(name: &str, slots: usize, source: AudioSource) -> Self {
        MediaConfig {
            microphone: Some(source),
            ..Self::listener(name, slots)
        }
    }

    /// Offers a microphone like a speaker and sends RTP whatever the answer says: for checking
    /// that the server drops media from participants who may not speak.
    pub fn rogue(name: &str, slots: usize, source: AudioSource) -> Self {
        MediaConfig {
            rogue: true,
            ..Self::speaker(name, slots, source)
        }
    }

    /// Connects over ICE-TCP only (see [`MediaConfig::tcp_only`]).
    pub fn over_tcp_only(mut self) -> Self {
        self.tcp_only = true;
        self
    }

    /// Gathers on `ip` instead of 127.0.0.1 (e.g. `::1` to test IPv6).
    pub fn on(mut self, ip: std::net::IpAddr) -> Self {
        self.local_ip = ip;
        self
    }

    /// Drops `fraction` of incoming RTP packets before decoding, from a generator seeded with `seed`.
    pub fn with_receive_loss(mut self, fraction: f64, seed: u64) -> Self {
        self.receive_loss = fraction;
        self.loss_seed = seed;
        self
    }
}

/// What one slot received. Packets count every arrival, including those dropped by
/// [`MediaConfig::receive_loss`]; the frame counts are what the decoder made of the rest.
#[derive(Clone, Debug, Default)]
pub struct SlotReport {
    /// Remote tracks that opened on this slot (1 for one continuous stream).
    pub tracks: u64,
    /// RTP packets that arrived.
    pub packets: u64,
    /// Of those, dropped on purpose by the loss injection.
    pub injected_losses: u64,
    /// SSRCs seen, in order of appearance.
    pub ssrcs: Vec<u32>,
    /// Sequence number bookkeeping over all arrivals.
    pub sequence: SeqStats,
    pub first_arrival: Option<Instant>,
    pub last_arrival: Option<Instant>,
    /// Longest time between two arrivals.
    pub max_interarrival: Duration,
    /// The last RFC 6464 audio level received: (level in -dBov, voice).
    pub audio_level: Option<(u8, bool)>,
    /// Frames decoded from packets that arrived.
    pub decoded: u64,
    /// Frames rebuilt from FEC.
    pub fec: u64,
    /// Frames concealed (PLC).
    pub plc: u64,
    pub decode_errors: u64,
    /// Late or duplicate packets the decoder skipped.
    pub skipped: u64,
}

impl SlotReport {
    /// One SSRC, and every packet numbered one more than the one before it.
    pub fn is_continuous(&self) -> bool {
        self.packets > 0 && self.ssrcs.len() == 1 && self.sequence.breaks == 0
    }
}

/// What the microphone did.
#[derive(Clone, Debug, Default)]
pub struct SendReport {
    /// A microphone track is attached.
    pub speaking: bool,
    /// SSRC of the current microphone track.
    pub ssrc: Option<u32>,
    /// The last answer accepted our audio on the first m-line.
    pub answer_accepts_audio: bool,
    /// Frames handed to the connection.
    pub frames_sent: u64,
    /// Frames not sent because the answer refused our audio (never for a rogue).
    pub frames_withheld: u64,
    pub write_errors: u64,
    pub last_error: Option<String>,
    /// The audio level sent with the last frame.
    pub last_level: Option<(u8, bool)>,
    pub first_sent_at: Option<Instant>,
}

/// One RTP packet as it arrived on a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    pub at: Instant,
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    /// The RFC 6464 audio level, if the packet carried one: (level in -dBov, voice).
    pub audio_level: Option<(u8, bool)>,
    /// Dropped by the loss injection (not decoded).
    pub dropped: bool,
}

/// A snapshot of everything the peer observed.
#[derive(Clone, Debug)]
pub struct MediaReport {
    pub state: RTCPeerConnectionState,
    /// Every connection state change, with its time.
    pub state_log: Vec<(Instant, RTCPeerConnectionState)>,
    pub send: SendReport,
    /// Indexed by slot (m-line).
    pub slots: Vec<SlotReport>,
    /// Remote tracks that could not be mapped to a slot (should stay 0).
    pub unmapped_tracks: u64,
}

// ---------------------------------------------------------------------------------------------
// Shared state between the peer, its event handler and its tasks
// ---------------------------------------------------------------------------------------------

struct DecodedFrame {
    at: Instant,
    pcm: Vec<i16>,
}

#[derive(Default)]
struct SlotState {
    report: SlotReport,
    sequence: SeqTracker,
    packets: VecDeque<PacketInfo>,
    audio: VecDeque<DecodedFrame>,
}

/// How many packets or frames a slot keeps for `keep` (one per 20 ms), whatever the clock does.
fn history_len(keep: Duration) -> usize {
    (keep.as_millis() / FRAME_DURATION.as_millis()) as usize + 1
}

impl SlotState {
    fn record_packet(&mut self, packet: PacketInfo, keep: Duration) {
        let report = &mut self.report;
        report.packets += 1;
        if !report.ssrcs.contains(&packet.ssrc) {
            report.ssrcs.push(packet.ssrc);
        }
        match report.last_arrival {
            Some(last) => {
                report.max_interarrival = report.max_interarrival.max(packet.at - last);
            }
            None => report.first_arrival = Some(packet.at),
        }
        report.last_arrival = Some(packet.at);
        self.sequence.record(packet.seq);
        report.sequence = self.sequence.stats;
        report.injected_losses += u64::from(packet.dropped);
        if packet.audio_level.is_some() {
            report.audio_level = packet.audio_level;
        }
        self.packets.push_back(packet);
        while self.packets.len() > history_len(keep)
            || self
                .packets
                .front()
                .is_some_and(|p| packet.at - p.at > keep)
        {
            self.packets.pop_front();
        }
    }

    fn record_decoded(&mut self, at: Instant, decoded: Decoded, keep: Duration) {
        let report = &mut self.report;
        report.decode_errors += decoded.errors;
        report.skipped += u64::from(decoded.skipped);
        for (origin, pcm) in decoded.frames {
            match origin {
                FrameOrigin::Packet => report.decoded += 1,
                FrameOrigin::Fec => report.fec += 1,
                FrameOrigin::Plc => report.plc += 1,
            }
            self.audio.push_back(DecodedFrame { at, pcm });
        }
        while self.audio.len() > history_len(keep)
            || self.audio.front().is_some_and(|f| at - f.at > keep)
        {
            self.audio.pop_front();
        }
    }

    /// The decoded samples of frames that arrived in `since..until`, in order.
    fn audio_between(&self, since: Instant, until: Instant) -> Vec<i16> {
        self.audio
            .iter()
            .filter(|f| f.at >= since && f.at < until)
            .flat_map(|f| f.pcm.iter().copied())
            .collect()
    }

    /// The last 100 ms decoded, and the arrival time of its last frame.
    fn latest_window(&self) -> Option<(Vec<i16>, Instant)> {
        let mut window = Vec::with_capacity(WINDOW_SAMPLES);
        for frame in self.audio.iter().rev() {
            if window.len() >= WINDOW_SAMPLES {
                break;
            }
            window.splice(0..0, frame.pcm.iter().copied());
        }
        let start = window.len().checked_sub(WINDOW_SAMPLES)?;
        let at = self.audio.back()?.at;
        Some((window.split_off(start), at))
    }
}

#[derive(Default)]
struct Inner {
    state_log: Vec<(Instant, RTCPeerConnectionState)>,
    send: SendReport,
    slots: Vec<SlotState>,
    unmapped_tracks: u64,
}

struct Shared {
    config: MediaConfig,
    /// Whether the microphone task may send (the answer accepted it, or we are a rogue).
    send_permitted: AtomicBool,
    inner: Mutex<Inner>,
}

impl Shared {
    /// The state; a panic elsewhere while holding the lock does not hide it from reports.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection's event handler: records state changes and starts a reader per remote track.
struct PeerEvents {
    shared: Arc<Shared>,
    state: watch::Sender<RTCPeerConnectionState>,
    /// Set right after the connection is built; weak, since the connection owns this handler.
    peer_connection: Arc<OnceLock<Weak<dyn PeerConnection>>>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerEvents {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.shared.lock().state_log.push((Instant::now(), state));
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // This runs on the connection's driver task: do the work in a task of its own.
        let reader = tokio::spawn(read_track(
            track,
            self.shared.clone(),
            self.peer_connection.get().cloned(),
        ));
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reader);
    }
}

/// The slot (m-line index, from the mid: we are the offerer and mids are "0", "1", …) of a
/// remote track, and the audio-level extension id negotiated for it.
async fn slot_of(
    peer_connection: &dyn PeerConnection,
    track: &Arc<dyn TrackRemote>,
) -> Option<(usize, Option<u8>)> {
    for transceiver in peer_connection.get_transceivers().await {
        let Ok(Some(receiver)) = transceiver.receiver().await else {
            continue;
        };
        if !Arc::ptr_eq(receiver.track(), track) {
            continue;
        }
        let slot = transceiver.mid().await.ok()??.parse().ok()?;
        let level_id = receiver.get_parameters().await.ok().and_then(|p| {
            p.rtp_parameters
                .header_extensions
                .iter()
                .find(|e| e.uri == AUDIO_LEVEL_URI)
                .and_then(|e| u8::try_from(e.id).ok())
        });
        return Some((slot, level_id));
    }
    None
}

/// Reads one remote track until it ends: bookkeeping, loss injection, decoding.
async fn read_track(
    track: Arc<dyn TrackRemote>,
    shared: Arc<Shared>,
    peer_connection: Option<Weak<dyn PeerConnection>>,
) {
    let found = match peer_connection.and_then(|weak| weak.upgrade()) {
        Some(pc) => slot_of(pc.as_ref(), &track).await,
        None => None,
    };
    let (slot, level_id) = match found {
        Some((slot, level_id)) if slot < shared.config.slots => (slot, level_id),
        _ => {
            shared.lock().unmapped_tracks += 1;
            eprintln!(
                "[{}] a remote track matches no slot; ignored",
                shared.config.name
            );
            return;
        }
    };
    shared.lock().slots[slot].report.tracks += 1;

    let loss = shared.config.receive_loss;
    let slot_seed = (slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = StdRng::seed_from_u64(shared.config.loss_seed ^ slot_seed);
    let mut receiver = OpusReceiver::new();
    let mut current_ssrc = None;
    while let Some(event) = track.poll().await {
        let packet = match event {
            TrackRemoteEvent::OnRtpPacket(packet) => packet,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        let info = PacketInfo {
            at: Instant::now(),
            ssrc: packet.header.ssrc,
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            audio_level: level_id
                .and_then(|id| packet.header.get_extension(id))
                .and_then(|payload| payload.first().copied())
                .map(|byte| (byte & 0x7f, byte & 0x80 != 0)),
            dropped: loss > 0.0 && rng.random::<f64>() < loss,
        };
        if current_ssrc
            .replace(info.ssrc)
            .is_some_and(|old| old != info.ssrc)
        {
            receiver.resync();
        }
        let decoded = (!info.dropped).then(|| receiver.receive(info.seq, &packet.payload));

        let keep = shared.config.keep_audio;
        let mut inner = shared.lock();
        let state = &mut inner.slots[slot];
        state.record_packet(info, keep);
        if let Some(decoded) = decoded {
            state.record_decoded(info.at, decoded, keep);
        }
    }
}

/// The microphone: plays its source into an Opus track every 20 ms once connected.
async fn speak(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    player: Arc<Mutex<Player>>,
    shared: Arc<Shared>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
) {
    // Writing before DTLS is done only earns "local_srtp_context is not set yet".
    if state
        .wait_for(|s| *s == RTCPeerConnectionState::Connected)
        .await
        .is_err()
    {
        return;
    }
    let mut encoder =
        opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
            .expect("an Opus encoder for 48 kHz mono");
    encoder
        .set_inband_fec(true)
        .and_then(|()| encoder.set_packet_loss_perc(ENCODER_EXPECTED_LOSS_PERCENT))
        .expect("Opus FEC settings");
    let mut encoded = vec![0u8; 1500];
    let mut tick = tokio::time::interval(FRAME_DURATION);
    loop {
        tick.tick().await;
        let pcm = player
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_frame();
        if !shared.send_permitted.load(Ordering::SeqCst) {
            shared.lock().send.frames_withheld += 1;
            continue;
        }
        let (level, voice) = audio_level(&pcm);
        let result = match encoder.encode(&pcm, &mut encoded) {
            Ok(len) => {
                let sample = Sample {
                    data: bytes::Bytes::copy_from_slice(&encoded[..len]),
                    timestamp: Instant::now(),
                    duration: FRAME_DURATION,
                    packet_timestamp: 0,
                    prev_dropped_packets: 0,
                    prev_padding_packets: 0,
                };
                track
                    .sample_writer(ssrc, OPUS_PT)
                    .with_audio_level(AudioLevelExtension { level, voice })
                    .write_sample(&sample)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("opus encode: {e}")),
        };
        let mut inner = shared.lock();
        let send = &mut inner.send;
        match result {
            Ok(()) => {
                send.frames_sent += 1;
                send.first_sent_at.get_or_insert_with(Instant::now);
                send.last_level = Some((level, voice));
            }
            Err(error) => {
                send.write_errors += 1;
                send.last_error = Some(error);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The peer
// ---------------------------------------------------------------------------------------------

fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: SAMPLE_RATE,
            channels: 2,
            sdp_fmtp_line: OPUS_FMTP.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
    }
}

/// Opus at PT 111 plus the audio-level extension, nothing else.
fn audio_media_engine() -> Result<MediaEngine, MediaError> {
    let mut engine = MediaEngine::default();
    engine.register_codec(opus_codec(), RtpCodecKind::Audio)?;
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(engine)
}

/// Receiver and sender reports only (no NACK, no TWCC: `register_default_interceptors` would
/// add those and lengthen the SDP).
fn report_registry() -> Registry {
    configure_rtcp_reports(Registry::new())
}

/// A loopback peer connection built like Stoa's clients (see the module docs).
async fn build_peer_connection(
    handler: Arc<dyn PeerConnectionEventHandler>,
    local_ip: std::net::IpAddr,
    tcp_only: bool,
) -> Result<Arc<dyn PeerConnection>, MediaError> {
    let local = std::net::SocketAddr::new(local_ip, 0).to_string();
    let builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build()) // no STUN/TURN servers
        .with_media_engine(audio_media_engine()?)
        .with_interceptor_registry(report_registry())
        .with_handler(handler);
    let builder = if tcp_only {
        builder
            .with_udp_addrs(Vec::<String>::new())
            .with_tcp_addrs(vec![local])
    } else {
        builder.with_udp_addrs(vec![local])
    };
    let pc = builder.build().await?;
    Ok(Arc::new(pc))
}

/// An attached microphone track.
struct Microphone {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    player: Arc<Mutex<Player>>,
    /// Started after the first successful negotiation with this track.
    task: Option<JoinHandle<()>>,
}

/// A test participant's media side: one peer connection with `slots` audio m-lines.
///
/// All methods take `&self`; state is behind locks that are never held across an await.
pub struct MediaPeer {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    state: watch::Receiver<RTCPeerConnectionState>,
    microphone: Mutex<Option<Microphone>>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl MediaPeer {
    /// Builds the connection (bound to 127.0.0.1, nothing sent yet) with `slots` receive-only
    /// audio transceivers, plus the microphone on the first one if the config has one.
    pub async fn new(config: MediaConfig) -> Result<Self, MediaError> {
        assert!(config.slots >= 1, "a media peer needs at least one slot");
        assert!(
            (0.0..1.0).contains(&config.receive_loss),
            "receive_loss must be in 0..1, got {}",
            config.receive_loss
        );
        let first_source = config.microphone.clone();
        let shared = Arc::new(Shared {
            send_permitted: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                slots: (0..config.slots).map(|_| SlotState::default()).collect(),
                ..Inner::default()
            }),
            config,
        });
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let peer_connection = Arc::new(OnceLock::new());
        let readers = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(PeerEvents {
            shared: shared.clone(),
            state: state_tx,
            peer_connection: peer_connection.clone(),
            readers: readers.clone(),
        });
        let pc =
            build_peer_connection(handler, shared.config.local_ip, shared.config.tcp_only).await?;
        let _ = peer_connection.set(Arc::downgrade(&pc));
        for _ in 0..shared.config.slots {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await?;
        }
        let peer = MediaPeer {
            pc,
            shared,
            state,
            microphone: Mutex::new(None),
            readers,
        };
        if let Some(source) = first_source {
            peer.attach_microphone(source).await?;
        }
        Ok(peer)
    }

    /// This peer's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Offers (exactly `slots` audio m-lines; the first sendrecv while the microphone is
    /// attached) and applies the answer. On a refusal the offer is rolled back and the server's
    /// code is in the error ([`MediaError::code`]). Starts the microphone once negotiated.
    /// Panics if the library built an offer of another shape (a bug in this client).
    pub async fn negotiate(&self, channel: &mut impl OfferChannel) -> Result<(), MediaError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        if let Err(problem) = check_offer(&offer.sdp, self.shared.config.slots, self.speaking()) {
            panic!(
                "[{}] the client built an offer Stoa does not expect ({problem}):\n{}",
                self.name(),
                offer.sdp
            );
        }
        let answer = match channel.exchange(offer.sdp).await {
            Ok(answer) => answer,
            Err(error) => {
                if let Ok(rollback) = RTCSessionDescription::rollback(None) {
                    let _ = self.pc.set_local_description(rollback).await;
                }
                return Err(error);
            }
        };
        let accepts = answer_accepts_audio(&answer);
        // `webrtc` 0.21 dials a passive TCP candidate only when it is trickled, not when it
        // comes in the description: hand it the answer's TCP candidates again.
        let tcp_candidates: Vec<String> = if self.shared.config.tcp_only {
            answer
                .lines()
                .filter_map(|l| l.trim_end().strip_prefix("a="))
                .filter(|c| c.starts_with("candidate:") && c.contains(" tcp "))
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        for candidate in tcp_candidates {
            self.pc
                .add_ice_candidate(rtc::peer_connection::transport::RTCIceCandidateInit {
                    candidate,
                    sdp_mid: Some("0".to_owned()),
                    sdp_mline_index: Some(0),
                    ..Default::default()
                })
                .await?;
        }
        self.shared
            .send_permitted
            .store(accepts || self.shared.config.rogue, Ordering::SeqCst);
        self.shared.lock().send.answer_accepts_audio = accepts;
        self.start_microphone_task();
        Ok(())
    }

    /// Attaches a microphone playing `source` to the first transceiver and renegotiates. On
    /// failure the microphone is detached again.
    pub async fn start_speaking(
        &self,
        channel: &mut impl OfferChannel,
        source: AudioSource,
    ) -> Result<(), MediaError> {
        assert!(!self.speaking(), "[{}] is already speaking", self.name());
        self.attach_microphone(source).await?;
        if let Err(error) = self.negotiate(channel).await {
            self.detach_microphone().await?;
            return Err(error);
        }
        Ok(())
    }

    /// Removes the microphone and renegotiates (the first m-line goes back to recvonly).
    pub async fn stop_speaking(&self, channel: &mut impl OfferChannel) -> Result<(), MediaError> {
        assert!(self.speaking(), "[{}] is not speaking", self.name());
        self.detach_microphone().await?;
        self.negotiate(channel).await
    }

    /// Switches what the microphone plays, from the next frame on (no renegotiation).
    pub fn set_source(&self, source: AudioSource) {
        let microphone = self.microphone.lock().unwrap_or_else(|e| e.into_inner());
        let microphone = microphone
            .as_ref()
            .unwrap_or_else(|| panic!("[{}] set_source while not speaking", self.name()));
        *microphone.player.lock().unwrap_or_else(|e| e.into_inner()) = Player::new(source);
    }

    /// Whether a microphone is attached.
    pub fn speaking(&self) -> bool {
        self.microphone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits until the connection is `Connected`; panics on timeout, `Failed` or `Closed`.
    pub async fn wait_connected(&self, timeout: Duration) {
        let mut state = self.state.clone();
        let reached = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| *s);
        if reached != Some(RTCPeerConnectionState::Connected) {
            panic!(
                "[{}] not connected within {timeout:?} (reached {reached:?}); states: {:?}",
                self.name(),
                self.shared.lock().state_log
            );
        }
    }

    /// RTP packets that actually went out towards the transport (the library's outbound
    /// counters, after the interceptors): proof that a rogue really sent.
    pub async fn rtp_packets_sent(&self) -> u64 {
        self.pc
            .get_stats(Instant::now(), StatsSelector::None)
            .await
            .outbound_rtp_streams()
            .map(|stream| stream.sent_rtp_stream_stats.packets_sent)
            .sum()
    }

    /// A snapshot of what the peer observed so far.
    pub fn report(&self) -> MediaReport {
        let inner = self.shared.lock();
        MediaReport {
            state: *self.state.borrow(),
            state_log: inner.state_log.clone(),
            send: inner.send.clone(),
            slots: inner.slots.iter().map(|s| s.report.clone()).collect(),
            unmapped_tracks: inner.unmapped_tracks,
        }
    }

    /// Polls [`MediaPeer::report`] every 20 ms until `condition` holds and returns that report;
    /// panics after `timeout` with `what` and the last report.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&MediaReport) -> bool,
    ) -> MediaReport {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let report = self.report();
            if condition(&report) {
                return report;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "[{}] {what}: not within {timeout:?}; last report: {report:#?}",
                    self.name()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the last 100 ms decoded on `slot` carry a tone at `hz`; returns the arrival
    /// time of the packet that completed that window. Panics after `timeout`.
    pub async fn wait_for_tone(&self, slot: usize, hz: f32, timeout: Duration) -> Instant {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let latest = self.shared.lock().slots[slot].latest_window();
            if let Some((window, at)) = &latest
                && tone_present(window, hz)
            {
                return *at;
            }
            if tokio::time::Instant::now() >= deadline {
                let heard = latest.map(|(window, _)| (dbov(&window), goertzel_power(&window, hz)));
                panic!(
                    "[{}] no {hz} Hz tone on slot {slot} within {timeout:?}; last window \
                     (dBov, power at {hz} Hz): {heard:?}; slot: {:#?}",
                    self.name(),
                    self.report().slots[slot]
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The packets that arrived on `slot`, oldest first (at most [`MediaConfig::keep_audio`]
    /// back): arrival times, SSRCs, numbers, timestamps, audio levels.
    pub fn packets(&self, slot: usize) -> Vec<PacketInfo> {
        self.shared.lock().slots[slot]
            .packets
            .iter()
            .copied()
            .collect()
    }

    /// Decoded audio of `slot` from frames that arrived in `since..until` (at most
    /// [`MediaConfig::keep_audio`] back).
    pub fn decoded_audio(&self, slot: usize, since: Instant, until: Instant) -> Vec<i16> {
        self.shared.lock().slots[slot].audio_between(since, until)
    }

    /// The fraction of 100 ms windows of `slot`'s audio received in `since..until` in which a
    /// tone at `hz` is present (see [`tone_fraction`]).
    pub fn tone_fraction(&self, slot: usize, hz: f32, since: Instant, until: Instant) -> f64 {
        tone_fraction(&self.decoded_audio(slot, since, until), hz)
    }

    /// Stops the microphone and closes the connection. The server is not told (leave through
    /// signaling). Reports stay readable.
    pub async fn close(&self) {
        let microphone = self
            .microphone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = microphone.and_then(|m| m.task) {
            task.abort();
        }
        if let Err(error) = self.pc.close().await {
            eprintln!("[{}] close: {error}", self.name());
        }
        for reader in self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            reader.abort();
        }
    }

    /// Adds a microphone track with a fresh SSRC; `add_track` reuses the first transceiver
    /// without a sender, which is the first m-line (all are receive-only until then).
    async fn attach_microphone(&self, source: AudioSource) -> Result<(), MediaError> {
        let ssrc = rand::random::<u32>();
        let name = self.name();
        let track = MediaStreamTrack::new(
            format!("{name}-stream"),
            format!("{name}-mic-{ssrc:08x}"),
            format!("{name}-mic"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus_codec().rtp_codec,
                ..Default::default()
            }],
        );
        let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), track)?);
        let sender = self.pc.add_track(track.clone()).await?;
        *self.microphone.lock().unwrap_or_else(|e| e.into_inner()) = Some(Microphone {
            track,
            sender,
            ssrc,
            player: Arc::new(Mutex::new(Player::new(source))),
            task: None,
        });
        let mut inner = self.shared.lock();
        inner.send.speaking = true;
        inner.send.ssrc = Some(ssrc);
        Ok(())
    }

    async fn detach_microphone(&self) -> Result<(), MediaError> {
        let microphone = self
            .microphone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        {
            let mut inner = self.shared.lock();
            inner.send.speaking = false;
            inner.send.ssrc = None;
        }
        if let Some(microphone) = microphone {
            if let Some(task) = microphone.task {
                task.abort();
            }
            self.pc.remove_track(&microphone.sender).await?;
        }
        Ok(())
    }

    fn start_microphone_task(&self) {
        let mut microphone = self.microphone.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(microphone) = microphone.as_mut()
            && microphone.task.is_none()
        {
            microphone.task = Some(tokio::spawn(speak(
                microphone.track.clone(),
                microphone.ssrc,
                microphone.player.clone(),
                self.shared.clone(),
                self.state.clone(),
            )));
        }
    }
}

impl Drop for MediaPeer {
    fn drop(&mut self) {
        // The tasks hold the shared state, not the connection; stop them with the peer.
        let microphone = self.microphone.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = microphone.as_mut().and_then(|m| m.task.take()) {
            task.abort();
        }
        for reader in self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
    use webrtc::peer_connection::RTCIceGatheringState;

    const WAIT: Duration = Duration::from_secs(10);

    fn encode_all(encoder: &mut opus::Encoder, pcm: &[i16]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 1500];
        pcm.chunks_exact(FRAME_SAMPLES)
            .map(|frame| {
                let len = encoder.encode(frame, &mut out).expect("encode");
                out[..len].to_vec()
            })
            .collect()
    }

    fn voip_encoder() -> opus::Encoder {
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
        encoder.set_inband_fec(true).unwrap();
        encoder
            .set_packet_loss_perc(ENCODER_EXPECTED_LOSS_PERCENT)
            .unwrap();
        encoder
    }

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
    fn opus_round_trip_keeps_440_and_880_apart() {
        for hz in [440.0f32, 880.0] {
            let mut encoder = voip_encoder();
            let mut receiver = OpusReceiver::new();
            let packets = encode_all(&mut encoder, &tone_pcm(hz, -20.0, 50 * FRAME_SAMPLES));
            let mut decoded = Vec::new();
            for (seq, payload) in packets.iter().enumerate() {
                let out = receiver.receive(seq as u16, payload);
                assert_eq!(out.errors, 0);
                for (origin, pcm) in out.frames {
                    assert_eq!(origin, FrameOrigin::Packet);
                    assert_eq!(pcm.len(), FRAME_SAMPLES);
                    decoded.extend(pcm);
                }
            }
            // Skip the first window: encoder look-ahead and ramp-up.
            for window in decoded[WINDOW_SAMPLES..].chunks_exact(WINDOW_SAMPLES) {
                assert_eq!(dominant_tone(window, &[440.0, 880.0]), Some(hz));
            }
            let level = dbov(&decoded[WINDOW_SAMPLES..]);
            assert!((level + 20.0).abs() < 2.0, "decoded level {level} dBov");
        }
    }

    #[test]
    fn opus_concealment_keeps_a_tone_through_ten_percent_loss() {
        let mut encoder = voip_encoder();
        let mut receiver = OpusReceiver::new();
        let packets = encode_all(&mut encoder, &tone_pcm(440.0, -20.0, 150 * FRAME_SAMPLES));
        let mut rng = StdRng::seed_from_u64(42);
        let (mut decoded, mut fec, mut plc, mut lost) = (Vec::new(), 0, 0, 0);
        for (seq, payload) in packets.iter().enumerate() {
            // Never drop the first packet: there is nothing to conceal from.
            if seq > 0 && rng.random::<f64>() < 0.10 {
                lost += 1;
                continue;
            }
            let out = receiver.receive(seq as u16, payload);
            assert_eq!(out.errors, 0);
            for (origin, pcm) in out.frames {
                fec += u32::from(origin == FrameOrigin::Fec);
                plc += u32::from(origin == FrameOrigin::Plc);
                decoded.extend(pcm);
            }
        }
        assert!(
            lost >= 8,
            "the seed should drop about 15 packets, dropped {lost}"
        );
        assert_eq!(fec + plc, lost, "every lost packet is concealed");
        assert!(fec > 0);
        assert_eq!(decoded.len(), packets.len() * FRAME_SAMPLES);
        let fraction = tone_fraction(&decoded[WINDOW_SAMPLES..], 440.0);
        assert!(fraction >= 0.95, "tone in {fraction} of the windows");
    }

    #[test]
    fn opus_receiver_skips_late_packets_and_resyncs_on_a_jump() {
        let mut encoder = voip_encoder();
        let packets = encode_all(&mut encoder, &tone_pcm(440.0, -20.0, 4 * FRAME_SAMPLES));
        let mut receiver = OpusReceiver::new();
        assert_eq!(receiver.receive(100, &packets[0]).frames.len(), 1);
        assert!(receiver.receive(100, &packets[0]).skipped);
        assert!(receiver.receive(99, &packets[1]).skipped);
        // Too long a gap: no concealment, just the packet.
        assert_eq!(receiver.receive(200, &packets[1]).frames.len(), 1);
        // Far behind: a restarted sender, decoded.
        assert_eq!(receiver.receive(60_000, &packets[2]).frames.len(), 1);
        // Two missing: one PLC, one FEC, then the packet.
        let origins: Vec<_> = receiver
            .receive(60_003, &packets[3])
            .frames
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            origins,
            [FrameOrigin::Plc, FrameOrigin::Fec, FrameOrigin::Packet]
        );
    }

    #[test]
    fn sequence_tracker_counts_breaks_gaps_duplicates_and_reordering() {
        let mut tracker = SeqTracker::default();
        for seq in [65534, 65535, 0, 1] {
            tracker.record(seq);
        }
        assert_eq!(
            tracker.stats,
            SeqStats {
                highest: Some(1),
                ..Default::default()
            },
            "wrapping is continuous"
        );
        tracker.record(4); // 2 and 3 missing
        tracker.record(3); // late
        tracker.record(3); // duplicate
        tracker.record(5);
        assert_eq!(
            tracker.stats,
            SeqStats {
                breaks: 4,
                missing: 2,
                duplicates: 1,
                reordered: 1,
                highest: Some(5),
            }
        );
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
    fn answer_directions() {
        let answer = |first: &str| {
            format!(
                "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na={first}\r\n\
                 m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\n"
            )
        };
        assert!(answer_accepts_audio(&answer("recvonly")));
        assert!(answer_accepts_audio(&answer("sendrecv")));
        assert!(!answer_accepts_audio(&answer("sendonly")));
        assert!(!answer_accepts_audio(&answer("inactive")));
        assert!(!answer_accepts_audio("v=0\r\n"));
    }

    #[test]
    fn media_slots_reads_the_welcome() {
        assert_eq!(media_slots(&json!({ "media": { "slots": 3 } })), 3);
    }

    #[tokio::test]
    async fn offers_have_exactly_the_slots_stoa_expects() {
        for slots in [1, 3, 5] {
            let listener = MediaPeer::new(MediaConfig::listener("l", slots))
                .await
                .unwrap();
            let offer = listener.pc.create_offer(None).await.unwrap();
            check_offer(&offer.sdp, slots, false).unwrap_or_else(|e| panic!("{e}:\n{}", offer.sdp));
            assert!(!offer.sdp.contains("m=video") && !offer.sdp.contains("m=application"));
            for (index, section) in media_sections(&offer.sdp).iter().enumerate() {
                assert!(section.contains(&format!("a=mid:{index}").as_str()));
            }
            listener.close().await;

            let speaker = MediaPeer::new(MediaConfig::speaker(
                "s",
                slots,
                AudioSource::tone(440.0, -20.0),
            ))
            .await
            .unwrap();
            let offer = speaker.pc.create_offer(None).await.unwrap();
            check_offer(&offer.sdp, slots, true).unwrap_or_else(|e| panic!("{e}:\n{}", offer.sdp));
            speaker.close().await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Loopback: a plain `webrtc` answerer stands in for the server, so the whole client
    // (negotiation, renegotiation, sending, receiving, decoding) runs without Stoa.
    // -----------------------------------------------------------------------------------------

    /// The slot on which the answerer echoes the offerer's microphone.
    const ECHO_SLOT: usize = 1;

    /// Answers offers and sends back whatever the microphone sends, on [`ECHO_SLOT`], as one
    /// continuous stream (its own SSRC and numbering), without header extensions.
    struct EchoAnswerer {
        pc: Arc<dyn PeerConnection>,
        gathered: watch::Receiver<bool>,
        /// Answer the first m-line `sendonly`, as the server does for a listener.
        refuse_microphone: bool,
    }

    struct EchoEvents {
        gathered: watch::Sender<bool>,
        echo: Arc<TrackLocalStaticRTP>,
        echo_ssrc: u32,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for EchoEvents {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                self.gathered.send_replace(true);
            }
        }

        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let (echo, ssrc) = (self.echo.clone(), self.echo_ssrc);
            tokio::spawn(async move {
                let mut seq = 1000u16;
                while let Some(event) = track.poll().await {
                    if let TrackRemoteEvent::OnRtpPacket(mut packet) = event {
                        packet.header.ssrc = ssrc;
                        packet.header.sequence_number = seq;
                        seq = seq.wrapping_add(1);
                        packet.header.extension = false;
                        packet.header.extensions.clear();
                        packet.header.extensions_padding = 0;
                        let _ = echo.write_rtp(packet).await;
                    }
                }
            });
        }
    }

    impl EchoAnswerer {
        async fn new(slots: usize) -> Self {
            let tracks: Vec<_> = (0..slots)
                .map(|slot| {
                    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                        "echo".to_owned(),
                        format!("echo-slot-{slot}"),
                        format!("echo-slot-{slot}"),
                        RtpCodecKind::Audio,
                        vec![RTCRtpEncodingParameters {
                            rtp_coding_parameters: RTCRtpCodingParameters {
                                ssrc: Some(0x0E00 + slot as u32),
                                ..Default::default()
                            },
                            codec: opus_codec().rtp_codec,
                            ..Default::default()
                        }],
                    )))
                })
                .collect();
            let (gathered_tx, gathered) = watch::channel(false);
            let handler = Arc::new(EchoEvents {
                gathered: gathered_tx,
                echo: tracks[ECHO_SLOT].clone(),
                echo_ssrc: 0x0E00 + ECHO_SLOT as u32,
            });
            let pc = build_peer_connection(handler, std::net::Ipv4Addr::LOCALHOST.into(), false)
                .await
                .unwrap();
            // Before the first offer, as the server does: `rtc` gives a transceiver that an
            // offer creates for a recvonly m-line no receiver, so a later sendrecv re-offer
            // (start_speaking) would never deliver the microphone.
            for track in tracks {
                pc.add_track(track).await.unwrap();
            }
            EchoAnswerer {
                pc,
                gathered,
                refuse_microphone: false,
            }
        }
    }

    #[async_trait::async_trait]
    impl OfferChannel for EchoAnswerer {
        async fn exchange(&mut self, offer_sdp: String) -> Result<String, MediaError> {
            self.pc
                .set_remote_description(RTCSessionDescription::offer(offer_sdp)?)
                .await?;
            if self.refuse_microphone {
                // After the offer: applying an offer rewrites the transceivers' directions.
                for transceiver in self.pc.get_transceivers().await {
                    if transceiver.mid().await?.as_deref() == Some("0") {
                        transceiver
                            .set_direction(RTCRtpTransceiverDirection::Sendonly)
                            .await?;
                    }
                }
            }
            let answer = self.pc.create_answer(None).await?;
            self.pc.set_local_description(answer).await?;
            // Our candidate must be in the answer: the offerer gets no trickle.
            tokio::time::timeout(WAIT, self.gathered.wait_for(|done| *done))
                .await
                .expect("answerer gathers its candidate")
                .expect("answerer alive");
            Ok(self
                .pc
                .local_description()
                .await
                .expect("local description set")
                .sdp)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_listen_then_speak_then_stop() {
        let slots = 3;
        let mut answerer = EchoAnswerer::new(slots).await;
        let peer = MediaPeer::new(MediaConfig::listener("loop", slots))
            .await
            .unwrap();
        peer.negotiate(&mut answerer).await.unwrap();
        peer.wait_connected(WAIT).await;
        assert!(!peer.report().send.answer_accepts_audio);

        peer.start_speaking(&mut answerer, AudioSource::tone(440.0, -20.0))
            .await
            .unwrap();
        let since = Instant::now();
        peer.wait_until(WAIT, "the microphone sends", |r| r.send.frames_sent >= 10)
            .await;
        peer.wait_for_tone(ECHO_SLOT, 440.0, WAIT).await;
        let report = peer
            .wait_until(WAIT, "50 echoed packets", |r| {
                r.slots[ECHO_SLOT].packets >= 50
            })
            .await;
        let echoed = &report.slots[ECHO_SLOT];
        assert!(echoed.is_continuous(), "{echoed:#?}");
        assert_eq!(echoed.ssrcs, [0x0E00 + ECHO_SLOT as u32]);
        assert_eq!(echoed.tracks, 1);
        assert_eq!(echoed.decode_errors, 0);
        assert_eq!(echoed.audio_level, None, "the echo strips extensions");
        let log = peer.packets(ECHO_SLOT);
        assert_eq!(log.len() as u64, echoed.packets);
        assert!(log.windows(2).all(|w| w[1].seq == w[0].seq.wrapping_add(1)
            && w[1].timestamp.wrapping_sub(w[0].timestamp) == FRAME_SAMPLES as u32));
        assert!(report.send.answer_accepts_audio && report.send.speaking);
        assert_eq!(report.send.last_level, Some((20, true)));
        assert_eq!(report.send.write_errors, 0, "{:?}", report.send.last_error);
        assert_eq!(report.unmapped_tracks, 0);
        assert_eq!(report.slots[0].packets + report.slots[2].packets, 0);
        let fraction = peer.tone_fraction(ECHO_SLOT, 440.0, since, Instant::now());
        assert!(fraction >= 0.8, "440 Hz in {fraction} of the windows");

        // A new source without renegotiation.
        peer.set_source(AudioSource::tone(880.0, -30.0));
        peer.wait_for_tone(ECHO_SLOT, 880.0, WAIT).await;

        peer.stop_speaking(&mut answerer).await.unwrap();
        let sent = peer.report().send.frames_sent;
        let after_stop = peer
            .wait_until(WAIT, "the echo stops", |r| {
                r.slots[ECHO_SLOT]
                    .last_arrival
                    .is_some_and(|last| last.elapsed() > Duration::from_millis(300))
            })
            .await;
        assert!(!after_stop.send.speaking);
        assert_eq!(
            after_stop.send.frames_sent, sent,
            "nothing sent after stopping"
        );

        // Speaking again reuses the first m-line (the offer check would panic otherwise).
        peer.start_speaking(&mut answerer, AudioSource::tone(660.0, -20.0))
            .await
            .unwrap();
        peer.wait_for_tone(ECHO_SLOT, 660.0, WAIT).await;
        peer.close().await;
        answerer.pc.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_receive_loss_is_concealed() {
        let slots = 2;
        let mut answerer = EchoAnswerer::new(slots).await;
        let config = MediaConfig::speaker("lossy", slots, AudioSource::tone(440.0, -20.0))
            .with_receive_loss(0.10, 3);
        let peer = MediaPeer::new(config).await.unwrap();
        peer.negotiate(&mut answerer).await.unwrap();
        peer.wait_connected(WAIT).await;
        let since = Instant::now();
        let report = peer
            .wait_until(WAIT, "100 echoed packets", |r| {
                r.slots[ECHO_SLOT].packets >= 100
            })
            .await;
        let slot = &report.slots[ECHO_SLOT];
        assert!(
            slot.is_continuous(),
            "loss is injected after the bookkeeping"
        );
        let rate = slot.injected_losses as f64 / slot.packets as f64;
        assert!((0.03..0.2).contains(&rate), "injected loss {rate}");
        assert!(slot.fec + slot.plc > 0, "{slot:#?}");
        let fraction = peer.tone_fraction(ECHO_SLOT, 440.0, since, Instant::now());
        assert!(fraction >= 0.8, "440 Hz in {fraction} of the windows");
        peer.close().await;
        answerer.pc.close().await.unwrap();
    }

    /// Refuses every offer, like the server for a participant who may not speak.
    struct Refuser;

    #[async_trait::async_trait]
    impl OfferChannel for Refuser {
        async fn exchange(&mut self, _offer_sdp: String) -> Result<String, MediaError> {
            Err(MediaError::Refused {
                code: "not_a_speaker".to_owned(),
                message: "test".to_owned(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_a_refused_offer_leaves_the_peer_usable() {
        let mut answerer = EchoAnswerer::new(2).await;
        let peer = MediaPeer::new(MediaConfig::listener("refused", 2))
            .await
            .unwrap();
        peer.negotiate(&mut answerer).await.unwrap();
        peer.wait_connected(WAIT).await;
        let error = peer
            .start_speaking(&mut Refuser, AudioSource::tone(440.0, -20.0))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("not_a_speaker"), "{error}");
        assert!(!peer.speaking() && !peer.report().send.speaking);
        // Rolled back: the next offer is a listener's again, and the answerer takes it.
        peer.negotiate(&mut answerer).await.unwrap();
        peer.start_speaking(&mut answerer, AudioSource::tone(440.0, -20.0))
            .await
            .unwrap();
        peer.wait_for_tone(ECHO_SLOT, 440.0, WAIT).await;
        peer.close().await;
        answerer.pc.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_a_refused_speaker_holds_back_and_a_rogue_sends() {
        let source = AudioSource::tone(440.0, -20.0);
        for rogue in [false, true] {
            let mut answerer = EchoAnswerer::new(2).await;
            answerer.refuse_microphone = true;
            let config = if rogue {
                MediaConfig::rogue("rogue", 2, source.clone())
            } else {
                MediaConfig::speaker("polite", 2, source.clone())
            };
            let peer = MediaPeer::new(config).await.unwrap();
            peer.negotiate(&mut answerer).await.unwrap();
            peer.wait_connected(WAIT).await;
            let report = peer
                .wait_until(WAIT, "25 frames from the microphone", |r| {
                    r.send.frames_sent + r.send.frames_withheld >= 25
                })
                .await;
            assert!(!report.send.answer_accepts_audio);
            let on_the_wire = peer.rtp_packets_sent().await;
            if rogue {
                assert_eq!(report.send.frames_withheld, 0);
                assert!(on_the_wire >= 20, "rogue sent {on_the_wire} RTP packets");
            } else {
                assert_eq!(report.send.frames_sent, 0);
                assert_eq!(on_the_wire, 0);
            }
            peer.close().await;
            answerer.pc.close().await.unwrap();
        }
    }
}
