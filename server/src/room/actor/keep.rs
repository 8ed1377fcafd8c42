//! The room's live state kept in Redis while it lives on this node of a cluster, and taken back
//! when the room starts here after another node had it. The room never waits on Redis for a
//! change: it hands the latest state to a writer task, which writes one at a time (a burst of
//! changes costs one write); only a room that starts, or stops to hand its people over, waits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::task::RoomTask;
use crate::cluster::{Cluster, Found, Saved};
use crate::control::ParticipantId;
use crate::room::SavedRoom;

/// How long after a change the state is written: the changes within it are written together.
const SAVE_DELAY: Duration = Duration::from_millis(50);
/// How long a starting room waits for its kept state, and a stopping one for its last write.
const REDIS_WAIT: Duration = Duration::from_secs(2);

/// A saved room, numbered in the order this task took them.
type Latest = Option<(u64, Arc<str>)>;

pub(super) struct Keeper {
    cluster: Cluster,
    room: Arc<str>,
    seq: u64,
    latest: watch::Sender<Latest>,
    writer: tokio::task::JoinHandle<()>,
    /// When the unsaved changes are to be written.
    pub due: Option<Instant>,
    /// Put back from the kept state and not back yet: they have no media connection here.
    restored: HashSet<ParticipantId>,
    /// What was last handed to the writer (its time aside): a change that changed nothing
    /// kept (a plain listener coming or going) writes nothing.
    last: Option<SavedRoom>,
}

impl RoomTask {
    /// In a cluster: starts keeping the room's state, after taking back what a previous home
    /// kept, if it is sound. Called before the room takes anyone in.
    pub(super) async fn start_keeping(&mut self) {
        let Some(cluster) = self.deps.cluster.get().cloned() else {
            return;
        };
        let room: Arc<str> = self.state.room().as_str().into();
        let (latest, rx) = watch::channel(None);
        let writer = tokio::spawn(write_latest(cluster.clone(), room.clone(), rx));
        let mut keeper = Keeper {
            cluster,
            room,
            seq: 0,
            latest,
            writer,
            due: None,
            restored: HashSet::new(),
            last: None,
        };
        if let Some(saved) = self.kept_state(&keeper).await {
            let now = self.deps.clock.now_ms().max(0) as u64;
            let back = self.state.restore(saved, now);
            tracing::info!(room = %keeper.room, people = back.len(), "took the room's live state back");
            keeper.restored = back.into_iter().collect();
            // Written again under this node's lease.
            keeper.due = Some(Instant::now());
        }
        self.keeper = Some(keeper);
    }

    /// What the room's previous home kept, if anything sound is kept.
    async fn kept_state(&self, keeper: &Keeper) -> Option<SavedRoom> {
        let room = &keeper.room;
        let epoch = keeper.cluster.held_epoch(room)?;
        let refuse = |reason: &str, detail: &str| {
            tracing::warn!(%room, reason, detail, "refusing the room's kept live state; it starts from the store");
        };
        match tokio::time::timeout(REDIS_WAIT, keeper.cluster.load_room_state(room, epoch)).await {
            Ok(Ok(Found::Nothing)) => None,
            Ok(Ok(Found::State { node, epoch, json })) => {
                match SavedRoom::parse(&json, self.state.room()) {
                    Ok(saved) => {
                        tracing::debug!(%room, %node, epoch, bytes = json.len(), "kept state read");
                        Some(saved)
                    }
                    Err(refusal) => {
                        refuse(refusal.code(), &refusal.to_string());
                        None
                    }
                }
            }
            Ok(Ok(Found::Refused(reason, detail))) => {
                refuse(reason, &detail);
                None
            }
            Ok(Err(e)) => {
                refuse("unreachable", &e.to_string());
                None
            }
            Err(_) => {
                refuse("timed_out", "Redis did not answer");
                None
            }
        }
    }

    /// The command just applied changed the room: its state is written soon.
    pub(super) fn state_changed(&mut self) {
        if let Some(keeper) = &mut self.keeper
            && keeper.due.is_none()
        {
            keeper.due = Some(Instant::now() + SAVE_DELAY);
        }
    }

    /// The room's state as it is now, numbered, unless it is what was last taken and `force`
    /// is not set; nothing is due any more.
    fn take_saved(&mut self, force: bool) -> Option<(&Keeper, u64, String)> {
        let now = self.deps.clock.now_ms().max(0) as u64;
        let keeper = self.keeper.as_mut()?;
        keeper.due = None;
        let mut saved = self.state.saved(now);
        if let Some(last) = &keeper.last {
            saved.at = last.at;
            if !force && *last == saved {
                return None;
            }
        }
        saved.at = now;
        keeper.seq += 1;
        let seq = keeper.seq;
        let json = saved.to_json();
        keeper.last = Some(saved);
        Some((keeper, seq, json))
    }

    /// Hands the room's state as it is now to the writer, if it changed.
    pub(super) fn save_now(&mut self) {
        if let Some((keeper, seq, json)) = self.take_saved(false) {
            keeper.latest.send_replace(Some((seq, json.into())));
        }
    }

    /// Whether `participant` was put back from the kept state and has not come back since
    /// (they have no media connection on this node); true once.
    pub(super) fn first_time_back(&mut self, participant: &ParticipantId) -> bool {
        self.keeper
            .as_mut()
            .is_some_and(|k| k.restored.remove(participant))
    }

    /// The room stops to hand its people over (or the server stops): its state is written
    /// now, and the people are told to move only once it is, so the next home finds it.
    pub(super) async fn save_before_stopping(&mut self) {
        let Some((keeper, seq, json)) = self.take_saved(true) else {
            return;
        };
        let write = keeper.cluster.save_room_state(&keeper.room, seq, &json);
        match tokio::time::timeout(REDIS_WAIT, write).await {
            Ok(Ok(Saved::Written)) => {
                tracing::debug!(room = %keeper.room, bytes = json.len(), "live state kept for the next home");
            }
            Ok(Ok(other)) => tracing::debug!(room = %keeper.room, ?other, "live state not kept"),
            Ok(Err(e)) => {
                tracing::warn!(room = %keeper.room, error = %e, "cannot keep the live state")
            }
            Err(_) => {
                tracing::warn!(room = %keeper.room, "cannot keep the live state: Redis did not answer")
            }
        }
    }

    /// The room is over here: ended, or emptied (not stopped to be handed over). What it kept
    /// is deleted once the writer has finished.
    pub(super) async fn stop_keeping(&mut self, handed_over: bool) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        let Keeper {
            cluster,
            room,
            latest,
            writer,
            ..
        } = keeper;
        drop(latest);
        if handed_over {
            return;
        }
        let _ = tokio::time::timeout(REDIS_WAIT, writer).await;
        if let Err(e) = tokio::time::timeout(REDIS_WAIT, cluster.forget_room_state(&room))
            .await
            .unwrap_or(Ok(()))
        {
            tracing::debug!(%room, error = %e, "cannot delete the kept live state; it expires");
        }
    }
}

/// Writes the latest saved room, one write at a time; states taken while a write is under
/// way are replaced by the newest. A write that fails is tried again after a heartbeat,
/// unless a newer state came meanwhile.
async fn write_latest(cluster: Cluster, room: Arc<str>, mut latest: watch::Receiver<Latest>) {
    let retry = Duration::from_millis(cluster.settings().heartbeat_ms);
    while latest.changed().await.is_ok() {
        let Some((seq, json)) = latest.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match cluster.save_room_state(&room, seq, &json).await {
                Ok(Saved::Written | Saved::Stale) => break,
                // Lost to another node: the room stops here at the next renewal.
                Ok(Saved::NotHeld) if cluster.held_epoch(&room).is_none() => break,
                // Held here, but Redis has no lease (it restarted): the renewal writes it back.
                Ok(Saved::NotHeld) => {}
                Err(e) => tracing::debug!(%room, error = %e, "cannot keep the live state yet"),
            }
            tokio::time::sleep(retry).await;
            if latest.has_changed().unwrap_or(true) {
                break;
            }
        }
    }
}
