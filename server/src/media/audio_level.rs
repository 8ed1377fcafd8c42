//! The RFC 6464 client-to-mixer audio level, read from the data of its RTP header extension
//! element (which `rtc` has already found in the packet). No allocation and no panic on any input.

/// RFC 6464: whether the sender's voice activity detector heard speech, and the level in
/// -dBov (0 is the loudest, 127 is silence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLevel {
    pub voice_activity: bool,
    pub level: u8,
}

impl AudioLevel {
    /// Reads the element's data. RFC 6464 sends one byte; longer elements (some old senders
    /// padded to four) are read by their first byte. `None` for an empty element.
    pub fn from_element(data: &[u8]) -> Option<Self> {
        let &byte = data.first()?;
        Some(Self {
            voice_activity: byte & 0x80 != 0,
            level: byte & 0x7f,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(voice_activity: bool, level: u8) -> Option<AudioLevel> {
        Some(AudioLevel {
            voice_activity,
            level,
        })
    }

    #[test]
    fn elements() {
        let cases: [(&str, &[u8], Option<AudioLevel>); 6] = [
            (
                "speech at -42 dBov (what Chrome sends)",
                &[0x80 | 42],
                level(true, 42),
            ),
            ("silence without voice activity", &[0x7f], level(false, 127)),
            ("the loudest level", &[0x80], level(true, 0)),
            (
                "a four-byte element read by its first byte",
                &[0x80 | 3, 0, 0, 0],
                level(true, 3),
            ),
            (
                "a two-byte-form element of one byte",
                &[0x11],
                level(false, 0x11),
            ),
            ("an empty element has no level", &[], None),
        ];
        for (name, data, expected) in cases {
            assert_eq!(AudioLevel::from_element(data), expected, "{name}");
        }
    }

    #[test]
    fn every_byte_value_reads() {
        for byte in 0..=u8::MAX {
            let read = AudioLevel::from_element(&[byte]).expect("one byte is a level");
            assert_eq!(read.voice_activity, byte >= 0x80);
            assert_eq!(read.level, byte & 0x7f);
        }
    }
}
