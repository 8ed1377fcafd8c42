//! Finding which connection a first STUN binding request belongs to.
//! Reads only the USERNAME attribute; integrity is checked later by the connection itself.

/// The server (lite, answerer) ufrag from a binding request's USERNAME "server:client",
/// read in place with no allocation. `None` if this is not a STUN message with a USERNAME.
pub fn server_ufrag(datagram: &[u8]) -> Option<&str> {
    // RFC 5389: 20-byte header, top two bits zero, magic cookie at 4..8, length a multiple of 4.
    if datagram.len() < 20 || datagram[0] & 0xC0 != 0 {
        return None;
    }
    if datagram[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let end = 20 + body_len;
    if end > datagram.len() {
        return None;
    }
    let mut at = 20;
    while at + 4 <= end {
        let typ = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
        let value_start = at + 4;
        if value_start + len > end {
            return None;
        }
        if typ == 0x0006 {
            let username = std::str::from_utf8(&datagram[value_start..value_start + len]).ok()?;
            return username.split(':').next();
        }
        at = value_start + ((len + 3) & !3);
    }
    None
}

/// The same, through the `stun` crate re-exported by `rtc` (allocates a Message).
pub fn server_ufrag_via_stun_crate(datagram: &[u8]) -> Option<String> {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::message::Message;
    use rtc::stun::textattrs::TextAttribute;
    let mut msg = Message::new();
    msg.unmarshal_binary(datagram).ok()?;
    let username = TextAttribute::get_from_as(&msg, ATTR_USERNAME).ok()?;
    username.text.split(':').next().map(str::to_owned)
}

/// RTP (not RTCP) by RFC 7983 + RFC 5761: first byte 128..=191, and the second byte is not an
/// RTCP packet type (192..=223). Lets a worker drop a listener's media before any decryption.
pub fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && (128..=191).contains(&datagram[0]) && !(192..=223).contains(&datagram[1])
}
