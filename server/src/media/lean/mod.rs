//! The lean transport (issue #20): one client's WebRTC connection built from `rtc`'s lower
//! crates instead of its `RTCPeerConnection` — ICE-lite answers (`ice`), one DTLS server
//! handshake with a configuration shared by the process (`dtls`), SRTP keys from the exported
//! keying material feeding the worker's own `SrtpSender` from the first packet, SRTP/SRTCP in
//! through `rtc::srtp`, sender reports out per slot and receiver reports about a speaker's
//! microphone (`rtcp`), and the answer's text (`sdp`). It is reached over UDP or over one of
//! the worker's ICE-TCP streams ([`Peer`]).
//!
//! Sans-IO like the worker's core: every input carries its time, nothing here reads a clock,
//! owns a socket or spawns anything; datagrams to send go to the caller's `send`.

mod dtls;
mod ice;
mod rtcp;
pub mod sdp;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

pub use dtls::{DtlsRefusal, Shared, offered_fingerprint};
pub use ice::StunRefusal;
pub use rtcp::{Reception, SlotReport};

use self::dtls::{Handshake, Keys, Progress};
use self::rtcp::{RECEIVER_REPORT_LEN, SENDER_REPORT_LEN};
use super::demux::{self, Kind};
use super::srtp::{MasterKey, SrtpSender};
use super::worker::{Now, Peer};

/// Addresses a connection may be reached from (a browser checks from several).
const MAX_ADDRS: usize = 8;
/// How long the DTLS association is kept after keying when the client shows nothing: long
/// enough for the client to repeat its last flight should ours be lost (RFC 6347 §4.2.4).
const KEEP_HANDSHAKE: Duration = Duration::from_secs(5);
/// The most slots a connection carries (`[media] slots` is 1–8).
const MAX_SLOTS: usize = 8;
/// How often each slot's sender report and the microphone's receiver report go out.
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
    from: Peer,
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
    /// The microphone's SSRC (the offer's `a=ssrc`), for its receiver reports.
    pub microphone: Option<u32>,
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
    pub receiver_reports: u64,
}

pub struct LeanConnection {
    shared: Arc<Shared>,
    ufrag: String,
    password: String,
    state: State,
    created: Instant,
    /// Addresses that passed a binding check (over UDP or one of the worker's ICE-TCP
    /// streams), newest last.
    addrs: Vec<Peer>,
    /// Where audio and reports go: the nominated pair's address (before a nomination, the
    /// latest that passed a check).
    dest: Option<Peer>,
    nominated: bool,
    /// The last valid binding request (RFC 7675 consent).
    consent_at: Option<Instant>,
    handshake: Option<Box<Handshake>>,
    keep_handshake_until: Option<Instant>,
    crypto: Option<Box<Crypto>>,
    slots: Vec<SlotReport>,
    /// What arrived of the microphone, while the connection has one.
    microphone: Option<Reception>,
    /// When the next compound report is due; armed only while there is something to report
    /// (a slot carried audio, the microphone was heard), so a silent listener costs no wake-ups.
    next_report: Option<Instant>,
    /// Answer to first keys, once.
    connect_took: Option<Duration>,
    ice_disconnected: Duration,
    ice_failed: Duration,
    pub counts: Counts,
    /// Every compound report sent, in clear (the tests read them back with `rtc`'s parser).
    #[cfg(test)]
    reports_sent: Vec<Vec<u8>>,
}

impl LeanConnection {
    /// Its keys' box and its slots' reports, for the forwarding loop ([`crate::media::prefetch`]).
    #[inline]
    pub fn prefetch_crypto(&self) {
        if let Some(crypto) = &self.crypto {
            crate::media::prefetch::of(&**crypto);
        }
        crate::media::prefetch::lines(self.slots.as_ptr().cast(), 1);
    }

    /// The cipher's key schedule (its keys' box must be in cache by now).
    #[inline]
    pub fn prefetch_cipher(&self) {
        if let Some(crypto) = &self.crypto {
            crypto.sender.prefetch();
        }
    }

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
            microphone: setup.microphone.map(Reception::new),
            next_report: None,
            connect_took: None,
            ice_disconnected: setup.ice_disconnected,
            ice_failed: setup.ice_failed,
            counts: Counts::default(),
            #[cfg(test)]
            reports_sent: Vec::new(),
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
    pub fn addrs(&self) -> &[Peer] {
        &self.addrs
    }

    /// The ICE-TCP stream at `peer` ended: the client is no longer reached there (it checks
    /// again from wherever it still is).
    pub fn forget(&mut self, peer: Peer) {
        self.addrs.retain(|a| *a != peer);
        if self.dest == Some(peer) {
            self.dest = None;
            self.nominated = false;
        }
    }

    /// What forwarded audio is sealed with and where it goes, while connected: the worker's
    /// lean path from the very first packet.
    pub fn sender(&mut self) -> Option<(&mut SrtpSender, Peer)> {
        if self.state != State::Connected {
            return None;
        }
        let dest = self.dest?;
        self.crypto.as_mut().map(|c| (&mut c.sender, dest))
    }

    /// The microphone is now the stream `ssrc` (a renegotiation onto the stage or off it):
    /// its receiver reports start over, or stop.
    pub fn set_microphone(&mut self, ssrc: Option<u32>) {
        if self.microphone.map(|m| m.ssrc) != ssrc {
            self.microphone = ssrc.map(Reception::new);
        }
    }

    /// A packet went out on `slot` (for its sender reports). Arithmetic only. Returns whether
    /// this armed the report timer, which brings [`poll_timeout`](Self::poll_timeout) forward.
    pub fn sent(&mut self, slot: usize, timestamp: u32, payload_len: usize, at: Instant) -> bool {
        if let Some(report) = self.slots.get_mut(slot) {
            report.sent(timestamp, payload_len, at);
        }
        self.arm_reports(at)
    }

    /// Something to report happened at `at`: the next report is due a report interval later,
    /// unless one already is. Returns whether this armed it.
    fn arm_reports(&mut self, at: Instant) -> bool {
        if self.next_report.is_some() {
            return false;
        }
        self.next_report = Some(at + REPORT_EVERY);
        true
    }

    /// One datagram from `from`; what the connection answers goes to `send`.
    pub fn handle_datagram(
        &mut self,
        now: Now,
        from: Peer,
        datagram: &[u8],
        send: &mut impl FnMut(Peer, &[u8]),
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
        send: &mut impl FnMut(Peer, &[u8]),
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
                self.observe(&plain, input.now.at);
                Ok(plain)
            }
            Kind::Stun | Kind::Relay | Kind::Other => Err(Refusal::Other),
        }
    }

    /// Counts what a decrypted packet says about the microphone, for its receiver reports.
    fn observe(&mut self, plain: &Received, at: Instant) {
        let Some(mic) = &mut self.microphone else {
            return;
        };
        match plain {
            Received::Rtp(p) if p.len() >= 12 && p[8..12] == mic.ssrc.to_be_bytes() => {
                let seq = u16::from_be_bytes([p[2], p[3]]);
                let timestamp = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                let since = at.saturating_duration_since(self.created);
                let arrival = since.as_micros() as u64 * rtcp::CLOCK_RATE / 1_000_000;
                mic.received(seq, timestamp, arrival);
                self.arm_reports(at);
            }
            Received::Rtcp(p) => {
                for (ssrc, ntp) in rtcp::sender_reports(p) {
                    if ssrc == mic.ssrc {
                        mic.sender_report(ntp, at);
                    }
                }
            }
            _ => {}
        }
    }

    fn check(
        &mut self,
        input: Input<'_>,
        send: &mut impl FnMut(Peer, &[u8]),
    ) -> Result<Received, Refusal> {
        let Input {
            now,
            from,
            datagram,
        } = input;
        let check = ice::answer_binding(datagram, from.addr, &self.ufrag, &self.password)
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
        send(from, check.response());
        Ok(Received::Handled)
    }

    fn handshake_step(
        &mut self,
        input: Input<'_>,
        send: &mut impl FnMut(Peer, &[u8]),
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
    /// the reports (sender reports, and the receiver report about a microphone).
    pub fn handle_timeout(&mut self, now: Now, send: &mut impl FnMut(Peer, &[u8])) {
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
            // Reports go on while there is something to say, then the timer rests until a
            // packet goes out or comes in again.
            let reported = self.send_reports(now, send);
            self.next_report = reported.then(|| now.at + REPORT_EVERY);
        }
    }

    /// One compound SRTCP packet: a sender report for every slot that has sent, then a
    /// receiver report about the microphone once something of it arrived. Returns whether there
    /// was anything to report.
    fn send_reports(&mut self, now: Now, send: &mut impl FnMut(Peer, &[u8])) -> bool {
        let (Some(crypto), Some(dest)) = (self.crypto.as_mut(), self.dest) else {
            return false;
        };
        let mut compound = [0u8; SENDER_REPORT_LEN * MAX_SLOTS + RECEIVER_REPORT_LEN];
        let mut len = 0;
        let mut senders = 0;
        for slot in self.slots.iter().take(MAX_SLOTS) {
            let mut report = [0u8; SENDER_REPORT_LEN];
            if slot.write(now, &mut report) {
                compound[len..len + SENDER_REPORT_LEN].copy_from_slice(&report);
                len += SENDER_REPORT_LEN;
                senders += 1;
            }
        }
        // Our first slot's SSRC; a connection without slots reports under one drawn from its
        // (random) ufrag.
        let reporter = match self.slots.first() {
            Some(slot) => slot.ssrc,
            None => self.ufrag.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            }),
        };
        let mut receiver = false;
        if let Some(mic) = &mut self.microphone {
            let mut report = [0u8; RECEIVER_REPORT_LEN];
            if mic.write(reporter, now.at, &mut report) {
                compound[len..len + RECEIVER_REPORT_LEN].copy_from_slice(&report);
                len += RECEIVER_REPORT_LEN;
                receiver = true;
            }
        }
        if len == 0 {
            return false;
        }
        #[cfg(test)]
        self.reports_sent.push(compound[..len].to_vec());
        if let Ok(sealed) = crypto.outbound_rtcp.encrypt_rtcp(&compound[..len]) {
            if senders > 0 {
                self.counts.sender_reports += 1;
            }
            if receiver {
                self.counts.receiver_reports += 1;
            }
            send(dest, &sealed);
        }
        true
    }
}
