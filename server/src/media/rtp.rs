//! The RTP header Stoa writes on forwarded audio (RFC 3550 §5.1): the one header type of the
//! media path. Writing only; received packets are parsed by `rtc`.

/// Bytes of the header Stoa writes: the fixed header, with no CSRCs or extensions.
pub const HEADER_LEN: usize = 12;

/// The fields of an outgoing RTP header Stoa sets (version 2, no padding, extensions or CSRCs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`]; callers size their buffers first.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = 0x80;
        out[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_version_2_with_the_fields_in_network_order() {
        let mut out = [0xff; HEADER_LEN + 1];
        RtpHeader {
            marker: true,
            payload_type: 111,
            seq: 0x1234,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0102_0304,
        }
        .write(&mut out);
        assert_eq!(
            out,
            [
                0x80,
                0x80 | 111,
                0x12,
                0x34,
                0xde,
                0xad,
                0xbe,
                0xef,
                1,
                2,
                3,
                4,
                0xff
            ]
        );
    }

    #[test]
    fn a_payload_type_never_sets_the_marker_bit() {
        let mut out = [0; HEADER_LEN];
        RtpHeader {
            marker: false,
            payload_type: 0xff,
            seq: 0,
            timestamp: 0,
            ssrc: 0,
        }
        .write(&mut out);
        assert_eq!(out[1], 0x7f);
    }
}
