//! The SQLite engine's listen links (a room's public broadcast): make, list, revoke, open.
//! The rules are `control::listen_link`'s; only SQL here.

use rusqlite::{OptionalExtension, Row, params};

use super::super::super::listen_link::{self, CreatedListenLink, ListenCode, NewListenLink};
use super::super::super::{Actor, ControlError, ListenLink, ListenLinkId, Page, PageRequest};
use super::super::super::{Room, RoomId};
use super::{Result, SqliteStore, audit, room_by_id, room_page};

const COLUMNS: &str = "id, room_id, label, expires_at, revoked_at, created_at";

fn from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<ListenLink> {
    Ok(ListenLink {
        id: ListenLinkId::from_trusted(r.get(at)?),
        room_id: RoomId::from_trusted(r.get(at + 1)?),
        label: r.get(at + 2)?,
        expires_at_ms: r.get(at + 3)?,
        revoked: r.get::<_, Option<i64>>(at + 4)?.is_some(),
        created_at_ms: r.get(at + 5)?,
    })
}

fn link_where(
    c: &rusqlite::Connection,
    condition: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<ListenLink>> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM listen_links WHERE {condition}"),
        params![value],
        |r| from_row(r, 0),
    )
    .optional()?)
}

impl SqliteStore {
    pub(in super::super) async fn create_listen_link(
        &self,
        room: RoomId,
        new: NewListenLink,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedListenLink> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let found = room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            if found.is_ended() {
                return Err(ControlError::RoomEnded);
            }
            let created = listen_link::new_listen_link(&room, &new, now_ms);
            let link = &created.link;
            tx.execute(
                "INSERT INTO listen_links (id, room_id, code_hash, label, expires_at, created_at,
                                           created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    link.id.as_str(),
                    room.as_str(),
                    &created.code.hash()[..],
                    link.label,
                    link.expires_at_ms,
                    now_ms,
                    actor.as_audit_str()
                ],
            )?;
            let detail = listen_link::created_detail(link);
            let target = Some(link.id.as_str());
            audit(
                &tx,
                &room,
                &actor,
                "listen_link.created",
                target,
                detail,
                now_ms,
            )?;
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    pub(in super::super) async fn list_listen_links(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<ListenLink>> {
        self.call(move |c| room_page(c, "listen_links", COLUMNS, &room, page, |r| from_row(r, 1)))
            .await
    }

    pub(in super::super) async fn revoke_listen_link(
        &self,
        room: RoomId,
        id: ListenLinkId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<ListenLink> {
        self.call(move |c| {
            let tx = c.transaction()?;
            room_by_id(&tx, &room)?.ok_or(ControlError::RoomNotFound)?;
            let mut found = link_where(&tx, "id = ?1", &id.as_str())?
                .filter(|l| l.room_id == room)
                .ok_or(ControlError::ListenLinkNotFound)?;
            if !found.revoked {
                tx.execute(
                    "UPDATE listen_links SET revoked_at = ?2 WHERE id = ?1",
                    params![id.as_str(), now_ms],
                )?;
                let detail = serde_json::json!({});
                audit(
                    &tx,
                    &room,
                    &actor,
                    "listen_link.revoked",
                    Some(id.as_str()),
                    detail,
                    now_ms,
                )?;
                found.revoked = true;
            }
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    pub(in super::super) async fn open_listen_link(
        &self,
        code: ListenCode,
        now_ms: i64,
    ) -> Result<(Room, ListenLink)> {
        self.call(move |c| {
            let link = link_where(c, "code_hash = ?1", &&code.hash()[..])?
                .ok_or(ControlError::ListenLinkInvalid)?;
            let room = room_by_id(c, &link.room_id)?;
            listen_link::check_open(&link, room.as_ref(), now_ms)?;
            Ok((room.ok_or(ControlError::ListenLinkInvalid)?, link))
        })
        .await
    }
}
