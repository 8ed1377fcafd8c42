//! The bridge to media: offers go out with the participant's standing and their answers come
//! back to the socket; send rights and closes are handed over as the room decides them.
//! Media enforces them per packet on its own path; nothing here waits on it.

use std::time::Duration;

use tokio::sync::oneshot;

use super::Outbound;
use super::task::RoomTask;
use crate::control::ParticipantId;
use crate::wire::{RequestId, ServerMessage};

/// How long a socket waits for media's answer to its offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

impl RoomTask {
    /// Passes an offer to media with the participant's standing; the answer (or refusal) is
    /// sent to their socket when media has it, without holding up the room.
    pub(super) fn media_offer(
        &self,
        participant: ParticipantId,
        request_id: Option<RequestId>,
        sdp: String,
    ) {
        let (Some(p), Some(conn)) = (
            self.state.participant(&participant),
            self.connections.get(&participant),
        ) else {
            return;
        };
        if let Err(refusal) = p.may_connect_media() {
            self.refuse(&participant, request_id.as_ref(), refusal);
            return;
        }
        let (reply, answer) = oneshot::channel();
        self.deps.media.offer(
            self.state.room(),
            &participant,
            sdp,
            p.on_stage,
            p.may_send(),
            reply,
        );
        let outbox = conn.outbox.clone();
        let metrics = self.deps.metrics.clone();
        tokio::spawn(async move {
            let text = answer_text(answer, request_id.as_ref(), &metrics).await;
            let _ = outbox.try_send(Outbound::Text(text.into()));
        });
    }

    pub(super) fn media_send_permission(&self, participant: &ParticipantId, allowed: bool) {
        self.deps
            .media
            .set_send_permission(self.state.room(), participant, allowed);
    }

    pub(super) fn media_close(&self, participant: &ParticipantId) {
        self.deps.media.close(self.state.room(), participant);
    }

    pub(super) fn media_close_room(&self) {
        self.deps.media.close_room(self.state.room());
    }
}

/// The message a socket gets for its offer once media has answered (or not, within
/// [`OFFER_TIMEOUT`]): `media_answer`, or `error` with media's code.
pub async fn answer_text(
    answer: oneshot::Receiver<Result<String, crate::media::MediaError>>,
    id: Option<&RequestId>,
    metrics: &crate::metrics::Metrics,
) -> String {
    match tokio::time::timeout(OFFER_TIMEOUT, answer).await {
        Ok(Ok(Ok(sdp))) => ServerMessage::MediaAnswer { id, sdp: &sdp }.to_json(),
        Ok(Ok(Err(e))) => {
            metrics.signal_error(e.code);
            ServerMessage::Error {
                id,
                code: e.code,
                message: &e.message,
            }
            .to_json()
        }
        _ => {
            metrics.signal_error("media_unavailable");
            ServerMessage::Error {
                id,
                code: "media_unavailable",
                message: "the media service did not answer; try again",
            }
            .to_json()
        }
    }
}
