//! Credentials: the operator API key and signed session tokens (room, participant, role,
//! expiry). Signing and checking only; what a credential may do is decided by the caller.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::{
    Delivery, ParticipantId, RecordingId, ReplayLinkId, Role, RoomId, random_token,
};

const TOKEN_PREFIX: &str = "st1.";
const RESUME_PREFIX: &str = "rs1.";
pub const REPLAY_PREFIX: &str = "rp1.";
pub const API_KEY_PREFIX: &str = "stoa_sk_";

/// What a session token asserts. Short-lived; bound to one room, participant and role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "r")]
    pub room: RoomId,
    #[serde(rename = "p")]
    pub participant: ParticipantId,
    pub role: Role,
    /// Display name given at redemption, so joining a live room needs no database read.
    #[serde(rename = "n")]
    pub name: String,
    /// Issued at and expiry, Unix milliseconds.
    pub iat: i64,
    pub exp: i64,
    /// The identity's token generation (one per redemption) this token was issued at; a role
    /// the room recorded at this generation or later outranks `role`. Tokens from before
    /// generations existed read as 0, the oldest.
    #[serde(rename = "g", default)]
    pub generation: i64,
    /// How the participant hears the room when they join it (absent: WebRTC).
    #[serde(rename = "d", default, skip_serializing_if = "Delivery::is_webrtc")]
    pub delivery: Delivery,
}

/// What a resume token asserts: this participant of this room may take its place back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeClaims {
    #[serde(rename = "r")]
    pub room: RoomId,
    #[serde(rename = "p")]
    pub participant: ParticipantId,
    /// Changes with every welcome, so each resume token works once and an older one never
    /// takes over a newer connection.
    #[serde(rename = "n")]
    pub nonce: u64,
    pub exp: i64,
}

/// What a replay token asserts: its holder redeemed replay link `link`, which opens recording
/// `recording` of room `room` (its detail and audio) and nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayClaims {
    #[serde(rename = "r")]
    pub room: RoomId,
    #[serde(rename = "c")]
    pub recording: RecordingId,
    #[serde(rename = "l")]
    pub link: ReplayLinkId,
    pub exp: i64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed session token")]
    Malformed,
    #[error("session token signature does not match")]
    BadSignature,
    #[error("session token has expired")]
    Expired,
}

/// Signs and verifies session tokens with an HMAC-SHA256 key kept in the data folder.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl TokenSigner {
    pub fn new(key: [u8; 32]) -> Self {
        TokenSigner { key }
    }

    /// A key for another use (`label` says which), derived from the signing key, so the
    /// cluster's one shared secret covers it too.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(b"stoa derived key\0");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// `st1.<base64url(json claims)>.<base64url(hmac)>`
    pub fn sign(&self, claims: &Claims) -> String {
        self.sign_as(TOKEN_PREFIX, claims)
    }

    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let claims: Claims = self.verify_as(TOKEN_PREFIX, token)?;
        if claims.exp <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// `rs1.…`: lets a dropped signaling socket take its participant back. The prefix is part
    /// of the MAC, so a resume token is never accepted as a session token, nor the reverse.
    pub fn sign_resume(&self, claims: &ResumeClaims) -> String {
        self.sign_as(RESUME_PREFIX, claims)
    }

    pub fn verify_resume(&self, token: &str, now_ms: i64) -> Result<ResumeClaims, TokenError> {
        let claims: ResumeClaims = self.verify_as(RESUME_PREFIX, token)?;
        if claims.exp <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// `rp1.…`: opens one recording. The prefix is part of the MAC, so a replay token is
    /// never accepted as a session or resume token, nor the reverse.
    pub fn sign_replay(&self, claims: &ReplayClaims) -> String {
        self.sign_as(REPLAY_PREFIX, claims)
    }

    pub fn verify_replay(&self, token: &str, now_ms: i64) -> Result<ReplayClaims, TokenError> {
        let claims: ReplayClaims = self.verify_as(REPLAY_PREFIX, token)?;
        if claims.exp <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn sign_as<T: Serialize>(&self, prefix: &str, claims: &T) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialise");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(prefix.as_bytes());
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{prefix}{payload}.{sig}")
    }

    fn verify_as<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        token: &str,
    ) -> Result<T, TokenError> {
        if token.len() > 1024 {
            return Err(TokenError::Malformed);
        }
        let rest = token.strip_prefix(prefix).ok_or(TokenError::Malformed)?;
        let (payload, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(prefix.as_bytes());
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }

    /// Loads the signing key from `path`, creating it (owner-only) on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let key = load_or_create_secret(path, || {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).expect("the OS random generator is unavailable");
            URL_SAFE_NO_PAD.encode(key)
        })?;
        TokenSigner::from_text(&key).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a 32-byte key", path.display()),
            )
        })
    }

    /// A key written as `signing.key` holds it (32 bytes, base64url without padding), as
    /// `STOA_SIGNING_KEY` gives it to every node of a cluster.
    pub fn from_text(text: &str) -> Option<Self> {
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(TokenSigner::new)
    }

    /// Names the key without revealing it: nodes compare fingerprints to find out whether
    /// they hold the same key.
    pub fn fingerprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.derive("cluster fingerprint"))
    }
}

/// The operator key. Only its hash is kept in memory; comparison is constant-time.
#[derive(Clone)]
pub struct OperatorKey {
    hash: [u8; 32],
}

impl OperatorKey {
    pub fn new(key: &str) -> Self {
        OperatorKey {
            hash: Sha256::digest(key.as_bytes()).into(),
        }
    }

    pub fn generate() -> String {
        format!("{API_KEY_PREFIX}{}", random_token(32))
    }

    /// Names the key without revealing it (a hash of its hash).
    pub fn fingerprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.hash))
    }

    pub fn matches(&self, presented: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        hash.ct_eq(&self.hash).into()
    }

    /// Refuses an operator-chosen key (`STOA_API_KEY`) that is too easy to guess.
    pub fn check_strength(key: &str) -> Result<(), String> {
        let bits = estimated_entropy_bits(key);
        if bits < MIN_KEY_BITS {
            return Err(format!(
                "STOA_API_KEY is too weak: about {bits:.0} bits, at least {MIN_KEY_BITS:.0} bits \
                 are needed (128 bits: e.g. 22 random base64url characters or 32 random hex \
                 digits; `openssl rand -base64 24` makes one). Or leave it unset and Stoa \
                 generates a key into operator.key"
            ));
        }
        Ok(())
    }
}

/// The least guessing work an operator key must demand.
pub const MIN_KEY_BITS: f64 = 128.0;

/// A generous estimate of a key's entropy, to catch keys that are plainly weak: its length
/// times the bits one random character of its alphabet carries (4 for hex digits, 6 for the
/// base64 alphabets, 6.5 for other printable ASCII, 7 beyond ASCII), and nothing at all for a
/// key of fewer than 8 distinct characters.
pub fn estimated_entropy_bits(key: &str) -> f64 {
    let distinct: std::collections::BTreeSet<char> = key.chars().collect();
    if distinct.len() < 8 {
        return 0.0;
    }
    let base64 = |c: &char| c.is_ascii_alphanumeric() || "-_+/=".contains(*c);
    let per_char = if distinct.iter().all(char::is_ascii_hexdigit) {
        4.0
    } else if distinct.iter().all(base64) {
        6.0
    } else if distinct.iter().all(|c| c.is_ascii_graphic() || *c == ' ') {
        6.5
    } else {
        7.0
    };
    key.chars().count() as f64 * per_char
}

/// Reads a secret file, or creates it with `make()` readable by the owner only.
pub fn load_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> String,
) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = make();
            write_private(path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            room: RoomId::generate(),
            participant: ParticipantId::generate(),
            role: Role::Moderator,
            name: "Ada".into(),
            iat: 0,
            exp,
            generation: 1,
            delivery: Delivery::Broadcast,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let signer = TokenSigner::new([7; 32]);
        let c = claims(10_000);
        let token = signer.sign(&c);
        assert_eq!(signer.verify(&token, 9_999), Ok(c));
        assert_eq!(signer.verify(&token, 10_000), Err(TokenError::Expired));
    }

    #[test]
    fn forgeries_are_refused() {
        let signer = TokenSigner::new([7; 32]);
        let other = TokenSigner::new([8; 32]);
        let token = other.sign(&claims(i64::MAX));
        assert_eq!(signer.verify(&token, 0), Err(TokenError::BadSignature));
        // Swap the payload for one claiming another role, keep the signature.
        let good = signer.sign(&claims(i64::MAX));
        let (_, sig) = good.rsplit_once('.').unwrap();
        let mut forged_claims = claims(i64::MAX);
        forged_claims.role = Role::Listener;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{TOKEN_PREFIX}{forged_payload}.{sig}");
        assert_eq!(signer.verify(&forged, 0), Err(TokenError::BadSignature));
        for junk in ["", "st1.", "st1.a.b", "xx.a.b", "st1.%%%.%%%"] {
            assert!(signer.verify(junk, 0).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn resume_and_session_tokens_do_not_mix() {
        let signer = TokenSigner::new([7; 32]);
        let c = claims(i64::MAX);
        let resume = signer.sign_resume(&ResumeClaims {
            room: c.room.clone(),
            participant: c.participant.clone(),
            nonce: 1,
            exp: 10,
        });
        assert!(signer.verify_resume(&resume, 9).is_ok());
        assert_eq!(signer.verify_resume(&resume, 10), Err(TokenError::Expired));
        assert!(signer.verify(&resume, 0).is_err());
        // Same payload under the other prefix: the MAC covers the prefix too.
        let session = signer.sign(&c);
        let relabelled = session.replacen(TOKEN_PREFIX, RESUME_PREFIX, 1);
        assert_eq!(
            signer.verify_resume(&relabelled, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn operator_key_matches_only_itself() {
        let key = OperatorKey::generate();
        let op = OperatorKey::new(&key);
        assert!(op.matches(&key));
        assert!(!op.matches(&format!("{key}x")));
        assert!(!op.matches(""));
    }

    #[test]
    fn weak_operator_keys_are_refused() {
        let (repeated, alternating) = ("a".repeat(64), "ab".repeat(40));
        for weak in [
            "",
            "a",
            "secret",
            "stoa_sk_loadgen",
            "correcthorse",
            repeated.as_str(),
            alternating.as_str(),
        ] {
            assert!(OperatorKey::check_strength(weak).is_err(), "{weak:?}");
        }
        for strong in [
            OperatorKey::generate(),
            random_token(16),
            "3f9a1c07b2e84d5a9c6e0f1b2d3a4c5e".to_owned(),
            format!("test-{}", random_token(18)),
        ] {
            assert!(OperatorKey::check_strength(&strong).is_ok(), "{strong:?}");
        }
        let message = OperatorKey::check_strength("a").unwrap_err();
        assert!(message.contains("128 bits"), "{message}");
    }

    #[test]
    fn secrets_are_private_files() {
        let dir = tempdir();
        let path = dir.join("k");
        let a = load_or_create_secret(&path, || "one".into()).unwrap();
        let b = load_or_create_secret(&path, || "two".into()).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("one", "one"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("stoa-session-{}", random_token(8)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
