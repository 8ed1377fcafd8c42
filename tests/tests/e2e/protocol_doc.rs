//! `docs/protocol.md` is made of transcripts: `Name → message` sent by a client, `Name ←
//! message` received by it, `Name ✕ close frame: …` how its connection ended. This test replays
//! every transcript against a real server and fails when what the server says differs from
//! what the document says, so the document cannot drift from the protocol.
//!
//! How a transcript is replayed:
//!
//! - Before the block a room is made and a cast joins it, each on a socket of their own: by
//!   default Ada (moderator), Sam (speaker), Lee and Bo (listeners) in "Friday jam". An HTML
//!   comment just before the block's fence changes that (`<!-- replay … -->`, statements one per
//!   line): `room TITLE`, `max_stage N`, `cast Name=role …` (joined, in that order; `Lee'=listener` is Lee
//!   on a socket called Lee'; `Fan=listener/broadcast` came through a broadcast invite), `absent Name=role …`
//!   (redeemed an invite, not joined), `ids pt_…=Name …` (the person a document id stands
//!   for), `Name: {message}` (sent before the block; its `ok` awaited, its events dropped),
//!   `end room at LINE` (the room is ended through the REST API before that line of the
//!   block) and `advance SECS at LINE` (the server's clock jumps before that line).
//!   `<!-- replay skip: why -->` skips a block; the reason is printed.
//! - The lines then run in order: `→` is sent, `←` is awaited on that socket and compared,
//!   `✕` awaits the close frame (or the end without one; as a socket's first line it means the
//!   client cuts its connection). A name not in the cast (`X`, `Lee'`) is a new socket of that
//!   person, not joined.
//! - Comparison (`{"type":"welcome",…}` shows only some fields): the same fields, the same values, except that participant and room ids are
//!   matched to the real ones (the same document id always to the same real one), tokens
//!   shortened with `…` match by prefix, and `seq` is any number. The coalesced
//!   `audience_count` may arrive more often than shown; the ones shown must arrive.
//! - After the last line, every socket the block shows must have received nothing more.
//!
//! Blocks with no `→` line are examples of single messages; each of those must have the
//! fields of a message of the same type that the replay actually received.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stoa_tests::TestServer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

/// A request that changes nothing and that the room itself answers (with an error), after every
/// event it sent the socket before: reading up to its answer reads everything on its way. A
/// `ping` would not do: the socket answers it without asking the room.
const PROBE: &str =
    r#"{"type":"cancel_invitation","id":"probe","participant":"pt_AAAAAAAAAAAAAAAA"}"#;

// ---------------------------------------------------------------------------------------------
// Reading the document

#[derive(Debug)]
struct Block {
    /// Line of the opening fence, for messages.
    line: usize,
    setup: Setup,
    skip: Option<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Default)]
struct Setup {
    /// Written in the document (not the defaults).
    annotated: bool,
    room: Option<String>,
    max_stage: Option<u32>,
    /// `end room at LINE`: the room is ended (through the REST API) before that line.
    end_room: Option<usize>,
    cast: Option<Vec<(String, String)>>,
    absent: Vec<(String, String)>,
    ids: Vec<(String, String)>,
    before: Vec<(String, Value)>,
    /// `advance SECS at LINE`: the server's clock moves forward before that line of the block
    /// (1 is the first), for what takes time (a grace period running out).
    advance: Option<(u64, usize)>,
}

#[derive(Debug)]
enum Step {
    Send {
        who: String,
        frame: Frame,
    },
    /// `partial`: the document shows some of the message's fields.
    Receive {
        who: String,
        message: Value,
        partial: bool,
    },
    /// `None`: the connection ends without a close frame.
    Closed {
        who: String,
        frame: Option<(u16, String)>,
    },
}

#[derive(Debug)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md")
}

/// The transcript blocks of the document: fenced blocks with no language that contain `→`,
/// `←` or `✕` lines.
fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with("```") {
            i += 1;
            continue;
        }
        let fence = i;
        let plain = lines[i].trim() == "```";
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].starts_with("```"))
            .unwrap_or_else(|| panic!("protocol.md:{}: unclosed fence", fence + 1));
        i = end + 1;
        let body = &lines[fence + 1..end];
        if !plain || !body.iter().any(|l| is_transcript_line(l)) {
            continue;
        }
        let (setup, skip) = annotation(&lines[..fence], fence);
        let steps = if skip.is_some() {
            Vec::new()
        } else {
            steps(body, fence + 2)
        };
        out.push(Block {
            line: fence + 1,
            setup,
            skip,
            steps,
        });
    }
    out
}

fn is_transcript_line(line: &str) -> bool {
    speaker_and_rest(line).is_some()
}

/// `Name → …`, `Name ← …`, `Name ✕ …`: the name, the arrow and the rest.
fn speaker_and_rest(line: &str) -> Option<(&str, char, &str)> {
    let (name, rest) = line.split_once(' ')?;
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '\'') {
        return None;
    }
    let mut chars = rest.chars();
    let arrow = chars.next()?;
    if !matches!(arrow, '→' | '←' | '✕') {
        return None;
    }
    Some((name, arrow, chars.as_str().trim()))
}

/// The `<!-- replay … -->` comment right above a fence, if any (blank lines allowed between).
fn annotation(before: &[&str], fence: usize) -> (Setup, Option<String>) {
    let mut setup = Setup::default();
    let mut j = before.len();
    while j > 0 && before[j - 1].trim().is_empty() {
        j -= 1;
    }
    if j == 0 || before[j - 1].trim() != "-->" && !before[j - 1].trim().ends_with("-->") {
        return (setup, None);
    }
    let last = j - 1;
    let first = (0..=last)
        .rev()
        .find(|&k| before[k].trim_start().starts_with("<!-- replay"))
        .unwrap_or_else(|| panic!("protocol.md:{}: a comment that is not `<!-- replay`", fence));
    setup.annotated = true;
    let text = before[first..=last].join("\n");
    let text = text
        .trim()
        .trim_start_matches("<!-- replay")
        .trim_end_matches("-->")
        .trim();
    if let Some(reason) = text.strip_prefix("skip:") {
        return (setup, Some(reason.trim().to_owned()));
    }
    let pairs = |rest: &str| -> Vec<(String, String)> {
        rest.split_whitespace()
            .map(|pair| {
                let (a, b) = pair.split_once('=').unwrap_or_else(|| {
                    panic!("protocol.md:{fence}: expected name=value, got {pair:?}")
                });
                (a.to_owned(), b.to_owned())
            })
            .collect()
    };
    for statement in text.lines().map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(rest) = statement.strip_prefix("room ") {
            setup.room = Some(rest.trim().to_owned());
        } else if let Some(rest) = statement.strip_prefix("cast") {
            setup.cast = Some(pairs(rest));
        } else if let Some(rest) = statement.strip_prefix("absent ") {
            setup.absent = pairs(rest);
        } else if let Some(rest) = statement.strip_prefix("ids ") {
            setup.ids = pairs(rest);
        } else if let Some(rest) = statement.strip_prefix("max_stage ") {
            setup.max_stage = Some(rest.trim().parse().expect("max_stage N"));
        } else if let Some(line) = statement.strip_prefix("end room at ") {
            setup.end_room = Some(line.parse().expect("end room at LINE"));
        } else if let Some(rest) = statement.strip_prefix("advance ") {
            let (secs, line) = rest
                .split_once(" at ")
                .unwrap_or_else(|| panic!("protocol.md:{fence}: advance SECS at LINE"));
            setup.advance = Some((secs.parse().unwrap(), line.parse().unwrap()));
        } else if let Some((who, message)) = statement.split_once(": ") {
            let message = serde_json::from_str(message)
                .unwrap_or_else(|e| panic!("protocol.md:{fence}: setup message {message:?}: {e}"));
            setup.before.push((who.to_owned(), message));
        } else {
            panic!("protocol.md:{fence}: unknown replay statement {statement:?}");
        }
    }
    (setup, None)
}

fn steps(body: &[&str], first_line: usize) -> Vec<Step> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let at = first_line + i;
        let Some((who, arrow, rest)) = speaker_and_rest(body[i]) else {
            assert!(
                body[i].trim().is_empty(),
                "protocol.md:{at}: not a transcript line: {:?}",
                body[i]
            );
            i += 1;
            continue;
        };
        let who = who.to_owned();
        i += 1;
        match arrow {
            '→' => out.push(Step::Send {
                who,
                frame: outgoing(rest),
            }),
            '←' => {
                // A pretty-printed message continues on the next lines until its braces close.
                let mut text = rest.to_owned();
                if text.is_empty() {
                    let mut depth = 0i32;
                    while i < body.len() {
                        text.push_str(body[i]);
                        text.push('\n');
                        depth += body[i].matches('{').count() as i32;
                        depth -= body[i].matches('}').count() as i32;
                        i += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                }
                // `{"type":"welcome",…}`: a message shown with some of its fields only.
                let partial = text.trim_end().ends_with(",…}");
                if partial {
                    text = text.trim_end().trim_end_matches(",…}").to_owned() + "}";
                }
                let message = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("protocol.md:{at}: received message: {e}"));
                out.push(Step::Receive {
                    who,
                    message,
                    partial,
                });
            }
            _ => out.push(Step::Closed {
                who,
                frame: close_frame(rest, at),
            }),
        }
    }
    out
}

/// What a `→` line sends: JSON text, or a described frame.
fn outgoing(rest: &str) -> Frame {
    if let Some(hex) = rest
        .strip_prefix("(a binary frame:")
        .and_then(|r| r.strip_suffix(')'))
    {
        let bytes = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect();
        return Frame::Binary(bytes);
    }
    if rest == "(a text message of 1 MiB + 10 bytes)" {
        return Frame::Text("x".repeat((1 << 20) + 10));
    }
    // `{… "pad": "xxxx…"}   (70 kB)`: the pad grows until the message has that size.
    if let Some((json, size)) = rest.rsplit_once("   (")
        && let Some(kb) = size.strip_suffix(" kB)")
    {
        let size: usize = kb.parse::<usize>().expect("size in kB") * 1000;
        let short = json.replace("xxxx…", "");
        let pad = "x".repeat(size.saturating_sub(short.len()));
        return Frame::Text(json.replace("xxxx…", &pad));
    }
    Frame::Text(rest.to_owned())
}

fn close_frame(rest: &str, at: usize) -> Option<(u16, String)> {
    let inner = rest
        .strip_prefix("close frame: (")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("protocol.md:{at}: unreadable close line {rest:?}"));
    if inner.starts_with("'no close frame received'") {
        return None;
    }
    let (code, reason) = inner
        .split_once(", ")
        .unwrap_or_else(|| panic!("protocol.md:{at}: unreadable close line {rest:?}"));
    Some((
        code.parse().expect("close code"),
        reason.trim_matches('\'').to_owned(),
    ))
}

/// The document's own cast tables: document participant id → name.
fn cast_tables(doc: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() == 5
            && let Some(id) = cells[2]
                .strip_prefix("`pt_")
                .and_then(|id| id.strip_suffix('`'))
            && matches!(cells[3], "moderator" | "speaker" | "listener")
        {
            out.insert(format!("pt_{id}"), cells[1].to_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Replaying against a server

struct Person {
    id: String,
    token: String,
    resume_token: Option<String>,
}

struct Replay<'a> {
    server: &'a TestServer,
    signal_url: String,
    people: HashMap<String, Person>,
    sockets: BTreeMap<String, Ws>,
    /// Document id → real id, fixed the first time it is seen.
    ids: HashMap<String, String>,
    /// Message type → its set of field paths, for everything received.
    shapes: &'a mut HashMap<String, BTreeSet<BTreeSet<String>>>,
    block_line: usize,
    /// The line of the block being replayed (1 is the first), for messages.
    step: usize,
    room: String,
    /// The audience count each socket was last told.
    counts: HashMap<String, u64>,
}

fn person_of(who: &str) -> &str {
    who.trim_end_matches('\'')
}

impl<'a> Replay<'a> {
    async fn new(
        server: &'a TestServer,
        setup: &Setup,
        doc_ids: &HashMap<String, String>,
        shapes: &'a mut HashMap<String, BTreeSet<BTreeSet<String>>>,
        block_line: usize,
    ) -> Replay<'a> {
        let title = setup.room.as_deref().unwrap_or("Friday jam");
        let mut body = json!({ "title": title });
        if let Some(max) = setup.max_stage {
            body["max_stage"] = json!(max);
        }
        let room = server
            .op(reqwest::Method::POST, "/api/v1/rooms", Some(body))
            .await
            .expect(201)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let default_cast = [
            ("Ada", "moderator"),
            ("Sam", "speaker"),
            ("Lee", "listener"),
            ("Bo", "listener"),
        ]
        .map(|(n, r)| (n.to_owned(), r.to_owned()))
        .to_vec();
        let cast = setup.cast.clone().unwrap_or(default_cast);
        let mut replay = Replay {
            server,
            signal_url: String::new(),
            people: HashMap::new(),
            sockets: BTreeMap::new(),
            ids: HashMap::new(),
            shapes,
            block_line,
            step: 0,
            room: room.clone(),
            counts: HashMap::new(),
        };
        for (name, role) in cast.iter().chain(&setup.absent) {
            // `listener/broadcast`: a listener who came through a broadcast invite.
            let (role, delivery) = role.split_once('/').unwrap_or((role, "webrtc"));
            let invite = server
                .create_invite(&room, role, json!({ "delivery": delivery }))
                .await;
            let joined = server
                .join(invite["code"].as_str().unwrap(), person_of(name))
                .await
                .expect(200);
            replay.signal_url = joined["signal_url"].as_str().unwrap().to_owned();
            replay.people.insert(
                person_of(name).to_owned(),
                Person {
                    id: joined["participant_id"].as_str().unwrap().to_owned(),
                    token: joined["token"].as_str().unwrap().to_owned(),
                    resume_token: None,
                },
            );
        }
        // The document's ids of the cast, and the ones the annotation names.
        for (doc_id, name) in doc_ids.iter().chain(setup.ids.iter().map(|(a, b)| (a, b))) {
            if let Some(person) = replay.people.get(name) {
                replay.ids.insert(doc_id.clone(), person.id.clone());
            }
        }
        for (name, _) in &cast {
            let token = replay.people[person_of(name)].token.clone();
            let ws = replay.open(name).await;
            replay.sockets.insert(name.clone(), ws);
            let welcome = replay
                .request(name, json!({"type": "join", "id": "setup", "token": token}))
                .await;
            assert_eq!(
                welcome["type"], "welcome",
                "{name} could not join: {welcome}"
            );
            if replay.counts.len() == 1 {
                // The room has told nobody a count yet: the first to come has heard of none.
                replay.counts.insert(name.clone(), 0);
            }
        }
        for (who, message) in &setup.before {
            let real = replay.real_text(who, &message.to_string());
            let answer = replay
                .request(who, serde_json::from_str(&real).unwrap())
                .await;
            assert_eq!(
                answer["type"], "ok",
                "protocol.md:{block_line}: setup {who}: {message} → {answer}"
            );
        }
        replay.quiesce().await;
        replay
    }

    /// Ends the room through the REST API; every socket in it is closed.
    async fn end_room(&mut self) {
        self.server
            .op(
                reqwest::Method::DELETE,
                &format!("/api/v1/rooms/{}", self.room),
                None,
            )
            .await
            .expect(204);
        let joined: Vec<String> = self.counts.keys().cloned().collect();
        for name in joined {
            self.sockets.remove(&name);
        }
    }

    async fn open(&self, who: &str) -> Ws {
        let (ws, _) = connect_async(self.signal_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("{who}: websocket: {e}"));
        ws
    }

    /// Sends a message with id `setup` and reads until its answer, which it returns.
    async fn request(&mut self, who: &str, mut message: Value) -> Value {
        message["id"] = json!("setup");
        self.send(who, Frame::Text(message.to_string())).await;
        loop {
            let got = self.next_json(who).await;
            if got["id"] == "setup" {
                return got;
            }
        }
    }

    /// Every socket's events so far are read and dropped, and the coalesced audience count
    /// has reached everyone (else it would arrive, or not, in the middle of the block).
    async fn quiesce(&mut self) {
        // Sockets the setup closed (a removal, a ban) are read to their end and forgotten.
        let names: Vec<String> = self.sockets.keys().cloned().collect();
        let mut open = Vec::new();
        for name in names {
            let ws = self.sockets.get_mut(&name).unwrap();
            if ws.send(Message::text(PROBE)).await.is_err() {
                self.sockets.remove(&name);
                continue;
            }
            loop {
                match self.next_frame(&name).await {
                    Ok(text) => {
                        let value: Value = serde_json::from_str(&text).unwrap();
                        self.learn(&name, &value);
                        if value["id"] == "probe" {
                            open.push(name);
                            break;
                        }
                    }
                    Err(_) => {
                        self.sockets.remove(&name);
                        break;
                    }
                }
            }
        }
        let names = open;
        if names.is_empty() {
            return;
        }
        let people = self
            .server
            .op(
                reqwest::Method::GET,
                &format!("/api/v1/rooms/{}/participants?limit=200", self.room),
                None,
            )
            .await
            .expect(200);
        let audience = people["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["on_stage"] == false)
            .count() as u64;
        for name in &names {
            while self.counts.get(name).copied().unwrap_or(0) != audience {
                self.next_json(name).await;
            }
        }
    }

    async fn send(&mut self, who: &str, frame: Frame) {
        let message = match frame {
            Frame::Text(text) => Message::text(text),
            Frame::Binary(bytes) => Message::binary(bytes),
        };
        let ws = self.sockets.get_mut(who).expect("socket");
        match ws.send(message).await {
            Ok(()) => {}
            // The server may drop the connection while a large frame is still being written
            // (that is what a 1 MiB frame is for): the next read reports the drop.
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) => {}
            Err(e) => panic!("{who}: send: {e}"),
        }
    }

    /// The next frame of a socket: `Ok(text)`, or `Err(close)` when the connection ended.
    async fn next_frame(&mut self, who: &str) -> Result<String, Option<(u16, String)>> {
        let (line, step) = (self.block_line, self.step);
        let ws = self.sockets.get_mut(who).expect("socket");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "protocol.md:{line}, line {step} of the block: {who} waited 5 s for nothing"
                    )
                });
            match frame {
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(Message::Binary(_))) => panic!("{who}: a binary frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn next_json(&mut self, who: &str) -> Value {
        match self.next_frame(who).await {
            Ok(text) => {
                let value: Value = serde_json::from_str(&text).expect("server sends JSON");
                self.learn(who, &value);
                value
            }
            Err(close) => panic!(
                "protocol.md:{}: {who}'s connection ended ({close:?})",
                self.block_line
            ),
        }
    }

    /// Keeps what later lines need (the latest resume token) and the message's shape.
    fn learn(&mut self, who: &str, value: &Value) {
        let count = match value["type"].as_str() {
            Some("audience_count") => value["count"].as_u64(),
            Some("welcome") => value["snapshot"]["audience_count"].as_u64(),
            _ => None,
        };
        if let Some(count) = count {
            self.counts.insert(who.to_owned(), count);
        }
        if let Some(token) = value["resume_token"].as_str()
            && let Some(person) = self.people.get_mut(person_of(who))
        {
            person.resume_token = Some(token.to_owned());
        }
        if let Some(kind) = value["type"].as_str() {
            self.shapes
                .entry(kind.to_owned())
                .or_default()
                .insert(shape(value));
        }
    }

    /// A `→` line's text with the document's tokens and ids replaced by the real ones.
    fn real_text(&self, who: &str, text: &str) -> String {
        let Ok(mut value) = serde_json::from_str::<Value>(text) else {
            return text.to_owned();
        };
        let person = self.people.get(person_of(who));
        fn walk(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
            match v {
                Value::String(s) => {
                    if let Some(real) = f(s) {
                        *s = real;
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|v| walk(v, f)),
                Value::Object(o) => o.values_mut().for_each(|v| walk(v, f)),
                _ => {}
            }
        }
        walk(&mut value, &|s| {
            if s.starts_with("st1.") && s.ends_with('…') {
                return person.map(|p| p.token.clone());
            }
            if s.starts_with("rs1.") && s.ends_with('…') {
                return person.and_then(|p| p.resume_token.clone());
            }
            self.ids.get(s).cloned()
        });
        value.to_string()
    }

    async fn run(&mut self, steps: &[Step], setup: &Setup) {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for (n, step) in steps.iter().enumerate() {
            self.step = n + 1;
            if let Some((secs, at)) = setup.advance
                && at == n + 1
            {
                self.server.clock.advance(Duration::from_secs(secs));
            }
            if setup.end_room == Some(n + 1) {
                self.end_room().await;
            }
            match step {
                Step::Send { who, frame } => {
                    seen.insert(who.clone());
                    if !self.sockets.contains_key(who) {
                        let ws = self.open(who).await;
                        self.sockets.insert(who.clone(), ws);
                    }
                    let frame = match frame {
                        Frame::Text(text) => Frame::Text(self.real_text(who, text)),
                        Frame::Binary(bytes) => Frame::Binary(bytes.clone()),
                    };
                    self.send(who, frame).await;
                }
                Step::Receive {
                    who,
                    message,
                    partial,
                } => {
                    seen.insert(who.clone());
                    self.expect(who, message, *partial).await;
                }
                Step::Closed { who, frame } => {
                    let first = seen.insert(who.clone());
                    if first && frame.is_none() {
                        // The client cuts its connection.
                        self.sockets.remove(who);
                        continue;
                    }
                    self.expect_close(who, frame.clone()).await;
                }
            }
        }
        // Nothing more than the document shows reached the sockets it shows.
        for who in seen {
            if !self.sockets.contains_key(&who) {
                continue;
            }
            self.send(&who, Frame::Text(PROBE.into())).await;
            loop {
                let got = self.next_json(&who).await;
                if got["id"] == "probe" {
                    break;
                }
                assert_eq!(
                    got["type"], "audience_count",
                    "protocol.md:{}: {who} also received {got}, which the document does not show",
                    self.block_line
                );
            }
        }
    }

    async fn expect(&mut self, who: &str, expected: &Value, partial: bool) {
        loop {
            let frame = self.next_frame(who).await;
            let got = match frame {
                Ok(text) => serde_json::from_str::<Value>(&text).expect("JSON"),
                Err(close) => panic!(
                    "protocol.md:{}: {who} expected {expected}, the connection ended ({close:?})",
                    self.block_line
                ),
            };
            self.learn(who, &got);
            let mut ids = self.ids.clone();
            let compared = if partial {
                // Only the fields shown.
                let mut shown = got.clone();
                if let (Value::Object(shown), Value::Object(doc)) = (&mut shown, expected) {
                    shown.retain(|k, _| doc.contains_key(k));
                }
                shown
            } else {
                got.clone()
            };
            match unify(expected, &compared, "", &mut ids) {
                Ok(()) => {
                    self.ids = ids;
                    return;
                }
                // A coalesced count the document does not show.
                Err(_) if got["type"] == "audience_count" => continue,
                Err(why) => panic!(
                    "protocol.md:{}: {who} expected\n  {expected}\nreceived\n  {got}\n{why}",
                    self.block_line
                ),
            }
        }
    }

    async fn expect_close(&mut self, who: &str, expected: Option<(u16, String)>) {
        loop {
            match self.next_frame(who).await {
                Ok(text) if text.contains("\"audience_count\"") => continue,
                Ok(text) => panic!(
                    "protocol.md:{}: {who} expected the connection to end ({expected:?}), received {text}",
                    self.block_line
                ),
                Err(close) => {
                    assert_eq!(
                        close, expected,
                        "protocol.md:{}: {who}'s connection ended otherwise",
                        self.block_line
                    );
                    self.sockets.remove(who);
                    return;
                }
            }
        }
    }
}

fn is_doc_id(s: &str) -> bool {
    let Some((prefix, rest)) = s.split_once('_') else {
        return false;
    };
    matches!(prefix, "pt" | "rm") && rest.len() == 16
}

/// Compares a document message with a received one (see the module doc for the rules).
fn unify(
    doc: &Value,
    got: &Value,
    path: &str,
    ids: &mut HashMap<String, String>,
) -> Result<(), String> {
    match (doc, got) {
        (Value::Object(d), Value::Object(g)) => {
            let dk: BTreeSet<&String> = d.keys().collect();
            let gk: BTreeSet<&String> = g.keys().collect();
            if dk != gk {
                return Err(format!(
                    "at {path:?}: fields differ: document {dk:?}, server {gk:?}"
                ));
            }
            for (k, v) in d {
                let sub = format!("{path}.{k}");
                if k == "seq" && v.is_u64() && g[k].is_u64() {
                    continue;
                }
                unify(v, &g[k], &sub, ids)?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(g)) if path.ends_with("participants") => {
            // Audience lists are in participant-id order, and the replay's ids are not the
            // document's: any order of the same people, as long as it is the server's.
            let sorted = g
                .windows(2)
                .all(|w| w[0]["id"].as_str() < w[1]["id"].as_str());
            if !sorted || d.len() != g.len() {
                return Err(format!(
                    "at {path:?}: not the document's people in id order"
                ));
            }
            let mut unused: Vec<&Value> = g.iter().collect();
            for (i, d) in d.iter().enumerate() {
                let found = unused.iter().position(|g| {
                    let mut trial = ids.clone();
                    unify(d, g, "", &mut trial).is_ok()
                });
                let Some(at) = found else {
                    return Err(format!("at {path:?}[{i}]: nobody received is {d}"));
                };
                unify(d, unused.remove(at), &format!("{path}[{i}]"), ids)?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(g)) => {
            if d.len() != g.len() {
                return Err(format!(
                    "at {path:?}: {} items in the document, {} received",
                    d.len(),
                    g.len()
                ));
            }
            for (i, (d, g)) in d.iter().zip(g).enumerate() {
                unify(d, g, &format!("{path}[{i}]"), ids)?;
            }
            Ok(())
        }
        (Value::String(d), Value::String(g)) => {
            if let Some((head, tail)) = d.split_once('…') {
                if g.starts_with(head) && g.ends_with(tail) {
                    return Ok(());
                }
                return Err(format!("at {path:?}: {g:?} is not {d:?}"));
            }
            if is_doc_id(d) && is_doc_id(g) && d[..3] == g[..3] {
                return match ids.get(d) {
                    Some(real) if real == g => Ok(()),
                    Some(real) => Err(format!(
                        "at {path:?}: {d} stands for {real} here, received {g}"
                    )),
                    None => {
                        ids.insert(d.clone(), g.clone());
                        Ok(())
                    }
                };
            }
            if d == g {
                Ok(())
            } else {
                Err(format!("at {path:?}: {g:?}, the document says {d:?}"))
            }
        }
        (d, g) if d == g => Ok(()),
        (d, g) => Err(format!("at {path:?}: {g}, the document says {d}")),
    }
}

/// The paths of a message's fields (array items merged), for comparing single examples.
fn shape(value: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: String, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    let p = format!("{path}.{k}");
                    out.insert(p.clone());
                    walk(v, p, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, format!("{path}[]"), out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(value, String::new(), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transcript_in_protocol_md_replays_against_the_server() {
    let doc = document();
    let doc_ids = cast_tables(&doc);
    let blocks = blocks(&doc);
    assert!(blocks.len() > 40, "only {} transcripts found", blocks.len());
    // Every replay comment belongs to a transcript (one that lost its block would do nothing).
    let comments = doc.matches("<!-- replay").count();
    let used = blocks.iter().filter(|b| b.setup.annotated).count();
    assert_eq!(
        comments, used,
        "a `<!-- replay` comment is not right above a transcript"
    );
    let server = TestServer::start().await;
    let mut shapes = HashMap::new();
    let (mut replayed, mut skipped, mut examples) = (0, Vec::new(), Vec::new());
    for block in &blocks {
        if let Some(reason) = &block.skip {
            skipped.push(format!("protocol.md:{}: {reason}", block.line));
            continue;
        }
        if !block.steps.iter().any(|s| matches!(s, Step::Send { .. })) {
            examples.push(block);
            continue;
        }
        let started = std::time::Instant::now();
        let mut replay =
            Replay::new(&server, &block.setup, &doc_ids, &mut shapes, block.line).await;
        println!(
            "protocol.md:{} set up in {:?}",
            block.line,
            started.elapsed()
        );
        replay.run(&block.steps, &block.setup).await;
        println!(
            "protocol.md:{} replayed in {:?}",
            block.line,
            started.elapsed()
        );
        replayed += 1;
    }
    // Single-message examples: a message of that type with those fields was received.
    for block in examples {
        for step in &block.steps {
            let Step::Receive {
                message,
                partial: false,
                ..
            } = step
            else {
                continue;
            };
            let kind = message["type"].as_str().unwrap_or_default();
            let known = shapes.get(kind).cloned().unwrap_or_default();
            assert!(
                known.contains(&shape(message)),
                "protocol.md:{}: no `{kind}` received in the replay had the fields of {message}; \
                 received: {known:?}",
                block.line
            );
        }
    }
    println!("replayed {replayed} transcripts; skipped:");
    for s in &skipped {
        println!("  {s}");
    }
    server.stop().await;
}
