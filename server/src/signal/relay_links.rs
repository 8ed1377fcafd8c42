//! The relay links between a room's home and its edges, as both sides keep them.
//!
//! An edge that serves someone in a room grants the home a link ([`RelayLinks::take`]): it
//! opens it on its own media (`Media::accept_relay`, a number and a random nonce it picks) and
//! asks the home, on its internal API, to send the room's audio there. Both derive the link's
//! key from the cluster's secret and the grant (`media::relay::derive_key`); it never travels.
//! The edge renews every grant each heartbeat; the home drops a link not renewed within
//! `node_ttl_ms` ([`RelayLinks::sweep`]), so a killed edge stops costing it. The last person
//! in a room leaving the edge withdraws the grant at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::cluster::{CALL_HEADER, Cluster, Forwarding, NodeInfo};
use crate::control::{ParticipantId, RoomId};
use crate::media::Media;
use crate::media::relay::{InLink, OutLink, derive_key, node_tag};

/// Where an edge asks a home for a room's audio (POST) and gives it back (DELETE).
pub const GRANTS_PATH: &str = "/internal/v1/relay-links";

/// A grant, as the edge sends it to the home.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub room: RoomId,
    pub link: u32,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// The edge's worker address the home sends to.
    pub to: SocketAddr,
}

/// Why a grant was refused; each has a stable code for the internal API's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The nonce is not 32 hex digits.
    Malformed,
    /// The address is not one of the granting node's media workers.
    NotItsAddress,
    /// The link's number is taken for another room or node.
    Taken,
}

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Malformed => "invalid_grant",
            GrantError::NotItsAddress => "not_its_address",
            GrantError::Taken => "relay_link_taken",
        }
    }
}

/// Links on both sides; cheap to clone.
#[derive(Clone)]
pub struct RelayLinks {
    inner: Arc<Inner>,
}

struct Inner {
    media: Media,
    cluster: Cluster,
    forwarding: Forwarding,
    secret: [u8; 32],
    /// Edge side: per room, the link this node takes its audio on and who uses it.
    taken: Mutex<HashMap<RoomId, Arc<tokio::sync::Mutex<Taken>>>>,
    /// Edge side: the sessions of each person here, so that only the last one's end closes
    /// their media connection.
    sessions: Mutex<HashMap<(RoomId, ParticipantId), u64>>,
    /// Home side: the links edges granted, by granting node and number.
    given: Mutex<HashMap<(String, u32), Given>>,
    /// Set when this node stops or drains: its edge sessions send their people home.
    leaving: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Taken {
    link: Option<Open>,
    users: usize,
}

/// A link this edge takes a room's audio on.
struct Open {
    grant: Grant,
    home: NodeInfo,
}

struct Given {
    room: RoomId,
    renewed: Instant,
}

/// Someone served here as an edge of a room; dropping it lets the link go with the last one.
pub struct Seat {
    links: RelayLinks,
    room: RoomId,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let links = self.links.clone();
        let room = self.room.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { links.release(&room).await });
        }
    }
}

impl RelayLinks {
    pub fn new(media: Media, cluster: Cluster, forwarding: Forwarding, secret: [u8; 32]) -> Self {
        RelayLinks {
            inner: Arc::new(Inner {
                media,
                cluster,
                forwarding,
                secret,
                taken: Mutex::default(),
                sessions: Mutex::default(),
                given: Mutex::default(),
                leaving: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    pub fn media(&self) -> &Media {
        &self.inner.media
    }

    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    pub fn forwarding(&self) -> &Forwarding {
        &self.inner.forwarding
    }

    /// Whether this node takes `room`'s audio from `home` now.
    pub fn serves(&self, room: &RoomId, home: &str) -> bool {
        let taken = self.inner.taken.lock().expect("relay links poisoned");
        taken
            .get(room)
            .and_then(|t| {
                t.try_lock()
                    .ok()
                    .map(|t| t.link.as_ref().map(|o| o.home.name == home))
            })
            .flatten()
            .unwrap_or(false)
    }

    /// Flips when this node stops or drains: edge sessions send their people home.
    pub fn leaving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.leaving.subscribe()
    }

    pub fn start_leaving(&self) {
        self.inner.leaving.send_replace(true);
    }

    /// A seat in `room`, whose audio this node takes from `home`: the first one opens the
    /// link and has the home grant it; a home that changed since is granted a new one.
    pub async fn take(&self, room: &RoomId, home: &NodeInfo) -> Result<Seat, String> {
        let entry = self
            .inner
            .taken
            .lock()
            .expect("relay links poisoned")
            .entry(room.clone())
            .or_default()
            .clone();
        let mut taken = entry.lock().await;
        if taken
            .link
            .as_ref()
            .is_some_and(|open| open.home.name != home.name || open.home.instance != home.instance)
        {
            let old = taken.link.take().expect("checked");
            self.close_taken(old);
        }
        if taken.link.is_none() {
            taken.link = Some(self.open(room, home).await?);
            let rooms = vec![room.to_string()];
            self.inner.cluster.serving_as_edge(&rooms).await;
        }
        taken.users += 1;
        Ok(Seat {
            links: self.clone(),
            room: room.clone(),
        })
    }

    async fn open(&self, room: &RoomId, home: &NodeInfo) -> Result<Open, String> {
        let from: Vec<SocketAddr> = home.media.iter().filter_map(|a| a.parse().ok()).collect();
        if from.is_empty() {
            return Err(format!("node {} lists no media address", home.name));
        }
        let me = self.inner.cluster.node_name().to_owned();
        // Numbers are random: two edges of one home never need to agree on them, and a taken
        // one (on either side) is simply drawn again.
        for _ in 0..4 {
            let mut random = [0u8; 20];
            getrandom::fill(&mut random).expect("the OS random generator is unavailable");
            let link = u32::from_le_bytes(random[..4].try_into().expect("4 bytes"));
            let nonce: [u8; 16] = random[4..].try_into().expect("16 bytes");
            let key = derive_key(
                &self.inner.secret,
                room.as_str(),
                &home.name,
                &me,
                link,
                &nonce,
            );
            let inbound = InLink::new(link, node_tag(&home.name), &from, &key);
            let Ok(to) = self.inner.media.accept_relay(room, inbound) else {
                continue;
            };
            let grant = Grant {
                room: room.clone(),
                link,
                nonce: hex(&nonce),
                to,
            };
            match self.call(home, Method::POST, &grant).await {
                Ok(()) => {
                    return Ok(Open {
                        grant,
                        home: home.clone(),
                    });
                }
                Err(e) => {
                    self.inner.media.close_relay(link);
                    if e != "relay_link_taken" {
                        return Err(e);
                    }
                }
            }
        }
        Err("no free link number".into())
    }

    /// One call on the home's internal API; `Err` holds the refusal's code, or why it failed.
    async fn call(&self, home: &NodeInfo, method: Method, grant: &Grant) -> Result<(), String> {
        let body = serde_json::to_vec(grant).expect("a grant serializes");
        let header = self.inner.forwarding.sign_call(
            self.inner.cluster.node_name(),
            wall_ms(),
            &method,
            GRANTS_PATH,
            &body,
        );
        let answer = self
            .inner
            .forwarding
            .http()
            .request(method, format!("{}{GRANTS_PATH}", home.reach()))
            .header(CALL_HEADER, header)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(3))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("node {} did not answer: {e}", home.name))?;
        if answer.status().is_success() {
            return Ok(());
        }
        let problem: serde_json::Value = answer.json().await.unwrap_or_default();
        Err(problem["code"].as_str().unwrap_or("refused").to_owned())
    }

    fn close_taken(&self, old: Open) {
        self.inner.media.close_relay(old.grant.link);
        let links = self.clone();
        tokio::spawn(async move {
            let _ = links.call(&old.home, Method::DELETE, &old.grant).await;
        });
    }

    async fn release(&self, room: &RoomId) {
        let Some(entry) = self
            .inner
            .taken
            .lock()
            .expect("relay links poisoned")
            .get(room)
            .cloned()
        else {
            return;
        };
        let mut taken = entry.lock().await;
        taken.users = taken.users.saturating_sub(1);
        if taken.users > 0 {
            return;
        }
        if let Some(old) = taken.link.take() {
            self.close_taken(old);
            self.inner.cluster.no_longer_edge(room.as_str()).await;
        }
        drop(taken);
        let mut all = self.inner.taken.lock().expect("relay links poisoned");
        if let Some(entry) = all.get(room)
            && entry
                .try_lock()
                .is_ok_and(|t| t.users == 0 && t.link.is_none())
        {
            all.remove(room);
        }
    }

    /// Each heartbeat, on an edge: every grant renewed at its home, and this node's claim on
    /// each room it serves. A home that forgot a grant (it restarted) takes it anew.
    pub async fn renew(&self) {
        let entries: Vec<Arc<tokio::sync::Mutex<Taken>>> = self
            .inner
            .taken
            .lock()
            .expect("relay links poisoned")
            .values()
            .cloned()
            .collect();
        let mut rooms = Vec::new();
        for entry in entries {
            let taken = entry.lock().await;
            if let Some(open) = &taken.link {
                if let Err(e) = self.call(&open.home, Method::POST, &open.grant).await {
                    tracing::debug!(room = %open.grant.room, home = %open.home.name, error = %e, "a relay grant was not renewed");
                }
                rooms.push(open.grant.room.to_string());
            }
        }
        self.inner.cluster.serving_as_edge(&rooms).await;
    }

    /// On the home: `from` grants a link for `room` (or renews it). The room must be live
    /// here, which the caller checked.
    pub async fn grant(&self, from: &str, grant: &Grant) -> Result<(), GrantError> {
        let nonce = unhex(&grant.nonce).ok_or(GrantError::Malformed)?;
        let key = (from.to_owned(), grant.link);
        {
            let mut given = self.inner.given.lock().expect("relay links poisoned");
            if let Some(held) = given.get_mut(&key) {
                if held.room != grant.room {
                    return Err(GrantError::Taken);
                }
                held.renewed = Instant::now();
                return Ok(());
            }
        }
        // A new link: its address must be one of the granting node's workers, so that a node
        // cannot point a room's audio anywhere else.
        let node = self.inner.cluster.node(from).await.ok().flatten();
        let listed = node.is_some_and(|n| n.media.iter().any(|a| a.parse() == Ok(grant.to)));
        if !listed {
            return Err(GrantError::NotItsAddress);
        }
        let me = self.inner.cluster.node_name();
        let secret = derive_key(
            &self.inner.secret,
            grant.room.as_str(),
            me,
            from,
            grant.link,
            &nonce,
        );
        let out = OutLink::new(grant.link, grant.to, node_tag(from), &secret);
        let mut given = self.inner.given.lock().expect("relay links poisoned");
        if given.contains_key(&key) {
            return Ok(());
        }
        self.inner
            .media
            .relay_to(&grant.room, out)
            .map_err(|_| GrantError::Taken)?;
        given.insert(
            key,
            Given {
                room: grant.room.clone(),
                renewed: Instant::now(),
            },
        );
        tracing::debug!(room = %grant.room, edge = %from, link = grant.link, "relaying to an edge");
        Ok(())
    }

    /// On the home: `from` gives a link back. Whether it was held.
    pub fn withdraw(&self, from: &str, grant: &Grant) -> bool {
        let mut given = self.inner.given.lock().expect("relay links poisoned");
        let key = (from.to_owned(), grant.link);
        if given.get(&key).is_none_or(|g| g.room != grant.room) {
            return false;
        }
        given.remove(&key);
        self.inner.media.stop_relay_to(&grant.room, grant.link)
    }

    /// On the home, each heartbeat: links their edges stopped renewing (killed, cut off) are
    /// dropped.
    pub fn sweep(&self, older_than: Duration) {
        let now = Instant::now();
        let mut given = self.inner.given.lock().expect("relay links poisoned");
        given.retain(|(from, link), held| {
            let alive = now.duration_since(held.renewed) < older_than;
            if !alive {
                tracing::info!(room = %held.room, edge = %from, "an edge stopped renewing its relay link; dropped");
                self.inner.media.stop_relay_to(&held.room, *link);
            }
            alive
        });
    }

    /// How many links this node sends on (home) and takes audio on (edge).
    pub fn counts(&self) -> (usize, usize) {
        let given = self.inner.given.lock().expect("relay links poisoned").len();
        let taken = self.inner.taken.lock().expect("relay links poisoned").len();
        (given, taken)
    }

    /// Whether a session of `participant`'s was served here and its media connection is kept.
    pub fn has_session(&self, room: &RoomId, participant: &ParticipantId) -> bool {
        let sessions = self.inner.sessions.lock().expect("relay links poisoned");
        sessions.contains_key(&(room.clone(), participant.clone()))
    }

    /// `participant` is in a room that lives here now: a session of theirs served as an edge
    /// no longer closes their media connection when its grace runs out.
    pub fn forget_session(&self, room: &RoomId, participant: &ParticipantId) {
        let mut sessions = self.inner.sessions.lock().expect("relay links poisoned");
        sessions.remove(&(room.clone(), participant.clone()));
    }

    /// An edge session for `participant` began; its number, for [`RelayLinks::session_ended`].
    pub fn session_began(&self, room: &RoomId, participant: &ParticipantId) -> u64 {
        let mut sessions = self.inner.sessions.lock().expect("relay links poisoned");
        let n = sessions
            .entry((room.clone(), participant.clone()))
            .or_insert(0);
        *n += 1;
        *n
    }

    /// Session `n` of `participant` ended. Their media connection here is closed now
    /// (`at_once`: they left, were removed, or went home), or after `grace` unless another
    /// session of theirs began meanwhile (their socket dropped; they may resume here and keep
    /// it).
    pub fn session_ended(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        n: u64,
        at_once: bool,
        grace: Duration,
    ) {
        let links = self.clone();
        let (room, participant) = (room.clone(), participant.clone());
        let close = move |links: &RelayLinks| {
            let mut sessions = links.inner.sessions.lock().expect("relay links poisoned");
            let key = (room.clone(), participant.clone());
            if sessions.get(&key) == Some(&n) {
                sessions.remove(&key);
                links.inner.media.close(&room, &participant);
            }
        };
        if at_once {
            close(&links);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                close(&links);
            });
        }
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_cross_as_hex_and_nothing_else_is_taken() {
        let nonce = [0u8, 1, 2, 0xfe, 0xff, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0xab];
        assert_eq!(unhex(&hex(&nonce)), Some(nonce));
        for bad in [
            "",
            "00",
            &"0".repeat(31),
            &"0".repeat(33),
            &"g".repeat(32),
            &"é".repeat(16),
        ] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }
}
