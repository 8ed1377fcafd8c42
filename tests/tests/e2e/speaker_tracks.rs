//! Speaker tracks end to end: two WebRTC speakers with different tones, one coming on stage
//! late, recorded with `speaker_tracks`; Debian's `ffprobe` and `ffmpeg` read each track back
//! and find its own tone only, as long as the mix and in step with it. Refusals, access,
//! deletion, the server's default, and a server killed mid-recording leaving playable tracks.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_client::audio::{WINDOW_SAMPLES, goertzel_power, tone_present};
use stoa_tests::decoders::{ffmpeg_pcm, ffprobe_playback_secs, opus_pre_skip};
use stoa_tests::killable::{RecordedTone, operator_key, serve, wait_written};
use stoa_tests::signal::SignalClient;
use stoa_tests::{TestServer, tone_speaker};

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

/// GET with a bearer credential (and a `Range`): status and body.
async fn download(url: &str, auth: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = stoa::http_client::client().get(url).bearer_auth(auth);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    (status, res.bytes().await.unwrap().to_vec())
}

/// Saves `bytes` under `dir` and decodes them: (how long ffprobe says it plays, PCM).
fn decode(dir: &Path, name: &str, bytes: &[u8]) -> (f64, Vec<i16>) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (ffprobe_playback_secs(&path), ffmpeg_pcm(&path))
}

/// Windows of 100 ms in which `hz` is the tone heard, from the first and of the rest.
fn tone_windows(pcm: &[i16], hz: f32) -> (usize, usize) {
    let windows: Vec<bool> = pcm
        .chunks_exact(WINDOW_SAMPLES)
        .map(|w| tone_present(w, hz))
        .collect();
    let first = windows.iter().position(|t| *t).unwrap_or(windows.len());
    let with = windows.iter().filter(|t| **t).count();
    (with, windows.len() - first)
}

/// When `hz` starts, in seconds: the first 20 ms window (5 ms steps) holding a quarter of the
/// power it has at the end (between 1.5 and 0.5 s before the end), whatever else plays.
fn onset(pcm: &[i16], hz: f32) -> f64 {
    const LEN: usize = 960;
    const STEP: usize = 240;
    let end = pcm.len() - 24_000;
    let steady: f64 = pcm[end - 48_000..end]
        .chunks_exact(LEN)
        .map(|w| goertzel_power(w, hz))
        .sum::<f64>()
        / 50.0;
    assert!(steady > 1000.0, "{hz} Hz is heard at the end ({steady})");
    let at = (0..pcm.len() - LEN)
        .step_by(STEP)
        .find(|&i| goertzel_power(&pcm[i..i + LEN], hz) >= steady / 4.0)
        .expect("an onset");
    at as f64 / 48_000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_speaker_gets_a_track_of_their_own_in_step_with_the_mix() {
    let t = TestServer::start().await;
    let room = t.create_room("Tracks").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let mut m = SignalClient::join(&mo).await;
    let sam = tone_speaker(&t.base, &t.api_key, &room, 440.0).await;
    let sam_id = sam.me().to_string();
    m.wait(|e| {
        e["type"] == "active_speakers"
            && e["speakers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|p| p == sam_id.as_str()))
    })
    .await;

    // Over the socket, with the option.
    m.ok(json!({ "type": "start_recording", "speaker_tracks": true }))
        .await;
    m.wait_type("recording_started").await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Tess comes on stage two seconds in.
    let tess = tone_speaker(&t.base, &t.api_key, &room, 1000.0).await;
    let tess_id = tess.me().to_string();
    let joined = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recordings = format!("/api/v1/rooms/{room}/recordings");
    // While it is recorded, the tracks are listed with what is written so far.
    let listed = t.op(Method::GET, &recordings, None).await.expect(200);
    let id = s(&listed["items"][0]["id"]);
    let detail = t
        .op(Method::GET, &format!("{recordings}/{id}"), None)
        .await
        .expect(200);
    assert_eq!(detail["state"], "recording");
    assert_eq!(detail["tracks"].as_array().unwrap().len(), 2, "{detail}");
    assert!(detail["tracks"][0]["size_bytes"].as_u64().unwrap() > 0);
    m.ok(json!({ "type": "stop_recording" })).await;

    let detail = t
        .op(Method::GET, &format!("{recordings}/{id}"), None)
        .await
        .expect(200);
    assert_eq!(detail["state"], "ready", "{detail}");
    assert_eq!(detail["speaker_tracks"], true);
    assert_eq!(detail["untracked"], json!([]));
    let tracks = detail["tracks"].as_array().unwrap();
    let who: Vec<(u64, String)> = tracks
        .iter()
        .map(|t| (t["track"].as_u64().unwrap(), s(&t["participant"])))
        .collect();
    assert_eq!(who, [(1, sam_id.clone()), (2, tess_id.clone())]);
    assert_eq!(detail["names"][&sam_id], "Sam");
    assert_eq!(
        detail["names"][&tess_id], "Sam",
        "tone_speaker names everyone Sam"
    );

    let dir = tempfile::tempdir().unwrap();
    let (status, mix) = download(&t.url(&s(&detail["audio_path"])), &t.api_key, None).await;
    assert_eq!(status, 200);
    let (mix_secs, mix_pcm) = decode(dir.path(), "mix.ogg", &mix);
    // Started on a mix that ran before (for clips): 80 ms of pre-roll, beyond the encoder's
    // own look-ahead, for the pre-skip to drop (RFC 7845, section 4.6).
    assert!(
        opus_pre_skip(&mix) >= 3_840,
        "pre-skip {}",
        opus_pre_skip(&mix)
    );
    let mix_ms = detail["duration_ms"].as_f64().unwrap();
    for (track, (own, other)) in tracks.iter().zip([(440.0, 1000.0), (1000.0, 440.0)]) {
        let n = track["track"].as_u64().unwrap();
        let url = t.url(&s(&track["audio_path"]));
        let (status, file) = download(&url, &t.api_key, None).await;
        assert_eq!(status, 200);
        assert_eq!(file.len() as u64, track["size_bytes"].as_u64().unwrap());
        let (status, part) = download(&url, &t.api_key, Some("bytes=4-99")).await;
        assert_eq!((status, part.as_slice()), (206, &file[4..100]));
        let (secs, pcm) = decode(dir.path(), &format!("track{n}.ogg"), &file);
        // As long as the mix, within a frame or two, by the API and by ffprobe.
        let ms = track["duration_ms"].as_f64().unwrap();
        let durations = move || {
            assert!(
                (ms - mix_ms).abs() <= 40.0,
                "track {n}: {ms} ms, mix {mix_ms} ms"
            );
            assert!(
                (secs - mix_secs).abs() <= 0.04,
                "track {n}: {secs} s, mix {mix_secs} s"
            );
        };
        // Its own tone, from its start on, and never the other's.
        let (with, since) = tone_windows(&pcm, own);
        let pattern: String = pcm
            .chunks_exact(WINDOW_SAMPLES)
            .map(|w| if tone_present(w, own) { '+' } else { '.' })
            .collect();
        assert!(
            with >= 20 && with as f64 >= 0.9 * since as f64,
            "track {n}: {with} of {since} windows hold its tone: {pattern}"
        );
        assert_eq!(
            tone_windows(&pcm, other).0,
            0,
            "track {n} carries the other tone"
        );
        // Its tone starts where it starts in the mix (two frames of slack and a step).
        let (in_track, in_mix) = (onset(&pcm, own), onset(&mix_pcm, own));
        eprintln!(
            "track {n}: {ms} ms / {secs} s, mix {mix_ms} ms / {mix_secs} s; onset {in_track} s, mix {in_mix} s, joined {joined}"
        );
        // Sam already spoke when the recording began, on a mix that ran before it (for
        // clips): the file starts with a pre-roll, so its decoder has settled by its start.
        assert!(
            (in_track - in_mix).abs() <= 0.045,
            "track {n}: {own} Hz at {in_track} s, in the mix at {in_mix} s"
        );
        if n == 2 {
            assert!(
                (in_track - joined).abs() < 0.6,
                "Tess came on stage {joined} s in; her track starts at {in_track} s"
            );
        } else {
            // From the start, once the mix's jitter buffer played out (the recording started
            // the mix).
            let wait = stoa::broadcast::mix::PLAYOUT_DELAY_FRAMES as f64 * 0.02;
            assert!(
                in_track < wait + 0.2,
                "Sam spoke from the start: {in_track} s"
            );
        }
        durations();
    }

    // Deleting the recording deletes its tracks.
    let folder = t.config.data_dir.join("recordings");
    assert!(folder.join(format!("{id}.track2.ogg")).exists());
    t.op(Method::DELETE, &format!("{recordings}/{id}"), None)
        .await
        .expect(204);
    let left: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(&id))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    sam.leave().await.ok();
    tess.leave().await.ok();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_checked_tracks_follow_the_recordings_rules_and_the_default_applies() {
    let t = TestServer::start_with(|c| c.recording.speaker_tracks = true).await;
    let room = t.create_room("Checked").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let mut m = SignalClient::join(&mo).await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let _l = SignalClient::join(&lee).await;
    let recording = format!("/api/v1/rooms/{room}/recording");
    let recordings = format!("/api/v1/rooms/{room}/recordings");

    for body in [
        json!({ "speaker_tracks": "yes" }),
        json!({ "speaker_tracks": 1 }),
        json!({ "tracks": true }),
        json!([true]),
    ] {
        t.op(Method::POST, &recording, Some(body))
            .await
            .expect_problem(422, "invalid_body");
    }
    let text = t
        .http
        .post(t.url(&recording))
        .bearer_auth(&t.api_key)
        .header("content-type", "application/json")
        .body("{speaker_tracks")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status().as_u16(), 400);
    m.refused(
        json!({ "type": "start_recording", "speaker_tracks": "yes" }),
        "invalid_message",
    )
    .await;
    m.refused(
        json!({ "type": "start_recording", "tracks": true }),
        "invalid_message",
    )
    .await;
    let listed = t.op(Method::GET, &recordings, None).await.expect(200);
    assert_eq!(
        listed["items"],
        json!([]),
        "nothing refused started anything"
    );

    // The server's default (on here) when the start says nothing (an empty body, even one
    // labelled JSON); off when it says so.
    let empty = t
        .http
        .post(t.url(&recording))
        .bearer_auth(&t.api_key)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status().as_u16(), 201);
    let first: Value = empty.json().await.unwrap();
    t.op(Method::DELETE, &recording, None).await.expect(204);
    let second = t
        .op(
            Method::POST,
            &recording,
            Some(json!({ "speaker_tracks": false })),
        )
        .await
        .expect(201);
    t.op(Method::DELETE, &recording, None).await.expect(204);
    let detail = |id: &Value| format!("{recordings}/{}", s(id));
    let with = t
        .op(Method::GET, &detail(&first["id"]), None)
        .await
        .expect(200);
    assert_eq!(
        (&with["speaker_tracks"], &with["tracks"]),
        (&json!(true), &json!([]))
    );
    let without = t
        .op(Method::GET, &detail(&second["id"]), None)
        .await
        .expect(200);
    assert_eq!(without["speaker_tracks"], false);

    // Nobody spoke: no track 1. Numbers out of range or not numbers, neither.
    for track in ["1", "0", "11", "01", "x"] {
        t.op(
            Method::GET,
            &format!("{}/tracks/{track}/audio", detail(&first["id"])),
            None,
        )
        .await
        .expect_problem(404, "track_not_found");
    }
    // A listener may not; a replay token for the recording reaches its tracks' paths.
    t.call(
        Method::GET,
        &format!("{}/tracks/1/audio", detail(&first["id"])),
        Some(&s(&lee["token"])),
        None,
    )
    .await
    .expect_problem(403, "moderator_only");
    let link = t
        .op(
            Method::POST,
            &format!("{}/replay-links", detail(&first["id"])),
            Some(json!({})),
        )
        .await
        .expect(201);
    let redeemed = t
        .call(
            Method::POST,
            "/api/v1/replay",
            None,
            Some(json!({ "link": s(&link["code"]) })),
        )
        .await
        .expect(200);
    let token = s(&redeemed["token"]);
    let replay = t
        .call(Method::GET, &detail(&first["id"]), Some(&token), None)
        .await
        .expect(200);
    assert_eq!(replay["speaker_tracks"], true);
    t.call(
        Method::GET,
        &format!("{}/tracks/1/audio", detail(&first["id"])),
        Some(&token),
        None,
    )
    .await
    .expect_problem(404, "track_not_found");
    t.call(
        Method::GET,
        &format!("{}/tracks/1/audio", detail(&second["id"])),
        Some(&token),
        None,
    )
    .await
    .expect_problem(403, "wrong_recording");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_while_recording_tracks_leaves_them_playable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = &operator_key();
    let body = json!({ "speaker_tracks": true });
    let RecordedTone {
        server,
        room,
        speaker: sam,
        recording: id,
    } = RecordedTone::start(&data, key, 440.0, Some(body)).await;
    let http = stoa::http_client::client();
    let file = data.join("recordings").join(format!("{id}.track1.ogg"));
    // Pages reach the track as it is recorded: wait for three seconds' worth of them.
    let seconds = wait_written(&file, 3.5).await;
    assert!(seconds >= 3.5, "only {seconds} s written");
    server.kill_9();
    let written = std::fs::read(&file).unwrap();
    drop(server);
    drop(sam);

    // As the crash left it, the track already plays, with its tone.
    let (probed, pcm) = decode(dir.path(), "crashed.ogg", &written);
    assert!(probed >= 3.0, "{probed} s playable");
    let (with, since) = tone_windows(&pcm, 440.0);
    assert!(
        with >= 20 && with as f64 >= 0.9 * since as f64,
        "{with} of {since}"
    );

    // The next start closes it with the length its last whole page says.
    let again = serve(&data, key);
    let detail: Value = http
        .get(format!("{}/api/v1/rooms/{room}/recordings/{id}", again.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["state"], "ready", "{detail}");
    let track = &detail["tracks"][0];
    let ms = track["duration_ms"].as_f64().unwrap();
    assert!(
        (ms / 1000.0 - probed).abs() < 0.1,
        "{ms} ms, ffprobe {probed} s"
    );
    let (status, served) = download(
        &format!("{}{}", again.url, s(&track["audio_path"])),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served.len() as u64, track["size_bytes"].as_u64().unwrap());
    let (reread, _) = decode(dir.path(), "reread.ogg", &served);
    assert!((reread - ms / 1000.0).abs() < 0.1);
}
