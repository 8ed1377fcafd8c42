//! The store's own tests, each run against both engines: SQLite in memory and a fresh
//! database on a throwaway PostgreSQL shared by this test binary.

use super::super::model::PageRequest;
use super::super::{
    ControlError, Delivery, DeliveryState, NewInvite, NewRoom, NewWebhook, Role, RoomLimits,
    RoomRecord, RoomWrite, WebhookAttempt, WebhookLane,
};
use super::*;

// The end-to-end tests' helper, shared so that there is one way to run a test PostgreSQL;
// this crate's tests use only part of it.
#[path = "../../../../tests/src/postgres.rs"]
#[allow(dead_code)]
mod throwaway_postgres;

use throwaway_postgres::Postgres;

async fn postgres_store() -> Store {
    let url = Postgres::shared().fresh_database();
    Store::connect_postgres(&url, 4).await.unwrap()
}

/// Each named `async fn(Store)` becomes one test per engine: `sqlite::name`, `postgres::name`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Store::open_in_memory().unwrap()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::postgres_store().await).await
                }
            )*
        }
    };
}

on_both_engines!(
    redeem_counts_uses_and_keeps_identity,
    a_live_role_outranks_every_older_token_across_redemptions,
    pages_follow_the_cursor,
    startup_link_keeps_one_demo_room_and_one_live_link,
    delivery_and_audience_cap_are_stored_and_checked,
    webhooks_are_claimed_one_per_room_in_order_under_a_lease,
    recordings_one_at_a_time_closed_once_listed_per_room,
);

async fn recordings_one_at_a_time_closed_once_listed_per_room(store: Store) {
    use super::super::{FinishedRecording, RecordingId, RecordingState};
    let room = store
        .create_room(room_new("Recorded"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let other = store
        .create_room(room_new("Other"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let first = store
        .create_recording(room.id.clone(), "node-a".into(), 2_000)
        .await
        .unwrap();
    assert_eq!(first.state, RecordingState::Recording);
    assert_eq!((first.started_at_ms, first.ended_at_ms), (2_000, None));
    assert_eq!(first.node, "node-a");
    assert!(matches!(
        store
            .create_recording(room.id.clone(), "node-a".into(), 2_500)
            .await,
        Err(ControlError::AlreadyRecording)
    ));
    // Another room may record at the same time.
    store
        .create_recording(other.id.clone(), "node-b".into(), 2_500)
        .await
        .unwrap();
    let unfinished = store.unfinished_recordings("node-a".into()).await.unwrap();
    assert_eq!(unfinished, vec![first.clone()]);
    let finished = FinishedRecording {
        state: RecordingState::Ready,
        ended_at_ms: 9_000,
        duration_ms: 6_980,
        size_bytes: 28_000,
    };
    assert!(
        store
            .finish_recording(first.id.clone(), finished, Vec::new())
            .await
            .unwrap()
    );
    // Closed once: a second close (a racing recovery) changes nothing.
    let failed = FinishedRecording {
        state: RecordingState::Failed,
        ..finished
    };
    assert!(
        !store
            .finish_recording(first.id.clone(), failed, Vec::new())
            .await
            .unwrap()
    );
    let shown = store
        .recording(room.id.clone(), first.id.clone())
        .await
        .unwrap();
    assert_eq!(shown.state, RecordingState::Ready);
    assert_eq!(
        (shown.ended_at_ms, shown.duration_ms, shown.size_bytes),
        (Some(9_000), 6_980, 28_000)
    );
    assert!(matches!(
        store.recording(other.id.clone(), first.id.clone()).await,
        Err(ControlError::RecordingNotFound)
    ));
    assert!(matches!(
        store
            .recording(room.id.clone(), RecordingId::generate())
            .await,
        Err(ControlError::RecordingNotFound)
    ));
    assert!(
        store
            .unfinished_recordings("node-a".into())
            .await
            .unwrap()
            .is_empty()
    );
    // A new one may start once the first is closed; the list is oldest first.
    let second = store
        .create_recording(room.id.clone(), "node-a".into(), 10_000)
        .await
        .unwrap();
    let page = store
        .list_recordings(
            room.id.clone(),
            PageRequest {
                after: None,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items, vec![shown]);
    let rest = store
        .list_recordings(
            room.id.clone(),
            PageRequest {
                after: page.next_cursor,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items, vec![second]);
    assert_eq!(rest.next_cursor, None);
    // An ended room is not recorded.
    store
        .end_room(other.id.clone(), Actor::Operator, 11_000, None, Vec::new())
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_recording(other.id.clone(), "node-b".into(), 12_000)
            .await,
        Err(ControlError::RoomEnded)
    ));
}

/// Two nodes (two pools on one PostgreSQL database) claim webhooks at once, over and over:
/// no row is ever claimed by both, and each room's rows are claimed in order.
#[tokio::test]
async fn two_nodes_never_claim_the_same_webhook() {
    let url = Postgres::shared().fresh_database();
    let nodes = [
        Store::connect_postgres(&url, 8)
            .await
            .unwrap()
            .with_server_webhooks(true),
        Store::connect_postgres(&url, 8)
            .await
            .unwrap()
            .with_server_webhooks(true),
    ];
    const ROOMS: usize = 6;
    const PER_ROOM: usize = 10;
    for r in 0..ROOMS {
        let room = nodes[0]
            .create_room(room_new(&format!("r{r}")), Actor::Operator, 1_000)
            .await
            .unwrap();
        let hooks = (0..PER_ROOM)
            .map(|i| hook(&format!("r{r}-{i:02}"), 1_000))
            .collect();
        let write = RoomWrite {
            records: Vec::new(),
            webhooks: hooks,
        };
        nodes[0].write_room(room.id, write).await.unwrap();
    }
    let claim_all = |store: Store, owner: &'static str| async move {
        let mut claimed = Vec::new();
        let mut idle = 0;
        while idle < 50 {
            let rows = store
                .claim_webhooks(owner.into(), 2_000, 60_000, 4, WebhookLane::Server)
                .await
                .unwrap();
            if rows.is_empty() {
                idle += 1;
                tokio::task::yield_now().await;
            }
            for row in rows {
                let done = WebhookAttempt::Delivered { status: 204 };
                assert!(
                    store
                        .finish_webhook(row.seq, owner.into(), done, 2_000)
                        .await
                        .unwrap()
                );
                claimed.push(row.id);
            }
        }
        claimed
    };
    let (a, b) = tokio::join!(
        tokio::spawn(claim_all(nodes[0].clone(), "a")),
        tokio::spawn(claim_all(nodes[1].clone(), "b"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<&String> = a.iter().chain(&b).collect();
    assert_eq!(all.len(), ROOMS * PER_ROOM, "a: {a:?}\nb: {b:?}");
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        ROOMS * PER_ROOM,
        "claimed twice: a {a:?}, b {b:?}"
    );
    for node in [&a, &b] {
        for r in 0..ROOMS {
            let mine: Vec<&String> = node
                .iter()
                .filter(|id| id.starts_with(&format!("r{r}-")))
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "out of order: {mine:?}"
            );
        }
    }
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both nodes took part: a {a:?}, b {b:?}"
    );
}

fn hook(id: &str, at: i64) -> NewWebhook {
    NewWebhook {
        id: id.into(),
        event_type: "test.event".into(),
        body: format!("{{\"n\":\"{id}\"}}"),
        created_at_ms: at,
    }
}

async fn webhooks_are_claimed_one_per_room_in_order_under_a_lease(store: Store) {
    let store = store.with_server_webhooks(true);
    let a = store
        .create_room(room_new("a"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let b = store
        .create_room(room_new("b"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let write = |hooks: Vec<NewWebhook>| RoomWrite {
        records: Vec::new(),
        webhooks: hooks,
    };
    let due = || store.next_webhook_due(WebhookLane::Server);
    assert_eq!(due().await.unwrap(), None, "nothing pending");
    let outbox = store.watch_outbox();
    store
        .write_room(a.id.clone(), write(Vec::new()))
        .await
        .unwrap();
    assert!(!outbox.has_changed().unwrap(), "no events, no wake-up");
    store
        .write_room(
            a.id.clone(),
            write(vec![hook("a1", 1_000), hook("a2", 1_001)]),
        )
        .await
        .unwrap();
    assert!(outbox.has_changed().unwrap(), "the sender is woken");
    store
        .write_room(b.id.clone(), write(vec![hook("b1", 1_002)]))
        .await
        .unwrap();
    assert_eq!(due().await.unwrap(), Some(1_000));
    // One row per room: each room's oldest.
    let claimed = store
        .claim_webhooks("n1".into(), 2_000, 10_000, 10, WebhookLane::Server)
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["a1", "b1"]);
    assert_eq!(claimed[0].body, "{\"n\":\"a1\"}");
    // Leased: another sender gets nothing, not even a room's next row.
    assert!(
        store
            .claim_webhooks("n2".into(), 2_001, 10_000, 10, WebhookLane::Server)
            .await
            .unwrap()
            .is_empty()
    );
    // Both heads are leased: nothing is due before the leases end (a2 waits for a1).
    assert_eq!(due().await.unwrap(), Some(12_000));
    // Only the lease's holder records the outcome.
    let retry = WebhookAttempt::Retry {
        status: Some(500),
        error: "answered 500".into(),
        next_at_ms: 5_000,
    };
    assert!(
        !store
            .finish_webhook(claimed[0].seq, "n2".into(), retry.clone(), 2_002)
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_webhook(claimed[0].seq, "n1".into(), retry, 2_002)
            .await
            .unwrap()
    );
    let delivered = WebhookAttempt::Delivered { status: 204 };
    assert!(
        store
            .finish_webhook(claimed[1].seq, "n1".into(), delivered, 2_003)
            .await
            .unwrap()
    );
    // a1 waits for its retry time, and a2 waits for a1.
    assert_eq!(due().await.unwrap(), Some(5_000));
    assert!(
        store
            .claim_webhooks("n2".into(), 4_999, 10_000, 10, WebhookLane::Server)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_webhooks("n2".into(), 5_000, 10_000, 10, WebhookLane::Server)
        .await
        .unwrap();
    assert_eq!(
        (again.len(), again[0].id.as_str(), again[0].attempts),
        (1, "a1", 1)
    );
    let given_up = WebhookAttempt::GivenUp {
        status: None,
        error: "timed out".into(),
    };
    assert!(
        store
            .finish_webhook(again[0].seq, "n2".into(), given_up, 5_001)
            .await
            .unwrap()
    );
    assert_eq!(
        due().await.unwrap(),
        Some(1_001),
        "a2 is due since it was written"
    );
    let next = store
        .claim_webhooks("n1".into(), 5_002, 10_000, 10, WebhookLane::Server)
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a2"]
    );
    // A lease that ran out lets another sender take the row.
    let taken = store
        .claim_webhooks("n2".into(), 15_002, 10_000, 10, WebhookLane::Server)
        .await
        .unwrap();
    assert_eq!(taken[0].id, "a2");
    assert_eq!(due().await.unwrap(), Some(25_002));
    assert_eq!(
        store.next_webhook_due(WebhookLane::Rooms).await.unwrap(),
        None
    );

    let all = PageRequest {
        after: None,
        limit: 10,
    };
    let failed = store
        .list_webhook_deliveries(Some(DeliveryState::Failed), all)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    let f = &failed.items[0];
    assert_eq!(
        (f.id.as_str(), f.attempts, f.last_error.as_deref()),
        ("a1", 2, Some("timed out"))
    );
    assert_eq!(
        (f.room_id.clone(), f.finished_at_ms, f.next_attempt_at_ms),
        (a.id.clone(), Some(5_001), None)
    );
    let everything = store.list_webhook_deliveries(None, all).await.unwrap();
    let states: Vec<_> = everything
        .items
        .iter()
        .map(|d| (d.id.as_str(), d.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a1", DeliveryState::Failed),
            ("a2", DeliveryState::Pending),
            ("b1", DeliveryState::Delivered)
        ]
    );
    assert_eq!(
        store.prune_webhooks(2_004).await.unwrap(),
        1,
        "the delivered row"
    );
    assert_eq!(
        store.prune_webhooks(99_999).await.unwrap(),
        0,
        "failed rows are kept"
    );
}

async fn startup_link_keeps_one_demo_room_and_one_live_link(store: Store) {
    let (room, first) = store.startup_link(1_000).await.unwrap().unwrap();
    let (again, second) = store.startup_link(2_000).await.unwrap().unwrap();
    assert_eq!(again.id, room.id, "one demo room across starts");
    assert_eq!(second.invite.role, Role::Moderator);
    assert!(matches!(
        store.redeem(first.code, "Old".into(), None, 3_000).await,
        Err(ControlError::InviteInvalid)
    ));
    store
        .redeem(second.code, "New".into(), None, 3_000)
        .await
        .unwrap();
    store
        .end_room(room.id, Actor::Operator, 4_000, None, Vec::new())
        .await
        .unwrap();
    assert!(store.startup_link(5_000).await.unwrap().is_none());
}

/// A room's own WebRTC audience cap and an invite's delivery read back as written (migrations
/// 4 and 5); broadcast delivery is for listener invites only, and a redemption that grants a
/// live role above listener hears WebRTC.
async fn delivery_and_audience_cap_are_stored_and_checked(store: Store) {
    let capped = NewRoom {
        title: "capped".into(),
        limits: RoomLimits {
            webrtc_audience_cap: Some(2),
            ..RoomLimits::default()
        },
        recording: Default::default(),
    };
    let room = store
        .create_room(capped, Actor::Operator, 1_000)
        .await
        .unwrap();
    assert_eq!(room.limits.webrtc_audience_cap, Some(2));
    let read = store.room(room.id.clone()).await.unwrap();
    assert_eq!(read.limits.webrtc_audience_cap, Some(2));
    let broadcast = |role| NewInvite {
        role,
        delivery: Delivery::Broadcast,
        ..invite_new(None)
    };
    for role in [Role::Speaker, Role::Moderator] {
        match store
            .create_invite(room.id.clone(), broadcast(role), Actor::Operator, 1_000)
            .await
        {
            Err(ControlError::Invalid { code, .. }) => assert_eq!(code, "invalid_delivery"),
            other => panic!("{role} broadcast invite: {other:?}"),
        }
    }
    let created = store
        .create_invite(
            room.id.clone(),
            broadcast(Role::Listener),
            Actor::Operator,
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(created.invite.delivery, Delivery::Broadcast);
    let all = PageRequest {
        after: None,
        limit: 10,
    };
    let listed = store.list_invites(room.id.clone(), all).await.unwrap();
    assert_eq!(listed.items.len(), 1, "refused invites are not stored");
    assert_eq!(listed.items[0].delivery, Delivery::Broadcast);
    let (_, previewed) = store
        .preview_invite(created.code.clone(), 1_500)
        .await
        .unwrap();
    assert_eq!(previewed.delivery, Delivery::Broadcast);
    let first = store
        .redeem(created.code.clone(), "Ada".into(), None, 2_000)
        .await
        .unwrap();
    assert_eq!(first.delivery, Delivery::Broadcast);
    // Once the room made Ada a speaker, the same broadcast link brings her back on WebRTC.
    store
        .write_room(
            room.id.clone(),
            RoomWrite {
                records: vec![RoomRecord::Role {
                    participant: first.participant_id.clone(),
                    role: Role::Speaker,
                }],
                webhooks: Vec::new(),
            },
        )
        .await
        .unwrap();
    let again = store
        .redeem(created.code, "Ada".into(), first.new_identity, 3_000)
        .await
        .unwrap();
    assert_eq!(
        (again.role, again.delivery),
        (Role::Speaker, Delivery::Webrtc)
    );
    let events = store.list_events(room.id, all).await.unwrap();
    let deliveries: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.action.starts_with("invite."))
        .map(|e| (e.action.as_str(), e.detail["delivery"].clone()))
        .collect();
    assert_eq!(
        deliveries,
        [
            ("invite.created", serde_json::json!("broadcast")),
            ("invite.redeemed", serde_json::json!("broadcast")),
            ("invite.redeemed", serde_json::json!("webrtc")),
        ]
    );
}

fn room_new(title: &str) -> NewRoom {
    NewRoom {
        title: title.into(),
        limits: RoomLimits::default(),
        recording: Default::default(),
    }
}

fn invite_new(max_uses: Option<u32>) -> NewInvite {
    NewInvite {
        role: Role::Listener,
        delivery: Delivery::Webrtc,
        label: None,
        max_uses,
        expires_in_secs: Some(60),
    }
}

async fn redeem_counts_uses_and_keeps_identity(store: Store) {
    let room = store
        .create_room(room_new("t"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let created = store
        .create_invite(room.id.clone(), invite_new(Some(2)), Actor::Operator, 1_000)
        .await
        .unwrap();
    let first = store
        .redeem(created.code.clone(), "Ada".into(), None, 2_000)
        .await
        .unwrap();
    let secret = first.new_identity.clone().unwrap();
    let again = store
        .redeem(created.code.clone(), "Ada L".into(), Some(secret), 3_000)
        .await
        .unwrap();
    assert_eq!(first.participant_id, again.participant_id);
    assert!(again.new_identity.is_none());
    let third = store
        .redeem(created.code.clone(), "Bob".into(), None, 3_000)
        .await;
    assert!(matches!(third, Err(ControlError::InviteUsedUp)));
    // Expiry is checked against the time passed in.
    let later = store
        .create_invite(room.id.clone(), invite_new(None), Actor::Operator, 0)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem(later.code, "C".into(), None, 60_000).await,
        Err(ControlError::InviteExpired)
    ));
}

async fn a_live_role_outranks_every_older_token_across_redemptions(store: Store) {
    let room = store
        .create_room(room_new("t"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let invite = |role| NewInvite {
        role,
        ..invite_new(None)
    };
    let moderators = store
        .create_invite(
            room.id.clone(),
            invite(Role::Moderator),
            Actor::Operator,
            1_000,
        )
        .await
        .unwrap();
    let public = store
        .create_invite(
            room.id.clone(),
            invite(Role::Listener),
            Actor::Operator,
            1_000,
        )
        .await
        .unwrap();
    let first = store
        .redeem(moderators.code.clone(), "Ada".into(), None, 2_000)
        .await
        .unwrap();
    let (id, secret) = (first.participant_id.clone(), first.new_identity.clone());
    let standing = || store.standing(room.id.clone(), id.clone());
    store
        .write_room(
            room.id.clone(),
            RoomWrite {
                records: vec![RoomRecord::Role {
                    participant: id.clone(),
                    role: Role::Listener,
                }],
                webhooks: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        standing().await.unwrap().role(first.role, first.generation),
        Role::Listener
    );
    // Redeeming the public link again neither resets the live role for the old token nor
    // gives the new one more than the room left.
    let again = store
        .redeem(public.code.clone(), "Ada".into(), secret.clone(), 3_000)
        .await
        .unwrap();
    assert!(again.generation > first.generation);
    assert_eq!(again.role, Role::Listener);
    let now = standing().await.unwrap();
    assert_eq!(now.role(first.role, first.generation), Role::Listener);
    assert_eq!(now.role(again.role, again.generation), Role::Listener);
    // A moderator link redeemed on purpose grants the role to the new token only.
    let promoted = store
        .redeem(moderators.code.clone(), "Ada".into(), secret.clone(), 4_000)
        .await
        .unwrap();
    assert_eq!(promoted.role, Role::Moderator);
    let now = standing().await.unwrap();
    assert_eq!(
        now.role(promoted.role, promoted.generation),
        Role::Moderator
    );
    assert_eq!(now.role(first.role, first.generation), Role::Listener);
    // A role the room gave is kept when a lower link is redeemed again.
    store
        .write_room(
            room.id.clone(),
            RoomWrite {
                records: vec![RoomRecord::Role {
                    participant: id.clone(),
                    role: Role::Speaker,
                }],
                webhooks: Vec::new(),
            },
        )
        .await
        .unwrap();
    let lower = store
        .redeem(public.code.clone(), "Ada".into(), secret, 5_000)
        .await
        .unwrap();
    assert_eq!(lower.role, Role::Speaker);
    let now = standing().await.unwrap();
    assert_eq!(now.role(promoted.role, promoted.generation), Role::Speaker);
    assert_eq!(now.role(lower.role, lower.generation), Role::Speaker);
}

async fn pages_follow_the_cursor(store: Store) {
    for i in 0..5 {
        store
            .create_room(room_new(&format!("r{i}")), Actor::Operator, i)
            .await
            .unwrap();
    }
    let first = store
        .list_rooms(PageRequest {
            after: None,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let second = store
        .list_rooms(PageRequest {
            after: first.next_cursor,
            limit: 2,
        })
        .await
        .unwrap();
    let third = store
        .list_rooms(PageRequest {
            after: second.next_cursor,
            limit: 2,
        })
        .await
        .unwrap();
    let titles: Vec<_> = [first, second, third]
        .into_iter()
        .flat_map(|p| p.items)
        .map(|r| r.title)
        .collect();
    assert_eq!(titles, ["r0", "r1", "r2", "r3", "r4"]);
}

/// Many redemptions of a k-use invite race through two pools on one PostgreSQL database (two
/// nodes, as far as the database can tell): exactly k are counted, every other one is told
/// `InviteUsedUp`, and the audit log has exactly k redemptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_counts_uses_exactly_under_racing_nodes() {
    const USES: u32 = 7;
    const RACERS: usize = 60;
    let url = Postgres::shared().fresh_database();
    let nodes = [
        Store::connect_postgres(&url, 16).await.unwrap(),
        Store::connect_postgres(&url, 16).await.unwrap(),
    ];
    let room = nodes[0]
        .create_room(room_new("race"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let created = nodes[1]
        .create_invite(
            room.id.clone(),
            invite_new(Some(USES)),
            Actor::Operator,
            1_000,
        )
        .await
        .unwrap();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, code, start) = (nodes[i % 2].clone(), created.code.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.redeem(code, format!("p{i}"), None, 2_000).await
            })
        })
        .collect();
    let (mut counted, mut used_up) = (0, 0);
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => counted += 1,
            Err(ControlError::InviteUsedUp) => used_up += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((counted, used_up), (USES as usize, RACERS - USES as usize));
    let listed = nodes[0]
        .list_invites(
            room.id.clone(),
            PageRequest {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.items[0].uses, USES);
    let events = nodes[1]
        .list_events(
            room.id,
            PageRequest {
                after: None,
                limit: 200,
            },
        )
        .await
        .unwrap();
    let redeemed = events
        .items
        .iter()
        .filter(|e| e.action == "invite.redeemed")
        .count();
    assert_eq!(redeemed, USES as usize);
}

/// Holds `LOCK TABLE rooms` in an open transaction on its own connection, as an operator's
/// long migration or a forgotten `psql` session would.
async fn lock_rooms(url: &str) -> tokio_postgres::Client {
    let (locker, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

/// A write stuck behind somebody's lock is cancelled after the statement timeout and answered
/// `Unavailable` (503 `store_unavailable` over HTTP), rather than holding the request and a
/// pooled connection for as long as the lock lasts; the store works again once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_statement_behind_a_lock_gives_up_after_the_statement_timeout() {
    let url = Postgres::shared().fresh_database();
    let timeout = std::time::Duration::from_millis(300);
    let store = Store::connect_postgres_tls(&url, 4, None, timeout)
        .await
        .unwrap();
    let locker = lock_rooms(&url).await;
    let started = std::time::Instant::now();
    let refused = store
        .create_room(room_new("Behind a lock"), Actor::Operator, 1_000)
        .await;
    let waited = started.elapsed();
    assert!(
        matches!(&refused, Err(ControlError::Unavailable(why)) if why.contains("statement timeout")),
        "{refused:?}"
    );
    assert!(
        waited >= timeout && waited < timeout * 10,
        "cancelled by the server after its statement timeout: {waited:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    let room = store
        .create_room(room_new("After the lock"), Actor::Operator, 2_000)
        .await
        .unwrap();
    assert_eq!(store.room(room.id).await.unwrap().title, "After the lock");
}

/// A server that stops answering in the middle of a statement (SIGSTOP: the connection stays
/// open, nothing comes back, and its own statement timeout cannot fire) is given up by the
/// store a few seconds after the statement timeout, as `Unavailable`; once the server answers
/// again, so does the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_server_that_stops_answering_mid_statement_is_given_up() {
    let server = Postgres::start();
    let url = server.fresh_database();
    let timeout = std::time::Duration::from_millis(500);
    let store = Store::connect_postgres_tls(&url, 4, None, timeout)
        .await
        .unwrap();
    let locker = lock_rooms(&url).await;
    let call = tokio::spawn({
        let store = store.clone();
        async move {
            let started = std::time::Instant::now();
            let answer = store
                .create_room(room_new("In flight"), Actor::Operator, 1_000)
                .await;
            (answer, started.elapsed())
        }
    });
    // The store's statement is in flight, waiting on the lock: now the server stops.
    loop {
        let waiting: i64 = locker
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.pause();
    let (answer, waited) = call.await.unwrap();
    server.resume();
    assert!(
        matches!(&answer, Err(ControlError::Unavailable(why)) if why.contains("did not answer")),
        "{answer:?}"
    );
    assert!(
        waited > timeout && waited < timeout + std::time::Duration::from_secs(8),
        "given up a few seconds after the statement timeout: {waited:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    let room = store
        .create_room(room_new("Answered again"), Actor::Operator, 2_000)
        .await
        .unwrap();
    assert_eq!(store.room(room.id).await.unwrap().title, "Answered again");
}
mod listen_links;
mod recording_policy;
mod room_webhooks;
