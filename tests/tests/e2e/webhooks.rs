//! Webhooks end to end: a live room's events reach a receiver that verifies every signature
//! with the `standardwebhooks` Python package (`tests/webhooks/receiver.py`), exactly once and
//! in order, through a receiver that fails, then hangs, then comes back; and a receiver that
//! never answers does not slow the room down; and a receiver over HTTPS, its certificate
//! verified.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_tests::certs::Authority;
use stoa_tests::signal::SignalClient;
use stoa_tests::webhook_receiver::{PATIENCE, Receiver, SECRET};
use stoa_tests::{Engine, TestServer, on_both_engines};

fn count(entries: &[Value], answer: &str) -> usize {
    entries.iter().filter(|e| e["answer"] == answer).count()
}

async fn start_server(engine: Engine, receiver: &Receiver) -> TestServer {
    let url = receiver.url();
    TestServer::start_with(|c| {
        engine.configure(c);
        c.webhooks.url = Some(url);
        c.webhooks.secret = Some(SECRET.into());
        c.webhooks.timeout_ms = 300;
        c.webhooks.retry_first_ms = 50;
        c.webhooks.retry_max_ms = 200;
        c.webhooks.max_attempts = 1000;
    })
    .await
}

/// The outbox through the operator API, every page.
async fn deliveries(t: &TestServer, state: Option<&str>) -> Vec<Value> {
    let filter = state.map(|s| format!("&state={s}")).unwrap_or_default();
    t.every_item(&format!("/api/v1/webhooks/deliveries?limit=20{filter}"))
        .await
}

/// The failed deliveries, once there are `n` of them (or whatever there is after `PATIENCE`).
async fn failed_deliveries(t: &TestServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let failed = deliveries(t, Some("failed")).await;
        if failed.len() == n || Instant::now() > deadline {
            return failed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_event_once_in_order_through_failures_and_hangs(engine: Engine) {
    let receiver = Receiver::start("fail");
    let t = start_server(engine, &receiver).await;
    let room = t.create_room("Hooks").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut sam = SignalClient::join(&t.participant(&room, "speaker", "Sam").await).await;
    let mut lee = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    let (sid, lid) = (sam.participant_id(), lee.participant_id());
    mo.wait_about("participant_joined", &lid).await;
    mo.ok(json!({ "type": "mute", "participant": sid })).await;
    receiver
        .wait_until("three failures", |e| count(e, "fail") >= 3)
        .await;

    // The receiver stops answering: moderation goes on at full speed.
    receiver.set_mode("hang").await;
    receiver
        .wait_until("two hangs", |e| count(e, "hang") >= 2)
        .await;
    let started = Instant::now();
    mo.ok(json!({ "type": "invite_to_stage", "participant": lid }))
        .await;
    lee.ok(json!({ "type": "accept_invitation" })).await;
    mo.ok(json!({ "type": "remove", "participant": sid })).await;
    let rest = t
        .op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/participants/{lid}/mute"),
            None,
        )
        .await;
    rest.expect(204);
    let took = started.elapsed();
    assert_eq!(sam.wait_closed().await.1, "removed");
    assert!(
        took < Duration::from_secs(2),
        "a hanging receiver slowed the room: {took:?}"
    );

    // Recording is reported too, started, stopped and ready, after everything before it.
    mo.ok(json!({ "type": "start_recording" })).await;
    mo.ok(json!({ "type": "stop_recording" })).await;

    receiver.set_mode("ok").await;
    let expected = [
        "room.started",
        "participant.joined",
        "participant.joined",
        "participant.joined",
        "participant.muted",
        "stage.invited",
        "stage.joined",
        "participant.removed",
        "participant.left",
        "participant.muted",
        "recording.started",
        "recording.stopped",
        "recording.ready",
    ];
    let got = receiver
        .wait_until("every event", |e| count(e, "ok") >= expected.len())
        .await;
    assert_eq!(count(&got, "invalid"), 0, "{got:#?}");
    let accepted: Vec<&Value> = got.iter().filter(|e| e["answer"] == "ok").collect();
    let types: Vec<&str> = accepted
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, expected, "{got:#?}");
    let mut ids: Vec<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected.len(), "an event came twice: {got:#?}");

    // What the events say.
    let body = |i: usize| &accepted[i]["body"];
    assert_eq!(body(0)["data"]["room_id"], room.as_str());
    assert_eq!(body(0)["data"]["title"], "Hooks");
    assert_eq!(body(4)["data"]["participant"]["id"], sid.as_str());
    assert_eq!(body(4)["data"]["participant"]["muted"], true);
    assert_eq!(body(4)["data"]["by"], mo.participant_id().as_str());
    assert_eq!(body(7)["data"]["by"], mo.participant_id().as_str());
    assert_eq!(body(8)["data"]["reason"], "removed");
    assert_eq!(body(9)["data"]["by"], "operator");
    for i in [10, 11] {
        assert_eq!(body(i)["data"]["by"], mo.participant_id().as_str());
        assert_eq!(body(i)["data"]["room_id"], room.as_str());
    }
    assert!(body(0)["timestamp"].as_str().unwrap().ends_with('Z'));

    // The outbox agrees: all delivered, in the order received, after several attempts.
    let outbox = deliveries(&t, None).await;
    let outbox_ids: Vec<&str> = outbox.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let received_ids: Vec<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(outbox_ids, received_ids);
    assert!(
        outbox.iter().all(|d| d["state"] == "delivered"),
        "{outbox:#?}"
    );
    assert!(outbox[0]["attempts"].as_u64().unwrap() >= 3, "{outbox:#?}");
    assert!(deliveries(&t, Some("pending")).await.is_empty());
    t.op(Method::GET, "/api/v1/webhooks/deliveries?state=lost", None)
        .await
        .expect_problem(400, "invalid_query");

    // Everyone leaves; a ban and the end through REST, with nobody in the room, are reported
    // too, after everything the room said.
    lee.ok(json!({ "type": "leave" })).await;
    mo.ok(json!({ "type": "leave" })).await;
    let wait_not_live = Instant::now() + PATIENCE;
    while t
        .op(Method::GET, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(200)["live"]
        == true
    {
        assert!(Instant::now() < wait_not_live, "the room stays live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/participants/{sid}?ban=true"),
        None,
    )
    .await
    .expect(204);
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    let outbox = deliveries(&t, None).await;
    let got = receiver
        .wait_until("the ban and the end", |e| count(e, "ok") >= outbox.len())
        .await;
    let accepted: Vec<&Value> = got.iter().filter(|e| e["answer"] == "ok").collect();
    let received_ids: Vec<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let outbox_ids: Vec<&str> = outbox.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(received_ids, outbox_ids, "{got:#?}");
    let tail: Vec<&Value> = accepted[accepted.len() - 2..]
        .iter()
        .map(|e| &e["body"])
        .collect();
    assert_eq!(
        (tail[0]["type"].as_str(), tail[1]["type"].as_str()),
        (Some("participant.banned"), Some("room.ended")),
        "{got:#?}"
    );
    assert_eq!(tail[0]["data"]["participant"]["id"], sid.as_str());
    assert_eq!(tail[0]["data"]["by"], "operator");
    assert_eq!(tail[1]["data"]["room_id"], room.as_str());
    t.stop().await;
}

async fn a_receiver_that_keeps_failing_is_given_up_and_listed(engine: Engine) {
    let receiver = Receiver::start("fail");
    let url = receiver.url();
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.webhooks.url = Some(url);
        c.webhooks.secret = Some(SECRET.into());
        c.webhooks.retry_first_ms = 20;
        c.webhooks.retry_max_ms = 40;
        c.webhooks.max_attempts = 3;
    })
    .await;
    let room = t.create_room("Given up").await;
    let joined = t.participant(&room, "moderator", "Mo").await;
    let _mo = SignalClient::join(&joined).await;
    // room.started and participant.joined, three attempts each.
    receiver
        .wait_until("six failures", |e| count(e, "fail") >= 6)
        .await;
    let failed = failed_deliveries(&t, 2).await;
    let types: Vec<&str> = failed
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["room.started", "participant.joined"], "{failed:#?}");
    for d in &failed {
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["last_status"], 500);
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .contains("receiver told to fail"),
            "{d}"
        );
        assert!(d["finished_at"].is_string());
    }
    let page = t
        .op(
            Method::GET,
            "/api/v1/webhooks/deliveries?state=failed&limit=1",
            None,
        )
        .await
        .expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string());
    // Operators only: a moderator's session token is not enough.
    t.call(
        Method::GET,
        "/api/v1/webhooks/deliveries",
        Some(joined["token"].as_str().unwrap()),
        None,
    )
    .await
    .expect_problem(403, "operator_only");
    t.stop().await;
}

/// An `https://` receiver: with the CA that signed its certificate in `[webhooks] tls_ca`, it
/// gets every event over TLS with valid signatures; a server that trusts only the system's
/// roots refuses its certificate, never sends it an event, and lists why.
async fn an_https_receiver_is_reached_over_verified_tls(engine: Engine) {
    let ours = Authority::new("Hooks test CA");
    let receiver = Receiver::start_tls("ok", &ours);
    assert!(receiver.url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hooks-ca.pem");
    std::fs::write(&ca, &ours.ca_pem).unwrap();
    let start = |tls_ca: Option<std::path::PathBuf>| {
        let url = receiver.url();
        TestServer::start_with(move |c| {
            engine.configure(c);
            c.webhooks.url = Some(url);
            c.webhooks.secret = Some(SECRET.into());
            c.webhooks.tls_ca = tls_ca;
            c.webhooks.retry_first_ms = 20;
            c.webhooks.retry_max_ms = 40;
            c.webhooks.max_attempts = 3;
        })
    };

    let t = start(Some(ca)).await;
    let room = t.create_room("Over TLS").await;
    let joined = t.participant(&room, "moderator", "Mo").await;
    let mo = SignalClient::join(&joined).await;
    let got = receiver
        .wait_until("room.started and participant.joined", |e| {
            count(e, "ok") >= 2
        })
        .await;
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["room.started", "participant.joined"], "{got:#?}");
    assert_eq!(got[0]["body"]["data"]["room_id"], room.as_str());
    drop(mo);
    t.stop().await;

    // The system's roots do not include this CA: refused, retried, given up, and listed.
    let before = receiver.entries().len();
    let t = start(None).await;
    let room = t.create_room("Unknown issuer").await;
    let joined = t.participant(&room, "moderator", "Mo").await;
    let _mo = SignalClient::join(&joined).await;
    let failed = failed_deliveries(&t, 2).await;
    assert_eq!(failed.len(), 2, "{failed:#?}");
    for d in &failed {
        assert_eq!(d["attempts"], 3, "{d}");
        assert_eq!(d["last_status"], Value::Null, "{d}");
        let error = d["last_error"].as_str().unwrap();
        assert!(error.contains("certificate"), "{error}");
    }
    assert_eq!(
        receiver.entries().len(),
        before,
        "nothing reached the receiver"
    );
    t.stop().await;
}

on_both_engines!(
    every_event_once_in_order_through_failures_and_hangs,
    a_receiver_that_keeps_failing_is_given_up_and_listed,
    an_https_receiver_is_reached_over_verified_tls,
);
