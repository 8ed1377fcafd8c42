//! Audio between the nodes of a cluster: a room's speakers' packets carried from the node they
//! arrive at to each other node that serves the room, once per node, whatever the number of
//! listeners there (node → worker → listener is the fan-out tree).
//!
//! A *link* carries one room from one node to another. The receiving node grants it: a link
//! number, the worker address to send to and a random nonce. Both ends derive the link's
//! AES-128-GCM key from the secret the cluster's nodes share and the grant ([`derive_key`]), so
//! the key never travels. Every datagram:
//!
//! ```text
//!  0      1      2            6              14                     len-16    len
//!  | 0xE5 | lane | link (u32) | counter (u64) | sealed body ...      | tag (16) |
//! ```
//!
//! The first 14 bytes are authenticated, not encrypted. `lane` is the sending worker's index:
//! each worker counts its own datagrams, and the nonce is `lane ‖ 0 0 0 ‖ counter`, so no nonce
//! repeats under a key. The receiver takes lane `i` only from the address its grant names for
//! worker `i` of the sending node, and each counter once (a window of 64 per lane): a packet
//! from anywhere else, forged, or replayed is refused before anything reads it.
//!
//! The sealed body is a speaker's packet or a source's end:
//!
//! ```text
//! 1 (packet): source u32 | seq u16 | timestamp u32 | flags u8 | level u8 | frames u8
//!             | frames × (timestamp u32, length u16) | the frames | the Opus payload
//! 2 (forget): source u32
//! ```
//!
//! `flags`: bit 0 the RTP marker, bit 1 a level is present (`level` holds RFC 6464's byte:
//! voice activity in bit 7). The frames are what RED listeners get repeated (newest first).
//! 0xE5 is outside every range RFC 7983 assigns on a media socket, so relayed datagrams share
//! the workers' sockets with WebRTC.
//!
//! Sealing and opening write in place into buffers the caller owns: nothing is allocated.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;

use super::audio_level::AudioLevel;
use super::red::MAX_REDUNDANCY;

/// The first byte of a relayed datagram.
pub const MARKER: u8 = 0xE5;
/// Marker, lane, link, counter.
pub const HEADER: usize = 14;
/// AES-GCM's tag.
pub const TAG: usize = 16;
/// Lanes a link has: one per worker of the sending node (`Media` starts at most 64).
pub const MAX_LANES: usize = 64;

const KIND_PACKET: u8 = 1;
const KIND_FORGET: u8 = 2;
/// A packet's body before its frames' table.
const PACKET_FIXED: usize = 1 + 4 + 2 + 4 + 1 + 1 + 1;
const FRAME_ENTRY: usize = 4 + 2;
const FLAG_MARKER: u8 = 1;
const FLAG_LEVEL: u8 = 2;

/// The link's key, from the cluster's shared secret and everything the grant says: the room,
/// the sending and the receiving node, the link number and the grant's random nonce. A key is
/// never used for two links, and nobody without the secret can make one.
pub fn derive_key(
    secret: &[u8],
    room: &str,
    from_node: &str,
    to_node: &str,
    link: u32,
    nonce: &[u8; 16],
) -> [u8; 16] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(b"stoa relay v1\0");
    for field in [room.as_bytes(), from_node.as_bytes(), to_node.as_bytes()] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field);
    }
    mac.update(&link.to_be_bytes());
    mac.update(nonce);
    let full = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    key
}

/// The link a relayed datagram says it is on, read before anything is trusted.
pub fn link_of(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < HEADER + 1 + TAG || datagram[0] != MARKER {
        return None;
    }
    Some(u32::from_be_bytes(datagram[2..6].try_into().ok()?))
}

fn aead_key(key: &[u8; 16]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("a 16-byte key"))
}

fn nonce(lane: u8, counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[0] = lane;
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The sending end of a link: where its datagrams go and the key they are sealed with. Shared
/// by the sending node's workers, each sealing on its own lane.
pub struct OutLink {
    pub link: u32,
    pub to: SocketAddr,
    /// The receiving node (its name's hash): a packet that came from there is not sent back.
    pub peer: u64,
    key: LessSafeKey,
    /// The next counter of each lane; each is only ever advanced by its own worker.
    counters: Box<[AtomicU64]>,
}

impl OutLink {
    pub fn new(link: u32, to: SocketAddr, peer: u64, key: &[u8; 16]) -> Self {
        OutLink {
            link,
            to,
            peer,
            key: aead_key(key),
            counters: (0..MAX_LANES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Seals a speaker's packet into `out`; the datagram's length, or `None` if it would not
    /// fit (then nothing is sent). Frames that do not fit are left out before the payload is.
    pub fn seal_packet(&self, lane: u8, packet: &PacketRef<'_>, out: &mut [u8]) -> Option<usize> {
        let mut frames = packet.frames.iter().flatten().count().min(MAX_REDUNDANCY);
        let size = |frames: usize| {
            HEADER
                + PACKET_FIXED
                + frames * FRAME_ENTRY
                + packet
                    .frames
                    .iter()
                    .flatten()
                    .take(frames)
                    .map(|f| f.1.len())
                    .sum::<usize>()
                + packet.payload.len()
                + TAG
        };
        while frames > 0 && size(frames) > out.len() {
            frames -= 1;
        }
        if size(frames) > out.len() {
            return None;
        }
        let body = &mut out[HEADER..];
        body[0] = KIND_PACKET;
        body[1..5].copy_from_slice(&packet.source.to_be_bytes());
        body[5..7].copy_from_slice(&packet.seq.to_be_bytes());
        body[7..11].copy_from_slice(&packet.timestamp.to_be_bytes());
        let mut flags = 0;
        if packet.marker {
            flags |= FLAG_MARKER;
        }
        let mut level = 0;
        if let Some(l) = packet.level {
            flags |= FLAG_LEVEL;
            level = (u8::from(l.voice_activity) << 7) | (l.level & 0x7f);
        }
        body[11] = flags;
        body[12] = level;
        body[13] = frames as u8;
        let mut at = PACKET_FIXED;
        for (timestamp, data) in packet.frames.iter().flatten().take(frames) {
            body[at..at + 4].copy_from_slice(&timestamp.to_be_bytes());
            body[at + 4..at + 6].copy_from_slice(&(data.len() as u16).to_be_bytes());
            at += FRAME_ENTRY;
        }
        for (_, data) in packet.frames.iter().flatten().take(frames) {
            body[at..at + data.len()].copy_from_slice(data);
            at += data.len();
        }
        body[at..at + packet.payload.len()].copy_from_slice(packet.payload);
        at += packet.payload.len();
        self.seal(lane, out, at)
    }

    /// Seals "this source stopped for good" into `out`.
    pub fn seal_forget(&self, lane: u8, source: u32, out: &mut [u8]) -> Option<usize> {
        if out.len() < HEADER + 5 + TAG {
            return None;
        }
        out[HEADER] = KIND_FORGET;
        out[HEADER + 1..HEADER + 5].copy_from_slice(&source.to_be_bytes());
        self.seal(lane, out, 5)
    }

    /// Seals any `body` as this link's next datagram (test and fuzzing builds: how the media
    /// fuzz target gets arbitrary bodies past the tag to the reader).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn seal_body(&self, lane: u8, body: &[u8], out: &mut [u8]) -> Option<usize> {
        if out.len() < HEADER + body.len() + TAG {
            return None;
        }
        out[HEADER..HEADER + body.len()].copy_from_slice(body);
        self.seal(lane, out, body.len())
    }

    /// Writes the header before a body of `body_len` bytes at `out[HEADER..]`, seals the body
    /// in place and appends the tag.
    fn seal(&self, lane: u8, out: &mut [u8], body_len: usize) -> Option<usize> {
        let counter = self
            .counters
            .get(usize::from(lane))?
            .fetch_add(1, Ordering::Relaxed);
        out[0] = MARKER;
        out[1] = lane;
        out[2..6].copy_from_slice(&self.link.to_be_bytes());
        out[6..14].copy_from_slice(&counter.to_be_bytes());
        let (header, rest) = out.split_at_mut(HEADER);
        let (body, tail) = rest.split_at_mut(body_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(lane, counter), Aad::from(&header[..]), body)
            .ok()?;
        tail[..TAG].copy_from_slice(tag.as_ref());
        Some(HEADER + body_len + TAG)
    }
}

/// A speaker's packet as the relay writes it (borrowed from a `Forwarded`).
pub struct PacketRef<'a> {
    pub source: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub level: Option<AudioLevel>,
    /// Earlier frames (timestamp, Opus), newest first.
    pub frames: [Option<(u32, &'a [u8])>; MAX_REDUNDANCY],
    pub payload: &'a [u8],
}

/// Why a relayed datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a relay datagram of a known shape, or its body does not read.
    Malformed,
    /// Not from the address the grant names for its lane.
    WrongSender,
    /// Its tag does not check under the link's key.
    Forged,
    /// Its counter was taken already, or is too old to tell.
    Replayed,
}

/// What a relayed datagram said, read from the opened body (byte ranges into it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Packet(Packet),
    Forget { source: u32 },
}

/// A speaker's packet from another node; the ranges index the opened body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub source: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub level: Option<AudioLevel>,
    pub frames: [Option<(u32, Range<usize>)>; MAX_REDUNDANCY],
    pub payload: Range<usize>,
}

/// The counters of one lane already taken: the highest, and the 63 before it.
#[derive(Clone, Copy, Default)]
struct Window {
    /// Highest counter taken + 1; 0: none yet.
    top: u64,
    bits: u64,
}

impl Window {
    fn fresh(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        let behind = self.top - 1 - counter;
        behind < 64 && self.bits & (1 << behind) == 0
    }

    fn take(&mut self, counter: u64) {
        if counter >= self.top {
            let shift = counter + 1 - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = counter + 1;
        } else {
            self.bits |= 1 << (self.top - 1 - counter);
        }
    }
}

/// The receiving end of a link.
pub struct InLink {
    pub link: u32,
    /// The sending node (its name's hash).
    pub peer: u64,
    /// Lane `i` is accepted only from `from[i]`: the sending node's worker `i`.
    from: Box<[SocketAddr]>,
    key: LessSafeKey,
    windows: Box<[Window]>,
}

impl InLink {
    pub fn new(link: u32, peer: u64, from: &[SocketAddr], key: &[u8; 16]) -> Self {
        let from: Box<[SocketAddr]> = from.iter().take(MAX_LANES).copied().collect();
        InLink {
            link,
            peer,
            windows: vec![Window::default(); from.len()].into_boxed_slice(),
            from,
            key: aead_key(key),
        }
    }

    /// Checks and opens a datagram of this link, from `from`, into `scratch` (at least as
    /// long as the datagram). On success the body is `scratch[..len]` for the ranges of the
    /// returned message.
    pub fn open(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
    ) -> Result<(Message, usize), Refused> {
        if datagram.len() < HEADER + 1 + TAG
            || datagram[0] != MARKER
            || scratch.len() < datagram.len()
        {
            return Err(Refused::Malformed);
        }
        let lane = datagram[1];
        if self.from.get(usize::from(lane)) != Some(&from) {
            return Err(Refused::WrongSender);
        }
        let counter = u64::from_be_bytes(datagram[6..14].try_into().expect("8 bytes"));
        let window = &mut self.windows[usize::from(lane)];
        if !window.fresh(counter) {
            return Err(Refused::Replayed);
        }
        let sealed = &mut scratch[..datagram.len() - HEADER];
        sealed.copy_from_slice(&datagram[HEADER..]);
        let body_len = self
            .key
            .open_in_place(nonce(lane, counter), Aad::from(&datagram[..HEADER]), sealed)
            .map_err(|_| Refused::Forged)?
            .len();
        // Only an authentic datagram moves the window.
        window.take(counter);
        let message = read_body(&scratch[..body_len])?;
        Ok((message, body_len))
    }
}

fn read_body(body: &[u8]) -> Result<Message, Refused> {
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    match body.first() {
        Some(&KIND_FORGET) if body.len() == 5 => Ok(Message::Forget { source: u32_at(1) }),
        Some(&KIND_PACKET) if body.len() >= PACKET_FIXED => {
            let flags = body[11];
            let count = usize::from(body[13]);
            if count > MAX_REDUNDANCY || body.len() < PACKET_FIXED + count * FRAME_ENTRY {
                return Err(Refused::Malformed);
            }
            let mut frames: [Option<(u32, Range<usize>)>; MAX_REDUNDANCY] = Default::default();
            let mut at = PACKET_FIXED + count * FRAME_ENTRY;
            for (i, frame) in frames.iter_mut().enumerate().take(count) {
                let entry = PACKET_FIXED + i * FRAME_ENTRY;
                let len = usize::from(u16::from_be_bytes([body[entry + 4], body[entry + 5]]));
                if at + len > body.len() {
                    return Err(Refused::Malformed);
                }
                *frame = Some((u32_at(entry), at..at + len));
                at += len;
            }
            Ok(Message::Packet(Packet {
                source: u32_at(1),
                seq: u16::from_be_bytes([body[5], body[6]]),
                timestamp: u32_at(7),
                marker: flags & FLAG_MARKER != 0,
                level: (flags & FLAG_LEVEL != 0).then(|| AudioLevel {
                    voice_activity: body[12] & 0x80 != 0,
                    level: body[12] & 0x7f,
                }),
                frames,
                payload: at..body.len(),
            }))
        }
        _ => Err(Refused::Malformed),
    }
}

/// The links one room's audio goes out on from this node. The hub changes them; each worker
/// keeps the list it last read and reads it again only when `version` moved (one atomic load
/// per speaker packet, no lock).
#[derive(Default)]
pub struct RelayOut {
    version: AtomicU64,
    links: Mutex<Arc<[Arc<OutLink>]>>,
}

impl RelayOut {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The links now, and the version they are.
    pub fn links(&self) -> (u64, Arc<[Arc<OutLink>]>) {
        let links = self.links.lock().expect("poisoned").clone();
        (self.version(), links)
    }

    /// Adds a link; `false` if one with its number is here already (a link's counters start
    /// at zero, so its key must never be given to a second `OutLink`: a new grant, with a new
    /// nonce, makes a new key).
    pub fn add(&self, link: OutLink) -> bool {
        let mut links = self.links.lock().expect("poisoned");
        if links.iter().any(|l| l.link == link.link) {
            return false;
        }
        let mut next: Vec<Arc<OutLink>> = links.iter().cloned().collect();
        next.push(Arc::new(link));
        *links = next.into();
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Removes link `link`; whether it was there.
    pub fn remove(&self, link: u32) -> bool {
        let mut links = self.links.lock().expect("poisoned");
        if !links.iter().any(|l| l.link == link) {
            return false;
        }
        let next: Vec<Arc<OutLink>> = links.iter().filter(|l| l.link != link).cloned().collect();
        *links = next.into();
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.links.lock().expect("poisoned").is_empty()
    }
}

/// A node's name as the relay compares it (FNV-1a, 64 bits).
pub fn node_tag(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];
    const NONCE: [u8; 16] = [9; 16];

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn key() -> [u8; 16] {
        derive_key(&SECRET, "rm_room", "node-a", "node-b", 42, &NONCE)
    }

    fn ends() -> (OutLink, InLink) {
        let k = key();
        (
            OutLink::new(42, addr(9000), node_tag("node-b"), &k),
            InLink::new(42, node_tag("node-a"), &[addr(1), addr(2)], &k),
        )
    }

    fn packet<'a>(payload: &'a [u8], frames: [Option<(u32, &'a [u8])>; 2]) -> PacketRef<'a> {
        PacketRef {
            source: 0xdead_beef,
            seq: 65535,
            timestamp: 4_000_000_000,
            marker: true,
            level: Some(AudioLevel {
                voice_activity: true,
                level: 42,
            }),
            frames,
            payload,
        }
    }

    #[test]
    fn a_packet_crosses_with_everything_it_carries() {
        let (out, mut inn) = ends();
        let mut datagram = [0u8; 1500];
        let f1 = [1u8; 30];
        let f2 = [2u8; 20];
        let sent = packet(
            &[0xfc; 80],
            [Some((3_999_999_040, &f1)), Some((3_999_998_080, &f2))],
        );
        let len = out.seal_packet(1, &sent, &mut datagram).expect("fits");
        assert_eq!(link_of(&datagram[..len]), Some(42));
        let mut scratch = [0u8; 1500];
        let (message, body) = inn
            .open(addr(2), &datagram[..len], &mut scratch)
            .expect("opens");
        let Message::Packet(p) = message else {
            panic!("a packet")
        };
        let body = &scratch[..body];
        assert_eq!(
            (p.source, p.seq, p.timestamp, p.marker),
            (0xdead_beef, 65535, 4_000_000_000, true)
        );
        assert_eq!(p.level, sent.level);
        assert_eq!(&body[p.payload.clone()], &[0xfc; 80]);
        let frames: Vec<(u32, &[u8])> = p
            .frames
            .iter()
            .flatten()
            .map(|(ts, r)| (*ts, &body[r.clone()]))
            .collect();
        assert_eq!(
            frames,
            vec![(3_999_999_040, &f1[..]), (3_999_998_080, &f2[..])]
        );
        // The body is encrypted: the payload's bytes are not in the datagram.
        assert!(!datagram[..len].windows(16).any(|w| w == [0xfc; 16]));
    }

    #[test]
    fn forget_and_no_level_cross() {
        let (out, mut inn) = ends();
        let mut datagram = [0u8; 64];
        let len = out.seal_forget(0, 77, &mut datagram).expect("fits");
        let mut scratch = [0u8; 64];
        assert_eq!(
            inn.open(addr(1), &datagram[..len], &mut scratch)
                .map(|m| m.0),
            Ok(Message::Forget { source: 77 })
        );
        let mut datagram = [0u8; 200];
        let mut quiet = packet(&[1; 10], [None, None]);
        quiet.level = None;
        quiet.marker = false;
        let len = out.seal_packet(0, &quiet, &mut datagram).expect("fits");
        let mut scratch = [0u8; 200];
        let Ok((Message::Packet(p), _)) = inn.open(addr(1), &datagram[..len], &mut scratch) else {
            panic!("a packet");
        };
        assert_eq!((p.level, p.marker, p.frames), (None, false, [None, None]));
    }

    #[test]
    fn frames_that_do_not_fit_are_left_out_before_the_payload() {
        let (out, mut inn) = ends();
        let big = [5u8; 600];
        let sent = packet(&[0xfc; 400], [Some((1, &big)), Some((2, &big))]);
        let mut datagram = [0u8; 1200];
        let len = out
            .seal_packet(0, &sent, &mut datagram)
            .expect("fits without one frame");
        let mut scratch = [0u8; 1200];
        let Ok((Message::Packet(p), _)) = inn.open(addr(1), &datagram[..len], &mut scratch) else {
            panic!("a packet");
        };
        assert_eq!(p.frames.iter().flatten().count(), 1);
        assert_eq!(p.payload.len(), 400);
        let mut tiny = [0u8; 100];
        assert_eq!(out.seal_packet(0, &sent, &mut tiny), None);
    }

    #[test]
    fn only_the_granted_sender_of_a_lane_is_heard() {
        let (out, mut inn) = ends();
        let mut datagram = [0u8; 200];
        let len = out
            .seal_packet(1, &packet(&[1; 10], [None, None]), &mut datagram)
            .unwrap();
        let mut scratch = [0u8; 200];
        // Lane 1 is worker 1's address, not worker 0's nor anyone else's.
        for wrong in [addr(1), addr(3), SocketAddr::from(([10, 0, 0, 2], 2))] {
            assert_eq!(
                inn.open(wrong, &datagram[..len], &mut scratch).map(|m| m.0),
                Err(Refused::WrongSender)
            );
        }
        // A lane the sending node has no worker for.
        let len = out
            .seal_packet(5, &packet(&[1; 10], [None, None]), &mut datagram)
            .unwrap();
        assert_eq!(
            inn.open(addr(2), &datagram[..len], &mut scratch)
                .map(|m| m.0),
            Err(Refused::WrongSender)
        );
    }

    #[test]
    fn every_flipped_bit_and_every_other_key_is_refused() {
        let (out, mut inn) = ends();
        let mut datagram = [0u8; 200];
        let len = out
            .seal_packet(0, &packet(&[1; 10], [None, None]), &mut datagram)
            .unwrap();
        let mut scratch = [0u8; 200];
        for bit in 0..len * 8 {
            let mut bent = datagram[..len].to_vec();
            bent[bit / 8] ^= 1 << (bit % 8);
            let opened = inn.open(addr(1), &bent, &mut scratch);
            assert!(opened.is_err(), "bit {bit} flipped was taken");
        }
        // Keys for another room, another pair of nodes, another link or grant do not open it.
        for other in [
            derive_key(&SECRET, "rm_other", "node-a", "node-b", 42, &NONCE),
            derive_key(&SECRET, "rm_room", "node-b", "node-a", 42, &NONCE),
            derive_key(&SECRET, "rm_room", "node-a", "node-c", 42, &NONCE),
            derive_key(&SECRET, "rm_room", "node-a", "node-b", 43, &NONCE),
            derive_key(&SECRET, "rm_room", "node-a", "node-b", 42, &[8; 16]),
            derive_key(&[6; 32], "rm_room", "node-a", "node-b", 42, &NONCE),
        ] {
            let mut stranger = InLink::new(42, 0, &[addr(1)], &other);
            assert_eq!(
                stranger
                    .open(addr(1), &datagram[..len], &mut scratch)
                    .map(|m| m.0),
                Err(Refused::Forged)
            );
        }
        // The untouched datagram still opens: the refusals moved no window.
        assert!(inn.open(addr(1), &datagram[..len], &mut scratch).is_ok());
    }

    #[test]
    fn each_counter_is_taken_once_in_any_order() {
        let (out, mut inn) = ends();
        let mut sealed = Vec::new();
        for _ in 0..100 {
            let mut datagram = [0u8; 100];
            let len = out.seal_forget(0, 1, &mut datagram).unwrap();
            sealed.push(datagram[..len].to_vec());
        }
        let mut scratch = [0u8; 100];
        let mut open = |d: &[u8]| inn.open(addr(1), d, &mut scratch).map(|_| ());
        // Out of order within the window: all taken, each once.
        for i in [5, 3, 4, 0, 1, 2] {
            assert_eq!(open(&sealed[i]), Ok(()), "counter {i}");
        }
        for (i, again) in sealed.iter().enumerate().take(6) {
            assert_eq!(open(again), Err(Refused::Replayed), "counter {i} again");
        }
        // Far ahead, then one 63 behind is still fresh, 64 behind is too old to tell.
        assert_eq!(open(&sealed[90]), Ok(()));
        assert_eq!(open(&sealed[27]), Ok(()));
        assert_eq!(open(&sealed[26]), Err(Refused::Replayed));
        assert_eq!(open(&sealed[90]), Err(Refused::Replayed));
        assert_eq!(open(&sealed[91]), Ok(()));
    }

    #[test]
    fn lanes_count_apart_and_never_share_a_nonce() {
        let (out, mut inn) = ends();
        let mut a = [0u8; 100];
        let mut b = [0u8; 100];
        let la = out.seal_forget(0, 1, &mut a).unwrap();
        let lb = out.seal_forget(1, 1, &mut b).unwrap();
        // Same counter, different lane: both fresh, and the ciphertexts differ.
        assert_eq!(a[6..14], b[6..14]);
        assert_ne!(a[HEADER..la], b[HEADER..lb]);
        let mut scratch = [0u8; 100];
        assert!(inn.open(addr(1), &a[..la], &mut scratch).is_ok());
        assert!(inn.open(addr(2), &b[..lb], &mut scratch).is_ok());
    }

    #[test]
    fn short_and_strange_datagrams_are_malformed() {
        let (out, mut inn) = ends();
        let mut scratch = [0u8; 200];
        for bad in [&[][..], &[MARKER][..], &[MARKER; 30][..], &[0x80; 60][..]] {
            let opened = inn.open(addr(1), bad, &mut scratch).map(|m| m.0);
            assert!(
                matches!(
                    opened,
                    Err(Refused::Malformed | Refused::WrongSender | Refused::Forged)
                ),
                "{bad:?}: {opened:?}"
            );
        }
        // An authentic body that does not read: a frame table longer than the body.
        let mut datagram = [0u8; 200];
        datagram[HEADER] = KIND_PACKET;
        datagram[HEADER + 13] = 2;
        let len = out.seal(0, &mut datagram, PACKET_FIXED).unwrap();
        assert_eq!(
            inn.open(addr(1), &datagram[..len], &mut scratch)
                .map(|m| m.0),
            Err(Refused::Malformed)
        );
        datagram[HEADER] = 9;
        let len = out.seal(0, &mut datagram, 5).unwrap();
        assert_eq!(
            inn.open(addr(1), &datagram[..len], &mut scratch)
                .map(|m| m.0),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn the_links_change_by_version() {
        let relay = RelayOut::default();
        let v0 = relay.version();
        assert!(relay.add(OutLink::new(1, addr(1), 1, &key())));
        assert!(relay.add(OutLink::new(2, addr(2), 2, &key())));
        assert!(
            !relay.add(OutLink::new(2, addr(3), 3, &key())),
            "a number is one link"
        );
        let (v, links) = relay.links();
        assert!(v > v0);
        assert_eq!(links.iter().map(|l| l.link).collect::<Vec<_>>(), vec![1, 2]);
        assert!(relay.remove(1));
        assert!(!relay.remove(1));
        assert_eq!(relay.links().1.len(), 1);
        assert!(relay.version() > v);
    }
}
