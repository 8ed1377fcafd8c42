//! A signaling client for tests, on the client library's socket: joins, sends requests, and
//! waits for the messages it expects (never sleeps), keeping everything it received for
//! assertions. It panics where a test should fail, and reads only when asked (so a client
//! that stops reading stops answering the server's pings, as the keep-alive test needs).

use std::time::Duration;

use serde_json::{Value, json};
use stoa_client::Error;
use stoa_client::media::OfferChannel;
use stoa_client::signal::Connection;

/// How long a test waits for a message it expects before failing.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct SignalClient {
    connection: Connection,
    /// Every JSON message received so far, in order.
    pub received: Vec<Value>,
    /// Which of `received` a wait has already taken.
    taken: Vec<bool>,
    next_id: u64,
    pub welcome: Value,
    /// How the server closed the socket, once it did.
    pub closed: Option<(u16, String)>,
}

impl SignalClient {
    /// Opens a socket without joining.
    pub async fn open(signal_url: &str) -> Self {
        let connection = Connection::open(signal_url)
            .await
            .expect("websocket connects");
        SignalClient {
            connection,
            received: Vec::new(),
            taken: Vec::new(),
            next_id: 1,
            welcome: Value::Null,
            closed: None,
        }
    }

    /// Opens a socket and joins with a join answer from `POST /api/v1/join`.
    pub async fn join(answer: &Value) -> Self {
        let mut client = Self::open(answer["signal_url"].as_str().unwrap()).await;
        client
            .send(json!({ "type": "join", "token": answer["token"] }))
            .await;
        client.welcome = client.wait_type("welcome").await;
        client
    }

    /// Takes a participant's place back after a dropped socket.
    pub async fn resume(signal_url: &str, resume_token: &str) -> Self {
        let mut client = Self::open(signal_url).await;
        client
            .send(json!({ "type": "resume", "resume_token": resume_token }))
            .await;
        client.welcome = client.wait_type("welcome").await;
        client
    }

    pub fn participant_id(&self) -> String {
        self.welcome["snapshot"]["you"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn resume_token(&self) -> String {
        self.welcome["resume_token"].as_str().unwrap().to_owned()
    }

    pub async fn send(&mut self, message: Value) {
        self.connection.send(&message).await.expect("send");
    }

    pub async fn send_text(&mut self, text: String) {
        self.connection.send_text(text).await.expect("send");
    }

    /// Sends a frame the server is expected to answer by dropping the connection, which it may
    /// do before the frame is fully written; [`SignalClient::wait_closed`] then says how it ended.
    pub async fn send_text_until_dropped(&mut self, text: String) {
        let _ = self.connection.send_text(text).await;
    }

    /// Sends `message` with a fresh id and waits for the answer carrying that id.
    pub async fn request(&mut self, mut message: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        message["id"] = json!(id);
        self.send(message).await;
        self.wait(|m| m["id"] == json!(id)).await
    }

    /// Like `request`, but the answer must be `ok`.
    pub async fn ok(&mut self, message: Value) {
        let answer = self.request(message.clone()).await;
        assert_eq!(answer["type"], "ok", "{message} was refused: {answer}");
    }

    /// Like `request`, but the answer must be an error with this code.
    pub async fn refused(&mut self, message: Value, code: &str) {
        let answer = self.request(message.clone()).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some(code)),
            "{message}: {answer}"
        );
    }

    /// Reads one more message from the socket into `received`; false once the socket closed.
    async fn read_one(&mut self) -> bool {
        // One deadline for the whole read: keep-alive pings must not extend it.
        let deadline = tokio::time::Instant::now() + WAIT;
        let message = match tokio::time::timeout_at(deadline, self.connection.recv()).await {
            Err(_) => panic!("no message within {WAIT:?}; received {:?}", self.received),
            Ok(message) => message.expect("server sends JSON"),
        };
        match message {
            Some(value) => {
                self.received.push(value);
                self.taken.push(false);
                true
            }
            None => {
                let close = self.connection.closed().expect("closed");
                self.closed = Some((close.code, close.reason.clone()));
                false
            }
        }
    }

    /// Waits for the first message not yet taken that matches `pred`, and takes it. Messages
    /// that arrived earlier stay available to later waits.
    pub async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let mut from = 0;
        loop {
            for i in from..self.received.len() {
                if !self.taken[i] && pred(&self.received[i]) {
                    self.taken[i] = true;
                    return self.received[i].clone();
                }
            }
            from = self.received.len();
            if !self.read_one().await {
                panic!(
                    "socket closed ({:?}) while waiting; got {:?}",
                    self.closed, self.received
                );
            }
        }
    }

    pub async fn wait_type(&mut self, kind: &str) -> Value {
        self.wait(|m| m["type"] == kind).await
    }

    /// Waits for an `active_speakers` event that names `participant` among the speakers.
    pub async fn wait_speaking(&mut self, participant: &str) -> Value {
        self.wait(|e| {
            e["type"] == "active_speakers"
                && e["speakers"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|p| p == participant))
        })
        .await
    }

    /// Waits for an event of `kind` about `participant`.
    pub async fn wait_about(&mut self, kind: &str, participant: &str) -> Value {
        self.wait(|m| {
            m["type"] == kind
                && (m["participant"] == participant || m["participant"]["id"] == participant)
        })
        .await
    }

    /// The next message that arrives within `limit` (taken), or `None` if none did or the
    /// socket closed (see `closed`). For tools that watch a room rather than expect a message.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(i) = self.taken.iter().position(|t| !t) {
            self.taken[i] = true;
            return Some(self.received[i].clone());
        }
        if self.closed.is_some() {
            return None;
        }
        match tokio::time::timeout(limit, self.read_one()).await {
            Ok(true) => {
                let last = self.received.len() - 1;
                self.taken[last] = true;
                Some(self.received[last].clone())
            }
            _ => None,
        }
    }

    /// Reads until the server closes the socket; returns the close code and reason.
    pub async fn wait_closed(&mut self) -> (u16, String) {
        while self.closed.is_none() {
            self.read_one().await;
        }
        self.closed.clone().unwrap()
    }

    /// Round-trips a ping: afterwards every message the server sent before it has been read.
    pub async fn sync(&mut self) {
        let answer = self.request(json!({ "type": "ping" })).await;
        assert_eq!(answer["type"], "pong", "{answer}");
    }

    /// Drops the TCP connection without a close handshake, like a lost network.
    pub fn drop_connection(self) {
        self.connection.abort();
    }

    /// Closes politely.
    pub async fn close(self) {
        self.connection.close().await;
    }
}

#[async_trait::async_trait]
impl OfferChannel for SignalClient {
    /// `media_offer` → `media_answer` (or `error`, returned as [`Error::Rejected`]).
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, Error> {
        let reply = self
            .request(json!({ "type": "media_offer", "sdp": offer_sdp }))
            .await;
        match reply["type"].as_str() {
            Some("media_answer") => reply["sdp"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Protocol(format!("media_answer without sdp: {reply}"))),
            Some("error") => Err(Error::Rejected {
                code: reply["code"].as_str().unwrap_or_default().to_owned(),
                message: reply["message"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => Err(Error::Protocol(format!(
                "unexpected reply to media_offer: {reply}"
            ))),
        }
    }
}

/// The number of audio slots from a `welcome` message (`media.slots`).
#[track_caller]
pub fn media_slots(welcome: &Value) -> usize {
    welcome["media"]["slots"]
        .as_u64()
        .unwrap_or_else(|| panic!("welcome without media.slots: {welcome}")) as usize
}
