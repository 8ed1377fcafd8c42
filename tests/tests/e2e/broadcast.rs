//! The broadcast tier end to end: a WebRTC speaker's tone, mixed by the server and served as
//! LL-HLS, read back by clients nobody on the team wrote: `ffprobe` and `ffmpeg` (Debian's),
//! and nginx as a shared cache in front of the server.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use stoa_client::Room;
use stoa_client::audio::{AudioSource, WINDOW_SAMPLES, tone_present};
use stoa_tests::TestServer;
use stoa_tests::nginx::Nginx;
use tokio::io::AsyncReadExt;

/// Taken by the tests that judge audio in real time and by the one that loads the machine with
/// a thousand players, so that these never overlap (on two cores the players starved the
/// speaker of the tone test: 2 windows of 299 missed once).
static REAL_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn speaker(t: &TestServer, room: &str, hz: f32) -> Room {
    stoa_tests::tone_speaker(&t.base, &t.api_key, room, hz).await
}

async fn playlist_url(t: &TestServer, room: &str) -> String {
    let link = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{room}/broadcast"),
            None,
        )
        .await
        .expect(200);
    link["playlist_url"].as_str().unwrap().to_owned()
}

/// PCM (48 kHz mono) that `ffmpeg` decodes from `url`, with the time each chunk arrived.
struct Decoded {
    pcm: Vec<i16>,
    /// (sample index, when it arrived)
    arrivals: Vec<(usize, Instant)>,
}

async fn ffmpeg_decode(url: &str, seconds: u32) -> Decoded {
    let mut child = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i", url, "-t"])
        .arg(seconds.to_string())
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "pipe:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    let mut stdout = child.stdout.take().unwrap();
    let mut bytes = Vec::new();
    let mut arrivals = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 20);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), stdout.read(&mut chunk))
            .await
            .expect("ffmpeg keeps up with the stream")
            .unwrap();
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        arrivals.push((bytes.len() / 2, Instant::now()));
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "ffmpeg failed: {status}");
    let pcm = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Decoded { pcm, arrivals }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ffprobe_and_ffmpeg_read_the_stage_tone_from_the_ll_hls_playlist() {
    let _alone = REAL_TIME.lock().await;
    let t = TestServer::start().await;
    let room = t.create_room("Broadcast").await;
    let sam = speaker(&t, &room, 440.0).await;
    let url = playlist_url(&t, &room).await;

    // What the stream is, as an independent tool sees it.
    let probe = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
            "-of",
            "json",
            &url,
        ])
        .output()
        .await
        .expect("ffprobe runs");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let streams: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(
        streams["streams"][0],
        json!({"codec_name": "opus", "sample_rate": "48000", "channels": 1}),
        "{streams}"
    );

    // 30 s decoded by ffmpeg: the tone throughout, no gap.
    let decoded = ffmpeg_decode(&url, 30).await;
    let pcm = &decoded.pcm;
    assert!(pcm.len() >= 29 * 48_000, "only {} samples", pcm.len());
    let window = WINDOW_SAMPLES;
    let windows: Vec<bool> = pcm
        .chunks_exact(window)
        .map(|w| tone_present(w, 440.0))
        .collect();
    // From the first window with the tone (the stream may start before the speaker is
    // heard), every 100 ms carries it.
    let first = windows.iter().position(|t| *t).expect("the tone");
    let missing: Vec<usize> = windows[first..]
        .iter()
        .enumerate()
        .filter(|(_, t)| !**t)
        .map(|(i, _)| i + first)
        .collect();
    assert!(
        missing.is_empty(),
        "100 ms windows without the tone after it started: {missing:?} of {}",
        windows.len()
    );
    assert!(
        (windows.len() - first) * window >= 28 * 48_000,
        "the tone started late: window {first}"
    );

    // What an operator sees of it: one room mixed, a frame every 20 ms since it started.
    assert_eq!(t.metric("stoa_broadcast_mixes").await, 1.0);
    let frames = t.metric("stoa_broadcast_frames_total").await;
    assert!(frames >= 1_450.0, "{frames} frames mixed in 30 s");
    let text = t.metrics_text().await;
    for name in [
        "stoa_broadcast_concealed_frames_total",
        "stoa_broadcast_late_packets_total",
        "stoa_broadcast_tap_dropped_total",
        "stoa_broadcast_recording_frames_dropped_total",
        "stoa_broadcast_track_packets_dropped_total",
    ] {
        assert!(text.contains(&format!("\n{name} ")), "{name} is exported");
    }
    // The room ends: its mix stops.
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.metric("stoa_broadcast_mixes").await != 0.0 {
        assert!(Instant::now() < deadline, "the ended room's mix still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sam.leave().await.ok();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_stage_reaches_an_hls_player_within_two_seconds() {
    let _alone = REAL_TIME.lock().await;
    let t = TestServer::start().await;
    let room = t.create_room("Latency").await;
    let sam = speaker(&t, &room, 440.0).await;
    let url = playlist_url(&t, &room).await;
    let reader = tokio::spawn({
        let url = url.clone();
        async move { ffmpeg_decode(&url, 12).await }
    });
    // Let the player settle on the live edge, then change the tone: the marker.
    tokio::time::sleep(Duration::from_secs(5)).await;
    sam.set_source(AudioSource::tone(880.0, -12.0))
        .expect("speaking");
    let changed = Instant::now();
    let decoded = reader.await.unwrap();
    let window = WINDOW_SAMPLES;
    let first = decoded
        .pcm
        .chunks_exact(window)
        .position(|w| tone_present(w, 880.0))
        .expect("the new tone reaches the player")
        * window;
    let (_, arrived) = decoded
        .arrivals
        .iter()
        .find(|(end, _)| *end > first)
        .copied()
        .unwrap();
    let delay = arrived.saturating_duration_since(changed);
    eprintln!("mouth to ear through LL-HLS and ffmpeg: {delay:?}");
    assert!(delay <= Duration::from_secs(2), "{delay:?}");
    sam.leave().await.expect("left");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_broadcast_requests_get_clear_errors() {
    let t = TestServer::start().await;
    let room = t.create_room("Guarded").await;
    let url = playlist_url(&t, &room).await;
    let path = url.strip_prefix(&t.base).unwrap().to_owned();
    let get = |path: String| {
        let http = t.http.clone();
        let url = t.url(&path);
        async move { http.get(url).send().await.unwrap() }
    };
    let problem = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        (status, body["code"].as_str().unwrap_or("").to_owned())
    };

    // The playlist starts the mix; a blocking request waits for its part.
    let res = get(format!("{path}?_HLS_msn=0&_HLS_part=1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let text = res.text().await.unwrap();
    assert!(text.contains(".1.m4s\",INDEPENDENT=YES"), "{text}");
    let part = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PART:DURATION=0.200,URI=\""))
        .and_then(|l| l.split('"').next())
        .unwrap()
        .to_owned();
    let folder = path.trim_end_matches("playlist.m3u8").to_owned();
    let first = get(format!("{folder}{part}")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let first = first.bytes().await.unwrap();
    let again = get(format!("{folder}{part}")).await.bytes().await.unwrap();
    assert_eq!(first, again, "a part never changes");

    let (access, other_room) = (
        path.split('/').nth(3).unwrap().to_owned(),
        t.create_room("Other").await,
    );
    let cases = [
        (
            format!("/broadcast/{other_room}/{access}/playlist.m3u8"),
            403,
            "broadcast_link_invalid",
        ),
        (
            format!("/broadcast/rm_nope/{access}/playlist.m3u8"),
            404,
            "room_not_found",
        ),
        (
            format!("/broadcast/{room}/1.AAAAAAAAAAAAAAAA/playlist.m3u8"),
            403,
            "broadcast_link_invalid",
        ),
        (
            format!("/broadcast/{room}/x/playlist.m3u8"),
            403,
            "broadcast_link_invalid",
        ),
        (format!("{folder}{}", "a".repeat(5000)), 404, "not_found"),
        (format!("{folder}nothing.m4s"), 404, "not_found"),
        (format!("{folder}init-other.mp4"), 404, "not_found"),
        (format!("{path}?_HLS_msn=abc"), 400, "invalid_hls_request"),
        (format!("{path}?_HLS_part=1"), 400, "invalid_hls_request"),
        (
            format!("{path}?_HLS_msn=100000"),
            400,
            "invalid_hls_request",
        ),
    ];
    for (path, status, code) in cases {
        let got = problem(get(path.clone()).await).await;
        assert_eq!(
            got,
            (status, code.to_owned()),
            "{}",
            &path[..path.len().min(120)]
        );
    }

    // Who may ask for the link: the operator, and people of this room only.
    let lee = t.participant(&room, "listener", "Lee").await;
    let other = t.participant(&other_room, "moderator", "Ada").await;
    let link = |token: String| {
        let t = &t;
        let room = room.clone();
        async move {
            t.call(
                Method::GET,
                &format!("/api/v1/rooms/{room}/broadcast"),
                Some(&token),
                None,
            )
            .await
        }
    };
    let mine = link(lee["token"].as_str().unwrap().to_owned())
        .await
        .expect(200);
    assert_eq!(mine["playlist_url"], url.as_str(), "one link for everyone");
    link(other["token"].as_str().unwrap().to_owned())
        .await
        .expect_problem(403, "wrong_room");
    link("st1.garbage".into())
        .await
        .expect_problem(401, "invalid_token");

    // A leaked link stops working after two periods (10 minutes by default).
    t.clock.advance(Duration::from_secs(601));
    assert_eq!(
        problem(get(path.clone()).await).await,
        (403, "broadcast_link_expired".to_owned())
    );
    // An ended room's broadcast ends.
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    let fresh = format!("/api/v1/rooms/{room}/broadcast");
    t.op(Method::GET, &fresh, None)
        .await
        .expect_problem(410, "room_ended");
    t.stop().await;
}

/// nginx as a shared HTTP cache in front of the server.
fn caching_nginx(origin: &str) -> Nginx {
    Nginx::start(&format!(
        "  proxy_cache_path {{dir}}/cache levels=1:2 keys_zone=hls:10m max_size=200m \
           inactive=120s use_temp_path=off;\n\
         server {{\n    listen {{listen}};\n    location / {{\n\
               proxy_pass {origin};\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_cache hls;\n\
               proxy_cache_lock on;\n      proxy_cache_lock_timeout 10s;\n\
               proxy_cache_lock_age 10s;\n\
               add_header X-Cache-Status $upstream_cache_status;\n    }}\n  }}"
    ))
}

/// Requests the origin answered for broadcast files, from its `/metrics`.
async fn origin_requests(t: &TestServer) -> u64 {
    let text = t.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with("stoa_http_requests_total") && l.contains("route=\"/broadcast/"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Where the live edge is: the last part listed, as (msn, part).
fn last_part(playlist: &str) -> (u64, u32) {
    let uri = playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .next_back()
        .expect("a part");
    let numbers = uri.rsplit('-').next().unwrap().trim_end_matches(".m4s");
    let (msn, part) = numbers.split_once('.').unwrap();
    (msn.parse().unwrap(), part.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_players_behind_nginx_cost_the_origin_about_one_request_per_part() {
    let _alone = REAL_TIME.lock().await;
    const PLAYERS: usize = 1000;
    const PARTS_PER_SEGMENT: u32 = 5;
    let t = TestServer::start().await;
    let room = t.create_room("Famous guest").await;
    let sam = speaker(&t, &room, 440.0).await;
    let url = playlist_url(&t, &room).await;
    let path = url.strip_prefix(&t.base).unwrap().to_owned();
    let folder = path.trim_end_matches("playlist.m3u8").to_owned();
    let nginx = caching_nginx(&t.base);
    let http = stoa::http_client::builder()
        .pool_max_idle_per_host(PLAYERS)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // The first request starts the mix.
    let first = http.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let start = last_part(&first.text().await.unwrap());
    let before = origin_requests(&t).await;

    // Every player follows the live edge as an LL-HLS player does: a blocking playlist
    // request for the next part, then that part.
    let run_for = Duration::from_secs(6);
    let players: Vec<_> = (0..PLAYERS)
        .map(|_| {
            let http = http.clone();
            let (playlist, folder) = (nginx.url(&path), nginx.url(&folder));
            tokio::spawn(async move {
                let (mut msn, mut part) = start;
                let (mut requests, mut bytes) = (0u64, 0usize);
                let until = Instant::now() + run_for;
                while Instant::now() < until {
                    (msn, part) = if part + 1 == PARTS_PER_SEGMENT {
                        (msn + 1, 0)
                    } else {
                        (msn, part + 1)
                    };
                    let listed = http
                        .get(format!("{playlist}?_HLS_msn={msn}&_HLS_part={part}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(listed.status(), 200);
                    let text = listed.text().await.unwrap();
                    let name = format!("-{msn}.{part}.m4s");
                    let uri = text
                        .lines()
                        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
                        .find(|u| u.ends_with(&name))
                        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
                        .to_owned();
                    let media = http.get(format!("{folder}{uri}")).send().await.unwrap();
                    assert_eq!(media.status(), 200);
                    bytes += media.bytes().await.unwrap().len();
                    requests += 2;
                }
                (requests, bytes)
            })
        })
        .collect();
    let mut client_requests = 0;
    for player in players {
        let (requests, bytes) = player.await.unwrap();
        assert!(bytes > 0);
        client_requests += requests;
    }
    let after = origin_requests(&t).await;
    let edge = http
        .get(nginx.url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let end = last_part(&edge);
    let parts = (end.0 * u64::from(PARTS_PER_SEGMENT) + u64::from(end.1))
        - (start.0 * u64::from(PARTS_PER_SEGMENT) + u64::from(start.1));
    let origin = after - before;
    eprintln!(
        "{PLAYERS} players, {parts} parts: {client_requests} requests to nginx, {origin} to the \
         origin ({:.2} per part)",
        origin as f64 / parts as f64
    );
    assert!(
        client_requests >= PLAYERS as u64 * parts,
        "the players kept up"
    );
    // Per part: its blocking playlist and the part itself, plus the odd non-blocking reload.
    assert!(
        origin <= 3 * parts + 10,
        "{origin} origin requests for {parts} parts"
    );
    sam.leave().await.expect("left");
    t.stop().await;
}
