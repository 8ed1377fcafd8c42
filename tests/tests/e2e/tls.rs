//! TLS, with certificates made here: `--tls-cert`/`--tls-key` (the server answers HTTPS
//! directly, so browsers on other machines get a secure page, and with it the microphone), and
//! the connection to PostgreSQL (`sslmode=require`, the server's certificate verified).

use std::sync::Arc;

use stoa_tests::TestServer;
use stoa_tests::certs::Authority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_given_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let t = TestServer::start_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    assert!(t.base.starts_with("https://"), "{}", t.base);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(t.running().addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");

    // Plain HTTP on the TLS port gets nowhere.
    let plain = t
        .http
        .get(format!("http://{}/healthz", t.running().addr))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    t.stop().await;
}

/// A client that finishes the TLS handshake and then says nothing is disconnected on the idle
/// timer, like one on plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_connection_is_closed_on_the_idle_timer() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let t = TestServer::start_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
        c.limits.idle_timeout_ms = 500;
        c.limits.header_read_timeout_ms = 500;
        c.signal.ping_interval_ms = 200;
        c.signal.ping_timeout_ms = 1_000;
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(t.running().addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the silent TLS connection was still open after 5 s"
    );
    t.stop().await;
}

const API_KEY: &str = "stoa_sk_tlstestkeytlstestkeytlstestkey0123456789";

/// PostgreSQL that takes TCP connections over TLS only: with `sslmode=require` and the CA that
/// signed its certificate the server starts and works; without TLS, or with a CA that did not
/// sign it, it refuses to start and says why (a password never goes to an unproven server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_with_the_servers_certificate_verified() {
    use stoa::{Clock, Config};
    let ours = Authority::new("Stoa test CA");
    let theirs = Authority::new("Another CA");
    let pg =
        stoa_tests::postgres::Postgres::start_with_tls(&ours.server_cert_pem, &ours.server_key_pem);
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&ca, &ours.ca_pem).unwrap();
    std::fs::write(&wrong_ca, &theirs.ca_pem).unwrap();

    let start = |url: String, tls_ca: Option<std::path::PathBuf>| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            demo_room: false,
            ..Config::default()
        };
        config.database.url = Some(url);
        config.database.tls_ca = tls_ca;
        config.api_key = Some(API_KEY.to_owned());
        stoa::server::start_with_clock(config, Clock::manual())
            .await
            .map(|running| (running, dir))
            .map_err(|e| format!("{e:#}"))
    };

    // Plain TCP: the database's rules refuse it, and the node says so.
    let refused = start(url.clone(), None)
        .await
        .err()
        .expect("plain TCP refused");
    assert!(refused.contains("no encryption"), "{refused}");
    // A CA given without asking for TLS is a mistake, said at once.
    let refused = start(url.clone(), Some(ca.clone()))
        .await
        .err()
        .expect("refused");
    assert!(refused.contains("sslmode=require"), "{refused}");
    // TLS, but the certificate was signed by someone else.
    let refused = start(format!("{url}?sslmode=require"), Some(wrong_ca))
        .await
        .err()
        .expect("an unknown issuer refused");
    assert!(refused.contains("invalid peer certificate"), "{refused}");
    assert!(
        !refused.contains(stoa_tests::postgres::PASSWORD),
        "{refused}"
    );

    // TLS with the right CA: the node works on it.
    let (running, _dir) = start(format!("{url}?sslmode=require"), Some(ca))
        .await
        .expect("starts over TLS");
    let created = stoa::http_client::client()
        .post(format!("http://{}/api/v1/rooms", running.addr))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"title": "Over TLS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // PostgreSQL itself says the node's connections are encrypted.
    let encrypted = pg.psql(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND client_addr = '127.0.0.1'",
    );
    assert!(encrypted.parse::<u32>().unwrap() >= 1, "{encrypted}");
    running.shutdown().await.unwrap();
}
