//! RED through the real media service (issue #19): `rtc` clients (the client library's
//! [`fleet`](stoa_client::fleet), as the load tools use) over loopback UDP against
//! `stoa::media::Media` with two workers, no HTTP. A speaker sends plain Opus; a listener that
//! offers RED (as Chromium does) receives RED built by the server, whose repeated frames are
//! exactly the speaker's previous frames of the slot's current turn; a listener without RED
//! receives the speaker's frames as they were sent. Both listeners' connections end up on the
//! lean SRTP path.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use stoa::config::MediaSettings;
use stoa::control::{ParticipantId, RoomId};
use stoa::media::engine::{OPUS_PT, RED_PT};
use stoa::media::red;
use stoa::media::{Media, MediaOptions};
use stoa::metrics::MediaMetrics;
use stoa_client::fleet::{Observer, Peers};

/// RFC 6464 bytes: speech at -10 dBov with the voice bit, and silence without it.
const SPEECH: u8 = 0x80 | 10;
const SILENCE: u8 = 127;
const FRAME: u32 = 960;

/// Every RTP packet each client received: (payload type, payload).
#[derive(Default)]
struct Received {
    packets: Vec<Vec<(u8, Bytes)>>,
}

impl Observer for Received {
    fn rtp(&mut self, peer: usize, packet: &rtc::rtp::Packet, _stamp: i64) {
        if self.packets.len() <= peer {
            self.packets.resize_with(peer + 1, Vec::new);
        }
        self.packets[peer].push((packet.header.payload_type, packet.payload.clone()));
    }
}

/// A frame the test speaker sends: recognisable by its index, a plausible Opus size.
fn frame(index: u8) -> Bytes {
    let mut bytes = vec![index; 60];
    bytes[0] = 0xfc;
    Bytes::from(bytes)
}

/// The index of a frame made by [`frame`].
fn index_of(payload: &[u8]) -> u8 {
    assert_eq!(
        payload.len(),
        60,
        "not one of the speaker's frames: {payload:?}"
    );
    payload[1]
}

#[test]
fn red_listeners_get_the_frames_of_the_current_turn_and_others_plain_opus() {
    let metrics = MediaMetrics::default();
    let options = MediaOptions {
        settings: MediaSettings {
            workers: 2,
            red: 2,
            ..Default::default()
        },
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: None,
        public_ip: None,
    };
    let (media, _reports) = Media::start(&options, &metrics).expect("media starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let room = RoomId::generate();
    let mut peers = Peers::new(IpAddr::V4(Ipv4Addr::LOCALHOST), false, "red-test").unwrap();
    let mut seen = Received::default();
    let mut join = |peers: &mut Peers, speaker: bool, red: bool| {
        peers.offer_red(red);
        let (index, sdp) = peers.open(speaker, media.slots()).unwrap();
        let (reply, answer) = tokio::sync::oneshot::channel();
        media.offer(
            &room,
            &ParticipantId::generate(),
            sdp,
            speaker,
            speaker,
            reply,
        );
        let answer = answer.blocking_recv().unwrap().expect("answered");
        assert_eq!(answer.contains("red/48000/2"), red, "{answer}");
        peers.answer(index, answer, &mut seen).unwrap();
        index
    };
    let speaker = join(&mut peers, true, false);
    let red_listener = join(&mut peers, false, true);
    let opus_listener = join(&mut peers, false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peers.all_connected() {
        assert!(Instant::now() < deadline, "the clients did not connect");
        peers.turn(Instant::now() + Duration::from_millis(5), &mut seen);
    }

    // Frames 0-9 are silence (nobody selects a silent speaker, so nothing is forwarded but the
    // server keeps them), then frames 10-59 speech, one every 20 ms.
    let mut next = Instant::now();
    for index in 0..60u8 {
        let level = if index < 10 { SILENCE } else { SPEECH };
        assert!(peers.send_rtp(speaker, frame(index), Some(level), FRAME, &mut seen));
        next += Duration::from_millis(20);
        while Instant::now() < next {
            peers.turn(next, &mut seen);
        }
    }
    let tail = Instant::now() + Duration::from_millis(300);
    while Instant::now() < tail {
        peers.turn(tail, &mut seen);
    }

    // Plain Opus, frame for frame, to the listener without RED.
    let plain = &seen.packets[opus_listener];
    assert!(plain.len() >= 40, "{} packets", plain.len());
    let first = index_of(&plain[0].1);
    assert!(
        (10..15).contains(&first),
        "speech is heard from its start: {first}"
    );
    for (n, (pt, payload)) in plain.iter().enumerate() {
        assert_eq!(*pt, OPUS_PT);
        assert_eq!(payload, &frame(first + n as u8));
    }

    // RED to the RED listener: each packet repeats the frames before it, but never one from
    // before its turn began (the silence, the speech before the slot was given).
    let reds = &seen.packets[red_listener];
    assert!(reds.len() >= 40, "{} packets", reds.len());
    let mut turn_start = None;
    for (n, (pt, payload)) in reds.iter().enumerate() {
        assert_eq!(*pt, RED_PT);
        let parsed = red::parse(payload, OPUS_PT).expect("a RED payload");
        let primary = index_of(&payload[parsed.primary.clone()]);
        let turn_start = *turn_start.get_or_insert(primary);
        assert_eq!(primary, turn_start + n as u8, "packet {n}");
        let earlier: Vec<(u32, u8)> = parsed
            .earlier
            .iter()
            .flatten()
            .map(|(offset, range)| (*offset, index_of(&payload[range.clone()])))
            .collect();
        let expected: Vec<(u32, u8)> = (1..=2u8)
            .take_while(|back| *back as usize <= n)
            .map(|back| (u32::from(back) * FRAME, primary - back))
            .collect();
        assert_eq!(earlier, expected, "packet {n} (frame {primary})");
    }
    assert_eq!(
        turn_start,
        Some(first),
        "both listeners' turns began together"
    );

    let stats = runtime.block_on(media.worker_stats());
    let lean: usize = stats.iter().map(|w| w.lean).sum();
    let lean_off: usize = stats.iter().map(|w| w.lean_off).sum();
    // Lean connections (the default) seal on the lean path from their first packet: both
    // listeners, and the speaker's connection too.
    assert_eq!(
        (lean, lean_off),
        (3, 0),
        "every connection on the lean path: {stats:?}"
    );
    runtime.block_on(media.stop());
}
