//! Many `rtc` sans-IO WebRTC clients driven from one thread, for tools that put load on a
//! server (Stoa's load generator, soak tool and media benchmark): [`Peers`] owns their peer
//! connections, one UDP socket each, an epoll set and a timer heap; what a tool does with the
//! traffic lives in its [`Observer`]. Nothing here knows about signaling, rooms or reports: a
//! peer's offer goes out through whatever signaling the tool uses, and its answer comes back to
//! [`Peers::answer`]. Linux only (epoll, `recvmmsg`, kernel receive stamps).
//!
//! A [`MemoryPair`] connects two `rtc` peer connections with no sockets at all, for measuring
//! the library's own cost.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::crypto::SignatureScheme;
use rtc::interceptor::{ReceiverReportBuilder, Registry, SenderReportBuilder, Slot};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::Error;
use crate::audio::audio_level;
use crate::media::{AUDIO_LEVEL_URI, OPUS_PT, media_engine_with, microphone_track};

mod pair;

pub use pair::MemoryPair;
/// Datagrams taken from one socket per `recvmmsg`.
const RECV_BATCH: usize = 8;
/// Between two connectivity checks of a peer's ICE agent (RFC 8445's Ta).
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
const MAX_DATAGRAM: usize = 2048;
/// Receive buffer asked for each client socket: a second of audio for a listener even when the
/// client thread falls behind, so that a slow client shows as delay in its own numbers first.
const SOCKET_RCVBUF: libc::c_int = 512 * 1024;

/// An epoll set of UDP sockets, each registered with a token (the client's index).
pub struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// An empty set.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }

    /// Watches `fd` for reading; `wait` reports it as `token`.
    pub fn add(&self, fd: RawFd, token: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token as u64,
        };
        // SAFETY: valid descriptors and event pointer.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (at most a second) and puts the tokens of the readable
    /// descriptors into `ready`.
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<usize>) {
        ready.clear();
        let ms = timeout.as_micros().div_ceil(1000).min(1000) as i32;
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        ready.extend(
            self.events
                .iter()
                .take(n.max(0) as usize)
                .map(|e| e.u64 as usize),
        );
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// What a browser offers for Stoa, minus the extras: Opus 111 and the audio-level extension
/// ([`media_engine`](crate::media::media_engine)), with receiver and sender reports.
pub fn client_engine() -> Result<(MediaEngine, Registry), Error> {
    client_engine_with(false)
}

/// [`client_engine`], offering RED over Opus too when `red` (PT 63, as Chromium does).
pub fn client_engine_with(red: bool) -> Result<(MediaEngine, Registry), Error> {
    let registry = Registry::new()
        .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build());
    Ok((media_engine_with(red)?, registry))
}

/// CLOCK_REALTIME in ns: the clock of the kernel's `SO_TIMESTAMPNS` receive stamps.
pub fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Raises this process's open-file limit as far as it goes (tens of thousands of sockets);
/// returns the soft limit now in force. Children started afterwards inherit it.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer / in pointer to plain structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        // With CAP_SYS_RESOURCE the hard limit can rise too; without, only the soft one.
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max.max(262_144),
            rlim_max: limit.rlim_max.max(262_144),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Turns on kernel receive stamps (CLOCK_REALTIME) for a socket.
pub fn enable_timestamps(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket and option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking loopback (or `ip`) UDP socket with a roomy receive buffer and, if asked,
/// kernel receive stamps.
pub fn client_socket(ip: IpAddr, timestamps: bool) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = set_int_option(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        SOCKET_RCVBUF,
    );
    if timestamps {
        enable_timestamps(socket.as_raw_fd())?;
    }
    Ok(socket)
}

/// Buffers for `recvmmsg`: up to 8 datagrams from one socket per call, with their
/// senders and kernel receive stamps.
pub struct RecvBatch {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
    iovs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    count: usize,
}

// SAFETY: the raw pointers inside `iovs` and `headers` point into this struct's own heap
// buffers, which never move or resize after construction.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        let mut batch = RecvBatch {
            data: vec![0; RECV_BATCH * MAX_DATAGRAM],
            // SAFETY: plain C structs, all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            controls: vec![[0; 8]; RECV_BATCH],
            iovs: Vec::with_capacity(RECV_BATCH),
            headers: Vec::with_capacity(RECV_BATCH),
            lens: vec![0; RECV_BATCH],
            count: 0,
        };
        for chunk in batch.data.chunks_mut(MAX_DATAGRAM) {
            batch.iovs.push(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            });
        }
        for i in 0..RECV_BATCH {
            // SAFETY: all-zero mmsghdr is valid; the pointers set below point into `batch`'s
            // heap buffers.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_iov = &mut batch.iovs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = batch.controls[i].as_mut_ptr().cast();
            batch.headers.push(header);
        }
        batch
    }
}

impl RecvBatch {
    /// Reads what `fd` holds, without blocking: the number of datagrams (0 when none).
    pub fn recv(&mut self, fd: RawFd) -> usize {
        for header in &mut self.headers {
            // The kernel shrinks these to what it wrote; give every slot its full room again.
            header.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
        }
        // SAFETY: `headers` holds RECV_BATCH valid message headers whose buffers outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.count = n.max(0) as usize;
        for i in 0..self.count {
            self.lens[i] = self.headers[i].msg_len as usize;
        }
        self.count
    }

    /// Datagram `i` of the last read: its bytes, its sender and its receive stamp (realtime ns;
    /// the time of reading when the socket has no stamps).
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr, i64) {
        let data = &self.data[i * MAX_DATAGRAM..i * MAX_DATAGRAM + self.lens[i]];
        let msg = &self.headers[i].msg_hdr;
        let mut stamp = None;
        // SAFETY: the control buffer was filled by the kernel for this header; the CMSG macros
        // walk within `msg_controllen`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    stamp = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                }
                cmsg = libc::CMSG_NXTHDR(msg, cmsg);
            }
        }
        (
            data,
            sockaddr(&self.addrs[i]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            stamp.unwrap_or_else(realtime_ns),
        )
    }
}

fn sockaddr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family says which struct the storage holds; unaligned reads of plain data.
    unsafe {
        match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let a: libc::sockaddr_in =
                    std::ptr::read_unaligned((addr as *const libc::sockaddr_storage).cast());
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                let a: libc::sockaddr_in6 =
                    std::ptr::read_unaligned((addr as *const libc::sockaddr_storage).cast());
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                    u16::from_be(a.sin6_port),
                ))
            }
            _ => None,
        }
    }
}

/// Adds a host candidate at `addr` (UDP) to an `rtc` connection's local description: in
/// ICE-lite, and for a client that sends no trickle, the one candidate it has.
pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), Error> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    Ok(())
}

/// What a tool does with its peers' traffic. Every method has a do-nothing default.
pub trait Observer {
    /// A datagram a peer's socket received, before `rtc` sees it, with its kernel receive stamp
    /// (realtime ns). Return `false` to keep it from `rtc`.
    fn datagram(&mut self, _peer: usize, _data: &[u8], _stamp: i64) -> bool {
        true
    }
    /// An RTP packet `rtc` decrypted for a peer, with the stamp of the datagram that carried it.
    fn rtp(&mut self, _peer: usize, _packet: &rtc::rtp::Packet, _stamp: i64) {}
    /// A peer's connection reached `connected` (once).
    fn connected(&mut self, _peer: usize) {}
    /// A peer's connection reached `failed` or `closed` (once): which of the two is `state`.
    fn ended(&mut self, _peer: usize, _state: RTCPeerConnectionState) {}
}

impl Observer for () {}

/// A peer's outgoing audio track: the RTP state a microphone keeps.
pub struct SendTrack {
    sender: RTCRtpSenderId,
    /// The track's SSRC.
    pub ssrc: u32,
    level_id: Option<u8>,
    /// Sequence number of the next packet.
    pub seq: u16,
    /// RTP timestamp of the next packet.
    pub timestamp: u32,
    /// Packets `rtc` took.
    pub sent: u64,
    /// Packets `rtc` refused (not connected yet, or the track is gone).
    pub refused: u64,
}

/// One client: its peer connection and socket.
pub struct Peer {
    /// The connection (sans-IO: [`Peers`] feeds and drains it).
    pub pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    /// The answer was applied.
    pub answered: bool,
    /// The connection reached `connected` and has not ended.
    pub connected: bool,
    /// The connection failed or was closed.
    pub failed: bool,
    scheduled: Option<Instant>,
    /// The microphone, for a peer opened as a speaker.
    pub track: Option<SendTrack>,
    /// Datagrams the socket would not send.
    pub send_errors: u64,
}

/// Every client of a tool, driven by one thread: epoll over their sockets, a timer heap for
/// their deadlines, and the rule of sans-IO: after every input, drain the connection.
pub struct Peers {
    /// By index; `None` once closed (indices are never reused).
    list: Vec<Option<Peer>>,
    poller: Poller,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    ready: Vec<usize>,
    batch: RecvBatch,
    cert: RTCCertificate,
    bind_ip: IpAddr,
    timestamps: bool,
    /// New clients offer RED over Opus (see [`Peers::offer_red`]).
    red: bool,
}

impl Peers {
    /// Clients opened from now on offer RED over Opus beside Opus, so the server sends them RED.
    pub fn offer_red(&mut self, red: bool) {
        self.red = red;
    }

    /// Clients whose sockets bind to `bind_ip`; `timestamps` turns on kernel receive stamps.
    pub fn new(bind_ip: IpAddr, timestamps: bool, name: &str) -> Result<Self, Error> {
        let cert = certificate(name)?;
        Ok(Peers {
            list: Vec::new(),
            poller: Poller::new()?,
            timers: BinaryHeap::new(),
            ready: Vec::with_capacity(1024),
            batch: RecvBatch::default(),
            cert,
            bind_ip,
            timestamps,
            red: false,
        })
    }

    /// Peers ever opened (closed ones included: indices are never reused).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No peer was ever opened.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Peer `index`, unless it was closed.
    pub fn get(&self, index: usize) -> Option<&Peer> {
        self.list.get(index)?.as_ref()
    }

    /// The peers not closed, in the order they were opened.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.list.iter().flatten()
    }

    /// Every peer not closed is connected.
    pub fn all_connected(&self) -> bool {
        self.iter().all(|p| p.connected)
    }

    /// A new client with `slots` audio sections (the first sendrecv with a track when
    /// `speaker`, the others recvonly), its own socket and one host candidate. Returns its index
    /// and its offer.
    pub fn open(&mut self, speaker: bool, slots: usize) -> Result<(usize, String), Error> {
        let now = Instant::now();
        let socket = client_socket(self.bind_ip, self.timestamps)?;
        let local = socket.local_addr()?;
        let (engine, registry) = client_engine_with(self.red)?;
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![self.cert.clone()])
                    .build(),
            )
            // Connectivity checks paced as RFC 8445 §14.2 recommends (Ta = 50 ms) and as
            // browsers pace them, not `rtc`'s 200 ms: the client nominates, and a slower pace
            // would add whole ticks to every join against an ICE-lite server.
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_ice_connection_attempts(Some(CHECK_INTERVAL), None)
                    .build(),
            )
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(now)?;
        let mut track = None;
        let mut recvonly = slots;
        if speaker {
            let ssrc: u32 = rand::random();
            let sender = pc.add_track(microphone_track(
                "mic".to_owned(),
                "mic".to_owned(),
                "mic".to_owned(),
                ssrc,
            ))?;
            track = Some(SendTrack {
                sender,
                ssrc,
                level_id: None,
                seq: rand::random(),
                timestamp: rand::random(),
                sent: 0,
                refused: 0,
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
        add_host_candidate(&mut pc, local)?;
        let sdp = pc
            .local_description()
            .ok_or_else(|| Error::WebRtc("no local description".to_owned()))?
            .sdp
            .clone();
        let index = self.list.len();
        self.poller.add(socket.as_raw_fd(), index)?;
        self.list.push(Some(Peer {
            pc,
            socket,
            local,
            answered: false,
            connected: false,
            failed: false,
            scheduled: None,
            track,
            send_errors: 0,
        }));
        Ok((index, sdp))
    }

    /// Closes client `index`: with a `goodbye`, its connection says so (DTLS close) before the
    /// socket closes; without, it vanishes like a peer whose network went away. Its index is
    /// not reused.
    pub fn close(&mut self, index: usize, goodbye: bool, observer: &mut impl Observer) {
        if goodbye && let Some(Some(peer)) = self.list.get_mut(index) {
            let _ = peer.pc.close();
            self.drain(index, observer);
        }
        if let Some(slot) = self.list.get_mut(index) {
            // Dropping the socket closes it, which takes it out of the epoll set too.
            *slot = None;
        }
    }

    /// The server's answer for client `index`; starts its ICE and DTLS.
    pub fn answer(
        &mut self,
        index: usize,
        sdp: String,
        observer: &mut impl Observer,
    ) -> Result<(), Error> {
        let peer = self
            .list
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or_else(|| Error::Usage(format!("no client {index}")))?;
        peer.pc
            .set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp)?)?;
        peer.answered = true;
        if let Some(track) = peer.track.as_mut() {
            track.level_id = peer.pc.rtp_sender(track.sender).and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == AUDIO_LEVEL_URI)
                    .map(|h| h.id as u8)
            });
        }
        self.drain(index, observer);
        Ok(())
    }

    /// Sends one Opus packet on client `index`'s track: `payload`, the RFC 6464 `level` byte
    /// (if the extension was negotiated), then advances the timestamp by `samples`. Returns
    /// whether `rtc` took it.
    pub fn send_rtp(
        &mut self,
        index: usize,
        payload: Bytes,
        level: Option<u8>,
        samples: u32,
        observer: &mut impl Observer,
    ) -> bool {
        let Some(Some(peer)) = self.list.get_mut(index) else {
            return false;
        };
        let Some(track) = peer.track.as_mut() else {
            return false;
        };
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: track.sent == 0,
            payload_type: OPUS_PT,
            sequence_number: track.seq,
            timestamp: track.timestamp,
            ssrc: track.ssrc,
            ..Default::default()
        };
        if let (Some(id), Some(level)) = (track.level_id, level) {
            let _ = header.set_extension(id, Bytes::copy_from_slice(&[level]));
        }
        track.seq = track.seq.wrapping_add(1);
        track.timestamp = track.timestamp.wrapping_add(samples);
        let written = peer
            .pc
            .rtp_sender(track.sender)
            .map(|mut s| s.write_rtp(Instant::now(), rtc::rtp::Packet { header, payload }));
        let ok = matches!(written, Some(Ok(())));
        if ok {
            track.sent += 1;
        } else {
            track.refused += 1;
        }
        self.drain(index, observer);
        ok
    }

    /// Everything a client has queued: datagrams out, state changes, received media, and its
    /// next deadline.
    fn drain(&mut self, index: usize, observer: &mut impl Observer) {
        let Some(Some(peer)) = self.list.get_mut(index) else {
            return;
        };
        while let Some(out) = peer.pc.poll_write() {
            if peer
                .socket
                .send_to(&out.message, out.transport.peer_addr)
                .is_err()
            {
                peer.send_errors += 1;
            }
        }
        while let Some(event) = peer.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                match state {
                    RTCPeerConnectionState::Connected if !peer.connected && !peer.failed => {
                        peer.connected = true;
                        observer.connected(index);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if !peer.failed =>
                    {
                        peer.failed = true;
                        peer.connected = false;
                        observer.ended(index, state);
                    }
                    _ => {}
                }
            }
        }
        // Anything decrypted outside a datagram's turn (none expected) has no stamp of its own.
        Self::read_media(peer, index, realtime_ns(), observer);
        if let Some(at) = peer.pc.poll_timeout()
            && peer.scheduled.is_none_or(|queued| at < queued)
        {
            peer.scheduled = Some(at);
            self.timers.push(Reverse((at, index)));
        }
    }

    fn read_media(peer: &mut Peer, index: usize, stamp: i64, observer: &mut impl Observer) {
        while let Some(message) = peer.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message.message {
                observer.rtp(index, &packet, stamp);
            }
        }
    }

    /// One turn: waits for datagrams until `until` (or the next client deadline), feeds them in,
    /// then runs the deadlines that are due.
    pub fn turn(&mut self, until: Instant, observer: &mut impl Observer) {
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
            // Bounded, so that one flooded socket cannot starve the others.
            for _ in 0..8 {
                let Some(Some(peer)) = self.list.get(index) else {
                    break;
                };
                let n = self.batch.recv(peer.socket.as_raw_fd());
                for i in 0..n {
                    let (data, from, stamp) = self.batch.get(i);
                    if !observer.datagram(index, data, stamp) {
                        continue;
                    }
                    let Some(Some(peer)) = self.list.get_mut(index) else {
                        break;
                    };
                    let message = TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: peer.local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(data),
                    };
                    let _ = peer.pc.handle_read(message);
                    // Read what it decrypted now: the receive stamp belongs to this datagram.
                    Self::read_media(peer, index, stamp, observer);
                    fed = true;
                }
                if n < RECV_BATCH {
                    break;
                }
            }
            if fed {
                self.drain(index, observer);
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
            let Some(Some(peer)) = self.list.get_mut(index) else {
                continue;
            };
            if peer.scheduled != Some(at) {
                continue;
            }
            peer.scheduled = None;
            let _ = peer.pc.handle_timeout(now);
            self.drain(index, observer);
        }
    }
}

/// A fresh ECDSA P-256 certificate for DTLS, named `name`: one serves every peer of a tool.
pub fn certificate(name: &str) -> Result<RTCCertificate, Error> {
    let provider = rtc::crypto::default_provider()
        .map_err(|e| Error::WebRtc(format!("no crypto provider: {e:?}")))?;
    RTCCertificate::generate(
        provider.crypto(),
        SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec![name.to_owned()]).map_err(|e| Error::WebRtc(e.to_string()))?,
    )
    .map_err(Error::from)
}

/// A microphone's encoder for [`Peers::send_rtp`]: 20 ms of 48 kHz mono PCM in, an Opus
/// payload and its RFC 6464 audio-level byte (voice bit and level) out.
pub struct Voice {
    encoder: opus::Encoder,
    out: Vec<u8>,
}

impl Voice {
    /// A plain Opus VoIP encoder (no in-band FEC: the tools measure loss, not hide it).
    pub fn new() -> Result<Self, Error> {
        Ok(Voice {
            encoder: opus::Encoder::new(
                crate::audio::SAMPLE_RATE,
                opus::Channels::Mono,
                opus::Application::Voip,
            )
            .map_err(|e| Error::Usage(format!("no Opus encoder: {e}")))?,
            out: vec![0; 1500],
        })
    }

    /// Encodes one frame of [`FRAME_SAMPLES`](crate::audio::FRAME_SAMPLES) samples: the
    /// payload and the audio-level byte, or `None` if Opus refused the frame.
    pub fn encode(&mut self, pcm: &[i16]) -> Option<(Bytes, u8)> {
        let len = self.encoder.encode(pcm, &mut self.out).ok()?;
        let (level, voice) = audio_level(pcm);
        Some((
            Bytes::copy_from_slice(&self.out[..len]),
            level | if voice { 0x80 } else { 0 },
        ))
    }
}

/// Packets received on one RTP stream and the span of sequence numbers they cover (extended
/// across wraps), so loss is read from gaps.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqSpan {
    /// Packets recorded.
    pub packets: u64,
    first: Option<i64>,
    highest: i64,
}

impl SeqSpan {
    /// Records one packet's sequence number.
    pub fn record(&mut self, seq: u16) {
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

    /// Sequence numbers from the first to the highest seen.
    pub fn span(&self) -> u64 {
        self.first.map_or(0, |f| (self.highest - f + 1) as u64)
    }

    /// Sequence numbers in the span that never arrived.
    pub fn lost(&self) -> u64 {
        self.span().saturating_sub(self.packets)
    }
}
