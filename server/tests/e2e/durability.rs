//! Durability: a `stoa serve` process killed with SIGKILL at a random moment loses nothing it
//! acknowledged and leaves nothing corrupt. Writers run concurrently — rooms, invites,
//! redemptions, bans, revocations, room ends, and moderation of people connected over signaling
//! (whose audit lines the live room writes) — and the server is killed mid-stream, many times.
//! After every kill SQLite's integrity check runs on the real database file; after every
//! restart every acknowledged write is checked through the API, including its audit event.
//!
//! The run follows a seed (printed; set `STOA_DURABILITY_SEED` to repeat its choices, though
//! not the exact kill instants) and `STOA_DURABILITY_ROUNDS` rounds (30 by default).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use crate::common;

const DEFAULT_ROUNDS: usize = 30;

/// Joins are rate-limited per address and every writer comes from 127.0.0.1.
const CONFIG: &str = "[limits]\njoins_per_minute = 1000000\njoin_burst = 1000000\n\
                      [signal]\nmax_sockets_per_address = 100000\n";

struct Server {
    child: Child,
    url: String,
    key: String,
}

fn start(data: &Path, config: &Path) -> Server {
    let served = common::serve_with_args(
        data,
        false,
        "error",
        &[OsStr::new("--config"), config.as_os_str()],
    );
    assert!(served.link.is_none(), "--no-demo still printed a demo link");
    let key = std::fs::read_to_string(data.join("operator.key"))
        .unwrap()
        .trim()
        .to_owned();
    Server {
        child: served.child,
        url: served.url,
        key,
    }
}

#[derive(Clone, Debug)]
struct RoomAck {
    title: String,
    /// The end was acknowledged.
    ended: bool,
    /// An end was sent (acknowledged or not): the room may be ended.
    end_sent: bool,
}

#[derive(Clone, Debug)]
struct InviteAck {
    room: String,
    code: String,
    role: String,
    label: Option<String>,
    max_uses: Option<u64>,
    /// Redemptions acknowledged, and redemptions sent (acknowledged or not).
    redeemed: u64,
    redeem_sent: u64,
    revoked: bool,
    revoke_sent: bool,
}

#[derive(Clone, Debug)]
struct BanAck {
    room: String,
    participant: String,
    identity: String,
    /// The invite the banned identity came through, to try coming back with it.
    invite: String,
}

/// Everything the server acknowledged, plus what was sent without an answer where that
/// bounds what may be there.
#[derive(Clone, Debug, Default)]
struct Acked {
    rooms: HashMap<String, RoomAck>,
    invites: HashMap<String, InviteAck>,
    bans: Vec<BanAck>,
    /// Moderation of a connected participant, answered by the live room: (room, action, target).
    moderation: Vec<(String, String, String)>,
    /// Server errors (5xx): never acceptable, killed or not.
    server_errors: Vec<String>,
}

/// A small deterministic generator, so a failing run's choices can be repeated from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Why a write did not go through: the server is gone (stop writing) or it refused (go on).
enum Failed {
    Gone,
    Refused,
}

struct Writer {
    http: reqwest::Client,
    url: String,
    key: String,
    acked: Arc<Mutex<Acked>>,
    rng: Rng,
}

impl Writer {
    /// Sends a request; the JSON answer if it was a success.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        operator: bool,
        body: Option<Value>,
    ) -> Result<Value, Failed> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if operator {
            request = request.bearer_auth(&self.key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.map_err(|_| Failed::Gone)?;
        let status = answer.status();
        // The body is part of the acknowledgement: a write counts once it was read whole.
        let text = answer.text().await.map_err(|_| Failed::Gone)?;
        if status.is_server_error() {
            self.acked
                .lock()
                .unwrap()
                .server_errors
                .push(format!("{path}: {status} {text}"));
            return Err(Failed::Refused);
        }
        if !status.is_success() {
            return Err(Failed::Refused);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn pick_room(&mut self) -> Option<String> {
        let a = self.acked.lock().unwrap();
        let mut rooms: Vec<&String> = a.rooms.keys().collect();
        rooms.sort();
        (!rooms.is_empty()).then(|| rooms[self.rng.below(rooms.len())].clone())
    }

    fn pick_invite(&mut self) -> Option<(String, InviteAck)> {
        let a = self.acked.lock().unwrap();
        let mut ids: Vec<&String> = a.invites.keys().collect();
        ids.sort();
        (!ids.is_empty()).then(|| {
            let id = ids[self.rng.below(ids.len())].clone();
            (id.clone(), a.invites[&id].clone())
        })
    }

    async fn create_room(&mut self) -> Result<(), Failed> {
        let title = format!("room {}", self.rng.next() % 100_000);
        let room = self
            .call(
                reqwest::Method::POST,
                "/api/v1/rooms",
                true,
                Some(json!({ "title": title })),
            )
            .await?;
        self.acked.lock().unwrap().rooms.insert(
            room["id"].as_str().unwrap().to_owned(),
            RoomAck {
                title,
                ended: false,
                end_sent: false,
            },
        );
        Ok(())
    }

    async fn create_invite(&mut self, room: &str, role: &str) -> Result<String, Failed> {
        let label = self
            .rng
            .next()
            .is_multiple_of(2)
            .then(|| format!("label {}", self.rng.next() % 1000));
        let max_uses = self
            .rng
            .next()
            .is_multiple_of(3)
            .then(|| 1 + self.rng.next() % 4);
        let invite = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room}/invites"),
                true,
                Some(json!({ "role": role, "label": label, "max_uses": max_uses })),
            )
            .await?;
        let id = invite["id"].as_str().unwrap().to_owned();
        self.acked.lock().unwrap().invites.insert(
            id.clone(),
            InviteAck {
                room: room.to_owned(),
                code: invite["code"].as_str().unwrap().to_owned(),
                role: role.to_owned(),
                label,
                max_uses,
                redeemed: 0,
                redeem_sent: 0,
                revoked: false,
                revoke_sent: false,
            },
        );
        Ok(id)
    }

    /// Redeems an invite (with a fresh identity, so it can be banned later).
    async fn redeem(&mut self, invite: &str, code: &str) -> Result<(Value, String), Failed> {
        let identity = format!("durability-identity-{:016x}", self.rng.next());
        if let Some(i) = self.acked.lock().unwrap().invites.get_mut(invite) {
            i.redeem_sent += 1;
        }
        let joined = self
            .call(
                reqwest::Method::POST,
                "/api/v1/join",
                false,
                Some(json!({ "invite": code, "display_name": "guest", "identity": identity })),
            )
            .await?;
        if let Some(i) = self.acked.lock().unwrap().invites.get_mut(invite) {
            i.redeemed += 1;
        }
        Ok((joined, identity))
    }

    async fn ban(&mut self, invite: &str, i: &InviteAck) -> Result<(), Failed> {
        let (joined, identity) = self.redeem(invite, &i.code).await?;
        let participant = joined["participant_id"].as_str().unwrap().to_owned();
        self.call(
            reqwest::Method::DELETE,
            &format!(
                "/api/v1/rooms/{}/participants/{participant}?ban=true",
                i.room
            ),
            true,
            None,
        )
        .await?;
        self.acked.lock().unwrap().bans.push(BanAck {
            room: i.room.clone(),
            participant,
            identity,
            invite: invite.to_owned(),
        });
        Ok(())
    }

    async fn revoke(&mut self, invite: &str, room: &str) -> Result<(), Failed> {
        if let Some(i) = self.acked.lock().unwrap().invites.get_mut(invite) {
            i.revoke_sent = true;
        }
        self.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/{room}/invites/{invite}"),
            true,
            None,
        )
        .await?;
        if let Some(i) = self.acked.lock().unwrap().invites.get_mut(invite) {
            i.revoked = true;
        }
        Ok(())
    }

    async fn end_room(&mut self, room: &str) -> Result<(), Failed> {
        // One end per room: two ends of a live room racing each other is a concurrency
        // question (tracked separately), not a durability one.
        match self.acked.lock().unwrap().rooms.get_mut(room) {
            Some(r) if !r.end_sent => r.end_sent = true,
            _ => return Ok(()),
        }
        self.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/{room}"),
            true,
            None,
        )
        .await?;
        if let Some(r) = self.acked.lock().unwrap().rooms.get_mut(room) {
            r.ended = true;
        }
        Ok(())
    }

    /// Someone joins over signaling; the operator moderates them through the REST API, which
    /// the live room answers after writing its audit line (and, for a ban, the ban).
    async fn moderate_live(&mut self, room: &str) -> Result<(), Failed> {
        let invite = self.create_invite(room, "listener").await?;
        let code = self.acked.lock().unwrap().invites[&invite].code.clone();
        let (joined, identity) = self.redeem(&invite, &code).await?;
        let participant = joined["participant_id"].as_str().unwrap().to_owned();
        let (mut ws, _) = connect_async(joined["signal_url"].as_str().unwrap())
            .await
            .map_err(|_| Failed::Gone)?;
        ws.send(Message::Text(
            json!({ "type": "join", "token": joined["token"] })
                .to_string()
                .into(),
        ))
        .await
        .map_err(|_| Failed::Gone)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let m: Value = serde_json::from_str(text.as_str()).unwrap();
                    if m["type"] == "welcome" {
                        break;
                    }
                    if m["type"] == "error" || m["type"] == "closed" {
                        return Err(Failed::Refused);
                    }
                }
                Some(Ok(_)) => {}
                _ => return Err(Failed::Gone),
            }
        }
        let base = format!("/api/v1/rooms/{room}/participants/{participant}");
        let (method, path, body, action) = match self.rng.below(4) {
            0 => (
                reqwest::Method::POST,
                format!("{base}/role"),
                Some(json!({ "role": "speaker" })),
                "participant.invited_to_stage",
            ),
            1 => (
                reqwest::Method::POST,
                format!("{base}/role"),
                Some(json!({ "role": "moderator" })),
                "participant.promoted",
            ),
            2 => (
                reqwest::Method::DELETE,
                base.clone(),
                None,
                "participant.removed",
            ),
            _ => (
                reqwest::Method::DELETE,
                format!("{base}?ban=true"),
                None,
                "participant.banned",
            ),
        };
        self.call(method, &path, true, body).await?;
        let mut a = self.acked.lock().unwrap();
        a.moderation
            .push((room.to_owned(), action.to_owned(), participant.clone()));
        if action == "participant.banned" {
            a.bans.push(BanAck {
                room: room.to_owned(),
                participant,
                identity,
                invite,
            });
        }
        drop(a);
        drop(ws);
        Ok(())
    }

    /// Writes until the server dies under it.
    async fn run(mut self) {
        loop {
            let room = self.pick_room();
            let invite = self.pick_invite();
            let result = match (self.rng.below(100), room, invite) {
                (_, None, _) | (0..10, _, _) => self.create_room().await,
                (10..30, Some(room), _) | (_, Some(room), None) => {
                    let role = ["listener", "speaker", "moderator"][self.rng.below(3)];
                    self.create_invite(&room, role).await.map(|_| ())
                }
                (30..55, _, Some((id, i))) => self.redeem(&id, &i.code).await.map(|_| ()),
                (55..70, _, Some((id, i))) => self.ban(&id, &i).await,
                (70..78, _, Some((id, i))) => self.revoke(&id, &i.room).await,
                (78..82, Some(room), _) => self.end_room(&room).await,
                (_, Some(room), _) => self.moderate_live(&room).await,
            };
            if let Err(Failed::Gone) = result {
                // The server died: whatever was not acknowledged may or may not be there.
                return;
            }
        }
    }
}

async fn get_all(http: &reqwest::Client, server: &Server, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{}{path}", server.url))
            .query(&[("limit", "200")])
            .bearer_auth(&server.key);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "GET {path}");
        let page: Value = answer.json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// Every acknowledged write is there, with its audit event; counts are consistent.
async fn verify(server: &Server, acked: &Acked, http: &reqwest::Client) {
    assert!(
        acked.server_errors.is_empty(),
        "the server answered 5xx: {:?}",
        acked.server_errors
    );
    let rooms: HashMap<String, Value> = get_all(http, server, "/api/v1/rooms")
        .await
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect();
    for (id, ack) in &acked.rooms {
        let room = rooms
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged room {id} lost"));
        assert_eq!(room["title"], ack.title.as_str(), "room {id} title");
        if ack.ended {
            assert!(!room["ended_at"].is_null(), "acknowledged end of {id} lost");
        }
        if !ack.end_sent {
            assert!(
                room["ended_at"].is_null(),
                "room {id} ended without being asked"
            );
        }
        let events = get_all(http, server, &format!("/api/v1/rooms/{id}/events")).await;
        let count = |action: &str, target: Option<&str>| {
            events
                .iter()
                .filter(|e| {
                    e["action"] == action && target.is_none_or(|t| e["target"].as_str() == Some(t))
                })
                .count()
        };
        for e in &events {
            assert!(
                e["detail"].is_object(),
                "audit event with a bad detail: {e}"
            );
        }
        assert_eq!(count("room.created", None), 1, "room.created of {id}");
        if ack.ended {
            assert_eq!(count("room.ended", None), 1, "room.ended of {id}");
        }
        let invites: HashMap<String, Value> =
            get_all(http, server, &format!("/api/v1/rooms/{id}/invites"))
                .await
                .into_iter()
                .map(|i| (i["id"].as_str().unwrap().to_owned(), i))
                .collect();
        for (invite_id, i) in acked.invites.iter().filter(|(_, i)| &i.room == id) {
            let listed = invites
                .get(invite_id)
                .unwrap_or_else(|| panic!("acknowledged invite {invite_id} lost"));
            assert_eq!(listed["role"], i.role.as_str(), "{invite_id} role");
            assert_eq!(listed["label"], json!(i.label), "{invite_id} label");
            assert_eq!(
                listed["max_uses"],
                json!(i.max_uses),
                "{invite_id} max_uses"
            );
            let uses = listed["uses"].as_u64().unwrap();
            assert!(
                (i.redeemed..=i.redeem_sent).contains(&uses),
                "{invite_id}: {uses} uses, {} acknowledged of {} sent",
                i.redeemed,
                i.redeem_sent
            );
            if let Some(max) = i.max_uses {
                assert!(uses <= max, "{invite_id}: {uses} uses over max_uses {max}");
            }
            let revoked = listed["revoked"].as_bool().unwrap();
            assert!(
                !i.revoked || revoked,
                "acknowledged revocation of {invite_id} lost"
            );
            assert_eq!(count("invite.created", Some(invite_id)), 1, "{invite_id}");
            // A use and its audit line are one transaction: never one without the other.
            assert_eq!(
                count("invite.redeemed", Some(invite_id)) as u64,
                uses,
                "{invite_id}: invite.redeemed events vs uses"
            );
            if i.revoked {
                assert!(count("invite.revoked", Some(invite_id)) >= 1, "{invite_id}");
            }
        }
        for (_, action, target) in acked.moderation.iter().filter(|(r, _, _)| r == id) {
            assert!(
                count(action, Some(target)) >= 1,
                "acknowledged {action} of {target} in {id} has no audit event"
            );
        }
        for ban in acked.bans.iter().filter(|b| &b.room == id) {
            assert!(
                count("participant.banned", Some(&ban.participant)) >= 1,
                "acknowledged ban of {} has no audit event",
                ban.participant
            );
        }
    }
    // A banned identity cannot come back, where its invite could still let anyone in.
    for ban in &acked.bans {
        let invite = &acked.invites[&ban.invite];
        if invite.revoke_sent || acked.rooms[&ban.room].end_sent {
            continue;
        }
        let answer = http
            .post(format!("{}/api/v1/join", server.url))
            .json(&json!({ "invite": invite.code, "display_name": "troll", "identity": ban.identity }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::FORBIDDEN,
            "acknowledged ban of {} lost",
            ban.participant
        );
    }
}

/// SQLite's own check of the database file the killed server left behind.
async fn integrity_check(data: &Path) {
    let store = stoa::control::Store::open(&data.join("stoa.db")).unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {value}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let seed = env_number("STOA_DURABILITY_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let rounds = env_number("STOA_DURABILITY_ROUNDS").map_or(DEFAULT_ROUNDS, |n| n as usize);
    eprintln!("durability seed {seed}, {rounds} rounds (repeat with STOA_DURABILITY_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("durability.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let http = stoa::http_client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let mut server = start(&data, &config);
        let so_far = acked.lock().unwrap().clone();
        verify(&server, &so_far, &http).await;
        let writers: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(
                    Writer {
                        http: http.clone(),
                        url: server.url.clone(),
                        key: server.key.clone(),
                        acked: acked.clone(),
                        rng: Rng(rng.next() | 1),
                    }
                    .run(),
                )
            })
            .collect();
        let delay = Duration::from_millis(20 + rng.next() % 380);
        tokio::time::sleep(delay).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        integrity_check(&data).await;
        let a = acked.lock().unwrap();
        eprintln!(
            "round {round}: killed after {} ms; {} rooms, {} invites, {} bans, {} live moderations acknowledged so far",
            delay.as_millis(),
            a.rooms.len(),
            a.invites.len(),
            a.bans.len(),
            a.moderation.len()
        );
    }
    let server = start(&data, &config);
    let so_far = acked.lock().unwrap().clone();
    verify(&server, &so_far, &http).await;
    let mut child = server.child;
    child.kill().unwrap();
    child.wait().unwrap();
    integrity_check(&data).await;
    let redemptions: u64 = so_far.invites.values().map(|i| i.redeemed).sum();
    let actions: HashSet<&str> = so_far
        .moderation
        .iter()
        .map(|(_, a, _)| a.as_str())
        .collect();
    eprintln!(
        "acknowledged over {rounds} kills in {:.1} s: {} rooms ({} ended), {} invites ({} revoked), {redemptions} redemptions, {} bans, {} live moderations {actions:?}",
        started.elapsed().as_secs_f64(),
        so_far.rooms.len(),
        so_far.rooms.values().filter(|r| r.ended).count(),
        so_far.invites.len(),
        so_far.invites.values().filter(|i| i.revoked).count(),
        so_far.bans.len(),
        so_far.moderation.len(),
    );
    assert!(
        !so_far.rooms.is_empty()
            && redemptions > 0
            && !so_far.bans.is_empty()
            && so_far.invites.values().any(|i| i.revoked)
            && so_far.rooms.values().any(|r| r.ended)
            && !so_far.moderation.is_empty(),
        "the writers did not exercise every kind of write"
    );
}
