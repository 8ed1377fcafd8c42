//! A browser-like `rtc` client for tests and fuzz harnesses that connect to the media path in
//! memory (the worker core's tests, `fuzzing`). Not in a build that ships.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use super::engine;

/// The SSRC of the client's microphone.
pub const CLIENT_MIC_SSRC: u32 = 0x5354_4f41;

/// One DTLS certificate for every test connection, as `Media::start` makes one per process
/// (making one costs milliseconds).
pub fn certificate() -> RTCCertificate {
    static CERTIFICATE: OnceLock<RTCCertificate> = OnceLock::new();
    CERTIFICATE
        .get_or_init(|| engine::certificate().expect("a certificate"))
        .clone()
}

/// A browser-like offerer at `addr`: a microphone and `slots - 1` receive-only sections.
pub fn client_offerer(now: Instant, addr: SocketAddr) -> anyhow::Result<RTCPeerConnection> {
    let registry = rtc::interceptor::Registry::new()
        .with(
            rtc::interceptor::Slot::ReceiverReport,
            rtc::interceptor::ReceiverReportBuilder::new().build(),
        )
        .with(
            rtc::interceptor::Slot::SenderReport,
            rtc::interceptor::SenderReportBuilder::new().build(),
        );
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![certificate()])
                .build(),
        )
        .with_media_engine(engine::media_engine_with(true)?)
        .with_interceptor_registry(registry)
        .build(now)?;
    pc.add_track(rtc::media_stream::MediaStreamTrack::new(
        "test-mic".to_owned(),
        "mic".to_owned(),
        "mic".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(CLIENT_MIC_SSRC),
                ..Default::default()
            },
            codec: engine::opus_codec().rtp_codec,
            ..Default::default()
        }],
    ))?;
    for _ in 1..crate::config::MediaSettings::default().slots {
        pc.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )?;
    }
    engine::add_host_candidate(&mut pc, addr)?;
    Ok(pc)
}

/// The client's microphone packet number `seq`: an 80-byte Opus frame at Opus's payload type.
pub fn mic_packet(seq: u16) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: engine::OPUS_PT,
            sequence_number: seq,
            timestamp: u32::from(seq) * 960,
            ssrc: CLIENT_MIC_SSRC,
            ..Default::default()
        },
        payload: bytes::Bytes::from_static(&[0xfc; 80]),
    }
}
