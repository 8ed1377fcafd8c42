//! The lean transport (issue #20): one client's WebRTC connection built from `rtc`'s lower
//! crates instead of its `RTCPeerConnection` — ICE-lite answers (`ice`), one DTLS server
//! handshake with a configuration shared by the process (`dtls`), SRTP keys from the exported
//! keying material feeding the worker's own `SrtpSender` from the first packet, SRTP/SRTCP in
//! through `rtc::srtp`, sender reports out per slot (`rtcp`), and the answer's text (`sdp`).
//!
//! Sans-IO like the worker's core: every input carries its time, nothing here reads a clock,
//! owns a socket or spawns anything; datagrams to send go to the caller's `send`.

mod dtls;
mod ice;
mod rtcp;
pub mod sdp;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

pub use dtls::{DtlsRefusal, Shared, offered_fingerprint};
pub use ice::StunRefusal;
pub use rtcp::SlotReport;

use self::dtls::{Handshake, Keys, Progress};
use self::rtcp::SENDER_REPORT_LEN;
use super::demux::{self, Kind};
use super::srtp::{MasterKey, SrtpSender};
use super::worker::Now;

/// Addresses a connection may be reached from (a browser checks from several).
const MAX_ADDRS: usize = 8;
/// How long the DTLS association is kept after keying when the client shows nothing: long
/// enough for the client to repeat its last flight should ours be lost (RFC 6347 §4.2.4).
const KEEP_HANDSHAKE: Duration = Duration::from_secs(5);
/// The most slots a connection carries (`[media] slots` is 1–8).
const MAX_SLOTS: usize = 8;
/// How often each slot's sender report goes out.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Where a lean connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Answered; ICE checks and the DTLS handshake not both done yet.
    Connecting,
    /// Keyed and consented: audio may be sent.
    Connected,
    /// No consent check for `ice_disconnected`: nothing is forwarded, it may come back.
    Disconnected,
    /// Gone (no consent for a further `ice_failed`, the handshake never finished, the client
    /// closed, or it presented another certificate than its offer's): to be freed.
    Failed,
}

/// Why a datagram was refused; each one is counted by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A binding request that failed a check (a forged one fails integrity).
    Stun(StunRefusal),
    /// DTLS, SRTP or SRTCP from an address no valid binding request came from.
    UnknownAddress,
    /// The DTLS side refused it or failed.
    Dtls(DtlsRefusal),
    /// SRTP or SRTCP before the keys exist, or that fails authentication (forged, replayed).
    Srtp,
    /// Not a kind a connection takes (the worker sorts these out before).
    Other,
    /// The connection has failed: nothing more is taken.
    Failed,
}

/// What an accepted datagram gave.
pub enum Received {
    /// Handled inside (a check answered, the handshake advanced).
    Handled,
    /// A decrypted RTP packet from the client (a speaker's microphone): the caller checks the
    /// rights and the stream.
    Rtp(BytesMut),
    /// Decrypted RTCP from the client (receiver reports about our slots).
    Rtcp(BytesMut),
}

/// One datagram as it arrived.
#[derive(Clone, Copy)]
struct Input<'a> {
    now: Now,
    from: SocketAddr,
    datagram: &'a [u8],
}

/// What a lean connection is given when it is answered.
pub struct Setup {
    pub shared: Arc<Shared>,
    pub ufrag: String,
    pub password: String,
    /// SHA-256 of the client's certificate, from its offer (`offered_fingerprint`).
    pub remote_fingerprint: [u8; 32],
    /// The SSRC of each slot this connection carries, in slot order.
    pub slot_ssrcs: Vec<u32>,
    pub ice_disconnected: Duration,
    pub ice_failed: Duration,
}

/// The keyed state: what the worker seals with, and the two SRTP contexts of `rtc` for what
/// is rarer (our sender reports, whatever the client sends).
struct Crypto {
    sender: SrtpSender,
    outbound_rtcp: Context,
    inbound: Context,
}

/// Refusals and events, for the caller's counters and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub checks: u64,
    pub refused: u64,
    pub sender_reports: u64,
}

pub struct LeanConnection {
    shared: Arc<Shared>,
    ufrag: String,
    password: String,
    state: State,
    created: Instant,
    /// Addresses that passed a binding check, newest last.
    addrs: Vec<SocketAddr>,
    /// Where audio and reports go: the nominated pair's address (before a nomination, the
    /// latest that passed a check).
    dest: Option<SocketAddr>,
    nominated: bool,
    /// The last valid binding request (RFC 7675 consent).
    consent_at: Option<Instant>,
    handshake: Option<Box<Handshake>>,
    keep_handshake_until: Option<Instant>,
    crypto: Option<Box<Crypto>>,
    slots: Vec<SlotReport>,
    next_report: Option<Instant>,
    /// Answer to first keys, once.
    connect_took: Option<Duration>,
    ice_disconnected: Duration,
    ice_failed: Duration,
    pub counts: Counts,
}

impl LeanConnection {
    /// A connection answered at `now`, waiting for the client's checks and handshake.
    pub fn new(setup: Setup, now: Instant) -> Self {
        let handshake = Handshake::new(&setup.shared, setup.remote_fingerprint);
        LeanConnection {
            shared: setup.shared,
            ufrag: setup.ufrag,
            password: setup.password,
            state: State::Connecting,
            created: now,
            addrs: Vec::with_capacity(2),
            dest: None,
            nominated: false,
            consent_at: None,
            handshake: Some(Box::new(handshake)),
            keep_handshake_until: None,
            crypto: None,
            slots: setup.slot_ssrcs.into_iter().map(SlotReport::new).collect(),
            next_report: None,
            connect_took: None,
            ice_disconnected: setup.ice_disconnected,
            ice_failed: setup.ice_failed,
            counts: Counts::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// How long after its answer the connection first had its keys (once; `None` after).
    pub fn take_connect_time(&mut self) -> Option<Duration> {
        self.connect_took.take()
    }

    /// Whether the DTLS association is still held (only until the client shows its keys).
    pub fn holds_handshake(&self) -> bool {
        self.handshake.is_some()
    }

    /// The addresses that passed a binding check.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// What forwarded audio is sealed with and where it goes, while connected: the worker's
    /// lean path from the very first packet.
    pub fn sender(&mut self) -> Option<(&mut SrtpSender, SocketAddr)> {
        if self.state != State::Connected {
            return None;
        }
        let dest = self.dest?;
        self.crypto.as_mut().map(|c| (&mut c.sender, dest))
    }

    /// A packet went out on `slot` (for its sender reports). Arithmetic only.
    pub fn sent(&mut self, slot: usize, timestamp: u32, payload_len: usize, at: Instant) {
        if let Some(report) = self.slots.get_mut(slot) {
            report.sent(timestamp, payload_len, at);
        }
    }

    /// One datagram from `from`; what the connection answers goes to `send`.
    pub fn handle_datagram(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &[u8],
        send: &mut impl FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, Refusal> {
        let input = Input {
            now,
            from,
            datagram,
        };
        let result = self.read(input, send);
        if result.is_err() {
            self.counts.refused += 1;
        }
        result
    }

    fn read(
        &mut self,
        input: Input<'_>,
        send: &mut impl FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, Refusal> {
        let Input { from, datagram, .. } = input;
        if self.state == State::Failed {
            return Err(Refusal::Failed);
        }
        let kind = demux::classify(datagram);
        if kind == Kind::Stun {
            return self.check(input, send);
        }
        if !self.addrs.contains(&from) {
            return Err(Refusal::UnknownAddress);
        }
        match kind {
            Kind::Dtls => self.handshake_step(input, send),
            Kind::Rtp | Kind::Rtcp => {
                let crypto = self.crypto.as_mut().ok_or(Refusal::Srtp)?;
                let plain = match kind {
                    Kind::Rtp => crypto.inbound.decrypt_rtp(datagram).map(Received::Rtp),
                    _ => crypto.inbound.decrypt_rtcp(datagram).map(Received::Rtcp),
                }
                .map_err(|_| Refusal::Srtp)?;
                // The client has the keys: our last flight arrived, the association can go.
                self.handshake = None;
                self.keep_handshake_until = None;
                Ok(plain)
            }
            Kind::Stun | Kind::Other => Err(Refusal::Other),
        }
    }

    fn check(
        &mut self,
        input: Input<'_>,
        send: &mut impl FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, Refusal> {
        let Input {
            now,
            from,
            datagram,
        } = input;
        let check = ice::answer_binding(
            datagram,
            from,
            &self.ufrag,
            &self.password,
            self.shared.crypto.crypto(),
        )
        .map_err(Refusal::Stun)?;
        self.counts.checks += 1;
        if !self.addrs.contains(&from) {
            if self.addrs.len() == MAX_ADDRS {
                self.addrs.remove(0);
            }
            self.addrs.push(from);
        }
        if check.nominated || !self.nominated {
            self.nominated |= check.nominated;
            self.dest = Some(from);
        }
        self.consent_at = Some(now.at);
        if self.state == State::Disconnected {
            self.state = State::Connected;
        }
        send(from, &check.response);
        Ok(Received::Handled)
    }

    fn handshake_step(
        &mut self,
        input: Input<'_>,
        send: &mut impl FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, Refusal> {
        let shared = Arc::clone(&self.shared);
        let handshake = self
            .handshake
            .as_mut()
            .ok_or(Refusal::Dtls(DtlsRefusal::Record))?;
        let (now, from) = (input.now, input.from);
        let progress = handshake.read(&shared, now.at, input.datagram, |d| send(from, d));
        match progress {
            Ok(Progress::Handshaking) => Ok(Received::Handled),
            Ok(Progress::Keyed(keys)) => {
                self.keyed(&keys, now.at).map_err(Refusal::Dtls)?;
                Ok(Received::Handled)
            }
            Ok(Progress::Closed) => {
                self.fail();
                Ok(Received::Handled)
            }
            Err(refusal @ DtlsRefusal::Record) => Err(Refusal::Dtls(refusal)),
            Err(refusal) => {
                // The peer is not who its offer said, or it keyed nothing we can use.
                self.fail();
                Err(Refusal::Dtls(refusal))
            }
        }
    }

    fn keyed(&mut self, keys: &Keys, now: Instant) -> Result<(), DtlsRefusal> {
        let crypto = self.shared.crypto.crypto();
        let (server_key, server_salt) = keys.server;
        let (client_key, client_salt) = keys.client;
        let master = MasterKey::new(&server_key, &server_salt).ok_or(DtlsRefusal::Keys)?;
        let context = |key: &[u8], salt: &[u8]| {
            Context::new(
                key,
                salt,
                ProtectionProfile::AeadAes128Gcm,
                None,
                None,
                crypto,
            )
            .map_err(|_| DtlsRefusal::Keys)
        };
        self.crypto = Some(Box::new(Crypto {
            sender: SrtpSender::new(crypto, &master).map_err(|_| DtlsRefusal::Keys)?,
            outbound_rtcp: context(&server_key, &server_salt)?,
            inbound: context(&client_key, &client_salt)?,
        }));
        self.keep_handshake_until = Some(now + KEEP_HANDSHAKE);
        self.next_report = Some(now + REPORT_EVERY);
        self.connect_took = Some(now.saturating_duration_since(self.created));
        self.state = State::Connected;
        Ok(())
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.handshake = None;
        self.crypto = None;
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due; `None` once failed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Failed {
            return None;
        }
        let since = self.consent_at.unwrap_or(self.created);
        let consent = match self.state {
            State::Connected => since + self.ice_disconnected,
            _ => since + self.ice_disconnected + self.ice_failed,
        };
        [
            Some(consent),
            self.handshake.as_ref().and_then(|h| h.poll_timeout()),
            self.keep_handshake_until,
            self.next_report.filter(|_| self.state == State::Connected),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs what is due at `now`: DTLS retransmissions, dropping the association, consent,
    /// sender reports.
    pub fn handle_timeout(&mut self, now: Now, send: &mut impl FnMut(SocketAddr, &[u8])) {
        if self.state == State::Failed {
            return;
        }
        if let Some(handshake) = &mut self.handshake
            && handshake.poll_timeout().is_some_and(|at| at <= now.at)
            && let Some(dest) = self.dest
        {
            handshake.handle_timeout(now.at, |d| send(dest, d));
        }
        if self.keep_handshake_until.is_some_and(|at| at <= now.at) {
            self.handshake = None;
            self.keep_handshake_until = None;
        }
        let silent = now
            .at
            .saturating_duration_since(self.consent_at.unwrap_or(self.created));
        if silent >= self.ice_disconnected + self.ice_failed {
            self.fail();
            return;
        }
        if silent >= self.ice_disconnected && self.state == State::Connected {
            self.state = State::Disconnected;
        }
        if self.state == State::Connected && self.next_report.is_some_and(|at| at <= now.at) {
            self.next_report = Some(now.at + REPORT_EVERY);
            self.send_reports(now, send);
        }
    }

    /// One compound SRTCP packet with a sender report for every slot that has sent.
    fn send_reports(&mut self, now: Now, send: &mut impl FnMut(SocketAddr, &[u8])) {
        let (Some(crypto), Some(dest)) = (self.crypto.as_mut(), self.dest) else {
            return;
        };
        let mut compound = [0u8; SENDER_REPORT_LEN * MAX_SLOTS];
        let mut len = 0;
        for slot in &self.slots {
            let mut report = [0u8; SENDER_REPORT_LEN];
            if slot.write(now, &mut report) && len + SENDER_REPORT_LEN <= compound.len() {
                compound[len..len + SENDER_REPORT_LEN].copy_from_slice(&report);
                len += SENDER_REPORT_LEN;
            }
        }
        if len == 0 {
            return;
        }
        if let Ok(sealed) = crypto.outbound_rtcp.encrypt_rtcp(&compound[..len]) {
            self.counts.sender_reports += 1;
            send(dest, &sealed);
        }
    }
}
