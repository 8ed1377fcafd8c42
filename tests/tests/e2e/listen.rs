//! Listen links end to end: a room's public broadcast, heard without joining. A moderator (here
//! the operator) opens one; its entry point hands out the signed broadcast path, which
//! `ffprobe` and `ffmpeg` (Debian's) play as independent clients; the players' heartbeats
//! count in the audience a WebRTC participant sees; and every refusal has its stable code.
//! The store side runs on both engines.

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use stoa_client::audio::{WINDOW_SAMPLES, tone_present};
use stoa_tests::signal::SignalClient;
use stoa_tests::{Answer, Engine, TestServer, on_both_engines};

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

async fn open_listen_link(t: &TestServer, room: &str, body: Value) -> Value {
    t.op(
        Method::POST,
        &format!("/api/v1/rooms/{room}/listen-links"),
        Some(body),
    )
    .await
    .expect(201)
}

/// The entry point, as a player without any credential asks it.
async fn enter(t: &TestServer, code: &str) -> Answer {
    t.call(Method::GET, &format!("/api/v1/listen/{code}"), None, None)
        .await
}

/// A heartbeat with `body` as it is sent: status and problem code.
async fn heartbeat(t: &TestServer, url: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let res = t
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    if status != 204 {
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    } else {
        assert_eq!(res.headers()["cache-control"], "no-store");
    }
    let body: Value = res.json().await.unwrap_or_default();
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

fn beat(client: &str) -> String {
    json!({ "client": client }).to_string()
}

/// 16-bit PCM at 48 kHz mono that `ffmpeg` decodes from `url` in `seconds`.
async fn ffmpeg_pcm(url: &str, seconds: u32) -> Vec<i16> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i", url, "-t"])
        .arg(seconds.to_string())
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "pipe:1"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 30), out)
        .await
        .expect("ffmpeg keeps up with the stream")
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The audience as a participant on WebRTC is told it: the next `audience_count` that
/// satisfies `pred`.
async fn audience(listener: &mut SignalClient, pred: impl Fn(u64, u64) -> bool) -> Value {
    listener
        .wait(|m| {
            m["type"] == "audience_count"
                && pred(
                    m["count"].as_u64().unwrap_or(0),
                    m["anonymous"].as_u64().unwrap_or(0),
                )
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listen_link_plays_the_stage_and_its_listeners_count_in_the_audience() {
    let t = TestServer::start().await;
    let room = t.create_room("Open air").await;
    let sam = stoa_tests::tone_speaker(&t.base, &t.api_key, &room, 440.0).await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let mut lee = SignalClient::join(&lee).await;
    assert_eq!(lee.welcome["snapshot"]["audience_count"], 1);
    assert!(lee.welcome["snapshot"].get("anonymous").is_none());

    let link = open_listen_link(&t, &room, json!({ "label": "newsletter" })).await;
    assert_eq!(link["url"], format!("{}/l/{}", t.base, s(&link["code"])));
    assert_eq!(link["label"], "newsletter");
    assert_eq!(link["revoked"], false);
    let entry = enter(&t, &s(&link["code"])).await;
    assert_eq!(entry.headers["cache-control"], "public, max-age=5");
    let entry = entry.expect(200);
    assert_eq!(entry["title"], "Open air");
    assert_eq!(entry["room_id"], room);
    assert_eq!(entry["heartbeat_secs"], 20);
    let playlist = s(&entry["playlist_url"]);
    let heartbeat_url = s(&entry["heartbeat_url"]);
    assert_eq!(
        heartbeat_url,
        playlist.replace("playlist.m3u8", "heartbeat"),
        "the heartbeat goes with the files, to the node that mixes the room"
    );

    // An independent player, given only what the entry point said, hears the stage.
    let probe = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
        ])
        .args(["-of", "json", &playlist])
        .output()
        .await
        .expect("ffprobe runs");
    let streams: Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(
        streams["streams"][0],
        json!({"codec_name": "opus", "sample_rate": "48000", "channels": 1}),
        "{streams}"
    );
    let pcm = ffmpeg_pcm(&playlist, 5).await;
    let windows: Vec<bool> = pcm
        .chunks_exact(WINDOW_SAMPLES)
        .map(|w| tone_present(w, 440.0))
        .collect();
    // The stream may begin as the mix starts hearing the speaker (its jitter buffers fill):
    // from a second after the tone first shows, every 100 ms carries it.
    let first = windows.iter().position(|t| *t).expect("the tone") + 10;
    assert!(
        windows.len() >= first + 30 && windows[first..].iter().all(|t| *t),
        "the tone in every 100 ms window after it started: {windows:?}"
    );

    // Three players report in (one of them twice): Lee sees them in the audience.
    for client in [
        "player-aaaaaaaaaaaaaaaa",
        "player-bbbbbbbbbbbbbbbb",
        "player-cccccccccccccccc",
        "player-aaaaaaaaaaaaaaaa",
    ] {
        assert_eq!(
            heartbeat(&t, &heartbeat_url, beat(client)).await,
            (204, String::new())
        );
    }
    let told = audience(&mut lee, |_, anonymous| anonymous == 3).await;
    assert_eq!(
        told["count"], 4,
        "Lee and three anonymous listeners: {told}"
    );
    // Someone joining now is shown the same count at once.
    let ada = t.participant(&room, "listener", "Ada").await;
    let ada = SignalClient::join(&ada).await;
    assert_eq!(ada.welcome["snapshot"]["anonymous"], 3);
    assert_eq!(ada.welcome["snapshot"]["audience_count"], 5);
    ada.close().await;

    // A minute without heartbeats: they are gone from the count.
    t.clock.advance(Duration::from_secs(61));
    let told = audience(&mut lee, |_, anonymous| anonymous == 0).await;
    assert_eq!(told["count"], 1, "{told}");
    assert!(told.get("anonymous").is_none(), "{told}");

    sam.leave().await.expect("left");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_are_bounded_validated_and_refused_with_stable_codes() {
    let t = TestServer::start_with(|c| {
        c.limits.listener_calls_per_minute = 1;
        c.limits.listener_call_burst = 60;
    })
    .await;
    let room = t.create_room("Guarded").await;
    let link = open_listen_link(&t, &room, json!({})).await;
    let entry = enter(&t, &s(&link["code"])).await.expect(200);
    let url = s(&entry["heartbeat_url"]);
    let access = url.split('/').nth(5).unwrap().to_owned();
    let other = t.create_room("Other").await;

    let cases: Vec<(String, String, u16, &str)> = vec![
        (url.clone(), "x".repeat(300), 413, "body_too_large"),
        (url.clone(), "{\"client\":".into(), 422, "invalid_heartbeat"),
        (url.clone(), beat("short"), 422, "invalid_heartbeat"),
        (
            url.clone(),
            beat("not/a/client/id/at/all"),
            422,
            "invalid_heartbeat",
        ),
        (
            url.clone(),
            json!({ "client": "player-aaaaaaaaaaaaaaaa", "more": 1 }).to_string(),
            422,
            "invalid_heartbeat",
        ),
        (
            t.url(&format!("/broadcast/{other}/{access}/heartbeat")),
            beat("player-aaaaaaaaaaaaaaaa"),
            403,
            "broadcast_link_invalid",
        ),
        (
            t.url(&format!("/broadcast/{room}/1.AAAAAAAAAAAAAAAA/heartbeat")),
            beat("player-aaaaaaaaaaaaaaaa"),
            403,
            "broadcast_link_invalid",
        ),
        (
            t.url(&format!("/broadcast/rm_nope/{access}/heartbeat")),
            beat("player-aaaaaaaaaaaaaaaa"),
            404,
            "room_not_found",
        ),
        (url.clone(), beat("player-aaaaaaaaaaaaaaaa"), 204, ""),
    ];
    for (url, body, status, code) in cases {
        assert_eq!(
            heartbeat(&t, &url, body.clone()).await,
            (status, code.to_owned()),
            "{url} {}",
            &body[..body.len().min(60)]
        );
    }
    // A body far past the server's limit is refused before it is read.
    assert_eq!(
        heartbeat(&t, &url, vec![b'{'; 64 * 1024]).await,
        (413, "body_too_large".to_owned())
    );
    // Heartbeats are POSTs only; GET is another file of the broadcast.
    let got = t.http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 405);

    // A leaked path stops within its two periods; an ended room's heartbeats are refused.
    t.clock.advance(Duration::from_secs(600));
    assert_eq!(
        heartbeat(&t, &url, beat("player-aaaaaaaaaaaaaaaa")).await,
        (403, "broadcast_link_expired".to_owned())
    );
    t.clock.advance(Duration::from_secs(60));
    let fresh = s(&enter(&t, &s(&link["code"])).await.expect(200)["heartbeat_url"]);
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    // The mix notices the end within a couple of seconds; heartbeats meanwhile still count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match heartbeat(&t, &fresh, beat("player-aaaaaaaaaaaaaaaa")).await {
            (410, code) if code == "room_ended" => break,
            (204, _) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("a heartbeat to an ended room: {other:?}"),
        }
    }
    // Per client address, with the entry point: the burst is spent, the next waits.
    let mut refused = None;
    for _ in 0..100 {
        let (status, code) = heartbeat(&t, &url, beat("player-bbbbbbbbbbbbbbbb")).await;
        if status == 429 {
            refused = Some((status, code));
            break;
        }
    }
    assert_eq!(refused, Some((429, "rate_limited".to_owned())));
    enter(&t, &s(&link["code"]))
        .await
        .expect_problem(429, "rate_limited");
    t.clock.advance(Duration::from_secs(60));
    enter(&t, &s(&link["code"]))
        .await
        .expect_problem(410, "room_ended");

    t.stop().await;
}

async fn listen_links_are_made_listed_revoked_and_refused(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Public").await;
    let other = t.create_room("Other").await;
    let forever = open_listen_link(&t, &room, json!({ "label": "site" })).await;
    let brief = open_listen_link(&t, &room, json!({ "expires_in_secs": 60 })).await;
    for field in [
        "id",
        "code",
        "url",
        "label",
        "expires_at",
        "revoked",
        "created_at",
    ] {
        assert!(forever.get(field).is_some(), "a listen link lacks {field}");
    }
    assert!(s(&forever["id"]).starts_with("ll_"));
    assert!(forever["expires_at"].is_null());
    assert!(s(&brief["expires_at"]).ends_with('Z'));

    // Listed to moderators, without codes; one room's links are its own.
    let listed = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/listen-links"),
            None,
        )
        .await
        .expect(200);
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i.get("code").is_none() && i.get("url").is_none())
    );
    let empty = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{other}/listen-links"),
            None,
        )
        .await
        .expect(200);
    assert!(empty["items"].as_array().unwrap().is_empty());

    // Who may: the operator and the room's moderators; nobody else.
    let host = t.participant(&room, "moderator", "Host").await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let elsewhere = t.participant(&other, "moderator", "Ada").await;
    let path = format!("/api/v1/rooms/{room}/listen-links");
    t.call(
        Method::POST,
        &path,
        Some(&s(&host["token"])),
        Some(json!({})),
    )
    .await
    .expect(201);
    t.call(
        Method::POST,
        &path,
        Some(&s(&lee["token"])),
        Some(json!({})),
    )
    .await
    .expect_problem(403, "moderator_only");
    t.call(Method::GET, &path, Some(&s(&elsewhere["token"])), None)
        .await
        .expect_problem(403, "wrong_room");
    t.call(Method::POST, &path, None, Some(json!({})))
        .await
        .expect_problem(401, "missing_credentials");
    for (body, code) in [
        (json!({ "expires_in_secs": 0 }), "invalid_expiry"),
        (json!({ "label": "x".repeat(101) }), "invalid_label"),
        (json!({ "role": "speaker" }), "invalid_body"),
    ] {
        t.op(Method::POST, &path, Some(body))
            .await
            .expect_problem(422, code);
    }
    t.op(
        Method::POST,
        "/api/v1/rooms/rm_AAAAAAAAAAAAAAAA/listen-links",
        Some(json!({})),
    )
    .await
    .expect_problem(404, "room_not_found");

    // The entry point: valid, forged, malformed, expired, revoked.
    enter(&t, &s(&forever["code"])).await.expect(200);
    enter(&t, "AAAAAAAAAAAAAAAAAAAAAA")
        .await
        .expect_problem(404, "listen_link_invalid");
    enter(&t, "not-a-code")
        .await
        .expect_problem(404, "listen_link_invalid");
    let invite = t.create_invite(&room, "listener", json!({})).await;
    enter(&t, &s(&invite["code"]))
        .await
        .expect_problem(404, "listen_link_invalid");
    t.clock.advance(Duration::from_secs(60));
    enter(&t, &s(&brief["code"]))
        .await
        .expect_problem(410, "listen_link_expired");
    let revoke = |room: &str, id: &str| format!("/api/v1/rooms/{room}/listen-links/{id}");
    t.op(Method::DELETE, &revoke(&other, &s(&forever["id"])), None)
        .await
        .expect_problem(404, "listen_link_not_found");
    t.op(Method::DELETE, &revoke(&room, "ll_nope"), None)
        .await
        .expect_problem(404, "listen_link_not_found");
    t.op(Method::DELETE, &revoke(&room, &s(&forever["id"])), None)
        .await
        .expect(204);
    enter(&t, &s(&forever["code"]))
        .await
        .expect_problem(404, "listen_link_invalid");
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"listen_link.created"), "{actions:?}");
    assert!(actions.contains(&"listen_link.revoked"), "{actions:?}");

    // An ended room: its links answer that it ended, and it takes no new ones.
    let last = open_listen_link(&t, &room, json!({})).await;
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    enter(&t, &s(&last["code"]))
        .await
        .expect_problem(410, "room_ended");
    t.op(Method::POST, &path, Some(json!({})))
        .await
        .expect_problem(410, "room_ended");

    // The page of a listen link is the web client's listen page.
    let page = t.http.get(s(&last["url"])).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/app/listen.js"));
    t.stop().await;
}

on_both_engines!(listen_links_are_made_listed_revoked_and_refused);

/// A listen link's entry point is one more door to guess codes at: each wrong code counts as a
/// failed authentication of the address, which is then refused everywhere for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_listen_codes_is_throttled_per_address() {
    let t = TestServer::start_with(|c| {
        c.limits.auth_failure_burst = 3;
        c.limits.auth_failures_per_minute = 1;
    })
    .await;
    let room = t.create_room("Guessed").await;
    let link = open_listen_link(&t, &room, json!({})).await;
    for _ in 0..3 {
        enter(&t, "AAAAAAAAAAAAAAAAAAAAAA")
            .await
            .expect_problem(404, "listen_link_invalid");
    }
    let throttled = enter(&t, "AAAAAAAAAAAAAAAAAAAAAA").await;
    throttled.expect_problem(429, "too_many_failures");
    assert!(throttled.headers.contains_key("retry-after"));
    enter(&t, &s(&link["code"]))
        .await
        .expect_problem(429, "too_many_failures");
    t.clock.advance(Duration::from_secs(120));
    enter(&t, &s(&link["code"])).await.expect(200);
    t.stop().await;
}
