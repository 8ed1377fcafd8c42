//! Rooms' recording policy in the store, on both engines: stored and changed (with its audit
//! line), and what retention finds: a node's finished recordings and live clips past their
//! room's retention (or the server's), never one still being written, and deleted once.

use super::super::super::{
    ClipCode, ClipId, ControlError, FinishedRecording, NewClip, RecordingPolicy,
    RecordingPolicyChange, RecordingState, RoomId,
};
use super::{Actor, PageRequest, Store, postgres_store, room_new};

on_both_engines!(
    a_rooms_policy_is_stored_and_changed_with_its_audit_line,
    retention_finds_what_ran_out_on_this_node_and_deletes_it_once,
);

const DAY: i64 = 86_400_000;

async fn a_rooms_policy_is_stored_and_changed_with_its_audit_line(store: Store) {
    let mut new = room_new("Recorded");
    new.recording = RecordingPolicy {
        record_by_default: Some(true),
        retention_days: Some(30),
    };
    let room = store
        .create_room(new, Actor::Operator, 1_000)
        .await
        .unwrap();
    assert_eq!(store.room(room.id.clone()).await.unwrap(), room);
    assert_eq!(room.recording.retention_days, Some(30));

    // Only what the change names changes; `Some(None)` goes back to the server's.
    let change = RecordingPolicyChange {
        record_by_default: None,
        retention_days: Some(None),
    };
    let changed = store
        .update_recording_policy(room.id.clone(), change, Actor::Operator, 2_000)
        .await
        .unwrap();
    let wanted = RecordingPolicy {
        record_by_default: Some(true),
        retention_days: None,
    };
    assert_eq!(changed.recording, wanted);
    assert_eq!(store.room(room.id.clone()).await.unwrap(), changed);
    let change = RecordingPolicyChange {
        record_by_default: Some(Some(false)),
        retention_days: Some(Some(0)),
    };
    let changed = store
        .update_recording_policy(room.id.clone(), change, Actor::Operator, 3_000)
        .await
        .unwrap();
    assert!(!changed.recording.records_by_default(true));
    assert_eq!(changed.recording.retention_days, Some(0));

    let events = store
        .list_events(
            room.id.clone(),
            PageRequest {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
        .items;
    let updates: Vec<_> = events
        .iter()
        .filter(|e| e.action == "room.updated")
        .map(|e| e.detail.clone())
        .collect();
    assert_eq!(
        updates,
        [
            serde_json::json!({ "retention_days": null }),
            serde_json::json!({ "record_by_default": false, "retention_days": 0 }),
        ]
    );
    let missing = store
        .update_recording_policy(
            RoomId::generate(),
            RecordingPolicyChange::default(),
            Actor::Operator,
            3_000,
        )
        .await;
    assert!(matches!(missing, Err(ControlError::RoomNotFound)));
}

/// A finished recording of `room` on `node`, started at `at`.
async fn finished(store: &Store, room: &RoomId, node: &str, at: i64) -> super::RecordingId {
    let recording = store
        .create_recording(room.clone(), node.into(), at)
        .await
        .unwrap();
    let done = FinishedRecording {
        state: RecordingState::Ready,
        ended_at_ms: at + 1_000,
        duration_ms: 1_000,
        size_bytes: 4_000,
    };
    store
        .finish_recording(recording.id.clone(), done, Vec::new())
        .await
        .unwrap();
    recording.id
}

async fn clip(store: &Store, room: &RoomId, of: Option<&super::RecordingId>, at: i64) -> ClipId {
    let new = NewClip {
        id: ClipId::generate(),
        code: ClipCode::generate(),
        recording_id: of.cloned(),
        start_ms: 0,
        duration_ms: 500,
        size_bytes: 2_000,
        node: "node-a".into(),
    };
    store
        .create_clip(
            room.clone(),
            new,
            Actor::Operator,
            "operator".into(),
            at,
            Vec::new(),
        )
        .await
        .unwrap()
        .id
}

async fn retention_finds_what_ran_out_on_this_node_and_deletes_it_once(store: Store) {
    let policy = |days| {
        let mut new = room_new("Kept");
        new.recording.retention_days = days;
        new
    };
    let week = store
        .create_room(policy(Some(7)), Actor::Operator, 0)
        .await
        .unwrap()
        .id;
    let server = store
        .create_room(policy(None), Actor::Operator, 0)
        .await
        .unwrap()
        .id;
    let forever = store
        .create_room(policy(Some(0)), Actor::Operator, 0)
        .await
        .unwrap()
        .id;
    let t0 = 100 * DAY;
    let old_week = finished(&store, &week, "node-a", t0).await;
    let old_server = finished(&store, &server, "node-a", t0).await;
    let old_forever = finished(&store, &forever, "node-a", t0).await;
    let elsewhere = finished(&store, &server, "node-b", t0).await;
    let clip_of_old = clip(&store, &week, Some(&old_week), t0 + DAY).await;
    let live_old = clip(&store, &week, None, t0).await;
    // Old and still being written: never.
    let writing = store
        .create_recording(week.clone(), "node-a".into(), t0 + 1)
        .await
        .unwrap();
    let young = t0 + 6 * DAY;
    let live_young = clip(&store, &week, None, young).await;

    let expired = |days, now| store.expired_recordings("node-a".into(), days, now, 100);
    let ids = |found: Vec<super::Recording>| found.into_iter().map(|r| r.id).collect::<Vec<_>>();
    // Exactly at seven days, the week's room's recording is due; the server keeps the rest.
    assert_eq!(
        ids(expired(0, t0 + 7 * DAY).await.unwrap()),
        std::slice::from_ref(&old_week)
    );
    assert!(expired(0, t0 + 7 * DAY - 1).await.unwrap().is_empty());
    // The server's 30 days count for the room without its own; 0 in a room keeps it.
    assert_eq!(
        ids(expired(30, t0 + 30 * DAY).await.unwrap()),
        [old_week.clone(), old_server.clone()]
    );
    assert!(!ids(expired(1, t0 + 1000 * DAY).await.unwrap()).contains(&old_forever));
    assert_eq!(
        store
            .expired_recordings("node-a".into(), 30, t0 + 30 * DAY, 1)
            .await
            .unwrap()
            .len(),
        1,
        "bounded by the limit"
    );
    assert_eq!(
        ids(store
            .expired_recordings("node-b".into(), 30, t0 + 30 * DAY, 100)
            .await
            .unwrap()),
        [elsewhere]
    );

    let live = |now| store.expired_live_clips("node-a".into(), 0, now, 100);
    let clip_ids = |found: Vec<super::Clip>| found.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        clip_ids(live(t0 + 7 * DAY).await.unwrap()),
        std::slice::from_ref(&live_old)
    );
    assert_eq!(
        clip_ids(live(young + 7 * DAY).await.unwrap()),
        [live_old.clone(), live_young]
    );

    // Deleted once: the second try (another pass, another node) finds nothing.
    let now = t0 + 8 * DAY;
    let (deleted, clips) = store
        .delete_recording(week.clone(), old_week.clone(), Actor::System, now)
        .await
        .unwrap();
    assert_eq!(deleted.id, old_week);
    assert_eq!(
        clips.into_iter().map(|c| c.id).collect::<Vec<_>>(),
        [clip_of_old]
    );
    assert!(matches!(
        store
            .delete_recording(week.clone(), old_week.clone(), Actor::System, now)
            .await,
        Err(ControlError::RecordingNotFound)
    ));
    let gone = store
        .delete_live_clip(week.clone(), live_old.clone(), Actor::System, now)
        .await
        .unwrap();
    assert_eq!(gone.id, live_old);
    assert!(matches!(
        store
            .delete_live_clip(week.clone(), live_old.clone(), Actor::System, now)
            .await,
        Err(ControlError::ClipNotFound)
    ));
    assert!(clip_ids(live(t0 + 7 * DAY).await.unwrap()).is_empty());
    assert!(ids(expired(0, now).await.unwrap()).is_empty());
    // The recording being written is still there, and still not due.
    let kept = store
        .recording(week.clone(), writing.id.clone())
        .await
        .unwrap();
    assert_eq!(kept.state, RecordingState::Recording);
    let events = store
        .list_events(
            week.clone(),
            PageRequest {
                after: None,
                limit: 50,
            },
        )
        .await
        .unwrap()
        .items;
    let by_system: Vec<_> = events
        .iter()
        .filter(|e| e.actor == "system")
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(by_system, ["recording.deleted", "clip.deleted"]);
}
