//! In-memory timing of the forward path: M listener connections (server side `rtc`, lite),
//! each paired with an `rtc` client in memory; no sockets. Compared with a bare SRTP encrypt.

use crate::worker::{
    audio_media_engine, generate_certificate, opus_codec, report_registry, AUDIO_LEVEL_URI, OPUS_PT,
};
use bytes::{Bytes, BytesMut};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Pair {
    server: RTCPeerConnection,
    client: RTCPeerConnection,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    level_id: Option<u8>,
}

fn host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> anyhow::Result<()> {
    let c = CandidateHostConfig {
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
    pc.add_local_candidate(RTCIceCandidate::from(&c).to_json()?)?;
    Ok(())
}

fn deliver(from: &mut RTCPeerConnection, to: &mut RTCPeerConnection, from_addr: SocketAddr, to_addr: SocketAddr, now: Instant) -> usize {
    let mut n = 0;
    while let Some(out) = from.poll_write() {
        n += 1;
        let _ = to.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: to_addr,
                peer_addr: from_addr,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: out.message,
        });
    }
    n
}

fn connected(pc: &mut RTCPeerConnection, flag: &mut bool) {
    while let Some(e) = pc.poll_event() {
        if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected) = e {
            *flag = true;
        }
    }
}

fn make_pair(i: usize, cert: &RTCCertificate) -> anyhow::Result<Pair> {
    make_pair_with(i, cert, false).map(|(p, _)| p)
}

/// `rogue`: the client offers a microphone (sendrecv) but the server applies the listener
/// role. Returns the client's sender so the caller can push RTP anyway.
fn make_pair_with(i: usize, cert: &RTCCertificate, rogue: bool) -> anyhow::Result<(Pair, Option<(RTCRtpSenderId, u32)>)> {
    let server_addr: SocketAddr = "127.0.0.1:40000".parse()?;
    let client_addr: SocketAddr = format!("127.0.0.1:{}", 20000 + i).parse()?;

    let mut client = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(audio_media_engine()?)
        .with_interceptor_registry(report_registry())
        .build(Instant::now())?;
    let mut client_mic = None;
    if rogue {
        let ssrc = rand::random::<u32>();
        let id = client.add_track(MediaStreamTrack::new(
            "c".into(),
            "mic".into(),
            "mic".into(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec: opus_codec().rtp_codec,
                ..Default::default()
            }],
        ))?;
        client_mic = Some((id, ssrc));
    } else {
        client.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
        )?;
    }
    let offer = client.create_offer(None)?;
    client.set_local_description(Instant::now(), offer)?;
    host_candidate(&mut client, client_addr)?;
    let offer = client.local_description().unwrap();

    let mut server = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().with_certificates(vec![cert.clone()]).build())
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_lite(true)
                .with_answering_dtls_role(RTCDtlsRole::Server)
                .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
                .build(),
        )
        .with_media_engine(audio_media_engine()?)
        .with_interceptor_registry(report_registry())
        .build(Instant::now())?;
    let ssrc = rand::random::<u32>();
    let sender = server.add_track(MediaStreamTrack::new(
        "s".into(),
        "slot-0".into(),
        "slot-0".into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: opus_codec().rtp_codec,
            ..Default::default()
        }],
    ))?;
    server.set_remote_description(Instant::now(), offer)?;
    crate::worker::enforce_role(&mut server, crate::worker::Role::Listener);
    host_candidate(&mut server, server_addr)?;
    let answer = server.create_answer(None)?;
    server.set_local_description(Instant::now(), answer)?;
    client.set_remote_description(Instant::now(), server.local_description().unwrap())?;
    let level_id = server.rtp_sender(sender).and_then(|mut s| {
        s.get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == AUDIO_LEVEL_URI)
            .map(|h| h.id as u8)
    });

    let (mut c_ok, mut s_ok) = (false, false);
    let start = Instant::now();
    while !(c_ok && s_ok) {
        let now = Instant::now();
        let _ = client.handle_timeout(now);
        let _ = server.handle_timeout(now);
        let moved = deliver(&mut client, &mut server, client_addr, server_addr, now)
            + deliver(&mut server, &mut client, server_addr, client_addr, now);
        connected(&mut client, &mut c_ok);
        connected(&mut server, &mut s_ok);
        if moved == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "pair {i} did not connect");
    }
    while server.poll_read().is_some() {}
    while client.poll_read().is_some() {}
    Ok((Pair { server, client, server_addr, client_addr, sender, ssrc, seq: 0, level_id }, client_mic))
}

/// A listener that sends anyway: does any of it reach the server application?
pub fn rogue() -> anyhow::Result<()> {
    let cert = generate_certificate()?;
    for filter in [false, true] {
    let (mut pair, mic) = make_pair_with(0, &cert, true)?;
    let (mic, ssrc) = mic.unwrap();
    let answer = pair.server.local_description().unwrap().sdp;
    println!("server answer directions: {:?}", answer.lines().filter(|l| *l == "a=sendonly" || *l == "a=recvonly" || *l == "a=sendrecv" || *l == "a=inactive").collect::<Vec<_>>());
    let (mut accepted, mut refused, mut wire, mut surfaced, mut filtered) = (0, 0, 0, 0, 0);
    for k in 0..100u16 {
        let now = Instant::now();
        let p = rtc::rtp::Packet {
            header: rtc::rtp::Header { version: 2, payload_type: OPUS_PT, sequence_number: k, timestamp: k as u32 * 960, ssrc, ..Default::default() },
            payload: Bytes::from_static(&[1, 2, 3, 4]),
        };
        match pair.client.rtp_sender(mic).map(|mut s| s.write_rtp(now, p)) {
            Some(Ok(())) => accepted += 1,
            _ => refused += 1,
        }
        while let Some(out) = pair.client.poll_write() {
            wire += 1;
            if filter && crate::stun_route::is_rtp(&out.message) {
                filtered += 1;
                continue;
            }
            let _ = pair.server.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: pair.server_addr,
                    peer_addr: pair.client_addr,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: out.message,
            });
        }
        while let Some(m) = pair.server.poll_read() {
            if let rtc::peer_connection::message::RTCMessage::RtpPacket(..) = m.message {
                surfaced += 1;
            }
        }
    }
    println!("rogue listener, filter={filter}: client write_rtp accepted={accepted} refused={refused}; datagrams on the wire={wire}; dropped by is_rtp before handle_read={filtered}; RTP surfaced at server poll_read={surfaced}");
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let cert = generate_certificate()?;
    let packets = 2000usize;
    let payload = Bytes::from(vec![0x5au8; 80]); // ~ a 20 ms Opus voice frame
    for listeners in [1usize, 10, 100] {
        let t0 = Instant::now();
        let mut pairs = Vec::with_capacity(listeners);
        for i in 0..listeners {
            pairs.push(make_pair(i, &cert)?);
        }
        let setup = t0.elapsed();
        let mut source = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: 1,
                timestamp: 0,
                ssrc: 0x1234,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        let level = Bytes::from_static(&[0x80 | 12]);
        let mut bytes_out = 0usize;
        let mut datagrams = 0usize;
        let now = Instant::now();
        let t1 = Instant::now();
        for k in 0..packets {
            source.header.sequence_number = k as u16;
            source.header.timestamp = (k as u32) * 960;
            for pair in pairs.iter_mut() {
                let mut p = source.clone();
                p.header.ssrc = pair.ssrc;
                p.header.sequence_number = pair.seq;
                pair.seq = pair.seq.wrapping_add(1);
                if let Some(id) = pair.level_id {
                    let _ = p.header.set_extension(id, level.clone());
                }
                pair.server.rtp_sender(pair.sender).unwrap().write_rtp(now, p)?;
                while let Some(out) = pair.server.poll_write() {
                    bytes_out += out.message.len();
                    datagrams += 1;
                }
            }
        }
        let elapsed = t1.elapsed();
        let per = elapsed.as_secs_f64() * 1e6 / (packets * listeners) as f64;
        println!(
            "listeners={listeners:>4}: setup {:>7.1} ms ({:.2} ms/conn incl. client side), forward {packets} pkts: {:.3} us per packet x listener ({datagrams} datagrams, avg {} B)",
            setup.as_secs_f64() * 1e3,
            setup.as_secs_f64() * 1e3 / listeners as f64,
            per,
            bytes_out / datagrams.max(1)
        );
        // Sanity: the last pair's client can decrypt what was sent.
        if let Some(pair) = pairs.last_mut() {
            let _ = pair.client.handle_timeout(Instant::now());
            let _ = (pair.server_addr, pair.client_addr);
        }
    }

    // Routing a first binding request by its USERNAME: in place vs through the stun crate.
    {
        use rtc::stun::attributes::ATTR_USERNAME;
        use rtc::stun::message::{Message, TransactionId, BINDING_REQUEST};
        use rtc::stun::textattrs::TextAttribute;
        let mut m = Message::new();
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, "ServerUfrag12345:cli1".to_owned())),
        ])?;
        let raw = m.raw.clone();
        assert_eq!(crate::stun_route::server_ufrag(&raw), Some("ServerUfrag12345"));
        assert_eq!(crate::stun_route::server_ufrag_via_stun_crate(&raw).as_deref(), Some("ServerUfrag12345"));
        let n = 1_000_000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(crate::stun_route::server_ufrag(std::hint::black_box(&raw)));
        }
        let a = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(crate::stun_route::server_ufrag_via_stun_crate(std::hint::black_box(&raw)));
        }
        let b = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        println!("USERNAME lookup: in place {a:.0} ns, via rtc::stun Message {b:.0} ns");
    }

    // Bare SRTP (GCM-128 and AES-CM-80) on a 12-byte header + 8-byte extension + 80-byte payload.
    let provider = rtc::crypto::default_provider().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut header = rtc::rtp::Header { version: 2, payload_type: OPUS_PT, ssrc: 7, ..Default::default() };
    header.set_extension(1, Bytes::from_static(&[0x8c]))?;
    let pkt = rtc::rtp::Packet { header, payload: payload.clone() };
    use rtc::shared::marshal::{Marshal, MarshalSize};
    let mut plain = BytesMut::zeroed(pkt.marshal_size());
    pkt.marshal_to(&mut plain)?;
    for (name, profile, key_len, salt_len) in [
        ("GCM-128", rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm, 16, 12),
        ("AES-CM-80", rtc::srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80, 16, 14),
    ] {
        let mut ctx = rtc::srtp::context::Context::new(
            &vec![7u8; key_len],
            &vec![9u8; salt_len],
            profile,
            None,
            None,
            provider.crypto(),
        )?;
        let n = 200_000;
        let mut h = pkt.header.clone();
        let t = Instant::now();
        for i in 0..n {
            h.sequence_number = i as u16;
            let out = ctx.encrypt_rtp_with_header(&plain, &h)?;
            std::hint::black_box(out);
        }
        println!(
            "bare SRTP {name}: {:.3} us per {}-byte packet",
            t.elapsed().as_secs_f64() * 1e6 / n as f64,
            plain.len()
        );
    }
    Ok(())
}
