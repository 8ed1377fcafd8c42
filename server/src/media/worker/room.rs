//! The room on this worker (mediasoup's Router): its members here, the speaker selection that
//! decides what each member's slots carry, and the speaking levels last reported. Knows
//! connections only by key; sends nothing itself.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::super::relay::{OutLink, RelayOut};
use super::super::selector::{SelectorConfig, SpeakerSelector};
use super::super::tap::RoomTap;
use super::transport::Conns;
use super::{ConnKey, RoomRef, SourceId};
use crate::control::{ParticipantId, RoomId};

pub(super) struct Room {
    pub id: RoomId,
    /// Bit `i`: worker `i` hosts connections of this room.
    pub workers: Arc<AtomicU64>,
    pub tap: Arc<RoomTap>,
    /// The other nodes the room's audio goes to, and the links as this worker last read them.
    pub relay: Arc<RelayOut>,
    out_links: (u64, Arc<[Arc<OutLink>]>),
    /// Sources whose packets this worker relayed to other nodes: only their ends are passed
    /// on (a listener who leaves is nothing to the other nodes).
    pub relayed: Vec<SourceId>,
    pub selector: SpeakerSelector<SourceId>,
    /// This worker's connections in the room.
    pub members: Vec<ConnKey>,
    /// Where each member's boxed `Transport` lives, in `members`' order: only ever prefetched
    /// (a hint to the CPU, never read through), so a stale one costs nothing.
    pub member_addrs: Vec<usize>,
    /// Who was last reported speaking, to report only changes.
    pub last_levels: Vec<ParticipantId>,
}

impl Room {
    pub fn new(room: &RoomRef, slots: usize) -> Self {
        Room {
            id: room.id.clone(),
            workers: room.workers.clone(),
            tap: room.tap.clone(),
            relay: room.relay.clone(),
            out_links: room.relay.links(),
            relayed: Vec::new(),
            selector: SpeakerSelector::with_capacity(
                SelectorConfig {
                    slots,
                    ..SelectorConfig::default()
                },
                8,
            ),
            members: Vec::new(),
            member_addrs: Vec::new(),
            last_levels: Vec::new(),
        }
    }

    /// `key` joins the room on this worker; its connection is boxed at `addr`.
    pub fn add_member(&mut self, key: ConnKey, addr: usize) {
        self.members.push(key);
        self.member_addrs.push(addr);
    }

    pub fn remove_member(&mut self, key: ConnKey) {
        if let Some(i) = self.members.iter().position(|k| *k == key) {
            self.members.remove(i);
            self.member_addrs.remove(i);
        }
    }

    /// The links to other nodes now: read again only when the hub changed them.
    pub fn out_links(&mut self) -> &[Arc<OutLink>] {
        if self.relay.version() != self.out_links.0 {
            self.out_links = self.relay.links();
        }
        &self.out_links.1
    }

    /// Points every member's slots at what the selection says they hear now.
    pub fn apply_slots(&self, conns: &mut Conns) {
        for key in &self.members {
            if let Some(conn) = conns.get_mut(key) {
                conn.hear(self.selector.slots_for(conn.source));
            }
        }
    }

    /// Drops a source that stopped for good from the selection; slots follow.
    pub fn forget(&mut self, source: SourceId, now_us: u64, conns: &mut Conns) {
        if self.selector.remove(source) {
            self.selector.update(now_us);
            self.apply_slots(conns);
        }
    }

    /// Who of the speakers received here is talking (quietest first), when that changed
    /// since the last call, and when it became so (µs, the selector's clock): the moment the
    /// audio that made the change was heard, not the moment of asking.
    pub fn levels_changed(
        &mut self,
        conns: &Conns,
        now_us: u64,
    ) -> Option<(Vec<(ParticipantId, u8)>, u64)> {
        let source_of = |participant: &ParticipantId| {
            self.members
                .iter()
                .filter_map(|k| conns.get(k))
                .find(|c| &c.participant == participant)
                .map(|c| c.source)
        };
        let mut levels: Vec<(ParticipantId, u8)> = self
            .selector
            .active_speakers(now_us)
            .filter_map(|s| {
                self.members
                    .iter()
                    .filter_map(|k| conns.get(k))
                    .find(|c| c.source == s.key)
                    .map(|c| (c.participant.clone(), s.level))
            })
            .collect();
        levels.sort_by_key(|(_, level)| *level);
        let who: Vec<ParticipantId> = levels.iter().map(|(p, _)| p.clone()).collect();
        if who == self.last_levels {
            return None;
        }
        // The set is as it is since its latest change: someone starting, or falling silent
        // (one who left the room changed it now).
        let changed_at = who
            .iter()
            .filter(|p| !self.last_levels.contains(p))
            .chain(self.last_levels.iter().filter(|p| !who.contains(p)))
            .map(|p| {
                source_of(p)
                    .and_then(|source| self.selector.speaking_changed_at(source, now_us))
                    .unwrap_or(now_us)
            })
            .max()
            .unwrap_or(now_us);
        self.last_levels = who;
        Some((levels, changed_at))
    }
}
