//! Reading a decrypted RTP packet: its fixed header, its RFC 8285 header extensions and the
//! RFC 6464 client-to-mixer audio level. Borrowing parsers only: no allocation, no writes, and
//! no panic on any input, however truncated or hostile.

/// Profile of the one-byte extension form (RFC 8285 §4.2).
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// Profile of the two-byte form is 0x100 in the top 12 bits; the low 4 are application bits.
const TWO_BYTE_PROFILE: u16 = 0x1000;
const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
/// In the one-byte form, ID 15 ends parsing of the block (RFC 8285 §4.2).
const ONE_BYTE_STOP_ID: u8 = 15;

const FIXED_HEADER_LEN: usize = 12;

/// The fixed RTP header (RFC 3550 §5.1) and where the parts of the packet lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    /// Bytes before the payload: fixed header, CSRCs and the extension block.
    pub header_len: usize,
    /// Bytes of padding at the end (0 when the P bit is clear).
    pub padding_len: usize,
    pub extension: Option<ExtensionBlock>,
}

/// The header extension block: its profile and the byte range of its elements in the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionBlock {
    pub profile: u16,
    pub start: usize,
    pub len: usize,
}

/// RFC 6464: whether the sender's voice activity detector heard speech, and the level in
/// -dBov (0 is the loudest, 127 is silence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLevel {
    pub voice_activity: bool,
    pub level: u8,
}

/// Parses the fixed header of an RTP packet. `None` for anything that is not well-formed RTP
/// version 2 (including lengths that point past the end). The caller must already have told
/// RTP from RTCP (RFC 5761 §4) on a muxed port.
pub fn rtp_header(packet: &[u8]) -> Option<RtpHeader> {
    let fixed: &[u8; FIXED_HEADER_LEN] = packet.get(..FIXED_HEADER_LEN)?.try_into().ok()?;
    if fixed[0] >> 6 != 2 {
        return None;
    }
    let has_padding = fixed[0] & 0x20 != 0;
    let has_extension = fixed[0] & 0x10 != 0;
    let csrc_count = fixed[0] & 0x0f;
    let mut header_len = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
    let extension = if has_extension {
        let ext_header = packet.get(header_len..header_len + 4)?;
        let profile = u16::from_be_bytes([ext_header[0], ext_header[1]]);
        let len = 4 * usize::from(u16::from_be_bytes([ext_header[2], ext_header[3]]));
        let start = header_len + 4;
        header_len = start + len;
        Some(ExtensionBlock {
            profile,
            start,
            len,
        })
    } else {
        None
    };
    if header_len > packet.len() {
        return None;
    }
    let padding_len = if has_padding {
        // The count includes itself, so 0 is malformed, as is padding that eats the header.
        let count = usize::from(*packet.last()?);
        if count == 0 || count > packet.len() - header_len {
            return None;
        }
        count
    } else {
        0
    };
    Some(RtpHeader {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7f,
        seq: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        csrc_count,
        header_len,
        padding_len,
        extension,
    })
}

impl RtpHeader {
    /// The payload without padding; empty if `packet` is not the one this header came from.
    pub fn payload<'a>(&self, packet: &'a [u8]) -> &'a [u8] {
        let end = packet.len().saturating_sub(self.padding_len);
        packet.get(self.header_len..end).unwrap_or(&[])
    }

    /// The data of the extension element with local identifier `id` (negotiated by
    /// `a=extmap`), in either the one-byte or the two-byte form. `None` if absent, if the
    /// block has another profile, or if the element runs past the block.
    pub fn extension_element<'a>(&self, packet: &'a [u8], id: u8) -> Option<&'a [u8]> {
        let block = self.extension?;
        let data = packet.get(block.start..block.start.checked_add(block.len)?)?;
        if block.profile == ONE_BYTE_PROFILE {
            find_one_byte_element(data, id)
        } else if block.profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE {
            find_two_byte_element(data, id)
        } else {
            None
        }
    }
}

fn find_one_byte_element(data: &[u8], id: u8) -> Option<&[u8]> {
    let mut at = 0;
    while let Some(&byte) = data.get(at) {
        let element_id = byte >> 4;
        // Padding is a single byte whatever its length nibble says (as libwebrtc reads it).
        if element_id == 0 {
            at += 1;
            continue;
        }
        if element_id == ONE_BYTE_STOP_ID {
            return None;
        }
        let len = usize::from(byte & 0x0f) + 1;
        let element = data.get(at + 1..at + 1 + len)?;
        if element_id == id {
            return Some(element);
        }
        at += 1 + len;
    }
    None
}

fn find_two_byte_element(data: &[u8], id: u8) -> Option<&[u8]> {
    let mut at = 0;
    while let Some(&element_id) = data.get(at) {
        if element_id == 0 {
            at += 1;
            continue;
        }
        let len = usize::from(*data.get(at + 1)?);
        let element = data.get(at + 2..at + 2 + len)?;
        if element_id == id {
            return Some(element);
        }
        at += 2 + len;
    }
    None
}

impl AudioLevel {
    /// Reads the element's data. RFC 6464 sends one byte; longer elements (some old senders
    /// padded to four) are read by their first byte.
    pub fn from_element(data: &[u8]) -> Option<Self> {
        let &byte = data.first()?;
        Some(Self {
            voice_activity: byte & 0x80 != 0,
            level: byte & 0x7f,
        })
    }
}

/// The audio level of a decrypted RTP packet, given the extension id negotiated for
/// `urn:ietf:params:rtp-hdrext:ssrc-audio-level`. A caller that already parsed the header
/// should use `RtpHeader::extension_element` and `AudioLevel::from_element` instead.
pub fn audio_level(packet: &[u8], extension_id: u8) -> Option<AudioLevel> {
    let header = rtp_header(packet)?;
    AudioLevel::from_element(header.extension_element(packet, extension_id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVEL_ID: u8 = 1;

    /// Builds a packet: fixed header (PT 111, seq 0x1234, ts 0xDEADBEEF, SSRC 0x01020304),
    /// CSRCs, an optional extension block (profile, element bytes already padded to 32-bit
    /// words), the payload and optional padding.
    fn packet(
        marker: bool,
        csrcs: &[u32],
        extension: Option<(u16, &[u8])>,
        payload: &[u8],
        padding: u8,
    ) -> Vec<u8> {
        let mut first = 0x80 | csrcs.len() as u8;
        if extension.is_some() {
            first |= 0x10;
        }
        if padding > 0 {
            first |= 0x20;
        }
        let mut p = vec![first, u8::from(marker) << 7 | 111, 0x12, 0x34];
        p.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
        p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        for csrc in csrcs {
            p.extend_from_slice(&csrc.to_be_bytes());
        }
        if let Some((profile, elements)) = extension {
            assert_eq!(elements.len() % 4, 0, "test bug: unpadded extension");
            p.extend_from_slice(&profile.to_be_bytes());
            p.extend_from_slice(&((elements.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(elements);
        }
        p.extend_from_slice(payload);
        if padding > 0 {
            p.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
            p.push(padding);
        }
        p
    }

    const OPUS: &[u8] = &[0xfc, 0xff, 0xfe, 0x01, 0x02];

    struct Case {
        name: &'static str,
        packet: Vec<u8>,
        id: u8,
        level: Option<AudioLevel>,
    }

    fn level(voice_activity: bool, level: u8) -> Option<AudioLevel> {
        Some(AudioLevel {
            voice_activity,
            level,
        })
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "one-byte form, level alone (what Chrome sends)",
                packet: packet(
                    false,
                    &[],
                    Some((0xBEDE, &[0x10, 0x80 | 42, 0, 0])),
                    OPUS,
                    0,
                ),
                id: LEVEL_ID,
                level: level(true, 42),
            },
            Case {
                name: "one-byte form, after another element and padding, with CSRCs",
                packet: packet(
                    true,
                    &[7, 8],
                    Some((0xBEDE, &[0x22, 0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x50, 0x7f])),
                    OPUS,
                    0,
                ),
                id: 5,
                level: level(false, 127),
            },
            Case {
                name: "one-byte form, id absent",
                packet: packet(false, &[], Some((0xBEDE, &[0x20, 0x80, 0, 0])), OPUS, 0),
                id: LEVEL_ID,
                level: None,
            },
            Case {
                name: "one-byte form, id 15 stops parsing before the level",
                packet: packet(false, &[], Some((0xBEDE, &[0xf0, 0x10, 0x85, 0])), OPUS, 0),
                id: LEVEL_ID,
                level: None,
            },
            Case {
                name: "one-byte form, element overruns the block",
                packet: packet(
                    false,
                    &[],
                    Some((0xBEDE, &[0x23, 0x00, 0x10, 0x85])),
                    OPUS,
                    0,
                ),
                id: LEVEL_ID,
                level: None,
            },
            Case {
                name: "one-byte form, four-byte level element read by its first byte",
                packet: packet(
                    false,
                    &[],
                    Some((0xBEDE, &[0x13, 0x80 | 3, 0, 0, 0, 0, 0, 0])),
                    OPUS,
                    0,
                ),
                id: LEVEL_ID,
                level: level(true, 3),
            },
            Case {
                name: "two-byte form with padding and another element first",
                packet: packet(
                    false,
                    &[],
                    Some((
                        0x1000,
                        &[0x00, 0x09, 0x02, 0xaa, 0xbb, 0x01, 0x01, 0x80 | 30],
                    )),
                    OPUS,
                    4,
                ),
                id: LEVEL_ID,
                level: level(true, 30),
            },
            Case {
                name: "two-byte form with app bits and an id above 14",
                packet: packet(false, &[1], Some((0x100f, &[200, 1, 0x11, 0])), OPUS, 0),
                id: 200,
                level: level(false, 0x11),
            },
            Case {
                name: "two-byte form, zero-length element has no level",
                packet: packet(false, &[], Some((0x1000, &[0x01, 0x00, 0, 0])), OPUS, 0),
                id: LEVEL_ID,
                level: None,
            },
            Case {
                name: "unknown extension profile",
                packet: packet(false, &[], Some((0xABCD, &[0x10, 0x85, 0, 0])), OPUS, 0),
                id: LEVEL_ID,
                level: None,
            },
            Case {
                name: "no extension at all",
                packet: packet(false, &[1, 2, 3], None, OPUS, 0),
                id: LEVEL_ID,
                level: None,
            },
            Case {
                name: "empty extension block",
                packet: packet(false, &[], Some((0xBEDE, &[])), OPUS, 0),
                id: LEVEL_ID,
                level: None,
            },
        ]
    }

    #[test]
    fn audio_levels() {
        for case in cases() {
            assert_eq!(
                audio_level(&case.packet, case.id),
                case.level,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn header_fields_and_payload() {
        let p = packet(true, &[7, 8], Some((0xBEDE, &[0x10, 0x85, 0, 0])), OPUS, 3);
        let header = rtp_header(&p).expect("valid packet");
        assert_eq!(
            header,
            RtpHeader {
                marker: true,
                payload_type: 111,
                seq: 0x1234,
                timestamp: 0xDEAD_BEEF,
                ssrc: 0x0102_0304,
                csrc_count: 2,
                header_len: 12 + 8 + 4 + 4,
                padding_len: 3,
                extension: Some(ExtensionBlock {
                    profile: 0xBEDE,
                    start: 24,
                    len: 4,
                }),
            }
        );
        assert_eq!(header.payload(&p), OPUS);
        assert_eq!(header.payload(&[]), &[] as &[u8]);
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let good = packet(false, &[], None, OPUS, 0);
        let mut version_1 = good.clone();
        version_1[0] = (version_1[0] & 0x3f) | 0x40;
        assert_eq!(rtp_header(&version_1), None, "version 1");

        let mut csrcs_past_end = good.clone();
        csrcs_past_end[0] |= 0x0f;
        assert_eq!(
            rtp_header(&csrcs_past_end),
            None,
            "15 CSRCs in a 17-byte packet"
        );

        let mut extension_past_end =
            packet(false, &[], Some((0xBEDE, &[0x10, 0x85, 0, 0])), &[], 0);
        extension_past_end[15] = 2;
        assert_eq!(
            rtp_header(&extension_past_end),
            None,
            "extension longer than packet"
        );

        let mut zero_padding = packet(false, &[], None, OPUS, 2);
        *zero_padding.last_mut().unwrap() = 0;
        assert_eq!(rtp_header(&zero_padding), None, "padding count 0");

        let mut padding_eats_header = packet(false, &[], None, OPUS, 2);
        *padding_eats_header.last_mut().unwrap() = 8;
        assert_eq!(
            rtp_header(&padding_eats_header),
            None,
            "padding past the payload"
        );

        let header_only = packet(false, &[], None, &[], 0);
        assert!(rtp_header(&header_only).is_some(), "empty payload is fine");
    }

    /// A small deterministic generator so the no-panic sweep needs no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn read_everything(bytes: &[u8], id: u8) {
        if let Some(header) = rtp_header(bytes) {
            assert!(header.header_len + header.padding_len <= bytes.len());
            let _ = header.payload(bytes);
            let _ = header.extension_element(bytes, id);
        }
        let _ = audio_level(bytes, id);
    }

    #[test]
    fn every_prefix_and_every_byte_value_is_survived() {
        for case in cases() {
            for len in 0..=case.packet.len() {
                read_everything(&case.packet[..len], case.id);
            }
            for at in 0..case.packet.len() {
                for value in [0x00, 0x01, 0x0f, 0x10, 0x7f, 0x80, 0xbe, 0xde, 0xf0, 0xff] {
                    let mut mutated = case.packet.clone();
                    mutated[at] = value;
                    for len in 0..=mutated.len() {
                        read_everything(&mutated[..len], case.id);
                    }
                }
            }
        }
    }

    #[test]
    fn random_bytes_are_survived() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut bytes = [0u8; 96];
        for _ in 0..200_000 {
            let len = (rng.next() % 97) as usize;
            for byte in bytes.iter_mut().take(len) {
                *byte = rng.next() as u8;
            }
            // Mostly version 2 with the extension bit, so parsing gets past the first check.
            if len > 0 && !rng.next().is_multiple_of(4) {
                bytes[0] = 0x90 | (bytes[0] & 0x2f);
            }
            if len > 15 && rng.next().is_multiple_of(2) {
                let offset = 12 + 4 * usize::from(bytes[0] & 0x0f);
                if offset + 2 <= len {
                    let profile: u16 = if rng.next().is_multiple_of(2) {
                        0xBEDE
                    } else {
                        0x1000
                    };
                    bytes[offset..offset + 2].copy_from_slice(&profile.to_be_bytes());
                }
            }
            read_everything(&bytes[..len], (rng.next() % 16) as u8);
        }
    }
}
