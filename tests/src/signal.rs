//! A signaling client for tests: joins over a real WebSocket, sends requests, and waits for
//! the messages it expects (never sleeps), keeping everything it received for assertions.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long a test waits for a message it expects before failing.
pub const WAIT: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct SignalClient {
    ws: Ws,
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
        let (ws, _) = connect_async(signal_url).await.expect("websocket connects");
        SignalClient {
            ws,
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
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
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
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no message within {WAIT:?}; received {:?}", self.received),
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("server sends JSON");
                    self.received.push(value);
                    self.taken.push(false);
                    return true;
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return false;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.closed.get_or_insert((1006, String::new()));
                    return false;
                }
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
        drop(self.ws);
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
