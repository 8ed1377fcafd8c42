//! Starting and stopping a whole Stoa server: data folder, keys, store, HTTP(S) listener,
//! the startup link. Used by `stoa serve` and, in-process, by the tests.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;

use crate::api::{self, AppState};
use crate::clock::Clock;
use crate::cluster::{Cluster, CpuMeter, Fingerprints, Load};
use crate::config::Config;
use crate::connection::{self, GuardedAcceptor};
use crate::control::RoomId;
use crate::control::Store;
use crate::media::{Media, MediaOptions};
use crate::metrics::Metrics;
use crate::session::{OperatorKey, TokenSigner, load_or_create_secret};

/// Where the operator key came from, for the startup banner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File { path: PathBuf, created: bool },
}

/// A link printed at start so a new user can walk straight into a room.
#[derive(Clone, Debug)]
pub struct StartupLink {
    pub room_title: String,
    pub url: String,
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub key_source: KeySource,
    pub startup_link: Option<StartupLink>,
    pub state: AppState,
    handle: Handle<SocketAddr>,
    housekeeping: tokio::task::JoinHandle<()>,
    /// Deletes this node's recordings and clips past their retention.
    retention: tokio::task::JoinHandle<()>,
    /// Keeps this node and its rooms' leases alive in the cluster.
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Sends the webhook outbox.
    webhook_task: tokio::task::JoinHandle<()>,
    media_task: tokio::task::JoinHandle<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish (up to 10 s), and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
        stop_rooms(&self.state).await;
        // Rows it was sending stay leased until their lease ends; the next start sends them.
        self.webhook_task.abort();
        self.state.media.stop().await;
        self.media_task.abort();
        self.handle.graceful_shutdown(Some(Duration::from_secs(10)));
        self.housekeeping.abort();
        self.retention.abort();
        self.task.await.context("server task panicked")??;
        Ok(())
    }

    /// Waits until the server stops by itself (it normally does not).
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.task.await;
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
        self.housekeeping.abort();
        self.retention.abort();
        self.media_task.abort();
        self.webhook_task.abort();
        result.context("server task panicked")??;
        Ok(())
    }

    pub fn handle(&self) -> Handle<SocketAddr> {
        self.handle.clone()
    }
}

/// Connections the kernel may hold for us before we accept them. `std`'s 128 overflowed when
/// 500 people joined at once (each a redeem and a signaling socket): the dropped SYNs came
/// back after the kernel's one-second retransmission, the whole burst's tail. The kernel caps
/// it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// The HTTP listener on `addr`, with room for a burst of joins in its accept queue.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `std`'s bind does: a restarted server may bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Starts a server with the system clock.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with_clock(config, Clock::system()).await
}

/// Starts a server whose notion of time is `clock` (tests pass a manual clock).
pub async fn start_with_clock(config: Config, clock: Clock) -> anyhow::Result<RunningServer> {
    config.validate()?;
    if let Some(key) = &config.api_key {
        OperatorKey::check_strength(key).map_err(anyhow::Error::msg)?;
    }
    let descriptor_limit = connection::raise_descriptor_limit();
    let data_dir = config.data_dir.clone();
    create_private_dir(&data_dir)
        .with_context(|| format!("cannot create data folder {}", data_dir.display()))?;
    make_private(&data_dir)
        .with_context(|| format!("cannot make {} private", data_dir.display()))?;

    let store = match &config.database.url {
        None => Store::open(&data_dir.join("stoa.db")).context("cannot open the database")?,
        Some(url) => Store::connect_postgres_tls(
            url,
            config.database.max_connections,
            config.database.tls_ca.as_deref(),
            std::time::Duration::from_millis(config.database.statement_timeout_ms),
        )
        .await
        .context("cannot open the PostgreSQL database")?,
    }
    .with_server_webhooks(config.webhooks.url.is_some());
    let (operator_key, key_source) = match &config.api_key {
        Some(key) => (OperatorKey::new(key), KeySource::Environment),
        None => {
            let path = data_dir.join("operator.key");
            let existed = path.exists();
            let key = load_or_create_secret(&path, OperatorKey::generate)
                .with_context(|| format!("cannot read or create {}", path.display()))?;
            (
                OperatorKey::new(&key),
                KeySource::File {
                    path,
                    created: !existed,
                },
            )
        }
    };
    let signer = match &config.signing_key {
        Some(text) => TokenSigner::from_text(text).context(
            "STOA_SIGNING_KEY must be 32 bytes in base64url without padding (43 characters), \
             like the signing.key file a node writes on first start",
        )?,
        None => TokenSigner::load_or_create(&data_dir.join("signing.key"))
            .context("cannot read or create the token signing key")?,
    };
    let fingerprints = Fingerprints {
        signing: signer.fingerprint(),
        operator: operator_key.fingerprint(),
    };

    let listener =
        listen(config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    let base_url = match &config.public_url {
        Some(_) => config.public_base_url(),
        None => {
            let scheme = if config.tls_enabled() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{addr}")
        }
    };

    let metrics = Metrics::default();
    let media_options = MediaOptions {
        settings: config.media.clone(),
        bind_ip: config.media_bind.unwrap_or(config.bind.ip()),
        port: config.media_port,
        public_ip: config.public_ip,
    };
    let (media, media_reports) =
        Media::start(&media_options, &metrics.media).context("cannot start the media workers")?;

    // The webhook outbox is drained whatever happens to rooms here: rooms' own endpoints
    // always, the server's when `[webhooks] url` is set.
    let webhook_task =
        crate::webhooks::start_sender(store.clone(), config.webhooks.clone(), metrics.clone())
            .context("cannot start the webhook sender")?;
    let config = Arc::new(config);
    let mut state = AppState::new(
        store.clone(),
        clock.clone(),
        config.clone(),
        base_url.clone(),
        operator_key,
        signer,
        metrics,
        media.clone(),
    );
    // Recordings a kill left open are closed before any room can be recorded again.
    match state.recordings.recover().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(recordings = n, "closed recordings left open"),
        Err(e) => tracing::error!(error = %e, "cannot close recordings left open"),
    }
    let retention = tokio::spawn(state.recordings.clone().keep_retention());
    let mut heartbeat = None;
    if config.cluster.enabled() {
        let cluster = Cluster::join(&config.cluster, (*state.node).clone(), fingerprints)
            .await
            .context("cannot join the cluster")?;
        cluster.set_resume_grace_ms(config.signal.resume_grace_secs.saturating_mul(1000));
        state = state.with_cluster(cluster.clone());
        heartbeat = Some(tokio::spawn(keep_in_cluster(cluster, state.clone())));
    }
    let live = state.live.clone();
    let media_task = tokio::spawn(
        media.run_reports(media_reports, move |room, levels, heard| {
            live.media_speaking(room, levels, heard)
        }),
    );
    let app = api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // The join limiter keeps a bucket per client address; forget the idle ones now and then.
    let limiter = state.join_limiter.clone();
    let auth_throttle = state.auth_throttle.clone();
    let clip_limiter = state.clip_limiter.clone();
    let clip_address_limiter = state.clip_address_limiter.clone();
    let housekeeping = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limiter.retain_recent();
            limiter.shrink_to_fit();
            auth_throttle.retain_recent();
            clip_limiter.retain_recent();
            clip_limiter.shrink_to_fit();
            clip_address_limiter.retain_recent();
            clip_address_limiter.shrink_to_fit();
        }
    });
    let handle = Handle::new();
    let header_timeout = Duration::from_millis(config.limits.header_read_timeout_ms);
    // Every connection holds a descriptor: idle and stalled ones are closed on a timer, and
    // past the cap new ones are refused (logged and counted) rather than starving the rest.
    let max_connections = match config.limits.max_connections {
        0 => connection::default_max_connections(descriptor_limit),
        n => n,
    };
    let guarded = GuardedAcceptor::new(
        max_connections,
        Duration::from_millis(config.limits.idle_timeout_ms),
        state.metrics.connections.clone(),
    );
    let on_accept_error = {
        let guarded = guarded.clone();
        // Without an address it is the listener's own accept that failed; with one, a connection
        // our acceptor refused or whose TLS handshake failed (already counted, or routine).
        move |peer: Option<&SocketAddr>, e: &std::io::Error| {
            if peer.is_none() {
                guarded.accept_failed(e);
            }
        }
    };
    let task = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = RustlsConfig::from_pem_file(cert, key)
                .await
                .context("cannot load the TLS certificate or key")?;
            let mut server = axum_server::from_tcp_rustls(listener, tls)?
                .map(|tls| tls.handshake_timeout(header_timeout).acceptor(guarded))
                .handle(handle.clone())
                .first_request_timeout(header_timeout)
                .accept_error_handler(on_accept_error);
            // axum-server turns hyper's header timeout off; a client trickling its headers
            // would hold the connection for ever.
            server
                .http_builder()
                .http1()
                .header_read_timeout(header_timeout);
            tokio::spawn(server.serve(app))
        }
        _ => {
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(guarded)
                .handle(handle.clone())
                .first_request_timeout(header_timeout)
                .accept_error_handler(on_accept_error);
            server
                .http_builder()
                .http1()
                .header_read_timeout(header_timeout);
            tokio::spawn(server.serve(app))
        }
    };

    let startup_link = if config.demo_room {
        store
            .startup_link(clock.now_ms())
            .await?
            .map(|(room, created)| StartupLink {
                room_title: room.title,
                url: state.invite_url(created.code.as_str()),
            })
    } else {
        None
    };

    Ok(RunningServer {
        heartbeat,
        webhook_task,
        addr,
        base_url,
        key_source,
        startup_link,
        state,
        handle,
        housekeeping,
        retention,
        media_task,
        task,
    })
}

/// Stops the live rooms for a shutdown: handed over to another node in a cluster
/// ([`AppState::hand_rooms_over`]).
pub async fn stop_rooms(state: &AppState) {
    state.hand_rooms_over().await;
}

/// Every heartbeat: this node's load into the registry, and its rooms' leases renewed. A
/// room whose lease another node took (this one was cut off from Redis meanwhile) stops here;
/// its people come back where it lives now.
async fn keep_in_cluster(cluster: Cluster, state: AppState) {
    let mut every = tokio::time::interval(Duration::from_millis(cluster.settings().heartbeat_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu = CpuMeter::default();
    loop {
        every.tick().await;
        let load = Load {
            connections: u32::try_from(state.metrics.signal_sockets.get()).unwrap_or(0),
            rooms: u32::try_from(cluster.rooms_held()).unwrap_or(u32::MAX),
            cpu_percent: cpu.sample(),
        };
        cluster.heartbeat(load, state.clock.now_ms()).await;
        let live = |room: &str| RoomId::parse(room).is_some_and(|id| state.live.get(&id).is_some());
        match cluster.renew(live).await {
            Ok(lost) => {
                for room in lost {
                    tracing::warn!(%room, "another node took this room; letting it go");
                    if let Some(id) = RoomId::parse(&room) {
                        state.live.evict(&id).await;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot renew room leases"),
        }
        // Relay links: an edge renews the ones it took, a home drops those not renewed.
        if let Some(links) = &state.signal.relay_links {
            links.sweep(Duration::from_millis(cluster.settings().node_ttl_ms));
            let links = links.clone();
            // Calls on other nodes: a slow one must not hold up this node's own heartbeat.
            tokio::spawn(async move { links.renew().await });
        }
    }
}

/// The data folder holds names, the audit log and the keys: owner only, whatever mode an older
/// version or a hand-made folder left it with. The database is created 0600 before SQLite
/// opens it (SQLite gives its -wal and -shm files the database file's mode).
fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("stoa.db"))?;
        for name in PRIVATE_FILES {
            let path = dir.join(name);
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(e);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Files of the data folder that only the server's user may read.
const PRIVATE_FILES: [&str; 5] = [
    "stoa.db",
    "stoa.db-wal",
    "stoa.db-shm",
    "operator.key",
    "signing.key",
];

fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A burst of joins finds room in the accept queue: 600 connections complete their
    /// handshake before the server accepts any of them. With `std`'s backlog of 128 the 130th
    /// SYN is dropped and its connect waits for the kernel's retransmission a second later.
    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_of_joins() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::task::spawn_blocking(move || {
            (0..600)
                .map(|i| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                        .map_err(|e| format!("connection {i}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
        assert_eq!(held.map(|c| c.len()), Ok(600));
        drop(listener);
    }
}
