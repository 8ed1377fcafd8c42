//! [`MediaPeer`]: the connection, its event handler, a reader task per remote track
//! (bookkeeping, loss injection, decoding, subscribers) and the microphone task (a source
//! played every 20 ms, Opus encoded, with its RFC 6464 level).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rtc::media::Sample;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCPeerConnectionState, RTCSessionDescription, Registry, StatsSelector, configure_rtcp_reports,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use super::codec::{Decoded, FrameOrigin, OpusReceiver, SeqTracker, voice_encoder};
use super::sdp::{answer_accepts_audio, check_offer};
use super::{
    AUDIO_LEVEL_URI, MediaConfig, MediaReport, OPUS_PT, OfferChannel, PacketInfo, SendReport,
    SlotFrame, SlotReport, media_engine, microphone_track,
};
use crate::Error;
use crate::audio::{
    AudioSource, FRAME_DURATION, Player, WINDOW_SAMPLES, audio_level, dbov, goertzel_power,
    tone_fraction, tone_present,
};

/// How often waits look at the state again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Offers made again after `media_unavailable` (the server's media was busy, or closed our
/// previous connection just as the offer came), and the pause before each.
const UNAVAILABLE_RETRIES: u32 = 5;
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(300);
/// The most audio sections the server takes in one offer.
const MAX_SLOTS: usize = 16;

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

    fn record_decoded(&mut self, at: Instant, decoded: &Decoded, keep: Duration) {
        let report = &mut self.report;
        report.decode_errors += decoded.errors;
        report.skipped += u64::from(decoded.skipped);
        for (origin, pcm) in &decoded.frames {
            match origin {
                FrameOrigin::Packet => report.decoded += 1,
                FrameOrigin::Fec => report.fec += 1,
                FrameOrigin::Plc => report.plc += 1,
            }
            if keep.is_zero() {
                continue;
            }
            self.audio.push_back(DecodedFrame {
                at,
                pcm: pcm.clone(),
            });
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
    /// Where decoded frames go as they are made (see `MediaPeer::subscribe`).
    subscribers: Mutex<Vec<mpsc::Sender<SlotFrame>>>,
}

impl Shared {
    /// The state; a panic elsewhere while holding the lock does not hide it from reports.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands decoded frames to every subscriber with room for them; a full subscriber misses
    /// them (counted), a gone one is forgotten.
    fn publish(&self, slot: usize, at: Instant, turn: u64, decoded: Decoded) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if subscribers.is_empty() {
            return;
        }
        let mut missed = 0;
        for (origin, pcm) in decoded.frames {
            let frame = SlotFrame {
                slot,
                at,
                origin,
                turn,
                pcm,
            };
            subscribers.retain(|s| match s.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    missed += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        drop(subscribers);
        if missed > 0 {
            self.lock().slots[slot].report.frames_missed_by_subscribers += missed;
        }
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
    let mut receiver = match OpusReceiver::new() {
        Ok(receiver) => receiver,
        Err(error) => {
            shared.lock().slots[slot].report.decode_errors += 1;
            eprintln!("[{}] no Opus decoder: {error}", shared.config.name);
            return;
        }
    };
    let mut current_ssrc = None;
    let mut turn = 0u64;
    let mut marked = false;
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
            marker: packet.header.marker,
            audio_level: level_id
                .and_then(|id| packet.header.get_extension(id))
                .and_then(|payload| payload.first().copied())
                .map(|byte| (byte & 0x7f, byte & 0x80 != 0)),
            dropped: loss > 0.0 && rng.random::<f64>() < loss,
        };
        let new_source = current_ssrc
            .replace(info.ssrc)
            .is_some_and(|old| old != info.ssrc);
        if new_source {
            receiver.resync();
        }
        // A marker after unmarked packets: the server's mark of a new speaker on the slot (or
        // a talk spurt's start). Some senders mark every packet; those marks pass through and
        // say nothing.
        if new_source || (info.marker && !marked) {
            turn += 1;
        }
        marked = info.marker;
        let decoded = (!info.dropped).then(|| receiver.receive(info.seq, &packet.payload));

        let keep = shared.config.keep_audio;
        {
            let mut inner = shared.lock();
            let state = &mut inner.slots[slot];
            state.record_packet(info, keep);
            if let Some(decoded) = &decoded {
                state.record_decoded(info.at, decoded, keep);
            }
        }
        if let Some(decoded) = decoded {
            shared.publish(slot, info.at, turn, decoded);
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
    let mut encoder = match voice_encoder() {
        Ok(encoder) => encoder,
        Err(error) => {
            let mut inner = shared.lock();
            inner.send.write_errors += 1;
            inner.send.last_error = Some(format!("no Opus encoder: {error}"));
            return;
        }
    };
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

/// Receiver and sender reports only (no NACK, no TWCC: `register_default_interceptors` would
/// add those and lengthen the SDP).
fn report_registry() -> Registry {
    configure_rtcp_reports(Registry::new())
}

/// A peer connection built like Stoa's clients (see the module docs): one host candidate on
/// `local_ip`, UDP or ICE-TCP only.
pub(super) async fn build_peer_connection(
    handler: Arc<dyn PeerConnectionEventHandler>,
    local_ip: std::net::IpAddr,
    tcp_only: bool,
) -> Result<Arc<dyn PeerConnection>, Error> {
    let local = std::net::SocketAddr::new(local_ip, 0).to_string();
    let builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build()) // no STUN/TURN servers
        .with_media_engine(media_engine()?)
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

/// One peer connection: what [`MediaPeer::reconnect`] replaces.
pub(super) struct Link {
    pub(super) pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Link {
    /// Builds the connection (nothing sent yet) with the config's receive-only audio
    /// transceivers.
    async fn open(shared: &Arc<Shared>) -> Result<Link, Error> {
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
        Ok(Link { pc, state, readers })
    }

    fn stop_readers(&self) {
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

/// A participant's media side: one peer connection with `slots` audio m-lines (replaced by
/// a new one when the server no longer has it: [`MediaPeer::reconnect`]).
///
/// All methods take `&self`; state is behind locks that are never held across an await.
pub struct MediaPeer {
    link: Mutex<Arc<Link>>,
    shared: Arc<Shared>,
    microphone: Mutex<Option<Microphone>>,
}

impl MediaPeer {
    /// Builds the connection (bound to 127.0.0.1, nothing sent yet) with `slots` receive-only
    /// audio transceivers, plus the microphone on the first one if the config has one.
    pub async fn new(config: MediaConfig) -> Result<Self, Error> {
        if config.slots == 0 || config.slots > MAX_SLOTS {
            return Err(Error::Usage(format!(
                "a media peer needs 1 to {MAX_SLOTS} slots, not {}",
                config.slots
            )));
        }
        if !(0.0..1.0).contains(&config.receive_loss) {
            return Err(Error::Usage(format!(
                "receive_loss must be in 0..1, got {}",
                config.receive_loss
            )));
        }
        let first_source = config.microphone.clone();
        let shared = Arc::new(Shared {
            send_permitted: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                slots: (0..config.slots).map(|_| SlotState::default()).collect(),
                ..Inner::default()
            }),
            subscribers: Mutex::new(Vec::new()),
            config,
        });
        let link = Link::open(&shared).await?;
        let peer = MediaPeer {
            link: Mutex::new(Arc::new(link)),
            shared,
            microphone: Mutex::new(None),
        };
        if let Some(source) = first_source {
            peer.attach_microphone(Arc::new(Mutex::new(Player::new(source))))
                .await?;
        }
        Ok(peer)
    }

    /// The current connection.
    pub(super) fn link(&self) -> Arc<Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the connection with a new one, negotiated through `channel` (then
    /// [`MediaPeer::wait_connected`]): for when the server no longer has the old one (the room moved to
    /// another node, or the place was taken again after its grace period). Reports, the
    /// decoded history and [`MediaPeer::subscribe`]rs carry on. With `keep_microphone`, a
    /// microphone that was playing plays on in the new connection, from where it was;
    /// otherwise it stops.
    pub async fn reconnect(
        &self,
        channel: &mut impl OfferChannel,
        keep_microphone: bool,
    ) -> Result<(), Error> {
        let microphone = self
            .microphone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let player = microphone.and_then(|microphone| {
            if let Some(task) = microphone.task {
                task.abort();
            }
            keep_microphone.then_some(microphone.player)
        });
        {
            let mut inner = self.shared.lock();
            inner.send.speaking = false;
            inner.send.ssrc = None;
        }
        self.shared.send_permitted.store(false, Ordering::SeqCst);
        let fresh = Arc::new(Link::open(&self.shared).await?);
        let old = std::mem::replace(
            &mut *self.link.lock().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        old.stop_readers();
        if let Err(error) = old.pc.close().await {
            eprintln!("[{}] close: {error}", self.name());
        }
        if let Some(player) = player {
            self.attach_microphone(player).await?;
        }
        self.negotiate_patiently(channel).await
    }

    /// [`negotiate`](Self::negotiate), offered again a few times while the server answers
    /// `media_unavailable` (which says: try again), as the web client does.
    pub async fn negotiate_patiently(&self, channel: &mut impl OfferChannel) -> Result<(), Error> {
        let mut tries = 0;
        loop {
            match self.negotiate(channel).await {
                Err(error)
                    if error.code() == Some("media_unavailable") && tries < UNAVAILABLE_RETRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                }
                done => return done,
            }
        }
    }

    /// This peer's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Offers (exactly `slots` audio m-lines; the first sendrecv while the microphone is
    /// attached) and applies the answer. On a refusal the offer is rolled back and the server's
    /// code is in the error ([`Error::code`]). Starts the microphone once negotiated. An offer
    /// of another shape (a bug in this client, or in the `webrtc` library) is an
    /// [`Error::Protocol`] and is not sent.
    pub async fn negotiate(&self, channel: &mut impl OfferChannel) -> Result<(), Error> {
        let link = self.link();
        let offer = link.pc.create_offer(None).await?;
        link.pc.set_local_description(offer.clone()).await?;
        if let Err(problem) = check_offer(&offer.sdp, self.shared.config.slots, self.speaking()) {
            self.rollback().await;
            return Err(Error::Protocol(format!(
                "[{}] the client built an offer Stoa does not expect ({problem}):\n{}",
                self.name(),
                offer.sdp
            )));
        }
        let answer = match channel.exchange(offer.sdp).await {
            Ok(answer) => answer,
            Err(error) => {
                self.rollback().await;
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
        link.pc
            .set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        for candidate in tcp_candidates {
            link.pc
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
    ) -> Result<(), Error> {
        if self.speaking() {
            return Err(Error::Usage(format!(
                "[{}] is already speaking",
                self.name()
            )));
        }
        self.attach_microphone(Arc::new(Mutex::new(Player::new(source))))
            .await?;
        if let Err(error) = self.negotiate(channel).await {
            self.detach_microphone().await?;
            return Err(error);
        }
        Ok(())
    }

    /// Removes the microphone and renegotiates (the first m-line goes back to recvonly).
    pub async fn stop_speaking(&self, channel: &mut impl OfferChannel) -> Result<(), Error> {
        if !self.speaking() {
            return Err(Error::Usage(format!("[{}] is not speaking", self.name())));
        }
        self.detach_microphone().await?;
        self.negotiate(channel).await
    }

    /// Switches what the microphone plays, from the next frame on (no renegotiation).
    pub fn set_source(&self, source: AudioSource) -> Result<(), Error> {
        let microphone = self.microphone.lock().unwrap_or_else(|e| e.into_inner());
        let microphone = microphone.as_ref().ok_or_else(|| {
            Error::Usage(format!("[{}] set_source while not speaking", self.name()))
        })?;
        *microphone.player.lock().unwrap_or_else(|e| e.into_inner()) = Player::new(source);
        Ok(())
    }

    /// Whether a microphone is attached.
    pub fn speaking(&self) -> bool {
        self.microphone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits until the connection is `Connected`; an [`Error::Timeout`] (with the states it
    /// went through) on timeout, `Failed` or `Closed`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let mut state = self.link().state.clone();
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
            return Err(Error::Timeout(format!(
                "[{}] not connected within {timeout:?} (reached {reached:?}); states: {:?}",
                self.name(),
                self.shared.lock().state_log
            )));
        }
        Ok(())
    }

    /// RTP packets that actually went out towards the transport (the library's outbound
    /// counters, after the interceptors): proof that a rogue really sent.
    pub async fn rtp_packets_sent(&self) -> u64 {
        self.link()
            .pc
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
            state: *self.link().state.borrow(),
            state_log: inner.state_log.clone(),
            send: inner.send.clone(),
            slots: inner.slots.iter().map(|s| s.report.clone()).collect(),
            unmapped_tracks: inner.unmapped_tracks,
        }
    }

    /// Polls [`MediaPeer::report`] every 20 ms until `condition` holds and returns that report;
    /// an [`Error::Timeout`] with `what` and the last report after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&MediaReport) -> bool,
    ) -> Result<MediaReport, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let report = self.report();
            if condition(&report) {
                return Ok(report);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "[{}] {what}: not within {timeout:?}; last report: {report:#?}",
                    self.name()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the last 100 ms decoded on `slot` carry a tone at `hz`; returns the arrival
    /// time of the packet that completed that window. An [`Error::Timeout`] after `timeout`.
    /// Needs [`MediaConfig::keep_audio`] of at least 100 ms.
    pub async fn wait_for_tone(
        &self,
        slot: usize,
        hz: f32,
        timeout: Duration,
    ) -> Result<Instant, Error> {
        self.check_slot(slot)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let latest = self.shared.lock().slots[slot].latest_window();
            if let Some((window, at)) = &latest
                && tone_present(window, hz)
            {
                return Ok(*at);
            }
            if tokio::time::Instant::now() >= deadline {
                let heard = latest.map(|(window, _)| (dbov(&window), goertzel_power(&window, hz)));
                return Err(Error::Timeout(format!(
                    "[{}] no {hz} Hz tone on slot {slot} within {timeout:?}; last window \
                     (dBov, power at {hz} Hz): {heard:?}; slot: {:#?}",
                    self.name(),
                    self.report().slots[slot]
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The packets that arrived on `slot`, oldest first (at most [`MediaConfig::keep_audio`]
    /// back): arrival times, SSRCs, numbers, timestamps, audio levels.
    pub fn packets(&self, slot: usize) -> Vec<PacketInfo> {
        self.shared
            .lock()
            .slots
            .get(slot)
            .map(|s| s.packets.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Decoded audio of `slot` from frames that arrived in `since..until` (at most
    /// [`MediaConfig::keep_audio`] back).
    pub fn decoded_audio(&self, slot: usize, since: Instant, until: Instant) -> Vec<i16> {
        self.shared
            .lock()
            .slots
            .get(slot)
            .map(|s| s.audio_between(since, until))
            .unwrap_or_default()
    }

    /// Every frame decoded from now on, as it is made, on all slots: up to `capacity` frames
    /// wait in the receiver; while it is full, new frames pass it by (counted in
    /// [`SlotReport::frames_missed_by_subscribers`]). Dropping the receiver unsubscribes.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<SlotFrame> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.shared
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
        receiver
    }

    /// The number of audio slots this peer offers.
    pub fn slots(&self) -> usize {
        self.shared.config.slots
    }

    fn check_slot(&self, slot: usize) -> Result<(), Error> {
        if slot >= self.slots() {
            return Err(Error::Usage(format!(
                "[{}] has {} slots, not a slot {slot}",
                self.name(),
                self.slots()
            )));
        }
        Ok(())
    }

    /// Takes back an offer that was not answered, so the next one starts from the last
    /// negotiated state.
    async fn rollback(&self) {
        if let Ok(rollback) = RTCSessionDescription::rollback(None) {
            let _ = self.link().pc.set_local_description(rollback).await;
        }
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
        let link = self.link();
        if let Err(error) = link.pc.close().await {
            eprintln!("[{}] close: {error}", self.name());
        }
        link.stop_readers();
    }

    /// Adds a microphone track playing `player` with a fresh SSRC; `add_track` reuses the first
    /// transceiver without a sender, which is the first m-line (all are receive-only until
    /// then).
    async fn attach_microphone(&self, player: Arc<Mutex<Player>>) -> Result<(), Error> {
        let ssrc = rand::random::<u32>();
        let name = self.name();
        let track = microphone_track(
            format!("{name}-stream"),
            format!("{name}-mic-{ssrc:08x}"),
            format!("{name}-mic"),
            ssrc,
        );
        let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), track)?);
        let sender = self.link().pc.add_track(track.clone()).await?;
        *self.microphone.lock().unwrap_or_else(|e| e.into_inner()) = Some(Microphone {
            track,
            sender,
            ssrc,
            player,
            task: None,
        });
        let mut inner = self.shared.lock();
        inner.send.speaking = true;
        inner.send.ssrc = Some(ssrc);
        Ok(())
    }

    async fn detach_microphone(&self) -> Result<(), Error> {
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
            self.link().pc.remove_track(&microphone.sender).await?;
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
                self.link().state.clone(),
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
        self.link().stop_readers();
    }
}
