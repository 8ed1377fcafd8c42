//! The room's live state kept in Redis while it lives on this node of a cluster, and taken back
//! when the room starts here after another node had it. The room never waits on Redis for a
//! change: it hands the latest state to a writer task, which writes one at a time (a burst of
//! changes costs one write); only a room that starts, or stops to hand its people over, waits.
//!
//! A person's request, or an operator's REST call, that changed what is kept is acknowledged
//! (`ok`, the call's answer) once the state with the change is written, not before: the room
//! goes on meanwhile, and a home killed a moment after the `ok` has kept what it acknowledged.
//! Everyone else's events go out at once. While Redis does not answer, the `ok` goes out after
//! [`OWED_WAIT`] anyway (the room goes on without Redis; what it does then is kept only on
//! this node).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::records::Ack;
use super::task::RoomTask;
use crate::cluster::{Cluster, Found, Saved};
use crate::control::ParticipantId;
use crate::room::{ConnectionId, SavedRoom};
use crate::wire::Text;

/// How long after a change the state is written: the changes within it are written together.
const SAVE_DELAY: Duration = Duration::from_millis(50);
/// How long a starting room waits for its kept state, and a stopping one for its last write.
const REDIS_WAIT: Duration = Duration::from_secs(2);
/// How long an `ok` waits for its change to be written before it goes out anyway.
pub(super) const OWED_WAIT: Duration = Duration::from_secs(2);

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
    /// The number of the last state written (or found superseded) in Redis.
    pub written: watch::Receiver<u64>,
    /// `ok`s owed for changes not written yet, oldest first.
    owed: VecDeque<Owed>,
}

/// An acknowledgement waiting for the state with its change to be written.
struct Owed {
    /// The number of the state that holds the change.
    state: u64,
    to: Acknowledgement,
    /// When it goes out anyway.
    deadline: Instant,
}

/// Whom an acknowledgement is owed to.
pub(super) enum Acknowledgement {
    /// A socket's `ok`, if that socket is still the participant's.
    Socket {
        participant: ParticipantId,
        connection: ConnectionId,
        ok: Text,
    },
    /// A REST call's answer, which also waits for the call's records in the store.
    Rest(Ack),
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
        let (wrote, written) = watch::channel(0);
        let writer = tokio::spawn(write_latest(cluster.clone(), room.clone(), rx, wrote));
        let mut keeper = Keeper {
            cluster,
            room,
            seq: 0,
            latest,
            writer,
            due: None,
            restored: HashSet::new(),
            last: None,
            written,
            owed: VecDeque::new(),
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

    /// Hands the room's state as it is now to the writer, if it changed. `ok`s owed for a
    /// change that changed nothing kept wait for the state last handed over instead.
    pub(super) fn save_now(&mut self) {
        if let Some((keeper, seq, json)) = self.take_saved(false) {
            keeper.latest.send_replace(Some((seq, json.into())));
        } else if let Some(keeper) = &mut self.keeper {
            let last = keeper.seq;
            for owed in keeper.owed.iter_mut() {
                owed.state = owed.state.min(last);
            }
            self.pay_owed(false);
        }
    }

    /// Acknowledges a request that changed the room: now on a single node, once the state
    /// with the change is written in a cluster (which is then written at once).
    pub(super) fn acknowledge_change(&mut self, to: Acknowledgement) {
        let Some(keeper) = &mut self.keeper else {
            self.acknowledge(to);
            return;
        };
        let now = Instant::now();
        keeper.owed.push_back(Owed {
            state: keeper.seq + 1,
            to,
            deadline: now + OWED_WAIT,
        });
        keeper.due = Some(now);
    }

    fn acknowledge(&mut self, to: Acknowledgement) {
        match to {
            Acknowledgement::Socket {
                participant,
                connection,
                ok,
            } => {
                if self.is_current(&participant, connection) {
                    self.send_to(&participant, ok);
                }
            }
            Acknowledgement::Rest(ack) => self.records.acknowledge(ack),
        }
    }

    /// When the oldest owed `ok` goes out even if its change is not written.
    pub(super) fn owed_deadline(&self) -> Option<Instant> {
        self.keeper.as_ref()?.owed.front().map(|o| o.deadline)
    }

    /// Sends the `ok`s whose changes are written; with `all`, every one owed (their deadline
    /// passed, or the room stops keeping).
    pub(super) fn pay_owed(&mut self, all: bool) {
        let Some(keeper) = &mut self.keeper else {
            return;
        };
        let written = *keeper.written.borrow_and_update();
        let now = Instant::now();
        let mut paid = Vec::new();
        while let Some(owed) = keeper.owed.front() {
            if !(all || owed.state <= written || owed.deadline <= now) {
                break;
            }
            paid.extend(keeper.owed.pop_front());
        }
        for owed in paid {
            self.acknowledge(owed.to);
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
                self.pay_owed(true);
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
        if !handed_over {
            // Over here: nothing of it is kept for anyone; what was asked was done.
            self.pay_owed(true);
        }
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
async fn write_latest(
    cluster: Cluster,
    room: Arc<str>,
    mut latest: watch::Receiver<Latest>,
    wrote: watch::Sender<u64>,
) {
    let retry = Duration::from_millis(cluster.settings().heartbeat_ms);
    while latest.changed().await.is_ok() {
        let Some((seq, json)) = latest.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match cluster.save_room_state(&room, seq, &json).await {
                Ok(Saved::Written | Saved::Stale) => {
                    wrote.send_replace(seq);
                    break;
                }
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
