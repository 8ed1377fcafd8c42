//! Rooms' own webhook endpoints end to end, on SQLite and PostgreSQL, with receivers that
//! verify every signature with the `standardwebhooks` Python package: a room's endpoint gets
//! its room's events (and no other room's) exactly once, in order, signed with the room's own
//! secret, through a receiver that fails and comes back, while the server's endpoint still gets
//! everything; a new secret, a deleted endpoint; the refusals (who may, which URLs, which
//! addresses, checked again when sending); and a server killed with SIGKILL with room
//! deliveries pending sends them when it is back.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_tests::signal::SignalClient;
use stoa_tests::webhook_receiver::{PATIENCE, Receiver, SECRET};
use stoa_tests::{Engine, TestServer, on_both_engines};

fn count(entries: &[Value], answer: &str) -> usize {
    entries.iter().filter(|e| e["answer"] == answer).count()
}

/// The accepted (verified) requests about `room`, in the order received.
fn accepted_of<'a>(entries: &'a [Value], room: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["answer"] == "ok" && e["body"]["data"]["room_id"] == room)
        .collect()
}

fn types<'a>(accepted: &[&'a Value]) -> Vec<&'a str> {
    accepted
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

fn webhook(room: &str) -> String {
    format!("/api/v1/rooms/{room}/webhook")
}

/// Every page of a deliveries list (`path` without a query).
async fn all_deliveries(t: &TestServer, path: &str, state: Option<&str>) -> Vec<Value> {
    let filter = state.map(|s| format!("&state={s}")).unwrap_or_default();
    t.every_item(&format!("{path}?limit=20{filter}")).await
}

/// Polls until `done` holds for what `fetch` returns, up to `PATIENCE`.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut fetch: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = fetch().await;
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "never {what}: {got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_rooms_endpoint_gets_its_rooms_events_once_in_order(engine: Engine) {
    let server_rx = Receiver::start("ok");
    let a_rx = Receiver::start("fail");
    let b_rx = Receiver::start("ok");
    let server_url = server_rx.url();
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.webhooks.url = Some(server_url);
        c.webhooks.secret = Some(SECRET.into());
        c.webhooks.timeout_ms = 300;
        c.webhooks.retry_first_ms = 50;
        c.webhooks.retry_max_ms = 200;
        c.webhooks.max_attempts = 1000;
        // The receivers are on 127.0.0.1.
        c.webhooks.room_allow_private = true;
    })
    .await;
    let a = t.create_room("A").await;
    let b = t.create_room("B").await;

    // Set before anyone is in: the room makes its events from its start.
    let made = t
        .op(
            Method::PUT,
            &webhook(&a),
            Some(json!({ "url": a_rx.url() })),
        )
        .await
        .expect(201);
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && secret != SECRET, "{made}");
    assert!(made["id"].as_str().unwrap().starts_with("rwh_"), "{made}");
    assert_eq!(made["url"], a_rx.url().as_str());
    assert_eq!(made["created_by"], "operator");
    a_rx.set_secret(&secret).await;
    // Seen again: no secret. Set again: the same endpoint and secret, 200.
    let shown = t.op(Method::GET, &webhook(&a), None).await.expect(200);
    assert!(shown["secret"].is_null(), "{shown}");
    assert_eq!((&shown["id"], &shown["url"]), (&made["id"], &made["url"]));
    let again = t
        .op(
            Method::PUT,
            &webhook(&a),
            Some(json!({ "url": a_rx.url() })),
        )
        .await
        .expect(200);
    assert!(
        again["secret"].is_null() && again["id"] == made["id"],
        "{again}"
    );

    let mo_joined = t.participant(&a, "moderator", "Mo").await;
    let mo_token = mo_joined["token"].as_str().unwrap();
    let mut mo = SignalClient::join(&mo_joined).await;
    let mut sam = SignalClient::join(&t.participant(&a, "speaker", "Sam").await).await;
    let sid = sam.participant_id();
    mo.wait_about("participant_joined", &sid).await;
    mo.ok(json!({ "type": "mute", "participant": sid })).await;
    // Room B gets its endpoint while it is live: from then on, its events go there too.
    let _bo = SignalClient::join(&t.participant(&b, "moderator", "Bo").await).await;
    server_rx
        .wait_until("room B's start", |e| accepted_of(e, &b).len() >= 2)
        .await;
    let made_b = t
        .op(
            Method::PUT,
            &webhook(&b),
            Some(json!({ "url": b_rx.url() })),
        )
        .await
        .expect(201);
    b_rx.set_secret(made_b["secret"].as_str().unwrap()).await;
    let _cy = SignalClient::join(&t.participant(&b, "listener", "Cy").await).await;

    // Room A's receiver fails: the server's endpoint gets room A's events all the same.
    let first = [
        "room.started",
        "participant.joined",
        "participant.joined",
        "participant.muted",
    ];
    server_rx
        .wait_until("room A's events", |e| {
            accepted_of(e, &a).len() >= first.len()
        })
        .await;
    a_rx.wait_until("three failures", |e| count(e, "fail") >= 3)
        .await;
    assert_eq!(count(&a_rx.entries(), "ok"), 0);
    a_rx.set_mode("ok").await;
    // Sam leaves: the last event, after which nothing is owed.
    sam.ok(json!({ "type": "leave" })).await;
    let expected: Vec<&str> = first.iter().copied().chain(["participant.left"]).collect();
    let got = a_rx
        .wait_until("room A's events", |e| {
            accepted_of(e, &a).last().map(|l| l["type"].as_str()) == Some(Some("participant.left"))
        })
        .await;
    assert_eq!(count(&got, "invalid"), 0, "{got:#?}");
    let accepted: Vec<&Value> = got.iter().filter(|e| e["answer"] == "ok").collect();
    assert_eq!(
        accepted.len(),
        accepted_of(&got, &a).len(),
        "another room's event: {got:#?}"
    );
    assert_eq!(types(&accepted), expected, "{got:#?}");
    let mut ids: Vec<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected.len(), "an event came twice: {got:#?}");

    // The server's endpoint got the very same bodies for room A, under its own ids.
    let server_got = server_rx
        .wait_until("room A's last event", |e| {
            accepted_of(e, &a).len() >= expected.len()
        })
        .await;
    let server_a = accepted_of(&server_got, &a);
    assert_eq!(types(&server_a), expected);
    for (room_copy, server_copy) in accepted.iter().zip(&server_a) {
        assert_eq!(room_copy["body"], server_copy["body"]);
        assert_ne!(room_copy["id"], server_copy["id"]);
    }
    // ... and room B's; room B's endpoint got those made after it was set, and only those.
    let b_got = b_rx.wait_until("Cy's join", |e| count(e, "ok") >= 1).await;
    assert_eq!(types(&accepted_of(&b_got, &b)), ["participant.joined"]);
    assert_eq!(count(&b_got, "ok"), 1, "{b_got:#?}");
    let cy = &accepted_of(&b_got, &b)[0]["body"]["data"]["participant"];
    assert_eq!(cy["display_name"], "Cy");

    // The room's managers see what was sent to its endpoint: all delivered, in that order.
    let listed = all_deliveries(&t, &format!("{}/deliveries", webhook(&a)), None).await;
    let listed_ids: Vec<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let received_ids: Vec<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, received_ids);
    assert!(
        listed
            .iter()
            .all(|d| d["state"] == "delivered" && d["endpoint"] == made["id"])
    );
    assert!(listed[0]["attempts"].as_u64().unwrap() >= 3, "{listed:#?}");
    let by_moderator = t
        .call(
            Method::GET,
            &format!("{}/deliveries?state=delivered", webhook(&a)),
            Some(mo_token),
            None,
        )
        .await
        .expect(200);
    assert_eq!(
        by_moderator["items"].as_array().unwrap().len(),
        expected.len()
    );

    // A new secret: what comes next is signed with it.
    let rotated = t
        .call(
            Method::POST,
            &format!("{}/secret", webhook(&a)),
            Some(mo_token),
            None,
        )
        .await
        .expect(200);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    a_rx.set_secret(new_secret).await;
    let mut lee = SignalClient::join(&t.participant(&a, "listener", "Lee").await).await;
    a_rx.wait_until("Lee's join, verified with the new secret", |e| {
        accepted_of(e, &a).len() == expected.len() + 1
    })
    .await;

    // Deleted while an event waits for it: the event goes, and nothing more is written for it.
    let failed_before = count(&a_rx.entries(), "fail");
    a_rx.set_mode("fail").await;
    lee.ok(json!({ "type": "leave" })).await;
    a_rx.wait_until("Lee's leave failing", |e| count(e, "fail") > failed_before)
        .await;
    t.call(Method::DELETE, &webhook(&a), Some(mo_token), None)
        .await
        .expect(204);
    t.op(Method::GET, &webhook(&a), None)
        .await
        .expect_problem(404, "webhook_not_found");
    let pending = all_deliveries(&t, &format!("{}/deliveries", webhook(&a)), Some("pending")).await;
    assert!(pending.is_empty(), "{pending:#?}");
    let _kim = SignalClient::join(&t.participant(&a, "listener", "Kim").await).await;
    server_rx
        .wait_until("Kim's join", |e| {
            types(&accepted_of(e, &a))
                .iter()
                .filter(|t| **t == "participant.joined")
                .count()
                == 4
        })
        .await;
    let after = all_deliveries(&t, &format!("{}/deliveries", webhook(&a)), None).await;
    assert_eq!(after.len(), expected.len() + 1, "{after:#?}");
    let audit = t
        .op(
            Method::GET,
            &format!("/api/v1/rooms/{a}/events?limit=200"),
            None,
        )
        .await
        .expect(200);
    let deleted = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "webhook.deleted")
        .cloned()
        .unwrap_or_else(|| panic!("no webhook.deleted line: {audit:#}"));
    assert_eq!(deleted["detail"]["pending_dropped"], 1, "{deleted}");
    assert_eq!(deleted["actor"], mo.participant_id().as_str());
    t.stop().await;
}

/// With no server endpoint a room makes events only while it has an endpoint of its own: a
/// live room is told when one is set or deleted, before the call answers.
async fn a_live_room_makes_events_only_while_it_has_an_endpoint(engine: Engine) {
    let rx = Receiver::start("ok");
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.webhooks.room_allow_private = true;
    })
    .await;
    let room = t.create_room("Told").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let body = Some(json!({ "url": rx.url() }));
    let made = t
        .op(Method::PUT, &webhook(&room), body.clone())
        .await
        .expect(201);
    rx.set_secret(made["secret"].as_str().unwrap()).await;
    let lee = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    mo.wait_about("participant_joined", &lee.participant_id())
        .await;
    // Lee's delivery is recorded before the endpoint goes: deleting an endpoint drops what it
    // still owes, and a row whose attempt is under way (the receiver may have it already) is
    // still owed. Under load the DELETE could otherwise come between the two.
    eventually(
        "Lee's join recorded delivered",
        || all_deliveries(&t, "/api/v1/webhooks/deliveries", Some("delivered")),
        |d| d.len() == 1,
    )
    .await;
    t.op(Method::DELETE, &webhook(&room), None)
        .await
        .expect(204);
    let kim = SignalClient::join(&t.participant(&room, "listener", "Kim").await).await;
    mo.wait_about("participant_joined", &kim.participant_id())
        .await;
    let made = t.op(Method::PUT, &webhook(&room), body).await.expect(201);
    rx.set_secret(made["secret"].as_str().unwrap()).await;
    let zed = SignalClient::join(&t.participant(&room, "listener", "Zed").await).await;
    let got = rx
        .wait_until("Lee's and Zed's joins", |e| count(e, "ok") >= 2)
        .await;
    let names: Vec<&str> = got
        .iter()
        .map(|e| {
            e["body"]["data"]["participant"]["display_name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["Lee", "Zed"], "{got:#?}");
    assert_eq!(
        zed.participant_id(),
        got[1]["body"]["data"]["participant"]["id"]
            .as_str()
            .unwrap()
    );
    // The outbox has those two and nothing for a server endpoint there is not.
    let outbox = t.every_item("/api/v1/webhooks/deliveries?limit=50").await;
    assert_eq!(outbox.len(), 2, "{outbox:#?}");
    assert!(
        outbox.iter().all(|d| d["endpoint"].is_string()),
        "{outbox:#?}"
    );
    t.stop().await;
}

async fn refused_callers_urls_and_addresses(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Guarded").await;
    let other = t.create_room("Other").await;
    let path = webhook(&room);
    let put = |url: Value| t.op(Method::PUT, &path, Some(json!({ "url": url })));

    // Not an address rooms may send to, by default: the operator's network is not theirs.
    for private in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
        "https://10.0.0.7/hook",
        "http://2130706433/hook",
    ] {
        put(json!(private))
            .await
            .expect_problem(422, "webhook_address_refused");
    }
    for invalid in [
        "javascript:alert(1)",
        "ftp://hooks.example.org/",
        "http://user:password@8.8.8.8/hook",
        "http://8.8.8.8/hook#part",
        "hooks.example.org/stoa",
        "",
    ] {
        put(json!(invalid))
            .await
            .expect_problem(422, "invalid_webhook_url");
    }
    let long = format!("http://8.8.8.8/{}", "a".repeat(2048));
    put(json!(long))
        .await
        .expect_problem(422, "invalid_webhook_url");
    put(json!("http://no-such-host.invalid/hook"))
        .await
        .expect_problem(422, "webhook_host_unresolvable");
    put(json!(7)).await.expect_problem(422, "invalid_body");
    t.op(
        Method::PUT,
        &path,
        Some(json!({ "url": "http://8.8.8.8/", "secret": "mine" })),
    )
    .await
    .expect_problem(422, "invalid_body");

    // Who may: the room's moderators and the operator, nobody else.
    let listener = t.participant(&room, "listener", "Lee").await;
    let moderator = t.participant(&room, "moderator", "Mo").await;
    let foreign = t.participant(&other, "moderator", "Xi").await;
    let body = Some(json!({ "url": "http://8.8.8.8:9/hook" }));
    let as_ = |who: &Value| Some(who["token"].as_str().unwrap().to_owned());
    t.call(Method::PUT, &path, as_(&listener).as_deref(), body.clone())
        .await
        .expect_problem(403, "moderator_only");
    t.call(Method::PUT, &path, as_(&foreign).as_deref(), body.clone())
        .await
        .expect_problem(403, "wrong_room");
    t.op(Method::GET, &path, None)
        .await
        .expect_problem(404, "webhook_not_found");
    t.op(Method::POST, &format!("{path}/secret"), None)
        .await
        .expect_problem(404, "webhook_not_found");
    t.op(Method::DELETE, &path, None)
        .await
        .expect_problem(404, "webhook_not_found");
    let made = t
        .call(Method::PUT, &path, as_(&moderator).as_deref(), body.clone())
        .await
        .expect(201);
    assert_eq!(made["created_by"], moderator["participant_id"]);
    t.call(Method::GET, &path, as_(&foreign).as_deref(), None)
        .await
        .expect_problem(403, "wrong_room");
    t.op(Method::DELETE, &path, None).await.expect(204);
    t.op(Method::GET, &webhook("rm_AAAAAAAAAAAAAAAA"), None)
        .await
        .expect_problem(404, "room_not_found");
    t.op(Method::DELETE, &format!("/api/v1/rooms/{other}"), None)
        .await
        .expect(204);
    t.op(Method::PUT, &webhook(&other), body)
        .await
        .expect_problem(410, "room_ended");
    t.stop().await;
}

/// Allowed when it was set; no longer when it is sent to (the operator changed the rule, or a
/// name resolves elsewhere now): refused at connection time and, after the attempts allowed,
/// listed as failed with why. The receiver never hears a thing.
async fn the_address_is_checked_again_when_sending(engine: Engine) {
    let rx = Receiver::start("ok");
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.webhooks.room_allowed_hosts = vec!["localhost".into()];
        c.webhooks.retry_first_ms = 20;
        c.webhooks.retry_max_ms = 40;
        c.webhooks.max_attempts = 2;
    })
    .await;
    let room = t.create_room("Moved").await;
    let url = rx.url().replace("127.0.0.1", "localhost");
    let made = t
        .op(Method::PUT, &webhook(&room), Some(json!({ "url": url })))
        .await
        .expect(201);
    rx.set_secret(made["secret"].as_str().unwrap()).await;
    let mut t = t;
    t.config.webhooks.room_allowed_hosts.clear();
    let t = t.restart().await;
    let _mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let listed = format!("{}/deliveries", webhook(&room));
    let failed = eventually(
        "room.started and the join given up",
        || all_deliveries(&t, &listed, Some("failed")),
        |failed| failed.len() == 2,
    )
    .await;
    for d in &failed {
        let why = d["last_error"].as_str().unwrap();
        assert!(why.contains("rooms may not send to"), "{d}");
        assert_eq!(d["attempts"], 2);
    }
    let shown = t.op(Method::GET, &webhook(&room), None).await.expect(200);
    assert_eq!(
        (shown["pending"].as_u64(), shown["failed"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(rx.entries().is_empty(), "{:#?}", rx.entries());
    t.stop().await;
}

/// A `stoa serve` process of its own, killed with SIGKILL when dropped.
struct Process(Child, String);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the built server on `data` with `config` (a TOML file) and `key`; its base URL.
fn serve(data: &Path, config: &Path, key: &str, database: Option<&str>) -> Process {
    let bin = stoa_tests::soak::find_server_bin().expect("the stoa binary (cargo build --release)");
    let mut command = Command::new(bin);
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--no-demo", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .env("STOA_API_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = database {
        command.args(["--database-url", url]);
    }
    let mut child = command.spawn().expect("stoa starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server's banner")
            .expect("its output");
        if let Some(rest) = line.trim().strip_prefix("Stoa is running at ") {
            break rest.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Process(child, base)
}

async fn a_server_killed_with_room_deliveries_pending_sends_them_when_back(engine: Engine) {
    let rx = Receiver::start("fail");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("stoa.toml");
    std::fs::write(
        &config,
        "[webhooks]\nroom_allow_private = true\ntimeout_ms = 300\nretry_first_ms = 50\n\
         retry_max_ms = 200\nmax_attempts = 1000\n",
    )
    .unwrap();
    let database = match engine {
        Engine::Sqlite => None,
        Engine::Postgres => Some(stoa_tests::postgres::Postgres::shared().fresh_database()),
    };
    let key = format!("stoa_sk_{:032x}", rand::random::<u128>());
    let server = serve(&data, &config, &key, database.as_deref());
    let http = stoa::http_client::client();
    let call = |base: &str, method: Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, room) = call(
        &server.1,
        Method::POST,
        "/api/v1/rooms",
        Some(json!({ "title": "Killed" })),
    )
    .await;
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_str().unwrap().to_owned();
    let (status, made) = call(
        &server.1,
        Method::PUT,
        &webhook(&room),
        Some(json!({ "url": rx.url() })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    rx.set_secret(made["secret"].as_str().unwrap()).await;
    let mut people = Vec::new();
    for (role, name) in [
        ("moderator", "Mo"),
        ("listener", "Lee"),
        ("listener", "Kim"),
    ] {
        let (_, invite) = call(
            &server.1,
            Method::POST,
            &format!("/api/v1/rooms/{room}/invites"),
            Some(json!({ "role": role })),
        )
        .await;
        let (status, joined) = call(
            &server.1,
            Method::POST,
            "/api/v1/join",
            Some(json!({ "invite": invite["code"], "display_name": name })),
        )
        .await;
        assert_eq!(status, 200, "{joined}");
        people.push(SignalClient::join(&joined).await);
    }
    // room.started and three joins are in the outbox, and the receiver is failing them.
    let deliveries = format!("{}/deliveries", webhook(&room));
    eventually(
        "four pending deliveries",
        || call(&server.1, Method::GET, &deliveries, None),
        |(_, page)| page["items"].as_array().is_some_and(|i| i.len() == 4),
    )
    .await;
    rx.wait_until("two failures", |e| count(e, "fail") >= 2)
        .await;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(
        unsafe { libc::kill(server.0.id() as i32, libc::SIGKILL) },
        0
    );
    drop(server);
    drop(people);

    rx.set_mode("ok").await;
    let back = serve(&data, &config, &key, database.as_deref());
    let expected = [
        "room.started",
        "participant.joined",
        "participant.joined",
        "participant.joined",
    ];
    let got = rx
        .wait_until("every event", |e| count(e, "ok") >= expected.len())
        .await;
    let accepted: Vec<&Value> = got.iter().filter(|e| e["answer"] == "ok").collect();
    assert_eq!(types(&accepted), expected, "{got:#?}");
    assert_eq!(count(&got, "invalid"), 0, "{got:#?}");
    let (_, listed) = eventually(
        "every delivery recorded",
        || call(&back.1, Method::GET, &deliveries, None),
        |(_, page)| {
            page["items"]
                .as_array()
                .is_some_and(|i| i.iter().all(|d| d["state"] == "delivered"))
        },
    )
    .await;
    let listed_ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let received: Vec<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, received);
    // Every one recorded delivered: nothing more is owed, and nothing came twice.
    assert_eq!(
        count(&rx.entries(), "ok"),
        expected.len(),
        "{:#?}",
        rx.entries()
    );
}

on_both_engines!(
    a_rooms_endpoint_gets_its_rooms_events_once_in_order,
    a_live_room_makes_events_only_while_it_has_an_endpoint,
    refused_callers_urls_and_addresses,
    the_address_is_checked_again_when_sending,
    a_server_killed_with_room_deliveries_pending_sends_them_when_back,
);
