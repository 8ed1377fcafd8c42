//! The lean transport against `rtc`'s full client (set up like a browser by `testkit`), in
//! memory on a fake clock: the client's ICE agent checks us, its DTLS client handshakes with
//! us, and it decrypts the audio our `SrtpSender` seals and the sender reports we write.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::super::answer::{Plan, answer_problems};
use super::super::demux::{self, Kind};
use super::super::engine::OPUS_PT;
use super::super::offer::check_offer;
use super::super::rtp::RtpHeader;
use super::super::srtp::Rollover;
use super::super::testkit::{CLIENT_MIC_SSRC, certificate, client_offerer, mic_packet};
use super::super::{random_alnum, random_u32};
use super::*;

const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    40000,
);
const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    50000,
);
/// The client as the connection sees it: over UDP.
const FROM_CLIENT: Peer = Peer {
    addr: CLIENT,
    tcp: false,
};
const STEP: Duration = Duration::from_millis(5);

/// `rtc`'s full client and one lean connection, datagrams carried in memory.
struct Pair {
    now: Now,
    client: RTCPeerConnection,
    client_state: RTCPeerConnectionState,
    server: LeanConnection,
    slot_ssrcs: Vec<u32>,
    /// What the server decrypted from the client.
    rtp_in: Vec<BytesMut>,
    receiver_reports: usize,
    /// RTP the client decrypted: (SSRC, payload).
    client_rtp: Vec<(u32, Vec<u8>)>,
    /// Server datagrams the client refused.
    client_refused: usize,
    /// The client's datagrams the server refused.
    server_refused: Vec<Refusal>,
    rollover: Rollover,
    next_seq: u16,
    /// The server's DTLS datagrams sent as it is keyed (its last flight) are lost, once.
    lose_last_flight: bool,
    lost: usize,
}

impl Pair {
    /// A client offers (a microphone and two receive-only sections); the lean connection
    /// answers with Stoa's own SDP. `expected`: the fingerprint the offer is taken to carry
    /// (`None`: the offer's own).
    fn new(on_stage: bool, expected: Option<[u8; 32]>) -> Self {
        let now = Now::read();
        let mut client = client_offerer(now.at, CLIENT).expect("a client");
        let offer = client.create_offer(None).expect("an offer");
        client.set_local_description(now.at, offer).unwrap();
        let sdp = client.local_description().expect("the offer").sdp;
        let offer = check_offer(sdp.clone()).expect("a valid offer");
        let plan = Plan::new(&offer.sections, 3, on_stage);
        let shared = Shared::new(&certificate()).expect("the shared DTLS configuration");
        let slot_ssrcs: Vec<u32> = (0..plan.slot_count()).map(|_| random_u32()).collect();
        let (ufrag, password) = (random_alnum(16), random_alnum(32));
        let remote_fingerprint = offered_fingerprint(&offer.description).expect("offered");
        let text = sdp::answer(
            &offer,
            &plan,
            &sdp::Local {
                ufrag: &ufrag,
                password: &password,
                fingerprint: &shared.fingerprint,
                candidate: SERVER,
                tcp_candidate: None,
                slot_ssrcs: &slot_ssrcs,
                red: false,
                session_id: 1,
            },
        );
        assert_eq!(answer_problems(&sdp, &text), Vec::<String>::new());
        let server = LeanConnection::new(
            Setup {
                shared,
                ufrag,
                password,
                remote_fingerprint: expected.unwrap_or(remote_fingerprint),
                slot_ssrcs: slot_ssrcs.clone(),
                microphone: on_stage.then_some(CLIENT_MIC_SSRC),
                ice_disconnected: Duration::from_secs(5),
                ice_failed: Duration::from_secs(5),
            },
            now.at,
        );
        client
            .set_remote_description(now.at, RTCSessionDescription::answer(text).unwrap())
            .expect("the client takes Stoa's answer");
        Pair {
            now,
            client,
            client_state: RTCPeerConnectionState::New,
            server,
            slot_ssrcs,
            rtp_in: Vec::new(),
            receiver_reports: 0,
            client_rtp: Vec::new(),
            client_refused: 0,
            server_refused: Vec::new(),
            rollover: Rollover::default(),
            next_seq: 1,
            lose_last_flight: false,
            lost: 0,
        }
    }

    fn deliver_to_client(&mut self, datagrams: Vec<(Peer, Vec<u8>)>) {
        for (to, datagram) in datagrams {
            assert_eq!(to, FROM_CLIENT, "sent where the client is");
            let read = self.client.handle_read(TaggedBytesMut {
                now: self.now.at,
                transport: TransportContext {
                    local_addr: CLIENT,
                    peer_addr: SERVER,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&datagram[..]),
            });
            if read.is_err() {
                self.client_refused += 1;
            }
        }
    }

    /// Moves datagrams both ways until nothing is left in flight.
    fn shuttle(&mut self) {
        for _ in 0..64 {
            let mut out = Vec::new();
            let mut moved = false;
            while let Some(sent) = self.client.poll_write() {
                moved = true;
                let keyed_before = self.server.state() == State::Connected;
                let received = self.server.handle_datagram(
                    self.now,
                    FROM_CLIENT,
                    &sent.message,
                    &mut |to, d| out.push((to, d.to_vec())),
                );
                match received {
                    Ok(Received::Rtp(packet)) => self.rtp_in.push(packet),
                    Ok(Received::Rtcp(mut packet)) => {
                        let packets = rtc::rtcp::packet::unmarshal(&mut packet).expect("RTCP");
                        self.receiver_reports += packets
                            .iter()
                            .filter(|p| p.as_any().is::<ReceiverReport>())
                            .count();
                    }
                    Ok(Received::Handled) => {}
                    Err(refusal) => self.server_refused.push(refusal),
                }
                if self.lose_last_flight && !keyed_before && self.server.state() == State::Connected
                {
                    self.lose_last_flight = false;
                    let before = out.len();
                    out.retain(|(_, d)| demux::classify(d) != Kind::Dtls);
                    self.lost += before - out.len();
                }
            }
            while let Some(event) = self.client.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                    self.client_state = state;
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = self.client.poll_read() {
                if let RTCMessage::RtpPacket(_, packet) = message {
                    self.client_rtp
                        .push((packet.header.ssrc, packet.payload.to_vec()));
                }
            }
            moved |= !out.is_empty();
            self.deliver_to_client(out);
            if !moved {
                return;
            }
        }
    }

    /// The clock moves on by `by`; whatever is due runs, on both sides.
    fn advance(&mut self, by: Duration) {
        self.now = self.now.after(by);
        let _ = self.client.handle_timeout(self.now.at);
        let mut out = Vec::new();
        if self
            .server
            .poll_timeout()
            .is_some_and(|at| at <= self.now.at)
        {
            self.server
                .handle_timeout(self.now, &mut |to, d| out.push((to, d.to_vec())));
        }
        self.deliver_to_client(out);
        self.shuttle();
    }

    fn connect(&mut self) {
        for _ in 0..400 {
            self.shuttle();
            if self.client_state == RTCPeerConnectionState::Connected
                && self.server.state() == State::Connected
            {
                assert_eq!(self.server_refused, [], "the real client is never refused");
                return;
            }
            self.advance(STEP);
        }
        panic!(
            "not connected: client {:?}, server {:?}",
            self.client_state,
            self.server.state()
        );
    }

    /// The server forwards one Opus frame on `slot`, sealed by the worker's `SrtpSender`.
    fn forward(&mut self, slot: usize, payload: &[u8]) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let header = RtpHeader {
            marker: false,
            payload_type: OPUS_PT,
            seq,
            timestamp: u32::from(seq) * 960,
            ssrc: self.slot_ssrcs[slot],
        };
        let rollover = self.rollover.next(seq);
        let mut buf = [0u8; 1500];
        let (sender, dest) = self.server.sender().expect("connected");
        let len = sender
            .seal(&header, rollover, payload, &mut buf)
            .expect("sealed");
        self.server
            .sent(slot, header.timestamp, payload.len(), self.now.at);
        self.deliver_to_client(vec![(dest, buf[..len].to_vec())]);
        self.shuttle();
    }
}

#[test]
fn rtc_s_full_client_connects_and_hears_what_the_lean_path_seals() {
    let mut pair = Pair::new(false, None);
    pair.connect();
    assert!(pair.server.take_connect_time().is_some());
    assert_eq!(pair.server.addrs(), &[FROM_CLIENT]);
    for i in 0..50u8 {
        pair.forward(usize::from(i % 3), &[i; 80]);
        pair.advance(Duration::from_millis(20));
    }
    assert_eq!(
        pair.client_refused, 0,
        "every datagram the client got was good"
    );
    assert_eq!(pair.server_refused, [], "and every one the server got");
    assert_eq!(
        pair.client_rtp.len(),
        50,
        "every packet decrypted by the client"
    );
    for (i, (ssrc, payload)) in pair.client_rtp.iter().enumerate() {
        assert_eq!(*ssrc, pair.slot_ssrcs[i % 3]);
        assert_eq!(payload, &vec![i as u8; 80]);
    }
    // A second passed: sender reports went out and the client accepted them; the client's
    // receiver reports about our slots came back and decrypted.
    assert!(pair.server.counts.sender_reports >= 1);
    assert!(pair.receiver_reports >= 1, "no receiver report came back");
    assert!(
        !pair.server.holds_handshake(),
        "the association goes once the client shows its keys"
    );
}

#[test]
fn reports_rest_while_nothing_is_sent_and_resume_with_audio() {
    let mut pair = Pair::new(false, None);
    pair.connect();
    // Once the association is let go, only consent is due while the room is silent (a
    // consent period after the client's last check), not a report every second.
    let reports_due = |pair: &Pair| {
        pair.server
            .poll_timeout()
            .is_some_and(|at| at <= pair.now.at + Duration::from_secs(1))
    };
    for _ in 0..6 {
        pair.advance(Duration::from_secs(1));
    }
    assert!(!pair.server.holds_handshake(), "the association was let go");
    assert!(
        !reports_due(&pair),
        "a silent listener's report timer rests"
    );
    assert_eq!(pair.server.counts.sender_reports, 0);

    // Audio arms it; sender reports follow while the slot sends.
    pair.forward(0, &[1; 80]);
    assert!(reports_due(&pair), "the first copy arms the reports");
    for _ in 0..100 {
        pair.forward(0, &[2; 80]);
        pair.advance(Duration::from_millis(20));
    }
    let sent = pair.server.counts.sender_reports;
    assert!(sent >= 1, "sender reports while audio flows");

    // Silence again: reports for the two intervals RFC 3550 keeps a sender, then rest.
    for _ in 0..5 {
        pair.advance(Duration::from_secs(1));
    }
    let after_silence = pair.server.counts.sender_reports;
    assert!(after_silence > sent && after_silence <= sent + 3);
    assert!(
        !reports_due(&pair),
        "the timer rests once the slot stopped sending"
    );
    for _ in 0..3 {
        pair.advance(Duration::from_secs(1));
    }
    assert_eq!(pair.server.counts.sender_reports, after_silence);
    assert_eq!(pair.server.state(), State::Connected, "consent still holds");
}

#[test]
fn a_speaker_s_microphone_is_decrypted() {
    let mut pair = Pair::new(true, None);
    pair.connect();
    let mic = pair.client.get_senders().next().expect("a microphone");
    for seq in 1..=10u16 {
        let packet = mic_packet(seq);
        pair.client
            .rtp_sender(mic)
            .expect("the microphone's sender")
            .write_rtp(pair.now.at, packet)
            .expect("written");
        pair.shuttle();
        pair.advance(Duration::from_millis(20));
    }
    assert_eq!(pair.rtp_in.len(), 10);
    for (i, raw) in pair.rtp_in.iter().enumerate() {
        assert_eq!(raw[8..12], CLIENT_MIC_SSRC.to_be_bytes());
        assert_eq!(raw[2..4], (i as u16 + 1).to_be_bytes());
        assert!(raw.ends_with(&[0xfc; 80]));
    }
}

#[test]
fn a_speaker_gets_receiver_reports_about_its_microphone() {
    let mut pair = Pair::new(true, None);
    pair.connect();
    let mic = pair.client.get_senders().next().expect("a microphone");
    // 50 packets, one second of audio, with packet 20 lost on the way; the speaker also
    // hears someone on slot 0.
    for seq in (1..=50u16).filter(|s| *s != 20) {
        pair.forward(0, &[1; 40]);
        pair.client
            .rtp_sender(mic)
            .expect("the microphone's sender")
            .write_rtp(pair.now.at, mic_packet(seq))
            .expect("written");
        pair.shuttle();
        pair.advance(Duration::from_millis(20));
    }
    // Two more report intervals: the client's own sender report (sent a second in) is
    // echoed in the next one.
    for _ in 0..21 {
        pair.advance(Duration::from_millis(100));
    }
    assert_eq!(pair.rtp_in.len(), 49);
    assert!(pair.server.counts.receiver_reports >= 1);
    // `rtc`'s client decrypts our reports but keeps what it reads of receiver reports to its
    // interceptors (its statistics never take them in), so the compounds are read back in clear
    // with `rtc`'s parser.
    assert_eq!(pair.client_refused, 0, "the client decrypted every report");
    let mut about_mic = Vec::new();
    for compound in &pair.server.reports_sent {
        let packets = rtc::rtcp::packet::unmarshal(&mut &compound[..]).expect("RTCP");
        // A compound starts with a report (RFC 3550 §6.1): our sender reports while slot 0
        // carries audio, the receiver report alone once it has been quiet for two intervals.
        assert!(
            packets[0].as_any().is::<SenderReport>() || packets[0].as_any().is::<ReceiverReport>(),
            "a report leads"
        );
        for packet in &packets {
            if let Some(rr) = packet.as_any().downcast_ref::<ReceiverReport>() {
                assert_eq!(rr.ssrc, pair.slot_ssrcs[0], "reported by our first slot");
                about_mic.extend(
                    rr.reports
                        .iter()
                        .filter(|r| r.ssrc == CLIENT_MIC_SSRC)
                        .cloned(),
                );
            }
        }
    }
    let last = about_mic.last().expect("a report about the microphone");
    assert_eq!(last.last_sequence_number, 50);
    assert_eq!(last.total_lost, 1);
    assert_ne!(
        last.last_sender_report, 0,
        "the client's last sender report is echoed, for its round trip"
    );
    assert!(
        about_mic.iter().any(|r| r.fraction_lost > 0),
        "the interval with the loss says so: {about_mic:?}"
    );
    // A listener's connection has no microphone and reports on nothing.
    let mut listener = Pair::new(false, None);
    listener.connect();
    listener.advance(Duration::from_millis(2_100));
    assert_eq!(listener.server.counts.receiver_reports, 0);
}

#[test]
fn forged_checks_and_strangers_are_refused_and_counted() {
    let mut pair = Pair::new(false, None);
    pair.connect();
    let refused_before = pair.server.counts.refused;
    let mut out = Vec::new();
    let mut send = |to: Peer, d: &[u8]| out.push((to, d.to_vec()));
    // A binding request with our ufrag but not our password, from an attacker's address.
    let attacker = Peer::udp("10.0.0.66:6666".parse().unwrap());
    let forged = super::ice::tests::request(
        &format!("{}:client", pair.server.ufrag()),
        "notOurPassword0123456789abcdefgh",
        true,
    );
    assert_eq!(
        pair.server
            .handle_datagram(pair.now, attacker, &forged, &mut send)
            .err(),
        Some(Refusal::Stun(StunRefusal::Integrity))
    );
    // SRTP-looking and DTLS datagrams from an address that never passed a check.
    let rtp = [0x80, OPUS_PT, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4, 0xfc, 0xfc];
    for datagram in [&rtp[..], &[22u8; 40][..]] {
        assert_eq!(
            pair.server
                .handle_datagram(pair.now, attacker, datagram, &mut send)
                .err(),
            Some(Refusal::UnknownAddress)
        );
    }
    // From the client's own address, but not authentic: refused by SRTP.
    assert_eq!(
        pair.server
            .handle_datagram(pair.now, FROM_CLIENT, &rtp, &mut send)
            .err(),
        Some(Refusal::Srtp)
    );
    assert!(out.is_empty(), "nothing answered to any of them");
    assert_eq!(pair.server.counts.refused, refused_before + 4);
    assert_eq!(pair.server.addrs(), &[FROM_CLIENT], "no address added");
    pair.forward(0, &[7; 40]);
    assert_eq!(pair.client_rtp.len(), 1, "the client still hears");
}

#[test]
fn a_client_with_another_certificate_than_its_offer_s_is_not_keyed() {
    let mut pair = Pair::new(false, Some([0xab; 32]));
    for _ in 0..200 {
        pair.advance(STEP);
    }
    assert_eq!(pair.server.state(), State::Failed);
    assert_eq!(
        pair.server_refused.first(),
        Some(&Refusal::Dtls(DtlsRefusal::Fingerprint))
    );
    assert!(pair.server.sender().is_none());
    assert_eq!(pair.server.poll_timeout(), None);
    // Its client's checks go on, unanswered.
    pair.server_refused.clear();
    pair.advance(Duration::from_secs(3));
    assert!(pair.server_refused.contains(&Refusal::Failed));
}

#[test]
fn consent_lapses_then_the_connection_fails() {
    let mut pair = Pair::new(false, None);
    pair.connect();
    // The client goes silent; only the server's clock runs.
    let mut last = pair.now;
    let mut states = vec![pair.server.state()];
    while let Some(at) = pair.server.poll_timeout() {
        assert!(at >= last.at, "deadlines move forward");
        last = last.after(at - last.at);
        pair.server.handle_timeout(last, &mut |_, _| {});
        if states.last() != Some(&pair.server.state()) {
            states.push(pair.server.state());
        }
    }
    assert_eq!(
        states,
        vec![State::Connected, State::Disconnected, State::Failed]
    );
}

#[test]
fn a_lost_last_flight_is_sent_again_when_the_client_repeats_its_own() {
    let mut pair = Pair::new(false, None);
    pair.lose_last_flight = true;
    pair.connect();
    assert!(pair.lost > 0, "the server's last flight was lost");
    assert!(
        pair.server.holds_handshake(),
        "held until the client shows its keys"
    );
    pair.forward(0, &[5; 60]);
    assert_eq!(
        pair.client_rtp.len(),
        1,
        "the client keyed from the repeated flight"
    );
    assert_eq!(pair.server_refused, []);
}

#[test]
fn garbage_from_the_client_s_address_is_refused_and_harms_nothing() {
    let mut pair = Pair::new(false, None);
    pair.connect();
    let mut out = Vec::new();
    let mut send = |to: Peer, d: &[u8]| out.push((to, d.to_vec()));
    let mut seed = 0x2545_f491_u32;
    let mut refused = 0;
    for len in 0..400usize {
        let mut datagram = vec![0u8; len % 200];
        for byte in &mut datagram {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *byte = seed as u8;
        }
        // Every kind by its first byte: STUN, DTLS, RTP/RTCP, other.
        if let Some(first) = datagram.first_mut() {
            *first = [0x00, 0x16, 0x80, 0x40][len % 4];
        }
        if datagram.len() > 1 && len % 8 == 6 {
            datagram[1] = 200; // RTCP
        }
        match pair
            .server
            .handle_datagram(pair.now, FROM_CLIENT, &datagram, &mut send)
        {
            Err(_) => refused += 1,
            Ok(_) => panic!("garbage accepted: {datagram:?}"),
        }
    }
    assert_eq!(refused, 400);
    assert!(out.is_empty(), "nothing answered");
    assert_eq!(pair.server.state(), State::Connected);
    pair.forward(1, &[9; 50]);
    assert_eq!(pair.client_rtp.len(), 1, "the client still hears");
}
