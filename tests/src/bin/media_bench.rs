//! `stoa-media-bench`: what one forwarded packet costs the server, per listener.
//!
//! A benchmark, not a test. It starts Stoa's real media service in this process (one worker,
//! the thread `stoa-media-0`), connects one speaker and N listeners as `rtc` sans-IO clients over
//! loopback UDP (one socket each, all driven by the main thread through epoll), lets the speaker
//! send one 80-byte packet every 20 ms, and reads the worker thread's CPU time over a steady
//! window. Reported per N:
//!
//! - server CPU per forwarded packet × listener: the worker thread's CPU time (all of it: SRTP,
//!   `rtc`'s write path, `sendmmsg`, timers, RTCP and STUN from the clients) divided by the
//!   packets it forwarded in the window (its `rtp_forwarded` counter);
//! - the baseline: a bare `rtc::srtp` AES-128-GCM encrypt of the same 92-byte RTP packets, one
//!   context per listener, timed in the same run on the same core, and the ratio of the two;
//! - loss: what the listeners received against what the speaker sent;
//! - heap per listener connection, from a counting global allocator that tags every block with
//!   the side (server or client) of the code that allocated it;
//! - idle: the worker's CPU while every connection is up and nobody speaks (the clients' consent
//!   checks and little else), against the idle floor: a bare UDP echo thread on the same core
//!   answering the same number of datagrams a second from as many sockets, one blocking
//!   receive and one send each, measured in the same run after the server has stopped.
//!
//! With `--red N` the listeners offer RED (RFC 2198) as Chromium does and the server repeats N
//! earlier frames in every packet to them (`[media] red = N`; the speaker sends plain Opus, so
//! the server builds all of it); the bytes sent per listener are reported beside the CPU.
//!
//! Usage: `stoa-media-bench [--listeners 10,100,1000] [--seconds 10] [--interval-ms 20]
//! [--red N] [--transport rtc|lean] [--no-pin]`. Method and results: `docs/benchmarks.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, MarshalSize};
use serde_json::json;
use stoa::config::MediaSettings;
use stoa::control::{ParticipantId, RoomId};
use stoa::media::{Media, MediaOptions};
use stoa::metrics::{DropLabels, MediaMetrics, WorkerLabels};
use stoa_client::fleet::{
    MemoryPair, Observer, Peers, SeqSpan, add_host_candidate, certificate, client_engine,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const OPUS_PT: u8 = 111;
/// RFC 6464 byte the speaker sends: voice activity set, level 10 (-10 dBov, loud).
const LEVEL_BYTE: u8 = 0x80 | 10;
/// About one 20 ms Opus voice frame.
const PAYLOAD_BYTES: usize = 80;
const WORKER_THREAD: &str = "stoa-media-0";
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Time after the last packet for stragglers to reach the listeners.
const TAIL: Duration = Duration::from_millis(300);
/// From the speaker's first packet to the heap mark (selection settles in ~20–40 ms).
const SETTLE: Duration = Duration::from_secs(1);
/// Connected but silent: the worker's background cost, measured over this window...
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// ...once the connections have settled: past the lean handshakes' lingering (5 s after
/// keying) and a whole consent interval (`[media] ice_disconnected_ms`, 6 s), so that what is
/// measured is what a silent listener costs for as long as it stays.
const IDLE_SETTLE: Duration = Duration::from_secs(7);
/// Window in which allocations per forwarded packet are counted (not timed).
const ALLOC_WINDOW: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);
/// Encryptions timed for the baseline at every N.
const BASELINE_ENCRYPTS: usize = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// Which side allocated a block. Threads start as `SERVER` (the worker and anything else the
/// server spawns); the bench's own threads switch to `CLIENT` and switch back to `SERVER`
/// only around calls into the server (`Media::offer` parses the SDP on the caller's thread).
const SERVER: u8 = 0;
const CLIENT: u8 = 1;

thread_local! {
    static CLASS: Cell<u8> = const { Cell::new(SERVER) };
}

#[repr(align(64))]
struct Padded(AtomicI64);

/// Net bytes allocated minus freed per class while counting is on. A block is charged to the
/// class that allocated it (the tag sits in the byte before it), whichever thread frees it, so
/// the difference of two readings is the change of that class's live heap.
static LIVE: [Padded; 2] = [Padded(AtomicI64::new(0)), Padded(AtomicI64::new(0))];
/// Allocation calls (alloc, alloc_zeroed, realloc) per class of the calling thread.
static CALLS: [Padded; 2] = [Padded(AtomicI64::new(0)), Padded(AtomicI64::new(0))];
/// Off during the timed window: then the allocator costs one TLS read and one byte store.
static COUNTING: AtomicBool = AtomicBool::new(false);

struct CountingAlloc;

/// The block as asked from `System`: `offset` bytes in front of the caller's, the last of
/// which holds the class.
#[inline]
fn outer(layout: Layout) -> (Layout, usize) {
    let offset = layout.align().max(16);
    // SAFETY: `offset` is a power of two; the size cannot overflow for any layout Rust makes
    // (it is below isize::MAX - align).
    let outer = unsafe { Layout::from_size_align_unchecked(layout.size() + offset, offset) };
    (outer, offset)
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (outer, offset) = outer(layout);
        // SAFETY: forwarded to System with a non-zero size.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let class = CLASS.with(Cell::get);
        // SAFETY: `offset` ≥ 1 bytes lie in front of the returned block, inside `outer`.
        let user = unsafe { base.add(offset) };
        unsafe { user.sub(1).write(class) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE[class as usize]
                .0
                .fetch_add(layout.size() as i64, Ordering::Relaxed);
            CALLS[class as usize].0.fetch_add(1, Ordering::Relaxed);
        }
        user
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (outer, offset) = outer(layout);
        // SAFETY: as in `alloc`.
        let base = unsafe { System.alloc_zeroed(outer) };
        if base.is_null() {
            return base;
        }
        let class = CLASS.with(Cell::get);
        let user = unsafe { base.add(offset) };
        unsafe { user.sub(1).write(class) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE[class as usize]
                .0
                .fetch_add(layout.size() as i64, Ordering::Relaxed);
            CALLS[class as usize].0.fetch_add(1, Ordering::Relaxed);
        }
        user
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (outer, offset) = outer(layout);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        let class = unsafe { ptr.sub(1).read() };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE[class as usize]
                .0
                .fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr.sub(offset), outer) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (outer, offset) = outer(layout);
        // SAFETY: as in `dealloc`; System keeps the prefix (and so the tag) when it moves.
        let class = unsafe { ptr.sub(1).read() };
        let base = unsafe { System.realloc(ptr.sub(offset), outer, new_size + offset) };
        if base.is_null() {
            return base;
        }
        if COUNTING.load(Ordering::Relaxed) {
            LIVE[class as usize]
                .0
                .fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            CALLS[CLASS.with(Cell::get) as usize]
                .0
                .fetch_add(1, Ordering::Relaxed);
        }
        unsafe { base.add(offset) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn set_class(class: u8) {
    CLASS.with(|c| c.set(class));
}

#[derive(Clone, Copy, Debug, Default)]
struct HeapMark {
    server: i64,
    client: i64,
    server_calls: i64,
    rss_kib: i64,
}

fn heap_mark() -> HeapMark {
    HeapMark {
        server: LIVE[SERVER as usize].0.load(Ordering::Relaxed),
        client: LIVE[CLIENT as usize].0.load(Ordering::Relaxed),
        server_calls: CALLS[SERVER as usize].0.load(Ordering::Relaxed),
        rss_kib: rss_kib().unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Threads, CPU time, affinity
// ---------------------------------------------------------------------------------------------

fn gettid() -> libc::pid_t {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

fn pin(tid: libc::pid_t, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is empty; the size passed is its own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The id of this process's thread named `name` (comm, as the kernel shows it).
fn find_thread(name: &str) -> Option<libc::pid_t> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return entry.file_name().to_str()?.parse().ok();
        }
    }
    None
}

/// CPU time (user + system) of any thread of this process, in ns: the kernel's per-thread CPU
/// clock, `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`, as `pthread_getcpuclockid` builds it.
fn thread_cpu_ns(tid: libc::pid_t) -> u64 {
    let clock = ((!(tid as u32)) << 3) as libc::clockid_t | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of a thread from /proc, in ns (clock-tick resolution: a cross-check).
fn thread_stat_ns(tid: libc::pid_t) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    // After the comm: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: no memory.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

/// Ticks the hypervisor ran something else while `cpu` wanted to run (`steal` in /proc/stat).
fn steal_ticks(cpu: usize) -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let name = format!("cpu{cpu}");
    stat.lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .and_then(|l| l.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Clients: `rtc` sans-IO peer connections, one UDP socket each
// ---------------------------------------------------------------------------------------------

/// What the bench counts per client, fed by [`Peers`]: listeners' streams, and RTP a speaker
/// received (none expected: the server never echoes a speaker).
#[derive(Default)]
struct Counts {
    rx: Vec<SeqSpan>,
    speaker: Vec<bool>,
    other_ssrc_packets: u64,
}

impl Observer for Counts {
    fn rtp(&mut self, peer: usize, packet: &rtc::rtp::Packet, _stamp: i64) {
        if self.speaker[peer] {
            self.other_ssrc_packets += 1;
        } else {
            self.rx[peer].record(packet.header.sequence_number);
        }
    }
}

struct Clients {
    peers: Peers,
    counts: Counts,
    participants: Vec<ParticipantId>,
    payload: Bytes,
    room: RoomId,
    slots: usize,
    next_send: Instant,
    interval: Duration,
    late_sends: u64,
}

impl Clients {
    fn new(media: &Media, room: RoomId, interval: Duration) -> Result<Self> {
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        for byte in payload.iter_mut() {
            *byte = rand::random();
        }
        Ok(Clients {
            peers: Peers::new(IpAddr::V4(Ipv4Addr::LOCALHOST), false, "bench-client")?,
            counts: Counts::default(),
            participants: Vec::new(),
            payload: Bytes::from(payload),
            room,
            slots: media.slots(),
            next_send: Instant::now(),
            interval,
            late_sends: 0,
        })
    }

    /// Opens one connection: our offer straight into `Media::offer`, its answer back.
    fn join(&mut self, media: &Media, speaker: bool) -> Result<usize> {
        let (index, sdp) = self.peers.open(speaker, self.slots)?;
        self.counts.rx.push(SeqSpan::default());
        self.counts.speaker.push(speaker);
        let participant = ParticipantId::generate();
        let (reply, answer) = tokio::sync::oneshot::channel();
        set_class(SERVER);
        media.offer(&self.room, &participant, sdp, speaker, speaker, reply);
        set_class(CLIENT);
        self.participants.push(participant);
        let answer = answer
            .blocking_recv()
            .map_err(|_| "the media worker dropped the offer")?
            .map_err(|e| format!("offer refused: {} {}", e.code, e.message))?;
        self.peers.answer(index, answer, &mut self.counts)?;
        Ok(index)
    }

    fn turn(&mut self, until: Instant) {
        self.peers.turn(until, &mut self.counts);
    }

    /// Non-blocking: one look at the sockets and the timers.
    fn poll_once(&mut self) {
        self.turn(Instant::now());
    }

    /// One packet from the speaker (client 0): 80 bytes, audio level 10 with voice, 20 ms of
    /// timestamp.
    fn speak(&mut self) {
        self.peers.send_rtp(
            0,
            self.payload.clone(),
            Some(LEVEL_BYTE),
            960,
            &mut self.counts,
        );
    }

    fn speaker_sent(&self) -> u64 {
        self.peers
            .get(0)
            .and_then(|p| p.track.as_ref())
            .map_or(0, |t| t.sent)
    }

    /// Runs the loop until `until`, the speaker sending on its pace when `speaking`.
    fn run_until(&mut self, until: Instant, speaking: bool) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            if speaking && now >= self.next_send {
                self.speak();
                self.next_send += self.interval;
                if now > self.next_send + self.interval {
                    self.late_sends += 1;
                    self.next_send = now + self.interval;
                }
                continue;
            }
            let wake = if speaking {
                until.min(self.next_send)
            } else {
                until
            };
            self.turn(wake);
        }
    }

    /// Every listener's stream counts.
    fn listeners(&self) -> impl Iterator<Item = &SeqSpan> {
        self.counts
            .rx
            .iter()
            .zip(&self.counts.speaker)
            .filter(|(_, speaker)| !**speaker)
            .map(|(rx, _)| rx)
    }

    fn all_connected(&self) -> bool {
        self.peers.all_connected()
    }
}

// ---------------------------------------------------------------------------------------------
// Baseline: bare SRTP encrypt of the packets the server sends
// ---------------------------------------------------------------------------------------------

/// ns per `encrypt_rtp_with_header` of the forwarded packet (12-byte header, no extension, 80
/// bytes of payload → 108 bytes out), AES-128-GCM, one context per listener with random keys,
/// visiting the contexts in turn as the forwarder does. Runs on the server's core.
fn srtp_baseline(listeners: usize, payload: &[u8], pin_cpu: Option<usize>) -> Result<f64> {
    let payload = payload.to_vec();
    std::thread::Builder::new()
        .name("bench-srtp".to_owned())
        .spawn(move || -> Result<f64> {
            set_class(CLIENT);
            if let Some(cpu) = pin_cpu {
                pin(0, cpu);
            }
            let provider = rtc::crypto::default_provider()
                .map_err(|e| format!("no crypto provider: {e:?}"))?;
            let profile = rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm;
            let mut contexts = Vec::with_capacity(listeners);
            let mut headers = Vec::with_capacity(listeners);
            for _ in 0..listeners {
                let key: [u8; 16] = rand::random();
                let salt: [u8; 12] = rand::random();
                contexts.push(rtc::srtp::context::Context::new(
                    &key,
                    &salt,
                    profile,
                    None,
                    None,
                    provider.crypto(),
                )?);
                headers.push(rtc::rtp::header::Header {
                    version: 2,
                    payload_type: OPUS_PT,
                    sequence_number: rand::random(),
                    timestamp: rand::random(),
                    ssrc: rand::random(),
                    ..Default::default()
                });
            }
            let packet = rtc::rtp::Packet {
                header: headers[0].clone(),
                payload: Bytes::from(payload),
            };
            let mut plain = BytesMut::zeroed(packet.marshal_size());
            packet.marshal_to(&mut plain)?;
            let rounds = BASELINE_ENCRYPTS.div_ceil(listeners).max(10);
            let mut run = |rounds: usize| -> Result<Duration> {
                let start = Instant::now();
                for _ in 0..rounds {
                    for (context, header) in contexts.iter_mut().zip(headers.iter_mut()) {
                        header.sequence_number = header.sequence_number.wrapping_add(1);
                        plain[2..4].copy_from_slice(&header.sequence_number.to_be_bytes());
                        plain[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
                        let out = context.encrypt_rtp_with_header(&plain, header)?;
                        std::hint::black_box(out);
                    }
                }
                Ok(start.elapsed())
            };
            run(rounds / 10 + 1)?; // warm-up
            let elapsed = run(rounds)?;
            Ok(elapsed.as_secs_f64() * 1e9 / (rounds * listeners) as f64)
        })?
        .join()
        .map_err(|_| "the baseline thread panicked")?
}

// ---------------------------------------------------------------------------------------------
// Library path in memory: the server's write path without sockets, wakeups or the worker loop
// ---------------------------------------------------------------------------------------------

/// One server-side connection configured exactly as the worker configures its own (the
/// server's `engine` module, three send-only slots), paired in memory with an `rtc` client.
struct BenchPair {
    /// The client side is kept alive with the server side; only the handshake used it.
    pair: MemoryPair,
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
}

const MEMORY_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);

fn memory_pair(
    index: usize,
    server_cert: &RTCCertificate,
    client_cert: &RTCCertificate,
    slots: usize,
) -> Result<BenchPair> {
    use stoa::media::engine;
    let client_addr = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        20_000 + (index % 40_000) as u16,
    );
    let now = Instant::now();
    let (client_engine, client_registry) = client_engine()?;
    let mut client = RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![client_cert.clone()])
                .build(),
        )
        .with_media_engine(client_engine)
        .with_interceptor_registry(client_registry)
        .build(now)?;
    for _ in 0..slots {
        client.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )?;
    }
    let offer = client.create_offer(None)?;
    client.set_local_description(now, offer)?;
    add_host_candidate(&mut client, client_addr)?;
    let offer = client.local_description().ok_or("no offer")?;

    let mut ufrag = String::new();
    while ufrag.len() < 16 {
        ufrag.push(char::from(b'a' + rand::random::<u8>() % 26));
    }
    let mut server = RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![server_cert.clone()])
                .build(),
        )
        .with_setting_engine(engine::setting_engine(
            ufrag,
            "0123456789abcdefghijklmnopqrstuv".to_owned(),
            Duration::from_secs(600),
            Duration::from_secs(600),
        ))
        .with_media_engine(engine::media_engine()?)
        .with_interceptor_registry(engine::registry())
        .build(now)?;
    let mut first = None;
    for slot in 0..slots {
        let ssrc: u32 = rand::random();
        let sender = server.add_track(MediaStreamTrack::new(
            format!("stoa-{index}"),
            format!("slot-{slot}"),
            format!("slot-{slot}"),
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
        first.get_or_insert((sender, ssrc));
    }
    server.set_remote_description(now, offer)?;
    let ids: Vec<_> = server.get_transceivers().collect();
    for id in ids {
        if let Some(mut transceiver) = server.rtp_transceiver(id) {
            transceiver.set_direction(RTCRtpTransceiverDirection::Sendonly);
        }
    }
    stoa::media::engine::add_host_candidate(&mut server, MEMORY_SERVER)?;
    let answer = server.create_answer(None)?;
    server.set_local_description(now, answer)?;
    client.set_remote_description(now, server.local_description().ok_or("no answer")?)?;

    let pair = MemoryPair::connect(
        client,
        client_addr,
        server,
        MEMORY_SERVER,
        Duration::from_secs(10),
    )
    .map_err(|e| format!("in-memory pair {index}: {e}"))?;
    let (sender, ssrc) = first.ok_or("no slot")?;
    Ok(BenchPair {
        pair,
        sender,
        ssrc,
        seq: rand::random(),
    })
}

/// ns per packet × listener of `write_rtp` + draining `poll_write` (the notes' figure), and of
/// the same plus one `poll_timeout` (what the worker's forward also does per listener). On the
/// server's core, with nothing else running.
fn library_path(listeners: usize, slots: usize, pin_cpu: Option<usize>) -> Result<(f64, f64)> {
    std::thread::Builder::new()
        .name("bench-library".to_owned())
        .spawn(move || -> Result<(f64, f64)> {
            set_class(CLIENT);
            if let Some(cpu) = pin_cpu {
                pin(0, cpu);
            }
            let (server_cert, client_cert) = (certificate("bench")?, certificate("bench")?);
            let mut pairs = Vec::with_capacity(listeners);
            for index in 0..listeners {
                pairs.push(memory_pair(index, &server_cert, &client_cert, slots)?);
            }
            let payload = Bytes::from(vec![0x5a; PAYLOAD_BYTES]);
            let packets = (200_000 / listeners).clamp(200, 2_000);
            let mut timestamp = 0u32;
            let mut run = |with_timeout: bool| -> Result<f64> {
                let start = Instant::now();
                let now = Instant::now();
                let mut bytes = 0usize;
                for _ in 0..packets {
                    timestamp = timestamp.wrapping_add(960);
                    for pair in pairs.iter_mut() {
                        pair.seq = pair.seq.wrapping_add(1);
                        let packet = rtc::rtp::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                payload_type: OPUS_PT,
                                sequence_number: pair.seq,
                                timestamp,
                                ssrc: pair.ssrc,
                                ..Default::default()
                            },
                            payload: payload.clone(),
                        };
                        let server = &mut pair.pair.server;
                        if let Some(mut sender) = server.rtp_sender(pair.sender) {
                            sender.write_rtp(now, packet)?;
                        }
                        while let Some(out) = server.poll_write() {
                            bytes += out.message.len();
                        }
                        if with_timeout {
                            std::hint::black_box(server.poll_timeout());
                        }
                    }
                }
                std::hint::black_box(bytes);
                Ok(start.elapsed().as_secs_f64() * 1e9 / (packets * listeners) as f64)
            };
            run(false)?; // warm-up
            let bare = run(false)?;
            let with_timeout = run(true)?;
            Ok((bare, with_timeout))
        })?
        .join()
        .map_err(|_| "the library-path thread panicked")?
}

// ---------------------------------------------------------------------------------------------
// One scenario
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    at: Option<Instant>,
    server_cpu_ns: u64,
    server_stat_ns: u64,
    client_cpu_ns: u64,
    forwarded: u64,
    datagrams_in: u64,
    datagrams_out: u64,
    bytes_out: u64,
    send_calls: u64,
    speaker_sent: u64,
    steal_ticks: u64,
}

struct Probe {
    metrics: MediaMetrics,
    worker_tid: libc::pid_t,
    client_tid: libc::pid_t,
}

/// A per-worker counter of the media metrics (worker 0), without naming prometheus-client.
macro_rules! worker_counter {
    ($metrics:expr, $field:ident) => {
        $metrics
            .$field
            .get_or_create(&WorkerLabels {
                worker: "0".to_owned(),
            })
            .get()
    };
}

impl Probe {
    fn snapshot(&self, clients: &Clients) -> Snapshot {
        Snapshot {
            at: Some(Instant::now()),
            server_cpu_ns: thread_cpu_ns(self.worker_tid),
            server_stat_ns: thread_stat_ns(self.worker_tid),
            client_cpu_ns: thread_cpu_ns(self.client_tid),
            forwarded: worker_counter!(self.metrics, rtp_forwarded),
            datagrams_in: worker_counter!(self.metrics, datagrams_in),
            datagrams_out: worker_counter!(self.metrics, datagrams_out),
            bytes_out: worker_counter!(self.metrics, bytes_out),
            send_calls: worker_counter!(self.metrics, send_calls),
            speaker_sent: clients.speaker_sent(),
            steal_ticks: steal_ticks(SERVER_CPU),
        }
    }

    fn dropped(&self) -> Vec<(String, u64)> {
        [
            "unroutable",
            "malformed",
            "oversized",
            "no_send_path",
            "not_allowed",
            "unknown_ssrc",
            "rejected",
            "fanout_full",
            "send_failed",
            "forward_failed",
        ]
        .iter()
        .map(|reason| {
            let n = self
                .metrics
                .dropped
                .get_or_create(&DropLabels {
                    worker: "0".to_owned(),
                    reason: (*reason).to_owned(),
                })
                .get();
            ((*reason).to_owned(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

#[derive(Debug, Default)]
struct Outcome {
    listeners: usize,
    connect_s: f64,
    window_s: f64,
    speaker_packets: u64,
    forwarded: u64,
    expected: u64,
    received: u64,
    seq_span: u64,
    seq_received: u64,
    server_cpu_ms: f64,
    server_stat_ms: f64,
    client_cpu_ms: f64,
    us_per_forward: f64,
    us_per_forward_stat: f64,
    srtp_ns: f64,
    /// In memory: `write_rtp` + drain `poll_write`, then the same plus `poll_timeout`.
    library_ns: f64,
    library_timeout_ns: f64,
    datagrams_in: u64,
    datagrams_out: u64,
    /// UDP payload bytes the worker sent in the window (SRTP, RTCP, STUN: no IP/UDP headers).
    bytes_out: u64,
    send_calls: u64,
    heap_server_per_listener: f64,
    heap_client_per_listener: f64,
    rss_per_listener_kib: f64,
    allocs_per_forward: f64,
    idle_cpu_ms_per_s: f64,
    /// Datagrams the worker received a second while idle (consent checks, reports).
    idle_datagrams_per_s: f64,
    /// The idle floor at that rate ([`echo_floor`]); 0 when not pinned.
    idle_floor_ms_per_s: f64,
    /// CPU 0's steal time over the window, in percent of the window.
    steal_percent: f64,
    late_sends: u64,
    client_send_errors: u64,
    failed_clients: usize,
    dropped: Vec<(String, u64)>,
}

impl Outcome {
    /// What the worker sent per listener, in kbit/s of UDP payload plus 28 bytes of IPv4 and
    /// UDP header per datagram (what a listener's link carries, less link-layer framing).
    fn kbit_per_listener(&self) -> f64 {
        let bytes = self.bytes_out as f64 + 28.0 * self.datagrams_out as f64;
        bytes * 8.0 / 1e3 / self.window_s.max(1e-9) / self.listeners as f64
    }

    /// Server CPU per packet × listener once the idle background (same connections, nobody
    /// speaking) is taken out.
    fn above_idle_us(&self) -> f64 {
        (self.server_cpu_ms - self.idle_cpu_ms_per_s * self.window_s) * 1e3
            / self.forwarded.max(1) as f64
    }
}

/// Extra server CPU per extra packet × listener between two runs: the slope, free of the costs
/// that do not grow with the audience (receiving and decrypting the speaker, loop turns).
fn marginal_us(a: &Outcome, b: &Outcome) -> f64 {
    let cpu = b.server_cpu_ms / b.window_s - a.server_cpu_ms / a.window_s;
    let forwarded = b.forwarded as f64 / b.window_s - a.forwarded as f64 / a.window_s;
    cpu * 1e3 / forwarded
}

struct Options {
    listeners: Vec<usize>,
    seconds: f64,
    interval: Duration,
    pin: bool,
    /// Earlier frames repeated to RED listeners; 0: the listeners do not offer RED.
    red: usize,
    /// `[media] listener_transport` of the server side.
    transport: stoa::config::ListenerTransport,
}

fn scenario(options: &Options, listeners: usize) -> Result<Outcome> {
    let pinning = options.pin;
    let srtp_ns = srtp_baseline(
        listeners,
        &[0x5a; PAYLOAD_BYTES],
        pinning.then_some(SERVER_CPU),
    )?;

    let (library_ns, library_timeout_ns) = library_path(
        listeners,
        MediaSettings::default().slots,
        pinning.then_some(SERVER_CPU),
    )?;

    let metrics = MediaMetrics::default();
    let media_options = MediaOptions {
        settings: MediaSettings {
            workers: 1,
            red: if options.red > 0 {
                options.red
            } else {
                MediaSettings::default().red
            },
            listener_transport: options.transport,
            ..Default::default()
        },
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: None,
        public_ip: None,
    };
    set_class(SERVER);
    let started = Media::start(&media_options, &metrics);
    set_class(CLIENT);
    let (media, reports) = started?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reporter = {
        let media = media.clone();
        std::thread::Builder::new()
            .name("bench-reports".to_owned())
            .spawn(move || {
                // Server code: its allocations count as the server's.
                set_class(SERVER);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(media.run_reports(reports, |_, _, _| {}));
            })?
    };
    let started_at = Instant::now();
    let worker_tid = loop {
        if let Some(tid) = find_thread(WORKER_THREAD) {
            break tid;
        }
        if started_at.elapsed() > Duration::from_secs(5) {
            return Err(format!("no thread named {WORKER_THREAD}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if pinning && !pin(worker_tid, SERVER_CPU) {
        eprintln!("warning: could not pin {WORKER_THREAD} to CPU {SERVER_CPU}");
    }
    let probe = Probe {
        metrics: metrics.clone(),
        worker_tid,
        client_tid: gettid(),
    };

    let room = RoomId::generate();
    let mut clients = Clients::new(&media, room.clone(), options.interval)?;

    // The speaker first, connected, so the heap marks below hold listeners only.
    clients.join(&media, true)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while !clients.all_connected() {
        if Instant::now() > deadline {
            return Err("the speaker did not connect".into());
        }
        clients.turn(Instant::now() + Duration::from_millis(5));
    }
    // Let the server finish its side too.
    clients.run_until(Instant::now() + Duration::from_millis(100), false);

    // The speaker offers Opus only (it sends plain Opus); the listeners RED when asked.
    clients.peers.offer_red(options.red > 0);
    COUNTING.store(true, Ordering::SeqCst);
    let heap0 = heap_mark();
    let connect_start = Instant::now();
    for _ in 0..listeners {
        clients.join(&media, false)?;
        clients.poll_once();
    }
    while !clients.all_connected() {
        if Instant::now() > deadline {
            let up = clients.peers.iter().filter(|c| c.connected).count();
            return Err(format!("only {up} of {} clients connected", clients.peers.len()).into());
        }
        clients.turn(Instant::now() + Duration::from_millis(5));
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    // The server marks a connection up when its own DTLS side completes; wait for all.
    loop {
        let stats = runtime.block_on(media.worker_stats());
        if stats.iter().map(|s| s.connected).sum::<usize>() == listeners + 1 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the server did not see every connection up".into());
        }
        clients.run_until(Instant::now() + Duration::from_millis(20), false);
    }

    eprintln!("  N={listeners}: all connected in {connect_s:.2} s");

    // Idle: every connection up, nobody speaking. What the worker spends on timers, consent
    // checks and reports alone.
    clients.run_until(Instant::now() + IDLE_SETTLE, false);
    let idle_start = probe.snapshot(&clients);
    clients.run_until(Instant::now() + IDLE_WINDOW, false);
    let idle_end = probe.snapshot(&clients);
    let idle_s = idle_end
        .at
        .zip(idle_start.at)
        .map_or(1.0, |(e, s)| e.duration_since(s).as_secs_f64());
    let idle_cpu_ms_per_s =
        (idle_end.server_cpu_ns - idle_start.server_cpu_ns) as f64 / 1e6 / idle_s;
    let idle_datagrams_per_s = (idle_end.datagrams_in - idle_start.datagrams_in) as f64 / idle_s;

    // Speak; the slot is assigned within a few packets. Heap mark once settled.
    clients.next_send = Instant::now();
    clients.run_until(Instant::now() + SETTLE, true);
    let heap1 = heap_mark();

    // Allocation calls per forwarded packet (counted, not timed).
    let alloc_start = (heap_mark(), probe.snapshot(&clients));
    clients.run_until(Instant::now() + ALLOC_WINDOW, true);
    let alloc_end = (heap_mark(), probe.snapshot(&clients));
    COUNTING.store(false, Ordering::SeqCst);
    let allocs_per_forward = (alloc_end.0.server_calls - alloc_start.0.server_calls) as f64
        / (alloc_end.1.forwarded - alloc_start.1.forwarded).max(1) as f64;

    // The timed window: from just before one send to just before the send after the last.
    let sends = ((options.seconds * 1000.0) / options.interval.as_secs_f64() / 1000.0)
        .round()
        .max(1.0) as u64;
    let mut rx_before: Vec<u64> = Vec::new();
    let mut start = Snapshot::default();
    let mut done = 0;
    let late_before = clients.late_sends;
    let end = loop {
        clients.run_until(clients.next_send, false);
        if done == 0 {
            start = probe.snapshot(&clients);
            rx_before = clients.listeners().map(|rx| rx.packets).collect();
            eprintln!(
                "  N={listeners}: timed window starts ({sends} packets; worker tid {worker_tid})"
            );
        }
        if done == sends {
            break probe.snapshot(&clients);
        }
        clients.speak();
        done += 1;
        let now = Instant::now();
        clients.next_send += clients.interval;
        if now > clients.next_send + clients.interval {
            clients.late_sends += 1;
            clients.next_send = now + clients.interval;
        }
    };
    // Stragglers.
    clients.run_until(Instant::now() + TAIL, false);
    let speaker_packets = end.speaker_sent - start.speaker_sent;
    let received: u64 = clients
        .listeners()
        .zip(&rx_before)
        .map(|(rx, before)| rx.packets - before)
        .sum();
    let seq_span: u64 = clients.listeners().map(SeqSpan::span).sum();
    let seq_received: u64 = clients.listeners().map(|rx| rx.packets).sum();

    let forwarded = end.forwarded - start.forwarded;
    let server_ns = end.server_cpu_ns - start.server_cpu_ns;
    let stat_ns = end.server_stat_ns - start.server_stat_ns;
    let mut outcome = Outcome {
        listeners,
        connect_s,
        window_s: end
            .at
            .zip(start.at)
            .map_or(0.0, |(e, s)| e.duration_since(s).as_secs_f64()),
        speaker_packets,
        forwarded,
        expected: speaker_packets * listeners as u64,
        received,
        seq_span,
        seq_received,
        server_cpu_ms: server_ns as f64 / 1e6,
        server_stat_ms: stat_ns as f64 / 1e6,
        client_cpu_ms: (end.client_cpu_ns - start.client_cpu_ns) as f64 / 1e6,
        us_per_forward: server_ns as f64 / 1e3 / forwarded.max(1) as f64,
        us_per_forward_stat: stat_ns as f64 / 1e3 / forwarded.max(1) as f64,
        srtp_ns,
        library_ns,
        library_timeout_ns,
        datagrams_in: end.datagrams_in - start.datagrams_in,
        datagrams_out: end.datagrams_out - start.datagrams_out,
        bytes_out: end.bytes_out - start.bytes_out,
        send_calls: end.send_calls - start.send_calls,
        heap_server_per_listener: (heap1.server - heap0.server) as f64 / listeners as f64,
        heap_client_per_listener: (heap1.client - heap0.client) as f64 / listeners as f64,
        rss_per_listener_kib: (heap1.rss_kib - heap0.rss_kib) as f64 / listeners as f64,
        allocs_per_forward,
        idle_cpu_ms_per_s,
        idle_datagrams_per_s,
        idle_floor_ms_per_s: 0.0,
        steal_percent: {
            // SAFETY: no memory.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            (end.steal_ticks - start.steal_ticks) as f64 / hz * 100.0 / options.seconds
        },
        late_sends: clients.late_sends - late_before,
        client_send_errors: clients.peers.iter().map(|c| c.send_errors).sum(),
        failed_clients: clients.peers.iter().filter(|c| c.failed).count(),
        dropped: probe.dropped(),
    };

    // Tear down: the worker closes every connection, then the clients go.
    for participant in &clients.participants {
        set_class(SERVER);
        media.close(&room, participant);
        set_class(CLIENT);
    }
    runtime.block_on(media.stop());
    drop(clients);
    drop(media);
    let _ = reporter.join();
    if options.pin {
        outcome.idle_floor_ms_per_s = echo_floor(listeners, outcome.idle_datagrams_per_s)?;
    }
    Ok(outcome)
}

/// The idle floor: a bare UDP echo thread on the server's core answers `sockets` client
/// sockets, which together send `rate` datagrams a second (100 bytes, about a consent check),
/// spread evenly, from this thread. One blocking receive and one send per datagram, nothing
/// else: the least a server spends to answer each datagram as it arrives, wake-up included.
/// Returns the echo thread's CPU, ms per second, over `IDLE_WINDOW` after a short warm-up.
fn echo_floor(sockets: usize, rate: f64) -> Result<f64> {
    const WARMUP: Duration = Duration::from_millis(500);
    let server = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    server.set_read_timeout(Some(Duration::from_millis(20)))?;
    let to = server.local_addr()?;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let echo = {
        let done = done.clone();
        std::thread::Builder::new()
            .name("echo-floor".into())
            .spawn(move || -> f64 {
                pin(0, SERVER_CPU);
                let mut buf = [0u8; 2048];
                let start = Instant::now();
                let mut mark: Option<(u64, Instant)> = None;
                let mut result = 0.0;
                while !done.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = server.recv_from(&mut buf) {
                        let _ = server.send_to(&buf[..len], from);
                    }
                    match mark {
                        None if start.elapsed() >= WARMUP => {
                            mark = Some((thread_cpu_ns(gettid()), Instant::now()))
                        }
                        Some((cpu, at)) if result == 0.0 && at.elapsed() >= IDLE_WINDOW => {
                            let ms = (thread_cpu_ns(gettid()) - cpu) as f64 / 1e6;
                            result = ms / at.elapsed().as_secs_f64();
                        }
                        _ => {}
                    }
                }
                result
            })?
    };
    let clients = (0..sockets.max(1))
        .map(|_| {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let payload = [0u8; 100];
    let mut reply = [0u8; 2048];
    let end = Instant::now() + WARMUP + IDLE_WINDOW + Duration::from_millis(200);
    let mut next = Instant::now();
    let mut i = 0;
    while next < end {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let client = &clients[i % clients.len()];
        let _ = client.send_to(&payload, to);
        // The previous client's answer, as the bench's clients read theirs.
        let _ = clients[(i + clients.len() - 1) % clients.len()].recv_from(&mut reply);
        i += 1;
        next += gap;
    }
    done.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| "the echo floor's thread panicked".into())
}

// ---------------------------------------------------------------------------------------------
// Command line and output
// ---------------------------------------------------------------------------------------------

fn parse_args() -> Result<Options> {
    let mut options = Options {
        listeners: vec![10, 100, 1000],
        seconds: 10.0,
        interval: Duration::from_millis(20),
        pin: true,
        red: 0,
        // The server's own default.
        transport: stoa::config::ListenerTransport::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listeners" => {
                options.listeners = value()?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?;
                if options.listeners.contains(&0) {
                    return Err("--listeners: every count must be at least 1".into());
                }
            }
            "--seconds" => options.seconds = value()?.parse()?,
            "--interval-ms" => options.interval = Duration::from_millis(value()?.parse()?),
            "--no-pin" => options.pin = false,
            "--red" => {
                options.red = value()?.parse()?;
                if options.red > stoa::media::red::MAX_REDUNDANCY {
                    return Err("--red: 0, 1 or 2 earlier frames".into());
                }
            }
            "--transport" => {
                options.transport = match value()?.as_str() {
                    "rtc" => stoa::config::ListenerTransport::Rtc,
                    "lean" => stoa::config::ListenerTransport::Lean,
                    _ => return Err("--transport: rtc or lean".into()),
                }
            }
            "-h" | "--help" => {
                println!(
                    "stoa-media-bench [--listeners 10,100,1000] [--seconds 10] \
                     [--interval-ms 20] [--red N] [--transport rtc|lean] [--no-pin]\n\n\
                     Server CPU per forwarded packet x listener against a bare SRTP encrypt, \
                     loss, and heap per connection. See docs/benchmarks.md."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    if options.interval.is_zero() {
        return Err("--interval-ms must be at least 1".into());
    }
    Ok(options)
}

fn loss_percent(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    (expected as f64 - received as f64) / expected as f64 * 100.0
}

fn main() -> Result<()> {
    set_class(CLIENT);
    let options = parse_args()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin_ok = options.pin && cpus >= 2 && pin(0, CLIENT_CPU);
    let options = Options {
        pin: pin_ok,
        ..options
    };
    let began = Instant::now();
    println!(
        "stoa-media-bench: listeners {:?}, window {} s, one {PAYLOAD_BYTES}-byte packet every {} ms, \
         {cpus} CPUs, {}",
        options.listeners,
        options.seconds,
        options.interval.as_millis(),
        if options.pin {
            format!("server worker pinned to CPU {SERVER_CPU}, bench threads to CPU {CLIENT_CPU}")
        } else {
            "not pinned".to_owned()
        }
    );
    let mut outcomes = Vec::new();
    for &listeners in &options.listeners {
        let t = Instant::now();
        let outcome = scenario(&options, listeners)?;
        eprintln!(
            "  N={listeners}: done in {:.1} s (connect {:.2} s)",
            t.elapsed().as_secs_f64(),
            outcome.connect_s
        );
        outcomes.push(outcome);
    }

    println!();
    println!(
        "{:>9} | {:>12} | {:>9} | {:>6} | {:>8} | {:>20} | {:>7} | {:>10} | {:>10} | {:>9} | {:>11}",
        "listeners",
        "µs/pkt×lst",
        "SRTP µs",
        "ratio",
        "server %",
        "received/expected",
        "loss %",
        "heap srv",
        "heap cli",
        "RSS",
        "allocs/pkt"
    );
    for o in &outcomes {
        println!(
            "{:>9} | {:>12.3} | {:>9.3} | {:>6.1} | {:>7.1}% | {:>20} | {:>7.3} | {:>6.1} KiB | {:>6.1} KiB | {:>5.0} KiB | {:>11.1}",
            o.listeners,
            o.us_per_forward,
            o.srtp_ns / 1e3,
            o.us_per_forward * 1e3 / o.srtp_ns,
            o.server_cpu_ms / 10.0 / o.window_s,
            format!("{}/{}", o.received, o.expected),
            loss_percent(o.expected, o.received),
            o.heap_server_per_listener / 1024.0,
            o.heap_client_per_listener / 1024.0,
            o.rss_per_listener_kib,
            o.allocs_per_forward,
        );
    }
    println!();
    for pair in outcomes.windows(2) {
        println!(
            "marginal {} → {} listeners: {:.3} µs server CPU per extra packet × listener",
            pair[0].listeners,
            pair[1].listeners,
            marginal_us(&pair[0], &pair[1])
        );
    }
    for o in &outcomes {
        println!(
            "N={}: library path in memory (write_rtp + poll_write): {:.3} µs ({:.1}× SRTP); \
             with poll_timeout as the worker calls it: {:.3} µs",
            o.listeners,
            o.library_ns / 1e3,
            o.library_ns / o.srtp_ns,
            o.library_timeout_ns / 1e3
        );
    }
    for o in &outcomes {
        println!(
            "N={}: sent {:.1} bytes per datagram, {:.1} kbit/s per listener with IPv4/UDP headers{}",
            o.listeners,
            o.bytes_out as f64 / o.datagrams_out.max(1) as f64,
            o.kbit_per_listener(),
            if options.red > 0 {
                format!(" (RED, {} earlier frames)", options.red)
            } else {
                String::new()
            }
        );
    }
    for o in &outcomes {
        println!(
            "N={}: idle (connected, silent) {:.1} ms CPU per s; above idle {:.3} µs/pkt×lst",
            o.listeners,
            o.idle_cpu_ms_per_s,
            o.above_idle_us()
        );
        if o.idle_floor_ms_per_s > 0.0 {
            println!(
                "N={}: idle floor (a bare UDP echo, {:.0} datagrams per s like the idle worker's): {:.1} ms CPU per s; idle {:.2}× the floor",
                o.listeners,
                o.idle_datagrams_per_s,
                o.idle_floor_ms_per_s,
                o.idle_cpu_ms_per_s / o.idle_floor_ms_per_s
            );
        }
    }
    println!();
    for o in &outcomes {
        println!(
            "N={}: window {:.2} s, speaker {} pkts, server forwarded {} (in {} datagrams, out {} \
             in {} send calls), server CPU {:.1} ms (/proc ticks: {:.0} ms → {:.2} µs/pkt×lst), \
             client thread CPU {:.1} ms, connect {:.2} s, seq-gap loss {:.3}% ({} of {}), \
             late sends {}, client send errors {}, failed clients {}, server drops {:?}, \
             CPU {SERVER_CPU} steal {:.1}%",
            o.listeners,
            o.window_s,
            o.speaker_packets,
            o.forwarded,
            o.datagrams_in,
            o.datagrams_out,
            o.send_calls,
            o.server_cpu_ms,
            o.server_stat_ms,
            o.us_per_forward_stat,
            o.client_cpu_ms,
            o.connect_s,
            loss_percent(o.seq_span, o.seq_received),
            o.seq_span.saturating_sub(o.seq_received),
            o.seq_span,
            o.late_sends,
            o.client_send_errors,
            o.failed_clients,
            o.dropped,
            o.steal_percent,
        );
    }
    let results: Vec<_> = outcomes
        .iter()
        .map(|o| {
            json!({
                "listeners": o.listeners,
                "window_s": o.window_s,
                "speaker_packets": o.speaker_packets,
                "forwarded": o.forwarded,
                "expected": o.expected,
                "received": o.received,
                "loss_percent": loss_percent(o.expected, o.received),
                "seq_gap_loss_percent": loss_percent(o.seq_span, o.seq_received),
                "server_cpu_ms": o.server_cpu_ms,
                "server_cpu_percent": o.server_cpu_ms / 10.0 / o.window_s,
                "us_per_packet_listener": o.us_per_forward,
                "us_per_packet_listener_above_idle": o.above_idle_us(),
                "idle_server_cpu_ms_per_s": o.idle_cpu_ms_per_s,
                "idle_datagrams_per_s": o.idle_datagrams_per_s,
                "idle_floor_cpu_ms_per_s": o.idle_floor_ms_per_s,
                "srtp_encrypt_us": o.srtp_ns / 1e3,
                "ratio_to_srtp": o.us_per_forward * 1e3 / o.srtp_ns,
                "library_write_us": o.library_ns / 1e3,
                "library_write_poll_timeout_us": o.library_timeout_ns / 1e3,
                "client_cpu_ms": o.client_cpu_ms,
                "datagrams_in": o.datagrams_in,
                "datagrams_out": o.datagrams_out,
                "bytes_out": o.bytes_out,
                "kbit_per_s_per_listener": o.kbit_per_listener(),
                "send_calls": o.send_calls,
                "heap_server_bytes_per_listener": o.heap_server_per_listener,
                "heap_client_bytes_per_listener": o.heap_client_per_listener,
                "rss_kib_per_listener": o.rss_per_listener_kib,
                "server_allocs_per_forward": o.allocs_per_forward,
                "connect_s": o.connect_s,
                "server_cpu_steal_percent": o.steal_percent,
                "dropped": o.dropped.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let marginal: Vec<_> = outcomes
        .windows(2)
        .map(|pair| {
            json!({
                "from": pair[0].listeners,
                "to": pair[1].listeners,
                "us_per_packet_listener": marginal_us(&pair[0], &pair[1]),
            })
        })
        .collect();
    println!();
    println!(
        "{}",
        json!({
            "marginal": marginal,
            "bench": "stoa-media-bench",
            "interval_ms": options.interval.as_millis() as u64,
            "payload_bytes": PAYLOAD_BYTES,
            "window_s": options.seconds,
            "cpus": cpus,
            "pinned": options.pin,
            "red": options.red,
            "transport": format!("{:?}", options.transport).to_lowercase(),
            "total_s": began.elapsed().as_secs_f64(),
            "results": results,
        })
    );
    eprintln!("total {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}
