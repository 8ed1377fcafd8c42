//! `stoa-loadgen`'s core: loads a running server with real WebRTC clients and measures it.
//!
//! Against a server at `url` (loopback only unless `allow_remote`), with the operator key, it
//! creates a room and two invites (speaker, listener) through the REST API, redeems one invite
//! per client (`POST /api/v1/join`), joins every client over its own signaling WebSocket (tokio
//! tasks, one [`SignalClient`] each) and opens its media as an `rtc` sans-IO peer connection.
//! All peer connections live on one thread (the media thread), each with its own loopback UDP
//! socket, driven through epoll and a timer heap, as `stoa-media-bench` does.
//!
//! Once every client has joined (or failed), the speakers send real Opus frames (a 440 Hz tone
//! with a little noise, mono, 20 ms, with the RFC 6464 audio-level extension) for `seconds`;
//! listeners count what arrives. Measured:
//!
//! - joins: successes, failures, and the time from the redeem request to the media connection
//!   reaching `connected`;
//! - per listener: packets expected (what the speakers sent from the first packet of theirs that
//!   listener received), received, lost; and loss from RTP sequence gaps per stream;
//! - server-added delay: every payload a speaker sends is hashed and stamped (CLOCK_REALTIME
//!   just before the packet is encrypted and sent); listeners' sockets carry kernel receive
//!   stamps (`SO_TIMESTAMPNS`, same clock), and the payload the listener decrypts is hashed and
//!   looked up. The server forwards payloads unchanged (it rewrites SSRC, sequence number and
//!   timestamp, never the payload), so the hash identifies the packet. What is measured
//!   includes the client's own SRTP encrypt and `sendto` and both kernels' loopback paths, but
//!   not the client's receive-side processing;
//! - the server's CPU time (utime + stime) over the sending window and its resident memory,
//!   from `/proc/<server_pid>`, when a pid is given.
//!
//! Everything is bounded: joins time out, the run lasts `seconds`, then it stops by itself.

use crate::rtc_client::{Poller, client_engine};
use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::crypto::SignatureScheme;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{Value, json};

use crate::media::{SAMPLE_RATE, audio_level};
use crate::signal::SignalClient;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const OPUS_PT: u8 = 111;
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const FRAME: Duration = Duration::from_millis(20);
const FRAME_SAMPLES: usize = (SAMPLE_RATE / 50) as usize;
/// Time after the last packet for stragglers to reach the listeners.
const TAIL: Duration = Duration::from_millis(500);
/// Longest the media thread sleeps before looking at its command queue.
const COMMAND_POLL: Duration = Duration::from_millis(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The operator key.
    pub api_key: String,
    pub speakers: usize,
    pub listeners: usize,
    /// Length of the sending window.
    pub seconds: f64,
    /// The server's process id, for CPU and memory from `/proc`.
    pub server_pid: Option<u32>,
    /// Allow a server that is not on a loopback address.
    pub allow_remote: bool,
    /// Joins in flight at once.
    pub join_concurrency: usize,
    /// How long the whole join phase may take.
    pub join_timeout: Duration,
    /// A progress line on stderr every second.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "http://127.0.0.1:8080".to_owned(),
            api_key: String::new(),
            speakers: 1,
            listeners: 10,
            seconds: 10.0,
            server_pid: None,
            allow_remote: false,
            join_concurrency: 64,
            join_timeout: Duration::from_secs(60),
            progress: true,
        }
    }
}

/// Percentiles of a distribution.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dist {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(mut values: Vec<f64>) -> Dist {
        if values.is_empty() {
            return Dist::default();
        }
        values.sort_by(f64::total_cmp);
        let at =
            |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
        Dist {
            count: values.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }

    fn json(&self) -> Value {
        json!({ "count": self.count, "p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max })
    }
}

/// One listener's reception.
#[derive(Clone, Debug, Default)]
pub struct ListenerReport {
    pub joined: bool,
    pub connected: bool,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Packets missing from the sequence numbers of the streams received.
    pub seq_lost: u64,
    /// Received packets whose payload no speaker sent in this run (should stay 0).
    pub unmatched: u64,
}

impl ListenerReport {
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            if self.received == 0 { 1.0 } else { 0.0 }
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// The server's CPU and memory over the sending window.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerUsage {
    /// VmRSS before the first join, KiB.
    pub rss_before_joins_kib: u64,
    pub cpu_seconds: f64,
    pub window_seconds: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub speakers: usize,
    pub listeners: usize,
    pub seconds: f64,
    pub joins_ok: usize,
    pub joins_failed: usize,
    /// The first few join failures, as text.
    pub join_errors: Vec<String>,
    /// Redeem request → media connected, ms.
    pub join_ms: Dist,
    /// From the first join request to the last client's media connected, s.
    pub all_connected_s: f64,
    pub sent: u64,
    pub per_listener: Vec<ListenerReport>,
    /// Server-added delay, µs.
    pub delay_us: Dist,
    pub server: Option<ServerUsage>,
    /// The speakers could not keep their 20 ms pace this many times (the client is overloaded).
    pub late_sends: u64,
}

impl Report {
    pub fn expected(&self) -> u64 {
        self.per_listener.iter().map(|l| l.expected).sum()
    }
    pub fn received(&self) -> u64 {
        self.per_listener.iter().map(|l| l.received).sum()
    }
    pub fn lost(&self) -> u64 {
        self.per_listener.iter().map(|l| l.lost).sum()
    }
    pub fn loss(&self) -> f64 {
        self.lost() as f64 / self.expected().max(1) as f64
    }
    pub fn worst_loss(&self) -> f64 {
        self.per_listener
            .iter()
            .map(ListenerReport::loss)
            .fold(0.0, f64::max)
    }
    pub fn silent_listeners(&self) -> usize {
        self.per_listener.iter().filter(|l| l.received == 0).count()
    }

    /// Audio flowed: every listener received packets and none lost more than 5%.
    pub fn audio_ok(&self) -> bool {
        self.sent > 0 && self.silent_listeners() == 0 && self.worst_loss() <= 0.05
    }

    pub fn to_json(&self) -> Value {
        let listeners: Vec<_> = self.per_listener.iter().map(|l| l.loss()).collect();
        let min_received = self
            .per_listener
            .iter()
            .map(|l| l.received)
            .min()
            .unwrap_or(0);
        let server = self.server.map(|s| {
            json!({
                "cpu_seconds": s.cpu_seconds,
                "window_seconds": s.window_seconds,
                "cpu_share": s.cpu_seconds / s.window_seconds.max(1e-9),
                "cpu_us_per_packet_listener": self.cpu_us_per_packet_listener(),
                "rss_before_joins_kib": s.rss_before_joins_kib,
                "rss_start_kib": s.rss_start_kib,
                "rss_per_client_kib": self.rss_per_client_kib(),
                "rss_end_kib": s.rss_end_kib,
                "rss_max_kib": s.rss_max_kib,
            })
        });
        json!({
            "speakers": self.speakers,
            "listeners": self.listeners,
            "seconds": self.seconds,
            "joins": { "ok": self.joins_ok, "failed": self.joins_failed, "ms": self.join_ms.json(), "all_connected_s": self.all_connected_s },
            "packets": {
                "sent": self.sent,
                "expected": self.expected(),
                "received": self.received(),
                "lost": self.lost(),
                "loss": self.loss(),
                "worst_listener_loss": listeners.iter().copied().fold(0.0, f64::max),
                "min_received": min_received,
                "silent_listeners": self.silent_listeners(),
                "seq_lost": self.per_listener.iter().map(|l| l.seq_lost).sum::<u64>(),
                "unmatched": self.per_listener.iter().map(|l| l.unmatched).sum::<u64>(),
            },
            "delay_us": self.delay_us.json(),
            "server": server,
            "late_sends": self.late_sends,
            "audio_ok": self.audio_ok(),
        })
    }

    /// Server CPU per received packet × listener, µs (needs the server pid).
    pub fn cpu_us_per_packet_listener(&self) -> Option<f64> {
        let s = self.server?;
        let received = self.received();
        (received > 0).then(|| s.cpu_seconds * 1e6 / received as f64)
    }

    /// Server RSS growth from before the joins to the end of the window, per joined client.
    pub fn rss_per_client_kib(&self) -> Option<f64> {
        let s = self.server?;
        (self.joins_ok > 0)
            .then(|| (s.rss_end_kib as f64 - s.rss_before_joins_kib as f64) / self.joins_ok as f64)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let j = &self.join_ms;
        let d = &self.delay_us;
        out += &format!(
            "stoa-loadgen: {} speaker(s), {} listener(s), {:.1} s of audio\n",
            self.speakers, self.listeners, self.seconds
        );
        out += &format!(
            "joins: {} ok, {} failed; redeem → media connected ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n",
            self.joins_ok, self.joins_failed, j.p50, j.p95, j.p99, j.max
        );
        out += &format!(
            "joins: the last client's media connected {:.2} s after the first join request\n",
            self.all_connected_s
        );
        for e in &self.join_errors {
            out += &format!("  join error: {e}\n");
        }
        if self.join_errors.iter().any(|e| e.contains("429")) {
            out += "  (429: the server's per-address join or socket limits; start it with tests/loadgen.toml)\n";
        }
        let min_received = self
            .per_listener
            .iter()
            .map(|l| l.received)
            .min()
            .unwrap_or(0);
        out += &format!(
            "packets: sent {} by the speakers; listeners expected {}, received {}, lost {} ({:.3}%); worst listener {:.3}%, fewest received {}, silent listeners {}; sequence-gap loss {}; unmatched payloads {}\n",
            self.sent,
            self.expected(),
            self.received(),
            self.lost(),
            self.loss() * 100.0,
            self.worst_loss() * 100.0,
            min_received,
            self.silent_listeners(),
            self.per_listener.iter().map(|l| l.seq_lost).sum::<u64>(),
            self.per_listener.iter().map(|l| l.unmatched).sum::<u64>(),
        );
        out += &format!(
            "server-added delay µs ({} samples): p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}\n",
            d.count, d.p50, d.p95, d.p99, d.max
        );
        if let Some(s) = self.server {
            out += &format!(
                "server: CPU {:.3} s over {:.2} s ({:.1}% of a core), {} per packet × listener; RSS {} KiB before the joins, {} → {} KiB over the window (max {}), {} per joined client\n",
                s.cpu_seconds,
                s.window_seconds,
                s.cpu_seconds / s.window_seconds.max(1e-9) * 100.0,
                self.cpu_us_per_packet_listener()
                    .map_or("-".to_owned(), |v| format!("{v:.2} µs")),
                s.rss_before_joins_kib,
                s.rss_start_kib,
                s.rss_end_kib,
                s.rss_max_kib,
                self.rss_per_client_kib()
                    .map_or("-".to_owned(), |v| format!("{v:.1} KiB")),
            );
        }
        if self.late_sends > 0 {
            out += &format!(
                "client: the speakers fell behind their pace {} times\n",
                self.late_sends
            );
        }
        out += &format!("audio: {}\n", if self.audio_ok() { "ok" } else { "FAILED" });
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Shared between the media thread, the join tasks and the progress line.
#[derive(Default)]
struct Shared {
    sending: AtomicBool,
    stop: AtomicBool,
    connected: AtomicU64,
    media_failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

enum Command {
    /// Make a peer connection; answer with its index and offer.
    Open {
        speaker: bool,
        slots: usize,
        started: Instant,
        reply: tokio::sync::oneshot::Sender<Result<(usize, String), String>>,
    },
    Answer {
        index: usize,
        sdp: String,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Checks the target and returns the server's host address (for the local UDP address).
fn check_target(options: &Options) -> Result<IpAddr, String> {
    let url = reqwest::Url::parse(&options.url).map_err(|e| format!("bad --url: {e}"))?;
    let host = url.host_str().ok_or("--url has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) => {
            let port = url.port_or_known_default().unwrap_or(80);
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} has no address"))?
                .ip()
        }
    };
    if !ip.is_loopback() && !options.allow_remote {
        return Err(format!(
            "{} is not a loopback address; pass --allow-remote to load a remote server",
            options.url
        ));
    }
    Ok(ip)
}

/// The local address the clients' sockets bind to: the one that routes to the server.
fn local_ip(server: IpAddr) -> IpAddr {
    if server.is_loopback() {
        return server;
    }
    let any: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(any)
        .and_then(|s| {
            s.connect((server, 9))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(server)
}

async fn rest(
    http: &reqwest::Client,
    options: &Options,
    path: &str,
    auth: bool,
    body: Value,
) -> Result<Value, String> {
    let mut req = http.post(format!("{}{path}", options.url.trim_end_matches('/')));
    if auth {
        req = req.bearer_auth(&options.api_key);
    }
    let res = req
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {path}: {e}"))?;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("POST {path}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("POST {path}: {e}"))
}

/// Runs the load and returns what it measured. Errors only for what stops the whole run
/// (bad target, REST refusals); client failures are counted in the report.
pub async fn run(options: Options) -> Result<Report, String> {
    let server_ip = check_target(&options)?;
    if options.speakers == 0 {
        return Err("at least one speaker is needed".to_owned());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let total = options.speakers + options.listeners;
    let room = rest(
        &http,
        &options,
        "/api/v1/rooms",
        true,
        json!({
            "title": format!("loadgen {}+{}", options.speakers, options.listeners),
            "max_participants": total.clamp(1, 100_000),
            "max_stage": options.speakers.clamp(1, 100),
        }),
    )
    .await?;
    let room_id = room["id"].as_str().ok_or("room without id")?.to_owned();
    let mut codes = Vec::new();
    for role in ["speaker", "listener"] {
        let invite = rest(
            &http,
            &options,
            &format!("/api/v1/rooms/{room_id}/invites"),
            true,
            json!({ "role": role, "label": "loadgen" }),
        )
        .await?;
        codes.push(
            invite["code"]
                .as_str()
                .ok_or("invite without code")?
                .to_owned(),
        );
    }

    let rss_before_joins = options.server_pid.and_then(proc_usage).map_or(0, |u| u.1);
    let shared = Arc::new(Shared::default());
    let (commands, command_rx) = mpsc::channel::<Command>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let media_shared = shared.clone();
    let bind_ip = local_ip(server_ip);
    std::thread::Builder::new()
        .name("loadgen-media".to_owned())
        .spawn(move || {
            let result = MediaThread::new(bind_ip, media_shared, command_rx)
                .map_err(|e| e.to_string())
                .map(MediaThread::run);
            let _ = done_tx.send(result);
        })
        .map_err(|e| e.to_string())?;

    // Joins, a few at a time; each task then keeps its socket read (WebSocket pings) until stop.
    let (outcome_tx, mut outcome_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(tokio::sync::Semaphore::new(options.join_concurrency.max(1)));
    let started = Instant::now();
    for i in 0..total {
        let speaker = i < options.speakers;
        let code = codes[usize::from(!speaker)].clone();
        let http = http.clone();
        let options = options.clone();
        let commands = commands.clone();
        let shared = shared.clone();
        let gate = gate.clone();
        let outcome_tx = outcome_tx.clone();
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let name = format!("{}{i}", if speaker { "speaker" } else { "listener" });
            // A nested task, so that a panic inside SignalClient counts as a failed join.
            let joined = tokio::spawn(async move {
                join_one(&http, &options, &code, &name, speaker, commands).await
            })
            .await
            .unwrap_or_else(|e| Err(format!("join task panicked: {e}")));
            drop(permit);
            match joined {
                Ok(mut signal) => {
                    let _ = outcome_tx.send(Ok(()));
                    while !shared.stop.load(Ordering::Relaxed) && signal.closed.is_none() {
                        signal.next_within(Duration::from_millis(250)).await;
                    }
                    signal.close().await;
                }
                Err(e) => {
                    let _ = outcome_tx.send(Err(e));
                }
            }
        });
    }
    drop(outcome_tx);
    drop(commands);

    let mut report = Report {
        speakers: options.speakers,
        listeners: options.listeners,
        seconds: options.seconds,
        ..Report::default()
    };
    let deadline = tokio::time::Instant::now() + options.join_timeout;
    let mut last_progress = Instant::now();
    let progress = |phase: &str, report: &Report, shared: &Shared| {
        eprintln!(
            "[{:6.1}s] {phase}: joined {}/{} (failed {}), media connected {} (failed {}), sent {}, received {}",
            started.elapsed().as_secs_f64(),
            report.joins_ok,
            total,
            report.joins_failed,
            shared.connected.load(Ordering::Relaxed),
            shared.media_failed.load(Ordering::Relaxed),
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
    };
    // Phase 1: every join answered (or the deadline).
    while report.joins_ok + report.joins_failed < total {
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
            outcome_rx.recv(),
        )
        .await
        {
            Ok(Some(Ok(()))) => report.joins_ok += 1,
            Ok(Some(Err(e))) => {
                report.joins_failed += 1;
                if report.join_errors.len() < 5 {
                    report.join_errors.push(e);
                }
            }
            Ok(None) => break,
            Err(_) if tokio::time::Instant::now() >= deadline => break,
            Err(_) => {}
        }
        if options.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress("joining", &report, &shared);
        }
    }
    let unanswered = total - report.joins_ok - report.joins_failed;
    if unanswered > 0 {
        report.joins_failed += unanswered;
        report
            .join_errors
            .push(format!("{unanswered} join(s) unanswered at the deadline"));
    }
    // Phase 2: every joined client's media connected (or failed, or the deadline).
    while (shared.connected.load(Ordering::Relaxed) + shared.media_failed.load(Ordering::Relaxed))
        < report.joins_ok as u64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if options.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress("connecting", &report, &shared);
        }
    }

    // Phase 3: the sending window.
    let usage_start = options.server_pid.and_then(proc_usage);
    let window_start = Instant::now();
    let mut rss_max = usage_start.map_or(0, |u| u.1);
    shared.sending.store(true, Ordering::Relaxed);
    let window = Duration::from_secs_f64(options.seconds.max(0.0));
    while window_start.elapsed() < window {
        let left = window.saturating_sub(window_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if let Some(u) = options.server_pid.and_then(proc_usage) {
            rss_max = rss_max.max(u.1);
        }
        if options.progress {
            progress("sending", &report, &shared);
        }
    }
    shared.sending.store(false, Ordering::Relaxed);
    let usage_end = options.server_pid.and_then(proc_usage);
    let window_seconds = window_start.elapsed().as_secs_f64();
    tokio::time::sleep(TAIL).await;
    shared.stop.store(true, Ordering::Relaxed);
    let media = done_rx
        .await
        .map_err(|_| "the media thread died".to_owned())??;

    if let (Some(a), Some(b)) = (usage_start, usage_end) {
        report.server = Some(ServerUsage {
            rss_before_joins_kib: rss_before_joins,
            cpu_seconds: (b.0 - a.0).max(0.0),
            window_seconds,
            rss_start_kib: a.1,
            rss_end_kib: b.1,
            rss_max_kib: rss_max.max(b.1),
        });
    }
    report.join_ms = Dist::of(media.join_ms);
    report.all_connected_s = media.last_connected.map_or(0.0, |at| {
        at.saturating_duration_since(started).as_secs_f64()
    });
    report.delay_us = Dist::of(media.delays_us);
    report.sent = media.sent;
    report.late_sends = media.late_sends;
    report.per_listener = media.listeners;
    // Listeners that never got as far as the media thread.
    let missing = options.listeners.saturating_sub(report.per_listener.len());
    report
        .per_listener
        .extend((0..missing).map(|_| ListenerReport {
            expected: media.sent_window,
            lost: media.sent_window,
            ..ListenerReport::default()
        }));
    Ok(report)
}

/// Redeems, joins over the signaling socket and negotiates media. The socket is returned so
/// that it stays open (and answers pings) while the media flows.
async fn join_one(
    http: &reqwest::Client,
    options: &Options,
    code: &str,
    name: &str,
    speaker: bool,
    commands: mpsc::Sender<Command>,
) -> Result<SignalClient, String> {
    let started = Instant::now();
    let answer = rest(
        http,
        options,
        "/api/v1/join",
        false,
        json!({ "invite": code, "display_name": name }),
    )
    .await?;
    let mut signal = SignalClient::join(&answer).await;
    let slots = signal.welcome["media"]["slots"]
        .as_u64()
        .ok_or("welcome without media.slots")? as usize;
    let (reply, offer) = tokio::sync::oneshot::channel();
    commands
        .send(Command::Open {
            speaker,
            slots,
            started,
            reply,
        })
        .map_err(|_| "media thread gone")?;
    let (index, sdp) = offer.await.map_err(|_| "media thread gone")??;
    let answer = signal
        .request(json!({ "type": "media_offer", "sdp": sdp }))
        .await;
    if answer["type"] != "media_answer" {
        return Err(format!("media_offer refused: {answer}"));
    }
    let sdp = answer["sdp"]
        .as_str()
        .ok_or("media_answer without sdp")?
        .to_owned();
    let (reply, done) = tokio::sync::oneshot::channel();
    commands
        .send(Command::Answer { index, sdp, reply })
        .map_err(|_| "media thread gone")?;
    done.await.map_err(|_| "media thread gone")??;
    Ok(signal)
}

/// CPU seconds (utime + stime) and VmRSS (KiB) of a process.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: no memory.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks as f64 / hz, rss))
}

// ---------------------------------------------------------------------------------------------
// The media thread: every peer connection, one UDP socket each, epoll and a timer heap
// ---------------------------------------------------------------------------------------------

/// CLOCK_REALTIME in ns: the clock of the kernel's SO_TIMESTAMPNS receive stamps.
fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// Turns on kernel receive stamps (CLOCK_REALTIME) for a socket.
fn enable_timestamps(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram with its sender and its kernel receive stamp (realtime ns), non-blocking.
fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, i64)> {
    // SAFETY: zeroed plain C structs; every pointer handed to recvmsg points into locals that
    // outlive the call, with their true lengths.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let a: libc::sockaddr_in =
                    std::ptr::read_unaligned((&addr as *const libc::sockaddr_storage).cast());
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                )
            }
            libc::AF_INET6 => {
                let a: libc::sockaddr_in6 =
                    std::ptr::read_unaligned((&addr as *const libc::sockaddr_storage).cast());
                SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                    u16::from_be(a.sin6_port),
                )
            }
            _ => return Err(io::Error::other("unknown address family")),
        };
        Ok((n as usize, from, stamp.unwrap_or_else(realtime_ns)))
    }
}

/// Loss from sequence gaps on one received stream.
#[derive(Clone, Copy, Debug, Default)]
struct SeqSpan {
    packets: u64,
    first: Option<i64>,
    highest: i64,
}

impl SeqSpan {
    fn record(&mut self, seq: u16) {
        self.packets += 1;
        match self.first {
            None => {
                self.first = Some(i64::from(seq));
                self.highest = i64::from(seq);
            }
            Some(first) => {
                let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
                let extended = self.highest + delta;
                self.highest = self.highest.max(extended);
                self.first = Some(first.min(extended));
            }
        }
    }

    fn lost(&self) -> u64 {
        self.first.map_or(0, |f| {
            ((self.highest - f + 1) as u64).saturating_sub(self.packets)
        })
    }
}

struct Speaker {
    sender: RTCRtpSenderId,
    ssrc: u32,
    level_id: Option<u8>,
    seq: u16,
    timestamp: u32,
    sample: u64,
    encoder: opus::Encoder,
    /// Send stamps (realtime ns) of every packet sent, in order.
    sends: Vec<i64>,
}

#[derive(Default)]
struct Listening {
    received: u64,
    unmatched: u64,
    streams: HashMap<u32, SeqSpan>,
    /// Per speaker, the send stamp of the first of its packets this listener received.
    first_from: HashMap<usize, i64>,
}

struct Client {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    started: Instant,
    answered: bool,
    connected: bool,
    failed: bool,
    scheduled: Option<Instant>,
    speaker: Option<Speaker>,
    listening: Listening,
    /// Kernel stamp of the datagram being fed in.
    rx_stamp: i64,
}

struct MediaResult {
    join_ms: Vec<f64>,
    last_connected: Option<Instant>,
    delays_us: Vec<f64>,
    sent: u64,
    /// What a listener that never connected should have received.
    sent_window: u64,
    late_sends: u64,
    listeners: Vec<ListenerReport>,
}

struct MediaThread {
    bind_ip: IpAddr,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    cert: RTCCertificate,
    list: Vec<Client>,
    poller: Poller,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    buf: Vec<u8>,
    ready: Vec<usize>,
    /// Payload hash → (speaker index in `list`, send stamp).
    sent: HashMap<u64, (usize, i64)>,
    delays_us: Vec<f64>,
    join_ms: Vec<f64>,
    last_connected: Option<Instant>,
    next_send: Option<Instant>,
    late_sends: u64,
}

impl MediaThread {
    fn new(
        bind_ip: IpAddr,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Self, BoxError> {
        let provider =
            rtc::crypto::default_provider().map_err(|e| format!("no crypto provider: {e:?}"))?;
        let cert = RTCCertificate::generate(
            provider.crypto(),
            SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["stoa-loadgen".to_owned()])?,
        )?;
        Ok(MediaThread {
            bind_ip,
            shared,
            commands,
            commands_open: true,
            cert,
            list: Vec::new(),
            poller: Poller::new()?,
            timers: BinaryHeap::new(),
            buf: vec![0; 2048],
            ready: Vec::with_capacity(512),
            sent: HashMap::new(),
            delays_us: Vec::new(),
            join_ms: Vec::new(),
            last_connected: None,
            next_send: None,
            late_sends: 0,
        })
    }

    fn open(
        &mut self,
        speaker: bool,
        slots: usize,
        started: Instant,
    ) -> Result<(usize, String), BoxError> {
        let now = Instant::now();
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))?;
        socket.set_nonblocking(true)?;
        enable_timestamps(&socket)?;
        let local = socket.local_addr()?;
        let (engine, registry) = client_engine()?;
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![self.cert.clone()])
                    .build(),
            )
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(now)?;
        let mut tx = None;
        let mut recvonly = slots;
        if speaker {
            let ssrc: u32 = rand::random();
            let sender = pc.add_track(MediaStreamTrack::new(
                "loadgen-mic".to_owned(),
                "mic".to_owned(),
                "mic".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: stoa::media::engine::opus_codec().rtp_codec,
                    ..Default::default()
                }],
            ))?;
            tx = Some(Speaker {
                sender,
                ssrc,
                level_id: None,
                seq: rand::random(),
                timestamp: rand::random(),
                sample: 0,
                encoder: opus::Encoder::new(
                    SAMPLE_RATE,
                    opus::Channels::Mono,
                    opus::Application::Voip,
                )?,
                sends: Vec::new(),
            });
            recvonly = recvonly.saturating_sub(1);
        }
        for _ in 0..recvonly {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )?;
        }
        let offer = pc.create_offer(None)?;
        pc.set_local_description(now, offer)?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
        let sdp = pc
            .local_description()
            .ok_or("no local description")?
            .sdp
            .clone();
        let index = self.list.len();
        self.poller.add(socket.as_raw_fd(), index)?;
        self.list.push(Client {
            pc,
            socket,
            local,
            started,
            answered: false,
            connected: false,
            failed: false,
            scheduled: None,
            speaker: tx,
            listening: Listening::default(),
            rx_stamp: 0,
        });
        Ok((index, sdp))
    }

    fn answer(&mut self, index: usize, sdp: String) -> Result<(), BoxError> {
        let client = self.list.get_mut(index).ok_or("no such client")?;
        client
            .pc
            .set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp)?)?;
        client.answered = true;
        if let Some(tx) = client.speaker.as_mut() {
            tx.level_id = client.pc.rtp_sender(tx.sender).and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == AUDIO_LEVEL_URI)
                    .map(|h| h.id as u8)
            });
        }
        self.drain(index);
        Ok(())
    }

    fn handle_commands(&mut self) {
        while self.commands_open {
            match self.commands.try_recv() {
                Ok(Command::Open {
                    speaker,
                    slots,
                    started,
                    reply,
                }) => {
                    let _ = reply.send(
                        self.open(speaker, slots, started)
                            .map_err(|e| e.to_string()),
                    );
                }
                Ok(Command::Answer { index, sdp, reply }) => {
                    let result = self.answer(index, sdp).map_err(|e| e.to_string());
                    if result.is_err() {
                        self.shared.media_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(result);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => self.commands_open = false,
            }
        }
    }

    /// Everything a client has queued: datagrams out, state changes, received media.
    fn drain(&mut self, index: usize) {
        let client = &mut self.list[index];
        while let Some(out) = client.pc.poll_write() {
            let _ = client.socket.send_to(&out.message, out.transport.peer_addr);
        }
        while let Some(event) = client.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                match state {
                    RTCPeerConnectionState::Connected if !client.connected && !client.failed => {
                        client.connected = true;
                        self.join_ms
                            .push(client.started.elapsed().as_secs_f64() * 1e3);
                        self.last_connected = Some(Instant::now());
                        self.shared.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if !client.failed =>
                    {
                        client.failed = true;
                        if client.connected {
                            self.shared.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        client.connected = false;
                        self.shared.media_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
        while let Some(message) = client.pc.poll_read() {
            let RTCMessage::RtpPacket(_, packet) = message.message else {
                continue;
            };
            if client.speaker.is_some() {
                continue;
            }
            let l = &mut client.listening;
            l.received += 1;
            self.shared.received.fetch_add(1, Ordering::Relaxed);
            l.streams
                .entry(packet.header.ssrc)
                .or_default()
                .record(packet.header.sequence_number);
            match self.sent.get(&payload_hash(&packet.payload)) {
                Some(&(speaker, stamp)) => {
                    self.delays_us.push((client.rx_stamp - stamp) as f64 / 1e3);
                    l.first_from.entry(speaker).or_insert(stamp);
                }
                None => l.unmatched += 1,
            }
        }
        if let Some(at) = client.pc.poll_timeout()
            && client.scheduled.is_none_or(|queued| at < queued)
        {
            client.scheduled = Some(at);
            self.timers.push(Reverse((at, index)));
        }
    }

    /// Waits for datagrams until `until` (or the next client timer), feeds them in, then runs
    /// the due timers.
    fn turn(&mut self, until: Instant) {
        let now = Instant::now();
        let mut wake = until;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            wake = wake.min(*at);
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.poller
            .wait(wake.saturating_duration_since(now), &mut ready);
        for &index in &ready {
            let mut fed = false;
            for _ in 0..64 {
                let client = &mut self.list[index];
                match recv_stamped(client.socket.as_raw_fd(), &mut self.buf) {
                    Ok((n, from, stamp)) => {
                        client.rx_stamp = stamp;
                        let message = TaggedBytesMut {
                            now: Instant::now(),
                            transport: TransportContext {
                                local_addr: client.local,
                                peer_addr: from,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: BytesMut::from(&self.buf[..n]),
                        };
                        let _ = client.pc.handle_read(message);
                        // Drain per datagram: the receive stamp belongs to this one.
                        self.drain(index);
                        fed = true;
                    }
                    Err(_) => break,
                }
            }
            if fed {
                self.drain(index);
            }
        }
        self.ready = ready;
        let now = Instant::now();
        for _ in 0..4096 {
            let Some(Reverse((at, index))) = self.timers.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.timers.pop();
            let client = &mut self.list[index];
            if client.scheduled != Some(at) {
                continue;
            }
            client.scheduled = None;
            let _ = client.pc.handle_timeout(now);
            self.drain(index);
        }
    }

    /// One 20 ms Opus frame from every connected speaker.
    fn speak(&mut self) {
        for index in 0..self.list.len() {
            let client = &mut self.list[index];
            if !client.connected {
                continue;
            }
            let Some(tx) = client.speaker.as_mut() else {
                continue;
            };
            // A 440 Hz tone at about -20 dBov plus a little noise, so that no two frames (of
            // this or another speaker) encode alike and the payload hash identifies a packet.
            let pcm: Vec<i16> = (0..FRAME_SAMPLES as u64)
                .map(|i| {
                    let n = tx.sample + i;
                    let phase =
                        2.0 * std::f64::consts::PI * 440.0 * n as f64 / f64::from(SAMPLE_RATE);
                    let noise = i16::from(rand::random::<i8>() / 4);
                    (4634.0 * phase.sin()) as i16 + noise
                })
                .collect();
            tx.sample += FRAME_SAMPLES as u64;
            let mut out = vec![0u8; 1500];
            let Ok(len) = tx.encoder.encode(&pcm, &mut out) else {
                continue;
            };
            out.truncate(len);
            let (level, voice) = audio_level(&pcm);
            let mut header = rtc::rtp::header::Header {
                version: 2,
                marker: tx.sends.is_empty(),
                payload_type: OPUS_PT,
                sequence_number: tx.seq,
                timestamp: tx.timestamp,
                ssrc: tx.ssrc,
                ..Default::default()
            };
            if let Some(id) = tx.level_id {
                let byte = level | if voice { 0x80 } else { 0 };
                let _ = header.set_extension(id, Bytes::copy_from_slice(&[byte]));
            }
            tx.seq = tx.seq.wrapping_add(1);
            tx.timestamp = tx.timestamp.wrapping_add(FRAME_SAMPLES as u32);
            let hash = payload_hash(&out);
            let stamp = realtime_ns();
            let written = client.pc.rtp_sender(tx.sender).map(|mut s| {
                s.write_rtp(
                    Instant::now(),
                    rtc::rtp::Packet {
                        header,
                        payload: Bytes::from(out),
                    },
                )
            });
            if matches!(written, Some(Ok(()))) {
                tx.sends.push(stamp);
                // A repeated payload cannot be told apart: forget it rather than misattribute.
                if self.sent.insert(hash, (index, stamp)).is_some() {
                    self.sent.insert(hash, (usize::MAX, stamp));
                }
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            self.drain(index);
        }
    }

    fn run(mut self) -> MediaResult {
        loop {
            self.handle_commands();
            let now = Instant::now();
            let sending = self.shared.sending.load(Ordering::Relaxed);
            if sending {
                let next = *self.next_send.get_or_insert(now);
                if now >= next {
                    self.speak();
                    let mut next = next + FRAME;
                    if now > next + FRAME {
                        self.late_sends += 1;
                        next = now + FRAME;
                    }
                    self.next_send = Some(next);
                    continue;
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let mut wake = now + COMMAND_POLL;
            if sending && let Some(next) = self.next_send {
                wake = wake.min(next);
            }
            self.turn(wake);
        }
        self.finish()
    }

    fn finish(self) -> MediaResult {
        let speakers: Vec<(usize, &Speaker)> = self
            .list
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.speaker.as_ref().map(|s| (i, s)))
            .collect();
        let sent: u64 = speakers.iter().map(|(_, s)| s.sends.len() as u64).sum();
        let mut listeners = Vec::new();
        for client in self.list.iter().filter(|c| c.speaker.is_none()) {
            let l = &client.listening;
            // Expected: per speaker heard, what it sent from the first packet of its that this
            // listener received. A speaker never heard counts in full (unless the room has
            // more speakers than slots, where the server may rightly leave some out).
            let mut expected = 0;
            for (index, s) in &speakers {
                expected += match l.first_from.get(index) {
                    Some(first) => s.sends.iter().filter(|&&t| t >= *first).count() as u64,
                    None => s.sends.len() as u64,
                };
            }
            let matched = l.received - l.unmatched;
            listeners.push(ListenerReport {
                joined: client.answered,
                connected: client.connected,
                expected,
                received: l.received,
                lost: expected.saturating_sub(matched),
                seq_lost: l.streams.values().map(SeqSpan::lost).sum(),
                unmatched: l.unmatched,
            });
        }
        MediaResult {
            join_ms: self.join_ms,
            last_connected: self.last_connected,
            delays_us: self.delays_us,
            sent,
            sent_window: sent,
            late_sends: self.late_sends,
            listeners,
        }
    }
}
