//! The UDP floor: what this machine's kernel allows a server core with no WebRTC at all. A
//! sender thread pinned to the server's CPU sends, every 20 ms and for every speaker, one
//! datagram of the forwarded packets' size to each of N destination sockets with `sendmmsg`
//! (64 per call, as the media worker batches); the destinations are read on the calling
//! thread (the client core) and judged like listeners: loss, and delay from the tick's start
//! to the kernel's receive stamp. No WebRTC, no crypto, no per-destination state.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::procfs;
use super::{Dist, Histogram};
use stoa_client::fleet::{Poller, RecvBatch, client_socket, realtime_ns};

/// A forwarded Opus packet of about 20 ms of voice, header and SRTP tag included.
pub const DEFAULT_BYTES: usize = 108;
const TICK: Duration = Duration::from_millis(20);
/// Datagrams per `sendmmsg`, as the media worker's batch.
const BATCH: usize = 64;
const MAGIC: u32 = 0x5354_4f41;

/// One floor measurement.
#[derive(Clone, Debug)]
pub struct FloorOptions {
    pub destinations: usize,
    pub speakers: usize,
    pub bytes: usize,
    pub seconds: f64,
    pub settle: Duration,
    pub sender_cpu: usize,
    pub max_loss: f64,
    pub max_p99_ms: f64,
}

/// What one floor measurement found.
#[derive(Clone, Debug, Default)]
pub struct FloorStep {
    pub destinations: usize,
    pub speakers: usize,
    pub bytes: usize,
    pub held: bool,
    pub reason: String,
    pub expected: u64,
    pub received: u64,
    pub sent: u64,
    pub send_errors: u64,
    /// Tick start → kernel receive stamp, µs.
    pub delay_us: Dist,
    pub window_s: f64,
    pub sender_cpu_s: f64,
    /// Seconds the sender waited for its core (other processes held it).
    pub sender_waited_s: f64,
    pub late_ticks: u64,
    pub client_cpu_share: f64,
    /// A second attempt at the same N after the first failed.
    pub retry: bool,
}

impl FloorStep {
    pub fn loss(&self) -> f64 {
        self.expected.saturating_sub(self.received) as f64 / self.expected.max(1) as f64
    }

    /// Sender CPU per datagram sent, µs (the kernel's send and loopback delivery).
    pub fn cpu_us_per_packet(&self) -> f64 {
        self.sender_cpu_s * 1e6 / self.sent.max(1) as f64
    }

    pub fn sender_share(&self) -> f64 {
        self.sender_cpu_s / self.window_s.max(1e-9)
    }

    pub fn client_saturated(&self) -> bool {
        self.client_cpu_share >= 0.9
    }

    /// The sender waited for its core ≥ 5 % of the window (other processes held it).
    pub fn disturbed(&self) -> bool {
        self.sender_waited_s >= 0.05 * self.window_s
    }

    pub fn line(&self) -> String {
        let d = &self.delay_us;
        format!(
            "floor {:>2} spk {:>6} dst  {}  loss {:>7.3}%  delay ms p50 {:>6.2} p95 {:>6.2} p99 {:>6.2} max {:>7.2}  sender {:>5.1}% {:.3} µs/pkt ({} B), waited for its CPU {:.1}%  late ticks {}  client {:>5.1}%{}{}{}{}",
            self.speakers,
            self.destinations,
            if self.held { "held  " } else { "FAILED" },
            self.loss() * 100.0,
            d.p50 / 1e3,
            d.p95 / 1e3,
            d.p99 / 1e3,
            d.max / 1e3,
            self.sender_share() * 100.0,
            self.cpu_us_per_packet(),
            self.bytes,
            self.sender_waited_s / self.window_s.max(1e-9) * 100.0,
            self.late_ticks,
            self.client_cpu_share * 100.0,
            if self.client_saturated() {
                " SATURATED"
            } else {
                ""
            },
            if self.retry { "  (retry)" } else { "" },
            if self.disturbed() { "  DISTURBED" } else { "" },
            if self.reason.is_empty() {
                String::new()
            } else {
                format!("  ({})", self.reason)
            },
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "speakers": self.speakers,
            "destinations": self.destinations,
            "bytes": self.bytes,
            "held": self.held,
            "reason": self.reason,
            "expected": self.expected,
            "received": self.received,
            "sent": self.sent,
            "send_errors": self.send_errors,
            "loss": self.loss(),
            "delay_us": self.delay_us.json(),
            "window_s": self.window_s,
            "sender_cpu_share": self.sender_share(),
            "sender_waited_share": self.sender_waited_s / self.window_s.max(1e-9),
            "cpu_us_per_packet": self.cpu_us_per_packet(),
            "late_ticks": self.late_ticks,
            "client_cpu_share": self.client_cpu_share,
            "client_saturated": self.client_saturated(),
            "retry": self.retry,
            "disturbed": self.disturbed(),
        })
    }
}

/// What the sender counted over the window.
#[derive(Default)]
struct SenderTally {
    /// ns the sender was runnable but waited for its core.
    waited_ns: u64,
    sent: u64,
    errors: u64,
    cpu_ns: u64,
    ticks: u64,
    late: u64,
}

/// The sender: every tick, one datagram per speaker to every destination, stamped with the
/// tick's start; counts only ticks that start inside `[window.0, window.1)`.
fn send_loop(
    destinations: Vec<SocketAddr>,
    options: FloorOptions,
    window: (i64, i64),
) -> Result<SenderTally, String> {
    if let Err(e) = procfs::pin(0, options.sender_cpu) {
        return Err(format!("cannot pin the floor sender: {e}"));
    }
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let fd = socket.as_raw_fd();
    let mut names: Vec<libc::sockaddr_in> = destinations
        .iter()
        .map(|d| {
            let SocketAddr::V4(v4) = d else {
                unreachable!("floor destinations are 127.0.0.1")
            };
            sockaddr_in(*v4)
        })
        .collect();
    let mut payload = vec![0u8; options.bytes.max(24)];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all-zero mmsghdr is valid; filled per batch below.
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut tally = SenderTally::default();
    let mut cpu_start = None;
    let end_at = window.1 + 200_000_000;
    // Ticks keep their schedule: a sender that falls behind sends late ticks back to back, and
    // their stamps (the scheduled time, like a speaker's packet arriving) show the backlog.
    let (base, base_rt) = (Instant::now(), realtime_ns());
    let mut next = base;
    let mut tick: u64 = 0;
    loop {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        } else if now > next + TICK {
            tally.late += u64::from(realtime_ns() >= window.0 && realtime_ns() < window.1);
        }
        let stamp = base_rt + (next - base).as_nanos() as i64;
        if stamp >= end_at {
            break;
        }
        let counted = stamp >= window.0 && stamp < window.1;
        if counted && cpu_start.is_none() {
            cpu_start = Some((procfs::thread_cpu_ns(), thread_waited_ns()));
        }
        if !counted && let Some((start, waited)) = cpu_start.filter(|_| stamp >= window.1) {
            tally.cpu_ns = procfs::thread_cpu_ns() - start;
            tally.waited_ns = thread_waited_ns().saturating_sub(waited);
            cpu_start = None;
        }
        for speaker in 0..options.speakers {
            payload[..4].copy_from_slice(&MAGIC.to_be_bytes());
            payload[4..12].copy_from_slice(&stamp.to_be_bytes());
            payload[12..20].copy_from_slice(&tick.to_be_bytes());
            payload[20] = speaker as u8;
            for chunk in names.chunks_mut(BATCH) {
                for (header, name) in headers.iter_mut().zip(chunk.iter_mut()) {
                    header.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
                    header.msg_hdr.msg_namelen =
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    header.msg_hdr.msg_iov = &mut iov;
                    header.msg_hdr.msg_iovlen = 1;
                }
                let mut done = 0;
                while done < chunk.len() {
                    // SAFETY: `headers[done..chunk.len()]` point at live addresses and the
                    // payload, which outlive the call.
                    let n = unsafe {
                        libc::sendmmsg(
                            fd,
                            headers[done..].as_mut_ptr(),
                            (chunk.len() - done) as libc::c_uint,
                            0,
                        )
                    };
                    if n <= 0 {
                        // The rest of this batch is lost; count it as the sender's error.
                        if counted {
                            tally.errors += (chunk.len() - done) as u64;
                        }
                        break;
                    }
                    done += n as usize;
                    if counted {
                        tally.sent += n as u64;
                    }
                }
            }
        }
        if counted {
            tally.ticks += 1;
        }
        tick += 1;
        next += TICK;
    }
    if let Some((start, waited)) = cpu_start {
        tally.cpu_ns = procfs::thread_cpu_ns() - start;
        tally.waited_ns = thread_waited_ns().saturating_sub(waited);
    }
    Ok(tally)
}

/// ns the calling thread has been runnable but waiting for a CPU (`schedstat`).
fn thread_waited_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One floor measurement, on the calling thread (the client core) and a sender thread pinned
/// to the server core.
pub fn step(options: &FloorOptions) -> Result<FloorStep, String> {
    let n = options.destinations;
    let mut sockets = Vec::with_capacity(n);
    let mut poller = Poller::new().map_err(|e| e.to_string())?;
    for i in 0..n {
        let socket = client_socket(Ipv4Addr::LOCALHOST.into(), true)
            .map_err(|e| format!("socket {i}: {e}"))?;
        poller
            .add(socket.as_raw_fd(), i)
            .map_err(|e| e.to_string())?;
        sockets.push(socket);
    }
    let destinations: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let begin = realtime_ns() + 50_000_000;
    let window = (
        begin + options.settle.as_nanos() as i64,
        begin + options.settle.as_nanos() as i64 + (options.seconds * 1e9) as i64,
    );
    let sender = {
        let options = options.clone();
        std::thread::Builder::new()
            .name("loadgen-floor".to_owned())
            .spawn(move || send_loop(destinations, options, window))
            .map_err(|e| e.to_string())?
    };

    let mut batch = RecvBatch::default();
    let mut ready_fds = Vec::new();
    let mut delay = Histogram::default();
    let mut received = 0u64;
    let mut cpu_start = None;
    let mut cpu_end = None;
    let stop_at = window.1 + 500_000_000;
    loop {
        let now = realtime_ns();
        if now >= stop_at {
            break;
        }
        if cpu_start.is_none() && now >= window.0 {
            cpu_start = Some((procfs::thread_cpu_ns(), now));
        }
        if cpu_end.is_none() && now >= window.1 {
            cpu_end = Some((procfs::thread_cpu_ns(), now));
        }
        poller.wait(Duration::from_millis(5), &mut ready_fds);
        for &index in &ready_fds {
            let fd = sockets[index].as_raw_fd();
            loop {
                let got = batch.recv(fd);
                for i in 0..got {
                    let (data, _, rx) = batch.get(i);
                    if data.len() < 21 || data[..4] != MAGIC.to_be_bytes() {
                        continue;
                    }
                    let sent = i64::from_be_bytes(data[4..12].try_into().expect("8 bytes"));
                    if sent >= window.0 && sent < window.1 {
                        received += 1;
                        delay.add((rx - sent) as f64 / 1e3);
                    }
                }
                if got < 8 {
                    break;
                }
            }
        }
    }
    let tally = sender
        .join()
        .map_err(|_| "the floor sender panicked".to_owned())??;
    let client_cpu_share = match (cpu_start, cpu_end) {
        (Some((c0, t0)), Some((c1, t1))) => (c1 - c0) as f64 / (t1 - t0).max(1) as f64,
        _ => 0.0,
    };
    let expected = tally.ticks * (options.speakers * n) as u64;
    let mut step = FloorStep {
        destinations: n,
        speakers: options.speakers,
        bytes: options.bytes,
        held: false,
        reason: String::new(),
        expected,
        received,
        sent: tally.sent,
        send_errors: tally.errors,
        delay_us: delay.dist(),
        window_s: options.seconds,
        sender_cpu_s: tally.cpu_ns as f64 / 1e9,
        sender_waited_s: tally.waited_ns as f64 / 1e9,
        late_ticks: tally.late,
        client_cpu_share,
        retry: false,
    };
    let mut why = Vec::new();
    if step.loss() > options.max_loss {
        why.push(format!("loss {:.3}%", step.loss() * 100.0));
    }
    if step.delay_us.p99 > options.max_p99_ms * 1e3 {
        why.push(format!("p99 {:.2} ms", step.delay_us.p99 / 1e3));
    }
    step.reason = why.join(", ");
    step.held = step.reason.is_empty();
    Ok(step)
}
