//! End-to-end tests of the control plane over real HTTP: rooms, invites, redemption,
//! authorisation, bad input, persistence across restarts, rate limits and the OpenAPI document.
//! Every case runs on both store engines (`sqlite::…`, `postgres::…`); the last tests are about
//! PostgreSQL itself: an outage, and URLs a node must refuse.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use stoa::{Clock, Config};
use stoa_tests::postgres::Postgres;
use stoa_tests::{Engine, TestServer, on_both_engines};

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

async fn rooms_invites_and_join_happy_path(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("  Friday jam ").await;
    let shown = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(200);
    assert_eq!(shown["title"], "Friday jam");
    assert_eq!(shown["live"], false);
    assert_eq!(shown["participant_count"], 0);
    assert!(shown["participants"].as_array().unwrap().is_empty());
    assert!(shown["created_at"].as_str().unwrap().ends_with('Z'));

    let invite = t
        .create_invite(
            &room,
            "speaker",
            json!({ "label": "guests", "max_uses": 5, "expires_in_secs": 3600 }),
        )
        .await;
    for field in [
        "id",
        "code",
        "url",
        "role",
        "label",
        "max_uses",
        "uses",
        "expires_at",
        "revoked",
    ] {
        assert!(invite.get(field).is_some(), "invite lacks {field}");
    }
    assert_eq!(
        invite["url"],
        format!("{}/i/{}", t.base, s(&invite["code"]))
    );
    assert!(s(&invite["code"]).len() >= 22, "at least 128 bits");

    let joined = t.join(&s(&invite["url"]), "Ada").await.expect(200);
    assert_eq!(joined["role"], "speaker");
    assert_eq!(joined["room_id"], room);
    assert_eq!(
        joined["signal_url"],
        format!("{}/api/v1/signal", t.base.replace("http://", "ws://"))
    );
    for field in ["token", "participant_id", "identity", "expires_at"] {
        assert!(
            joined[field].is_string(),
            "join answer lacks {field}: {joined}"
        );
    }
    // Coming back with the identity secret keeps the participant id.
    let again = t
        .call(
            Method::POST,
            "/api/v1/join",
            None,
            Some(json!({ "invite": invite["code"], "display_name": "Ada L", "identity": joined["identity"] })),
        )
        .await
        .expect(200);
    assert_eq!(again["participant_id"], joined["participant_id"]);
    assert!(again["identity"].is_null());

    // Listing shows uses and hides the code.
    let listed = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    let item = &listed["items"][0];
    assert_eq!(item["uses"], 2);
    assert!(item.get("code").is_none() && item.get("url").is_none());

    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let actions: Vec<_> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["action"]))
        .collect();
    assert_eq!(
        actions,
        [
            "room.created",
            "invite.created",
            "invite.redeemed",
            "invite.redeemed"
        ]
    );

    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    let ended = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(200);
    assert!(ended["ended_at"].is_string());
    t.join(&s(&invite["code"]), "Late")
        .await
        .expect_problem(410, "room_ended");
    t.op(
        Method::POST,
        &format!("/api/v1/rooms/{room}/invites"),
        Some(json!({})),
    )
    .await
    .expect_problem(410, "room_ended");
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect_problem(410, "room_ended");
    t.stop().await;
}

/// Every endpoint against every kind of caller: the full refusal matrix.
async fn authorisation_matrix(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("A").await;
    let other = t.create_room("B").await;
    let listener = t.participant(&room, "listener", "L").await;
    let speaker = t.participant(&room, "speaker", "S").await;
    let moderator = t.participant(&room, "moderator", "M").await;
    let foreign_moderator = t.participant(&other, "moderator", "X").await;
    let target = t.participant(&room, "listener", "Target").await;
    let target_id = s(&target["participant_id"]);
    let invite_id = s(&t.create_invite(&room, "listener", json!({})).await["id"]);

    let op = t.api_key.clone();
    let tok = |v: &Value| s(&v["token"]);
    // (name, credential)
    let callers: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("wrong key", Some("stoa_sk_not-the-key".into())),
        ("forged token", Some("st1.eyJyIjoiIn0.AAAA".into())),
        ("listener", Some(tok(&listener))),
        ("speaker", Some(tok(&speaker))),
        ("foreign moderator", Some(tok(&foreign_moderator))),
        ("moderator", Some(tok(&moderator))),
        ("operator", Some(op)),
    ];
    // (method, path, body, operator-only?, success status for allowed callers)
    let r = |p: &str| format!("/api/v1/rooms/{room}{p}");
    let endpoints: Vec<(Method, String, Option<Value>, bool, u16)> = vec![
        (
            Method::POST,
            "/api/v1/rooms".into(),
            Some(json!({ "title": "new" })),
            true,
            201,
        ),
        (Method::GET, "/api/v1/rooms".into(), None, true, 200),
        (Method::GET, r(""), None, false, 200),
        (
            Method::POST,
            r("/invites"),
            Some(json!({ "role": "listener" })),
            false,
            201,
        ),
        (Method::GET, r("/invites"), None, false, 200),
        (
            Method::DELETE,
            r(&format!("/invites/{invite_id}")),
            None,
            false,
            204,
        ),
        (Method::GET, r("/events"), None, false, 200),
        // Nobody is connected in this test: the live calls answer room_not_live.
        (Method::GET, r("/participants"), None, false, 409),
        (
            Method::POST,
            r(&format!("/participants/{target_id}/role")),
            Some(json!({ "role": "speaker" })),
            false,
            409,
        ),
        (
            Method::POST,
            r(&format!("/participants/{target_id}/mute")),
            None,
            false,
            409,
        ),
        (
            Method::DELETE,
            r(&format!("/participants/{target_id}")),
            None,
            false,
            409,
        ),
        (
            Method::DELETE,
            r(&format!("/participants/{target_id}?ban=true")),
            None,
            false,
            204,
        ),
    ];
    for (method, path, body, operator_only, ok) in &endpoints {
        for (who, cred) in &callers {
            let answer = t
                .call(method.clone(), path, cred.as_deref(), body.clone())
                .await;
            let expected: (u16, &str) = match (*who, *operator_only) {
                ("none", _) => (401, "missing_credentials"),
                ("wrong key", _) => (401, "invalid_api_key"),
                ("forged token", _) => (401, "invalid_token"),
                ("operator", _) | ("moderator", false) => (*ok, ""),
                (_, true) => (403, "operator_only"),
                ("foreign moderator", false) => (403, "wrong_room"),
                (_, false) => (403, "moderator_only"),
            };
            let got = (answer.status.as_u16(), answer.code());
            let expected_code = if expected.0 == 409 || expected.0 < 300 {
                got.1
            } else {
                expected.1
            };
            assert_eq!(
                (got.0, got.1),
                (expected.0, expected_code),
                "{who} {method} {path}: {:?}",
                answer.body
            );
            if expected.0 == 409 {
                assert_eq!(got.1, "room_not_live");
            }
            if expected.0 >= 400 {
                answer.expect_problem(expected.0, got.1);
            }
        }
    }
    // Ending the room: refused for all but moderators of this room and the operator.
    for (who, cred) in &callers[..6] {
        let a = t.call(Method::DELETE, &r(""), cred.as_deref(), None).await;
        assert!(a.status.is_client_error(), "{who} could end the room");
    }
    t.call(Method::DELETE, &r(""), Some(&tok(&moderator)), None)
        .await
        .expect(204);
    t.call(
        Method::DELETE,
        &format!("/api/v1/rooms/{other}"),
        Some(&t.api_key),
        None,
    )
    .await
    .expect(204);

    // The scheme name is case-insensitive; a malformed header is not.
    t.call(Method::GET, "/api/v1/rooms", None, None)
        .await
        .expect_problem(401, "missing_credentials");
    let lower = t
        .http
        .get(t.url("/api/v1/rooms"))
        .header("authorization", format!("bearer {}", t.api_key));
    assert_eq!(lower.send().await.unwrap().status(), 200);
    let basic = t
        .http
        .get(t.url("/api/v1/rooms"))
        .header("authorization", "Basic abc");
    assert_eq!(basic.send().await.unwrap().status(), 401);

    // Tokens expire.
    let fresh = t.create_room("C").await;
    let m = t.participant(&fresh, "moderator", "M2").await;
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{fresh}"),
        Some(&tok(&m)),
        None,
    )
    .await
    .expect(200);
    t.clock
        .advance(Duration::from_secs(t.config.limits.session_ttl_secs + 1));
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{fresh}"),
        Some(&tok(&m)),
        None,
    )
    .await
    .expect_problem(401, "token_expired");
    t.stop().await;
}

async fn invite_expiry_revocation_and_unknown_codes(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("R").await;
    let timed = t
        .create_invite(&room, "listener", json!({ "expires_in_secs": 60 }))
        .await;
    t.join(&s(&timed["code"]), "Early").await.expect(200);
    t.clock.advance(Duration::from_secs(61));
    t.join(&s(&timed["code"]), "Late")
        .await
        .expect_problem(410, "invite_expired");

    let revoked = t.create_invite(&room, "listener", json!({})).await;
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/invites/{}", s(&revoked["id"])),
        None,
    )
    .await
    .expect(204);
    let a = t.join(&s(&revoked["code"]), "X").await;
    a.expect_problem(404, "invite_invalid");
    // An unknown code answers exactly like a revoked one.
    let unknown = t.join("AAAAAAAAAAAAAAAAAAAAAA", "X").await;
    unknown.expect_problem(404, "invite_invalid");
    assert_eq!(a.body, unknown.body);

    // Revoking by code works too; revoking an invite of another room does not.
    let by_code = t.create_invite(&room, "listener", json!({})).await;
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/invites/{}", s(&by_code["code"])),
        None,
    )
    .await
    .expect(204);
    t.join(&s(&by_code["code"]), "Y")
        .await
        .expect_problem(404, "invite_invalid");
    let other = t.create_room("Other").await;
    let theirs = t.create_invite(&other, "listener", json!({})).await;
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/invites/{}", s(&theirs["id"])),
        None,
    )
    .await
    .expect_problem(404, "invite_not_found");
    t.join(&s(&theirs["code"]), "Z").await.expect(200);
    t.stop().await;
}

async fn max_uses_holds_under_concurrency(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Busy").await;
    let invite = t
        .create_invite(&room, "listener", json!({ "max_uses": 10 }))
        .await;
    let code = s(&invite["code"]);
    let attempts = (0..50).map(|i| {
        let code = code.clone();
        let t = &t;
        async move { t.join(&code, &format!("guest {i}")).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let used_up = answers
        .iter()
        .filter(|a| a.code() == "invite_used_up")
        .count();
    assert_eq!((ok, used_up), (10, 40));
    let ids: BTreeSet<_> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| s(&a.body["participant_id"]))
        .collect();
    assert_eq!(ids.len(), 10, "each success is its own participant");
    let listed = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    assert_eq!(listed["items"][0]["uses"], 10);
    t.stop().await;
}

async fn banned_identity_cannot_come_back_through_any_invite(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("R").await;
    let first = t.create_invite(&room, "listener", json!({})).await;
    let second = t.create_invite(&room, "speaker", json!({})).await;
    let identity = "a-browser-kept-secret-0123456789";
    let join = |code: Value| {
        let t = &t;
        async move {
            t.call(
                Method::POST,
                "/api/v1/join",
                None,
                Some(json!({ "invite": code, "display_name": "Mallory", "identity": identity })),
            )
            .await
        }
    };
    let mallory = join(first["code"].clone()).await.expect(200);
    let pid = s(&mallory["participant_id"]);
    let moderator = t.participant(&room, "moderator", "Mod").await;
    t.call(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/participants/{pid}?ban=true&revoke_invite=true"),
        Some(&s(&moderator["token"])),
        None,
    )
    .await
    .expect(204);
    join(second["code"].clone())
        .await
        .expect_problem(403, "banned");
    // The invite Mallory came through was revoked for everyone.
    t.join(&s(&first["code"]), "Innocent")
        .await
        .expect_problem(404, "invite_invalid");
    // Mallory's still-valid token no longer works either.
    let room_path = format!("/api/v1/rooms/{room}");
    t.call(Method::GET, &room_path, Some(&s(&mallory["token"])), None)
        .await
        .expect_problem(403, "banned");
    // The refusal did not consume a use.
    let listed = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    let second_listed = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == second["id"])
        .unwrap();
    assert_eq!(second_listed["uses"], 0);
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let ban = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "participant.banned")
        .unwrap();
    assert_eq!(ban["target"], pid.as_str());
    assert_eq!(ban["actor"], moderator["participant_id"]);
    // A moderator cannot ban someone who never joined this room.
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/participants/pt_AAAAAAAAAAAAAAAA?ban=true"),
        None,
    )
    .await
    .expect_problem(404, "participant_not_found");
    t.stop().await;
}

async fn everything_survives_a_restart(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Persistent").await;
    let once = t
        .create_invite(
            &room,
            "speaker",
            json!({ "max_uses": 1, "label": "one shot" }),
        )
        .await;
    let open = t.create_invite(&room, "listener", json!({})).await;
    t.join(&s(&once["code"]), "First").await.expect(200);
    let ended = t.create_room("Ended").await;
    t.op(Method::DELETE, &format!("/api/v1/rooms/{ended}"), None)
        .await
        .expect(204);
    let before_events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);

    let t = t.restart().await;
    let rooms = t.op(Method::GET, "/api/v1/rooms", None).await.expect(200);
    let titles: Vec<_> = rooms["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(&r["title"]))
        .collect();
    assert_eq!(titles, ["Persistent", "Ended"]);
    assert!(rooms["items"][1]["ended_at"].is_string());
    let invites = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    assert_eq!(invites["items"][0]["label"], "one shot");
    assert_eq!(invites["items"][0]["uses"], 1);
    t.join(&s(&once["code"]), "Second")
        .await
        .expect_problem(410, "invite_used_up");
    t.join(&s(&open["code"]), "Third").await.expect(200);
    let after_events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let before = before_events["items"].as_array().unwrap();
    assert_eq!(
        &after_events["items"].as_array().unwrap()[..before.len()],
        &before[..]
    );
    t.stop().await;
}

async fn join_is_rate_limited_per_address(engine: Engine) {
    let t = TestServer::start_with(|c| {
        engine.configure(c);
        c.limits.joins_per_minute = 1;
        c.limits.join_burst = 3;
    })
    .await;
    for _ in 0..3 {
        t.join("not-a-code", "A")
            .await
            .expect_problem(400, "malformed_invite");
    }
    let limited = t.join("not-a-code", "A").await;
    limited.expect_problem(429, "rate_limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Other endpoints are not affected.
    t.op(Method::GET, "/api/v1/rooms", None).await.expect(200);
    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    t.stop().await;
}

async fn bad_input_is_refused_and_changes_nothing(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let room = t.create_room("Keep me").await;
    let events_before = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let invite = t.create_invite(&room, "listener", json!({})).await;
    let code = s(&invite["code"]);

    let raw = |path: &str, content_type: Option<&str>, body: String| {
        let mut req = t.http.post(t.url(path)).bearer_auth(&t.api_key).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, s(&body["code"]))
        }
    };
    let json_ct = Some("application/json");
    let big = format!("{{\"title\":\"{}\"}}", "x".repeat(64 * 1024));
    assert_eq!(
        raw("/api/v1/rooms", json_ct, big).await,
        (413, "body_too_large".into())
    );
    assert_eq!(
        raw("/api/v1/rooms", json_ct, "{".into()).await,
        (400, "invalid_json".into())
    );
    assert_eq!(
        raw("/api/v1/rooms", None, "{\"title\":\"x\"}".into()).await,
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        raw("/api/v1/rooms", json_ct, "[1,2]".into()).await,
        (422, "invalid_body".into())
    );

    let cases: Vec<(Method, String, Value, u16, &str)> = vec![
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": 5 }),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": "x", "colour": "red" }),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({}),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": "" }),
            422,
            "invalid_title",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": "   " }),
            422,
            "invalid_title",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": "x".repeat(200) }),
            422,
            "invalid_title",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": "a\u{0}b" }),
            422,
            "invalid_title",
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({ "title": "ok", "max_stage": 0 }),
            422,
            "invalid_limit",
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/invites"),
            json!({ "role": "admin" }),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/invites"),
            json!({ "max_uses": 0 }),
            422,
            "invalid_max_uses",
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/invites"),
            json!({ "max_uses": -1 }),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/invites"),
            json!({ "expires_in_secs": 0 }),
            422,
            "invalid_expiry",
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/invites"),
            json!({ "label": "\n" }),
            422,
            "invalid_label",
        ),
        (
            Method::POST,
            "/api/v1/rooms/rm_AAAAAAAAAAAAAAAA/invites".into(),
            json!({}),
            404,
            "room_not_found",
        ),
        (
            Method::POST,
            "/api/v1/rooms/nonsense/invites".into(),
            json!({}),
            404,
            "room_not_found",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": code, "display_name": "   " }),
            422,
            "invalid_display_name",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": code, "display_name": "bo\u{7}b" }),
            422,
            "invalid_display_name",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": code, "display_name": "n".repeat(41) }),
            422,
            "invalid_display_name",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": code, "display_name": "A", "identity": "short" }),
            422,
            "invalid_identity",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": code, "display_name": "A", "extra": 1 }),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": "%%%", "display_name": "A" }),
            400,
            "malformed_invite",
        ),
        (
            Method::POST,
            "/api/v1/join".into(),
            json!({ "invite": 7, "display_name": "A" }),
            422,
            "invalid_body",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let answer = t.op(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (status, code),
            "{method} {path} {body}"
        );
        answer.expect_problem(status, code);
    }
    for (path, status, code) in [
        ("/api/v1/rooms?limit=0", 400, "invalid_query"),
        ("/api/v1/rooms?limit=abc", 400, "invalid_query"),
        ("/api/v1/rooms?limit=100000", 400, "invalid_query"),
        ("/api/v1/rooms?cursor=abc", 400, "invalid_cursor"),
        ("/api/v1/rooms/rm_AAAAAAAAAAAAAAAA", 404, "room_not_found"),
        (
            "/api/v1/rooms/rm_AAAAAAAAAAAAAAAA/events",
            404,
            "room_not_found",
        ),
        ("/api/v1/nothing-here", 404, "not_found"),
    ] {
        t.op(Method::GET, path, None)
            .await
            .expect_problem(status, code);
    }

    // Nothing stored changed: one room, one invite unused, the same audit trail plus the invite.
    let rooms = t.op(Method::GET, "/api/v1/rooms", None).await.expect(200);
    assert_eq!(rooms["items"].as_array().unwrap().len(), 1);
    let invites = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    assert_eq!(invites["items"].as_array().unwrap().len(), 1);
    assert_eq!(invites["items"][0]["uses"], 0);
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    assert_eq!(
        events["items"].as_array().unwrap().len(),
        events_before["items"].as_array().unwrap().len() + 1
    );
    t.stop().await;
}

async fn lists_are_paginated(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    for i in 0..7 {
        t.create_room(&format!("room {i}")).await;
    }
    let mut titles = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/rooms?limit=3&cursor={c}"),
            None => "/api/v1/rooms?limit=3".into(),
        };
        let page = t.op(Method::GET, &path, None).await.expect(200);
        pages += 1;
        titles.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| s(&r["title"])),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        titles,
        (0..7).map(|i| format!("room {i}")).collect::<Vec<_>>()
    );
    t.stop().await;
}

/// The OpenAPI document parses, lists exactly the routes the contract names, and every route
/// it lists is served.
async fn openapi_lists_every_route(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let doc = t
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                listed.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let contract: BTreeSet<String> = [
        "POST /api/v1/rooms",
        "GET /api/v1/rooms",
        "GET /api/v1/rooms/{room}",
        "PATCH /api/v1/rooms/{room}",
        "DELETE /api/v1/rooms/{room}",
        "POST /api/v1/rooms/{room}/invites",
        "GET /api/v1/rooms/{room}/invites",
        "DELETE /api/v1/rooms/{room}/invites/{invite}",
        "POST /api/v1/join",
        "GET /api/v1/rooms/{room}/participants",
        "POST /api/v1/rooms/{room}/participants/{participant}/role",
        "POST /api/v1/rooms/{room}/participants/{participant}/mute",
        "DELETE /api/v1/rooms/{room}/participants/{participant}",
        "GET /api/v1/rooms/{room}/events",
        "GET /healthz",
        "GET /metrics",
        "GET /api/v1/openapi.json",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let missing: Vec<_> = contract.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "not in the OpenAPI document: {missing:?}"
    );
    for route in &listed {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{room}", "rm_AAAAAAAAAAAAAAAA")
            .replace("{invite}", "inv_AAAAAAAAAAAAAAAA")
            .replace("{participant}", "pt_AAAAAAAAAAAAAAAA");
        let answer = t.call(method.parse().unwrap(), &path, None, None).await;
        assert_ne!(
            answer.code(),
            "not_found",
            "{route} is in the document but not served"
        );
        assert_ne!(
            answer.status.as_u16(),
            405,
            "{route} is in the document but not served"
        );
    }
    // Every error answer documents the problem schema, as problem+json.
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let not_found = &doc["paths"]["/api/v1/rooms/{room}"]["get"]["responses"]["404"]["content"];
    assert!(
        not_found["application/problem+json"].is_object(),
        "{not_found}"
    );
    assert!(not_found.get("application/json").is_none());
    t.stop().await;
}

async fn health_and_metrics(engine: Engine) {
    let t = TestServer::start_on(engine).await;
    let health = t
        .call(Method::GET, "/healthz", None, None)
        .await
        .expect(200);
    assert_eq!(health["status"], "ok");
    let room = t.create_room("M").await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    t.join(&s(&invite["code"]), "A").await.expect(200);
    t.join("AAAAAAAAAAAAAAAAAAAAAA", "B")
        .await
        .expect_problem(404, "invite_invalid");
    let text = t.metrics_text().await;
    assert!(
        text.contains("stoa_joins_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("stoa_joins_total{outcome=\"invite_invalid\"} 1"),
        "{text}"
    );
    assert!(text.contains("stoa_rooms_created_total 1"), "{text}");
    assert!(
        text.contains("route=\"/api/v1/rooms/{room}/invites\""),
        "{text}"
    );
    assert!(!text.contains(&t.api_key), "the key must never be exported");
    t.stop().await;
}

on_both_engines!(
    rooms_invites_and_join_happy_path,
    authorisation_matrix,
    invite_expiry_revocation_and_unknown_codes,
    max_uses_holds_under_concurrency,
    banned_identity_cannot_come_back_through_any_invite,
    everything_survives_a_restart,
    join_is_rate_limited_per_address,
    bad_input_is_refused_and_changes_nothing,
    lists_are_paginated,
    openapi_lists_every_route,
    health_and_metrics,
);

/// PostgreSQL crashes under a running node: writes are refused with 503 `store_unavailable`
/// (and so are reads of stored facts), what does not need the database is still served, the
/// node does not fall over, and once PostgreSQL is back everything acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_refuses_writes_and_loses_nothing() {
    let mut pg = Postgres::start();
    let url = pg.fresh_database();
    let t = TestServer::start_with(|c| c.database.url = Some(url)).await;
    let room = t.create_room("Before").await;
    let invite = t
        .create_invite(&room, "listener", json!({ "max_uses": 3 }))
        .await;
    let code = s(&invite["code"]);
    let first = t.join(&code, "Ada").await.expect(200);
    let events_before = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);

    pg.crash();
    let refused = [
        t.op(
            Method::POST,
            "/api/v1/rooms",
            Some(json!({ "title": "During" })),
        )
        .await,
        t.join(&code, "Bob").await,
        t.op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/invites"),
            Some(json!({ "role": "speaker" })),
        )
        .await,
        t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
            .await,
        t.op(Method::GET, "/api/v1/rooms", None).await,
        t.call(Method::GET, "/healthz", None, None).await,
    ];
    for answer in &refused {
        answer.expect_problem(503, "store_unavailable");
        assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
    }
    // What needs no database is still served.
    t.call(Method::GET, "/metrics", None, None)
        .await
        .expect(200);
    t.call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .expect(200);

    pg.restart();
    t.call(Method::GET, "/healthz", None, None)
        .await
        .expect(200);
    let rooms = t.op(Method::GET, "/api/v1/rooms", None).await.expect(200);
    let titles: Vec<_> = rooms["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(&r["title"]))
        .collect();
    assert_eq!(titles, ["Before"], "nothing refused was half-written");
    let invites = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    assert_eq!(invites["items"].as_array().unwrap().len(), 1);
    assert_eq!(invites["items"][0]["uses"], 1);
    let events_after = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    assert_eq!(events_after["items"], events_before["items"]);
    // The same identity comes back, and new writes work again.
    let again = t
        .call(
            Method::POST,
            "/api/v1/join",
            None,
            Some(json!({ "invite": code, "display_name": "Ada", "identity": first["identity"] })),
        )
        .await
        .expect(200);
    assert_eq!(again["participant_id"], first["participant_id"]);
    t.create_room("After").await;
    t.stop().await;
}

/// A node whose database URL is wrong does not start, and says why without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_database_url_refuses_to_start() {
    let pg = Postgres::shared();
    let good = pg.fresh_database();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            "mysql://stoa:hunter2@127.0.0.1/stoa".to_owned(),
            "must start with postgres://",
        ),
        (
            format!("postgres://postgres:hunter2@127.0.0.1:{closed_port}/stoa"),
            "Connection refused",
        ),
        (
            good.replace(stoa_tests::postgres::PASSWORD, "hunter2"),
            "password authentication failed",
        ),
        (format!("{good}_missing"), "does not exist"),
    ];
    for (url, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            demo_room: false,
            ..Config::default()
        };
        config.database.url = Some(url.clone());
        let refused = match stoa::server::start_with_clock(config, Clock::manual()).await {
            Ok(_) => panic!("a node started on {url}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(refused.contains(reason), "{url}: {refused}");
        assert!(!refused.contains("hunter2"), "{url}: {refused}");
        if reason != "must start with postgres://" {
            assert!(
                refused.contains("cannot connect to PostgreSQL at postgres@127.0.0.1:"),
                "{refused}"
            );
        }
    }
}
