//! Durability: a `stoa serve` process killed with SIGKILL at a random moment loses nothing it
//! acknowledged. Writes (rooms, invites, redemptions, bans) run concurrently; after each kill
//! the server restarts on the same folder and every acknowledged write must be there, and
//! SQLite's integrity check must pass.

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

mod common;

const ROUNDS: usize = 8;

struct Server {
    child: Child,
    url: String,
    key: String,
}

fn start(data: &Path) -> Server {
    let served = common::serve(data, false, "error");
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

/// What the server acknowledged before it died.
#[derive(Clone, Default)]
struct Acked {
    rooms: Vec<String>,
    /// invite id → (room, code, acknowledged redemptions)
    invites: HashMap<String, (String, String, u64)>,
    /// (room, participant) pairs whose ban was acknowledged
    bans: Vec<(String, String, String)>,
}

/// A small deterministic generator, so a failing run can be repeated from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn writer(
    http: reqwest::Client,
    url: String,
    key: String,
    acked: Arc<Mutex<Acked>>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    loop {
        let pick = rng.next() % 4;
        let (room, invite) = {
            let a = acked.lock().unwrap();
            let room = (!a.rooms.is_empty())
                .then(|| a.rooms[(rng.next() as usize) % a.rooms.len()].clone());
            let invite = (!a.invites.is_empty()).then(|| {
                let ids: Vec<_> = a.invites.keys().cloned().collect();
                let id = ids[(rng.next() as usize) % ids.len()].clone();
                (id.clone(), a.invites[&id].clone())
            });
            (room, invite)
        };
        let result: Result<(), reqwest::Error> = async {
            match (pick, room, invite) {
                (0, _, _) | (_, None, _) => {
                    let r: Value = http
                        .post(format!("{url}/api/v1/rooms"))
                        .bearer_auth(&key)
                        .json(&json!({ "title": format!("room {}", rng.next() % 1000) }))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    acked.lock().unwrap().rooms.push(r["id"].as_str().unwrap().to_owned());
                }
                (1, Some(room), _) | (_, Some(room), None) => {
                    let r: Value = http
                        .post(format!("{url}/api/v1/rooms/{room}/invites"))
                        .bearer_auth(&key)
                        .json(&json!({ "role": "listener" }))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let code = r["code"].as_str().unwrap().to_owned();
                    acked
                        .lock()
                        .unwrap()
                        .invites
                        .insert(r["id"].as_str().unwrap().to_owned(), (room, code, 0));
                }
                (2, _, Some((id, (_, code, _)))) => {
                    http.post(format!("{url}/api/v1/join"))
                        .json(&json!({ "invite": code, "display_name": "guest" }))
                        .send()
                        .await?
                        .error_for_status()?;
                    if let Some(entry) = acked.lock().unwrap().invites.get_mut(&id) {
                        entry.2 += 1;
                    }
                }
                (_, _, Some((_, (room, code, _)))) => {
                    let identity = format!("durability-identity-{:016x}", rng.next());
                    let joined: Value = http
                        .post(format!("{url}/api/v1/join"))
                        .json(&json!({ "invite": code, "display_name": "troll", "identity": identity }))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let pid = joined["participant_id"].as_str().unwrap().to_owned();
                    http.delete(format!("{url}/api/v1/rooms/{room}/participants/{pid}?ban=true"))
                        .bearer_auth(&key)
                        .send()
                        .await?
                        .error_for_status()?;
                    acked.lock().unwrap().bans.push((room, code, identity));
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // The server died under us: whatever was not acknowledged may or may not be there.
            return;
        }
    }
}

async fn verify(server: &Server, acked: &Acked, http: &reqwest::Client) {
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{}/api/v1/rooms?limit=200", server.url))
            .bearer_auth(&server.key);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let page: Value = req.send().await.unwrap().json().await.unwrap();
        listed.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    for room in &acked.rooms {
        assert!(listed.contains(room), "acknowledged room {room} lost");
    }
    let mut by_room: HashMap<&str, Vec<Value>> = HashMap::new();
    for (id, (room, _, uses)) in &acked.invites {
        let invites = match by_room.get(room.as_str()) {
            Some(v) => v.clone(),
            None => {
                let page: Value = http
                    .get(format!(
                        "{}/api/v1/rooms/{room}/invites?limit=200",
                        server.url
                    ))
                    .bearer_auth(&server.key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let items = page["items"].as_array().unwrap().clone();
                by_room.insert(room.as_str(), items.clone());
                items
            }
        };
        let found = invites.iter().find(|i| i["id"] == id.as_str());
        let found = found.unwrap_or_else(|| panic!("acknowledged invite {id} lost"));
        assert!(
            found["uses"].as_u64().unwrap() >= *uses,
            "acknowledged redemptions of {id} lost"
        );
    }
    for (_, code, identity) in &acked.bans {
        let answer = http
            .post(format!("{}/api/v1/join", server.url))
            .json(&json!({ "invite": code, "display_name": "troll", "identity": identity }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "acknowledged ban lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("durability seed {seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut total_rooms = 0;
    for _ in 0..ROUNDS {
        let mut server = start(&data);
        let so_far = acked.lock().unwrap().clone();
        verify(&server, &so_far, &http).await;
        let writers: Vec<_> = (0..4)
            .map(|i| {
                tokio::spawn(writer(
                    http.clone(),
                    server.url.clone(),
                    server.key.clone(),
                    acked.clone(),
                    rng.next() ^ i,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.next() % 400)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        total_rooms = acked.lock().unwrap().rooms.len();
    }
    let server = start(&data);
    let so_far = acked.lock().unwrap().clone();
    verify(&server, &so_far, &http).await;
    let mut child = server.child;
    child.kill().unwrap();
    child.wait().unwrap();
    let store = stoa::control::Store::open(&data.join("stoa.db")).unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    eprintln!(
        "acknowledged: {total_rooms} rooms, {} invites, {} redemptions, {} bans",
        so_far.invites.len(),
        so_far.invites.values().map(|(_, _, n)| n).sum::<u64>(),
        so_far.bans.len()
    );
    assert!(
        total_rooms > 0 && !so_far.invites.is_empty() && !so_far.bans.is_empty(),
        "the writers did not exercise every kind of write"
    );
}
