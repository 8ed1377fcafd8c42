//! A live room's records (roles, removals, bans, its end, audit lines) written off the room's
//! task, in the order the room decided them. Decides nothing; never blocks the room.
//!
//! The room hands each record to its room's writer and carries on. There is one writer per
//! room on this node, shared by successive tasks of the same room (one that emptied and one
//! started again), so every record of a room is written in one order. The writer retries a
//! record while the store is unavailable (PostgreSQL down or restarting), with a growing,
//! jittered wait, and drops it only when the store refuses it for good (logged, counted in
//! `stoa_room_records_lost_total{reason="refused"}`).
//!
//! The queue is bounded ([`CAPACITY`] entries a room): a room that outruns a store that is
//! down for a long time loses its newest records rather than growing without limit (logged,
//! `reason="queue_full"`); the room itself goes on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::{Notify, oneshot};

use super::LiveError;
use crate::clock::Backoff;
use crate::control::{ControlError, RoomId, RoomWrite, Store};
use crate::metrics::Metrics;

/// The most entries a room's queue holds. At one moderation a second that is over an hour of
/// a database outage; a few hundred kilobytes of memory at most.
pub(super) const CAPACITY: usize = 4096;

/// Waits between tries while the store is unavailable: 100 ms doubling to 5 s.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The answer a REST call waits for: its records written, or why not.
pub(super) type Ack = oneshot::Sender<Result<(), LiveError>>;

enum Entry {
    /// One command's records and webhook events, written in one transaction.
    Write(RoomWrite),
    /// Answered `Ok` once every record before it is written, or `store_unavailable` when a
    /// try finds the store unavailable while it waits (its records stay queued).
    Ack(Ack),
    /// Answered once every record before it is written, however long that takes.
    Written(oneshot::Sender<()>),
}

struct Queue {
    entries: VecDeque<Entry>,
    /// Room tasks holding this writer. With none and nothing queued, the writer ends.
    holders: usize,
    /// The last write found the store unavailable and has not succeeded since.
    stalled: bool,
}

struct Shared {
    room: RoomId,
    queue: Mutex<Queue>,
    /// Something was queued, or a holder let go.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing is left half-done under this lock, so a poisoned one is safe to reuse.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `entry`, or hands it back if the queue is full.
    fn push(&self, entry: Entry) -> Result<(), Entry> {
        let mut q = self.lock();
        if q.entries.len() >= CAPACITY {
            return Err(entry);
        }
        q.entries.push_back(entry);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// See [`RecordWriter::acknowledge`].
    fn acknowledge(&self, ack: Ack) {
        if let Err(Entry::Ack(ack)) = self.push(Entry::Ack(ack)) {
            let _ = ack.send(Err(unavailable("the room's record queue is full")));
        }
    }
}

/// This node's room writers, by room.
#[derive(Clone)]
pub(super) struct Writers {
    map: Arc<DashMap<RoomId, Arc<Shared>>>,
    store: Store,
    metrics: Metrics,
    /// A writer ended (for `drain`).
    ended: Arc<Notify>,
}

impl Writers {
    pub fn new(store: Store, metrics: Metrics) -> Self {
        Writers {
            map: Arc::new(DashMap::new()),
            store,
            metrics,
            ended: Arc::new(Notify::new()),
        }
    }

    /// The room's writer, started if none runs for it.
    pub fn open(&self, room: &RoomId) -> RecordWriter {
        // Counted under the map's lock, where a writer that finds itself idle leaves the map:
        // a writer is never left by its last holder between those two steps.
        let shared = match self.map.entry(room.clone()) {
            MapEntry::Occupied(o) => {
                o.get().lock().holders += 1;
                o.get().clone()
            }
            MapEntry::Vacant(v) => {
                let shared = Arc::new(Shared {
                    room: room.clone(),
                    queue: Mutex::new(Queue {
                        entries: VecDeque::new(),
                        holders: 1,
                        stalled: false,
                    }),
                    wake: Notify::new(),
                });
                v.insert(shared.clone());
                tokio::spawn(self.clone().run(shared.clone()));
                shared
            }
        };
        RecordWriter {
            shared,
            metrics: self.metrics.clone(),
        }
    }

    /// Waits until every writer has written its queue and ended, or `limit` passed; returns
    /// the records left unwritten (counted as lost at `shutdown`).
    pub async fn drain(&self, limit: Duration) -> usize {
        let until = tokio::time::Instant::now() + limit;
        loop {
            if self.map.is_empty() {
                return 0;
            }
            if tokio::time::timeout_at(until, self.ended.notified())
                .await
                .is_err()
            {
                let left: usize = self
                    .map
                    .iter()
                    .map(|w| {
                        let q = w.lock();
                        q.entries
                            .iter()
                            .filter(|e| matches!(e, Entry::Write(_)))
                            .count()
                    })
                    .sum();
                self.metrics.room_records_lost("shutdown", left as u64);
                return left;
            }
        }
    }

    /// Answers once the records queued for `room` so far are written (at once when it has no
    /// writer), or with `store_unavailable` as [`RecordWriter::acknowledge`] does. For a call
    /// that writes to the store itself because the room is not live: a task that stopped a
    /// moment ago may still have records on their way, and the call's come after them.
    pub async fn settled(&self, room: &RoomId) -> Result<(), LiveError> {
        let (ack, answer) = oneshot::channel();
        // Under the map's guard: a writer that finds itself idle leaves the map under its
        // write lock, so the acknowledgment never reaches a writer that has ended.
        match self.map.get(room) {
            Some(shared) => shared.acknowledge(ack),
            None => return Ok(()),
        }
        // A writer gone without answering has written what it had.
        answer.await.unwrap_or(Ok(()))
    }

    async fn run(self, shared: Arc<Shared>) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            let next = shared.lock().entries.pop_front();
            match next {
                Some(Entry::Write(write)) => {
                    self.metrics.room_records_queued.dec();
                    self.write(&shared, write, &mut backoff).await;
                }
                Some(Entry::Ack(ack)) => {
                    let _ = ack.send(Ok(()));
                }
                Some(Entry::Written(done)) => {
                    let _ = done.send(());
                }
                None => {
                    let idle = |s: &Arc<Shared>| {
                        let q = s.lock();
                        q.holders == 0 && q.entries.is_empty()
                    };
                    if self
                        .map
                        .remove_if(&shared.room, |_, s| Arc::ptr_eq(s, &shared) && idle(s))
                        .is_some()
                    {
                        self.ended.notify_one();
                        return;
                    }
                    // Stores a permit if something came in since the queue was looked at.
                    shared.wake.notified().await;
                }
            }
        }
    }

    /// Writes one command's records, trying again while the store is unavailable.
    async fn write(&self, shared: &Shared, write: RoomWrite, backoff: &mut Backoff) {
        loop {
            match self
                .store
                .write_room(shared.room.clone(), write.clone())
                .await
            {
                Ok(()) => {
                    backoff.reset();
                    let mut q = shared.lock();
                    if q.stalled {
                        q.stalled = false;
                        tracing::info!(room = %shared.room, queued = q.entries.len(),
                            "the store is back; writing the room's queued records");
                    }
                    return;
                }
                Err(ControlError::Unavailable(why)) => {
                    let waiting = {
                        let mut q = shared.lock();
                        if !q.stalled {
                            q.stalled = true;
                            tracing::warn!(room = %shared.room, error = %why,
                                "the store is unavailable; the room's records wait in its queue");
                        }
                        take_acks(&mut q.entries)
                    };
                    for ack in waiting {
                        let _ = ack.send(Err(unavailable(&why)));
                    }
                    self.metrics.room_record_retries.inc();
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                Err(e) => {
                    tracing::error!(room = %shared.room, ?write, error = %e,
                        "the store refused a room record; it is dropped");
                    self.metrics.room_records_lost("refused", 1);
                    return;
                }
            }
        }
    }
}

fn unavailable(why: &str) -> LiveError {
    LiveError::Store(ControlError::Unavailable(why.to_owned()))
}

/// Takes the acknowledgments out of the queue, leaving everything else in its order.
fn take_acks(entries: &mut VecDeque<Entry>) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut rest = VecDeque::with_capacity(entries.len());
    for entry in entries.drain(..) {
        match entry {
            Entry::Ack(ack) => acks.push(ack),
            other => rest.push_back(other),
        }
    }
    *entries = rest;
    acks
}

/// A room task's end of its room's writer. Queuing never waits.
pub(super) struct RecordWriter {
    shared: Arc<Shared>,
    metrics: Metrics,
}

impl RecordWriter {
    /// Queues one command's records; dropped (logged, counted) if the queue is full.
    pub fn write(&self, write: RoomWrite) {
        if write.is_empty() {
            return;
        }
        if let Err(lost) = self.push(Entry::Write(write)) {
            tracing::error!(room = %self.shared.room, record = ?lost,
                "the room's record queue is full; a record is dropped");
            self.metrics.room_records_lost("queue_full", 1);
            return;
        }
        self.metrics.room_records_queued.inc();
    }

    /// Answers `ack` once every record queued so far is written, or with `store_unavailable`
    /// when the writer's next try finds the store unavailable (as a call that writes to the
    /// store itself would be answered).
    pub fn acknowledge(&self, ack: Ack) {
        self.shared.acknowledge(ack);
    }

    /// Resolves once every record queued so far is written (or the writer is gone).
    pub fn written(&self) -> oneshot::Receiver<()> {
        let (done, written) = oneshot::channel();
        // A full queue cannot take the marker; waiting for it would then never end.
        let _ = self.push(Entry::Written(done));
        written
    }

    /// Queues `entry`, or hands it back if the queue is full.
    fn push(&self, entry: Entry) -> Result<(), Entry> {
        self.shared.push(entry)
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Write(w) => w.fmt(f),
            Entry::Ack(_) => f.write_str("Ack"),
            Entry::Written(_) => f.write_str("Written"),
        }
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        self.shared.lock().holders -= 1;
        self.shared.wake.notify_one();
    }
}
