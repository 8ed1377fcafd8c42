//! Every configurable limit, set low: the client over it gets its stable code, and the server,
//! the room and everyone else carry on. Defaults are documented in docs/operations.md.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use stoa_tests::TestServer;
use stoa_tests::signal::SignalClient;

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

/// Joins the room's socket and expects the handshake to be refused with `code`.
async fn join_refused(answer: &Value, code: &str) -> u16 {
    let mut socket = SignalClient::open(&s(&answer["signal_url"])).await;
    socket
        .send(json!({ "type": "join", "id": 1, "token": answer["token"] }))
        .await;
    let error = socket.wait_type("error").await;
    assert_eq!(error["code"], code, "{error}");
    socket.wait_closed().await.0
}

async fn still_healthy(t: &TestServer) {
    t.call(Method::GET, "/healthz", None, None)
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rooms_are_bounded() {
    let t = TestServer::start_with(|c| c.signal.max_live_rooms = 2).await;
    let rooms = [
        t.create_room("One").await,
        t.create_room("Two").await,
        t.create_room("Three").await,
    ];
    let mut first = SignalClient::join(&t.participant(&rooms[0], "listener", "A").await).await;
    let mut second = SignalClient::join(&t.participant(&rooms[1], "listener", "B").await).await;
    // A third room cannot go live…
    let waiting = t.participant(&rooms[2], "moderator", "C").await;
    assert_eq!(join_refused(&waiting, "too_many_rooms").await, 4403);
    // …but the live ones take more people.
    let mut more = SignalClient::join(&t.participant(&rooms[1], "listener", "D").await).await;
    more.sync().await;
    still_healthy(&t).await;
    // Once a room empties, its place is free.
    first.ok(json!({ "type": "leave" })).await;
    first.wait_closed().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.running().state.live.live_count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room did not stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = SignalClient::join(&waiting).await;
    third.sync().await;
    second.sync().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_stage_sizes_are_bounded() {
    let t = TestServer::start_with(|c| {
        c.signal.room_max_participants = 2;
        c.signal.room_max_stage = 1;
    })
    .await;
    let room = t.create_room("Small").await;
    let mut ada = SignalClient::join(&t.participant(&room, "moderator", "Ada").await).await;
    // The stage (1) holds Ada; a speaker's token cannot add a second.
    let sam = t.participant(&room, "speaker", "Sam").await;
    assert_eq!(join_refused(&sam, "stage_full").await, 4403);
    let lee = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    let lid = lee.participant_id();
    // The room (2) is full for listeners…
    let late = t.participant(&room, "listener", "Late").await;
    assert_eq!(join_refused(&late, "room_full").await, 4403);
    // …while its moderators may still come in, so a full room can always be run.
    let mut mo = SignalClient::join(&t.participant(&room, "moderator", "Mo").await).await;
    mo.sync().await;
    // Nobody can be brought onto a full stage either.
    ada.refused(
        json!({ "type": "invite_to_stage", "participant": lid }),
        "stage_full",
    )
    .await;
    ada.refused(
        json!({ "type": "set_role", "participant": lid, "role": "speaker" }),
        "stage_full",
    )
    .await;
    let mut lee = lee;
    lee.sync().await;
    ada.sync().await;
    still_healthy(&t).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_address_are_bounded() {
    let t = TestServer::start_with(|c| c.signal.max_sockets_per_address = 3).await;
    let url = t.running().state.signal_url();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(SignalClient::open(&url).await);
    }
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "too_many_sockets");
        }
        other => panic!("a fourth socket was not refused: {other:?}"),
    }
    // Closing one frees its place.
    open.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    still_healthy(&t).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_and_size_are_bounded() {
    let t = TestServer::start_with(|c| {
        c.signal.messages_per_sec = 1;
        c.signal.message_burst = 3;
        c.signal.max_message_bytes = 1024;
    })
    .await;
    let room = t.create_room("Chatty").await;
    let mut lee = SignalClient::join(&t.participant(&room, "listener", "Lee").await).await;
    let mut ada = SignalClient::join(&t.participant(&room, "moderator", "Ada").await).await;
    for id in 0..5 {
        lee.send(json!({ "type": "ping", "id": id })).await;
    }
    // The burst (3, the `join` included) answers, the rest is refused, not queued.
    let mut refused = 0;
    for _ in 0..5 {
        let reply = lee
            .wait(|m| m["type"] == "pong" || m["type"] == "error")
            .await;
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused} of 5 pings refused");
    // Over the size limit: refused, the socket stays (the rate refills at one a second of the
    // server's clock, which this test moves by hand).
    t.clock.advance(Duration::from_millis(1100));
    lee.send_text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1100)))
        .await;
    assert_eq!(lee.wait_type("error").await["code"], "message_too_large");
    t.clock.advance(Duration::from_millis(1100));
    lee.sync().await;
    // Past the hard cap (16 times the limit, at least 1 MiB) the connection is dropped; the
    // room and the others carry on.
    // The server may cut the connection while the frame is still being written: then the
    // write fails, and that is the drop.
    lee.send_text_until_dropped("x".repeat((1 << 20) + 1)).await;
    let (code, _) = lee.wait_closed().await;
    assert_eq!(code, 1006, "dropped without a close frame");
    ada.sync().await;
    still_healthy(&t).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded() {
    let t = TestServer::start_with(|c| c.limits.max_body_bytes = 1024).await;
    let body = json!({ "title": "x".repeat(1100) }).to_string();
    // Declared length over the limit: refused before reading.
    let declared = t
        .http
        .post(t.url("/api/v1/rooms"))
        .bearer_auth(&t.api_key)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    // Chunked, no length given: cut off at the limit while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.running().addr;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        t.api_key
    );
    for chunk in body.as_bytes().chunks(100) {
        request += &format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        );
    }
    request += "0\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"body_too_large""#), "{answer}");
    still_healthy(&t).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let t = TestServer::start_with(|c| c.limits.header_read_timeout_ms = 300).await;
    let addr = t.running().addr;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server closes the connection (possibly after a 408) instead of waiting for ever.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("the half-sent request is still held open after 10 s");
    assert!(closed.is_ok() || closed.is_err(), "read ended");
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("200 OK"), "{text}");
    // A prompt client on another connection is served as usual.
    still_healthy(&t).await;
}
