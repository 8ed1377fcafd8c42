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
    assert!(m.welcome["snapshot"]["audience"].is_array());
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
