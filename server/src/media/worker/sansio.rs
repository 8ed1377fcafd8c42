//! The worker's core, without I/O: every connection, route and room of one worker, driven by
//! inputs that carry their time ([`Now`]) — datagrams, fan-out items, control messages,
//! timeouts. Its output goes to an [`Egress`] (the send batch) and to the queues of
//! [`Links`]; [`Core::poll_timeout`] says when it next wants [`Core::handle_timeout`]. It never
//! reads a clock, touches a socket or waits.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::sansio::Protocol;
use rtc::shared::marshal::Unmarshal;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc;

use super::super::audio_level::AudioLevel;
use super::super::batch::MAX_DATAGRAM;
use super::super::demux::{self, Kind};
use super::super::lean::{Received, Shared as LeanShared};
use super::super::red::{self, Frame, MAX_REDUNDANCY};
use super::counters::Counters;
use super::relay::RelayIn;
use super::room::Room;
use super::routes::{Found, Routes};
use super::transport::{Conns, Link, Timers, queue_writes};
use super::{
    ConnKey, Control, Egress, Fanout, Forwarded, Now, Peer, Report, RoomKey, SourceId, rtcp,
};
use crate::metrics::MediaMetrics;

/// How often slots are re-decided from the levels heard.
const SELECT_EVERY: Duration = Duration::from_millis(20);
/// How often the speakers' levels go to their rooms.
const LEVELS_EVERY: Duration = Duration::from_millis(250);
/// Connections' timeouts handled per call, so one call stays short.
const TIMEOUTS_PER_CALL: usize = 1024;
/// How long after the last input that wants a prompt answer the core calls itself quiet.
const QUIET_AFTER: Duration = Duration::from_secs(2);

/// When the last input came that wants prompt answers: an offer, a permission to send, a
/// handshake, audio. Its own field, so it can be marked while a connection is borrowed.
pub(super) struct Activity(Instant);

impl Activity {
    pub(super) fn mark(&mut self, at: Instant) {
        self.0 = self.0.max(at);
    }
}

/// What a core is, fixed for its life.
pub struct CoreSetup {
    pub index: usize,
    /// The UDP socket's address, and the ICE-TCP listener's when there is one.
    pub local_addr: SocketAddr,
    pub tcp_local: Option<SocketAddr>,
    /// What the answers' candidates advertise.
    pub advertised: SocketAddr,
    pub advertised_tcp: Option<SocketAddr>,
    pub certificate: RTCCertificate,
    /// Set: new connections are lean (`media::lean`), on this shared DTLS configuration.
    pub lean: Option<Arc<LeanShared>>,
    pub slots: usize,
    pub red: usize,
    pub ice_disconnected: Duration,
    pub ice_failed: Duration,
    pub metrics: MediaMetrics,
    /// Where every worker draws its connections' source ids from.
    pub sources: Arc<AtomicU32>,
}

/// The core's queues to the rest of the server; none of them ever waits.
pub struct Links {
    /// Every worker's fan-out queue, this one's included (skipped).
    pub peers: Vec<mpsc::Sender<Fanout>>,
    pub peer_controls: Vec<mpsc::UnboundedSender<Control>>,
    pub reports: mpsc::UnboundedSender<Report>,
}

pub struct Core<E: Egress> {
    pub(super) setup: CoreSetup,
    pub(super) conns: Conns,
    pub(super) routes: Routes,
    pub(super) rooms: HashMap<RoomKey, Room>,
    pub(super) timers: Timers,
    /// Connections this worker closed on its own, so a late offer for one is refused.
    pub(super) retired: VecDeque<ConnKey>,
    pub(super) links: Links,
    pub(super) counters: Counters,
    pub(super) egress: E,
    /// The real crypto provider; each connection's `KeyTap` wraps it.
    pub(super) crypto: Arc<dyn RTCCryptoProvider>,
    /// Where a probe's own encryption is written, to compare with `rtc`'s.
    pub(super) probe_buf: Vec<u8>,
    /// Where a listener's payload is built for `rtc`'s write path (RED is built per listener).
    pub(super) payload_buf: Vec<u8>,
    /// ICE credentials for the next connections instead of random ones (`pair::Pair`).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fixed_credentials: Option<(String, String)>,
    /// The links this worker takes other nodes' audio on, by link number.
    pub(super) relay_in: HashMap<u32, RelayIn>,
    /// Where relayed datagrams are sealed and opened.
    pub(super) relay_buf: Vec<u8>,
    /// Reused between calls: a connection's decrypted inbound packets.
    inbound: Vec<rtc::rtp::Packet>,
    epoch: Instant,
    next_select: Instant,
    next_levels: Instant,
    /// When the last input that wants prompt answers came (see [`Core::quiet`]).
    pub(super) activity: Activity,
}

impl<E: Egress> Core<E> {
    /// A core with no connections, started at `now`.
    pub fn new(setup: CoreSetup, links: Links, egress: E, now: Instant) -> anyhow::Result<Self> {
        Ok(Core {
            counters: Counters::new(&setup.metrics, setup.index),
            setup,
            conns: Conns::default(),
            routes: Routes::default(),
            rooms: HashMap::new(),
            timers: Timers::new(now),
            retired: VecDeque::with_capacity(super::control::RETIRED_KEYS),
            links,
            egress,
            crypto: rtc::crypto::default_provider()
                .map_err(|e| anyhow::anyhow!("no crypto provider: {e:?}"))?,
            probe_buf: vec![0; MAX_DATAGRAM],
            payload_buf: vec![0; MAX_DATAGRAM],
            #[cfg(any(test, feature = "fuzzing"))]
            fixed_credentials: None,
            relay_in: HashMap::new(),
            relay_buf: vec![0; MAX_DATAGRAM],
            inbound: Vec::with_capacity(16),
            epoch: now,
            next_select: now + SELECT_EVERY,
            next_levels: now + LEVELS_EVERY,
            activity: Activity(now),
        })
    }

    /// Whether, for [`QUIET_AFTER`], only settled traffic has come: consent checks and RTCP
    /// from addresses already known. No offer, no permission to send, no handshake, no audio
    /// (a speaker's, another worker's or another node's). A quiet worker's datagrams can
    /// wait a few milliseconds to be read together (the shell's `Gather`); anything else
    /// ends the quiet at once.
    pub fn quiet(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.activity.0) >= QUIET_AFTER
    }

    pub fn egress(&self) -> &E {
        &self.egress
    }

    pub fn egress_mut(&mut self) -> &mut E {
        &mut self.egress
    }

    /// When [`Core::handle_timeout`] is next due; `None`: only when an input comes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rooms = (!self.rooms.is_empty()).then(|| self.next_select.min(self.next_levels));
        let timers = self.timers.peek().map(|(at, _)| at);
        match (rooms, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn now_us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// One datagram from `peer`, over UDP or an ICE-TCP stream.
    pub fn handle_datagram(&mut self, now: Now, peer: Peer, datagram: &[u8]) {
        self.counters.datagrams_in.inc();
        self.counters.bytes_in.inc_by(datagram.len() as u64);
        let drops = &self.counters.drops;
        if datagram.len() > MAX_DATAGRAM {
            drops.oversized.inc();
            return;
        }
        let kind = demux::classify(datagram);
        if kind == Kind::Other {
            drops.malformed.inc();
            return;
        }
        if !matches!(kind, Kind::Stun | Kind::Rtcp) {
            self.activity.mark(now.at);
        }
        if kind == Kind::Relay {
            self.relay_datagram(now, peer, datagram);
            return;
        }
        // The connection verifies a request's integrity itself, so a forged one only maps the
        // forger's own address.
        let Some(found) = self.routes.find(kind, datagram, &peer) else {
            drops.unroutable.inc();
            return;
        };
        let key = found.key();
        let Some(conn) = self.conns.get_mut(&key) else {
            drops.unroutable.inc();
            return;
        };
        if matches!(found, Found::ByUfrag(_)) && !conn.addrs.contains(&peer) {
            // Only a request that proves it knows our password may add a route; a forged one
            // is left to `rtc`, which refuses it, and changes nothing here.
            if !demux::binding_integrity_ok(datagram, &conn.password) {
                drops.rejected.inc();
                return;
            }
            self.routes.add_addr(key, &mut conn.addrs, peer);
            self.activity.mark(now.at);
        }
        // `rtc` would decrypt and deliver RTP even on a connection we answered without a
        // receiving path, so the rule is applied here, before any crypto is spent.
        if kind == Kind::Rtp && !conn.receiving {
            drops.no_send_path.inc();
            return;
        }
        if let Link::Lean(_) = conn.pc {
            self.guarded(key, now, |core| {
                core.lean_datagram(key, now, peer, datagram)
            });
            return;
        }
        let local_addr = match peer.tcp {
            true => self.setup.tcp_local.unwrap_or(self.setup.local_addr),
            false => self.setup.local_addr,
        };
        let message = TaggedBytesMut {
            now: now.at,
            transport: TransportContext {
                local_addr,
                peer_addr: peer.addr,
                ecn: None,
                transport_protocol: match peer.tcp {
                    true => TransportProtocol::TCP,
                    false => TransportProtocol::UDP,
                },
            },
            message: BytesMut::from(datagram),
        };
        self.guarded(key, now, |core| {
            if let Some(Link::Rtc(pc)) = core.conns.get_mut(&key).map(|c| &mut c.pc)
                && let Err(e) = pc.handle_read(message)
            {
                core.counters.drops.rejected.inc();
                tracing::trace!(conn = %key, error = %e, "datagram refused by the connection");
            }
            core.drain(key, now);
        });
    }

    /// A speaker's packet from another worker of the room.
    pub fn handle_fanout(&mut self, now: Now, item: Fanout) {
        self.activity.mark(now.at);
        match item {
            Fanout::Packet(packet) => self.forward(&packet, now),
        }
    }

    /// The ICE-TCP stream from `from` ended: its connection is no longer reached there.
    pub fn handle_stream_closed(&mut self, from: SocketAddr) {
        let peer = Peer::tcp(from);
        if let Some(key) = self.routes.stream_closed(&peer)
            && let Some(conn) = self.conns.get_mut(&key)
        {
            conn.addrs.retain(|a| *a != peer);
            if conn.dest == Some(peer) {
                conn.dest = None;
            }
            if let Link::Lean(lean) = &mut conn.pc {
                lean.forget(peer);
            }
        }
    }

    /// Runs what is due at `now`: connections' timers, the slots' selection, level reports.
    pub fn handle_timeout(&mut self, now: Now) {
        let mut due = 0;
        while let Some((at, key)) = self.timers.peek() {
            if at > now.at || due > TIMEOUTS_PER_CALL {
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
            self.guarded(key, now, |core| {
                match core.conns.get_mut(&key).map(|c| &mut c.pc) {
                    Some(Link::Rtc(pc)) => {
                        if let Err(e) = pc.handle_timeout(now.at) {
                            tracing::trace!(conn = %key, error = %e, "timeout handling failed");
                        }
                    }
                    Some(Link::Lean(lean)) => {
                        lean.handle_timeout(now, &mut lean_send(&mut core.egress))
                    }
                    None => {}
                }
                core.drain(key, now);
            });
        }
        if now.at >= self.next_select {
            self.next_select = now.at + SELECT_EVERY;
            let now_us = self.now_us(now.at);
            for room in self.rooms.values_mut() {
                if room.selector.update(now_us) {
                    room.apply_slots(&mut self.conns);
                }
            }
        }
        if now.at >= self.next_levels {
            self.next_levels = now.at + LEVELS_EVERY;
            let now_us = self.now_us(now.at);
            for room in self.rooms.values_mut() {
                if let Some((levels, changed_at)) = room.levels_changed(&self.conns, now_us) {
                    let _ = self.links.reports.send(Report::Levels {
                        worker: self.setup.index,
                        room: room.id.clone(),
                        levels,
                        heard: self.epoch + Duration::from_micros(changed_at),
                    });
                }
            }
        }
    }

    /// Closes every connection (the worker stops).
    pub fn close_all(&mut self, now: Now) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, false, now);
        }
    }

    /// Runs `f`, which drives connection `key` through `rtc`. Should `rtc` panic on some input,
    /// that connection is closed and counted (`panicked`); the worker and every other
    /// connection on it go on.
    pub(super) fn guarded(&mut self, key: ConnKey, now: Now, f: impl FnOnce(&mut Self)) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(self))).is_err() {
            self.counters.drops.panicked.inc();
            tracing::error!(
                worker = self.setup.index,
                conn = %key,
                "a media connection panicked; it is closed, the worker goes on"
            );
            self.close(key, true, now);
        }
    }

    /// Everything a connection has queued after an input: datagrams, events, media.
    pub(super) fn drain(&mut self, key: ConnKey, now: Now) {
        let mut inbound = std::mem::take(&mut self.inbound);
        let closed = match self.conns.get_mut(&key) {
            None => false,
            Some(conn) => {
                if let Link::Rtc(pc) = &mut conn.pc {
                    queue_writes(pc, &mut conn.dest, &mut self.egress);
                }
                let changes = conn.poll_events(now.at);
                if let Some(took) = changes.first_connected {
                    self.setup
                        .metrics
                        .connect_seconds
                        .observe(took.as_secs_f64());
                }
                let metrics = &self.setup.metrics;
                conn.poll_media(&mut inbound, |rr| {
                    rtcp::observe_receiver_report(metrics, rr, now.wall);
                });
                conn.schedule(key, &mut self.timers, now.at);
                changes.closed
            }
        };
        for packet in inbound.drain(..) {
            self.ingress(key, packet, now);
        }
        self.inbound = inbound;
        if closed {
            self.close(key, true, now);
        }
    }

    /// One datagram for a lean connection: it answers checks and handshakes itself (its
    /// datagrams go straight into the send batch); a decrypted microphone packet goes to
    /// [`Self::ingress`], receiver reports to the metrics.
    fn lean_datagram(&mut self, key: ConnKey, now: Now, from: Peer, datagram: &[u8]) {
        let Some(Link::Lean(lean)) = self.conns.get_mut(&key).map(|c| &mut c.pc) else {
            return;
        };
        match lean.handle_datagram(now, from, datagram, &mut lean_send(&mut self.egress)) {
            Ok(Received::Handled) => {}
            Ok(Received::Rtp(plain)) => match rtc::rtp::Packet::unmarshal(&mut &plain[..]) {
                Ok(packet) => self.inbound.push(packet),
                Err(_) => {
                    self.counters.drops.malformed.inc();
                }
            },
            Ok(Received::Rtcp(mut plain)) => match rtc::rtcp::packet::unmarshal(&mut plain) {
                Ok(packets) => {
                    for packet in &packets {
                        if let Some(rr) = packet.as_any().downcast_ref::<ReceiverReport>() {
                            rtcp::observe_receiver_report(&self.setup.metrics, rr, now.wall);
                        }
                    }
                }
                Err(_) => {
                    self.counters.drops.malformed.inc();
                }
            },
            Err(refusal) => {
                self.counters.drops.rejected.inc();
                tracing::trace!(conn = %key, ?refusal, "datagram refused by the lean connection");
            }
        }
        self.drain(key, now);
    }

    /// A speaker's decrypted packet: checked against their rights, then fanned out.
    fn ingress(&mut self, key: ConnKey, packet: rtc::rtp::Packet, now: Now) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let drops = &self.counters.drops;
        if !conn.may_send {
            drops.not_allowed.inc();
            return;
        }
        let Some(inbound) = conn.inbound else {
            drops.unknown_ssrc.inc();
            return;
        };
        let is_red = inbound.red_payload_type == Some(packet.header.payload_type);
        if conn.inbound_ssrc != Some(packet.header.ssrc)
            || (packet.header.payload_type != inbound.payload_type && !is_red)
        {
            drops.unknown_ssrc.inc();
            return;
        }
        let red_depth = self.setup.red;
        let timestamp = packet.header.timestamp;
        let mut payload = packet.payload;
        if is_red {
            let Ok(parsed) = red::parse(&payload, inbound.payload_type) else {
                drops.bad_red.inc();
                return;
            };
            // The speaker's own repeats fill the history where a packet of theirs was lost
            // on the way here.
            if red_depth > 0 {
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
        if red_depth > 0 {
            redundancy = conn.history.before(timestamp, red_depth);
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
            source: conn.source.0,
            seq: packet.header.sequence_number,
            timestamp,
            marker: packet.header.marker,
            level,
            payload,
            redundancy,
            arrived: now.at,
        });
        self.enter(forwarded, None, now);
    }

    /// A source of `room` stopped for good: it leaves the selection here.
    pub(super) fn forget(&mut self, room: RoomKey, source: SourceId, now: Now) {
        let now_us = self.now_us(now.at);
        if let Some(room) = self.rooms.get_mut(&room) {
            room.forget(source, now_us, &mut self.conns);
        }
    }
}

/// Where a lean connection's own datagrams (check answers, handshake flights, reports) go:
/// the send batch, flushed when full, or the ICE-TCP stream they answer.
pub(super) fn lean_send<E: Egress>(egress: &mut E) -> impl FnMut(Peer, &[u8]) + '_ {
    move |to, datagram| egress.send_to(to, datagram)
}
