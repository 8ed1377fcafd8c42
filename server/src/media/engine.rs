//! How every server-side `rtc` connection is configured: Opus only, the audio-level extension,
//! ICE-lite with our own credentials, DTLS server with AES-GCM SRTP, one shared certificate,
//! sender and receiver reports, and a tap that lets the reports reach the worker.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::crypto::{RTCCryptoProvider, SignatureScheme};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{
    Attribute, Interceptor, Packet, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
    StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::header::PacketType;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Chromium's payload type for Opus; matching it keeps answers and forwarded packets simple.
pub const OPUS_PT: u8 = 111;
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Opus as browsers offer it: 48 kHz, stereo in SDP (mono inside is fine), in-band FEC.
pub fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
    }
}

/// Opus plus RFC 6464 audio levels and nothing else, so answers stay short.
pub fn media_engine() -> Result<MediaEngine, Error> {
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

/// Receiver reports for what speakers send us, sender reports on every slot we send, and the
/// tap. No NACK or congestion-control interceptors: audio at 20 ms needs neither.
pub fn registry() -> Registry {
    Registry::new()
        .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        .with(Slot::from(14_000), ReportTap::default())
}

/// ICE-lite, our ufrag (the routing key), GCM only, server side of DTLS.
pub fn setting_engine(
    ufrag: String,
    password: String,
    disconnected: Duration,
    failed: Duration,
) -> SettingEngine {
    SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag, password)
        .with_answering_dtls_role(RTCDtlsRole::Server)
        // As DTLS server `rtc` follows the client's order; offering only GCM makes browsers
        // use it, and it is the cheaper of the two per packet.
        .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
        .with_ice_timeouts(
            Some(disconnected),
            Some(failed),
            Some(Duration::from_secs(2)),
        )
        .build()
}

/// What one answering connection is built from.
pub struct AnswerSetup {
    pub certificate: RTCCertificate,
    /// Our ICE credentials: the ufrag is how binding requests find the connection.
    pub ufrag: String,
    pub password: String,
    pub ice_disconnected: Duration,
    pub ice_failed: Duration,
    /// The connection's crypto provider (a `srtp::KeyTap` in the worker).
    pub crypto: Arc<dyn RTCCryptoProvider>,
    /// One sending slot per SSRC, in order.
    pub ssrcs: Vec<u32>,
    /// The media stream id of our tracks.
    pub stream: String,
    /// The host candidate put in the answer.
    pub advertised: SocketAddr,
}

/// The server side of a new connection: the configuration above, one sending track per slot
/// (added first, so the offered sections pair with them in order), the offer, directions by
/// stage, our host candidate, and the answer set as local description. Returns the connection
/// and its slots' senders.
pub fn answer(
    setup: AnswerSetup,
    offer: RTCSessionDescription,
    on_stage: bool,
    now: Instant,
) -> anyhow::Result<(RTCPeerConnection, Vec<RTCRtpSenderId>)> {
    let mut setting_engine = setting_engine(
        setup.ufrag,
        setup.password,
        setup.ice_disconnected,
        setup.ice_failed,
    );
    setting_engine.set_crypto_provider(setup.crypto);
    let config = RTCConfigurationBuilder::new()
        .with_certificates(vec![setup.certificate])
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(setting_engine)
        .with_media_engine(media_engine()?)
        .with_interceptor_registry(registry())
        .build(now)?;
    let mut senders = Vec::with_capacity(setup.ssrcs.len());
    for (index, &ssrc) in setup.ssrcs.iter().enumerate() {
        let track = MediaStreamTrack::new(
            setup.stream.clone(),
            format!("slot-{index}"),
            format!("slot-{index}"),
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
        senders.push(pc.add_track(track)?);
    }
    pc.set_remote_description(now, offer)?;
    set_directions(&mut pc, on_stage);
    add_host_candidate(&mut pc, setup.advertised)?;
    let answer = pc.create_answer(None)?;
    pc.set_local_description(now, answer)?;
    anyhow::ensure!(
        pc.local_description().is_some(),
        "no local description after answering"
    );
    Ok((pc, senders))
}

/// Adds our one host candidate (UDP, `addr`) to a connection; clients built by the test tools
/// use it too.
pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> anyhow::Result<()> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    Ok(())
}

/// A new offer on an existing connection (the person joined or left the stage): directions
/// by stage, and a new answer.
pub fn reanswer(
    pc: &mut RTCPeerConnection,
    offer: RTCSessionDescription,
    on_stage: bool,
    now: Instant,
) -> anyhow::Result<String> {
    pc.set_remote_description(now, offer)?;
    set_directions(pc, on_stage);
    let answer = pc.create_answer(None)?;
    pc.set_local_description(now, answer)?;
    local_sdp(pc)
}

/// The answer a connection gives, to send back to the client.
pub fn local_sdp(pc: &RTCPeerConnection) -> anyhow::Result<String> {
    Ok(pc
        .local_description()
        .ok_or_else(|| anyhow::anyhow!("no local description after answering"))?
        .sdp
        .clone())
}

/// Our side of each audio section: every slot sends; the first section also receives when the
/// participant is on stage. A listener's answer therefore says `a=sendonly` everywhere (the
/// client only receives).
fn set_directions(pc: &mut RTCPeerConnection, on_stage: bool) {
    let ids: Vec<_> = pc.get_transceivers().collect();
    for (index, id) in ids.into_iter().enumerate() {
        if let Some(mut transceiver) = pc.rtp_transceiver(id) {
            let wanted = if index == 0 && on_stage {
                RTCRtpTransceiverDirection::Sendrecv
            } else {
                RTCRtpTransceiverDirection::Sendonly
            };
            if transceiver.direction() != wanted {
                transceiver.set_direction(wanted);
            }
        }
    }
}

/// The one DTLS certificate all connections of this process present.
pub fn certificate() -> anyhow::Result<RTCCertificate> {
    let provider = rtc::crypto::default_provider()
        .map_err(|e| anyhow::anyhow!("no crypto provider: {e:?}"))?;
    let certificate = RTCCertificate::generate(
        provider.crypto(),
        SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec!["stoa".to_owned()])?,
    )?;
    Ok(certificate)
}

/// `rtc`'s interceptor chain ends in a terminus that drops every inbound RTCP packet unless
/// an interceptor marked it for the application. This one marks sender and receiver reports
/// (after the report interceptors have seen them) and changes nothing else.
#[derive(Default)]
pub struct ReportTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_report(packet: &Packet) -> bool {
    match packet {
        Packet::Rtcp(packets) => packets.iter().any(|p| {
            let kind = p.header().packet_type;
            kind == PacketType::ReceiverReport || kind == PacketType::SenderReport
        }),
        _ => false,
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReportTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if is_report(&msg.message.packet) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for ReportTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
