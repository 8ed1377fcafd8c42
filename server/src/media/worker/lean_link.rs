//! Opening and renegotiating a lean connection (`[media] listener_transport = "lean"`): Stoa's
//! own answer from the [`Plan`], the slots with the SSRCs it announced, and the microphone as
//! the offer describes it (there is no `OnTrack`: its SSRC comes from the offer's `a=ssrc`).

use std::sync::Arc;
use std::time::Instant;

use super::super::answer::{Plan, split_sections};
use super::super::engine::{self, Inbound};
use super::super::lean::{self, LeanConnection, Shared};
use super::super::offer::Offer;
use super::super::random_u32;
use super::ConnKey;
use super::transport::OutSlot;

/// What the worker needs of a lean connection's offer and answer.
pub(super) struct LeanAnswer {
    pub sdp: String,
    pub inbound: Option<Inbound>,
    /// The microphone's SSRC and audio-level extension id, from the offer.
    pub mic_ssrc: Option<u32>,
    pub level_id: Option<u8>,
    /// Each slot's (Opus, RED) payload types as the client numbered them, in slot order.
    pub payload_types: Vec<(u8, Option<u8>)>,
}

/// What stays the same across a lean connection's negotiations.
pub(super) struct LeanLocal<'a> {
    pub key: ConnKey,
    pub shared: &'a Shared,
    pub ufrag: &'a str,
    pub password: &'a str,
    pub advertised: std::net::SocketAddr,
    pub advertised_tcp: Option<std::net::SocketAddr>,
    pub red: bool,
}

/// Answers `offer` for a lean connection whose slots send with `ssrcs` (as many as the plan
/// has slots).
pub(super) fn answer(
    local: &LeanLocal<'_>,
    offer: &Offer,
    plan: &Plan,
    ssrcs: &[u32],
) -> anyhow::Result<LeanAnswer> {
    let sdp = lean::sdp::answer(
        offer,
        plan,
        &lean::sdp::Local {
            ufrag: local.ufrag,
            password: local.password,
            fingerprint: &local.shared.fingerprint,
            candidate: local.advertised,
            tcp_candidate: local.advertised_tcp,
            slot_ssrcs: ssrcs,
            red: local.red,
            session_id: u64::from(local.key.0),
        },
    );
    let mut payload_types = vec![(0, None); plan.slot_count()];
    for (planned, offered) in plan.sections.iter().zip(&offer.sections) {
        if let (Some(slot), Some(opus)) = (planned.slot, offered.opus_pt) {
            payload_types[slot] = (opus, offered.red_pt.filter(|_| local.red));
        }
    }
    let inbound = engine::inbound_of(plan, offer, &sdp);
    let mic = plan
        .sections
        .iter()
        .zip(&offer.sections)
        .position(|(planned, _)| planned.mic);
    let mic_ssrc = mic.and_then(|index| section_ssrc(&offer.description.sdp, index));
    let level_id = mic.and_then(|index| offer.sections[index].level_id);
    if plan.receives() && mic_ssrc.is_none() {
        anyhow::bail!(
            "lean transport: the microphone's section carries no a=ssrc line, so its packets \
             could not be recognised"
        );
    }
    Ok(LeanAnswer {
        sdp,
        inbound,
        mic_ssrc,
        level_id,
        payload_types,
    })
}

/// A new lean connection answering `offer`: the connection, its answer and its slots.
pub(super) fn open(
    local: &LeanLocal<'_>,
    shared: &Arc<Shared>,
    offer: &Offer,
    plan: &Plan,
    timeouts: (std::time::Duration, std::time::Duration),
    now: Instant,
) -> anyhow::Result<(LeanConnection, LeanAnswer, Vec<OutSlot>)> {
    let remote_fingerprint = lean::offered_fingerprint(&offer.description).ok_or_else(|| {
        anyhow::anyhow!("lean transport: the offer carries no sha-256 a=fingerprint")
    })?;
    let ssrcs: Vec<u32> = (0..plan.slot_count()).map(|_| random_u32()).collect();
    let answered = answer(local, offer, plan, &ssrcs)?;
    let slots = ssrcs
        .iter()
        .zip(&answered.payload_types)
        .map(|(&ssrc, &(pt, red))| OutSlot::lean(ssrc, pt, red))
        .collect();
    let conn = LeanConnection::new(
        lean::Setup {
            shared: Arc::clone(shared),
            ufrag: local.ufrag.to_owned(),
            password: local.password.to_owned(),
            remote_fingerprint,
            slot_ssrcs: ssrcs,
            microphone: answered.mic_ssrc.filter(|_| plan.receives()),
            ice_disconnected: timeouts.0,
            ice_failed: timeouts.1,
        },
        now,
    );
    Ok((conn, answered, slots))
}

/// The first `a=ssrc:` of media section `index` of `sdp`.
fn section_ssrc(sdp: &str, index: usize) -> Option<u32> {
    let (_, sections) = split_sections(sdp);
    sections.get(index)?.iter().find_map(|line| {
        line.strip_prefix("a=ssrc:")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::section_ssrc;

    #[test]
    fn the_microphones_ssrc_is_read_from_its_own_section() {
        let sdp = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=ssrc:1234 cname:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
                   a=ssrc:99 cname:x\r\n";
        assert_eq!(section_ssrc(sdp, 0), Some(1234));
        assert_eq!(section_ssrc(sdp, 1), Some(99));
        assert_eq!(section_ssrc(sdp, 2), None);
    }
}
