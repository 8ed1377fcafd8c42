//! Live rooms over real WebSockets against a running server: the stage flow, REST
//! moderation acting on live sockets, bans, resume and its grace period, replaced sockets,
//! keep-alive, bad input, and a large audience.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use stoa_tests::TestServer;
use stoa_tests::signal::SignalClient;

fn s(v: &Value) -> String {
    v.as_str().expect("a string").to_owned()
}

/// Room with a connected moderator, speaker and listener.
async fn room_of_three(t: &TestServer) -> (String, SignalClient, SignalClient, SignalClient) {
    let room = t.create_room("Live").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let s_ = SignalClient::join(&t.participant(&room, "speaker", "Sam").await).await;
    let l = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    m.wait_about("participant_joined", &s_.participant_id())
        .await;
    m.wait_about("participant_joined", &l.participant_id())
        .await;
    (room, m, s_, l)
}

fn assert_seq_increasing(client: &SignalClient) {
    let seqs: Vec<u64> = client
        .received
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq out of order: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_flow_seen_by_everyone_in_order() {
    let t = TestServer::start().await;
    let (_room, mut m, mut sp, mut l) = room_of_three(&t).await;
    let lid = l.participant_id();

    let snap = &l.welcome["snapshot"];
    assert_eq!(snap["you"]["role"], "listener");
    assert_eq!(
        snap["stage"].as_array().unwrap().len(),
        2,
        "moderator and speaker on stage"
    );
    assert!(
        snap.get("audience").is_none(),
        "only moderators get the audience list"
    );
    let audience = &m.welcome["snapshot"]["audience"];
    assert!(audience["participants"].is_array(), "{audience}");
    assert!(l.welcome["resume_token"].is_string());

    l.ok(json!({ "type": "raise_hand" })).await;
    for c in [&mut m, &mut sp] {
        let ev = c.wait_about("hand_raised", &lid).await;
        assert_eq!(ev["participant"]["hand_raised"], true);
    }
    m.ok(json!({ "type": "invite_to_stage", "participant": lid }))
        .await;
    l.wait_about("invited_to_stage", &lid).await;
    l.ok(json!({ "type": "accept_invitation" })).await;
    for c in [&mut m, &mut sp, &mut l] {
        let ev = c.wait_about("joined_stage", &lid).await;
        assert_eq!(ev["participant"]["role"], "speaker");
        assert_eq!(ev["participant"]["hand_raised"], false);
    }
    // The new speaker leaves the stage again: a listener once more, for everyone.
    l.ok(json!({ "type": "leave_stage" })).await;
    for c in [&mut m, &mut sp] {
        let ev = c.wait_about("left_stage", &lid).await;
        assert_eq!(ev["participant"]["role"], "listener");
    }
    sp.sync().await;
    // The speaker never heard about the listener's arrival nor the invitation.
    assert!(
        !sp.received
            .iter()
            .any(
                |e| (e["type"] == "participant_joined" || e["type"] == "invited_to_stage")
                    && (e["participant"]["id"] == lid.as_str() || e["participant"] == lid.as_str())
            ),
        "{:?}",
        sp.received
    );
    for c in [&m, &sp, &l] {
        assert_seq_increasing(c);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_rules_are_enforced_on_the_socket() {
    let t = TestServer::start().await;
    let (room, mut m, mut sp, mut l) = room_of_three(&t).await;
    let (mid, sid, lid) = (m.participant_id(), sp.participant_id(), l.participant_id());
    l.refused(
        json!({ "type": "mute", "participant": sid }),
        "not_permitted",
    )
    .await;
    l.refused(
        json!({ "type": "invite_to_stage", "participant": lid }),
        "not_permitted",
    )
    .await;
    l.refused(
        json!({ "type": "remove", "participant": mid }),
        "not_permitted",
    )
    .await;
    l.refused(json!({ "type": "end_room" }), "not_permitted")
        .await;
    l.refused(json!({ "type": "accept_invitation" }), "no_invitation")
        .await;
    l.refused(json!({ "type": "leave_stage" }), "not_on_stage")
        .await;
    sp.refused(json!({ "type": "raise_hand" }), "not_a_listener")
        .await;
    sp.refused(
        json!({ "type": "promote", "participant": lid }),
        "not_permitted",
    )
    .await;
    sp.refused(
        json!({ "type": "ban", "participant": lid }),
        "not_permitted",
    )
    .await;
    m.refused(
        json!({ "type": "remove", "participant": mid }),
        "invalid_target",
    )
    .await;
    // Someone in another room is not reachable from this one.
    let other = t.create_room("Elsewhere").await;
    let stranger = SignalClient::join(&t.participant(&other, "listener", "Zed").await).await;
    m.refused(
        json!({ "type": "remove", "participant": stranger.participant_id() }),
        "participant_not_found",
    )
    .await;
    m.refused(
        json!({ "type": "mute", "participant": "pt_AAAAAAAAAAAAAAAA" }),
        "participant_not_found",
    )
    .await;
    // The last moderator cannot step down.
    m.refused(
        json!({ "type": "demote", "participant": mid }),
        "last_moderator",
    )
    .await;
    // Moderator promotes the speaker; now the speaker may mute the listener's... nothing: listeners
    // have no microphone, so muting them is refused.
    m.ok(json!({ "type": "promote", "participant": sid })).await;
    sp.wait_about("role_changed", &sid).await;
    sp.refused(
        json!({ "type": "mute", "participant": lid }),
        "not_on_stage",
    )
    .await;
    let _ = room;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_moderation_acts_on_live_sockets() {
    let t = TestServer::start().await;
    let (room, mut m, mut sp, mut l) = room_of_three(&t).await;
    let (sid, lid) = (sp.participant_id(), l.participant_id());
    let base = format!("/api/v1/rooms/{room}");

    let listed = t
        .op(Method::GET, &format!("{base}/participants"), None)
        .await
        .expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    let shown = t.op(Method::GET, &base, None).await.expect(200);
    assert_eq!(
        (shown["live"].as_bool(), shown["participant_count"].as_u64()),
        (Some(true), Some(3))
    );
    let rooms = t.op(Method::GET, "/api/v1/rooms", None).await.expect(200);
    let item = rooms["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == room.as_str())
        .unwrap();
    assert_eq!(
        (item["live"].as_bool(), item["participant_count"].as_u64()),
        (Some(true), Some(3))
    );

    t.op(
        Method::POST,
        &format!("{base}/participants/{sid}/mute"),
        None,
    )
    .await
    .expect(204);
    for c in [&mut m, &mut sp, &mut l] {
        let ev = c.wait_about("muted", &sid).await;
        assert_eq!(ev["by"], "operator");
    }
    let listed = t
        .op(Method::GET, &format!("{base}/participants"), None)
        .await
        .expect(200);
    let speaker = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == sid.as_str())
        .unwrap();
    assert_eq!(speaker["muted"], true);
    // They may unmute themselves.
    sp.ok(json!({ "type": "unmute" })).await;
    m.wait_about("unmuted", &sid).await;

    // A role change to speaker is an invitation the listener must accept.
    t.op(
        Method::POST,
        &format!("{base}/participants/{lid}/role"),
        Some(json!({ "role": "speaker" })),
    )
    .await
    .expect(204);
    l.wait_about("invited_to_stage", &lid).await;
    l.ok(json!({ "type": "decline_invitation" })).await;
    m.wait_about("invitation_declined", &lid).await;

    // Removal closes the socket with a reason; the same token cannot come back.
    t.op(Method::DELETE, &format!("{base}/participants/{lid}"), None)
        .await
        .expect(204);
    let (code, reason) = l.wait_closed().await;
    assert_eq!((code, reason.as_str()), (4001, "removed"));
    assert!(
        l.received
            .iter()
            .any(|m| m["type"] == "closed" && m["reason"] == "removed")
    );
    m.wait(|e| {
        e["type"] == "participant_left"
            && e["participant"] == lid.as_str()
            && e["reason"] == "removed"
    })
    .await;

    // Removed means out: the token they had cannot bring them back (a fresh invite can).
    let answer = t.participant(&room, "listener", "Kim").await;
    let kim = SignalClient::join(&answer).await;
    let kid = kim.participant_id();
    t.op(Method::DELETE, &format!("{base}/participants/{kid}"), None)
        .await
        .expect(204);
    let mut back = SignalClient::open(&s(&answer["signal_url"])).await;
    back.send(json!({ "type": "join", "token": answer["token"] }))
        .await;
    let refusal = back.wait_type("error").await;
    assert_eq!(refusal["code"], "removed");
    assert_eq!(back.wait_closed().await.0, 4001);

    // A moderator's own session token works on REST for this room.
    let m_token = t.participant(&room, "moderator", "Mo2").await;
    let mut m2 = SignalClient::join(&m_token).await;
    let answer = t
        .call(
            Method::POST,
            &format!("{base}/participants/{sid}/mute"),
            Some(&s(&m_token["token"])),
            None,
        )
        .await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    m2.wait_about("muted", &sid).await;

    let events = t
        .op(Method::GET, &format!("{base}/events"), None)
        .await
        .expect(200);
    let actions: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["action"]))
        .collect();
    for expected in [
        "participant.muted",
        "participant.invited_to_stage",
        "participant.removed",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} missing from {actions:?}"
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_identity_is_cut_off_and_cannot_rejoin() {
    let t = TestServer::start().await;
    let room = t.create_room("Bans").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let identity = "browser-kept-identity-secret-42";
    let redeem = |role: &'static str| {
        let t = &t;
        let room = room.clone();
        async move {
            let invite = t.create_invite(&room, role, json!({})).await;
            t.call(
                Method::POST,
                "/api/v1/join",
                None,
                Some(json!({ "invite": invite["code"], "display_name": "Troll", "identity": identity })),
            )
            .await
        }
    };
    let answer = redeem("listener").await.expect(200);
    let mut troll = SignalClient::join(&answer).await;
    let tid = troll.participant_id();
    m.wait_about("participant_joined", &tid).await;
    m.ok(json!({ "type": "ban", "participant": tid, "revoke_invite": true }))
        .await;
    assert_eq!(troll.wait_closed().await, (4003, "banned".to_owned()));
    m.wait(|e| {
        e["type"] == "participant_left"
            && e["participant"] == tid.as_str()
            && e["reason"] == "banned"
    })
    .await;
    // Not through another invite of the room…
    redeem("speaker").await.expect_problem(403, "banned");
    // …and the link they came through is closed to everyone, so a new identity cannot use it.
    let used = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/invites"), None)
        .await
        .expect(200);
    let revoked = used["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["revoked"] == true)
        .count();
    assert_eq!(revoked, 1, "{used}");
    // …nor with the token they still hold.
    let mut back = SignalClient::open(&s(&answer["signal_url"])).await;
    back.send(json!({ "type": "join", "token": answer["token"] }))
        .await;
    assert_eq!(back.wait_type("error").await["code"], "banned");
    assert_eq!(back.wait_closed().await.0, 4003);
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let bans = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "participant.banned")
        .count();
    assert_eq!(bans, 1, "{events}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_within_grace_keeps_state_and_expiry_removes() {
    let t = TestServer::start().await;
    let (_room, mut m, sp, mut l) = room_of_three(&t).await;
    let (sid, lid) = (sp.participant_id(), l.participant_id());
    l.ok(json!({ "type": "raise_hand" })).await;
    m.wait_about("hand_raised", &lid).await;

    let token = l.resume_token();
    let signal_url = t.url("/api/v1/signal").replace("http://", "ws://");
    l.drop_connection();
    let ev = m.wait_about("presence_changed", &lid).await;
    assert_eq!(ev["participant"]["presence"], "reconnecting");
    // Half the grace period later, the socket comes back.
    t.clock.advance(Duration::from_secs(10));
    let mut l = SignalClient::resume(&signal_url, &token).await;
    let you = &l.welcome["snapshot"]["you"];
    assert_eq!(
        (you["id"].as_str(), you["hand_raised"].as_bool()),
        (Some(lid.as_str()), Some(true))
    );
    assert_eq!(you["presence"], "connected");
    let ev = m.wait_about("presence_changed", &lid).await;
    assert_eq!(ev["participant"]["presence"], "connected");

    // The speaker vanishes and does not come back: after the grace period everyone sees it.
    sp.drop_connection();
    m.wait_about("presence_changed", &sid).await;
    t.clock
        .advance(Duration::from_secs(t.config.signal.resume_grace_secs + 1));
    for c in [&mut m, &mut l] {
        let ev = c
            .wait(|e| e["type"] == "participant_left" && e["participant"] == sid.as_str())
            .await;
        assert_eq!(ev["reason"], "timed_out");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_resume_is_refused_and_a_second_socket_replaces_the_first() {
    let t = TestServer::start().await;
    let room = t.create_room("R").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let answer = t.participant(&room, "speaker", "Sam").await;
    let mut first = SignalClient::join(&answer).await;
    let sid = first.participant_id();
    // Same participant, second socket: the first is closed as replaced, state is kept.
    first.ok(json!({ "type": "mute_self" })).await;
    let mut second = SignalClient::join(&answer).await;
    assert_eq!(first.wait_closed().await, (4004, "replaced".to_owned()));
    assert_eq!(second.welcome["snapshot"]["you"]["muted"], true);
    second.ok(json!({ "type": "unmute" })).await;
    m.wait_about("unmuted", &sid).await;

    let token = second.resume_token();
    second.drop_connection();
    m.wait_about("presence_changed", &sid).await;
    t.clock
        .advance(Duration::from_secs(t.config.signal.resume_grace_secs + 1));
    m.wait(|e| e["type"] == "participant_left" && e["participant"] == sid.as_str())
        .await;
    let mut late = SignalClient::open(&s(&answer["signal_url"])).await;
    late.send(json!({ "type": "resume", "resume_token": token }))
        .await;
    assert_eq!(late.wait_type("error").await["code"], "resume_expired");
    late.wait_closed().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_sockets_are_found_by_keepalive() {
    let t = TestServer::start_with(|c| {
        c.signal.ping_interval_ms = 200;
        c.signal.ping_timeout_ms = 1_000;
    })
    .await;
    let room = t.create_room("K").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    // This client never reads again, so it never answers the server's pings.
    let silent = SignalClient::join(&t.participant(&room, "listener", "Zzz").await).await;
    let zid = silent.participant_id();
    let ev = m.wait_about("presence_changed", &zid).await;
    assert_eq!(ev["participant"]["presence"], "reconnecting");
    // The moderator keeps reading (and so answering pings): still connected.
    m.sync().await;
    drop(silent);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_errors_and_the_socket_stays_usable() {
    let t = TestServer::start_with(|c| c.signal.join_timeout_ms = 300).await;
    let room = t.create_room("B").await;
    let answer = t.participant(&room, "listener", "Lee").await;
    let url = s(&answer["signal_url"]);

    // Before joining: only join/resume (and ping) are accepted.
    let mut c = SignalClient::open(&url).await;
    c.refused(json!({ "type": "raise_hand" }), "join_first")
        .await;
    c.send(json!({ "type": "join", "token": "st1.forged.token" }))
        .await;
    assert_eq!(c.wait_type("error").await["code"], "invalid_token");
    assert_eq!(c.wait_closed().await.0, 4401);
    // Saying nothing at all is closed too.
    let mut idle = SignalClient::open(&url).await;
    assert_eq!(idle.wait_closed().await, (4401, "join_timeout".to_owned()));

    let mut c = SignalClient::join(&answer).await;
    c.send_text(format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    ))
    .await;
    assert_eq!(c.wait_type("error").await["code"], "message_too_large");
    c.send_text("{not json".into()).await;
    assert_eq!(c.wait_type("error").await["code"], "invalid_json");
    c.refused(json!({ "type": "teleport" }), "unknown_type")
        .await;
    c.refused(json!({ "type": "mute" }), "invalid_message")
        .await;
    c.refused(
        json!({ "type": "mute", "participant": 12 }),
        "invalid_message",
    )
    .await;
    c.refused(
        json!({ "type": "join", "token": answer["token"] }),
        "already_joined",
    )
    .await;
    c.send(json!({ "type": "raise_hand", "id": { "nested": true } }))
        .await;
    assert_eq!(c.wait_type("error").await["code"], "invalid_id");
    // Still usable.
    c.sync().await;
    c.ok(json!({ "type": "raise_hand" })).await;

    // Expired tokens are refused before joining anything.
    t.clock
        .advance(Duration::from_secs(t.config.limits.session_ttl_secs + 1));
    let mut late = SignalClient::open(&url).await;
    late.send(json!({ "type": "join", "token": answer["token"] }))
        .await;
    assert_eq!(late.wait_type("error").await["code"], "token_expired");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_limited_and_persistent_abuse_is_closed() {
    let t = TestServer::start_with(|c| {
        c.signal.messages_per_sec = 5;
        c.signal.message_burst = 5;
        c.signal.max_strikes = 5;
    })
    .await;
    let room = t.create_room("F").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut c = SignalClient::join(&t.participant(&room, "listener", "Flood").await).await;
    let cid = c.participant_id();
    for _ in 0..30 {
        c.send(json!({ "type": "ping" })).await;
    }
    let (code, reason) = c.wait_closed().await;
    assert_eq!((code, reason.as_str()), (1008, "misbehaving"));
    assert!(c.received.iter().any(|e| e["code"] == "rate_limited"));
    // The room carries on; the flooder is merely reconnecting.
    m.wait_about("presence_changed", &cid).await;
    m.sync().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_live_room_disconnects_everyone() {
    let t = TestServer::start().await;
    let (room, mut m, mut sp, mut l) = room_of_three(&t).await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    for c in [&mut m, &mut sp, &mut l] {
        c.wait_type("room_ended").await;
        assert_eq!(c.wait_closed().await, (4005, "room_ended".to_owned()));
    }
    let shown = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(200);
    assert!(shown["ended_at"].is_string());
    assert_eq!(shown["live"], false);
    t.join(&s(&invite["code"]), "Late")
        .await
        .expect_problem(410, "room_ended");
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let ended: Vec<_> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "room.ended")
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["actor"], "operator");
    t.stop().await;
}

/// 500 listeners in one room: each hears about stage changes, none hears about 499 joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_audience_gets_stage_changes_not_each_others_joins() {
    const LISTENERS: usize = 500;
    let t = TestServer::start().await;
    let room = t.create_room("Big").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut sp = SignalClient::join(&t.participant(&room, "speaker", "Sam").await).await;
    let sid = sp.participant_id();
    let invite = t.create_invite(&room, "listener", json!({})).await;
    let code = s(&invite["code"]);
    let started = std::time::Instant::now();
    let mut listeners = Vec::with_capacity(LISTENERS);
    for batch in 0..LISTENERS / 50 {
        let joins = (0..50).map(|i| {
            let (t, code) = (&t, code.clone());
            async move {
                let answer = t
                    .join(&code, &format!("listener {}", batch * 50 + i))
                    .await
                    .expect(200);
                SignalClient::join(&answer).await
            }
        });
        listeners.extend(futures::future::join_all(joins).await);
    }
    sp.ok(json!({ "type": "mute_self" })).await;
    let waits = listeners.iter_mut().map(|l| {
        let sid = sid.clone();
        async move {
            l.wait_about("muted", &sid).await;
        }
    });
    futures::future::join_all(waits).await;
    for l in &listeners {
        let joins = l
            .received
            .iter()
            .filter(|e| e["type"] == "participant_joined")
            .count();
        assert_eq!(
            joins, 0,
            "a listener was told about other listeners joining"
        );
    }
    // Moderators do see the audience, and the count reaches everyone.
    m.sync().await;
    let seen = m
        .received
        .iter()
        .filter(|e| e["type"] == "participant_joined")
        .count();
    assert_eq!(seen, LISTENERS + 1);
    let last = listeners.last_mut().unwrap();
    last.wait(|e| e["type"] == "audience_count" && e["count"] == LISTENERS)
        .await;
    let counts = last
        .received
        .iter()
        .filter(|e| e["type"] == "audience_count")
        .count();
    // Coalesced: at most one update per 250 ms tick, however many people joined meanwhile.
    let ticks = started.elapsed().as_millis() as usize / 250 + 2;
    assert!(
        counts <= ticks,
        "audience_count not coalesced: {counts} updates in {ticks} ticks"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_empties_the_room_and_absent_moderators_can_still_use_rest() {
    let t = TestServer::start().await;
    let room = t.create_room("Leave").await;
    let base = format!("/api/v1/rooms/{room}");
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut l = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    let lid = l.participant_id();

    // Anyone may page through the audience.
    let page = l
        .request(json!({ "type": "list_audience", "limit": 10 }))
        .await;
    assert_eq!(page["type"], "audience_page");
    assert_eq!(page["participants"][0]["id"], lid.as_str());

    // A moderator who is not connected acts through REST with their session token.
    let absent = t.participant(&room, "moderator", "Remote").await;
    let answer = t
        .call(
            Method::DELETE,
            &format!("{base}/participants/{lid}"),
            Some(&s(&absent["token"])),
            None,
        )
        .await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    assert_eq!(l.wait_closed().await.0, 4001);
    let events = t
        .op(Method::GET, &format!("{base}/events"), None)
        .await
        .expect(200);
    let removed = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "participant.removed")
        .unwrap();
    assert_eq!(removed["actor"], absent["participant_id"]);

    // `leave` is acknowledged, then the socket closes normally; the room then winds down.
    let answer = m.request(json!({ "type": "leave" })).await;
    assert_eq!(answer["type"], "ok");
    assert_eq!(m.wait_closed().await, (1000, "left".to_owned()));
    for _ in 0..200 {
        let shown = t.op(Method::GET, &base, None).await.expect(200);
        if shown["live"] == false && t.running().state.live.live_count() == 0 {
            t.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the room stayed live after everyone left");
}

/// A session token says what was true when it was issued; what the room decided since wins:
/// a demoted moderator's token no longer moderates, a removed person's token no longer works
/// (even after the room task restarted), and a resume token works once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tokens_cannot_undo_what_the_room_decided() {
    let t = TestServer::start().await;
    let room = t.create_room("Decisions").await;
    let base = format!("/api/v1/rooms/{room}");
    let mut ada = SignalClient::join(&t.participant(&room, "moderator", "Ada").await).await;
    let max_answer = t.participant(&room, "moderator", "Max").await;
    let max_token = s(&max_answer["token"]);
    let mut max = SignalClient::join(&max_answer).await;
    let mid = max.participant_id();

    ada.ok(json!({ "type": "demote", "participant": mid }))
        .await;
    max.wait_about("role_changed", &mid).await;
    // On REST, the old token is a moderator's no more.
    t.call(
        Method::POST,
        &format!("{base}/invites"),
        Some(&max_token),
        Some(json!({ "role": "moderator" })),
    )
    .await
    .expect_problem(403, "moderator_only");
    // Leaving and rejoining with it does not bring the role back.
    max.ok(json!({ "type": "leave" })).await;
    max.wait_closed().await;
    let max = SignalClient::join(&max_answer).await;
    assert_ne!(
        max.welcome["snapshot"]["you"]["role"], "moderator",
        "{}",
        max.welcome
    );

    // A removed participant's token is void, on REST and on the socket, even once the room
    // task that removed them is gone.
    let lee_answer = t.participant(&room, "listener", "Lee").await;
    let mut lee = SignalClient::join(&lee_answer).await;
    let lid = lee.participant_id();
    ada.ok(json!({ "type": "remove", "participant": lid }))
        .await;
    lee.wait_closed().await;
    for mut c in [ada, max] {
        c.ok(json!({ "type": "leave" })).await;
        c.wait_closed().await;
    }
    for _ in 0..200 {
        if t.running().state.live.live_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        t.running().state.live.live_count(),
        0,
        "the room task did not stop"
    );
    t.call(Method::GET, &base, Some(&s(&lee_answer["token"])), None)
        .await
        .expect_problem(401, "removed");
    let mut back = SignalClient::open(&s(&lee_answer["signal_url"])).await;
    back.send(json!({ "type": "join", "token": lee_answer["token"] }))
        .await;
    assert_eq!(back.wait_type("error").await["code"], "removed");
    assert_eq!(back.wait_closed().await.0, 4001);
    // A new redemption of an invite is a fresh start.
    let again = t.participant(&room, "listener", "Lee again").await;
    SignalClient::join(&again).await;

    // Resume tokens work once: the newest one only.
    let kim_answer = t.participant(&room, "speaker", "Kim").await;
    let kim = SignalClient::join(&kim_answer).await;
    let first_token = kim.resume_token();
    let url = s(&kim_answer["signal_url"]);
    kim.drop_connection();
    let kim = SignalClient::resume(&url, &first_token).await;
    assert_ne!(kim.resume_token(), first_token);
    let mut replay = SignalClient::open(&url).await;
    replay
        .send(json!({ "type": "resume", "resume_token": first_token }))
        .await;
    assert_eq!(replay.wait_type("error").await["code"], "resume_expired");
    replay.wait_closed().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_tells_every_socket_why() {
    let t = TestServer::start().await;
    let room = t.create_room("Bye").await;
    let mut m = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    let mut l = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    let stopping = tokio::spawn(t.stop());
    for c in [&mut m, &mut l] {
        assert_eq!(
            c.wait_closed().await,
            (1012, "server_restarting".to_owned())
        );
    }
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_unbounded_sockets() {
    let t = TestServer::start_with(|c| c.signal.max_sockets_per_address = 2).await;
    let url = t.url("/api/v1/signal").replace("http://", "ws://");
    let first = SignalClient::open(&url).await;
    let _second = SignalClient::open(&url).await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
        }
        other => panic!("a third socket was accepted: {:?}", other.map(|_| ())),
    }
    // A socket given back makes room for a new one.
    first.close().await;
    let mut again = None;
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the freed slot was not given back");
    t.stop().await;
}

/// A `DELETE` that found the room empty ended it in the store while someone was joining; the
/// live room that person opened then ends too, and the end is recorded once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_racing_a_join_is_recorded_once() {
    let t = TestServer::start().await;
    let room = t.create_room("Race").await;
    let mut lee = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    // What the racing `DELETE` did on the store path, before the room went live.
    let id = stoa::control::RoomId::parse(&room).unwrap();
    t.running()
        .state
        .store
        .end_room(
            id,
            stoa::control::Actor::Operator,
            0,
            Some(json!({})),
            Vec::new(),
        )
        .await
        .unwrap();
    t.op(Method::DELETE, &format!("/api/v1/rooms/{room}"), None)
        .await
        .expect(204);
    lee.wait_closed().await;
    let events = t
        .op(Method::GET, &format!("/api/v1/rooms/{room}/events"), None)
        .await
        .expect(200);
    let ends = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "room.ended")
        .count();
    assert_eq!(ends, 1, "{events}");
    t.stop().await;
}

/// A session token expires (`session_ttl_secs`) while its holder is still in the room; the
/// socket renews it with the role the room gives them now, and a role changed afterwards
/// still outranks the renewed token, as it does every token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_token_is_renewed_over_the_socket() {
    let t = TestServer::start().await;
    let room = t.create_room("Long").await;
    let mo = t.participant(&room, "moderator", "Mo").await;
    let lee = t.participant(&room, "listener", "Lee").await;
    let mut m = SignalClient::join(&mo).await;
    let mut l = SignalClient::join(&lee).await;
    let lee_id = l.participant_id();
    m.wait_about("participant_joined", &lee_id).await;
    let invites = format!("/api/v1/rooms/{room}/invites");
    let invite = |token: String| {
        let (t, invites) = (&t, invites.clone());
        async move {
            t.call(
                Method::POST,
                &invites,
                Some(&token),
                Some(json!({ "role": "listener" })),
            )
            .await
        }
    };
    invite(s(&mo["token"])).await.expect(201);

    t.clock
        .advance(Duration::from_secs(t.config.limits.session_ttl_secs + 1));
    invite(s(&mo["token"]))
        .await
        .expect_problem(401, "token_expired");
    let renewed = m.request(json!({ "type": "renew_session" })).await;
    assert_eq!(renewed["type"], "session", "{renewed}");
    assert_ne!(renewed["token"], mo["token"]);
    let ttl_ms = t.config.limits.session_ttl_secs as i64 * 1000;
    assert_eq!(
        renewed["expires_at"],
        stoa::clock::rfc3339(t.clock.now_ms() + ttl_ms),
        "a whole TTL from now"
    );
    invite(s(&renewed["token"])).await.expect(201);

    // A listener's renewed token is a listener's.
    let lee_renewed = s(&l.request(json!({ "type": "renew_session" })).await["token"]);
    invite(lee_renewed.clone())
        .await
        .expect_problem(403, "moderator_only");
    // Made a moderator live: the token renewed before outranked by the room's role, and one
    // renewed after claims it.
    m.ok(json!({ "type": "set_role", "participant": lee_id, "role": "moderator" }))
        .await;
    l.wait_about("role_changed", &lee_id).await;
    invite(lee_renewed).await.expect(201);
    let as_moderator = s(&l.request(json!({ "type": "renew_session" })).await["token"]);
    invite(as_moderator.clone()).await.expect(201);
    // Made a listener again: that token no longer acts as a moderator.
    m.ok(json!({ "type": "set_role", "participant": lee_id, "role": "listener" }))
        .await;
    l.wait_about("role_changed", &lee_id).await;
    invite(as_moderator)
        .await
        .expect_problem(403, "moderator_only");

    // Removed: the socket is closed, and the token renewed before is void.
    let before_removal = s(&l.request(json!({ "type": "renew_session" })).await["token"]);
    m.ok(json!({ "type": "remove", "participant": lee_id }))
        .await;
    l.wait_closed().await;
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{room}"),
        Some(&before_removal),
        None,
    )
    .await
    .expect_problem(401, "removed");
    t.stop().await;
}
