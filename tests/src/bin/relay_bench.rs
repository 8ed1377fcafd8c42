//! `stoa-relay-bench`: what it costs a room's audio to cross from one node to another.
//!
//! A benchmark, not a test. It starts two of Stoa's real media services in this process,
//! "node A" and "node B" (one worker each, on loopback), and links them as two nodes serving
//! one room do: B grants a link, both derive its key from a shared secret, and A relays the
//! room's speakers' packets to B (`stoa::media::relay`). One speaker and `--on-a` listeners
//! connect to A, `--on-b` listeners to B, all `rtc` sans-IO clients on one thread. The
//! speaker sends an 80-byte packet every 20 ms carrying its send time (realtime ns). For each
//! `--on-b` count, on fresh services:
//!
//! - the hop: each packet's first copy to reach a listener on B against its first copy on A,
//!   p50 / p99 (A seals the relayed datagram ahead of its own listeners' copies, in the same
//!   `sendmmsg`; B's first copy then waits for the loopback hop, the open and B's first
//!   batch);
//! - delay, speaker's send → a listener socket's kernel receive stamp, p50 / p99 / max, for
//!   the listeners of A and of B (with the same number on each, B's less A's is what a
//!   listener gains by being on another node);
//! - A's worker CPU per speaker packet: with A's listeners fixed, it must not grow with the
//!   number of listeners on B (one sealed datagram per packet and node);
//! - B's worker CPU per packet, and per packet × listener;
//! - loss on each node.
//!
//! Usage: `stoa-relay-bench [--on-a 20] [--on-b 10,200,500] [--seconds 10] [--no-pin]`.
//! Method and results: `docs/benchmarks.md`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use stoa::config::MediaSettings;
use stoa::control::{ParticipantId, RoomId};
use stoa::media::relay::{InLink, OutLink, derive_key, node_tag};
use stoa::media::{Media, MediaOptions};
use stoa::metrics::{MediaMetrics, WorkerLabels};
use stoa_client::fleet::{Observer, Peers, realtime_ns};
use stoa_tests::loadgen::procfs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const INTERVAL: Duration = Duration::from_millis(20);
const PAYLOAD_BYTES: usize = 80;
/// RFC 6464: voice, -10 dBov.
const LEVEL_BYTE: u8 = 0x80 | 10;
const SETTLE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const WORKER: &str = "stoa-media-0";

struct Options {
    on_a: usize,
    on_b: Vec<usize>,
    seconds: f64,
    pin: bool,
}

/// Which node each client is on, and what they received.
#[derive(Default)]
struct Tally {
    /// 0: A, 1: B; the speaker is `None`.
    node: Vec<Option<usize>>,
    recording: bool,
    /// Delay samples per node, µs.
    delays: [Vec<f64>; 2],
    received: [u64; 2],
    /// Per packet (by its send time): the first receive stamp on each node.
    first: HashMap<i64, [i64; 2]>,
}

impl Observer for Tally {
    fn rtp(&mut self, peer: usize, packet: &rtc::rtp::Packet, stamp: i64) {
        let Some(Some(node)) = self.node.get(peer).copied() else {
            return;
        };
        if !self.recording || packet.payload.len() < 8 {
            return;
        }
        let sent = i64::from_be_bytes(packet.payload[..8].try_into().expect("8 bytes"));
        self.received[node] += 1;
        self.delays[node].push((stamp - sent) as f64 / 1e3);
        let first = self.first.entry(sent).or_insert([i64::MAX; 2]);
        first[node] = first[node].min(stamp);
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn start(metrics: &MediaMetrics) -> Result<Media> {
    let options = MediaOptions {
        settings: MediaSettings {
            workers: 1,
            ..Default::default()
        },
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: None,
        public_ip: None,
    };
    let (media, reports) = Media::start(&options, metrics)?;
    // Levels and closes go nowhere here.
    drop(reports);
    Ok(media)
}

/// The newest worker thread: the one the service just started.
fn newest_worker(known: &[i32]) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(tid) = procfs::threads_named(WORKER)
            .into_iter()
            .find(|t| !known.contains(t))
        {
            return Ok(tid);
        }
        if Instant::now() > deadline {
            return Err(format!("no new thread named {WORKER}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn join(
    peers: &mut Peers,
    tally: &mut Tally,
    media: &Media,
    room: &RoomId,
    node: Option<usize>,
) -> Result<()> {
    let speaker = node.is_none();
    let (index, sdp) = peers.open(speaker, media.slots())?;
    tally.node.push(node);
    debug_assert_eq!(tally.node.len(), index + 1);
    let (reply, answer) = tokio::sync::oneshot::channel();
    media.offer(
        room,
        &ParticipantId::generate(),
        sdp,
        speaker,
        speaker,
        reply,
    );
    let answer = answer
        .blocking_recv()
        .map_err(|_| "the media worker dropped the offer")?
        .map_err(|e| format!("offer refused: {} {}", e.code, e.message))?;
    peers.answer(index, answer, tally)?;
    peers.turn(Instant::now(), tally);
    Ok(())
}

fn relayed(metrics: &MediaMetrics) -> u64 {
    metrics
        .relay_out
        .get_or_create(&WorkerLabels {
            worker: "0".to_owned(),
        })
        .get()
}

fn run(options: &Options, on_b: usize) -> Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (metrics_a, metrics_b) = (MediaMetrics::default(), MediaMetrics::default());
    let before = procfs::threads_named(WORKER);
    let a = start(&metrics_a)?;
    let tid_a = newest_worker(&before)?;
    let b = start(&metrics_b)?;
    let tid_b = newest_worker(&[before.as_slice(), &[tid_a]].concat())?;
    if options.pin {
        procfs::pin(tid_a, 0)?;
        procfs::pin(tid_b, 1)?;
    }

    // B grants the link; both derive its key; A sends on it.
    let room = RoomId::generate();
    let secret: [u8; 32] = rand::random();
    let nonce: [u8; 16] = rand::random();
    let link = 1;
    let key = derive_key(&secret, room.as_str(), "node-a", "node-b", link, &nonce);
    let to = b
        .accept_relay(
            &room,
            InLink::new(link, node_tag("node-a"), a.relay_addrs(), &key),
        )
        .map_err(|e| e.message)?;
    a.relay_to(&room, OutLink::new(link, to, node_tag("node-b"), &key))
        .map_err(|e| e.message)?;

    let mut peers = Peers::new(IpAddr::V4(Ipv4Addr::LOCALHOST), true, "relay-bench")?;
    let mut tally = Tally::default();
    join(&mut peers, &mut tally, &a, &room, None)?;
    for _ in 0..options.on_a {
        join(&mut peers, &mut tally, &a, &room, Some(0))?;
    }
    for _ in 0..on_b {
        join(&mut peers, &mut tally, &b, &room, Some(1))?;
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while !peers.all_connected() {
        if Instant::now() > deadline {
            return Err("the clients did not all connect".into());
        }
        peers.turn(Instant::now() + Duration::from_millis(5), &mut tally);
    }

    let mut payload = [0u8; PAYLOAD_BYTES];
    let mut next = Instant::now();
    let mut speak_until = |peers: &mut Peers, tally: &mut Tally, until: Instant| -> u64 {
        let mut sent = 0;
        loop {
            let now = Instant::now();
            if now >= until {
                return sent;
            }
            if now >= next {
                payload[..8].copy_from_slice(&realtime_ns().to_be_bytes());
                peers.send_rtp(
                    0,
                    Bytes::copy_from_slice(&payload),
                    Some(LEVEL_BYTE),
                    960,
                    tally,
                );
                sent += 1;
                next += INTERVAL;
                continue;
            }
            peers.turn(until.min(next), tally);
        }
    };
    speak_until(&mut peers, &mut tally, Instant::now() + SETTLE);

    tally.recording = true;
    let (cpu_a0, cpu_b0, relayed0) = (
        procfs::tid_cpu_ns(tid_a),
        procfs::tid_cpu_ns(tid_b),
        relayed(&metrics_a),
    );
    let window = Duration::from_secs_f64(options.seconds);
    let sent = speak_until(&mut peers, &mut tally, Instant::now() + window);
    let (cpu_a, cpu_b, relayed_n) = (
        procfs::tid_cpu_ns(tid_a) - cpu_a0,
        procfs::tid_cpu_ns(tid_b) - cpu_b0,
        relayed(&metrics_a) - relayed0,
    );
    // Stragglers of the window's last packets.
    let tail = Instant::now() + Duration::from_millis(200);
    while Instant::now() < tail {
        peers.turn(tail, &mut tally);
    }

    let mut figures = json!({
        "on_a": options.on_a,
        "on_b": on_b,
        "packets": sent,
        "relayed": relayed_n,
        "a_cpu_us_per_packet": cpu_a as f64 / 1e3 / sent.max(1) as f64,
        "b_cpu_us_per_packet": cpu_b as f64 / 1e3 / sent.max(1) as f64,
        "b_cpu_us_per_packet_listener": cpu_b as f64 / 1e3 / (sent * on_b.max(1) as u64).max(1) as f64,
    });
    // What the hop itself adds: each packet's first copy on B against its first copy on A
    // (A seals the relayed datagram before its own listeners' copies, in the same batch).
    let mut hop: Vec<f64> = tally
        .first
        .values()
        .filter(|f| f[0] != i64::MAX && f[1] != i64::MAX)
        .map(|f| (f[1] - f[0]) as f64 / 1e3)
        .collect();
    hop.sort_by(f64::total_cmp);
    figures["hop_p50_us"] = json!(quantile(&hop, 0.5));
    figures["hop_p99_us"] = json!(quantile(&hop, 0.99));
    for (node, name) in ["a", "b"].iter().enumerate() {
        let listeners = if node == 0 { options.on_a } else { on_b };
        let delays = &mut tally.delays[node];
        delays.sort_by(f64::total_cmp);
        let expected = sent * listeners as u64;
        figures[format!("{name}_delay_p50_us")] = json!(quantile(delays, 0.5));
        figures[format!("{name}_delay_p99_us")] = json!(quantile(delays, 0.99));
        figures[format!("{name}_delay_max_us")] = json!(delays.last().copied().unwrap_or(f64::NAN));
        figures[format!("{name}_loss_percent")] = json!(if expected == 0 {
            0.0
        } else {
            (expected as f64 - tally.received[node] as f64) / expected as f64 * 100.0
        });
    }
    runtime.block_on(a.stop());
    runtime.block_on(b.stop());
    Ok(figures)
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        on_a: 20,
        on_b: vec![10, 200, 500],
        seconds: 10.0,
        pin: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--on-a" => options.on_a = value()?.parse()?,
            "--on-b" => {
                options.on_b = value()?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => options.seconds = value()?.parse()?,
            "--no-pin" => options.pin = false,
            "-h" | "--help" => {
                println!(
                    "stoa-relay-bench [--on-a 20] [--on-b 10,200,500] [--seconds 10] [--no-pin]\n\n\
                     The delay and CPU of a room's audio relayed from node A to node B. See \
                     docs/benchmarks.md."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    if options.on_a == 0 || options.seconds <= 0.0 {
        return Err("--on-a and --seconds must be positive".into());
    }
    Ok(options)
}

fn main() -> Result<()> {
    let options = parse_args()?;
    stoa_client::fleet::raise_fd_limit();
    println!(
        "{:>6} {:>6} {:>8} | {:>8} {:>8} | {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>11} | {:>6} {:>6}",
        "on A",
        "on B",
        "relayed",
        "hop p50",
        "hop p99",
        "A p50 µs",
        "A p99 µs",
        "B p50 µs",
        "B p99 µs",
        "B max µs",
        "A µs/pkt",
        "B µs/pkt",
        "B µs/pkt×l",
        "loss A",
        "loss B"
    );
    let mut all = Vec::new();
    for &on_b in &options.on_b {
        let f = run(&options, on_b)?;
        let n = |k: &str| f[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>6} {:>6} {:>8} | {:>8.0} {:>8.0} | {:>9.0} {:>9.0} | {:>9.0} {:>9.0} {:>9.0} | {:>9.2} {:>9.2} {:>11.3} | {:>5.2}% {:>5.2}%",
            options.on_a,
            on_b,
            f["relayed"],
            n("hop_p50_us"),
            n("hop_p99_us"),
            n("a_delay_p50_us"),
            n("a_delay_p99_us"),
            n("b_delay_p50_us"),
            n("b_delay_p99_us"),
            n("b_delay_max_us"),
            n("a_cpu_us_per_packet"),
            n("b_cpu_us_per_packet"),
            n("b_cpu_us_per_packet_listener"),
            n("a_loss_percent"),
            n("b_loss_percent"),
        );
        all.push(f);
    }
    println!("{}", json!({ "runs": all }));
    Ok(())
}
