//! How every server-side `rtc` connection is configured: Opus only, the audio-level extension,
//! ICE-lite with our own credentials, DTLS server with AES-GCM SRTP, one shared certificate,
//! sender and receiver reports, and a tap that lets the reports reach the worker.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::crypto::{RTCCryptoProvider, SignatureScheme};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{
    Attribute, Interceptor, Packet, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
    StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
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

use super::answer::{self, Plan, finish};
use super::offer::{Direction, Offer};
use rtc::shared::error::Error;

/// Opus's payload type in our own media engine (Chromium's). Each connection answers with the
/// type its client offered ([`SlotSender::payload_type`], [`Inbound::payload_type`]).
pub const OPUS_PT: u8 = 111;
/// RED's (RFC 2198) payload type in our own media engine (Chromium's); as with Opus, each
/// connection uses the type its client offered.
pub const RED_PT: u8 = 63;
pub const MIME_TYPE_RED: &str = "audio/red";
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

/// RED carrying Opus, as Chromium offers it: the fmtp names the payload type of each block
/// (the primary and one earlier frame); any count of Opus blocks matches it.
pub fn red_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_RED.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: format!("{OPUS_PT}/{OPUS_PT}"),
            rtcp_feedback: vec![],
        },
        payload_type: RED_PT,
    }
}

/// Opus plus RFC 6464 audio levels and nothing else, so answers stay short.
pub fn media_engine() -> Result<MediaEngine, Error> {
    media_engine_with(false)
}

/// [`media_engine`], with RED over Opus when `red` (the server's, with `[media] red` > 0).
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
    /// SSRCs for the slots, in order: at most this many slots are sent.
    pub ssrcs: Vec<u32>,
    /// The media stream id of our tracks.
    pub stream: String,
    /// The host candidate put in the answer.
    pub advertised: SocketAddr,
    /// The passive ICE-TCP host candidate (RFC 6544), when the worker listens on TCP.
    pub advertised_tcp: Option<SocketAddr>,
    /// Negotiate RED over Opus with clients that offer it.
    pub red: bool,
}

/// One slot this connection sends: on which sender, with which SSRC and payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSender {
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    /// Opus as this client numbered it (111 in Chromium, 109 in Firefox, 96 in aiortc).
    pub payload_type: u8,
    /// RED over Opus as this client numbered it, when negotiated (63 in Chromium): the slot
    /// then sends RED.
    pub red_payload_type: Option<u8>,
}

/// What the client's microphone section negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub payload_type: u8,
    /// RED over Opus, when negotiated: the client may send either.
    pub red_payload_type: Option<u8>,
    /// The offer said `vad=off` on the audio-level extension: the V bit means nothing.
    pub vad_off: bool,
}

/// An answer and what the worker needs to serve it.
#[derive(Clone, Debug)]
pub struct Answered {
    pub sdp: String,
    pub plan: Plan,
    /// The slots, in slot order.
    pub slots: Vec<SlotSender>,
    pub inbound: Option<Inbound>,
}

impl Answered {
    /// The server receives this client's audio (its microphone section, on stage).
    pub fn receives(&self) -> bool {
        self.plan.receives()
    }
}

/// The server side of a new connection: the configuration above, one sending track per slot
/// the offer can receive (added first, so `rtc` pairs them with the receiving sections in
/// order), the offer, each section's direction from the [`Plan`], our host candidate, and the
/// answer set as local description.
pub fn answer(
    setup: AnswerSetup,
    offer: Offer,
    on_stage: bool,
    now: Instant,
) -> anyhow::Result<(RTCPeerConnection, Answered)> {
    let plan = Plan::new(&offer.sections, setup.ssrcs.len(), on_stage);
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
        .with_media_engine(media_engine_with(setup.red)?)
        .with_interceptor_registry(registry())
        .build(now)?;
    for (index, &ssrc) in setup.ssrcs.iter().take(plan.slot_count()).enumerate() {
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
        pc.add_track(track)?;
    }
    let candidates = Candidates {
        udp: setup.advertised,
        tcp: setup.advertised_tcp,
    };
    let answered = apply_offer(&mut pc, offer, plan, Some(candidates), now)?;
    Ok((pc, answered))
}

/// The server's candidates for one connection: its worker's UDP address and, when it listens
/// on TCP, a passive ICE-TCP one (lower priority: UDP wins wherever it gets through).
#[derive(Clone, Copy, Debug)]
struct Candidates {
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
}

/// Adds our one host candidate (UDP, `addr`) to a connection; clients built by the test tools
/// use it too.
/// The id the client gave the audio-level extension on a receiver's stream, if negotiated.
pub fn audio_level_id(
    pc: &mut RTCPeerConnection,
    receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
) -> Option<u8> {
    pc.rtp_receiver(receiver).and_then(|mut receiver| {
        receiver
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == AUDIO_LEVEL_URI)
            .map(|h| h.id as u8)
    })
}

pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> anyhow::Result<()> {
    add_candidate(pc, addr, "udp", TcpType::Unspecified)
}

/// Adds a passive ICE-TCP host candidate (RFC 6544): clients connect to it.
pub fn add_tcp_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> anyhow::Result<()> {
    add_candidate(pc, addr, "tcp", TcpType::Passive)
}

fn add_candidate(
    pc: &mut RTCPeerConnection,
    addr: SocketAddr,
    network: &str,
    tcp_type: TcpType,
) -> anyhow::Result<()> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type,
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    Ok(())
}

/// A new offer on an existing connection (the person joined or left the stage, or the client
/// changed its sections). Slots stay on the sections that already carry them; a receiving
/// section the client adds later gets no slot (it is rejected) unless it reuses a sender.
pub fn reanswer(
    pc: &mut RTCPeerConnection,
    offer: Offer,
    slots: usize,
    on_stage: bool,
    now: Instant,
) -> anyhow::Result<Answered> {
    let plan = Plan::new(&offer.sections, slots, on_stage);
    apply_offer(pc, offer, plan, None, now)
}

/// Applies `offer` to `pc`, sets every transceiver's direction from the plan (by mid), adds
/// `candidates` (on the first answer), answers, and reads back which sender carries which slot
/// with which payload type.
fn apply_offer(
    pc: &mut RTCPeerConnection,
    offer: Offer,
    mut plan: Plan,
    candidates: Option<Candidates>,
    now: Instant,
) -> anyhow::Result<Answered> {
    pc.set_remote_description(now, offer.description.clone())?;
    if let Some(candidates) = candidates {
        add_host_candidate(pc, candidates.udp)?;
        if let Some(tcp) = candidates.tcp {
            add_tcp_candidate(pc, tcp)?;
        }
    }
    // Each slot's sender, and RED's payload type in its offered section (if usable there).
    let mut slots: Vec<Option<(RTCRtpSenderId, Option<u8>)>> = vec![None; plan.slot_count()];
    let ids: Vec<_> = pc.get_transceivers().collect();
    for id in ids {
        let Some(mut transceiver) = pc.rtp_transceiver(id) else {
            continue;
        };
        let Some(index) = transceiver.mid().as_deref().and_then(|mid| {
            plan.sections
                .iter()
                .position(|s| s.mid.as_deref() == Some(mid))
        }) else {
            continue;
        };
        let sender = transceiver.sender();
        let section = &mut plan.sections[index];
        if section.slot.is_some() && sender.is_none() {
            // A receiving section this connection has no track for (added in a later offer):
            // it cannot carry a slot.
            section.slot = None;
            section.answer = section
                .mic
                .then(|| Direction::from_flags(false, section.receives));
        }
        let wanted = match section.answer {
            Some(direction) => direction_of(direction),
            None => RTCRtpTransceiverDirection::Inactive,
        };
        if transceiver.direction() != wanted {
            transceiver.set_direction(wanted);
        }
        if let (Some(slot), Some(sender)) = (section.slot, sender) {
            slots[slot] = Some((sender, offer.sections[index].red_pt));
        }
    }
    let answer = pc.create_answer(None)?;
    pc.set_local_description(now, answer)?;
    let sdp = finish(&local_sdp(pc)?, &offer, &plan)?;
    // What `rtc` negotiated for each slot's sender: the SSRC of its track and Opus's (and RED's)
    // payload type on that leg (the ones `write_rtp` accepts, and so the ones the lean path must
    // use).
    let mut senders = Vec::with_capacity(slots.len());
    for (id, offered_red) in slots.into_iter().flatten() {
        let mut sender = pc
            .rtp_sender(id)
            .ok_or_else(|| anyhow::anyhow!("a slot's sender is gone"))?;
        let parameters = sender.get_parameters();
        let ssrc = parameters
            .encodings
            .iter()
            .find_map(|e| e.rtp_coding_parameters.ssrc)
            .ok_or_else(|| anyhow::anyhow!("a slot's sender has no SSRC"))?;
        let payload_type = parameters
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
            .map(|c| c.payload_type)
            .ok_or_else(|| anyhow::anyhow!("Opus was not negotiated on a slot"))?;
        let red_payload_type = offered_red.filter(|&red| {
            parameters.rtp_parameters.codecs.iter().any(|c| {
                c.payload_type == red && c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_RED)
            })
        });
        senders.push(SlotSender {
            sender: id,
            ssrc,
            payload_type,
            red_payload_type,
        });
    }
    let inbound = inbound_of(&plan, &offer, &sdp);
    Ok(Answered {
        sdp,
        plan,
        slots: senders,
        inbound,
    })
}

/// What the microphone section of `offer` negotiated in the answer `sdp`, if there is one.
pub fn inbound_of(plan: &Plan, offer: &Offer, sdp: &str) -> Option<Inbound> {
    let mic = plan.mic()?;
    let offered = offer
        .sections
        .iter()
        .find(|s| s.mid.is_some() && s.mid == mic.mid)?;
    Some(Inbound {
        payload_type: offered.opus_pt?,
        red_payload_type: offered
            .red_pt
            .filter(|&red| answer::answers_format(sdp, mic.mid.as_deref(), red)),
        vad_off: offered.vad_off,
    })
}

fn direction_of(direction: Direction) -> RTCRtpTransceiverDirection {
    match direction {
        Direction::SendRecv => RTCRtpTransceiverDirection::Sendrecv,
        Direction::SendOnly => RTCRtpTransceiverDirection::Sendonly,
        Direction::RecvOnly => RTCRtpTransceiverDirection::Recvonly,
        Direction::Inactive => RTCRtpTransceiverDirection::Inactive,
    }
}

/// The answer a connection gives, as `rtc` wrote it.
pub fn local_sdp(pc: &RTCPeerConnection) -> anyhow::Result<String> {
    Ok(pc
        .local_description()
        .ok_or_else(|| anyhow::anyhow!("no local description after answering"))?
        .sdp
        .clone())
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
    read: Passing,
    write: Passing,
}

/// The packets an interceptor holds between `handle_*` and `poll_*`. The chain polls right
/// after each packet it hands over, so there is at most one: it waits in `next`, which needs no
/// allocation (a `VecDeque` grows to four 228-byte packets and keeps them, ~1.8 KiB per
/// connection for the two directions). `more` is there for a chain that hands over several.
#[derive(Default)]
struct Passing {
    next: Option<TaggedPacket>,
    more: VecDeque<TaggedPacket>,
}

impl Passing {
    fn push(&mut self, packet: TaggedPacket) {
        if self.next.is_none() && self.more.is_empty() {
            self.next = Some(packet);
        } else {
            self.more.push_back(packet);
        }
    }

    fn pop(&mut self) -> Option<TaggedPacket> {
        self.next.take().or_else(|| self.more.pop_front())
    }
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
        self.read.push(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.write.push(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::answer::answer_problems;
    use crate::media::offer::check_offer;
    use crate::media::offer::tests::{Shape, offer_sdp};
    use crate::media::srtp::KeyTap;
    use Direction::*;

    fn setup(slots: usize, red: bool) -> AnswerSetup {
        static CERTIFICATE: std::sync::OnceLock<RTCCertificate> = std::sync::OnceLock::new();
        let provider = rtc::crypto::default_provider().unwrap();
        AnswerSetup {
            certificate: CERTIFICATE.get_or_init(|| certificate().unwrap()).clone(),
            ufrag: "stoaTestUfrag012".to_owned(),
            password: "stoaTestPassword0123456789abcdef".to_owned(),
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(15),
            crypto: KeyTap::new(provider),
            ssrcs: (0..slots as u32).map(|i| 7000 + i).collect(),
            stream: "stoa-test".to_owned(),
            advertised: "127.0.0.1:40000".parse().unwrap(),
            advertised_tcp: Some("127.0.0.1:40000".parse().unwrap()),
            red,
        }
    }

    fn answered(sdp: &str, slots: usize, on_stage: bool) -> (RTCPeerConnection, Answered) {
        answered_with(sdp, slots, on_stage, true)
    }

    fn answered_with(
        sdp: &str,
        slots: usize,
        on_stage: bool,
        red: bool,
    ) -> (RTCPeerConnection, Answered) {
        let offer = check_offer(sdp.to_owned()).unwrap();
        answer(setup(slots, red), offer, on_stage, Instant::now())
            .unwrap_or_else(|e| panic!("{e}\n{sdp}"))
    }

    const LEVEL: &str = "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level";
    const LEVEL_VAD_OFF: &str = "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=off";

    /// The m= line of the section with this mid.
    fn m_line<'a>(sdp: &'a str, mid: &str) -> &'a str {
        sdp.split("m=")
            .find(|s| s.contains(&format!("a=mid:{mid}\r\n")))
            .and_then(|s| s.lines().next())
            .unwrap()
    }

    /// Directions × payload types × fmtp × extensions × stage × RED (not offered; offered to a
    /// server that negotiates it; offered to one that does not), each answered by the real
    /// connection builder and checked against RFC 3264 and Stoa's own promises.
    #[test]
    fn every_offer_shape_gets_a_valid_answer() {
        let shapes: &[&[Direction]] = &[
            &[RecvOnly, RecvOnly, RecvOnly],
            &[SendRecv, RecvOnly, RecvOnly],
            &[SendOnly, RecvOnly, RecvOnly, RecvOnly],
            &[SendOnly, RecvOnly, RecvOnly],
            &[SendOnly],
            &[RecvOnly],
            &[SendRecv],
            &[RecvOnly, RecvOnly, RecvOnly, RecvOnly, RecvOnly],
            &[SendOnly, SendOnly, RecvOnly],
            &[Inactive, RecvOnly, SendRecv],
        ];
        // (RED's payload type in the offer, the server negotiates RED)
        let reds = [(None, true), (Some(63u8), true), (Some(63), false)];
        let mut answers = 0;
        for directions in shapes {
            for pt in [111u8, 109, 96] {
                for fmtp in [true, false] {
                    for ext in [Some(LEVEL), Some(LEVEL_VAD_OFF), None] {
                        for on_stage in [false, true] {
                            for (red, server_red) in reds {
                                check_shape(directions, pt, fmtp, ext, on_stage, red, server_red);
                                answers += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(answers, 10 * 3 * 2 * 3 * 2 * 3);
    }

    fn check_shape(
        directions: &[Direction],
        pt: u8,
        fmtp: bool,
        ext: Option<&str>,
        on_stage: bool,
        red: Option<u8>,
        server_red: bool,
    ) {
        let sdp = offer_sdp(
            &directions
                .iter()
                .map(|&d| Shape {
                    pt,
                    red,
                    direction: Some(d),
                    fmtp,
                    ext,
                    ..Shape::default()
                })
                .collect::<Vec<_>>(),
        );
        let case = format!(
            "{directions:?} pt {pt} fmtp {fmtp} ext {ext:?} on stage {on_stage} red {red:?} \
             (server {server_red})"
        );
        let (_pc, a) = answered_with(&sdp, 3, on_stage, server_red);
        let problems = answer_problems(&sdp, &a.sdp);
        assert!(problems.is_empty(), "{case}: {problems:?}\n{}", a.sdp);
        assert_eq!(a.slots.len(), a.plan.slot_count(), "{case}");
        let receiving = directions.iter().filter(|d| d.receives()).count();
        assert_eq!(a.slots.len(), receiving.min(3), "{case}");
        assert!(a.slots.iter().all(|s| s.payload_type == pt), "{case}");
        let negotiated_red = red.filter(|_| server_red);
        assert!(
            a.slots.iter().all(|s| s.red_payload_type == negotiated_red),
            "{case}: {:?}",
            a.slots
        );
        assert_eq!(
            a.sdp.contains("red/48000/2"),
            negotiated_red.is_some(),
            "{case}"
        );
        let ssrcs: Vec<u32> = a.slots.iter().map(|s| s.ssrc).collect();
        let mut unique = ssrcs.clone();
        unique.dedup();
        assert_eq!(unique.len(), ssrcs.len(), "{case}");
        // Each slot's SSRC is announced in its own section, and only there.
        for (slot, sender) in a.slots.iter().enumerate() {
            let mid = a
                .plan
                .sections
                .iter()
                .find(|s| s.slot == Some(slot))
                .and_then(|s| s.mid.clone())
                .unwrap();
            let section = a
                .sdp
                .split("m=audio")
                .find(|s| s.contains(&format!("a=mid:{mid}\r\n")))
                .unwrap();
            assert!(
                section.contains(&format!("a=ssrc:{} ", sender.ssrc)),
                "{case}: slot {slot} not in section {mid}\n{}",
                a.sdp
            );
        }
        let mic = directions.iter().position(|d| d.sends());
        assert_eq!(a.inbound.map(|i| i.payload_type), mic.map(|_| pt), "{case}");
        assert_eq!(
            a.inbound.map(|i| i.red_payload_type),
            mic.map(|_| negotiated_red),
            "{case}"
        );
        if let (Some(red), Some(mic)) = (negotiated_red, a.plan.mic()) {
            // RED first, so that a browser sends it.
            let line = m_line(&a.sdp, mic.mid.as_deref().unwrap());
            assert!(
                line.ends_with(&format!("SAVPF {red} {pt}")),
                "{case}: {line}"
            );
        }
        assert_eq!(
            a.inbound.map(|i| i.vad_off),
            mic.map(|_| ext == Some(LEVEL_VAD_OFF)),
            "{case}"
        );
        assert_eq!(a.receives(), mic.is_some() && on_stage, "{case}");
    }

    #[test]
    fn chromiums_offer_is_answered_with_red_preferred_over_opus() {
        let (_pc, a) = answered(crate::fuzzing::BROWSER_OFFER, 3, true);
        assert_eq!(
            answer_problems(crate::fuzzing::BROWSER_OFFER, &a.sdp),
            Vec::<String>::new()
        );
        for mid in ["0", "1", "2"] {
            assert!(m_line(&a.sdp, mid).ends_with("SAVPF 63 111"), "{}", a.sdp);
        }
        assert!(a.sdp.contains("a=fmtp:63 111/111\r\n"), "{}", a.sdp);
        assert_eq!(a.slots.len(), 3);
        assert!(a.slots.iter().all(|s| s.red_payload_type == Some(63)));
        assert_eq!(a.inbound.and_then(|i| i.red_payload_type), Some(63));
        assert!(a.receives());
        // With RED off on the server: Opus only, as before.
        let (_pc, a) = answered_with(crate::fuzzing::BROWSER_OFFER, 3, true, false);
        assert_eq!(
            answer_problems(crate::fuzzing::BROWSER_OFFER, &a.sdp),
            Vec::<String>::new()
        );
        assert!(!a.sdp.contains("red/48000"), "{}", a.sdp);
        assert!(a.slots.iter().all(|s| s.red_payload_type.is_none()));
    }

    #[test]
    fn the_tap_passes_packets_on_in_order_however_many_wait() {
        let packet = |seq: u16| TaggedPacket {
            now: Instant::now(),
            transport: Default::default(),
            message: Packet::Rtp(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    sequence_number: seq,
                    ..Default::default()
                },
                ..Default::default()
            })
            .into(),
        };
        let seq = |p: Option<TaggedPacket>| match p.map(|p| p.message.packet) {
            Some(Packet::Rtp(rtp)) => Some(rtp.header.sequence_number),
            _ => None,
        };
        let mut tap = ReportTap::default();
        tap.handle_write(packet(1)).unwrap();
        assert_eq!(seq(tap.poll_write()), Some(1));
        for n in 2..=4 {
            tap.handle_write(packet(n)).unwrap();
        }
        assert_eq!(seq(tap.poll_write()), Some(2));
        tap.handle_write(packet(5)).unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| seq(tap.poll_write())).collect();
        assert_eq!(rest, [3, 4, 5]);
        assert!(tap.poll_read().is_none());
    }

    #[test]
    fn a_video_section_is_rejected_and_audio_still_answered() {
        let sdp = offer_sdp(&[
            Shape {
                direction: Some(SendRecv),
                ..Shape::default()
            },
            Shape {
                kind: "video",
                codec: "VP8/90000",
                pt: 96,
                direction: Some(SendRecv),
                ..Shape::default()
            },
        ]);
        let (_pc, a) = answered(&sdp, 3, true);
        assert_eq!(answer_problems(&sdp, &a.sdp), Vec::<String>::new());
        assert!(a.sdp.contains("m=video 0 "), "{}", a.sdp);
        assert_eq!(a.slots.len(), 1);
    }

    #[test]
    fn renegotiating_onto_the_stage_keeps_the_slots() {
        let listener: Vec<Shape<'_>> = (0..3).map(|_| Shape::default()).collect();
        let (mut pc, first) = answered(&offer_sdp(&listener), 3, false);
        assert!(!first.receives());
        let mut speaker = listener;
        speaker[0].direction = Some(SendRecv);
        let sdp = offer_sdp(&speaker);
        let offer = check_offer(sdp.clone()).unwrap();
        let again = reanswer(&mut pc, offer, 3, true, Instant::now()).unwrap();
        assert_eq!(answer_problems(&sdp, &again.sdp), Vec::<String>::new());
        assert!(again.receives());
        assert_eq!(
            again.slots, first.slots,
            "same senders, SSRCs and payload types"
        );
        // And back to the audience.
        let back = check_offer(offer_sdp(
            &(0..3).map(|_| Shape::default()).collect::<Vec<_>>(),
        ))
        .unwrap();
        let off = reanswer(&mut pc, back, 3, false, Instant::now()).unwrap();
        assert!(!off.receives());
        assert_eq!(off.slots, first.slots);
    }
}
