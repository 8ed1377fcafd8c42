//! Listen links in the store, on both engines: made, listed, revoked (once in the audit log),
//! opened while valid, and refused alike when unknown or revoked.

use super::super::super::{ControlError, ListenCode, NewListenLink};
use super::{Actor, PageRequest, Store, postgres_store, room_new};

on_both_engines!(listen_links_open_until_revoked_expired_or_ended);

async fn listen_links_open_until_revoked_expired_or_ended(store: Store) {
    let room = store
        .create_room(room_new("Public"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let other = store
        .create_room(room_new("Other"), Actor::Operator, 1_000)
        .await
        .unwrap();
    let forever = store
        .create_listen_link(
            room.id.clone(),
            NewListenLink {
                label: Some("newsletter".into()),
                expires_in_secs: None,
            },
            Actor::Operator,
            2_000,
        )
        .await
        .unwrap();
    let brief = store
        .create_listen_link(
            room.id.clone(),
            NewListenLink {
                label: None,
                expires_in_secs: Some(60),
            },
            Actor::Operator,
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(brief.link.expires_at_ms, Some(62_000));

    let (opened_room, opened) = store
        .open_listen_link(forever.code.clone(), 3_000)
        .await
        .unwrap();
    assert_eq!(opened_room.title, "Public");
    assert_eq!(opened, forever.link);
    assert_eq!(opened.label.as_deref(), Some("newsletter"));
    assert!(
        store
            .open_listen_link(brief.code.clone(), 61_999)
            .await
            .is_ok()
    );
    assert!(matches!(
        store.open_listen_link(brief.code.clone(), 62_000).await,
        Err(ControlError::ListenLinkExpired)
    ));
    assert!(matches!(
        store.open_listen_link(ListenCode::generate(), 3_000).await,
        Err(ControlError::ListenLinkInvalid)
    ));

    let page = PageRequest {
        after: None,
        limit: 1,
    };
    let first = store
        .list_listen_links(room.id.clone(), page)
        .await
        .unwrap();
    assert_eq!(first.items, vec![forever.link.clone()]);
    let rest = store
        .list_listen_links(
            room.id.clone(),
            PageRequest {
                after: first.next_cursor,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items, vec![brief.link.clone()]);
    assert!(rest.next_cursor.is_none());
    let others = store
        .list_listen_links(other.id.clone(), page)
        .await
        .unwrap();
    assert!(others.items.is_empty());

    // Another room's link cannot be revoked through this room.
    assert!(matches!(
        store
            .revoke_listen_link(
                other.id.clone(),
                forever.link.id.clone(),
                Actor::Operator,
                4_000
            )
            .await,
        Err(ControlError::ListenLinkNotFound)
    ));
    for _ in 0..2 {
        let revoked = store
            .revoke_listen_link(
                room.id.clone(),
                forever.link.id.clone(),
                Actor::Operator,
                4_000,
            )
            .await
            .unwrap();
        assert!(revoked.revoked);
    }
    assert!(matches!(
        store.open_listen_link(forever.code.clone(), 5_000).await,
        Err(ControlError::ListenLinkInvalid)
    ));
    let events = store
        .list_events(
            room.id.clone(),
            PageRequest {
                after: None,
                limit: 50,
            },
        )
        .await
        .unwrap();
    let actions: Vec<&str> = events.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "listen_link.created")
            .count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "listen_link.revoked")
            .count(),
        1,
        "revoked once in the log: {actions:?}"
    );

    // An ended room's links stop, and it takes no new ones.
    store
        .end_room(room.id.clone(), Actor::Operator, 6_000, None, Vec::new())
        .await
        .unwrap();
    assert!(matches!(
        store.open_listen_link(brief.code.clone(), 7_000).await,
        Err(ControlError::RoomEnded)
    ));
    assert!(matches!(
        store
            .create_listen_link(
                room.id.clone(),
                NewListenLink::default(),
                Actor::Operator,
                7_000
            )
            .await,
        Err(ControlError::RoomEnded)
    ));
    assert!(matches!(
        store
            .create_listen_link(
                super::super::super::RoomId::generate(),
                NewListenLink::default(),
                Actor::Operator,
                7_000
            )
            .await,
        Err(ControlError::RoomNotFound)
    ));
}
