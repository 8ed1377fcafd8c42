//! The room on this worker (mediasoup's Router): its members here, the speaker selection that
//! decides what each member's slots carry, and the speaking levels last reported. Knows
//! connections only by key; sends nothing itself.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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
    pub selector: SpeakerSelector<SourceId>,
    /// This worker's connections in the room.
    pub members: Vec<ConnKey>,
    /// Who was last reported speaking, to report only changes.
    pub last_levels: Vec<ParticipantId>,
}

impl Room {
    pub fn new(room: &RoomRef, slots: usize) -> Self {
        Room {
            id: room.id.clone(),
            workers: room.workers.clone(),
            tap: room.tap.clone(),
            selector: SpeakerSelector::with_capacity(
                SelectorConfig {
                    slots,
                    ..SelectorConfig::default()
                },
                8,
            ),
            members: Vec::new(),
            last_levels: Vec::new(),
        }
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
    /// since the last call.
    pub fn levels_changed(
        &mut self,
        conns: &Conns,
        now_us: u64,
    ) -> Option<Vec<(ParticipantId, u8)>> {
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
        self.last_levels = who;
        Some(levels)
    }
}
