//! One media worker: one UDP socket, many sans-IO `rtc` connections, one thread.
//! It owns its connections outright; the rest of the program talks to it through commands.

use crate::rtcp_tap::ReportTap;
use crate::stun_route;
use bytes::{Bytes, BytesMut};
use rtc::crypto::SignatureScheme;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{Registry, ReceiverReportBuilder, SenderReportBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot};

pub const OPUS_PT: u8 = 111;
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// How many audio slots every connection receives (speakers are mapped onto slots).
pub const SLOTS: usize = 2;

pub type ConnId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Speaker,
    Listener,
}

pub enum Command {
    Join {
        role: Role,
        offer: RTCSessionDescription,
        reply: oneshot::Sender<Result<(ConnId, RTCSessionDescription), String>>,
    },
    Renegotiate {
        conn: ConnId,
        role: Role,
        offer: RTCSessionDescription,
        reply: oneshot::Sender<Result<RTCSessionDescription, String>>,
    },
    RemoteCandidate {
        conn: ConnId,
        candidate: RTCIceCandidateInit,
    },
    /// Drop every datagram from this connection's peer: a dead network path.
    Blackhole { conn: ConnId },
    /// The participant left (signaling said so) or the connection failed: forget it.
    Close { conn: ConnId },
    Stats { reply: oneshot::Sender<WorkerStats> },
    Stop,
}

/// What the worker tells the test harness (read through `Debug` only).
#[allow(dead_code)]
#[derive(Debug)]
pub enum Report {
    Ice { conn: ConnId, state: RTCIceConnectionState, at: Instant },
    Peer { conn: ConnId, state: RTCPeerConnectionState, at: Instant },
}

#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub routed_by_ufrag: u64,
    pub unroutable: u64,
    pub blackholed: u64,
    pub rtp_in: u64,
    pub rtp_in_dropped_no_right: u64,
    pub forwarded: u64,
    pub forward_errors: u64,
    pub last_audio_level: Option<(u8, bool)>,
    pub audio_levels_seen: u64,
    pub receiver_reports: u64,
    pub last_rr: Option<String>,
    pub per_conn: Vec<(ConnId, Role, String, u64, u64)>, // id, role, ice state, rtp_in, rr
    pub ciphers: Vec<(ConnId, String, String)>, // from get_stats: dtls, srtp
}

struct OutSlot {
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    audio_level_id: Option<u8>,
}

struct Conn {
    pc: RTCPeerConnection,
    role: Role,
    ufrag: String,
    slots: Vec<OutSlot>,
    /// The slot this connection's own audio goes out on (when it is a speaker).
    speaks_on: Option<usize>,
    in_audio_level_id: Option<u8>,
    ice_state: RTCIceConnectionState,
    /// DTLS done and SRTP keys in place: only then is forwarding to it worth anything.
    media_ready: bool,
    next_timeout: Option<Instant>,
    rtp_in: u64,
    rr_in: u64,
}

pub struct Worker {
    socket: UdpSocket,
    local_addr: SocketAddr,
    certificate: RTCCertificate,
    conns: HashMap<ConnId, Conn>,
    by_addr: HashMap<SocketAddr, ConnId>,
    by_ufrag: HashMap<String, ConnId>,
    blackholed: HashSet<SocketAddr>,
    next_id: ConnId,
    next_slot: usize,
    commands: mpsc::Receiver<Command>,
    reports: tmpsc::UnboundedSender<Report>,
    stats: WorkerStats,
    ice_timeouts: (Duration, Duration),
    recv_buf: Vec<u8>,
}

/// A handle the async side uses: commands go in a channel, and an empty datagram wakes the
/// worker out of `recv_from` so it need not poll the channel on a short timer.
#[derive(Clone)]
pub struct WorkerHandle {
    pub addr: SocketAddr,
    tx: mpsc::Sender<Command>,
    waker: std::sync::Arc<UdpSocket>,
}

impl WorkerHandle {
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
        let _ = self.waker.send_to(&[], self.addr);
    }
}

fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[(rand::random::<u32>() as usize) % ALPHABET.len()] as char)
        .collect()
}

pub fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
        ..Default::default()
    }
}

/// Opus at PT 111 plus the RFC 6464 audio-level extension, nothing else.
pub fn audio_media_engine() -> rtc::shared::error::Result<MediaEngine> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(opus_codec(), RtpCodecKind::Audio)?;
    media_engine.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(media_engine)
}

/// Sender and receiver reports, and a tap so inbound reports reach `poll_read`.
pub fn report_registry() -> Registry {
    Registry::new()
        .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        .with(Slot::from(14_000), ReportTap::default())
}

pub fn generate_certificate() -> anyhow::Result<RTCCertificate> {
    let provider = rtc::crypto::default_provider().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let certificate = RTCCertificate::generate(
        provider.crypto(),
        SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec!["stoa".to_owned()])?,
    )?;
    Ok(certificate)
}

impl Worker {
    pub fn spawn(
        ice_timeouts: (Duration, Duration),
        reports: tmpsc::UnboundedSender<Report>,
    ) -> anyhow::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let local_addr = socket.local_addr()?;
        let t0 = Instant::now();
        let certificate = generate_certificate()?;
        println!("[worker] certificate generated once in {:?}", t0.elapsed());
        let (tx, rx) = mpsc::channel();
        let waker = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        let mut worker = Worker {
            socket,
            local_addr,
            certificate,
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            blackholed: HashSet::new(),
            next_id: 1,
            next_slot: 0,
            commands: rx,
            reports,
            stats: WorkerStats::default(),
            ice_timeouts,
            recv_buf: vec![0u8; 2048],
        };
        let join = std::thread::Builder::new()
            .name("media-worker".into())
            .spawn(move || worker.run())?;
        Ok((WorkerHandle { addr: local_addr, tx, waker }, join))
    }

    fn run(&mut self) {
        loop {
            while let Ok(cmd) = self.commands.try_recv() {
                if matches!(cmd, Command::Stop) {
                    for conn in self.conns.values_mut() {
                        let _ = conn.pc.close();
                    }
                    return;
                }
                self.handle_command(cmd);
            }

            let now = Instant::now();
            let due: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.next_timeout.is_some_and(|t| t <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                if let Some(conn) = self.conns.get_mut(&id) {
                    let _ = conn.pc.handle_timeout(now);
                }
                self.drain(id);
            }

            // A linear scan is fine for a prototype; a worker with thousands of connections
            // wants a timer wheel keyed by deadline.
            let next = self.conns.values().filter_map(|c| c.next_timeout).min();
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(500))
                .clamp(Duration::from_micros(200), Duration::from_millis(500));
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((0, _)) => {} // waker
                Ok((n, peer)) => self.handle_datagram(n, peer),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => eprintln!("[worker] recv error {e}"),
            }
        }
    }

    fn handle_datagram(&mut self, n: usize, peer: SocketAddr) {
        self.stats.datagrams_in += 1;
        if self.blackholed.contains(&peer) {
            self.stats.blackholed += 1;
            return;
        }
        let datagram = &self.recv_buf[..n];
        // STUN with a USERNAME is routed by ufrag every time: the peer may check from several
        // addresses (and a NAT rebinding changes it). Everything else goes by address.
        let id = match stun_route::server_ufrag(datagram).and_then(|u| self.by_ufrag.get(u)) {
            Some(&id) => {
                self.stats.routed_by_ufrag += 1;
                // The connection verifies MESSAGE-INTEGRITY itself; a forged request only maps
                // the forger's own address, whose packets the connection then rejects.
                self.by_addr.insert(peer, id);
                id
            }
            None => match self.by_addr.get(&peer) {
                Some(&id) => id,
                None => {
                    self.stats.unroutable += 1;
                    return;
                }
            },
        };
        let Some(conn) = self.conns.get_mut(&id) else { return };
        // rtc decrypts and surfaces RTP even on a transceiver we made send-only, so the
        // listener rule is enforced here, before any crypto; RTCP (its reports) still goes in.
        if conn.role == Role::Listener && stun_route::is_rtp(datagram) {
            self.stats.rtp_in_dropped_no_right += 1;
            return;
        }
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local_addr,
                peer_addr: peer,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(datagram),
        };
        if let Err(e) = conn.pc.handle_read(msg) {
            eprintln!("[worker] conn {id} handle_read: {e}");
        }
        self.drain(id);
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Join { role, offer, reply } => {
                let result = self.join(role, offer).map_err(|e| e.to_string());
                if let Ok((id, _)) = &result {
                    self.drain(*id);
                }
                let _ = reply.send(result);
            }
            Command::Renegotiate { conn, role, offer, reply } => {
                let result = self.renegotiate(conn, role, offer).map_err(|e| e.to_string());
                self.drain(conn);
                let _ = reply.send(result);
            }
            Command::RemoteCandidate { conn, candidate } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Err(e) = c.pc.add_remote_candidate(candidate) {
                        eprintln!("[worker] conn {conn} add_remote_candidate: {e}");
                    }
                }
                self.drain(conn);
            }
            Command::Blackhole { conn } => {
                let addrs: Vec<SocketAddr> = self
                    .by_addr
                    .iter()
                    .filter(|(_, c)| **c == conn)
                    .map(|(a, _)| *a)
                    .collect();
                self.blackholed.extend(addrs);
            }
            Command::Close { conn } => {
                if let Some(mut c) = self.conns.remove(&conn) {
                    let _ = c.pc.close();
                    while let Some(out) = c.pc.poll_write() {
                        let _ = self.socket.send_to(&out.message, out.transport.peer_addr);
                    }
                    self.by_ufrag.remove(&c.ufrag);
                    self.by_addr.retain(|_, id| *id != conn);
                }
            }
            Command::Stats { reply } => {
                let mut s = self.stats.clone();
                s.per_conn = self
                    .conns
                    .iter()
                    .map(|(id, c)| (*id, c.role, c.ice_state.to_string(), c.rtp_in, c.rr_in))
                    .collect();
                s.per_conn.sort_by_key(|p| p.0);
                let now = Instant::now();
                for (id, c) in self.conns.iter_mut() {
                    let report = c.pc.get_stats(now, rtc::statistics::StatsSelector::None);
                    if let Some(t) = report.transport() {
                        s.ciphers.push((*id, t.dtls_cipher.clone(), t.srtp_cipher.clone()));
                    }
                }
                s.ciphers.sort();
                let _ = reply.send(s);
            }
            Command::Stop => {}
        }
    }

    fn join(
        &mut self,
        role: Role,
        offer: RTCSessionDescription,
    ) -> anyhow::Result<(ConnId, RTCSessionDescription)> {
        let t0 = Instant::now();
        let ufrag = random_alnum(16);
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), random_alnum(32))
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // As DTLS server rtc takes the client's preference order; offering only GCM
            // forces it. The webrtc-rs client and browsers both support it.
            .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
            .with_ice_timeouts(
                Some(self.ice_timeouts.0),
                Some(self.ice_timeouts.1),
                Some(Duration::from_secs(2)),
            )
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()]) // shared: same key, same fingerprint
            .build(); // no ice_servers: nothing is gathered, no public STUN
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(setting_engine)
            .with_media_engine(audio_media_engine()?)
            .with_interceptor_registry(report_registry())
            .build(Instant::now())?;

        let id = self.next_id;
        self.next_id += 1;

        // One outbound track per slot, each with an SSRC of ours; added before the offer is
        // applied so the offered m-lines pair up with these transceivers.
        let mut slots = Vec::with_capacity(SLOTS);
        for slot in 0..SLOTS {
            let ssrc = rand::random::<u32>();
            let track = MediaStreamTrack::new(
                format!("stoa-{id}"),
                format!("slot-{slot}"),
                format!("slot-{slot}"),
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
            let sender = pc.add_track(track)?;
            slots.push(OutSlot { sender, ssrc, seq: rand::random::<u16>(), audio_level_id: None });
        }

        pc.set_remote_description(Instant::now(), offer)?;
        enforce_role(&mut pc, role);

        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.local_addr.ip().to_string(),
                port: self.local_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;

        let answer = pc.create_answer(None)?;
        pc.set_local_description(Instant::now(), answer)?;
        let local = pc
            .local_description()
            .ok_or_else(|| anyhow::anyhow!("no local description"))?;

        for slot in &mut slots {
            if let Some(mut sender) = pc.rtp_sender(slot.sender) {
                slot.audio_level_id = sender
                    .get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == AUDIO_LEVEL_URI)
                    .map(|h| h.id as u8);
            }
        }

        let speaks_on = self.assign_slot(role);
        self.by_ufrag.insert(ufrag.clone(), id);
        let next_timeout = pc.poll_timeout();
        self.conns.insert(
            id,
            Conn {
                pc,
                role,
                ufrag,
                slots,
                speaks_on,
                in_audio_level_id: None,
                ice_state: RTCIceConnectionState::New,
                media_ready: false,
                next_timeout,
                rtp_in: 0,
                rr_in: 0,
            },
        );
        println!("[worker] conn {id} ({role:?}) answered in {:?}", t0.elapsed());
        Ok((id, local))
    }

    fn assign_slot(&mut self, role: Role) -> Option<usize> {
        (role == Role::Speaker).then(|| {
            let s = self.next_slot % SLOTS;
            self.next_slot += 1;
            s
        })
    }

    fn renegotiate(
        &mut self,
        id: ConnId,
        role: Role,
        offer: RTCSessionDescription,
    ) -> anyhow::Result<RTCSessionDescription> {
        let speaks_on = if role == Role::Speaker {
            match self.conns.get(&id).and_then(|c| c.speaks_on) {
                Some(s) => Some(s),
                None => self.assign_slot(role),
            }
        } else {
            None
        };
        let conn = self.conns.get_mut(&id).ok_or_else(|| anyhow::anyhow!("no conn {id}"))?;
        let t0 = Instant::now();
        conn.pc.set_remote_description(Instant::now(), offer)?;
        enforce_role(&mut conn.pc, role);
        let answer = conn.pc.create_answer(None)?;
        conn.pc.set_local_description(Instant::now(), answer)?;
        conn.role = role;
        conn.speaks_on = speaks_on;
        println!("[worker] conn {id} renegotiated to {role:?} in {:?}", t0.elapsed());
        conn.pc
            .local_description()
            .ok_or_else(|| anyhow::anyhow!("no local description"))
    }

    /// Drain everything one connection has queued: datagrams, events, inbound media.
    fn drain(&mut self, id: ConnId) {
        let mut inbound: Vec<rtc::rtp::Packet> = Vec::new();
        {
            let Some(conn) = self.conns.get_mut(&id) else { return };
            while let Some(out) = conn.pc.poll_write() {
                self.stats.datagrams_out += 1;
                let _ = self.socket.send_to(&out.message, out.transport.peer_addr);
            }
            while let Some(event) = conn.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                        conn.ice_state = state;
                        let _ = self.reports.send(Report::Ice { conn: id, state, at: Instant::now() });
                    }
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                        conn.media_ready = state == RTCPeerConnectionState::Connected;
                        let _ = self.reports.send(Report::Peer { conn: id, state, at: Instant::now() });
                    }
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        if let Some(mut receiver) = conn.pc.rtp_receiver(init.receiver_id) {
                            conn.in_audio_level_id = receiver
                                .get_parameters()
                                .rtp_parameters
                                .header_extensions
                                .iter()
                                .find(|h| h.uri == AUDIO_LEVEL_URI)
                                .map(|h| h.id as u8);
                        }
                        println!(
                            "[worker] conn {id} OnTrack ssrc={} audio-level ext id={:?}",
                            init.ssrc, conn.in_audio_level_id
                        );
                    }
                    _ => {}
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = conn.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(_, packet) => {
                        conn.rtp_in += 1;
                        self.stats.rtp_in += 1;
                        if conn.role == Role::Speaker {
                            inbound.push(packet);
                        } else {
                            self.stats.rtp_in_dropped_no_right += 1;
                        }
                    }
                    RTCMessage::RtcpPacket(_, packets) => {
                        for p in &packets {
                            if let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() {
                                conn.rr_in += 1;
                                self.stats.receiver_reports += 1;
                                self.stats.last_rr = rr.reports.first().map(describe_report);
                            } else if p.as_any().downcast_ref::<SenderReport>().is_some() {
                                // the client's SR for its own upstream: not needed here
                            }
                        }
                    }
                    _ => {}
                }
            }
            conn.next_timeout = conn.pc.poll_timeout();
        }
        if !inbound.is_empty() {
            self.forward(id, inbound);
        }
    }

    /// Send a speaker's packets to every other connection on the speaker's slot.
    fn forward(&mut self, from: ConnId, packets: Vec<rtc::rtp::Packet>) {
        let (slot, level_id) = match self.conns.get(&from) {
            Some(c) => match c.speaks_on {
                Some(s) => (s, c.in_audio_level_id),
                None => return,
            },
            None => return,
        };
        let now = Instant::now();
        for packet in packets {
            let level = level_id.and_then(|lid| packet.header.get_extension(lid));
            if let Some(level) = &level {
                if let Some(&b) = level.first() {
                    self.stats.last_audio_level = Some((b & 0x7f, b & 0x80 != 0));
                    self.stats.audio_levels_seen += 1;
                }
            }
            for (&to, conn) in self.conns.iter_mut() {
                if to == from || !conn.media_ready {
                    continue;
                }
                let out = &mut conn.slots[slot];
                let mut p = packet.clone();
                p.header.ssrc = out.ssrc;
                p.header.payload_type = OPUS_PT;
                p.header.sequence_number = out.seq;
                out.seq = out.seq.wrapping_add(1);
                p.header.extension = false;
                p.header.extensions.clear();
                p.header.extensions_padding = 0;
                if let (Some(id), Some(level)) = (out.audio_level_id, &level) {
                    let _ = p.header.set_extension(id, Bytes::clone(level));
                }
                let sender = out.sender;
                match conn.pc.rtp_sender(sender).map(|mut s| s.write_rtp(now, p)) {
                    Some(Ok(())) => self.stats.forwarded += 1,
                    _ => self.stats.forward_errors += 1,
                }
                while let Some(out) = conn.pc.poll_write() {
                    self.stats.datagrams_out += 1;
                    let _ = self.socket.send_to(&out.message, out.transport.peer_addr);
                }
                conn.next_timeout = conn.pc.poll_timeout();
            }
        }
    }
}

/// A listener's connection gets no receiving path: whatever the client offered, every
/// transceiver is send-only on our side, so the answer says `recvonly` to the client.
pub fn enforce_role(pc: &mut RTCPeerConnection, role: Role) {
    let ids: Vec<_> = pc.get_transceivers().collect();
    for tid in ids {
        if let Some(mut t) = pc.rtp_transceiver(tid) {
            let wanted = match role {
                Role::Listener => RTCRtpTransceiverDirection::Sendonly,
                Role::Speaker => RTCRtpTransceiverDirection::Sendrecv,
            };
            if t.direction() != wanted {
                t.set_direction(wanted);
            }
        }
    }
}

fn describe_report(r: &ReceptionReport) -> String {
    format!(
        "ssrc={} fraction_lost={} total_lost={} last_seq={} jitter={}",
        r.ssrc, r.fraction_lost, r.total_lost, r.last_sequence_number, r.jitter
    )
}
