//! Server configuration: embedded defaults, then a TOML file, then `STOA_*` environment
//! variables, then command-line flags (flags win). Parsing only; nothing here opens sockets.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything `stoa serve` needs to run. `Config::default()` is a working local setup.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP (or HTTPS, with TLS) listen address.
    pub bind: SocketAddr,
    /// Base URL put into invite links and signaling URLs; defaults to `http(s)://<bind>`.
    pub public_url: Option<String>,
    /// Where the database, the operator key and the signing key live.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// First UDP port of the media workers (worker `i` uses `media_port + i`); unset, each
    /// worker takes a free port. The UDP sockets bind to the IP of `bind`.
    pub media_port: Option<u16>,
    /// IP the media UDP sockets bind to; defaults to the IP of `bind`. Behind a reverse proxy
    /// (HTTP on 127.0.0.1) set it to an address clients can reach, or `0.0.0.0`.
    pub media_bind: Option<IpAddr>,
    /// Address advertised in ICE candidates.
    pub public_ip: Option<IpAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Operator key from the environment (`STOA_API_KEY`); never read from the file so it
    /// does not end up in configuration that gets shared.
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Token signing key from the environment (`STOA_SIGNING_KEY`), which every node of a
    /// cluster must share; unset, `signing.key` in the data folder (created on first start).
    #[serde(skip)]
    pub signing_key: Option<String>,
    /// Create a demo room on first start and print a fresh moderator link for it at every start.
    pub demo_room: bool,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted reverse proxy).
    pub trust_forwarded_for: bool,
    /// Other web origins (`https://tools.example.org`) whose pages may call the API from a
    /// browser (CORS). Empty by default: only the server's own origin.
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub signal: SignalSettings,
    pub media: MediaSettings,
    pub broadcast: BroadcastSettings,
    pub database: DatabaseSettings,
    pub cluster: ClusterSettings,
    pub webhooks: WebhookSettings,
    pub recording: RecordingSettings,
}

/// Recordings and clips (`docs/broadcast.md`, `docs/operations.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingSettings {
    /// Seconds of a live room's mix kept for clips of "the last seconds" (0: no live clips,
    /// and a live room's mix runs only while it is broadcast or recorded).
    pub live_clip_secs: u32,
    /// The longest clip of a recording, in seconds.
    pub max_clip_secs: u32,
    /// Clips one participant (or one address, for replay links) may make per minute, and the
    /// burst above it.
    pub clips_per_minute: u32,
    pub clip_burst: u32,
    /// Recordings (and their clips) older than this many days are deleted; 0 keeps them.
    /// A room's own setting (`retention_days`) outranks it.
    pub retention_days: u32,
    /// Recordings keep a track of each speaker besides the mix unless the start says
    /// otherwise (`speaker_tracks` in its body).
    pub speaker_tracks: bool,
    /// Every room records whenever it goes live, unless its own `record_by_default` says
    /// otherwise.
    pub record_by_default: bool,
    /// How often each node looks for recordings and clips past their retention.
    pub retention_check_secs: u64,
}

impl Default for RecordingSettings {
    fn default() -> Self {
        RecordingSettings {
            live_clip_secs: 30,
            max_clip_secs: 120,
            clips_per_minute: 6,
            clip_burst: 3,
            retention_days: 0,
            speaker_tracks: false,
            record_by_default: false,
            retention_check_secs: 3600,
        }
    }
}

/// The most seconds a live room keeps for clips (`[recording] live_clip_secs`).
pub const MAX_LIVE_CLIP_SECS: u32 = 120;
/// The longest retention the server or a room may ask for (a hundred years).
pub const MAX_RETENTION_DAYS: u32 = 36_500;
/// The longest clip of a recording that may be configured (`[recording] max_clip_secs`).
pub const MAX_CLIP_SECS: u32 = 600;

/// Standard Webhooks sent to one integration for what happens in rooms (`docs/webhooks.md`).
/// Without `url`, none are made.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where events are POSTed: `https://…` (the receiver's certificate verified against the
    /// system's roots and `tls_ca`) or `http://…`.
    pub url: Option<String>,
    /// The signing secret, `whsec_` + base64 of 24 to 64 random bytes.
    pub secret: Option<String>,
    /// Attempts per event before it is marked failed.
    pub max_attempts: u32,
    /// An event not delivered this long after it happened is marked failed.
    pub max_age_secs: u64,
    /// How long one attempt may take, the answer included.
    pub timeout_ms: u64,
    /// The wait after the first failed attempt; it doubles (with jitter) up to `retry_max_ms`.
    pub retry_first_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts in flight at once, each for a different room.
    pub concurrency: usize,
    /// Delivered events are forgotten this long after delivery (failed ones are kept).
    pub keep_delivered_secs: u64,
    /// Rooms' own endpoints (set by their moderators through the API) may be on loopback,
    /// private, link-local and other non-public addresses. Off: the server is not a way into
    /// the operator's network for whoever moderates a room.
    pub room_allow_private: bool,
    /// Hosts (exact names, or IP addresses) a room's endpoint may use whatever they resolve
    /// to: the receivers on the operator's own network that rooms may send to.
    pub room_allowed_hosts: Vec<String>,
    /// Attempts in flight at once to rooms' own endpoints, apart from `concurrency` (the
    /// server's endpoint): a room's failing receiver never holds the server's.
    pub room_concurrency: usize,
    /// More CA certificates (PEM) trusted for `https://` receivers, besides the system's: a
    /// receiver on the operator's network with a certificate of a private CA.
    pub tls_ca: Option<PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            url: None,
            secret: None,
            max_attempts: 20,
            max_age_secs: 24 * 3600,
            timeout_ms: 10_000,
            retry_first_ms: 1_000,
            retry_max_ms: 10 * 60 * 1000,
            concurrency: 16,
            keep_delivered_secs: 7 * 24 * 3600,
            room_allow_private: false,
            room_allowed_hosts: Vec::new(),
            room_concurrency: 16,
            tls_ca: None,
        }
    }
}

/// Where the durable facts live: the SQLite file in `data_dir` (no URL, the default), or a
/// PostgreSQL server that several nodes share.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:5432/database`; unset, SQLite.
    pub url: Option<String>,
    /// Connections this node keeps to PostgreSQL at most.
    pub max_connections: usize,
    /// The CA that signed PostgreSQL's certificate (PEM), for `sslmode=require`; unset, the
    /// system's roots.
    pub tls_ca: Option<PathBuf>,
    /// How long one statement may run or wait for a lock before it is cancelled and the call
    /// answered 503 `store_unavailable`; a server that does not answer at all is given up
    /// 5 s later.
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            max_connections: 16,
            tls_ca: None,
            statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
        }
    }
}

/// Running as one node of a cluster: nodes find each other, and agree where each live room
/// lives, through Redis. Without `redis_url` the server is a cluster of one.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub redis_url: Option<String>,
    /// This node's name, unique in the cluster; defaults to the host name.
    pub node_name: Option<String>,
    /// This node's own base URL (`https://node-a.example.org`), where clients reach its
    /// signaling socket; `public_url` stays the address everyone shares (the load balancer).
    /// Defaults to `public_url`.
    pub node_url: Option<String>,
    /// Where the other nodes reach this one to pass calls on (`http://10.0.0.11:8080`, on the
    /// private network). Defaults to `node_url`, which must then be `http://`: calls between
    /// nodes are plain HTTP.
    pub internal_url: Option<String>,
    /// How often the node refreshes its registration and its rooms' leases.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is gone; its rooms are placed again.
    pub node_ttl_ms: u64,
    /// How full a room's home may be (0 to 1, its `fullness`) before the room's new audience
    /// is served by other nodes, as edges: the rest is kept for the stage, which stays home.
    pub home_full_at: f64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_url: None,
            node_name: None,
            node_url: None,
            internal_url: None,
            heartbeat_ms: 1_000,
            node_ttl_ms: 5_000,
            home_full_at: 0.9,
        }
    }
}

/// How long one PostgreSQL statement may run or wait for a lock, unless configured.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 10_000;

/// Hand-written so that the password in the URL never reaches a log line.
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.url.as_ref().map(|_| "(set)"))
            .field("max_connections", &self.max_connections)
            .field("tls_ca", &self.tls_ca)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .finish()
    }
}

/// Hand-written so that the signing secret never reaches a log line.
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("key", &self.secret.as_ref().map(|_| "(set)"))
            .field("max_attempts", &self.max_attempts)
            .field("max_age_secs", &self.max_age_secs)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_first_ms", &self.retry_first_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("concurrency", &self.concurrency)
            .field("keep_delivered_secs", &self.keep_delivered_secs)
            .field("room_allow_private", &self.room_allow_private)
            .field("room_allowed_hosts", &self.room_allowed_hosts)
            .field("room_concurrency", &self.room_concurrency)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// Hand-written so that a password in the Redis URL never reaches a log line.
impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis_url", &self.redis_url.as_deref().map(redact_password))
            .field("node_name", &self.node_name)
            .field("node_url", &self.node_url)
            .field("internal_url", &self.internal_url)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("node_ttl_ms", &self.node_ttl_ms)
            .field("home_full_at", &self.home_full_at)
            .finish()
    }
}

impl ClusterSettings {
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    /// The configured node name, else the host name, else `stoa`.
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.node_name {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| is_node_name(h))
            .unwrap_or_else(|| "stoa".to_owned())
    }
}

/// 1 to 63 letters, digits, `-`, `_` or `.`: it becomes part of Redis keys and log lines.
pub fn is_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The broadcast tier: the stage mixed once per room, served as LL-HLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BroadcastSettings {
    /// Serve broadcasts at all.
    pub enabled: bool,
    /// Speakers heard at once in the mix (the loudest).
    pub voices: usize,
    /// Bit rate of the mix's Opus encoder.
    pub bitrate: u32,
    /// A room's mix stops when nobody has asked for it for this long.
    pub idle_secs: u64,
    /// Playlist links are signed per room and period: a link works for one to two periods.
    pub link_period_secs: u64,
    /// Rooms mixed at once; past that, `broadcast_full` (each mix costs about 1 % of a core).
    pub max_rooms: usize,
    /// Listeners on WebRTC in one room at once (a room may set its own); listeners who join
    /// past it hear the broadcast. Speakers and moderators are never capped.
    pub webrtc_audience_cap: u32,
}

impl Default for BroadcastSettings {
    fn default() -> Self {
        BroadcastSettings {
            enabled: true,
            voices: 3,
            bitrate: 32_000,
            idle_secs: 30,
            link_period_secs: 300,
            max_rooms: 200,
            webrtc_audience_cap: DEFAULT_WEBRTC_AUDIENCE_CAP,
        }
    }
}

/// Listeners on WebRTC per room by default: at ~4 µs of a core per packet and listener
/// (docs/benchmarks.md) and 50 packets a second in each of 3 slots, 2,000 listeners cost about
/// 1.3 cores, so one busy room does not take a small server.
pub const DEFAULT_WEBRTC_AUDIENCE_CAP: u32 = 2_000;
const MAX_WEBRTC_AUDIENCE_CAP: u32 = 1_000_000;

/// Most earlier frames a RED packet may repeat (`[media] red`); the media layer's
/// `red::MAX_REDUNDANCY` is this number.
pub const MAX_RED: usize = 2;

/// The WebRTC media workers.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Worker threads, one UDP socket each; 0 means one per CPU core.
    pub workers: usize,
    /// Audio streams every listener receives: the loudest speakers at any moment.
    pub slots: usize,
    /// A connection whose peer has not been heard (ICE consent) for this long is muted…
    pub ice_disconnected_ms: u64,
    /// …and this much longer, closed and freed.
    pub ice_failed_ms: u64,
    /// WebRTC connections the server accepts in total; more are refused with `media_full`.
    pub max_connections: usize,
    /// ICE-TCP (RFC 6544): each worker also listens on TCP, at its UDP port number when
    /// `media_port` is set, so clients whose network blocks UDP still get audio.
    pub tcp: bool,
    /// RFC 2198 redundancy for listeners whose client negotiates `red/48000/2` (Chromium):
    /// each packet repeats this many earlier frames of the same speaker, so a lost packet is
    /// rebuilt from the next ones. 0 leaves RED out of the negotiation (Opus only).
    pub red: usize,
    /// What a new connection is made of: the lean transport (the default: ICE-lite over UDP
    /// and ICE-TCP, one DTLS handshake, SRTP keys into the worker's sealer), or `rtc`'s full
    /// peer connection. Named for listeners, it applies to every connection.
    pub listener_transport: ListenerTransport,
}

/// `[media] listener_transport`: the implementation a new WebRTC connection gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTransport {
    /// `rtc`'s `RTCPeerConnection` (full ICE, DTLS and SRTP stack): ~90 KiB per connection.
    Rtc,
    /// Stoa's lean connection (`media::lean`): ~16 KiB per connection, over UDP or ICE-TCP.
    #[default]
    Lean,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            workers: 0,
            slots: 3,
            ice_disconnected_ms: 6_000,
            ice_failed_ms: 4_000,
            max_connections: 20_000,
            tcp: true,
            red: 2,
            listener_transport: ListenerTransport::Lean,
        }
    }
}

impl MediaSettings {
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Live rooms and their signaling sockets.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalSettings {
    /// How long a participant whose socket dropped keeps their place (role, hand, stage).
    pub resume_grace_secs: u64,
    /// How often the server pings each socket.
    pub ping_interval_ms: u64,
    /// A socket silent for this long is considered dead.
    pub ping_timeout_ms: u64,
    /// Time a new socket has to send its `join` or `resume`.
    pub join_timeout_ms: u64,
    /// Largest message accepted; bigger ones get a `message_too_large` error.
    pub max_message_bytes: usize,
    /// Sustained messages per second per socket, and the burst allowed above it.
    pub messages_per_sec: u32,
    pub message_burst: u32,
    /// Refused messages (bad JSON, unknown types, floods) a socket may send within ten
    /// seconds before it is closed.
    pub max_strikes: u32,
    /// Messages queued for one socket before it is considered too slow and dropped.
    pub outbox_capacity: usize,
    /// Signaling sockets one client address may hold open at once.
    pub max_sockets_per_address: u32,
    /// Default room bounds when a room has none of its own.
    pub room_max_participants: u32,
    pub room_max_stage: u32,
    /// Rooms live at once (each holds a task and its participants' state); one more is
    /// refused with `too_many_rooms`.
    pub max_live_rooms: u32,
}

impl Default for SignalSettings {
    fn default() -> Self {
        SignalSettings {
            resume_grace_secs: 20,
            ping_interval_ms: 5_000,
            ping_timeout_ms: 15_000,
            join_timeout_ms: 10_000,
            max_message_bytes: 64 * 1024,
            messages_per_sec: 20,
            message_burst: 40,
            max_strikes: 20,
            outbox_capacity: 1024,
            max_sockets_per_address: 50,
            room_max_participants: 10_000,
            room_max_stage: 20,
            max_live_rooms: 1_000,
        }
    }
}

/// Bounds on what one client or one request may cost.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Invite redemptions allowed per client address per minute (sustained rate).
    pub joins_per_minute: u32,
    /// Redemptions a client address may make in a burst before the rate applies.
    pub join_burst: u32,
    /// Lifetime of a session token.
    pub session_ttl_secs: u64,
    /// Largest page a list endpoint returns.
    pub max_page_size: u32,
    /// Time a client has to send a request's headers; a slower one is disconnected. It also
    /// bounds the time from connecting (or finishing the TLS handshake) to the first request.
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed: one that
    /// sends nothing, stalls in a request body, or stops reading. Must exceed
    /// `signal.ping_interval_ms` (the pings keep quiet signaling sockets alive).
    pub idle_timeout_ms: u64,
    /// HTTP connections open at once; more are closed on arrival, logged and counted
    /// (`stoa_http_connections_refused_total`). 0: the open-file limit less a reserve.
    pub max_connections: usize,
    /// Failed authentications (wrong API key, invalid session token) allowed per client
    /// address per minute, and the burst above it; past them every call with credentials from
    /// that address gets 429 `too_many_failures` until the allowance refills.
    pub auth_failures_per_minute: u32,
    pub auth_failure_burst: u32,
    /// Calls of anonymous listeners (a listen link's entry point, broadcast heartbeats) allowed
    /// per client address per minute, and the burst above it. Many listeners may share one
    /// address (a school, a mobile carrier): each sends about four a minute.
    pub listener_calls_per_minute: u32,
    pub listener_call_burst: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            data_dir: PathBuf::from("./stoa-data"),
            log_format: LogFormat::Human,
            media_port: None,
            media_bind: None,
            public_ip: None,
            tls_cert: None,
            tls_key: None,
            api_key: None,
            signing_key: None,
            demo_room: true,
            trust_forwarded_for: false,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            signal: SignalSettings::default(),
            media: MediaSettings::default(),
            broadcast: BroadcastSettings::default(),
            cluster: ClusterSettings::default(),
            database: DatabaseSettings::default(),
            webhooks: WebhookSettings::default(),
            recording: RecordingSettings::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024,
            joins_per_minute: 30,
            join_burst: 20,
            session_ttl_secs: 15 * 60,
            max_page_size: 200,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_connections: 0,
            auth_failures_per_minute: 10,
            auth_failure_burst: 20,
            listener_calls_per_minute: 600,
            listener_call_burst: 120,
        }
    }
}

/// Settings given on the command line or in `STOA_*` variables; `None` keeps the file's value.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, global = true, env = "STOA_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, global = true, env = "STOA_BIND")]
    pub bind: Option<SocketAddr>,
    /// Base URL used in invite links.
    #[arg(long, global = true, env = "STOA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Data folder (database, keys).
    #[arg(long, global = true, env = "STOA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "STOA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// First UDP port of the media workers.
    #[arg(long, global = true, env = "STOA_MEDIA_PORT")]
    pub media_port: Option<u16>,
    /// IP the media UDP sockets bind to (default: the IP of --bind).
    #[arg(long, global = true, env = "STOA_MEDIA_BIND")]
    pub media_bind: Option<IpAddr>,
    /// Address put in ICE candidates.
    #[arg(long, global = true, env = "STOA_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// PEM certificate chain; serves HTTPS together with --tls-key.
    #[arg(long, global = true, env = "STOA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, global = true, env = "STOA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Redis shared by the cluster's nodes (`redis://host:6379`); unset, one node alone.
    #[arg(long, global = true, env = "STOA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, global = true, env = "STOA_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's own base URL, for signaling sockets (default: --public-url).
    #[arg(long, global = true, env = "STOA_NODE_URL")]
    pub node_url: Option<String>,
    /// Where the other nodes reach this one (http://, private network; default: --node-url).
    #[arg(long, global = true, env = "STOA_INTERNAL_URL")]
    pub internal_url: Option<String>,
    /// PostgreSQL URL (postgres://user:password@host:5432/database); unset, SQLite in the
    /// data folder.
    #[arg(long, global = true, env = "STOA_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The CA (PEM) that signed PostgreSQL's certificate, for a URL with sslmode=require
    /// (default: the system's roots).
    #[arg(long, global = true, env = "STOA_DATABASE_TLS_CA")]
    pub database_tls_ca: Option<PathBuf>,
    /// Do not create or print the demo room.
    #[arg(long, global = true, env = "STOA_NO_DEMO")]
    pub no_demo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads the file named by the overrides (if any), applies the overrides, then checks.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.api_key = std::env::var("STOA_API_KEY").ok().filter(|k| !k.is_empty());
        config.signing_key = std::env::var("STOA_SIGNING_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = o.bind {
            self.bind = v;
        }
        if let Some(v) = &o.public_url {
            self.public_url = Some(v.clone());
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
        if let Some(v) = o.media_port {
            self.media_port = Some(v);
        }
        if let Some(v) = o.media_bind {
            self.media_bind = Some(v);
        }
        if let Some(v) = o.public_ip {
            self.public_ip = Some(v);
        }
        if let Some(v) = &o.tls_cert {
            self.tls_cert = Some(v.clone());
        }
        if let Some(v) = &o.tls_key {
            self.tls_key = Some(v.clone());
        }
        if let Some(v) = &o.redis_url {
            self.cluster.redis_url = Some(v.clone());
        }
        if let Some(v) = &o.node_name {
            self.cluster.node_name = Some(v.clone());
        }
        if let Some(v) = &o.node_url {
            self.cluster.node_url = Some(v.clone());
        }
        if let Some(v) = &o.internal_url {
            self.cluster.internal_url = Some(v.clone());
        }
        if let Some(v) = &o.database_url {
            self.database.url = Some(v.clone());
        }
        if let Some(v) = &o.database_tls_ca {
            self.database.tls_ca = Some(v.clone());
        }
        if o.no_demo {
            self.demo_room = false;
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key must be given together".into(),
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "public_url must start with http:// or https://, got {url:?}"
            )));
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 || l.joins_per_minute == 0 || l.join_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits: max_body_bytes >= 1024, joins_per_minute and join_burst > 0".into(),
            ));
        }
        if l.listener_calls_per_minute == 0 || l.listener_call_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits: listener_calls_per_minute and listener_call_burst > 0".into(),
            ));
        }
        if l.header_read_timeout_ms < 100 {
            return Err(ConfigError::Invalid(
                "limits: header_read_timeout_ms >= 100".into(),
            ));
        }
        if l.idle_timeout_ms < 100 || l.idle_timeout_ms <= self.signal.ping_interval_ms {
            return Err(ConfigError::Invalid(
                "limits: idle_timeout_ms >= 100 and > signal.ping_interval_ms".into(),
            ));
        }
        if l.auth_failures_per_minute == 0 || l.auth_failure_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits: auth_failures_per_minute and auth_failure_burst > 0".into(),
            ));
        }
        if l.session_ttl_secs < 30 || l.max_page_size == 0 {
            return Err(ConfigError::Invalid(
                "limits: session_ttl_secs >= 30 and max_page_size > 0".into(),
            ));
        }
        let sig = &self.signal;
        if sig.ping_interval_ms == 0
            || sig.ping_timeout_ms <= sig.ping_interval_ms
            || sig.max_message_bytes < 1024
            || sig.messages_per_sec == 0
            || sig.message_burst == 0
            || sig.outbox_capacity < 16
            || sig.max_sockets_per_address == 0
            || sig.room_max_participants == 0
            || sig.room_max_stage == 0
            || sig.max_live_rooms == 0
        {
            return Err(ConfigError::Invalid(
                "signal: ping_timeout_ms > ping_interval_ms > 0, max_message_bytes >= 1024, \
                 rates > 0, outbox_capacity >= 16, room limits > 0"
                    .into(),
            ));
        }
        for origin in &self.allowed_origins {
            if !is_origin(origin) {
                return Err(ConfigError::Invalid(format!(
                    "allowed_origins: {origin:?} is not an origin like https://tools.example.org \
                     (scheme and host, an optional port, no path, no wildcard)"
                )));
            }
        }
        let m = &self.media;
        if m.workers > 64
            || m.slots == 0
            || m.slots > 8
            || m.ice_disconnected_ms < 1000
            || m.ice_failed_ms < 1000
            || m.max_connections == 0
            || m.red > MAX_RED
        {
            return Err(ConfigError::Invalid(
                "media: workers <= 64, slots 1..=8, ICE timeouts >= 1000 ms, max_connections > 0, \
                 red 0..=2"
                    .into(),
            ));
        }
        let b = &self.broadcast;
        if b.voices == 0
            || b.voices > 16
            || !(6_000..=510_000).contains(&b.bitrate)
            || b.idle_secs == 0
            || b.link_period_secs == 0
            || !(1..=MAX_WEBRTC_AUDIENCE_CAP).contains(&b.webrtc_audience_cap)
        {
            return Err(ConfigError::Invalid(
                "broadcast: voices 1..=16, bitrate 6000..=510000, idle_secs and \
                 link_period_secs > 0, webrtc_audience_cap 1..=1000000"
                    .into(),
            ));
        }
        let r = &self.recording;
        if r.live_clip_secs > MAX_LIVE_CLIP_SECS
            || !(1..=MAX_CLIP_SECS).contains(&r.max_clip_secs)
            || r.clips_per_minute == 0
            || r.clip_burst == 0
            || r.retention_days > MAX_RETENTION_DAYS
            || !(1..=86_400).contains(&r.retention_check_secs)
        {
            return Err(ConfigError::Invalid(format!(
                "recording: live_clip_secs 0..={MAX_LIVE_CLIP_SECS}, max_clip_secs \
                 1..={MAX_CLIP_SECS}, clips_per_minute and clip_burst > 0, retention_days \
                 0..=36500, retention_check_secs 1..=86400"
            )));
        }
        let c = &self.cluster;
        if let Some(url) = &c.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::Invalid(format!(
                "cluster: redis_url must start with redis:// or rediss://, got {:?}",
                redact_password(url)
            )));
        }
        if let Some(name) = &c.node_name
            && !is_node_name(name)
        {
            return Err(ConfigError::Invalid(format!(
                "cluster: node_name must be 1 to 63 letters, digits, '-', '_' or '.', got {name:?}"
            )));
        }
        if let Some(url) = &c.node_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "cluster: node_url must start with http:// or https://, got {url:?}"
            )));
        }
        if let Some(url) = &c.internal_url
            && !url.starts_with("http://")
        {
            return Err(ConfigError::Invalid(format!(
                "cluster: internal_url must start with http:// (calls between nodes are plain \
                 HTTP on the private network), got {url:?}"
            )));
        }
        let own = c.node_url.as_deref().or(self.public_url.as_deref());
        if c.redis_url.is_some()
            && c.internal_url.is_none()
            && own.is_some_and(|url| url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "cluster: this node's URL is https://, and calls between nodes are plain HTTP: \
                 set internal_url (STOA_INTERNAL_URL) to where the other nodes reach it, \
                 e.g. http://10.0.0.11:8080"
                    .into(),
            ));
        }
        if c.heartbeat_ms < 100 || c.node_ttl_ms < 3 * c.heartbeat_ms {
            return Err(ConfigError::Invalid(
                "cluster: heartbeat_ms >= 100 and node_ttl_ms >= 3 × heartbeat_ms".into(),
            ));
        }
        if !(c.home_full_at > 0.0 && c.home_full_at <= 1.0) {
            return Err(ConfigError::Invalid(
                "cluster: home_full_at is a fraction of the home's capacity, above 0 and at most 1"
                    .into(),
            ));
        }
        let d = &self.database;
        if let Some(url) = &d.url {
            check_database_url(url)?;
        }
        if d.max_connections == 0 || d.max_connections > 1000 {
            return Err(ConfigError::Invalid(
                "database: max_connections 1..=1000".into(),
            ));
        }
        if !(100..=600_000).contains(&d.statement_timeout_ms) {
            return Err(ConfigError::Invalid(
                "database: statement_timeout_ms 100..=600000".into(),
            ));
        }
        self.webhooks.check()
    }
}

impl WebhookSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |why: String| Err(ConfigError::Invalid(format!("webhooks: {why}")));
        match (&self.url, &self.secret) {
            (None, None) => {}
            (Some(url), Some(secret)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return invalid(format!(
                        "url must start with https:// or http://, got {url:?}"
                    ));
                }
                if reqwest::Url::parse(url).is_err() {
                    return invalid(format!("url is not a URL: {url:?}"));
                }
                if let Err(why) = signing_key(secret) {
                    return invalid(why.into());
                }
            }
            _ => return invalid("url and secret must be given together".into()),
        }
        if self.max_attempts == 0
            || self.max_age_secs == 0
            || self.timeout_ms < 100
            || self.retry_first_ms == 0
            || self.retry_max_ms < self.retry_first_ms
            || self.concurrency == 0
            || self.room_concurrency == 0
        {
            return invalid(
                "max_attempts, max_age_secs, concurrency, room_concurrency > 0; \
                 timeout_ms >= 100; retry_max_ms >= retry_first_ms > 0"
                    .into(),
            );
        }
        if self.room_allowed_hosts.len() > 100
            || self
                .room_allowed_hosts
                .iter()
                .any(|h| h.is_empty() || h.len() > 253)
        {
            return invalid("room_allowed_hosts: at most 100 host names of 1 to 253 bytes".into());
        }
        Ok(())
    }
}

/// The key inside a Standard Webhooks secret: `whsec_` + base64 of 24 to 64 bytes.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, &'static str> {
    use base64::Engine as _;
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("secret must start with whsec_")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "secret must be whsec_ followed by base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err("secret must hold 24 to 64 bytes");
    }
    Ok(key)
}

impl Config {
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The base URL for links, without a trailing slash.
    pub fn public_base_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls_enabled() { "https" } else { "http" };
                format!("{scheme}://{}", self.bind)
            }
        }
    }
}

/// A URL as it may be printed: any password replaced by `***`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// A PostgreSQL URL the driver can use; the message never repeats the URL (it may hold a
/// password).
fn check_database_url(url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::Invalid(
            "database.url must start with postgres:// or postgresql:// (leave it unset for \
             SQLite in the data folder)"
                .into(),
        ));
    }
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid(format!("database.url is not a valid URL: {e}")))
}

/// `http(s)://host[:port]`, exactly as a browser writes it in `Origin` (no path, no `*`).
fn is_origin(s: &str) -> bool {
    let Some(authority) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./stoa-data"));
        assert_eq!(c.public_base_url(), "http://127.0.0.1:8080");
        c.validate().unwrap();
    }

    #[test]
    fn file_then_overrides() {
        let mut c = Config::from_toml(
            "bind = \"0.0.0.0:9000\"\npublic_url = \"https://rooms.example/\"\n[limits]\njoins_per_minute = 5\n",
        )
        .unwrap();
        assert_eq!(c.limits.joins_per_minute, 5);
        assert_eq!(c.limits.join_burst, Limits::default().join_burst);
        assert_eq!(c.public_base_url(), "https://rooms.example");
        c.apply(&Overrides {
            bind: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(c.bind.to_string(), "127.0.0.1:7000");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("bnid = \"x\"").is_err());
        assert!(Config::from_toml("bind = 5").is_err());
        let c = Config {
            public_url: Some("ftp://x".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_listener_transport_is_lean_unless_set_to_rtc() {
        let transport = |text: &str| Config::from_toml(text).map(|c| c.media.listener_transport);
        assert_eq!(transport(""), Ok(ListenerTransport::Lean));
        assert_eq!(
            transport("[media]\nlistener_transport = \"lean\""),
            Ok(ListenerTransport::Lean)
        );
        assert_eq!(
            transport("[media]\nlistener_transport = \"rtc\""),
            Ok(ListenerTransport::Rtc)
        );
        for bad in ["\"quic\"", "\"Lean\"", "1", "true"] {
            let text = format!("[media]\nlistener_transport = {bad}");
            assert!(Config::from_toml(&text).is_err(), "{text} is refused");
        }
    }

    #[test]
    fn cluster_settings_are_checked() {
        let bad = |cluster: ClusterSettings| {
            Config {
                cluster,
                ..Config::default()
            }
            .validate()
            .is_err()
        };
        assert!(bad(ClusterSettings {
            redis_url: Some("http://localhost:6379".into()),
            ..ClusterSettings::default()
        }));
        assert!(bad(ClusterSettings {
            node_name: Some("a b".into()),
            ..ClusterSettings::default()
        }));
        assert!(bad(ClusterSettings {
            node_ttl_ms: 1_000,
            ..ClusterSettings::default()
        }));
        for home_full_at in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(bad(ClusterSettings {
                home_full_at,
                ..ClusterSettings::default()
            }));
        }
        // An https:// node in a cluster says where the others reach it over plain HTTP.
        assert!(bad(ClusterSettings {
            redis_url: Some("redis://127.0.0.1:6379/2".into()),
            node_url: Some("https://node-a.example.org".into()),
            ..ClusterSettings::default()
        }));
        assert!(bad(ClusterSettings {
            internal_url: Some("https://10.0.0.11:8080".into()),
            ..ClusterSettings::default()
        }));
        assert!(!bad(ClusterSettings {
            redis_url: Some("redis://127.0.0.1:6379/2".into()),
            node_name: Some("node-a.eu_1".into()),
            node_url: Some("https://node-a.example.org".into()),
            internal_url: Some("http://10.0.0.11:8080".into()),
            ..ClusterSettings::default()
        }));
        assert_eq!(
            redact_password("redis://stoa:s3cret@db:6379/0"),
            "redis://stoa:***@db:6379/0"
        );
        assert_eq!(redact_password("redis://db:6379"), "redis://db:6379");
        let shown = format!(
            "{:?}",
            ClusterSettings {
                redis_url: Some("redis://stoa:s3cret@db:6379".into()),
                ..ClusterSettings::default()
            }
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    /// operations.md shows what an unknown key gets; keep it true as settings are added.
    #[test]
    fn the_unknown_key_example_in_the_docs_is_what_the_server_says() {
        let message = Config::from_toml("bnid = \"x\"").unwrap_err();
        let said = message.lines().last().unwrap();
        assert!(said.starts_with("unknown field `bnid`"), "{message}");
        let docs = include_str!("../../docs/operations.md");
        assert!(docs.contains(said), "operations.md should show: {said}");
        for (key, example) in [
            ("[limits]", "idle_timeout_ms = 30000"),
            ("[limits]", "auth_failure_burst = 20"),
        ] {
            assert!(docs.contains(example), "{key} {example}");
        }
    }

    #[test]
    fn a_database_url_must_be_postgres_and_stays_out_of_logs() {
        let mut c = Config::from_toml(
            "[database]\nurl = \"postgres://stoa:secret@db.example:5432/stoa\"\nmax_connections = 4\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        c.apply(&Overrides {
            database_url: Some("mysql://stoa:secret@db.example/stoa".into()),
            ..Default::default()
        });
        let refused = c.validate().unwrap_err().to_string();
        assert!(refused.contains("postgres://"), "{refused}");
        assert!(!refused.contains("secret"), "{refused}");
        c.database.url = Some("postgres://stoa@db.example:port/stoa".into());
        assert!(c.validate().is_err());
        assert!(Config::from_toml("[database]\nuri = \"postgres://x\"\n").is_err());
    }

    #[test]
    fn the_webrtc_audience_cap_is_checked_at_start() {
        let c = Config::from_toml("[broadcast]\nwebrtc_audience_cap = 2\n").unwrap();
        assert_eq!(c.broadcast.webrtc_audience_cap, 2);
        c.validate().unwrap();
        for bad in [0, 1_000_001] {
            let mut c = Config::default();
            c.broadcast.webrtc_audience_cap = bad;
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        for good in [
            "https://tools.example.org",
            "http://127.0.0.1:3000",
            "http://[::1]:80",
        ] {
            let c = Config {
                allowed_origins: vec![good.into()],
                ..Config::default()
            };
            assert!(c.validate().is_ok(), "{good}");
        }
        for bad in [
            "*",
            "https://*.example.org",
            "https://a.example/",
            "tools.example.org",
            "https://",
        ] {
            let c = Config {
                allowed_origins: vec![bad.into()],
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
