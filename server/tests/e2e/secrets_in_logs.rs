//! The real `stoa` binary at its most verbose log level, used with every kind of secret (the
//! operator key, session and resume tokens, invite codes, identity secrets), rightly and
//! wrongly: none of them may appear in what it prints.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_stoa");

/// Collects everything a child writes to one of its pipes.
fn drain(
    pipe: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut all = into.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    })
}

/// A minimal WebSocket client (RFC 6455): enough to send `join` or `resume` and read the
/// answers, so the server's WebSocket layer handles the secrets at trace level too.
struct RawSocket {
    tcp: TcpStream,
}

impl RawSocket {
    async fn open(addr: &str) -> RawSocket {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let handshake = format!(
            "GET /api/v1/signal HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawSocket { tcp }
    }

    async fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        assert!(payload.len() < 65_536);
        let mut frame = vec![0x81];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// The next text message, skipping control frames; `None` once the server closes.
    async fn recv(&mut self) -> Option<Value> {
        loop {
            let first = self.tcp.read_u8().await.ok()?;
            let len = match self.tcp.read_u8().await.ok()? & 0x7f {
                126 => u64::from(self.tcp.read_u16().await.ok()?),
                127 => self.tcp.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.tcp.read_exact(&mut payload).await.ok()?;
            match first & 0x0f {
                0x1 => return serde_json::from_slice(&payload).ok(),
                0x8 => return None,
                _ => continue,
            }
        }
    }

    async fn wait_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await.expect("socket open");
            if message["type"] == kind {
                return message;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("stoa_sk_{}", stoa::control::random_token(24));
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--no-demo", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("STOA_API_KEY", &key)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stoa starts");
    let output = Arc::new(Mutex::new(String::new()));
    let stderr = drain(child.stderr.take().unwrap(), output.clone());
    // The banner comes first on stdout; read it here, then keep collecting.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no banner");
        output.lock().unwrap().push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("Stoa is running at ") {
            break rest.to_owned();
        }
    };
    let stdout = drain(stdout, output.clone());
    let addr = url.trim_start_matches("http://").to_owned();

    let http = stoa::http_client::client();
    let call = |method: reqwest::Method, path: &str, auth: Option<&str>, body: Option<Value>| {
        let mut request = http.request(method, format!("{url}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", format!("Bearer {auth}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    use reqwest::Method as M;
    let mut secrets = vec![key.clone()];

    let (_, room) = call(
        M::POST,
        "/api/v1/rooms",
        Some(&key),
        Some(json!({ "title": "Logs" })),
    )
    .await;
    let room = room["id"].as_str().unwrap().to_owned();
    let invites = format!("/api/v1/rooms/{room}/invites");
    let (_, invite) = call(
        M::POST,
        &invites,
        Some(&key),
        Some(json!({ "role": "moderator" })),
    )
    .await;
    let code = invite["code"].as_str().unwrap().to_owned();
    let (_, other) = call(
        M::POST,
        &invites,
        Some(&key),
        Some(json!({ "role": "listener" })),
    )
    .await;
    let other_code = other["code"].as_str().unwrap().to_owned();
    secrets.extend([code.clone(), other_code.clone()]);

    assert_eq!(call(M::GET, &format!("/i/{code}"), None, None).await.0, 200);
    let (status, joined) = call(
        M::POST,
        "/api/v1/join",
        None,
        Some(json!({ "invite": format!("{url}/i/{code}"), "display_name": "Ada" })),
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    let token = joined["token"].as_str().unwrap().to_owned();
    let identity = joined["identity"].as_str().unwrap().to_owned();
    secrets.extend([token.clone(), identity.clone()]);
    // The token's signature alone is the secret part (its claims are readable by design).
    secrets.push(token.rsplit_once('.').unwrap().1.to_owned());

    // Authenticated calls with the key and the token; refused ones with near misses.
    assert_eq!(
        call(M::GET, &format!("/api/v1/rooms/{room}"), Some(&token), None)
            .await
            .0,
        200
    );
    assert_eq!(call(M::GET, "/api/v1/rooms", Some(&key), None).await.0, 200);
    let wrong_key = format!("{key}x");
    let wrong_token = format!("{token}x");
    secrets.extend([wrong_key.clone(), wrong_token.clone()]);
    assert_eq!(
        call(M::GET, "/api/v1/rooms", Some(&wrong_key), None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(M::GET, "/api/v1/rooms", Some(&wrong_token), None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(M::GET, "/api/v1/rooms", Some(&token), None).await.0,
        403
    );

    // The socket: join with the token, get a resume token, drop, resume with it.
    let mut socket = RawSocket::open(&addr).await;
    socket
        .send(&json!({ "type": "join", "token": token }).to_string())
        .await;
    let welcome = socket.wait_type("welcome").await;
    let resume = welcome["resume_token"].as_str().unwrap().to_owned();
    secrets.push(resume.clone());
    drop(socket);
    let mut socket = RawSocket::open(&addr).await;
    socket
        .send(&json!({ "type": "resume", "resume_token": resume }).to_string())
        .await;
    let welcome = socket.wait_type("welcome").await;
    secrets.push(welcome["resume_token"].as_str().unwrap().to_owned());
    let mut bad = RawSocket::open(&addr).await;
    bad.send(&json!({ "type": "join", "token": wrong_token }).to_string())
        .await;
    assert_eq!(bad.wait_type("error").await["code"], "invalid_token");

    // Revoking by code puts the code in a URL; redeeming it afterwards is refused.
    let revoke = format!("{invites}/{other_code}");
    assert_eq!(call(M::DELETE, &revoke, Some(&key), None).await.0, 204);
    let again = json!({ "invite": other_code, "display_name": "Eve", "identity": identity });
    assert_eq!(
        call(M::POST, "/api/v1/join", None, Some(again)).await.0,
        404
    );
    assert_eq!(
        call(M::GET, &format!("/i/{other_code}"), None, None)
            .await
            .0,
        404
    );
    drop(socket);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    stderr.join().unwrap();
    stdout.join().unwrap();

    let output = output.lock().unwrap();
    // The log really was at its most verbose, and covered the calls above.
    assert!(output.contains("TRACE"), "no trace lines:\n{output}");
    assert!(output.contains("request refused"), "{output}");
    assert!(output.contains("invite redeemed"), "{output}");
    // Name the lines that leak (with the secret blanked out), so a failure says where.
    let leaks: Vec<String> = output
        .lines()
        .filter_map(|line| {
            let leaked = secrets.iter().find(|s| line.contains(s.as_str()))?;
            let shown = line.replace(leaked.as_str(), "<SECRET>");
            Some(shown.chars().take(300).collect())
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets in the output:\n{}",
        leaks.join("\n")
    );
    eprintln!(
        "{} secrets checked against {} lines of output",
        secrets.len(),
        output.lines().count()
    );
}
