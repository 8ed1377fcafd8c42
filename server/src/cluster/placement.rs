//! Where each live room lives: one home node per room, held as a lease in Redis.
//!
//! A lease is `{node} {epoch}` under `stoa:room:{id}`, expiring `node_ttl_ms` after its last
//! renewal. Taking a room whose lease is missing, or whose holder is no longer registered,
//! increments the room's epoch, so the new lease differs from every earlier one: a node that
//! was cut off and comes back renews with its old value, fails, and lets the room go.

use std::collections::HashMap;

use super::{Cluster, NODE_PREFIX, NodeInfo};

pub(super) const ROOM_PREFIX: &str = "stoa:room:";
const EPOCH_PREFIX: &str = "stoa:room-epoch:";

/// Whether a node accepts TCP connections at its base URL's address (within half a second):
/// a node killed moments ago is still listed until its record expires, but refuses them.
async fn answers(node_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(node_url) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// A lease this node holds: its epoch, and when it was claimed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    pub(super) epoch: u64,
    claimed: std::time::Instant,
}

impl Held {
    /// A room is claimed when someone's socket arrives, a moment before the room is live
    /// here (their join reads the store first). Through that moment, and a lease's lifetime
    /// more, the lease is renewed as if the room were live; letting it go would let another
    /// node take the room while this one starts it: one room, two homes.
    fn starting(&self, now: std::time::Instant, grace: std::time::Duration) -> bool {
        now.saturating_duration_since(self.claimed) < grace
    }

    /// A lease of `epoch` claimed now.
    pub(super) fn now(epoch: u64) -> Held {
        Held {
            epoch,
            claimed: std::time::Instant::now(),
        }
    }
}

/// A room's lease: who is home and since which placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub epoch: u64,
}

impl Lease {
    fn parse(value: &str) -> Option<Lease> {
        let (node, epoch) = value.split_once(' ')?;
        Some(Lease {
            node: node.to_owned(),
            epoch: epoch.parse().ok()?,
        })
    }

    fn value(&self) -> String {
        format!("{} {}", self.node, self.epoch)
    }
}

/// Where a room lives, from this node's point of view.
#[derive(Clone, Debug, PartialEq)]
pub enum Home {
    /// Here, under this lease.
    Here(Lease),
    /// On another node that is up.
    Elsewhere(Box<NodeInfo>, Lease),
}

/// No node is up to take a room (this one is draining and is the last).
fn no_node() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "no node that is up takes rooms (this one is draining)",
    ))
}

/// The node with the most room left (by name among equals).
pub(super) fn least_full(nodes: impl Iterator<Item = NodeInfo>) -> Option<NodeInfo> {
    nodes.min_by(|a, b| {
        a.fullness()
            .total_cmp(&b.fullness())
            .then(a.name.cmp(&b.name))
    })
}

/// Takes the room for `ARGV[1]` unless a registered node holds it; answers the lease.
const TAKE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local owner = string.match(held, '^(%S+) ')
  if owner and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return held end
end
local epoch = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. ' ' .. epoch
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value";

/// Renews each lease (KEYS[3i - 2], ARGV[i + 2]) still held as given; answers 1 or 0 for
/// each. A lease that is missing altogether (Redis restarted empty, or it expired while this
/// node was cut off and nobody took the room) is written back, with the epoch counter
/// (KEYS[3i - 1]) raised to at least its epoch, so later placements still get new epochs. The
/// room's kept state (KEYS[3i]) lives on for `ARGV[2]` ms from each renewal.
const RENEW: &str = r"
local out = {}
for i = 1, #KEYS / 3 do
  local lease, counter, state, value = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[i + 2]
  local held = redis.call('GET', lease)
  if held == value then
    redis.call('PEXPIRE', lease, ARGV[1])
    redis.call('PEXPIRE', state, ARGV[2])
    out[i] = 1
  elseif not held then
    local epoch = tonumber(string.match(value, ' (%d+)$'))
    if tonumber(redis.call('GET', counter) or '0') < epoch then
      redis.call('SET', counter, epoch)
    end
    redis.call('SET', lease, value, 'PX', ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

impl Cluster {
    /// The room's home, placing it on the least full node when it has none that is up. Used
    /// when someone redeems an invite: their socket goes to the answer's node.
    pub async fn place(&self, room: &str) -> redis::RedisResult<Home> {
        if self.draining() {
            return self.place_away(room).await;
        }
        if let Some(lease) = self.lease(room).await?
            && let Some(node) = self.node(&lease.node).await?
        {
            let home = self.home(node, lease);
            match &home {
                Home::Elsewhere(node, _) if !answers(node.reach()).await => {
                    // Killed moments ago: the participant's node takes the room when they
                    // arrive; send them to this node, which will.
                    return self.claim(room).await;
                }
                _ => return Ok(home),
            }
        }
        let nodes = self.nodes().await?;
        let me = self.me();
        let least_full = least_full(nodes.into_iter().chain(std::iter::once(me)))
            .expect("this node is a candidate");
        let lease = self.take(room, &least_full.name).await?;
        match self.node(&lease.node).await? {
            Some(node) => Ok(self.home(node, lease)),
            // The chosen node went away between the two reads: this node takes the room.
            None => self.claim(room).await,
        }
    }

    /// Where a draining node sends someone: the room's home if another node that answers
    /// holds it, else the least full other node, which the room is placed on. Never here,
    /// even for a room this node still runs for a moment.
    async fn place_away(&self, room: &str) -> redis::RedisResult<Home> {
        let me = self.inner.name.clone();
        let mut stale = None;
        if let Some(lease) = self.lease(room).await?
            && lease.node != me
        {
            match self.node(&lease.node).await? {
                Some(node) if answers(node.reach()).await => {
                    return Ok(Home::Elsewhere(Box::new(node), lease));
                }
                Some(_) => stale = Some(lease),
                None => {}
            }
        }
        let others = self.nodes().await?.into_iter().filter(|n| n.name != me);
        let Some(target) = least_full(others) else {
            return Err(no_node());
        };
        if let Some(stale) = stale {
            let _: i64 = redis::Script::new(RELEASE)
                .key(format!("{ROOM_PREFIX}{room}"))
                .arg(stale.value())
                .invoke_async(&mut self.redis())
                .await?;
        }
        let lease = self.take(room, &target.name).await?;
        match self.node(&lease.node).await? {
            Some(node) if node.name != me => Ok(Home::Elsewhere(Box::new(node), lease)),
            _ => Err(no_node()),
        }
    }

    /// Whether this node is draining: it takes no room, and sends people elsewhere.
    pub fn draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts draining (`stoa drain`): from now on no room is placed here, and someone
    /// arriving for a room is sent to its home, or to the least full other node. The rooms
    /// live here now are handed over by the caller, as on a stop ([`Cluster::hand_over`]).
    pub fn start_draining(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leaves the registry (no room is placed here from now on) and names the node this one's
    /// people should move to: the least full other node that is up, if there is one and Redis
    /// answers.
    pub async fn hand_over(&self) -> Option<NodeInfo> {
        let others = self.nodes().await.ok().map(|nodes| {
            nodes
                .into_iter()
                .filter(|n| n.name != self.inner.name)
                .collect::<Vec<_>>()
        });
        self.leave().await;
        least_full(others?.into_iter())
    }

    /// Where the room lives now, without placing it: `None` when it lives nowhere (nobody
    /// is in it) or its home is no longer up.
    pub async fn home_of(&self, room: &str) -> redis::RedisResult<Option<Home>> {
        let Some(lease) = self.lease(room).await? else {
            return Ok(None);
        };
        Ok(self
            .node(&lease.node)
            .await?
            .map(|node| self.home(node, lease)))
    }

    /// A participant of the room arrived here: the room stays (or becomes) at home here
    /// unless another node that is up holds it.
    pub async fn claim(&self, room: &str) -> redis::RedisResult<Home> {
        if self.draining() {
            return self.place_away(room).await;
        }
        let mut lease = self.take(room, &self.inner.name.clone()).await?;
        // Twice at most: a holder that vanished between two reads is taken over once.
        for _ in 0..2 {
            if lease.node == self.inner.name {
                self.held().insert(room.to_owned(), Held::now(lease.epoch));
                return Ok(Home::Here(lease));
            }
            match self.node(&lease.node).await? {
                Some(node) if answers(node.reach()).await => {
                    return Ok(Home::Elsewhere(Box::new(node), lease));
                }
                // Gone (its record expired), or still listed but refusing connections (killed
                // moments ago): the room is taken from it. If it was only cut off from us, the
                // new epoch makes it let go at its next renewal.
                _ => lease = self.take_over(room, lease).await?,
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the room's lease keeps changing hands",
        )))
    }

    /// Renews the leases of the rooms this node holds and still runs (`live` says which) or
    /// is starting (claimed within a lease's lifetime); lets go of the others. Returns the
    /// rooms whose lease another node took meanwhile: this node must stop acting for them.
    pub async fn renew(&self, live: impl Fn(&str) -> bool) -> redis::RedisResult<Vec<String>> {
        if self.inner.left.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let now = std::time::Instant::now();
        let grace = std::time::Duration::from_millis(self.inner.settings.node_ttl_ms);
        let held: Vec<(String, u64, bool)> = self
            .held()
            .iter()
            .map(|(room, held)| (room.clone(), held.epoch, held.starting(now, grace)))
            .collect();
        let (running, idle): (Vec<_>, Vec<_>) = held
            .into_iter()
            .partition(|(room, _, starting)| *starting || live(room));
        for (room, epoch, _) in idle {
            self.release(&room, epoch).await?;
        }
        if running.is_empty() {
            return self.note(Ok(Vec::new()));
        }
        let renew = redis::Script::new(RENEW);
        let mut script = renew.prepare_invoke();
        script.arg(self.inner.settings.node_ttl_ms);
        script.arg(self.room_state_ttl_ms());
        for (room, epoch, _) in &running {
            script.key(format!("{ROOM_PREFIX}{room}"));
            script.key(format!("{EPOCH_PREFIX}{room}"));
            script.key(format!("{}{room}", super::room_state::STATE_PREFIX));
            script.arg(
                Lease {
                    node: self.inner.name.clone(),
                    epoch: *epoch,
                }
                .value(),
            );
        }
        let renewed: Vec<i64> = self.note(script.invoke_async(&mut self.redis()).await)?;
        let mut lost = Vec::new();
        let mut held = self.held();
        for ((room, epoch, _), ok) in running.into_iter().zip(renewed) {
            if ok == 0 && held.get(&room).map(|h| h.epoch) == Some(epoch) {
                held.remove(&room);
                lost.push(room);
            }
        }
        Ok(lost)
    }

    /// Rooms whose home is this node.
    pub fn rooms_held(&self) -> usize {
        self.held().len()
    }

    pub(super) async fn release(&self, room: &str, epoch: u64) -> redis::RedisResult<()> {
        let value = Lease {
            node: self.inner.name.clone(),
            epoch,
        }
        .value();
        let _: i64 = redis::Script::new(RELEASE)
            .key(format!("{ROOM_PREFIX}{room}"))
            .arg(value)
            .invoke_async(&mut self.redis())
            .await?;
        let mut held = self.held();
        if held.get(room).map(|h| h.epoch) == Some(epoch) {
            held.remove(room);
        }
        Ok(())
    }

    async fn lease(&self, room: &str) -> redis::RedisResult<Option<Lease>> {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{ROOM_PREFIX}{room}"))
            .query_async(&mut self.redis())
            .await?;
        Ok(value.as_deref().and_then(Lease::parse))
    }

    async fn take(&self, room: &str, candidate: &str) -> redis::RedisResult<Lease> {
        let value: String = redis::Script::new(TAKE)
            .key(format!("{ROOM_PREFIX}{room}"))
            .key(format!("{EPOCH_PREFIX}{room}"))
            .arg(candidate)
            .arg(self.inner.settings.node_ttl_ms)
            .arg(NODE_PREFIX)
            .invoke_async(&mut self.redis())
            .await?;
        Ok(Lease::parse(&value).expect("the script writes `{node} {epoch}`"))
    }

    /// The holder went away between taking and looking it up: take the room from it.
    async fn take_over(&self, room: &str, stale: Lease) -> redis::RedisResult<Lease> {
        let _: i64 = redis::Script::new(RELEASE)
            .key(format!("{ROOM_PREFIX}{room}"))
            .arg(stale.value())
            .invoke_async(&mut self.redis())
            .await?;
        self.take(room, &self.inner.name.clone()).await
    }

    fn home(&self, node: NodeInfo, lease: Lease) -> Home {
        if node.name == self.inner.name && node.instance == self.inner.instance {
            Home::Here(lease)
        } else {
            Home::Elsewhere(Box::new(node), lease)
        }
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.inner.held.lock().expect("held leases poisoned")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Addresses, Cluster, Fingerprints, Load, NodeInfo};
    use super::Home;
    use crate::config::ClusterSettings;

    use super::super::throwaway_redis;

    const TTL_MS: u64 = 1_500;

    /// A node of a cluster on `redis`, whose own address accepts connections (as a running
    /// node's does: placement checks it).
    pub(crate) async fn node(
        name: &str,
        redis: &throwaway_redis::Redis,
    ) -> (Cluster, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let settings = ClusterSettings {
            redis_url: Some(redis.url()),
            heartbeat_ms: 100,
            node_ttl_ms: TTL_MS,
            ..ClusterSettings::default()
        };
        let addresses = Addresses {
            public_url: url.clone(),
            node_url: url.clone(),
            internal_url: String::new(),
            signal_url: format!("{url}/api/v1/signal"),
        };
        let me = NodeInfo::starting(name.into(), addresses, Vec::new(), 100, 0);
        let keys = Fingerprints {
            signing: "signing".into(),
            operator: "operator".into(),
        };
        let cluster = Cluster::join(&settings, me, keys).await.unwrap();
        (cluster, listener)
    }

    /// A room is claimed when someone's socket arrives, and is live here only once their join
    /// has read the store. A heartbeat in between must not let the lease go: the next person,
    /// sent by another node, would start the same room there (two homes, each with half of
    /// the people). A claimed room that never becomes live is let go after a lease's lifetime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_claimed_but_not_yet_live_keeps_its_home() {
        let redis = throwaway_redis::Redis::start();
        let (a, _a_listens) = node("node-a", &redis).await;
        let (b, _b_listens) = node("node-b", &redis).await;
        let room = "rm_starting";
        assert!(matches!(a.claim(room).await.unwrap(), Home::Here(_)));

        // A heartbeat while the room is starting: not live yet, the lease is kept.
        assert!(a.renew(|_| false).await.unwrap().is_empty());
        match b.claim(room).await.unwrap() {
            Home::Elsewhere(home, _) => assert_eq!(home.name, "node-a"),
            Home::Here(lease) => panic!("node-b took a room node-a is starting: {lease:?}"),
        }

        // Never live within a lease's lifetime (the join failed): let go, and placed anew.
        std::thread::sleep(std::time::Duration::from_millis(TTL_MS + 100));
        a.heartbeat(Load::default(), 0).await;
        b.heartbeat(Load::default(), 0).await;
        assert!(a.renew(|_| false).await.unwrap().is_empty());
        assert_eq!(a.rooms_held(), 0);
        assert!(matches!(b.claim(room).await.unwrap(), Home::Here(_)));
    }
}
