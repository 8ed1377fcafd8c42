//! ICE-lite by hand (RFC 8445 §2.5, RFC 7675): a binding request is answered only when its
//! USERNAME names our ufrag, its FINGERPRINT is right and its MESSAGE-INTEGRITY checks with our
//! password. No candidates, pairs or checks of our own are kept; the caller remembers the
//! address that passed and the time (consent). Runs once per check, never per media packet.

use std::net::SocketAddr;

use crate::media::stun::{Binding, MAX_RESPONSE};

/// Why a STUN datagram was not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunRefusal {
    /// Not a well-formed STUN message, or not a binding request.
    Malformed,
    /// Its USERNAME does not start with our ufrag.
    Username,
    /// No FINGERPRINT, or a wrong one.
    Fingerprint,
    /// No MESSAGE-INTEGRITY, or one that does not check with our password (forged).
    Integrity,
}

/// A binding request that passed every check.
pub struct Check {
    /// The client nominated this pair (`USE-CANDIDATE`): media goes to its address.
    pub nominated: bool,
    response: [u8; MAX_RESPONSE],
    len: usize,
}

impl Check {
    /// The success response, ready to send back to where the request came from.
    pub fn response(&self) -> &[u8] {
        &self.response[..self.len]
    }
}

/// Checks a binding request from `from` against our credentials and builds its answer, in
/// place: nothing is allocated.
pub fn answer_binding(
    datagram: &[u8],
    from: SocketAddr,
    ufrag: &str,
    password: &str,
) -> Result<Check, StunRefusal> {
    let request = Binding::parse(datagram).ok_or(StunRefusal::Malformed)?;
    let username = request.username(datagram).ok_or(StunRefusal::Username)?;
    let named_us = username
        .strip_prefix(ufrag.as_bytes())
        .is_some_and(|rest| rest.first() == Some(&b':'));
    if !named_us {
        return Err(StunRefusal::Username);
    }
    if !request.fingerprint_ok(datagram) {
        return Err(StunRefusal::Fingerprint);
    }
    if !request.integrity_ok(datagram, password.as_bytes()) {
        return Err(StunRefusal::Integrity);
    }
    let mut response = [0u8; MAX_RESPONSE];
    let len = Binding::write_success(datagram, from, password.as_bytes(), &mut response);
    Ok(Check {
        nominated: request.use_candidate,
        response,
        len,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_SUCCESS, Getter, Message};
    use rtc::stun::xoraddr::XorMappedAddress;

    const UFRAG: &str = "leanUfrag0123456";
    const PWD: &str = "leanPassword0123456789abcdefghij";

    /// A binding request as `rtc`'s STUN writes it (no nomination).
    pub(in crate::media::lean) fn request(
        username: &str,
        password: &str,
        fingerprint: bool,
    ) -> Vec<u8> {
        crate::media::stun::tests::request(username, password, false, fingerprint)
    }

    #[test]
    fn only_a_request_with_our_credentials_is_answered() {
        let provider = rtc::crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        let from: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let good = request(&format!("{UFRAG}:client"), PWD, true);
        let check = answer_binding(&good, from, UFRAG, PWD).expect("answered");
        assert!(!check.nominated);
        // The answer carries our integrity: a client checks it with our password.
        let mut response = Message::new();
        response.raw = check.response().to_vec();
        response.decode().unwrap();
        assert_eq!(response.typ, BINDING_SUCCESS);
        assert!(MessageIntegrity::check(&mut response, PWD.as_bytes(), crypto).is_ok());
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&response).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from);

        let refused = |datagram: &[u8]| answer_binding(datagram, from, UFRAG, PWD).err();
        let forged = request(
            &format!("{UFRAG}:client"),
            "wrongPassword0123456789abcdefghi",
            true,
        );
        assert_eq!(refused(&forged), Some(StunRefusal::Integrity));
        let other = request("otherUfrag:client", PWD, true);
        assert_eq!(refused(&other), Some(StunRefusal::Username));
        let prefix = request(&format!("{UFRAG}x:client"), PWD, true);
        assert_eq!(refused(&prefix), Some(StunRefusal::Username));
        let bare = request(&format!("{UFRAG}:client"), PWD, false);
        assert_eq!(refused(&bare), Some(StunRefusal::Fingerprint));
        let mut flipped = good.clone();
        flipped[good.len() - 1] ^= 1;
        assert_eq!(refused(&flipped), Some(StunRefusal::Fingerprint));
        assert_eq!(refused(&good[..20]), Some(StunRefusal::Malformed));
        assert_eq!(refused(&[0u8; 3]), Some(StunRefusal::Malformed));
    }
}
