//! `stoa-soak`'s core: runs one room for a long time with churn and checks that the server
//! gives back everything the churn took. Measures and drives; it never reaches into the server.
//!
//! The server is a separate `stoa serve` process, started here with a config made for the run
//! (high join limits, a 5 s resume grace, short ICE timeouts, two media workers) or given by
//! URL (and pid, for `/proc`). Phases:
//!
//! 1. **warm-up**: one listener with media joins and leaves, so lazily built things (thread
//!    pools, SQLite caches) exist before the baseline;
//! 2. **baseline**: once the counts are steady, the baseline sample;
//! 3. **churn** for the set time: a moderator, speakers talking in turns with real Opus, and a
//!    population of listeners that come and go (REST redeem, signaling, WebRTC media: the
//!    `stoa-client` library's sessions and sans-IO peers), raise hands, get invited to the
//!    stage, accept or decline, speak, leave the stage or get moved back; sockets drop and
//!    resume within the grace period, some never come back, some media peers vanish without a
//!    goodbye; the moderator and speakers rotate too;
//! 4. **quiet**: everyone leaves; the counts must come back to the baseline (within the grace
//!    period and ICE timeouts plus a margin), and the final sample is compared with it.
//!
//! Sampled from `/proc/<pid>` (RSS, descriptors and what each is, threads) and `/metrics`
//! (tokio alive tasks, media connections, signaling sockets, live rooms) plus the REST room
//! list (participants); never counting the sampler's own connections (see [`Sampler`]).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::peer_connection::state::RTCPeerConnectionState;
use serde_json::{Value, json};
use stoa_client::api::Api;
use stoa_client::audio::{FRAME_DURATION, FRAME_SAMPLES, SAMPLE_RATE};
use stoa_client::fleet::{Observer, Peers, Voice};
use stoa_client::join::{JoinAnswer, redeem};
use stoa_client::media::OfferChannel;
use stoa_client::{InviteLink, Session};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::loadgen::procfs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Options and report
// ---------------------------------------------------------------------------------------------

/// How long people stay, in seconds (a range drawn from uniformly).
#[derive(Clone, Debug)]
pub struct Pace {
    pub listener_life: (f64, f64),
    pub speaker_life: (f64, f64),
    pub moderator_life: (f64, f64),
    /// How long one speaker talks before the next one's turn.
    pub turn: (f64, f64),
    /// Between two new listeners while the population is below target.
    pub arrival: (f64, f64),
}

#[derive(Clone, Debug)]
pub struct Options {
    /// A running server to soak; `None` starts `server_bin` on a temp folder.
    pub url: Option<String>,
    pub api_key: Option<String>,
    /// The server's pid, for `/proc` (given with `url`; known when we start it).
    pub pid: Option<u32>,
    pub server_bin: Option<PathBuf>,
    pub churn: Duration,
    pub sample_every: Duration,
    /// Listeners present at once during churn.
    pub listeners: usize,
    /// Speakers on stage at once (they take turns talking).
    pub speakers: usize,
    /// Share of listeners that open media.
    pub media_share: f64,
    pub pace: Pace,
    pub seed: u64,
    /// RSS may end this far above the baseline: max(absolute MiB, fraction of the baseline).
    pub rss_slack_mib: f64,
    pub rss_slack_fraction: f64,
    /// How long the quiet phase may take to reach the baseline.
    pub settle_timeout: Duration,
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: None,
            api_key: None,
            pid: None,
            server_bin: None,
            churn: Duration::from_secs(30 * 60),
            sample_every: Duration::from_secs(30),
            listeners: 24,
            speakers: 3,
            media_share: 0.6,
            pace: Pace {
                listener_life: (8.0, 60.0),
                speaker_life: (60.0, 240.0),
                moderator_life: (120.0, 300.0),
                turn: (2.0, 6.0),
                arrival: (0.1, 0.8),
            },
            seed: 0,
            rss_slack_mib: 32.0,
            rss_slack_fraction: 0.5,
            settle_timeout: Duration::from_secs(90),
            progress: true,
        }
    }
}

impl Options {
    /// A minute-long version for CI: fewer people, shorter lives, same kinds of churn.
    pub fn short() -> Self {
        Options {
            churn: Duration::from_secs(45),
            sample_every: Duration::from_secs(5),
            listeners: 8,
            speakers: 2,
            pace: Pace {
                listener_life: (2.0, 10.0),
                speaker_life: (10.0, 20.0),
                moderator_life: (12.0, 25.0),
                turn: (1.0, 3.0),
                arrival: (0.05, 0.4),
            },
            progress: false,
            ..Options::default()
        }
    }
}

/// One look at the server.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub phase: String,
    /// Seconds since the soak started.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub alive_tasks: u64,
    pub media_connections: u64,
    pub signal_sockets: u64,
    pub live_rooms: u64,
    pub participants: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// Listeners present in the soak at that moment (our side).
    pub soak_listeners: u64,
    /// What each open descriptor is (see `procfs::descriptors`), read with `fds`.
    pub descriptors: Vec<String>,
}

/// What the churn did (our side).
#[derive(Default, Debug)]
pub struct Activity {
    pub lives: AtomicU64,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    pub resumed: AtomicU64,
    pub abandoned: AtomicU64,
    pub hands_raised: AtomicU64,
    pub hands_lowered: AtomicU64,
    pub stage_invites: AtomicU64,
    pub accepted: AtomicU64,
    pub declined: AtomicU64,
    pub left_stage: AtomicU64,
    pub moved_to_audience: AtomicU64,
    pub turns: AtomicU64,
    pub moderator_rotations: AtomicU64,
    pub speaker_rotations: AtomicU64,
    pub media_opened: AtomicU64,
    pub media_replaced: AtomicU64,
    pub media_goodbye: AtomicU64,
    pub media_vanished: AtomicU64,
    pub errors: AtomicU64,
}

impl Activity {
    fn counts(&self) -> Vec<(&'static str, u64)> {
        let f = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("lives", f(&self.lives)),
            ("joins", f(&self.joins)),
            ("leaves", f(&self.leaves)),
            ("dropped_and_resumed", f(&self.resumed)),
            ("dropped_never_resumed", f(&self.abandoned)),
            ("hands_raised", f(&self.hands_raised)),
            ("hands_lowered", f(&self.hands_lowered)),
            ("stage_invites", f(&self.stage_invites)),
            ("invitations_accepted", f(&self.accepted)),
            ("invitations_declined", f(&self.declined)),
            ("left_stage", f(&self.left_stage)),
            ("moved_to_audience", f(&self.moved_to_audience)),
            ("speaker_turns", f(&self.turns)),
            ("moderator_rotations", f(&self.moderator_rotations)),
            ("speaker_rotations", f(&self.speaker_rotations)),
            ("media_opened", f(&self.media_opened)),
            ("media_replaced", f(&self.media_replaced)),
            ("media_closed_with_goodbye", f(&self.media_goodbye)),
            ("media_vanished", f(&self.media_vanished)),
            ("errors", f(&self.errors)),
        ]
    }
}

/// One metric: baseline, peak during churn, after quiet, and whether it came back.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub metric: String,
    pub baseline: u64,
    pub peak: u64,
    pub after: u64,
    pub rule: String,
    pub ok: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub churn_secs: f64,
    pub samples: Vec<Sample>,
    pub baseline: Sample,
    pub after: Sample,
    pub checks: Vec<Check>,
    pub activity: Vec<(String, u64)>,
    pub media: MediaCounts,
    pub first_errors: Vec<String>,
    /// Problems that fail the run beyond the metric checks (server died, panicked, no audio).
    pub failures: Vec<String>,
    pub server_log: Option<String>,
    pub settle_secs: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MediaCounts {
    pub connected_total: u64,
    pub failed: u64,
    pub frames_sent: u64,
    pub rtp_received: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("the report serialises")
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "soak: seed {}, churn {:.0} s, back to the baseline and steady {:.1} s after everyone left\n\n",
            self.seed, self.churn_secs, self.settle_secs
        ));
        out.push_str(
            "   t(s) phase      rss(MiB)  fds thr tasks media socks rooms people soak_lst\n",
        );
        for s in &self.samples {
            out.push_str(&format!(
                "{:7.0} {:<10} {:8.1} {:4} {:3} {:5} {:5} {:5} {:5} {:6} {:8}\n",
                s.t,
                s.phase,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads,
                s.alive_tasks,
                s.media_connections,
                s.signal_sockets,
                s.live_rooms,
                s.participants,
                s.soak_listeners
            ));
        }
        out.push_str("\nmetric              baseline      peak     after  rule\n");
        for c in &self.checks {
            out.push_str(&format!(
                "{:<18} {:>9} {:>9} {:>9}  {} {}\n",
                c.metric,
                c.baseline,
                c.peak,
                c.after,
                c.rule,
                if c.ok { "ok" } else { "FAIL" }
            ));
        }
        out.push_str("\nchurn:");
        for (name, n) in &self.activity {
            out.push_str(&format!(" {name}={n}"));
        }
        out.push_str(&format!(
            "\nmedia: {} connections came up, {} failed, {} Opus frames sent, {} RTP packets received; server forwarded {} RTP packets\n",
            self.media.connected_total,
            self.media.failed,
            self.media.frames_sent,
            self.media.rtp_received,
            self.after.rtp_forwarded.saturating_sub(self.baseline.rtp_forwarded)
        ));
        for s in self
            .samples
            .iter()
            .filter(|s| matches!(s.phase.as_str(), "quiet" | "final") && s.fds != self.baseline.fds)
        {
            out.push_str(&format!("descriptors at {:.0} s ({}):\n", s.t, s.phase));
            out.push_str(&descriptor_changes(&self.baseline, s));
        }
        for e in &self.first_errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for f in &self.failures {
            out.push_str(&format!("FAIL: {f}\n"));
        }
        out.push_str(if self.passed() {
            "result: PASS\n"
        } else {
            "result: FAIL\n"
        });
        out
    }
}

/// The descriptors the final sample has and the baseline had not, and the other way round.
fn descriptor_changes(baseline: &Sample, after: &Sample) -> String {
    let mut out = String::new();
    let count = |list: &[String]| {
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for d in list {
            *counts.entry(d.clone()).or_default() += 1;
        }
        counts
    };
    let (before, now) = (count(&baseline.descriptors), count(&after.descriptors));
    for (d, n) in &now {
        let diff = n - before.get(d).copied().unwrap_or(0);
        if diff > 0 {
            out.push_str(&format!("descriptor + {diff} × {d}\n"));
        }
    }
    for (d, n) in &before {
        let diff = n - now.get(d).copied().unwrap_or(0);
        if diff > 0 {
            out.push_str(&format!("descriptor - {diff} × {d}\n"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A small deterministic generator: a run's choices follow from its seed
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn secs(&mut self, range: (f64, f64)) -> Duration {
        Duration::from_secs_f64(range.0 + (range.1 - range.0) * self.unit())
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[(self.next() % items.len() as u64) as usize])
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// The server: one we started (and own), or one we were pointed at.
struct Target {
    url: String,
    key: String,
    pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `stoa` binary beside this executable (`target/release/stoa` for both the soak binary
/// and the test executables in `target/release/deps/`), or `STOA_BIN`.
pub fn find_server_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("STOA_BIN") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("stoa"), dir.parent()?.join("stoa")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The config the soak runs a server with: joins and sockets from one address unlimited, a
/// short grace and short ICE timeouts so the quiet phase does not wait long, two workers so
/// fan-out between workers is part of it.
const SERVER_CONFIG: &str = "demo_room = false
[limits]
joins_per_minute = 1000000
join_burst = 1000000
[signal]
resume_grace_secs = 5
max_sockets_per_address = 100000
[media]
workers = 2
ice_disconnected_ms = 2000
ice_failed_ms = 2000
";

fn start_server(bin: &Path) -> Result<Target, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("soak.toml");
    std::fs::write(&config, SERVER_CONFIG).map_err(|e| e.to_string())?;
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let key = format!(
        "stoa_sk_soak{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let mut child = Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--no-demo", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("STOA_API_KEY", &key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.trim().strip_prefix("Stoa is running at ") {
                    break rest.to_owned();
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!(
                    "the server exited before its banner; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Target {
        url,
        key,
        pid: Some(child.id()),
        child: Some(child),
        log: Some(log),
        _dir: Some(dir),
    })
}

/// GETs a JSON answer with the sampler's client (see [`Sampler`]).
async fn get_json(http: &reqwest::Client, url: String, key: &str) -> Result<Value, String> {
    let answer = http
        .get(&url)
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = answer.status();
    let text = answer.text().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------------

/// Sums every series of `name` (any labels) in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series_name = series.split('{').next().unwrap_or(series);
        if series_name == name
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0) += v as u64;
        }
    }
    found
}

fn proc_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}

/// The address the sampler's requests come from when the server is on 127.0.0.1: one nobody
/// else in the soak uses, so the server's sockets of the sampler's connections can be told
/// apart from everyone else's.
const SAMPLER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How long the server may take to close a connection the sampler closed.
const OWN_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks at the server: `/proc/<pid>`, `/metrics` and the REST room list.
///
/// A connection the sampler has just closed is still open on the server for a moment (until
/// its task reads the end of the stream: about 15 ms here, more on a busy machine), so a
/// look at `/proc` right after the previous sample's requests would count it as one more
/// descriptor, now and then. That was the flaky `open_fds` of issue #18 (baseline 25, final
/// 26). So the sampler sends its requests from an address of its own and, before each look,
/// waits until the server holds no socket connected to that address. Every sample then counts
/// the server's own descriptors only, and "after ≤ baseline" means what it says: no leak.
struct Sampler {
    http: reqwest::Client,
    target: Arc<Target>,
    /// The sampler's own address, when it has one (see [`SAMPLER_IP`]).
    own_ip: Option<IpAddr>,
}

impl Sampler {
    fn new(target: Arc<Target>) -> Sampler {
        let loopback_v4 = reqwest::Url::parse(&target.url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h == "127.0.0.1"))
            .unwrap_or(false);
        let own_ip = (loopback_v4 && std::net::UdpSocket::bind((SAMPLER_IP, 0)).is_ok())
            .then_some(IpAddr::V4(SAMPLER_IP));
        // No idle connections kept: each sample opens its own and closes it.
        let http = stoa::http_client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(0)
            .local_address(own_ip)
            .build()
            .expect("http client");
        Sampler {
            http,
            target,
            own_ip,
        }
    }

    /// Waits (bounded) until the server holds no socket connected to the sampler's address.
    async fn own_connections_closed(&self, pid: u32) {
        let Some(own) = self.own_ip else {
            return;
        };
        let deadline = Instant::now() + OWN_CLOSE_TIMEOUT;
        while Instant::now() < deadline
            && procfs::descriptors(pid)
                .is_some_and(|list| list.iter().any(|d| d.peer().is_some_and(|a| a.ip() == own)))
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// One sample. `with_rooms` adds the participant count from the REST room list; the
    /// settling loops leave it out because it reads SQLite on tokio's blocking pool, and a
    /// pool thread that keeps getting work never reaches its 10 s idle exit: sampling every
    /// second that way would itself keep threads alive.
    async fn sample(
        &self,
        phase: &str,
        t0: Instant,
        soak_listeners: u64,
        with_rooms: bool,
    ) -> Result<Sample, String> {
        let target = &self.target;
        // /proc first, once the previous sample's connections are gone and before this one's
        // open, so no sample counts the sampler's own connections.
        let mut from_proc = None;
        if let Some(pid) = target.pid {
            self.own_connections_closed(pid).await;
            from_proc = proc_status(pid)
                .and_then(|(rss, threads)| Some((rss, threads, procfs::descriptors(pid)?)));
        }
        let page = self
            .http
            .get(format!("{}/metrics", target.url))
            .send()
            .await
            .map_err(|e| format!("/metrics: {e}"))?
            .text()
            .await
            .map_err(|e| format!("/metrics: {e}"))?;
        let m = |name: &str| metric_sum(&page, name).unwrap_or(0);
        let mut participants = 0;
        let mut cursor: Option<String> = None;
        // Participants only come from the REST room list (see above for why it is optional).
        let mut more_pages = with_rooms;
        while more_pages {
            let mut url = format!("{}/api/v1/rooms?limit=200", target.url);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let listing = get_json(&self.http, url, &target.key).await?;
            for room in listing["items"].as_array().into_iter().flatten() {
                participants += room["participant_count"].as_u64().unwrap_or(0);
            }
            cursor = listing["next_cursor"].as_str().map(str::to_owned);
            more_pages = cursor.is_some();
        }
        let (rss_kib, threads, fds, descriptors) = match from_proc {
            Some((rss, threads, list)) => (
                rss,
                threads,
                list.len() as u64,
                list.iter().map(ToString::to_string).collect(),
            ),
            None => (
                m("stoa_process_resident_memory_bytes") / 1024,
                m("stoa_process_threads"),
                m("stoa_process_open_fds"),
                Vec::new(),
            ),
        };
        Ok(Sample {
            phase: phase.to_owned(),
            t: t0.elapsed().as_secs_f64(),
            rss_kib,
            fds,
            threads,
            alive_tasks: m("stoa_runtime_alive_tasks"),
            media_connections: m("stoa_media_connections"),
            signal_sockets: m("stoa_signal_sockets"),
            live_rooms: m("stoa_live_rooms"),
            participants,
            rtp_in: m("stoa_media_rtp_in_total"),
            rtp_forwarded: m("stoa_media_rtp_forwarded_total"),
            soak_listeners,
            descriptors,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Media: `rtc` sans-IO peers on one thread of their own (`stoa_client::fleet`). A peer can
// close with a goodbye (DTLS close) or vanish (its socket simply closes).
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MediaStats {
    connected_total: AtomicU64,
    connected_now: AtomicU64,
    failed: AtomicU64,
    frames_sent: AtomicU64,
    rtp_received: AtomicU64,
}

enum MediaCmd {
    Open {
        speaker: Option<(f32, Arc<AtomicBool>)>,
        slots: usize,
        reply: oneshot::Sender<Result<(usize, String), String>>,
    },
    Answer {
        index: usize,
        sdp: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Close {
        index: usize,
        goodbye: bool,
    },
}

/// The media thread's handle.
#[derive(Clone)]
struct Media {
    commands: std::sync::mpsc::Sender<MediaCmd>,
    stats: Arc<MediaStats>,
}

/// One participant's media connection, as the churn holds it.
struct MediaLink {
    index: usize,
}

impl Media {
    fn start() -> Result<Media, String> {
        let stats = Arc::new(MediaStats::default());
        let (commands, rx) = std::sync::mpsc::channel();
        let mut thread = MediaThread {
            peers: Peers::new(Ipv4Addr::LOCALHOST.into(), false, "stoa-soak")
                .map_err(|e| e.to_string())?,
            counter: Counter {
                stats: stats.clone(),
                connected: HashSet::new(),
            },
            speakers: HashMap::new(),
            commands: rx,
        };
        std::thread::Builder::new()
            .name("soak-media".into())
            .spawn(move || thread.run())
            .map_err(|e| e.to_string())?;
        Ok(Media { commands, stats })
    }

    /// Opens a connection and negotiates it over `session`.
    async fn open(
        &self,
        session: &mut Session,
        speaker: Option<(f32, Arc<AtomicBool>)>,
    ) -> Result<MediaLink, BoxError> {
        let (reply, offer) = oneshot::channel();
        self.commands
            .send(MediaCmd::Open {
                speaker,
                slots: session.slots(),
                reply,
            })
            .map_err(|_| "media thread gone")?;
        let (index, sdp) = offer.await.map_err(|_| "media thread gone")??;
        let answer = match session.exchange(sdp).await {
            Ok(answer) => answer,
            Err(e) => {
                self.close(MediaLink { index }, true);
                return Err(format!("media_offer: {e}").into());
            }
        };
        let (reply, done) = oneshot::channel();
        self.commands
            .send(MediaCmd::Answer {
                index,
                sdp: answer,
                reply,
            })
            .map_err(|_| "media thread gone")?;
        done.await.map_err(|_| "media thread gone")??;
        Ok(MediaLink { index })
    }

    fn close(&self, link: MediaLink, goodbye: bool) {
        let _ = self.commands.send(MediaCmd::Close {
            index: link.index,
            goodbye,
        });
    }
}

/// Counts what the peers do.
struct Counter {
    stats: Arc<MediaStats>,
    /// Peers connected now.
    connected: HashSet<usize>,
}

impl Counter {
    fn gone(&mut self, peer: usize) {
        if self.connected.remove(&peer) {
            self.stats.connected_now.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Observer for Counter {
    fn rtp(&mut self, _peer: usize, packet: &rtc::rtp::Packet, _stamp: i64) {
        if !packet.payload.is_empty() {
            self.stats.rtp_received.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn connected(&mut self, peer: usize) {
        self.connected.insert(peer);
        self.stats.connected_total.fetch_add(1, Ordering::Relaxed);
        self.stats.connected_now.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&mut self, peer: usize, state: RTCPeerConnectionState) {
        self.gone(peer);
        if state == RTCPeerConnectionState::Failed {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A speaker's microphone: its tone while it is their turn, silence otherwise.
struct Microphone {
    hz: f32,
    talking: Arc<AtomicBool>,
    sample: u64,
    voice: Voice,
}

struct MediaThread {
    peers: Peers,
    counter: Counter,
    speakers: HashMap<usize, Microphone>,
    commands: std::sync::mpsc::Receiver<MediaCmd>,
}

impl MediaThread {
    /// Until every handle is gone: commands, a frame from every connected speaker every
    /// 20 ms, and the peers' traffic and timers in between.
    fn run(&mut self) {
        let mut next_frame = Instant::now() + FRAME_DURATION;
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(command) => self.command(command),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            if now >= next_frame {
                self.speak();
                next_frame += FRAME_DURATION;
                if next_frame + 5 * FRAME_DURATION < now {
                    next_frame = now + FRAME_DURATION;
                }
            }
            self.peers.turn(
                next_frame.min(now + Duration::from_millis(5)),
                &mut self.counter,
            );
        }
    }

    fn command(&mut self, command: MediaCmd) {
        match command {
            MediaCmd::Open {
                speaker,
                slots,
                reply,
            } => {
                let opened = self.peers.open(speaker.is_some(), slots);
                let result = match (opened, speaker) {
                    (Ok((index, sdp)), Some((hz, talking))) => match Voice::new() {
                        Ok(voice) => {
                            self.speakers.insert(
                                index,
                                Microphone {
                                    hz,
                                    talking,
                                    sample: 0,
                                    voice,
                                },
                            );
                            Ok((index, sdp))
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    (Ok(opened), None) => Ok(opened),
                    (Err(e), _) => Err(e.to_string()),
                };
                let _ = reply.send(result);
            }
            MediaCmd::Answer { index, sdp, reply } => {
                let _ = reply.send(
                    self.peers
                        .answer(index, sdp, &mut self.counter)
                        .map_err(|e| e.to_string()),
                );
            }
            MediaCmd::Close { index, goodbye } => {
                self.speakers.remove(&index);
                self.peers.close(index, goodbye, &mut self.counter);
                self.counter.gone(index);
            }
        }
    }

    /// One 20 ms Opus frame from every connected speaker.
    fn speak(&mut self) {
        for (&index, mic) in &mut self.speakers {
            if !self.peers.get(index).is_some_and(|p| p.connected) {
                continue;
            }
            let talking = mic.talking.load(Ordering::Relaxed);
            let pcm: Vec<i16> = (0..FRAME_SAMPLES as u64)
                .map(|i| {
                    if !talking {
                        return 0;
                    }
                    let n = mic.sample + i;
                    let phase = 2.0 * std::f64::consts::PI * f64::from(mic.hz) * n as f64
                        / f64::from(SAMPLE_RATE);
                    (4634.0 * phase.sin()) as i16
                })
                .collect();
            mic.sample += FRAME_SAMPLES as u64;
            let Some((payload, level)) = mic.voice.encode(&pcm) else {
                continue;
            };
            if self.peers.send_rtp(
                index,
                payload,
                Some(level),
                FRAME_SAMPLES as u32,
                &mut self.counter,
            ) {
                self.counter
                    .stats
                    .frames_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The churn: a moderator, speakers taking turns, listeners coming and going
// ---------------------------------------------------------------------------------------------

struct Ctx {
    listener_link: InviteLink,
    speaker_link: InviteLink,
    moderator_link: InviteLink,
    media: Media,
    options: Options,
    activity: Activity,
    stop: watch::Receiver<bool>,
    /// Whose turn it is to talk, among the speakers.
    turn: AtomicUsize,
    listeners_now: AtomicUsize,
    grace: Duration,
    errors: Mutex<Vec<String>>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn error(&self, who: &str, e: impl std::fmt::Display) {
        self.activity.errors.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 20 {
            errors.push(format!("{who}: {e}"));
        }
    }

    async fn redeem(&self, link: &InviteLink, name: &str) -> Result<JoinAnswer, BoxError> {
        self.activity.joins.fetch_add(1, Ordering::Relaxed);
        Ok(redeem(link, name, None).await?)
    }

    /// Sleeps `d`, cut short when the churn stops.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
    }
}

fn count(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// The tone a speaker's turn is heard as (distinct per speaker).
fn speaker_hz(index: usize) -> f32 {
    300.0 + 110.0 * index as f32
}

/// One listener's visit, from redeeming the invite to leaving (one way or another).
async fn listener_visit(ctx: Arc<Ctx>, n: u64, mut rng: Rng) -> Result<(), BoxError> {
    count(&ctx.activity.lives);
    let answer = ctx
        .redeem(&ctx.listener_link, &format!("listener {n}"))
        .await?;
    let mut sig = Session::join(&answer).await?;
    let mut media = if rng.chance(ctx.options.media_share) {
        count(&ctx.activity.media_opened);
        Some(ctx.media.open(&mut sig, None).await?)
    } else {
        None
    };
    let life = rng.secs(ctx.options.pace.listener_life);
    let end = Instant::now() + life;
    // Once per visit at most: a socket that drops mid-visit and resumes within the grace.
    let mut drop_at = rng
        .chance(0.3)
        .then(|| Instant::now() + life.mul_f64(rng.unit()));
    // Once per visit at most: the media peer vanishes without a goodbye and the visit goes on.
    let mut vanish_at = rng
        .chance(0.2)
        .then(|| Instant::now() + life.mul_f64(rng.unit()));
    let mut on_stage = false;
    let mut hand = false;
    while Instant::now() < end && !ctx.stopping() {
        if drop_at.is_some_and(|at| Instant::now() >= at) {
            drop_at = None;
            let (url, token) = (sig.url().to_owned(), sig.resume_token().to_owned());
            sig.abort();
            tokio::time::sleep(ctx.grace.mul_f64(0.1 + 0.4 * rng.unit())).await;
            sig = Session::resume(&url, &token).await?;
            count(&ctx.activity.resumed);
        }
        if vanish_at.is_some_and(|at| Instant::now() >= at)
            && let Some(link) = media.take()
        {
            vanish_at = None;
            ctx.media.close(link, false);
            count(&ctx.activity.media_vanished);
        }
        let event = sig
            .next(Duration::from_millis(300 + rng.next() % 1500))
            .await?;
        match event {
            Some(e)
                if e["type"] == "invited_to_stage"
                    && e["participant"] == sig.participant_id().as_str() =>
            {
                if rng.chance(0.75) {
                    let a = sig.request(json!({ "type": "accept_invitation" })).await?;
                    if a["type"] == "ok" {
                        count(&ctx.activity.accepted);
                        on_stage = true;
                        hand = false;
                        if let Some(link) = media.take() {
                            ctx.media.close(link, true);
                            count(&ctx.activity.media_replaced);
                            let talking = Arc::new(AtomicBool::new(true));
                            let hz = 700.0 + (n % 5) as f32 * 50.0;
                            media = Some(ctx.media.open(&mut sig, Some((hz, talking))).await?);
                        }
                    }
                } else {
                    sig.request(json!({ "type": "decline_invitation" })).await?;
                    count(&ctx.activity.declined);
                    hand = false;
                }
            }
            Some(e)
                if e["type"] == "left_stage"
                    && e["participant"]["id"] == sig.participant_id().as_str() =>
            {
                on_stage = false;
                if let Some(link) = media.take() {
                    ctx.media.close(link, true);
                    count(&ctx.activity.media_replaced);
                    media = Some(ctx.media.open(&mut sig, None).await?);
                }
            }
            Some(e) if e["type"] == "closed" => {
                return Err(format!("closed by the server: {e}").into());
            }
            Some(_) => {}
            None if on_stage => {
                if rng.chance(0.3) {
                    let a = sig.request(json!({ "type": "leave_stage" })).await?;
                    if a["type"] == "ok" {
                        count(&ctx.activity.left_stage);
                    }
                }
            }
            None => {
                if !hand && rng.chance(0.4) {
                    let a = sig.request(json!({ "type": "raise_hand" })).await?;
                    if a["type"] == "ok" {
                        hand = true;
                        count(&ctx.activity.hands_raised);
                    }
                } else if hand && rng.chance(0.2) {
                    let a = sig.request(json!({ "type": "lower_hand" })).await?;
                    if a["type"] == "ok" {
                        hand = false;
                        count(&ctx.activity.hands_lowered);
                    }
                }
            }
        }
    }
    // How the visit ends: mostly a proper leave; some sockets drop and never come back (the
    // grace period has to clean up), some media peers vanish rather than close.
    let roll = rng.unit();
    if let Some(link) = media.take() {
        let goodbye = roll < 0.8;
        ctx.media.close(link, goodbye);
        count(if goodbye {
            &ctx.activity.media_goodbye
        } else {
            &ctx.activity.media_vanished
        });
    }
    if !ctx.stopping() && roll >= 0.85 {
        sig.abort();
        count(&ctx.activity.abandoned);
        return Ok(());
    }
    sig.leave().await?;
    count(&ctx.activity.leaves);
    Ok(())
}

/// Keeps about `listeners` visits going until the churn stops.
async fn listener_population(ctx: Arc<Ctx>, mut rng: Rng) -> Vec<JoinHandle<()>> {
    let mut visits = Vec::new();
    let mut n = 0u64;
    while !ctx.stopping() {
        visits.retain(|v: &JoinHandle<()>| !v.is_finished());
        if ctx.listeners_now.load(Ordering::Relaxed) < ctx.options.listeners {
            n += 1;
            let visit_rng = Rng::new(rng.next());
            let c = ctx.clone();
            ctx.listeners_now.fetch_add(1, Ordering::Relaxed);
            visits.push(tokio::spawn(async move {
                if let Err(e) = listener_visit(c.clone(), n, visit_rng).await {
                    c.error(&format!("listener {n}"), e);
                }
                c.listeners_now.fetch_sub(1, Ordering::Relaxed);
            }));
        }
        ctx.pause(rng.secs(ctx.options.pace.arrival)).await;
    }
    visits
}

/// One speaker seat: a speaker joins, talks on its turns, leaves after a while (sometimes
/// dropping and resuming first), and the next one takes the seat.
async fn speaker_seat(ctx: Arc<Ctx>, seat: usize, mut rng: Rng) {
    let mut round = 0;
    while !ctx.stopping() {
        round += 1;
        if round > 1 {
            count(&ctx.activity.speaker_rotations);
        }
        if let Err(e) = speaker_visit(&ctx, seat, &mut rng).await {
            ctx.error(&format!("speaker {seat}"), e);
            ctx.pause(Duration::from_secs(1)).await;
        }
    }
}

async fn speaker_visit(ctx: &Arc<Ctx>, seat: usize, rng: &mut Rng) -> Result<(), BoxError> {
    let answer = ctx
        .redeem(&ctx.speaker_link, &format!("speaker {seat}"))
        .await?;
    let mut sig = Session::join(&answer).await?;
    let talking = Arc::new(AtomicBool::new(false));
    count(&ctx.activity.media_opened);
    let link = ctx
        .media
        .open(&mut sig, Some((speaker_hz(seat), talking.clone())))
        .await?;
    let end = Instant::now() + rng.secs(ctx.options.pace.speaker_life);
    let mut resumed = false;
    while Instant::now() < end && !ctx.stopping() {
        talking.store(
            ctx.turn.load(Ordering::Relaxed) % ctx.options.speakers == seat,
            Ordering::Relaxed,
        );
        if let Some(e) = sig.next(Duration::from_millis(200)).await?
            && e["type"] == "closed"
        {
            return Err(format!("closed by the server: {e}").into());
        }
        if !resumed && rng.chance(0.002) {
            resumed = true;
            let (url, token) = (sig.url().to_owned(), sig.resume_token().to_owned());
            sig.abort();
            tokio::time::sleep(ctx.grace.mul_f64(0.1 + 0.4 * rng.unit())).await;
            sig = Session::resume(&url, &token).await?;
            count(&ctx.activity.resumed);
        }
    }
    talking.store(false, Ordering::Relaxed);
    ctx.media.close(link, true);
    count(&ctx.activity.media_goodbye);
    sig.leave().await?;
    count(&ctx.activity.leaves);
    Ok(())
}

/// Whose turn it is to talk moves on every few seconds.
async fn turn_taking(ctx: Arc<Ctx>, mut rng: Rng) {
    while !ctx.stopping() {
        ctx.pause(rng.secs(ctx.options.pace.turn)).await;
        ctx.turn.fetch_add(1, Ordering::Relaxed);
        count(&ctx.activity.turns);
    }
}

/// The moderator seat: invites raised hands to the stage and moves people back to the audience;
/// rotates like the speakers.
async fn moderator_seat(ctx: Arc<Ctx>, mut rng: Rng) {
    let mut round = 0;
    while !ctx.stopping() {
        round += 1;
        if round > 1 {
            count(&ctx.activity.moderator_rotations);
        }
        if let Err(e) = moderator_visit(&ctx, &mut rng).await {
            ctx.error("moderator", e);
            ctx.pause(Duration::from_secs(1)).await;
        }
    }
}

async fn moderator_visit(ctx: &Arc<Ctx>, rng: &mut Rng) -> Result<(), BoxError> {
    let answer = ctx.redeem(&ctx.moderator_link, "moderator").await?;
    let mut sig = Session::join(&answer).await?;
    let end = Instant::now() + rng.secs(ctx.options.pace.moderator_life);
    // Listeners this moderator brought on stage and who are still there.
    let mut invited: HashSet<String> = HashSet::new();
    let mut on_stage: Vec<String> = Vec::new();
    while Instant::now() < end && !ctx.stopping() {
        match sig.next(Duration::from_millis(500)).await? {
            Some(e) if e["type"] == "hand_raised" => {
                let who = e["participant"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if rng.chance(0.6) {
                    let a = sig
                        .request(json!({ "type": "invite_to_stage", "participant": who }))
                        .await?;
                    if a["type"] == "ok" {
                        count(&ctx.activity.stage_invites);
                        invited.insert(who);
                    }
                }
            }
            Some(e) if e["type"] == "joined_stage" => {
                let who = e["participant"]["id"].as_str().unwrap_or_default();
                if invited.remove(who) {
                    on_stage.push(who.to_owned());
                }
            }
            Some(e) if e["type"] == "left_stage" || e["type"] == "participant_left" => {
                let who = e["participant"]["id"]
                    .as_str()
                    .or(e["participant"].as_str())
                    .unwrap_or_default();
                on_stage.retain(|p| p != who);
                invited.remove(who);
            }
            Some(e) if e["type"] == "closed" => {
                return Err(format!("closed by the server: {e}").into());
            }
            Some(_) => {}
            None => {
                if let Some(who) = rng.pick(&on_stage).cloned()
                    && rng.chance(0.3)
                {
                    let a = sig
                        .request(json!({ "type": "move_to_audience", "participant": who }))
                        .await?;
                    if a["type"] == "ok" {
                        count(&ctx.activity.moved_to_audience);
                    }
                    on_stage.retain(|p| *p != who);
                }
            }
        }
    }
    sig.leave().await?;
    count(&ctx.activity.leaves);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Samples every `every` until the churn stops; each sample is printed as it is taken.
async fn sample_churn(
    sampler: Arc<Sampler>,
    ctx: Arc<Ctx>,
    t0: Instant,
    every: Duration,
    progress: bool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        ctx.pause(every).await;
        if ctx.stopping() {
            return samples;
        }
        let listeners = ctx.listeners_now.load(Ordering::Relaxed) as u64;
        match sampler.sample("churn", t0, listeners, true).await {
            Ok(s) => {
                if progress {
                    eprintln!(
                        "[{:6.0} s] rss {:.1} MiB, fds {}, threads {}, tasks {}, media {}, sockets {}, people {}, errors {}",
                        s.t,
                        s.rss_kib as f64 / 1024.0,
                        s.fds,
                        s.threads,
                        s.alive_tasks,
                        s.media_connections,
                        s.signal_sockets,
                        s.participants,
                        ctx.activity.errors.load(Ordering::Relaxed)
                    );
                }
                samples.push(s);
            }
            Err(e) => ctx.error("sampler", e),
        }
    }
}

/// The counts that must come back exactly, and the ones that may only go down.
fn settled(now: &Sample, baseline: &Sample) -> bool {
    now.media_connections <= baseline.media_connections
        && now.signal_sockets <= baseline.signal_sockets
        && now.live_rooms <= baseline.live_rooms
        && now.participants <= baseline.participants
        && now.alive_tasks <= baseline.alive_tasks
        && now.fds <= baseline.fds
        && now.threads <= baseline.threads
}

/// Waits until two samples a second apart are equal in every count, or `timeout`.
async fn steady(
    sampler: &Sampler,
    phase: &str,
    t0: Instant,
    timeout: Duration,
) -> Result<Sample, String> {
    let deadline = Instant::now() + timeout;
    let key = |s: &Sample| {
        (
            s.media_connections,
            s.signal_sockets,
            s.live_rooms,
            s.participants,
            s.alive_tasks,
            s.fds,
            s.threads,
        )
    };
    let mut last = sampler.sample(phase, t0, 0, false).await?;
    let mut same = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sampler.sample(phase, t0, 0, false).await?;
        same = if key(&now) == key(&last) { same + 1 } else { 0 };
        // Idle blocking-pool threads exit after 10 s: wait that long without change.
        if same >= 12 || Instant::now() > deadline {
            return sampler.sample(phase, t0, 0, true).await;
        }
        last = now;
    }
}

/// Runs the soak; an error only for what stops it (no server, REST refusals, no warm-up).
pub async fn run(options: Options) -> Result<Report, String> {
    soak(options).await.map_err(|e| e.to_string())
}

async fn soak(options: Options) -> Result<Report, BoxError> {
    let t0 = Instant::now();
    let seed = if options.seed == 0 {
        rand::random::<u64>() | 1
    } else {
        options.seed
    };
    let mut rng = Rng::new(seed);
    let target = match &options.url {
        Some(url) => Target {
            url: url.trim_end_matches('/').to_owned(),
            key: options
                .api_key
                .clone()
                .ok_or("--url needs the operator key (--api-key or STOA_API_KEY)")?,
            pid: options.pid,
            child: None,
            log: None,
            _dir: None,
        },
        None => {
            let bin = options.server_bin.clone().or_else(find_server_bin).ok_or(
                "no stoa binary: build it (cargo build --release -p stoa) or set STOA_BIN",
            )?;
            start_server(&bin)?
        }
    };
    let target = Arc::new(target);
    let sampler = Arc::new(Sampler::new(target.clone()));
    let api = Api::new(&target.url, &target.key);
    let room = api.create_room("soak", json!({})).await?;
    let room = room["id"].as_str().ok_or("room without id")?.to_owned();
    let mut links = Vec::new();
    for role in ["listener", "speaker", "moderator"] {
        links.push(
            api.create_invite(&room, role, json!({ "label": "soak" }))
                .await?,
        );
    }
    let media = Media::start()?;
    let (stop_tx, stop) = watch::channel(false);
    let mut ctx = Ctx {
        listener_link: links[0].clone(),
        speaker_link: links[1].clone(),
        moderator_link: links[2].clone(),
        media,
        options: options.clone(),
        activity: Activity::default(),
        stop,
        turn: AtomicUsize::new(0),
        listeners_now: AtomicUsize::new(0),
        grace: Duration::from_secs(5),
        errors: Mutex::new(Vec::new()),
    };

    // Warm-up: one visit with media, so the baseline is of a server that has served someone.
    {
        let answer = ctx.redeem(&ctx.listener_link, "warm-up").await?;
        let mut sig = Session::join(&answer).await?;
        let link = ctx.media.open(&mut sig, None).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while ctx.media.stats.connected_now.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return Err("the warm-up listener's media never connected".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ctx.media.close(link, true);
        sig.leave().await?;
    }
    let grace = {
        // The grace period the server announces (a server we were pointed at may differ).
        let answer = ctx.redeem(&ctx.listener_link, "probe").await?;
        let probe = Session::join(&answer).await?;
        let grace = probe.welcome().resume_grace_secs;
        let _ = probe.leave().await;
        Duration::from_secs(grace)
    };
    ctx.grace = grace;
    let mut baseline = steady(&sampler, "baseline", t0, Duration::from_secs(60)).await?;
    baseline.phase = "baseline".into();
    if options.progress {
        eprintln!(
            "baseline: rss {:.1} MiB, fds {}, threads {}, tasks {}; churn for {:.0} s",
            baseline.rss_kib as f64 / 1024.0,
            baseline.fds,
            baseline.threads,
            baseline.alive_tasks,
            options.churn.as_secs_f64()
        );
    }

    // Churn.
    let ctx = Arc::new(ctx);
    let started = Instant::now();
    let population = tokio::spawn(listener_population(ctx.clone(), Rng::new(rng.next())));
    let mut seats: Vec<JoinHandle<()>> = (0..options.speakers)
        .map(|seat| tokio::spawn(speaker_seat(ctx.clone(), seat, Rng::new(rng.next()))))
        .collect();
    seats.push(tokio::spawn(moderator_seat(
        ctx.clone(),
        Rng::new(rng.next()),
    )));
    seats.push(tokio::spawn(turn_taking(ctx.clone(), Rng::new(rng.next()))));
    let sampling = tokio::spawn(sample_churn(
        sampler.clone(),
        ctx.clone(),
        t0,
        options.sample_every,
        options.progress,
    ));
    tokio::time::sleep(options.churn).await;
    let mut last_churn = sampler
        .sample(
            "churn",
            t0,
            ctx.listeners_now.load(Ordering::Relaxed) as u64,
            true,
        )
        .await?;
    last_churn.phase = "churn-end".into();

    // Quiet: everyone leaves.
    let _ = stop_tx.send(true);
    let churn_secs = started.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    let visits = population.await.unwrap_or_default();
    for task in visits.into_iter().chain(seats) {
        if tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .is_err()
        {
            failures.push("a churn task did not finish within 60 s of the stop".into());
        }
    }
    let mut samples = vec![baseline.clone()];
    samples.extend(sampling.await.unwrap_or_default());
    samples.push(last_churn);
    let quiet_started = Instant::now();
    let deadline = quiet_started + options.settle_timeout;
    // Settled means the counts are back and then stay unchanged for a while (a descriptor or a
    // task can linger for a moment after the last close).
    let mut after = loop {
        let now = sampler.sample("quiet", t0, 0, false).await?;
        if Instant::now() > deadline {
            break sampler.sample("quiet", t0, 0, true).await?;
        }
        if settled(&now, &baseline) {
            samples.push(sampler.sample("quiet", t0, 0, true).await?);
            let steady_sample = steady(&sampler, "final", t0, Duration::from_secs(30)).await?;
            if settled(&steady_sample, &baseline) || Instant::now() > deadline {
                break steady_sample;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settle_secs = quiet_started.elapsed().as_secs_f64();
    after.phase = "final".into();
    samples.push(after.clone());

    // Verdict.
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let mut checks = Vec::new();
    let mut exact = |metric: &str, f: fn(&Sample) -> u64| {
        let (b, a) = (f(&baseline), f(&after));
        checks.push(Check {
            metric: metric.into(),
            baseline: b,
            peak: peak(f),
            after: a,
            rule: "after == baseline".into(),
            ok: a == b,
        });
    };
    exact("media_connections", |s| s.media_connections);
    exact("signal_sockets", |s| s.signal_sockets);
    exact("live_rooms", |s| s.live_rooms);
    exact("participants", |s| s.participants);
    let mut at_most = |metric: &str, f: fn(&Sample) -> u64| {
        let (b, a) = (f(&baseline), f(&after));
        checks.push(Check {
            metric: metric.into(),
            baseline: b,
            peak: peak(f),
            after: a,
            rule: "after <= baseline".into(),
            ok: a <= b,
        });
    };
    at_most("alive_tasks", |s| s.alive_tasks);
    at_most("open_fds", |s| s.fds);
    at_most("threads", |s| s.threads);
    let slack_kib = (options.rss_slack_mib * 1024.0)
        .max(options.rss_slack_fraction * baseline.rss_kib as f64) as u64;
    checks.push(Check {
        metric: "rss_kib".into(),
        baseline: baseline.rss_kib,
        peak: peak(|s| s.rss_kib),
        after: after.rss_kib,
        rule: format!("after <= baseline + {} KiB", slack_kib),
        ok: after.rss_kib <= baseline.rss_kib + slack_kib,
    });
    // A leak grows with time: over a long churn, the last quarter's RSS must not be well above
    // the second quarter's (by then pools and caches have reached their working size).
    let churn: Vec<&Sample> = samples.iter().filter(|s| s.phase == "churn").collect();
    if options.churn >= Duration::from_secs(600) && churn.len() >= 8 {
        let q = churn.len() / 4;
        let median = |part: &[&Sample]| {
            let mut v: Vec<u64> = part.iter().map(|s| s.rss_kib).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (second, last) = (median(&churn[q..2 * q]), median(&churn[churn.len() - q..]));
        let allowed = second + second / 10 + 8 * 1024;
        checks.push(Check {
            metric: "rss_trend_kib".into(),
            baseline: second,
            peak: peak(|s| s.rss_kib),
            after: last,
            rule: format!("last-quarter median <= 2nd-quarter median + 10% + 8 MiB ({allowed})"),
            ok: last <= allowed,
        });
    }

    let stats = &ctx.media.stats;
    let media_counts = MediaCounts {
        connected_total: stats.connected_total.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        frames_sent: stats.frames_sent.load(Ordering::Relaxed),
        rtp_received: stats.rtp_received.load(Ordering::Relaxed),
    };
    if media_counts.rtp_received == 0 || after.rtp_forwarded <= baseline.rtp_forwarded {
        failures.push("no audio was forwarded: the media part of the churn did not run".into());
    }
    let lives = ctx.activity.lives.load(Ordering::Relaxed);
    let errors = ctx.activity.errors.load(Ordering::Relaxed);
    if errors > 2 + lives / 50 {
        failures.push(format!(
            "{errors} client errors in {lives} listener visits (more than 2 + 2%)"
        ));
    }
    drop(sampler);
    let mut target = Arc::try_unwrap(target).map_err(|_| "the sampler still holds the server")?;
    if let Some(child) = target.child.as_mut()
        && let Ok(Some(status)) = child.try_wait()
    {
        failures.push(format!("the server exited during the soak: {status}"));
    }
    let server_log = target.log.as_ref().map(|p| {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        if text.contains("panicked") {
            failures.push("the server log has a panic".into());
        }
        let lines = text.lines().count();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        format!(
            "{lines} lines (RUST_LOG=warn); last ones:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    let first_errors = ctx.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Report {
        seed,
        churn_secs,
        samples,
        baseline,
        after,
        checks,
        activity: ctx
            .activity
            .counts()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        media: media_counts,
        first_errors,
        failures,
        server_log,
        settle_secs,
    })
}
