//! Test support for Stoa's end-to-end tests: a real server started in-process on an
//! ephemeral port with a temporary data folder, a small REST client for it, and a signaling
//! client that asserts ([`signal`]). The clients themselves (signaling, WebRTC, Opus) are the
//! `stoa-client` library's; the load generator and the soak tool are built on it too.

pub mod certs;
pub mod decoders;
pub mod killable;
pub mod loadgen;
pub mod nginx;
pub mod postgres;
pub mod redis;
pub mod signal;
pub mod soak;
pub mod webhook_receiver;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stoa::{Clock, Config, RunningServer};
use tempfile::TempDir;

/// Which store a test server keeps its durable facts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The SQLite file in the data folder (the default).
    Sqlite,
    /// A fresh database on this test binary's shared throwaway PostgreSQL.
    Postgres,
}

impl Engine {
    /// Points `config` at this engine.
    pub fn configure(self, config: &mut Config) {
        config.database.url = match self {
            Engine::Sqlite => None,
            Engine::Postgres => Some(postgres::Postgres::shared().fresh_database()),
        };
    }
}

/// Each named `async fn(Engine)` of the calling file becomes one test per engine:
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Engine::Postgres).await
                }
            )*
        }
    };
}

/// A running server plus what a test needs to talk to it.
pub struct TestServer {
    server: Option<RunningServer>,
    pub dir: TempDir,
    pub config: Config,
    pub clock: Clock,
    pub http: reqwest::Client,
    pub base: String,
    pub api_key: String,
}

/// The answer to a request: status, headers and the JSON body (Null if none).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The problem+json `code`, if this is an error answer.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected answer: {:?}",
            self.body
        );
        self.body
    }

    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, code),
            "unexpected answer: {:?}",
            self.body
        );
        let content_type = self.headers[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap();
        assert_eq!(content_type, "application/problem+json");
        for field in ["type", "title", "status", "detail", "code"] {
            assert!(
                !self.body[field].is_null(),
                "problem without {field}: {:?}",
                self.body
            );
        }
    }
}

impl TestServer {
    /// A server with test defaults: no demo room, a manual clock, a generous join rate.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with test defaults on `engine`.
    pub async fn start_on(engine: Engine) -> Self {
        Self::start_with(|c| engine.configure(c)).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            demo_room: false,
            ..Config::default()
        };
        config.limits.joins_per_minute = 10_000;
        config.limits.join_burst = 10_000;
        // The security matrix presents wrong credentials on purpose, many times over.
        config.limits.auth_failures_per_minute = 10_000;
        config.limits.auth_failure_burst = 10_000;
        // Every test client comes from 127.0.0.1.
        config.signal.max_sockets_per_address = 10_000;
        // Two media workers whatever the machine, so fan-out between workers is exercised.
        config.media.workers = 2;
        adjust(&mut config);
        Self::boot(dir, config, Clock::manual()).await
    }

    async fn boot(dir: TempDir, config: Config, clock: Clock) -> Self {
        let server = stoa::server::start_with_clock(config.clone(), clock.clone())
            .await
            .expect("server starts");
        let api_key = std::fs::read_to_string(config.data_dir.join("operator.key"))
            .expect("operator key written")
            .trim()
            .to_owned();
        let http = stoa::http_client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        TestServer {
            base: server.base_url.clone(),
            server: Some(server),
            dir,
            config,
            clock,
            http,
            api_key,
        }
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    /// Stops the server gracefully and starts a new one on the same data folder.
    pub async fn restart(mut self) -> Self {
        self.server
            .take()
            .unwrap()
            .shutdown()
            .await
            .expect("clean shutdown");
        let TestServer {
            dir, config, clock, ..
        } = self;
        Self::boot(dir, config, clock).await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's `/metrics`, as Prometheus would scrape it.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics is text")
    }

    /// A metric of `/metrics`, summed over its labels; 0 if it is not there.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends a request with an optional bearer credential and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, self.url(path));
        if let Some(auth) = auth {
            req = req.bearer_auth(auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn op(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(&self.api_key.clone()), body)
            .await
    }

    pub async fn create_room(&self, title: &str) -> String {
        let room = self
            .op(
                Method::POST,
                "/api/v1/rooms",
                Some(json!({ "title": title })),
            )
            .await
            .expect(201);
        room["id"].as_str().unwrap().to_owned()
    }

    /// Creates an invite with the operator key; `extra` may add label, max_uses, expiry.
    pub async fn create_invite(&self, room: &str, role: &str, extra: Value) -> Value {
        let mut body = json!({ "role": role });
        if let Value::Object(map) = extra {
            body.as_object_mut().unwrap().extend(map);
        }
        self.op(
            Method::POST,
            &format!("/api/v1/rooms/{room}/invites"),
            Some(body),
        )
        .await
        .expect(201)
    }

    pub async fn join(&self, code: &str, name: &str) -> Answer {
        self.call(
            Method::POST,
            "/api/v1/join",
            None,
            Some(json!({ "invite": code, "display_name": name })),
        )
        .await
    }

    /// Every item of a paginated list as the operator sees it, following `next_cursor`;
    /// `path_and_query` already has a `?` (and any filter).
    pub async fn every_item(&self, path_and_query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .op(Method::GET, &format!("{path_and_query}{cursor}"), None)
                .await
                .expect(200);
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return items,
            }
        }
    }

    /// Makes an invite of `role` in `room` and redeems it: the join answer.
    pub async fn participant(&self, room: &str, role: &str, name: &str) -> Value {
        let invite = self.create_invite(room, role, json!({})).await;
        self.join(invite["code"].as_str().unwrap(), name)
            .await
            .expect(200)
    }
}

/// A speaker on stage in `room` sending a tone at `hz` over WebRTC, joined as the client
/// library joins one (its own task keeps the signaling socket read and answers the server's
/// pings, so it stays heard). `base` and `key`: the server and its operator key.
pub async fn tone_speaker(base: &str, key: &str, room: &str, hz: f32) -> stoa_client::Room {
    let link = stoa_client::api::Api::new(base, key)
        .create_invite(room, "speaker", json!({}))
        .await
        .expect("speaker invite");
    let sam = stoa_client::Room::join(&link, stoa_client::JoinOptions::new("Sam"))
        .await
        .expect("joined with media");
    sam.speak(stoa_client::audio::AudioSource::tone(hz, -12.0))
        .await
        .expect("speaking");
    sam
}
