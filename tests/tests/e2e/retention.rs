//! Rooms' recording policy end to end, on SQLite and PostgreSQL: a room that records by
//! default starts recording when its first person is in (everyone sees it, the audit log
//! says the server did it for the room's setting, a moderator stops it, and Debian's
//! `ffprobe` and `ffmpeg` read the file); retention deletes what ran out (a recording with its
//! clips and files, a live clip) and keeps what did not (a young recording, one being
//! written, one in a room that keeps them). Days pass on the server's manual clock; the
//! retention pass runs every second, and each wait for it polls for what it must delete.
//! Who may change the policy, and what bad values get, as carefully.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_client::audio::{WINDOW_SAMPLES, tone_present};
use stoa_tests::decoders::{ffmpeg_pcm, ffprobe_playback_secs};
use stoa_tests::signal::SignalClient;
use stoa_tests::{Engine, TestServer, on_both_engines, tone_speaker};

on_both_engines!(
    a_room_that_records_by_default_records_when_it_goes_live,
    retention_deletes_what_ran_out_and_keeps_the_rest,
);

const DAY: Duration = Duration::from_secs(86_400);

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

/// The room's audit lines whose action starts with `prefix`: (action, actor, detail).
async fn audit(t: &TestServer, room: &str, prefix: &str) -> Vec<(String, String, Value)> {
    let events = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/events?limit=200"),
            None,
        )
        .await
        .expect(200);
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| s(&e["action"]).starts_with(prefix))
        .map(|e| (s(&e["action"]), s(&e["actor"]), e["detail"].clone()))
        .collect()
}

/// The room's recordings, as listed.
async fn recordings(t: &TestServer, room: &str) -> Vec<Value> {
    let listed = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/recordings"),
            None,
        )
        .await
        .expect(200);
    listed["items"].as_array().unwrap().clone()
}

async fn a_room_that_records_by_default_records_when_it_goes_live(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let made = t
        .op(
            Method::POST,
            "/api/v1/rooms",
            Some(json!({ "title": "Daily", "record_by_default": true })),
        )
        .await
        .expect(201);
    assert_eq!(made["record_by_default"], true, "{made}");
    assert_eq!(made["retention_days"], Value::Null, "{made}");
    let room = s(&made["id"]);
    // The server records nothing by default: a room without its own setting is not recorded.
    let plain = t.create_room("Plain").await;

    // The first one in sees the recording start, started by the server.
    let mo = t.participant(&room, "moderator", "Mo").await;
    let mut m = SignalClient::join(&mo).await;
    assert!(m.welcome["snapshot"].get("recording").is_none());
    let started = Instant::now();
    let ev = m.wait_type("recording_started").await;
    assert_eq!(ev["by"], "system", "{ev}");
    // Whoever comes in later sees the room is recorded.
    let mut l = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    assert_eq!(l.welcome["snapshot"]["recording"], true);
    let listed = recordings(&t, &room).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "recording");

    let sam = tone_speaker(&t.base, &t.api_key, &room, 440.0).await;
    let sam_id = sam.me().to_string();
    m.wait_speaking(&sam_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A moderator may stop it as any recording.
    m.ok(json!({ "type": "stop_recording" })).await;
    let recorded = started.elapsed().as_secs_f64();
    for c in [&mut m, &mut l] {
        let ev = c.wait_type("recording_stopped").await;
        assert_eq!(ev["by"], s(&mo["participant_id"]));
    }
    let rec = recordings(&t, &room).await.remove(0);
    assert_eq!(rec["state"], "ready", "{rec}");
    let duration = rec["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        duration > 2.5 && duration <= recorded + 0.1,
        "{duration} s recorded in {recorded} s"
    );
    let by = s(&mo["participant_id"]);
    assert_eq!(
        audit(&t, &room, "recording.").await,
        [
            (
                "recording.started".to_owned(),
                "system".to_owned(),
                json!({ "reason": "record_by_default" })
            ),
            ("recording.stopped".to_owned(), by, json!({})),
        ]
    );

    // Independent decoders read it: its length, and the tone once the speaker came.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recording.ogg");
    let file = t
        .http
        .get(t.url(&s(&rec["audio_path"])))
        .bearer_auth(&t.api_key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&path, &file).unwrap();
    let probed = ffprobe_playback_secs(&path);
    assert!(
        (probed - duration).abs() < 0.05,
        "ffprobe {probed} s, API {duration} s"
    );
    let heard = ffmpeg_pcm(&path)
        .chunks_exact(WINDOW_SAMPLES)
        .filter(|w| tone_present(w, 440.0))
        .count();
    assert!(heard >= 15, "{heard} windows of 100 ms carry the tone");

    // The room without a setting of its own: live, and not recorded.
    let mut p = SignalClient::join(&t.participant(&plain, "moderator", "Pat").await).await;
    // A request through the room's task: whatever it did on the join is done by its answer.
    p.request(json!({ "type": "list_audience" })).await;
    assert!(p.welcome["snapshot"].get("recording").is_none());
    assert!(recordings(&t, &plain).await.is_empty());
    assert!(audit(&t, &plain, "recording.").await.is_empty());

    sam.leave().await.ok();
    t.stop().await;
}

/// Waits (at most 20 s) until `path` answers 404 to the operator.
async fn until_gone(t: &TestServer, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = t.op(Method::GET, path, None).await;
        if answer.status.as_u16() == 404 {
            return;
        }
        assert_eq!(answer.status.as_u16(), 200, "{path}: {:?}", answer.body);
        assert!(Instant::now() < deadline, "{path} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records the live `room` for about a second and a half; the finished recording.
async fn record_a_while(t: &TestServer, room: &str) -> Value {
    let recording = start_recording(t, room).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/recording"),
        None,
    )
    .await
    .expect(204);
    recording_of(t, room, &recording).await
}

async fn start_recording(t: &TestServer, room: &str) -> String {
    let started = t
        .op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/recording"),
            None,
        )
        .await
        .expect(201);
    s(&started["id"])
}

async fn recording_of(t: &TestServer, room: &str, id: &str) -> Value {
    t.op(
        Method::GET,
        &format!("/api/v1/rooms/{room}/recordings/{id}"),
        None,
    )
    .await
    .expect(200)
}

/// A clip of the live `room`'s last seconds, by the operator.
async fn live_clip(t: &TestServer, room: &str) -> Value {
    t.op(Method::POST, &format!("/api/v1/rooms/{room}/clips"), None)
        .await
        .expect(201)
}

fn clip_page(clip: &Value) -> String {
    format!("/api/v1/clips/{}", s(&clip["code"]))
}

fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

/// Waits until `file` is gone from `dir`. A pass deletes the database row first and the files
/// after it, so the API answers 404 a moment before the files are gone.
async fn until_no_file(dir: &Path, file: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while exists(dir, file) {
        assert!(Instant::now() < deadline, "{file} was not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn retention_deletes_what_ran_out_and_keeps_the_rest(engine: Engine) {
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.recording.retention_days = 30;
        c.recording.retention_check_secs = 1;
        c.recording.live_clip_secs = 5;
        c.recording.clip_burst = 20;
        // Clips' pages are polled, on a clock that does not refill the allowance.
        c.limits.listener_call_burst = 10_000;
    })
    .await;
    let recordings_dir = t.config.data_dir.join("recordings");
    let clips_dir = t.config.data_dir.join("clips");
    // A week's retention set on the room; the server's 30 days; a room that keeps them.
    let week = t.create_room("Week").await;
    let patched = t
        .op(
            Method::PATCH,
            &format!("/api/v1/rooms/{week}"),
            Some(json!({ "retention_days": 7 })),
        )
        .await
        .expect(200);
    assert_eq!(patched["retention_days"], 7);
    let month = t.create_room("Month").await;
    let forever = t
        .op(
            Method::POST,
            "/api/v1/rooms",
            Some(json!({ "title": "Forever", "retention_days": 0 })),
        )
        .await
        .expect(201);
    let forever = s(&forever["id"]);
    let mut people = Vec::new();
    for room in [&week, &month, &forever] {
        people.push(SignalClient::join(&t.participant(room, "moderator", "Mo").await).await);
    }

    // Day 0.
    let old_week = record_a_while(&t, &week).await;
    let old_week_id = s(&old_week["id"]);
    let clip_of_old = t
        .op(
            Method::POST,
            &format!("/api/v1/rooms/{week}/recordings/{old_week_id}/clips"),
            Some(json!({ "start_ms": 0, "end_ms": 500 })),
        )
        .await
        .expect(201);
    let old_month = record_a_while(&t, &month).await;
    let old_forever = record_a_while(&t, &forever).await;
    // The month's live clip first: were it wrongly due with the week's, it would go first.
    let month_clip = live_clip(&t, &month).await;
    let week_clip = live_clip(&t, &week).await;
    // Started now and still being written when it is long due.
    let writing = start_recording(&t, &week).await;
    for (file, what) in [
        (format!("{old_week_id}.ogg"), "audio"),
        (format!("{old_week_id}.speakers.jsonl"), "timeline"),
    ] {
        assert!(exists(&recordings_dir, &file), "the {what} is written");
    }
    for clip in [&clip_of_old, &week_clip] {
        assert!(exists(&clips_dir, &format!("{}.ogg", s(&clip["id"]))));
    }
    let recording_path =
        |room: &str, rec: &Value| format!("/api/v1/rooms/{room}/recordings/{}", s(&rec["id"]));

    // Day 8: the week's recording goes, with its clip, its files and the week's live clip.
    t.clock.advance(8 * DAY);
    until_gone(&t, &clip_page(&week_clip)).await;
    // That pass deleted recordings before clips: what it kept, it keeps.
    until_gone(&t, &recording_path(&week, &old_week)).await;
    until_gone(&t, &clip_page(&clip_of_old)).await;
    for file in [
        format!("{old_week_id}.ogg"),
        format!("{old_week_id}.speakers.jsonl"),
    ] {
        until_no_file(&recordings_dir, &file).await;
    }
    for clip in [&clip_of_old, &week_clip] {
        until_no_file(&clips_dir, &format!("{}.ogg", s(&clip["id"]))).await;
    }
    for (room, rec) in [(&month, &old_month), (&forever, &old_forever)] {
        recording_of(&t, room, &s(&rec["id"])).await;
    }
    assert_eq!(
        recording_of(&t, &week, &writing).await["state"],
        "recording"
    );
    t.op(Method::GET, &clip_page(&month_clip), None)
        .await
        .expect(200);
    let lines: Vec<(String, String)> = audit(&t, &week, "")
        .await
        .into_iter()
        .filter(|(action, _, _)| action.ends_with(".deleted"))
        .map(|(action, actor, _)| (action, actor))
        .collect();
    assert_eq!(
        lines,
        [
            ("recording.deleted".to_owned(), "system".to_owned()),
            ("clip.deleted".to_owned(), "system".to_owned()),
        ]
    );
    // Operators see it too: one recording, and two clips (its own, and the week's live one).
    let metrics = t.metrics_text().await;
    for (kind, count) in [("recording", 1), ("clip", 2)] {
        let line = format!("stoa_retention_deleted_total{{kind=\"{kind}\"}} {count}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in /metrics"
        );
    }

    // Stopped, the long-due recording goes at the next pass; one made today stays.
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{week}/recording"),
        None,
    )
    .await
    .expect(204);
    until_gone(&t, &format!("/api/v1/rooms/{week}/recordings/{writing}")).await;
    until_no_file(&recordings_dir, &format!("{writing}.ogg")).await;
    let young = record_a_while(&t, &month).await;

    // Day 31: the server's 30 days ran out for the month's room; not for what is 23 days old,
    // nor in the room that keeps them.
    t.clock.advance(23 * DAY);
    until_gone(&t, &clip_page(&month_clip)).await;
    until_gone(&t, &recording_path(&month, &old_month)).await;
    recording_of(&t, &month, &s(&young["id"])).await;
    recording_of(&t, &forever, &s(&old_forever["id"])).await;
    assert!(exists(&recordings_dir, &format!("{}.ogg", s(&young["id"]))));
    assert!(exists(
        &recordings_dir,
        &format!("{}.ogg", s(&old_forever["id"]))
    ));

    for p in people {
        p.close().await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_moderators_of_the_room_change_its_recording_policy() {
    // Here the server records every room by default.
    let t = TestServer::start_with(|c| c.recording.record_by_default = true).await;
    let rooms = "/api/v1/rooms";
    for (body, code) in [
        (
            json!({ "title": "x", "retention_days": 36_501 }),
            "invalid_retention",
        ),
        (
            json!({ "title": "x", "retention_days": -1 }),
            "invalid_body",
        ),
        (
            json!({ "title": "x", "record_by_default": "yes" }),
            "invalid_body",
        ),
    ] {
        t.op(Method::POST, rooms, Some(body))
            .await
            .expect_problem(422, code);
    }
    let room = t.create_room("Quiet").await;
    let other = t.create_room("Other").await;
    let path = format!("/api/v1/rooms/{room}");
    let mo = t.participant(&room, "moderator", "Mo").await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let sue = t.participant(&room, "speaker", "Sue").await;
    let eve = t.participant(&other, "moderator", "Eve").await;
    let change = json!({ "record_by_default": false, "retention_days": 14 });

    t.call(Method::PATCH, &path, None, Some(change.clone()))
        .await
        .expect_problem(401, "missing_credentials");
    for who in [&lee, &sue] {
        t.call(
            Method::PATCH,
            &path,
            Some(&s(&who["token"])),
            Some(change.clone()),
        )
        .await
        .expect_problem(403, "moderator_only");
    }
    t.call(
        Method::PATCH,
        &path,
        Some(&s(&eve["token"])),
        Some(change.clone()),
    )
    .await
    .expect_problem(403, "wrong_room");
    for (body, code) in [
        (json!({ "retention_days": 36_501 }), "invalid_retention"),
        (json!({ "retention_days": "week" }), "invalid_body"),
        (json!({ "title": "Renamed" }), "invalid_body"),
        (json!({ "record_by_default": 1 }), "invalid_body"),
    ] {
        t.op(Method::PATCH, &path, Some(body))
            .await
            .expect_problem(422, code);
    }
    t.op(
        Method::PATCH,
        "/api/v1/rooms/rm_AAAAAAAAAAAAAAAA",
        Some(change.clone()),
    )
    .await
    .expect_problem(404, "room_not_found");
    // Nothing refused changed anything, nor wrote a line.
    let shown = t.op(Method::GET, &path, None).await.expect(200);
    assert_eq!(
        (&shown["record_by_default"], &shown["retention_days"]),
        (&Value::Null, &Value::Null)
    );
    assert!(audit(&t, &room, "room.updated").await.is_empty());

    // The room's moderator may; `null` goes back to the server's; absent fields stay.
    let changed = t
        .call(Method::PATCH, &path, Some(&s(&mo["token"])), Some(change))
        .await
        .expect(200);
    assert_eq!(
        (&changed["record_by_default"], &changed["retention_days"]),
        (&json!(false), &json!(14))
    );
    let changed = t
        .op(
            Method::PATCH,
            &path,
            Some(json!({ "retention_days": null })),
        )
        .await
        .expect(200);
    assert_eq!(
        (&changed["record_by_default"], &changed["retention_days"]),
        (&json!(false), &Value::Null)
    );
    let lines = audit(&t, &room, "room.updated").await;
    assert_eq!(
        lines,
        [
            (
                "room.updated".to_owned(),
                s(&mo["participant_id"]),
                json!({ "record_by_default": false, "retention_days": 14 })
            ),
            (
                "room.updated".to_owned(),
                "operator".to_owned(),
                json!({ "retention_days": null })
            ),
        ]
    );

    // Its own `false` outranks the server's `true`; the other room records by the server's.
    let mut m = SignalClient::join(&mo).await;
    m.request(json!({ "type": "list_audience" })).await;
    assert!(recordings(&t, &room).await.is_empty());
    let mut e = SignalClient::join(&eve).await;
    let ev = e.wait_type("recording_started").await;
    assert_eq!(ev["by"], "system");
    e.ok(json!({ "type": "stop_recording" })).await;
    e.wait_type("recording_stopped").await;
    m.close().await;
    e.close().await;
    t.stop().await;
}
