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

impl Cluster {
    /// Whether `home` is too full to take more of a room's audience itself.
    pub fn home_is_full(&self, home: &NodeInfo) -> bool {
        home.fullness() >= self.inner.settings.home_full_at
    }

    /// Where someone joining `room` in its audience goes when its home is full: the least
    /// full node that serves the room already and has room, else the least full node that
    /// has room. `None` when the home has room itself, or no other node does.
    pub async fn edge_for(
        &self,
        room: &str,
        home: &NodeInfo,
    ) -> redis::RedisResult<Option<NodeInfo>> {
        if !self.home_is_full(home) {
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
        let open: Vec<NodeInfo> = self
            .nodes()
            .await?
            .into_iter()
            .map(|n| if n.name == me.name { me.clone() } else { n })
            .filter(|n| n.name != home.name && n.fullness() < 1.0)
            .collect();
        let serves = |n: &NodeInfo| serving.contains(&n.name);
        let already = least_full(open.iter().filter(|n| serves(n)).cloned());
        Ok(already.or_else(|| least_full(open.into_iter())))
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
