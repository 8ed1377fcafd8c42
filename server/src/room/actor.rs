//! The live room: one task per room owning its `RoomState`, fed commands through a queue, and
//! the concurrent map that finds a room's task by id. Carries out the state machine's effects
//! (fan-out to sockets, closes, persistence); decides nothing itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{mpsc, oneshot};

use super::{
    Actor, Audience, AudiencePage, AuditAction, CloseReason, Command, ConnectionId, Effect, Event,
    EventKind, ParticipantView, Refusal, RoomLimits, RoomState,
};
use crate::clock::Clock;
use crate::config::SignalSettings;
use crate::control::{ParticipantId, Role, Room, RoomId, Store};
use crate::media::Media;
use crate::metrics::Metrics;
use crate::wire::{
    AudiencePageMessage, MediaInfo, RequestId, ServerMessage, SnapshotMessage, Text, Welcome,
    close_code, event_message,
};

/// How often a room checks grace deadlines and coalesces audience-count updates.
const TICK: Duration = Duration::from_millis(250);

/// What a room sends to one signaling socket.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded message; the same bytes may be queued to many sockets.
    Text(Text),
    /// Close the socket with this WebSocket close code and reason code.
    Close { code: u16, reason: &'static str },
}

pub type Outbox = mpsc::Sender<Outbound>;

fn close_code_for(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Replaced => close_code::REPLACED,
        CloseReason::Removed => close_code::REMOVED,
        CloseReason::Banned => close_code::BANNED,
        CloseReason::RoomEnded => close_code::ROOM_ENDED,
    }
}

/// A socket asking to join (or resume its place in) a live room.
pub struct Connect {
    pub participant: ParticipantId,
    pub display_name: String,
    /// The role to join with: the token's, or the one a live room gave this identity since.
    pub role: Role,
    /// `Some(nonce)` to resume: the nonce of the resume token presented.
    pub resume: Option<u64>,
    /// The nonce inside the resume token this connection's welcome hands out.
    pub resume_nonce: u64,
    pub connection: ConnectionId,
    pub outbox: Outbox,
    pub request_id: Option<RequestId>,
    pub resume_token: String,
}

#[derive(Debug)]
pub enum ConnectError {
    Refused(Refusal),
    /// The room is not live and the server already runs `max_live_rooms` rooms.
    TooManyRooms,
}

/// Why a REST call could not act on the live room.
#[derive(Debug)]
pub enum LiveError {
    NotLive,
    Refused(Refusal),
}

enum RoomMsg {
    Connect(Box<Connect>, oneshot::Sender<Result<(), ConnectOutcome>>),
    Disconnect {
        participant: ParticipantId,
        connection: ConnectionId,
    },
    FromSocket {
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        command: Command,
        revoke_invite: bool,
    },
    ListAudience {
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        after: Option<ParticipantId>,
        limit: usize,
    },
    Rest {
        actor: Actor,
        command: Command,
        revoke_invite: bool,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Participants {
        after: Option<ParticipantId>,
        limit: usize,
        reply: oneshot::Sender<(Vec<ParticipantView>, Option<ParticipantId>)>,
    },
    /// The participant's WebRTC offer; the answer goes out through their socket.
    MediaOffer {
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        sdp: String,
    },
    /// From media: who is speaking, loudest first.
    Speaking(Vec<(ParticipantId, u8)>),
    /// The server is stopping: tell every socket why, then end the task.
    Shutdown,
}

enum ConnectOutcome {
    Failed(ConnectError),
    /// The room task was shutting down; start a new one and try again.
    Gone(Box<Connect>),
}

/// A live room's queue, plus a few numbers readable without asking it.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomMsg>,
    generation: u64,
    participants: Arc<AtomicU32>,
}

impl RoomHandle {
    pub fn participant_count(&self) -> u32 {
        self.participants.load(Ordering::Relaxed)
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
        revoke_invite: bool,
    ) -> bool {
        self.tx
            .send(RoomMsg::FromSocket {
                participant,
                connection,
                request_id,
                command,
                revoke_invite,
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
}

#[derive(Clone)]
struct Deps {
    store: Store,
    clock: Clock,
    metrics: Metrics,
    settings: Arc<SignalSettings>,
    generations: Arc<AtomicU64>,
    /// Room tasks running now, bounded by `max_live_rooms`. Counted apart from the map,
    /// which cannot be measured while one of its entries is held.
    running: Arc<AtomicUsize>,
    media: Media,
}

impl LiveRooms {
    pub fn new(
        store: Store,
        clock: Clock,
        metrics: Metrics,
        settings: SignalSettings,
        media: Media,
    ) -> Self {
        LiveRooms {
            rooms: Arc::new(DashMap::new()),
            deps: Deps {
                store,
                clock,
                metrics,
                settings: Arc::new(settings),
                generations: Arc::new(AtomicU64::new(1)),
                running: Arc::new(AtomicUsize::new(0)),
                media,
            },
        }
    }

    pub fn get(&self, room: &RoomId) -> Option<RoomHandle> {
        self.rooms
            .get(room)
            .map(|h| h.clone())
            .filter(|h| !h.tx.is_closed())
    }

    /// Media's report of who is speaking in a room. Dropped if the room is busy: the next
    /// report comes a moment later.
    pub fn media_speaking(&self, room: &RoomId, levels: Vec<(ParticipantId, u8)>) {
        if let Some(handle) = self.get(room) {
            let _ = handle.tx.try_send(RoomMsg::Speaking(levels));
        }
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
        };
        let (tx, rx) = mpsc::channel(1024);
        let handle = RoomHandle {
            tx,
            generation: self.deps.generations.fetch_add(1, Ordering::Relaxed),
            participants: Arc::new(AtomicU32::new(0)),
        };
        let task = RoomTask {
            state: RoomState::new(room.id.clone(), limits, self.deps.clock.now_ms() as u64),
            title: room.title.clone(),
            connections: HashMap::new(),
            resume_nonces: HashMap::new(),
            recorded_roles: HashMap::new(),
            seq: 0,
            last_audience_count: 0,
            pending_revoke: false,
            audit_as: None,
            acting: Actor::System,
            end_recorded_elsewhere: false,
            stopping: false,
            handle: handle.clone(),
            rooms: self.rooms.clone(),
            deps: self.deps.clone(),
        };
        self.deps.metrics.live_rooms.inc();
        tracing::debug!(room = %room.id, "room is live");
        tokio::spawn(task.run(rx));
        Some(handle)
    }

    /// Joins (or resumes) a socket into the room, starting the room's task if needed.
    pub async fn connect(&self, room: &Room, connect: Connect) -> Result<RoomHandle, ConnectError> {
        let mut connect = Box::new(connect);
        // A room task that just emptied may be shutting down as we reach it; it hands the
        // request back and the next lookup starts a fresh task. Bounded, to be safe.
        for _ in 0..16 {
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

    /// Closes every live socket with 1012 `server_restarting` and stops the room tasks, so
    /// clients learn why they were cut off and come back by joining again.
    pub async fn shutdown(&self) {
        let handles: Vec<RoomHandle> = self.rooms.iter().map(|h| h.clone()).collect();
        for handle in handles {
            let _ = handle.tx.send(RoomMsg::Shutdown).await;
        }
    }

    /// A moderation call from the REST API.
    pub async fn command(
        &self,
        room: &RoomId,
        actor: Actor,
        command: Command,
        revoke_invite: bool,
    ) -> Result<(), LiveError> {
        let handle = self.get(room).ok_or(LiveError::NotLive)?;
        let (reply, answer) = oneshot::channel();
        handle
            .tx
            .send(RoomMsg::Rest {
                actor,
                command,
                revoke_invite,
                reply,
            })
            .await
            .map_err(|_| LiveError::NotLive)?;
        answer
            .await
            .map_err(|_| LiveError::NotLive)?
            .map_err(LiveError::Refused)
    }

    /// Who is in the room, in participant-id order, a page at a time.
    pub async fn participants(
        &self,
        room: &RoomId,
        after: Option<ParticipantId>,
        limit: usize,
    ) -> Result<(Vec<ParticipantView>, Option<ParticipantId>), LiveError> {
        let handle = self.get(room).ok_or(LiveError::NotLive)?;
        let (reply, answer) = oneshot::channel();
        handle
            .tx
            .send(RoomMsg::Participants {
                after,
                limit,
                reply,
            })
            .await
            .map_err(|_| LiveError::NotLive)?;
        answer.await.map_err(|_| LiveError::NotLive)
    }
}

struct Conn {
    id: ConnectionId,
    outbox: Outbox,
}

struct RoomTask {
    state: RoomState,
    title: String,
    connections: HashMap<ParticipantId, Conn>,
    /// The nonce of the one resume token that may take each participant back.
    resume_nonces: HashMap<ParticipantId, u64>,
    /// Each participant's role as last recorded in the store, to record only changes.
    recorded_roles: HashMap<ParticipantId, Role>,
    seq: u64,
    last_audience_count: u32,
    /// Set while a REST ban asked to revoke the invite the person came through.
    pending_revoke: bool,
    /// Set while a moderator absent from the room acts through REST: the audit names them.
    audit_as: Option<Actor>,
    /// Who asked for the command being carried out (bans record who made them).
    acting: Actor,
    /// The store already had this room ended (a racing `DELETE` ended it while nobody was
    /// in yet): the end is not recorded a second time.
    end_recorded_elsewhere: bool,
    /// The server is shutting down.
    stopping: bool,
    handle: RoomHandle,
    rooms: Arc<DashMap<RoomId, RoomHandle>>,
    deps: Deps,
}

impl RoomTask {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tick.tick() => self.on_tick().await,
            }
            self.handle
                .participants
                .store(self.state.participant_count(), Ordering::Relaxed);
            if self.stopping
                || self.state.is_ended()
                || (self.state.is_empty() && self.connections.is_empty())
            {
                break;
            }
        }
        let generation = self.handle.generation;
        self.rooms
            .remove_if(self.state.room(), |_, h| h.generation == generation);
        self.deps.running.fetch_sub(1, Ordering::AcqRel);
        self.deps.media.close_room(self.state.room());
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                RoomMsg::Connect(connect, reply) => {
                    let answer = if self.state.is_ended() {
                        ConnectOutcome::Failed(ConnectError::Refused(Refusal::RoomEnded))
                    } else {
                        ConnectOutcome::Gone(connect)
                    };
                    let _ = reply.send(Err(answer));
                }
                // Dropping the reply tells the caller the room is not live (so a ban falls
                // back to the store); only a room that really ended says so.
                RoomMsg::Rest { reply, .. } if self.state.is_ended() => {
                    let _ = reply.send(Err(Refusal::RoomEnded));
                }
                _ => {}
            }
        }
        self.deps.metrics.live_rooms.dec();
        tracing::debug!(room = %self.state.room(), "room is no longer live");
    }

    /// Whether `connection` is the socket this participant speaks through right now.
    fn is_current(&self, participant: &ParticipantId, connection: ConnectionId) -> bool {
        self.connections
            .get(participant)
            .is_some_and(|c| c.id == connection)
    }

    fn now(&self) -> u64 {
        self.deps.clock.now_ms().max(0) as u64
    }

    async fn handle(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Connect(connect, reply) => {
                let result = self.connect(*connect).await;
                let _ = reply.send(result.map_err(ConnectOutcome::Failed));
            }
            RoomMsg::Disconnect {
                participant,
                connection,
            } => {
                if self.is_current(&participant, connection) {
                    self.connections.remove(&participant);
                }
                let actor = Actor::Participant(participant);
                self.apply(&actor, Command::Disconnect { connection })
                    .await
                    .ok();
            }
            RoomMsg::FromSocket {
                participant,
                connection,
                request_id,
                command,
                revoke_invite,
            } => {
                // Late messages from a socket that was replaced or closed are ignored.
                if !self.is_current(&participant, connection) {
                    return;
                }
                let actor = Actor::Participant(participant.clone());
                let leaving = matches!(command, Command::Leave);
                self.pending_revoke = revoke_invite;
                let applied = self.apply(&actor, command).await;
                self.pending_revoke = false;
                let answer = match applied {
                    Ok(()) => request_id
                        .as_ref()
                        .map(|id| ServerMessage::Ok { id }.to_json()),
                    Err(refusal) => {
                        self.deps.metrics.signal_error(refusal.code());
                        Some(
                            ServerMessage::Error {
                                id: request_id.as_ref(),
                                code: refusal.code(),
                                message: refusal.message(),
                            }
                            .to_json(),
                        )
                    }
                };
                if let Some(text) = answer {
                    self.send_to(&participant, text.into());
                }
                if leaving && let Some(conn) = self.connections.remove(&participant) {
                    let _ = conn.outbox.try_send(Outbound::Close {
                        code: close_code::LEFT,
                        reason: "left",
                    });
                }
            }
            RoomMsg::ListAudience {
                participant,
                connection,
                request_id,
                after,
                limit,
            } => {
                if !self.is_current(&participant, connection) {
                    return;
                }
                let page: AudiencePage = self.state.audience_page(after.as_ref(), limit);
                let text = AudiencePageMessage {
                    id: request_id.as_ref(),
                    page: &page,
                }
                .to_json();
                self.send_to(&participant, text.into());
            }
            RoomMsg::Rest {
                actor,
                command,
                revoke_invite,
                reply,
            } => {
                // A moderator calling REST with their session token need not be in the room:
                // their token already proved the role, so they act with the operator's reach,
                // and the audit log still names them.
                let acting = match &actor {
                    Actor::Participant(p) if self.state.participant(p).is_none() => {
                        self.audit_as = Some(actor.clone());
                        Actor::Operator
                    }
                    _ => actor,
                };
                self.pending_revoke = revoke_invite;
                let result = self.apply(&acting, command).await;
                self.pending_revoke = false;
                self.audit_as = None;
                let _ = reply.send(result);
            }
            RoomMsg::MediaOffer {
                participant,
                connection,
                request_id,
                sdp,
            } => self.media_offer(participant, connection, request_id, sdp),
            RoomMsg::Speaking(levels) => {
                self.apply(&Actor::System, Command::SetSpeaking { levels })
                    .await
                    .ok();
            }
            RoomMsg::Shutdown => {
                for (_, conn) in self.connections.drain() {
                    let _ = conn.outbox.try_send(Outbound::Close {
                        code: close_code::SERVER_RESTARTING,
                        reason: "server_restarting",
                    });
                }
                self.stopping = true;
            }
            RoomMsg::Participants {
                after,
                limit,
                reply,
            } => {
                let mut page: Vec<ParticipantView> = self
                    .state
                    .participants()
                    .filter(|p| after.as_ref().is_none_or(|a| &p.id > a))
                    .take(limit + 1)
                    .map(|p| p.view())
                    .collect();
                let next = if page.len() > limit {
                    page.truncate(limit);
                    page.last().map(|p| p.id.clone())
                } else {
                    None
                };
                let _ = reply.send((page, next));
            }
        }
    }

    /// Passes an offer to media with the participant's standing; the answer (or refusal) is
    /// sent to their socket when media has it, without holding up the room.
    fn media_offer(
        &mut self,
        participant: ParticipantId,
        connection: ConnectionId,
        request_id: Option<RequestId>,
        sdp: String,
    ) {
        if !self.is_current(&participant, connection) {
            return;
        }
        let (Some(p), Some(conn)) = (
            self.state.participant(&participant),
            self.connections.get(&participant),
        ) else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        self.deps.media.offer(
            self.state.room(),
            &participant,
            sdp,
            p.on_stage,
            p.may_send(),
            reply,
        );
        let outbox = conn.outbox.clone();
        let metrics = self.deps.metrics.clone();
        tokio::spawn(async move {
            let text = match tokio::time::timeout(Duration::from_secs(10), answer).await {
                Ok(Ok(Ok(sdp))) => ServerMessage::MediaAnswer {
                    id: request_id.as_ref(),
                    sdp: &sdp,
                }
                .to_json(),
                Ok(Ok(Err(e))) => {
                    metrics.signal_error(e.code);
                    ServerMessage::Error {
                        id: request_id.as_ref(),
                        code: e.code,
                        message: &e.message,
                    }
                    .to_json()
                }
                _ => {
                    metrics.signal_error("media_unavailable");
                    ServerMessage::Error {
                        id: request_id.as_ref(),
                        code: "media_unavailable",
                        message: "the media service did not answer; try again",
                    }
                    .to_json()
                }
            };
            let _ = outbox.try_send(Outbound::Text(text.into()));
        });
    }

    async fn connect(&mut self, c: Connect) -> Result<(), ConnectError> {
        let command = match c.resume {
            Some(presented) => {
                // Only the newest resume token works, and only once.
                if self.resume_nonces.get(&c.participant) != Some(&presented) {
                    return Err(ConnectError::Refused(Refusal::NotInRoom));
                }
                Command::Resume {
                    connection: c.connection,
                }
            }
            None => Command::Join {
                display_name: c.display_name,
                role: c.role,
                connection: c.connection,
            },
        };
        if c.resume.is_none() {
            self.recorded_roles.insert(c.participant.clone(), c.role);
        }
        let actor = Actor::Participant(c.participant.clone());
        self.apply(&actor, command)
            .await
            .map_err(ConnectError::Refused)?;
        let Some(snapshot) = self.state.snapshot_for(&c.participant) else {
            return Err(ConnectError::Refused(Refusal::NotInRoom));
        };
        let welcome = Welcome {
            id: c.request_id.as_ref(),
            room_title: &self.title,
            seq: self.seq,
            resume_token: &c.resume_token,
            resume_grace_secs: self.deps.settings.resume_grace_secs,
            media: MediaInfo {
                slots: self.deps.media.slots(),
            },
            snapshot: &snapshot,
        }
        .to_json();
        // The welcome is the socket's first message, so it cannot be refused for lack of room.
        let _ = c.outbox.try_send(Outbound::Text(welcome.into()));
        self.resume_nonces
            .insert(c.participant.clone(), c.resume_nonce);
        self.connections.insert(
            c.participant,
            Conn {
                id: c.connection,
                outbox: c.outbox,
            },
        );
        Ok(())
    }

    async fn on_tick(&mut self) {
        if self.state.next_deadline().is_some_and(|d| d <= self.now()) {
            self.apply(&Actor::System, Command::Tick).await.ok();
        }
        let count = self.state.audience_count();
        if count != self.last_audience_count {
            self.last_audience_count = count;
            let text: Text = ServerMessage::AudienceCount { count }.to_json().into();
            let everyone: Vec<ParticipantId> = self.connections.keys().cloned().collect();
            for id in everyone {
                self.send_to(&id, text.clone());
            }
            self.drop_slow().await;
        }
    }

    /// Applies a command, then carries out everything it caused.
    async fn apply(&mut self, actor: &Actor, command: Command) -> Result<(), Refusal> {
        self.acting = actor.clone();
        let now = self.now();
        let outcome = self.state.apply(actor, command, now)?;
        self.record_roles(&outcome.events).await;
        self.deliver(outcome.events);
        for effect in outcome.effects {
            self.carry_out(effect).await;
        }
        self.drop_slow().await;
        Ok(())
    }

    /// Writes down roles the room changed, so that a session token issued earlier cannot
    /// bring back the old role (for a rejoin, or on REST), even after this task is gone.
    async fn record_roles(&mut self, events: &[Event]) {
        for event in events {
            let view = match &event.kind {
                EventKind::ParticipantLeft { participant, .. } => {
                    self.recorded_roles.remove(participant);
                    self.resume_nonces.remove(participant);
                    self.deps.media.close(self.state.room(), participant);
                    continue;
                }
                EventKind::RoomEnded { .. } => {
                    self.deps.media.close_room(self.state.room());
                    continue;
                }
                EventKind::RoleChanged { participant, .. }
                | EventKind::JoinedStage { participant }
                | EventKind::LeftStage { participant, .. } => participant,
                _ => continue,
            };
            if self.recorded_roles.get(&view.id) == Some(&view.role) {
                continue;
            }
            self.recorded_roles.insert(view.id.clone(), view.role);
            if let Err(e) = self
                .deps
                .store
                .set_live_role(view.id.clone(), view.role)
                .await
            {
                tracing::error!(participant = %view.id, error = %e, "could not record a role");
            }
        }
    }

    fn deliver(&mut self, events: Vec<Event>) {
        for event in events {
            self.seq += 1;
            let text: Text = event_message(self.seq, &event.kind).into();
            match event.audience {
                Audience::Everyone => {
                    for conn in self.connections.values() {
                        Self::push(conn, &text);
                    }
                }
                Audience::Moderators | Audience::ModeratorsAnd(_) => {
                    for id in self.state.moderators() {
                        if let Some(conn) = self.connections.get(id) {
                            Self::push(conn, &text);
                        }
                    }
                    if let Audience::ModeratorsAnd(id) = &event.audience
                        && self
                            .state
                            .participant(id)
                            .is_none_or(|p| p.role != Role::Moderator)
                        && let Some(conn) = self.connections.get(id)
                    {
                        Self::push(conn, &text);
                    }
                }
                Audience::Only(id) => {
                    if let Some(conn) = self.connections.get(&id) {
                        Self::push(conn, &text);
                    }
                }
            }
        }
    }

    /// Queues without waiting: a full queue marks the socket as too slow (see `drop_slow`).
    fn push(conn: &Conn, text: &Text) {
        let _ = conn.outbox.try_send(Outbound::Text(text.clone()));
    }

    fn send_to(&mut self, participant: &ParticipantId, text: Text) {
        if let Some(conn) = self.connections.get(participant) {
            Self::push(conn, &text);
        }
    }

    /// Sockets whose queue filled up are cut loose, so one slow reader never holds the room
    /// back; their participants get the usual grace period to come back.
    async fn drop_slow(&mut self) {
        loop {
            let slow: Vec<(ParticipantId, ConnectionId)> = self
                .connections
                .iter()
                .filter(|(_, c)| c.outbox.capacity() == 0)
                .map(|(p, c)| (p.clone(), c.id))
                .collect();
            if slow.is_empty() {
                return;
            }
            for (participant, connection) in slow {
                tracing::info!(%participant, "dropping a socket that does not keep up");
                self.deps.metrics.signal_error("too_slow");
                self.connections.remove(&participant);
                let actor = Actor::Participant(participant);
                let now = self.now();
                if let Ok(outcome) =
                    self.state
                        .apply(&actor, Command::Disconnect { connection }, now)
                {
                    self.deliver(outcome.events);
                    for effect in outcome.effects {
                        Box::pin(self.carry_out(effect)).await;
                    }
                }
            }
        }
    }

    async fn carry_out(&mut self, effect: Effect) {
        let now = self.deps.clock.now_ms();
        let room = self.state.room().clone();
        let store = &self.deps.store;
        let result = match effect {
            Effect::CloseConnection {
                participant,
                connection,
                reason,
            } => {
                let result = if reason == CloseReason::Removed {
                    store.mark_removed(participant.clone(), now).await
                } else {
                    Ok(())
                };
                if self.is_current(&participant, connection)
                    && let Some(conn) = self.connections.remove(&participant)
                {
                    let _ = conn.outbox.try_send(Outbound::Close {
                        code: close_code_for(reason),
                        reason: reason.code(),
                    });
                }
                result
            }
            Effect::RefreshSnapshot { participant } => {
                if let Some(snapshot) = self.state.snapshot_for(&participant) {
                    let text = SnapshotMessage {
                        seq: self.seq,
                        snapshot: &snapshot,
                    }
                    .to_json();
                    self.send_to(&participant, text.into());
                }
                Ok(())
            }
            Effect::SendPermission {
                participant,
                allowed,
            } => {
                self.deps
                    .media
                    .set_send_permission(&room, &participant, allowed);
                Ok(())
            }
            Effect::PersistBan { participant } => {
                let revoke = self.pending_revoke;
                let by = self.audit_as.clone().unwrap_or_else(|| self.acting.clone());
                store.ban(room, participant, revoke, by, now, false).await
            }
            Effect::PersistRoomEnded => {
                match store.end_room(room, Actor::System, now, false).await {
                    Err(crate::control::ControlError::RoomEnded) => {
                        self.end_recorded_elsewhere = true;
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            }
            Effect::Audit {
                action: AuditAction::End,
                ..
            } if self.end_recorded_elsewhere => Ok(()),
            Effect::Audit {
                mut actor,
                action,
                target,
                detail,
            } => {
                if let Some(delegate) = &self.audit_as {
                    actor = delegate.clone();
                }
                store
                    .record_audit(
                        room,
                        actor,
                        action.as_str().to_owned(),
                        target.map(|t| t.to_string()),
                        detail,
                        now,
                    )
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(room = %self.state.room(), error = %e, "could not persist a room effect");
        }
    }
}
