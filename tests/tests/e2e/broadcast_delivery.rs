//! Who hears the room over the broadcast tier: invites made with `"delivery": "broadcast"`
//! (listeners only), their redemption (a session token plus the playlist link), and the rule
//! that follows such a listener into the room: in the audience like anyone, refused media until
//! they accept an invitation to the stage, on WebRTC from then on.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_client::Error;
use stoa_client::audio::AudioSource;
use stoa_client::media::{MediaConfig, MediaPeer};
use stoa_tests::signal::{SignalClient, media_slots};
use stoa_tests::{Answer, Engine, TestServer, on_both_engines};

const CONNECT: Duration = Duration::from_secs(10);

async fn post_invite(t: &TestServer, room: &str, body: Value) -> Answer {
    t.op(
        Method::POST,
        &format!("/api/v1/rooms/{room}/invites"),
        Some(body),
    )
    .await
}

async fn broadcast_invite(t: &TestServer, room: &str) -> Value {
    t.create_invite(room, "listener", json!({ "delivery": "broadcast" }))
        .await
}

// What the store keeps (an invite's delivery, a room's own cap) is checked on both engines.
on_both_engines!(
    broadcast_invites_are_for_listeners_and_say_so_everywhere,
    a_room_may_set_its_own_webrtc_audience_cap,
);

async fn broadcast_invites_are_for_listeners_and_say_so_everywhere(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Tiers").await;

    let made = broadcast_invite(&t, &room).await;
    assert_eq!(made["delivery"], "broadcast");
    assert_eq!(made["role"], "listener");
    let plain = t.create_invite(&room, "listener", json!({})).await;
    assert_eq!(plain["delivery"], "webrtc", "the default");

    // Whoever may speak needs WebRTC; a delivery nobody knows is not guessed at.
    for role in ["speaker", "moderator"] {
        post_invite(&t, &room, json!({ "role": role, "delivery": "broadcast" }))
            .await
            .expect_problem(422, "invalid_delivery");
    }
    post_invite(
        &t,
        &room,
        json!({ "role": "listener", "delivery": "carrier-pigeon" }),
    )
    .await
    .expect_problem(422, "invalid_body");

    let listed = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    let deliveries: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["delivery"].as_str().unwrap())
        .collect();
    assert_eq!(deliveries, ["broadcast", "webrtc"]);

    // A WebRTC redemption says so, with no link.
    let webrtc = t
        .join(plain["code"].as_str().unwrap(), "Wes")
        .await
        .expect(200);
    assert_eq!(webrtc["delivery"], "webrtc");
    assert!(webrtc.get("broadcast").is_none(), "{webrtc}");

    // A broadcast redemption answers as usual, plus the link, which plays.
    let answer = t
        .join(made["code"].as_str().unwrap(), "Bea")
        .await
        .expect(200);
    for field in ["token", "participant_id", "room_id", "signal_url"] {
        assert!(answer[field].is_string(), "{field}: {answer}");
    }
    assert_eq!(answer["role"], "listener");
    assert_eq!(answer["delivery"], "broadcast");
    assert!(answer["broadcast"]["expires_at"].is_string(), "{answer}");
    let url = answer["broadcast"]["playlist_url"].as_str().unwrap();
    assert!(
        url.starts_with(&t.url(&format!("/broadcast/{room}/"))),
        "{url}"
    );
    let playlist = t.http.get(url).send().await.unwrap();
    assert_eq!(playlist.status(), 200);
    assert!(playlist.text().await.unwrap().starts_with("#EXTM3U"));

    // The audit log names the delivery.
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let redeemed: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "invite.redeemed")
        .map(|e| &e["detail"]["delivery"])
        .collect();
    assert_eq!(redeemed, [&json!("webrtc"), &json!("broadcast")]);
    t.stop().await;
}

#[tokio::test]
async fn a_server_without_broadcasts_makes_no_broadcast_invites() {
    let t = TestServer::start_with(|c| c.broadcast.enabled = false).await;
    let room = t.create_room("Quiet").await;
    post_invite(
        &t,
        &room,
        json!({ "role": "listener", "delivery": "broadcast" }),
    )
    .await
    .expect_problem(422, "broadcast_disabled");
    t.stop().await;
}

/// A participant's signaling socket and WebRTC peer (not yet negotiated).
struct Member {
    signal: SignalClient,
    peer: MediaPeer,
}

impl Member {
    async fn join(answer: &Value, config: impl FnOnce(usize) -> MediaConfig) -> Member {
        let signal = SignalClient::join(answer).await;
        let peer = MediaPeer::new(config(media_slots(&signal.welcome)))
            .await
            .expect("peer");
        Member { signal, peer }
    }

    fn id(&self) -> String {
        self.signal.participant_id()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broadcast_listener_gets_media_only_once_on_stage() {
    let t = TestServer::start().await;
    let room = t.create_room("Promotion").await;
    let mut host = Member::join(&t.participant(&room, "moderator", "Mo").await, |slots| {
        MediaConfig::listener("Mo", slots)
    })
    .await;
    host.peer.negotiate(&mut host.signal).await.expect("host");
    let mut ear = Member::join(&t.participant(&room, "listener", "Ear").await, |slots| {
        MediaConfig::listener("Ear", slots)
    })
    .await;
    ear.peer.negotiate(&mut ear.signal).await.expect("ear");
    ear.peer
        .wait_connected(CONNECT)
        .await
        .expect("ear connected");

    let invite = broadcast_invite(&t, &room).await;
    let answer = t
        .join(invite["code"].as_str().unwrap(), "Fan")
        .await
        .expect(200);
    let mut fan = Member::join(&answer, |slots| MediaConfig::listener("Fan", slots)).await;
    // The room knows the tier, and says so only to the person themselves.
    assert_eq!(fan.signal.welcome["snapshot"]["delivery"], "broadcast");
    assert_eq!(fan.signal.welcome["snapshot"]["you"]["role"], "listener");
    let joined = host
        .signal
        .wait_about("participant_joined", &fan.id())
        .await;
    assert!(joined["participant"].get("delivery").is_none(), "{joined}");
    // They count in the audience.
    let here = people(&t, &room).await;
    assert!(
        here.iter().any(|p| p["id"] == fan.id().as_str()),
        "{here:?}"
    );

    // The socket hands out fresh links for as long as the visit lasts (the session token
    // may have expired long before); the same one everyone gets now.
    let link = fan
        .signal
        .request(json!({ "type": "broadcast_link" }))
        .await;
    assert_eq!(link["type"], "broadcast_link", "{link}");
    assert_eq!(link["playlist_url"], answer["broadcast"]["playlist_url"]);
    assert!(link["expires_at"].is_string(), "{link}");

    let refused = |result: Result<(), Error>| match result {
        Err(e) => e.code().map(str::to_owned),
        Ok(()) => None,
    };
    // No media connection at all, not even a receive-only one.
    assert_eq!(
        refused(fan.peer.negotiate(&mut fan.signal).await).as_deref(),
        Some("broadcast_delivery")
    );
    fan.signal.ok(json!({ "type": "raise_hand" })).await;
    host.signal.wait_about("hand_raised", &fan.id()).await;
    host.signal
        .ok(json!({ "type": "invite_to_stage", "participant": fan.id() }))
        .await;
    fan.signal.wait_type("invited_to_stage").await;
    // Invited is not yet on stage.
    assert_eq!(
        refused(fan.peer.negotiate(&mut fan.signal).await).as_deref(),
        Some("broadcast_delivery")
    );

    fan.signal.ok(json!({ "type": "accept_invitation" })).await;
    let accepted = Instant::now();
    let on_stage = fan.signal.wait_about("joined_stage", &fan.id()).await;
    assert_eq!(on_stage["participant"]["role"], "speaker");
    fan.peer
        .start_speaking(&mut fan.signal, AudioSource::tone(660.0, -12.0))
        .await
        .expect("once on stage the offer is answered");
    assert!(fan.peer.report().send.answer_accepts_audio);
    let heard = ear
        .peer
        .wait_for_tone(0, 660.0, CONNECT)
        .await
        .expect("the new speaker heard");
    let delay = heard.saturating_duration_since(accepted);
    eprintln!("accepting the invitation → heard over WebRTC: {delay:?}");
    assert!(delay < Duration::from_secs(1), "{delay:?}");

    // Back in the audience they stay on WebRTC: a fresh snapshot says nothing of a broadcast.
    fan.signal.ok(json!({ "type": "leave_stage" })).await;
    fan.signal.wait_about("left_stage", &fan.id()).await;
    fan.peer
        .stop_speaking(&mut fan.signal)
        .await
        .expect("a listener on WebRTC renegotiates");
    let mut again = SignalClient::join(&answer).await;
    assert!(
        again.welcome["snapshot"].get("delivery").is_none(),
        "{}",
        again.welcome
    );
    again.sync().await;
    fan.peer.close().await;
    ear.peer.close().await;
    host.peer.close().await;
    t.stop().await;
}

/// The people the room lists; answered by the room's task after everything sent before, so
/// the counts it keeps for the join answer are up to date once this returns.
async fn people(t: &TestServer, room: &str) -> Vec<Value> {
    let page = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/participants"),
            None,
        )
        .await
        .expect(200);
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_past_the_webrtc_audience_cap_hear_the_broadcast() {
    let t = TestServer::start_with(|c| c.broadcast.webrtc_audience_cap = 2).await;
    let room = t.create_room("Packed").await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    let code = invite["code"].as_str().unwrap();
    let mut on_webrtc = Vec::new();
    for name in ["One", "Two"] {
        let answer = t.join(code, name).await.expect(200);
        assert_eq!(answer["delivery"], "webrtc", "{answer}");
        assert!(answer.get("broadcast").is_none(), "{answer}");
        let signal = SignalClient::join(&answer).await;
        assert!(signal.welcome["snapshot"].get("delivery").is_none());
        on_webrtc.push(signal);
    }
    assert_eq!(people(&t, &room).await.len(), 2);

    // The third listener of an ordinary invite is past the cap: the broadcast, with its link.
    let third = t.join(code, "Three").await.expect(200);
    assert_eq!(third["delivery"], "broadcast", "{third}");
    let url = third["broadcast"]["playlist_url"].as_str().unwrap();
    let playlist = t.http.get(url).send().await.unwrap();
    assert_eq!(playlist.status(), 200);
    assert!(playlist.text().await.unwrap().starts_with("#EXTM3U"));
    let mut fan = Member::join(&third, |slots| MediaConfig::listener("Three", slots)).await;
    assert_eq!(fan.signal.welcome["snapshot"]["delivery"], "broadcast");
    match fan.peer.negotiate(&mut fan.signal).await {
        Err(e) => assert_eq!(e.code(), Some("broadcast_delivery")),
        Ok(()) => panic!("a listener past the cap was given WebRTC"),
    }

    // Speakers and moderators are never capped.
    for role in ["speaker", "moderator"] {
        let answer = t.participant(&room, role, role).await;
        assert_eq!(answer["delivery"], "webrtc", "{answer}");
        let signal = SignalClient::join(&answer).await;
        assert!(signal.welcome["snapshot"].get("delivery").is_none());
    }

    // One leaves: the next listener is on WebRTC again.
    let mut leaving = on_webrtc.pop().unwrap();
    leaving.send(json!({ "type": "leave" })).await;
    leaving.wait_closed().await;
    let here = people(&t, &room).await;
    assert!(!here.iter().any(|p| p["display_name"] == "Two"), "{here:?}");
    let fourth = t.join(code, "Four").await.expect(200);
    assert_eq!(fourth["delivery"], "webrtc", "{fourth}");
    // The join answer is a guess made before the socket comes: two redeemed at once both hear
    // "webrtc", and the room, which decides when they connect, puts the second on the broadcast.
    let fifth = t.join(code, "Five").await.expect(200);
    assert_eq!(fifth["delivery"], "webrtc", "{fifth}");
    let mut four = Member::join(&fourth, |slots| MediaConfig::listener("Four", slots)).await;
    assert!(four.signal.welcome["snapshot"].get("delivery").is_none());
    four.peer
        .negotiate(&mut four.signal)
        .await
        .expect("a listener under the cap gets WebRTC");
    let five = SignalClient::join(&fifth).await;
    assert_eq!(five.welcome["snapshot"]["delivery"], "broadcast");
    four.peer.close().await;
    fan.peer.close().await;
    t.stop().await;
}

async fn room_with_cap(t: &TestServer, cap: u32) -> Answer {
    t.op(
        Method::POST,
        "/api/v1/rooms",
        Some(json!({ "title": "Small", "webrtc_audience_cap": cap })),
    )
    .await
}

async fn a_room_may_set_its_own_webrtc_audience_cap(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let made = room_with_cap(&t, 1).await.expect(201);
    assert_eq!(made["webrtc_audience_cap"], 1);
    let room = made["id"].as_str().unwrap();
    let first = t.participant(room, "listener", "First").await;
    assert_eq!(first["delivery"], "webrtc");
    let _first = SignalClient::join(&first).await;
    assert_eq!(people(&t, room).await.len(), 1);
    let second = t.participant(room, "listener", "Second").await;
    assert_eq!(second["delivery"], "broadcast", "{second}");

    for cap in [0, 100_001] {
        room_with_cap(&t, cap)
            .await
            .expect_problem(422, "invalid_limit");
    }
    // A server without broadcasts has nowhere to put them: no cap.
    let quiet = TestServer::start_with(|c| {
        engine.configure(c);
        c.broadcast.enabled = false;
    })
    .await;
    let made = room_with_cap(&quiet, 1).await.expect(201);
    let room = made["id"].as_str().unwrap();
    let first = quiet.participant(room, "listener", "First").await;
    let _first = SignalClient::join(&first).await;
    assert_eq!(people(&quiet, room).await.len(), 1);
    let second = quiet.participant(room, "listener", "Second").await;
    assert_eq!(second["delivery"], "webrtc");
    let second = SignalClient::join(&second).await;
    assert!(second.welcome["snapshot"].get("delivery").is_none());
    quiet.stop().await;
    t.stop().await;
}
