//! Stoa nodes as a cluster on a real Redis (Debian's `redis-server`, started here on an
//! ephemeral port in a temporary folder): the registry, room placement, what a node refuses
//! to start with, and what users see while Redis is down. Each node is a real `stoa serve`
//! process, so a node can be killed with SIGKILL.
//!
//! `redis-cli`, a client nobody on the team wrote, reads what the nodes wrote.

mod common;
#[path = "../../tests/src/nginx.rs"]
mod nginx;
#[allow(dead_code)] // each test binary compiles this module and uses some of it
#[path = "../../tests/src/postgres.rs"]
mod postgres;
#[path = "../../tests/src/redis.rs"]
mod redis;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use nginx::Nginx;
use redis::{Redis, free_port};

const HEARTBEAT_MS: u64 = 200;
const NODE_TTL_MS: u64 = 1_000;
/// Shared by the nodes of one cluster (a real deployment gives every node the same two).
const API_KEY: &str = "stoa_sk_clustertestkeyclustertestkey0123456789";
const SIGNING_KEY: &str = "q2R0c3RvYS1jbHVzdGVyLXRlc3Qtc2lnbmluZy1rZXk";
const OTHER_SIGNING_KEY: &str = "b3RoZXItY2x1c3Rlci10ZXN0LXNpZ25pbmcta2V5eHg";

/// One `stoa serve` process of the cluster.
struct Node {
    child: Child,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

/// Where REST calls go: a node, or a load balancer in front of the nodes.
struct Endpoint {
    url: String,
    http: reqwest::Client,
}

impl std::ops::Deref for Node {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

struct NodeSpec<'a> {
    name: &'a str,
    redis_url: String,
    /// Unset: the node's own SQLite file (fine for what concerns Redis alone).
    database_url: Option<String>,
    signing_key: &'a str,
    api_key: &'a str,
    /// Behind a load balancer: its address (the nodes' public URL, and the peer whose
    /// `X-Forwarded-For` they take) and the node's own port (its `node_url`).
    behind: Option<(String, u16)>,
}

impl<'a> NodeSpec<'a> {
    fn new(name: &'a str, redis: &Redis) -> Self {
        NodeSpec {
            name,
            redis_url: redis.url(),
            database_url: None,
            signing_key: SIGNING_KEY,
            api_key: API_KEY,
            behind: None,
        }
    }

    fn command(&self, dir: &Path) -> Command {
        let config = dir.join("stoa.toml");
        std::fs::write(
            &config,
            format!(
                "trust_forwarded_for = {}\n\
                 [cluster]\nheartbeat_ms = {HEARTBEAT_MS}\nnode_ttl_ms = {NODE_TTL_MS}\n\
                 [media]\nworkers = 1\nmax_connections = 10\n\
                 [signal]\nmax_sockets_per_address = 1000\n\
                 [limits]\njoins_per_minute = 10000\njoin_burst = 10000\n",
                self.behind.is_some()
            ),
        )
        .unwrap();
        let bind = match &self.behind {
            Some((_, port)) => format!("127.0.0.1:{port}"),
            None => "127.0.0.1:0".to_owned(),
        };
        let mut command = Command::new(common::BIN);
        command
            .args(["serve", "--bind", &bind, "--no-demo", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&config)
            .env("STOA_REDIS_URL", &self.redis_url)
            .env("STOA_NODE_NAME", self.name)
            .env("STOA_API_KEY", self.api_key)
            .env("STOA_SIGNING_KEY", self.signing_key)
            .env("RUST_LOG", "warn");
        if let Some(url) = &self.database_url {
            command.env("STOA_DATABASE_URL", url);
        }
        if let Some((url, port)) = &self.behind {
            // Clients are told `localhost`; the other nodes pass calls to the address.
            command
                .args(["--public-url", url, "--node-url"])
                .arg(format!("http://localhost:{port}"))
                .arg("--internal-url")
                .arg(format!("http://127.0.0.1:{port}"));
        }
        command
    }

    fn start(self) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut child = self
            .command(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("stoa starts");
        let (banner_url, _) = common::read_banner(&mut child, false);
        // The banner names the public URL, which behind a load balancer is not the node's.
        let url = match &self.behind {
            Some((_, port)) => format!("http://127.0.0.1:{port}"),
            None => banner_url,
        };
        Node {
            child,
            endpoint: Endpoint::new(url),
            _dir: dir,
        }
    }

    /// Runs a node expected to refuse to start; its exit status and standard error.
    fn refused(self) -> (std::process::ExitStatus, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut child = self
            .command(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stoa starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("a node that should refuse to start is still running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Endpoint {
    fn new(url: String) -> Endpoint {
        Endpoint {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("node answers");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let mut body: Value = response.json().await.unwrap_or(Value::Null);
        if let Some(value) = retry_after {
            body["_retry_after"] = json!(value.to_str().unwrap());
        }
        (status, body)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn node_names(&self) -> Vec<String> {
        let list = self.get("/api/v1/cluster/nodes").await;
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn room_with_invite(&self, role: &str) -> (String, String) {
        let (status, room) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/rooms",
                Some(json!({"title": "Cluster test"})),
            )
            .await;
        assert_eq!(status, 201, "{room}");
        let room = room["id"].as_str().unwrap().to_owned();
        let code = self.invite(&room, role).await;
        (room, code)
    }

    async fn invite(&self, room: &str, role: &str) -> String {
        let (status, invite) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room}/invites"),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(status, 201, "{invite}");
        invite["code"].as_str().unwrap().to_owned()
    }

    async fn join(&self, code: &str, name: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/v1/join",
            Some(json!({"invite": code, "display_name": name})),
        )
        .await
    }

    fn signal_url(&self) -> String {
        format!("{}/api/v1/signal", self.url.replacen("http://", "ws://", 1))
    }
}

impl Node {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Node {
    /// SIGTERM, as systemd's `stop` or a rolling upgrade sends; the node stops by itself.
    fn stop(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A signaling socket that has sent `join` or `resume`; what the server answered first.
struct Socket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Socket {
    async fn open(url: &str, hello: Value) -> (Socket, Value) {
        let (ws, _) = connect_async(url).await.expect("socket opens");
        let mut socket = Socket { ws };
        socket.send(hello).await;
        let first = socket.next_message().await.expect("an answer to join");
        (socket, first)
    }

    async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message, answering the server's pings; `None` once closed.
    async fn next_message(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a message within 10 s")?;
            match frame {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(value);
                }
                Ok(Message::Close(frame)) => {
                    return Some(json!({
                        "type": "_close",
                        "code": frame.map(|f| u16::from(f.code)),
                    }));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Messages until one of type `kind`.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next_message().await.expect("socket open");
            if message["type"] == kind {
                return message;
            }
        }
    }
}

/// Polls `check` every 50 ms until it holds or `within` passes; how long it took.
async fn within<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_and_leave_the_registry_when_they_stop_or_die() {
    let redis = Redis::start();
    let a = NodeSpec::new("node-a", &redis).start();
    let mut b = NodeSpec::new("node-b", &redis).start();
    let mut c = NodeSpec::new("node-c", &redis).start();

    let list = a.get("/api/v1/cluster/nodes").await;
    assert_eq!(list["clustered"], true);
    assert_eq!(list["this_node"], "node-a");
    let names = a.node_names().await;
    assert_eq!(names, ["node-a", "node-b", "node-c"]);
    let b_seen = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-b")
        .unwrap()
        .clone();
    assert_eq!(b_seen["node_url"], b.url);
    assert_eq!(b_seen["signal_url"], b.signal_url());
    assert_eq!(b_seen["capacity"], 10);
    assert_eq!(b_seen["media"].as_array().unwrap().len(), 1);

    // What the nodes wrote, read by redis-cli: one key per node, expiring, refreshed.
    let keys = redis.cli(&["--raw", "KEYS", "stoa:node:*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["stoa:node:node-a", "stoa:node:node-b", "stoa:node:node-c"]
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "stoa:node:node-b"])
        .trim()
        .parse()
        .unwrap();
    assert!(0 < ttl && ttl <= NODE_TTL_MS as i64, "PTTL {ttl}");
    let record: Value =
        serde_json::from_str(&redis.cli(&["--raw", "GET", "stoa:node:node-b"])).unwrap();
    assert_eq!(record["node_url"], b.url);

    // A node that stops cleanly leaves at once.
    b.terminate();
    assert_eq!(a.node_names().await, ["node-a", "node-c"]);

    // One that dies is gone once its record expires.
    let killed_at = Instant::now();
    c.kill();
    within(
        Duration::from_secs(5),
        "the killed node leaves the registry",
        || async { a.node_names().await == ["node-a"] },
    )
    .await;
    let gone_after = killed_at.elapsed();
    assert!(
        gone_after <= Duration::from_millis(NODE_TTL_MS + 500),
        "a dead node stayed listed for {gone_after:?}"
    );

    // The list is the operator's: a participant's token and no credential are refused.
    let (_, code) = a.room_with_invite("moderator").await;
    let (_, joined) = a.join(&code, "Ada").await;
    let token = joined["token"].as_str().unwrap();
    let response = a
        .http
        .get(format!("{}/api/v1/cluster/nodes", a.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = a
        .http
        .get(format!("{}/api/v1/cluster/nodes", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_settings_that_cannot_work() {
    let redis = Redis::start();
    let _a = NodeSpec::new("node-a", &redis).start();

    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let (status, err) = NodeSpec {
        redis_url: nobody.clone(),
        ..NodeSpec::new("node-x", &redis)
    }
    .refused();
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot reach Redis at {nobody}")),
        "{err}"
    );

    let (status, err) = NodeSpec {
        redis_url: "http://127.0.0.1:6379".into(),
        ..NodeSpec::new("node-x", &redis)
    }
    .refused();
    assert!(!status.success());
    assert!(err.contains("redis_url must start with redis://"), "{err}");

    // A password in the URL is never printed.
    let (_, err) = NodeSpec {
        redis_url: format!("redis://stoa:hunter2hunter2@127.0.0.1:{}", free_port()),
        ..NodeSpec::new("node-x", &redis)
    }
    .refused();
    assert!(err.contains("redis://stoa:***@127.0.0.1:"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let (status, err) = NodeSpec {
        signing_key: OTHER_SIGNING_KEY,
        ..NodeSpec::new("node-x", &redis)
    }
    .refused();
    assert!(!status.success());
    assert!(
        err.contains("token signing key differs") && err.contains("STOA_SIGNING_KEY"),
        "{err}"
    );

    let (status, err) = NodeSpec {
        api_key: "stoa_sk_anotherclustersoperatorkey0123456789",
        ..NodeSpec::new("node-x", &redis)
    }
    .refused();
    assert!(!status.success());
    assert!(
        err.contains("operator key differs") && err.contains("STOA_API_KEY"),
        "{err}"
    );

    // Another running node's name: refused once the name has not come free for a whole TTL.
    let (status, err) = NodeSpec::new("node-a", &redis).refused();
    assert!(!status.success());
    assert!(
        err.contains("\"node-a\" is taken by a running node"),
        "{err}"
    );

    // None of them was listed.
    assert_eq!(_a.node_names().await, ["node-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_lives_on_one_node_and_sockets_elsewhere_are_sent_there() {
    let redis = Redis::start();
    let a = NodeSpec::new("node-a", &redis).start();
    let b = NodeSpec::new("node-b", &redis).start();

    // Load node-a (capacity 10): four open sockets make it the fuller node.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_async(a.signal_url()).await.unwrap().0);
    }
    within(
        Duration::from_secs(5),
        "node-a reports its load",
        || async { a.get("/api/v1/cluster/nodes").await["nodes"][0]["load"]["connections"] == 4 },
    )
    .await;

    // The room is made through node-a (its store; PostgreSQL shares it across nodes), and the
    // first join places it on the least full node, node-b.
    let (room, code) = a.room_with_invite("moderator").await;
    let (status, ada) = a.join(&code, "Ada").await;
    assert_eq!(status, 200, "{ada}");
    assert_eq!(
        ada["signal_url"],
        b.signal_url(),
        "placed on the least full node"
    );
    let lease = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    assert!(lease.starts_with("node-b "), "lease {lease:?}");

    // The same room asked again is where it was, even though node-b is now the fuller one.
    drop(idle);
    let code2 = a.invite(&room, "listener").await;
    let (_, lee) = a.join(&code2, "Lee").await;
    assert_eq!(lee["signal_url"], b.signal_url());

    // A socket that reaches node-a for the room is told where the room lives.
    let (mut socket, first) = Socket::open(
        &a.signal_url(),
        json!({"type": "join", "id": 1, "token": ada["token"]}),
    )
    .await;
    assert_eq!(first["type"], "moved", "{first}");
    assert_eq!(first["signal_url"], b.signal_url());
    let closed = socket.until("_close").await;
    assert_eq!(closed["code"], 4307);
    let lease_after = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    assert_eq!(lease_after, lease, "a redirect leaves the lease alone");

    // The room's node is killed. It stays listed until its record expires, but a socket for
    // the room that reaches node-a finds it refusing connections and node-a takes the room at
    // once, under a new epoch (node-a's store has the room: the welcome follows).
    let mut b = b;
    b.kill();
    let started = Instant::now();
    let (_socket, first) = Socket::open(
        &a.signal_url(),
        json!({"type": "join", "id": 1, "token": ada["token"]}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(first["type"], "welcome", "{first}");
    assert!(
        took < Duration::from_millis(NODE_TTL_MS),
        "took the room over in {took:?}, not before the dead node's record expired"
    );
    let epoch = |lease: &str| -> u64 { lease.trim().rsplit(' ').next().unwrap().parse().unwrap() };
    let taken = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    assert!(taken.starts_with("node-a "), "lease {taken:?}");
    assert!(epoch(&taken) > epoch(&lease), "{taken:?} after {lease:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_live_rooms_go_on_and_new_joins_get_503() {
    let mut redis = Redis::start();
    let a = NodeSpec::new("node-a", &redis).start();
    let (room, code) = a.room_with_invite("moderator").await;
    let (_, ada) = a.join(&code, "Ada").await;
    assert_eq!(ada["signal_url"], a.signal_url());
    let (mut ada_socket, welcome) = Socket::open(
        &a.signal_url(),
        json!({"type": "join", "id": 1, "token": ada["token"]}),
    )
    .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let resume_token = welcome["resume_token"].as_str().unwrap().to_owned();
    let listener_code = a.invite(&room, "listener").await;

    redis.kill();

    // New joins: a clear 503 with a stable code and Retry-After, and no use of the invite
    // spent.
    let (status, refused) = a.join(&listener_code, "Lee").await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["code"], "cluster_unavailable");
    assert_eq!(refused["_retry_after"], "5");
    let invites = a.get(&format!("/api/v1/rooms/{room}/invites")).await;
    let listener_invite = invites["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "listener")
        .unwrap()
        .clone();
    assert_eq!(listener_invite["uses"], 0, "{listener_invite}");
    // The operator's view of the cluster says why.
    let (status, problem) = a
        .call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (503, Some("cluster_unavailable"))
    );

    // The live room goes on: Ada's socket still works, and a dropped socket resumes here.
    ada_socket.send(json!({"type": "ping", "id": 7})).await;
    let pong = ada_socket.until("pong").await;
    assert_eq!(pong["id"], 7);
    drop(ada_socket);
    let (_resumed, welcome) = Socket::open(
        &a.signal_url(),
        json!({"type": "resume", "id": 2, "resume_token": resume_token}),
    )
    .await;
    assert_eq!(
        welcome["type"], "welcome",
        "resumed while Redis is down: {welcome}"
    );
    assert_eq!(welcome["snapshot"]["you"]["role"], "moderator", "{welcome}");

    // Redis comes back empty: the node registers again, keeps its room, and joins work.
    redis.restart();
    // Redis answers (an empty list) before the node's next heartbeat has written it back.
    within(
        Duration::from_secs(5),
        "the node registers again",
        || async {
            let (status, list) = a
                .call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)
                .await;
            status == 200 && list["nodes"][0]["name"] == "node-a"
        },
    )
    .await;
    assert_eq!(a.node_names().await, ["node-a"]);
    within(
        Duration::from_secs(5),
        "the live room's lease is written back",
        || async {
            redis
                .cli(&["--raw", "GET", &format!("stoa:room:{room}")])
                .starts_with("node-a ")
        },
    )
    .await;
    let (status, lee) = a.join(&listener_code, "Lee").await;
    assert_eq!(status, 200, "{lee}");
    assert_eq!(lee["signal_url"], a.signal_url());
    let (_lee_socket, welcome) = Socket::open(
        &a.signal_url(),
        json!({"type": "join", "id": 1, "token": lee["token"]}),
    )
    .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
}

/// Opens a socket at `url` and follows `moved` to the room's node; the welcome (or refusal)
/// and the node's signaling URL that gave it.
async fn join_following(url: &str, hello: Value) -> (Socket, Value, String) {
    let mut url = url.to_owned();
    for _ in 0..3 {
        let (socket, first) = Socket::open(&url, hello.clone()).await;
        if first["type"] == "moved" {
            url = first["signal_url"].as_str().unwrap().to_owned();
            continue;
        }
        return (socket, first, url);
    }
    panic!("moved more than twice");
}

/// Waits for 100 ms of `hz` in what `listener` hears from frames that arrived after `since`.
async fn hears_tone(
    listener: &mut stoa_client::Listener,
    hz: f32,
    since: Instant,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    let mut recent: std::collections::VecDeque<i16> = std::collections::VecDeque::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, listener.next())
            .await
            .unwrap_or_else(|_| panic!("no {hz} Hz heard within {within:?}"))
            .expect("media open");
        if frame.at < since {
            continue;
        }
        recent.extend(frame.pcm.iter().copied());
        while recent.len() > 4_800 {
            recent.pop_front();
        }
        if recent.len() == 4_800 && stoa_client::audio::tone_present(recent.make_contiguous(), hz) {
            return;
        }
    }
}

/// Waits until each of `people` has its place back (`Resumed`), after its room moved.
async fn all_resume(people: [(&mut stoa_client::Room, &str); 2], within: Duration) {
    for (room_of, name) in people {
        next_event_matching(room_of, within, &format!("{name} is back"), |e| {
            matches!(e, stoa_client::Event::Resumed(_))
        })
        .await;
    }
}

/// Waits until each of `people` has a new media connection on the room's new node (the client
/// makes it by itself); losing it instead fails the test.
async fn all_media_back(people: [(&mut stoa_client::Room, &str); 2]) {
    use stoa_client::Event;
    for (room_of, name) in people {
        next_event_matching(
            room_of,
            Duration::from_secs(10),
            &format!("{name}'s media is back"),
            |e| {
                assert!(!matches!(e, Event::MediaLost(_)), "{name}: {e:?}");
                matches!(e, Event::MediaReconnected)
            },
        )
        .await;
    }
}

async fn next_event_matching(
    room: &mut stoa_client::Room,
    within: Duration,
    what: &str,
    pick: impl Fn(&stoa_client::Event) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, room.next_event())
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
            .unwrap_or_else(|| panic!("{what}: the room closed"));
        if pick(&event) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_postgresql_and_redis_serve_one_room_and_its_people_survive_its_node() {
    use stoa_client::audio::AudioSource;
    use stoa_client::{Event, InviteLink, JoinOptions, Room};

    let redis = Redis::start();
    let pg = postgres::Postgres::start();
    let database = pg.fresh_database();
    let spec = |name: &'static str| NodeSpec {
        database_url: Some(database.clone()),
        ..NodeSpec::new(name, &redis)
    };
    let mut nodes = vec![
        spec("node-a").start(),
        spec("node-b").start(),
        spec("node-c").start(),
    ];

    // Made through node-a, joined through node-b: the first join places the room.
    let (room, moderator_code) = nodes[0].room_with_invite("moderator").await;
    let (status, ada) = nodes[1].join(&moderator_code, "Ada").await;
    assert_eq!(status, 200, "{ada}");
    let home = nodes
        .iter()
        .position(|n| n.signal_url() == ada["signal_url"].as_str().unwrap())
        .expect("the join names one of the nodes");
    let home_name = ["node-a", "node-b", "node-c"][home];
    let lease = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    assert!(
        lease.starts_with(&format!("{home_name} ")),
        "lease {lease:?}, home {home_name}"
    );
    let others: Vec<usize> = (0..3).filter(|i| *i != home).collect();
    let (via_1, via_2) = (others[0], others[1]);

    // Ada's token, minted by node-b, opens her socket through a node that is not the room's:
    // she is sent on and welcomed there as moderator.
    let (_ada_socket, welcome, ada_node) = join_following(
        &nodes[via_2].signal_url(),
        json!({"type": "join", "id": 1, "token": ada["token"]}),
    )
    .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(ada_node, nodes[home].signal_url());
    assert_eq!(welcome["snapshot"]["you"]["role"], "moderator");

    // A speaker and a listener with the Rust client, each redeeming through a node that is
    // not the room's: their sockets and media end up on the room's node.
    let speaker_code = nodes[0].invite(&room, "speaker").await;
    let listener_code = nodes[0].invite(&room, "listener").await;
    let options = |name: &str| JoinOptions {
        media: true,
        ..JoinOptions::new(name)
    };
    let mut sam = Room::join(
        &InviteLink::new(&nodes[via_1].url, &speaker_code).unwrap(),
        options("Sam"),
    )
    .await
    .expect("the speaker joins");
    let mut lee = Room::join(
        &InviteLink::new(&nodes[via_2].url, &listener_code).unwrap(),
        options("Lee"),
    )
    .await
    .expect("the listener joins");
    assert!(
        sam.view().me().on_stage,
        "a speaker's invite puts Sam on stage"
    );
    sam.speak(AudioSource::tone(440.0, -20.0)).await.unwrap();
    let mut hearing = lee.listen().unwrap();
    hears_tone(&mut hearing, 440.0, Instant::now(), Duration::from_secs(10)).await;

    // A moderator's REST call on the live room through a node that is not its home: passed on,
    // answered by the room's node.
    let sam_id = sam.view().me().id.to_string();
    let response = nodes[via_1]
        .http
        .post(format!(
            "{}/api/v1/rooms/{room}/participants/{sam_id}/mute",
            nodes[via_1].url
        ))
        .bearer_auth(ada["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["stoa-node"], home_name);
    next_event_matching(
        &mut lee,
        Duration::from_secs(5),
        "Lee sees Sam muted",
        |e| matches!(e, Event::Muted { participant, .. } if participant.id.to_string() == sam_id),
    )
    .await;
    let participants = nodes[via_2]
        .get(&format!("/api/v1/rooms/{room}/participants"))
        .await;
    let sam_seen = participants["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == sam_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(sam_seen["muted"], true, "{sam_seen}");

    // The room's broadcast, asked of one node that is not its home and fetched through the
    // other: its mix runs where the room's media is, and the files come from there.
    let link = nodes[via_1]
        .get(&format!("/api/v1/rooms/{room}/broadcast"))
        .await;
    let playlist_url = link["playlist_url"].as_str().unwrap();
    let path = &playlist_url[playlist_url.find("/broadcast/").unwrap()..];
    let playlist = nodes[via_2]
        .http
        .get(format!("{}{path}", nodes[via_2].url))
        .send()
        .await
        .unwrap();
    assert_eq!(playlist.status(), 200);
    assert_eq!(playlist.headers()["stoa-node"], home_name);
    assert!(playlist.text().await.unwrap().starts_with("#EXTM3U"));

    // The room's node dies. Its people come back on a surviving node by themselves, with
    // their roles, well within 10 s.
    let killed_at = Instant::now();
    nodes[home].kill();
    all_resume(
        [(&mut sam, "Sam"), (&mut lee, "Lee")],
        Duration::from_secs(10),
    )
    .await;
    let back_after = killed_at.elapsed();
    assert!(
        back_after < Duration::from_secs(10),
        "back after {back_after:?}"
    );
    assert_eq!(
        sam.view().me().id.to_string(),
        sam_id,
        "the same participant"
    );
    assert_eq!(sam.view().me().role.to_string(), "speaker");
    assert!(sam.view().me().on_stage, "Sam is on stage again");
    assert_eq!(lee.view().me().role.to_string(), "listener");
    // The new node has no media connection of theirs: the client makes new ones by itself,
    // Sam's microphone plays on, and Lee hears him again.
    all_media_back([(&mut sam, "Sam"), (&mut lee, "Lee")]).await;
    if sam.view().me().muted {
        sam.unmute().await.expect("Sam unmutes");
    }
    // The same subscription as before the move, with what came before it skipped.
    hears_tone(&mut hearing, 440.0, Instant::now(), Duration::from_secs(10)).await;
    let audio_after = killed_at.elapsed();
    let new_lease = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    assert!(
        !new_lease.starts_with(&format!("{home_name} ")),
        "the room moved: {new_lease:?}"
    );
    // Ada's session token, minted before, still works through any surviving node.
    let (_socket, welcome, _) = join_following(
        &nodes[via_1].signal_url(),
        json!({"type": "join", "id": 1, "token": ada["token"]}),
    )
    .await;
    assert_eq!(welcome["snapshot"]["you"]["role"], "moderator", "{welcome}");

    // Nothing durable was lost: the mute is in the audit log, read through the other node.
    let events = nodes[via_2]
        .get(&format!("/api/v1/rooms/{room}/events"))
        .await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(kinds.contains(&"participant.muted"), "{kinds:?}");
    println!(
        "the room's node killed: its people back on another node after {back_after:?}, \
         the speaker heard again after {audio_after:?}"
    );
    drop(nodes);
}

/// The load balancer block of `docs/operations.md` ("Behind a load balancer"), as written, with
/// the three node addresses and the listening address replaced and the TLS lines left out.
fn load_balancer_from_the_docs(nodes: &[&Node]) -> String {
    let doc = include_str!("../../docs/operations.md");
    let section = &doc[doc
        .find("### Behind a load balancer")
        .expect("operations.md has the section")..];
    let start = section.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let mut nodes = nodes.iter();
    let mut out = String::new();
    for line in block.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("ssl_certificate") {
            continue;
        }
        let line = if trimmed == "listen 443 ssl;" {
            "    listen {listen};".to_owned()
        } else if trimmed.starts_with("server 10.0.0.") {
            let node = nodes.next().expect("three nodes in the docs' upstream");
            line.replacen(
                trimmed.split_whitespace().nth(1).unwrap(),
                node.url.trim_start_matches("http://"),
                1,
            )
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(
        nodes.next().is_none(),
        "the docs' upstream lists three nodes"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_balancer_in_front_of_the_nodes_needs_no_stickiness() {
    let redis = Redis::start();
    let pg = postgres::Postgres::start();
    let database = pg.fresh_database();
    let lb_port = free_port();
    let lb_url = format!("http://127.0.0.1:{lb_port}");
    let spec = |name: &'static str| NodeSpec {
        database_url: Some(database.clone()),
        behind: Some((lb_url.clone(), free_port())),
        ..NodeSpec::new(name, &redis)
    };
    let mut nodes = vec![
        spec("node-a").start(),
        spec("node-b").start(),
        spec("node-c").start(),
    ];
    let nginx = Nginx::start_on(
        lb_port,
        &load_balancer_from_the_docs(&nodes.iter().collect::<Vec<_>>()),
    );
    let lb = Endpoint::new(nginx.url(""));

    // Everything through the shared address, whichever node each request lands on.
    let (room, moderator_code) = lb.room_with_invite("moderator").await;
    let (status, ada) = lb.join(&moderator_code, "Ada").await;
    assert_eq!(status, 200, "{ada}");
    let home_url = ada["signal_url"].as_str().unwrap().to_owned();
    // Clients are given each node's `node_url` (`localhost`); the nodes pass calls to each
    // other at their `internal_url` (the address), as the registry says.
    let home = nodes
        .iter()
        .position(|n| n.signal_url().replace("127.0.0.1", "localhost") == home_url)
        .expect("the join names a node's own address, not the load balancer's");
    let listed = lb.get("/api/v1/cluster/nodes").await;
    for node in listed["nodes"].as_array().unwrap() {
        let internal = node["internal_url"].as_str().unwrap();
        assert!(nodes.iter().any(|n| n.url == internal), "{node}");
        assert_eq!(
            node["node_url"].as_str().unwrap(),
            internal.replace("127.0.0.1", "localhost"),
            "{node}"
        );
    }
    // Invite links carry the shared address.
    let (status, invite) = lb
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room}/invites"),
            Some(json!({"role": "listener"})),
        )
        .await;
    assert_eq!(status, 201, "{invite}");
    assert!(
        invite["url"].as_str().unwrap().starts_with(&lb_url),
        "{invite}"
    );

    // Sockets opened through the load balancer land on any node; those that are not the
    // room's are sent on, and every one ends welcomed on the room's node.
    let mut moved = 0;
    let mut socket = None;
    for _ in 0..3 {
        let (s, first) = Socket::open(
            &lb.signal_url(),
            json!({"type": "join", "id": 1, "token": ada["token"]}),
        )
        .await;
        let (s, welcome, url) = if first["type"] == "moved" {
            moved += 1;
            assert_eq!(first["signal_url"], home_url.as_str(), "{first}");
            join_following(
                &home_url,
                json!({"type": "join", "id": 1, "token": ada["token"]}),
            )
            .await
        } else {
            (s, first, lb.signal_url())
        };
        assert_eq!(welcome["type"], "welcome", "{welcome} at {url}");
        assert_eq!(welcome["snapshot"]["you"]["role"], "moderator");
        socket = Some(s);
    }
    assert!(
        moved >= 1,
        "three sockets through a round robin of three nodes: one sent on at least"
    );
    let mut socket = socket.unwrap();

    // A moderator's REST call on the live room through the shared address is answered by the
    // room's node, wherever it landed.
    let me = lb.get(&format!("/api/v1/rooms/{room}/participants")).await;
    assert_eq!(me["items"].as_array().unwrap().len(), 1, "{me}");
    for _ in 0..3 {
        let response = lb
            .http
            .get(format!("{}/api/v1/rooms/{room}", lb.url))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["stoa-node"],
            ["node-a", "node-b", "node-c"][home]
        );
    }

    // A node that is not the room's dies. Nothing through the load balancer fails: the request
    // that meets the dead node is passed to the next (it refused the connection, so nothing
    // was sent), including redemptions, which are never sent twice.
    let dead = (home + 1) % 3;
    nodes[dead].kill();
    for i in 0..6 {
        let code = lb.invite(&room, "listener").await;
        let (status, joined) = lb.join(&code, &format!("Lee {i}")).await;
        assert_eq!(status, 200, "{joined}");
        assert_eq!(joined["signal_url"], home_url.as_str());
    }
    let invites = lb
        .get(&format!("/api/v1/rooms/{room}/invites?limit=100"))
        .await;
    let used: u64 = invites["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uses"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(used, 7, "each redemption counted once: {invites}");
    socket.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(socket.until("pong").await["id"], 2);
    drop(nginx);
    drop(nodes);
}

/// A node stopped on purpose (SIGTERM: a rolling upgrade) hands its rooms over: it leaves the
/// registry, sends everyone in its rooms to the least full other node (`moved`), and they
/// resume there at once, with their roles and places, and hear each other again. Before, the
/// people came back to the stopping node itself, which started the room again while it shut
/// down, and lost it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_on_purpose_hands_its_rooms_to_another_at_once() {
    use stoa_client::audio::AudioSource;
    use stoa_client::{InviteLink, JoinOptions, Room};

    let redis = Redis::start();
    let pg = postgres::Postgres::start();
    let database = pg.fresh_database();
    let spec = |name: &'static str| NodeSpec {
        database_url: Some(database.clone()),
        ..NodeSpec::new(name, &redis)
    };
    let nodes = [spec("node-a").start(), spec("node-b").start()];
    let (room, speaker_code) = nodes[0].room_with_invite("speaker").await;
    let listener_code = nodes[0].invite(&room, "listener").await;
    let options = |name: &str| JoinOptions {
        media: true,
        ..JoinOptions::new(name)
    };
    let mut sam = Room::join(
        &InviteLink::new(&nodes[0].url, &speaker_code).unwrap(),
        options("Sam"),
    )
    .await
    .expect("the speaker joins");
    let mut lee = Room::join(
        &InviteLink::new(&nodes[1].url, &listener_code).unwrap(),
        options("Lee"),
    )
    .await
    .expect("the listener joins");
    sam.speak(AudioSource::tone(440.0, -20.0)).await.unwrap();
    let mut hearing = lee.listen().unwrap();
    hears_tone(&mut hearing, 440.0, Instant::now(), Duration::from_secs(10)).await;
    let lease = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    let home = usize::from(!lease.starts_with("node-a "));
    let (home_name, other_name) = [("node-a", "node-b"), ("node-b", "node-a")][home];
    let sam_id = sam.view().me().id.to_string();

    let stopped_at = Instant::now();
    nodes[home].stop();
    all_resume(
        [(&mut sam, "Sam"), (&mut lee, "Lee")],
        Duration::from_secs(5),
    )
    .await;
    let back_after = stopped_at.elapsed();
    let lease = redis.cli(&["--raw", "GET", &format!("stoa:room:{room}")]);
    assert!(
        lease.starts_with(&format!("{other_name} ")),
        "the room lives on {other_name} now: {lease:?}"
    );
    let response = nodes[1 - home]
        .http
        .get(format!("{}/api/v1/rooms/{room}", nodes[1 - home].url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["stoa-node"], other_name, "live there");
    assert_eq!(
        sam.view().me().id.to_string(),
        sam_id,
        "the same participant"
    );
    assert_eq!(sam.view().me().role.to_string(), "speaker");
    assert!(sam.view().me().on_stage, "Sam is on stage again");
    assert_eq!(lee.view().me().role.to_string(), "listener");
    all_media_back([(&mut sam, "Sam"), (&mut lee, "Lee")]).await;
    hears_tone(&mut hearing, 440.0, Instant::now(), Duration::from_secs(10)).await;
    let audio_after = stopped_at.elapsed();
    assert!(
        back_after < Duration::from_secs(2),
        "moved over at once, not after a reconnection's backoff: {back_after:?} \
         ({home_name} stopped)"
    );
    println!(
        "{home_name} stopped (SIGTERM): its people resumed on {other_name} after \
         {back_after:?}, the speaker heard again after {audio_after:?}"
    );
}
