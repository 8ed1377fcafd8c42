//! The `stoa-client` library against a running server: its three example bots, each run as
//! its `examples/` source has it (the files are compiled into this test), a room that resumes
//! by itself after its connection drops, and typed events and moderation between two rooms.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::json;
use stoa_client::api::Api;
use stoa_client::audio::{AudioSource, read_wav, tone_fraction, tone_pcm, tone_present, wav_bytes};
use stoa_client::media::{MediaConfig, MediaPeer};
use stoa_client::{
    AudioFrame, By, Event, InviteLink, JoinOptions, Listener, ParticipantId, Role, Room,
};
use stoa_tests::TestServer;
use stoa_tests::signal::{SignalClient, WAIT, media_slots};
use tokio::sync::oneshot;

#[allow(dead_code)]
#[path = "../../../client/examples/stage_player.rs"]
mod stage_player;

#[allow(dead_code)]
#[path = "../../../client/examples/recorder.rs"]
mod recorder;

#[allow(dead_code)]
#[path = "../../../client/examples/loudness_moderator.rs"]
mod loudness_moderator;

const CONNECT: Duration = Duration::from_secs(10);

/// A fresh invite of `role` in `room`, made through the library's REST client.
async fn link(t: &TestServer, room: &str, role: &str) -> InviteLink {
    Api::new(&t.base, &t.api_key)
        .create_invite(room, role, json!({ "label": "client test" }))
        .await
        .unwrap()
}

/// A participant with a socket of the test kit and a media peer speaking a tone.
async fn tone_speaker(
    t: &TestServer,
    room: &str,
    name: &str,
    hz: f32,
    dbov: f32,
) -> (SignalClient, MediaPeer) {
    let mut signal = SignalClient::join(&t.participant(room, "speaker", name).await).await;
    let slots = media_slots(&signal.welcome);
    let peer = MediaPeer::new(MediaConfig::speaker(
        name,
        slots,
        AudioSource::tone(hz, dbov),
    ))
    .await
    .unwrap();
    peer.negotiate(&mut signal).await.unwrap();
    peer.wait_connected(CONNECT).await.unwrap();
    (signal, peer)
}

/// Waits until `listener` hears 100 ms of a tone at `hz` on one slot, every frame of it named
/// as `speaker`'s.
async fn hears(listener: &mut Listener, hz: f32, speaker: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    // Per slot, the last five frames.
    let mut recent: HashMap<usize, VecDeque<AudioFrame>> = HashMap::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, listener.next())
            .await
            .unwrap_or_else(|_| panic!("no {hz} Hz from {speaker} within {WAIT:?}"))
            .expect("media connection open");
        let window = recent.entry(frame.slot).or_default();
        window.push_back(frame);
        if window.len() > 5 {
            window.pop_front();
        }
        let pcm: Vec<i16> = window.iter().flat_map(|f| f.pcm.clone()).collect();
        if window.len() == 5
            && window
                .iter()
                .all(|f| f.speaker.as_ref().is_some_and(|w| w == speaker))
            && tone_present(&pcm, hz)
        {
            return;
        }
    }
}

/// The next event that matches, skipping others.
async fn event(room: &mut Room, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, room.next_event())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
            .unwrap_or_else(|| panic!("the room closed before {what}"));
        if matches(&event) {
            return event;
        }
    }
}

/// A stop signal for an example bot, and the future it waits on.
fn stop_signal() -> (oneshot::Sender<()>, impl Future<Output = ()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    (stop, async move {
        let _ = stopped.await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stage_player_example_plays_its_file_when_invited_on_stage() {
    let t = TestServer::start().await;
    let room = t.create_room("Jukebox").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let ear = Room::join(&link(&t, &room, "listener").await, JoinOptions::new("Ear"))
        .await
        .unwrap();
    let mut ears = ear.listen().unwrap();

    // Two seconds of 660 Hz, as a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jingle.wav");
    std::fs::write(&path, wav_bytes(&tone_pcm(660.0, -12.0, 96_000))).unwrap();
    let wav = read_wav(&path).unwrap();
    let (stop, stopped) = stop_signal();
    let bot_link = link(&t, &room, "listener").await;
    let mut bot =
        tokio::spawn(async move { stage_player::run(&bot_link, "Jukebox", wav, stopped).await });

    let hand = mo
        .wait(|m| m["type"] == "hand_raised" && m["participant"]["display_name"] == "Jukebox")
        .await;
    let bot_id = hand["participant"]["id"].as_str().unwrap().to_owned();
    mo.ok(json!({ "type": "invite_to_stage", "participant": bot_id }))
        .await;
    mo.wait_about("joined_stage", &bot_id).await;
    // The listener hears the file, and knows it is the bot's.
    hears(&mut ears, 660.0, &bot_id).await;
    // Played once, the bot steps down and raises its hand for the next time.
    let down = mo.wait_about("left_stage", &bot_id).await;
    assert_eq!(down["by"], bot_id.as_str());
    // The server's clock is the test's: past the 2 s a hand must wait between two raises.
    t.clock.advance(Duration::from_secs(3));
    tokio::select! {
        _ = mo.wait(|m| m["type"] == "hand_raised" && m["participant"]["id"] == bot_id.as_str()) => {}
        ended = &mut bot => panic!("the bot stopped: {ended:?}"),
    }

    stop.send(()).unwrap();
    bot.await.unwrap().unwrap();
    let left = mo.wait_about("participant_left", &bot_id).await;
    assert_eq!(left["reason"], "left");
    ear.leave().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_recorder_example_writes_what_it_hears_to_a_wav_file() {
    let t = TestServer::start().await;
    let room = t.create_room("Tape").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let (_signal, speaker) = tone_speaker(&t, &room, "Sam", 440.0, -12.0).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("room.wav");
    let (stop, stopped) = stop_signal();
    let (bot_link, bot_path) = (link(&t, &room, "listener").await, path.clone());
    let bot =
        tokio::spawn(async move { recorder::run(&bot_link, "Recorder", &bot_path, stopped).await });
    mo.wait(|m| {
        m["type"] == "participant_joined" && m["participant"]["display_name"] == "Recorder"
    })
    .await;
    // Three more seconds of the speaker (the recorder's media connects meanwhile).
    let sent = speaker.report().send.frames_sent;
    speaker
        .wait_until(WAIT, "three seconds sent", |r| {
            r.send.frames_sent >= sent + 150
        })
        .await
        .unwrap();
    stop.send(()).unwrap();
    let written = bot.await.unwrap().unwrap();

    let pcm = read_wav(&path).unwrap();
    assert!((written.as_secs_f64() - pcm.len() as f64 / 48_000.0).abs() < 1e-6);
    // From where the audio starts, the file is the speaker's tone, at least two seconds of it.
    let start = pcm.iter().position(|&s| s != 0).expect("not all silence");
    let tone = &pcm[start..];
    assert!(tone.len() >= 2 * 48_000, "{} samples", tone.len());
    let fraction = tone_fraction(tone, 440.0);
    assert!(fraction >= 0.8, "440 Hz in {fraction} of the windows");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_loudness_moderator_example_mutes_the_loud_and_leaves_the_quiet_alone() {
    let t = TestServer::start().await;
    let room = t.create_room("Quiet please").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let (quiet_signal, _quiet) = tone_speaker(&t, &room, "Quiet", 440.0, -30.0).await;
    let quiet_id = quiet_signal.participant_id();
    mo.wait(|m| m["type"] == "active_speakers" && m["speakers"][0] == quiet_id.as_str())
        .await;

    let (stop, stopped) = stop_signal();
    let bot_link = link(&t, &room, "moderator").await;
    let bot = tokio::spawn(async move {
        loudness_moderator::run(&bot_link, "Volume police", -20.0, stopped).await
    });
    let (loud_signal, _loud) = tone_speaker(&t, &room, "Loud", 880.0, -6.0).await;
    let loud_id = loud_signal.participant_id();
    let muted = mo.wait_about("muted", &loud_id).await;
    assert_eq!(muted["participant"]["muted"], true);
    let bot_id = muted["by"].as_str().unwrap().to_owned();
    assert_ne!(bot_id, "operator");

    stop.send(()).unwrap();
    let muted_by_bot = bot.await.unwrap().unwrap();
    assert_eq!(muted_by_bot, [ParticipantId::new(loud_id)]);
    mo.wait_about("participant_left", &bot_id).await;
    mo.sync().await;
    assert!(
        !mo.received
            .iter()
            .any(|m| m["type"] == "muted" && m["participant"]["id"] == quiet_id.as_str()),
        "the quiet speaker was muted"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_resumes_by_itself_after_its_connection_drops() {
    let t = TestServer::start().await;
    let room = t.create_room("Flaky network").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let (sam, _speaker) = tone_speaker(&t, &room, "Sam", 440.0, -12.0).await;
    let sam_id = sam.participant_id();
    let mut bot = Room::join(&link(&t, &room, "listener").await, JoinOptions::new("Bot"))
        .await
        .unwrap();
    let me = bot.me().to_string();
    let mut ears = bot.listen().unwrap();
    hears(&mut ears, 440.0, &sam_id).await;
    bot.raise_hand().await.unwrap();
    mo.wait_about("hand_raised", &me).await;

    bot.interrupt();
    event(&mut bot, "reconnecting", |e| {
        matches!(e, Event::Reconnecting)
    })
    .await;
    let Event::Resumed(snapshot) =
        event(&mut bot, "resumed", |e| matches!(e, Event::Resumed(_))).await
    else {
        unreachable!()
    };
    assert_eq!(snapshot.you.id.as_str(), me, "the same place");
    assert!(snapshot.you.hand_raised, "with its hand still up");
    assert!(bot.view().me().hand_raised);

    // Requests work again, and the media connection was kept.
    bot.lower_hand().await.unwrap();
    mo.wait_about("hand_lowered", &me).await;
    hears(&mut ears, 440.0, &sam_id).await;
    bot.leave().await.unwrap();
    assert_eq!(
        mo.wait_about("participant_left", &me).await["reason"],
        "left"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_and_moderation_between_two_rooms() {
    let t = TestServer::start().await;
    let room = t.create_room("Typed").await;
    let mut host = Room::join(
        &link(&t, &room, "moderator").await,
        JoinOptions::new("Host").without_media(),
    )
    .await
    .unwrap();
    let mut guest = Room::join(
        &link(&t, &room, "listener").await,
        JoinOptions::new("Guest").without_media(),
    )
    .await
    .unwrap();
    let (host_id, guest_id) = (host.me().clone(), guest.me().clone());
    let by_host = By::Participant(host_id.clone());
    assert_eq!(guest.view().me().role, Role::Listener);
    assert!(host.view().participant(&host_id).unwrap().on_stage);

    event(
        &mut host,
        "the guest joining",
        |e| matches!(e, Event::ParticipantJoined(p) if p.id == guest_id),
    )
    .await;
    guest.raise_hand().await.unwrap();
    assert!(
        guest.view().me().hand_raised,
        "events come before the answer"
    );
    event(
        &mut host,
        "a raised hand",
        |e| matches!(e, Event::HandRaised(p) if p.id == guest_id && p.hand_raised),
    )
    .await;
    assert_eq!(host.view().snapshot.raised_hands[0].id, guest_id);

    // A listener may not moderate; the server's code comes back.
    let refused = guest.mute(&host_id).await.unwrap_err();
    assert_eq!(refused.code(), Some("not_permitted"), "{refused}");

    host.invite_to_stage(&guest_id).await.unwrap();
    let invited = event(&mut guest, "an invitation", |e| {
        matches!(e, Event::InvitedToStage { .. })
    })
    .await;
    assert_eq!(
        invited,
        Event::InvitedToStage {
            participant: guest_id.clone(),
            by: by_host.clone()
        }
    );
    assert!(guest.view().snapshot.invitation_pending);
    guest.accept_invitation().await.unwrap();
    assert_eq!(guest.view().me().role, Role::Speaker);
    event(
        &mut host,
        "the guest on stage",
        |e| matches!(e, Event::JoinedStage(p) if p.id == guest_id),
    )
    .await;
    assert!(
        host.view()
            .snapshot
            .stage
            .iter()
            .any(|p| p.id == guest_id && p.role == Role::Speaker)
    );

    host.mute(&guest_id).await.unwrap();
    let muted = event(&mut guest, "muted", |e| matches!(e, Event::Muted { .. })).await;
    assert!(
        matches!(muted, Event::Muted { participant, by } if participant.muted && by == by_host)
    );
    guest.unmute().await.unwrap();
    host.move_to_audience(&guest_id).await.unwrap();
    let moved = event(&mut guest, "moved", |e| {
        matches!(e, Event::LeftStage { .. })
    })
    .await;
    assert!(
        matches!(moved, Event::LeftStage { participant, .. } if participant.role == Role::Listener)
    );

    host.remove(&guest_id).await.unwrap();
    let closed = event(&mut guest, "closed", |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(
        closed,
        Event::Closed {
            code: 4001,
            reason: "removed".to_owned()
        }
    );
    assert_eq!(guest.next_event().await, None, "nothing after the end");
    let gone = guest.raise_hand().await.unwrap_err();
    assert!(matches!(gone, stoa_client::Error::Closed { .. }), "{gone}");
    host.leave().await.unwrap();
    t.stop().await;
}
