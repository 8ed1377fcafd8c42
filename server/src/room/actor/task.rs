//! One room's task: takes messages off its queue, applies commands to the state machine and
//! carries out the outcome (events, then effects), lets go of sockets that cannot keep up, and
//! stops when the room is empty or ended. The rules are `RoomState`'s; this is the loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::fanout::Conn;
use super::keep::Acknowledgement;
use super::records::RecordWriter;
use super::rooms::{Deps, RoomHandle};
use super::{Connect, ConnectError, ConnectOutcome, LiveError, Outbound, RoomMsg};
use crate::control::{ParticipantId, RoomId, RoomWrite};
use crate::room::{
    Actor, AuditAction, CloseReason, Command, ConnectionId, Effect, ParticipantView, Refusal,
    RoomState,
};
use crate::wire::{ServerMessage, Text, close_code};

/// How often a room checks grace deadlines and coalesces audience-count updates.
const TICK: Duration = Duration::from_millis(250);

pub(super) struct RoomTask {
    pub state: RoomState,
    pub title: String,
    /// The socket each connected participant speaks through.
    pub connections: HashMap<ParticipantId, Conn>,
    /// Those whose last socket came through an edge node, whose media connection is there.
    via_edge: std::collections::HashSet<ParticipantId>,
    /// The number of the last event sent, for clients to notice gaps.
    pub seq: u64,
    /// The audience size last sent, anonymous listeners included, and how many of it those are.
    pub last_audience_count: u32,
    pub last_anonymous: u32,
    /// Where the room's records go, in order, to be written off this task.
    pub records: RecordWriter,
    /// What the command being carried out writes down (records and webhook events), handed
    /// to `records` once it is carried out.
    pub pending: RoomWrite,
    /// This room makes webhook events: the server has an endpoint, or the room one of its own
    /// (looked up when the task starts, and told when it changes).
    pub webhooks: bool,
    /// The server is shutting down.
    stopping: bool,
    /// The recorder could not start the recording the room asked for: the room is told once
    /// the command that asked is carried out.
    recording_lost: bool,
    handle: RoomHandle,
    rooms: Arc<DashMap<RoomId, RoomHandle>>,
    pub deps: Deps,
    /// In a cluster: the room's live state kept in Redis (`keep.rs`).
    pub keeper: Option<super::keep::Keeper>,
    /// The room records by default: the server starts recording once the first person is in
    /// (so they see it start), once per time the room goes live.
    pub record_when_joined: bool,
}

/// The `ok` a socket is owed for a command it sent, and where it goes.
struct Answer {
    participant: ParticipantId,
    connection: ConnectionId,
    ok: Option<Text>,
}

impl RoomTask {
    pub fn new(
        state: RoomState,
        title: String,
        handle: RoomHandle,
        rooms: Arc<DashMap<RoomId, RoomHandle>>,
        deps: Deps,
    ) -> Self {
        RoomTask {
            records: deps.writers.open(state.room()),
            pending: RoomWrite::default(),
            state,
            title,
            connections: HashMap::new(),
            via_edge: Default::default(),
            seq: 0,
            last_audience_count: 0,
            last_anonymous: 0,
            webhooks: deps.webhooks,
            stopping: false,
            recording_lost: false,
            handle,
            rooms,
            deps,
            keeper: None,
            record_when_joined: false,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>) {
        let started_at = self.deps.clock.now_ms();
        self.look_up_webhooks().await;
        self.webhook_room_started(started_at);
        self.deps.recorder.live(self.state.room(), true);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Before anyone is taken in: the people a previous home kept come back first.
        self.start_keeping().await;
        let mut written = self.keeper.as_ref().map(|k| k.written.clone());
        loop {
            let save_due = self.keeper.as_ref().and_then(|k| k.due);
            let owed_deadline = self.owed_deadline();
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tick.tick() => self.on_tick().await,
                _ = tokio::time::sleep_until(save_due.unwrap_or_else(tokio::time::Instant::now)),
                    if save_due.is_some() => self.save_now(),
                Some(Ok(())) = async {
                    match written.as_mut() {
                        Some(w) => Some(w.changed().await),
                        None => None,
                    }
                } => self.pay_owed(false),
                _ = tokio::time::sleep_until(owed_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if owed_deadline.is_some() => self.pay_owed(false),
            }
            self.handle
                .participants
                .store(self.state.participant_count(), Ordering::Relaxed);
            self.handle
                .webrtc_listeners
                .store(self.state.webrtc_listeners(), Ordering::Relaxed);
            self.handle
                .recording
                .store(self.state.is_recording(), Ordering::Relaxed);
            if self.stopping
                || self.state.is_ended()
                || (self.state.is_empty() && self.connections.is_empty())
            {
                break;
            }
        }
        if self.state.is_recording() {
            // Nobody is left to hear it (or the server stops): the file is closed now.
            let detail = serde_json::json!({ "reason": "room_closed" });
            self.audit(Actor::System, AuditAction::StopRecording, None, detail);
            self.stop_recorder().await;
            self.records.write(std::mem::take(&mut self.pending));
        }
        self.handle.recording.store(false, Ordering::Relaxed);
        self.deps.recorder.live(self.state.room(), false);
        self.stop_keeping(self.stopping).await;
        // An ended room stays in the map, answering that it ended, until its records (its
        // end among them) are written: nobody can start it again in between.
        if self.state.is_ended() {
            let written = self.records.written();
            tokio::pin!(written);
            loop {
                tokio::select! {
                    _ = &mut written => break,
                    msg = rx.recv() => match msg {
                        Some(msg) => self.turn_away(msg),
                        None => break,
                    },
                }
            }
        }
        let generation = self.handle.generation;
        self.rooms
            .remove_if(self.state.room(), |_, h| h.generation == generation);
        self.deps.running.fetch_sub(1, Ordering::AcqRel);
        self.deps.media.close_room(self.state.room());
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            self.turn_away(msg);
        }
        self.deps.metrics.live_rooms.dec();
        tracing::debug!(room = %self.state.room(), "room is no longer live");
    }

    /// Answers a message that reached the task after it stopped taking them.
    fn turn_away(&self, msg: RoomMsg) {
        match msg {
            RoomMsg::Connect(connect, reply) => {
                let answer = if self.state.is_ended() {
                    ConnectOutcome::Failed(ConnectError::Refused(Refusal::RoomEnded))
                } else {
                    ConnectOutcome::Gone(connect)
                };
                let _ = reply.send(Err(answer));
            }
            // Dropping the reply tells the caller the room is not live (so a ban falls back
            // to the store); only a room that really ended says so.
            RoomMsg::Rest { reply, .. } if self.state.is_ended() => {
                let _ = reply.send(Err(LiveError::Refused(Refusal::RoomEnded)));
            }
            _ => {}
        }
    }

    /// Whether `connection` is the socket this participant speaks through right now.
    pub fn is_current(&self, participant: &ParticipantId, connection: ConnectionId) -> bool {
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
                let joined = result.is_ok();
                let _ = reply.send(result.map_err(ConnectOutcome::Failed));
                if joined && std::mem::take(&mut self.record_when_joined) {
                    self.command(
                        &Actor::System,
                        Command::StartRecording(Default::default()),
                        None,
                    )
                    .await
                    .ok();
                }
            }
            RoomMsg::Disconnect {
                participant,
                connection,
            } => {
                if self.is_current(&participant, connection) {
                    self.connections.remove(&participant);
                }
                let actor = Actor::Participant(participant);
                self.command(&actor, Command::Disconnect { connection }, None)
                    .await
                    .ok();
            }
            RoomMsg::FromSocket {
                participant,
                connection,
                request_id,
                command,
            } => {
                // Late messages from a socket that was replaced or closed are ignored.
                if !self.is_current(&participant, connection) {
                    return;
                }
                let actor = Actor::Participant(participant.clone());
                let answer = Answer {
                    participant: participant.clone(),
                    connection,
                    ok: request_id
                        .as_ref()
                        .map(|id| ServerMessage::Ok { id }.to_json().into()),
                };
                if let Err(refusal) = self.command(&actor, command, Some(answer)).await {
                    self.refuse(&participant, request_id.as_ref(), refusal);
                }
            }
            RoomMsg::ListAudience {
                participant,
                connection,
                request_id,
                after,
                limit,
            } => {
                if self.is_current(&participant, connection) {
                    self.send_audience_page(&participant, request_id.as_ref(), after, limit);
                }
            }
            RoomMsg::Rest {
                actor,
                command,
                reply,
            } => {
                // The call returns once its records are written (or the store is found
                // unavailable) and, in a cluster, the room's state with it; the room does not
                // wait for that.
                match self.command(&actor, command, None).await {
                    Ok(()) => self.acknowledge_change(Acknowledgement::Rest(reply)),
                    Err(refusal) => {
                        let _ = reply.send(Err(LiveError::Refused(refusal)));
                    }
                }
            }
            RoomMsg::Whoami {
                participant,
                connection,
                reply,
            } => {
                let who = self
                    .state
                    .participant(&participant)
                    .filter(|_| self.is_current(&participant, connection))
                    .map(|p| super::Whoami {
                        role: p.role,
                        display_name: p.display_name.clone(),
                        delivery: p.delivery,
                    });
                let _ = reply.send(who);
            }
            RoomMsg::MediaOffer {
                participant,
                connection,
                request_id,
                sdp,
            } => {
                if self.is_current(&participant, connection) {
                    self.media_offer(participant, request_id, sdp);
                }
            }
            RoomMsg::Webhooks {
                room_endpoint,
                done,
            } => {
                self.webhooks = self.deps.webhooks || room_endpoint;
                let _ = done.send(());
            }
            RoomMsg::RecordingLost => {
                self.command(&Actor::System, Command::RecordingLost, None)
                    .await
                    .ok();
            }
            RoomMsg::Speaking { levels, heard } => {
                let ago = heard.elapsed().as_millis() as u64;
                let heard_at_ms = self.now().saturating_sub(ago);
                let command = Command::SetSpeaking {
                    levels,
                    heard_at_ms,
                };
                self.command(&Actor::System, command, None).await.ok();
            }
            RoomMsg::Shutdown { moved_to } => {
                // The next home finds the room as it is now when its people arrive there.
                self.save_before_stopping().await;
                let moved = moved_to
                    .as_deref()
                    .map(|signal_url| Text::from(ServerMessage::Moved { signal_url }.to_json()));
                for (_, conn) in self.connections.drain() {
                    let close = match &moved {
                        // Resumed at once on the node named, with the same resume token.
                        Some(moved) => {
                            let _ = conn.outbox.try_send(Outbound::Text(moved.clone()));
                            Outbound::Close {
                                code: close_code::MOVED,
                                reason: "room_elsewhere",
                            }
                        }
                        None => Outbound::Close {
                            code: close_code::SERVER_RESTARTING,
                            reason: "server_restarting",
                        },
                    };
                    let _ = conn.outbox.try_send(close);
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

    async fn connect(&mut self, c: Connect) -> Result<(), ConnectError> {
        let command = match c.resume {
            Some(presented) => Command::Resume {
                connection: c.connection,
                presented,
                resume_nonce: c.resume_nonce,
            },
            None => Command::Join {
                display_name: c.display_name,
                role: c.role,
                delivery: c.delivery,
                connection: c.connection,
                resume_nonce: c.resume_nonce,
            },
        };
        let actor = Actor::Participant(c.participant.clone());
        self.command(&actor, command, None)
            .await
            .map_err(ConnectError::Refused)?;
        let Some(snapshot) = self.snapshot_for(&c.participant) else {
            return Err(ConnectError::Refused(Refusal::NotInRoom));
        };
        // Back here after the room moved (no media connection of theirs here), or after an
        // edge sent them home (theirs was on the edge), they make a new one.
        let came_home = match c.via_edge {
            true => {
                self.via_edge.insert(c.participant.clone());
                false
            }
            false => self.via_edge.remove(&c.participant),
        };
        // Unless this node has one of theirs already: it served them as an edge of the room
        // before the room moved here, and that connection goes on.
        let reconnect_media = (self.first_time_back(&c.participant) | came_home)
            && !self
                .deps
                .media
                .has_connection(self.state.room(), &c.participant);
        self.welcome(
            &c.outbox,
            c.request_id.as_ref(),
            &c.resume_token,
            &snapshot,
            reconnect_media,
        );
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
            self.command(&Actor::System, Command::Tick, None).await.ok();
        }
        let anonymous = self.deps.anonymous.count(self.state.room());
        let count = self.state.audience_count().saturating_add(anonymous);
        if (count, anonymous) != (self.last_audience_count, self.last_anonymous) {
            self.last_audience_count = count;
            self.last_anonymous = anonymous;
            self.send_audience_count(count, anonymous);
            self.drop_slow().await;
        }
    }

    /// What `participant` is shown of the room, the anonymous listeners last announced
    /// counted in.
    pub(super) fn snapshot_for(
        &self,
        participant: &ParticipantId,
    ) -> Option<crate::room::Snapshot> {
        let mut snapshot = self.state.snapshot_for(participant)?;
        snapshot.anonymous = self.last_anonymous;
        snapshot.audience_count = snapshot.audience_count.saturating_add(self.last_anonymous);
        Some(snapshot)
    }

    /// A command from outside the task: applied, carried out, then any socket it left behind
    /// its queue is let go. `answer` is the `ok` owed to the socket that sent it, if one did.
    async fn command(
        &mut self,
        actor: &Actor,
        command: Command,
        answer: Option<Answer>,
    ) -> Result<(), Refusal> {
        let applied = self.apply(actor, command, answer).await;
        if std::mem::take(&mut self.recording_lost) {
            self.apply(&Actor::System, Command::RecordingLost, None)
                .await
                .ok();
        }
        self.drop_slow().await;
        applied
    }

    /// Applies a command to the state machine, then carries out everything it caused: events
    /// to their audiences first (people learn why before their socket closes), then effects,
    /// in order. A socket that asked to leave gets its `ok` before the close; one closed for
    /// another reason (the room it ended) is told by the event instead.
    async fn apply(
        &mut self,
        actor: &Actor,
        command: Command,
        answer: Option<Answer>,
    ) -> Result<(), Refusal> {
        let now = self.now();
        // Who speaks changes many times a second and is nothing to keep.
        let keeps = !matches!(command, Command::SetSpeaking { .. });
        let outcome = self.state.apply(actor, command, now)?;
        if keeps {
            self.state_changed();
        }
        self.webhooks_for(&outcome, now as i64);
        self.deliver(outcome.events);
        let mut own_close = None;
        for effect in outcome.effects {
            match (&effect, &answer) {
                (
                    Effect::CloseConnection {
                        participant,
                        connection,
                        reason: CloseReason::Left,
                    },
                    Some(answer),
                ) if *participant == answer.participant && *connection == answer.connection => {
                    own_close = Some(effect);
                }
                _ => self.carry_out(effect).await,
            }
        }
        self.records.write(std::mem::take(&mut self.pending));
        if let Some(Answer {
            participant,
            connection,
            ok: Some(ok),
        }) = answer
        {
            // Acknowledged once it is kept (in a cluster): a leave is not waited for.
            if keeps && own_close.is_none() {
                self.acknowledge_change(Acknowledgement::Socket {
                    participant,
                    connection,
                    ok,
                });
            } else {
                self.send_to(&participant, ok);
            }
        }
        if let Some(effect) = own_close {
            self.carry_out(effect).await;
        }
        Ok(())
    }

    async fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::CloseConnection {
                participant,
                connection,
                reason,
            } => self.close_connection(&participant, connection, reason),
            Effect::RefreshSnapshot { participant } => self.refresh_snapshot(&participant),
            Effect::SendPermission {
                participant,
                allowed,
            } => self.media_send_permission(&participant, allowed),
            Effect::CloseMedia { participant } => self.media_close(&participant),
            Effect::CloseRoomMedia => self.media_close_room(),
            Effect::RecordRole { participant, role } => self.record_role(participant, role),
            Effect::RecordRemoval { participant } => self.record_removal(participant),
            Effect::PersistBan {
                participant,
                by,
                revoke_invite,
            } => self.persist_ban(participant, by, revoke_invite),
            Effect::PersistRoomEnded { by, participants } => self.persist_end(by, participants),
            Effect::Audit {
                actor,
                action,
                target,
                detail,
            } => self.audit(actor, action, target, detail),
            Effect::StartRecording(options) => {
                let started = self.deps.recorder.start(self.state.room(), options);
                if let Err(why) = started.await {
                    tracing::error!(room = %self.state.room(), %why, "cannot record");
                    self.recording_lost = true;
                }
            }
            Effect::StopRecording => self.stop_recorder().await,
            Effect::RecordSpeakers {
                speakers,
                from_start,
                at_ms,
            } => {
                self.deps
                    .recorder
                    .speakers(self.state.room(), &speakers, from_start, at_ms);
            }
        }
    }

    /// Stops the recording once what the room gathered so far (the stop's audit line and
    /// `recording.stopped`) is written: the recorder's `recording.ready` follows them in the
    /// room's outbox. A stop costs the room one write's wait (it waits for the file anyway),
    /// at most a second: with the database away the file is closed regardless (and `ready`
    /// may then come first).
    async fn stop_recorder(&mut self) {
        self.records.write(std::mem::take(&mut self.pending));
        let written = self.records.written();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), written).await;
        self.deps.recorder.stop(self.state.room()).await;
    }

    /// Sockets whose queue filled up are cut loose, so one slow reader never holds the room
    /// back; their participants get the usual grace period to come back, through `apply`
    /// like any dropped socket.
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
                self.apply(&actor, Command::Disconnect { connection }, None)
                    .await
                    .ok();
            }
        }
    }
}
