//! Bounds on every accepted HTTP connection: an idle timer (no byte either way for the idle
//! timeout closes it) and a cap on open connections, with refusals logged and counted. Knows
//! sockets and timers only; HTTP itself is hyper's.

use std::future::{Future, Ready, ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How often, at most, a burst of refusals is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The process's open-file limit: raises the soft limit to the hard limit, and returns the
/// soft limit now in force (None where it cannot be read). Each connection is a descriptor;
/// 1,024, a common default, is a few hundred idle sockets from exhaustion.
pub fn raise_descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// The connection cap when the operator set none: the descriptor limit less a reserve for the
/// database, the media sockets, log files and outgoing calls.
pub fn default_max_connections(descriptor_limit: Option<u64>) -> usize {
    let limit = descriptor_limit.unwrap_or(1024).min(1 << 20) as usize;
    limit.saturating_sub(limit / 10 + 64).max(32)
}

/// Counts for `/metrics`.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
    pub accept_errors: Counter,
}

struct Shared {
    open: AtomicUsize,
    max: usize,
    idle: Duration,
    metrics: ConnectionMetrics,
    /// Refusals since the last warning, and when that was.
    unlogged: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

/// An acceptor (for axum-server) that wraps every TCP stream in an [`IdleStream`] and refuses
/// connections past the cap. Put it under the TLS acceptor, so the handshake is timed too.
#[derive(Clone)]
pub struct GuardedAcceptor {
    shared: Arc<Shared>,
}

impl GuardedAcceptor {
    pub fn new(max: usize, idle: Duration, metrics: ConnectionMetrics) -> Self {
        GuardedAcceptor {
            shared: Arc::new(Shared {
                open: AtomicUsize::new(0),
                max,
                idle,
                metrics,
                unlogged: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            }),
        }
    }

    /// Logs and counts a failed `accept` (out of descriptors, typically).
    pub fn accept_failed(&self, error: &io::Error) {
        self.shared.metrics.accept_errors.inc();
        self.shared
            .warn(|refused| tracing::warn!(error = %error, refused, "cannot accept connections"));
    }
}

impl Shared {
    /// Warns at most every `WARN_EVERY`, with the number of refusals since the last warning.
    fn warn(&self, log: impl FnOnce(u64)) {
        let refused = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            self.unlogged.store(0, Ordering::Relaxed);
            log(refused);
        }
    }
}

impl<S> Accept<TcpStream, S> for GuardedAcceptor {
    type Stream = IdleStream<TcpStream>;
    type Service = S;
    type Future = Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let shared = &self.shared;
        if shared.open.fetch_add(1, Ordering::AcqRel) >= shared.max {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            shared.metrics.refused.inc();
            let max = shared.max;
            shared.warn(|refused| {
                tracing::warn!(
                    max_connections = max,
                    refused,
                    "refusing connections: too many open (see limits.max_connections)"
                )
            });
            // Dropping the stream closes it at once.
            return ready(Err(io::Error::other("too many open connections")));
        }
        shared.metrics.open.inc();
        // Signaling is small messages, often several in a row (an answer, then candidates;
        // `closed`, then the close frame): Nagle's algorithm would hold each one after the
        // first until the client acknowledged the one before.
        let _ = stream.set_nodelay(true);
        let guard = OpenGuard(self.shared.clone());
        ready(Ok((IdleStream::new(stream, shared.idle, guard), service)))
    }
}

/// Gives a connection's place back when it closes.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.open.dec();
    }
}

/// A stream that fails with `TimedOut` once no byte has moved either way for `idle`, while
/// someone waits on it. Covers a client that sends nothing, stalls in the middle of a request
/// (headers or body), or stops reading; a WebSocket stays alive through the server's pings.
pub struct IdleStream<T> {
    inner: T,
    idle: Duration,
    last_progress: Instant,
    /// One timer per direction: reading and writing may be polled from different tasks.
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    _guard: OpenGuard,
}

impl<T> IdleStream<T> {
    fn new(inner: T, idle: Duration, guard: OpenGuard) -> Self {
        let deadline = Instant::now() + idle;
        IdleStream {
            inner,
            idle,
            last_progress: Instant::now(),
            read_timer: Box::pin(tokio::time::sleep_until(deadline)),
            write_timer: Box::pin(tokio::time::sleep_until(deadline)),
            _guard: guard,
        }
    }

    /// Called when the inner stream is not ready: Ready(error) once the connection has been
    /// idle too long, otherwise arms the timer so the task wakes when it would be.
    fn poll_idle(
        timer: &mut Pin<Box<Sleep>>,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<io::Error> {
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn deadline(&self) -> Instant {
        self.last_progress + self.idle
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = this.deadline();
                Self::poll_idle(&mut this.read_timer, deadline, cx).map(Err)
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = this.deadline();
                Self::poll_idle(&mut this.write_timer, deadline, cx).map(Err)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = this.deadline();
                Self::poll_idle(&mut this.write_timer, deadline, cx).map(Err)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_default_cap_leaves_a_reserve() {
        assert_eq!(default_max_connections(Some(1024)), 858);
        assert!(default_max_connections(Some(65_536)) > 58_000);
        assert_eq!(default_max_connections(Some(10)), 32);
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_traffic_keeps_it_alive_and_the_cap_holds() {
        let idle = Duration::from_millis(300);
        let acceptor = GuardedAcceptor::new(1, idle, Default::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut stream, ()) = acceptor.accept(server, ()).await.unwrap();
        // The cap is one: a second connection is refused.
        let _second = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(acceptor.accept(accepted, ()).await.is_err());
        // Bytes more often than the idle timeout keep the connection alive…
        let mut buf = [0u8; 8];
        let started = Instant::now();
        for _ in 0..4 {
            tokio::time::sleep(idle / 2).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        }
        assert!(started.elapsed() > idle);
        // …and silence ends it.
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(stream);
        // Closing gives the place back.
        let _third = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(acceptor.accept(accepted, ()).await.is_ok());
    }
}
