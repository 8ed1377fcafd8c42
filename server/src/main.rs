//! The `stoa` command: `stoa serve` (the default) runs the server; `stoa room …` and
//! `stoa invite …` are admin commands that talk to a running server with the operator key.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stoa::config::{Config, LogFormat, Overrides};
use stoa::control::{Delivery, Role};
use stoa::server::KeySource;

#[derive(Parser)]
#[command(name = "stoa", version, about = "Live, invite-only audio rooms")]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Manage rooms on a running server.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Manage invite links on a running server.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Drain a running node of a cluster: it takes no more people and hands its rooms over to
    /// the other nodes (as on a stop), then keeps running, empty, until it is stopped.
    Drain {
        #[command(flatten)]
        target: admin::Target,
    },
}

#[derive(Subcommand)]
enum RoomCommand {
    /// Create a room.
    Create {
        #[arg(long)]
        title: String,
        #[command(flatten)]
        target: admin::Target,
    },
    /// List rooms.
    List {
        #[command(flatten)]
        target: admin::Target,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Make an invite link for a room.
    Create {
        #[arg(long)]
        room: String,
        #[arg(long, value_parser = parse_role, default_value = "listener")]
        role: Role,
        /// How its people hear the room: webrtc, or broadcast (the stage mixed once, over
        /// LL-HLS; listener invites only).
        #[arg(long, value_parser = parse_delivery, default_value = "webrtc")]
        delivery: Delivery,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        max_uses: Option<u32>,
        /// Seconds until the link stops working.
        #[arg(long)]
        expires_in: Option<u64>,
        #[command(flatten)]
        target: admin::Target,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "expected listener, speaker or moderator".into())
}

fn parse_delivery(s: &str) -> Result<Delivery, String> {
    Delivery::parse(s).ok_or_else(|| "expected webrtc or broadcast".into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stoa: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Room(RoomCommand::Create { title, target }) => {
                admin::create_room(&config, &target, &title).await
            }
            Command::Drain { target } => admin::drain(&config, &target).await,
            Command::Room(RoomCommand::List { target }) => {
                admin::list_rooms(&config, &target).await
            }
            Command::Invite(InviteCommand::Create {
                room,
                role,
                delivery,
                label,
                max_uses,
                expires_in,
                target,
            }) => {
                let body = serde_json::json!({
                    "role": role, "delivery": delivery, "label": label, "max_uses": max_uses,
                    "expires_in_secs": expires_in,
                });
                admin::create_invite(&config, &target, &room, body).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stoa: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    // Logs go to stderr, so stdout carries only the start banner (and the admin commands'
    // output), and colour only when stderr is a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // `init` also routes the `log` crate's records (the WebRTC stack, tungstenite) through the
    // same filter.
    tracing_subscriber::util::SubscriberInitExt::init(log_subscriber(
        rust_log.as_deref(),
        format,
        ansi,
        std::io::stderr,
    ));
}

/// The log filter: `RUST_LOG` if set, else Stoa's default.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let filter = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(
                // The WebRTC stack logs every connection's state changes at info; Stoa's own
                // media logs say what matters. Chromium's DTLS 1.3 extensions make rtc_dtls
                // warn on every handshake.
                "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_srtp=warn,rtc_sctp=warn,\
                 rtc_interceptor=warn,rtc_stun=warn",
            )
        });
    SECRETIVE_TARGETS.iter().fold(filter, |filter, target| {
        filter.add_directive(format!("{target}=info").parse().expect("a valid directive"))
    })
}

/// Crates whose debug and trace lines carry secrets, capped at `info` whatever `RUST_LOG`
/// says: rtc_ice logs the client's ICE password, tungstenite every WebSocket frame (and
/// signaling messages carry session and resume tokens). `tokio_tungstenite` is another target:
/// its trace lines are about polling, not payloads.
const SECRETIVE_TARGETS: [&str; 2] = ["rtc_ice", "tungstenite"];

/// Whether a log line may be written: `info` and above for the crates above, anything else.
/// Checked after the filter too, so a more specific `RUST_LOG` directive
/// (`rtc_ice::agent=trace`) cannot bring the lines back.
fn keeps_secrets(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO
        || !SECRETIVE_TARGETS.iter().any(|target| {
            meta.target()
                .strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

fn log_subscriber<W>(
    rust_log: Option<&str>,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(rust_log))
        .with_writer(writer)
        .with_ansi(ansi);
    let secrets = tracing_subscriber::filter::filter_fn(keeps_secrets);
    match format {
        LogFormat::Human => Box::new(builder.finish().with(secrets)),
        LogFormat::Json => Box::new(builder.json().finish().with(secrets)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    let server = stoa::start(config).await?;
    let mut banner = format!("\n  Stoa is running at {}\n", server.base_url);
    match &server.key_source {
        KeySource::Environment => banner += "  Operator API key: taken from STOA_API_KEY\n",
        KeySource::File { path, created } => {
            let new = if *created { " (new)" } else { "" };
            banner += &format!("  Operator API key: {}{new}\n", path.display());
        }
    }
    if let Some(cluster) = &server.state.cluster {
        banner += &format!(
            "  Cluster node {:?}, signaling at {}\n",
            cluster.node_name(),
            server.state.signal_url()
        );
    }
    if let Some(link) = &server.startup_link {
        banner += &format!(
            "  Moderator link for \"{}\" (valid 24 h):\n    {}\n",
            link.room_title, link.url
        );
    }
    // Whoever started us may have stopped reading stdout; that must not stop the server.
    let _ = writeln!(std::io::stdout(), "{banner}");
    tracing::info!(addr = %server.addr, "listening");

    let handle = server.handle();
    let state = server.state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stoa::server::stop_rooms(&state).await;
        state.media.stop().await;
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    server.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

mod admin {
    //! Admin commands: plain REST calls to a running server with the operator key.

    use anyhow::{Context, bail};
    use stoa::config::Config;

    #[derive(clap::Args)]
    pub struct Target {
        /// Base URL of the running server (default: http://<bind>).
        #[arg(long, env = "STOA_SERVER")]
        server: Option<String>,
    }

    struct Client {
        http: reqwest::Client,
        base: String,
        key: String,
    }

    fn client(config: &Config, target: &Target) -> anyhow::Result<Client> {
        let key = match &config.api_key {
            Some(k) => k.clone(),
            None => {
                let path = config.data_dir.join("operator.key");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "cannot read the operator key at {} (set STOA_API_KEY or --data-dir)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let base = match &target.server {
            Some(s) => s.trim_end_matches('/').to_owned(),
            None => format!("http://{}", config.bind),
        };
        if base.starts_with("https://") {
            bail!("the admin commands speak plain HTTP; point --server at a local http:// address");
        }
        Ok(Client {
            // Plain HTTP only (above): no root certificates needed.
            http: stoa::http_client::builder()
                .tls_certs_only(Vec::new())
                .build()
                .context("cannot make an HTTP client")?,
            base,
            key,
        })
    }

    impl Client {
        async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
            let res = req
                .bearer_auth(&self.key)
                .send()
                .await
                .with_context(|| format!("cannot reach the server at {}", self.base))?;
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap_or(serde_json::Value::Null);
            if !status.is_success() {
                bail!(
                    "{} {}: {}",
                    status.as_u16(),
                    body["code"].as_str().unwrap_or("error"),
                    body["detail"].as_str().unwrap_or("")
                );
            }
            Ok(body)
        }
    }

    pub async fn create_room(config: &Config, target: &Target, title: &str) -> anyhow::Result<()> {
        let c = client(config, target)?;
        let room = c
            .send(
                c.http
                    .post(format!("{}/api/v1/rooms", c.base))
                    .json(&serde_json::json!({ "title": title })),
            )
            .await?;
        println!(
            "{}\t{}",
            room["id"].as_str().unwrap_or(""),
            room["title"].as_str().unwrap_or("")
        );
        Ok(())
    }

    pub async fn list_rooms(config: &Config, target: &Target) -> anyhow::Result<()> {
        let c = client(config, target)?;
        let mut cursor: Option<String> = None;
        let mut rows = Vec::new();
        loop {
            let mut req = c.http.get(format!("{}/api/v1/rooms", c.base));
            if let Some(cur) = &cursor {
                req = req.query(&[("cursor", cur)]);
            }
            let page = c.send(req).await?;
            for room in page["items"].as_array().into_iter().flatten() {
                rows.push(format!(
                    "{}\t{}\t{}\t{}",
                    room["id"].as_str().unwrap_or(""),
                    room["created_at"].as_str().unwrap_or(""),
                    room["ended_at"].as_str().unwrap_or("-"),
                    room["title"].as_str().unwrap_or("")
                ));
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        println!("ID\tCREATED\tENDED\tTITLE");
        for row in rows {
            println!("{row}");
        }
        Ok(())
    }

    pub async fn drain(config: &Config, target: &Target) -> anyhow::Result<()> {
        let c = client(config, target)?;
        let drained = c
            .send(c.http.post(format!("{}/api/v1/cluster/drain", c.base)))
            .await?;
        let node = drained["node"].as_str().unwrap_or("");
        let rooms = drained["rooms_handed_over"].as_u64().unwrap_or(0);
        match drained["moved_to"].as_str() {
            Some(to) => println!("{node} is draining: {rooms} live rooms handed over to {to}"),
            None => println!("{node} is draining: no live rooms to hand over"),
        }
        println!("It takes no more people; stop it when you like.");
        Ok(())
    }

    pub async fn create_invite(
        config: &Config,
        target: &Target,
        room: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<()> {
        let c = client(config, target)?;
        let invite = c
            .send(
                c.http
                    .post(format!("{}/api/v1/rooms/{room}/invites", c.base))
                    .json(&body),
            )
            .await?;
        println!("{}", invite["url"].as_str().unwrap_or(""));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    fn logged(rust_log: Option<&str>, format: LogFormat) -> String {
        let out = Captured::default();
        let subscriber = log_subscriber(rust_log, format, false, out.clone());
        tracing::subscriber::with_default(subscriber, || {
            // What rtc_ice and tungstenite write at debug: the ICE password, WebSocket frames.
            tracing::debug!(target: "rtc_ice::agent", "remote pwd hunter2-ice-password");
            tracing::debug!(target: "tungstenite::protocol", "frame st1.session-token");
            tracing::trace!(target: "tungstenite", "frame st1.session-token");
            tracing::info!(target: "stoa::api", "an ordinary line");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn secrets_stay_out_of_the_logs_whatever_the_filter() {
        for rust_log in [
            None,
            Some("info"),
            Some("debug"),
            Some("trace"),
            Some("rtc_ice=trace,tungstenite=trace,info"),
            Some("rtc_ice::agent=trace,tungstenite::protocol=trace,info"),
        ] {
            for format in [LogFormat::Human, LogFormat::Json] {
                let out = logged(rust_log, format);
                assert!(out.contains("an ordinary line"), "{rust_log:?}: {out}");
                assert!(!out.contains("hunter2"), "{rust_log:?}: {out}");
                assert!(!out.contains("st1."), "{rust_log:?}: {out}");
            }
        }
    }
}
