//! How every server-side `rtc` connection is configured: Opus only, the audio-level extension,
//! ICE-lite with our own credentials, DTLS server with AES-GCM SRTP, one shared certificate,
//! sender and receiver reports, and a tap that lets the reports reach the worker.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::crypto::SignatureScheme;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{
    Attribute, Interceptor, Packet, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
    StreamInfo, TaggedPacket,
};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::header::PacketType;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
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
