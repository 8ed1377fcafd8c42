//! Fan-out to sockets: each event is encoded once and the same bytes are queued to everyone
//! its audience names; replies, snapshots and closes go to one socket. Never waits: a full
//! queue marks the socket as too slow, and the task lets it go (`drop_slow`).

use super::task::RoomTask;
use super::{Outbound, Outbox};
use crate::control::{ParticipantId, Role};
use crate::room::{Audience, AudiencePage, CloseReason, ConnectionId, Event, Refusal, Snapshot};
use crate::wire::{
    AudiencePageMessage, MediaInfo, RequestId, ServerMessage, SnapshotMessage, Text, Welcome,
    close_code, event_message,
};

/// A participant's signaling socket, as the room reaches it.
pub(super) struct Conn {
    pub id: ConnectionId,
    pub outbox: Outbox,
}

impl Conn {
    /// Queues without waiting: a full queue marks the socket as too slow.
    fn push(&self, text: &Text) {
        let _ = self.outbox.try_send(Outbound::Text(text.clone()));
    }
}

/// The WebSocket close code for each reason the room closes a socket.
fn close_code_for(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Left => close_code::LEFT,
        CloseReason::Replaced => close_code::REPLACED,
        CloseReason::Removed => close_code::REMOVED,
        CloseReason::Banned => close_code::BANNED,
        CloseReason::RoomEnded => close_code::ROOM_ENDED,
    }
}

impl RoomTask {
    /// Numbers each event and queues it to its audience, resolved against the live roles.
    pub(super) fn deliver(&mut self, events: Vec<Event>) {
        for event in events {
            self.seq += 1;
            let text: Text = event_message(self.seq, &event.kind).into();
            match event.audience {
                Audience::Everyone => {
                    for conn in self.connections.values() {
                        conn.push(&text);
                    }
                }
                Audience::Moderators | Audience::ModeratorsAnd(_) => {
                    for id in self.state.moderators() {
                        if let Some(conn) = self.connections.get(id) {
                            conn.push(&text);
                        }
                    }
                    if let Audience::ModeratorsAnd(id) = &event.audience
                        && self
                            .state
                            .participant(id)
                            .is_none_or(|p| p.role != Role::Moderator)
                        && let Some(conn) = self.connections.get(id)
                    {
                        conn.push(&text);
                    }
                }
                Audience::Only(id) => self.send_to(&id, text),
            }
        }
    }

    pub(super) fn send_to(&self, participant: &ParticipantId, text: Text) {
        if let Some(conn) = self.connections.get(participant) {
            conn.push(&text);
        }
    }

    /// A refused request's error, to the socket that asked; counted like every signaling error.
    pub(super) fn refuse(
        &self,
        participant: &ParticipantId,
        request_id: Option<&RequestId>,
        refusal: Refusal,
    ) {
        self.deps.metrics.signal_error(refusal.code());
        let text = ServerMessage::Error {
            id: request_id,
            code: refusal.code(),
            message: refusal.message(),
        }
        .to_json();
        self.send_to(participant, text.into());
    }

    /// The first message of a socket that joined or resumed, so it is never refused for lack
    /// of room in the queue.
    pub(super) fn welcome(
        &self,
        outbox: &Outbox,
        request_id: Option<&RequestId>,
        resume_token: &str,
        snapshot: &Snapshot,
        reconnect_media: bool,
    ) {
        let welcome = Welcome {
            id: request_id,
            room_title: &self.title,
            seq: self.seq,
            resume_token,
            resume_grace_secs: self.deps.settings.resume_grace_secs,
            media: MediaInfo {
                slots: self.deps.media.slots(),
                reconnect: reconnect_media,
            },
            snapshot,
        }
        .to_json();
        let _ = outbox.try_send(Outbound::Text(welcome.into()));
    }

    pub(super) fn refresh_snapshot(&self, participant: &ParticipantId) {
        if let Some(snapshot) = self.snapshot_for(participant) {
            let text = SnapshotMessage {
                seq: self.seq,
                snapshot: &snapshot,
            }
            .to_json();
            self.send_to(participant, text.into());
        }
    }

    /// The coalesced audience size, to everyone.
    pub(super) fn send_audience_count(&self, count: u32, anonymous: u32) {
        let text: Text = ServerMessage::AudienceCount { count, anonymous }
            .to_json()
            .into();
        for conn in self.connections.values() {
            conn.push(&text);
        }
    }

    pub(super) fn send_audience_page(
        &self,
        participant: &ParticipantId,
        request_id: Option<&RequestId>,
        after: Option<ParticipantId>,
        limit: usize,
    ) {
        let page: AudiencePage = self.state.audience_page(after.as_ref(), limit);
        let text = AudiencePageMessage {
            id: request_id,
            page: &page,
        }
        .to_json();
        self.send_to(participant, text.into());
    }

    /// Closes the socket if it is still the participant's current one; an older socket (one
    /// already replaced, or gone) is left alone.
    pub(super) fn close_connection(
        &mut self,
        participant: &ParticipantId,
        connection: ConnectionId,
        reason: CloseReason,
    ) {
        if self.is_current(participant, connection)
            && let Some(conn) = self.connections.remove(participant)
        {
            let _ = conn.outbox.try_send(Outbound::Close {
                code: close_code_for(reason),
                reason: reason.code(),
            });
        }
    }
}
