//! The security review as tests: every route against every kind of caller, every signaling
//! message against every role, session tokens, invite enumeration, headers, CORS and Origin.
//! The matrices are tables; a route or a message type without a row fails the test.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stoa::control::{ParticipantId, Role, RoomId};
use stoa::room::permissions::{self, Permit, Standing};
use stoa::session::{Claims, TokenSigner};
use stoa_tests::signal::SignalClient;
use stoa_tests::{Answer, TestServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn signer(t: &TestServer) -> TokenSigner {
    TokenSigner::load_or_create(&t.config.data_dir.join("signing.key")).expect("signing key")
}

/// The claims a join answer's session token carries, rebuilt from the answer.
fn claims_of(answer: &Value, now_ms: i64) -> Claims {
    Claims {
        room: RoomId::parse(&s(&answer["room_id"])).unwrap(),
        participant: ParticipantId::parse(&s(&answer["participant_id"])).unwrap(),
        role: Role::parse(&s(&answer["role"])).unwrap(),
        name: s(&answer["display_name"]),
        iat: now_ms,
        exp: now_ms + 600_000,
        // A first redemption starts an identity's first token generation.
        generation: 1,
        delivery: Default::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Every REST route × every kind of caller

/// The callers of the matrix, in the column order of `Row::expect`.
const CALLERS: [&str; 11] = [
    "no credential",
    "garbage",
    "forged token",
    "expired token",
    "removed participant",
    "banned participant",
    "listener",
    "speaker",
    "moderator",
    "moderator of another room",
    "operator",
];

/// What a caller gets: a status and, for refusals, the problem code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Success with this status (or a page, for the web routes).
    Ok(u16),
    Problem(u16, &'static str),
}

use Expect::{Ok as Yes, Problem as No};

/// Refusals every authenticated route gives before it looks at anything else.
const UNAUTHENTICATED: [Expect; 6] = [
    No(401, "missing_credentials"),
    No(401, "invalid_token"),
    No(401, "invalid_token"),
    No(401, "token_expired"),
    No(401, "removed"),
    No(403, "banned"),
];

/// An authenticated route: the refusals of [`UNAUTHENTICATED`], then what each caller with a
/// valid credential gets, in the order of [`CALLERS`].
const fn authenticated(
    listener: Expect,
    speaker: Expect,
    moderator: Expect,
    other_room: Expect,
    operator: Expect,
) -> [Expect; 11] {
    let u = UNAUTHENTICATED;
    [
        u[0], u[1], u[2], u[3], u[4], u[5], listener, speaker, moderator, other_room, operator,
    ]
}

const fn operator_only(ok: u16) -> [Expect; 11] {
    let no = No(403, "operator_only");
    authenticated(no, no, no, no, Yes(ok))
}

const fn moderators(ok: u16) -> [Expect; 11] {
    let no = No(403, "moderator_only");
    authenticated(no, no, Yes(ok), No(403, "wrong_room"), Yes(ok))
}

/// Anyone whose session is for this room, whatever their role, and the operator.
const fn members(ok: u16) -> [Expect; 11] {
    authenticated(Yes(ok), Yes(ok), Yes(ok), No(403, "wrong_room"), Yes(ok))
}

const fn anyone(e: Expect) -> [Expect; 11] {
    [e; 11]
}

/// One route: the template (as the router and the OpenAPI document name it), how to fill it
/// in, and what each caller gets.
struct Row {
    method: Method,
    template: &'static str,
    path: fn(&World) -> String,
    body: fn(&World) -> Option<Value>,
    /// Changes what later callers would see: each caller that succeeds gets a fresh world.
    destructive: bool,
    expect: [Expect; 11],
}

fn no_body(_: &World) -> Option<Value> {
    None
}

const FALLBACK: &str = "(any other path)";

/// Every world's room has its own webhook endpoint here: nothing listens, so its events fail
/// at once (allowed by the matrix server's `room_allow_private`).
const WEBHOOK_URL: &str = "http://127.0.0.1:9/hook";

fn rest_table() -> Vec<Row> {
    vec![
        Row {
            method: Method::POST,
            template: "/api/v1/rooms",
            path: |_| "/api/v1/rooms".into(),
            body: |_| Some(json!({ "title": "New" })),
            destructive: false,
            expect: operator_only(201),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms",
            path: |_| "/api/v1/rooms".into(),
            body: no_body,
            destructive: false,
            expect: operator_only(200),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}",
            path: |w| format!("/api/v1/rooms/{}", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::PATCH,
            template: "/api/v1/rooms/{room}",
            path: |w| format!("/api/v1/rooms/{}", w.room),
            body: |_| Some(json!({ "retention_days": 30 })),
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}",
            path: |w| format!("/api/v1/rooms/{}", w.room),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/invites",
            path: |w| format!("/api/v1/rooms/{}/invites", w.room),
            body: |_| Some(json!({ "role": "moderator" })),
            destructive: false,
            expect: moderators(201),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/invites",
            path: |w| format!("/api/v1/rooms/{}/invites", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/invites/{invite}",
            path: |w| format!("/api/v1/rooms/{}/invites/{}", w.room, w.invite_id),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/listen-links",
            path: |w| format!("/api/v1/rooms/{}/listen-links", w.room),
            body: |_| Some(json!({})),
            destructive: false,
            expect: moderators(201),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/listen-links",
            path: |w| format!("/api/v1/rooms/{}/listen-links", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/listen-links/{link}",
            path: |w| format!("/api/v1/rooms/{}/listen-links/{}", w.room, w.listen_link_id),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        // A listen link is its own credential: whatever else a caller sends is not looked at.
        Row {
            method: Method::GET,
            template: "/api/v1/listen/{code}",
            path: |w| format!("/api/v1/listen/{}", w.listen_code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/participants",
            path: |w| format!("/api/v1/rooms/{}/participants", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/participants/{participant}/role",
            path: |w| format!("/api/v1/rooms/{}/participants/{}/role", w.room, w.target),
            body: |_| Some(json!({ "role": "listener" })),
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/participants/{participant}/mute",
            path: |w| format!("/api/v1/rooms/{}/participants/{}/mute", w.room, w.target),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/participants/{participant}",
            path: |w| format!("/api/v1/rooms/{}/participants/{}", w.room, w.target),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/events",
            path: |w| format!("/api/v1/rooms/{}/events", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        // Recording the live room, and its recordings (a moderator's, like the audit log).
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/recording",
            path: |w| format!("/api/v1/rooms/{}/recording", w.room),
            body: no_body,
            destructive: true,
            expect: moderators(201),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/recording",
            path: |w| format!("/api/v1/rooms/{}/recording", w.room),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/recordings",
            path: |w| format!("/api/v1/rooms/{}/recordings", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/recordings/{recording}",
            path: |w| format!("/api/v1/rooms/{}/recordings/{}", w.room, w.recording),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/recordings/{recording}/audio",
            path: |w| format!("/api/v1/rooms/{}/recordings/{}/audio", w.room, w.recording),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::GET,
            // The world's recording has no speaker tracks: whoever may read it is told so.
            template: "/api/v1/rooms/{room}/recordings/{recording}/tracks/{track}/audio",
            path: |w| {
                format!(
                    "/api/v1/rooms/{}/recordings/{}/tracks/1/audio",
                    w.room, w.recording
                )
            },
            body: no_body,
            destructive: false,
            expect: {
                let none = No(404, "track_not_found");
                let no = No(403, "moderator_only");
                authenticated(no, no, none, No(403, "wrong_room"), none)
            },
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/recordings/{recording}",
            path: |w| format!("/api/v1/rooms/{}/recordings/{}", w.room, w.recording),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        // Replay links: made, listed and revoked like invites; redeemed by anyone.
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/recordings/{recording}/replay-links",
            path: |w| {
                format!(
                    "/api/v1/rooms/{}/recordings/{}/replay-links",
                    w.room, w.recording
                )
            },
            body: |_| Some(json!({})),
            destructive: false,
            expect: moderators(201),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/replay-links",
            path: |w| format!("/api/v1/rooms/{}/replay-links", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/replay-links/{link}",
            path: |w| format!("/api/v1/rooms/{}/replay-links/{}", w.room, w.replay_link),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        // Clips: the last seconds of a live room by anyone in it; a range of a recording by
        // whoever may read it; opened by anyone with the link.
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/clips",
            path: |w| format!("/api/v1/rooms/{}/clips", w.room),
            body: no_body,
            destructive: false,
            expect: members(201),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/recordings/{recording}/clips",
            path: |w| format!("/api/v1/rooms/{}/recordings/{}/clips", w.room, w.recording),
            body: |_| Some(json!({ "start_ms": 0, "end_ms": 100 })),
            destructive: false,
            expect: moderators(201),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/clips/{code}",
            path: |w| format!("/api/v1/clips/{}", w.clip_code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/clips/{code}/audio",
            path: |w| format!("/api/v1/clips/{}/audio", w.clip_code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        // The cluster's nodes, their addresses and load: the operator's view.
        Row {
            method: Method::GET,
            template: "/api/v1/cluster/nodes",
            path: |_| "/api/v1/cluster/nodes".into(),
            body: no_body,
            destructive: false,
            expect: operator_only(200),
        },
        // Draining this node: the operator's; a node alone has no other to drain to.
        Row {
            method: Method::POST,
            template: "/api/v1/cluster/drain",
            path: |_| "/api/v1/cluster/drain".into(),
            body: no_body,
            destructive: false,
            expect: {
                let no = No(403, "operator_only");
                authenticated(no, no, no, no, No(409, "not_clustered"))
            },
        },
        // The webhook outbox: every room's events, the operator's view.
        Row {
            method: Method::GET,
            template: "/api/v1/webhooks/deliveries",
            path: |_| "/api/v1/webhooks/deliveries".into(),
            body: no_body,
            destructive: false,
            expect: operator_only(200),
        },
        // A room's own webhook endpoint: whoever manages the room (its moderators, the
        // operator). It sends the room's events elsewhere and makes the server send requests,
        // so listeners and speakers may not, nor other rooms' moderators.
        Row {
            method: Method::PUT,
            template: "/api/v1/rooms/{room}/webhook",
            path: |w| format!("/api/v1/rooms/{}/webhook", w.room),
            body: |_| Some(json!({ "url": WEBHOOK_URL })),
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/webhook",
            path: |w| format!("/api/v1/rooms/{}/webhook", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::DELETE,
            template: "/api/v1/rooms/{room}/webhook",
            path: |w| format!("/api/v1/rooms/{}/webhook", w.room),
            body: no_body,
            destructive: true,
            expect: moderators(204),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/rooms/{room}/webhook/secret",
            path: |w| format!("/api/v1/rooms/{}/webhook/secret", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/webhook/deliveries",
            path: |w| format!("/api/v1/rooms/{}/webhook/deliveries", w.room),
            body: no_body,
            destructive: false,
            expect: moderators(200),
        },
        // The broadcast carries nothing a member cannot already hear: anyone of the room.
        Row {
            method: Method::GET,
            template: "/api/v1/rooms/{room}/broadcast",
            path: |w| format!("/api/v1/rooms/{}/broadcast", w.room),
            body: no_body,
            destructive: false,
            expect: members(200),
        },
        // Public: whatever credential comes along is ignored.
        Row {
            method: Method::POST,
            template: "/api/v1/join",
            path: |_| "/api/v1/join".into(),
            body: |w| Some(json!({ "invite": w.code, "display_name": "Walk-in" })),
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::POST,
            template: "/api/v1/replay",
            path: |_| "/api/v1/replay".into(),
            body: |w| Some(json!({ "link": w.replay_code })),
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/signal",
            path: |_| "/api/v1/signal".into(),
            body: no_body,
            destructive: false,
            // Without a WebSocket handshake; the socket's own checks are the signaling matrix.
            expect: anyone(No(426, "upgrade_required")),
        },
        Row {
            method: Method::GET,
            template: "/api/v1/openapi.json",
            path: |_| "/api/v1/openapi.json".into(),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/healthz",
            path: |_| "/healthz".into(),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/metrics",
            path: |_| "/metrics".into(),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/",
            path: |_| "/".into(),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/i/{code}",
            path: |w| format!("/i/{}", w.code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/r/{code}",
            path: |w| format!("/r/{}", w.replay_code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/c/{code}",
            path: |w| format!("/c/{}", w.clip_code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/l/{code}",
            path: |w| format!("/l/{}", w.listen_code),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: "/app/{file}",
            path: |_| "/app/app.js".into(),
            body: no_body,
            destructive: false,
            expect: anyone(Yes(200)),
        },
        Row {
            method: Method::GET,
            template: FALLBACK,
            path: |_| "/api/v1/nowhere".into(),
            body: no_body,
            destructive: false,
            expect: anyone(No(404, "not_found")),
        },
    ]
}

/// Two rooms and one credential of each kind. Room A is live: its moderator, speaker and
/// listener are connected, and so is `target`, a speaker the participant routes act on.
struct World {
    room: String,
    invite_id: String,
    code: String,
    listen_link_id: String,
    listen_code: String,
    target: String,
    /// A finished recording of the room.
    recording: String,
    /// A replay link of that recording: its id and its code.
    replay_link: String,
    replay_code: String,
    /// A clip of the live room: its code.
    clip_code: String,
    credentials: Vec<Option<String>>,
    _sockets: Vec<SignalClient>,
}

impl World {
    async fn new(t: &TestServer) -> World {
        let room = t.create_room("A").await;
        let other = t.create_room("B").await;
        t.op(
            Method::PUT,
            &format!("/api/v1/rooms/{room}/webhook"),
            Some(json!({ "url": WEBHOOK_URL })),
        )
        .await
        .expect(201);
        let invite = t.create_invite(&room, "listener", json!({})).await;
        let listen = t
            .op(
                Method::POST,
                &format!("/api/v1/rooms/{room}/listen-links"),
                Some(json!({})),
            )
            .await
            .expect(201);
        let listener = t.participant(&room, "listener", "Lee").await;
        let speaker = t.participant(&room, "speaker", "Sam").await;
        let moderator = t.participant(&room, "moderator", "Ada").await;
        let foreign = t.participant(&other, "moderator", "Xi").await;
        let target = t.participant(&room, "speaker", "Tia").await;
        let removed = t.participant(&room, "listener", "Rex").await;
        let banned = t.participant(&room, "listener", "Bo").await;
        let mut sockets = Vec::new();
        for answer in [&moderator, &speaker, &listener, &target, &removed, &banned] {
            sockets.push(SignalClient::join(answer).await);
        }
        let base = format!("/api/v1/rooms/{room}/participants");
        let (rex, bo) = (s(&removed["participant_id"]), s(&banned["participant_id"]));
        t.op(Method::DELETE, &format!("{base}/{rex}"), None)
            .await
            .expect(204);
        t.op(Method::DELETE, &format!("{base}/{bo}?ban=true"), None)
            .await
            .expect(204);
        let recorded = format!("/api/v1/rooms/{room}/recording");
        let recording = t.op(Method::POST, &recorded, None).await.expect(201);
        // Enough audio for the clip rows to cut from.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        t.op(Method::DELETE, &recorded, None).await.expect(204);
        let clip = t
            .op(Method::POST, &format!("/api/v1/rooms/{room}/clips"), None)
            .await
            .expect(201);
        let replay = t
            .op(
                Method::POST,
                &format!(
                    "/api/v1/rooms/{room}/recordings/{}/replay-links",
                    s(&recording["id"])
                ),
                Some(json!({})),
            )
            .await
            .expect(201);
        let banned_socket = sockets.pop().unwrap();
        let removed_socket = sockets.pop().unwrap();
        for mut gone in [removed_socket, banned_socket] {
            gone.wait_closed().await;
        }

        let real = signer(t);
        let now = t.clock.now_ms();
        let mut expired = claims_of(&moderator, now - 20 * 60_000);
        expired.exp = now - 5 * 60_000;
        // The right shape and claims, signed with a key that is not the server's.
        let forged = TokenSigner::new([7; 32]).sign(&claims_of(&moderator, now));
        let token = |v: &Value| Some(s(&v["token"]));
        let credentials = vec![
            None,
            Some("garbage".into()),
            Some(forged),
            Some(real.sign(&expired)),
            token(&removed),
            token(&banned),
            token(&listener),
            token(&speaker),
            token(&moderator),
            token(&foreign),
            Some(t.api_key.clone()),
        ];
        World {
            room,
            invite_id: s(&invite["id"]),
            code: s(&invite["code"]),
            listen_link_id: s(&listen["id"]),
            listen_code: s(&listen["code"]),
            target: s(&target["participant_id"]),
            recording: s(&recording["id"]),
            replay_link: s(&replay["id"]),
            replay_code: s(&replay["code"]),
            clip_code: s(&clip["code"]),
            credentials,
            _sockets: sockets,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_against_every_caller() {
    // Every caller of every fresh world makes clips from one address: not the limit's test.
    let t = TestServer::start_with(|c| {
        c.recording.clip_burst = 10_000;
        c.webhooks.room_allow_private = true;
    })
    .await;
    let table = rest_table();

    // The table covers exactly the routes the server has: the OpenAPI document is generated
    // from the same router as the API, and the web routes come from their own table.
    let mut served: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in stoa::api::openapi_document().paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                served.insert((method.into(), path.clone()));
            }
        }
    }
    for path in stoa::api::web::paths() {
        served.insert(("GET".into(), path.into()));
    }
    served.insert(("GET".into(), FALLBACK.into()));
    let rows: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_owned()))
        .collect();
    assert_eq!(rows.len(), table.len(), "a route has two rows");
    assert_eq!(rows, served, "rows and routes differ");

    let shared = World::new(&t).await;
    let mut failures = Vec::new();
    let mut cases = 0;
    for row in &table {
        for (column, caller) in CALLERS.iter().enumerate() {
            let expected = row.expect[column];
            let fresh;
            let world = if row.destructive && matches!(expected, Yes(_)) {
                fresh = World::new(&t).await;
                &fresh
            } else {
                &shared
            };
            let answer = t
                .call(
                    row.method.clone(),
                    &(row.path)(world),
                    world.credentials[column].as_deref(),
                    (row.body)(world),
                )
                .await;
            cases += 1;
            let got = match answer.status.as_u16() {
                status @ 100..400 => Yes(status),
                status => No(status, leak(answer.code())),
            };
            if got != expected {
                failures.push(format!(
                    "{} {} as {caller}: expected {expected:?}, got {got:?} {}",
                    row.method, row.template, answer.body
                ));
            } else if let No(status, code) = expected {
                answer.expect_problem(status, code);
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(cases, table.len() * CALLERS.len());
    t.stop().await;
}

/// Problem codes are compared as `&'static str`; a test may leak the few it reads.
fn leak(code: &str) -> &'static str {
    Box::leak(code.to_owned().into_boxed_str())
}

// ---------------------------------------------------------------------------------------------
// Every signaling message × every role

/// The roles of the signaling matrix, in the column order of `Action::expect`.
const ROLES: [&str; 4] = [
    "listener",
    "speaker",
    "moderator on stage",
    "moderator in the audience",
];

/// The answer a message gets: `ok`, another reply type (`pong`, `audience_page`), an error
/// with its code, or the socket closed with this reason before any answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Other(&'static str),
    Error(&'static str),
    Closed(&'static str),
}

/// Sends `message` with an id and reads until its answer, or until the socket closes.
async fn answer_to(socket: &mut SignalClient, mut message: Value) -> (Reply, Value) {
    const ID: &str = "matrix";
    message["id"] = json!(ID);
    socket.send(message).await;
    loop {
        match socket.next_within(stoa_tests::signal::WAIT).await {
            Some(m) if m["id"] == ID => {
                let reply = match m["type"].as_str() {
                    Some("ok") => Reply::Ok,
                    Some("error") => Reply::Error(leak(m["code"].as_str().unwrap_or(""))),
                    other => Reply::Other(leak(other.unwrap_or("?"))),
                };
                return (reply, m);
            }
            Some(_) => continue,
            None => {
                let reason = socket.closed.clone().map(|c| c.1).unwrap_or_default();
                return (Reply::Closed(leak(&reason)), Value::Null);
            }
        }
    }
}

const OK: Reply = Reply::Ok;
const NO_INVITATION: Reply = Reply::Error("no_invitation");

/// What the room's rules (`stoa::room::permissions`, the table the server decides by) say each
/// role of `ROLES` gets for `action`: `allowed` if allowed, else the refusal's code. This
/// matrix checks the rules hold end to end, over real sockets; the room's unit tests check the
/// table itself against the product's role table, written out by hand.
fn by_the_rules(action: permissions::Action, allowed: Reply) -> [Reply; 4] {
    let rule = permissions::rule(action);
    Standing::PARTICIPANTS.map(|standing| match rule.for_actor(standing) {
        Permit::Allowed => allowed,
        Permit::Refused(refusal) => Reply::Error(refusal.code()),
    })
}

/// A room with one participant in each state a message may need, all connected.
struct Cast {
    room: String,
    sockets: Vec<SignalClient>,
    answers: Vec<Value>,
}

/// Who is who in `Cast`: the four actors first, in `ROLES` order, then the targets.
const LISTENER: usize = 0;
const MOD_ON: usize = 2;
/// A listener with a raised hand.
const HAND: usize = 4;
/// A listener invited to the stage.
const INVITED: usize = 5;
const OTHER_SPEAKER: usize = 6;
/// A moderator on stage, to be demoted.
const OTHER_MOD: usize = 7;

impl Cast {
    async fn new(t: &TestServer) -> Cast {
        let room = t.create_room("Matrix").await;
        let mut answers = Vec::new();
        let mut sockets = Vec::new();
        for (role, name) in [
            ("listener", "Lee"),
            ("speaker", "Sam"),
            ("moderator", "Ada"),
            ("moderator", "Mo"),
            ("listener", "Hal"),
            ("listener", "Ivy"),
            ("speaker", "Oz"),
            ("moderator", "Ole"),
        ] {
            let answer = t.participant(&room, role, name).await;
            sockets.push(SignalClient::join(&answer).await);
            answers.push(answer);
        }
        let mut cast = Cast {
            room,
            sockets,
            answers,
        };
        cast.sockets[3].ok(json!({ "type": "leave_stage" })).await;
        cast.sockets[HAND].ok(json!({ "type": "raise_hand" })).await;
        let invited = cast.id(INVITED);
        cast.sockets[MOD_ON]
            .ok(json!({ "type": "invite_to_stage", "participant": invited }))
            .await;
        cast
    }

    fn id(&self, who: usize) -> String {
        s(&self.answers[who]["participant_id"])
    }
}

/// An operator REST call: method, path, body.
type Call = (Method, String, Option<Value>);

struct Action {
    kind: &'static str,
    /// Done first, by the operator through REST.
    setup: fn(&Cast) -> Vec<Call>,
    message: fn(&Cast, usize) -> Value,
    expect: [Reply; 4],
}

fn nothing(_: &Cast) -> Vec<Call> {
    Vec::new()
}

fn signal_table() -> Vec<Action> {
    vec![
        Action {
            kind: "join",
            setup: nothing,
            message: |c, me| json!({ "type": "join", "token": c.answers[me]["token"] }),
            expect: [Reply::Error("already_joined"); 4],
        },
        Action {
            kind: "resume",
            setup: nothing,
            message: |c, me| json!({ "type": "resume", "resume_token": c.sockets[me].resume_token() }),
            expect: [Reply::Error("already_joined"); 4],
        },
        Action {
            kind: "ping",
            setup: nothing,
            message: |_, _| json!({ "type": "ping" }),
            expect: [Reply::Other("pong"); 4],
        },
        Action {
            kind: "leave",
            setup: nothing,
            message: |_, _| json!({ "type": "leave" }),
            expect: by_the_rules(permissions::Action::Leave, OK),
        },
        Action {
            kind: "raise_hand",
            setup: nothing,
            message: |_, _| json!({ "type": "raise_hand" }),
            expect: by_the_rules(permissions::Action::RaiseHand, OK),
        },
        Action {
            kind: "lower_hand",
            setup: nothing,
            message: |_, _| json!({ "type": "lower_hand" }),
            expect: by_the_rules(permissions::Action::LowerOwnHand, OK),
        },
        Action {
            kind: "lower_hand",
            setup: nothing,
            message: |c, _| json!({ "type": "lower_hand", "participant": c.id(HAND) }),
            expect: by_the_rules(permissions::Action::LowerHand, OK),
        },
        Action {
            kind: "invite_to_stage",
            setup: nothing,
            message: |c, _| json!({ "type": "invite_to_stage", "participant": c.id(HAND) }),
            expect: by_the_rules(permissions::Action::InviteToStage, OK),
        },
        Action {
            kind: "cancel_invitation",
            setup: nothing,
            message: |c, _| json!({ "type": "cancel_invitation", "participant": c.id(INVITED) }),
            expect: by_the_rules(permissions::Action::CancelInvitation, OK),
        },
        Action {
            kind: "accept_invitation",
            setup: |c| vec![invite_listener(c)],
            message: |_, _| json!({ "type": "accept_invitation" }),
            expect: by_the_rules(permissions::Action::AcceptInvitation, OK),
        },
        Action {
            kind: "decline_invitation",
            setup: |c| vec![invite_listener(c)],
            message: |_, _| json!({ "type": "decline_invitation" }),
            expect: by_the_rules(permissions::Action::DeclineInvitation, OK),
        },
        Action {
            kind: "join_stage",
            setup: nothing,
            message: |_, _| json!({ "type": "join_stage" }),
            expect: by_the_rules(permissions::Action::JoinStage, OK),
        },
        Action {
            kind: "leave_stage",
            setup: nothing,
            message: |_, _| json!({ "type": "leave_stage" }),
            expect: by_the_rules(permissions::Action::LeaveStage, OK),
        },
        Action {
            kind: "move_to_audience",
            setup: nothing,
            message: |c, _| json!({ "type": "move_to_audience", "participant": c.id(OTHER_SPEAKER) }),
            expect: by_the_rules(permissions::Action::MoveToAudience, OK),
        },
        Action {
            kind: "mute",
            setup: nothing,
            message: |c, _| json!({ "type": "mute", "participant": c.id(OTHER_SPEAKER) }),
            expect: by_the_rules(permissions::Action::Mute, OK),
        },
        Action {
            kind: "mute_self",
            setup: nothing,
            message: |_, _| json!({ "type": "mute_self" }),
            expect: by_the_rules(permissions::Action::MuteSelf, OK),
        },
        Action {
            kind: "unmute",
            setup: |c| {
                [1, MOD_ON]
                    .into_iter()
                    .map(|who| {
                        let path =
                            format!("/api/v1/rooms/{}/participants/{}/mute", c.room, c.id(who));
                        (Method::POST, path, None)
                    })
                    .collect()
            },
            message: |_, _| json!({ "type": "unmute" }),
            expect: by_the_rules(permissions::Action::Unmute, OK),
        },
        Action {
            kind: "remove",
            setup: nothing,
            message: |c, _| json!({ "type": "remove", "participant": c.id(HAND) }),
            expect: by_the_rules(permissions::Action::Remove, OK),
        },
        Action {
            kind: "ban",
            setup: nothing,
            message: |c, _| json!({ "type": "ban", "participant": c.id(HAND) }),
            expect: by_the_rules(permissions::Action::Ban, OK),
        },
        Action {
            kind: "promote",
            setup: nothing,
            message: |c, _| json!({ "type": "promote", "participant": c.id(HAND) }),
            expect: by_the_rules(permissions::Action::Promote, OK),
        },
        Action {
            kind: "demote",
            setup: nothing,
            message: |c, _| json!({ "type": "demote", "participant": c.id(OTHER_MOD) }),
            expect: by_the_rules(permissions::Action::Demote, OK),
        },
        Action {
            kind: "set_role",
            setup: nothing,
            message: |c, _| {
                json!({ "type": "set_role", "participant": c.id(HAND), "role": "speaker" })
            },
            expect: by_the_rules(permissions::Action::SetRole, OK),
        },
        Action {
            kind: "end_room",
            setup: nothing,
            message: |_, _| json!({ "type": "end_room" }),
            // Everyone, the moderator who ended it included, is told and disconnected.
            expect: by_the_rules(permissions::Action::EndRoom, Reply::Closed("room_ended")),
        },
        Action {
            kind: "start_recording",
            setup: nothing,
            message: |_, _| json!({ "type": "start_recording" }),
            expect: by_the_rules(permissions::Action::StartRecording, OK),
        },
        Action {
            kind: "stop_recording",
            setup: nothing,
            message: |_, _| json!({ "type": "stop_recording" }),
            expect: by_the_rules(permissions::Action::StopRecording, OK),
        },
        Action {
            kind: "list_audience",
            setup: nothing,
            message: |_, _| json!({ "type": "list_audience" }),
            expect: [Reply::Other("audience_page"); 4],
        },
        Action {
            kind: "media_offer",
            setup: nothing,
            // Whether an offer may send is media's decision (tests/tests/e2e/media.rs); here: it
            // reaches media from every role and a bad one is refused alike.
            message: |_, _| json!({ "type": "media_offer", "sdp": "v=0" }),
            expect: [Reply::Error("invalid_sdp"); 4],
        },
        Action {
            kind: "broadcast_link",
            setup: nothing,
            // Anyone in the room may hear the broadcast, as over REST.
            message: |_, _| json!({ "type": "broadcast_link" }),
            expect: [Reply::Other("broadcast_link"); 4],
        },
        Action {
            kind: "renew_session",
            setup: nothing,
            // Everyone in the room may renew their own session; the token carries their own
            // role (tests/tests/e2e/live_rooms.rs checks what it may do).
            message: |_, _| json!({ "type": "renew_session" }),
            expect: [Reply::Other("session"); 4],
        },
        Action {
            kind: "ice_candidate",
            setup: nothing,
            message: |_, _| {
                json!({ "type": "ice_candidate", "candidate": "candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host" })
            },
            expect: [OK; 4],
        },
    ]
    .into_iter()
    .chain(std::iter::once(Action {
        kind: "accept_invitation",
        setup: nothing,
        message: |_, _| json!({ "type": "accept_invitation" }),
        // Without an invitation nobody can step up this way.
        expect: [NO_INVITATION; 4],
    }))
    .collect()
}

fn invite_listener(c: &Cast) -> Call {
    let path = format!(
        "/api/v1/rooms/{}/participants/{}/role",
        c.room,
        c.id(LISTENER)
    );
    (Method::POST, path, Some(json!({ "role": "speaker" })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signaling_message_against_every_role() {
    let t = TestServer::start().await;
    let table = signal_table();
    let covered: BTreeSet<&str> = table.iter().map(|a| a.kind).collect();
    let known: BTreeSet<&str> = stoa::wire::known_types().iter().copied().collect();
    assert_eq!(
        covered, known,
        "message types without a row, or rows for none"
    );

    let mut failures = Vec::new();
    for action in &table {
        for (me, role) in ROLES.iter().enumerate() {
            let mut cast = Cast::new(&t).await;
            for (method, path, body) in (action.setup)(&cast) {
                let answer = t.op(method.clone(), &path, body).await;
                assert!(
                    answer.status.is_success(),
                    "setup {path}: {:?}",
                    answer.body
                );
            }
            let message = (action.message)(&cast, me);
            let (got, answer) = answer_to(&mut cast.sockets[me], message).await;
            if got != action.expect[me] {
                failures.push(format!(
                    "{} as {role}: expected {:?}, got {answer}",
                    action.kind, action.expect[me]
                ));
            }
            // Whatever happened, the room still answers: the actor if still connected (not
            // after leaving or ending the room), else the other moderator.
            let witness = if matches!(got, Reply::Closed(_)) || action.kind == "leave" {
                OTHER_MOD
            } else {
                me
            };
            if got != Reply::Closed("room_ended") {
                cast.sockets[witness].sync().await;
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Session tokens

/// Opens a socket, sends `message`, and returns the error code and the close code.
async fn refused_at_handshake(t: &TestServer, message: Value) -> (String, u16) {
    let url = t.running().state.signal_url();
    let mut socket = SignalClient::open(&url).await;
    let mut message = message;
    message["id"] = json!(1);
    socket.send(message).await;
    let error = socket.wait_type("error").await;
    let (close, _) = socket.wait_closed().await;
    (s(&error["code"]), close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_cannot_be_forged_replayed_or_outlive_a_removal() {
    let t = TestServer::start().await;
    let room = t.create_room("Tokens").await;
    let other = t.create_room("Elsewhere").await;
    let moderator = t.participant(&room, "moderator", "Ada").await;
    let token = s(&moderator["token"]);
    let now = t.clock.now_ms();
    let join = |token: &str| json!({ "type": "join", "token": token });

    // Forged: the right claims under another key; or the real signature over changed claims
    // (a listener's token claiming to be a moderator's, a token moved to another room).
    let forged = TokenSigner::new([7; 32]).sign(&claims_of(&moderator, now));
    let listener = t.participant(&room, "listener", "Lee").await;
    let (_, listener_sig) = s(&listener["token"])
        .rsplit_once('.')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let mut promoted = claims_of(&listener, now);
    promoted.role = Role::Moderator;
    let mut moved = claims_of(&moderator, now);
    moved.room = RoomId::parse(&other).unwrap();
    let resigned = |claims: &Claims, sig: &str| {
        let signed = TokenSigner::new([0; 32]).sign(claims);
        let (body, _) = signed.rsplit_once('.').unwrap();
        format!("{body}.{sig}")
    };
    let (_, moderator_sig) = token.rsplit_once('.').unwrap();
    let tampered = [
        forged,
        resigned(&promoted, &listener_sig),
        resigned(&moved, moderator_sig),
        format!("{token}x"),
        token.replacen("st1.", "rs1.", 1),
    ];
    for bad in &tampered {
        for path in [
            format!("/api/v1/rooms/{room}"),
            format!("/api/v1/rooms/{other}"),
        ] {
            t.call(Method::GET, &path, Some(bad), None)
                .await
                .expect_problem(401, "invalid_token");
        }
        assert_eq!(
            refused_at_handshake(&t, join(bad)).await,
            ("invalid_token".into(), 4401),
            "{bad}"
        );
    }
    // Expired, on both edges.
    let mut old = claims_of(&moderator, now - 3_600_000);
    old.exp = now - 1;
    let expired = signer(&t).sign(&old);
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{room}"),
        Some(&expired),
        None,
    )
    .await
    .expect_problem(401, "token_expired");
    assert_eq!(
        refused_at_handshake(&t, join(&expired)).await,
        ("token_expired".into(), 4401)
    );
    // Replayed for another room: the room is inside the signed token, so REST refuses it
    // elsewhere and the socket only ever joins the token's own room.
    t.call(
        Method::GET,
        &format!("/api/v1/rooms/{other}"),
        Some(&token),
        None,
    )
    .await
    .expect_problem(403, "wrong_room");
    let mut ada = SignalClient::join(&moderator).await;
    assert_eq!(ada.welcome["snapshot"]["room"], room.as_str());

    // Removed and banned: the token, a rejoin with it and the resume token all stop working.
    for ban in [false, true] {
        let answer = t
            .participant(&room, "speaker", if ban { "Bo" } else { "Rex" })
            .await;
        let victim = SignalClient::join(&answer).await;
        let resume = victim.resume_token();
        let id = victim.participant_id();
        let mut victim = victim;
        let kind = if ban { "ban" } else { "remove" };
        ada.ok(json!({ "type": kind, "participant": id })).await;
        let (close, _) = victim.wait_closed().await;
        let (rest, code, close_expected) = if ban {
            ((403, "banned"), "banned", 4003)
        } else {
            ((401, "removed"), "removed", 4001)
        };
        assert_eq!(close, close_expected);
        t.call(
            Method::GET,
            &format!("/api/v1/rooms/{room}/participants"),
            Some(&s(&answer["token"])),
            None,
        )
        .await
        .expect_problem(rest.0, rest.1);
        assert_eq!(
            refused_at_handshake(&t, join(&s(&answer["token"]))).await,
            (code.into(), close_expected)
        );
        let resumed =
            refused_at_handshake(&t, json!({ "type": "resume", "resume_token": resume })).await;
        let expected = if ban {
            ("banned".into(), 4003)
        } else {
            ("resume_expired".into(), 4403)
        };
        assert_eq!(resumed, expected, "resume after {kind}");
    }
    ada.sync().await;
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Invite codes

/// Headers that may differ between two otherwise identical answers.
fn comparable(answer: &Answer) -> Vec<(String, String)> {
    answer
        .headers
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_unknown_invite_codes_look_the_same() {
    let t = TestServer::start().await;
    let room = t.create_room("Codes").await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    let revoked = s(&invite["code"]);
    t.op(
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/invites/{}", s(&invite["id"])),
        None,
    )
    .await
    .expect(204);
    // Well-formed, never issued.
    let unknown = "Zm9yZ2VkLWNvZGUtMTIzNA";
    assert_eq!(unknown.len(), revoked.len());

    let a = t.join(&revoked, "Eve").await;
    let b = t.join(unknown, "Eve").await;
    a.expect_problem(404, "invite_invalid");
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    assert_eq!(comparable(&a), comparable(&b));

    // The landing page: the same page, status and headers, but for the code it echoes.
    let page = |code: &str| {
        let url = t.url(&format!("/i/{code}"));
        let http = t.http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            let status = res.status();
            let headers: Vec<(String, String)> = res
                .headers()
                .iter()
                .filter(|(n, _)| *n != "date")
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            (status, headers, res.text().await.unwrap())
        }
    };
    let (sa, ha, pa) = page(&revoked).await;
    let (sb, hb, pb) = page(unknown).await;
    assert_eq!(sa, StatusCode::NOT_FOUND);
    assert!(pa.contains("\"reason\":\"invite_invalid\""), "{pa}");
    assert_eq!((sa, ha), (sb, hb));
    assert_eq!(pa.replace(&revoked, "CODE"), pb.replace(unknown, "CODE"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_codes_is_rate_limited_per_address_on_every_door() {
    let t = TestServer::start_with(|c| {
        c.limits.join_burst = 4;
        c.limits.joins_per_minute = 1;
    })
    .await;
    let guess = "AAAAAAAAAAAAAAAAAAAAAA";
    // Redeeming and looking at the page draw on one allowance.
    t.join(guess, "Eve")
        .await
        .expect_problem(404, "invite_invalid");
    t.join(guess, "Eve")
        .await
        .expect_problem(404, "invite_invalid");
    for _ in 0..2 {
        let page = t
            .http
            .get(t.url(&format!("/i/{guess}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
    }
    let limited = t.join(guess, "Eve").await;
    limited.expect_problem(429, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    let page = t
        .http
        .get(t.url(&format!("/i/{guess}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(page.headers().contains_key("retry-after"));
    // A real code is refused too while the address is limited: guessing cannot be told apart.
    let room = t.create_room("R").await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    t.join(&s(&invite["code"]), "Eve")
        .await
        .expect_problem(429, "rate_limited");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Headers, CORS and Origin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let t = TestServer::start().await;
    let key = t.api_key.clone();
    let big = "x".repeat(t.config.limits.max_body_bytes + 10);
    let room = t.create_room("Headers").await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    let requests: Vec<(&str, reqwest::RequestBuilder, u16, bool)> = vec![
        ("json", t.http.get(t.url("/healthz")), 200, false),
        ("metrics", t.http.get(t.url("/metrics")), 200, false),
        ("401", t.http.get(t.url("/api/v1/rooms")), 401, false),
        ("404", t.http.get(t.url("/nowhere")), 404, false),
        (
            "405",
            t.http.put(t.url("/api/v1/rooms")).bearer_auth(&key),
            405,
            false,
        ),
        (
            "413",
            t.http
                .post(t.url("/api/v1/rooms"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(big),
            413,
            false,
        ),
        ("426", t.http.get(t.url("/api/v1/signal")), 426, false),
        (
            "foreign origin",
            t.http
                .get(t.url("/healthz"))
                .header("origin", "https://evil.example"),
            403,
            false,
        ),
        ("home page", t.http.get(t.url("/")), 200, true),
        (
            "invite page",
            t.http.get(t.url(&format!("/i/{}", s(&invite["code"])))),
            200,
            true,
        ),
        ("bad invite page", t.http.get(t.url("/i/nope")), 404, true),
        ("asset", t.http.get(t.url("/app/app.js")), 200, true),
    ];
    for (what, request, status, page) in requests {
        let res = request.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{what}");
        let h = res.headers();
        let get = |name: &str| {
            h.get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(get("x-frame-options"), "DENY", "{what}");
        assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
        assert_eq!(get("cross-origin-opener-policy"), "same-origin", "{what}");
        assert_eq!(get("cross-origin-resource-policy"), "same-origin", "{what}");
        let permissions = get("permissions-policy");
        assert!(
            permissions.contains("microphone=(self)") && permissions.contains("camera=()"),
            "{what}: {permissions}"
        );
        let csp = get("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        if page {
            assert!(
                csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
                "{what}: {csp}"
            );
            assert!(!csp.contains("unsafe"), "{what}: {csp}");
        } else {
            assert!(csp.starts_with("default-src 'none'"), "{what}: {csp}");
            assert_eq!(get("cache-control"), "no-store", "{what}");
        }
        // Plain HTTP: no HSTS (browsers ignore it there, and it would pin a dev host).
        assert!(!h.contains_key("strict-transport-security"), "{what}");
        assert!(
            !h.keys().any(|k| k.as_str().starts_with("access-control-")),
            "{what}"
        );
    }
    t.stop().await;

    // Behind a TLS proxy (an https public URL), every answer asks for HTTPS from then on.
    let t =
        TestServer::start_with(|c| c.public_url = Some("https://rooms.example.org".into())).await;
    let addr = t.running().addr;
    for path in ["/healthz", "/", "/nowhere"] {
        let res = t
            .http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers()["strict-transport-security"],
            "max-age=31536000",
            "{path}"
        );
    }
    t.stop().await;
}

fn preflight(t: &TestServer, origin: &str) -> reqwest::RequestBuilder {
    t.http
        .request(Method::OPTIONS, t.url("/api/v1/rooms"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
}

fn access_control(h: &reqwest::header::HeaderMap) -> Vec<String> {
    h.keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| k.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_requests_are_refused_unless_configured() {
    let tools = "https://tools.example.org";
    let t = TestServer::start_with(|c| c.allowed_origins = vec![tools.into()]).await;
    let key = t.api_key.clone();
    // Foreign origins: preflight and request alike are refused, with no CORS headers.
    for origin in [
        "https://evil.example",
        "null",
        "https://tools.example.org.evil.example",
        "http://tools.example.org",
    ] {
        for request in [
            preflight(&t, origin),
            t.http
                .get(t.url("/api/v1/rooms"))
                .bearer_auth(&key)
                .header("origin", origin),
            t.http
                .post(t.url("/api/v1/join"))
                .header("origin", origin)
                .header("content-type", "text/plain")
                .body("{}"),
        ] {
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin}");
            assert!(access_control(res.headers()).is_empty(), "{origin}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "origin_not_allowed");
        }
    }
    // The configured origin: a preflight that names it (never `*`), and the request too.
    let res = preflight(&t, tools).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], tools);
    assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert!(!h.contains_key("access-control-allow-credentials"));
    assert_eq!(h["vary"], "origin");
    let res = t
        .http
        .get(t.url("/api/v1/rooms"))
        .bearer_auth(&key)
        .header("origin", tools)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], tools);
    // The server's own pages (same origin): served, and no CORS headers needed.
    // Also under another name than the public URL: the origin is the host asked for.
    let port = t.running().addr.port();
    for (origin, host) in [
        (t.base.clone(), format!("127.0.0.1:{port}")),
        (
            format!("http://localhost:{port}"),
            format!("localhost:{port}"),
        ),
    ] {
        let res = t
            .http
            .get(t.url("/api/v1/rooms"))
            .bearer_auth(&key)
            .header("origin", origin.as_str())
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{origin}");
        assert!(access_control(res.headers()).is_empty());
    }
    // Without `Origin` (scripts, tools): as always.
    t.op(Method::GET, "/api/v1/rooms", None).await.expect(200);
    // A preflight from our own origin is not a CORS request: the route answers (405).
    let res = preflight(&t, &t.base).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    t.stop().await;

    // By default no other origin is allowed, not even one that was configured above.
    let t = TestServer::start().await;
    let res = preflight(&t, tools).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(access_control(res.headers()).is_empty());
    t.stop().await;
}

/// Opens the signaling socket with an `Origin` header, as a browser page would.
async fn open_with_origin(
    url: &str,
    origin: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    tokio_tungstenite::connect_async(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signaling_socket_checks_origin() {
    let tools = "https://tools.example.org";
    let t = TestServer::start_with(|c| c.allowed_origins = vec![tools.into()]).await;
    let url = t.running().state.signal_url();
    for origin in ["https://evil.example", "null"] {
        match open_with_origin(&url, origin).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}");
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or(b"null")).unwrap();
                assert_eq!(body["code"], "origin_not_allowed");
            }
            other => panic!("{origin}: the handshake was not refused: {other:?}"),
        }
    }
    for origin in [t.base.as_str(), tools] {
        open_with_origin(&url, origin)
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
    }
    // No Origin at all (bots, the Rust client): allowed, and the token still decides.
    let room = t.create_room("WS").await;
    SignalClient::join(&t.participant(&room, "listener", "Bot").await).await;
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Roles the room took away

/// Redeems `code` again as the identity of an earlier join answer.
async fn redeem_as(t: &TestServer, code: &str, name: &str, identity: &str) -> Value {
    t.call(
        Method::POST,
        "/api/v1/join",
        None,
        Some(json!({ "invite": code, "display_name": name, "identity": identity })),
    )
    .await
    .expect(200)
}

async fn make_invite(t: &TestServer, token: &str, room: &str, role: &str) -> Answer {
    t.call(
        Method::POST,
        &format!("/api/v1/rooms/{room}/invites"),
        Some(token),
        Some(json!({ "role": role })),
    )
    .await
}

/// Whatever role the room last gave a person wins over every token issued before: a demoted
/// moderator or a speaker moved to the audience cannot get the role back by redeeming another
/// link, leaving and rejoining, resuming, or waiting for a restart. Only a new redemption of a
/// link that grants a role (a room decision) gives that role, and only to the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_room_took_away_stays_taken_from_older_tokens() {
    let t = TestServer::start().await;
    let room = t.create_room("Demotions").await;
    let public = s(&t.create_invite(&room, "listener", json!({})).await["code"]);
    let max_answer = t.participant(&room, "moderator", "Max").await;
    let mut max = SignalClient::join(&max_answer).await;
    let ada_answer = t.participant(&room, "moderator", "Ada").await;
    let ada_token = s(&ada_answer["token"]);
    let ada_identity = s(&ada_answer["identity"]);
    let mut ada = SignalClient::join(&ada_answer).await;
    let aid = ada.participant_id();
    let sam_answer = t.participant(&room, "speaker", "Sam").await;
    let sam_identity = s(&sam_answer["identity"]);
    let mut sam = SignalClient::join(&sam_answer).await;
    let sid = sam.participant_id();

    // Demoted, a moderator becomes a speaker; moved to the audience, a speaker a listener.
    max.ok(json!({ "type": "demote", "participant": aid }))
        .await;
    ada.wait_about("role_changed", &aid).await;
    max.ok(json!({ "type": "move_to_audience", "participant": sid }))
        .await;
    sam.wait_about("left_stage", &sid).await;
    make_invite(&t, &ada_token, &room, "moderator")
        .await
        .expect_problem(403, "moderator_only");

    // Both redeem the public listener link again as themselves, then leave. The new tokens
    // carry what the room left them, no more.
    let ada_again = redeem_as(&t, &public, "Ada", &ada_identity).await;
    let sam_again = redeem_as(&t, &public, "Sam", &sam_identity).await;
    make_invite(&t, &ada_token, &room, "moderator")
        .await
        .expect_problem(403, "moderator_only");
    assert_eq!(ada_again["role"], "speaker");
    assert_eq!(sam_again["role"], "listener");
    for mut c in [ada, sam] {
        c.ok(json!({ "type": "leave" })).await;
        c.wait_closed().await;
    }
    // Rejoining with the old tokens: the room's decision, not the token's role.
    let mut ada = SignalClient::join(&ada_answer).await;
    assert_eq!(ada.welcome["snapshot"]["you"]["role"], "speaker");
    ada.refused(
        json!({ "type": "demote", "participant": max.participant_id() }),
        "not_permitted",
    )
    .await;
    let sam = SignalClient::join(&sam_answer).await;
    assert_eq!(sam.welcome["snapshot"]["you"]["role"], "listener");
    // Resuming keeps it too.
    let url = s(&sam_answer["signal_url"]);
    let resume = sam.resume_token();
    sam.drop_connection();
    let sam = SignalClient::resume(&url, &resume).await;
    assert_eq!(sam.welcome["snapshot"]["you"]["role"], "listener");
    sam.close().await;

    // A moderator deliberately hands Ada a new moderator link: the new token moderates, the
    // old one still does not.
    let fresh = s(
        &make_invite(&t, &s(&max_answer["token"]), &room, "moderator")
            .await
            .expect(201)["code"],
    );
    let ada_new = redeem_as(&t, &fresh, "Ada", &ada_identity).await;
    assert_eq!(ada_new["role"], "moderator");
    make_invite(&t, &s(&ada_new["token"]), &room, "listener")
        .await
        .expect(201);
    make_invite(&t, &ada_token, &room, "moderator")
        .await
        .expect_problem(403, "moderator_only");
    ada.ok(json!({ "type": "leave" })).await;
    ada.wait_closed().await;
    max.ok(json!({ "type": "leave" })).await;
    max.wait_closed().await;

    // And after a restart.
    let t = t.restart().await;
    make_invite(&t, &ada_token, &room, "moderator")
        .await
        .expect_problem(403, "moderator_only");
    make_invite(&t, &s(&ada_new["token"]), &room, "listener")
        .await
        .expect(201);
    let mut answer = sam_answer.clone();
    answer["signal_url"] = json!(t.running().state.signal_url());
    let sam = SignalClient::join(&answer).await;
    assert_eq!(sam.welcome["snapshot"]["you"]["role"], "listener");
    sam.close().await;
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connections that send nothing, and what closes them

/// Reads until the server closes the connection; how long that took, or None if it was still
/// open after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .ok()
        .map(|()| start.elapsed())
}

async fn raw(t: &TestServer, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(t.running().addr)
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// The idle bound the tests below run with (the default is 30 s).
const IDLE_MS: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalled_connections_are_closed_on_a_timer() {
    let t = TestServer::start_with(|c| {
        c.limits.idle_timeout_ms = IDLE_MS;
        c.limits.header_read_timeout_ms = IDLE_MS;
        c.signal.ping_interval_ms = 200;
        c.signal.ping_timeout_ms = 1_000;
    })
    .await;
    let bound = Duration::from_millis(IDLE_MS * 5);
    let cases: [(&str, &[u8]); 5] = [
        ("nothing at all", b""),
        ("an h2c preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("half a request line", b"GET /healthz HT"),
        (
            "a stalled body",
            b"POST /api/v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"invite\":",
        ),
        (
            "an idle keep-alive connection",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    let mut streams = Vec::new();
    for (what, bytes) in cases {
        streams.push((what, raw(&t, bytes).await));
    }
    for (what, stream) in &mut streams {
        assert!(
            closed_within(stream, bound).await.is_some(),
            "{what}: still open after {bound:?}"
        );
    }
    // A signaling socket that answers pings stays open however long it is quiet.
    let room = t.create_room("Quiet").await;
    let mut quiet = SignalClient::join(&t.participant(&room, "listener", "Q").await).await;
    let until = Instant::now() + Duration::from_millis(IDLE_MS * 3);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        // Reading is what answers the server's pings.
        quiet.next_within(left).await;
        assert!(quiet.closed.is_none(), "{:?}", quiet.closed);
    }
    quiet.sync().await;
    assert!(quiet.closed.is_none());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_counted_and_do_not_starve_others() {
    let t = TestServer::start_with(|c| {
        c.limits.idle_timeout_ms = 2_000;
        c.limits.max_connections = 3;
        c.signal.ping_interval_ms = 200;
        c.signal.ping_timeout_ms = 1_000;
    })
    .await;
    // The test's own HTTP client must not hold pooled connections that count against the limit.
    // Four at once: the server counts each in a task of its own, so which of them is the
    // fourth is the runtime's choice (the last opened was not always the one refused).
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(raw(&t, b"").await);
    }
    let closed = futures::future::join_all(
        streams
            .iter_mut()
            .map(|stream| closed_within(stream, Duration::from_secs(10))),
    )
    .await;
    let took: Vec<Duration> = closed
        .into_iter()
        .map(|c| c.expect("every connection closed, refused or by the idle timer"))
        .collect();
    // One is closed at once, long before the idle timer; the others go on the timer.
    let refused = took
        .iter()
        .filter(|t| **t < Duration::from_millis(1_500))
        .count();
    assert_eq!(refused, 1, "closed after {took:?}");
    // With those gone, the server serves others again.
    let fresh = stoa::http_client::client();
    let metrics = fresh
        .get(t.url("/metrics"))
        .bearer_auth(&t.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals = metrics
        .lines()
        .find(|l| l.starts_with("stoa_http_connections_refused_total"))
        .unwrap_or_else(|| panic!("no refusal counter in {metrics}"));
    assert!(refusals.ends_with(" 1"), "{refusals}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Keep-alive after a refusal, and ambiguous message framing

/// Sends raw bytes on a new connection and returns the response head, lower-cased.
async fn response_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a response")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the head ended: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

fn post(path: &str, auth: Option<&str>, body: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_is_read_say_connection_close() {
    let t = TestServer::start_with(|c| {
        c.limits.join_burst = 1;
        c.limits.joins_per_minute = 1;
    })
    .await;
    let room = t.create_room("Close").await;
    let listener = t.participant(&room, "listener", "Lee").await;
    let body = json!({ "role": "listener", "label": "x".repeat(200) }).to_string();
    let invites = format!("/api/v1/rooms/{room}/invites");
    let join_body =
        json!({ "invite": "AAAAAAAAAAAAAAAAAAAAAA", "display_name": "Eve" }).to_string();
    let cases = [
        ("401", post(&invites, None, &body)),
        ("401", post(&invites, Some("stoa_sk_wrong"), &body)),
        ("403", post(&invites, Some(&s(&listener["token"])), &body)),
        ("429", post("/api/v1/join", None, &join_body)),
    ];
    for (status, request) in cases {
        let mut stream = raw(&t, &request).await;
        let head = response_head(&mut stream).await;
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            closed_within(&mut stream, Duration::from_secs(10))
                .await
                .is_some()
        );
    }
    // Content-Length and chunked together: answered, then the connection is closed.
    let mut stream = raw(
        &t,
        b"POST /api/v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let head = response_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 4"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(
        closed_within(&mut stream, Duration::from_secs(10))
            .await
            .is_some()
    );
    // Also when the request would otherwise succeed.
    let body = r#"{"title":"Framed twice"}"#;
    let request = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        t.api_key,
        body.len(),
        body.len()
    );
    let mut stream = raw(&t, request.as_bytes()).await;
    let head = response_head(&mut stream).await;
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(
        closed_within(&mut stream, Duration::from_secs(10))
            .await
            .is_some()
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The client address behind a proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_takes_the_right_most_address_across_every_header_line() {
    let t = TestServer::start_with(|c| {
        c.trust_forwarded_for = true;
        c.limits.join_burst = 3;
        c.limits.joins_per_minute = 1;
    })
    .await;
    let body = json!({ "invite": "AAAAAAAAAAAAAAAAAAAAAA", "display_name": "Eve" });
    let mut statuses = Vec::new();
    for i in 0..6 {
        // The client's own line first, then the one HAProxy (`option forwardfor`) appends.
        let res = t
            .http
            .post(t.url("/api/v1/join"))
            .header("x-forwarded-for", format!("10.1.2.{i}, 10.9.9.{i}"))
            .header("x-forwarded-for", "203.0.113.7")
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 429, 429, 429]);
    // Another client behind the same proxy has its own allowance.
    let res = t
        .http
        .post(t.url("/api/v1/join"))
        .header("x-forwarded-for", "203.0.113.8")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The operator key

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_operator_keys_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for weak in [
        "a",
        "secret",
        "stoa_sk_loadgen",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let config = stoa::Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            demo_room: false,
            api_key: Some(weak.into()),
            ..stoa::Config::default()
        };
        let refused = stoa::server::start_with_clock(config, stoa::Clock::manual()).await;
        let message = format!("{:#}", refused.err().expect("refused"));
        assert!(message.contains("128 bits"), "{weak}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_throttled_per_address() {
    let t = TestServer::start_with(|c| {
        c.limits.auth_failure_burst = 5;
        c.limits.auth_failures_per_minute = 1;
    })
    .await;
    for i in 0..5 {
        t.call(
            Method::GET,
            "/api/v1/rooms",
            Some(&format!("stoa_sk_guess{i}")),
            None,
        )
        .await
        .expect_problem(401, "invalid_api_key");
    }
    for credential in ["stoa_sk_guess", "garbage", t.api_key.as_str()] {
        let answer = t
            .call(Method::GET, "/api/v1/rooms", Some(credential), None)
            .await;
        answer.expect_problem(429, "too_many_failures");
        assert!(answer.headers.contains_key("retry-after"));
    }
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Files in the data folder

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestServer::start().await;
    t.create_room("Private").await;
    let data = t.config.data_dir.clone();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = [
        "stoa.db",
        "stoa.db-wal",
        "stoa.db-shm",
        "operator.key",
        "signing.key",
    ];
    assert_eq!(mode(&data), 0o700);
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "new {f}");
    }
    // A folder made by an older version, or by hand with the usual umask.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let t = t.restart().await;
    t.create_room("Still private").await;
    assert_eq!(mode(&data), 0o700);
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    t.stop().await;
}
