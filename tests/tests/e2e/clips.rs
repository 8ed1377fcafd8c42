//! Clips end to end: the last seconds of a live room made by a listener, and a range of a
//! recording made by a moderator and by a replay link's holder, each its own Ogg Opus file
//! judged by Debian's `ffprobe` and `ffmpeg` (its length, and the 440 Hz tone where it should
//! be), served with range requests to a plain HTTP client, announced by `clip.created` and
//! `recording.ready` webhooks verified with the `standardwebhooks` package, and gone with
//! their recording. Refusals as carefully as successes: not live, wrong room, too long, out of
//! range, not finished, too many, unknown codes.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use stoa_client::audio::{WINDOW_SAMPLES, tone_present};
use stoa_tests::decoders::{ffmpeg_pcm, ffprobe_playback_secs};
use stoa_tests::signal::SignalClient;
use stoa_tests::webhook_receiver::{Receiver, SECRET};
use stoa_tests::{Engine, TestServer, on_both_engines, tone_speaker};

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

/// GET with an optional `Range`, no credentials: status, headers, raw body.
async fn get_raw(url: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = stoa::http_client::client().get(url);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

/// Which 100 ms windows of a decoded file carry the tone.
fn tone_windows(pcm: &[i16]) -> Vec<bool> {
    pcm.chunks_exact(WINDOW_SAMPLES)
        .map(|w| tone_present(w, 440.0))
        .collect()
}

/// A clip's audio fetched by its link, written to `dir`, judged: (ffprobe's seconds less the
/// pre-skip, as ffprobe reports the last granule position without taking it off; PCM, which
/// ffmpeg decodes with the pre-skip dropped).
async fn fetch_clip(t: &TestServer, clip: &Value, dir: &std::path::Path) -> (f64, Vec<i16>) {
    let page = t
        .call(
            Method::GET,
            &format!("/api/v1/clips/{}", s(&clip["code"])),
            None,
            None,
        )
        .await
        .expect(200);
    assert_eq!(page["id"], clip["id"]);
    assert!(page.get("code").is_none(), "the code is shown once: {page}");
    let url = t.url(&s(&page["audio_path"]));
    let (status, headers, file) = get_raw(&url, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "audio/ogg");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(file.len() as u64, clip["size_bytes"].as_u64().unwrap());
    let len = file.len();
    let (status, headers, part) = get_raw(&url, Some("bytes=0-3")).await;
    assert_eq!((status, part.as_slice()), (206, b"OggS".as_slice()));
    assert_eq!(
        headers["content-range"],
        format!("bytes 0-3/{len}").as_str()
    );
    let (status, _, tail) = get_raw(&url, Some("bytes=-7")).await;
    assert_eq!((status, tail.as_slice()), (206, &file[len - 7..]));
    let (status, _, _) = get_raw(&url, Some(&format!("bytes={len}-"))).await;
    assert_eq!(status, 416);
    let path = dir.join(format!("{}.ogg", s(&clip["id"])));
    std::fs::write(&path, &file).unwrap();
    (ffprobe_playback_secs(&path), ffmpeg_pcm(&path))
}

async fn clips_of_a_live_room_and_of_a_recording(engine: Engine) {
    let receiver = Receiver::start("ok");
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.recording.live_clip_secs = 5;
        c.recording.max_clip_secs = 4;
        c.recording.clips_per_minute = 1;
        c.recording.clip_burst = 2;
        c.webhooks.url = Some(receiver.url());
        c.webhooks.secret = Some(SECRET.into());
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let room = t.create_room("Clipped").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let mut m = SignalClient::join(&mo).await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let _l = SignalClient::join(&lee).await;
    let clip_path = format!("/api/v1/rooms/{room}/clips");

    // The recording starts before anyone speaks: the tone starts some way into it.
    let recording = t
        .op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/recording"),
            None,
        )
        .await
        .expect(201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sam = tone_speaker(&t.base, &t.api_key, &room, 440.0).await;
    let sam_id = sam.me().to_string();
    m.wait(|e| {
        e["type"] == "active_speakers"
            && e["speakers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|p| p == sam_id.as_str()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The speaker goes; a second and a half of silence follows.
    sam.leave().await.ok();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A listener clips the last five seconds: the tone, then the silence at its end.
    let live = t
        .call(Method::POST, &clip_path, Some(&s(&lee["token"])), None)
        .await
        .expect(201);
    assert_eq!(live["room_id"], room.as_str());
    assert!(live.get("recording_id").is_none(), "{live}");
    assert_eq!(s(&live["url"]), t.url(&format!("/c/{}", s(&live["code"]))));
    let ms = live["duration_ms"].as_u64().unwrap();
    assert!((4_980..=5_000).contains(&ms), "{live}");
    let (probed, pcm) = fetch_clip(&t, &live, dir.path()).await;
    assert!((probed - 5.0).abs() < 0.03, "ffprobe {probed} s");
    assert_eq!(
        pcm.len() as u64 / 48,
        ms,
        "ffmpeg decodes the clip's length, to the ms"
    );
    let windows = tone_windows(&pcm);
    let heard = windows
        .iter()
        .rposition(|t| *t)
        .expect("the tone is in the clip");
    // The speaker left about 1.5 s before the end (0.3 s either way for the jitter buffer,
    // the leave's round trip and the scheduler).
    let end_of_tone = (heard + 1) as f64 / 10.0;
    assert!(
        (3.0..=4.0).contains(&end_of_tone),
        "the tone ends at {end_of_tone} s of 5"
    );
    let before = &windows[..heard.saturating_sub(1)];
    let share = before.iter().filter(|t| **t).count() as f64 / before.len() as f64;
    assert!(share > 0.9, "the tone fills the clip up to there: {share}");

    // The clip's page, and what a wrong code gets.
    let page = stoa::http_client::client()
        .get(s(&live["url"]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/app/clip.js"));
    for bad in ["AAAAAAAAAAAAAAAAAAAAAA", "short"] {
        t.call(Method::GET, &format!("/api/v1/clips/{bad}"), None, None)
            .await
            .expect_problem(404, "clip_not_found");
    }
    let (status, _, _) = get_raw(&t.url("/api/v1/clips/AAAAAAAAAAAAAAAAAAAAAA/audio"), None).await;
    assert_eq!(status, 404);

    // Refusals of live clips: another room's token, a room nobody is in, no credentials,
    // and the third clip of one listener within the minute.
    let other = t.create_room("Empty").await;
    t.call(
        Method::POST,
        &format!("/api/v1/rooms/{other}/clips"),
        Some(&s(&lee["token"])),
        None,
    )
    .await
    .expect_problem(403, "wrong_room");
    t.op(Method::POST, &format!("/api/v1/rooms/{other}/clips"), None)
        .await
        .expect_problem(409, "room_not_live");
    t.call(Method::POST, &clip_path, None, None)
        .await
        .expect_problem(401, "missing_credentials");
    t.call(Method::POST, &clip_path, Some(&s(&lee["token"])), None)
        .await
        .expect(201);
    let limited = t
        .call(Method::POST, &clip_path, Some(&s(&lee["token"])), None)
        .await;
    limited.expect_problem(429, "too_many_clips");
    assert!(limited.headers.contains_key("retry-after"));

    // The recording is finished; where does the tone start in it?
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/recording"),
        None,
    )
    .await
    .expect(204);
    let rec_id = s(&recording["id"]);
    let rec_path = format!("/api/v1/rooms/{room}/recordings/{rec_id}");
    let rec = t.op(Method::GET, &rec_path, None).await.expect(200);
    assert_eq!(rec["state"], "ready");
    let duration_ms = rec["duration_ms"].as_u64().unwrap();
    let (_, _, whole) = get_raw(
        &t.url(&format!("{}?access_token=x", s(&rec["audio_path"]))),
        None,
    )
    .await;
    assert!(!whole.starts_with(b"OggS"), "no token, no audio");
    let rec_file = dir.path().join("recording.ogg");
    let file = stoa::http_client::client()
        .get(t.url(&s(&rec["audio_path"])))
        .bearer_auth(&t.api_key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&rec_file, &file).unwrap();
    let onset = tone_windows(&ffmpeg_pcm(&rec_file))
        .iter()
        .position(|t| *t)
        .expect("the tone is in the recording") as u64
        * 100;
    assert!(onset >= 1_000, "the tone starts {onset} ms in");

    // A moderator clips from a second before the tone to two seconds after it.
    let range_path = format!("{rec_path}/clips");
    let cut = t
        .call(
            Method::POST,
            &range_path,
            Some(&s(&mo["token"])),
            Some(json!({ "start_ms": onset - 1_000, "end_ms": onset + 2_000 })),
        )
        .await
        .expect(201);
    assert_eq!(cut["recording_id"], rec_id.as_str());
    assert_eq!(cut["start_ms"], onset - 1_000);
    let ms = cut["duration_ms"].as_u64().unwrap();
    assert!((3_000..=3_020).contains(&ms), "{cut}");
    let (probed, pcm) = fetch_clip(&t, &cut, dir.path()).await;
    assert!((probed - 3.0).abs() < 0.03, "ffprobe {probed} s");
    assert_eq!(
        pcm.len() as u64 / 48,
        ms,
        "ffmpeg decodes the clip's length, to the ms"
    );
    let windows = tone_windows(&pcm);
    let first = windows
        .iter()
        .position(|t| *t)
        .expect("the tone is in the clip");
    assert_eq!(first, 10, "the tone starts one second in: {windows:?}");
    assert!(windows[first..].iter().all(|t| *t), "{windows:?}");

    // A replay link's holder may clip that recording too.
    let link = t
        .op(
            Method::POST,
            &format!("{rec_path}/replay-links"),
            Some(json!({})),
        )
        .await
        .expect(201);
    let replay = t
        .call(
            Method::POST,
            "/api/v1/replay",
            None,
            Some(json!({ "link": s(&link["code"]) })),
        )
        .await
        .expect(200);
    let replay_token = s(&replay["token"]);
    let by_link = t
        .call(
            Method::POST,
            &range_path,
            Some(&replay_token),
            Some(json!({ "start_ms": 0, "end_ms": 1_000 })),
        )
        .await
        .expect(201);
    assert!((1_000..=1_020).contains(&by_link["duration_ms"].as_u64().unwrap()));

    // Refusals of ranges, each with its code.
    for (body, status, code) in [
        (
            json!({ "start_ms": 2_000, "end_ms": 2_000 }),
            422,
            "invalid_range",
        ),
        (
            json!({ "start_ms": 0, "end_ms": 4_001 }),
            422,
            "clip_too_long",
        ),
        (
            json!({ "start_ms": duration_ms - 500, "end_ms": duration_ms + 500 }),
            422,
            "range_outside_recording",
        ),
        (json!({ "start_ms": -1, "end_ms": 10 }), 422, "invalid_body"),
        (
            json!({ "start_ms": 0, "end_ms": 10, "extra": 1 }),
            422,
            "invalid_body",
        ),
    ] {
        t.op(Method::POST, &range_path, Some(body.clone()))
            .await
            .expect_problem(status, code);
    }
    t.call(
        Method::POST,
        &range_path,
        Some(&s(&lee["token"])),
        Some(json!({ "start_ms": 0, "end_ms": 1_000 })),
    )
    .await
    .expect_problem(403, "moderator_only");
    let in_progress = t
        .op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/recording"),
            None,
        )
        .await
        .expect(201);
    t.op(
        Method::POST,
        &format!(
            "/api/v1/rooms/{room}/recordings/{}/clips",
            s(&in_progress["id"])
        ),
        Some(json!({ "start_ms": 0, "end_ms": 100 })),
    )
    .await
    .expect_problem(409, "recording_not_ready");
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/recording"),
        None,
    )
    .await
    .expect(204);

    // The webhooks: every clip made, and the recordings ready, with their figures.
    let got = receiver
        .wait_until("the clips and the recordings", |e| {
            let n = |ty: &str| e.iter().filter(|x| x["type"] == ty).count();
            n("clip.created") >= 4 && n("recording.ready") >= 2
        })
        .await;
    assert!(got.iter().all(|e| e["answer"] == "ok"), "{got:#?}");
    let ready = got.iter().find(|e| e["type"] == "recording.ready").unwrap();
    assert_eq!(ready["body"]["data"]["recording_id"], rec_id.as_str());
    assert_eq!(ready["body"]["data"]["duration_ms"], duration_ms);
    assert_eq!(ready["body"]["data"]["size_bytes"], rec["size_bytes"]);
    let made: Vec<&Value> = got.iter().filter(|e| e["type"] == "clip.created").collect();
    assert_eq!(made[0]["body"]["data"]["clip_id"], live["id"]);
    assert_eq!(made[0]["body"]["data"]["by"], lee["participant_id"]);
    assert_eq!(made[0]["body"]["data"]["url"], live["url"]);
    assert_eq!(made[2]["body"]["data"]["clip_id"], cut["id"]);
    assert_eq!(made[3]["body"]["data"]["by"], link["id"]);

    // Deleting the recording deletes its clips, rows and files; the live clip stays.
    let clip_file = |clip: &Value| {
        t.config
            .data_dir
            .join("clips")
            .join(format!("{}.ogg", s(&clip["id"])))
    };
    assert!(clip_file(&cut).exists() && clip_file(&by_link).exists());
    t.op(Method::DELETE, &rec_path, None).await.expect(204);
    for gone in [&cut, &by_link] {
        t.call(
            Method::GET,
            &format!("/api/v1/clips/{}", s(&gone["code"])),
            None,
            None,
        )
        .await
        .expect_problem(404, "clip_not_found");
        assert!(!clip_file(gone).exists(), "{gone}");
    }
    t.call(
        Method::GET,
        &format!("/api/v1/clips/{}", s(&live["code"])),
        None,
        None,
    )
    .await
    .expect(200);
    assert!(clip_file(&live).exists());

    t.stop().await;
}

on_both_engines!(clips_of_a_live_room_and_of_a_recording);
