//! Outgoing datagrams collected during one turn of a worker's loop and sent with as few
//! system calls as possible (`sendmmsg` on Linux). Buffers are allocated once and reused.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Datagrams per system call; also the point at which a batch flushes by itself.
pub const BATCH: usize = 64;
/// Largest datagram the media path sends (the answer to a large DTLS flight included).
pub const MAX_DATAGRAM: usize = 1500;

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub datagrams: u64,
    pub bytes: u64,
    /// Not sent: the socket's send buffer was full or the destination refused.
    pub dropped: u64,
    pub calls: u64,
}

pub struct SendBatch {
    data: Vec<u8>,
    /// (start, len, destination) of each queued datagram inside `data`.
    queued: Vec<(usize, usize, SocketAddr)>,
    /// Datagrams larger than `MAX_DATAGRAM`, refused at `push`.
    pub oversized: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            data: vec![0; BATCH * MAX_DATAGRAM],
            queued: Vec::with_capacity(BATCH),
            oversized: 0,
        }
    }
}

impl SendBatch {
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.queued.len() == BATCH
    }

    /// Queues a copy of `datagram`. The caller flushes when `is_full`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        debug_assert!(!self.is_full(), "flush a full batch before pushing");
        if datagram.len() > MAX_DATAGRAM || self.is_full() {
            self.oversized += 1;
            return;
        }
        let start = self.queued.len() * MAX_DATAGRAM;
        self.data[start..start + datagram.len()].copy_from_slice(datagram);
        self.queued.push((start, datagram.len(), to));
    }

    /// Queues a datagram that `write` builds in place (no copy); it returns the length, or
    /// `None` to queue nothing. The caller flushes when `is_full`. Returns whether it queued.
    pub fn push_with(
        &mut self,
        to: SocketAddr,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        debug_assert!(!self.is_full(), "flush a full batch before pushing");
        if self.is_full() {
            self.oversized += 1;
            return false;
        }
        let start = self.queued.len() * MAX_DATAGRAM;
        match write(&mut self.data[start..start + MAX_DATAGRAM]) {
            Some(len) if len <= MAX_DATAGRAM => {
                self.queued.push((start, len, to));
                true
            }
            _ => false,
        }
    }

    /// Hands every queued datagram to `each` in order and empties the batch (where there is
    /// no socket: the worker core's tests).
    pub fn drain(&mut self, mut each: impl FnMut(SocketAddr, &[u8])) {
        for &(start, len, to) in &self.queued {
            each(to, &self.data[start..start + len]);
        }
        self.queued.clear();
    }

    /// Sends everything queued and empties the batch. Never waits: what the kernel will not
    /// take now is dropped and counted (a full send buffer means the host is over capacity,
    /// and late audio is worthless anyway).
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut done = Flushed::default();
        if self.queued.is_empty() {
            return done;
        }
        let mut next = 0;
        while next < self.queued.len() {
            done.calls += 1;
            match send_many(socket, &self.data, &self.queued[next..]) {
                Ok(sent) => {
                    for &(_, len, _) in &self.queued[next..next + sent] {
                        done.bytes += len as u64;
                    }
                    done.datagrams += sent as u64;
                    next += sent;
                }
                Err(_) => {
                    // The first datagram of the rest failed (no buffer, unreachable peer):
                    // skip it and carry on with the others.
                    done.dropped += 1;
                    next += 1;
                }
            }
        }
        self.queued.clear();
        done
    }
}

/// Sends a prefix of `queued`; returns how many went out. An error means the first failed.
#[cfg(target_os = "linux")]
fn send_many(
    socket: &UdpSocket,
    data: &[u8],
    queued: &[(usize, usize, SocketAddr)],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;

    let count = queued.len().min(BATCH);
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, &(start, len, to)) in queued[..count].iter().enumerate() {
        let addr_len = write_sockaddr(&mut addrs[i], to);
        iovecs[i] = libc::iovec {
            iov_base: data[start..start + len].as_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        headers[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        headers[i].msg_hdr.msg_namelen = addr_len;
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points into `addrs`, `iovecs` and `data`, which outlive the call;
    // the kernel only reads them. `count` <= the arrays' length.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(sent as usize)
}

#[cfg(target_os = "linux")]
fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn send_many(
    socket: &UdpSocket,
    data: &[u8],
    queued: &[(usize, usize, SocketAddr)],
) -> std::io::Result<usize> {
    let (start, len, to) = queued[0];
    socket.try_send_to(&data[start..start + len], to).map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_reaches_every_destination_in_one_call() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut batch = SendBatch::default();
        for round in 0..10u8 {
            for r in &receivers {
                batch.push(&[round; 100], r.local_addr().unwrap());
            }
        }
        batch.push(&[0; MAX_DATAGRAM + 1], receivers[0].local_addr().unwrap());
        assert_eq!(batch.oversized, 1);
        let done = batch.flush(&sender);
        assert_eq!((done.datagrams, done.bytes, done.dropped), (30, 3000, 0));
        assert!(done.calls <= 1 || cfg!(not(target_os = "linux")));
        assert!(batch.is_empty());
        let mut buf = [0u8; 200];
        for r in &receivers {
            for round in 0..10u8 {
                let (n, from) = r.recv_from(&mut buf).unwrap();
                assert_eq!((n, from), (100, sender.local_addr().unwrap()));
                assert_eq!(buf[0], round, "order kept per destination");
            }
        }
    }
}
