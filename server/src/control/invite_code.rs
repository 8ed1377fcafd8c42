//! Secrets that people hold and we only keep hashes of: invite codes and identity secrets.
//! Parsing is strict so malformed input is refused before it reaches the store.

use sha2::{Digest, Sha256};

use super::ids::random_token;

/// 128 bits of OS randomness, URL-safe base64 without padding: 22 characters.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode(String);

const CODE_BYTES: usize = 16;
const CODE_CHARS: usize = 22;

fn url_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl InviteCode {
    pub fn generate() -> Self {
        InviteCode(random_token(CODE_BYTES))
    }

    /// Accepts a bare code or a whole invite link ending in `/i/<code>`.
    pub fn parse(input: &str) -> Option<Self> {
        let code = input.trim().rsplit('/').next().unwrap_or("");
        (code.len() == CODE_CHARS && url_safe(code)).then(|| InviteCode(code.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// Hides the code in logs and debug output.
impl std::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteCode(..)")
    }
}

/// The opaque secret a browser keeps so a returning person keeps the same participant id.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentitySecret(String);

impl IdentitySecret {
    pub fn generate() -> Self {
        IdentitySecret(random_token(32))
    }

    /// 22 to 128 URL-safe characters: at least as much as 128 random bits, so a secret a
    /// client chose is no easier to guess than one we would have made.
    pub fn parse(input: &str) -> Option<Self> {
        ((22..=128).contains(&input.len()) && url_safe(input))
            .then(|| IdentitySecret(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentitySecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_128_bit_url_safe_and_parse_back() {
        let code = InviteCode::generate();
        assert_eq!(code.as_str().len(), CODE_CHARS);
        assert!(url_safe(code.as_str()));
        assert_eq!(InviteCode::parse(code.as_str()), Some(code.clone()));
        let link = format!("https://host/i/{}", code.as_str());
        assert_eq!(InviteCode::parse(&link), Some(code));
    }

    #[test]
    fn malformed_codes_are_refused() {
        for bad in [
            "",
            "short",
            "0123456789012345678901x",
            "012345678901234567890!",
            "0123456789012345678901/",
        ] {
            assert!(InviteCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn identity_secret_bounds() {
        assert!(IdentitySecret::parse("a".repeat(21).as_str()).is_none());
        assert!(IdentitySecret::parse("a".repeat(22).as_str()).is_some());
        assert!(IdentitySecret::parse("a".repeat(129).as_str()).is_none());
        assert!(IdentitySecret::parse("aaaaaaaaaaaaaaaa aaaa").is_none());
    }

    #[test]
    fn debug_hides_secrets() {
        let code = InviteCode::generate();
        assert!(!format!("{code:?}").contains(code.as_str()));
    }
}
