//! The PostgreSQL engine's listen links (a room's public broadcast): make, list, revoke,
//! open. Locks in the usual order (the room, then the link). The rules are
//! `control::listen_link`'s; only SQL here.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::super::super::listen_link::{self, CreatedListenLink, ListenCode, NewListenLink};
use super::super::super::{Actor, ControlError, ListenLink, ListenLinkId, Page, PageRequest};
use super::super::super::{Room, RoomId};
use super::super::rules;
use super::{PgStore, Result, audit, room_by_id, room_page};

const COLUMNS: &str = "id, room_id, label, expires_at, revoked_at, created_at";

fn from_row(r: &Row, at: usize) -> Result<ListenLink> {
    Ok(ListenLink {
        id: ListenLinkId::from_trusted(r.try_get(at)?),
        room_id: RoomId::from_trusted(r.try_get(at + 1)?),
        label: r.try_get(at + 2)?,
        expires_at_ms: r.try_get(at + 3)?,
        revoked: r.try_get::<_, Option<i64>>(at + 4)?.is_some(),
        created_at_ms: r.try_get(at + 5)?,
    })
}

/// The link matching `condition` on `$1`, read plainly or under a row lock.
async fn link_where(
    c: &impl GenericClient,
    condition: &str,
    value: &(dyn ToSql + Sync),
    lock: &str,
) -> Result<Option<ListenLink>> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM listen_links WHERE {condition} {lock}"),
        &[value],
    )
    .await?
    .map(|r| from_row(&r, 0))
    .transpose()
}

impl PgStore {
    pub(in super::super) async fn create_listen_link(
        &self,
        room: RoomId,
        new: NewListenLink,
        actor: Actor,
        now_ms: i64,
    ) -> Result<CreatedListenLink> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let found = room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        if found.is_ended() {
            return Err(ControlError::RoomEnded);
        }
        let created = listen_link::new_listen_link(&room, &new, now_ms);
        let link = &created.link;
        tx.execute(
            "INSERT INTO listen_links (id, room_id, code_hash, label, expires_at, created_at,
                                       created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &link.id.as_str(),
                &room.as_str(),
                &&created.code.hash()[..],
                &link.label,
                &link.expires_at_ms,
                &now_ms,
                &actor.as_audit_str(),
            ],
        )
        .await?;
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
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    pub(in super::super) async fn list_listen_links(
        &self,
        room: RoomId,
        page: PageRequest,
    ) -> Result<Page<ListenLink>> {
        let c = self.client().await?;
        let rows = room_page(&c, "listen_links", COLUMNS, &room, page).await?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, from_row(r, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::paginate(rows, page.limit))
    }

    pub(in super::super) async fn revoke_listen_link(
        &self,
        room: RoomId,
        id: ListenLinkId,
        actor: Actor,
        now_ms: i64,
    ) -> Result<ListenLink> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        room_by_id(&tx, &room, "FOR SHARE")
            .await?
            .ok_or(ControlError::RoomNotFound)?;
        let mut found = link_where(&tx, "id = $1", &id.as_str(), "FOR UPDATE")
            .await?
            .filter(|l| l.room_id == room)
            .ok_or(ControlError::ListenLinkNotFound)?;
        if !found.revoked {
            tx.execute(
                "UPDATE listen_links SET revoked_at = $2 WHERE id = $1",
                &[&id.as_str(), &now_ms],
            )
            .await?;
            let detail = serde_json::json!({});
            let target = Some(id.as_str());
            audit(
                &tx,
                &room,
                &actor,
                "listen_link.revoked",
                target,
                detail,
                now_ms,
            )
            .await?;
            found.revoked = true;
        }
        tx.commit().await?;
        Ok(found)
    }

    pub(in super::super) async fn open_listen_link(
        &self,
        code: ListenCode,
        now_ms: i64,
    ) -> Result<(Room, ListenLink)> {
        let c = self.client().await?;
        let link = link_where(&c, "code_hash = $1", &&code.hash()[..], "")
            .await?
            .ok_or(ControlError::ListenLinkInvalid)?;
        let room = room_by_id(&c, &link.room_id, "").await?;
        listen_link::check_open(&link, room.as_ref(), now_ms)?;
        Ok((room.ok_or(ControlError::ListenLinkInvalid)?, link))
    }
}
