//! Webhooks survive a `stoa serve` killed with SIGKILL while events wait for a receiver that
//! fails: after a restart every event is delivered, once, in order, signed (checked by the
//! `standardwebhooks` Python package in `tests/webhooks/receiver.py`).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use crate::common;

const SECRET: &str = "whsec_c3RvYSB3ZWJob29rIHRlc3Qgc2VjcmV0LCAzMiBieQ==";

/// The receiver (see tests/webhooks/receiver.py): its port, and the file it appends to.
fn start_receiver(mode: &str, log: &Path) -> (Child, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/webhooks/receiver.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(SECRET)
        .arg(log)
        .env("RECEIVER_MODE", mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (with the standardwebhooks package)");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first.trim().strip_prefix("port ").unwrap().parse().unwrap();
    (child, port)
}

fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (looking every 50 ms, a minute at most) until the receiver's log satisfies `done`.
async fn wait_for(log: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = received(log);
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn answered(got: &[Value], answer: &str) -> usize {
    got.iter().filter(|e| e["answer"] == answer).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_delivery_after_restart_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("received.jsonl");
    let (mut receiver, port) = start_receiver("fail", &log);
    let config = dir.path().join("stoa.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\njoins_per_minute = 10000\njoin_burst = 10000\n\
             [webhooks]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\n\
             timeout_ms = 500\nretry_first_ms = 50\nretry_max_ms = 100\nmax_attempts = 100000\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [OsStr::new("--config"), config.as_os_str()];
    let mut served = common::serve_with_args(&data, false, "error", &args);
    let key = std::fs::read_to_string(data.join("operator.key"))
        .unwrap()
        .trim()
        .to_owned();
    let http = stoa::http_client::client();
    let api = |path: &str| format!("{}{path}", served.url);

    // Three people join a room over signaling: room.started and three joins wait in the outbox.
    let room: Value = http
        .post(api("/api/v1/rooms"))
        .bearer_auth(&key)
        .json(&json!({ "title": "Killed" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = room["id"].as_str().unwrap().to_owned();
    let mut sockets = Vec::new();
    for name in ["Ada", "Bo", "Cy"] {
        let invite: Value = http
            .post(api(&format!("/api/v1/rooms/{room}/invites")))
            .bearer_auth(&key)
            .json(&json!({ "role": "listener" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let joined: Value = http
            .post(api("/api/v1/join"))
            .json(&json!({ "invite": invite["code"], "display_name": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (mut ws, _) = connect_async(joined["signal_url"].as_str().unwrap())
            .await
            .unwrap();
        let join = json!({ "type": "join", "token": joined["token"] });
        ws.send(Message::Text(join.to_string().into()))
            .await
            .unwrap();
        loop {
            if let Some(Ok(Message::Text(text))) = ws.next().await {
                let m: Value = serde_json::from_str(text.as_str()).unwrap();
                if m["type"] == "welcome" {
                    break;
                }
            }
        }
        sockets.push(ws);
    }
    wait_for(&log, "failed attempts", |got| answered(got, "fail") >= 4).await;
    let pending: Value = http
        .get(api("/api/v1/webhooks/deliveries?state=pending"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["items"].as_array().unwrap().len(), 4, "{pending}");

    // SIGKILL, with every event still pending; the receiver comes back; so does the server.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    drop(sockets);
    stoa::http_client::client()
        .post(format!("http://127.0.0.1:{port}/mode"))
        .body("ok")
        .send()
        .await
        .unwrap();
    let mut again = common::serve_with_args(&data, false, "error", &args);

    let got = wait_for(&log, "every event", |got| answered(got, "ok") >= 4).await;
    assert_eq!(answered(&got, "invalid"), 0, "{got:#?}");
    let accepted: Vec<&Value> = got.iter().filter(|e| e["answer"] == "ok").collect();
    let types: Vec<&str> = accepted
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "room.started",
            "participant.joined",
            "participant.joined",
            "participant.joined"
        ],
        "{got:#?}"
    );
    let names: Vec<&str> = accepted[1..]
        .iter()
        .map(|e| {
            e["body"]["data"]["participant"]["display_name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["Ada", "Bo", "Cy"]);
    let pending_ids: Vec<&Value> = pending["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    let delivered_ids: Vec<&Value> = accepted.iter().map(|e| &e["id"]).collect();
    assert_eq!(delivered_ids, pending_ids, "each event once, with its id");

    again.child.kill().ok();
    again.child.wait().ok();
    receiver.kill().ok();
    receiver.wait().ok();
}
