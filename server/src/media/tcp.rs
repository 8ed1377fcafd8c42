//! ICE-TCP for clients whose network blocks UDP (RFC 6544 passive candidates): each worker
//! listens on TCP at its UDP port number, and every accepted stream carries the same
//! STUN/DTLS/SRTP datagrams as UDP, each framed with a two-byte length (RFC 4571).
//!
//! The worker stays the only owner of connections: a stream's reader task hands whole frames
//! to the worker through a bounded queue, and the worker hands frames to a stream's writer task
//! through another. Nothing here decides who a frame is for; it only moves bytes. TCP is the
//! fallback path: a frame costs one allocation here, which the UDP hot path never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::batch::MAX_DATAGRAM;

/// Streams one worker holds at most; more are closed at once.
pub const MAX_STREAMS: usize = 4096;
/// A stream that has not delivered a frame within this is closed (it is not an ICE client).
pub const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);
/// A stream that delivers nothing for this long is closed (consent checks come every few s).
pub const IDLE_AFTER: Duration = Duration::from_secs(30);
/// Frames queued to one stream before new ones are dropped (a slow reader loses audio, it
/// does not hold the worker up).
const WRITE_QUEUE: usize = 256;
/// Frames from all streams queued to the worker.
const READ_QUEUE: usize = 4096;

/// A frame from a client over TCP, or the end of its stream.
pub enum TcpEvent {
    Frame { from: SocketAddr, frame: Bytes },
    Closed { from: SocketAddr },
}

/// The TCP side of one worker: its listener and the writers of the streams it accepted.
pub struct TcpSide {
    listener: TcpListener,
    writers: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    events_tx: mpsc::Sender<TcpEvent>,
}

/// Why a frame could not be queued to a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    NoStream,
    Full,
}

impl TcpSide {
    /// The side, and the queue on which its streams' frames and ends arrive.
    pub fn new(listener: TcpListener) -> (Self, mpsc::Receiver<TcpEvent>) {
        let (events_tx, events) = mpsc::channel(READ_QUEUE);
        let side = TcpSide {
            listener,
            writers: HashMap::new(),
            events_tx,
        };
        (side, events)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for the next client; the worker's loop calls [`TcpSide::adopt`] with it.
    pub async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        self.listener.accept().await
    }

    /// Starts the reader and writer of a new stream, unless the worker holds too many.
    pub fn adopt(&mut self, stream: TcpStream, from: SocketAddr) -> bool {
        self.writers.retain(|_, w| !w.is_closed());
        if self.writers.len() >= MAX_STREAMS {
            return false;
        }
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
        self.writers.insert(from, writer_tx);
        tokio::spawn(read_frames(read, from, self.events_tx.clone()));
        tokio::spawn(write_frames(write, writer_rx));
        true
    }

    /// Queues one datagram to the stream from `to`, framed.
    pub fn send(&self, to: SocketAddr, datagram: &[u8]) -> Result<(), SendError> {
        let writer = self.writers.get(&to).ok_or(SendError::NoStream)?;
        writer
            .try_send(Bytes::copy_from_slice(datagram))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::NoStream,
            })
    }

    /// Closes the stream from `from` (its connection is gone).
    pub fn close(&mut self, from: &SocketAddr) {
        self.writers.remove(from);
    }

    pub fn streams(&self) -> usize {
        self.writers.len()
    }
}

/// Reads RFC 4571 frames until the stream ends, is idle too long, or sends a frame larger
/// than a datagram may be.
async fn read_frames(
    mut read: tokio::net::tcp::OwnedReadHalf,
    from: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut first = true;
    loop {
        let wait = if first {
            FIRST_FRAME_WITHIN
        } else {
            IDLE_AFTER
        };
        let frame = tokio::time::timeout(wait, read_frame(&mut read, &mut buf)).await;
        let Ok(Ok(len)) = frame else {
            break;
        };
        first = false;
        let frame = Bytes::copy_from_slice(&buf[..len]);
        // A full worker queue drops the frame, as a full socket buffer would a datagram.
        if let Err(mpsc::error::TrySendError::Closed(_)) =
            events.try_send(TcpEvent::Frame { from, frame })
        {
            return;
        }
    }
    let _ = events.send(TcpEvent::Closed { from }).await;
}

async fn read_frame(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let len = read.read_u16().await? as usize;
    if len == 0 || len > buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame length out of bounds",
        ));
    }
    read.read_exact(&mut buf[..len]).await?;
    Ok(len)
}

/// Writes queued datagrams as RFC 4571 frames until the worker drops the queue.
async fn write_frames(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let mut out = BytesMut::with_capacity(4 * 1024);
    while let Some(first) = queue.recv().await {
        out.clear();
        frame_into(&mut out, &first);
        // Coalesce what is already queued into one write.
        while out.len() < 64 * 1024 {
            match queue.try_recv() {
                Ok(next) => frame_into(&mut out, &next),
                Err(_) => break,
            }
        }
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// Appends one RFC 4571 frame (two-byte big-endian length, then the datagram).
pub fn frame_into(out: &mut BytesMut, datagram: &[u8]) {
    out.put_u16(datagram.len() as u16);
    out.put_slice(datagram);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_a_stream_both_ways_and_bad_lengths_close_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut side, mut events) = TcpSide::new(listener);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (stream, from) = side.accept().await.unwrap();
        assert!(side.adopt(stream, from));

        let mut framed = BytesMut::new();
        frame_into(&mut framed, b"hello");
        frame_into(&mut framed, &[7u8; 1200]);
        client.write_all(&framed).await.unwrap();
        for expected in [&b"hello"[..], &[7u8; 1200][..]] {
            match events.recv().await.unwrap() {
                TcpEvent::Frame { from: f, frame } => {
                    assert_eq!(f, from);
                    assert_eq!(&frame[..], expected);
                }
                TcpEvent::Closed { .. } => panic!("closed early"),
            }
        }

        side.send(from, b"back").unwrap();
        let len = client.read_u16().await.unwrap();
        let mut back = vec![0; len as usize];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        assert_eq!(
            side.send("127.0.0.1:9".parse().unwrap(), b"x"),
            Err(SendError::NoStream)
        );

        // A frame longer than a datagram may be ends the stream.
        client.write_all(&[0xff, 0xff, 0]).await.unwrap();
        assert!(matches!(
            events.recv().await.unwrap(),
            TcpEvent::Closed { from: f } if f == from
        ));
    }
}
