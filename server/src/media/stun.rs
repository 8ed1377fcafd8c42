//! STUN binding requests read in place and their success responses written into a caller's
//! buffer (RFC 8489 §14, RFC 8445 §7.2.2): no allocation. Every connected client sends a
//! consent check every few seconds for as long as it listens (RFC 7675), so this is the
//! largest part of what a silent room costs a worker.

use std::net::SocketAddr;
use std::ops::Range;

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const INTEGRITY_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// A binding request a browser sends is ~100 bytes; nothing legitimate comes near this.
const MAX_REQUEST: usize = 548;

/// The longest success response: header, XOR-MAPPED-ADDRESS for IPv6, MESSAGE-INTEGRITY and
/// FINGERPRINT.
pub const MAX_RESPONSE: usize = HEADER_LEN + (4 + 20) + (4 + INTEGRITY_LEN) + (4 + 4);

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Where a binding request's attributes are, found by one walk over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    username: Option<Range<usize>>,
    /// The offset of the MESSAGE-INTEGRITY attribute.
    integrity: Option<usize>,
    /// The offset of the FINGERPRINT attribute, the last one.
    fingerprint: Option<usize>,
    /// USE-CANDIDATE came before the integrity (attributes after it are not covered by it and
    /// are ignored, RFC 8489 §14.5).
    pub use_candidate: bool,
}

impl Binding {
    /// A well-formed binding request, or `None`: the header (type, length, cookie) and every
    /// attribute's bounds are checked, nothing else.
    pub fn parse(datagram: &[u8]) -> Option<Binding> {
        if datagram.len() < HEADER_LEN || datagram.len() > MAX_REQUEST {
            return None;
        }
        let typ = u16::from_be_bytes([datagram[0], datagram[1]]);
        let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
        if typ != BINDING_REQUEST
            || datagram[4..8] != MAGIC_COOKIE
            || !body_len.is_multiple_of(4)
            || HEADER_LEN + body_len != datagram.len()
        {
            return None;
        }
        let mut binding = Binding {
            username: None,
            integrity: None,
            fingerprint: None,
            use_candidate: false,
        };
        let mut at = HEADER_LEN;
        while at < datagram.len() {
            let head = datagram.get(at..at + 4)?;
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let len = u16::from_be_bytes([head[2], head[3]]) as usize;
            let value = at + 4;
            let next = value + len.div_ceil(4) * 4;
            if next > datagram.len() || binding.fingerprint.is_some() {
                return None; // runs past the end, or something follows the fingerprint
            }
            match kind {
                ATTR_FINGERPRINT if len == 4 => binding.fingerprint = Some(at),
                ATTR_FINGERPRINT => return None,
                _ if binding.integrity.is_some() => {} // not covered by the integrity
                ATTR_USERNAME => binding.username = Some(value..value + len),
                ATTR_MESSAGE_INTEGRITY if len == INTEGRITY_LEN => binding.integrity = Some(at),
                ATTR_MESSAGE_INTEGRITY => return None,
                ATTR_USE_CANDIDATE => binding.use_candidate = true,
                _ => {}
            }
            at = next;
        }
        Some(binding)
    }

    pub fn username<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        self.username.clone().and_then(|range| datagram.get(range))
    }

    /// Whether the request carries a FINGERPRINT and it is right.
    pub fn fingerprint_ok(&self, datagram: &[u8]) -> bool {
        let Some(at) = self.fingerprint else {
            return false;
        };
        let value = u32::from_be_bytes([
            datagram[at + 4],
            datagram[at + 5],
            datagram[at + 6],
            datagram[at + 7],
        ]);
        CRC32.checksum(&datagram[..at]) ^ FINGERPRINT_XOR == value
    }

    /// Whether the request carries a MESSAGE-INTEGRITY that checks with `password` (short-term
    /// credentials: the key is the password itself). Compared in constant time.
    pub fn integrity_ok(&self, datagram: &[u8], password: &[u8]) -> bool {
        let Some(at) = self.integrity else {
            return false;
        };
        // The HMAC covers the message up to the integrity attribute, with the header's length
        // as if the message ended right after it.
        let covered_len = (at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
        let mut mac = hmac_sha1(password);
        mac.update(&datagram[..2]);
        mac.update(&covered_len.to_be_bytes());
        mac.update(&datagram[4..at]);
        mac.verify_slice(&datagram[at + 4..at + 4 + INTEGRITY_LEN])
            .is_ok()
    }

    /// Writes the success response to this request, seen from `from`, into `out`: its
    /// transaction id, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY with `password` and FINGERPRINT.
    /// Returns the length.
    pub fn write_success(
        datagram: &[u8],
        from: SocketAddr,
        password: &[u8],
        out: &mut [u8; MAX_RESPONSE],
    ) -> usize {
        out[..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        out[4..HEADER_LEN].copy_from_slice(&datagram[4..HEADER_LEN]); // cookie, transaction id
        let mut at = HEADER_LEN;
        // XOR-MAPPED-ADDRESS: the port with the cookie's top half, the address with the cookie
        // (and for IPv6 the transaction id).
        let mut mask = [0u8; 16];
        mask.copy_from_slice(&datagram[4..HEADER_LEN]);
        let (family, address): (u8, &[u8]) = match from {
            SocketAddr::V4(a) => (1, &a.ip().octets()),
            SocketAddr::V6(a) => (2, &a.ip().octets()),
        };
        let len = 4 + address.len();
        out[at..at + 2].copy_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
        out[at + 2..at + 4].copy_from_slice(&(len as u16).to_be_bytes());
        out[at + 4] = 0;
        out[at + 5] = family;
        let port = from.port() ^ u16::from_be_bytes([MAGIC_COOKIE[0], MAGIC_COOKIE[1]]);
        out[at + 6..at + 8].copy_from_slice(&port.to_be_bytes());
        for (i, byte) in address.iter().enumerate() {
            out[at + 8 + i] = byte ^ mask[i];
        }
        at += 4 + len;
        // MESSAGE-INTEGRITY over everything before it, the header's length counting it.
        set_length(out, at + 4 + INTEGRITY_LEN);
        let mut mac = hmac_sha1(password);
        mac.update(&out[..at]);
        let tag = mac.finalize().into_bytes();
        out[at..at + 2].copy_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        out[at + 2..at + 4].copy_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
        out[at + 4..at + 4 + INTEGRITY_LEN].copy_from_slice(&tag);
        at += 4 + INTEGRITY_LEN;
        // FINGERPRINT, last, over everything before it.
        set_length(out, at + 8);
        let crc = CRC32.checksum(&out[..at]) ^ FINGERPRINT_XOR;
        out[at..at + 2].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        out[at + 2..at + 4].copy_from_slice(&4u16.to_be_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        at + 8
    }
}

fn set_length(out: &mut [u8], total: usize) {
    out[2..4].copy_from_slice(&((total - HEADER_LEN) as u16).to_be_bytes());
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    // HMAC takes a key of any length.
    Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts any key length")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rtc::ice::attributes::use_candidate::UseCandidateAttr;
    use rtc::stun::attributes::ATTR_USERNAME as USER;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST as RTC_REQUEST, Getter, Message, Setter};
    use rtc::stun::textattrs::Username;
    use rtc::stun::xoraddr::XorMappedAddress;

    const PWD: &str = "stunPassword0123456789abcdefghij";

    /// A binding request built by `rtc`'s STUN, an implementation we did not write.
    pub(crate) fn request(
        username: &str,
        password: &str,
        nominate: bool,
        fingerprint: bool,
    ) -> Vec<u8> {
        let provider = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(RTC_REQUEST),
            Box::new(rtc::stun::message::TransactionId::new()),
            Box::new(Username::new(USER, username.to_owned())),
        ];
        if nominate {
            setters.push(Box::new(UseCandidateAttr::new()));
        }
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(
                password.to_owned(),
                provider.crypto(),
            ),
        ));
        if fingerprint {
            setters.push(Box::new(FINGERPRINT));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    #[test]
    fn reads_what_rtc_writes() {
        let raw = request("server:client", PWD, true, true);
        let binding = Binding::parse(&raw).expect("well formed");
        assert_eq!(binding.username(&raw), Some(&b"server:client"[..]));
        assert!(binding.use_candidate);
        assert!(binding.fingerprint_ok(&raw));
        assert!(binding.integrity_ok(&raw, PWD.as_bytes()));
        assert!(!binding.integrity_ok(&raw, b"wrongPassword0123456789abcdefghi"));

        let plain = request("server:client", PWD, false, false);
        let binding = Binding::parse(&plain).unwrap();
        assert!(!binding.use_candidate);
        assert!(
            !binding.fingerprint_ok(&plain),
            "no fingerprint is not a right one"
        );
        assert!(binding.integrity_ok(&plain, PWD.as_bytes()));
    }

    #[test]
    fn any_changed_byte_fails_a_check_or_the_parse() {
        let raw = request("server:client", PWD, false, true);
        for i in 0..raw.len() {
            for bit in [0x01, 0x80] {
                let mut bad = raw.clone();
                bad[i] ^= bit;
                let passes = Binding::parse(&bad).is_some_and(|b| {
                    b.fingerprint_ok(&bad) && b.integrity_ok(&bad, PWD.as_bytes())
                });
                assert!(!passes, "byte {i} ^ {bit:#x} went unnoticed");
            }
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let raw = request("server:client", PWD, false, true);
        assert!(Binding::parse(&raw[..19]).is_none());
        assert!(
            Binding::parse(&raw[..raw.len() - 4]).is_none(),
            "length disagrees"
        );
        let mut response = raw.clone();
        response[..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        assert!(Binding::parse(&response).is_none(), "not a request");
        let mut cookie = raw.clone();
        cookie[4] ^= 1;
        assert!(Binding::parse(&cookie).is_none());
        // An attribute whose length runs past the end.
        let mut long = raw.clone();
        long[22..24].copy_from_slice(&0xFFF0u16.to_be_bytes());
        assert!(Binding::parse(&long).is_none());
        // Something after the fingerprint.
        let mut after = raw.clone();
        after.extend_from_slice(&[0x80, 0x22, 0, 0]);
        let len = (after.len() - HEADER_LEN) as u16;
        after[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(Binding::parse(&after).is_none());
        assert!(Binding::parse(&vec![0u8; 4096]).is_none());
    }

    #[test]
    fn attributes_after_the_integrity_are_not_believed() {
        // USE-CANDIDATE appended after MESSAGE-INTEGRITY (as an attacker on the path could):
        // not covered by the HMAC, so not a nomination.
        let provider = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(RTC_REQUEST),
            Box::new(rtc::stun::message::TransactionId::new()),
            Box::new(Username::new(USER, "server:client".to_owned())),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                PWD.to_owned(),
                provider.crypto(),
            )),
            Box::new(UseCandidateAttr::new()),
        ];
        m.build(&setters).unwrap();
        let binding = Binding::parse(&m.raw).unwrap();
        assert!(!binding.use_candidate);
        assert!(binding.integrity_ok(&m.raw, PWD.as_bytes()));
    }

    #[test]
    fn rtc_accepts_our_responses() {
        let provider = rtc::crypto::default_provider().unwrap();
        let raw = request("server:client", PWD, false, true);
        for from in ["10.0.0.2:5000", "[2001:db8::7]:61000"] {
            let from: SocketAddr = from.parse().unwrap();
            let mut out = [0u8; MAX_RESPONSE];
            let len = Binding::write_success(&raw, from, PWD.as_bytes(), &mut out);
            let mut response = Message::new();
            response.raw = out[..len].to_vec();
            response.decode().unwrap();
            assert_eq!(response.typ, rtc::stun::message::BINDING_SUCCESS);
            assert_eq!(response.transaction_id.0[..], raw[8..20]);
            assert!(FINGERPRINT.check(&response).is_ok());
            assert!(
                MessageIntegrity::check(&mut response, PWD.as_bytes(), provider.crypto()).is_ok()
            );
            let mut mapped = XorMappedAddress::default();
            mapped.get_from(&response).unwrap();
            assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from);
        }
    }
}
