//! The worker core driven without sockets: real `rtc` clients (set up like browsers) and the
//! real [`Core`], datagrams carried between them in memory, on a fake clock that moves only
//! when a test moves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{mpsc, oneshot};

use super::super::batch::SendBatch;
use super::super::engine::OPUS_PT;
use super::super::offer::check_offer;
use super::super::testkit::{CLIENT_MIC_SSRC, certificate, client_offerer};
use super::*;
use crate::metrics::MediaMetrics;

const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    40000,
);
const STEP: Duration = Duration::from_millis(5);

/// The egress of a core under test: what it sends is kept, in order.
#[derive(Default)]
struct Memory {
    batch: SendBatch,
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Speaker packets whose copies were all queued.
    forwarded: u64,
}

impl Egress for Memory {
    fn batch(&mut self) -> &mut SendBatch {
        &mut self.batch
    }

    fn flush(&mut self) {
        let sent = &mut self.sent;
        self.batch
            .drain(|to, datagram| sent.push((to, datagram.to_vec())));
    }

    fn forwarded(&mut self, _arrived: Instant) {
        self.flush();
        self.forwarded += 1;
    }

    fn send_tcp(&mut self, _to: SocketAddr, _datagram: &[u8]) -> bool {
        false
    }

    fn close_tcp(&mut self, _from: SocketAddr) {}
}

/// A browser-like client: an `rtc` peer connection with a microphone, at its own address.
struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    key: ConnKey,
    mic: RTCRtpSenderId,
    connected: bool,
    rtp_received: u64,
    next_seq: u16,
}

/// A core, its clients and the clock.
struct Harness {
    core: Core<Memory>,
    now: Now,
    clients: Vec<Client>,
    reports: mpsc::UnboundedReceiver<Report>,
    room: RoomRef,
    /// Whether the clients answer and keep their timers (false: they went silent).
    clients_alive: bool,
}

impl Harness {
    fn new(ice_disconnected: Duration, ice_failed: Duration) -> Self {
        let (fanout, _) = mpsc::channel(16);
        let (control, _) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let now = Now::read();
        let core = Core::new(
            CoreSetup {
                index: 0,
                local_addr: SERVER,
                tcp_local: None,
                advertised: SERVER,
                advertised_tcp: None,
                certificate: certificate(),
                slots: 3,
                red: 0,
                ice_disconnected,
                ice_failed,
                metrics: MediaMetrics::default(),
                sources: Arc::new(AtomicU32::new(1)),
            },
            Links {
                peers: vec![fanout],
                peer_controls: vec![control],
                reports: reports_tx,
            },
            Memory::default(),
            now.at,
        )
        .expect("a core");
        Harness {
            core,
            now,
            clients: Vec::new(),
            reports,
            room: RoomRef {
                key: RoomKey(1),
                id: RoomId::parse("rm_testroom________").expect("a room id"),
                workers: Arc::new(AtomicU64::new(1)),
                tap: Arc::default(),
            },
            clients_alive: true,
        }
    }

    /// A client offers to join the room; returns its index once the core has answered.
    fn join(&mut self, on_stage: bool, may_send: bool) -> usize {
        let index = self.clients.len();
        let addr = SocketAddr::from(([10, 0, 0, 2], 50000 + index as u16));
        let mut pc = client_offerer(self.now.at, addr).expect("a client");
        let mic = pc.get_senders().next().expect("a microphone");
        let offer = pc.create_offer(None).expect("an offer");
        pc.set_local_description(self.now.at, offer).unwrap();
        let sdp = pc.local_description().expect("the offer").sdp;
        let key = ConnKey(100 + index as u32);
        let (reply, mut answer) = oneshot::channel();
        self.core.handle_control(
            self.now,
            Control::Offer {
                key,
                room: self.room.clone(),
                participant: ParticipantId::parse(&format!("pt_{index:_<16}")).expect("an id"),
                offer: Box::new(check_offer(sdp).expect("a valid offer")),
                on_stage,
                may_send,
                reply,
            },
        );
        let answer = answer
            .try_recv()
            .expect("answered at once")
            .expect("accepted");
        pc.set_remote_description(self.now.at, RTCSessionDescription::answer(answer).unwrap())
            .unwrap();
        self.clients.push(Client {
            pc,
            addr,
            key,
            mic,
            connected: false,
            rtp_received: 0,
            next_seq: 1,
        });
        index
    }

    /// Moves datagrams both ways until nothing is left in flight.
    fn shuttle(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            for client in &mut self.clients {
                while let Some(out) = client.pc.poll_write() {
                    moved = true;
                    if self.clients_alive {
                        self.core
                            .handle_datagram(self.now, Peer::udp(client.addr), &out.message);
                    }
                }
                while let Some(event) = client.pc.poll_event() {
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                        client.connected = state == RTCPeerConnectionState::Connected;
                    }
                }
                while let Some(TaggedRTCMessage { message, .. }) = client.pc.poll_read() {
                    if let RTCMessage::RtpPacket(..) = message {
                        client.rtp_received += 1;
                    }
                }
            }
            self.core.egress_mut().flush();
            for (to, datagram) in std::mem::take(&mut self.core.egress_mut().sent) {
                moved = true;
                let Some(client) = self.clients.iter_mut().find(|c| c.addr == to) else {
                    continue;
                };
                if self.clients_alive {
                    let _ = client.pc.handle_read(TaggedBytesMut {
                        now: self.now.at,
                        transport: TransportContext {
                            local_addr: to,
                            peer_addr: SERVER,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&datagram[..]),
                    });
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The clock moves on by `by`; whatever is due runs, on both sides.
    fn advance(&mut self, by: Duration) {
        self.now = self.now.after(by);
        if self.clients_alive {
            for client in &mut self.clients {
                let _ = client.pc.handle_timeout(self.now.at);
            }
        }
        self.core.handle_timeout(self.now);
        self.shuttle();
    }

    /// Until every client and its connection on the core are up.
    fn connect_all(&mut self) {
        for _ in 0..400 {
            self.shuttle();
            let up = self
                .clients
                .iter()
                .all(|c| c.connected && self.core.conns.get(&c.key).is_some_and(|t| t.connected));
            if up {
                return;
            }
            self.advance(STEP);
        }
        panic!("the clients did not connect");
    }

    /// Client `index` sends one Opus packet from its microphone.
    fn speak(&mut self, index: usize) {
        let client = &mut self.clients[index];
        let seq = client.next_seq;
        client.next_seq = seq.wrapping_add(1);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: seq,
                timestamp: u32::from(seq) * 960,
                ssrc: CLIENT_MIC_SSRC,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0xfc; 80]),
        };
        client
            .pc
            .rtp_sender(client.mic)
            .expect("the microphone's sender")
            .write_rtp(self.now.at, packet)
            .expect("the packet is written");
        self.shuttle();
    }

    fn closed_reports(&mut self) -> Vec<ConnKey> {
        let mut closed = Vec::new();
        while let Ok(report) = self.reports.try_recv() {
            if let Report::Closed { key, .. } = report {
                closed.push(key);
            }
        }
        closed
    }
}

fn harness() -> Harness {
    Harness::new(Duration::from_secs(5), Duration::from_secs(15))
}

#[test]
fn a_speaker_is_heard_by_a_listener_through_the_core() {
    let mut h = harness();
    let speaker = h.join(true, true);
    let listener = h.join(false, false);
    h.connect_all();
    for _ in 0..50 {
        h.speak(speaker);
        h.advance(Duration::from_millis(20));
    }
    let counters = &h.core.counters;
    let forwarded = counters.forwarded.get();
    assert_eq!(counters.rtp_in.get(), 50);
    // The first packets arrive before the selection gives the speaker a slot.
    assert!(forwarded >= 45, "forwarded {forwarded}");
    assert_eq!(
        h.clients[listener].rtp_received, forwarded,
        "all in memory, none lost"
    );
    assert_eq!(
        h.clients[speaker].rtp_received, 0,
        "nobody hears themselves"
    );
    assert_eq!(h.core.egress().forwarded, 50);
}

#[test]
fn a_listener_has_no_right_to_speak_and_each_refusal_is_counted() {
    let mut h = harness();
    // On stage but muted by the room: decrypted, then refused.
    let muted = h.join(true, false);
    // A listener: no receiving path; its RTP is refused before any crypto.
    let listener = h.join(false, false);
    let other = h.join(false, false);
    h.connect_all();
    for _ in 0..10 {
        h.speak(muted);
        h.advance(Duration::from_millis(20));
    }
    let forged_rtp = [
        0x80, OPUS_PT, 0, 1, 0, 0, 0, 1, 0x53, 0x54, 0x4f, 0x41, 0xfc,
    ];
    for _ in 0..7 {
        let from = Peer::udp(h.clients[listener].addr);
        h.core.handle_datagram(h.now, from, &forged_rtp);
    }
    let drops = &h.core.counters.drops;
    assert_eq!(drops.not_allowed.get(), 10);
    assert_eq!(drops.no_send_path.get(), 7);
    assert_eq!(h.core.counters.forwarded.get(), 0);
    assert_eq!(h.clients[other].rtp_received, 0);

    // Once the room lets it speak, the same speaker is heard.
    h.core.handle_control(
        h.now,
        Control::Permission {
            key: h.clients[muted].key,
            may_send: true,
        },
    );
    for _ in 0..10 {
        h.speak(muted);
        h.advance(Duration::from_millis(20));
    }
    assert_eq!(h.core.counters.drops.not_allowed.get(), 10);
    assert!(h.clients[other].rtp_received > 0);
}

#[test]
fn a_closed_connection_s_datagrams_are_dropped_and_counted() {
    let mut h = harness();
    let speaker = h.join(true, true);
    h.connect_all();
    let key = h.clients[speaker].key;
    h.core.handle_control(h.now, Control::Close { key });
    // Its goodbye is lost on the way: the client does not know.
    h.core.egress_mut().flush();
    h.core.egress_mut().sent.clear();
    assert!(h.core.conns.is_empty() && h.core.rooms.is_empty());
    let before = h.core.counters.drops.unroutable.get();
    for _ in 0..5 {
        h.speak(speaker);
    }
    assert_eq!(h.core.counters.drops.unroutable.get(), before + 5);
    assert_eq!(h.core.counters.rtp_in.get(), 0);
    assert!(h.core.egress().sent.is_empty());
    assert!(
        h.closed_reports().is_empty(),
        "closed by the room, not reported back"
    );
}

#[test]
fn timeouts_fire_at_the_deadline_the_core_returned() {
    let failed_after = Duration::from_secs(3);
    let mut h = Harness::new(Duration::from_secs(1), failed_after);
    let listener = h.join(false, false);
    h.connect_all();
    let key = h.clients[listener].key;
    // The client goes away without a word: the core hears nothing more from it.
    h.clients_alive = false;
    let silent_since = h.now.at;
    let mut deadlines = 0;
    loop {
        let deadline = h.core.poll_timeout().expect("a connection has timers");
        // Just before the deadline nothing runs: no output, the same deadline.
        let before = Now {
            at: deadline - Duration::from_micros(1),
            wall: h.now.wall,
        };
        h.core.handle_timeout(before);
        assert_eq!(h.core.poll_timeout(), Some(deadline));
        assert!(h.core.egress().batch.is_empty());
        // At the deadline it runs.
        h.now = Now {
            at: deadline,
            wall: h.now.wall + (deadline - h.now.at),
        };
        h.core.handle_timeout(h.now);
        deadlines += 1;
        if !h.core.conns.contains_key(&key) {
            break;
        }
        assert!(deadlines < 10_000, "the connection never timed out");
    }
    let after = h.now.at - silent_since;
    assert!(
        after >= failed_after && after < failed_after + Duration::from_secs(2),
        "closed {after:?} after the client went silent"
    );
    assert_eq!(
        h.closed_reports(),
        vec![key],
        "the worker closed it on its own"
    );
    assert_eq!(h.core.poll_timeout(), None, "nothing left to wake for");
}
