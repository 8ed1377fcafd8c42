//! One client's connection on this worker (mediasoup's Transport): the `rtc` peer connection
//! and what the worker keeps beside it — its slots towards a listener, its microphone as a
//! speaker, its addresses and its place in the timer heap. Moves `rtc`'s output into the
//! egress; decides nothing about rooms or forwarding.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::TransportProtocol;

use super::super::demux::{self, Kind};
use super::super::engine::{self, Inbound, SlotSender};
use super::super::lean::{self, LeanConnection};
use super::super::red::History;
use super::super::slot::SlotRewriter;
use super::super::srtp::{KeyTap, Lean, Rollover};
use super::super::{prefetch, random_u32};
use super::{ConnKey, Egress, Peer, RoomKey, SourceId};
use crate::control::ParticipantId;

/// Connections' deadlines, earliest first. A connection's entry is live only while it equals
/// its `scheduled`; later ones are skipped when they come up.
///
/// A lean connection's deadlines a second or more away (consent, six seconds after the client's
/// last check; letting go of the handshake) are moved later, onto a grid of [`GRID`] steps
/// from the worker's start. None of them needs more precision, and the consent deadlines of a
/// thousand silent listeners then fall on four instants a second, each one wake-up of the
/// worker, instead of a wake-up each. Nearer deadlines (a DTLS retransmission, a report) stay
/// as they are.
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    epoch: Instant,
}

/// The step of the grid that far deadlines of lean connections are put on.
const GRID: Duration = Duration::from_millis(250);
/// How far a deadline must be to go on the grid.
const FAR: Duration = Duration::from_secs(1);

impl Timers {
    pub fn new(epoch: Instant) -> Self {
        Self {
            heap: BinaryHeap::new(),
            epoch,
        }
    }

    /// The earliest entry.
    pub fn peek(&self) -> Option<(Instant, ConnKey)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    pub fn pop(&mut self) {
        self.heap.pop();
    }

    fn push(&mut self, at: Instant, key: ConnKey) {
        self.heap.push(Reverse((at, key)));
    }

    /// `at`, or for a deadline at least [`FAR`] after `now` the next point of the grid at or
    /// after it: never earlier than asked.
    fn coarse(&self, at: Instant, now: Instant) -> Instant {
        if at.saturating_duration_since(now) < FAR {
            return at;
        }
        let grid = GRID.as_nanos();
        let steps = at
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .div_ceil(grid);
        self.epoch + Duration::from_nanos(u64::try_from(steps * grid).unwrap_or(u64::MAX))
    }
}

/// The worker's connections by key. Each one is boxed: a `Transport` is ~9 KiB inline (almost
/// all of it `rtc`'s `RTCPeerConnection`), and a hash map keeps up to twice its length in empty
/// buckets (1 024 listeners take 2 048), so inline it cost up to 18 KiB per connection; a box
/// costs its size plus a pointer per bucket. Looked up once per listener per forwarded packet,
/// so keyed by [`KeyHash`], not SipHash: the keys are the hub's own numbers, never a client's.
pub(super) type Conns = HashMap<ConnKey, Box<Transport>, BuildHasherDefault<KeyHash>>;

/// Fibonacci hashing of the hub's connection numbers: one multiply. `hashbrown` picks a bucket
/// from the low bits (distinct for consecutive keys) and its tag from the top seven (mixed by
/// the multiply). Not for keys anyone outside the server chooses.
#[derive(Default)]
pub(super) struct KeyHash(u64);

impl Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One audio section towards the client: a slot of the room's selection.
pub(super) struct OutSlot {
    /// `rtc`'s sender for this slot; `None` on a lean connection (it has no senders).
    pub sender: Option<RTCRtpSenderId>,
    /// Opus as this listener's client numbers it.
    pub payload_type: u8,
    /// RED as this listener's client numbers it, when negotiated: the slot then sends RED.
    pub red_payload_type: Option<u8>,
    pub rewriter: SlotRewriter,
    pub rollover: Rollover,
}

impl OutSlot {
    pub fn new(slot: SlotSender) -> Self {
        OutSlot {
            sender: Some(slot.sender),
            payload_type: slot.payload_type,
            red_payload_type: slot.red_payload_type,
            rewriter: SlotRewriter::new(slot.ssrc, random_u32() as u16, random_u32()),
            rollover: Rollover::default(),
        }
    }

    /// A lean connection's slot: its SSRC and the payload types its client offered.
    pub fn lean(ssrc: u32, payload_type: u8, red_payload_type: Option<u8>) -> Self {
        OutSlot {
            sender: None,
            payload_type,
            red_payload_type,
            rewriter: SlotRewriter::new(ssrc, random_u32() as u16, random_u32()),
            rollover: Rollover::default(),
        }
    }
}

/// What a connection is made of (`[media] listener_transport`, chosen when it is opened).
/// Both boxed: `rtc`'s connection is ~8.5 KiB inline, a lean one ~0.3 KiB, and the
/// `Transport` carries only a pointer either way.
pub(super) enum Link {
    /// `rtc`'s full peer connection.
    Rtc(Box<RTCPeerConnection>),
    /// The lean transport (`media::lean`).
    Lean(Box<LeanConnection>),
}

impl Link {
    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            Link::Rtc(pc) => pc.poll_timeout(),
            Link::Lean(lean) => lean.poll_timeout(),
        }
    }
}

pub(super) struct Transport {
    pub pc: Link,
    pub room: RoomKey,
    pub participant: ParticipantId,
    pub ufrag: String,
    /// Our ICE password: a binding request from a new address must check with it.
    pub password: String,
    /// This connection's audio in the room's selection (and in every slot it feeds).
    pub source: SourceId,
    pub slots: Vec<OutSlot>,
    /// The last negotiation gave it a receiving path on our side (it was on stage).
    pub receiving: bool,
    /// The room says it may be heard now (on stage, not muted, connected).
    pub may_send: bool,
    pub inbound_ssrc: Option<u32>,
    pub inbound_level_id: Option<u8>,
    /// What the microphone section negotiated (payload type, whether the V bit is in use).
    pub inbound: Option<Inbound>,
    /// The last frames received from this client (speakers only): RED listeners' redundancy.
    pub history: History,
    /// A packet from this client has had the RFC 6464 V bit set: from then on it is trusted.
    /// Until then (some clients never set it) the level alone tells speech from silence.
    pub voice_bit_seen: bool,
    /// The client's ICE username fragment, from its offer: a different one is a new peer.
    pub remote_ufrag: Option<String>,
    pub connected: bool,
    /// Until the connection first comes up.
    pub answered_at: Option<Instant>,
    pub addrs: Vec<Peer>,
    /// Where `rtc` last sent this connection's SRTP/SRTCP: the selected ICE pair's remote.
    pub dest: Option<Peer>,
    /// This connection's crypto provider, which learns its SRTP keys.
    pub tap: Arc<KeyTap>,
    /// Whether forwarded audio bypasses `rtc`'s write path (see `srtp`).
    pub lean: Lean,
    /// The earliest deadline queued in the timer heap for this connection.
    pub scheduled: Option<Instant>,
}

/// What a connection's events said.
#[derive(Default)]
pub(super) struct Changes {
    /// It came up for the first time this long after its answer.
    pub first_connected: Option<std::time::Duration>,
    /// It failed or closed.
    pub closed: bool,
}

impl Transport {
    /// The forwarding loop's prefetch, second stage (this connection is in cache): its slots
    /// and its lean connection.
    #[inline]
    pub fn prefetch_parts(&self) {
        prefetch::lines(self.slots.as_ptr().cast(), 2);
        if let Link::Lean(lean) = &self.pc {
            prefetch::lines((&**lean as *const LeanConnection).cast(), 2);
        }
    }

    /// Third stage (its lean connection is in cache): its keys' box and its slots' reports.
    #[inline]
    pub fn prefetch_crypto(&self) {
        if let Link::Lean(lean) = &self.pc {
            lean.prefetch_crypto();
        }
    }

    /// Fourth stage (its keys' box is in cache): the cipher's key schedule.
    #[inline]
    pub fn prefetch_cipher(&self) {
        if let Link::Lean(lean) = &self.pc {
            lean.prefetch_cipher();
        }
    }

    /// Queues the connection's next deadline if it is earlier than the one already queued (a
    /// lean connection's far ones on the timers' grid).
    pub fn schedule(&mut self, key: ConnKey, timers: &mut Timers, now: Instant) {
        let Some(at) = self.pc.poll_timeout() else {
            return;
        };
        let at = match self.pc {
            Link::Lean(_) => timers.coarse(at, now),
            Link::Rtc(_) => at,
        };
        if self.scheduled.is_none_or(|queued| at < queued) {
            self.scheduled = Some(at);
            timers.push(at, key);
        }
    }

    /// Reads the connection's events: state changes and the microphone's track opening.
    pub fn poll_events(&mut self, now: Instant) -> Changes {
        let mut changes = Changes::default();
        let pc = match &mut self.pc {
            Link::Rtc(pc) => pc,
            Link::Lean(lean) => {
                match lean.state() {
                    lean::State::Connected if !self.connected => {
                        self.connected = true;
                        self.answered_at = None;
                        changes.first_connected = lean.take_connect_time();
                    }
                    lean::State::Connected | lean::State::Connecting => {}
                    lean::State::Disconnected => self.connected = false,
                    lean::State::Failed => changes.closed = true,
                }
                return changes;
            }
        };
        while let Some(event) = pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        self.connected = true;
                        // Only the first time: a reconnection is not a setup.
                        if let Some(answered) = self.answered_at.take() {
                            changes.first_connected = Some(now.duration_since(answered));
                        }
                    }
                    RTCPeerConnectionState::Disconnected => self.connected = false,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        changes.closed = true;
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    self.inbound_ssrc = Some(init.ssrc);
                    // A new stream numbers its timestamps afresh.
                    self.history.clear();
                    self.inbound_level_id = engine::audio_level_id(pc, init.receiver_id);
                }
                _ => {}
            }
        }
        changes
    }

    /// Moves what the connection decrypted into `rtp`, and shows `report` every receiver
    /// report.
    pub fn poll_media(
        &mut self,
        rtp: &mut Vec<rtc::rtp::Packet>,
        mut report: impl FnMut(&ReceiverReport),
    ) {
        let Link::Rtc(pc) = &mut self.pc else {
            return; // a lean connection hands its media over as each datagram is read
        };
        while let Some(TaggedRTCMessage { message, .. }) = pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(_, packet) => rtp.push(packet),
                RTCMessage::RtcpPacket(_, packets) => {
                    for packet in &packets {
                        if let Some(rr) = packet.as_any().downcast_ref::<ReceiverReport>() {
                            report(rr);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Points the slots at the sources the room's selection gives this connection.
    pub fn hear(&mut self, heard: impl Iterator<Item = Option<SourceId>>) {
        for (slot, heard) in self.slots.iter_mut().zip(heard) {
            slot.rewriter.set_source(heard.map(|s| s.0));
        }
    }
}

/// Moves everything a connection has to send into the egress.
pub(super) fn queue_writes(
    pc: &mut RTCPeerConnection,
    dest: &mut Option<Peer>,
    egress: &mut impl Egress,
) {
    queue_writes_inspecting(pc, dest, egress, |_| {});
}

/// `queue_writes`, showing each datagram to `inspect` on the way. Notes where the
/// connection's SRTP/SRTCP goes (the selected pair), for the lean path.
pub(super) fn queue_writes_inspecting(
    pc: &mut RTCPeerConnection,
    dest: &mut Option<Peer>,
    egress: &mut impl Egress,
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
        egress.send_to(peer, &out.message);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn far_deadlines_share_a_few_instants_and_none_comes_early() {
        let epoch = Instant::now();
        let timers = Timers::new(epoch);
        let now = epoch + Duration::from_millis(10_123);
        // A thousand listeners' consent deadlines, six seconds out, spread over one second.
        let mut instants = BTreeSet::new();
        for i in 0..1000u64 {
            let at = now + Duration::from_secs(6) + Duration::from_micros(i * 1000 + 7);
            let on_grid = timers.coarse(at, now);
            assert!(on_grid >= at, "never earlier than asked");
            assert!(on_grid - at < GRID, "at most a step later");
            instants.insert(on_grid);
        }
        assert!(instants.len() <= 5, "{} instants", instants.len());
        // A deadline on the grid stays where it is.
        let on = epoch + GRID * 60;
        assert_eq!(timers.coarse(on, now), on);
    }

    #[test]
    fn near_deadlines_are_kept_as_asked() {
        let epoch = Instant::now();
        let timers = Timers::new(epoch);
        let now = epoch + Duration::from_secs(3);
        for ms in [0, 1, 17, 250, 999] {
            let at = now + Duration::from_millis(ms);
            assert_eq!(timers.coarse(at, now), at);
        }
        // Already due: as asked too.
        let past = now - Duration::from_millis(5);
        assert_eq!(timers.coarse(past, now), past);
    }
}
