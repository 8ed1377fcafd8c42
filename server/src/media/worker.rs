//! One media worker: a thread with one UDP socket and the WebRTC connections assigned to it.
//! It owns them outright (no locks): the rest of the server talks to it through two queues,
//! control (negotiation, permissions, closes) and fan-out (speakers' packets from the other
//! workers). Each turn of its loop reads datagrams, runs due timers, and sends in batches.
//!
//! Per packet from a speaker: decrypted once where it arrives, checked against the speaker's
//! rights, a RED payload read into its Opus frame, then handed once to every worker hosting the
//! room (an `Arc`, no copy) with the speaker's last frames beside it. Per packet and listener: a
//! slot lookup, the `SlotRewriter`, and the payload (the Opus frame, or RED with the frames of
//! the slot's current turn) written and sealed in place in the send batch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rtc::crypto::RTCCryptoProvider;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::audio_level::AudioLevel;
use super::batch::{MAX_DATAGRAM, SendBatch};
use super::demux::{self, Kind};
use super::engine::{self, AUDIO_LEVEL_URI, AnswerSetup, Answered, Inbound, SlotSender};
use super::offer::Offer;
use super::red::{self, Frame, History, MAX_REDUNDANCY};
use super::rtp::{HEADER_LEN, RtpHeader};
use super::selector::{SelectorConfig, SpeakerSelector};
use super::slot::SlotRewriter;
use super::srtp::{KeyTap, Lean, Learned, Rollover, TAG_LEN};
use super::tap::RoomTap;
use super::tcp::{TcpEvent, TcpSide};
use super::{MediaError, random_alnum, random_u32};
use crate::control::{ParticipantId, RoomId};
use crate::metrics::{DropLabels, MediaMetrics, WorkerLabels};

/// A connection's number, unique in the process; routes control messages to it.
pub type ConnKey = u32;

/// Where a client is reached: an address, over UDP or over one of our ICE-TCP streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Peer {
    addr: SocketAddr,
    tcp: bool,
}

/// How often slots are re-decided from the levels heard.
const SELECT_EVERY: Duration = Duration::from_millis(20);
/// How often the speakers' levels go to their rooms.
const LEVELS_EVERY: Duration = Duration::from_millis(250);
/// Datagrams read per readiness event before the loop turns (timers, other queues).
const READ_BURST: usize = 64;
/// Fan-out packets handled per turn.
const FANOUT_BURST: usize = 256;
/// Connections this worker closed on its own, remembered so a late offer for one is refused.
const RETIRED_KEYS: usize = 1024;
/// Addresses one connection may be reached from (a browser checks from several).
const MAX_ADDRS_PER_CONN: usize = 8;

/// A room as a worker sees it.
#[derive(Clone)]
pub struct RoomRef {
    pub key: u32,
    pub id: RoomId,
    /// Bit `i`: worker `i` hosts connections of this room. Read once per speaker packet.
    pub workers: Arc<AtomicU64>,
    /// Where the room's speakers' packets also go while it is mixed.
    pub tap: Arc<RoomTap>,
}

pub enum Control {
    /// Answer an offer: a new connection, or a renegotiation of an existing one.
    Offer {
        key: ConnKey,
        room: RoomRef,
        participant: ParticipantId,
        offer: Box<Offer>,
        on_stage: bool,
        may_send: bool,
        reply: oneshot::Sender<Result<String, MediaError>>,
    },
    Permission {
        key: ConnKey,
        may_send: bool,
    },
    Close {
        key: ConnKey,
    },
    Stats {
        reply: oneshot::Sender<WorkerStats>,
    },
    /// A source of the room stopped for good on another worker (left, closed): drop it from
    /// this worker's selection for the room.
    Forget {
        room: u32,
        source: u32,
    },
    Stop,
}

/// A speaker's packet, decrypted and checked, on its way to every worker of the room.
pub struct Forwarded {
    pub room: u32,
    pub source: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub level: Option<AudioLevel>,
    /// The Opus frame: the whole payload, or a RED packet's primary block.
    pub payload: Bytes,
    /// The speaker's frames just before this one (newest first, at most `[media] red`): what
    /// RED listeners get repeated in this packet. From the speaker's own RED blocks or from
    /// the frames the server kept; references to their packets' bytes, not copies.
    pub redundancy: [Option<Frame>; MAX_REDUNDANCY],
    pub arrived: Instant,
}

pub enum Fanout {
    Packet(Arc<Forwarded>),
}

/// What workers tell the rest of the server.
pub enum Report {
    /// The speakers this worker receives, heard in `room` lately, loudest first.
    Levels {
        worker: usize,
        room: RoomId,
        levels: Vec<(ParticipantId, u8)>,
    },
    /// The worker closed a connection on its own (its peer went away).
    Closed {
        key: ConnKey,
        room: RoomId,
        participant: ParticipantId,
    },
}

#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub connections: usize,
    pub connected: usize,
    pub rooms: usize,
    /// Connections whose forwarded audio takes the lean SRTP path.
    pub lean: usize,
    /// Connections that gave up on it (their keys never matched `rtc`'s output).
    pub lean_off: usize,
}

pub struct WorkerLink {
    pub control: mpsc::UnboundedSender<Control>,
    pub fanout: mpsc::Sender<Fanout>,
    pub addr: SocketAddr,
}

pub struct WorkerSetup {
    pub index: usize,
    pub socket: std::net::UdpSocket,
    pub advertised: SocketAddr,
    /// ICE-TCP listener (non-blocking is set here) and the address its candidate advertises.
    pub tcp: Option<(std::net::TcpListener, SocketAddr)>,
    pub certificate: RTCCertificate,
    pub slots: usize,
    pub ice_disconnected: Duration,
    pub ice_failed: Duration,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub fanout: mpsc::Receiver<Fanout>,
    pub peers: Vec<mpsc::Sender<Fanout>>,
    pub peer_controls: Vec<mpsc::UnboundedSender<Control>>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub metrics: MediaMetrics,
    pub sources: Arc<AtomicU32>,
    /// Earlier frames repeated in each packet to RED listeners (`[media] red`); 0: RED is
    /// not negotiated.
    pub red: usize,
}

struct OutSlot {
    sender: RTCRtpSenderId,
    /// Opus as this listener's client numbers it.
    payload_type: u8,
    /// RED as this listener's client numbers it, when negotiated: the slot then sends RED.
    red_payload_type: Option<u8>,
    rewriter: SlotRewriter,
    rollover: Rollover,
}

impl OutSlot {
    fn new(slot: SlotSender) -> Self {
        OutSlot {
            sender: slot.sender,
            payload_type: slot.payload_type,
            red_payload_type: slot.red_payload_type,
            rewriter: SlotRewriter::new(slot.ssrc, random_u32() as u16, random_u32()),
            rollover: Rollover::default(),
        }
    }
}

struct Conn {
    pc: RTCPeerConnection,
    room: u32,
    participant: ParticipantId,
    ufrag: String,
    /// Our ICE password: a binding request from a new address must check with it.
    password: String,
    /// This connection's audio in the room's selection (and in every slot it feeds).
    source: u32,
    slots: Vec<OutSlot>,
    /// The last negotiation gave it a receiving path on our side (it was on stage).
    receiving: bool,
    /// The room says it may be heard now (on stage, not muted, connected).
    may_send: bool,
    inbound_ssrc: Option<u32>,
    inbound_level_id: Option<u8>,
    /// What the microphone section negotiated (payload type, whether the V bit is in use).
    inbound: Option<Inbound>,
    /// The last frames received from this client (speakers only): RED listeners' redundancy.
    history: History,
    /// A packet from this client has had the RFC 6464 V bit set: from then on it is trusted.
    /// Until then (some clients never set it) the level alone tells speech from silence.
    voice_bit_seen: bool,
    /// The client's ICE username fragment, from its offer: a different one is a new peer.
    remote_ufrag: Option<String>,
    connected: bool,
    /// Until the connection first comes up.
    answered_at: Option<Instant>,
    addrs: Vec<Peer>,
    /// Where `rtc` last sent this connection's SRTP/SRTCP: the selected ICE pair's remote.
    dest: Option<Peer>,
    /// This connection's crypto provider, which learns its SRTP keys.
    tap: Arc<KeyTap>,
    /// Whether forwarded audio bypasses `rtc`'s write path (see `srtp`).
    lean: Lean,
    /// The earliest deadline queued in the timer heap for this connection.
    scheduled: Option<Instant>,
}

struct WorkerRoom {
    id: RoomId,
    workers: Arc<AtomicU64>,
    tap: Arc<RoomTap>,
    selector: SpeakerSelector<u32>,
    members: Vec<ConnKey>,
    last_levels: Vec<ParticipantId>,
}

struct Counters {
    datagrams_in: Counter,
    bytes_in: Counter,
    datagrams_out: Counter,
    bytes_out: Counter,
    send_calls: Counter,
    rtp_in: Counter,
    red_in: Counter,
    forwarded: Counter,
    red_out: Counter,
    connections: Gauge,
    tcp_frames_in: Counter,
    tcp_streams: Gauge,
    unroutable: Counter,
    malformed: Counter,
    oversized: Counter,
    no_send_path: Counter,
    not_allowed: Counter,
    unknown_ssrc: Counter,
    bad_red: Counter,
    rejected: Counter,
    fanout_full: Counter,
    send_failed: Counter,
    forward_failed: Counter,
    stale: Counter,
    panicked: Counter,
}

impl Counters {
    fn new(m: &MediaMetrics, index: usize) -> Self {
        let w = WorkerLabels {
            worker: index.to_string(),
        };
        let drop = |reason: &str| {
            m.dropped
                .get_or_create(&DropLabels {
                    worker: index.to_string(),
                    reason: reason.to_owned(),
                })
                .clone()
        };
        Self {
            datagrams_in: m.datagrams_in.get_or_create(&w).clone(),
            bytes_in: m.bytes_in.get_or_create(&w).clone(),
            datagrams_out: m.datagrams_out.get_or_create(&w).clone(),
            bytes_out: m.bytes_out.get_or_create(&w).clone(),
            send_calls: m.send_calls.get_or_create(&w).clone(),
            rtp_in: m.rtp_in.get_or_create(&w).clone(),
            red_in: m.rtp_red_in.get_or_create(&w).clone(),
            forwarded: m.rtp_forwarded.get_or_create(&w).clone(),
            red_out: m.rtp_red_out.get_or_create(&w).clone(),
            connections: m.connections.get_or_create(&w).clone(),
            tcp_frames_in: m.tcp_frames_in.get_or_create(&w).clone(),
            tcp_streams: m.tcp_streams.get_or_create(&w).clone(),
            unroutable: drop("unroutable"),
            malformed: drop("malformed"),
            oversized: drop("oversized"),
            no_send_path: drop("no_send_path"),
            not_allowed: drop("not_allowed"),
            unknown_ssrc: drop("unknown_ssrc"),
            bad_red: drop("bad_red"),
            rejected: drop("rejected"),
            fanout_full: drop("fanout_full"),
            send_failed: drop("send_failed"),
            forward_failed: drop("forward_failed"),
            stale: drop("stale"),
            panicked: drop("panicked"),
        }
    }
}

pub struct Worker {
    index: usize,
    socket: UdpSocket,
    /// ICE-TCP: the listener and streams of this worker, when enabled.
    tcp: Option<TcpSide>,
    tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    /// The TCP listener's own address (its port differs from the UDP one unless fixed).
    tcp_local: Option<SocketAddr>,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    advertised_tcp: Option<SocketAddr>,
    certificate: RTCCertificate,
    slots: usize,
    red: usize,
    ice_disconnected: Duration,
    ice_failed: Duration,
    conns: HashMap<ConnKey, Conn>,
    by_addr: HashMap<Peer, ConnKey>,
    by_ufrag: HashMap<String, ConnKey>,
    rooms: HashMap<u32, WorkerRoom>,
    timers: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    retired: VecDeque<ConnKey>,
    control: mpsc::UnboundedReceiver<Control>,
    fanout: mpsc::Receiver<Fanout>,
    peers: Vec<mpsc::Sender<Fanout>>,
    peer_controls: Vec<mpsc::UnboundedSender<Control>>,
    reports: mpsc::UnboundedSender<Report>,
    metrics: MediaMetrics,
    counters: Counters,
    sources: Arc<AtomicU32>,
    batch: SendBatch,
    /// The real crypto provider; each connection's `KeyTap` wraps it.
    crypto: Arc<dyn RTCCryptoProvider>,
    /// Where a probe's own encryption is written, to compare with `rtc`'s.
    probe_buf: Vec<u8>,
    /// Where a listener's payload is built for `rtc`'s write path (RED is built per listener).
    payload_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    /// Reused between calls: a connection's decrypted inbound packets.
    inbound: Vec<rtc::rtp::Packet>,
    epoch: Instant,
    next_select: Instant,
    next_levels: Instant,
}

impl Worker {
    /// Runs the worker on the current thread until `Control::Stop` or until every sender
    /// of its control queue is gone.
    pub fn run(setup: WorkerSetup) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            setup.socket.set_nonblocking(true)?;
            let local_addr = setup.socket.local_addr()?;
            let socket = UdpSocket::from_std(setup.socket)?;
            let (tcp, tcp_events, advertised_tcp) = match setup.tcp {
                Some((listener, advertised)) => {
                    listener.set_nonblocking(true)?;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let (side, events) = TcpSide::new(listener);
                    (Some(side), Some(events), Some(advertised))
                }
                None => (None, None, None),
            };
            let now = Instant::now();
            let mut worker = Worker {
                index: setup.index,
                socket,
                local_addr,
                advertised: setup.advertised,
                advertised_tcp,
                certificate: setup.certificate,
                slots: setup.slots,
                red: setup.red,
                ice_disconnected: setup.ice_disconnected,
                ice_failed: setup.ice_failed,
                conns: HashMap::new(),
                by_addr: HashMap::new(),
                tcp_local: tcp.as_ref().and_then(|t| t.local_addr().ok()),
                tcp,
                tcp_events,
                by_ufrag: HashMap::new(),
                rooms: HashMap::new(),
                timers: BinaryHeap::new(),
                retired: VecDeque::with_capacity(RETIRED_KEYS),
                control: setup.control,
                fanout: setup.fanout,
                peers: setup.peers,
                peer_controls: setup.peer_controls,
                reports: setup.reports,
                counters: Counters::new(&setup.metrics, setup.index),
                metrics: setup.metrics,
                sources: setup.sources,
                batch: SendBatch::default(),
                crypto: rtc::crypto::default_provider()
                    .map_err(|e| anyhow::anyhow!("no crypto provider: {e:?}"))?,
                probe_buf: vec![0; MAX_DATAGRAM],
                payload_buf: vec![0; MAX_DATAGRAM],
                recv_buf: vec![0; MAX_DATAGRAM + 1],
                inbound: Vec::with_capacity(16),
                epoch: now,
                next_select: now + SELECT_EVERY,
                next_levels: now + LEVELS_EVERY,
            };
            worker.serve().await;
            Ok(())
        })
    }

    async fn serve(&mut self) {
        loop {
            self.flush();
            let wake = self.next_wake();
            tokio::select! {
                biased;
                command = self.control.recv() => match command {
                    None | Some(Control::Stop) => break,
                    Some(command) => self.on_control(command),
                },
                Some(first) = self.fanout.recv() => {
                    self.on_fanout(first);
                    for _ in 0..FANOUT_BURST {
                        match self.fanout.try_recv() {
                            Ok(next) => self.on_fanout(next),
                            Err(_) => break,
                        }
                    }
                }
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        self.read_burst();
                    }
                }
                Some(accepted) = accept_tcp(self.tcp.as_ref()) => self.on_tcp_accept(accepted),
                Some(event) = tcp_event(self.tcp_events.as_mut()) => self.on_tcp_event(event),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            self.on_timers(Instant::now());
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, false);
        }
        self.flush();
    }

    fn next_wake(&self) -> Instant {
        let mut wake = if self.rooms.is_empty() {
            Instant::now() + Duration::from_secs(1)
        } else {
            self.next_select.min(self.next_levels)
        };
        if let Some(Reverse((at, _))) = self.timers.peek() {
            wake = wake.min(*at);
        }
        wake
    }

    fn now_us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        flush_batch(&mut self.batch, &self.socket, &self.counters);
    }

    // ---- input ----------------------------------------------------------------------

    fn read_burst(&mut self) {
        for _ in 0..READ_BURST {
            match self.socket.try_recv_from(&mut self.recv_buf) {
                Ok((n, from)) => self.on_datagram(
                    n,
                    Peer {
                        addr: from,
                        tcp: false,
                    },
                ),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors surface here on Linux (a peer's port closed); not fatal.
                    tracing::trace!(error = %e, "media socket receive error");
                }
            }
        }
    }

    fn on_tcp_accept(&mut self, accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        match accepted {
            Ok((stream, from)) => {
                if !tcp.adopt(stream, from) {
                    self.counters.rejected.inc();
                    tracing::warn!(worker = self.index, "too many ICE-TCP streams; one refused");
                }
                self.counters.tcp_streams.set(tcp.streams() as i64);
            }
            Err(e) => tracing::debug!(worker = self.index, error = %e, "ICE-TCP accept failed"),
        }
    }

    fn on_tcp_event(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Frame { from, frame } => {
                // Bounded by the reader (at most a datagram's size).
                self.counters.tcp_frames_in.inc();
                let n = frame.len().min(self.recv_buf.len());
                self.recv_buf[..n].copy_from_slice(&frame[..n]);
                self.on_datagram(
                    n,
                    Peer {
                        addr: from,
                        tcp: true,
                    },
                );
            }
            TcpEvent::Closed { from } => {
                let peer = Peer {
                    addr: from,
                    tcp: true,
                };
                if let Some(tcp) = self.tcp.as_mut() {
                    tcp.close(&from);
                    self.counters.tcp_streams.set(tcp.streams() as i64);
                }
                if let Some(key) = self.by_addr.remove(&peer)
                    && let Some(conn) = self.conns.get_mut(&key)
                {
                    conn.addrs.retain(|a| *a != peer);
                    if conn.dest == Some(peer) {
                        conn.dest = None;
                    }
                }
            }
        }
    }

    fn on_datagram(&mut self, n: usize, peer: Peer) {
        let from = peer.addr;
        self.counters.datagrams_in.inc();
        self.counters.bytes_in.inc_by(n as u64);
        if n > MAX_DATAGRAM {
            self.counters.oversized.inc();
            return;
        }
        let datagram = &self.recv_buf[..n];
        let kind = demux::classify(datagram);
        if kind == Kind::Other {
            self.counters.malformed.inc();
            return;
        }
        // A binding request is routed by its USERNAME every time: a browser may check from
        // several addresses, and a NAT may rebind. The connection verifies the request's
        // integrity itself, so a forged one only maps the forger's own address.
        let by_ufrag = if kind == Kind::Stun {
            demux::server_ufrag(datagram).and_then(|u| self.by_ufrag.get(u).copied())
        } else {
            None
        };
        let key = match by_ufrag.or_else(|| self.by_addr.get(&peer).copied()) {
            Some(key) => key,
            None => {
                self.counters.unroutable.inc();
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            self.counters.unroutable.inc();
            return;
        };
        if by_ufrag.is_some() && !conn.addrs.contains(&peer) {
            // Only a request that proves it knows our password may add a route; a forged one
            // is left to `rtc`, which refuses it, and changes nothing here.
            if !demux::binding_integrity_ok(datagram, &conn.password, self.crypto.crypto()) {
                self.counters.rejected.inc();
                return;
            }
            if conn.addrs.len() == MAX_ADDRS_PER_CONN {
                let oldest = conn.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&key) {
                    self.by_addr.remove(&oldest);
                }
            }
            conn.addrs.push(peer);
            self.by_addr.insert(peer, key);
        }
        // `rtc` would decrypt and deliver RTP even on a connection we answered without a
        // receiving path, so the rule is applied here, before any crypto is spent.
        if kind == Kind::Rtp && !conn.receiving {
            self.counters.no_send_path.inc();
            return;
        }
        let now = Instant::now();
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: if peer.tcp {
                    self.tcp_local.unwrap_or(self.local_addr)
                } else {
                    self.local_addr
                },
                peer_addr: from,
                ecn: None,
                transport_protocol: if peer.tcp {
                    TransportProtocol::TCP
                } else {
                    TransportProtocol::UDP
                },
            },
            message: BytesMut::from(datagram),
        };
        self.guarded(key, |worker| {
            if let Some(conn) = worker.conns.get_mut(&key)
                && let Err(e) = conn.pc.handle_read(message)
            {
                worker.counters.rejected.inc();
                tracing::trace!(conn = key, error = %e, "datagram refused by the connection");
            }
            worker.drain(key, now);
        });
    }

    /// Runs `f`, which drives connection `key` through `rtc`. Should `rtc` panic on some input,
    /// that connection is closed and counted (`panicked`); the worker and every other
    /// connection on it go on.
    fn guarded(&mut self, key: ConnKey, f: impl FnOnce(&mut Self)) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(self))).is_err() {
            self.counters.panicked.inc();
            tracing::error!(
                worker = self.index,
                conn = key,
                "a media connection panicked; it is closed, the worker goes on"
            );
            self.close(key, true);
        }
    }

    /// Everything a connection has queued after an input: datagrams, events, media.
    fn drain(&mut self, key: ConnKey, now: Instant) {
        let mut inbound = std::mem::take(&mut self.inbound);
        let mut closed = false;
        {
            let Some(conn) = self.conns.get_mut(&key) else {
                self.inbound = inbound;
                return;
            };
            queue_writes(
                &mut conn.pc,
                &mut conn.dest,
                &mut self.batch,
                &self.socket,
                self.tcp.as_ref(),
                &self.counters,
            );
            while let Some(event) = conn.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                        RTCPeerConnectionState::Connected if !conn.connected => {
                            conn.connected = true;
                            // Only the first time: a reconnection is not a setup.
                            if let Some(answered) = conn.answered_at.take() {
                                self.metrics
                                    .connect_seconds
                                    .observe(now.duration_since(answered).as_secs_f64());
                            }
                        }
                        RTCPeerConnectionState::Disconnected => conn.connected = false,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            closed = true;
                        }
                        _ => {}
                    },
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        conn.inbound_ssrc = Some(init.ssrc);
                        // A new stream numbers its timestamps afresh.
                        conn.history.clear();
                        conn.inbound_level_id =
                            conn.pc
                                .rtp_receiver(init.receiver_id)
                                .and_then(|mut receiver| {
                                    receiver
                                        .get_parameters()
                                        .rtp_parameters
                                        .header_extensions
                                        .iter()
                                        .find(|h| h.uri == AUDIO_LEVEL_URI)
                                        .map(|h| h.id as u8)
                                });
                    }
                    _ => {}
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = conn.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(_, packet) => inbound.push(packet),
                    RTCMessage::RtcpPacket(_, packets) => {
                        for packet in &packets {
                            if let Some(rr) = packet.as_any().downcast_ref::<ReceiverReport>() {
                                observe_receiver_report(&self.metrics, rr);
                            }
                        }
                    }
                    _ => {}
                }
            }
            schedule(&mut self.timers, key, conn);
        }
        for packet in inbound.drain(..) {
            self.ingress(key, packet, now);
        }
        self.inbound = inbound;
        if closed {
            self.close(key, true);
        }
    }

    /// A speaker's decrypted packet: checked against their rights, then fanned out.
    fn ingress(&mut self, key: ConnKey, packet: rtc::rtp::Packet, now: Instant) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.may_send {
            self.counters.not_allowed.inc();
            return;
        }
        let Some(inbound) = conn.inbound else {
            self.counters.unknown_ssrc.inc();
            return;
        };
        let is_red = inbound.red_payload_type == Some(packet.header.payload_type);
        if conn.inbound_ssrc != Some(packet.header.ssrc)
            || (packet.header.payload_type != inbound.payload_type && !is_red)
        {
            self.counters.unknown_ssrc.inc();
            return;
        }
        let timestamp = packet.header.timestamp;
        let mut payload = packet.payload;
        if is_red {
            let Ok(parsed) = red::parse(&payload, inbound.payload_type) else {
                self.counters.bad_red.inc();
                return;
            };
            // The speaker's own repeats fill the history where a packet of theirs was lost
            // on the way here.
            if self.red > 0 {
                for (offset, block) in parsed.earlier.into_iter().flatten() {
                    conn.history.remember(Frame {
                        timestamp: timestamp.wrapping_sub(offset),
                        payload: payload.slice(block),
                    });
                }
            }
            payload = payload.slice(parsed.primary);
            self.counters.red_in.inc();
        }
        let mut redundancy: [Option<Frame>; MAX_REDUNDANCY] = Default::default();
        if self.red > 0 {
            redundancy = conn.history.before(timestamp, self.red);
            conn.history.remember(Frame {
                timestamp,
                payload: payload.clone(),
            });
        }
        self.counters.rtp_in.inc();
        let level = conn
            .inbound_level_id
            .and_then(|id| packet.header.get_extension(id))
            .and_then(|data| AudioLevel::from_element(&data))
            .map(|mut level| {
                conn.voice_bit_seen |= level.voice_activity;
                if inbound.vad_off || !conn.voice_bit_seen {
                    level.voice_activity = true;
                }
                level
            });
        let forwarded = Arc::new(Forwarded {
            room: conn.room,
            source: conn.source,
            seq: packet.header.sequence_number,
            timestamp,
            marker: packet.header.marker,
            level,
            payload,
            redundancy,
            arrived: now,
        });
        let Some(room) = self.rooms.get(&conn.room) else {
            return;
        };
        room.tap.offer(&forwarded);
        let mask = room.workers.load(Ordering::Relaxed);
        for (index, peer) in self.peers.iter().enumerate() {
            if index != self.index
                && mask & (1 << index) != 0
                && peer
                    .try_send(Fanout::Packet(Arc::clone(&forwarded)))
                    .is_err()
            {
                self.counters.fanout_full.inc();
            }
        }
        self.forward(&forwarded);
    }

    fn on_fanout(&mut self, message: Fanout) {
        match message {
            Fanout::Packet(packet) => self.forward(&packet),
        }
    }

    /// One speaker packet to every local listener whose slots carry that speaker.
    fn forward(&mut self, packet: &Forwarded) {
        let now = Instant::now();
        let now_us = self.now_us(now);
        let Some(room) = self.rooms.get_mut(&packet.room) else {
            return;
        };
        if let Some(level) = packet.level {
            room.selector
                .observe(packet.source, level.level, level.voice_activity, now_us);
        } else {
            // No level extension negotiated: count the packet as plain speech.
            room.selector.observe(packet.source, 30, true, now_us);
        }
        for &key in &room.members {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if !conn.connected || conn.source == packet.source {
                continue;
            }
            let Some(slot) = conn
                .slots
                .iter_mut()
                .find(|s| s.rewriter.source() == Some(packet.source))
            else {
                continue;
            };
            let Ok(out) =
                slot.rewriter
                    .rewrite(packet.source, packet.seq, packet.timestamp, now_us)
            else {
                // A duplicate, or a straggler from before a switch or far too late.
                self.counters.stale.inc();
                continue;
            };
            let header = RtpHeader {
                marker: packet.marker || out.switched,
                payload_type: slot.red_payload_type.unwrap_or(slot.payload_type),
                seq: out.seq,
                timestamp: out.timestamp,
                ssrc: slot.rewriter.ssrc(),
            };
            let rollover = slot.rollover.next(out.seq);
            // The lean path: the payload built and sealed straight into the send batch.
            if let Some(Peer {
                addr: dest,
                tcp: false,
            }) = conn.dest
                && let Some(sender) = conn.lean.sender(&conn.tap)
            {
                if self.batch.is_full() {
                    flush_batch(&mut self.batch, &self.socket, &self.counters);
                }
                if self.batch.push_with(dest, |buf| {
                    let end = buf.len().checked_sub(TAG_LEN)?;
                    let body = listener_payload(slot, packet, buf.get_mut(HEADER_LEN..end)?)?;
                    sender.seal_in_place(&header, rollover, body, buf)
                }) {
                    self.counters.forwarded.inc();
                    if slot.red_payload_type.is_some() {
                        self.counters.red_out.inc();
                    }
                } else {
                    self.counters.forward_failed.inc();
                }
                continue;
            }
            // `rtc`'s path, until the connection's keys are proven (or for good if they never
            // are); while probing, what it produced for this packet is compared with ours.
            let payload = if slot.red_payload_type.is_some() {
                match listener_payload(slot, packet, &mut self.payload_buf) {
                    Some(len) => Bytes::copy_from_slice(&self.payload_buf[..len]),
                    None => {
                        self.counters.forward_failed.inc();
                        continue;
                    }
                }
            } else {
                packet.payload.clone()
            };
            let rtp = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: header.marker,
                    payload_type: header.payload_type,
                    sequence_number: header.seq,
                    timestamp: header.timestamp,
                    ssrc: header.ssrc,
                    ..Default::default()
                },
                payload: payload.clone(),
            };
            let written = conn
                .pc
                .rtp_sender(slot.sender)
                .map(|mut sender| sender.write_rtp(now, rtp));
            if matches!(written, Some(Ok(()))) {
                self.counters.forwarded.inc();
                if slot.red_payload_type.is_some() {
                    self.counters.red_out.inc();
                }
            } else {
                self.counters.forward_failed.inc();
            }
            if conn.lean.is_probing() {
                let (lean, tap, crypto, scratch) = (
                    &mut conn.lean,
                    &conn.tap,
                    self.crypto.crypto(),
                    &mut self.probe_buf,
                );
                queue_writes_inspecting(
                    &mut conn.pc,
                    &mut conn.dest,
                    &mut self.batch,
                    &self.socket,
                    self.tcp.as_ref(),
                    &self.counters,
                    |datagram| {
                        if !is_packet(datagram, &header) {
                            return;
                        }
                        let learned =
                            lean.learn(tap, crypto, &header, rollover, &payload, datagram, scratch);
                        match learned {
                            Learned::Proven => tracing::debug!(conn = key, "lean SRTP path proven"),
                            Learned::GaveUp => tracing::warn!(
                                conn = key,
                                "SRTP keys never matched rtc's output; staying on rtc's write path"
                            ),
                            Learned::NotYet => {}
                        }
                    },
                );
            } else {
                queue_writes(
                    &mut conn.pc,
                    &mut conn.dest,
                    &mut self.batch,
                    &self.socket,
                    self.tcp.as_ref(),
                    &self.counters,
                );
            }
            // Writing media does not bring a connection's timers forward; only look when none
            // is queued (asking costs as much as the rest of this loop).
            if conn.scheduled.is_none() {
                schedule(&mut self.timers, key, conn);
            }
        }
        self.flush();
        self.metrics
            .forward_seconds
            .observe(packet.arrived.elapsed().as_secs_f64());
    }

    fn forget(&mut self, room: u32, source: u32) {
        let now_us = self.now_us(Instant::now());
        if let Some(room) = self.rooms.get_mut(&room)
            && room.selector.remove(source)
        {
            room.selector.update(now_us);
            apply_slots(room, &mut self.conns);
        }
    }

    // ---- timers ---------------------------------------------------------------------

    fn on_timers(&mut self, now: Instant) {
        let mut due = 0;
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now || due > 1024 {
                break;
            }
            self.timers.pop();
            due += 1;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if conn.scheduled != Some(at) {
                continue; // superseded by an earlier deadline that already ran
            }
            conn.scheduled = None;
            self.guarded(key, |worker| {
                if let Some(conn) = worker.conns.get_mut(&key)
                    && let Err(e) = conn.pc.handle_timeout(now)
                {
                    tracing::trace!(conn = key, error = %e, "timeout handling failed");
                }
                worker.drain(key, now);
            });
        }
        if now >= self.next_select {
            self.next_select = now + SELECT_EVERY;
            let now_us = self.now_us(now);
            for room in self.rooms.values_mut() {
                if room.selector.update(now_us) {
                    apply_slots(room, &mut self.conns);
                }
            }
        }
        if now >= self.next_levels {
            self.next_levels = now + LEVELS_EVERY;
            self.report_levels(now);
        }
    }

    /// Tells each room who of the speakers received here is talking, when that changed.
    fn report_levels(&mut self, now: Instant) {
        let now_us = self.now_us(now);
        for room in self.rooms.values_mut() {
            let mut levels: Vec<(ParticipantId, u8)> = room
                .selector
                .active_speakers(now_us)
                .filter_map(|s| {
                    room.members
                        .iter()
                        .filter_map(|k| self.conns.get(k))
                        .find(|c| c.source == s.key)
                        .map(|c| (c.participant.clone(), s.level))
                })
                .collect();
            levels.sort_by_key(|(_, level)| *level);
            let who: Vec<ParticipantId> = levels.iter().map(|(p, _)| p.clone()).collect();
            if who != room.last_levels {
                room.last_levels = who;
                let _ = self.reports.send(Report::Levels {
                    worker: self.index,
                    room: room.id.clone(),
                    levels,
                });
            }
        }
    }

    // ---- control --------------------------------------------------------------------

    fn on_control(&mut self, command: Control) {
        match command {
            Control::Offer {
                key,
                room,
                participant,
                offer,
                on_stage,
                may_send,
                reply,
            } => {
                let now = Instant::now();
                let existed = self.conns.contains_key(&key);
                if !existed && self.retired.contains(&key) {
                    // Closed here (its peer went away) while this offer was on its way; the
                    // hub forgets the key when our report arrives, and the next offer gets a
                    // fresh connection.
                    let _ = reply.send(Err(MediaError::new(
                        "media_unavailable",
                        "the connection was just closed; offer again",
                    )));
                    return;
                }
                let (room_id, who) = (room.id.clone(), participant.clone());
                // An offer from a new peer connection (the page was reloaded, the app
                // restarted) carries new ICE credentials: that is a new connection, not a
                // renegotiation of the old one, which is closed.
                let restarted = existed
                    && self
                        .conns
                        .get(&key)
                        .is_some_and(|c| c.remote_ufrag != ice_ufrag(&offer.description.sdp));
                if restarted {
                    self.close(key, false);
                }
                let existed = existed && !restarted;
                // `rtc` parses the offer: a panic there refuses this offer and nothing else.
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if existed {
                        self.renegotiate(key, *offer, on_stage, may_send, now)
                    } else {
                        self.open(key, room, participant, *offer, on_stage, may_send, now)
                    }
                }))
                .unwrap_or_else(|_| {
                    self.counters.panicked.inc();
                    tracing::error!(conn = key, "applying an offer panicked; it is refused");
                    Err(anyhow::anyhow!("the offer made the WebRTC library fail"))
                });
                if result.is_err() && !existed {
                    // Nothing was kept; let the hub forget the placement, and refuse a re-offer
                    // that still carries this key (the hub will give the next one a new key).
                    self.retire(key);
                    let _ = self.reports.send(Report::Closed {
                        key,
                        room: room_id,
                        participant: who,
                    });
                }
                let result = result.map_err(|e| {
                    tracing::debug!(conn = key, error = %e, "offer refused");
                    MediaError::new(
                        "invalid_sdp",
                        format!("the offer could not be applied: {e}"),
                    )
                });
                if result.is_ok() {
                    self.guarded(key, |worker| worker.drain(key, now));
                }
                let _ = reply.send(result);
            }
            Control::Permission { key, may_send } => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.may_send = may_send;
                }
            }
            Control::Close { key } => self.close(key, false),
            Control::Stats { reply } => {
                let _ = reply.send(WorkerStats {
                    connections: self.conns.len(),
                    connected: self.conns.values().filter(|c| c.connected).count(),
                    rooms: self.rooms.len(),
                    lean: self.conns.values().filter(|c| c.lean.is_ready()).count(),
                    lean_off: self
                        .conns
                        .values()
                        .filter(|c| matches!(c.lean, Lean::Off))
                        .count(),
                });
            }
            Control::Forget { room, source } => self.forget(room, source),
            Control::Stop => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        key: ConnKey,
        room: RoomRef,
        participant: ParticipantId,
        offer: Offer,
        on_stage: bool,
        may_send: bool,
        now: Instant,
    ) -> anyhow::Result<String> {
        let ufrag = random_alnum(16);
        let password = random_alnum(32);
        let tap = KeyTap::new(Arc::clone(&self.crypto));
        let remote_ufrag = ice_ufrag(&offer.description.sdp);
        let (pc, answered) = engine::answer(
            AnswerSetup {
                certificate: self.certificate.clone(),
                ufrag: ufrag.clone(),
                password: password.clone(),
                ice_disconnected: self.ice_disconnected,
                ice_failed: self.ice_failed,
                crypto: Arc::clone(&tap) as Arc<dyn RTCCryptoProvider>,
                ssrcs: (0..self.slots).map(|_| random_u32()).collect(),
                stream: format!("stoa-{key}"),
                advertised: self.advertised,
                advertised_tcp: self.advertised_tcp,
                red: self.red > 0,
            },
            offer,
            on_stage,
            now,
        )?;
        let Answered {
            sdp,
            slots,
            inbound,
            ..
        } = answered;
        let receiving = inbound.is_some() && on_stage;
        let slots: Vec<OutSlot> = slots.into_iter().map(OutSlot::new).collect();

        let source = self.sources.fetch_add(1, Ordering::Relaxed);
        let room_key = room.key;
        let entry = self.rooms.entry(room_key).or_insert_with(|| WorkerRoom {
            id: room.id.clone(),
            workers: room.workers.clone(),
            tap: room.tap.clone(),
            selector: SpeakerSelector::with_capacity(
                SelectorConfig {
                    slots: self.slots,
                    ..SelectorConfig::default()
                },
                8,
            ),
            members: Vec::new(),
            last_levels: Vec::new(),
        });
        entry.members.push(key);
        self.by_ufrag.insert(ufrag.clone(), key);
        let mut conn = Conn {
            pc,
            room: room_key,
            participant,
            ufrag,
            password,
            source,
            slots,
            receiving,
            may_send,
            inbound_ssrc: None,
            inbound_level_id: None,
            inbound,
            history: History::default(),
            voice_bit_seen: false,
            remote_ufrag,
            connected: false,
            answered_at: Some(now),
            addrs: Vec::new(),
            dest: None,
            tap,
            lean: Lean::default(),
            scheduled: None,
        };
        for (slot, heard) in conn.slots.iter_mut().zip(entry.selector.slots_for(source)) {
            slot.rewriter.set_source(heard);
        }
        schedule(&mut self.timers, key, &mut conn);
        tracing::debug!(worker = self.index, conn = key, room = %room.id, participant = %conn.participant, on_stage, slots = conn.slots.len(), "media connection opened");
        self.conns.insert(key, conn);
        self.counters.connections.set(self.conns.len() as i64);
        Ok(sdp)
    }

    fn renegotiate(
        &mut self,
        key: ConnKey,
        offer: Offer,
        on_stage: bool,
        may_send: bool,
        now: Instant,
    ) -> anyhow::Result<String> {
        let conn = self
            .conns
            .get_mut(&key)
            .ok_or_else(|| anyhow::anyhow!("no such connection"))?;
        let answered = engine::reanswer(&mut conn.pc, offer, self.slots, on_stage, now)?;
        conn.receiving = answered.inbound.is_some() && on_stage;
        conn.may_send = may_send;
        conn.inbound = answered.inbound;
        // A slot that stays on its sender keeps its rewriter (the client's stream continues);
        // one that moved or is new starts afresh.
        let mut old = std::mem::take(&mut conn.slots);
        conn.slots = answered
            .slots
            .iter()
            .map(
                |&sent| match old.iter().position(|o| o.sender == sent.sender) {
                    Some(at) => {
                        let mut kept = old.swap_remove(at);
                        kept.payload_type = sent.payload_type;
                        kept.red_payload_type = sent.red_payload_type;
                        kept
                    }
                    None => OutSlot::new(sent),
                },
            )
            .collect();
        if let Some(room) = self.rooms.get(&conn.room) {
            for (slot, heard) in conn
                .slots
                .iter_mut()
                .zip(room.selector.slots_for(conn.source))
            {
                slot.rewriter.set_source(heard);
            }
        }
        Ok(answered.sdp)
    }

    /// Remembers a key this worker gave up on its own, so a late offer for it is refused.
    fn retire(&mut self, key: ConnKey) {
        if self.retired.len() == RETIRED_KEYS {
            self.retired.pop_front();
        }
        self.retired.push_back(key);
    }

    /// Frees everything of one connection. `report`: the worker decided this (the peer went
    /// away), so the rest of the server must be told.
    fn close(&mut self, key: ConnKey, report: bool) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        tracing::debug!(worker = self.index, conn = key, participant = %conn.participant, by_peer = report, "media connection closed");
        // After a panic the connection may be broken inside: closing it must not panic again.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = conn.pc.close();
            queue_writes(
                &mut conn.pc,
                &mut conn.dest,
                &mut self.batch,
                &self.socket,
                self.tcp.as_ref(),
                &self.counters,
            );
        }));
        self.by_ufrag.remove(&conn.ufrag);
        for peer in &conn.addrs {
            if self.by_addr.get(peer) == Some(&key) {
                self.by_addr.remove(peer);
                if peer.tcp
                    && let Some(tcp) = self.tcp.as_mut()
                {
                    tcp.close(&peer.addr);
                }
            }
        }
        self.counters.connections.set(self.conns.len() as i64);
        let room_id = self.rooms.get(&conn.room).map(|r| r.id.clone());
        if let Some(room) = self.rooms.get_mut(&conn.room) {
            room.members.retain(|k| *k != key);
            let mask = room.workers.load(Ordering::Relaxed);
            for (index, peer) in self.peer_controls.iter().enumerate() {
                if index != self.index && mask & (1 << index) != 0 {
                    // The control queue, not fan-out: this must not be lost to a full queue.
                    let _ = peer.send(Control::Forget {
                        room: conn.room,
                        source: conn.source,
                    });
                }
            }
            if room.members.is_empty() {
                let id = room.id.clone();
                let had_levels = !room.last_levels.is_empty();
                self.rooms.remove(&conn.room);
                if had_levels {
                    let _ = self.reports.send(Report::Levels {
                        worker: self.index,
                        room: id,
                        levels: Vec::new(),
                    });
                }
            } else {
                self.forget(conn.room, conn.source);
            }
        }
        if report {
            self.retire(key);
        }
        if report && let Some(room) = room_id {
            let _ = self.reports.send(Report::Closed {
                key,
                room,
                participant: conn.participant,
            });
        }
    }
}

/// Moves everything a connection has to send into the batch, sending full batches on the way.
/// Notes where the connection's SRTP/SRTCP goes (the selected pair), for the lean path.
fn queue_writes(
    pc: &mut RTCPeerConnection,
    dest: &mut Option<Peer>,
    batch: &mut SendBatch,
    socket: &UdpSocket,
    tcp: Option<&TcpSide>,
    counters: &Counters,
) {
    queue_writes_inspecting(pc, dest, batch, socket, tcp, counters, |_| {});
}

/// `queue_writes`, showing each datagram to `inspect` on the way.
#[allow(clippy::too_many_arguments)]
fn queue_writes_inspecting(
    pc: &mut RTCPeerConnection,
    dest: &mut Option<Peer>,
    batch: &mut SendBatch,
    socket: &UdpSocket,
    tcp: Option<&TcpSide>,
    counters: &Counters,
    mut inspect: impl FnMut(&[u8]),
) {
    while let Some(out) = pc.poll_write() {
        let peer = Peer {
            addr: out.transport.peer_addr,
            tcp: out.transport.transport_protocol == TransportProtocol::TCP,
        };
        if matches!(demux::classify(&out.message), Kind::Rtp | Kind::Rtcp) {
            *dest = Some(peer);
        }
        inspect(&out.message);
        if peer.tcp {
            match tcp.map(|t| t.send(peer.addr, &out.message)) {
                Some(Ok(())) => {
                    counters.datagrams_out.inc();
                    counters.bytes_out.inc_by(out.message.len() as u64);
                }
                _ => {
                    counters.send_failed.inc();
                }
            }
            continue;
        }
        if batch.is_full() {
            flush_batch(batch, socket, counters);
        }
        batch.push(&out.message, out.transport.peer_addr);
    }
}

/// The next ICE-TCP client, or never when TCP is off.
async fn accept_tcp(
    tcp: Option<&TcpSide>,
) -> Option<std::io::Result<(tokio::net::TcpStream, SocketAddr)>> {
    match tcp {
        Some(tcp) => Some(tcp.accept().await),
        None => std::future::pending().await,
    }
}

/// The next frame or closed stream from ICE-TCP, or never when TCP is off.
async fn tcp_event(events: Option<&mut mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes what `slot`'s listener receives of `packet` into `out`: the Opus frame, or for a RED
/// listener a RED payload with the earlier frames of the slot's current turn. Returns the
/// length; `None` if it does not fit. Allocates nothing.
fn listener_payload(slot: &OutSlot, packet: &Forwarded, out: &mut [u8]) -> Option<usize> {
    if slot.red_payload_type.is_none() {
        let len = packet.payload.len();
        out.get_mut(..len)?.copy_from_slice(&packet.payload);
        return Some(len);
    }
    red::write(
        out,
        slot.payload_type,
        &packet.payload,
        packet.timestamp,
        &packet.redundancy,
        |timestamp| slot.rewriter.in_turn(packet.source, timestamp),
    )
}

/// Whether `datagram` is the SRTP packet `rtc` made of `header` (its header is in clear).
fn is_packet(datagram: &[u8], header: &RtpHeader) -> bool {
    datagram.len() > 12
        && matches!(demux::classify(datagram), Kind::Rtp)
        && datagram[1] & 0x7f == header.payload_type
        && datagram[2..4] == header.seq.to_be_bytes()
        && datagram[8..12] == header.ssrc.to_be_bytes()
}

fn flush_batch(batch: &mut SendBatch, socket: &UdpSocket, counters: &Counters) {
    let done = batch.flush(socket);
    counters.datagrams_out.inc_by(done.datagrams);
    counters.bytes_out.inc_by(done.bytes);
    counters.send_calls.inc_by(done.calls);
    counters.send_failed.inc_by(done.dropped);
}

/// The first `a=ice-ufrag:` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

/// Queues the connection's next deadline if it is earlier than the one already queued.
fn schedule(timers: &mut BinaryHeap<Reverse<(Instant, ConnKey)>>, key: ConnKey, conn: &mut Conn) {
    if let Some(at) = conn.pc.poll_timeout()
        && conn.scheduled.is_none_or(|queued| at < queued)
    {
        conn.scheduled = Some(at);
        timers.push(Reverse((at, key)));
    }
}

/// Points every member's slots at what the room's selection says they hear now.
fn apply_slots(room: &WorkerRoom, conns: &mut HashMap<ConnKey, Conn>) {
    for key in &room.members {
        if let Some(conn) = conns.get_mut(key) {
            for (slot, heard) in conn
                .slots
                .iter_mut()
                .zip(room.selector.slots_for(conn.source))
            {
                slot.rewriter.set_source(heard);
            }
        }
    }
}

/// Loss, jitter and round-trip time from a listener's report about one of our slots.
fn observe_receiver_report(metrics: &MediaMetrics, rr: &ReceiverReport) {
    let arrival = ntp_middle_now();
    for report in &rr.reports {
        metrics
            .rr_fraction_lost
            .observe(f64::from(report.fraction_lost) / 256.0);
        metrics
            .rr_jitter_seconds
            .observe(f64::from(report.jitter) / 48_000.0);
        if report.last_sender_report != 0 {
            // RFC 3550 §6.4.1, in 1/65536 s.
            let rtt = arrival
                .wrapping_sub(report.last_sender_report)
                .wrapping_sub(report.delay);
            if rtt < 65_536 * 10 {
                metrics.rtt_seconds.observe(f64::from(rtt) / 65_536.0);
            }
        }
    }
}

/// The middle 32 bits of the current NTP time, as in receiver reports' LSR field.
fn ntp_middle_now() -> u32 {
    let since_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_unix.as_secs() + 2_208_988_800;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (((seconds & 0xffff) << 16) | (fraction >> 16)) as u32
}
