//! The worker's shell: the thread's runtime, the UDP socket, the ICE-TCP listener and
//! streams, the clock and the loop. It reads inputs, stamps them with [`Now`] and hands them
//! to the [`Core`]; it sends what the core queued. No decision about media is made here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::super::batch::{MAX_DATAGRAM, SendBatch};
use super::super::tcp::{TcpEvent, TcpSide};
use super::counters::WireCounters;
use super::sansio::{Core, CoreSetup, Links};
use super::{Control, Egress, Fanout, Now, Peer, WorkerSetup};
use crate::metrics::MediaMetrics;

/// Datagrams read per readiness event before the loop turns (timers, other queues).
const READ_BURST: usize = 64;
/// Fan-out packets handled per turn.
const FANOUT_BURST: usize = 256;
/// The longest the loop sleeps without an input.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How long a quiet worker lets datagrams gather in its socket before reading them.
const GATHER: Duration = Duration::from_millis(20);

/// When a quiet worker reads its socket.
///
/// Each datagram that wakes the worker costs a wake-up, which on a quiet worker is most of
/// what answering it costs. While the core is [quiet](Core::quiet) (its connections up, only
/// consent checks and reports coming, no audio) and datagrams come densely, the worker leaves
/// the socket unread for [`GATHER`] after each read and then answers everything that came in
/// one wake. A sparse trickle is read as it comes, so the gathering never adds wakes. What
/// ends the quiet (an offer, a permission to send, audio) and comes during a wait waits with
/// the datagrams, at most [`GATHER`], and ends the gathering.
#[derive(Debug, Default)]
struct Gather {
    last_read: Option<Instant>,
    hold_until: Option<Instant>,
}

impl Gather {
    /// Until when the socket is left unread at `now`, if it is.
    fn held(&self, now: Instant) -> Option<Instant> {
        self.hold_until.filter(|at| *at > now)
    }

    /// The socket was read at `now` and gave `count` datagrams; `quiet` is the core's word.
    fn read(&mut self, now: Instant, count: usize, quiet: bool) {
        let dense = count > 1
            || self
                .last_read
                .is_some_and(|last| now.saturating_duration_since(last) < GATHER);
        // A full burst may have left more behind: read on at once.
        let drained = count < READ_BURST;
        self.hold_until = (quiet && dense && drained).then(|| now + GATHER);
        self.last_read = Some(now);
    }
}

/// The sockets the core's output goes out on.
pub(super) struct Wire {
    index: usize,
    socket: UdpSocket,
    /// ICE-TCP: the listener and streams of this worker, when enabled.
    tcp: Option<TcpSide>,
    batch: SendBatch,
    counters: WireCounters,
    metrics: MediaMetrics,
}

impl Egress for Wire {
    fn batch(&mut self) -> &mut SendBatch {
        &mut self.batch
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let done = self.batch.flush(&self.socket);
        self.counters.datagrams_out.inc_by(done.datagrams);
        self.counters.bytes_out.inc_by(done.bytes);
        self.counters.send_calls.inc_by(done.calls);
        self.counters.send_failed.inc_by(done.dropped);
    }

    fn forwarded(&mut self, arrived: Instant) {
        self.flush();
        self.metrics
            .forward_seconds
            .observe(arrived.elapsed().as_secs_f64());
    }

    fn send_tcp(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        match self.tcp.as_ref().map(|t| t.send(to, datagram)) {
            Some(Ok(())) => {
                self.counters.datagrams_out.inc();
                self.counters.bytes_out.inc_by(datagram.len() as u64);
                true
            }
            _ => {
                self.counters.send_failed.inc();
                false
            }
        }
    }

    fn close_tcp(&mut self, from: SocketAddr) {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.close(&from);
        }
    }
}

impl Wire {
    fn on_tcp_accept(&mut self, accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        match accepted {
            Ok((stream, from)) => {
                if !tcp.adopt(stream, from) {
                    self.counters.rejected.inc();
                    tracing::warn!(worker = self.index, "too many ICE-TCP streams; one refused");
                }
                self.counters.tcp_streams.set(tcp.streams() as i64);
            }
            Err(e) => tracing::debug!(worker = self.index, error = %e, "ICE-TCP accept failed"),
        }
    }

    fn on_tcp_closed(&mut self, from: SocketAddr) {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.close(&from);
            self.counters.tcp_streams.set(tcp.streams() as i64);
        }
    }
}

pub struct Worker {
    core: Core<Wire>,
    control: mpsc::UnboundedReceiver<Control>,
    fanout: mpsc::Receiver<Fanout>,
    tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    /// One byte more than a datagram may be, so an oversized one is seen as such.
    recv_buf: Vec<u8>,
}

impl Worker {
    /// Runs the worker on the current thread until `Control::Stop` or until every sender
    /// of its control queue is gone.
    pub fn run(setup: WorkerSetup) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            setup.socket.set_nonblocking(true)?;
            let local_addr = setup.socket.local_addr()?;
            let socket = UdpSocket::from_std(setup.socket)?;
            let (tcp, tcp_events, advertised_tcp) = match setup.tcp {
                Some((listener, advertised)) => {
                    listener.set_nonblocking(true)?;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let (side, events) = TcpSide::new(listener);
                    (Some(side), Some(events), Some(advertised))
                }
                None => (None, None, None),
            };
            let tcp_local = tcp.as_ref().and_then(|t| t.local_addr().ok());
            let wire = Wire {
                index: setup.index,
                socket,
                tcp,
                batch: SendBatch::default(),
                counters: WireCounters::new(&setup.metrics, setup.index),
                metrics: setup.metrics.clone(),
            };
            let core = Core::new(
                CoreSetup {
                    index: setup.index,
                    local_addr,
                    tcp_local,
                    advertised: setup.advertised,
                    advertised_tcp,
                    certificate: setup.certificate,
                    lean: setup.lean,
                    slots: setup.slots,
                    red: setup.red,
                    ice_disconnected: setup.ice_disconnected,
                    ice_failed: setup.ice_failed,
                    metrics: setup.metrics,
                    sources: setup.sources,
                },
                Links {
                    peers: setup.peers,
                    peer_controls: setup.peer_controls,
                    reports: setup.reports,
                },
                wire,
                Instant::now(),
            )?;
            let mut worker = Worker {
                core,
                control: setup.control,
                fanout: setup.fanout,
                tcp_events,
                recv_buf: vec![0; MAX_DATAGRAM + 1],
            };
            worker.serve().await;
            Ok(())
        })
    }

    async fn serve(&mut self) {
        // When the last turn ended; the clock is read once a turn for the timers.
        let mut turned = Instant::now();
        let mut gather = Gather::default();
        loop {
            self.core.egress_mut().flush();
            // Wakes at least once a second, even when nothing is due.
            let idle = turned + IDLE_WAKE;
            let wake = self.core.poll_timeout().map_or(idle, |at| at.min(idle));
            if self.core.quiet(turned)
                && let Some(until) = gather.held(turned)
            {
                // The thread sleeps outside the runtime: a datagram that arrives meanwhile
                // must not wake it (the socket stays registered with epoll, which would).
                // Control messages and other workers' packets wait too, at most `GATHER`;
                // they only come to a quiet worker when its quiet is about to end.
                std::thread::sleep(until.min(wake).saturating_duration_since(Instant::now()));
            }
            let mut read = 0;
            let Worker {
                core,
                control,
                fanout,
                tcp_events,
                recv_buf,
            } = self;
            tokio::select! {
                biased;
                command = control.recv() => match command {
                    None | Some(Control::Stop) => break,
                    Some(command) => core.handle_control(Now::read(), command),
                },
                Some(first) = fanout.recv() => {
                    core.handle_fanout(Now::read(), first);
                    for _ in 0..FANOUT_BURST {
                        match fanout.try_recv() {
                            Ok(next) => core.handle_fanout(Now::read(), next),
                            Err(_) => break,
                        }
                    }
                }
                ready = core.egress().socket.readable() => {
                    if ready.is_ok() {
                        read = read_burst(core, recv_buf);
                    }
                }
                Some(accepted) = accept_tcp(core.egress().tcp.as_ref()) => {
                    core.egress_mut().on_tcp_accept(accepted);
                }
                Some(event) = tcp_event(tcp_events.as_mut()) => match event {
                    TcpEvent::Frame { from, frame } => {
                        // Bounded by the reader (at most a datagram's size).
                        core.egress().counters.tcp_frames_in.inc();
                        core.handle_datagram(Now::read(), Peer::tcp(from), &frame);
                    }
                    TcpEvent::Closed { from } => {
                        core.egress_mut().on_tcp_closed(from);
                        core.handle_stream_closed(from);
                    }
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            let now = Now::read();
            turned = now.at;
            if read > 0 {
                gather.read(now.at, read, self.core.quiet(now.at));
            }
            self.core.handle_timeout(now);
        }
        self.core.close_all(Now::read());
        self.core.egress_mut().flush();
    }
}

/// Reads up to a burst of datagrams into the core; how many it read.
fn read_burst(core: &mut Core<Wire>, buf: &mut [u8]) -> usize {
    let mut read = 0;
    for _ in 0..READ_BURST {
        match core.egress().socket.try_recv_from(buf) {
            Ok((n, from)) => {
                read += 1;
                core.handle_datagram(Now::read(), Peer::udp(from), &buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                // ICMP errors surface here on Linux (a peer's port closed); not fatal.
                tracing::trace!(error = %e, "media socket receive error");
            }
        }
    }
    read
}

/// The next ICE-TCP client, or never when TCP is off.
async fn accept_tcp(
    tcp: Option<&TcpSide>,
) -> Option<std::io::Result<(tokio::net::TcpStream, SocketAddr)>> {
    match tcp {
        Some(tcp) => Some(tcp.accept().await),
        None => std::future::pending().await,
    }
}

/// The next frame or closed stream from ICE-TCP, or never when TCP is off.
async fn tcp_event(events: Option<&mut mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_sparse_trickle_is_read_as_it_comes() {
        let start = Instant::now();
        let mut gather = Gather::default();
        for i in 0..10u32 {
            let at = start + GATHER * 2 * i;
            assert_eq!(gather.held(at), None);
            gather.read(at, 1, true);
            assert_eq!(gather.held(at), None, "read {i} alone held the socket");
        }
    }

    #[test]
    fn dense_datagrams_on_a_quiet_core_gather_for_a_while_and_no_longer() {
        let start = Instant::now();
        let mut gather = Gather::default();
        // Several in one read: dense.
        gather.read(start, 3, true);
        assert_eq!(gather.held(start), Some(start + GATHER));
        assert_eq!(gather.held(start + GATHER - MS), Some(start + GATHER));
        assert_eq!(gather.held(start + GATHER), None, "the wait is bounded");
        // One each, but close together: dense too.
        let mut gather = Gather::default();
        gather.read(start, 1, true);
        assert_eq!(gather.held(start), None);
        let next = start + GATHER / 2;
        gather.read(next, 1, true);
        assert_eq!(gather.held(next), Some(next + GATHER));
        // What gathered in the wait is read together, and the gathering goes on.
        let later = next + GATHER + MS;
        gather.read(later, 12, true);
        assert_eq!(gather.held(later), Some(later + GATHER));
        // The trickle thins: a read that found one alone after the wait ends it.
        let thin = later + GATHER + MS;
        gather.read(thin, 1, true);
        assert_eq!(gather.held(thin), None);
    }

    #[test]
    fn a_busy_core_or_a_full_burst_is_never_held() {
        let start = Instant::now();
        let mut gather = Gather::default();
        gather.read(start, 40, false);
        assert_eq!(gather.held(start), None, "not quiet");
        gather.read(start + MS, READ_BURST, true);
        assert_eq!(
            gather.held(start + MS),
            None,
            "a full burst may have left more"
        );
    }
}
