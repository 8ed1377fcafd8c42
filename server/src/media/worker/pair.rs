//! A worker core and its clients in memory: browser-like `rtc` peer connections and the real
//! [`Core`], datagrams carried between them without sockets, on a clock that moves only when
//! told. The worker's unit tests and the `media_datagram` and `sdp_offer` fuzz targets (through
//! `crate::fuzzing`) drive the core this way, so what they check is what a worker runs.

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

use super::super::MediaError;
use super::super::batch::SendBatch;
use super::super::offer::{Offer, check_offer};
use super::super::testkit::{certificate, client_offerer, mic_packet};
use super::{
    ConnKey, Control, Core, CoreSetup, Egress, Links, Now, Peer, Report, RoomKey, RoomRef,
};
use crate::control::{ParticipantId, RoomId};
use crate::metrics::MediaMetrics;

/// The core's address.
pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    40000,
);
/// How far the clock moves between attempts while connecting.
const STEP: Duration = Duration::from_millis(5);

/// The egress of a core in memory: what it sends is kept, in order.
#[derive(Default)]
pub struct Memory {
    pub batch: SendBatch,
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Speaker packets whose copies were all queued.
    pub forwarded: u64,
    /// Count what is sent instead of keeping it (a benchmark's egress).
    pub discard: bool,
    /// Datagrams sent while discarding.
    pub discarded: u64,
}

impl Egress for Memory {
    fn batch(&mut self) -> &mut SendBatch {
        &mut self.batch
    }

    fn flush(&mut self) {
        if self.discard {
            let discarded = &mut self.discarded;
            self.batch.drain(|_, datagram| {
                std::hint::black_box(datagram);
                *discarded += 1;
            });
            return;
        }
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
pub struct Client {
    pub pc: RTCPeerConnection,
    pub addr: SocketAddr,
    pub key: ConnKey,
    pub mic: RTCRtpSenderId,
    pub connected: bool,
    pub rtp_received: u64,
    next_seq: u16,
}

/// A core, its clients and the clock.
pub struct Pair {
    pub core: Core<Memory>,
    pub now: Now,
    pub clients: Vec<Client>,
    reports: mpsc::UnboundedReceiver<Report>,
    room: RoomRef,
    /// Whether the clients answer and keep their timers (false: they went silent).
    pub clients_alive: bool,
    /// When set, every datagram a client sends is also kept here (how the fuzz seeds are
    /// captured).
    pub recorded: Option<Vec<Vec<u8>>>,
    /// Relayed datagrams the core sent to other nodes, kept for a test to carry.
    pub relayed: Vec<(SocketAddr, Vec<u8>)>,
    next_key: u32,
}

impl Pair {
    /// A core with three slots and the given ICE timeouts, and no clients yet.
    pub fn new(ice_disconnected: Duration, ice_failed: Duration) -> Self {
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
                lean: None,
                slots: 3,
                red: crate::config::MediaSettings::default().red,
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
        Pair {
            core,
            now,
            clients: Vec::new(),
            reports,
            room: RoomRef {
                key: RoomKey(1),
                id: RoomId::parse("rm_testroom________").expect("a room id"),
                workers: Arc::new(AtomicU64::new(1)),
                tap: Arc::default(),
                relay: Arc::default(),
            },
            clients_alive: true,
            recorded: None,
            relayed: Vec::new(),
            next_key: 100,
        }
    }

    /// A core whose connections are lean (`[media] listener_transport = "lean"`), with the
    /// given ICE timeouts; the clients stay `rtc`'s full ones, set up like browsers.
    pub fn lean(ice_disconnected: Duration, ice_failed: Duration) -> Self {
        let mut pair = Pair::new(ice_disconnected, ice_failed);
        pair.core.setup.lean =
            Some(super::super::lean::Shared::new(&certificate()).expect("a DTLS configuration"));
        pair
    }

    /// [`Pair::lean`] with the worker's default ICE timeouts.
    pub fn lean_default() -> Self {
        Pair::lean(Duration::from_secs(5), Duration::from_secs(15))
    }

    /// Client `index` offers again (a stage change): the core renegotiates its connection.
    pub fn restage(&mut self, index: usize, on_stage: bool, may_send: bool) {
        let key = self.clients[index].key;
        let pc = &mut self.clients[index].pc;
        let offer = pc.create_offer(None).expect("an offer");
        pc.set_local_description(self.now.at, offer).unwrap();
        let sdp = pc.local_description().expect("the offer").sdp;
        let offer = check_offer(sdp).expect("a valid offer");
        let answer = self
            .reoffer(key, offer, on_stage, may_send)
            .expect("renegotiated");
        self.clients[index]
            .pc
            .set_remote_description(self.now.at, RTCSessionDescription::answer(answer).unwrap())
            .expect("the client takes the new answer");
        self.shuttle();
    }

    /// The ICE credentials the core gives the next connections it opens, instead of random
    /// ones, so a stored input can carry a STUN request whose integrity checks out. Only one
    /// connection at a time may use them (the routes find connections by them).
    pub fn fix_credentials(&mut self, ufrag: &str, password: &str) {
        self.core.fixed_credentials = Some((ufrag.to_owned(), password.to_owned()));
    }

    /// Any offer, as signaling hands it to a worker, for a new connection; its key and the
    /// core's answer. No client is made: the caller plays the peer by hand.
    pub fn offer(
        &mut self,
        offer: Offer,
        on_stage: bool,
        may_send: bool,
    ) -> (ConnKey, Result<String, MediaError>) {
        let key = ConnKey(self.next_key);
        self.next_key += 1;
        (key, self.reoffer(key, offer, on_stage, may_send))
    }

    /// An offer on connection `key`: a renegotiation when it is open.
    pub fn reoffer(
        &mut self,
        key: ConnKey,
        offer: Offer,
        on_stage: bool,
        may_send: bool,
    ) -> Result<String, MediaError> {
        let (reply, mut answer) = oneshot::channel();
        let participant = ParticipantId::parse(&format!("pt_{:_<16}", key.0)).expect("an id");
        self.core.handle_control(
            self.now,
            Control::Offer {
                key,
                room: self.room.clone(),
                participant,
                offer: Box::new(offer),
                on_stage,
                may_send,
                reply,
            },
        );
        answer.try_recv().expect("answered at once")
    }

    /// The room every client of this core joins.
    pub fn room(&self) -> &RoomRef {
        &self.room
    }

    /// The core takes the room's audio from another node on `link`.
    pub fn open_relay_in(&mut self, link: super::super::relay::InLink) {
        let room = self.room.clone();
        self.core.handle_control(
            self.now,
            Control::RelayIn {
                room,
                link: Box::new(link),
            },
        );
    }

    /// The core's link `link` from another node ends.
    pub fn close_relay_in(&mut self, link: u32) {
        self.core
            .handle_control(self.now, Control::RelayInClose { link });
    }

    /// Closes connection `key` as its room does.
    pub fn close(&mut self, key: ConnKey) {
        self.core.handle_control(self.now, Control::Close { key });
    }

    /// A client offers to join the room; returns its index once the core has answered.
    pub fn join(&mut self, on_stage: bool, may_send: bool) -> usize {
        let index = self.clients.len();
        let addr = SocketAddr::from(([10, 0, 0, 2], 50000 + index as u16));
        let mut pc = client_offerer(self.now.at, addr).expect("a client");
        let mic = pc.get_senders().next().expect("a microphone");
        let offer = pc.create_offer(None).expect("an offer");
        pc.set_local_description(self.now.at, offer).unwrap();
        let sdp = pc.local_description().expect("the offer").sdp;
        let offer = check_offer(sdp).expect("a valid offer");
        let (key, answer) = self.offer(offer, on_stage, may_send);
        let answer = answer.expect("accepted");
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

    /// One datagram into the core from `from`, as the shell's socket hands it over.
    pub fn datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.core
            .handle_datagram(self.now, Peer::udp(from), datagram);
    }

    /// What the core sent to `to` since the last call (or the last [`Pair::shuttle`]).
    pub fn take_sent_to(&mut self, to: SocketAddr) -> Vec<Vec<u8>> {
        self.core.egress_mut().flush();
        let sent = &mut self.core.egress_mut().sent;
        let (to_them, rest) = std::mem::take(sent)
            .into_iter()
            .partition::<Vec<_>, _>(|(addr, _)| *addr == to);
        *sent = rest;
        to_them.into_iter().map(|(_, datagram)| datagram).collect()
    }

    /// Moves datagrams both ways until nothing is left in flight. What the core sends to an
    /// address no client has is dropped.
    pub fn shuttle(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            for client in &mut self.clients {
                while let Some(out) = client.pc.poll_write() {
                    moved = true;
                    if let Some(recorded) = &mut self.recorded {
                        recorded.push(out.message.to_vec());
                    }
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
                    if datagram.first() == Some(&super::super::relay::MARKER) {
                        self.relayed.push((to, datagram));
                    }
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
    pub fn advance(&mut self, by: Duration) {
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
    pub fn connect_all(&mut self) {
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
    pub fn speak(&mut self, index: usize) {
        let seq = self.clients[index].next_seq;
        self.clients[index].next_seq = seq.wrapping_add(1);
        let packet = mic_packet(seq);
        assert!(self.send_rtp(index, packet), "the packet is written");
    }

    /// Client `index` encrypts `packet` as its microphone's and sends it; false if its
    /// connection would not take it (no sending path, not connected).
    pub fn send_rtp(&mut self, index: usize, packet: rtc::rtp::Packet) -> bool {
        let client = &mut self.clients[index];
        let written = client
            .pc
            .rtp_sender(client.mic)
            .is_some_and(|mut sender| sender.write_rtp(self.now.at, packet).is_ok());
        self.shuttle();
        written
    }

    /// What client `index` sends for `packet` from its microphone (SRTP), kept rather than
    /// delivered: a benchmark replays it into the core.
    pub fn sealed_by(&mut self, index: usize, packet: rtc::rtp::Packet) -> Vec<Vec<u8>> {
        let client = &mut self.clients[index];
        if let Some(mut sender) = client.pc.rtp_sender(client.mic) {
            let _ = sender.write_rtp(self.now.at, packet);
        }
        let mut out = Vec::new();
        while let Some(datagram) = client.pc.poll_write() {
            out.push(datagram.message.to_vec());
        }
        out
    }

    /// The connections the core closed on its own since the last call.
    pub fn closed_reports(&mut self) -> Vec<ConnKey> {
        let mut closed = Vec::new();
        while let Ok(report) = self.reports.try_recv() {
            if let Report::Closed { key, .. } = report {
                closed.push(key);
            }
        }
        closed
    }

    /// Speaker packets the core forwarded (each to every listener it reached).
    pub fn forwarded(&self) -> u64 {
        self.core.counters.forwarded.get()
    }

    /// Speaker packets decrypted and read.
    pub fn rtp_in(&self) -> u64 {
        self.core.counters.rtp_in.get()
    }

    /// Speakers' packets taken from other nodes on relay links.
    pub fn relayed_in(&self) -> u64 {
        self.core.counters.relay_in.get()
    }

    /// Relayed datagrams refused (wrong sender, forged, replayed, unreadable).
    pub fn relay_refused(&self) -> u64 {
        self.core.counters.drops.relay_refused.get()
    }

    /// Times `rtc` panicked inside the core (each closed one connection).
    pub fn panicked(&self) -> u64 {
        self.core.counters.drops.panicked.get()
    }

    /// Whether connection `key` is open on the core.
    pub fn is_open(&self, key: ConnKey) -> bool {
        self.core.conns.contains_key(&key)
    }
}

impl Default for Pair {
    /// The worker's default ICE timeouts.
    fn default() -> Self {
        Pair::new(Duration::from_secs(5), Duration::from_secs(15))
    }
}
