//! The `stoa` binary as a user runs it: `stoa serve` prints the URL, the key location and a
//! demo link; the admin commands talk to it; SIGTERM stops it cleanly.

use crate::common;

use std::path::Path;
use std::process::{Child, Command};

use crate::common::{BIN, Served};

/// Starts `stoa serve` with its demo room: the child, the base URL and the printed link.
fn serve(data: &Path) -> (Child, String, String) {
    let Served { child, url, link } = common::serve(data, true, "warn");
    (child, url, link.expect("a demo link"))
}

fn admin(data: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--server", server, "--data-dir"])
        .arg(data)
        .env_remove("STOA_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stoa {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Redeems `invite` at the server at `url` as `name`: the join answer, which has a token.
async fn redeem(http: &reqwest::Client, url: &str, invite: &str, name: &str) -> serde_json::Value {
    let joined: serde_json::Value = http
        .post(format!("{url}/api/v1/join"))
        .json(&serde_json::json!({ "invite": invite, "display_name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(joined["token"].is_string(), "{joined}");
    joined
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "stoa exited with {exit}");
}

#[tokio::test]
async fn serve_prints_a_working_link_and_admin_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, url, link) = serve(&data);
    assert!(link.starts_with(&format!("{url}/i/")), "{link}");

    // The printed link is redeemable as a moderator of the demo room.
    let http = stoa::http_client::client();
    let joined = redeem(&http, &url, &link, "Me").await;
    assert_eq!(joined["role"], "moderator", "{joined}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("operator.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key file is readable by others");
    }

    let created = admin(&data, &url, &["room", "create", "--title", "From the CLI"]);
    let room = created.split('\t').next().unwrap().to_owned();
    assert!(room.starts_with("rm_"), "{created}");
    let listed = admin(&data, &url, &["room", "list"]);
    assert!(
        listed.contains("Demo room") && listed.contains("From the CLI"),
        "{listed}"
    );
    let invite = admin(
        &data,
        &url,
        &[
            "invite",
            "create",
            "--room",
            &room,
            "--role",
            "speaker",
            "--max-uses",
            "3",
        ],
    );
    assert!(invite.trim().starts_with(&format!("{url}/i/")), "{invite}");
    terminate(child);

    // A second start on the same folder keeps the key, replaces the startup link.
    let (child, url2, link2) = serve(&data);
    assert_ne!(link, link2);
    let old = http
        .post(format!("{url2}/api/v1/join"))
        .json(&serde_json::json!({ "invite": link, "display_name": "Me" }))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404, "the previous startup link is revoked");
    let listed = admin(&data, &url2, &["room", "list"]);
    assert!(listed.contains("From the CLI"));
    terminate(child);
}

#[test]
fn bad_configuration_is_reported() {
    let out = Command::new(BIN)
        .args(["serve", "--public-url", "ftp://nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("public_url"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stoa.toml");
    std::fs::write(&file, "bind = \"127.0.0.1:1\"\nunknown_key = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"));
}

/// SIGTERM with a thousand people in a room, talking to it: every one of them is told the
/// server is restarting (`closed`, then the close frame 1012 `server_restarting`) before it
/// exits, so their clients come back rather than seeing a broken connection (or, for a
/// message that was on its way to the room as it stopped, `room_ended`, which is final). Before, the process could
/// exit while its sockets were still writing their goodbyes: three stops in four left 8 to 537
/// of the 1,000 sockets with nothing (1006). Then, while it did not wait for the clients to
/// answer the close, about one stop in thirty on a busy machine reset a socket that still had
/// unread data, and its client (answering a ping first) lost the goodbye to the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_says_goodbye_to_every_socket() {
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;
    const PEOPLE: usize = 1000;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stoa.toml");
    std::fs::write(
        &config,
        // The sockets are not read between their welcome and the stop: no ping timeout then.
        "[signal]\nmax_sockets_per_address = 5000\nping_timeout_ms = 120000\n\
         [limits]\njoins_per_minute = 10000\njoin_burst = 10000\n",
    )
    .unwrap();
    let Served { child, url, link } = common::serve_with_args(
        &dir.path().join("data"),
        true,
        "warn",
        &["--config".as_ref(), config.as_os_str()],
    );
    let http = stoa::http_client::client();
    let host = redeem(&http, &url, &link.unwrap(), "Host").await;
    let invite: Value = http
        .post(format!(
            "{url}/api/v1/rooms/{}/invites",
            host["room_id"].as_str().unwrap()
        ))
        .bearer_auth(host["token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = invite["code"].as_str().unwrap().to_owned();
    let sockets: Vec<_> = futures::stream::iter(0..PEOPLE)
        .map(|i| {
            let (http, url, code) = (&http, &url, &code);
            async move {
                let joined = redeem(http, url, code, &format!("P{i}")).await;
                let (mut ws, _) =
                    tokio_tungstenite::connect_async(joined["signal_url"].as_str().unwrap())
                        .await
                        .unwrap();
                let hello = json!({"type": "join", "id": 1, "token": joined["token"]});
                ws.send(Message::text(hello.to_string())).await.unwrap();
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"welcome\"") => break ws,
                        Some(Ok(_)) => {}
                        other => panic!("P{i} got {other:?} before the welcome"),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // Each socket read to its end: what it was told last, and how it closed. Each also sends
    // a room message every 100 ms, so that some are on their way to a room as it stops.
    let goodbyes = sockets.into_iter().map(|ws| {
        tokio::spawn(async move {
            let (mut to_server, mut from_server) = ws.split();
            let mut told = None;
            let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
            let mut id = 1;
            loop {
                let next = tokio::select! {
                    next = from_server.next() => next,
                    _ = every.tick() => {
                        id += 1;
                        let message = json!({"type": "lower_hand", "id": id}).to_string();
                        // Refused (no hand is up), but it goes to the room all the same.
                        let _ = to_server.send(Message::text(message)).await;
                        continue;
                    }
                };
                match next {
                    Some(Ok(Message::Text(text))) => {
                        let message: Value = serde_json::from_str(text.as_str()).unwrap();
                        if message["type"] == "closed" {
                            told = message["reason"].as_str().map(str::to_owned);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break (
                            told,
                            frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                        );
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break (told, None),
                }
            }
        })
    });
    let goodbyes: Vec<_> = goodbyes.collect();
    // Waiting for the exit on a thread of its own: the runtime's two threads keep reading.
    tokio::task::spawn_blocking(|| terminate(child))
        .await
        .unwrap();
    let mut missed = 0;
    for goodbye in goodbyes {
        let (told, frame) = goodbye.await.unwrap();
        if told.as_deref() != Some("server_restarting")
            || frame != Some((1012, "server_restarting".to_owned()))
        {
            missed += 1;
            eprintln!("told {told:?}, closed with {frame:?}");
        }
    }
    assert_eq!(missed, 0, "of {PEOPLE} sockets, {missed} had no goodbye");
}

/// Someone who joins (or resumes) while the server stops — a client coming back at once after
/// its `server_restarting` — is told the same, instead of starting the room again on a server
/// about to exit. A socket that never joins holds the stop for its 3 s wait for goodbyes,
/// which leaves the time to try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_while_the_server_stops_is_told_it_restarts() {
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let Served {
        mut child,
        url,
        link,
    } = common::serve(&dir.path().join("data"), true, "warn");
    let joined = redeem(&stoa::http_client::client(), &url, &link.unwrap(), "Host").await;
    let signal_url = joined["signal_url"].as_str().unwrap().to_owned();
    let (mut idle, _) = tokio_tungstenite::connect_async(signal_url.as_str())
        .await
        .unwrap();
    // Its session runs (it answers) before the stop begins.
    idle.send(Message::text(json!({"type": "raise_hand"}).to_string()))
        .await
        .unwrap();
    match idle.next().await {
        Some(Ok(Message::Text(text))) => assert!(text.contains("join_first"), "{text}"),
        other => panic!("the idle socket: {other:?}"),
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };

    let started = std::time::Instant::now();
    let (said, frame) = loop {
        let (mut ws, _) = tokio_tungstenite::connect_async(signal_url.as_str())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the server took joins until it exited ({:?}): {e}",
                    started.elapsed()
                )
            });
        let hello = json!({"type": "join", "id": 1, "token": joined["token"]});
        ws.send(Message::text(hello.to_string())).await.unwrap();
        let first = match ws.next().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(text.as_str()).unwrap(),
            other => panic!("no answer to the join: {other:?}"),
        };
        if first["type"] == "welcome" {
            // The stop has not begun yet.
            drop(ws);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        }
        let frame = match ws.next().await {
            Some(Ok(Message::Close(frame))) => {
                frame.map(|f| (u16::from(f.code), f.reason.to_string()))
            }
            other => panic!("after {first}: {other:?}"),
        };
        break (first, frame);
    };
    assert_eq!(
        (&said["type"], &said["reason"]),
        (&json!("closed"), &json!("server_restarting")),
        "{said}"
    );
    assert_eq!(frame, Some((1012, "server_restarting".to_owned())));
    let exit = child.wait().unwrap();
    assert!(exit.success(), "stoa exited with {exit}");
}
