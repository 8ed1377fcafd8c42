//! The media path end to end: real WebRTC peers (the `webrtc` crate) over real UDP on
//! loopback, real Opus, against a running server. Tones identify speakers; listeners decode
//! and detect them.

use std::time::{Duration, Instant};

use serde_json::json;
use stoa::config::ListenerTransport;
use stoa_client::audio::{AudioSource, goertzel_power, mean_power};
use stoa_client::media::{MediaConfig, MediaPeer, OfferChannel};
use stoa_tests::TestServer;
use stoa_tests::signal::{SignalClient, media_slots};

const CONNECT: Duration = Duration::from_secs(10);
const HEAR: Duration = Duration::from_secs(5);

/// A participant with a signaling socket and a connected media peer.
struct Member {
    signal: SignalClient,
    peer: MediaPeer,
}

impl Member {
    async fn join(
        t: &TestServer,
        room: &str,
        role: &str,
        name: &str,
        config: impl FnOnce(&str, usize) -> MediaConfig,
    ) -> Member {
        let mut signal = SignalClient::join(&t.participant(room, role, name).await).await;
        let slots = media_slots(&signal.welcome);
        let peer = MediaPeer::new(config(name, slots)).await.expect("peer");
        peer.negotiate(&mut signal).await.expect("negotiated");
        peer.wait_connected(CONNECT).await.unwrap();
        Member { signal, peer }
    }

    fn id(&self) -> String {
        self.signal.participant_id()
    }

    /// The slot whose audio over `window` (ending now) carries the tone most of the time.
    fn slot_with(&self, hz: f32, window: Duration) -> Option<usize> {
        let until = Instant::now();
        let since = until - window;
        let slots = self.peer.report().slots.len();
        (0..slots).find(|&slot| self.peer.tone_fraction(slot, hz, since, until) >= 0.8)
    }

    /// Packets received on all slots so far.
    fn packets(&self) -> u64 {
        self.peer.report().slots.iter().map(|s| s.packets).sum()
    }
}

fn listener(name: &str, slots: usize) -> MediaConfig {
    MediaConfig::listener(name, slots)
}

fn speaking(hz: f32, dbov: f32) -> impl FnOnce(&str, usize) -> MediaConfig {
    move |name, slots| MediaConfig::speaker(name, slots, AudioSource::tone(hz, dbov))
}

/// Waits until some slot of `member` carries the tone; returns that slot.
async fn hears(member: &Member, hz: f32) -> usize {
    let deadline = Instant::now() + HEAR;
    loop {
        if let Some(slot) = member.slot_with(hz, Duration::from_millis(300)) {
            return slot;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not hear {hz} Hz: {:#?}",
            member.peer.name(),
            member.peer.report().slots
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of a counter family over its label sets, from `/metrics`.
async fn metric(t: &TestServer, name: &str, label: &str) -> u64 {
    sample(&t.metrics_text().await, name, label)
}

/// The sum of `name`'s samples with `label` in one scrape.
fn sample(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A server whose connections are made by `transport` (`[media] listener_transport`).
async fn server_on(transport: ListenerTransport) -> TestServer {
    TestServer::start_with(|c| c.media.listener_transport = transport).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_speakers_reach_a_listener_on_two_slots_with_no_loss() {
    two_speakers_reach_a_listener(ListenerTransport::Rtc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_speakers_reach_a_lean_listener_on_two_slots_with_no_loss() {
    two_speakers_reach_a_listener(ListenerTransport::Lean).await;
}

async fn two_speakers_reach_a_listener(transport: ListenerTransport) {
    let t = server_on(transport).await;
    let room = t.create_room("Tones").await;
    let low = Member::join(&t, &room, "speaker", "Low", speaking(440.0, -12.0)).await;
    let high = Member::join(&t, &room, "speaker", "High", speaking(880.0, -12.0)).await;
    let mut ear = Member::join(&t, &room, "listener", "Ear", listener).await;

    let slot_low = hears(&ear, 440.0).await;
    let slot_high = hears(&ear, 880.0).await;
    assert_ne!(slot_low, slot_high, "each speaker has a slot of its own");

    // Media tells the room who is talking, and the room tells everyone: in an event, or in
    // the listener's welcome when both were heard before it joined (no change, no event).
    let (low_id, high_id) = (low.id(), high.id());
    let both_of = |speakers: &serde_json::Value| {
        speakers.as_array().is_some_and(|s| {
            s.len() == 2 && s.contains(&json!(low_id)) && s.contains(&json!(high_id))
        })
    };
    if !both_of(&ear.signal.welcome["snapshot"]["active_speakers"]) {
        let both = ear
            .signal
            .wait(|m| m["type"] == "active_speakers" && both_of(&m["speakers"]))
            .await;
        assert!(both["seq"].is_u64());
    }

    // Over a steady 3 s window, what each speaker sent arrives.
    let before = ear.peer.report();
    let sent_before = (
        low.peer.report().send.frames_sent,
        high.peer.report().send.frames_sent,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = ear.peer.report();
    let sent_after = (
        low.peer.report().send.frames_sent,
        high.peer.report().send.frames_sent,
    );
    for (slot, sent) in [
        (slot_low, sent_after.0 - sent_before.0),
        (slot_high, sent_after.1 - sent_before.1),
    ] {
        let got = after.slots[slot].packets - before.slots[slot].packets;
        // Packets in flight at either edge of the window count for neither side.
        assert!(
            (got + 2) as f64 >= 0.99 * sent as f64,
            "slot {slot}: {got} of {sent} packets arrived"
        );
        assert!(
            after.slots[slot].is_continuous(),
            "{:#?}",
            after.slots[slot]
        );
        assert_eq!(after.slots[slot].decode_errors, 0);
    }
    // The speakers hear each other and not themselves.
    hears(&low, 880.0).await;
    hears(&high, 440.0).await;
    assert_eq!(low.slot_with(440.0, Duration::from_secs(1)), None);
    assert_eq!(high.slot_with(880.0, Duration::from_secs(1)), None);
    // All three connections carried forwarded audio on the lean SRTP path, their keys proven
    // against `rtc`'s own output first (server/src/media/srtp.rs).
    let stats = t.running().state.media.worker_stats().await;
    assert_eq!(stats.iter().map(|w| w.lean).sum::<usize>(), 3, "{stats:?}");
    assert_eq!(
        stats.iter().map(|w| w.lean_off).sum::<usize>(),
        0,
        "{stats:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_slots_carry_the_three_loudest_and_follow_a_change() {
    let t = TestServer::start_with(|c| c.signal.room_max_stage = 10).await;
    let room = t.create_room("Five").await;
    let tones = [300.0, 500.0, 700.0, 900.0, 1100.0];
    let levels = [-10.0, -14.0, -18.0, -30.0, -36.0];
    let mut speakers = Vec::new();
    for (i, (hz, dbov)) in tones.iter().zip(levels).enumerate() {
        let name = format!("S{i}");
        speakers.push(Member::join(&t, &room, "speaker", &name, speaking(*hz, dbov)).await);
    }
    let ear = Member::join(&t, &room, "listener", "Ear", listener).await;
    assert_eq!(ear.peer.report().slots.len(), 3);

    let mut slots = Vec::new();
    for hz in &tones[..3] {
        slots.push(hears(&ear, *hz).await);
    }
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 3, "the three loudest fill the three slots");
    for hz in &tones[3..] {
        assert_eq!(
            ear.slot_with(*hz, Duration::from_millis(500)),
            None,
            "{hz} Hz"
        );
    }

    // The quietest becomes the loudest: it takes the weakest slot (700 Hz's), quickly.
    let weakest_slot = ear.slot_with(700.0, Duration::from_millis(300)).unwrap();
    speakers[4]
        .peer
        .set_source(AudioSource::tone(1100.0, -6.0))
        .unwrap();
    let changed = Instant::now();
    let mut took = None;
    while changed.elapsed() < Duration::from_secs(3) {
        let until = Instant::now();
        let since = until - Duration::from_millis(100);
        if ear.peer.tone_fraction(weakest_slot, 1100.0, since, until) >= 1.0 {
            took = Some(changed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = took.expect("the loudest speaker took a slot");
    eprintln!("the slot followed the new loudest speaker in {took:?}");
    // Selection (smoothing + a 200 ms hold) plus a 100 ms detection window.
    assert!(took <= Duration::from_millis(600), "switch took {took:?}");
    let report = ear.peer.report();
    for (slot, seen) in report.slots.iter().enumerate() {
        assert!(
            seen.is_continuous(),
            "slot {slot} across the switch: {seen:#?}"
        );
        assert_eq!(seen.tracks, 1, "no renegotiation, one stream per slot");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_sending_anyway_is_heard_by_nobody() {
    let t = TestServer::start().await;
    let room = t.create_room("Rogue").await;
    let rogue = Member::join(&t, &room, "listener", "Rogue", |name, slots| {
        MediaConfig::rogue(name, slots, AudioSource::tone(600.0, -10.0))
    })
    .await;
    let ear = Member::join(&t, &room, "listener", "Ear", listener).await;
    let moderator = Member::join(&t, &room, "moderator", "Mo", listener).await;

    rogue
        .peer
        .wait_until(HEAR, "the rogue sends", |r| r.send.frames_sent > 50)
        .await
        .unwrap();
    let dropped = metric(&t, "stoa_media_dropped_total", "reason=\"no_send_path\"").await;
    assert!(dropped > 20, "drops counted: {dropped}");
    assert_eq!(ear.packets(), 0, "{:#?}", ear.peer.report().slots);
    assert_eq!(moderator.packets(), 0);
    assert_eq!(metric(&t, "stoa_media_rtp_in_total", "").await, 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_muted_speaker_is_silent_until_they_unmute() {
    let t = TestServer::start().await;
    let room = t.create_room("Mute").await;
    let mut moderator = Member::join(&t, &room, "moderator", "Mo", listener).await;
    let mut speaker = Member::join(&t, &room, "speaker", "Sam", speaking(523.0, -12.0)).await;
    let ear = Member::join(&t, &room, "listener", "Ear", listener).await;
    let slot = hears(&ear, 523.0).await;

    moderator
        .signal
        .ok(json!({ "type": "mute", "participant": speaker.id() }))
        .await;
    speaker.signal.wait_type("muted").await;
    // Packets in flight when the mute landed may still arrive; after that, nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_mute = ear.peer.report().slots[slot].packets;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = ear.peer.report().slots[slot].packets;
    assert_eq!(
        at_mute, later,
        "audio from a muted speaker reached a listener"
    );
    assert!(speaker.peer.report().send.frames_sent > 0);
    assert!(metric(&t, "stoa_media_dropped_total", "reason=\"not_allowed\"").await > 0);

    speaker.signal.ok(json!({ "type": "unmute" })).await;
    hears(&ear, 523.0).await;
    let _ = moderator.signal.wait_type("unmuted").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invited_listener_is_heard_without_others_renegotiating_until_they_leave_the_stage() {
    invited_listener_is_heard(ListenerTransport::Rtc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invited_lean_listener_is_heard_without_others_renegotiating_until_they_leave_the_stage()
{
    invited_listener_is_heard(ListenerTransport::Lean).await;
}

async fn invited_listener_is_heard(transport: ListenerTransport) {
    let t = server_on(transport).await;
    let room = t.create_room("Stage").await;
    let mut moderator = Member::join(&t, &room, "moderator", "Mo", listener).await;
    let mut guest = Member::join(&t, &room, "listener", "Guest", listener).await;
    let ear = Member::join(&t, &room, "listener", "Ear", listener).await;

    // Offering a microphone as a listener gets no receiving path.
    let refused = guest
        .peer
        .start_speaking(&mut guest.signal, AudioSource::tone(700.0, -12.0))
        .await;
    assert!(refused.is_ok(), "{refused:?}");
    assert!(!guest.peer.report().send.answer_accepts_audio);
    guest.peer.stop_speaking(&mut guest.signal).await.unwrap();

    guest.signal.ok(json!({ "type": "raise_hand" })).await;
    moderator
        .signal
        .wait_about("hand_raised", &guest.id())
        .await;
    moderator
        .signal
        .ok(json!({ "type": "invite_to_stage", "participant": guest.id() }))
        .await;
    guest.signal.wait_type("invited_to_stage").await;
    guest
        .signal
        .ok(json!({ "type": "accept_invitation" }))
        .await;
    guest.signal.wait_about("joined_stage", &guest.id()).await;
    guest
        .peer
        .start_speaking(&mut guest.signal, AudioSource::tone(700.0, -12.0))
        .await
        .expect("a speaker's offer is accepted");
    assert!(guest.peer.report().send.answer_accepts_audio);

    let slot = hears(&ear, 700.0).await;
    hears(&moderator, 700.0).await;
    assert!(ear.peer.report().slots.iter().all(|s| s.tracks <= 1));

    guest.signal.ok(json!({ "type": "leave_stage" })).await;
    guest.signal.wait_about("left_stage", &guest.id()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_leave = ear.peer.report().slots[slot].packets;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ear.peer.report().slots[slot].packets,
        at_leave,
        "audio after leaving the stage"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_percent_loss_still_carries_the_tone() {
    let t = TestServer::start().await;
    let room = t.create_room("Lossy").await;
    let _speaker = Member::join(&t, &room, "speaker", "Sam", speaking(440.0, -12.0)).await;
    let ear = Member::join(&t, &room, "listener", "Ear", |name, slots| {
        MediaConfig::listener(name, slots).with_receive_loss(0.10, 7)
    })
    .await;
    let slot = hears(&ear, 440.0).await;
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let report = ear.peer.report();
    // A window is "detected" when the tone carries a quarter of its power: a 100 ms Goertzel
    // bin is 10 Hz wide, so that is still hundreds of times any other bin. Windows holding a
    // concealed double loss (PLC then FEC) keep 35-50% of their power in the tone, the rest
    // in the click; they count as heard, as an ear would hear them.
    let pcm = ear.peer.decoded_audio(slot, since, Instant::now());
    let windows: Vec<f64> = pcm
        .chunks_exact(4800)
        .map(|w| goertzel_power(w, 440.0) / mean_power(w).max(1.0))
        .collect();
    let heard = windows.iter().filter(|share| **share >= 0.25).count();
    let fraction = heard as f64 / windows.len().max(1) as f64;
    assert!(
        windows.len() >= 70,
        "8 s of audio: {} windows",
        windows.len()
    );
    assert!(
        fraction >= 0.95,
        "tone in {:.1}% of 100 ms windows (shares {windows:.2?}); {:#?}",
        fraction * 100.0,
        report.slots[slot]
    );
    assert!(report.slots[slot].fec > 0, "FEC recovered lost frames");
    assert!(report.slots[slot].injected_losses > 0);
    // Receiver reports from the listener reached the server's metrics (they come about once
    // a second per stream).
    assert!(metric(&t, "stoa_media_rr_fraction_lost_count", "").await > 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_peer_and_a_leaver_are_cleaned_up() {
    let t = TestServer::start_with(|c| {
        c.media.ice_disconnected_ms = 1000;
        c.media.ice_failed_ms = 1000;
    })
    .await;
    let room = t.create_room("Gone").await;
    let speaker = Member::join(&t, &room, "speaker", "Sam", speaking(440.0, -12.0)).await;
    let mut leaver = Member::join(&t, &room, "listener", "Lea", listener).await;
    hears(&leaver, 440.0).await;
    let media = t.running().state.media.clone();
    assert_eq!(media.connection_count(), 2);

    // Leaving through signaling closes the connection at once.
    leaver.signal.ok(json!({ "type": "leave" })).await;
    wait_for(
        || media.connection_count() == 1,
        "the leaver's connection closes",
    )
    .await;

    // A peer that stops answering (its consent checks stop) is found dead and freed.
    speaker.peer.close().await;
    wait_for(
        || media.connection_count() == 0,
        "the silent peer is dropped",
    )
    .await;
    let stats = media.worker_stats().await;
    assert!(
        stats.iter().all(|w| w.connections == 0 && w.rooms == 0),
        "{stats:?}"
    );
    assert_eq!(metric(&t, "stoa_media_connections", "").await, 0);
    drop(leaver);
    t.stop().await;
}

async fn wait_for(condition: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_offers_are_refused_with_codes_and_the_socket_stays_usable() {
    let t = TestServer::start().await;
    let room = t.create_room("Bad").await;
    let mut s = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    s.refused(
        json!({ "type": "media_offer", "sdp": "hello" }),
        "invalid_sdp",
    )
    .await;
    s.refused(
        json!({ "type": "media_offer", "sdp": "x".repeat(20_000) }),
        "sdp_too_large",
    )
    .await;
    let video = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                 m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
                 a=rtpmap:96 VP8/90000\r\n";
    s.refused(
        json!({ "type": "media_offer", "sdp": video }),
        "unsupported_media",
    )
    .await;
    let pcmu = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
                a=rtpmap:0 PCMU/8000\r\n";
    s.refused(
        json!({ "type": "media_offer", "sdp": pcmu }),
        "unsupported_codec",
    )
    .await;
    s.refused(json!({ "type": "media_offer" }), "invalid_message")
        .await;
    s.ok(
        json!({ "type": "ice_candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host" }),
    )
    .await;
    // Still a working socket, and a real offer still works.
    let slots = media_slots(&s.welcome);
    let peer = MediaPeer::new(MediaConfig::listener("Lee", slots))
        .await
        .unwrap();
    peer.negotiate(&mut s)
        .await
        .expect("a good offer after bad ones");
    peer.wait_connected(CONNECT).await.unwrap();
    assert_eq!(t.running().state.media.connection_count(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_datagrams_are_counted_and_harm_nobody() {
    let t = TestServer::start().await;
    let room = t.create_room("Noise").await;
    let _speaker = Member::join(&t, &room, "speaker", "Sam", speaking(440.0, -12.0)).await;
    let ear = Member::join(&t, &room, "listener", "Ear", listener).await;
    let slot = hears(&ear, 440.0).await;

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[1; 12]);
    let mut rtp = vec![0x80, 111];
    rtp.extend_from_slice(&[9; 100]);
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 10],
        vec![64; 1400],
        vec![0x80; 3000],
        stun,
        rtp,
        vec![22; 200],
    ];
    let since = Instant::now();
    for addr in t.running().state.media.addrs() {
        for _ in 0..200 {
            for datagram in &junk {
                let _ = socket.send_to(datagram, addr);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fraction = ear.peer.tone_fraction(slot, 440.0, since, Instant::now());
    assert!(fraction >= 0.9, "audio kept flowing: {fraction}");
    assert!(metric(&t, "stoa_media_dropped_total", "reason=\"unroutable\"").await > 0);
    assert!(metric(&t, "stoa_media_dropped_total", "reason=\"malformed\"").await > 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_peer_connection_from_the_same_participant_replaces_the_old_one() {
    let t = TestServer::start().await;
    let room = t.create_room("Reload").await;
    let _speaker = Member::join(&t, &room, "speaker", "Sam", speaking(440.0, -12.0)).await;
    let mut ear = Member::join(&t, &room, "listener", "Ear", listener).await;
    hears(&ear, 440.0).await;

    // A reloaded page: same participant, same socket here, a brand-new peer connection with
    // new ICE credentials. The server must not treat its offer as a renegotiation.
    ear.peer.close().await;
    let slots = media_slots(&ear.signal.welcome);
    let fresh = MediaPeer::new(MediaConfig::listener("Ear again", slots))
        .await
        .unwrap();
    fresh.negotiate(&mut ear.signal).await.expect("answered");
    fresh.wait_connected(CONNECT).await.unwrap();
    ear.peer = fresh;
    hears(&ear, 440.0).await;
    assert_eq!(t.running().state.media.connection_count(), 2);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_limit_is_answered_with_media_full_and_frees_up() {
    let t = TestServer::start_with(|c| c.media.max_connections = 1).await;
    let room = t.create_room("Small").await;
    let mut first = Member::join(&t, &room, "listener", "One", listener).await;
    let mut second = SignalClient::join(&t.participant(&room, "listener", "Two").await).await;
    let slots = media_slots(&second.welcome);
    let peer = MediaPeer::new(MediaConfig::listener("Two", slots))
        .await
        .unwrap();
    let refused = peer.negotiate(&mut second).await.unwrap_err();
    assert_eq!(refused.code(), Some("media_full"));

    first.signal.ok(json!({ "type": "leave" })).await;
    let media = t.running().state.media.clone();
    wait_for(
        || media.connection_count() == 0,
        "the first connection closes",
    )
    .await;
    let peer = MediaPeer::new(MediaConfig::listener("Two", slots))
        .await
        .unwrap();
    peer.negotiate(&mut second).await.expect("room again");
    peer.wait_connected(CONNECT).await.unwrap();
    t.stop().await;
}

/// Records the answers a peer receives, so a test can read the server's ICE credentials.
struct Recording<'a> {
    signal: &'a mut SignalClient,
    answers: Vec<String>,
}

#[async_trait::async_trait]
impl OfferChannel for Recording<'_> {
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, stoa_client::Error> {
        let answer = self.signal.exchange(offer_sdp).await?;
        self.answers.push(answer.clone());
        Ok(answer)
    }
}

/// A binding request with the speaker's server ufrag and a made-up password, from a new
/// address each time: before the fix, ten of them pushed the speaker's real address out of
/// the routing table and its audio stopped (#13, item 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_binding_requests_do_not_move_anyone() {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
    use rtc::stun::textattrs::Username;

    let t = TestServer::start().await;
    let room = t.create_room("Forged").await;
    let mut signal = SignalClient::join(&t.participant(&room, "speaker", "Sam").await).await;
    let slots = media_slots(&signal.welcome);
    let speaker = MediaPeer::new(MediaConfig::speaker(
        "Sam",
        slots,
        AudioSource::tone(440.0, -12.0),
    ))
    .await
    .unwrap();
    let mut recording = Recording {
        signal: &mut signal,
        answers: Vec::new(),
    };
    speaker.negotiate(&mut recording).await.unwrap();
    let answer = recording.answers.pop().unwrap();
    speaker.wait_connected(CONNECT).await.unwrap();
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .to_owned();
    let candidate_port: u16 = answer
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap()
        .parse()
        .unwrap();
    let ear = Member::join(&t, &room, "listener", "Ear", listener).await;
    let slot = hears(&ear, 440.0).await;

    let provider = rtc::crypto::default_provider().unwrap();
    for i in 0..20u8 {
        let mut message = Message::new();
        message
            .build(&[
                Box::new(BINDING_REQUEST),
                Box::new(TransactionId([i; 12])),
                Box::new(Username::new(ATTR_USERNAME, format!("{ufrag}:evil"))),
                Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                    "notTheServersPassword00000000000".to_owned(),
                    provider.crypto(),
                )),
            ])
            .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .send_to(&message.raw, ("127.0.0.1", candidate_port))
            .unwrap();
    }
    // The speaker goes on being heard: its address still routes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fraction = ear.peer.tone_fraction(slot, 440.0, since, Instant::now());
    assert!(fraction >= 0.9, "the speaker is still heard: {fraction}");
    assert!(metric(&t, "stoa_media_dropped_total", "reason=\"rejected\"").await >= 20);
    t.stop().await;
}

/// Media bound to IPv6 loopback: the answer advertises `::1` and a speaker is heard over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_over_ipv6() {
    let v6: std::net::IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
    let t = TestServer::start_with(|c| c.media_bind = Some(v6)).await;
    let room = t.create_room("Six").await;
    let mut signal = SignalClient::join(&t.participant(&room, "speaker", "Sam").await).await;
    let slots = media_slots(&signal.welcome);
    let speaker =
        MediaPeer::new(MediaConfig::speaker("Sam", slots, AudioSource::tone(440.0, -12.0)).on(v6))
            .await
            .unwrap();
    let mut recording = Recording {
        signal: &mut signal,
        answers: Vec::new(),
    };
    speaker.negotiate(&mut recording).await.unwrap();
    let answer = recording.answers.pop().unwrap();
    let candidates: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(
        !candidates.is_empty() && candidates.iter().all(|c| c.contains(" ::1 ")),
        "{answer}"
    );
    speaker.wait_connected(CONNECT).await.unwrap();
    let ear = Member::join(&t, &room, "listener", "Ear", |name, slots| {
        MediaConfig::listener(name, slots).on(v6)
    })
    .await;
    hears(&ear, 440.0).await;
    t.stop().await;
}

/// A speaker and a listener whose clients gather no UDP candidate at all (a network that
/// blocks UDP): both reach the server over ICE-TCP, and the listener hears the speaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_can_only_use_tcp_speak_and_hear() {
    tcp_only_clients_speak_and_hear(ListenerTransport::Rtc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_can_only_use_tcp_speak_and_hear_on_lean_connections() {
    tcp_only_clients_speak_and_hear(ListenerTransport::Lean).await;
}

async fn tcp_only_clients_speak_and_hear(transport: ListenerTransport) {
    let t = server_on(transport).await;
    let room = t.create_room("TCP only").await;
    let _speaker = Member::join(&t, &room, "speaker", "Sam", |name, slots| {
        MediaConfig::speaker(name, slots, AudioSource::tone(440.0, -12.0)).over_tcp_only()
    })
    .await;
    let ear = Member::join(&t, &room, "listener", "Ear", |name, slots| {
        MediaConfig::listener(name, slots).over_tcp_only()
    })
    .await;
    hears(&ear, 440.0).await;
    // Nothing of theirs came over UDP: every datagram the workers read was framed on TCP. The
    // two counts are read from one scrape, and may differ by a frame read but not yet handed
    // to its worker while packets flow, so they are looked at until they agree; a datagram
    // that came over UDP would keep the first count above the second for good.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = t.metrics_text().await;
        let datagrams = sample(&text, "stoa_media_datagrams_in_total", "");
        let frames = sample(&text, "stoa_media_tcp_frames_in_total", "");
        if datagrams == frames {
            assert!(frames > 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "datagrams {datagrams} against TCP frames {frames}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.stop().await;
}
