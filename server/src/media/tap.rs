//! A room's tap: where its speakers' packets also go while the room is mixed (the broadcast
//! tier, recordings). The worker a speaker's packet arrives on offers it once, after the
//! speaker's rights were checked: per speaker packet one atomic load when nobody listens, and
//! a non-blocking send (an `Arc`, no copy) when someone does. A full queue drops the packet,
//! as the network would; the mixer conceals it. It also knows whose each source is, for
//! recordings' speaker tracks (written when a connection opens or closes, never per packet).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::worker::Forwarded;
use crate::control::ParticipantId;

/// What a tap delivers.
pub type TapSender = mpsc::Sender<Arc<Forwarded>>;

#[derive(Default)]
pub struct RoomTap {
    on: AtomicBool,
    sink: Mutex<Option<TapSender>>,
    /// The participant of each of the room's sources ([`Forwarded::source`]) on this node.
    speakers: Mutex<HashMap<u32, ParticipantId>>,
    /// Packets a full sink had no room for, since the mix last asked.
    dropped: AtomicU64,
}

impl RoomTap {
    /// Starts delivering the room's packets to `sink` (replacing any earlier one).
    pub fn attach(&self, sink: TapSender) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        self.on.store(true, Ordering::Release);
    }

    pub fn detach(&self) {
        self.on.store(false, Ordering::Release);
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn attached(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// A connection of the room opened: `source` is `participant`'s audio.
    pub(crate) fn name(&self, source: u32, participant: &ParticipantId) {
        let mut speakers = self.speakers.lock().unwrap_or_else(|e| e.into_inner());
        speakers.insert(source, participant.clone());
    }

    /// The connection of `source` closed.
    pub(crate) fn forget(&self, source: u32) {
        let mut speakers = self.speakers.lock().unwrap_or_else(|e| e.into_inner());
        speakers.remove(&source);
    }

    /// Whose audio `source` is, while its connection is open.
    pub fn speaker(&self, source: u32) -> Option<ParticipantId> {
        let speakers = self.speakers.lock().unwrap_or_else(|e| e.into_inner());
        speakers.get(&source).cloned()
    }

    /// Called by the worker for each accepted speaker packet. Never blocks: if the sink is
    /// being swapped right now, this packet is not offered.
    pub(crate) fn offer(&self, packet: &Arc<Forwarded>) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(sink) = self.sink.try_lock()
            && let Some(sink) = sink.as_ref()
            && let Err(mpsc::error::TrySendError::Full(_)) = sink.try_send(Arc::clone(packet))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Packets dropped for a full sink since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}
