//! One signaling socket from upgrade to close: the join/resume handshake, per-socket bounds
//! (size, rate, strikes), keep-alive, and relaying between the socket and the room task.
//! The HTTP upgrade itself (and the per-address socket count) is the API's (`api/signal.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use governor::{Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broadcast::Broadcasts;
use crate::clock::{Clock, DirectRateLimiter, rfc3339};
use crate::cluster::{Cluster, Home};
use crate::config::SignalSettings;
use crate::control::{ControlError, Delivery, ParticipantId, Role, Room, RoomId, Standing, Store};
use crate::metrics::Metrics;
use crate::room::{
    Command, Connect, ConnectError, ConnectionId, LiveRooms, Outbound, RecordingOptions, Refusal,
    RoomHandle,
};
use crate::session::{Claims, ResumeClaims, TokenError, TokenSigner};
use crate::wire::{ClientMessage, RequestId, ServerMessage, close_code, decode};

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// How long a resume token stays valid; it only works while its participant is still in the
/// room (connected or within the grace period), so this merely bounds its lifetime.
const RESUME_TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a closing socket waits for the client to acknowledge the close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long, of that, a stopping server waits for it: long enough for a client on any usual
/// link to answer (a round trip, and a busy client's turn to read), short enough that
/// clients which never answer do not hold the stop long.
const GOODBYE_LINGER: Duration = Duration::from_millis(500);
/// Refused messages are forgiven after this long.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// An ICE candidate line is under 200 characters in practice.
const MAX_CANDIDATE_CHARS: usize = 1024;

/// What a signaling session needs from the rest of the server; built once, cloned per socket.
#[derive(Clone)]
pub struct SignalContext {
    pub settings: Arc<SignalSettings>,
    pub store: Store,
    pub clock: Clock,
    pub signer: TokenSigner,
    pub live: LiveRooms,
    pub metrics: Metrics,
    /// Where rooms live when this node is one of several.
    pub cluster: Option<Cluster>,
    /// The rooms' broadcasts, for `broadcast_link`.
    pub broadcasts: Broadcasts,
    /// The server's public URL, which links are absolute to.
    pub base_url: Arc<str>,
    /// How long a session token lives (`[limits] session_ttl_secs`), renewed ones too.
    pub session_ttl_ms: i64,
    /// In a cluster: the relay links to and from other nodes, and this node's media, for the
    /// sockets it serves as an edge of a room whose home is full (`session/edge.rs`).
    pub relay_links: Option<crate::signal::RelayLinks>,
    /// Every socket that has not yet written its last message and close frame, for a
    /// stopping node to wait for ([`crate::api::AppState::hand_rooms_over`]).
    pub goodbyes: tokio_util::task::TaskTracker,
}

mod edge;

/// Runs one upgraded signaling socket until it closes. `client_ip` is the client's address
/// (vouched for by the node that passed the socket on, if one did); `from_edge` says another
/// node opened the socket as an edge, so it is never served as an edge again.
pub async fn run(
    socket: WebSocket,
    context: SignalContext,
    client_ip: std::net::IpAddr,
    from_edge: bool,
) {
    let mut session = Session::new(socket, context, client_ip);
    session.from_edge = from_edge;
    session.run().await;
}

struct Session {
    socket: WebSocket,
    state: SignalContext,
    client_ip: std::net::IpAddr,
    from_edge: bool,
    /// Messages per second, on the server's clock.
    limiter: DirectRateLimiter,
    strikes: u32,
    strikes_since: Instant,
    /// Held until the client answers the close frame, or [`GOODBYE_LINGER`] after it was
    /// written, or the socket ends: counted in [`SignalContext::goodbyes`].
    unsaid: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
}

/// Where a socket that joined goes on.
enum Entered {
    /// The room is live here.
    Here(Joined),
    /// Its home is another node, which is full: served here as an edge of it.
    Edge(edge::EdgeJoin),
}

/// Whether a socket's room lives here.
enum Placed {
    Here,
    /// On `home`, and this node serves the socket as an edge of it.
    Edge(Box<crate::cluster::NodeInfo>),
    /// Refused or sent on; the socket is closed.
    Gone,
}

/// Who this socket speaks for, once joined.
struct Joined {
    room: RoomHandle,
    room_id: RoomId,
    participant: ParticipantId,
    connection: ConnectionId,
    outbox: mpsc::Receiver<Outbound>,
}

enum Flow {
    Continue,
    Stop,
}

impl Session {
    fn new(socket: WebSocket, state: SignalContext, client_ip: std::net::IpAddr) -> Self {
        let s = &state.settings;
        let quota =
            Quota::per_second(NonZeroU32::new(s.messages_per_sec).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(s.message_burst).unwrap_or(NonZeroU32::MIN));
        Session {
            socket,
            client_ip,
            from_edge: false,
            limiter: RateLimiter::direct_with_clock(quota, state.clock.clone()),
            strikes: 0,
            strikes_since: Instant::now(),
            unsaid: Some(state.goodbyes.token()),
            state,
        }
    }

    async fn run(mut self) {
        match self.handshake().await {
            Some(Entered::Here(joined)) => self.relay(joined).await,
            Some(Entered::Edge(edge)) => self.serve_as_edge(edge).await,
            None => {}
        }
    }

    /// Writes one frame, giving up when the client does not take it within the ping timeout:
    /// a client that stops reading must not hold its session (and its room seat) forever.
    async fn write(&mut self, frame: Message) -> bool {
        let limit = Duration::from_millis(self.state.settings.ping_timeout_ms);
        matches!(
            tokio::time::timeout(limit, self.socket.send(frame)).await,
            Ok(Ok(()))
        )
    }

    async fn send(&mut self, message: ServerMessage<'_>) -> bool {
        self.write(Message::Text(message.to_json().into())).await
    }

    async fn error(&mut self, id: Option<&RequestId>, code: &str, message: &str) -> bool {
        self.state.metrics.signal_error(code);
        self.send(ServerMessage::Error { id, code, message }).await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        if !self.send(ServerMessage::Closed { reason }).await {
            return;
        }
        self.close_with(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .await;
    }

    /// Writes a close frame as given and waits for the client's.
    ///
    /// Finishes the closing handshake, reading (and ignoring) whatever the client still
    /// sends: a socket closed with unread data is reset by the kernel, and the client can lose
    /// the close frame that tells it why (a client that writes before it reads, as
    /// tungstenite does to answer a ping, gets the reset first; some systems drop what was
    /// received). A stopping server waits for this too, but only [`GOODBYE_LINGER`] of it.
    async fn close_with(&mut self, frame: Option<CloseFrame>) {
        if !self.write(Message::Close(frame)).await {
            self.unsaid = None;
            return;
        }
        let written = Instant::now();
        let answered = tokio::time::timeout_at(written + GOODBYE_LINGER, self.read_to_close())
            .await
            .is_ok();
        self.unsaid = None;
        if !answered {
            let _ = tokio::time::timeout_at(written + CLOSE_LINGER, self.read_to_close()).await;
        }
    }

    /// Reads (and ignores) what the client sends until its close frame, or the socket's end.
    async fn read_to_close(&mut self) {
        while let Some(Ok(frame)) = self.socket.recv().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    }

    /// Counts a refused message; a socket that keeps misbehaving is closed.
    async fn strike(&mut self) -> Flow {
        if self.strikes_since.elapsed() > STRIKE_WINDOW {
            self.strikes = 0;
            self.strikes_since = Instant::now();
        }
        self.strikes += 1;
        if self.strikes > self.state.settings.max_strikes {
            tracing::info!("closing a signaling socket that keeps sending bad messages");
            self.close(close_code::POLICY, "misbehaving").await;
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Bounds every message: size, rate, decoding. Returns what to act on, if anything.
    async fn screen(
        &mut self,
        text: &str,
    ) -> Result<Option<(Option<RequestId>, ClientMessage)>, ()> {
        let settings = &self.state.settings;
        if text.len() > settings.max_message_bytes {
            let limit = settings.max_message_bytes;
            self.error(
                None,
                "message_too_large",
                &format!("messages are limited to {limit} bytes"),
            )
            .await;
            return self.strike_result().await;
        }
        if self.limiter.check().is_err() {
            self.error(None, "rate_limited", "too many messages; slow down")
                .await;
            return self.strike_result().await;
        }
        match decode(text) {
            Ok((id, kind, message)) => {
                self.state.metrics.signal_message(kind);
                Ok(Some((id, message)))
            }
            Err((id, e)) => {
                self.error(id.as_ref(), e.code(), &e.message()).await;
                self.strike_result().await
            }
        }
    }

    async fn strike_result(&mut self) -> Result<Option<(Option<RequestId>, ClientMessage)>, ()> {
        match self.strike().await {
            Flow::Continue => Ok(None),
            Flow::Stop => Err(()),
        }
    }

    /// Waits for `join` or `resume`, authenticates it and enters the room.
    async fn handshake(&mut self) -> Option<Entered> {
        let deadline = Instant::now() + Duration::from_millis(self.state.settings.join_timeout_ms);
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.recv()).await {
                Err(_) => {
                    self.close(close_code::UNAUTHORIZED, "join_timeout").await;
                    return None;
                }
                Ok(None | Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(frame))) => frame,
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Binary(_) => {
                    self.error(None, "binary_not_supported", "send JSON text messages")
                        .await;
                    if let Flow::Stop = self.strike().await {
                        return None;
                    }
                    continue;
                }
                _ => continue,
            };
            let (id, message) = match self.screen(text.as_str()).await {
                Err(()) => return None,
                Ok(None) => continue,
                Ok(Some(m)) => m,
            };
            match message {
                ClientMessage::Join { token } => {
                    return self.join(id, Some(token), None, text.as_str()).await;
                }
                ClientMessage::Resume { resume_token } => {
                    return self.join(id, None, Some(resume_token), text.as_str()).await;
                }
                ClientMessage::Ping {} => {
                    self.send(ServerMessage::Pong { id: id.as_ref() }).await;
                }
                _ => {
                    self.error(id.as_ref(), "join_first", "send `join` or `resume` first")
                        .await;
                    if let Flow::Stop = self.strike().await {
                        return None;
                    }
                }
            }
        }
    }

    /// In a cluster, whether the room lives here (taking it if it lives nowhere); when it
    /// lives on another node, either serves the socket as an edge of it (the home is full, or
    /// this node already serves the room; `may_edge` says whether this person may be served
    /// off the room's home at all), or tells the client where and closes. While Redis is
    /// unreachable only rooms already live here take people in.
    ///
    /// The join answer placed the person from the loads the nodes last reported and the
    /// placements since; people who joined elsewhere, or redeemed long before, can still find
    /// a node full. So the node the socket reaches checks its own count too: a home at
    /// capacity sends a new listener to an edge with room, and a full edge to another edge,
    /// or the home.
    async fn at_home(
        &mut self,
        id: Option<&RequestId>,
        room: &RoomId,
        may_edge: bool,
        new_listener: bool,
    ) -> Placed {
        let Some(cluster) = self.state.cluster.clone() else {
            return Placed::Here;
        };
        let links = self.state.relay_links.clone().filter(|_| may_edge);
        match cluster.claim(room.as_str()).await {
            Ok(Home::Here(_)) => {
                let me = self.me_now(&cluster);
                if new_listener
                    && links.is_some()
                    && me.load.connections > me.capacity
                    && let Ok(Some(edge)) = cluster.edge_for(room.as_str(), &me, None).await
                {
                    tracing::debug!(%room, edge = %edge.name, "the home is full: a new listener goes to an edge");
                    self.moved(&edge.signal_url).await;
                    return Placed::Gone;
                }
                Placed::Here
            }
            Ok(Home::Elsewhere(node, _)) => {
                if !cluster.draining()
                    && let Some(links) = &links
                    && (links.serves(room, &node.name) || cluster.home_is_full(&node))
                {
                    let me = self.me_now(&cluster);
                    if me.load.connections <= me.capacity {
                        tracing::debug!(%room, home = %node.name, "serving a socket as an edge");
                        return Placed::Edge(node);
                    }
                    let other = cluster
                        .edge_for(room.as_str(), &node, Some(&me.name))
                        .await
                        .ok()
                        .flatten();
                    let to = other.as_ref().map_or(&node.signal_url, |n| &n.signal_url);
                    self.moved(to).await;
                    return Placed::Gone;
                }
                tracing::debug!(%room, node = %node.name, "room lives on another node");
                self.moved(&node.signal_url).await;
                Placed::Gone
            }
            Err(e) if self.state.live.get(room).is_some() => {
                tracing::warn!(%room, error = %e, "Redis unreachable; the room is live here");
                Placed::Here
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "Redis unreachable; cannot place the room");
                let (code, message) = (
                    "cluster_unavailable",
                    "the cluster cannot place this room right now; try again in a few seconds",
                );
                self.error(id, code, message).await;
                self.close(close_code::TRY_AGAIN_LATER, code).await;
                Placed::Gone
            }
        }
    }

    /// This node with the sockets it holds now (the registry's count is a heartbeat old).
    fn me_now(&self, cluster: &crate::cluster::Cluster) -> crate::cluster::NodeInfo {
        let mut me = cluster.me();
        me.load.connections = u32::try_from(self.state.metrics.signal_sockets.get()).unwrap_or(0);
        me
    }

    async fn moved(&mut self, signal_url: &str) {
        self.send(ServerMessage::Moved { signal_url }).await;
        self.close(close_code::MOVED, "room_elsewhere").await;
    }

    async fn join(
        &mut self,
        id: Option<RequestId>,
        token: Option<String>,
        resume_token: Option<String>,
        hello: &str,
    ) -> Option<Entered> {
        let now = self.state.clock.now_ms();
        let signer = self.state.signer.clone();
        let mut presented_nonce = None;
        let claims = match (&token, &resume_token) {
            (Some(token), _) => signer.verify(token, now).map(|c| {
                (
                    c.room,
                    c.participant,
                    (c.role, c.delivery),
                    c.name,
                    c.iat,
                    c.generation,
                    false,
                )
            }),
            (None, Some(resume)) => signer.verify_resume(resume, now).map(|r| {
                presented_nonce = Some(r.nonce);
                (
                    r.room,
                    r.participant,
                    (Role::Listener, Delivery::Webrtc),
                    String::new(),
                    now,
                    // The room keeps a resumed participant's role; this is only a fallback.
                    0,
                    true,
                )
            }),
            (None, None) => Err(TokenError::Malformed),
        };
        let (room_id, participant, joining, name, issued_at, generation, resume) = match claims {
            Ok(c) => c,
            Err(e) => {
                let (code, message) = match (e, resume_token.is_some()) {
                    (TokenError::Expired, true) => (
                        "resume_expired",
                        "this resume token has expired; join again",
                    ),
                    (_, true) => ("invalid_token", "this is not a valid resume token"),
                    (TokenError::Expired, false) => {
                        ("token_expired", "the session token has expired")
                    }
                    (_, false) => ("invalid_token", "this is not a valid session token"),
                };
                self.error(id.as_ref(), code, message).await;
                self.close(close_code::UNAUTHORIZED, code).await;
                return None;
            }
        };
        // The token names the room: a node that is not its home sends the client on, or
        // serves them as an edge, before reading anything. Only listeners are served off the
        // home (a resume's standing is the home's to say; an edge sends someone on stage home).
        let may_edge = !self.from_edge && (resume || joining.0 == Role::Listener);
        let new_listener = !resume && joining.0 == Role::Listener;
        match self
            .at_home(id.as_ref(), &room_id, may_edge, new_listener)
            .await
        {
            Placed::Here => {
                // This node served them as an edge until the room moved here: their media
                // connection is the room's to manage now, not a lingering edge session's.
                if let Some(links) = &self.state.relay_links {
                    links.forget_session(&room_id, &participant);
                }
            }
            Placed::Gone => return None,
            Placed::Edge(home) => {
                return Some(Entered::Edge(edge::EdgeJoin {
                    home: *home,
                    room: room_id,
                    hello: hello.to_owned(),
                }));
            }
        }
        let store = self.state.store.clone();
        let (room, standing) = match room_open_to(&store, &room_id, &participant).await {
            Ok(found) => found,
            Err((close, code, message)) => {
                self.error(id.as_ref(), code, message).await;
                self.close(close, code).await;
                return None;
            }
        };
        if !resume && standing.removed_since(issued_at) {
            let (code, message) = (
                "removed",
                "you were removed from this room; open an invite link again",
            );
            self.error(id.as_ref(), code, message).await;
            self.close(close_code::REMOVED, code).await;
            return None;
        }
        let (role, delivery) = joining;
        let role = standing.role(role, generation);
        let connection = ConnectionId(NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed));
        let mut nonce_bytes = [0u8; 8];
        getrandom::fill(&mut nonce_bytes).expect("the OS random generator is unavailable");
        let resume_nonce = u64::from_le_bytes(nonce_bytes);
        let (outbox, inbox) = mpsc::channel(self.state.settings.outbox_capacity);
        let resume_token = signer.sign_resume(&ResumeClaims {
            room: room_id.clone(),
            participant: participant.clone(),
            nonce: resume_nonce,
            exp: now.saturating_add(RESUME_TOKEN_TTL_MS),
        });
        let connect = Connect {
            participant: participant.clone(),
            display_name: name,
            role,
            delivery,
            resume: resume.then_some(presented_nonce.unwrap_or_default()),
            resume_nonce,
            connection,
            outbox,
            request_id: id.clone(),
            resume_token,
            via_edge: self.from_edge,
        };
        match self.state.live.connect(&room, connect).await {
            Ok(handle) => {
                tracing::debug!(room = %room_id, %participant, resume, "socket joined");
                Some(Entered::Here(Joined {
                    room: handle,
                    room_id: room_id.clone(),
                    participant,
                    connection,
                    outbox: inbox,
                }))
            }
            Err(e) => {
                let (code, message, close) = match &e {
                    ConnectError::Stopping => {
                        // As everyone in its rooms was told: come back when it is back.
                        self.close(close_code::SERVER_RESTARTING, "server_restarting")
                            .await;
                        return None;
                    }
                    ConnectError::Refused(Refusal::NotInRoom) if resume => (
                        "resume_expired",
                        "your place in the room has expired; join again",
                        close_code::REFUSED,
                    ),
                    ConnectError::Refused(Refusal::Banned) => {
                        ("banned", Refusal::Banned.message(), close_code::BANNED)
                    }
                    ConnectError::Refused(Refusal::RoomEnded) => (
                        "room_ended",
                        Refusal::RoomEnded.message(),
                        close_code::ROOM_ENDED,
                    ),
                    ConnectError::Refused(r) => (r.code(), r.message(), close_code::REFUSED),
                    ConnectError::TooManyRooms => (
                        "too_many_rooms",
                        "the server is running as many rooms as it allows; try again later",
                        close_code::REFUSED,
                    ),
                };
                self.error(id.as_ref(), code, message).await;
                self.close(close, code).await;
                None
            }
        }
    }
}

impl Session {
    /// A fresh session token for the joined participant, with the role the room gives them
    /// now and the identity's current token generation, so that a role the room changes later
    /// still outranks it (as it does every token of that generation). Refused when the socket
    /// no longer speaks for them in the room (replaced, removed) or they are banned.
    async fn renew_session(&mut self, id: Option<&RequestId>, joined: &Joined) {
        let who = joined
            .room
            .whoami(joined.participant.clone(), joined.connection)
            .await;
        let Some(who) = who else {
            let message = "this socket no longer speaks for you in the room";
            self.error(id, "not_in_room", message).await;
            return;
        };
        let standing = self
            .state
            .store
            .standing(joined.room_id.clone(), joined.participant.clone())
            .await;
        let standing = match standing {
            Ok(s) if s.banned => {
                self.error(id, "banned", "you are banned from this room")
                    .await;
                return;
            }
            Ok(s) => s,
            Err(_) => {
                let message = "the server could not renew the session now; try again";
                self.error(id, "store_unavailable", message).await;
                return;
            }
        };
        let now = self.state.clock.now_ms();
        let claims = Claims {
            room: joined.room_id.clone(),
            participant: joined.participant.clone(),
            role: who.role,
            name: who.display_name,
            iat: now,
            exp: now.saturating_add(self.state.session_ttl_ms),
            generation: standing.token_generation,
            delivery: who.delivery,
        };
        let token = self.state.signer.sign(&claims);
        self.send(ServerMessage::Session {
            id,
            token: &token,
            expires_at: &rfc3339(claims.exp),
        })
        .await;
    }
}

/// The room exists and has not ended; returns where this identity stands in it.
async fn room_open_to(
    store: &crate::control::Store,
    room: &crate::control::RoomId,
    participant: &ParticipantId,
) -> Result<(Room, Standing), (u16, &'static str, &'static str)> {
    let internal = (
        close_code::INTERNAL,
        "internal",
        "the server could not check this room",
    );
    let found = match store.room(room.clone()).await {
        Ok(r) => r,
        Err(ControlError::RoomNotFound) => {
            return Err((close_code::NOT_FOUND, "room_not_found", "no such room"));
        }
        Err(_) => return Err(internal),
    };
    if found.is_ended() {
        return Err((close_code::ROOM_ENDED, "room_ended", "the room has ended"));
    }
    match store.standing(room.clone(), participant.clone()).await {
        Ok(s) if s.banned => Err((
            close_code::BANNED,
            "banned",
            "you are banned from this room",
        )),
        Ok(s) => Ok((found, s)),
        Err(_) => Err(internal),
    }
}

impl Session {
    /// Joined: socket ⇄ room until either side ends it.
    async fn relay(mut self, mut joined: Joined) {
        let signal = self.state.settings.clone();
        let mut ping = tokio::time::interval(Duration::from_millis(signal.ping_interval_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = Duration::from_millis(signal.ping_timeout_ms);
        let mut last_heard = Instant::now();
        let mut left_on_purpose = false;
        loop {
            tokio::select! {
                out = joined.outbox.recv() => match out {
                    Some(Outbound::Text(text)) => {
                        // Made from a `String`, so the check cannot fail; it costs a scan of a
                        // few hundred bytes.
                        let text = Utf8Bytes::try_from(text.into_bytes()).unwrap_or_default();
                        if !self.write(Message::Text(text)).await {
                            break;
                        }
                    }
                    Some(Outbound::Close { code, reason }) => {
                        self.close(code, reason).await;
                        left_on_purpose = true;
                        break;
                    }
                    None => {
                        // The room let go of this socket: it did not keep up, or the room ended.
                        self.close(close_code::TOO_SLOW, "too_slow").await;
                        break;
                    }
                },
                frame = self.socket.recv() => {
                    let frame = match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(frame)) => frame,
                    };
                    last_heard = Instant::now();
                    match frame {
                        Message::Text(text) => {
                            if let Flow::Stop = self.on_text(text.as_str(), &mut joined).await {
                                break;
                            }
                        }
                        Message::Binary(_) => {
                            self.error(None, "binary_not_supported", "send JSON text messages").await;
                            if let Flow::Stop = self.strike().await {
                                break;
                            }
                        }
                        _ => {}
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > timeout {
                        tracing::debug!(participant = %joined.participant, "signaling socket timed out");
                        self.close(close_code::TIMED_OUT, "ping_timeout").await;
                        break;
                    }
                    if !self.write(Message::Ping(Default::default())).await {
                        break;
                    }
                },
            }
        }
        if !left_on_purpose {
            joined
                .room
                .disconnect(joined.participant.clone(), joined.connection)
                .await;
        }
    }

    async fn on_text(&mut self, text: &str, joined: &mut Joined) -> Flow {
        let (id, message) = match self.screen(text).await {
            Err(()) => return Flow::Stop,
            Ok(None) => return Flow::Continue,
            Ok(Some(m)) => m,
        };
        let command = match message {
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } => {
                self.error(
                    id.as_ref(),
                    "already_joined",
                    "this socket has already joined",
                )
                .await;
                return Flow::Continue;
            }
            ClientMessage::Ping {} => {
                self.send(ServerMessage::Pong { id: id.as_ref() }).await;
                return Flow::Continue;
            }
            ClientMessage::BroadcastLink {} => {
                if !self.state.broadcasts.settings().enabled {
                    let message = "broadcasts are turned off on this server";
                    self.error(id.as_ref(), "broadcast_disabled", message).await;
                    return Flow::Continue;
                }
                let link = self.state.broadcasts.link(&joined.room_id);
                self.send(ServerMessage::BroadcastLink {
                    id: id.as_ref(),
                    playlist_url: &link.url(&self.state.base_url),
                    expires_at: &link.expires_at(),
                })
                .await;
                return Flow::Continue;
            }
            ClientMessage::RenewSession {} => {
                self.renew_session(id.as_ref(), joined).await;
                return Flow::Continue;
            }
            ClientMessage::ListAudience { after, limit } => {
                let limit = limit.unwrap_or(50).clamp(1, 200) as usize;
                let ok = joined
                    .room
                    .list_audience(
                        joined.participant.clone(),
                        joined.connection,
                        id,
                        after,
                        limit,
                    )
                    .await;
                return if ok { Flow::Continue } else { Flow::Stop };
            }
            ClientMessage::MediaOffer { sdp } => {
                let ok = joined
                    .room
                    .media_offer(joined.participant.clone(), joined.connection, id, sdp)
                    .await;
                return if ok { Flow::Continue } else { Flow::Stop };
            }
            ClientMessage::IceCandidate {
                candidate,
                sdp_mid,
                username_fragment,
                ..
            } => {
                let too_long = candidate.len() > MAX_CANDIDATE_CHARS
                    || sdp_mid.is_some_and(|m| m.len() > 64)
                    || username_fragment.is_some_and(|u| u.len() > 256);
                if too_long {
                    self.error(id.as_ref(), "invalid_message", "candidate too long")
                        .await;
                    return self.strike().await;
                }
                if let Some(id) = &id {
                    self.send(ServerMessage::Ok { id }).await;
                }
                return Flow::Continue;
            }
            other => match command_for(other) {
                Some(command) => command,
                None => return Flow::Continue,
            },
        };
        // After `leave` the room answers `ok` and then closes this socket through the outbox.
        if !joined
            .room
            .from_socket(joined.participant.clone(), joined.connection, id, command)
            .await
        {
            self.room_gone(joined).await;
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// The room's task stopped while a message of this socket was on its way to it: what the
    /// room queued for the socket last says why (`moved` to another node, or that the server
    /// restarts, which the client comes back from); nothing queued means it ended.
    async fn room_gone(&mut self, joined: &mut Joined) {
        while let Ok(out) = joined.outbox.try_recv() {
            match out {
                Outbound::Text(text) => {
                    let text = Utf8Bytes::try_from(text.into_bytes()).unwrap_or_default();
                    if !self.write(Message::Text(text)).await {
                        return;
                    }
                }
                Outbound::Close { code, reason } => {
                    self.close(code, reason).await;
                    return;
                }
            }
        }
        self.close(close_code::ROOM_ENDED, "room_ended").await;
    }
}

/// Maps a room action message to the room's command; `None` for the messages the session
/// handles itself (join, resume, ping, audience paging).
pub(crate) fn command_for(message: ClientMessage) -> Option<Command> {
    Some(match message {
        ClientMessage::RaiseHand {} => Command::RaiseHand,
        ClientMessage::LowerHand { participant } => Command::LowerHand {
            target: participant,
        },
        ClientMessage::InviteToStage { participant } => Command::InviteToStage {
            target: participant,
        },
        ClientMessage::CancelInvitation { participant } => Command::CancelInvitation {
            target: participant,
        },
        ClientMessage::AcceptInvitation {} => Command::AcceptInvitation,
        ClientMessage::DeclineInvitation {} => Command::DeclineInvitation,
        ClientMessage::JoinStage {} => Command::JoinStage,
        ClientMessage::LeaveStage {} => Command::LeaveStage,
        ClientMessage::MoveToAudience { participant } => Command::MoveToAudience {
            target: participant,
        },
        ClientMessage::Mute { participant } => Command::Mute {
            target: participant,
        },
        ClientMessage::MuteSelf {} => Command::MuteSelf,
        ClientMessage::Unmute {} => Command::Unmute,
        ClientMessage::Remove { participant } => Command::Remove {
            target: participant,
        },
        ClientMessage::Ban {
            participant,
            revoke_invite,
        } => Command::Ban {
            target: participant,
            revoke_invite,
        },
        ClientMessage::Promote { participant } => Command::Promote {
            target: participant,
        },
        ClientMessage::Demote { participant } => Command::Demote {
            target: participant,
        },
        ClientMessage::SetRole { participant, role } => Command::SetRole {
            target: participant,
            role,
        },
        ClientMessage::EndRoom {} => Command::End,
        ClientMessage::StartRecording { speaker_tracks } => {
            Command::StartRecording(RecordingOptions { speaker_tracks })
        }
        ClientMessage::StopRecording {} => Command::StopRecording,
        ClientMessage::Leave {} => Command::Leave,
        ClientMessage::Join { .. }
        | ClientMessage::Resume { .. }
        | ClientMessage::Ping {}
        | ClientMessage::BroadcastLink {}
        | ClientMessage::RenewSession {}
        | ClientMessage::ListAudience { .. }
        | ClientMessage::MediaOffer { .. }
        | ClientMessage::IceCandidate { .. } => return None,
    })
}
