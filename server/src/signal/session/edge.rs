//! A socket served as an edge of a room whose home is another node (which is full).
//!
//! The person's messages go to the home on a socket of this node's own, passed on with the
//! client's address vouched for (`Stoa-Forwarded`), and the home's answers and events come
//! back unchanged: the room's state machine, its rules and its audience counts are the
//! home's. Two things stay here:
//! - **media**: a `media_offer` is answered by this node's media, receive only (nobody is heard
//!   from an edge), and the room's audio comes from the home once for all of them, on a relay
//!   link ([`crate::signal::RelayLinks`]);
//! - **the stage**: someone who goes on stage (an accepted invitation, a promotion) is sent
//!   home with `moved`, as a stopping node does, so every speaker's audio enters the room at
//!   its home. Their client resumes there in one step.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Up;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Flow, Session};
use crate::cluster::{HEADER, NodeInfo};
use crate::control::{ParticipantId, RoomId};
use crate::signal::RelayLinks;
use crate::wire::{ClientMessage, ServerMessage, close_code};

/// The signaling path on every node.
const SIGNAL_PATH: &str = "/api/v1/signal";
/// How long the home may take to accept the edge's socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long someone going home waits for the home's answers to their last requests.
const ANSWERS_WAIT: Duration = Duration::from_secs(2);
/// Requests followed for their answers (the rate limit keeps it far below this).
const MAX_UNANSWERED: usize = 64;

type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A socket that joined a room whose home is `home`, to be served here.
pub(in crate::signal) struct EdgeJoin {
    pub home: NodeInfo,
    pub room: RoomId,
    /// The client's `join` or `resume`, passed to the home as it came.
    pub hello: String,
}

/// What the edge knows of the person, from the home's messages.
struct Person {
    id: ParticipantId,
    /// They hear the room over its broadcast tier: no WebRTC media.
    broadcast: bool,
    resume_grace: Duration,
}

/// One edge session's state while it passes messages on.
struct Passing<'a> {
    links: &'a RelayLinks,
    edge: &'a EdgeJoin,
    person: &'a Person,
    /// Where media's answers to offers come back to the loop.
    answers: mpsc::Sender<String>,
    /// Ids of the requests passed to the home that it has not answered yet: someone sent
    /// home gets the answers first (their `accept_invitation`'s `ok` comes after the
    /// `joined_stage` it caused).
    unanswered: Vec<Value>,
}

/// How an edge session ended, for the person's media connection here.
enum Ended {
    /// For good (left, removed, banned, the room ended, sent home): closed at once.
    ForGood,
    /// Their socket, or the home's, dropped: kept for a resume.
    Dropped,
}

fn on_stage_in(message: &Value, me: &str) -> bool {
    match message["type"].as_str() {
        Some("welcome" | "snapshot") => message["snapshot"]["you"]["on_stage"] == true,
        Some("joined_stage") => message["participant"]["id"] == me,
        Some("role_changed") => {
            message["participant"]["id"] == me && message["participant"]["on_stage"] == true
        }
        _ => false,
    }
}

impl Session {
    pub(super) async fn serve_as_edge(mut self, edge: EdgeJoin) {
        let Some(links) = self.state.relay_links.clone() else {
            return;
        };
        let opened = connect_home(
            &links,
            &edge.home,
            self.client_ip,
            self.state.clock.now_ms(),
            self.state.settings.max_message_bytes,
        );
        let mut upstream = match opened.await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(home = %edge.home.name, error = %e, "an edge could not reach the room's home");
                self.home_lost("home_unreachable").await;
                return;
            }
        };
        if upstream.send(Up::text(edge.hello.clone())).await.is_err() {
            self.close(close_code::SERVER_RESTARTING, "server_restarting")
                .await;
            return;
        }
        // The home's first answer: a welcome, or a refusal and its close, passed on as they are.
        let limit = Duration::from_millis(self.state.settings.join_timeout_ms);
        let welcome = loop {
            match tokio::time::timeout(limit, upstream.next()).await {
                Ok(Some(Ok(Up::Text(text)))) => {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    if message["type"] == "welcome" {
                        break (text.to_string(), message);
                    }
                    if !self.write(Message::Text(text.as_str().into())).await {
                        return;
                    }
                }
                Ok(Some(Ok(Up::Close(frame)))) => {
                    self.pass_close(frame).await;
                    return;
                }
                Ok(Some(Ok(_))) => {}
                _ => {
                    self.close(close_code::SERVER_RESTARTING, "server_restarting")
                        .await;
                    return;
                }
            }
        };
        let (mut welcome_text, mut welcome) = welcome;
        let Some(id) = welcome["snapshot"]["you"]["id"]
            .as_str()
            .and_then(ParticipantId::parse)
        else {
            self.close(close_code::INTERNAL, "internal").await;
            return;
        };
        let person = Person {
            broadcast: welcome["snapshot"]["delivery"] == "broadcast",
            resume_grace: Duration::from_secs(welcome["resume_grace_secs"].as_u64().unwrap_or(20)),
            id,
        };
        if on_stage_in(&welcome, person.id.as_str()) {
            // On stage from the start (a moderator who was on it): their place is home.
            self.send_home(&edge.home, &mut upstream).await;
            return;
        }
        let seat = match links.take(&edge.room, &edge.home).await {
            Ok(seat) => seat,
            Err(e) => {
                tracing::warn!(room = %edge.room, home = %edge.home.name, error = %e, "the home did not grant a relay link");
                let _ = upstream.close(None).await;
                self.home_lost("no_relay").await;
                return;
            }
        };
        self.state.metrics.edge_session("served");
        // Whether the client must make a new media connection is this node's to say: it has
        // one of theirs only if they were here moments ago (their socket dropped, and they
        // resumed here).
        let reconnect = !links.has_session(&edge.room, &person.id);
        if welcome["media"]["reconnect"].as_bool().unwrap_or(false) != reconnect {
            welcome["media"]["reconnect"] = Value::Bool(reconnect);
            welcome_text = welcome.to_string();
        }
        let n = links.session_began(&edge.room, &person.id);
        let ended = if self.write(Message::Text(welcome_text.into())).await {
            self.pass_through(&links, &edge, &person, &mut upstream)
                .await
        } else {
            let _ = upstream.close(None).await;
            Ended::Dropped
        };
        links.session_ended(
            &edge.room,
            &person.id,
            n,
            matches!(ended, Ended::ForGood),
            person.resume_grace,
        );
        drop(seat);
    }

    /// Client ⇄ home until either side ends it; media offers are answered here.
    async fn pass_through(
        &mut self,
        links: &RelayLinks,
        edge: &EdgeJoin,
        person: &Person,
        upstream: &mut Upstream,
    ) -> Ended {
        let signal = self.state.settings.clone();
        let mut ping = tokio::time::interval(Duration::from_millis(signal.ping_interval_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = Duration::from_millis(signal.ping_timeout_ms);
        let mut last_heard = Instant::now();
        let mut leaving = links.leaving();
        if *leaving.borrow_and_update() {
            self.leave_for_another(links, edge, upstream).await;
            return Ended::ForGood;
        }
        let (answers_tx, mut answers) = mpsc::channel::<String>(4);
        let mut passing = Passing {
            links,
            edge,
            person,
            answers: answers_tx,
            unanswered: Vec::new(),
        };
        // Set once they are on stage: when they go home, at the latest.
        let mut going_home: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            tokio::select! {
                frame = upstream.next() => match frame {
                    Some(Ok(Up::Text(text))) => {
                        let text = text.as_str();
                        let staged = (text.contains("stage") || text.contains("role_changed") || text.contains("snapshot"))
                            && serde_json::from_str::<Value>(text)
                                .is_ok_and(|m| on_stage_in(&m, person.id.as_str()));
                        if !passing.unanswered.is_empty() && text.contains("\"id\"")
                            && let Ok(message) = serde_json::from_str::<Value>(text)
                        {
                            passing.unanswered.retain(|id| *id != message["id"]);
                        }
                        if !self.write(Message::Text(text.into())).await {
                            let _ = upstream.close(None).await;
                            return Ended::Dropped;
                        }
                        if staged && going_home.is_none() {
                            going_home = Some(Instant::now() + ANSWERS_WAIT);
                        }
                        if going_home.is_some() && passing.unanswered.is_empty() {
                            self.send_home(&edge.home, upstream).await;
                            return Ended::ForGood;
                        }
                    }
                    Some(Ok(Up::Close(frame))) => {
                        let resumable = frame.as_ref().is_some_and(|f| {
                            matches!(f.reason.as_str(), "ping_timeout" | "too_slow" | "server_restarting")
                        });
                        self.pass_close(frame).await;
                        return if resumable { Ended::Dropped } else { Ended::ForGood };
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => {
                        // The home went away (killed, or cut off): the client resumes, here or
                        // wherever the room is by then.
                        self.close(close_code::SERVER_RESTARTING, "server_restarting").await;
                        return Ended::Dropped;
                    }
                },
                _ = tokio::time::sleep_until(going_home.unwrap_or(far)) => {
                    self.send_home(&edge.home, upstream).await;
                    return Ended::ForGood;
                },
                frame = self.socket.recv(), if going_home.is_none() => {
                    let frame = match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                            let _ = upstream.close(None).await;
                            return Ended::Dropped;
                        }
                        Some(Ok(frame)) => frame,
                    };
                    last_heard = Instant::now();
                    match frame {
                        Message::Text(text) => {
                            let flow = self.on_client_text(&mut passing, text.as_str(), upstream).await;
                            if let Flow::Stop = flow {
                                let _ = upstream.close(None).await;
                                return Ended::ForGood;
                            }
                        }
                        Message::Binary(_) => {
                            self.error(None, "binary_not_supported", "send JSON text messages").await;
                            if let Flow::Stop = self.strike().await {
                                let _ = upstream.close(None).await;
                                return Ended::ForGood;
                            }
                        }
                        _ => {}
                    }
                },
                Some(answer) = answers.recv() => {
                    if !self.write(Message::Text(answer.into())).await {
                        let _ = upstream.close(None).await;
                        return Ended::Dropped;
                    }
                },
                _ = leaving.changed() => {
                    self.leave_for_another(links, edge, upstream).await;
                    return Ended::ForGood;
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > timeout {
                        let _ = upstream.close(None).await;
                        self.close(close_code::TIMED_OUT, "ping_timeout").await;
                        return Ended::Dropped;
                    }
                    if !self.write(Message::Ping(Default::default())).await {
                        let _ = upstream.close(None).await;
                        return Ended::Dropped;
                    }
                },
            }
        }
    }

    /// One message from the client: bounded and decoded here as on the home; a media offer is
    /// answered here, anything else goes to the home as it came.
    async fn on_client_text(
        &mut self,
        passing: &mut Passing<'_>,
        text: &str,
        upstream: &mut Upstream,
    ) -> Flow {
        let (links, edge, person) = (passing.links, passing.edge, passing.person);
        let (id, message) = match self.screen(text).await {
            Err(()) => return Flow::Stop,
            Ok(None) => return Flow::Continue,
            Ok(Some(m)) => m,
        };
        match message {
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } => {
                let message = "this socket has already joined";
                self.error(id.as_ref(), "already_joined", message).await;
            }
            ClientMessage::MediaOffer { sdp } => {
                if person.broadcast {
                    let refusal = crate::room::Refusal::BroadcastDelivery;
                    self.error(id.as_ref(), refusal.code(), refusal.message())
                        .await;
                    return Flow::Continue;
                }
                let (reply, answer) = oneshot::channel();
                // Receive only: nobody is heard from an edge.
                links
                    .media()
                    .offer(&edge.room, &person.id, sdp, false, false, reply);
                let answers = passing.answers.clone();
                let metrics = self.state.metrics.clone();
                tokio::spawn(async move {
                    let text = crate::room::answer_text(answer, id.as_ref(), &metrics).await;
                    let _ = answers.send(text).await;
                });
            }
            _ => {
                if let Some(id) = &id {
                    if passing.unanswered.len() >= MAX_UNANSWERED {
                        passing.unanswered.remove(0);
                    }
                    passing
                        .unanswered
                        .push(serde_json::to_value(id).unwrap_or_default());
                }
                if upstream.send(Up::text(text.to_owned())).await.is_err() {
                    self.close(close_code::SERVER_RESTARTING, "server_restarting")
                        .await;
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    /// The home did not take the socket, or did not grant the link: `node_unreachable`, and a
    /// close the client resumes after. A home killed a moment ago can still look alive, and
    /// the resume finds the room wherever it is by then.
    async fn home_lost(&mut self, outcome: &str) {
        self.state.metrics.edge_session(outcome);
        let message = "the node this room lives on did not answer; try again in a moment";
        self.error(None, "node_unreachable", message).await;
        self.close(close_code::SERVER_RESTARTING, "server_restarting")
            .await;
    }

    /// Sends the person to the room's home (`moved`, as a stopping node does): their client
    /// resumes there. The socket to the home closes first, so the home holds their place.
    async fn send_home(&mut self, home: &NodeInfo, upstream: &mut Upstream) {
        self.state.metrics.edge_session("sent_home");
        self.send_to(&home.signal_url, upstream).await;
    }

    /// This node stops or drains (it has left the registry): the person goes to another
    /// edge of the room if the home is still full and one has room, else to the home.
    async fn leave_for_another(
        &mut self,
        links: &RelayLinks,
        edge: &EdgeJoin,
        upstream: &mut Upstream,
    ) {
        let cluster = links.cluster();
        let home = match cluster.node(&edge.home.name).await {
            Ok(Some(home)) => home,
            _ => edge.home.clone(),
        };
        let target = match cluster
            .edge_for(edge.room.as_str(), &home, Some(cluster.node_name()))
            .await
        {
            Ok(Some(other)) => other,
            _ => home,
        };
        self.state.metrics.edge_session("handed_over");
        self.send_to(&target.signal_url, upstream).await;
    }

    async fn send_to(&mut self, signal_url: &str, upstream: &mut Upstream) {
        let _ = upstream.close(None).await;
        self.send(ServerMessage::Moved { signal_url }).await;
        self.close(close_code::MOVED, "room_elsewhere").await;
    }

    /// The home closed its socket: the client's closes the same way.
    async fn pass_close(
        &mut self,
        frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    ) {
        let frame = frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        });
        self.close_with(frame).await;
    }
}

/// A socket of this node's own to the home's signaling endpoint, vouching for the client's
/// address (the home counts sockets per client address, not per edge).
async fn connect_home(
    links: &RelayLinks,
    home: &NodeInfo,
    client_ip: std::net::IpAddr,
    now_ms: i64,
    max_message_bytes: usize,
) -> Result<Upstream, String> {
    let base = home.reach().trim_end_matches('/');
    let url = match base.strip_prefix("http") {
        Some(rest) => format!("ws{rest}{SIGNAL_PATH}"),
        None => return Err(format!("{base} is not an http:// address")),
    };
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let vouch = links.forwarding().header(
        links.cluster().node_name(),
        client_ip,
        now_ms,
        &axum::http::Method::GET,
        SIGNAL_PATH,
    );
    request.headers_mut().insert(
        HEADER,
        vouch.parse().map_err(|_| "a bad header".to_owned())?,
    );
    let hard_cap = (max_message_bytes * 64).max(4 << 20);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(hard_cap))
        .max_frame_size(Some(hard_cap));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
