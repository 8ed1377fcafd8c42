//! Edge nodes: when a room's home is full, the room's new audience is served by other nodes.
//! An edge holds its people's sockets and media connections, passes their messages to the
//! home, and takes the room's audio from the home once (a relay link, `media/relay.rs`).
//!
//! Which nodes serve a room as edges is a sorted set, `stoa:room-edges:{id}`: each member a
//! node, its score when that node's claim runs out (`node_ttl_ms` after its last heartbeat),
//! so a killed edge drops out by itself.

use super::{Cluster, NodeInfo, least_full};

/// Wall-clock milliseconds: the claims are compared across nodes.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const EDGES_PREFIX: &str = "stoa:room-edges:";
/// People placed on a node since its last heartbeat (`{count}`, expiring with the node).
const PLACED_PREFIX: &str = "stoa:node-placed:";

impl Cluster {
    /// Whether `home` is too full to take more of a room's audience itself.
    pub fn home_is_full(&self, home: &NodeInfo) -> bool {
        home.fullness() >= self.inner.settings.home_full_at
    }

    /// Where someone joining `room` in its audience goes when its home is full: the least
    /// full node that serves the room already and has room, else the least full node that
    /// has room (never `except`). `None` when the home has room itself, or no other node
    /// does.
    ///
    /// Loads are what each node reported at its last heartbeat plus the people placed on it
    /// since ([`Cluster::placed_on`]): a burst of joins does not all go to the node that
    /// looked emptiest a heartbeat ago.
    pub async fn edge_for(
        &self,
        room: &str,
        home: &NodeInfo,
        except: Option<&str>,
    ) -> redis::RedisResult<Option<NodeInfo>> {
        let mut home = home.clone();
        home.load.connections += self.placed_since_heartbeat(&[&home.name]).await?[0];
        if !self.home_is_full(&home) {
            return Ok(None);
        }
        let now = unix_ms();
        let serving: Vec<String> = self.note(
            redis::cmd("ZRANGEBYSCORE")
                .arg(format!("{EDGES_PREFIX}{room}"))
                .arg(now)
                .arg("+inf")
                .query_async(&mut self.redis())
                .await,
        )?;
        let me = self.me();
        let mut open: Vec<NodeInfo> = self
            .nodes()
            .await?
            .into_iter()
            .map(|n| if n.name == me.name { me.clone() } else { n })
            .filter(|n| n.name != home.name && Some(n.name.as_str()) != except)
            .collect();
        let names: Vec<&str> = open.iter().map(|n| n.name.as_str()).collect();
        let placed = self.placed_since_heartbeat(&names).await?;
        for (node, placed) in open.iter_mut().zip(placed) {
            node.load.connections += placed;
        }
        open.retain(|n| n.fullness() < 1.0);
        let serves = |n: &NodeInfo| serving.contains(&n.name);
        let already = least_full(open.iter().filter(|n| serves(n)).cloned());
        Ok(already.or_else(|| least_full(open.into_iter())))
    }

    /// Someone was just placed on `node` (a join answer named it): counted in its load until
    /// its next heartbeat reports it.
    pub async fn placed_on(&self, node: &str) {
        let key = format!("{PLACED_PREFIX}{node}");
        let result: redis::RedisResult<()> = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.inner.settings.node_ttl_ms)
            .ignore()
            .query_async(&mut self.redis())
            .await;
        let _ = self.note(result);
    }

    /// People placed on each of `nodes` since its last heartbeat.
    async fn placed_since_heartbeat(&self, nodes: &[&str]) -> redis::RedisResult<Vec<u32>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes
            .iter()
            .map(|n| format!("{PLACED_PREFIX}{n}"))
            .collect();
        let counts: Vec<Option<u32>> = self.note(
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.redis())
                .await,
        )?;
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// At each heartbeat, once this node's load is written: the people placed on it so far
    /// are in it.
    pub(super) async fn placements_counted(&self) {
        let result: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(format!("{PLACED_PREFIX}{}", self.inner.name))
            .query_async(&mut self.redis())
            .await;
        let _ = self.note(result);
    }

    /// This node serves `rooms` as an edge: called each heartbeat, so its claim on each
    /// lasts `node_ttl_ms` past the last one.
    pub async fn serving_as_edge(&self, rooms: &[String]) {
        if rooms.is_empty() || self.inner.left.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let until = unix_ms() + self.inner.settings.node_ttl_ms as i64;
        let mut pipe = redis::pipe();
        for room in rooms {
            let key = format!("{EDGES_PREFIX}{room}");
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(unix_ms() - 1)
                .ignore()
                .cmd("ZADD")
                .arg(&key)
                .arg(until)
                .arg(&self.inner.name)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(self.inner.settings.node_ttl_ms)
                .ignore();
        }
        let result: redis::RedisResult<()> = pipe.query_async(&mut self.redis()).await;
        if let Err(e) = self.note(result) {
            tracing::debug!(error = %e, "could not renew this node's edge claims");
        }
    }

    /// This node no longer serves `room` as an edge.
    pub async fn no_longer_edge(&self, room: &str) {
        let result: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(format!("{EDGES_PREFIX}{room}"))
            .arg(&self.inner.name)
            .query_async(&mut self.redis())
            .await;
        let _ = self.note(result);
    }
}
