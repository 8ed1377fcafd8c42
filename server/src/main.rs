//! The `stoa` command: `stoa serve` (the default) runs the server; `stoa room …` and
//! `stoa invite …` are admin commands that talk to a running server with the operator key.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stoa::config::{Config, LogFormat, Overrides};
use stoa::control::Role;
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
            Command::Room(RoomCommand::List { target }) => admin::list_rooms(&config, &target).await,
            Command::Invite(InviteCommand::Create {
                room,
                role,
                label,
                max_uses,
                expires_in,
                target,
            }) => {
                let body = serde_json::json!({
                    "role": role, "label": label, "max_uses": max_uses, "expires_in_secs": expires_in,
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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            // The WebRTC stack logs every connection's state changes at info; Stoa's own
            // media logs say what matters. Chromium's DTLS 1.3 extensions make rtc_dtls warn
            // on every handshake.
            "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_srtp=warn,rtc_sctp=warn,\
             rtc_interceptor=warn,rtc_stun=warn",
        )
    });
    // Whatever RUST_LOG asks for: tungstenite logs every WebSocket message at trace level,
    // and signaling messages carry session and resume tokens.
    let filter = filter.add_directive("tungstenite=debug".parse().expect("a valid directive"));
    // Logs go to stderr, so stdout carries only the start banner (and the admin commands'
    // output), and colour only when stderr is a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
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
    let live = server.state.live.clone();
    let media = server.state.media.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        live.shutdown().await;
        media.stop().await;
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
            http: reqwest::Client::new(),
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
