//! What a datagram arriving on a media socket is, from its first bytes (RFC 7983), and which
//! connection a STUN binding request is for, from its USERNAME — read in place, no allocation.

/// The protocols that share a media socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// Audio relayed from another node of the cluster (`media::relay`).
    Relay,
    /// Anything else (ZRTP, TURN channel data, garbage): dropped.
    Other,
}

/// Classifies by RFC 7983 (first byte) and RFC 5761 (RTCP packet types 192..=223 in the
/// second byte). Too-short datagrams of a kind are `Other`.
pub fn classify(datagram: &[u8]) -> Kind {
    let Some(&first) = datagram.first() else {
        return Kind::Other;
    };
    match first {
        0..=3 if datagram.len() >= 20 => Kind::Stun,
        20..=63 if datagram.len() >= 13 => Kind::Dtls,
        128..=191 if datagram.len() >= 12 => {
            if (192..=223).contains(&datagram[1]) {
                Kind::Rtcp
            } else {
                Kind::Rtp
            }
        }
        128..=191 if datagram.len() >= 8 && (192..=223).contains(&datagram[1]) => Kind::Rtcp,
        crate::media::relay::MARKER
            if datagram.len() >= crate::media::relay::HEADER + 1 + crate::media::relay::TAG =>
        {
            Kind::Relay
        }
        _ => Kind::Other,
    }
}

use crate::media::stun::{Binding, MAGIC_COOKIE};

const ATTR_USERNAME: u16 = 0x0006;

/// The server's ufrag from a binding request's USERNAME (`"<server>:<client>"`, RFC 8445
/// §7.2.2): the routing key for a peer not seen before. `None` if this is not a well-formed
/// STUN message with a USERNAME. Integrity is checked later by the connection itself.
pub fn server_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < 20 || datagram[0] & 0xC0 != 0 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let end = 20usize.checked_add(body_len)?;
    if end > datagram.len() {
        return None;
    }
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
        let value = at + 4;
        if value + len > end {
            return None;
        }
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(&datagram[value..value + len]).ok()?;
            let (server, _client) = username.split_once(':')?;
            return Some(server);
        }
        at = value + ((len + 3) & !3);
    }
    None
}

/// Whether a binding request's MESSAGE-INTEGRITY checks with the connection's ICE password
/// (RFC 8445 §7.2.2: short-term credentials). Only a request that passes may change where a
/// connection is reached; a forged one must not redirect anyone's audio. Reads in place.
pub fn binding_integrity_ok(datagram: &[u8], password: &str) -> bool {
    Binding::parse(datagram).is_some_and(|b| b.integrity_ok(datagram, password.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the parser has to walk past one.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn only_the_right_password_passes_the_integrity_check() {
        let request = crate::fuzzing::browser_binding_request([9; 12]);
        let right = crate::fuzzing::SERVER_PWD;
        assert!(binding_integrity_ok(&request, right));
        assert!(!binding_integrity_ok(
            &request,
            "wrongPassword0123456789012345678"
        ));
        let mut tampered = request.clone();
        let last = tampered.len() - 30;
        tampered[last] ^= 1;
        assert!(!binding_integrity_ok(&tampered, right));
        assert!(!binding_integrity_ok(&request[..20], right));
        assert!(!binding_integrity_ok(&[], right));
    }

    #[test]
    fn reads_the_server_ufrag() {
        let m = binding_request("srvUfrag0123:cli9");
        assert_eq!(server_ufrag(&m), Some("srvUfrag0123"));
        assert_eq!(classify(&m), Kind::Stun);
    }

    #[test]
    fn refuses_malformed_stun() {
        let good = binding_request("abcd:efgh");
        assert_eq!(server_ufrag(&good[..19]), None, "short header");
        let mut bad_cookie = good.clone();
        bad_cookie[5] = 0;
        assert_eq!(server_ufrag(&bad_cookie), None);
        let mut overlong = good.clone();
        overlong[3] = 0xff; // body longer than the datagram
        assert_eq!(server_ufrag(&overlong), None);
        let mut attr_overrun = good.clone();
        let len_at = 20 + 8 + 2;
        attr_overrun[len_at] = 0x7f;
        assert_eq!(server_ufrag(&attr_overrun), None);
        assert_eq!(server_ufrag(&binding_request("no-colon")), None);
        assert_eq!(server_ufrag(&[]), None);
        assert_eq!(server_ufrag(&[0u8; 20]), None);
    }

    #[test]
    fn classifies_by_first_bytes() {
        let mut rtp = vec![0x80, 111];
        rtp.extend_from_slice(&[0; 10]);
        assert_eq!(classify(&rtp), Kind::Rtp);
        let mut rtcp = vec![0x81, 201];
        rtcp.extend_from_slice(&[0; 6]);
        assert_eq!(classify(&rtcp), Kind::Rtcp);
        assert_eq!(classify(&[22u8; 13]), Kind::Dtls);
        assert_eq!(classify(&[22u8; 12]), Kind::Other);
        assert_eq!(classify(&[0x80, 111, 0]), Kind::Other);
        assert_eq!(classify(&[64u8; 40]), Kind::Other);
        assert_eq!(classify(&[255u8; 40]), Kind::Other);
        // A relayed datagram: its marker and room for a header, one byte of body and a tag.
        assert_eq!(classify(&[0xE5; 31]), Kind::Relay);
        assert_eq!(classify(&[0xE5; 30]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }
}
