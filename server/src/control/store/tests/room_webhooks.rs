//! Rooms' own webhook endpoints in the store, on both engines: events fan out to the server's
//! endpoint and the room's in one write, each lane in order on its own (a room's failing
//! receiver holds neither the server's nor another room's), a new secret signs rows already
//! waiting, and deleting the endpoint drops what waits for it and keeps its history.

use super::super::super::{
    ControlError, DeliveryState, Destination, RoomWebhookChange, WebhookAttempt, WebhookLane,
};
use super::{Actor, PageRequest, RoomWrite, Store, hook, postgres_store, room_new};

on_both_engines!(
    a_rooms_endpoint_gets_its_own_lane_of_its_rooms_events,
    without_any_endpoint_nothing_is_written,
);

fn write(hooks: Vec<super::NewWebhook>) -> RoomWrite {
    RoomWrite {
        records: Vec::new(),
        webhooks: hooks,
    }
}

async fn a_rooms_endpoint_gets_its_own_lane_of_its_rooms_events(store: Store) {
    let store = store.with_server_webhooks(true);
    let a = store
        .create_room(room_new("a"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let b = store
        .create_room(room_new("b"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let (set, change) = store
        .set_room_webhook(
            a.id.clone(),
            "http://hooks.example.org/a".into(),
            "whsec_first".into(),
            Actor::Operator,
            1_500,
        )
        .await
        .unwrap();
    assert_eq!(change, RoomWebhookChange::Created);
    assert!(
        set.id.starts_with("rwh_") && set.id.len() == 20,
        "{}",
        set.id
    );
    assert_eq!(set.secret, "whsec_first");
    // Set again: the URL moves, the id and the secret stay.
    let (moved, change) = store
        .set_room_webhook(
            a.id.clone(),
            "http://hooks.example.org/a2".into(),
            "whsec_unused".into(),
            Actor::Operator,
            1_600,
        )
        .await
        .unwrap();
    assert_eq!(change, RoomWebhookChange::Updated);
    assert_eq!(
        (moved.id.as_str(), moved.secret.as_str()),
        (set.id.as_str(), "whsec_first")
    );
    assert_eq!(moved.url, "http://hooks.example.org/a2");

    store
        .write_room(
            a.id.clone(),
            write(vec![hook("a1", 2_000), hook("a2", 2_001)]),
        )
        .await
        .unwrap();
    store
        .write_room(b.id.clone(), write(vec![hook("b1", 2_002)]))
        .await
        .unwrap();

    // The server's lane: every room's events, with the ids they were made with.
    let server = store
        .claim_webhooks("n1".into(), 3_000, 10_000, 10, WebhookLane::Server)
        .await
        .unwrap();
    let ids: Vec<&str> = server.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["a1", "b1"]);
    assert!(server.iter().all(|c| c.destination == Destination::Server));
    // The rooms' lane: room a's first event only, to its endpoint, under an id of its own.
    let rooms = store
        .claim_webhooks("n1".into(), 3_000, 10_000, 10, WebhookLane::Rooms)
        .await
        .unwrap();
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    assert_eq!(rooms[0].body, "{\"n\":\"a1\"}");
    assert!(rooms[0].id.starts_with("msg_") && rooms[0].id != "a1");
    assert_eq!(
        rooms[0].destination,
        Destination::Room {
            url: "http://hooks.example.org/a2".into(),
            secret: "whsec_first".into()
        }
    );

    // The room's receiver fails and waits a long time: the server's lane goes on.
    let retry = WebhookAttempt::Retry {
        status: Some(500),
        error: "answered 500".into(),
        next_at_ms: 50_000,
    };
    assert!(
        store
            .finish_webhook(rooms[0].seq, "n1".into(), retry, 3_001)
            .await
            .unwrap()
    );
    let delivered = WebhookAttempt::Delivered { status: 204 };
    for row in &server {
        assert!(
            store
                .finish_webhook(row.seq, "n1".into(), delivered.clone(), 3_002)
                .await
                .unwrap()
        );
    }
    let server = store
        .claim_webhooks("n1".into(), 3_003, 10_000, 10, WebhookLane::Server)
        .await
        .unwrap();
    let ids: Vec<&str> = server.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["a2"]);
    // ... while the room's next event waits behind its first.
    assert!(
        store
            .claim_webhooks("n1".into(), 3_003, 10_000, 10, WebhookLane::Rooms)
            .await
            .unwrap()
            .is_empty()
    );

    // A new secret signs what already waits.
    let rotated = store
        .rotate_room_webhook_secret(a.id.clone(), "whsec_second".into(), Actor::Operator, 4_000)
        .await
        .unwrap();
    assert_eq!(
        (rotated.secret_rotated_at_ms, rotated.id.as_str()),
        (4_000, set.id.as_str())
    );
    let again = store
        .claim_webhooks("n2".into(), 50_000, 10_000, 10, WebhookLane::Rooms)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert!(
        matches!(&again[0].destination, Destination::Room { secret, .. } if secret == "whsec_second")
    );
    assert!(
        store
            .finish_webhook(again[0].seq, "n2".into(), delivered.clone(), 50_001)
            .await
            .unwrap()
    );
    assert_eq!(
        store.room_webhook_backlog(set.id.clone()).await.unwrap(),
        (1, 0)
    );

    // The room's deliveries list only its own endpoint's rows.
    let all = PageRequest {
        after: None,
        limit: 50,
    };
    let listed = store
        .list_room_webhook_deliveries(a.id.clone(), None, all)
        .await
        .unwrap();
    let states: Vec<DeliveryState> = listed.items.iter().map(|d| d.state).collect();
    assert_eq!(states, [DeliveryState::Delivered, DeliveryState::Pending]);
    assert!(
        listed
            .items
            .iter()
            .all(|d| d.endpoint.as_deref() == Some(set.id.as_str()))
    );
    assert!(
        store
            .list_room_webhook_deliveries(b.id.clone(), None, all)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Deleted: the waiting row goes, the delivered one stays listed; no more rows for it.
    assert_eq!(
        store
            .delete_room_webhook(a.id.clone(), Actor::Operator, 60_000)
            .await
            .unwrap(),
        1
    );
    let listed = store
        .list_room_webhook_deliveries(a.id.clone(), None, all)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].state, DeliveryState::Delivered);
    assert!(matches!(
        store.room_webhook(a.id.clone()).await,
        Err(ControlError::RoomWebhookNotFound)
    ));
    assert!(matches!(
        store
            .delete_room_webhook(a.id.clone(), Actor::Operator, 60_001)
            .await,
        Err(ControlError::RoomWebhookNotFound)
    ));
    store
        .write_room(a.id.clone(), write(vec![hook("a3", 61_000)]))
        .await
        .unwrap();
    assert!(
        store
            .claim_webhooks("n1".into(), 62_000, 10_000, 10, WebhookLane::Rooms)
            .await
            .unwrap()
            .is_empty()
    );

    // Each change is in the room's audit log.
    let events = store.list_events(a.id.clone(), all).await.unwrap();
    let actions: Vec<&str> = events
        .items
        .iter()
        .map(|e| e.action.as_str())
        .filter(|a| a.starts_with("webhook."))
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.created",
            "webhook.updated",
            "webhook.secret_rotated",
            "webhook.deleted"
        ]
    );
    assert!(events.items.iter().all(|e| e.actor == "operator"));

    // An ended room gets none.
    store
        .end_room(b.id.clone(), Actor::Operator, 70_000, None, Vec::new())
        .await
        .unwrap();
    assert!(matches!(
        store
            .set_room_webhook(
                b.id.clone(),
                "http://x.example/".into(),
                "whsec_x".into(),
                Actor::Operator,
                70_001
            )
            .await,
        Err(ControlError::RoomEnded)
    ));
}

async fn without_any_endpoint_nothing_is_written(store: Store) {
    // The server has no endpoint and the room none of its own: events have nowhere to go.
    let a = store
        .create_room(room_new("a"), Actor::Operator, 1_000)
        .await
        .unwrap();
    store
        .write_room(a.id.clone(), write(vec![hook("a1", 2_000)]))
        .await
        .unwrap();
    let all = PageRequest {
        after: None,
        limit: 50,
    };
    assert!(
        store
            .list_webhook_deliveries(None, all)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
