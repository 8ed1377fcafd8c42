//! A live room's records (roles, removals, bans, audit lines) are written off the room's task:
//! while PostgreSQL hangs or is down, moderation goes on live without waiting for it, and
//! once it is back every record lands, in the order the room decided them.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stoa_tests::TestServer;
use stoa_tests::postgres::Postgres;
use stoa_tests::signal::SignalClient;

/// The longest a moderator's command may take to be answered while the store is away. A write
/// to a store that hangs takes at least 5 s (the pool's timeout) to fail.
const LIVE_ANSWER: Duration = Duration::from_secs(1);

/// Sends a moderator's command and returns how long its `ok` took.
async fn timed_ok(client: &mut SignalClient, message: Value) -> Duration {
    let started = Instant::now();
    client.ok(message).await;
    started.elapsed()
}

/// `action target` of every line of the room's audit log, through the API, in order.
async fn audit_lines(t: &TestServer, room: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = t
            .op(
                Method::GET,
                &format!("/api/v1/rooms/{room}/events?limit=100{query}"),
                None,
            )
            .await
            .expect(200);
        for e in page["items"].as_array().unwrap() {
            let target = e["target"].as_str().unwrap_or_default();
            lines.push(format!("{} {target}", e["action"].as_str().unwrap()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return lines,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_goes_on_while_postgres_is_away_and_every_record_lands_in_order() {
    let mut pg = Postgres::start();
    let url = pg.fresh_database();
    let t = TestServer::start_with(|c| c.database.url = Some(url.clone())).await;
    let room = t.create_room("Outage").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut speakers = Vec::new();
    for name in ["S1", "S2", "S3"] {
        speakers.push(SignalClient::join(&t.participant(&room, "speaker", name).await).await);
    }
    let mut listeners = Vec::new();
    for name in ["L1", "L2", "L3"] {
        listeners.push(SignalClient::join(&t.participant(&room, "listener", name).await).await);
    }
    let [s1, s2, s3] = [0, 1, 2].map(|i| speakers[i].participant_id());
    let [l1, l2, l3] = [0, 1, 2].map(|i| listeners[i].participant_id());
    for id in [&s1, &s2, &s3, &l1, &l2, &l3] {
        mo.wait_about("participant_joined", id).await;
    }
    let mut answers = Vec::new();

    // PostgreSQL hangs: connections stay open, nothing is answered.
    pg.pause();
    answers.push(timed_ok(&mut mo, json!({ "type": "mute", "participant": s1 })).await);
    answers.push(timed_ok(&mut mo, json!({ "type": "promote", "participant": s2 })).await);
    answers.push(timed_ok(&mut mo, json!({ "type": "remove", "participant": l1 })).await);
    speakers[0].wait_about("muted", &s1).await;
    mo.wait_about("role_changed", &s2).await;
    listeners[0].wait_closed().await;
    pg.resume();

    // PostgreSQL is gone: every connection refused.
    pg.crash();
    answers.push(timed_ok(&mut mo, json!({ "type": "mute", "participant": s3 })).await);
    answers.push(
        timed_ok(
            &mut mo,
            json!({ "type": "ban", "participant": l2, "revoke_invite": true }),
        )
        .await,
    );
    answers.push(
        timed_ok(
            &mut mo,
            json!({ "type": "invite_to_stage", "participant": l3 }),
        )
        .await,
    );
    speakers[2].wait_about("muted", &s3).await;
    assert_eq!(listeners[1].wait_closed().await.1, "banned");
    listeners[2].wait_about("invited_to_stage", &l3).await;
    let slowest = answers.iter().max().unwrap();
    eprintln!("moderators' answers while PostgreSQL was away: {answers:?}");
    assert!(
        *slowest < LIVE_ANSWER,
        "a command waited for the store: {answers:?}"
    );

    pg.restart();
    let expected = [
        format!("participant.muted {s1}"),
        format!("participant.promoted {s2}"),
        format!("participant.removed {l1}"),
        format!("participant.muted {s3}"),
        format!("participant.banned {l2}"),
        format!("participant.invited_to_stage {l3}"),
    ];
    let moderation = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("participant."))
            .cloned()
            .collect()
    };
    // The room's writer tries again on its own, at most 5 s apart.
    let deadline = Instant::now() + Duration::from_secs(60);
    let via_api = loop {
        let lines = audit_lines(&t, &room).await;
        if moderation(&lines).len() >= expected.len() || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moderation(&via_api), expected, "{via_api:#?}");
    let revoked = via_api
        .iter()
        .position(|l| l.starts_with("invite.revoked"))
        .expect("the banned listener's invite was revoked");
    assert!(
        revoked > via_api.iter().position(|l| *l == expected[3]).unwrap(),
        "{via_api:#?}"
    );

    // The same, read straight from PostgreSQL; and the facts beside the lines.
    let via_psql: Vec<String> = pg
        .psql_in(
            &url,
            &format!(
                "SELECT action || ' ' || COALESCE(target, '') FROM audit_events
                 WHERE room_id = '{room}' ORDER BY seq"
            ),
        )
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(via_psql, via_api);
    let facts = pg.psql_in(
        &url,
        &format!(
            "SELECT (SELECT live_role FROM identities WHERE id = '{s2}'),
                    (SELECT removed_at IS NOT NULL FROM identities WHERE id = '{l1}'),
                    (SELECT count(*) FROM bans WHERE participant_id = '{l2}')"
        ),
    );
    assert_eq!(facts, "moderator|t|1");

    let metrics = t.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("stoa_room_record_retries_total ") && !l.ends_with(" 0")),
        "the writer retried"
    );
    assert!(
        !metrics.contains("stoa_room_records_lost_total{"),
        "nothing was lost"
    );
    t.stop().await;
}

/// A ban and an end through REST, for a room that emptied while PostgreSQL was down, are
/// recorded after what the room recorded last: the call waits for the room's writer, which
/// still holds the room's records, rather than writing past it (the writer retries on its own
/// clock, up to 5 s apart, so the call would otherwise land first nearly every time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_through_rest_after_the_room_emptied_comes_after_the_rooms_own_records() {
    let mut pg = Postgres::start();
    let url = pg.fresh_database();
    let t = TestServer::start_with(|c| c.database.url = Some(url.clone())).await;
    let room = t.create_room("Emptied").await;
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut sam = SignalClient::join(&t.participant(&room, "speaker", "Sam").await).await;
    let mut lee = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    let (sam_id, lee_id) = (sam.participant_id(), lee.participant_id());
    for id in [&sam_id, &lee_id] {
        mo.wait_about("participant_joined", id).await;
    }

    // The room's last records wait in its writer: PostgreSQL is down as Sam is muted and
    // everyone leaves.
    pg.crash();
    mo.ok(json!({ "type": "mute", "participant": sam_id }))
        .await;
    sam.wait_about("muted", &sam_id).await;
    for client in [&mut lee, &mut sam, &mut mo] {
        client.ok(json!({ "type": "leave" })).await;
    }
    // (Through the metrics: reading the room needs the store.)
    let emptied = Instant::now() + Duration::from_secs(10);
    while t.metric("stoa_live_rooms").await != 0.0 {
        assert!(Instant::now() < emptied, "the room stays live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.restart();
    // A writer's try that failed as PostgreSQL came back answers the call 503 (try again),
    // as the API says; a client tries again.
    let again = Instant::now() + Duration::from_secs(10);
    loop {
        let ban = t
            .op(
                Method::DELETE,
                &format!("/api/v1/rooms/{room}/participants/{lee_id}?ban=true"),
                None,
            )
            .await;
        if ban.status == 503 && ban.code() == "store_unavailable" && Instant::now() < again {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        ban.expect(204);
        break;
    }
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);

    let lines = audit_lines(&t, &room).await;
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no {line:?} in {lines:#?}"))
    };
    let muted = at(&format!("participant.muted {sam_id}"));
    let banned = at(&format!("participant.banned {lee_id}"));
    assert!(muted < banned, "{lines:#?}");
    assert_eq!(
        lines.last().map(|l| l.split(' ').next().unwrap()),
        Some("room.ended"),
        "{lines:#?}"
    );
    t.stop().await;
}
