//! Every outgoing HTTP client of the server (webhooks, calls between nodes, the admin
//! commands) starts here: reqwest on rustls with *ring*, the one crypto provider the rest of
//! Stoa uses (the HTTPS listener, PostgreSQL's TLS, DTLS, the relay's seal).
//!
//! reqwest is built without a provider of its own (`rustls-no-provider`, so no second one in
//! C is compiled), and then takes the process's default: installed here before any client is
//! built. `reqwest::Client::new` and `Client::builder` are refused by clippy elsewhere
//! (`clippy.toml`), so no client can be built without it.

/// A reqwest client builder, with *ring* installed as the process's crypto provider.
#[allow(clippy::disallowed_methods)]
pub fn builder() -> reqwest::ClientBuilder {
    // Err only when a provider is installed already: ring, by an earlier call.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A client with reqwest's defaults: for the tools and the tests.
pub fn client() -> reqwest::Client {
    builder()
        .build()
        .expect("an HTTP client with reqwest's defaults")
}
