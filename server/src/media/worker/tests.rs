//! The worker core driven without sockets, through [`Pair`]: real `rtc` clients (set up like
//! browsers) and the real [`Core`], on a clock that moves only when a test moves it.

use std::time::Duration;

use super::super::engine::OPUS_PT;
use super::pair::Pair;
use super::*;

#[test]
fn a_speaker_is_heard_by_a_listener_through_the_core() {
    a_speaker_is_heard(Pair::default());
}

#[test]
fn a_speaker_is_heard_by_a_lean_listener_through_the_core() {
    a_speaker_is_heard(Pair::lean_default());
}

fn a_speaker_is_heard(mut h: Pair) {
    let speaker = h.join(true, true);
    let listener = h.join(false, false);
    h.connect_all();
    for _ in 0..50 {
        h.speak(speaker);
        h.advance(Duration::from_millis(20));
    }
    let counters = &h.core.counters;
    let forwarded = counters.forwarded.get();
    assert_eq!(counters.rtp_in.get(), 50);
    // The first packets arrive before the selection gives the speaker a slot.
    assert!(forwarded >= 45, "forwarded {forwarded}");
    assert_eq!(
        h.clients[listener].rtp_received, forwarded,
        "all in memory, none lost"
    );
    assert_eq!(
        h.clients[speaker].rtp_received, 0,
        "nobody hears themselves"
    );
    assert_eq!(h.core.egress().forwarded, 50);
}

#[test]
fn a_listener_has_no_right_to_speak_and_each_refusal_is_counted() {
    no_right_to_speak(Pair::default());
}

#[test]
fn a_lean_listener_has_no_right_to_speak_and_each_refusal_is_counted() {
    no_right_to_speak(Pair::lean_default());
}

fn no_right_to_speak(mut h: Pair) {
    // On stage but muted by the room: decrypted, then refused.
    let muted = h.join(true, false);
    // A listener: no receiving path; its RTP is refused before any crypto.
    let listener = h.join(false, false);
    let other = h.join(false, false);
    h.connect_all();
    for _ in 0..10 {
        h.speak(muted);
        h.advance(Duration::from_millis(20));
    }
    let forged_rtp = [
        0x80, OPUS_PT, 0, 1, 0, 0, 0, 1, 0x53, 0x54, 0x4f, 0x41, 0xfc,
    ];
    for _ in 0..7 {
        let from = Peer::udp(h.clients[listener].addr);
        h.core.handle_datagram(h.now, from, &forged_rtp);
    }
    let drops = &h.core.counters.drops;
    assert_eq!(drops.not_allowed.get(), 10);
    assert_eq!(drops.no_send_path.get(), 7);
    assert_eq!(h.core.counters.forwarded.get(), 0);
    assert_eq!(h.clients[other].rtp_received, 0);

    // Once the room lets it speak, the same speaker is heard.
    h.core.handle_control(
        h.now,
        Control::Permission {
            key: h.clients[muted].key,
            may_send: true,
        },
    );
    for _ in 0..10 {
        h.speak(muted);
        h.advance(Duration::from_millis(20));
    }
    assert_eq!(h.core.counters.drops.not_allowed.get(), 10);
    assert!(h.clients[other].rtp_received > 0);
}

#[test]
fn a_closed_connection_s_datagrams_are_dropped_and_counted() {
    let mut h = Pair::default();
    let speaker = h.join(true, true);
    h.connect_all();
    let key = h.clients[speaker].key;
    h.core.handle_control(h.now, Control::Close { key });
    // Its goodbye is lost on the way: the client does not know.
    h.core.egress_mut().flush();
    h.core.egress_mut().sent.clear();
    assert!(h.core.conns.is_empty() && h.core.rooms.is_empty());
    let before = h.core.counters.drops.unroutable.get();
    for _ in 0..5 {
        h.speak(speaker);
    }
    assert_eq!(h.core.counters.drops.unroutable.get(), before + 5);
    assert_eq!(h.core.counters.rtp_in.get(), 0);
    assert!(h.core.egress().sent.is_empty());
    assert!(
        h.closed_reports().is_empty(),
        "closed by the room, not reported back"
    );
}

#[test]
fn timeouts_fire_at_the_deadline_the_core_returned() {
    timeouts_fire(Pair::new);
}

#[test]
fn a_silent_lean_connection_times_out_and_its_close_is_reported() {
    timeouts_fire(Pair::lean);
}

fn timeouts_fire(make: fn(Duration, Duration) -> Pair) {
    let failed_after = Duration::from_secs(3);
    let mut h = make(Duration::from_secs(1), failed_after);
    let listener = h.join(false, false);
    h.connect_all();
    let key = h.clients[listener].key;
    // The client goes away without a word: the core hears nothing more from it.
    h.clients_alive = false;
    let silent_since = h.now.at;
    let mut deadlines = 0;
    loop {
        let deadline = h.core.poll_timeout().expect("a connection has timers");
        // Just before the deadline nothing runs: no output, the same deadline.
        let before = Now {
            at: deadline - Duration::from_micros(1),
            wall: h.now.wall,
        };
        h.core.handle_timeout(before);
        assert_eq!(h.core.poll_timeout(), Some(deadline));
        assert!(h.core.egress().batch.is_empty());
        // At the deadline it runs.
        h.now = Now {
            at: deadline,
            wall: h.now.wall + (deadline - h.now.at),
        };
        h.core.handle_timeout(h.now);
        deadlines += 1;
        if !h.core.conns.contains_key(&key) {
            break;
        }
        assert!(deadlines < 10_000, "the connection never timed out");
    }
    let after = h.now.at - silent_since;
    assert!(
        after >= failed_after && after < failed_after + Duration::from_secs(2),
        "closed {after:?} after the client went silent"
    );
    assert_eq!(
        h.closed_reports(),
        vec![key],
        "the worker closed it on its own"
    );
    assert_eq!(h.core.poll_timeout(), None, "nothing left to wake for");
}

#[test]
fn a_speaker_s_red_packet_is_read_into_its_frames() {
    let mut h = Pair::default();
    let speaker = h.join(true, true);
    h.connect_all();
    // RED as Chromium sends it: one earlier frame 20 ms back, then the primary.
    let red = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: super::super::engine::RED_PT,
            sequence_number: 2,
            timestamp: 960,
            ssrc: super::super::testkit::CLIENT_MIC_SSRC,
            ..Default::default()
        },
        payload: bytes::Bytes::from_static(&[
            0x80 | OPUS_PT,
            (960u32 >> 6) as u8,
            ((960u32 & 0x3f) << 2) as u8,
            2,
            OPUS_PT,
            0xfc,
            7,
            0xfc,
            8,
        ]),
    };
    assert!(h.send_rtp(speaker, red));
    assert_eq!(h.core.counters.rtp_in.get(), 1);
    let kept = h.core.conns[&h.clients[speaker].key]
        .history
        .before(1920, 2);
    let kept: Vec<_> = kept
        .iter()
        .flatten()
        .map(|f| (f.timestamp, f.payload.to_vec()))
        .collect();
    assert_eq!(kept, [(960, vec![0xfc, 8]), (0, vec![0xfc, 7])]);
}

#[test]
fn a_lean_listener_goes_on_stage_by_renegotiation_and_is_heard() {
    let mut h = Pair::lean_default();
    let guest = h.join(false, false);
    let listener = h.join(false, false);
    h.connect_all();
    // Off stage: no receiving path, its packets are refused before any crypto.
    let _ = h.send_rtp(guest, super::super::testkit::mic_packet(1));
    assert_eq!(h.rtp_in(), 0);
    // Invited up: the same lean connection now receives its microphone, and it is heard.
    h.restage(guest, true, true);
    for _ in 0..50 {
        h.speak(guest);
        h.advance(Duration::from_millis(20));
    }
    assert!(h.rtp_in() >= 49, "read {}", h.rtp_in());
    assert!(h.clients[listener].rtp_received >= 45);
    // Back to the audience: nothing more is read, and the connection stays.
    h.restage(guest, false, false);
    let before = h.rtp_in();
    for _ in 0..5 {
        let _ = h.send_rtp(guest, super::super::testkit::mic_packet(200));
    }
    assert_eq!(h.rtp_in(), before);
    assert!(h.is_open(h.clients[guest].key));
}

#[test]
fn a_core_is_quiet_once_only_consent_checks_and_reports_come() {
    let mut h = Pair::lean_default();
    let speaker = h.join(true, true);
    h.join(false, false);
    h.connect_all();
    assert!(
        !h.core.quiet(h.now.at),
        "just connected: the handshakes were not quiet"
    );
    let before = h.core.counters.datagrams_in.get();
    for _ in 0..150 {
        h.advance(Duration::from_millis(20));
    }
    assert!(
        h.core.counters.datagrams_in.get() > before,
        "the clients checked consent and reported while nobody spoke"
    );
    assert!(h.core.quiet(h.now.at), "3 s of settled traffic");

    // Audio ends the quiet at once, and it lasts a while after the audio stops.
    h.speak(speaker);
    assert!(!h.core.quiet(h.now.at));
    h.advance(Duration::from_secs(1));
    assert!(!h.core.quiet(h.now.at));
    h.advance(Duration::from_millis(1500));
    assert!(h.core.quiet(h.now.at));

    // So do a permission to speak and a new connection's offer.
    h.core.handle_control(
        h.now,
        Control::Permission {
            key: h.clients[speaker].key,
            may_send: false,
        },
    );
    assert!(!h.core.quiet(h.now.at));
    h.advance(Duration::from_millis(2500));
    assert!(h.core.quiet(h.now.at));
    h.join(false, false);
    assert!(!h.core.quiet(h.now.at));
}
