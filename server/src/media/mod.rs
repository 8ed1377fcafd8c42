//! The media path: WebRTC connections on a few worker threads (one UDP socket each), speakers'
//! Opus forwarded to listeners through loudest-speaker slots without decoding.
//!
//! [`Media`] is the handle the rest of the server holds. Rooms call it on their control path
//! (offers, send permissions, closes); it places connections on workers and passes messages.
//! Nothing here is on the per-packet path except inside [`worker`].

pub mod answer;
pub mod audio_level;
pub mod batch;
pub mod demux;
pub mod engine;
pub mod lean;
pub mod offer;
pub mod prefetch;
pub mod red;
pub mod relay;
pub mod rtp;
pub mod selector;
pub mod slot;
pub mod srtp;
pub mod stun;
pub mod tap;
pub mod tcp;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testkit;
pub mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{mpsc, oneshot};

use crate::config::MediaSettings;
use crate::control::{ParticipantId, RoomId};
use crate::metrics::MediaMetrics;
use relay::{InLink, OutLink, RelayOut};
use tap::RoomTap;
use worker::{ConnKey, Control, Report, RoomKey, RoomRef, Worker, WorkerLink, WorkerSetup};

/// Speakers' packets queued for one worker from the others before new ones are dropped.
const FANOUT_QUEUE: usize = 4096;
/// Kernel socket buffers: a burst of a few thousand datagrams must not overflow them.
const SOCKET_BUFFER_BYTES: i32 = 4 * 1024 * 1024;

/// A refusal from the media path; `code` is stable and goes to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaError {
    pub code: &'static str,
    pub message: String,
}

impl MediaError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<offer::OfferError> for MediaError {
    fn from(e: offer::OfferError) -> Self {
        MediaError::new(e.code(), e.message())
    }
}

/// Where the media sockets go and what they advertise.
#[derive(Clone, Debug)]
pub struct MediaOptions {
    pub settings: MediaSettings,
    /// The IP the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// First port; worker `i` takes `port + i`. `None`: any free port.
    pub port: Option<u16>,
    /// The IP put in ICE candidates (behind NAT: the public one).
    pub public_ip: Option<IpAddr>,
}

#[derive(Clone, Copy)]
struct Placed {
    key: ConnKey,
    worker: usize,
}

struct HubRoom {
    key: RoomKey,
    workers: Arc<AtomicU64>,
    tap: Arc<RoomTap>,
    relay: Arc<RelayOut>,
    /// Connections of the room per worker.
    counts: Vec<u32>,
    /// Links this node takes the room's audio from other nodes on.
    links_in: u32,
}

impl HubRoom {
    /// Nothing here needs the room any more: no connections, no links from other nodes.
    fn unused(&self) -> bool {
        self.links_in == 0 && self.counts.iter().all(|c| *c == 0)
    }
}

struct Inner {
    workers: Vec<WorkerLink>,
    load: Vec<AtomicUsize>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    conns: DashMap<(RoomId, ParticipantId), Placed>,
    rooms: DashMap<RoomId, HubRoom>,
    /// Taps of rooms that have one, whether or not the room has connections right now.
    taps: DashMap<RoomId, Arc<RoomTap>>,
    /// The links to other nodes of rooms that have some, whether or not the room has
    /// connections right now.
    relays: DashMap<RoomId, Arc<RelayOut>>,
    /// Links this node takes audio from other nodes on: their room and worker.
    links_in: DashMap<u32, (RoomId, usize)>,
    /// The workers' addresses as other nodes reach them (what the candidates advertise).
    advertised: Vec<SocketAddr>,
    next_key: AtomicU32,
    next_room: AtomicU32,
    slots: usize,
    max_connections: usize,
    /// Connections placed (the size of `conns`, kept exactly for the bound).
    placed: AtomicUsize,
}

/// The media service: cheap to clone, shared by rooms.
#[derive(Clone)]
pub struct Media {
    inner: Arc<Inner>,
}

impl Media {
    /// Binds the sockets, makes the certificate and starts the workers. The returned queue
    /// carries the workers' reports; hand it to [`Media::run_reports`].
    pub fn start(
        options: &MediaOptions,
        metrics: &MediaMetrics,
    ) -> anyhow::Result<(Media, mpsc::UnboundedReceiver<Report>)> {
        let count = options.settings.worker_count().clamp(1, 64);
        let certificate = engine::certificate()?;
        // One DTLS server configuration for the whole process, built once, when new
        // connections are to be lean.
        let lean = match options.settings.listener_transport {
            crate::config::ListenerTransport::Lean => Some(lean::Shared::new(&certificate)?),
            crate::config::ListenerTransport::Rtc => None,
        };
        let advertised_ip = advertised_ip(options);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let sources = Arc::new(AtomicU32::new(1));

        let mut sockets = Vec::with_capacity(count);
        for index in 0..count {
            let port = match options.port {
                Some(base) => base
                    .checked_add(index as u16)
                    .ok_or_else(|| anyhow::anyhow!("media port {base} + {index} is past 65535"))?,
                None => 0,
            };
            let socket = UdpSocket::bind(SocketAddr::new(options.bind_ip, port)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot bind media UDP socket {}:{port}: {e}",
                    options.bind_ip
                )
            })?;
            grow_buffers(&socket);
            // ICE-TCP at the same port number when ports are fixed (one number per worker to
            // open in a firewall, for both protocols), else any free port.
            let tcp = if options.settings.tcp {
                let tcp_port = if options.port.is_some() {
                    socket.local_addr()?.port()
                } else {
                    0
                };
                let listener =
                    std::net::TcpListener::bind(SocketAddr::new(options.bind_ip, tcp_port))
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "cannot bind media TCP socket {}:{tcp_port}: {e}",
                                options.bind_ip
                            )
                        })?;
                Some(listener)
            } else {
                None
            };
            sockets.push((socket, tcp));
        }
        let mut fanout_rx = Vec::with_capacity(count);
        let mut fanout_tx = Vec::with_capacity(count);
        for _ in 0..count {
            let (tx, rx) = mpsc::channel(FANOUT_QUEUE);
            fanout_tx.push(tx);
            fanout_rx.push(rx);
        }
        let (control_tx, control_rx): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let mut links = Vec::with_capacity(count);
        let mut advertised = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for (index, (((socket, tcp), fanout), control_rx)) in sockets
            .into_iter()
            .zip(fanout_rx)
            .zip(control_rx)
            .enumerate()
        {
            let addr = socket.local_addr()?;
            let tcp = match tcp {
                Some(listener) => {
                    let port = listener.local_addr()?.port();
                    Some((listener, SocketAddr::new(advertised_ip, port)))
                }
                None => None,
            };
            advertised.push(SocketAddr::new(advertised_ip, addr.port()));
            let setup = WorkerSetup {
                index,
                socket,
                tcp,
                advertised: SocketAddr::new(advertised_ip, addr.port()),
                certificate: certificate.clone(),
                lean: lean.clone(),
                slots: options.settings.slots,
                ice_disconnected: Duration::from_millis(options.settings.ice_disconnected_ms),
                ice_failed: Duration::from_millis(options.settings.ice_failed_ms),
                control: control_rx,
                fanout,
                peers: fanout_tx.clone(),
                peer_controls: control_tx.clone(),
                reports: reports_tx.clone(),
                metrics: metrics.clone(),
                sources: sources.clone(),
                red: options.settings.red,
            };
            let thread = std::thread::Builder::new()
                .name(format!("stoa-media-{index}"))
                .spawn(move || {
                    if let Err(e) = Worker::run(setup) {
                        tracing::error!(worker = index, error = %e, "media worker stopped");
                    }
                })?;
            threads.push(thread);
            links.push(WorkerLink {
                control: control_tx[index].clone(),
                fanout: fanout_tx[index].clone(),
                addr,
            });
        }
        tracing::info!(
            workers = count,
            addrs = ?links.iter().map(|l| l.addr).collect::<Vec<_>>(),
            advertised = %advertised_ip,
            transport = ?options.settings.listener_transport,
            "media workers started"
        );
        let media = Media {
            inner: Arc::new(Inner {
                load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
                workers: links,
                threads: Mutex::new(threads),
                conns: DashMap::new(),
                rooms: DashMap::new(),
                taps: DashMap::new(),
                relays: DashMap::new(),
                links_in: DashMap::new(),
                advertised,
                next_key: AtomicU32::new(1),
                next_room: AtomicU32::new(1),
                slots: options.settings.slots,
                max_connections: options.settings.max_connections,
                placed: AtomicUsize::new(0),
            }),
        };
        Ok((media, reports_rx))
    }

    /// Audio streams every connection receives; clients offer this many audio sections.
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// The workers' UDP addresses (as bound).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.inner.workers.iter().map(|w| w.addr).collect()
    }

    /// Whether `participant` has a media connection in `room` here (connecting included).
    pub fn has_connection(&self, room: &RoomId, participant: &ParticipantId) -> bool {
        self.inner
            .conns
            .contains_key(&(room.clone(), participant.clone()))
    }

    /// Connections placed on workers (including ones still connecting).
    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// Answers a participant's offer: opens their connection, or renegotiates it. The room
    /// passes the participant's standing: `on_stage` gives the connection a receiving path,
    /// `may_send` lets what arrives on it be heard.
    pub fn offer(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        sdp: String,
        on_stage: bool,
        may_send: bool,
        reply: oneshot::Sender<Result<String, MediaError>>,
    ) {
        let offer = match offer::check_offer(sdp) {
            Ok(offer) => offer,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let placed = match self.place(room, participant) {
            Ok(placed) => placed,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let Some(room_ref) = self.room_ref(room) else {
            let _ = reply.send(Err(MediaError::new("media_unavailable", "try again")));
            return;
        };
        let sent = self.inner.workers[placed.worker]
            .control
            .send(Control::Offer {
                key: placed.key,
                room: room_ref,
                participant: participant.clone(),
                offer: Box::new(offer),
                on_stage,
                may_send,
                reply,
            });
        if let Err(mpsc::error::SendError(Control::Offer { reply, .. })) = sent {
            let _ = reply.send(Err(MediaError::new(
                "media_unavailable",
                "the media service is stopping",
            )));
        }
    }

    /// Whether what this participant sends may be heard now.
    pub fn set_send_permission(&self, room: &RoomId, participant: &ParticipantId, allowed: bool) {
        if let Some(placed) = self
            .inner
            .conns
            .get(&(room.clone(), participant.clone()))
            .map(|p| *p)
        {
            let _ = self.inner.workers[placed.worker]
                .control
                .send(Control::Permission {
                    key: placed.key,
                    may_send: allowed,
                });
        }
    }

    /// Closes a participant's connection and frees its state.
    pub fn close(&self, room: &RoomId, participant: &ParticipantId) {
        if let Some((_, placed)) = self
            .inner
            .conns
            .remove(&(room.clone(), participant.clone()))
        {
            self.unplace(room, placed);
            let _ = self.inner.workers[placed.worker]
                .control
                .send(Control::Close { key: placed.key });
        }
    }

    /// Closes every connection of a room.
    pub fn close_room(&self, room: &RoomId) {
        let participants: Vec<ParticipantId> = self
            .inner
            .conns
            .iter()
            .filter(|e| &e.key().0 == room)
            .map(|e| e.key().1.clone())
            .collect();
        for participant in participants {
            self.close(room, &participant);
        }
    }

    /// Connection counts from the workers themselves.
    pub async fn worker_stats(&self) -> Vec<worker::WorkerStats> {
        let mut all = Vec::new();
        for link in &self.inner.workers {
            let (reply, answer) = oneshot::channel();
            if link.control.send(Control::Stats { reply }).is_ok()
                && let Ok(stats) = answer.await
            {
                all.push(stats);
            }
        }
        all
    }

    /// Stops the workers (their connections close) and waits for their threads.
    pub async fn stop(&self) {
        for link in &self.inner.workers {
            let _ = link.control.send(Control::Stop);
        }
        let threads: Vec<_> = self
            .inner
            .threads
            .lock()
            .expect("poisoned")
            .drain(..)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Carries the workers' reports to the rooms until the workers are gone: speaking levels
    /// (merged across workers, since a room's speakers may sit on different ones) and
    /// connections a worker closed by itself.
    pub async fn run_reports(
        self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        speaking: impl Fn(&RoomId, Vec<(ParticipantId, u8)>, Instant),
    ) {
        let mut levels: HashMap<RoomId, HashMap<usize, Vec<(ParticipantId, u8)>>> = HashMap::new();
        while let Some(report) = reports.recv().await {
            match report {
                Report::Levels {
                    worker,
                    room,
                    levels: heard,
                    heard: at,
                } => {
                    let per_worker = levels.entry(room.clone()).or_default();
                    if heard.is_empty() {
                        per_worker.remove(&worker);
                    } else {
                        per_worker.insert(worker, heard);
                    }
                    let mut merged: Vec<(ParticipantId, u8)> =
                        per_worker.values().flatten().cloned().collect();
                    merged.sort_by_key(|(_, level)| *level);
                    if per_worker.is_empty() {
                        levels.remove(&room);
                    }
                    speaking(&room, merged, at);
                }
                Report::Closed {
                    key,
                    room,
                    participant,
                } => {
                    let removed = self
                        .inner
                        .conns
                        .remove_if(&(room.clone(), participant), |_, placed| placed.key == key);
                    if let Some((_, placed)) = removed {
                        self.unplace(&room, placed);
                    }
                }
            }
        }
    }

    fn place(&self, room: &RoomId, participant: &ParticipantId) -> Result<Placed, MediaError> {
        let key = (room.clone(), participant.clone());
        if let Some(placed) = self.inner.conns.get(&key) {
            return Ok(*placed);
        }
        // Reserve a place first, atomically, so concurrent rooms cannot overshoot the bound.
        let max = self.inner.max_connections;
        let reserved = self
            .inner
            .placed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(MediaError::new(
                "media_full",
                "the server carries as many audio connections as it is configured for",
            ));
        }
        let worker = (0..self.inner.load.len())
            .min_by_key(|&i| self.inner.load[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        let placed = Placed {
            key: ConnKey(self.inner.next_key.fetch_add(1, Ordering::Relaxed)),
            worker,
        };
        // A room offers one message at a time, so nobody races this insert for the same
        // participant; if something did, the first placement stands.
        match self.inner.conns.entry(key) {
            Entry::Occupied(e) => {
                self.inner.placed.fetch_sub(1, Ordering::AcqRel);
                return Ok(*e.get());
            }
            Entry::Vacant(e) => {
                e.insert(placed);
            }
        }
        self.inner.load[worker].fetch_add(1, Ordering::Relaxed);
        let mut hub_room = self.hub_room(room);
        hub_room.counts[worker] += 1;
        hub_room.workers.fetch_or(1 << worker, Ordering::Relaxed);
        Ok(placed)
    }

    fn unplace(&self, room: &RoomId, placed: Placed) {
        self.inner.placed.fetch_sub(1, Ordering::AcqRel);
        self.inner.load[placed.worker].fetch_sub(1, Ordering::Relaxed);
        let empty = match self.inner.rooms.get_mut(room) {
            Some(mut hub_room) => {
                let count = &mut hub_room.counts[placed.worker];
                *count = count.saturating_sub(1);
                if *count == 0 {
                    hub_room
                        .workers
                        .fetch_and(!(1 << placed.worker), Ordering::Relaxed);
                }
                hub_room.unused()
            }
            None => false,
        };
        if empty {
            self.forget_if_unused(room);
        }
    }

    /// The room's entry, made when it has none.
    fn hub_room(&self, room: &RoomId) -> dashmap::mapref::one::RefMut<'_, RoomId, HubRoom> {
        let workers = self.inner.workers.len();
        self.inner
            .rooms
            .entry(room.clone())
            .or_insert_with(|| HubRoom {
                key: RoomKey(self.inner.next_room.fetch_add(1, Ordering::Relaxed)),
                workers: Arc::new(AtomicU64::new(0)),
                tap: self.inner.taps.entry(room.clone()).or_default().clone(),
                relay: self.inner.relays.entry(room.clone()).or_default().clone(),
                counts: vec![0; workers],
                links_in: 0,
            })
    }

    /// Drops the room's entry, tap and links out once nothing uses them.
    fn forget_if_unused(&self, room: &RoomId) {
        self.inner.rooms.remove_if(room, |_, r| r.unused());
        if !self.inner.rooms.contains_key(room) {
            self.inner.taps.remove_if(room, |_, t| !t.attached());
            self.inner.relays.remove_if(room, |_, r| r.is_empty());
        }
    }

    /// The workers' addresses as other nodes reach them: worker `i`'s is where relayed
    /// datagrams of lane `i` leave from, and where links granted on it take them.
    pub fn relay_addrs(&self) -> &[SocketAddr] {
        &self.inner.advertised
    }

    /// `room`'s speakers' audio also goes to another node, on `link` (made with the key both
    /// nodes derived for it, `relay::derive_key`). Refused if the room has a link with that
    /// number already.
    pub fn relay_to(&self, room: &RoomId, link: OutLink) -> Result<(), MediaError> {
        let relay = self.inner.relays.entry(room.clone()).or_default().clone();
        match relay.add(link) {
            true => Ok(()),
            false => Err(MediaError::new(
                "relay_link_taken",
                "the room already sends on a link with this number",
            )),
        }
    }

    /// Stops sending `room`'s audio on `link`; whether it was sent.
    pub fn stop_relay_to(&self, room: &RoomId, link: u32) -> bool {
        let removed = self
            .inner
            .relays
            .get(room)
            .map(|r| r.clone())
            .is_some_and(|r| r.remove(link));
        self.forget_if_unused(room);
        removed
    }

    /// Takes `room`'s audio from another node on `link`, on the least loaded worker; the
    /// address the other node must send to. Refused if the link's number is taken.
    pub fn accept_relay(&self, room: &RoomId, link: InLink) -> Result<SocketAddr, MediaError> {
        let worker = (0..self.inner.load.len())
            .min_by_key(|&i| self.inner.load[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        match self.inner.links_in.entry(link.link) {
            Entry::Occupied(_) => {
                return Err(MediaError::new(
                    "relay_link_taken",
                    "a link with this number is open on this node",
                ));
            }
            Entry::Vacant(e) => {
                e.insert((room.clone(), worker));
            }
        }
        let room_ref = {
            let mut hub_room = self.hub_room(room);
            hub_room.links_in += 1;
            RoomRef {
                key: hub_room.key,
                id: room.clone(),
                workers: hub_room.workers.clone(),
                tap: hub_room.tap.clone(),
                relay: hub_room.relay.clone(),
            }
        };
        let _ = self.inner.workers[worker].control.send(Control::RelayIn {
            room: room_ref,
            link: Box::new(link),
        });
        Ok(self.inner.advertised[worker])
    }

    /// Stops taking audio on `link`: what it brought leaves the room. Whether it was open.
    pub fn close_relay(&self, link: u32) -> bool {
        let Some((_, (room, worker))) = self.inner.links_in.remove(&link) else {
            return false;
        };
        let _ = self.inner.workers[worker]
            .control
            .send(Control::RelayInClose { link });
        if let Some(mut hub_room) = self.inner.rooms.get_mut(&room) {
            hub_room.links_in = hub_room.links_in.saturating_sub(1);
        }
        self.forget_if_unused(&room);
        true
    }

    /// The room's tap, for the mixer: [`RoomTap::attach`] a queue to receive its speakers'
    /// packets. [`Media::untap`] when done.
    pub fn tap(&self, room: &RoomId) -> Arc<RoomTap> {
        self.inner.taps.entry(room.clone()).or_default().clone()
    }

    /// Detaches the room's tap and forgets it if the room has no connections.
    pub fn untap(&self, room: &RoomId) {
        if let Some(tap) = self.inner.taps.get(room).map(|t| t.clone()) {
            tap.detach();
        }
        if !self.inner.rooms.contains_key(room) {
            self.inner.taps.remove_if(room, |_, t| !t.attached());
        }
    }

    fn room_ref(&self, room: &RoomId) -> Option<RoomRef> {
        self.inner.rooms.get(room).map(|r| RoomRef {
            key: r.key,
            id: room.clone(),
            workers: r.workers.clone(),
            tap: r.tap.clone(),
            relay: r.relay.clone(),
        })
    }
}

/// The address put in candidates: the configured public IP, else the bind IP, else (bound to
/// every interface) the address of the interface with the default route, else loopback.
fn advertised_ip(options: &MediaOptions) -> IpAddr {
    if let Some(ip) = options.public_ip {
        return ip;
    }
    if !options.bind_ip.is_unspecified() {
        return options.bind_ip;
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() => addr.ip(),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

fn grow_buffers(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            let value: libc::c_int = SOCKET_BUFFER_BYTES;
            // SAFETY: a valid socket and a c_int option value of the size given.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, SOCKET_BUFFER_BYTES);
}

/// Random 32 bits from the OS (SSRCs, initial sequence numbers and timestamps).
pub(crate) fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random generator is unavailable");
    u32::from_ne_bytes(bytes)
}

/// Random letters and digits (ICE credentials allow only those and `+/`).
pub(crate) fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut bytes).expect("the OS random generator is unavailable");
        // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
        for &b in bytes.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[usize::from(b % 62)] as char);
        }
    }
    out
}
