//! `stoa-loadgen`'s core: loads a running server with real WebRTC clients and measures it.
//! It only drives clients and reads `/proc`; starting servers and searching for capacity live
//! in [`capacity`], the UDP floor in [`floor`], the SVG in [`plot`].
//!
//! Against a server at `url` (loopback only unless `allow_remote`), with the operator key, it
//! creates a room and two invites (speaker, listener) through the REST API, redeems one invite
//! per client (`POST /api/v1/join`), joins every client over its own signaling WebSocket (tokio
//! tasks, one `stoa_client::Session` each) and opens its media as an `rtc` sans-IO peer
//! connection.
//! All peer connections live on one thread (the media thread, [`Peers`]), each with its own
//! UDP socket.
//!
//! The speakers join first and start sending real Opus frames (a 440 Hz tone with a little
//! noise, mono, 20 ms, with the RFC 6464 audio-level extension) as soon as their media is up;
//! then the listeners join, `join_concurrency` at a time (all at once for a burst). Once every
//! client has joined (or failed), the run waits `settle`, then measures a window of `seconds`:
//!
//! - joins: successes, failures, the time from a listener's redeem request to its media
//!   connection reaching `connected`, and to its first audio packet;
//! - per listener, over the window: packets expected (every packet the speakers sent in the
//!   window: every listener hears every speaker while speakers ≤ the server's slots), received,
//!   lost; RTP sequence gaps over the whole run as a second check;
//! - server-added delay: every packet a speaker sends is stamped (CLOCK_REALTIME, just before
//!   `rtc` encrypts and sends it); listeners' sockets carry kernel receive stamps
//!   (`SO_TIMESTAMPNS`, same clock, taken when the server's send delivers the datagram on
//!   loopback, so a busy client does not inflate it);
//! - the server's CPU (whole process and per thread, from `/proc/<pid>/task/*/schedstat`) and
//!   resident memory, and the load generator's own CPU, so that a saturated client shows.
//!
//! **The lean listener.** Decrypting every packet for every listener through `rtc` would cost
//! the client about what forwarding costs the server. SRTP leaves the RTP header in clear, and
//! the server forwards a speaker's payload unchanged, rewriting SSRC, sequence number and
//! timestamp with a constant offset per slot while the slot keeps its speaker. So a listener
//! lets `rtc` decrypt its first packets on each stream: the decrypted payload's hash names the
//! speaker's packet, which gives the stream's sequence offset. After that it reads only the
//! header of most packets and maps the sequence number back to the speaker's packet, and still
//! hands one packet in `check_every` to `rtc` to decrypt, authenticate, and confirm the
//! mapping (a mismatch counts as `remapped` and relearns it). `check_every = 1` decrypts all.
//!
//! Everything is bounded: joins time out, the run lasts `settle + seconds`, then it stops.

pub mod capacity;
pub mod floor;
pub mod plot;
pub mod procfs;

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use rtc::peer_connection::state::RTCPeerConnectionState;
use stoa_client::api::Api;
use stoa_client::audio::{FRAME_SAMPLES, SAMPLE_RATE};
use stoa_client::fleet::{Observer, Peers, SeqSpan, Voice, realtime_ns};
use stoa_client::join::redeem;
use stoa_client::media::OfferChannel;
use stoa_client::{InviteLink, Session};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use procfs::ProcessSample;

const FRAME: Duration = Duration::from_millis(20);
/// Time after the window for stragglers to reach the listeners.
const TAIL: Duration = Duration::from_millis(500);
/// Longest the media thread sleeps before looking at its command queue.
const COMMAND_POLL: Duration = Duration::from_millis(5);
/// Packets `rtc` decrypts on a new stream before the header alone is trusted.
const LEARN_PACKETS: u32 = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The operator key.
    pub api_key: String,
    pub speakers: usize,
    pub listeners: usize,
    /// Length of the measured window.
    pub seconds: f64,
    /// Time between the last join and the window.
    pub settle: Duration,
    /// The server's process id, for CPU and memory from `/proc`.
    pub server_pid: Option<u32>,
    /// Allow a server that is not on a loopback address.
    pub allow_remote: bool,
    /// Joins in flight at once.
    pub join_concurrency: usize,
    /// How long the whole join phase may take.
    pub join_timeout: Duration,
    /// `rtc` decrypts one received packet in this many (after the first few of each stream);
    /// 1 decrypts every packet.
    pub check_every: u32,
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
            settle: Duration::from_secs(2),
            server_pid: None,
            allow_remote: false,
            join_concurrency: 64,
            join_timeout: Duration::from_secs(60),
            check_every: 50,
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

    pub fn json(&self) -> Value {
        json!({ "count": self.count, "p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max })
    }
}

/// Delays in µs, log-linear buckets (1 µs below 1 ms, 10 µs below 10 ms, 100 µs below 100 ms,
/// 1 ms above): percentiles within 1%, constant memory, one add per packet.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    count: usize,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            count: 0,
            max: 0.0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        match us {
            0..1_000 => us as usize,
            1_000..10_000 => 1_000 + (us as usize - 1_000) / 10,
            10_000..100_000 => 1_900 + (us as usize - 10_000) / 100,
            100_000..10_000_000 => 2_800 + (us as usize - 100_000) / 1_000,
            _ => 12_700,
        }
    }

    fn lower_bound(bucket: usize) -> f64 {
        match bucket {
            0..1_000 => bucket as f64,
            1_000..1_900 => 1_000.0 + (bucket - 1_000) as f64 * 10.0,
            1_900..2_800 => 10_000.0 + (bucket - 1_900) as f64 * 100.0,
            _ => 100_000.0 + (bucket - 2_800) as f64 * 1_000.0,
        }
    }

    pub fn add(&mut self, us: f64) {
        let us = us.max(0.0);
        self.counts[Self::bucket(us as u64)] += 1;
        self.count += 1;
        self.max = self.max.max(us);
    }

    pub fn dist(&self) -> Dist {
        if self.count == 0 {
            return Dist::default();
        }
        let at = |q: f64| {
            let rank = ((self.count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (bucket, &n) in self.counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Self::lower_bound(bucket).min(self.max);
                }
            }
            self.max
        };
        Dist {
            count: self.count,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: self.max,
        }
    }
}

/// One listener's reception.
#[derive(Clone, Debug, Default)]
pub struct ListenerReport {
    pub joined: bool,
    pub connected: bool,
    /// Packets received over the whole run.
    pub heard: u64,
    /// In the window: what the speakers sent, what arrived of it, what did not.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Packets missing from the sequence numbers of the streams received (whole run).
    pub seq_lost: u64,
    /// Packets whose payload no speaker sent in this run, or whose header maps to no packet
    /// (should stay 0).
    pub unmatched: u64,
    /// The signaling URL its join answer named (the node serving it, in a cluster).
    pub node: String,
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

/// How the lean listeners checked what they counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checks {
    /// Packets `rtc` decrypted and authenticated for listeners.
    pub decrypted: u64,
    /// Of those, sampled packets whose payload matched what the header mapping predicted.
    pub confirmed: u64,
    /// Sampled packets whose payload did not match the mapping (it was relearnt).
    pub remapped: u64,
    /// Packets counted from the header alone.
    pub header_only: u64,
}

/// How the server's media worker threads' names begin (`stoa-media-0`, …).
const MEDIA_THREADS: &str = "stoa-media";

/// The server's CPU and memory over the window.
#[derive(Clone, Debug, Default)]
pub struct ServerUsage {
    /// VmRSS before the first join, KiB.
    pub rss_before_joins_kib: u64,
    pub cpu_seconds: f64,
    pub window_seconds: f64,
    /// CPU seconds per thread name over the window, largest first.
    pub threads: Vec<(String, f64)>,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    /// Seconds its threads were runnable but waited for a CPU (other processes on its core,
    /// or its own threads behind each other).
    pub waited_seconds: f64,
    /// The same for the media worker threads alone: what delays forwarding.
    pub media_waited_seconds: f64,
}

impl ServerUsage {
    pub fn cpu_share(&self) -> f64 {
        self.cpu_seconds / self.window_seconds.max(1e-9)
    }

    /// CPU seconds of the media worker threads (`stoa-media-*`).
    pub fn media_cpu_seconds(&self) -> f64 {
        media_seconds(&self.threads)
    }
}

/// The seconds of the media worker threads among per-thread seconds.
fn media_seconds(threads: &[(String, f64)]) -> f64 {
    threads
        .iter()
        .filter(|(name, _)| name.starts_with(MEDIA_THREADS))
        .map(|(_, s)| s)
        .sum()
}

/// The server's CPU while the listeners joined: what a join costs it, and whether the joins
/// were bounded by it (a share near 100 % of one core on a server pinned to one).
#[derive(Clone, Debug, Default)]
pub struct JoinCpu {
    /// From the first listener's join request until every listener's media settled.
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// Of which the media worker threads (ICE, DTLS handshakes; also the forwarding to the
    /// listeners already connected, as the speakers talk during the joins).
    pub media_cpu_seconds: f64,
    /// The load generator's own CPU over the same time (its clients' ICE and DTLS).
    pub client_cpu_seconds: f64,
    pub joins: usize,
}

impl JoinCpu {
    pub fn ms_per_join(&self) -> f64 {
        self.cpu_seconds * 1e3 / self.joins.max(1) as f64
    }
    pub fn media_ms_per_join(&self) -> f64 {
        self.media_cpu_seconds * 1e3 / self.joins.max(1) as f64
    }
    pub fn share(&self) -> f64 {
        self.cpu_seconds / self.wall_seconds.max(1e-9)
    }
}

/// The load generator's own CPU over the window.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientUsage {
    /// Whole process, in cores (1.0 = one core busy).
    pub cpu_share: f64,
    /// The media thread alone.
    pub media_share: f64,
    /// The speakers could not keep their 20 ms pace this many times in the window.
    pub late_sends: u64,
    /// Share of the window its threads were runnable but waited for a CPU.
    pub waited_share: f64,
}

impl ClientUsage {
    /// The client was the bottleneck, or close to it: pinned to one core, it used ≥ 90 % of
    /// it.
    pub fn saturated(&self) -> bool {
        self.cpu_share >= 0.9
    }
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
    /// Listeners: redeem request → media connected, ms.
    pub join_ms: Dist,
    /// Listeners: redeem request → first audio packet, ms.
    pub first_audio_ms: Dist,
    /// From the first listener's join request to the last listener's media connected, s.
    pub all_connected_s: f64,
    /// From the first listener's join request to the last listener's first audio, s (0 if
    /// some never heard any).
    pub all_hearing_s: f64,
    /// Packets the speakers sent over the whole run, and in the window.
    pub sent: u64,
    pub window_sent: u64,
    pub per_listener: Vec<ListenerReport>,
    /// Server-added delay over the window, µs.
    pub delay_us: Dist,
    /// The same, per node the listeners were sent to (by signaling URL), in the order they
    /// were first seen.
    pub node_delay_us: Vec<(String, Dist)>,
    /// Mean size of the datagrams the listeners received, bytes.
    pub datagram_bytes: f64,
    pub checks: Checks,
    pub server: Option<ServerUsage>,
    /// The server's CPU during the listeners' joins (with `--server-pid`).
    pub join_cpu: Option<JoinCpu>,
    /// Every join's time in each of [`JOIN_STEPS`], ms.
    pub join_steps: [Vec<f64>; JOIN_STEPS.len()],
    pub client: ClientUsage,
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
        self.per_listener.iter().filter(|l| l.heard == 0).count()
    }
    pub fn unmatched(&self) -> u64 {
        self.per_listener.iter().map(|l| l.unmatched).sum()
    }

    /// Audio flowed: every listener heard packets and none lost more than 5% in the window.
    pub fn audio_ok(&self) -> bool {
        self.window_sent > 0 && self.silent_listeners() == 0 && self.worst_loss() <= 0.05
    }

    /// Server CPU per received packet × listener, µs (needs the server pid).
    pub fn cpu_us_per_packet_listener(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        let received = self.received();
        (received > 0).then(|| s.cpu_seconds * 1e6 / received as f64)
    }

    /// The media worker threads' CPU per received packet × listener, µs.
    pub fn media_us_per_packet_listener(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        let received = self.received();
        (received > 0).then(|| s.media_cpu_seconds() * 1e6 / received as f64)
    }

    /// Server RSS growth from before the joins to the end of the window, per joined client.
    pub fn rss_per_client_kib(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        (self.joins_ok > 0)
            .then(|| (s.rss_end_kib as f64 - s.rss_before_joins_kib as f64) / self.joins_ok as f64)
    }

    pub fn to_json(&self) -> Value {
        let min_received = self
            .per_listener
            .iter()
            .map(|l| l.received)
            .min()
            .unwrap_or(0);
        let server = self.server.as_ref().map(|s| {
            json!({
                "cpu_seconds": s.cpu_seconds,
                "window_seconds": s.window_seconds,
                "cpu_share": s.cpu_share(),
                "media_cpu_share": s.media_cpu_seconds() / s.window_seconds.max(1e-9),
                "threads": s.threads.iter().map(|(n, c)| json!({ "name": n, "cpu_share": c / s.window_seconds.max(1e-9) })).collect::<Vec<_>>(),
                "cpu_us_per_packet_listener": self.cpu_us_per_packet_listener(),
                "media_us_per_packet_listener": self.media_us_per_packet_listener(),
                "rss_before_joins_kib": s.rss_before_joins_kib,
                "rss_start_kib": s.rss_start_kib,
                "rss_per_client_kib": self.rss_per_client_kib(),
                "rss_end_kib": s.rss_end_kib,
                "rss_max_kib": s.rss_max_kib,
                "waited_share": s.waited_seconds / s.window_seconds.max(1e-9),
            })
        });
        let c = &self.checks;
        json!({
            "speakers": self.speakers,
            "listeners": self.listeners,
            "seconds": self.seconds,
            "joins": {
                "ok": self.joins_ok,
                "failed": self.joins_failed,
                "errors": self.join_errors,
                "ms": self.join_ms.json(),
                "first_audio_ms": self.first_audio_ms.json(),
                "all_connected_s": self.all_connected_s,
                "all_hearing_s": self.all_hearing_s,
            },
            "packets": {
                "sent": self.sent,
                "window_sent": self.window_sent,
                "expected": self.expected(),
                "received": self.received(),
                "lost": self.lost(),
                "loss": self.loss(),
                "worst_listener_loss": self.worst_loss(),
                "min_received": min_received,
                "silent_listeners": self.silent_listeners(),
                "seq_lost": self.per_listener.iter().map(|l| l.seq_lost).sum::<u64>(),
                "unmatched": self.unmatched(),
                "datagram_bytes": self.datagram_bytes,
            },
            "checks": { "decrypted": c.decrypted, "confirmed": c.confirmed, "remapped": c.remapped, "header_only": c.header_only },
            "delay_us": self.delay_us.json(),
            "by_node": self.node_delay_us.iter().map(|(node, d)| {
                let on_node = self.per_listener.iter().filter(|l| l.node == *node);
                let (lost, expected, listeners) = on_node.fold((0, 0, 0), |(l, e, n), r| (l + r.lost, e + r.expected, n + 1));
                json!({ "signal_url": node, "listeners": listeners, "delay_us": d.json(), "loss": lost as f64 / (expected as f64).max(1.0) })
            }).collect::<Vec<_>>(),
            "server": server,
            "join_steps_ms": JOIN_STEPS.iter().zip(&self.join_steps)
                .map(|(name, ms)| (name.to_string(), Dist::of(ms.clone()).json()))
                .collect::<serde_json::Map<_, _>>(),
            "join_cpu": self.join_cpu.as_ref().map(|j| json!({
                "wall_seconds": j.wall_seconds,
                "cpu_seconds": j.cpu_seconds,
                "media_cpu_seconds": j.media_cpu_seconds,
                "client_cpu_seconds": j.client_cpu_seconds,
                "joins": j.joins,
                "ms_per_join": j.ms_per_join(),
                "media_ms_per_join": j.media_ms_per_join(),
                "cpu_share": j.share(),
            })),
            "client": {
                "cpu_share": self.client.cpu_share,
                "media_share": self.client.media_share,
                "late_sends": self.client.late_sends,
                "waited_share": self.client.waited_share,
                "saturated": self.client.saturated(),
            },
            "audio_ok": self.audio_ok(),
        })
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let j = &self.join_ms;
        let f = &self.first_audio_ms;
        let d = &self.delay_us;
        out += &format!(
            "stoa-loadgen: {} speaker(s), {} listener(s), {:.1} s window\n",
            self.speakers, self.listeners, self.seconds
        );
        out += &format!(
            "joins: {} ok, {} failed; listener redeem → media connected ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n",
            self.joins_ok, self.joins_failed, j.p50, j.p95, j.p99, j.max
        );
        out += &format!(
            "joins: listener redeem → first audio ms: p50 {:.1}  p95 {:.1}  max {:.1}; all connected {:.2} s, all hearing {:.2} s after the first listener's join request\n",
            f.p50, f.p95, f.max, self.all_connected_s, self.all_hearing_s
        );
        let steps: Vec<String> = JOIN_STEPS
            .iter()
            .zip(&self.join_steps)
            .map(|(name, ms)| {
                let d = Dist::of(ms.clone());
                format!("{name} {:.1}/{:.1}", d.p50, d.p95)
            })
            .collect();
        out += &format!(
            "joins: steps ms p50/p95 (speakers' included): {}\n",
            steps.join(", ")
        );
        if let Some(j) = &self.join_cpu {
            out += &format!(
                "joins: server CPU {:.0} ms over {:.2} s of joining ({:.0}% of a core): {:.2} ms per join, {:.2} ms of it in the media workers; load generator CPU {:.0}% of a core\n",
                j.cpu_seconds * 1e3,
                j.wall_seconds,
                j.share() * 100.0,
                j.ms_per_join(),
                j.media_ms_per_join(),
                j.client_cpu_seconds / j.wall_seconds.max(1e-9) * 100.0,
            );
        }
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
            "packets in the window: sent {} by the speakers; listeners expected {}, received {}, lost {} ({:.3}%); worst listener {:.3}%, fewest received {}; silent listeners {}; sequence-gap loss (whole run) {}; unmatched {}\n",
            self.window_sent,
            self.expected(),
            self.received(),
            self.lost(),
            self.loss() * 100.0,
            self.worst_loss() * 100.0,
            min_received,
            self.silent_listeners(),
            self.per_listener.iter().map(|l| l.seq_lost).sum::<u64>(),
            self.unmatched(),
        );
        let c = &self.checks;
        out += &format!(
            "checks: {} packets decrypted and authenticated by rtc, {} confirmed the header mapping, {} remapped; {} counted from the header\n",
            c.decrypted, c.confirmed, c.remapped, c.header_only
        );
        out += &format!(
            "server-added delay µs ({} samples): p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}\n",
            d.count, d.p50, d.p95, d.p99, d.max
        );
        if self.node_delay_us.len() > 1 {
            for (node, d) in &self.node_delay_us {
                let on_node: Vec<&ListenerReport> = self
                    .per_listener
                    .iter()
                    .filter(|l| l.node == *node)
                    .collect();
                let lost: u64 = on_node.iter().map(|l| l.lost).sum();
                let expected: u64 = on_node.iter().map(|l| l.expected).sum();
                out += &format!(
                    "  via {node}: {} listeners, delay µs p50 {:.0}  p99 {:.0}  max {:.0}, loss {:.4}%\n",
                    on_node.len(),
                    d.p50,
                    d.p99,
                    d.max,
                    100.0 * lost as f64 / expected.max(1) as f64
                );
            }
        }
        if let Some(s) = &self.server {
            let threads: Vec<String> = s
                .threads
                .iter()
                .take(4)
                .map(|(n, c)| format!("{n} {:.1}%", c / s.window_seconds.max(1e-9) * 100.0))
                .collect();
            out += &format!(
                "server: CPU {:.1}% of a core ({}), waited for a CPU {:.1}% of the window; {} per packet × listener ({} in the media workers); RSS {} KiB before the joins, {} → {} KiB over the window, {} per joined client\n",
                s.cpu_share() * 100.0,
                threads.join(", "),
                s.waited_seconds / s.window_seconds.max(1e-9) * 100.0,
                self.cpu_us_per_packet_listener()
                    .map_or("-".to_owned(), |v| format!("{v:.2} µs")),
                self.media_us_per_packet_listener()
                    .map_or("-".to_owned(), |v| format!("{v:.2} µs")),
                s.rss_before_joins_kib,
                s.rss_start_kib,
                s.rss_end_kib,
                self.rss_per_client_kib()
                    .map_or("-".to_owned(), |v| format!("{v:.1} KiB")),
            );
        }
        out += &format!(
            "client: CPU {:.1}% of a core (media thread {:.1}%), waited for a CPU {:.1}% of the window, late sends {}{}\n",
            self.client.cpu_share * 100.0,
            self.client.media_share * 100.0,
            self.client.waited_share * 100.0,
            self.client.late_sends,
            if self.client.saturated() {
                " — SATURATED: these figures may show the client's limit, not the server's"
            } else {
                ""
            }
        );
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
    /// The window, as realtime ns of the speakers' send stamps; 0 = not started / not ended.
    window_start: AtomicI64,
    window_end: AtomicI64,
    connected: AtomicU64,
    media_failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    late_sends: AtomicU64,
}

enum Command {
    /// Make a peer connection; answer with its index and offer.
    Open {
        speaker: bool,
        slots: usize,
        started: Instant,
        started_rt: i64,
        /// The signaling URL the join answer named: in a cluster, the node serving the client.
        node: String,
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

/// Join tasks and what they report.
struct Joins {
    outcomes: tokio::sync::mpsc::UnboundedReceiver<Result<JoinSteps, String>>,
    outcome_tx: tokio::sync::mpsc::UnboundedSender<Result<JoinSteps, String>>,
    stop: tokio::sync::watch::Sender<bool>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Joins {
    fn new(concurrency: usize) -> Self {
        let (outcome_tx, outcomes) = tokio::sync::mpsc::unbounded_channel();
        Joins {
            outcomes,
            outcome_tx,
            stop: tokio::sync::watch::channel(false).0,
            gate: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
        }
    }

    /// Starts one client's join; once joined, its task keeps the signaling socket read (pings,
    /// events) until the run stops.
    fn spawn(
        &self,
        link: &InviteLink,
        name: String,
        speaker: bool,
        commands: &mpsc::Sender<Command>,
    ) {
        let (link, commands) = (link.clone(), commands.clone());
        let gate = self.gate.clone();
        let outcome_tx = self.outcome_tx.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let joined = join_one(&link, &name, speaker, commands).await;
            drop(permit);
            match joined {
                Ok((mut signal, steps)) => {
                    let _ = outcome_tx.send(Ok(steps));
                    while !*stop.borrow() && signal.closed().is_none() {
                        tokio::select! {
                            _ = stop.changed() => {}
                            _ = signal.next(Duration::from_secs(5)) => {}
                        }
                    }
                    signal.close().await;
                }
                Err(e) => {
                    let _ = outcome_tx.send(Err(e));
                }
            }
        });
    }

    /// Waits for `count` join outcomes (or the deadline) and adds them to the report.
    async fn collect(
        &mut self,
        count: usize,
        deadline: tokio::time::Instant,
        report: &mut Report,
        mut progress: impl FnMut(&Report),
    ) {
        let mut answered = 0;
        while answered < count {
            match tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
                self.outcomes.recv(),
            )
            .await
            {
                Ok(Some(Ok(steps))) => {
                    report.joins_ok += 1;
                    answered += 1;
                    for (all, ms) in report.join_steps.iter_mut().zip(steps.0) {
                        all.push(ms);
                    }
                }
                Ok(Some(Err(e))) => {
                    report.joins_failed += 1;
                    answered += 1;
                    if report.join_errors.len() < 5 {
                        report.join_errors.push(e);
                    }
                }
                Ok(None) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => progress(report),
            }
        }
        if answered < count {
            report.joins_failed += count - answered;
            report.join_errors.push(format!(
                "{} join(s) unanswered at the deadline",
                count - answered
            ));
        }
    }
}

/// Waits until `done` holds or the deadline passes, calling `progress` about once a second.
async fn wait_until(
    deadline: tokio::time::Instant,
    mut done: impl FnMut() -> bool,
    mut progress: impl FnMut(),
) {
    let mut last = Instant::now();
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            progress();
        }
    }
}

/// Runs the load and returns what it measured. Errors only for what stops the whole run
/// (bad target, REST refusals); client failures are counted in the report.
pub async fn run(options: Options) -> Result<Report, String> {
    let server_ip = check_target(&options)?;
    if options.speakers == 0 {
        return Err("at least one speaker is needed".to_owned());
    }
    let api = Api::new(&options.url, &options.api_key);
    let total = options.speakers + options.listeners;
    let room = api
        .create_room(
            &format!("loadgen {}+{}", options.speakers, options.listeners),
            json!({
                "max_participants": total.clamp(1, 100_000),
                "max_stage": options.speakers.clamp(1, 100),
            }),
        )
        .await
        .map_err(|e| format!("POST /api/v1/rooms: {e}"))?;
    let room_id = room["id"].as_str().ok_or("room without id")?.to_owned();
    let mut links = Vec::new();
    for role in ["speaker", "listener"] {
        links.push(
            api.create_invite(&room_id, role, json!({ "label": "loadgen" }))
                .await
                .map_err(|e| format!("POST /api/v1/rooms/{room_id}/invites: {e}"))?,
        );
    }

    let rss_before_joins = options
        .server_pid
        .and_then(ProcessSample::read)
        .map_or(0, |u| u.rss_kib);
    let shared = Arc::new(Shared::default());
    let (commands, command_rx) = mpsc::channel::<Command>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let media_shared = shared.clone();
    let bind_ip = local_ip(server_ip);
    let check_every = options.check_every.max(1);
    let speakers = options.speakers;
    std::thread::Builder::new()
        .name(MEDIA_THREAD.to_owned())
        .spawn(move || {
            let result = MediaThread::new(bind_ip, media_shared, command_rx, check_every, speakers)
                .map_err(|e| e.to_string())
                .map(MediaThread::run);
            let _ = done_tx.send(result);
        })
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let mut report = Report {
        speakers: options.speakers,
        listeners: options.listeners,
        seconds: options.seconds,
        ..Report::default()
    };
    let show = |phase: &str, report: &Report, shared: &Shared| {
        if options.progress {
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
        }
    };
    let deadline = tokio::time::Instant::now() + options.join_timeout;
    let media_settled = |shared: &Shared, joined: usize| {
        (shared.connected.load(Ordering::Relaxed) + shared.media_failed.load(Ordering::Relaxed))
            >= joined as u64
    };

    // Phase 1: the speakers, connected, then sending.
    let mut joins = Joins::new(options.join_concurrency);
    for i in 0..options.speakers {
        joins.spawn(&links[0], format!("speaker{i}"), true, &commands);
    }
    joins
        .collect(options.speakers, deadline, &mut report, |r| {
            show("speakers joining", r, &shared)
        })
        .await;
    wait_until(
        deadline,
        || media_settled(&shared, report.joins_ok),
        || show("speakers connecting", &report, &shared),
    )
    .await;
    shared.sending.store(true, Ordering::Relaxed);

    // Phase 2: the listeners, `join_concurrency` at a time.
    let joins_start = options.server_pid.and_then(ProcessSample::read);
    let joins_client_start = ProcessSample::read(std::process::id());
    let joins_started = Instant::now();
    for i in 0..options.listeners {
        joins.spawn(&links[1], format!("listener{i}"), false, &commands);
    }
    drop(commands);
    joins
        .collect(options.listeners, deadline, &mut report, |r| {
            show("joining", r, &shared)
        })
        .await;
    wait_until(
        deadline,
        || media_settled(&shared, report.joins_ok),
        || show("connecting", &report, &shared),
    )
    .await;
    if let (Some(a), Some(b), Some(ca), Some(cb)) = (
        &joins_start,
        options.server_pid.and_then(ProcessSample::read),
        &joins_client_start,
        ProcessSample::read(std::process::id()),
    ) {
        report.join_cpu = Some(JoinCpu {
            wall_seconds: joins_started.elapsed().as_secs_f64(),
            cpu_seconds: b.cpu.since(&a.cpu),
            media_cpu_seconds: media_seconds(&b.cpu.threads_since(&a.cpu)),
            client_cpu_seconds: cb.cpu.since(&ca.cpu),
            joins: report.joins_ok.saturating_sub(options.speakers),
        });
    }

    // Phase 3: settle, then the window.
    tokio::time::sleep(options.settle).await;
    let server_start = options.server_pid.and_then(ProcessSample::read);
    let client_start = ProcessSample::read(std::process::id());
    let late_start = shared.late_sends.load(Ordering::Relaxed);
    let window_start = Instant::now();
    shared.window_start.store(realtime_ns(), Ordering::Relaxed);
    let mut rss_max = server_start.as_ref().map_or(0, |u| u.rss_kib);
    let window = Duration::from_secs_f64(options.seconds.max(0.0));
    while window_start.elapsed() < window {
        let left = window.saturating_sub(window_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if let Some(u) = options.server_pid.and_then(ProcessSample::read) {
            rss_max = rss_max.max(u.rss_kib);
        }
        show("measuring", &report, &shared);
    }
    shared.window_end.store(realtime_ns(), Ordering::Relaxed);
    let server_end = options.server_pid.and_then(ProcessSample::read);
    let client_end = ProcessSample::read(std::process::id());
    let window_seconds = window_start.elapsed().as_secs_f64();
    report.client.late_sends = shared.late_sends.load(Ordering::Relaxed) - late_start;
    shared.sending.store(false, Ordering::Relaxed);
    tokio::time::sleep(TAIL).await;
    shared.stop.store(true, Ordering::Relaxed);
    let _ = joins.stop.send(true);
    let media = done_rx
        .await
        .map_err(|_| "the media thread died".to_owned())??;

    if let (Some(a), Some(b)) = (&server_start, &server_end) {
        report.server = Some(ServerUsage {
            rss_before_joins_kib: rss_before_joins,
            cpu_seconds: b.cpu.since(&a.cpu),
            window_seconds,
            threads: b.cpu.threads_since(&a.cpu),
            rss_start_kib: a.rss_kib,
            rss_end_kib: b.rss_kib,
            rss_max_kib: rss_max.max(b.rss_kib),
            waited_seconds: b.cpu.waited_since(&a.cpu),
            media_waited_seconds: b.cpu.waited_since_by(&a.cpu, MEDIA_THREADS),
        });
    }
    if let (Some(a), Some(b)) = (&client_start, &client_end) {
        report.client.cpu_share = b.cpu.since(&a.cpu) / window_seconds.max(1e-9);
        report.client.waited_share = b.cpu.waited_since(&a.cpu) / window_seconds.max(1e-9);
        report.client.media_share = b
            .cpu
            .threads_since(&a.cpu)
            .iter()
            .filter(|(name, _)| name == MEDIA_THREAD)
            .map(|(_, s)| s)
            .sum::<f64>()
            / window_seconds.max(1e-9);
    }
    report.join_ms = Dist::of(media.join_ms);
    report.first_audio_ms = Dist::of(media.first_audio_ms);
    let listeners_started = media.listeners_started;
    report.all_connected_s = media
        .last_connected
        .zip(listeners_started)
        .map_or(0.0, |(at, from)| {
            at.saturating_duration_since(from).as_secs_f64()
        });
    report.all_hearing_s = match (media.last_first_audio, media.first_listener_rt) {
        (Some(last), Some(first)) if media.listeners.iter().all(|l| l.heard > 0) => {
            (last - first) as f64 / 1e9
        }
        _ => 0.0,
    };
    report.delay_us = media.delay.dist();
    report.node_delay_us = media.node_delay.clone();
    report.sent = media.sent;
    report.window_sent = media.window_sent;
    report.datagram_bytes = media.datagram_bytes;
    report.checks = media.checks;
    report.per_listener = media.listeners;
    // Listeners that never got as far as the media thread.
    let missing = options.listeners.saturating_sub(report.per_listener.len());
    report
        .per_listener
        .extend((0..missing).map(|_| ListenerReport {
            expected: media.window_sent,
            lost: media.window_sent,
            ..ListenerReport::default()
        }));
    Ok(report)
}

/// Redeems, joins over the signaling socket and negotiates media. The socket is returned so
/// that it stays open (and answers pings) while the media flows.
/// How long each step of one join took, ms, in the order of [`JOIN_STEPS`].
struct JoinSteps([f64; JOIN_STEPS.len()]);

/// The steps of a join, from the redeem request to the answer applied (ICE and DTLS follow,
/// in the media thread: "redeem → media connected" less these).
pub const JOIN_STEPS: [&str; 5] = ["redeem", "socket join", "offer", "answer", "applied"];

async fn join_one(
    link: &InviteLink,
    name: &str,
    speaker: bool,
    commands: mpsc::Sender<Command>,
) -> Result<(Session, JoinSteps), String> {
    let started = Instant::now();
    let started_rt = realtime_ns();
    let mut steps = JoinSteps([0.0; JOIN_STEPS.len()]);
    let mut mark = started;
    let mut step = |i: usize| {
        steps.0[i] = mark.elapsed().as_secs_f64() * 1e3;
        mark = Instant::now();
    };
    let answer = redeem(link, name, None)
        .await
        .map_err(|e| format!("POST /api/v1/join: {e}"))?;
    step(0);
    let mut signal = Session::join(&answer)
        .await
        .map_err(|e| format!("signaling: {e}"))?;
    step(1);
    let slots = signal.slots();
    let (reply, offer) = tokio::sync::oneshot::channel();
    commands
        .send(Command::Open {
            speaker,
            slots,
            started,
            started_rt,
            node: answer.signal_url.clone(),
            reply,
        })
        .map_err(|_| "media thread gone")?;
    let (index, sdp) = offer.await.map_err(|_| "media thread gone")??;
    step(2);
    let sdp = signal
        .exchange(sdp)
        .await
        .map_err(|e| format!("media_offer refused: {e}"))?;
    step(3);
    let (reply, done) = tokio::sync::oneshot::channel();
    commands
        .send(Command::Answer { index, sdp, reply })
        .map_err(|_| "media thread gone")?;
    done.await.map_err(|_| "media thread gone")??;
    step(4);
    Ok((signal, steps))
}

// ---------------------------------------------------------------------------------------------
// The media thread: every peer connection, and what the listeners count
// ---------------------------------------------------------------------------------------------

/// The media thread's name (its CPU is reported on its own).
pub const MEDIA_THREAD: &str = "loadgen-media";

fn payload_hash(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// RTP (not RTCP, STUN or DTLS) by RFC 7983's first byte and RFC 5761's payload types.
fn is_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] & 0xC0 == 0x80 && !(192..=223).contains(&data[1])
}

/// What one speaker sent: the send stamp of every packet, in order, from sequence `first_seq`.
struct Sent {
    first_seq: Option<u16>,
    stamps: Vec<i64>,
    voice: Voice,
    sample: u64,
}

impl Sent {
    fn seq_of(&self, index: usize) -> u16 {
        self.first_seq.unwrap_or(0).wrapping_add(index as u16)
    }

    /// The latest packet sent with sequence number `seq`.
    fn locate(&self, seq: u16) -> Option<usize> {
        let last = self.stamps.len().checked_sub(1)?;
        let back = self.seq_of(last).wrapping_sub(seq) as usize;
        last.checked_sub(back)
    }
}

/// A stream a listener receives (one per slot in use).
struct Stream {
    ssrc: u32,
    /// The speaker this stream carries and the sequence offset: out = speaker's + offset.
    mapping: Option<(usize, u16)>,
    packets: u32,
    span: SeqSpan,
}

/// A listener's ears.
#[derive(Default)]
struct Ear {
    started: Option<Instant>,
    /// Index in [`Meter::nodes`].
    node: usize,
    started_rt: i64,
    streams: Vec<Stream>,
    heard: u64,
    window_received: u64,
    unmatched: u64,
    /// The send index of the packet `rtc` is decrypting, as the header mapping predicted it.
    predicted: Option<(usize, usize)>,
}

enum Role {
    Speaker(usize),
    Listener(usize),
}

/// The listeners' side of the media thread: what they received, matched to what was sent.
struct Meter {
    roles: Vec<Role>,
    speakers: Vec<Sent>,
    ears: Vec<Ear>,
    /// Payload hash → (speaker, send index).
    by_hash: HashMap<u64, (usize, usize)>,
    check_every: u32,
    window: (i64, i64),
    delay: Histogram,
    /// The signaling URLs listeners were sent to (the nodes that serve them), and the delay
    /// on each.
    nodes: Vec<String>,
    node_delay: Vec<Histogram>,
    checks: Checks,
    datagram_bytes: u64,
    datagrams: u64,
    join_ms: Vec<f64>,
    first_audio_ms: Vec<f64>,
    last_connected: Option<Instant>,
    listeners_started: Option<Instant>,
    first_listener_rt: Option<i64>,
    last_first_audio: Option<i64>,
    shared: Arc<Shared>,
}

impl Meter {
    fn in_window(&self, stamp: i64) -> bool {
        self.window.0 != 0
            && stamp >= self.window.0
            && (self.window.1 == 0 || stamp < self.window.1)
    }

    /// A listener received speaker `s`'s packet `index`, at `stamp`.
    fn record(&mut self, listener: usize, s: usize, index: usize, stamp: i64) {
        let sent = self.speakers[s].stamps[index];
        let in_window = self.in_window(sent);
        let ear = &mut self.ears[listener];
        if ear.heard == 0 {
            self.first_audio_ms
                .push((stamp - ear.started_rt) as f64 / 1e6);
            self.last_first_audio = Some(self.last_first_audio.map_or(stamp, |l| l.max(stamp)));
        }
        ear.heard += 1;
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        if in_window {
            ear.window_received += 1;
            self.delay.add((stamp - sent) as f64 / 1e3);
            self.node_delay[ear.node].add((stamp - sent) as f64 / 1e3);
        }
    }
}

impl Observer for Meter {
    fn datagram(&mut self, peer: usize, data: &[u8], stamp: i64) -> bool {
        let Role::Listener(l) = self.roles[peer] else {
            return true;
        };
        if !is_rtp(data) {
            return true;
        }
        self.datagrams += 1;
        self.datagram_bytes += data.len() as u64;
        let seq = u16::from_be_bytes([data[2], data[3]]);
        let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let ear = &mut self.ears[l];
        let stream = match ear.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => &mut ear.streams[i],
            None => {
                ear.streams.push(Stream {
                    ssrc,
                    mapping: None,
                    packets: 0,
                    span: SeqSpan::default(),
                });
                ear.streams.last_mut().expect("just pushed")
            }
        };
        stream.packets += 1;
        stream.span.record(seq);
        ear.predicted = None;
        let Some((s, offset)) = stream.mapping else {
            return true;
        };
        let Some(index) = self.speakers[s].locate(seq.wrapping_sub(offset)) else {
            stream.mapping = None;
            return true;
        };
        if stream.packets <= LEARN_PACKETS || stream.packets % self.check_every == 0 {
            // `rtc` decrypts it; `rtp` compares the payload with this prediction.
            ear.predicted = Some((s, index));
            return true;
        }
        self.checks.header_only += 1;
        self.record(l, s, index, stamp);
        false
    }

    fn rtp(&mut self, peer: usize, packet: &rtc::rtp::Packet, stamp: i64) {
        let Role::Listener(l) = self.roles[peer] else {
            return;
        };
        self.checks.decrypted += 1;
        let Some(&(s, index)) = self.by_hash.get(&payload_hash(&packet.payload)) else {
            self.ears[l].unmatched += 1;
            return;
        };
        let offset = packet
            .header
            .sequence_number
            .wrapping_sub(self.speakers[s].seq_of(index));
        let ear = &mut self.ears[l];
        match ear.predicted.take() {
            Some(p) if p == (s, index) => self.checks.confirmed += 1,
            Some(_) => self.checks.remapped += 1,
            None => {}
        }
        if let Some(stream) = ear
            .streams
            .iter_mut()
            .find(|st| st.ssrc == packet.header.ssrc)
        {
            stream.mapping = Some((s, offset));
        }
        self.record(l, s, index, stamp);
    }

    fn connected(&mut self, peer: usize) {
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        if let Role::Listener(l) = self.roles[peer]
            && let Some(started) = self.ears[l].started
        {
            self.join_ms.push(started.elapsed().as_secs_f64() * 1e3);
            self.last_connected = Some(Instant::now());
        }
    }

    fn ended(&mut self, _peer: usize, _state: RTCPeerConnectionState) {
        self.shared.media_failed.fetch_add(1, Ordering::Relaxed);
    }
}

struct MediaResult {
    join_ms: Vec<f64>,
    first_audio_ms: Vec<f64>,
    last_connected: Option<Instant>,
    listeners_started: Option<Instant>,
    first_listener_rt: Option<i64>,
    last_first_audio: Option<i64>,
    delay: Histogram,
    node_delay: Vec<(String, Dist)>,
    sent: u64,
    window_sent: u64,
    datagram_bytes: f64,
    checks: Checks,
    listeners: Vec<ListenerReport>,
}

struct MediaThread {
    peers: Peers,
    meter: Meter,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    next_send: Option<Instant>,
}

impl MediaThread {
    fn new(
        bind_ip: IpAddr,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        check_every: u32,
        speakers: usize,
    ) -> Result<Self, BoxError> {
        let mut sent = Vec::new();
        for _ in 0..speakers {
            sent.push(Sent {
                first_seq: None,
                stamps: Vec::new(),
                voice: Voice::new()?,
                sample: 0,
            });
        }
        Ok(MediaThread {
            peers: Peers::new(bind_ip, true, "stoa-loadgen")?,
            meter: Meter {
                roles: Vec::new(),
                speakers: sent,
                ears: Vec::new(),
                by_hash: HashMap::new(),
                check_every,
                window: (0, 0),
                delay: Histogram::default(),
                nodes: Vec::new(),
                node_delay: Vec::new(),
                checks: Checks::default(),
                datagram_bytes: 0,
                datagrams: 0,
                join_ms: Vec::new(),
                first_audio_ms: Vec::new(),
                last_connected: None,
                listeners_started: None,
                first_listener_rt: None,
                last_first_audio: None,
                shared: shared.clone(),
            },
            shared,
            commands,
            commands_open: true,
            next_send: None,
        })
    }

    fn open(
        &mut self,
        speaker: bool,
        slots: usize,
        started: Instant,
        started_rt: i64,
        node: String,
    ) -> Result<(usize, String), BoxError> {
        let speakers_so_far = self
            .meter
            .roles
            .iter()
            .filter(|r| matches!(r, Role::Speaker(_)))
            .count();
        if speaker && speakers_so_far >= self.meter.speakers.len() {
            return Err("more speakers than the run was set up for".into());
        }
        let (index, sdp) = self.peers.open(speaker, slots)?;
        if speaker {
            self.meter.roles.push(Role::Speaker(speakers_so_far));
        } else {
            let l = self.meter.ears.len();
            self.meter.roles.push(Role::Listener(l));
            let node = match self.meter.nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    self.meter.nodes.push(node);
                    self.meter.node_delay.push(Histogram::default());
                    self.meter.nodes.len() - 1
                }
            };
            self.meter.ears.push(Ear {
                started: Some(started),
                started_rt,
                node,
                ..Ear::default()
            });
            let meter = &mut self.meter;
            meter.listeners_started = Some(
                meter
                    .listeners_started
                    .map_or(started, |at| at.min(started)),
            );
            meter.first_listener_rt = Some(
                meter
                    .first_listener_rt
                    .map_or(started_rt, |at| at.min(started_rt)),
            );
        }
        debug_assert_eq!(index + 1, self.meter.roles.len());
        Ok((index, sdp))
    }

    fn handle_commands(&mut self) {
        while self.commands_open {
            match self.commands.try_recv() {
                Ok(Command::Open {
                    speaker,
                    slots,
                    started,
                    started_rt,
                    node,
                    reply,
                }) => {
                    let _ = reply.send(
                        self.open(speaker, slots, started, started_rt, node)
                            .map_err(|e| e.to_string()),
                    );
                }
                Ok(Command::Answer { index, sdp, reply }) => {
                    let result = self
                        .peers
                        .answer(index, sdp, &mut self.meter)
                        .map_err(|e| e.to_string());
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

    /// One 20 ms Opus frame from every connected speaker.
    fn speak(&mut self) {
        for index in 0..self.peers.len() {
            let Role::Speaker(s) = self.meter.roles[index] else {
                continue;
            };
            let Some(peer) = self.peers.get(index).filter(|p| p.connected) else {
                continue;
            };
            let seq = peer.track.as_ref().map_or(0, |t| t.seq);
            let sent = &mut self.meter.speakers[s];
            // A 440 Hz tone at about -20 dBov plus a little noise, so that no two frames (of
            // this or another speaker) encode alike and the payload hash names a packet.
            let pcm: Vec<i16> = (0..FRAME_SAMPLES as u64)
                .map(|i| {
                    let n = sent.sample + i;
                    let phase =
                        2.0 * std::f64::consts::PI * 440.0 * n as f64 / f64::from(SAMPLE_RATE);
                    let noise = i16::from(rand::random::<i8>() / 4);
                    (4634.0 * phase.sin()) as i16 + noise
                })
                .collect();
            sent.sample += FRAME_SAMPLES as u64;
            let Some((payload, level)) = sent.voice.encode(&pcm) else {
                continue;
            };
            let hash = payload_hash(&payload);
            let stamp = realtime_ns();
            // Every call to `send_rtp` uses one sequence number, so index ↔ sequence holds.
            sent.first_seq.get_or_insert(seq);
            let send_index = sent.stamps.len();
            sent.stamps.push(stamp);
            let ok = self.peers.send_rtp(
                index,
                payload,
                Some(level),
                FRAME_SAMPLES as u32,
                &mut self.meter,
            );
            if ok {
                // A repeated payload cannot be told apart: forget it rather than misattribute.
                if self.meter.by_hash.insert(hash, (s, send_index)).is_some() {
                    self.meter.by_hash.remove(&hash);
                }
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                self.meter.speakers[s].stamps[send_index] = i64::MIN / 2;
            }
        }
    }

    fn run(mut self) -> MediaResult {
        loop {
            self.handle_commands();
            self.meter.window = (
                self.shared.window_start.load(Ordering::Relaxed),
                self.shared.window_end.load(Ordering::Relaxed),
            );
            let now = Instant::now();
            let sending = self.shared.sending.load(Ordering::Relaxed);
            if !sending {
                self.next_send = None;
            }
            if sending {
                let next = *self.next_send.get_or_insert(now);
                if now >= next {
                    self.speak();
                    let mut next = next + FRAME;
                    if now > next + FRAME {
                        self.shared.late_sends.fetch_add(1, Ordering::Relaxed);
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
            self.peers.turn(wake, &mut self.meter);
        }
        self.finish()
    }

    fn finish(self) -> MediaResult {
        let meter = self.meter;
        let in_window = |t: &i64| meter.in_window(*t);
        let sent: u64 = meter
            .speakers
            .iter()
            .map(|s| s.stamps.iter().filter(|&&t| t > 0).count() as u64)
            .sum();
        let window_sent: u64 = meter
            .speakers
            .iter()
            .map(|s| s.stamps.iter().filter(|t| in_window(t)).count() as u64)
            .sum();
        let mut listeners = Vec::new();
        for (index, role) in meter.roles.iter().enumerate() {
            let Role::Listener(l) = *role else {
                continue;
            };
            let ear = &meter.ears[l];
            let peer = self.peers.get(index);
            listeners.push(ListenerReport {
                joined: peer.is_some_and(|p| p.answered),
                connected: peer.is_some_and(|p| p.connected),
                heard: ear.heard,
                expected: window_sent,
                received: ear.window_received,
                lost: window_sent.saturating_sub(ear.window_received),
                seq_lost: ear.streams.iter().map(|s| s.span.lost()).sum(),
                unmatched: ear.unmatched,
                node: meter.nodes.get(ear.node).cloned().unwrap_or_default(),
            });
        }
        MediaResult {
            join_ms: meter.join_ms.clone(),
            first_audio_ms: meter.first_audio_ms.clone(),
            last_connected: meter.last_connected,
            listeners_started: meter.listeners_started,
            first_listener_rt: meter.first_listener_rt,
            last_first_audio: meter.last_first_audio,
            delay: meter.delay.clone(),
            node_delay: meter
                .nodes
                .iter()
                .cloned()
                .zip(meter.node_delay.iter().map(Histogram::dist))
                .collect(),
            sent,
            window_sent,
            datagram_bytes: meter.datagram_bytes as f64 / meter.datagrams.max(1) as f64,
            checks: meter.checks,
            listeners,
        }
    }
}
