//! A `stoa serve` process of a test's own, so it can be killed with SIGKILL mid-recording, and
//! a look at how far an Ogg file written so far goes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Process {
    pub child: Child,
    pub url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// SIGKILL: no chance to close anything.
    pub fn kill_9(&self) {
        let pid = self.child.id() as i32;
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }
}

/// `stoa serve` on an ephemeral port with `data` as its folder and `key` as the operator key,
/// once it says it is running.
pub fn serve(data: &Path, key: &str) -> Process {
    let bin = crate::soak::find_server_bin().expect("the stoa binary (cargo build --release)");
    let mut child = Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--no-demo", "--data-dir"])
        .arg(data)
        .env("STOA_API_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("stoa starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server's banner")
            .expect("readable output");
        if let Some(rest) = line.trim().strip_prefix("Stoa is running at ") {
            break rest.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Process { child, url }
}

/// A fresh operator key.
pub fn operator_key() -> String {
    format!(
        "stoa_sk_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The granule position of the last complete Ogg page in `bytes` (samples at 48 kHz).
pub fn last_granule(bytes: &[u8]) -> Option<u64> {
    let mut at = 0;
    let mut granule = None;
    while bytes.len() >= at + 27 && &bytes[at..at + 4] == b"OggS" {
        let segments = bytes[at + 26] as usize;
        let table = bytes.get(at + 27..at + 27 + segments)?;
        let len = 27 + segments + table.iter().map(|&l| l as usize).sum::<usize>();
        if bytes.len() < at + len {
            break;
        }
        granule = Some(u64::from_le_bytes(
            bytes[at + 6..at + 14].try_into().unwrap(),
        ));
        at += len;
    }
    granule
}

/// A room on a server of its own where a WebRTC speaker plays `hz`, being recorded (`body`:
/// the start's JSON, if any).
pub struct RecordedTone {
    pub server: Process,
    pub room: String,
    pub speaker: stoa_client::Room,
    pub recording: String,
}

impl RecordedTone {
    pub async fn start(data: &Path, key: &str, hz: f32, body: Option<serde_json::Value>) -> Self {
        let server = serve(data, key);
        let api = stoa_client::api::Api::new(&server.url, key);
        let room = api
            .create_room("Crashing", serde_json::json!({}))
            .await
            .expect("room created")["id"]
            .as_str()
            .expect("a room id")
            .to_owned();
        let speaker = crate::tone_speaker(&server.url, key, &room, hz).await;
        let mut start = stoa::http_client::client()
            .post(format!("{}/api/v1/rooms/{room}/recording", server.url))
            .bearer_auth(key);
        if let Some(body) = body {
            start = start.json(&body);
        }
        let started = start.send().await.expect("request sent");
        assert_eq!(started.status().as_u16(), 201);
        let started: serde_json::Value = started.json().await.unwrap();
        let recording = started["id"].as_str().expect("a recording id").to_owned();
        RecordedTone {
            server,
            room,
            speaker,
            recording,
        }
    }
}

/// Waits (up to 20 s) until the Ogg file at `path` has whole pages of `secs` seconds; the
/// seconds it has.
pub async fn wait_written(path: &Path, secs: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seconds = 0.0;
    while std::time::Instant::now() < deadline {
        if let Some(granule) = std::fs::read(path).ok().and_then(|b| last_granule(&b)) {
            seconds = granule as f64 / 48_000.0;
            if seconds >= secs {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    seconds
}
