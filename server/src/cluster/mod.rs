//! The cluster: nodes that find each other, and agree where each live room lives, through
//! Redis. Redis holds only what is live (who is up, which node is home to which room, each
//! live room's stage, hands and mutes); the durable facts stay in the store.
//!
//! Keys (all under `stoa:`):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `stoa:cluster:signing`, `stoa:cluster:operator` | a fingerprint of the cluster's keys | for ever |
//! | `stoa:node:{name}` | the node's [`NodeInfo`] as JSON | `node_ttl_ms`, refreshed every heartbeat |
//! | `stoa:room:{id}` | the room's lease, `{node} {epoch}` | `node_ttl_ms`, renewed by its home |
//! | `stoa:room-epoch:{id}` | the room's last lease epoch | for ever |
//! | `stoa:node-placed:{name}` | people placed on the node since its last heartbeat (`edges.rs`) | until its next heartbeat, or `node_ttl_ms` |
//! | `stoa:room-edges:{id}` | the nodes serving the room as edges (sorted by when each claim runs out, `edges.rs`) | `node_ttl_ms` past the last claim's renewal |
//! | `stoa:room-state:{id}` | the room's live state, `{node} {epoch} {seq}\n{json}` (`room_state.rs`) | `node_ttl_ms` + resume grace from its home's last renewal; deleted when the room ends or empties |
//!
//! A node that stops cleanly deletes its own key; one that dies stops refreshing it and is
//! gone `node_ttl_ms` later, and so are its leases. The epoch grows with every placement, so a
//! node that lost a lease (it was unreachable while another took the room) finds out at its
//! next renewal and lets the room go.

mod edges;
mod forwarded;
mod node;
mod placement;
mod room_state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{ClusterSettings, redact_password};

// The end-to-end tests' throwaway Redis, shared so there is one way to run one in tests.
#[cfg(test)]
#[path = "../../../tests/src/redis.rs"]
#[allow(dead_code)]
mod throwaway_redis;

pub use forwarded::{CALL_HEADER, Forwarding, HEADER};
pub use node::{Addresses, CpuMeter, Load, NodeInfo};
use placement::least_full;
pub use placement::{Home, Lease};
pub use room_state::{Found, MAX_ROOM_STATE_BYTES, Saved};

const NODE_PREFIX: &str = "stoa:node:";

/// Why a node could not join its cluster. Each is a reason to refuse to start.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the Redis URL {url} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "this node's {which} key differs from the one the cluster at {url} uses; give every node \
         the same {variable}"
    )]
    KeyMismatch {
        which: &'static str,
        variable: &'static str,
        url: String,
    },
    #[error(
        "the node name {name:?} is taken by a running node (started {started_at}); give this \
         node another --node-name"
    )]
    NameTaken { name: String, started_at: String },
}

/// Records the cluster's key fingerprints if Redis has none, and checks this node's against
/// them.
async fn check_keys(
    redis: &mut ConnectionManager,
    keys: &Fingerprints,
    shown_url: &str,
) -> Result<(), JoinError> {
    for (key, fingerprint, which, variable) in [
        (
            "stoa:cluster:signing",
            &keys.signing,
            "token signing",
            "STOA_SIGNING_KEY",
        ),
        (
            "stoa:cluster:operator",
            &keys.operator,
            "operator",
            "STOA_API_KEY",
        ),
    ] {
        let held: String = redis::Script::new(
            "redis.call('SET', KEYS[1], ARGV[1], 'NX') return redis.call('GET', KEYS[1])",
        )
        .key(key)
        .arg(fingerprint)
        .invoke_async(redis)
        .await
        .map_err(|e| JoinError::Unreachable {
            url: shown_url.to_owned(),
            reason: e.to_string(),
        })?;
        if &held != fingerprint {
            return Err(JoinError::KeyMismatch {
                which,
                variable,
                url: shown_url.to_owned(),
            });
        }
    }
    Ok(())
}

/// A node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    redis: ConnectionManager,
    settings: ClusterSettings,
    name: String,
    /// Random per process: tells this run of the node from an earlier one of the same name.
    instance: String,
    me: std::sync::Mutex<NodeInfo>,
    /// Whether the last exchange with Redis worked.
    reachable: AtomicBool,
    /// Set by `leave`: heartbeats stop registering the node.
    left: AtomicBool,
    keys: Fingerprints,
    /// The Redis URL as it may be logged.
    shown_url: String,
    /// Rooms whose home is this node, with their lease epochs.
    held: std::sync::Mutex<std::collections::HashMap<String, placement::Held>>,
    /// How long a participant's place is held after their socket drops (the room settings'),
    /// for how long a room's kept state is worth keeping.
    resume_grace_ms: std::sync::atomic::AtomicU64,
    /// Draining (`stoa drain`): no room is placed here, and its rooms went to other nodes.
    draining: AtomicBool,
}

/// Fingerprints of the keys every node must share (never the keys themselves).
#[derive(Clone, Debug)]
pub struct Fingerprints {
    pub signing: String,
    pub operator: String,
}

impl Cluster {
    /// Connects to Redis, checks that this node holds the cluster's keys, and registers it.
    /// A predecessor of the same name that died is waited out (at most `node_ttl_ms`).
    pub async fn join(
        settings: &ClusterSettings,
        me: NodeInfo,
        keys: Fingerprints,
    ) -> Result<Cluster, JoinError> {
        let url = settings.redis_url.clone().unwrap_or_default();
        let shown = redact_password(&url);
        let client = redis::Client::open(url.as_str()).map_err(|e| JoinError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let timeout = Duration::from_millis(settings.heartbeat_ms.max(1_000));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(settings.heartbeat_ms));
        let unreachable = |e: redis::RedisError| JoinError::Unreachable {
            url: shown.clone(),
            reason: e.to_string(),
        };
        let mut redis = tokio::time::timeout(
            timeout * 3,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| JoinError::Unreachable {
            url: shown.clone(),
            reason: "timed out".into(),
        })?
        .map_err(unreachable)?;
        check_keys(&mut redis, &keys, &shown).await?;
        let name = me.name.clone();
        let cluster = Cluster {
            inner: Arc::new(Inner {
                redis,
                settings: settings.clone(),
                name,
                instance: me.instance.clone(),
                me: std::sync::Mutex::new(me),
                reachable: AtomicBool::new(true),
                left: AtomicBool::new(false),
                held: std::sync::Mutex::new(std::collections::HashMap::new()),
                resume_grace_ms: std::sync::atomic::AtomicU64::new(20_000),
                draining: AtomicBool::new(false),
                keys,
                shown_url: shown.clone(),
            }),
        };
        // A node of this name that was killed keeps its key until it expires.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(settings.node_ttl_ms + settings.heartbeat_ms);
        loop {
            match cluster.register().await.map_err(unreachable)? {
                None => break,
                Some(holder) if tokio::time::Instant::now() >= deadline => {
                    return Err(JoinError::NameTaken {
                        name: cluster.inner.name.clone(),
                        started_at: holder.started_at,
                    });
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(settings.heartbeat_ms)).await,
            }
        }
        tracing::info!(node = %cluster.inner.name, redis = %shown, "joined the cluster");
        Ok(cluster)
    }

    pub fn node_name(&self) -> &str {
        &self.inner.name
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.inner.settings
    }

    /// The rooms' resume grace, which a room's kept state outlives its home by.
    pub fn set_resume_grace_ms(&self, ms: u64) {
        self.inner.resume_grace_ms.store(ms, Ordering::Relaxed);
    }

    /// This node as the others see it.
    pub fn me(&self) -> NodeInfo {
        self.inner.me.lock().expect("node info poisoned").clone()
    }

    /// Whether the last exchange with Redis worked.
    pub fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    fn redis(&self) -> ConnectionManager {
        self.inner.redis.clone()
    }

    /// Records the outcome of an exchange with Redis, logging only the changes.
    fn note<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        let ok = result.is_ok();
        if self.inner.reachable.swap(ok, Ordering::Relaxed) != ok {
            match &result {
                Ok(_) => tracing::info!(node = %self.inner.name, "Redis is reachable again"),
                Err(e) => {
                    tracing::warn!(node = %self.inner.name, error = %e, "Redis is unreachable")
                }
            }
        }
        result
    }

    /// Writes this node's record unless another run of the same name holds it; returns the
    /// holder when it does.
    async fn register(&self) -> redis::RedisResult<Option<NodeInfo>> {
        let me = self.me();
        let json = serde_json::to_string(&me).expect("node info serializes");
        let held: Option<String> = redis::Script::new(
            r"local held = redis.call('GET', KEYS[1])
              if held and cjson.decode(held).instance ~= ARGV[2] then return held end
              redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
              return false",
        )
        .key(format!("{NODE_PREFIX}{}", self.inner.name))
        .arg(json)
        .arg(&self.inner.instance)
        .arg(self.inner.settings.node_ttl_ms)
        .invoke_async(&mut self.redis())
        .await?;
        Ok(held.and_then(|h| serde_json::from_str(&h).ok()))
    }

    /// One heartbeat: this node's load and record refreshed.
    pub async fn heartbeat(&self, load: Load, now_ms: i64) {
        if self.inner.left.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut me = self.inner.me.lock().expect("node info poisoned");
            me.load = load;
            me.heartbeat_at = crate::clock::rfc3339(now_ms);
        }
        // A Redis that restarted empty has forgotten the cluster's keys: write them again, so
        // a node with other keys cannot slip in.
        if let Err(e @ JoinError::KeyMismatch { .. }) =
            check_keys(&mut self.redis(), &self.inner.keys, &self.inner.shown_url).await
        {
            tracing::error!(node = %self.inner.name, error = %e, "the cluster's keys changed");
        }
        match self.note(self.register().await) {
            Ok(None) => self.placements_counted().await,
            Err(_) => {}
            Ok(Some(holder)) => tracing::error!(
                node = %self.inner.name,
                other = %holder.instance,
                "another node runs under this node's name; this one is no longer listed"
            ),
        }
    }

    /// Every node that is up, by name.
    pub async fn nodes(&self) -> redis::RedisResult<Vec<NodeInfo>> {
        let mut redis = self.redis();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{NODE_PREFIX}*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut redis)
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut redis)
            .await?;
        let mut nodes: Vec<NodeInfo> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// The node named `name`, if it is up.
    pub async fn node(&self, name: &str) -> redis::RedisResult<Option<NodeInfo>> {
        if name == self.inner.name {
            return Ok(Some(self.me()));
        }
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{NODE_PREFIX}{name}"))
            .query_async(&mut self.redis())
            .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Leaves the cluster: this node's record goes at once, so no new room is placed here.
    pub async fn leave(&self) {
        self.inner.left.store(true, Ordering::Relaxed);
        let result: redis::RedisResult<i64> = redis::Script::new(
            r"local held = redis.call('GET', KEYS[1])
              if held and cjson.decode(held).instance == ARGV[1] then
                return redis.call('DEL', KEYS[1])
              end
              return 0",
        )
        .key(format!("{NODE_PREFIX}{}", self.inner.name))
        .arg(&self.inner.instance)
        .invoke_async(&mut self.redis())
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not remove this node from the registry; it expires");
        }
    }
}
