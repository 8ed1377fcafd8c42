//! One media worker: a thread with one UDP socket (and its ICE-TCP streams) and the WebRTC
//! connections assigned to it. It owns them outright (no locks): the rest of the server talks
//! to it through two queues, control (negotiation, permissions, closes) and fan-out (speakers'
//! packets from the other workers).
//!
//! Shaped like `quinn-proto`'s endpoint: [`Core`] holds every connection and decision and
//! never touches a socket or reads a clock; it is fed datagrams, fan-out items, control
//! messages and timeouts with the time they happen at ([`Now`]), fills a send batch through
//! [`Egress`] and says when it next wants a timeout. [`Worker`] is the thin shell that owns
//! the sockets, the clock and the loop. The concepts, one file each (mediasoup's names in
//! brackets): `routes` (who is reached where), `transport` (one listener's or speaker's
//! connection \[Transport\]), `room` (the room on this worker \[Router\]), `forward` (one
//! speaker packet to each listener, a counter per drop reason), `rtcp`, `control` (offers and
//! closes), `sansio` (the core), `shell`.
//!
//! Per packet from a speaker: decrypted once where it arrives, checked against the speaker's
//! rights, a RED payload read into its Opus frame, then handed once to every worker hosting the
//! room (an `Arc`, no copy) with the speaker's last frames beside it. Per packet and listener: a
//! slot lookup, the `SlotRewriter`, and the payload (the Opus frame, or RED with the frames of
//! the slot's current turn) written and sealed in place in the send batch.

mod control;
mod counters;
mod forward;
mod lean_link;
#[cfg(any(test, feature = "fuzzing"))]
pub mod pair;
mod relay;
#[cfg(test)]
mod relay_tests;
mod room;
mod routes;
mod rtcp;
mod sansio;
mod shell;
#[cfg(test)]
mod tests;
mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rtc::peer_connection::certificate::RTCCertificate;
use tokio::sync::{mpsc, oneshot};

use super::MediaError;
use super::audio_level::AudioLevel;
use super::batch::SendBatch;
use super::offer::Offer;
use super::red::{Frame, MAX_REDUNDANCY};
use super::relay::{InLink, RelayOut};
use super::tap::RoomTap;
use crate::control::{ParticipantId, RoomId};
use crate::metrics::MediaMetrics;

pub use routes::Peer;
pub use sansio::{Core, CoreSetup, Links};
pub use shell::Worker;

/// A connection's number, unique in the process (the hub hands them out); routes control
/// messages to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey(pub u32);

/// A room's number on the media path (the hub hands them out), cheaper to carry than its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoomKey(pub u32);

/// One connection's audio as its room's selection knows it; unique in the process. Travels as
/// a plain `u32` in [`Forwarded`] (what the tap hands the mixer) and in the slot rewriters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(pub u32);

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When an input happens, read by the shell: the core never reads a clock.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time: deadlines and ages.
    pub at: Instant,
    /// Wall-clock time since the Unix epoch: the NTP times of RTCP.
    pub wall: Duration,
}

impl Now {
    /// The clocks as they read now (the shell's, and tests that run on real time).
    pub fn read() -> Self {
        Now {
            at: Instant::now(),
            wall: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// `by` later on both clocks.
    pub fn after(self, by: Duration) -> Self {
        Now {
            at: self.at + by,
            wall: self.wall + by,
        }
    }
}

/// Where the core's datagrams go. The shell sends them on its sockets; a test keeps them.
/// Nothing here may wait: a full queue drops and counts.
pub trait Egress {
    /// The batch the core fills with UDP datagrams, in place.
    fn batch(&mut self) -> &mut SendBatch;
    /// Empties the batch (the core calls this when it is full).
    fn flush(&mut self);
    /// Every copy of a speaker's packet that arrived at `arrived` is queued: send them now
    /// (and measure how late they leave).
    fn forwarded(&mut self, arrived: Instant);
    /// Queues one datagram on the ICE-TCP stream from `to`; `false` if it could not be.
    fn send_tcp(&mut self, to: SocketAddr, datagram: &[u8]) -> bool;
    /// The connection reached over the ICE-TCP stream from `from` is gone: end the stream.
    fn close_tcp(&mut self, from: SocketAddr);

    /// Queues one datagram for `to`: on its ICE-TCP stream, or in the batch (flushed first
    /// when full).
    fn send_to(&mut self, to: Peer, datagram: &[u8]) {
        if to.tcp {
            self.send_tcp(to.addr, datagram);
            return;
        }
        if self.batch().is_full() {
            self.flush();
        }
        self.batch().push(datagram, to.addr);
    }
}

/// A room as a worker sees it.
#[derive(Clone)]
pub struct RoomRef {
    pub key: RoomKey,
    pub id: RoomId,
    /// Bit `i`: worker `i` hosts connections of this room. Read once per speaker packet.
    pub workers: Arc<AtomicU64>,
    /// Where the room's speakers' packets also go while it is mixed.
    pub tap: Arc<RoomTap>,
    /// The other nodes the room's speakers' packets go to (a cluster's room across nodes).
    pub relay: Arc<RelayOut>,
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
        room: RoomKey,
        source: SourceId,
    },
    /// Take the room's audio from another node on this link (datagrams to this worker).
    RelayIn {
        room: RoomRef,
        link: Box<InLink>,
    },
    /// The link ends: its sources leave the room here.
    RelayInClose {
        link: u32,
    },
    Stop,
}

/// A speaker's packet, decrypted and checked, on its way to every worker of the room (and to
/// the room's tap).
pub struct Forwarded {
    pub room: RoomKey,
    /// The speaker's [`SourceId`].
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
    /// The speakers this worker receives, heard in `room` lately, loudest first, as they
    /// have been since `heard` (when the audio that changed them arrived).
    Levels {
        worker: usize,
        room: RoomId,
        levels: Vec<(ParticipantId, u8)>,
        heard: Instant,
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
    /// Set: new connections are lean, on this process-wide DTLS configuration.
    pub lean: Option<Arc<super::lean::Shared>>,
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
