//! Replay links end to end, on both store engines: a moderator or the operator makes one for a
//! recording; redeeming it gives a token that opens that recording's detail and audio (range
//! requests, by header or by `?access_token=` as an `<audio>` element needs) and nothing
//! else. Refusals are tested as carefully as successes: expired, revoked, used up, wrong room,
//! wrong recording, other endpoints, the signaling socket, who may make and revoke links.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use stoa_tests::signal::SignalClient;
use stoa_tests::{Engine, TestServer, on_both_engines};

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

/// Records `room` (someone must be in it) once, start to stop, with the operator key: the
/// recording's id.
async fn record_once(t: &TestServer, room: &str) -> String {
    let path = format!("/api/v1/rooms/{room}/recording");
    let started = t.op(Method::POST, &path, None).await.expect(201);
    t.op(Method::DELETE, &path, None).await.expect(204);
    s(&started["id"])
}

/// Makes a replay link with `auth` for `recording` of `room`.
async fn make_link(t: &TestServer, auth: &str, room: &str, recording: &str, body: Value) -> Value {
    t.call(
        Method::POST,
        &format!("/api/v1/rooms/{room}/recordings/{recording}/replay-links"),
        Some(auth),
        Some(body),
    )
    .await
    .expect(201)
}

async fn redeem(t: &TestServer, link: &str) -> stoa_tests::Answer {
    t.call(
        Method::POST,
        "/api/v1/replay",
        None,
        Some(json!({ "link": link })),
    )
    .await
}

/// GET with an optional bearer credential and `Range`: status, headers, raw body.
async fn get_raw(
    url: &str,
    auth: Option<&str>,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = stoa::http_client::client().get(url);
    if let Some(auth) = auth {
        req = req.bearer_auth(auth);
    }
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

async fn replay_links_open_one_recording_and_nothing_else(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Recorded").await;
    let other = t.create_room("Elsewhere").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let _m = SignalClient::join(&mo).await;
    let eve = t.participant(&other, "moderator", "Eve").await;
    let _e = SignalClient::join(&eve).await;
    let first = record_once(&t, &room).await;
    let second = record_once(&t, &room).await;
    let theirs = record_once(&t, &other).await;

    // A moderator of the room makes one (the operator may too); the code is shown once.
    let link = make_link(
        &t,
        &s(&mo["token"]),
        &room,
        &first,
        json!({ "label": "for the newsletter", "max_uses": 5 }),
    )
    .await;
    assert_eq!(link["recording_id"], first.as_str());
    assert_eq!(link["room_id"], room.as_str());
    assert_eq!(
        (link["uses"].as_u64(), link["revoked"].as_bool()),
        (Some(0), Some(false))
    );
    let code = s(&link["code"]);
    assert_eq!(s(&link["url"]), t.url(&format!("/r/{code}")));

    // Redeemed by anyone, by code or by the whole link.
    let answer = redeem(&t, &s(&link["url"])).await.expect(200);
    assert_eq!(answer["recording_id"], first.as_str());
    assert_eq!(answer["room_id"], room.as_str());
    let token = s(&answer["token"]);
    let detail_path = s(&answer["recording_path"]);
    assert_eq!(
        detail_path,
        format!("/api/v1/rooms/{room}/recordings/{first}")
    );

    // The detail with the timeline, and the audio with ranges, by header and by query.
    let detail = t
        .call(Method::GET, &detail_path, Some(&token), None)
        .await
        .expect(200);
    assert_eq!(detail["id"], first.as_str());
    assert!(detail["speakers"].is_array(), "{detail}");
    let audio = t.url(&s(&detail["audio_path"]));
    let (status, headers, head) = get_raw(&audio, Some(&token), Some("bytes=0-3")).await;
    assert_eq!((status, head.as_slice()), (206, b"OggS".as_slice()));
    let len = detail["size_bytes"].as_u64().unwrap();
    assert_eq!(
        headers["content-range"],
        format!("bytes 0-3/{len}").as_str()
    );
    let (status, headers, whole) = get_raw(&t.url(&s(&answer["audio_url"])), None, None).await;
    assert_eq!((status, whole.len() as u64), (200, len));
    assert_eq!(headers["content-type"], "audio/ogg");
    let (status, _, tail) = get_raw(&t.url(&s(&answer["audio_url"])), None, Some("bytes=-5")).await;
    assert_eq!((status, tail.as_slice()), (206, &whole[whole.len() - 5..]));

    // Nothing else: another recording of the same room, another room's, the list, the room,
    // its invites, the live room's recording switch, the signaling socket.
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{room}/recordings/{second}"),
        Some(&token),
        None,
    )
    .await
    .expect_problem(403, "wrong_recording");
    let (status, _, _) = get_raw(
        &t.url(&format!(
            "/api/v1/rooms/{room}/recordings/{second}/audio?access_token={token}"
        )),
        None,
        None,
    )
    .await;
    assert_eq!(status, 403);
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{other}/recordings/{theirs}"),
        Some(&token),
        None,
    )
    .await
    .expect_problem(403, "wrong_room");
    // The recording under another room's path is refused before it is looked for.
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{other}/recordings/{first}"),
        Some(&token),
        None,
    )
    .await
    .expect_problem(403, "wrong_room");
    for (method, path) in [
        (Method::GET, format!("/api/v1/rooms/{room}/recordings")),
        (Method::GET, format!("/api/v1/rooms/{room}")),
        (Method::GET, format!("/api/v1/rooms/{room}/invites")),
        (Method::GET, format!("/api/v1/rooms/{room}/replay-links")),
        (Method::GET, format!("/api/v1/rooms/{room}/events")),
        (Method::POST, format!("/api/v1/rooms/{room}/recording")),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/recordings/{first}/replay-links"),
        ),
    ] {
        t.call(method.clone(), &path, Some(&token), Some(json!({})))
            .await
            .expect_problem(403, "replay_only");
    }
    let mut socket = SignalClient::open(&s(&mo["signal_url"])).await;
    socket.send(json!({ "type": "join", "token": token })).await;
    assert_eq!(socket.wait_type("error").await["code"], "invalid_token");
    // A session token is no replay token in the query, nor a forged one.
    let (status, _, _) = get_raw(
        &format!("{audio}?access_token={}", s(&mo["token"])),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    t.call(Method::GET, &detail_path, Some(&forged), None)
        .await
        .expect_problem(401, "invalid_token");

    // Listed with their uses, for moderators of the room and the operator only.
    let listed = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/replay-links"),
            None,
        )
        .await
        .expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    let item = &listed["items"][0];
    assert_eq!(
        (item["uses"].as_u64(), item["max_uses"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(item["label"], "for the newsletter");
    assert!(item.get("code").is_none() && item.get("url").is_none());
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{room}/replay-links"),
        Some(&s(&eve["token"])),
        None,
    )
    .await
    .expect_problem(403, "wrong_room");

    // Revoked: tokens it gave stop at once, and the link answers like an unknown one.
    t.call(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/replay-links/{}", s(&link["id"])),
        Some(&s(&mo["token"])),
        None,
    )
    .await
    .expect(204);
    t.call(Method::GET, &detail_path, Some(&token), None)
        .await
        .expect_problem(401, "replay_link_revoked");
    let (status, _, _) = get_raw(&t.url(&s(&answer["audio_url"])), None, None).await;
    assert_eq!(status, 401);
    let revoked = redeem(&t, &code).await;
    revoked.expect_problem(404, "replay_link_invalid");
    let unknown = redeem(&t, "AAAAAAAAAAAAAAAAAAAAAA").await;
    unknown.expect_problem(404, "replay_link_invalid");
    assert_eq!(revoked.body, unknown.body);
    redeem(&t, "not a link")
        .await
        .expect_problem(400, "malformed_replay_link");
    // Revoking twice is harmless; the audit log says it once.
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/replay-links/{}", s(&link["id"])),
        None,
    )
    .await
    .expect(204);
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let lines: Vec<(String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| s(&e["action"]).starts_with("replay_link."))
        .map(|e| (s(&e["action"]), s(&e["actor"])))
        .collect();
    let by = s(&mo["participant_id"]);
    assert_eq!(
        lines,
        [
            ("replay_link.created".to_owned(), by.clone()),
            ("replay_link.revoked".to_owned(), by)
        ]
    );
    // Another room's links cannot be revoked through this room.
    let theirs_link = make_link(&t, &t.api_key, &other, &theirs, json!({})).await;
    t.op(
        Method::DELETE,
        &format!(
            "/api/v1/rooms/{room}/replay-links/{}",
            s(&theirs_link["id"])
        ),
        None,
    )
    .await
    .expect_problem(404, "replay_link_not_found");
    redeem(&t, &s(&theirs_link["code"])).await.expect(200);
    t.stop().await;
}

async fn replay_links_expire_get_used_up_and_are_made_only_by_moderators(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Recorded").await;
    let other = t.create_room("Elsewhere").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let _m = SignalClient::join(&mo).await;
    let eve = t.participant(&other, "moderator", "Eve").await;
    let _e = SignalClient::join(&eve).await;
    let recording = record_once(&t, &room).await;
    let theirs = record_once(&t, &other).await;
    let links = format!("/api/v1/rooms/{room}/recordings/{recording}/replay-links");

    // Who may make one: moderators of the room and the operator; not listeners, speakers,
    // nor another room's moderator; not for another room's recording.
    for role in ["listener", "speaker"] {
        let who = t.participant(&room, role, "Someone").await;
        t.call(
            Method::POST,
            &links,
            Some(&s(&who["token"])),
            Some(json!({})),
        )
        .await
        .expect_problem(403, "moderator_only");
    }
    t.call(
        Method::POST,
        &links,
        Some(&s(&eve["token"])),
        Some(json!({})),
    )
    .await
    .expect_problem(403, "wrong_room");
    t.op(
        Method::POST,
        &format!("/api/v1/rooms/{room}/recordings/{theirs}/replay-links"),
        Some(json!({})),
    )
    .await
    .expect_problem(404, "recording_not_found");
    t.op(
        Method::POST,
        &format!("/api/v1/rooms/{room}/recordings/rc_nope/replay-links"),
        Some(json!({})),
    )
    .await
    .expect_problem(404, "recording_not_found");
    // Bad input is refused and makes nothing.
    for (body, code) in [
        (json!({ "max_uses": 0 }), "invalid_max_uses"),
        (json!({ "expires_in_secs": 0 }), "invalid_expiry"),
        (json!({ "role": "moderator" }), "invalid_body"),
        (json!({ "label": "x".repeat(101) }), "invalid_label"),
    ] {
        t.op(Method::POST, &links, Some(body))
            .await
            .expect_problem(422, code);
    }
    let listed = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/replay-links"),
            None,
        )
        .await
        .expect(200);
    assert_eq!(listed["items"], json!([]));

    // Expiry: redeemed before, refused after; the token dies with the link.
    let timed = make_link(
        &t,
        &t.api_key,
        &room,
        &recording,
        json!({ "expires_in_secs": 60 }),
    )
    .await;
    let answer = redeem(&t, &s(&timed["code"])).await.expect(200);
    assert_eq!(answer["expires_at"], timed["expires_at"]);
    let token = s(&answer["token"]);
    let detail = s(&answer["recording_path"]);
    t.call(Method::GET, &detail, Some(&token), None)
        .await
        .expect(200);
    t.clock.advance(Duration::from_secs(61));
    redeem(&t, &s(&timed["code"]))
        .await
        .expect_problem(410, "replay_link_expired");
    t.call(Method::GET, &detail, Some(&token), None)
        .await
        .expect_problem(401, "token_expired");

    // Used up: `max_uses` redemptions, however many try at once; tokens already given work.
    let limited = make_link(&t, &t.api_key, &room, &recording, json!({ "max_uses": 3 })).await;
    let code = s(&limited["code"]);
    let attempts = (0..12).map(|_| {
        let code = code.clone();
        let t = &t;
        async move { redeem(t, &code).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let ok: Vec<&stoa_tests::Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let used_up = answers
        .iter()
        .filter(|a| a.code() == "replay_link_used_up")
        .count();
    assert_eq!((ok.len(), used_up), (3, 9));
    redeem(&t, &code)
        .await
        .expect_problem(410, "replay_link_used_up");
    t.call(Method::GET, &detail, Some(&s(&ok[0].body["token"])), None)
        .await
        .expect(200);

    // Links outlive the room: an ended room's recordings can still be shared and played.
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    let after = make_link(&t, &t.api_key, &room, &recording, json!({})).await;
    let answer = redeem(&t, &s(&after["code"])).await.expect(200);
    t.call(Method::GET, &detail, Some(&s(&answer["token"])), None)
        .await
        .expect(200);
    t.stop().await;
}

async fn deleting_a_recording_removes_its_file_and_links(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Recorded").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let _m = SignalClient::join(&mo).await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let kept = record_once(&t, &room).await;
    let gone = record_once(&t, &room).await;
    let recordings = format!("/api/v1/rooms/{room}/recordings");
    let files = t.config.data_dir.join("recordings");
    assert!(files.join(format!("{gone}.ogg")).exists());
    let link = make_link(&t, &t.api_key, &room, &gone, json!({})).await;
    let token = s(&redeem(&t, &s(&link["code"])).await.expect(200)["token"]);
    let other_link = make_link(&t, &t.api_key, &room, &kept, json!({})).await;

    // Not by listeners, nor with a replay token; not while it is being written.
    t.call(
        Method::DELETE,
        &format!("{recordings}/{gone}"),
        Some(&s(&lee["token"])),
        None,
    )
    .await
    .expect_problem(403, "moderator_only");
    t.call(
        Method::DELETE,
        &format!("{recordings}/{gone}"),
        Some(&token),
        None,
    )
    .await
    .expect_problem(403, "replay_only");
    let live = t
        .op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/recording"),
            None,
        )
        .await
        .expect(201);
    t.op(
        Method::DELETE,
        &format!("{recordings}/{}", s(&live["id"])),
        None,
    )
    .await
    .expect_problem(409, "recording_in_progress");
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/recording"),
        None,
    )
    .await
    .expect(204);

    // A moderator deletes it: the row, the files, its links and their tokens go.
    t.call(
        Method::DELETE,
        &format!("{recordings}/{gone}"),
        Some(&s(&mo["token"])),
        None,
    )
    .await
    .expect(204);
    assert!(!files.join(format!("{gone}.ogg")).exists());
    assert!(!files.join(format!("{gone}.speakers.jsonl")).exists());
    assert!(files.join(format!("{kept}.ogg")).exists());
    let listed = t.op(Method::GET, &recordings, None).await.expect(200);
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(&r["id"]))
        .collect();
    assert_eq!(ids, [kept.clone(), s(&live["id"])]);
    t.op(Method::GET, &format!("{recordings}/{gone}"), None)
        .await
        .expect_problem(404, "recording_not_found");
    t.call(
        Method::GET,
        &format!("{recordings}/{gone}"),
        Some(&token),
        None,
    )
    .await
    .expect_problem(404, "replay_link_invalid");
    redeem(&t, &s(&link["code"]))
        .await
        .expect_problem(404, "replay_link_invalid");
    let links = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/replay-links"),
            None,
        )
        .await
        .expect(200);
    let left: Vec<String> = links["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| s(&l["id"]))
        .collect();
    assert_eq!(left, [s(&other_link["id"])]);
    t.op(Method::DELETE, &format!("{recordings}/{gone}"), None)
        .await
        .expect_problem(404, "recording_not_found");
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let deleted: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "recording.deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["actor"], s(&mo["participant_id"]).as_str());
    assert_eq!(deleted[0]["detail"]["recording_id"], gone.as_str());
    t.stop().await;
}

on_both_engines!(
    replay_links_open_one_recording_and_nothing_else,
    replay_links_expire_get_used_up_and_are_made_only_by_moderators,
    deleting_a_recording_removes_its_file_and_links,
);
