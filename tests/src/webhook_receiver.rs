//! The webhook receiver of the tests: `webhooks/receiver.py`, which verifies every request
//! with the `standardwebhooks` Python package and logs what it got, run as a child process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::certs::Authority;

pub const SECRET: &str = "whsec_c3RvYSB3ZWJob29rIHRlc3Qgc2VjcmV0LCAzMiBieQ==";

/// How long a test waits for the receiver to see what it expects.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The Python receiver, killed when dropped.
pub struct Receiver {
    child: Child,
    port: u16,
    /// It speaks HTTPS (and nothing else).
    tls: bool,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start(mode: &str) -> Receiver {
        Receiver::spawn(mode, None)
    }

    /// A receiver that speaks HTTPS only, with `authority`'s certificate for 127.0.0.1. Its
    /// mode and secret stay the ones it started with.
    pub fn start_tls(mode: &str, authority: &Authority) -> Receiver {
        Receiver::spawn(mode, Some(authority))
    }

    fn spawn(mode: &str, tls: Option<&Authority>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("received.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/receiver.py");
        let mut command = Command::new("python3");
        if let Some(authority) = tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, &authority.server_cert_pem).unwrap();
            std::fs::write(&key, &authority.server_key_pem).unwrap();
            command
                .env("RECEIVER_TLS_CERT", cert)
                .env("RECEIVER_TLS_KEY", key);
        }
        let mut child = command
            .arg(script)
            .arg(SECRET)
            .arg(&log)
            .env("RECEIVER_MODE", mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect(
                "python3 runs (with the standardwebhooks package: pip install standardwebhooks)",
            );
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {first:?}"));
        Receiver {
            child,
            port,
            tls: tls.is_some(),
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/hook", self.port)
    }

    pub async fn set_mode(&self, mode: &str) {
        self.tell("mode", mode).await;
    }

    /// Verifies what comes next with `secret` (a room endpoint's, which the server made).
    pub async fn set_secret(&self, secret: &str) {
        self.tell("secret", secret).await;
    }

    async fn tell(&self, what: &str, value: &str) {
        assert!(
            !self.tls,
            "a receiver over TLS keeps the mode and secret it started with"
        );
        let told = stoa::http_client::client()
            .post(format!("http://127.0.0.1:{}/{what}", self.port))
            .body(value.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(told.status().as_u16(), 204, "the receiver took no {what}");
    }

    /// Every request it got so far, in order.
    pub fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `done` holds for what it got (a file another process appends to: looked at
    /// again every 50 ms, up to `PATIENCE`).
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let entries = self.entries();
            if done(&entries) {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not see {what}: {entries:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
