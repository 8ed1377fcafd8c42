//! The media side of a participant: one `webrtc` peer connection with Stoa's audio slots, a
//! microphone that speaks an [`AudioSource`] as Opus, and, for every
//! slot, the packets that arrived and their decoded audio, kept for a while and handed to
//! subscribers frame by frame.
//!
//! The library calls and their traps are in the project's `docs/media-notes.md`. In short: one
//! host candidate and no STUN, Opus PT 111 plus the audio-level extension and nothing else, and
//! the client is always the offerer (the server is ICE-lite and learns our address from our
//! checks, so no trickle is sent). [`Room`](crate::Room) drives a [`MediaPeer`] for you; use one
//! directly to control negotiation yourself, over any [`OfferChannel`].
//!
//! ```no_run
//! # async fn example(signal: &mut stoa_client::Session) -> Result<(), stoa_client::Error> {
//! use std::time::Duration;
//! use stoa_client::audio::AudioSource;
//! use stoa_client::media::{MediaConfig, MediaPeer};
//!
//! let tone = AudioSource::tone(440.0, -20.0);
//! let speaker = MediaPeer::new(MediaConfig::speaker("ann", signal.slots(), tone)).await?;
//! speaker.negotiate(signal).await?;
//! speaker.wait_connected(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

mod codec;
mod peer;
mod sdp;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::Error;
use crate::audio::{AudioSource, SAMPLE_RATE};

pub use codec::{FrameOrigin, SeqStats};
pub use peer::MediaPeer;
pub use sdp::answer_accepts_audio;

/// The Opus payload type Stoa negotiates.
pub const OPUS_PT: u8 = 111;
/// The Opus fmtp line Stoa negotiates.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
/// RFC 6464 client-to-mixer audio level header extension.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Loss the encoder is told to expect, so that it puts in-band FEC into its packets.
pub(crate) const ENCODER_EXPECTED_LOSS_PERCENT: i32 = 10;

/// Opus as Stoa negotiates it: PT 111, 48 kHz, stereo in SDP (mono inside), [`OPUS_FMTP`].
pub fn opus_codec() -> RTCRtpCodecParameters {
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

/// RED (RFC 2198) over Opus as Chromium offers it: PT 63, each block Opus.
pub fn red_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "audio/red".to_owned(),
            clock_rate: SAMPLE_RATE,
            channels: 2,
            sdp_fmtp_line: format!("{OPUS_PT}/{OPUS_PT}"),
            rtcp_feedback: vec![],
        },
        payload_type: 63,
    }
}

/// What a browser offers for Stoa, minus the extras: Opus at PT 111 plus the audio-level
/// extension, nothing else (for `webrtc` and `rtc` peer connections alike).
pub fn media_engine() -> Result<MediaEngine, Error> {
    media_engine_with(false)
}

/// [`media_engine`], offering RED over Opus too when `red`.
pub fn media_engine_with(red: bool) -> Result<MediaEngine, Error> {
    let mut engine = MediaEngine::default();
    engine.register_codec(opus_codec(), RtpCodecKind::Audio)?;
    if red {
        engine.register_codec(red_codec(), RtpCodecKind::Audio)?;
    }
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(engine)
}

/// A microphone's track: Opus, one encoding with the given SSRC (for `webrtc` and `rtc` peer
/// connections alike).
pub fn microphone_track(stream: String, id: String, label: String, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        stream,
        id,
        label,
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec().rtp_codec,
            ..Default::default()
        }],
    )
}

// ---------------------------------------------------------------------------------------------
// The offer channel
// ---------------------------------------------------------------------------------------------

/// Where offers go and answers come from: the signaling socket in end-to-end tests, or an
/// in-process answerer in this module's own tests.
#[async_trait::async_trait]
pub trait OfferChannel: Send {
    /// Sends an offer SDP and returns the answer SDP.
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, Error>;
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

    /// Drops `fraction` of incoming RTP packets before decoding, from a generator seeded with
    /// `seed`.
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
    /// When the first packet arrived.
    pub first_arrival: Option<Instant>,
    /// When the latest packet arrived.
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
    /// Packets the decoder could not decode.
    pub decode_errors: u64,
    /// Late or duplicate packets the decoder skipped.
    pub skipped: u64,
    /// Decoded frames a full subscriber missed (see [`MediaPeer::subscribe`]).
    pub frames_missed_by_subscribers: u64,
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
    /// Frames the connection refused to send.
    pub write_errors: u64,
    /// The last of those refusals.
    pub last_error: Option<String>,
    /// The audio level sent with the last frame.
    pub last_level: Option<(u8, bool)>,
    /// When the first frame went out.
    pub first_sent_at: Option<Instant>,
}

/// One RTP packet as it arrived on a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Arrival time.
    pub at: Instant,
    /// RTP SSRC (the slot's: it stays the same while the speaker behind it changes).
    pub ssrc: u32,
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// The RTP marker bit: the server sets it on the first packet after the slot's speaker
    /// changed.
    pub marker: bool,
    /// The RFC 6464 audio level, if the packet carried one: (level in -dBov, voice).
    pub audio_level: Option<(u8, bool)>,
    /// Dropped by the loss injection (not decoded).
    pub dropped: bool,
}

/// A snapshot of everything the peer observed.
#[derive(Clone, Debug)]
pub struct MediaReport {
    /// The connection's state now.
    pub state: RTCPeerConnectionState,
    /// Every connection state change, with its time.
    pub state_log: Vec<(Instant, RTCPeerConnectionState)>,
    /// What the microphone did.
    pub send: SendReport,
    /// Indexed by slot (m-line).
    pub slots: Vec<SlotReport>,
    /// Remote tracks that could not be mapped to a slot (should stay 0).
    pub unmapped_tracks: u64,
}

/// One decoded 20 ms frame of a slot, as [`MediaPeer::subscribe`] hands it out.
#[derive(Clone, Debug)]
pub struct SlotFrame {
    /// The slot (m-line index) it arrived on.
    pub slot: usize,
    /// Arrival time of the packet that brought it.
    pub at: Instant,
    /// How the frame came about (decoded, FEC, concealed).
    pub origin: FrameOrigin,
    /// Goes up when the slot's stream marks a new start: an RTP marker bit after unmarked
    /// packets (the server marks the first packet after the slot's speaker changed; senders
    /// mark talk spurts) or a new SSRC. A change of speaker is not always marked: a sender that
    /// marks every packet hides the server's mark.
    pub turn: u64,
    /// 960 samples, 48 kHz mono.
    pub pcm: Vec<i16>,
}
