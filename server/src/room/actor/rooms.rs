//! The map of live rooms, and the handle callers use to reach one room's task. Starting a
//! room's task (bounded by `max_live_rooms`) happens here; running it is `task.rs`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{mpsc, oneshot};

use super::records::Writers;
use super::task::RoomTask;
use super::{Connect, ConnectError, ConnectOutcome, LiveError, RoomMsg};
use crate::clock::Clock;
use crate::config::SignalSettings;
use crate::control::{ParticipantId, Room, RoomId, Store};
use crate::media::Media;
use crate::metrics::Metrics;
use crate::room::{Actor, Command, ConnectionId, ParticipantView, Refusal, RoomLimits, RoomState};
use crate::wire::RequestId;

/// How long a stopping server waits for its rooms' records to be written.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// A live room's queue, plus a few numbers readable without asking it.
#[derive(Clone)]
pub struct RoomHandle {
    pub(super) tx: mpsc::Sender<RoomMsg>,
    pub(super) generation: u64,
    pub(super) participants: Arc<AtomicU32>,
    /// Listeners on WebRTC, as of the room's last step.
    pub(super) webrtc_listeners: Arc<AtomicU32>,
    pub(super) webrtc_audience_cap: Option<u32>,
    /// Whether the room is recorded, as of its last step.
    pub(super) recording: Arc<std::sync::atomic::AtomicBool>,
}

impl RoomHandle {
    pub fn participant_count(&self) -> u32 {
        self.participants.load(Ordering::Relaxed)
    }

    /// Whether a listener redeeming an invite now would be past the room's WebRTC audience
    /// cap (the room decides again when they connect: this is the join answer's guess).
    pub fn webrtc_audience_full(&self) -> bool {
        self.webrtc_audience_cap
            .is_some_and(|cap| self.webrtc_listeners.load(Ordering::Relaxed) >= cap)
    }

    pub async fn disconnect(&self, participant: ParticipantId, connection: ConnectionId) {
        let _ = self
            .tx
            .send(RoomMsg::Disconnect {
                participant,
                connection,
            })
            .await;
    }

    /// A command from a signaling socket; the answer (`ok`/`error`) goes to its outbox.
    /// Returns false when the room is gone.
    pub async fn from_socket(
        &self,
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        command: Command,
    ) -> bool {
        self.tx
            .send(RoomMsg::FromSocket {
                participant,
                connection,
                request_id,
                command,
            })
            .await
            .is_ok()
    }

    pub async fn list_audience(
        &self,
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        after: Option<ParticipantId>,
        limit: usize,
    ) -> bool {
        self.tx
            .send(RoomMsg::ListAudience {
                participant,
                connection,
                request_id,
                after,
                limit,
            })
            .await
            .is_ok()
    }
}

impl RoomHandle {
    /// Who the participant on `connection` is now; `None` if the connection no longer speaks
    /// for them (replaced, removed) or the room has stopped.
    pub async fn whoami(
        &self,
        participant: ParticipantId,
        connection: ConnectionId,
    ) -> Option<super::Whoami> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(RoomMsg::Whoami {
                participant,
                connection,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok().flatten()
    }

    /// Hands a WebRTC offer to the room, which knows whether the participant may speak.
    pub async fn media_offer(
        &self,
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        sdp: String,
    ) -> bool {
        self.tx
            .send(RoomMsg::MediaOffer {
                participant,
                connection,
                request_id,
                sdp,
            })
            .await
            .is_ok()
    }
}

/// Every live room of this server, by id.
#[derive(Clone)]
pub struct LiveRooms {
    rooms: Arc<DashMap<RoomId, RoomHandle>>,
    deps: Deps,
    /// The server stops (or drains): no socket joins a room here any more, see
    /// [`LiveRooms::shutdown`].
    stopping: Arc<AtomicBool>,
}

/// What every room task shares.
#[derive(Clone)]
pub(super) struct Deps {
    pub clock: Clock,
    pub metrics: Metrics,
    pub settings: Arc<SignalSettings>,
    generations: Arc<AtomicU64>,
    /// Room tasks running now, bounded by `max_live_rooms`. Counted apart from the map,
    /// which cannot be measured while one of its entries is held.
    pub running: Arc<AtomicUsize>,
    pub media: Media,
    /// The rooms' record writers, by room.
    pub writers: Writers,
    /// The server has a webhook endpoint: every room makes webhook events (others only
    /// while they have an endpoint of their own).
    pub webhooks: bool,
    /// The durable facts, for what a room looks up when it starts.
    pub store: Store,
    /// The server's WebRTC audience cap; `None` when it serves no broadcasts.
    webrtc_audience_cap: Option<u32>,
    pub recorder: Arc<dyn super::Recorder>,
    /// The rooms' anonymous listeners (listen links), counted into their audience.
    pub anonymous: Arc<dyn super::AnonymousListeners>,
    /// The cluster this node is one of, once it joined: rooms keep their live state there.
    pub cluster: Arc<std::sync::OnceLock<crate::cluster::Cluster>>,
    /// `[recording] record_by_default`: rooms without their own setting record when live.
    record_by_default: bool,
}

impl LiveRooms {
    // Each argument is one of the rooms' collaborators, passed once at start.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        clock: Clock,
        metrics: Metrics,
        settings: SignalSettings,
        media: Media,
        webrtc_audience_cap: Option<u32>,
        server_webhooks: bool,
        recorder: Arc<dyn super::Recorder>,
    ) -> Self {
        LiveRooms {
            rooms: Arc::new(DashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            deps: Deps {
                webhooks: server_webhooks,
                writers: Writers::new(store.clone(), metrics.clone()),
                store,
                clock,
                metrics,
                settings: Arc::new(settings),
                generations: Arc::new(AtomicU64::new(1)),
                running: Arc::new(AtomicUsize::new(0)),
                media,
                webrtc_audience_cap,
                recorder,
                anonymous: Arc::new(super::NoAnonymousListeners),
                cluster: Arc::new(std::sync::OnceLock::new()),
                record_by_default: false,
            },
        }
    }

    /// Counts `anonymous` listeners into every room's audience from now on; called at start,
    /// before any room goes live.
    pub fn count_anonymous_listeners(
        mut self,
        anonymous: Arc<dyn super::AnonymousListeners>,
    ) -> Self {
        self.deps.anonymous = anonymous;
        self
    }

    /// Rooms without a `record_by_default` of their own record whenever they go live
    /// (`[recording] record_by_default`); called at start, before any room goes live.
    pub fn record_by_default(mut self, on: bool) -> Self {
        self.deps.record_by_default = on;
        self
    }

    /// Rooms started from now on keep their live state in `cluster` (set once, at start).
    pub fn attach_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.deps.cluster.set(cluster);
    }

    pub fn get(&self, room: &RoomId) -> Option<RoomHandle> {
        self.rooms
            .get(room)
            .map(|h| h.clone())
            .filter(|h| !h.tx.is_closed())
    }

    /// Media's report of who is speaking in a room, as they have been since `heard`. Dropped
    /// if the room is busy: the next report comes a moment later.
    pub fn media_speaking(
        &self,
        room: &RoomId,
        levels: Vec<(ParticipantId, u8)>,
        heard: std::time::Instant,
    ) {
        if let Some(handle) = self.get(room) {
            let _ = handle.tx.try_send(RoomMsg::Speaking { levels, heard });
        }
    }

    /// The recorder's report that a room's recording stopped by itself (the room tells
    /// everyone). Nothing if the room is not live.
    pub fn recording_lost(&self, room: &RoomId) {
        if let Some(handle) = self.get(room) {
            let tx = handle.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(RoomMsg::RecordingLost).await;
            });
        }
    }

    /// Tells a live room whether it has a webhook endpoint of its own now, and waits until it
    /// took that in: events it decides after this are made accordingly. Nothing if the room
    /// is not live here (it looks the endpoint up when it starts).
    pub async fn room_webhook_changed(&self, room: &RoomId, room_endpoint: bool) {
        let _ = self
            .ask(room, |done| RoomMsg::Webhooks {
                room_endpoint,
                done,
            })
            .await;
    }

    /// Whether a live room is recorded now, as its task last said.
    pub fn is_recording(&self, room: &RoomId) -> bool {
        self.get(room)
            .is_some_and(|h| h.recording.load(Ordering::Relaxed))
    }

    pub fn live_count(&self) -> usize {
        self.rooms.len()
    }

    /// The room's task, started if it is not running; `None` when starting one would exceed
    /// `max_live_rooms`.
    fn get_or_start(&self, room: &Room) -> Option<RoomHandle> {
        match self.rooms.entry(room.id.clone()) {
            Entry::Occupied(mut o) => {
                if o.get().tx.is_closed() {
                    o.insert(self.start(room)?);
                }
                Some(o.get().clone())
            }
            Entry::Vacant(v) => Some(v.insert(self.start(room)?).clone()),
        }
    }

    fn start(&self, room: &Room) -> Option<RoomHandle> {
        let settings = &self.deps.settings;
        let max = usize::try_from(settings.max_live_rooms).unwrap_or(usize::MAX);
        // Reserved before the task exists, so concurrent joins cannot overshoot the bound.
        self.deps
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let limits = RoomLimits {
            max_participants: room
                .limits
                .max_participants
                .unwrap_or(settings.room_max_participants),
            max_stage: room.limits.max_stage.unwrap_or(settings.room_max_stage),
            resume_grace_ms: settings.resume_grace_secs.saturating_mul(1000),
            webrtc_audience_cap: self
                .deps
                .webrtc_audience_cap
                .map(|cap| room.limits.webrtc_audience_cap.unwrap_or(cap)),
        };
        let (tx, rx) = mpsc::channel(1024);
        let handle = RoomHandle {
            tx,
            generation: self.deps.generations.fetch_add(1, Ordering::Relaxed),
            participants: Arc::new(AtomicU32::new(0)),
            webrtc_listeners: Arc::new(AtomicU32::new(0)),
            webrtc_audience_cap: limits.webrtc_audience_cap,
            recording: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let mut task = RoomTask::new(
            RoomState::new(room.id.clone(), limits, self.deps.clock.now_ms() as u64),
            room.title.clone(),
            handle.clone(),
            self.rooms.clone(),
            self.deps.clone(),
        );
        task.record_when_joined = room
            .recording
            .records_by_default(self.deps.record_by_default);
        self.deps.metrics.live_rooms.inc();
        tracing::debug!(room = %room.id, "room is live");
        tokio::spawn(task.run(rx));
        Some(handle)
    }

    /// Joins (or resumes) a socket into the room, starting the room's task if needed.
    pub async fn connect(&self, room: &Room, connect: Connect) -> Result<RoomHandle, ConnectError> {
        let mut connect = Box::new(connect);
        // A room task that just emptied may be shutting down as we reach it; it hands the
        // request back and the next lookup starts a fresh task (unless the server stops).
        // Bounded, to be safe.
        for _ in 0..16 {
            if self.stopping.load(Ordering::Acquire) {
                return Err(ConnectError::Stopping);
            }
            let Some(handle) = self.get_or_start(room) else {
                return Err(ConnectError::TooManyRooms);
            };
            let (reply, answer) = oneshot::channel();
            if let Err(mpsc::error::SendError(msg)) =
                handle.tx.send(RoomMsg::Connect(connect, reply)).await
            {
                let RoomMsg::Connect(back, _) = msg else {
                    break;
                };
                connect = back;
                tokio::task::yield_now().await;
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(ConnectOutcome::Failed(e))) => return Err(e),
                Ok(Err(ConnectOutcome::Gone(back))) => connect = back,
                Err(_) => break,
            }
        }
        Err(ConnectError::Refused(Refusal::NotInRoom))
    }

    /// Closes every live socket and stops the room tasks, so clients learn why they were cut
    /// off: with `moved_to` (another node's signaling address), `moved` and 4307
    /// `room_elsewhere`, and they resume there at once; without, 1012 `server_restarting`,
    /// and they come back by resuming here when the server is back. From then on a socket that
    /// joins or resumes gets the same 1012 `server_restarting` and no room starts again. Then
    /// waits (up to `SHUTDOWN_DRAIN`) for the rooms' records to be written.
    pub async fn shutdown(&self, moved_to: Option<&str>) {
        // Someone coming back at once (a client resuming right after the close) would start
        // the room again here, on a server about to exit.
        self.stopping.store(true, Ordering::Release);
        let moved_to: Option<std::sync::Arc<str>> = moved_to.map(Into::into);
        let handles: Vec<RoomHandle> = self.rooms.iter().map(|h| h.clone()).collect();
        for handle in handles {
            let moved_to = moved_to.clone();
            let _ = handle.tx.send(RoomMsg::Shutdown { moved_to }).await;
        }
        let left = self.deps.writers.drain(SHUTDOWN_DRAIN).await;
        if left > 0 {
            tracing::error!(
                records = left,
                "stopping with room records not written (the store is unavailable)"
            );
        }
    }

    /// Stops the room here (another node took it over): every socket is closed with 1012
    /// `server_restarting`, and its people come back by joining again, where the room is now.
    pub async fn evict(&self, room: &RoomId) {
        if let Some(handle) = self.get(room) {
            let _ = handle.tx.send(RoomMsg::Shutdown { moved_to: None }).await;
        }
    }

    /// Waits until what the room's last task recorded is written: before a call writes to
    /// the store itself for a room that is not live, so that its records (a ban, the end) come
    /// after the room's own, in the store and in the webhooks.
    pub async fn settled(&self, room: &RoomId) -> Result<(), LiveError> {
        self.deps.writers.settled(room).await
    }

    /// A moderation call from the REST API.
    pub async fn command(
        &self,
        room: &RoomId,
        actor: Actor,
        command: Command,
    ) -> Result<(), LiveError> {
        self.ask(room, |reply| RoomMsg::Rest {
            actor,
            command,
            reply,
        })
        .await?
    }

    /// Who is in the room, in participant-id order, a page at a time.
    pub async fn participants(
        &self,
        room: &RoomId,
        after: Option<ParticipantId>,
        limit: usize,
    ) -> Result<(Vec<ParticipantView>, Option<ParticipantId>), LiveError> {
        self.ask(room, |reply| RoomMsg::Participants {
            after,
            limit,
            reply,
        })
        .await
    }

    /// Sends a live room a message that carries its own reply channel, and waits for the
    /// answer; `NotLive` if the room is not running or stops before it answers.
    async fn ask<T>(
        &self,
        room: &RoomId,
        message: impl FnOnce(oneshot::Sender<T>) -> RoomMsg,
    ) -> Result<T, LiveError> {
        let handle = self.get(room).ok_or(LiveError::NotLive)?;
        let (reply, answer) = oneshot::channel();
        handle
            .tx
            .send(message(reply))
            .await
            .map_err(|_| LiveError::NotLive)?;
        answer.await.map_err(|_| LiveError::NotLive)
    }
}
