//! Interop with an independent WebRTC stack: aiortc (Python, from PyPI) as a non-browser
//! client, driven by `tests/interop/aiortc_client.py`, with no SDP edits on either side.
//!
//! Each test starts a real server, makes a room with a speaker and a listener invite, and
//! runs two Python processes: a speaker that offers the way one kind of aiortc program would
//! (`addTrack`, a `sendonly` transceiver, or a bot with its one `sendonly` section) and sends a
//! tone, and a listener with `recvonly` transceivers that decodes every slot and reports the
//! frequency it heard. The speaker must be heard at its tone.
//!
//! Needs `python3` with `pip install aiortc websockets`; without them the tests fail (they
//! never pass silently). `STOA_PYTHON` names another interpreter.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stoa_tests::TestServer;
use tokio::process::{Child, Command};

/// The whole exchange, from starting the clients to the listener's verdict.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a client may take to leave after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Tolerance on the decoded tone's frequency.
const HZ_TOLERANCE: f64 = 5.0;

fn python() -> String {
    std::env::var("STOA_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/aiortc_client.py")
}

/// Fails the test, loudly, when the Python side is missing.
fn require_aiortc() {
    let probe = std::process::Command::new(python())
        .args([
            "-c",
            "import aiortc, av, websockets; print(aiortc.__version__)",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the aiortc interop tests need aiortc and websockets for {}: \
             run `pip install aiortc websockets`\n{}",
            python(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "the aiortc interop tests need {} ({e}) with aiortc and websockets: \
             install Python 3, then `pip install aiortc websockets`",
            python()
        ),
    }
}

/// One `aiortc_client.py` process; killed if still running when dropped.
struct PyClient {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl PyClient {
    fn spawn(t: &TestServer, name: &str, invite: &str, args: &[&str]) -> PyClient {
        let stdout = t.dir.path().join(format!("{name}.stdout"));
        let stderr = t.dir.path().join(format!("{name}.stderr"));
        let child = Command::new(python())
            .arg("-u")
            .arg(script())
            .arg(format!("--invite={invite}"))
            .args(["--server", &t.base, "--name", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python()));
        PyClient {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
        }
    }

    /// The exit status if the process has ended.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Asks the client to leave (SIGTERM: it prints its result and exits), kills it if it has
    /// not within the grace period.
    async fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => self.status = Some(status.expect("wait")),
            Err(_) => {
                let _ = self.child.kill().await;
                self.status = self.child.try_wait().ok().flatten();
            }
        }
    }

    /// The JSON result line the client printed last, if any.
    fn result(&self) -> Option<Value> {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        out.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
    }

    /// Everything the client printed, for failure messages.
    fn transcript(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "---- {} (exit {:?}) stdout:\n{}\n---- {} stderr:\n{}",
            self.name,
            self.status,
            out.trim_end(),
            self.name,
            err.trim_end()
        )
    }
}

/// The slot that carried the most audio.
fn loudest_slot(listener: &Value) -> Option<(usize, &Value)> {
    listener["slots"]
        .as_array()?
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s["loud_frames"].as_u64().unwrap_or(0))
}

/// Runs a speaker in `mode` sending `hz` and an aiortc listener; asserts the listener hears it.
/// `answer` is what RFC 3264 makes of the speaker's offer: the direction of each answered
/// section.
async fn speaker_is_heard(mode: &str, hz: f64, answer: &[&str]) {
    require_aiortc();
    let t = TestServer::start().await;
    let room = t.create_room("aiortc interop").await;
    let code = |invite: Value| invite["code"].as_str().unwrap().to_owned();
    let speaker_code = code(t.create_invite(&room, "speaker", json!({})).await);
    let listener_code = code(t.create_invite(&room, "listener", json!({})).await);

    let tone = hz.to_string();
    let mut speaker = PyClient::spawn(
        &t,
        "Speaker",
        &speaker_code,
        &["--mode", mode, "--tone", &tone, "--seconds", "60"],
    );
    // The listener stops as soon as one slot carried 2 s of tone, at the latest after 15 s.
    let mut listener = PyClient::spawn(
        &t,
        "Listener",
        &listener_code,
        &["--mode", "listen", "--seconds", "15", "--min-tone", "2"],
    );

    let started = Instant::now();
    let speaker_failed = loop {
        if listener.exited().is_some() {
            break false;
        }
        if speaker.exited().is_some() {
            // A speaker that ended on its own failed (it runs until stopped): no use waiting.
            break true;
        }
        if started.elapsed() > DEADLINE {
            listener.stop().await;
            speaker.stop().await;
            panic!(
                "{mode}: the listener gave no result within {DEADLINE:?}\n{}\n{}",
                speaker.transcript(),
                listener.transcript()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    speaker.stop().await;
    listener.stop().await;
    let transcripts = format!("{}\n{}", speaker.transcript(), listener.transcript());
    eprintln!(
        "{mode}: {:.1} s\n{transcripts}",
        started.elapsed().as_secs_f64()
    );

    let spoke = speaker.result().unwrap_or(Value::Null);
    assert!(
        !speaker_failed && spoke["error"].is_null(),
        "{mode}: the speaker failed: {} ({})\n{transcripts}",
        spoke["error"],
        spoke["detail"]
    );
    assert_eq!(
        spoke["connection"], "connected",
        "{mode}: speaker's connection\n{transcripts}"
    );
    assert_eq!(
        spoke["answer_directions"],
        json!(answer),
        "{mode}: the directions of the server's answer\n{transcripts}"
    );

    let heard = listener.result().unwrap_or(Value::Null);
    assert!(
        heard["error"].is_null(),
        "{mode}: the listener failed: {} ({})\n{transcripts}",
        heard["error"],
        heard["detail"]
    );
    assert_eq!(
        heard["connection"], "connected",
        "{mode}: listener's connection\n{transcripts}"
    );
    let (slot, got) = loudest_slot(&heard)
        .unwrap_or_else(|| panic!("{mode}: the listener reports no slots\n{transcripts}"));
    let frames = got["frames"].as_u64().unwrap_or(0);
    assert!(
        frames > 0,
        "{mode}: no audio frame arrived on any slot: {}\n{transcripts}",
        heard["slots"]
    );
    let decoded = got["hz"].as_f64();
    assert!(
        decoded.is_some_and(|f| (f - hz).abs() <= HZ_TOLERANCE),
        "{mode}: slot {slot} decoded {decoded:?} Hz, the speaker sends {hz} Hz: {got}\n{transcripts}"
    );
    assert!(
        got["tone_secs"].as_f64().unwrap_or(0.0) >= 1.0,
        "{mode}: slot {slot} carried too little of the tone to judge: {got}\n{transcripts}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_speaker_with_add_track_is_heard_by_an_aiortc_listener() {
    speaker_is_heard(
        "speak-addtrack",
        440.0,
        &["sendrecv", "sendonly", "sendonly"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_speaker_with_a_sendonly_transceiver_is_heard_by_an_aiortc_listener() {
    speaker_is_heard(
        "speak-sendonly",
        660.0,
        &["recvonly", "sendonly", "sendonly"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_speaker_bot_with_one_sendonly_section_is_heard_by_an_aiortc_listener() {
    speaker_is_heard("speak-bot", 550.0, &["recvonly"]).await;
}
