//! A test client on the async `webrtc` crate: offers audio, sends an Opus tone, decodes what
//! it receives. It talks to the worker in-process instead of over a signaling socket.

use crate::worker::{
    audio_media_engine, opus_codec, report_registry, Command, ConnId, Role, WorkerHandle, OPUS_PT,
    SLOTS,
};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState,
};

#[derive(Default)]
pub struct ClientStats {
    pub rtp_received: AtomicU64,
    pub frames_decoded: AtomicU64,
    pub decode_errors: AtomicU64,
    pub nonzero_frames: AtomicU64,
    pub sender_reports: AtomicU64,
    pub sent: AtomicU64,
    pub tracks: AtomicU64,
    pub connected: AtomicBool,
    pub connected_at: Mutex<Option<Instant>>,
    pub state_log: Mutex<Vec<(Instant, String)>>,
    pub ssrcs: Mutex<Vec<u32>>,
}

struct Handler {
    name: String,
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    stats: Arc<ClientStats>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(init);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let now = Instant::now();
        self.stats.state_log.lock().unwrap().push((now, state.to_string()));
        if state == RTCPeerConnectionState::Connected {
            self.stats.connected.store(true, Ordering::SeqCst);
            *self.stats.connected_at.lock().unwrap() = Some(now);
        }
        println!("[{}] peer connection {state}", self.name);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let stats = self.stats.clone();
        stats.tracks.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut decoder = opus::Decoder::new(48000, opus::Channels::Mono).unwrap();
            let mut pcm = vec![0i16; 5760];
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        stats.rtp_received.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut s = stats.ssrcs.lock().unwrap();
                            if !s.contains(&packet.header.ssrc) {
                                s.push(packet.header.ssrc);
                            }
                        }
                        match decoder.decode(&packet.payload, &mut pcm, false) {
                            Ok(n) => {
                                stats.frames_decoded.fetch_add(1, Ordering::Relaxed);
                                let peak = pcm[..n].iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
                                if peak > 1000 {
                                    stats.nonzero_frames.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    TrackRemoteEvent::OnRtcpPacket(packets) => {
                        for p in &packets {
                            if p.as_any().downcast_ref::<SenderReport>().is_some() {
                                stats.sender_reports.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

pub struct TestClient {
    pub name: String,
    pub pc: Arc<dyn PeerConnection>,
    pub stats: Arc<ClientStats>,
    pub conn: ConnId,
    worker: WorkerHandle,
    tone: Option<tokio::task::JoinHandle<()>>,
    pub stop_tone: Arc<AtomicBool>,
}

fn audio_track(name: &str) -> (MediaStreamTrack, u32) {
    let ssrc = rand::random::<u32>();
    let track = MediaStreamTrack::new(
        format!("{name}-stream"),
        format!("{name}-mic"),
        format!("{name}-mic"),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: opus_codec().rtp_codec,
            ..Default::default()
        }],
    );
    (track, ssrc)
}

impl TestClient {
    /// Build a connection, offer, hand the offer to the worker, apply its answer.
    /// A speaker offers its microphone track; a listener offers receive-only transceivers.
    pub async fn join(name: &str, role: Role, worker: WorkerHandle, tone_hz: f32) -> anyhow::Result<Self> {
        Self::join_with(name, role, role == Role::Speaker, worker, tone_hz).await
    }

    /// `offer_mic` independent of the role the server applies: a listener that offers a
    /// microphone anyway is how we check that the server gives it no receiving path.
    pub async fn join_with(
        name: &str,
        role: Role,
        offer_mic: bool,
        worker: WorkerHandle,
        tone_hz: f32,
    ) -> anyhow::Result<Self> {
        let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ClientStats::default());
        let handler = Arc::new(Handler { name: name.to_owned(), candidates: cand_tx, stats: stats.clone() });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build()) // no STUN/TURN servers
            .with_media_engine(audio_media_engine()?)
            .with_interceptor_registry(report_registry())
            .with_handler(handler)
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let mut sample_track = None;
        if offer_mic {
            let (track, ssrc) = audio_track(name);
            let local = Arc::new(TrackLocalStaticSample::new(Instant::now(), track)?);
            pc.add_track(local.clone()).await?;
            sample_track = Some((local, ssrc));
        }
        let recv_only = SLOTS - usize::from(offer_mic);
        for _ in 0..recv_only {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await?;
        }

        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer.clone()).await?;
        let (tx, rx) = oneshot::channel();
        worker.send(Command::Join { role, offer, reply: tx });
        let (conn, answer) = rx.await?.map_err(anyhow::Error::msg)?;
        pc.set_remote_description(answer).await?;

        // Trickle: candidates gathered after the offer go to the worker as they come.
        let w = worker.clone();
        tokio::spawn(async move {
            while let Some(candidate) = cand_rx.recv().await {
                w.send(Command::RemoteCandidate { conn, candidate });
            }
        });

        let mut client = TestClient {
            name: name.to_owned(),
            pc,
            stats,
            conn,
            worker,
            tone: None,
            stop_tone: Arc::new(AtomicBool::new(false)),
        };
        if let Some((track, ssrc)) = sample_track {
            client.start_tone(track, ssrc, tone_hz);
        }
        Ok(client)
    }

    /// Listener promoted to speaker: add a microphone track on the same connection and
    /// renegotiate (the client offers again; the worker answers).
    pub async fn promote(&mut self, tone_hz: f32) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let (track, ssrc) = audio_track(&self.name);
        let local = Arc::new(TrackLocalStaticSample::new(Instant::now(), track)?);
        // Reuses the first audio transceiver that has no sender, turning it sendrecv.
        self.pc.add_track(local.clone()).await?;
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        let (tx, rx) = oneshot::channel();
        self.worker.send(Command::Renegotiate { conn: self.conn, role: Role::Speaker, offer, reply: tx });
        let answer = rx.await?.map_err(anyhow::Error::msg)?;
        self.pc.set_remote_description(answer).await?;
        let took = t0.elapsed();
        self.start_tone(local, ssrc, tone_hz);
        Ok(took)
    }

    fn start_tone(&mut self, track: Arc<TrackLocalStaticSample>, ssrc: u32, hz: f32) {
        let stats = self.stats.clone();
        let stop = self.stop_tone.clone();
        self.tone = Some(tokio::spawn(async move {
            let mut encoder =
                opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
            let mut phase = 0f32;
            let step = 2.0 * std::f32::consts::PI * hz / 48000.0;
            let mut pcm = [0i16; 960];
            let mut out = vec![0u8; 1500];
            // Writing before DTLS is done only earns "local_srtp_context is not set yet".
            while !stats.connected.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for s in pcm.iter_mut() {
                    *s = (phase.sin() * 8000.0) as i16;
                    phase = (phase + step) % (2.0 * std::f32::consts::PI);
                }
                let n = encoder.encode(&pcm, &mut out).unwrap();
                let sample = Sample {
                    data: bytes::Bytes::copy_from_slice(&out[..n]),
                    timestamp: Instant::now(),
                    duration: Duration::from_millis(20),
                    packet_timestamp: 0,
                    prev_dropped_packets: 0,
                    prev_padding_packets: 0,
                };
                // -12 dBov-ish, voice active: the server should read this back.
                let result = track
                    .sample_writer(ssrc, OPUS_PT)
                    .with_audio_level(AudioLevelExtension { level: 12, voice: true })
                    .write_sample(&sample)
                    .await;
                if result.is_ok() {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    pub async fn close(&self) {
        self.stop_tone.store(true, Ordering::Relaxed);
        let _ = self.pc.close().await;
    }
}
