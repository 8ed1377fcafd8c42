//! Control messages into the core: offers (a new connection, or a renegotiation of one),
//! permissions, closes, statistics, forgotten sources. Opening and closing a connection touch
//! the routes, the room and the timers together, so they live here, in one place.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rtc::crypto::RTCCryptoProvider;
use rtc::sansio::Protocol;

use super::super::answer::Plan;
use super::super::engine::{self, AnswerSetup, Answered};
use super::super::offer::Offer;
use super::super::red::History;
use super::super::srtp::{KeyTap, Lean};
use super::super::{MediaError, random_alnum, random_u32};
use super::lean_link::{self, LeanLocal};
use super::room::Room;
use super::sansio::Core;
use super::transport::{Link, OutSlot, Transport, queue_writes};
use super::{ConnKey, Control, Egress, Now, Report, RoomRef, SourceId, WorkerStats};
use crate::control::ParticipantId;

/// Connections this worker closed on its own, remembered so a late offer for one is refused.
pub(super) const RETIRED_KEYS: usize = 1024;

/// What an offer asks for, besides the SDP.
struct Placement {
    room: RoomRef,
    participant: ParticipantId,
    on_stage: bool,
    may_send: bool,
}

impl<E: Egress> Core<E> {
    /// One control message. `Stop` is the shell's; here it does nothing.
    pub fn handle_control(&mut self, now: Now, command: Control) {
        if matches!(
            command,
            Control::Offer { .. } | Control::Permission { .. } | Control::RelayIn { .. }
        ) {
            // A handshake, or audio, is about to start.
            self.activity.mark(now.at);
        }
        match command {
            Control::Offer {
                key,
                room,
                participant,
                offer,
                on_stage,
                may_send,
                reply,
            } => {
                let placement = Placement {
                    room,
                    participant,
                    on_stage,
                    may_send,
                };
                let _ = reply.send(self.offer(key, placement, *offer, now));
            }
            Control::Permission { key, may_send } => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.may_send = may_send;
                }
            }
            Control::Close { key } => self.close(key, false, now),
            Control::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Control::Forget { room, source } => self.forget(room, source, now),
            Control::RelayIn { room, link } => self.relay_in_open(room, *link),
            Control::RelayInClose { link } => self.relay_in_close(link, now),
            Control::Stop => {}
        }
    }

    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            connections: self.conns.len(),
            connected: self.conns.values().filter(|c| c.connected).count(),
            rooms: self.rooms.len(),
            lean: self
                .conns
                .values()
                .filter(|c| c.lean.is_ready() || (c.connected && matches!(c.pc, Link::Lean(_))))
                .count(),
            lean_off: self
                .conns
                .values()
                .filter(|c| matches!(c.lean, Lean::Off))
                .count(),
        }
    }

    /// Answers an offer; the answer's SDP, or why not.
    fn offer(
        &mut self,
        key: ConnKey,
        placement: Placement,
        offer: Offer,
        now: Now,
    ) -> Result<String, MediaError> {
        let existed = self.conns.contains_key(&key);
        if !existed && self.retired.contains(&key) {
            // Closed here (its peer went away) while this offer was on its way; the hub
            // forgets the key when our report arrives, and the next offer gets a fresh
            // connection.
            return Err(MediaError::new(
                "media_unavailable",
                "the connection was just closed; offer again",
            ));
        }
        let (room_id, who) = (placement.room.id.clone(), placement.participant.clone());
        // An offer from a new peer connection (the page was reloaded, the app restarted)
        // carries new ICE credentials: that is a new connection, not a renegotiation of the
        // old one, which is closed.
        let restarted = existed
            && self
                .conns
                .get(&key)
                .is_some_and(|c| c.remote_ufrag != ice_ufrag(&offer.description.sdp));
        if restarted {
            self.close(key, false, now);
        }
        let existed = existed && !restarted;
        // `rtc` parses the offer: a panic there refuses this offer and nothing else.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if existed {
                self.renegotiate(key, offer, placement.on_stage, placement.may_send, now)
            } else {
                self.open(key, placement, offer, now)
            }
        }))
        .unwrap_or_else(|_| {
            self.counters.drops.panicked.inc();
            tracing::error!(conn = %key, "applying an offer panicked; it is refused");
            Err(anyhow::anyhow!("the offer made the WebRTC library fail"))
        });
        if result.is_err() && !existed {
            // Nothing was kept; let the hub forget the placement, and refuse a re-offer that
            // still carries this key (the hub will give the next one a new key).
            self.retire(key);
            let _ = self.links.reports.send(Report::Closed {
                key,
                room: room_id,
                participant: who,
            });
        }
        let result = result.map_err(|e| {
            tracing::debug!(conn = %key, error = %e, "offer refused");
            MediaError::new(
                "invalid_sdp",
                format!("the offer could not be applied: {e}"),
            )
        });
        if result.is_ok() {
            self.guarded(key, now, |core| core.drain(key, now));
        }
        result
    }

    /// A new connection's ICE credentials (ufrag, password): random, or fixed by a test.
    fn credentials(&self) -> (String, String) {
        #[cfg(any(test, feature = "fuzzing"))]
        if let Some(fixed) = &self.fixed_credentials {
            return fixed.clone();
        }
        (random_alnum(16), random_alnum(32))
    }

    fn open(
        &mut self,
        key: ConnKey,
        placement: Placement,
        offer: Offer,
        now: Now,
    ) -> anyhow::Result<String> {
        let Placement {
            room,
            participant,
            on_stage,
            may_send,
        } = placement;
        let (ufrag, password) = self.credentials();
        let tap = KeyTap::new(Arc::clone(&self.crypto));
        let remote_ufrag = ice_ufrag(&offer.description.sdp);
        let setup = &self.setup;
        let (pc, sdp, slots, inbound, mic_ssrc, level_id) = match &setup.lean {
            Some(shared) => {
                let plan = Plan::new(&offer.sections, setup.slots, on_stage);
                let local = LeanLocal {
                    key,
                    shared,
                    ufrag: &ufrag,
                    password: &password,
                    advertised: setup.advertised,
                    advertised_tcp: setup.advertised_tcp,
                    red: setup.red > 0,
                };
                let timeouts = (setup.ice_disconnected, setup.ice_failed);
                let (conn, answered, slots) =
                    lean_link::open(&local, shared, &offer, &plan, timeouts, now.at)?;
                (
                    Link::Lean(Box::new(conn)),
                    answered.sdp,
                    slots,
                    answered.inbound,
                    answered.mic_ssrc,
                    answered.level_id,
                )
            }
            None => {
                let (pc, answered) = engine::answer(
                    AnswerSetup {
                        certificate: setup.certificate.clone(),
                        ufrag: ufrag.clone(),
                        password: password.clone(),
                        ice_disconnected: setup.ice_disconnected,
                        ice_failed: setup.ice_failed,
                        crypto: Arc::clone(&tap) as Arc<dyn RTCCryptoProvider>,
                        ssrcs: (0..setup.slots).map(|_| random_u32()).collect(),
                        stream: format!("stoa-{key}"),
                        advertised: setup.advertised,
                        advertised_tcp: setup.advertised_tcp,
                        red: setup.red > 0,
                    },
                    offer,
                    on_stage,
                    now.at,
                )?;
                let Answered {
                    sdp,
                    slots,
                    inbound,
                    ..
                } = answered;
                let slots = slots.into_iter().map(OutSlot::new).collect();
                (Link::Rtc(Box::new(pc)), sdp, slots, inbound, None, None)
            }
        };
        let receiving = inbound.is_some() && on_stage;
        let source = SourceId(setup.sources.fetch_add(1, Ordering::Relaxed));
        let entry = self
            .rooms
            .entry(room.key)
            .or_insert_with(|| Room::new(&room, setup.slots));
        self.routes.add_ufrag(ufrag.clone(), key);
        let mut conn = Box::new(Transport {
            pc,
            room: room.key,
            participant,
            ufrag,
            password,
            source,
            slots,
            receiving,
            may_send,
            inbound_ssrc: mic_ssrc,
            inbound_level_id: level_id,
            inbound,
            history: History::default(),
            voice_bit_seen: false,
            remote_ufrag,
            connected: false,
            answered_at: Some(now.at),
            addrs: Vec::new(),
            dest: None,
            tap,
            lean: Lean::default(),
            scheduled: None,
        });
        entry.add_member(key, &*conn as *const Transport as usize);
        conn.hear(entry.selector.slots_for(source));
        entry.tap.name(source.0, &conn.participant);
        conn.schedule(key, &mut self.timers, now.at);
        tracing::debug!(worker = setup.index, conn = %key, room = %room.id, participant = %conn.participant, on_stage, slots = conn.slots.len(), "media connection opened");
        self.conns.insert(key, conn);
        self.counters.connections.set(self.conns.len() as i64);
        Ok(sdp)
    }

    fn renegotiate(
        &mut self,
        key: ConnKey,
        offer: Offer,
        on_stage: bool,
        may_send: bool,
        now: Now,
    ) -> anyhow::Result<String> {
        let conn = self
            .conns
            .get_mut(&key)
            .ok_or_else(|| anyhow::anyhow!("no such connection"))?;
        let pc = match &mut conn.pc {
            Link::Rtc(pc) => pc,
            Link::Lean(_) => {
                let shared = self
                    .setup
                    .lean
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no lean configuration"))?;
                // Renegotiations are rare: the credentials are copied for the answer.
                let (ufrag, password) = (conn.ufrag.clone(), conn.password.clone());
                let local = LeanLocal {
                    key,
                    shared,
                    ufrag: &ufrag,
                    password: &password,
                    advertised: self.setup.advertised,
                    advertised_tcp: self.setup.advertised_tcp,
                    red: self.setup.red > 0,
                };
                let sdp =
                    reanswer_lean(conn, &local, &offer, self.setup.slots, on_stage, may_send)?;
                if let Some(room) = self.rooms.get(&conn.room) {
                    conn.hear(room.selector.slots_for(conn.source));
                }
                return Ok(sdp);
            }
        };
        let answered = engine::reanswer(pc, offer, self.setup.slots, on_stage, now.at)?;
        conn.receiving = answered.inbound.is_some() && on_stage;
        conn.may_send = may_send;
        conn.inbound = answered.inbound;
        // A slot that stays on its sender keeps its rewriter (the client's stream continues);
        // one that moved or is new starts afresh.
        let mut old = std::mem::take(&mut conn.slots);
        conn.slots = answered
            .slots
            .iter()
            .map(
                |&sent| match old.iter().position(|o| o.sender == Some(sent.sender)) {
                    Some(at) => {
                        let mut kept = old.swap_remove(at);
                        kept.payload_type = sent.payload_type;
                        kept.red_payload_type = sent.red_payload_type;
                        kept
                    }
                    None => OutSlot::new(sent),
                },
            )
            .collect();
        if let Some(room) = self.rooms.get(&conn.room) {
            conn.hear(room.selector.slots_for(conn.source));
        }
        Ok(answered.sdp)
    }

    /// Remembers a key this worker gave up on its own, so a late offer for it is refused.
    fn retire(&mut self, key: ConnKey) {
        if self.retired.len() == RETIRED_KEYS {
            self.retired.pop_front();
        }
        self.retired.push_back(key);
    }

    /// Frees everything of one connection. `report`: the worker decided this (the peer went
    /// away), so the rest of the server must be told.
    pub(super) fn close(&mut self, key: ConnKey, report: bool, now: Now) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        tracing::debug!(worker = self.setup.index, conn = %key, participant = %conn.participant, by_peer = report, "media connection closed");
        // After a panic the connection may be broken inside: closing it must not panic again.
        if let Link::Rtc(pc) = &mut conn.pc {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let _ = pc.close();
                queue_writes(pc, &mut conn.dest, &mut self.egress);
            }));
        }
        let egress = &mut self.egress;
        self.routes
            .remove(key, &conn.ufrag, &conn.addrs, |from| egress.close_tcp(from));
        self.counters.connections.set(self.conns.len() as i64);
        let room_id = self.rooms.get(&conn.room).map(|r| r.id.clone());
        self.relay_forget(conn.room, conn.source, None);
        if let Some(room) = self.rooms.get_mut(&conn.room) {
            room.tap.forget(conn.source.0);
            room.remove_member(key);
            let mask = room.workers.load(Ordering::Relaxed);
            for (index, peer) in self.links.peer_controls.iter().enumerate() {
                if index != self.setup.index && mask & (1 << index) != 0 {
                    // The control queue, not fan-out: this must not be lost to a full queue.
                    let _ = peer.send(Control::Forget {
                        room: conn.room,
                        source: conn.source,
                    });
                }
            }
            let relayed_here = self.relay_in.values().any(|r| r.room.key == conn.room);
            if room.members.is_empty() && !relayed_here {
                let id = room.id.clone();
                let had_levels = !room.last_levels.is_empty();
                self.rooms.remove(&conn.room);
                if had_levels {
                    let _ = self.links.reports.send(Report::Levels {
                        worker: self.setup.index,
                        room: id,
                        levels: Vec::new(),
                        heard: now.at,
                    });
                }
            } else {
                self.forget(conn.room, conn.source, now);
            }
        }
        if report {
            self.retire(key);
        }
        if report && let Some(room) = room_id {
            let _ = self.links.reports.send(Report::Closed {
                key,
                room,
                participant: conn.participant,
            });
        }
    }
}

/// A lean connection's renegotiation (onto the stage and back): the same credentials, slots
/// and SSRCs, the plan's directions and the microphone from the new offer. An offer that
/// changes how many sections receive is refused: the lean connection keeps its slots.
fn reanswer_lean(
    conn: &mut Transport,
    local: &LeanLocal<'_>,
    offer: &Offer,
    slots: usize,
    on_stage: bool,
    may_send: bool,
) -> anyhow::Result<String> {
    let plan = Plan::new(&offer.sections, slots, on_stage);
    if plan.slot_count() != conn.slots.len() {
        anyhow::bail!(
            "lean transport: a renegotiation must keep the receiving sections ({} slots \
             before, {} offered)",
            conn.slots.len(),
            plan.slot_count()
        );
    }
    let ssrcs: Vec<u32> = conn.slots.iter().map(|s| s.rewriter.ssrc()).collect();
    let answered = lean_link::answer(local, offer, &plan, &ssrcs)?;
    for (slot, &(pt, red)) in conn.slots.iter_mut().zip(&answered.payload_types) {
        slot.payload_type = pt;
        slot.red_payload_type = red;
    }
    if answered.mic_ssrc != conn.inbound_ssrc {
        // A new stream numbers its timestamps afresh.
        conn.history.clear();
    }
    conn.inbound_ssrc = answered.mic_ssrc;
    conn.inbound_level_id = answered.level_id;
    conn.receiving = answered.inbound.is_some() && on_stage;
    conn.may_send = may_send;
    conn.inbound = answered.inbound;
    if let Link::Lean(lean) = &mut conn.pc {
        lean.set_microphone(answered.mic_ssrc.filter(|_| conn.receiving));
    }
    Ok(answered.sdp)
}

/// The first `a=ice-ufrag:` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}
