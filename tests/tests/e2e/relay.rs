//! One room on two nodes' media services, over real sockets: two of Stoa's media services in
//! this process ("A" and "B", each with its workers on loopback UDP), linked as two nodes of a
//! cluster link a room (B grants, both derive the key, A relays; and back), and real WebRTC
//! peers (the `webrtc` crate, not Stoa's `rtc`) with real Opus tones connected straight to
//! one or the other. What crosses is decoded and detected by its tone. The wire and the cores
//! are tested in `stoa::media::relay` and the worker's `relay_tests`; this is their shells,
//! sockets and `Media`'s grants.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use stoa::config::MediaSettings;
use stoa::control::{ParticipantId, RoomId};
use stoa::media::relay::{InLink, OutLink, derive_key, node_tag};
use stoa::media::{Media, MediaOptions};
use stoa::metrics::{DropLabels, MediaMetrics, WorkerLabels};
use stoa_client::audio::AudioSource;
use stoa_client::media::{MediaConfig, MediaPeer, OfferChannel};

const CONNECT: Duration = Duration::from_secs(10);
const HEAR: Duration = Duration::from_secs(5);
const SECRET: [u8; 32] = [0x5a; 32];

/// A media service as one node of a cluster has it.
struct NodeMedia {
    name: &'static str,
    media: Media,
    metrics: MediaMetrics,
}

impl NodeMedia {
    fn start(name: &'static str, workers: usize) -> NodeMedia {
        let metrics = MediaMetrics::default();
        let options = MediaOptions {
            settings: MediaSettings {
                workers,
                ..Default::default()
            },
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            public_ip: None,
        };
        let (media, _reports) = Media::start(&options, &metrics).expect("media starts");
        NodeMedia {
            name,
            media,
            metrics,
        }
    }

    /// A counter summed over the workers.
    fn total(&self, family: &str) -> u64 {
        let workers = self.media.relay_addrs().len();
        (0..workers)
            .map(|w| {
                let labels = WorkerLabels {
                    worker: w.to_string(),
                };
                match family {
                    "relay_out" => self.metrics.relay_out.get_or_create(&labels).get(),
                    "relay_in" => self.metrics.relay_in.get_or_create(&labels).get(),
                    "rtp_in" => self.metrics.rtp_in.get_or_create(&labels).get(),
                    reason => self
                        .metrics
                        .dropped
                        .get_or_create(&DropLabels {
                            worker: w.to_string(),
                            reason: reason.to_owned(),
                        })
                        .get(),
                }
            })
            .sum()
    }
}

/// `to` grants a link for `room`'s audio from `from`, which sends on it.
fn link(from: &NodeMedia, to: &NodeMedia, room: &RoomId, number: u32) {
    let nonce = [number as u8; 16];
    let key = derive_key(&SECRET, room.as_str(), from.name, to.name, number, &nonce);
    let at = to
        .media
        .accept_relay(
            room,
            InLink::new(number, node_tag(from.name), from.media.relay_addrs(), &key),
        )
        .expect("granted");
    from.media
        .relay_to(room, OutLink::new(number, at, node_tag(to.name), &key))
        .expect("added");
}

/// Offers go straight to a node's `Media`, as its room would pass them.
struct Direct<'a> {
    media: &'a Media,
    room: &'a RoomId,
    participant: ParticipantId,
    speaker: bool,
}

#[async_trait::async_trait]
impl OfferChannel for Direct<'_> {
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, stoa_client::Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.media.offer(
            self.room,
            &self.participant,
            offer_sdp,
            self.speaker,
            self.speaker,
            reply,
        );
        Ok(answer
            .await
            .expect("answered")
            .expect("the offer is accepted"))
    }
}

async fn connect(node: &NodeMedia, room: &RoomId, name: &str, tone: Option<f32>) -> MediaPeer {
    let slots = node.media.slots();
    let config = match tone {
        Some(hz) => MediaConfig::speaker(name, slots, AudioSource::tone(hz, -20.0)),
        None => MediaConfig::listener(name, slots),
    };
    let peer = MediaPeer::new(config).await.expect("a peer");
    let mut channel = Direct {
        media: &node.media,
        room,
        participant: ParticipantId::generate(),
        speaker: tone.is_some(),
    };
    peer.negotiate(&mut channel).await.expect("negotiated");
    peer.wait_connected(CONNECT).await.expect("connected");
    peer
}

/// Waits until some slot of `peer` carries the tone most of the last 300 ms.
async fn hears(peer: &MediaPeer, hz: f32) -> usize {
    let deadline = Instant::now() + HEAR;
    loop {
        let until = Instant::now();
        let since = until - Duration::from_millis(300);
        let slots = peer.report().slots.len();
        if let Some(slot) = (0..slots).find(|&s| peer.tone_fraction(s, hz, since, until) >= 0.8) {
            return slot;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not hear {hz} Hz: {:#?}",
            peer.name(),
            peer.report().slots
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speakers_on_two_nodes_are_heard_on_both_with_one_copy_per_packet_and_node() {
    let a = NodeMedia::start("node-a", 2);
    let b = NodeMedia::start("node-b", 2);
    let room = RoomId::generate();
    link(&a, &b, &room, 1);
    link(&b, &a, &room, 2);

    let speaker_a = connect(&a, &room, "speaker-a", Some(440.0)).await;
    let speaker_b = connect(&b, &room, "speaker-b", Some(660.0)).await;
    let on_a = connect(&a, &room, "on-a", None).await;
    let mut on_b = Vec::new();
    for i in 0..3 {
        on_b.push(connect(&b, &room, &format!("on-b-{i}"), None).await);
    }

    // Each listener hears both speakers, wherever they are: the same two tones on each node.
    for peer in std::iter::once(&on_a).chain(&on_b) {
        let low = hears(peer, 440.0).await;
        let high = hears(peer, 660.0).await;
        assert_ne!(low, high, "{}: two speakers, two slots", peer.name());
    }
    // Each speaker hears the other, across the link.
    hears(&speaker_a, 660.0).await;
    hears(&speaker_b, 440.0).await;

    // One datagram per packet and node, however many listen: over a second of both speaking,
    // each node relayed as many datagrams as its own speaker's packets it took (a packet in
    // flight between the two counters may straddle the readings), not that × its listeners.
    let counts = |n: &NodeMedia| (n.total("relay_out"), n.total("rtp_in"));
    let (before_a, before_b) = (counts(&a), counts(&b));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (node, before, now) in [("A", before_a, counts(&a)), ("B", before_b, counts(&b))] {
        let (relayed, taken) = (now.0 - before.0, now.1 - before.1);
        assert!(
            taken >= 40,
            "{node} took {taken} packets from its speaker in a second"
        );
        assert!(
            relayed.abs_diff(taken) <= 2,
            "{node} relayed {relayed} datagrams for {taken} packets"
        );
    }
    assert!(b.total("relay_in") > 0 && a.total("relay_in") > 0);
    assert_eq!(a.total("relay_refused") + b.total("relay_refused"), 0);

    for peer in [speaker_a, speaker_b, on_a].iter().chain(&on_b) {
        peer.close().await;
    }
    a.media.stop().await;
    b.media.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_datagram_from_anywhere_else_is_refused_and_nobody_hears_it() {
    let a = NodeMedia::start("node-a", 1);
    let b = NodeMedia::start("node-b", 1);
    let room = RoomId::generate();
    link(&a, &b, &room, 7);
    let speaker = connect(&a, &room, "speaker", Some(440.0)).await;
    let listener = connect(&b, &room, "listener", None).await;
    hears(&listener, 440.0).await;

    // Someone who knows the link's number, and even its key, but sends from an address of
    // their own (not A's worker's), and a corrupted copy: both are refused, and counted. (A
    // wrong key from the right address is refused too: `stoa::media::relay`'s tests.)
    let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("a socket");
    let b_addr = b.media.relay_addrs()[0];
    let key = derive_key(&SECRET, room.as_str(), "node-a", "node-b", 7, &[7; 16]);
    let mut datagram = [0u8; 200];
    let len = OutLink::new(7, b_addr, 0, &key)
        .seal_forget(0, 1, &mut datagram)
        .expect("sealed");
    let refused = b.total("relay_refused");
    stranger.send_to(&datagram[..len], b_addr).expect("sent");
    let mut junk = datagram;
    junk[20] ^= 0xff;
    stranger.send_to(&junk[..len], b_addr).expect("sent");
    let deadline = Instant::now() + HEAR;
    while b.total("relay_refused") < refused + 2 {
        assert!(Instant::now() < deadline, "the forgeries were not refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The speaker is still heard: a forged "this source ended" from a stranger did nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hears(&listener, 440.0).await;

    // The link ends: B's listener hears nothing more from A.
    let packets = |p: &MediaPeer| p.report().slots.iter().map(|s| s.packets).sum::<u64>();
    b.media.close_relay(7);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = packets(&listener);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        packets(&listener),
        before,
        "nothing arrives after the link ends"
    );
    assert!(b.total("unroutable") > 0, "what A still sends is not taken");

    speaker.close().await;
    listener.close().await;
    a.media.stop().await;
    b.media.stop().await;
}
