//! Recording end to end: a WebRTC speaker's tone, mixed by the server and written as Ogg Opus,
//! read back by decoders nobody on the team wrote (Debian's `ffprobe` and `ffmpeg`); the
//! moderator's start and stop as everyone sees them, the audit log, range requests, who may
//! do what, and a server killed with SIGKILL mid-recording leaving a playable file.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_client::audio::{WINDOW_SAMPLES, tone_present};
use stoa_tests::decoders::{ffmpeg_pcm, ffprobe_playback_secs};
use stoa_tests::killable::{RecordedTone, operator_key, serve, wait_written};
use stoa_tests::signal::SignalClient;
use stoa_tests::{TestServer, tone_speaker};

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

/// GET with a bearer credential and optional `Range`; status, headers and raw body.
async fn fetch(
    url: &str,
    auth: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = stoa::http_client::client().get(url).bearer_auth(auth);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

/// Share of 100 ms windows carrying the tone, from the first one that does.
fn tone_share_after_start(pcm: &[i16], hz: f32) -> (usize, f64) {
    let windows: Vec<bool> = pcm
        .chunks_exact(WINDOW_SAMPLES)
        .map(|w| tone_present(w, hz))
        .collect();
    let Some(first) = windows.iter().position(|t| *t) else {
        return (0, 0.0);
    };
    let rest = &windows[first..];
    let with = rest.iter().filter(|t| **t).count();
    (with, with as f64 / rest.len() as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moderator_records_the_stage_tone_and_ffmpeg_reads_it_back() {
    let t = TestServer::start().await;
    let room = t.create_room("Recorded").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let mut m = SignalClient::join(&mo).await;
    let mut l = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    assert!(l.welcome["snapshot"].get("recording").is_none());
    let sam = tone_speaker(&t.base, &t.api_key, &room, 440.0).await;
    let sam_id = sam.me().to_string();
    // The speaker is heard (the room says so) before the recording starts.
    m.wait(|e| {
        e["type"] == "active_speakers"
            && e["speakers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|p| p == sam_id.as_str()))
    })
    .await;

    let started = Instant::now();
    m.ok(json!({ "type": "start_recording" })).await;
    for c in [&mut m, &mut l] {
        let ev = c.wait_type("recording_started").await;
        assert_eq!(ev["by"], s(&mo["participant_id"]));
    }
    // Someone who comes in now sees that the room is recorded.
    let late = SignalClient::join(&t.participant(&room, "listener", "Late").await).await;
    assert_eq!(late.welcome["snapshot"]["recording"], true);
    // A repeat is harmless and says nothing new.
    m.ok(json!({ "type": "start_recording" })).await;

    let listed = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/recordings"),
            None,
        )
        .await
        .expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["items"][0]["state"], "recording");

    tokio::time::sleep(Duration::from_secs(5)).await;
    m.ok(json!({ "type": "stop_recording" })).await;
    let recorded = started.elapsed().as_secs_f64();
    for c in [&mut m, &mut l] {
        let ev = c.wait_type("recording_stopped").await;
        assert_eq!(ev["by"], s(&mo["participant_id"]));
    }

    let listed = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/recordings"),
            None,
        )
        .await
        .expect(200);
    let rec = &listed["items"][0];
    assert_eq!(rec["state"], "ready", "{rec}");
    let duration = rec["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (duration - recorded).abs() < 0.6,
        "{duration} s recorded in {recorded} s"
    );
    assert!(rec["ended_at"].is_string());

    // The audit log names who started and stopped it.
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let lines: Vec<(String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| s(&e["action"]).starts_with("recording."))
        .map(|e| (s(&e["action"]), s(&e["actor"])))
        .collect();
    let by = s(&mo["participant_id"]);
    assert_eq!(
        lines,
        [
            ("recording.started".to_owned(), by.clone()),
            ("recording.stopped".to_owned(), by)
        ]
    );

    // Who spoke when: the speaker, from the start.
    let detail = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/recordings/{}", s(&rec["id"])),
            None,
        )
        .await
        .expect(200);
    // (The mix may have written its first frame before the timeline's first line.)
    assert!(
        detail["speakers"][0]["at_ms"].as_u64().unwrap() < 100,
        "{detail}"
    );
    assert_eq!(detail["speakers"][0]["speakers"], json!([sam_id]));

    // The whole file, then parts of it.
    let url = t.url(&s(&rec["audio_path"]));
    let (status, headers, file) = fetch(&url, &t.api_key, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "audio/ogg");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(file.len() as u64, rec["size_bytes"].as_u64().unwrap());
    assert_eq!(&file[..4], b"OggS");
    let len = file.len();
    let (status, headers, part) = fetch(&url, &t.api_key, Some("bytes=4-99")).await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 4-99/{len}").as_str()
    );
    assert_eq!(part, file[4..100]);
    let (status, _, tail) = fetch(&url, &t.api_key, Some("bytes=-10")).await;
    assert_eq!((status, tail.as_slice()), (206, &file[len - 10..]));
    let (status, headers, _) = fetch(&url, &t.api_key, Some(&format!("bytes={len}-"))).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{len}").as_str());

    // Independent decoders agree on what it is.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recording.ogg");
    std::fs::write(&path, &file).unwrap();
    let probed = ffprobe_playback_secs(&path);
    assert!(
        (probed - duration).abs() < 0.05,
        "ffprobe {probed} s, API {duration} s"
    );
    let pcm = ffmpeg_pcm(&path);
    let (with, share) = tone_share_after_start(&pcm, 440.0);
    assert!(with >= 40 && share > 0.9, "{with} windows, {share} of them");

    sam.leave().await.ok();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_moderators_of_the_room_start_stop_list_and_download() {
    let t = TestServer::start().await;
    let room = t.create_room("Guarded").await;
    let other = t.create_room("Elsewhere").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let mut m = SignalClient::join(&mo).await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let mut l = SignalClient::join(&lee).await;
    let sp = t.participant(&room, "speaker", "Sue").await;
    let mut sue = SignalClient::join(&sp).await;
    let elsewhere = t.participant(&other, "moderator", "Eve").await;
    let recording = format!("/api/v1/rooms/{room}/recording");
    let recordings = format!("/api/v1/rooms/{room}/recordings");

    // Nobody in the other room: nothing to record.
    t.op(
        Method::POST,
        &format!("/api/v1/rooms/{other}/recording"),
        None,
    )
    .await
    .expect_problem(409, "room_not_live");
    // Listeners and speakers may not, on the socket or over REST.
    l.refused(json!({ "type": "start_recording" }), "not_permitted")
        .await;
    sue.refused(json!({ "type": "start_recording" }), "not_permitted")
        .await;
    for who in [&lee, &sp] {
        t.call(Method::POST, &recording, Some(&s(&who["token"])), None)
            .await
            .expect_problem(403, "moderator_only");
        t.call(Method::GET, &recordings, Some(&s(&who["token"])), None)
            .await
            .expect_problem(403, "moderator_only");
    }
    // Another room's moderator, neither.
    t.call(
        Method::POST,
        &recording,
        Some(&s(&elsewhere["token"])),
        None,
    )
    .await
    .expect_problem(403, "wrong_room");

    // A moderator over REST: 201 with the recording; everyone in the room is told.
    let started = t
        .call(Method::POST, &recording, Some(&s(&mo["token"])), None)
        .await
        .expect(201);
    assert_eq!(started["state"], "recording");
    for c in [&mut m, &mut l, &mut sue] {
        c.wait_type("recording_started").await;
    }
    l.refused(json!({ "type": "stop_recording" }), "not_permitted")
        .await;
    t.op(Method::DELETE, &recording, None).await.expect(204);
    let ev = l.wait_type("recording_stopped").await;
    assert_eq!(ev["by"], "operator");

    let audio = format!("{recordings}/{}/audio", s(&started["id"]));
    let (status, _, _) = fetch(&t.url(&audio), &s(&elsewhere["token"]), None).await;
    assert_eq!(status, 403, "another room's moderator cannot download");
    let (status, _, _) = fetch(&t.url(&audio), &s(&lee["token"]), None).await;
    assert_eq!(status, 403, "a listener cannot download");
    let (status, _, body) = fetch(&t.url(&audio), &s(&mo["token"]), Some("bytes=0-3")).await;
    assert_eq!((status, body.as_slice()), (206, b"OggS".as_slice()));
    // Under the other room's path, the recording is not there.
    t.op(
        Method::GET,
        &format!("/api/v1/rooms/{other}/recordings/{}", s(&started["id"])),
        None,
    )
    .await
    .expect_problem(404, "recording_not_found");
    t.op(Method::GET, &format!("{recordings}/rc_nope"), None)
        .await
        .expect_problem(404, "recording_not_found");
    // Ending the room ends a recording with it.
    t.op(Method::POST, &recording, None).await.expect(201);
    m.send(json!({ "type": "end_room", "id": 1 })).await;
    m.wait_closed().await;
    let listed = t.op(Method::GET, &recordings, None).await.expect(200);
    let states: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "ready"], "{listed}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_while_recording_leaves_a_playable_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = &operator_key();
    let RecordedTone {
        server,
        room,
        speaker: sam,
        recording: id,
    } = RecordedTone::start(&data, key, 440.0, None).await;
    let http = stoa::http_client::client();
    let file = data.join("recordings").join(format!("{id}.ogg"));
    // Pages reach the file as it is recorded: wait for three seconds' worth of them.
    let seconds = wait_written(&file, 3.5).await;
    assert!(seconds >= 3.5, "only {seconds} s written");
    let killed_at = Instant::now();
    server.kill_9();
    let written = std::fs::read(&file).unwrap();
    drop(server);
    drop(sam);

    // As the crash left it, the file already plays.
    let crashed = dir.path().join("crashed.ogg");
    std::fs::write(&crashed, &written).unwrap();
    let probed = ffprobe_playback_secs(&crashed);
    assert!(probed >= 3.0, "{probed} s playable");
    let pcm = ffmpeg_pcm(&crashed);
    let (with, share) = tone_share_after_start(&pcm, 440.0);
    assert!(with >= 20 && share > 0.9, "{with} windows, {share} of them");
    let _ = killed_at;

    // The next start closes it as ready, with the length the file says.
    let again = serve(&data, key);
    let listed: Value = http
        .get(format!("{}/api/v1/rooms/{room}/recordings", again.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rec = &listed["items"][0];
    assert_eq!(rec["state"], "ready", "{listed}");
    let duration = rec["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        (duration - probed).abs() < 0.1,
        "{duration} s, ffprobe {probed} s"
    );
    let (status, _, served) = fetch(
        &format!("{}{}", again.url, s(&rec["audio_path"])),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served.len() as u64, rec["size_bytes"].as_u64().unwrap());
    let reread = dir.path().join("reread.ogg");
    std::fs::write(&reread, &served).unwrap();
    assert!((ffprobe_playback_secs(&reread) - duration).abs() < 0.1);
}
