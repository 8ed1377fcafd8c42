//! The relay on a worker (`media::relay` is the wire): a speaker's packet is sealed once for
//! each other node that serves its room, on the worker where it enters this node; a packet
//! from another node is opened, checked, given a source id of this node and handed on exactly
//! as if a speaker here had sent it — to the room's other workers, to its tap, to every other
//! node but the one it came from, and to this worker's listeners.
//!
//! Per relayed packet the sending worker does one seal per node, whatever the number of
//! listeners there; the receiving node copies the opened body once into a `Bytes` (one
//! allocation per packet, not per listener) that every worker's listeners then share.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::super::red::{Frame, MAX_REDUNDANCY};
use super::super::relay::{self, InLink, Message, OutLink, PacketRef};
use super::counters::Counters;
use super::room::Room;
use super::sansio::Core;
use super::{Control, Egress, Fanout, Forwarded, Now, Peer, RoomKey, RoomRef, SourceId};

/// Sources one link may bring (a stage is a few people): a peer that made up source ids
/// could otherwise grow this node's tables without bound.
const MAX_SOURCES_PER_LINK: usize = 64;

/// The receiving end of one link on this worker.
pub(super) struct RelayIn {
    pub link: InLink,
    pub room: RoomRef,
    /// The sending node's source ids, and the ones this node gave them.
    pub sources: HashMap<u32, SourceId>,
}

impl<E: Egress> Core<E> {
    /// A datagram on a relay link: opened and handed on, or refused and counted.
    pub(super) fn relay_datagram(&mut self, now: Now, peer: Peer, datagram: &[u8]) {
        let drops = &self.counters.drops;
        let Some(relay_in) = relay::link_of(datagram).and_then(|l| self.relay_in.get_mut(&l))
        else {
            drops.unroutable.inc();
            return;
        };
        if peer.tcp {
            drops.relay_refused.inc();
            return;
        }
        let (message, body_len) = match relay_in.link.open(peer.addr, datagram, &mut self.relay_buf)
        {
            Ok(opened) => opened,
            Err(why) => {
                drops.relay_refused.inc();
                tracing::trace!(link = relay_in.link.link, from = %peer.addr, ?why, "relayed datagram refused");
                return;
            }
        };
        let origin = relay_in.link.peer;
        let room_key = relay_in.room.key;
        match message {
            Message::Packet(packet) => {
                let source = match relay_in.sources.get(&packet.source) {
                    Some(source) => *source,
                    None if relay_in.sources.len() >= MAX_SOURCES_PER_LINK => {
                        drops.relay_refused.inc();
                        return;
                    }
                    None => {
                        let source = SourceId(self.setup.sources.fetch_add(1, Ordering::Relaxed));
                        relay_in.sources.insert(packet.source, source);
                        source
                    }
                };
                if !self.rooms.contains_key(&room_key) {
                    let room = Room::new(&relay_in.room, self.setup.slots);
                    self.rooms.insert(room_key, room);
                }
                let body = Bytes::copy_from_slice(&self.relay_buf[..body_len]);
                let mut redundancy: [Option<Frame>; MAX_REDUNDANCY] = Default::default();
                for (kept, frame) in redundancy.iter_mut().zip(packet.frames) {
                    *kept = frame.map(|(timestamp, range)| Frame {
                        timestamp,
                        payload: body.slice(range),
                    });
                }
                self.counters.relay_in.inc();
                let forwarded = Arc::new(Forwarded {
                    room: room_key,
                    source: source.0,
                    seq: packet.seq,
                    timestamp: packet.timestamp,
                    marker: packet.marker,
                    level: packet.level,
                    payload: body.slice(packet.payload),
                    redundancy,
                    arrived: now.at,
                });
                self.enter(forwarded, Some(origin), now);
            }
            Message::Forget { source } => {
                if let Some(local) = relay_in.sources.remove(&source) {
                    self.source_gone(room_key, local, Some(origin), now);
                }
            }
        }
    }

    /// A speaker's packet where it enters this node (from a connection here, or from another
    /// node): to the room's tap, its other workers, the other nodes but `origin`, and this
    /// worker's listeners.
    pub(super) fn enter(&mut self, forwarded: Arc<Forwarded>, origin: Option<u64>, now: Now) {
        let Some(room) = self.rooms.get_mut(&forwarded.room) else {
            return;
        };
        room.tap.offer(&forwarded);
        let mask = room.workers.load(Ordering::Relaxed);
        for (index, peer) in self.links.peers.iter().enumerate() {
            if index != self.setup.index
                && mask & (1 << index) != 0
                && peer
                    .try_send(Fanout::Packet(Arc::clone(&forwarded)))
                    .is_err()
            {
                self.counters.drops.fanout_full.inc();
            }
        }
        let lane = self.setup.index as u8;
        let source = SourceId(forwarded.source);
        if !room.out_links().is_empty() && !room.relayed.contains(&source) {
            room.relayed.push(source);
        }
        let packet = packet_ref(&forwarded);
        send_relayed(
            room,
            origin,
            &mut self.relay_buf,
            &mut self.egress,
            &self.counters,
            |link, out| link.seal_packet(lane, &packet, out),
        );
        self.forward(&forwarded, now);
    }

    /// A source of `room` stopped for good (closed here, or its node said so): it leaves the
    /// selection on every worker of the room here and on every other node but `origin`.
    pub(super) fn source_gone(
        &mut self,
        room: RoomKey,
        source: SourceId,
        origin: Option<u64>,
        now: Now,
    ) {
        let Some(hosted) = self.rooms.get_mut(&room) else {
            return;
        };
        let mask = hosted.workers.load(Ordering::Relaxed);
        for (index, peer) in self.links.peer_controls.iter().enumerate() {
            if index != self.setup.index && mask & (1 << index) != 0 {
                // The control queue, not fan-out: this must not be lost to a full queue.
                let _ = peer.send(Control::Forget { room, source });
            }
        }
        self.relay_forget(room, source, origin);
        self.forget(room, source, now);
    }

    /// Tells the other nodes of `room` but `origin` that `source` stopped for good, if this
    /// worker ever relayed its packets.
    pub(super) fn relay_forget(&mut self, room: RoomKey, source: SourceId, origin: Option<u64>) {
        let Some(hosted) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(at) = hosted.relayed.iter().position(|s| *s == source) else {
            return;
        };
        hosted.relayed.swap_remove(at);
        let lane = self.setup.index as u8;
        send_relayed(
            hosted,
            origin,
            &mut self.relay_buf,
            &mut self.egress,
            &self.counters,
            |link, out| link.seal_forget(lane, source.0, out),
        );
    }

    /// Starts taking the room's audio on `link`.
    pub(super) fn relay_in_open(&mut self, room: RoomRef, link: InLink) {
        if !self.rooms.contains_key(&room.key) {
            self.rooms
                .insert(room.key, Room::new(&room, self.setup.slots));
        }
        self.relay_in.insert(
            link.link,
            RelayIn {
                link,
                room,
                sources: HashMap::new(),
            },
        );
    }

    /// Ends link `link`: what it brought leaves the room here and on the other nodes.
    pub(super) fn relay_in_close(&mut self, link: u32, now: Now) {
        let Some(closed) = self.relay_in.remove(&link) else {
            return;
        };
        let room = closed.room.key;
        for source in closed.sources.into_values() {
            self.source_gone(room, source, Some(closed.link.peer), now);
        }
        if self.rooms.get(&room).is_some_and(|r| r.members.is_empty())
            && !self.relay_in.values().any(|r| r.room.key == room)
        {
            self.rooms.remove(&room);
        }
    }
}

/// A speaker's packet as the relay writes it.
fn packet_ref(forwarded: &Forwarded) -> PacketRef<'_> {
    let mut frames: [Option<(u32, &[u8])>; MAX_REDUNDANCY] = Default::default();
    for (out, frame) in frames.iter_mut().zip(&forwarded.redundancy) {
        *out = frame.as_ref().map(|f| (f.timestamp, &f.payload[..]));
    }
    PacketRef {
        source: forwarded.source,
        seq: forwarded.seq,
        timestamp: forwarded.timestamp,
        marker: forwarded.marker,
        level: forwarded.level,
        frames,
        payload: &forwarded.payload,
    }
}

/// Seals one datagram per link of `room` (but the one to `origin`) with `seal` and queues it.
fn send_relayed<E: Egress>(
    room: &mut Room,
    origin: Option<u64>,
    buf: &mut [u8],
    egress: &mut E,
    counters: &Counters,
    seal: impl Fn(&OutLink, &mut [u8]) -> Option<usize>,
) {
    for link in room.out_links() {
        if Some(link.peer) == origin {
            continue;
        }
        match seal(link, buf) {
            Some(len) => {
                egress.send_to(Peer::udp(link.to), &buf[..len]);
                counters.relay_out.inc();
            }
            None => {
                counters.drops.relay_too_big.inc();
            }
        }
    }
}
