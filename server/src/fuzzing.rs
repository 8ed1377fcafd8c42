//! Entry points for the fuzz targets in `fuzz/`: each feeds outside bytes through the code the
//! server runs on them and checks what must hold. Not an API: nothing in the server calls it.
//!
//! Every function here panics on a broken rule (that is how libFuzzer learns of it) and returns
//! normally on input the server would refuse politely.

use std::collections::BTreeSet;

use crate::control::{ParticipantId, Role, RoomId};
use crate::room::{Actor, Command, Effect, Outcome, Participant, Presence, RoomLimits, RoomState};
use crate::wire::{ClientMessage, RequestId, ServerMessage, decode, known_types};

// ---- signaling --------------------------------------------------------------------------

/// One client → server text message, screened as a signaling session screens it: the size
/// bound, the decoder, the reply (error or ok, echoing the id), and the mapping to a room
/// command. The socket layer delivers only UTF-8 text frames, so other bytes stop here.
pub fn signal_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let max = crate::config::SignalSettings::default().max_message_bytes;
    if text.len() > max {
        return;
    }
    match decode(text) {
        Ok((id, kind, message)) => {
            assert!(
                known_types().contains(&kind),
                "decoded an unlisted type {kind}"
            );
            check_request_id(id.as_ref());
            if let Some(id) = &id {
                let reply = ServerMessage::Ok { id }.to_json();
                let echoed: serde_json::Value =
                    serde_json::from_str(&reply).expect("replies are JSON");
                let back: RequestId =
                    serde_json::from_value(echoed["id"].clone()).expect("the id reads back");
                assert_eq!(&back, id, "the reply does not echo the request id");
            }
            if let Some(command) = crate::signal::session::command_for(message.clone()) {
                assert!(
                    !matches!(
                        command,
                        Command::Join { .. }
                            | Command::Resume { .. }
                            | Command::Disconnect { .. }
                            | Command::Tick
                            | Command::SetSpeaking { .. }
                    ),
                    "a client message became a command only the server may issue: {command:?}"
                );
            } else {
                assert!(
                    matches!(
                        message,
                        ClientMessage::Join { .. }
                            | ClientMessage::Resume { .. }
                            | ClientMessage::Ping {}
                            | ClientMessage::BroadcastLink {}
                            | ClientMessage::RenewSession {}
                            | ClientMessage::ListAudience { .. }
                            | ClientMessage::MediaOffer { .. }
                            | ClientMessage::IceCandidate { .. }
                    ),
                    "a room action was dropped: {message:?}"
                );
            }
        }
        Err((id, error)) => {
            check_request_id(id.as_ref());
            let message = error.message();
            let reply = ServerMessage::Error {
                id: id.as_ref(),
                code: error.code(),
                message: &message,
            }
            .to_json();
            let parsed: serde_json::Value =
                serde_json::from_str(&reply).expect("error replies are JSON");
            assert_eq!(parsed["code"], error.code());
            // The message may quote the input (serde echoes an unknown field's name in full:
            // see fuzz/artifacts-known/), but never amplifies it.
            assert!(
                message.len() <= text.len() + 1024,
                "an error message of {} bytes for {} bytes in",
                message.len(),
                text.len()
            );
        }
    }
}

fn check_request_id(id: Option<&RequestId>) {
    if let Some(RequestId::Text(s)) = id {
        assert!(s.chars().count() <= 64, "an over-long request id passed");
    }
}

// ---- the room's state machine -----------------------------------------------------------

/// A live room driven by arbitrary commands, with every rule checked after each one.
pub struct RoomHarness {
    state: RoomState,
    now: u64,
    /// Identities banned while the room was live: none of them may come back.
    banned: BTreeSet<ParticipantId>,
    pub accepted: u64,
    pub refused: u64,
}

impl RoomHarness {
    pub fn new(max_participants: u32, max_stage: u32, resume_grace_ms: u64) -> Self {
        let room = RoomId::parse("rm_fuzzroom________").expect("a valid room id");
        let limits = RoomLimits {
            max_participants,
            max_stage,
            resume_grace_ms,
            // Small, so sequences reach it.
            webrtc_audience_cap: Some(3),
        };
        RoomHarness {
            state: RoomState::new(room, limits, 0),
            now: 0,
            banned: BTreeSet::new(),
            accepted: 0,
            refused: 0,
        }
    }

    /// Participant number `n` (a small alphabet, so commands often find their target).
    pub fn participant(n: u8) -> ParticipantId {
        ParticipantId::parse(&format!("pt_fuzz{n:0>3}_________")).expect("a valid participant id")
    }

    pub fn state(&self) -> &RoomState {
        &self.state
    }

    /// Lets time pass, then applies `command` as the room task would and checks the result.
    pub fn step(&mut self, actor: &Actor, command: Command, advance_ms: u64) {
        self.now = self.now.saturating_add(advance_ms);
        let before = self.state.clone();
        let shown = format!("{actor:?} {command:?}");
        let kind = CommandKind::of(actor, &command);
        let joining = match (&command, actor) {
            (Command::Join { role, .. }, Actor::Participant(id)) => Some((id.clone(), *role)),
            _ => None,
        };
        match self.state.apply(actor, command, self.now) {
            Err(refusal) => {
                self.refused += 1;
                assert_eq!(
                    self.state, before,
                    "{shown} was refused ({refusal:?}) but changed the room"
                );
            }
            Ok(outcome) => {
                self.accepted += 1;
                assert!(
                    !before.is_ended(),
                    "{shown} was accepted after the room ended"
                );
                self.check_permission(&before, actor, kind, &shown);
                if let Some((id, role)) = joining {
                    assert!(!self.banned.contains(&id), "banned {id} came back: {shown}");
                    let was_there = before
                        .participant(&id)
                        .is_some_and(|p| !p.expired(self.now));
                    if !was_there && role != Role::Moderator {
                        let present = before.participants().filter(|p| p.id != id).count();
                        assert!(
                            present < before.limits().max_participants as usize,
                            "{shown} let a non-moderator into a full room"
                        );
                    }
                }
                for effect in &outcome.effects {
                    if let Effect::RecordSpeakers { at_ms, .. } = effect {
                        assert!(
                            *at_ms <= self.now,
                            "{shown} put a timeline line in the future"
                        );
                    }
                    if let Effect::PersistBan { participant, .. } = effect {
                        assert_eq!(kind, CommandKind::Ban, "{shown} banned someone");
                        self.banned.insert(participant.clone());
                    }
                }
                self.check_outcome(&outcome, &shown);
            }
        }
        self.check_invariants();
    }

    /// What the product's role table allows, from the actor's live role before the command.
    fn check_permission(&self, before: &RoomState, actor: &Actor, kind: CommandKind, shown: &str) {
        let live_role = actor
            .participant()
            .and_then(|id| before.participant(id))
            .map(|p| p.role);
        match kind {
            CommandKind::SystemOnly => {
                assert_eq!(
                    actor,
                    &Actor::System,
                    "{shown}: a system command from elsewhere"
                )
            }
            CommandKind::StartRecording => match actor {
                Actor::Operator | Actor::RestModerator(_) | Actor::System => {}
                Actor::Participant(_) => assert_eq!(
                    live_role,
                    Some(Role::Moderator),
                    "{shown}: a recording started by a non-moderator"
                ),
            },
            CommandKind::Moderation | CommandKind::Ban => match actor {
                Actor::Operator | Actor::RestModerator(_) => {}
                Actor::System => panic!("{shown}: moderation by the system"),
                Actor::Participant(_) => assert_eq!(
                    live_role,
                    Some(Role::Moderator),
                    "{shown}: moderation by a non-moderator"
                ),
            },
            CommandKind::Own => {
                assert!(
                    matches!(actor, Actor::Participant(_)),
                    "{shown}: a participant's own action by {actor:?}"
                );
            }
        }
    }

    fn check_outcome(&self, outcome: &Outcome, shown: &str) {
        for event in &outcome.events {
            // Every event must render for the wire.
            let text = crate::wire::event_message(1, &event.kind);
            assert!(
                text.starts_with('{'),
                "{shown}: an event rendered as {text}"
            );
        }
        for effect in &outcome.effects {
            if let Effect::SendPermission {
                participant,
                allowed,
            } = effect
                && let Some(p) = self.state.participant(participant)
            {
                // The last word on a participant's right to send must be the live state.
                let last = outcome.effects.iter().rev().find_map(|e| match e {
                    Effect::SendPermission {
                        participant: q,
                        allowed,
                    } if q == participant => Some(*allowed),
                    _ => None,
                });
                if last == Some(*allowed) {
                    assert_eq!(
                        *allowed,
                        p.may_send(),
                        "{shown}: media told {allowed} for {participant}, but the room says {}",
                        p.may_send()
                    );
                }
                if *allowed {
                    assert!(p.role != Role::Listener, "{shown}: a listener may send");
                }
            }
        }
    }

    /// The invariants `Participant` documents, and indexes that agree with the participants
    /// (read only through the public accessors, as the room task reads them).
    fn check_invariants(&self) {
        let state = &self.state;
        let limits = state.limits();
        let mut on_stage = BTreeSet::new();
        let mut speaking = BTreeSet::new();
        let mut moderators = BTreeSet::new();
        let mut deadline: Option<u64> = None;
        for p in state.participants() {
            check_participant(p);
            if p.on_stage {
                on_stage.insert(p.id.clone());
            }
            if p.speaking {
                speaking.insert(p.id.clone());
            }
            if p.role == Role::Moderator {
                moderators.insert(p.id.clone());
            }
            if let Presence::Reconnecting { deadline_ms } = p.presence {
                deadline = Some(deadline.map_or(deadline_ms, |d| d.min(deadline_ms)));
            }
        }
        let stage: Vec<_> = state.stage().map(|p| p.id.clone()).collect();
        assert_eq!(unique(&stage), on_stage, "the stage index disagrees");
        assert!(
            stage.len() <= limits.max_stage as usize,
            "the stage is over its limit"
        );
        assert_eq!(
            unique(state.active_speakers()),
            speaking,
            "the speaker list disagrees"
        );
        let webrtc_listeners = state
            .participants()
            .filter(|p| p.role == Role::Listener && p.delivery == crate::control::Delivery::Webrtc)
            .count();
        assert_eq!(
            state.webrtc_listeners() as usize,
            webrtc_listeners,
            "the WebRTC listener count disagrees"
        );
        let mods: BTreeSet<_> = state.moderators().cloned().collect();
        assert_eq!(mods, moderators, "the moderator index disagrees");
        assert_eq!(
            state.next_deadline(),
            deadline,
            "the next deadline disagrees"
        );
        let count = state.participants().count();
        assert_eq!(state.participant_count() as usize, count);
        assert_eq!(state.audience_count() as usize, count - stage.len());
        // A participant is in exactly one place: on stage, or in the audience (one page of it).
        let audience = state.audience_page(None, usize::MAX);
        assert!(audience.next.is_none());
        let listed = unique(
            &audience
                .participants
                .iter()
                .map(|p| p.id.clone())
                .collect::<Vec<_>>(),
        );
        assert!(
            listed.is_disjoint(&on_stage),
            "someone is on stage and in the audience"
        );
        assert_eq!(listed.len() + on_stage.len(), count, "someone is nowhere");
        // Snapshots of the first few (a moderator's includes the audience) render.
        for p in state.participants().take(4) {
            let snapshot = state
                .snapshot_for(&p.id)
                .expect("a participant has a snapshot");
            let raised: Vec<_> = snapshot.raised_hands.iter().map(|v| v.id.clone()).collect();
            let hands: BTreeSet<_> = state
                .participants()
                .filter(|q| q.hand_raised)
                .map(|q| q.id.clone())
                .collect();
            assert_eq!(unique(&raised), hands, "the hand index disagrees");
            serde_json::to_string(&snapshot).expect("snapshots serialise");
        }
    }
}

fn check_participant(p: &Participant) {
    match p.role {
        Role::Speaker => assert!(p.on_stage, "a speaker off stage: {p:?}"),
        Role::Listener => assert!(!p.on_stage, "a listener on stage: {p:?}"),
        Role::Moderator => {}
    }
    if p.hand_raised || p.invited {
        assert_eq!(
            p.role,
            Role::Listener,
            "a hand or invitation on a non-listener: {p:?}"
        );
    }
    if p.delivery == crate::control::Delivery::Broadcast {
        assert_eq!(p.role, Role::Listener, "a broadcast non-listener: {p:?}");
    }
    if p.muted {
        assert!(p.on_stage, "muted off stage: {p:?}");
    }
    if p.speaking {
        assert!(p.may_send(), "speaking without the right to send: {p:?}");
    }
}

fn unique(ids: &[ParticipantId]) -> BTreeSet<ParticipantId> {
    let set: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "a duplicate in an index: {ids:?}");
    set
}

/// Who may issue a command, by the product's role table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommandKind {
    /// `Tick`, `SetSpeaking`: the server itself.
    SystemOnly,
    /// Moderators (live role) and the operator.
    Moderation,
    /// `StartRecording`: moderators, the operator, and the system (a room that records by
    /// default starts when it goes live).
    StartRecording,
    Ban,
    /// A participant about themselves.
    Own,
}

impl CommandKind {
    fn of(actor: &Actor, command: &Command) -> Self {
        match command {
            Command::LowerHand { target: Some(t) } if actor.participant() != Some(t) => {
                CommandKind::Moderation
            }
            Command::Tick | Command::SetSpeaking { .. } | Command::RecordingLost => {
                CommandKind::SystemOnly
            }
            Command::Ban { .. } => CommandKind::Ban,
            Command::InviteToStage { .. }
            | Command::CancelInvitation { .. }
            | Command::MoveToAudience { .. }
            | Command::Mute { .. }
            | Command::Remove { .. }
            | Command::Promote { .. }
            | Command::Demote { .. }
            | Command::SetRole { .. }
            | Command::End
            | Command::StopRecording => CommandKind::Moderation,
            Command::StartRecording(_) => CommandKind::StartRecording,
            Command::LowerHand { .. }
            | Command::Join { .. }
            | Command::Resume { .. }
            | Command::Disconnect { .. }
            | Command::Leave
            | Command::RaiseHand
            | Command::AcceptInvitation
            | Command::DeclineInvitation
            | Command::JoinStage
            | Command::LeaveStage
            | Command::MuteSelf
            | Command::Unmute => CommandKind::Own,
        }
    }
}

// ---- REST bodies ------------------------------------------------------------------------

/// The REST endpoints that read a body or a query string, as the fuzz input's first byte
/// picks them. `$ROOM`, `$INVITE` and `$PARTICIPANT` in the rest are replaced by a live room,
/// a working invite code and a participant of that room, so seeds can reach past the lookups.
pub const REST_ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/api/v1/rooms"),
    ("POST", "/api/v1/rooms/$ROOM/invites"),
    ("POST", "/api/v1/join"),
    ("POST", "/api/v1/rooms/$ROOM/participants/$PARTICIPANT/role"),
    ("GET", "/api/v1/rooms?"),
    ("GET", "/api/v1/rooms/$ROOM/invites?"),
    ("GET", "/api/v1/rooms/$ROOM/events?"),
    ("GET", "/api/v1/rooms/$ROOM/participants?"),
    ("DELETE", "/api/v1/rooms/$ROOM/participants/$PARTICIPANT?"),
];

/// The whole HTTP application over a private in-memory store, driven without sockets: each
/// request goes through the router, its extractors, the handler and the store, as a real one.
pub struct RestHarness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    operator_key: String,
    room: String,
    invite: String,
    participant: String,
    pub requests: u64,
}

impl RestHarness {
    pub fn new() -> Self {
        use std::sync::Arc;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let operator_key = "stoa_fuzz_operator_key_0123456789abcdef".to_owned();
        let mut config = crate::Config {
            api_key: Some(operator_key.clone()),
            demo_room: false,
            ..crate::Config::default()
        };
        // The join limit is per address and would stop the body from being read at all.
        config.limits.joins_per_minute = u32::MAX / 2;
        config.limits.join_burst = u32::MAX / 2;
        // Likewise the failed-authentication allowance: fuzz inputs present junk credentials.
        config.limits.auth_failures_per_minute = u32::MAX / 2;
        config.limits.auth_failure_burst = u32::MAX / 2;
        config.media.workers = 1;
        let (router, room, invite, participant) = runtime.block_on(async {
            let metrics = crate::metrics::Metrics::default();
            let options = crate::media::MediaOptions {
                settings: config.media.clone(),
                bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: None,
                public_ip: None,
            };
            let (media, _reports) =
                crate::media::Media::start(&options, &metrics.media).expect("media starts");
            let store = crate::control::Store::open_in_memory().expect("an in-memory store");
            let clock = crate::Clock::system();
            let now = clock.now_ms();
            let room = store
                .create_room(
                    crate::control::NewRoom {
                        title: "Fuzz".into(),
                        limits: crate::control::RoomLimits {
                            max_participants: None,
                            max_stage: None,
                            webrtc_audience_cap: None,
                        },
                        recording: Default::default(),
                    },
                    crate::control::Actor::Operator,
                    now,
                )
                .await
                .expect("a room");
            let created = store
                .create_invite(
                    room.id.clone(),
                    crate::control::NewInvite {
                        role: Role::Moderator,
                        delivery: crate::control::Delivery::Webrtc,
                        label: None,
                        max_uses: None,
                        expires_in_secs: None,
                    },
                    crate::control::Actor::Operator,
                    now,
                )
                .await
                .expect("an invite");
            let state = crate::api::AppState::new(
                store,
                clock,
                Arc::new(config),
                "http://127.0.0.1:9".to_owned(),
                crate::session::OperatorKey::new(&operator_key),
                crate::session::TokenSigner::new([7; 32]),
                metrics,
                media,
            );
            (
                crate::api::router(state),
                room.id.to_string(),
                created.code.as_str().to_owned(),
                RoomHarness::participant(1).to_string(),
            )
        });
        RestHarness {
            runtime,
            router,
            operator_key,
            room,
            invite,
            participant,
            requests: 0,
        }
    }

    /// `data[0]` picks the endpoint (and whether a content type is sent), the rest is the body
    /// or query string. Any answer is fine except a server error or a malformed problem.
    pub fn request(&mut self, data: &[u8]) {
        use tower::ServiceExt;
        let Some((&pick, rest)) = data.split_first() else {
            return;
        };
        let (method, path) = REST_ENDPOINTS[pick as usize % REST_ENDPOINTS.len()];
        let with_type = pick as usize / REST_ENDPOINTS.len() % 4 != 3;
        let text = String::from_utf8_lossy(rest)
            .replace("$ROOM", &self.room)
            .replace("$INVITE", &self.invite)
            .replace("$PARTICIPANT", &self.participant);
        let path = path
            .replace("$ROOM", &self.room)
            .replace("$PARTICIPANT", &self.participant);
        let (uri, body) = if method == "POST" {
            (path.clone(), text.into_bytes())
        } else {
            (format!("{path}{text}"), Vec::new())
        };
        // What hyper would refuse before the router ever saw it is out of scope.
        let Ok(uri) = axum::http::Uri::try_from(uri) else {
            return;
        };
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.operator_key))
            .header("content-length", body.len());
        if with_type {
            request = request.header("content-type", "application/json");
        }
        let mut request = request
            .body(axum::body::Body::from(body))
            .expect("a request");
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 1],
                40000,
            ))));
        self.requests += 1;
        let router = self.router.clone();
        self.runtime.block_on(async move {
            let response = router
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let problem = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes() == b"application/problem+json");
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("the answer is readable");
            assert!(
                !status.is_server_error(),
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            if status.is_client_error() {
                assert!(problem, "{method} {path}: {status} without problem+json");
                let value: serde_json::Value =
                    serde_json::from_slice(&body).expect("a problem is JSON");
                assert!(
                    value["code"].is_string(),
                    "a problem without a code: {value}"
                );
            }
        });
    }
}

impl Default for RestHarness {
    fn default() -> Self {
        Self::new()
    }
}

// ---- SDP offers and the media path ------------------------------------------------------
//
// Both targets drive the real media worker core (`media::worker::pair::Pair`: the core and
// browser-like `rtc` clients in memory), so what they check is what a worker runs: the routing
// by STUN USERNAME and address, the demux, the rights per packet, `rtc`'s read path and the
// forwarding.

use std::net::SocketAddr;
use std::time::Duration;

use crate::media::demux::{self, Kind};
use crate::media::engine::{OPUS_PT, RED_PT};
use crate::media::offer::check_offer;
use crate::media::worker::pair::Pair;

/// The server's ICE credentials in the harness. A worker draws them at random; fixed ones let
/// a seed carry a STUN request whose integrity checks out.
pub const SERVER_UFRAG: &str = "stoaFuzzServer01";
pub const SERVER_PWD: &str = "stoaFuzzServerPassword0123456789";
/// The browser's, as in [`BROWSER_OFFER`].
pub const BROWSER_UFRAG: &str = "Fz3q";
pub const BROWSER_PWD: &str = "fuzzBrowserPassword01234";

pub const SERVER_ADDR: SocketAddr = crate::media::worker::pair::SERVER;
/// Where the hand-played browser of [`BROWSER_OFFER`] sends from.
pub const CLIENT_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)),
    50000,
);

/// A speaker's offer as Chromium writes it for Stoa (three audio sections, the first with a
/// microphone track; every codec and extension Chromium lists, most of which the server drops).
pub const BROWSER_OFFER: &str = "v=0\r\n\
o=- 4215775240449105457 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1 2\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS 7b1bd7e4-3d5c-4a3e-9f1e-2a3c9d6e8f10\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Fz3q\r\n\
a=ice-pwd:fuzzBrowserPassword01234\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5C:1F:8E:0B:6A:3D:92:E4:11:7C:A8:4F:D2:39:66:0E:B1:C5:28:FA:43:9D:7E:10:A6:2B:E8:55:C3:07:9F:D4\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendrecv\r\n\
a=msid:7b1bd7e4-3d5c-4a3e-9f1e-2a3c9d6e8f10 0c9a6f4e-58b2-4d1a-b7e3-6f2d8c1a9e55\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:2944531805 cname:q4bVbJ2nI8pZx0mD\r\n\
a=ssrc:2944531805 msid:7b1bd7e4-3d5c-4a3e-9f1e-2a3c9d6e8f10 0c9a6f4e-58b2-4d1a-b7e3-6f2d8c1a9e55\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Fz3q\r\n\
a=ice-pwd:fuzzBrowserPassword01234\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5C:1F:8E:0B:6A:3D:92:E4:11:7C:A8:4F:D2:39:66:0E:B1:C5:28:FA:43:9D:7E:10:A6:2B:E8:55:C3:07:9F:D4\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Fz3q\r\n\
a=ice-pwd:fuzzBrowserPassword01234\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 5C:1F:8E:0B:6A:3D:92:E4:11:7C:A8:4F:D2:39:66:0E:B1:C5:28:FA:43:9D:7E:10:A6:2B:E8:55:C3:07:9F:D4\r\n\
a=setup:actpass\r\n\
a=mid:2\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n";

/// Inputs one core serves before it is built afresh, so one input's damage (a closed
/// connection, a broken SRTP context) does not shadow the next thousands, and the core's
/// memory of closed connections stays small.
const PAIR_INPUTS: u32 = 2_000;

/// Every offer into a worker core: the checks signaling makes (`check_offer`), then the core's
/// answer — a new connection, or (`data[0]` bit 1) a renegotiation of one answered from
/// [`BROWSER_OFFER`]; bit 0: on stage. An answer must come back, or a refusal with a stable
/// code; `rtc` must not panic.
pub fn sdp_offer(data: &[u8]) {
    thread_local! {
        static CORE: std::cell::RefCell<(Option<Pair>, u32)> = const {
            std::cell::RefCell::new((None, 0))
        };
    }
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // The SDP arrives inside a JSON string: always UTF-8.
    let Ok(sdp) = std::str::from_utf8(rest) else {
        return;
    };
    let on_stage = flags & 1 != 0;
    let Ok(offer) = check_offer(sdp.to_owned()) else {
        return;
    };
    CORE.with(|cell| {
        let (pair, served) = &mut *cell.borrow_mut();
        if pair.is_none() || *served >= PAIR_INPUTS {
            *pair = Some(Pair::default());
            *served = 0;
        }
        *served += 1;
        let pair = pair.as_mut().expect("just built");
        let (key, answer) = if flags & 2 != 0 {
            let first = check_offer(BROWSER_OFFER.to_owned()).expect("the browser offer passes");
            let (key, first) = pair.offer(first, !on_stage, !on_stage);
            first.expect("the browser offer is answered");
            (key, pair.reoffer(key, offer, on_stage, on_stage))
        } else {
            pair.offer(offer, on_stage, on_stage)
        };
        match answer {
            Ok(sdp) => {
                assert!(
                    sdp.starts_with("v=0\r\n"),
                    "an answer that is not SDP: {sdp:?}"
                );
                assert!(pair.is_open(key), "answered, but no connection is kept");
            }
            Err(e) => assert!(
                ["invalid_sdp", "media_unavailable"].contains(&e.code),
                "an unstable refusal code {:?}",
                e.code
            ),
        }
        pair.advance(Duration::from_secs(1));
        pair.close(key);
        assert_eq!(pair.panicked(), 0, "rtc panicked on an offer");
    });
}

/// A STUN binding request from the browser of [`BROWSER_OFFER`] to the harness's server, with
/// valid MESSAGE-INTEGRITY and FINGERPRINT, as Chromium sends it to nominate the pair.
pub fn browser_binding_request(transaction: [u8; 12]) -> Vec<u8> {
    use rtc::ice::attributes::control::AttrControlling;
    use rtc::ice::attributes::priority::PriorityAttr;
    use rtc::ice::attributes::use_candidate::UseCandidateAttr;
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
    use rtc::stun::textattrs::Username;
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    let mut message = Message::new();
    message
        .build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId(transaction)),
            Box::new(Username::new(
                ATTR_USERNAME,
                format!("{SERVER_UFRAG}:{BROWSER_UFRAG}"),
            )),
            Box::new(UseCandidateAttr::new()),
            Box::new(AttrControlling(0x0102_0304_0506_0708)),
            Box::new(PriorityAttr(2_122_260_223)),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                SERVER_PWD.to_owned(),
                provider.crypto(),
            )),
            Box::new(FINGERPRINT),
        ])
        .expect("a binding request builds");
    message.raw
}

/// The state a fuzzed datagram meets, from the input's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramState {
    /// Just answered: nothing received yet.
    Fresh,
    /// Answered, then a valid STUN binding request from the browser's address.
    AfterBinding,
    /// ICE and DTLS done with a real `rtc` client: SRTP keys are in place.
    Connected,
    /// Connected, and the rest is a plaintext RTP packet that the client encrypts and sends:
    /// what a speaker controls after the crypto, which random bytes never get past.
    ConnectedPlainRtp,
}

/// Any datagram into a worker core, in one of several states. The input is a state byte, then
/// datagrams, each prefixed by its length (two bytes, big-endian). State byte: bits 0-1 the
/// [`DatagramState`]; bit 2 the sender is a listener (fresh: on stage otherwise; connected: the
/// datagrams come from the room's listener instead of its speaker); bit 3, when connected: the
/// core also takes the room's audio from another node on a relay link whose lanes are the
/// speaker's and the listener's addresses, and each datagram is a relay body this harness
/// seals for that link (so arbitrary bodies get past the tag to the core's reading of them).
///
/// What must hold, besides no panic anywhere: a valid binding request is answered; nothing a
/// listener sends is ever forwarded to anyone.
pub struct MediaHarness {
    /// Connections answered from [`BROWSER_OFFER`] and played by hand, one per input.
    fresh: Option<Pair>,
    /// A speaker and a listener connected to a core through real clients.
    connected: Option<Pair>,
    served: [u32; 2],
    pub inputs: [u64; 4],
    pub pairs_built: u64,
}

/// In the connected pair: who is who.
const SPEAKER: usize = 0;
const LISTENER: usize = 1;

impl MediaHarness {
    pub fn new() -> Self {
        MediaHarness {
            fresh: None,
            connected: None,
            served: [0; 2],
            inputs: [0; 4],
            pairs_built: 0,
        }
    }

    pub fn datagrams(&mut self, data: &[u8]) {
        let Some((&state, rest)) = data.split_first() else {
            return;
        };
        let datagrams = split_datagrams(rest);
        let as_listener = state & 4 != 0;
        let state = match state % 4 {
            0 => DatagramState::Fresh,
            1 => DatagramState::AfterBinding,
            2 => DatagramState::Connected,
            _ => DatagramState::ConnectedPlainRtp,
        };
        self.inputs[state as usize] += 1;
        match state {
            DatagramState::Fresh | DatagramState::AfterBinding => {
                let pair = self.fresh();
                let offer =
                    check_offer(BROWSER_OFFER.to_owned()).expect("the browser offer passes");
                let on_stage = !as_listener;
                let (key, answer) = pair.offer(offer, on_stage, on_stage);
                answer.expect("the browser offer is answered");
                if state == DatagramState::AfterBinding {
                    pair.datagram(CLIENT_ADDR, &browser_binding_request([9; 12]));
                    assert!(
                        !pair.take_sent_to(CLIENT_ADDR).is_empty(),
                        "a valid binding request got no answer"
                    );
                }
                let forwarded = pair.forwarded();
                for datagram in datagrams {
                    pair.datagram(CLIENT_ADDR, datagram);
                }
                pair.advance(Duration::from_secs(1));
                assert_eq!(
                    pair.forwarded(),
                    forwarded,
                    "a connection nobody else is in forwarded audio"
                );
                pair.close(key);
                pair.take_sent_to(CLIENT_ADDR);
                assert_eq!(pair.panicked(), 0, "rtc panicked on a datagram");
            }
            DatagramState::Connected | DatagramState::ConnectedPlainRtp => {
                let relayed = data[0] & 8 != 0;
                let pair = self.connected();
                pair.advance(Duration::from_millis(1));
                let from = if as_listener { LISTENER } else { SPEAKER };
                let (forwarded, rtp_in) = (pair.forwarded(), pair.rtp_in());
                for datagram in datagrams {
                    if relayed {
                        let lane = from as u8;
                        let mut sealed = [0u8; MAX_RELAYED];
                        if let Some(len) = relay_link().seal_body(lane, datagram, &mut sealed) {
                            let addr = pair.clients[from].addr;
                            pair.datagram(addr, &sealed[..len]);
                            pair.shuttle();
                        }
                    } else if state == DatagramState::Connected {
                        let addr = pair.clients[from].addr;
                        pair.datagram(addr, datagram);
                        pair.shuttle();
                    } else {
                        let mut buf = datagram;
                        if let Ok(packet) =
                            <rtc::rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(
                                &mut buf,
                            )
                        {
                            pair.send_rtp(from, as_microphone(packet));
                        }
                    }
                }
                if as_listener && !relayed {
                    assert_eq!(
                        (pair.forwarded(), pair.rtp_in()),
                        (forwarded, rtp_in),
                        "a listener's datagrams were read as audio"
                    );
                }
                assert_eq!(pair.panicked(), 0, "rtc panicked on a datagram");
                let speaker = pair.clients[SPEAKER].key;
                if !pair.is_open(speaker) {
                    self.connected = None;
                }
            }
        }
    }

    /// The core for fresh connections, with the credentials [`browser_binding_request`] signs
    /// with.
    fn fresh(&mut self) -> &mut Pair {
        if self.fresh.is_none() || self.served[0] >= PAIR_INPUTS {
            let mut pair = Pair::default();
            pair.fix_credentials(SERVER_UFRAG, SERVER_PWD);
            self.fresh = Some(pair);
        }
        self.served[0] += 1;
        self.fresh.as_mut().expect("just built")
    }

    /// The core with a connected speaker and listener.
    fn connected(&mut self) -> &mut Pair {
        if self.connected.is_none() || self.served[1] >= PAIR_INPUTS {
            self.connected = Some(connected_pair());
            self.served[1] = 0;
            self.pairs_built += 1;
        }
        self.served[1] += 1;
        self.connected.as_mut().expect("just built")
    }
}

impl Default for MediaHarness {
    fn default() -> Self {
        Self::new()
    }
}

/// A core with a speaker (on stage, allowed to send) and a listener, both connected, and a
/// relay link from "another node" whose lanes 0 and 1 are their addresses.
fn connected_pair() -> Pair {
    let mut pair = Pair::default();
    assert_eq!(pair.join(true, true), SPEAKER);
    assert_eq!(pair.join(false, false), LISTENER);
    pair.connect_all();
    let lanes = [pair.clients[SPEAKER].addr, pair.clients[LISTENER].addr];
    pair.open_relay_in(crate::media::relay::InLink::new(
        RELAY_LINK, 0, &lanes, &RELAY_KEY,
    ));
    pair
}

/// The fuzz pair's relay link: its number and key.
const RELAY_LINK: u32 = 0x5354_4f41;
const RELAY_KEY: [u8; 16] = [0x42; 16];
/// A relayed datagram the harness seals: at most a media datagram.
const MAX_RELAYED: usize = crate::media::batch::MAX_DATAGRAM;

/// The sending end of the fuzz pair's relay link; its counters go on across inputs, so every
/// datagram is fresh to the core's replay window.
fn relay_link() -> &'static crate::media::relay::OutLink {
    static LINK: std::sync::OnceLock<crate::media::relay::OutLink> = std::sync::OnceLock::new();
    LINK.get_or_init(|| {
        crate::media::relay::OutLink::new(
            RELAY_LINK,
            crate::media::worker::pair::SERVER,
            0,
            &RELAY_KEY,
        )
    })
}

/// `packet` as the microphone's: SSRC and payload type forced to what was negotiated (Opus, or
/// RED when the input asks for RED's payload type, as Chromium sends it), so it gets as far as
/// the server's reading of it.
fn as_microphone(mut packet: rtc::rtp::Packet) -> rtc::rtp::Packet {
    packet.header.ssrc = CLIENT_MIC_SSRC;
    if packet.header.payload_type != RED_PT {
        packet.header.payload_type = OPUS_PT;
    }
    packet.header.version = 2;
    packet
}

pub use crate::media::testkit::CLIENT_MIC_SSRC;

/// Length-prefixed datagrams; a short last one takes what is left.
pub fn split_datagrams(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < 16 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let body = &rest[2..];
        let take = len.min(body.len());
        out.push(&body[..take]);
        rest = &body[take..];
    }
    out
}

/// Joins datagrams as [`split_datagrams`] reads them.
pub fn join_datagrams(state: u8, datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![state];
    for datagram in datagrams {
        out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        out.extend_from_slice(datagram);
    }
    out
}

// ---- seeds ------------------------------------------------------------------------------

/// Seed inputs for every target, as `(target, name, bytes)`: the client messages quoted in
/// `docs/protocol.md` (passed in), REST bodies as `docs/api.md` shows them, the browser offer,
/// and datagrams a real `rtc` client sent while connecting to the server and speaking.
pub fn seeds(protocol_md: &str) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut signal = BTreeSet::new();
    for line in protocol_md.lines() {
        let Some((_, message)) = line.split_once("→ {") else {
            continue;
        };
        let message = format!("{{{}", message.trim());
        let message = message.split("   (").next().unwrap_or_default().to_owned();
        signal.insert(message);
    }
    signal.insert(
        serde_json::json!({"type": "media_offer", "id": 7, "sdp": BROWSER_OFFER}).to_string(),
    );
    signal.insert(
        r#"{"type":"ice_candidate","candidate":"candidate:842163049 1 udp 1677729535 192.0.2.7 53981 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag Fz3q network-cost 999","sdp_mid":"0","sdp_m_line_index":0,"username_fragment":"Fz3q"}"#.to_owned(),
    );
    for (i, message) in signal.into_iter().enumerate() {
        out.push((
            "signal_decode",
            format!("protocol-{i:02}"),
            message.into_bytes(),
        ));
    }

    let endpoint = |path: &str| {
        REST_ENDPOINTS
            .iter()
            .position(|(_, p)| *p == path)
            .expect("a listed endpoint") as u8
    };
    let rest: &[(&str, &str, &str)] = &[
        (
            "create-room",
            "/api/v1/rooms",
            r#"{"title":"Friday jam","max_participants":500,"max_stage":8}"#,
        ),
        (
            "create-room-min",
            "/api/v1/rooms",
            r#"{"title":"Town hall"}"#,
        ),
        (
            "create-invite",
            "/api/v1/rooms/$ROOM/invites",
            r#"{"role":"speaker","label":"panel","max_uses":5,"expires_in_secs":86400}"#,
        ),
        ("create-invite-min", "/api/v1/rooms/$ROOM/invites", "{}"),
        (
            "join",
            "/api/v1/join",
            r#"{"invite":"$INVITE","display_name":"Ada"}"#,
        ),
        (
            "join-link",
            "/api/v1/join",
            r#"{"invite":"https://stoa.example/i/$INVITE","display_name":"Zoë 🎙","identity":"aWRlbnRpdHktc2VjcmV0LTAxMjM0NTY3"}"#,
        ),
        (
            "set-role",
            "/api/v1/rooms/$ROOM/participants/$PARTICIPANT/role",
            r#"{"role":"speaker"}"#,
        ),
        ("list-rooms", "/api/v1/rooms?", "limit=2&cursor=1"),
        ("list-invites", "/api/v1/rooms/$ROOM/invites?", "limit=50"),
        (
            "list-events",
            "/api/v1/rooms/$ROOM/events?",
            "limit=20&cursor=3",
        ),
        (
            "list-participants",
            "/api/v1/rooms/$ROOM/participants?",
            "limit=10&cursor=$PARTICIPANT",
        ),
        (
            "remove",
            "/api/v1/rooms/$ROOM/participants/$PARTICIPANT?",
            "ban=true&revoke_invite=true",
        ),
    ];
    for (name, path, body) in rest {
        let mut bytes = vec![endpoint(path)];
        bytes.extend_from_slice(body.as_bytes());
        out.push(("rest_bodies", (*name).to_owned(), bytes));
    }

    let mut offer = vec![1u8];
    offer.extend_from_slice(BROWSER_OFFER.as_bytes());
    out.push(("sdp_offer", "chromium-speaker".to_owned(), offer));
    let listener = BROWSER_OFFER
        .replace("a=sendrecv\r\n", "a=recvonly\r\n")
        .lines()
        .filter(|l| !l.starts_with("a=ssrc:") && !l.starts_with("a=msid:"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>();
    let mut offer = vec![0u8];
    offer.extend_from_slice(listener.as_bytes());
    out.push(("sdp_offer", "chromium-listener".to_owned(), offer.clone()));
    offer[0] = 3;
    out.push((
        "sdp_offer",
        "chromium-listener-renegotiated".to_owned(),
        offer,
    ));

    // A real client connecting: STUN checks, the DTLS flights, then speaking. The core signs
    // with the harness's credentials, so the client's STUN requests check out there too.
    let mut pair = Pair::default();
    pair.fix_credentials(SERVER_UFRAG, SERVER_PWD);
    pair.recorded = Some(Vec::new());
    pair.join(true, true);
    pair.connect_all();
    let handshake = pair.recorded.replace(Vec::new()).unwrap_or_default();
    for seq in 0..3u16 {
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: seq == 0,
            payload_type: OPUS_PT,
            sequence_number: 4000 + seq,
            timestamp: 960 * u32::from(seq),
            ssrc: CLIENT_MIC_SSRC,
            ..Default::default()
        };
        let _ = header.set_extension(1, bytes::Bytes::from_static(&[0x80 | 30]));
        let packet = rtc::rtp::Packet {
            header,
            payload: bytes::Bytes::from(vec![0xfc, 0xff, 0xfe, seq as u8, 0x11, 0x22]),
        };
        if seq == 0 {
            let plain = rtc::shared::marshal::Marshal::marshal(&packet).expect("marshals");
            out.push((
                "media_datagram",
                "plain-rtp-opus".to_owned(),
                join_datagrams(3, &[plain.to_vec()]),
            ));
        }
        pair.send_rtp(0, packet);
    }
    // Reports go out on the interceptors' timers.
    for _ in 0..30 {
        pair.advance(Duration::from_millis(200));
    }
    let sent = pair.recorded.take().unwrap_or_default();
    let mut by_kind: std::collections::BTreeMap<&str, Vec<Vec<u8>>> = Default::default();
    for datagram in handshake.iter().chain(&sent) {
        let kind = match demux::classify(datagram) {
            Kind::Stun => "stun",
            Kind::Dtls if datagram.first() == Some(&22) && datagram.get(13) == Some(&1) => {
                "dtls-client-hello"
            }
            Kind::Dtls => "dtls",
            Kind::Rtp => "srtp",
            Kind::Rtcp => "srtcp",
            Kind::Relay => "relay",
            Kind::Other => "other",
        };
        let list = by_kind.entry(kind).or_default();
        if list.len() < 3 {
            list.push(datagram.clone());
        }
    }
    for (kind, datagrams) in &by_kind {
        for (i, datagram) in datagrams.iter().enumerate() {
            for (state, label) in [(0u8, "fresh"), (1, "bound"), (2, "connected")] {
                out.push((
                    "media_datagram",
                    format!("{kind}-{i}-{label}"),
                    join_datagrams(state, std::slice::from_ref(datagram)),
                ));
            }
        }
    }
    // Relay bodies from another node (sealed by the harness): a speaker's packet with one
    // repeated frame, and the end of that source.
    let mut packet = vec![1u8];
    packet.extend_from_slice(&7u32.to_be_bytes());
    packet.extend_from_slice(&100u16.to_be_bytes());
    packet.extend_from_slice(&96_000u32.to_be_bytes());
    packet.extend_from_slice(&[0b11, 0x80 | 20, 1]);
    packet.extend_from_slice(&95_040u32.to_be_bytes());
    packet.extend_from_slice(&3u16.to_be_bytes());
    packet.extend_from_slice(&[0xfc, 0xff, 0xfe, 0xfc, 0x01, 0x02, 0x03]);
    let mut forget = vec![2u8];
    forget.extend_from_slice(&7u32.to_be_bytes());
    out.push((
        "media_datagram",
        "relay-packet-then-forget".to_owned(),
        join_datagrams(2 | 8, &[packet.clone(), packet, forget]),
    ));
    out.push((
        "media_datagram",
        "browser-binding-request".to_owned(),
        join_datagrams(0, &[browser_binding_request([3; 12])]),
    ));
    out.push((
        "media_datagram",
        "handshake-replayed".to_owned(),
        join_datagrams(1, &handshake.iter().take(12).cloned().collect::<Vec<_>>()),
    ));
    out.push((
        "media_datagram",
        "garbage".to_owned(),
        join_datagrams(
            2,
            &[
                b"\x00\x01garbage that is not anything".to_vec(),
                vec![0xff; 40],
            ],
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed goes through its target's entry point without tripping a check, so the
    /// harnesses themselves are exercised by the ordinary test run.
    #[test]
    fn every_seed_runs_clean() {
        let protocol = include_str!("../../docs/protocol.md");
        let seeds = seeds(protocol);
        let mut rest = RestHarness::new();
        let mut media = MediaHarness::new();
        let mut per_target = std::collections::BTreeMap::<&str, usize>::new();
        for (target, name, bytes) in &seeds {
            *per_target.entry(target).or_default() += 1;
            match *target {
                "signal_decode" => signal_message(bytes),
                "rest_bodies" => rest.request(bytes),
                "sdp_offer" => sdp_offer(bytes),
                "media_datagram" => media.datagrams(bytes),
                other => panic!("a seed {name} for an unknown target {other}"),
            }
        }
        assert!(per_target["signal_decode"] >= 30, "{per_target:?}");
        assert!(per_target["rest_bodies"] >= 10, "{per_target:?}");
        assert!(per_target["sdp_offer"] >= 3, "{per_target:?}");
        // STUN, DTLS (ClientHello and the rest), SRTP and SRTCP from the real client.
        for kind in ["stun", "dtls-client-hello", "dtls", "srtp", "srtcp"] {
            assert!(
                seeds
                    .iter()
                    .any(|(_, name, _)| name.starts_with(&format!("{kind}-0"))),
                "no {kind} datagram was captured"
            );
        }
        assert_eq!(media.pairs_built, 1);
        assert!(rest.requests >= 10);
    }

    /// The pair used for the connected states really exchanges media: RTP the speaker's client
    /// sends arrives decrypted at the core and reaches the listener.
    #[test]
    fn the_connected_pair_carries_rtp() {
        let mut pair = connected_pair();
        for _ in 0..10 {
            pair.speak(SPEAKER);
            pair.advance(Duration::from_millis(20));
        }
        assert_eq!(pair.rtp_in(), 10);
        assert!(pair.forwarded() > 0);
        assert_eq!(pair.clients[LISTENER].rtp_received, pair.forwarded());
    }

    /// The listener rule the harness checks can fail: the same plaintext RTP the speaker gets
    /// heard with is refused from the listener.
    #[test]
    fn a_listener_s_rtp_is_never_read_as_audio() {
        let mut harness = MediaHarness::new();
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: 1,
                ssrc: CLIENT_MIC_SSRC,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0xfc, 1, 2, 3]),
        };
        let plain = rtc::shared::marshal::Marshal::marshal(&packet).expect("marshals");
        harness.datagrams(&join_datagrams(3 | 4, &[plain.to_vec()]));
        let pair = harness.connected.as_ref().expect("built");
        assert_eq!(pair.rtp_in(), 0);
        harness.datagrams(&join_datagrams(3, &[plain.to_vec()]));
        let pair = harness.connected.as_ref().expect("built");
        assert_eq!(pair.rtp_in(), 1, "the speaker's packet is read");
    }

    /// Relay bodies the harness seals get through the link's checks to the core, and what they
    /// carry reaches the listener.
    #[test]
    fn relayed_bodies_reach_the_core() {
        let mut harness = MediaHarness::new();
        let seeds = seeds(include_str!("../../docs/protocol.md"));
        let (_, _, relayed) = seeds
            .iter()
            .find(|(_, name, _)| name == "relay-packet-then-forget")
            .expect("the seed");
        harness.datagrams(relayed);
        let pair = harness.connected.as_ref().expect("built");
        // Two packets (the same one twice, sealed twice: fresh to the link), one end.
        assert_eq!(pair.relayed_in(), 2);
        assert_eq!(pair.relay_refused(), 0);
        // A body in the clear with a made-up tag, on the link from the right address: forged.
        let mut forged = vec![crate::media::relay::MARKER, 0];
        forged.extend_from_slice(&RELAY_LINK.to_be_bytes());
        forged.extend_from_slice(&u64::MAX.to_be_bytes());
        forged.extend_from_slice(&[2, 0, 0, 0, 7]);
        forged.extend_from_slice(&[0; 16]);
        harness.datagrams(&join_datagrams(2, &[forged]));
        let pair = harness.connected.as_ref().expect("built");
        assert_eq!((pair.relayed_in(), pair.relay_refused()), (2, 1));
    }

    /// Writes the seed corpora into `fuzz/corpus/` (run by `scripts/fuzz.sh --seeds`).
    #[test]
    #[ignore = "writes files into the repository; run on purpose"]
    fn write_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let protocol = std::fs::read_to_string(root.join("docs/protocol.md")).expect("docs");
        for (target, name, bytes) in seeds(&protocol) {
            let dir = root.join("fuzz/corpus").join(target);
            std::fs::create_dir_all(&dir).expect("a corpus folder");
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed");
        }
    }
}
