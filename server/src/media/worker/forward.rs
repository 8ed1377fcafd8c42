//! Forwarding (LiveKit's Forwarder): one speaker packet to every listener of the room on this
//! worker. Per listener a [`decide`] (which slot carries the speaker, the rewritten header),
//! then the copy is sealed in place in the send batch (the lean path) or handed to `rtc`.
//! Every copy that goes no further is counted under its drop reason. Per packet and listener
//! this allocates, locks and waits for nothing on the lean path.

use bytes::Bytes;

use super::super::demux::{self, Kind};
use super::super::prefetch;
use super::super::red;
use super::super::rtp::{HEADER_LEN, RtpHeader};
use super::super::srtp::{Learned, TAG_LEN};
use super::sansio::Core;
use super::transport::{Conns, Link, OutSlot, Transport, queue_writes, queue_writes_inspecting};
use super::{ConnKey, Egress, Forwarded, Now, Peer, SourceId};

/// What one listener gets of a speaker's packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Nothing, and nothing is wrong: not connected, its own voice, or no slot carries the
    /// speaker now.
    Skip,
    /// A duplicate, or a straggler from before a switch or far too late.
    Stale,
    /// This copy, on slot `slot`, with `header` and the SRTP rollover counter for its
    /// sequence number.
    Send {
        slot: usize,
        header: RtpHeader,
        rollover: u32,
    },
}

/// Decides what `conn` gets of `packet` at `now_us`, advancing the slot's rewriter.
pub(super) fn decide(conn: &mut Transport, packet: &Forwarded, now_us: u64) -> Decision {
    if !conn.connected || conn.source == SourceId(packet.source) {
        return Decision::Skip;
    }
    let Some(index) = conn
        .slots
        .iter()
        .position(|s| s.rewriter.source() == Some(packet.source))
    else {
        return Decision::Skip;
    };
    let slot = &mut conn.slots[index];
    let Ok(out) = slot
        .rewriter
        .rewrite(packet.source, packet.seq, packet.timestamp, now_us)
    else {
        return Decision::Stale;
    };
    let header = RtpHeader {
        marker: packet.marker || out.switched,
        payload_type: slot.red_payload_type.unwrap_or(slot.payload_type),
        seq: out.seq,
        timestamp: out.timestamp,
        ssrc: slot.rewriter.ssrc(),
    };
    Decision::Send {
        slot: index,
        header,
        rollover: slot.rollover.next(out.seq),
    }
}

impl<E: Egress> Core<E> {
    /// One speaker packet to every local listener whose slots carry that speaker.
    pub(super) fn forward(&mut self, packet: &Forwarded, now: Now) {
        let now_us = self.now_us(now.at);
        let Some(room) = self.rooms.get_mut(&packet.room) else {
            return;
        };
        let source = SourceId(packet.source);
        if let Some(level) = packet.level {
            room.selector
                .observe(source, level.level, level.voice_activity, now_us);
        } else {
            // No level extension negotiated: count the packet as plain speech.
            room.selector.observe(source, 30, true, now_us);
        }
        // A listener's state is in a few boxes; while working on one, the CPU is asked for the
        // next ones', a level deeper per step closer (connection, parts, keys, key schedule).
        let conns = &mut self.conns;
        for (i, &key) in room.members.iter().enumerate() {
            if let Some(&addr) = room.member_addrs.get(i + 4) {
                prefetch::lines(addr as *const u8, 2);
            }
            if let Some(conn) = member(&room.members, conns, i + 3) {
                conn.prefetch_parts();
            }
            if let Some(conn) = member(&room.members, conns, i + 2) {
                conn.prefetch_crypto();
            }
            if let Some(conn) = member(&room.members, conns, i + 1) {
                conn.prefetch_cipher();
            }
            let Some(conn) = conns.get_mut(&key) else {
                continue;
            };
            let (index, header, rollover) = match decide(conn, packet, now_us) {
                Decision::Skip => continue,
                Decision::Stale => {
                    self.counters.drops.stale.inc();
                    continue;
                }
                Decision::Send {
                    slot,
                    header,
                    rollover,
                } => (slot, header, rollover),
            };
            let slot = &conn.slots[index];
            // The lean path: the payload built and sealed straight into the send batch. A lean
            // connection seals with its own keys from the first packet, over UDP or its ICE-TCP
            // stream; an `rtc` one once its keys are proven, and only over UDP.
            let lean_link = matches!(conn.pc, Link::Lean(_));
            let sealer = match &mut conn.pc {
                Link::Lean(lean) => lean.sender(),
                Link::Rtc(_) => match conn.dest {
                    Some(peer @ Peer { tcp: false, .. }) => {
                        conn.lean.sender(&conn.tap).map(|sender| (sender, peer))
                    }
                    _ => None,
                },
            };
            if lean_link || sealer.is_some() {
                let mut body_len = 0;
                let pushed = sealer.is_some_and(|(sender, dest)| {
                    let mut seal = |buf: &mut [u8]| {
                        let end = buf.len().checked_sub(TAG_LEN)?;
                        let body = listener_payload(slot, packet, buf.get_mut(HEADER_LEN..end)?)?;
                        body_len = body;
                        sender.seal_in_place(&header, rollover, body, buf)
                    };
                    if dest.tcp {
                        // The few who cannot use UDP: sealed aside, then copied into the
                        // stream's queue (the one allocation ICE-TCP costs per packet).
                        return seal(&mut self.payload_buf).is_some_and(|len| {
                            self.egress.send_tcp(dest.addr, &self.payload_buf[..len])
                        });
                    }
                    if self.egress.batch().is_full() {
                        self.egress.flush();
                    }
                    self.egress.batch().push_with(dest.addr, seal)
                });
                if pushed {
                    self.counters.forwarded.inc();
                    if slot.red_payload_type.is_some() {
                        self.counters.red_out.inc();
                    }
                    // The first copy after a silence arms the connection's report timer.
                    if let Link::Lean(lean) = &mut conn.pc
                        && lean.sent(index, header.timestamp, body_len, now.at)
                    {
                        conn.schedule(key, &mut self.timers, now.at);
                    }
                } else {
                    self.counters.drops.forward_failed.inc();
                }
                continue;
            }
            let Link::Rtc(pc) = &mut conn.pc else {
                continue;
            };
            // `rtc`'s path, until the connection's keys are proven (or for good if they never
            // are); while probing, what it produced for this packet is compared with ours.
            let payload = if slot.red_payload_type.is_some() {
                match listener_payload(slot, packet, &mut self.payload_buf) {
                    Some(len) => Bytes::copy_from_slice(&self.payload_buf[..len]),
                    None => {
                        self.counters.drops.forward_failed.inc();
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
            let red_slot = slot.red_payload_type.is_some();
            let written = slot
                .sender
                .and_then(|sender| pc.rtp_sender(sender))
                .map(|mut sender| sender.write_rtp(now.at, rtp));
            if matches!(written, Some(Ok(()))) {
                self.counters.forwarded.inc();
                if red_slot {
                    self.counters.red_out.inc();
                }
            } else {
                self.counters.drops.forward_failed.inc();
            }
            if conn.lean.is_probing() {
                let (lean, tap, crypto, scratch) = (
                    &mut conn.lean,
                    &conn.tap,
                    self.crypto.crypto(),
                    &mut self.probe_buf,
                );
                queue_writes_inspecting(pc, &mut conn.dest, &mut self.egress, |datagram| {
                    if !is_packet(datagram, &header) {
                        return;
                    }
                    match lean.learn(tap, crypto, &header, rollover, &payload, datagram, scratch) {
                        Learned::Proven => {
                            tracing::debug!(conn = %key, "lean SRTP path proven")
                        }
                        Learned::GaveUp => tracing::warn!(
                            conn = %key,
                            "SRTP keys never matched rtc's output; staying on rtc's write path"
                        ),
                        Learned::NotYet => {}
                    }
                });
            } else {
                queue_writes(pc, &mut conn.dest, &mut self.egress);
            }
            // Writing media does not bring a connection's timers forward; only look when none
            // is queued (asking costs as much as the rest of this loop).
            if conn.scheduled.is_none() {
                conn.schedule(key, &mut self.timers, now.at);
            }
        }
        self.egress.forwarded(packet.arrived);
    }
}

/// The connection of the room's `i`th member here, if any.
#[inline]
fn member<'a>(members: &[ConnKey], conns: &'a Conns, i: usize) -> Option<&'a Transport> {
    conns.get(members.get(i)?).map(|conn| &**conn)
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
