//! What every handler can reach: the store, the clock, credentials, limits and metrics.
//! Built once at start; cheap to clone (everything inside is shared).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use governor::{Quota, RateLimiter};

use super::auth_throttle::AuthThrottle;
use super::headers::SecurityHeaders;
use super::origin::Origins;
use super::views::BroadcastLink;
use crate::broadcast::Broadcasts;
use crate::clock::{Clock, KeyedRateLimiter};
use crate::cluster::Forwarding;
use crate::cluster::{Addresses, Cluster, NodeInfo};
use crate::config::Config;
use crate::control::{RoomId, Store};
use crate::media::Media;
use crate::metrics::Metrics;
use crate::recording::Recordings;
use crate::room::LiveRooms;
use crate::session::{OperatorKey, TokenSigner};
use crate::signal::SignalContext;

/// How long a stopping node waits for its signaling sockets to write their goodbyes (where
/// to go, or that the server restarts, and the close frame).
const GOODBYE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Clock,
    pub config: Arc<Config>,
    /// `public_url` or the address actually bound, without a trailing slash.
    pub base_url: Arc<str>,
    /// This node's own base URL (`[cluster] node_url`), where its signaling sockets connect;
    /// the base URL unless set.
    pub node_url: Arc<str>,
    /// This node: its name, addresses and capacity (its load is measured when asked).
    pub node: Arc<NodeInfo>,
    /// The cluster this node belongs to; `None` when it runs alone.
    pub cluster: Option<Cluster>,
    /// How calls on a live room reach the node where it lives.
    pub forwarding: Forwarding,
    pub operator_key: OperatorKey,
    pub signer: TokenSigner,
    pub metrics: Metrics,
    pub live: LiveRooms,
    pub media: Media,
    pub broadcasts: Broadcasts,
    /// Recordings written on this node, and where their files are.
    pub recordings: Recordings,
    /// What each signaling socket's session is given.
    pub signal: SignalContext,
    pub join_limiter: Arc<KeyedRateLimiter<IpAddr>>,
    /// Anonymous listeners' calls (listen links, heartbeats) per client address.
    pub listener_limiter: Arc<KeyedRateLimiter<IpAddr>>,
    /// Clips made, per participant (or replay link, or the operator).
    pub clip_limiter: Arc<KeyedRateLimiter<String>>,
    /// Clips made, per client address (five times the allowance of one participant: people
    /// behind one address share it).
    pub clip_address_limiter: Arc<KeyedRateLimiter<IpAddr>>,
    /// Failed authentications per client address.
    pub auth_throttle: Arc<AuthThrottle>,
    /// Open signaling sockets per client address.
    pub sockets_per_address: Arc<dashmap::DashMap<IpAddr, u32>>,
    /// The OpenAPI document, rendered once the router is assembled.
    pub openapi_json: Arc<OnceLock<String>>,
    /// The headers every answer carries.
    pub security_headers: Arc<SecurityHeaders>,
    /// Web origins allowed to call from a browser.
    pub origins: Arc<Origins>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        clock: Clock,
        config: Arc<Config>,
        base_url: String,
        operator_key: OperatorKey,
        signer: TokenSigner,
        metrics: Metrics,
        media: Media,
    ) -> Self {
        let limits = &config.limits;
        let quota =
            Quota::per_minute(NonZeroU32::new(limits.joins_per_minute).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(limits.join_burst).unwrap_or(NonZeroU32::MIN));
        let join_limiter = Arc::new(RateLimiter::dashmap_with_clock(quota, clock.clone()));
        let listener_quota = Quota::per_minute(
            NonZeroU32::new(limits.listener_calls_per_minute).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(limits.listener_call_burst).unwrap_or(NonZeroU32::MIN));
        let listener_limiter = Arc::new(RateLimiter::dashmap_with_clock(
            listener_quota,
            clock.clone(),
        ));
        let clip_quota = Quota::per_minute(
            NonZeroU32::new(config.recording.clips_per_minute).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(config.recording.clip_burst).unwrap_or(NonZeroU32::MIN));
        let clip_limiter = Arc::new(RateLimiter::dashmap_with_clock(clip_quota, clock.clone()));
        let per_address = |n: u32| NonZeroU32::new(n.saturating_mul(5)).unwrap_or(NonZeroU32::MIN);
        let address_quota = Quota::per_minute(per_address(config.recording.clips_per_minute))
            .allow_burst(per_address(config.recording.clip_burst));
        let clip_address_limiter = Arc::new(RateLimiter::dashmap_with_clock(
            address_quota,
            clock.clone(),
        ));
        let auth_throttle = Arc::new(AuthThrottle::new(
            limits.auth_failures_per_minute,
            limits.auth_failure_burst,
            clock.clone(),
        ));
        let broadcasts = Broadcasts::new(
            config.broadcast.clone(),
            media.clone(),
            store.clone(),
            clock.clone(),
            signer.derive("broadcast links"),
            metrics.broadcast.clone(),
        );
        let recordings = Recordings::new(
            broadcasts.clone(),
            store.clone(),
            clock.clone(),
            &config.data_dir,
            config.cluster.node_name(),
            config.recording.clone(),
            metrics.clone(),
        );
        let live = LiveRooms::new(
            store.clone(),
            clock.clone(),
            metrics.clone(),
            config.signal.clone(),
            media.clone(),
            config
                .broadcast
                .enabled
                .then_some(config.broadcast.webrtc_audience_cap),
            config.webhooks.url.is_some(),
            Arc::new(recordings.clone()),
        )
        .record_by_default(config.recording.record_by_default);
        let live = live.count_anonymous_listeners(Arc::new(broadcasts.clone()));
        recordings.attach_rooms(live.clone());
        let signal = SignalContext {
            settings: Arc::new(config.signal.clone()),
            store: store.clone(),
            clock: clock.clone(),
            signer: signer.clone(),
            live: live.clone(),
            metrics: metrics.clone(),
            cluster: None,
            broadcasts: broadcasts.clone(),
            base_url: base_url.as_str().into(),
            session_ttl_ms: (config.limits.session_ttl_secs as i64).saturating_mul(1000),
            relay_links: None,
            goodbyes: tokio_util::task::TaskTracker::new(),
        };
        let https = config.tls_enabled() || base_url.starts_with("https://");
        let security_headers = Arc::new(SecurityHeaders::new(https));
        let origins = Arc::new(Origins::new(&base_url, &config.allowed_origins));
        let node_url = match &config.cluster.node_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => base_url.clone(),
        };
        let internal_url = match &config.cluster.internal_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => node_url.clone(),
        };
        let node = Arc::new(NodeInfo::starting(
            config.cluster.node_name(),
            Addresses {
                public_url: base_url.clone(),
                node_url: node_url.clone(),
                internal_url,
                signal_url: signal_url_of(&node_url),
            },
            media
                .relay_addrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
            u32::try_from(config.media.max_connections).unwrap_or(u32::MAX),
            clock.now_ms(),
        ));
        AppState {
            store,
            clock,
            config,
            base_url: base_url.into(),
            node,
            node_url: node_url.into(),
            cluster: None,
            forwarding: Forwarding::new(signer.derive("node forwarding")),
            operator_key,
            signer,
            metrics,
            live,
            media,
            broadcasts,
            recordings,
            signal,
            join_limiter,
            listener_limiter,
            clip_limiter,
            clip_address_limiter,
            auth_throttle,
            sockets_per_address: Arc::new(dashmap::DashMap::new()),
            openapi_json: Arc::new(OnceLock::new()),
            security_headers,
            origins,
        }
    }

    /// This node as a member of `cluster`.
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.live.attach_cluster(cluster.clone());
        self.signal.cluster = Some(cluster.clone());
        self.signal.relay_links = Some(crate::signal::RelayLinks::new(
            self.media.clone(),
            cluster.clone(),
            self.forwarding.clone(),
            self.signer.derive("relay links"),
        ));
        self.cluster = Some(cluster);
        self
    }

    /// Stops the live rooms for a stop or a drain. In a cluster the node leaves the registry
    /// first (no room is placed here while the rest stops) and sends its rooms' people to the
    /// least full other node (`moved`), where they resume at once and the rooms go on, their
    /// live state kept; alone, or the last node, it tells them the server is restarting.
    /// Returns the node they were sent to, once every socket has written its last words (or
    /// after [`GOODBYE_WAIT`]): a node that exits before then leaves its people with a broken
    /// connection and no word of where to go.
    pub async fn hand_rooms_over(&self) -> Option<NodeInfo> {
        let successor = match &self.cluster {
            Some(cluster) => {
                // Someone arriving from now on is sent to another node, not given a room here.
                cluster.start_draining();
                cluster.hand_over().await
            }
            None => None,
        };
        // The people this node serves as an edge of other nodes' rooms go to those rooms' homes.
        if let Some(links) = &self.signal.relay_links {
            links.start_leaving();
        }
        if let Some(next) = &successor {
            tracing::info!(node = %next.name, "handing the live rooms over");
        }
        self.live
            .shutdown(successor.as_ref().map(|n| n.signal_url.as_str()))
            .await;
        // Sockets opened from now on are counted too (they are sent on, or told the server is
        // restarting, at once); `wait` ends once none is left. The tracker stays closed: its
        // tokens work all the same, and a second caller (a stop after a drain) waits as well.
        let unsaid = &self.signal.goodbyes;
        unsaid.close();
        if tokio::time::timeout(GOODBYE_WAIT, unsaid.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sockets = unsaid.len(),
                "signaling sockets had not said goodbye 3 s after the rooms were handed over \
                 (sockets that have not joined yet, or clients too slow to take the message)"
            );
        }
        successor
    }

    /// `ws(s)://host/api/v1/signal` on this node, derived from its own base URL.
    pub fn signal_url(&self) -> String {
        signal_url_of(&self.node_url)
    }

    /// The link to a room's broadcast valid now, as an absolute URL.
    pub fn broadcast_link(&self, room: &RoomId) -> BroadcastLink {
        let link = self.broadcasts.link(room);
        BroadcastLink {
            playlist_url: link.url(&self.base_url),
            expires_at: link.expires_at(),
        }
    }

    pub fn invite_url(&self, code: &str) -> String {
        format!("{}/i/{code}", self.base_url)
    }

    /// The replay page of a replay link's code.
    /// The page of a clip's link.
    pub fn clip_url(&self, code: &str) -> String {
        format!("{}/c/{code}", self.base_url)
    }

    /// A file held by node `holder` is on another node of the cluster.
    pub fn holds_elsewhere(&self, holder: &str) -> bool {
        self.cluster.is_some() && holder != self.node.name
    }

    /// Counts a clip against who makes it and where from; `too_many_clips` if either has
    /// none left.
    pub fn clip_allowance(&self, who: &str, ip: IpAddr) -> Result<(), super::ApiError> {
        let checks = [
            self.clip_address_limiter.check_key(&ip),
            self.clip_limiter.check_key(&who.to_owned()),
        ];
        for check in checks {
            if let Err(not_until) = check {
                let wait = crate::clock::retry_after_secs(&not_until, &self.clock);
                return Err(super::ApiError {
                    retry_after_secs: Some(wait),
                    ..super::ApiError::new(
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        "too_many_clips",
                        format!("too many clips made; retry in {wait} s"),
                    )
                });
            }
        }
        Ok(())
    }

    pub fn replay_url(&self, code: &str) -> String {
        format!("{}/r/{code}", self.base_url)
    }

    /// The page of a listen link: the room's broadcast, for anyone who has it.
    pub fn listen_url(&self, code: &str) -> String {
        format!("{}/l/{code}", self.base_url)
    }
}

/// The signaling endpoint of a node whose base URL is `base`.
pub fn signal_url_of(base: &str) -> String {
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/api/v1/signal")
}

/// The rooms count their broadcast's anonymous listeners as the broadcast service heard them.
impl crate::room::AnonymousListeners for Broadcasts {
    fn count(&self, room: &RoomId) -> u32 {
        self.anonymous_listeners(room)
    }
}
