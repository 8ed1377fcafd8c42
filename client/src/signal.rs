//! The signaling WebSocket, in two layers. [`Connection`] is the socket: JSON messages in text
//! frames, how it closed, nothing else. [`Session`] is one participant's session on it: the
//! `join` or `resume` handshake, requests matched to their answers by id, and the events that
//! arrive meanwhile. Neither reads in the background: the server's keep-alive pings are
//! answered while you read, so read at least every few seconds (the server gives up after
//! 15 s of silence). [`Room`](crate::Room) does that for you.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::Error;
use crate::join::JoinAnswer;
use crate::media::OfferChannel;
use crate::protocol::{ParticipantId, Welcome};

/// How long opening a socket, or an answer to a request, may take.
pub const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// The largest message this client reads: the server's own limit on client messages, times 16
/// (a moderator's snapshot with 200 people in the audience is about 40 KiB).
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// `moved` answers followed in one handshake before giving up (a cluster sends one at most,
/// unless the room moves again meanwhile).
const MAX_MOVES: usize = 3;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a socket closed: the close frame's code and reason (1005 when the frame had none, 1006
/// when the connection broke without one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code.
    pub code: u16,
    /// The close reason (`left`, `removed`, …).
    pub reason: String,
}

impl From<Close> for Error {
    fn from(close: Close) -> Self {
        Error::Closed {
            code: close.code,
            reason: close.reason,
        }
    }
}

/// A signaling WebSocket: JSON messages in text frames.
pub struct Connection {
    ws: Ws,
    closed: Option<Close>,
}

impl Connection {
    /// Opens a socket at `url` (`ws://…/api/v1/signal`) without joining.
    pub async fn open(url: &str) -> Result<Connection, Error> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (ws, _) = tokio::time::timeout(
            ANSWER_WAIT,
            connect_async_with_config(url, Some(config), false),
        )
        .await
        .map_err(|_| Error::Timeout(format!("opening {url}")))?
        .map_err(|e| Error::Transport(format!("{url}: {e}")))?;
        Ok(Connection { ws, closed: None })
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Value) -> Result<(), Error> {
        self.send_text(message.to_string()).await
    }

    /// Sends a text frame as it is (which need not be JSON: for testing the server).
    pub async fn send_text(&mut self, text: String) -> Result<(), Error> {
        if let Some(close) = &self.closed {
            return Err(close.clone().into());
        }
        let sent = self.ws.send(Message::Text(text.into())).await;
        sent.map_err(|e| {
            // A write that failed leaves nothing to read but the end: the socket is gone (the
            // server may drop a connection while a frame it refuses is still being written).
            self.closed = Some(Close {
                code: 1006,
                reason: String::new(),
            });
            Error::Transport(format!("send: {e}"))
        })
    }

    /// The next message, answering pings on the way; `Ok(None)` once the socket has closed
    /// ([`Connection::closed`] says how). A text frame that is not JSON is an
    /// [`Error::Protocol`]. Cancel-safe: a message is never half read.
    pub async fn recv(&mut self) -> Result<Option<Value>, Error> {
        loop {
            if self.closed.is_some() {
                return Ok(None);
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .map_err(|e| Error::Protocol(format!("not JSON ({e}): {text}")));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame.map_or(
                        Close {
                            code: 1005,
                            reason: String::new(),
                        },
                        |f| Close {
                            code: u16::from(f.code),
                            reason: f.reason.to_string(),
                        },
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.closed = Some(Close {
                        code: 1006,
                        reason: String::new(),
                    });
                }
            }
        }
    }

    /// How the socket closed, once it has.
    pub fn closed(&self) -> Option<&Close> {
        self.closed.as_ref()
    }

    /// Drops the TCP connection without a close handshake, as a lost network would.
    pub fn abort(self) {
        drop(self.ws);
    }

    /// Closes politely (a close frame, then the server's).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// One participant's session on a signaling socket, after `welcome`.
pub struct Session {
    connection: Connection,
    url: String,
    welcome: Welcome,
    welcome_message: Value,
    /// Messages that arrived while a request waited for its answer, oldest first.
    pending: VecDeque<Value>,
    next_id: u64,
}

impl Session {
    /// Opens a socket and joins with a redeemed invite.
    pub async fn join(joined: &JoinAnswer) -> Result<Session, Error> {
        Session::join_at(&joined.signal_url, &joined.token).await
    }

    /// Opens a socket at `signal_url` and joins with a session token.
    pub async fn join_at(signal_url: &str, token: &str) -> Result<Session, Error> {
        Session::handshake(signal_url, json!({ "type": "join", "token": token })).await
    }

    /// Opens a socket and takes back a place held after a dropped connection.
    pub async fn resume(signal_url: &str, resume_token: &str) -> Result<Session, Error> {
        Session::handshake(
            signal_url,
            json!({ "type": "resume", "resume_token": resume_token }),
        )
        .await
    }

    /// Opens a socket, sends `first` (`join` or `resume`) and waits for `welcome`. In a
    /// cluster a node where the room does not live answers `moved`: the same handshake goes
    /// to the node it names (a few hops at most).
    async fn handshake(url: &str, mut first: Value) -> Result<Session, Error> {
        first["id"] = json!(0);
        let mut url = url.to_owned();
        let mut hops = 0;
        let (connection, welcome_message, pending) = 'hop: loop {
            let mut connection = Connection::open(&url).await?;
            connection.send(&first).await?;
            let mut pending = VecDeque::new();
            let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
            loop {
                let message = tokio::time::timeout_at(deadline, connection.recv())
                    .await
                    .map_err(|_| Error::Timeout("no welcome".to_owned()))??;
                let Some(message) = message else {
                    return Err(closed_error(&connection));
                };
                match message["type"].as_str() {
                    Some("welcome") => break 'hop (connection, message, pending),
                    Some("error") => return Err(rejected(&message)),
                    Some("moved") if hops < MAX_MOVES => {
                        let Some(next) = message["signal_url"].as_str() else {
                            return Err(Error::Protocol("`moved` without signal_url".into()));
                        };
                        hops += 1;
                        url = next.to_owned();
                        continue 'hop;
                    }
                    _ => pending.push_back(message),
                }
            }
        };
        let welcome = Welcome::parse(&welcome_message).map_err(Error::Protocol)?;
        Ok(Session {
            connection,
            url,
            welcome,
            welcome_message,
            pending,
            next_id: 1,
        })
    }

    /// The `welcome` this session began with.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The `welcome` message as it arrived.
    pub fn welcome_message(&self) -> &Value {
        &self.welcome_message
    }

    /// This participant's id.
    pub fn participant_id(&self) -> &ParticipantId {
        &self.welcome.snapshot.you.id
    }

    /// The token to [`Session::resume`] with after a dropped connection (a credential).
    pub fn resume_token(&self) -> &str {
        &self.welcome.resume_token
    }

    /// How many audio sections a media offer should have.
    pub fn slots(&self) -> usize {
        self.welcome.slots
    }

    /// The signaling URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a message without waiting for anything.
    pub async fn send(&mut self, message: &Value) -> Result<(), Error> {
        self.connection.send(message).await
    }

    /// Sends `message` with a fresh `id` and returns that id; its answer arrives through
    /// [`Session::recv`] like any message.
    pub async fn send_request(&mut self, mut message: Value) -> Result<u64, Error> {
        let id = self.next_id;
        self.next_id += 1;
        message["id"] = json!(id);
        self.connection.send(&message).await?;
        Ok(id)
    }

    /// Sends `message` with a fresh `id` and returns its answer (`ok`, `error`, or whatever
    /// answers that type); other messages that arrive meanwhile wait for [`Session::next`].
    pub async fn request(&mut self, message: Value) -> Result<Value, Error> {
        let id = self.send_request(message).await?;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.connection.recv())
                .await
                .map_err(|_| Error::Timeout(format!("no answer to request {id}")))??;
            match message {
                None => return Err(closed_error(&self.connection)),
                Some(m) if m["id"] == json!(id) => return Ok(m),
                Some(m) => self.pending.push_back(m),
            }
        }
    }

    /// Like [`Session::request`], but an `error` answer is an [`Error::Rejected`].
    pub async fn call(&mut self, message: Value) -> Result<Value, Error> {
        let answer = self.request(message).await?;
        if answer["type"] == "error" {
            return Err(rejected(&answer));
        }
        Ok(answer)
    }

    /// The next message; an [`Error::Closed`] once the socket has closed and every message
    /// before that was read. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Value, Error> {
        if let Some(message) = self.pending.pop_front() {
            return Ok(message);
        }
        match self.connection.recv().await? {
            Some(message) => Ok(message),
            None => Err(closed_error(&self.connection)),
        }
    }

    /// The next message within `limit`, `Ok(None)` if none came.
    pub async fn next(&mut self, limit: Duration) -> Result<Option<Value>, Error> {
        match tokio::time::timeout(limit, self.recv()).await {
            Err(_) => Ok(None),
            Ok(result) => result.map(Some),
        }
    }

    /// How the socket closed, once it has.
    pub fn closed(&self) -> Option<&Close> {
        self.connection.closed()
    }

    /// Drops the connection without a goodbye, as a lost network would: the server holds the
    /// place for the grace period.
    pub fn abort(self) {
        self.connection.abort();
    }

    /// Closes the socket politely without leaving: the server holds the place for the grace
    /// period, as after any dropped connection.
    pub async fn close(self) {
        self.connection.close().await;
    }

    /// Leaves the room for good, and closes the socket.
    pub async fn leave(mut self) -> Result<(), Error> {
        let answer = self.call(json!({ "type": "leave" })).await;
        self.connection.close().await;
        answer.map(|_| ())
    }
}

/// `media_offer` → `media_answer` (or `error`, an [`Error::Rejected`]).
#[async_trait::async_trait]
impl OfferChannel for Session {
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, Error> {
        let reply = self
            .call(json!({ "type": "media_offer", "sdp": offer_sdp }))
            .await?;
        media_answer(&reply)
    }
}

/// The SDP of a `media_answer`.
pub(crate) fn media_answer(reply: &Value) -> Result<String, Error> {
    match (reply["type"].as_str(), reply["sdp"].as_str()) {
        (Some("media_answer"), Some(sdp)) => Ok(sdp.to_owned()),
        _ => Err(Error::Protocol(format!(
            "unexpected reply to media_offer: {reply}"
        ))),
    }
}

/// An `error` message as an [`Error::Rejected`].
pub(crate) fn rejected(message: &Value) -> Error {
    Error::Rejected {
        code: message["code"].as_str().unwrap_or_default().to_owned(),
        message: message["message"].as_str().unwrap_or_default().to_owned(),
    }
}

fn closed_error(connection: &Connection) -> Error {
    connection
        .closed()
        .cloned()
        .unwrap_or(Close {
            code: 1006,
            reason: String::new(),
        })
        .into()
}
