//! The lean transport's DTLS (RFC 5763/5764): one server handshake per connection with a
//! configuration (and certificate) shared by the whole process, the client's certificate
//! checked against its offer's `a=fingerprint` once the handshake completes, and the SRTP
//! master keys exported from it (RFC 5764 §4.2). No clock, no socket: the caller passes the
//! time in and carries the datagrams.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::crypto::{HashAlgorithm, RTCCryptoProvider};
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::shared::TransportProtocol;

/// The association's address inside its `Endpoint`. The endpoint keys associations by
/// address, but a lean connection has exactly one, and where its datagrams really come from is
/// decided by ICE, not here; so the endpoint always sees this one (TEST-NET-1, RFC 5737).
const ASSOCIATION: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);

/// What every lean connection of the process shares: the DTLS server configuration with its
/// certificate, the crypto provider, and the certificate's fingerprint for answers.
pub struct Shared {
    config: Arc<HandshakeConfig>,
    pub crypto: Arc<dyn RTCCryptoProvider>,
    /// `sha-256 AB:CD:…`, as `a=fingerprint` carries it.
    pub fingerprint: String,
}

impl Shared {
    /// From the process's certificate (`engine::certificate`, one per process).
    pub fn new(certificate: &RTCCertificate) -> anyhow::Result<Arc<Self>> {
        let crypto = rtc::crypto::default_provider()
            .map_err(|e| anyhow::anyhow!("no crypto provider: {e:?}"))?;
        let config = ConfigBuilder::default()
            .with_crypto_provider(Arc::clone(&crypto))
            .with_certificates(vec![certificate.dtls_certificate.clone()])
            // GCM only: as DTLS server we follow the client's order otherwise (engine.rs).
            .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            // No chain to verify in WebRTC: the peer is its certificate's fingerprint, checked
            // per connection in `Handshake::read` against the offer.
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None)?;
        let fingerprint = certificate
            .get_fingerprints(crypto.crypto())?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the certificate has no fingerprint"))?;
        Ok(Arc::new(Shared {
            config: Arc::new(config),
            crypto,
            fingerprint: format!(
                "{} {}",
                fingerprint.algorithm,
                fingerprint.value.to_ascii_uppercase()
            ),
        }))
    }
}

/// An AES-128-GCM master key and salt.
pub type RawKey = ([u8; 16], [u8; 12]);

/// The keys of both directions, from the exporter.
pub struct Keys {
    /// The client's (what it sends us: a speaker's microphone, receiver reports).
    pub client: RawKey,
    /// Ours (forwarded audio, sender reports).
    pub server: RawKey,
}

/// Why the DTLS side refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsRefusal {
    /// A record the association refused (bad, out of order, replayed, a fatal alert).
    Record,
    /// The handshake completed with a certificate other than the offer's.
    Fingerprint,
    /// The handshake completed without the SRTP profile we offer, or no keys came out of it.
    Keys,
}

/// What one DTLS datagram did.
pub enum Progress {
    Handshaking,
    /// The handshake completed, the peer is who the offer said, and these are the keys.
    Keyed(Box<Keys>),
    /// The client closed the association (`close_notify`).
    Closed,
}

/// One server association, kept while the handshake runs and its last flight may have to be
/// sent again (RFC 6347 §4.2.4); dropped afterwards.
pub struct Handshake {
    endpoint: Endpoint,
    /// SHA-256 of the client's certificate, from its offer.
    expected: [u8; 32],
    keyed: bool,
}

impl Handshake {
    pub fn new(shared: &Shared, expected: [u8; 32]) -> Self {
        Handshake {
            endpoint: Endpoint::new(
                ASSOCIATION,
                TransportProtocol::UDP,
                Some(Arc::clone(&shared.config)),
            ),
            expected,
            keyed: false,
        }
    }

    /// One DTLS datagram from the client; what the association has to send goes to `send`.
    pub fn read(
        &mut self,
        shared: &Shared,
        now: Instant,
        datagram: &[u8],
        mut send: impl FnMut(&[u8]),
    ) -> Result<Progress, DtlsRefusal> {
        let read = self
            .endpoint
            .read(now, ASSOCIATION, None, BytesMut::from(datagram));
        while let Some(out) = self.endpoint.poll_transmit() {
            send(&out.message);
        }
        let events = read.map_err(|_| DtlsRefusal::Record)?;
        let mut progress = Progress::Handshaking;
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete if !self.keyed => {
                    self.keyed = true;
                    progress = Progress::Keyed(Box::new(self.keys(shared)?));
                }
                EndpointEvent::PeerClosed => return Ok(Progress::Closed),
                _ => {}
            }
        }
        Ok(progress)
    }

    fn keys(&self, shared: &Shared) -> Result<Keys, DtlsRefusal> {
        let state = self
            .endpoint
            .get_connection_state(ASSOCIATION)
            .ok_or(DtlsRefusal::Keys)?;
        let certificate = state
            .peer_certificates
            .first()
            .ok_or(DtlsRefusal::Fingerprint)?;
        let digest = shared
            .crypto
            .crypto()
            .hash(HashAlgorithm::Sha256, certificate)
            .map_err(|_| DtlsRefusal::Fingerprint)?;
        if digest.as_slice() != self.expected {
            return Err(DtlsRefusal::Fingerprint);
        }
        if state.srtp_protection_profile() != SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm {
            return Err(DtlsRefusal::Keys);
        }
        // RFC 5764 §4.2: client key, server key, client salt, server salt.
        let material = state
            .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (16 + 12))
            .map_err(|_| DtlsRefusal::Keys)?;
        let material: &[u8] = material.as_ref();
        if material.len() != 56 {
            return Err(DtlsRefusal::Keys);
        }
        let mut keys = Keys {
            client: ([0; 16], [0; 12]),
            server: ([0; 16], [0; 12]),
        };
        keys.client.0.copy_from_slice(&material[..16]);
        keys.server.0.copy_from_slice(&material[16..32]);
        keys.client.1.copy_from_slice(&material[32..44]);
        keys.server.1.copy_from_slice(&material[44..56]);
        Ok(keys)
    }

    /// Retransmissions due at `now` go to `send`.
    pub fn handle_timeout(&mut self, now: Instant, mut send: impl FnMut(&[u8])) {
        let _ = self.endpoint.handle_timeout(ASSOCIATION, now);
        while let Some(out) = self.endpoint.poll_transmit() {
            send(&out.message);
        }
    }

    /// When a retransmission is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.endpoint.poll_timeout(&ASSOCIATION)
    }
}

/// The SHA-256 fingerprint an offer gives its certificate (`a=fingerprint:sha-256 AB:…`, at
/// session or media level). `None` if it has none we can check.
pub fn offered_fingerprint(
    offer: &rtc::peer_connection::sdp::RTCSessionDescription,
) -> Option<[u8; 32]> {
    let parsed = offer.unmarshal().ok()?;
    let value = parsed
        .attributes
        .iter()
        .chain(
            parsed
                .media_descriptions
                .iter()
                .flat_map(|m| m.attributes.iter()),
        )
        .filter(|a| a.key == "fingerprint")
        .find_map(|a| {
            let (algorithm, hex) = a.value.as_deref()?.split_once(' ')?;
            algorithm
                .eq_ignore_ascii_case("sha-256")
                .then_some(hex.trim())
        })?;
    let mut digest = [0u8; 32];
    let mut bytes = value.split(':');
    for byte in &mut digest {
        *byte = u8::from_str_radix(bytes.next()?, 16).ok()?;
    }
    bytes.next().is_none().then_some(digest)
}
