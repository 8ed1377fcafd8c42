//! Checks a client's SDP offer before any connection state is touched: bounded, parseable,
//! audio only, exactly the number of audio sections the server sends, and Opus offered in each.

use rtc::peer_connection::sdp::RTCSessionDescription;

/// Browsers' audio-only offers are 2–5 KiB; anything near this bound is not one of them.
pub const MAX_SDP_BYTES: usize = 16 * 1024;

/// Why an offer is refused; `code()` is what the client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfferError {
    TooLarge,
    Invalid(String),
    /// Video, data channels, or the wrong number of audio sections.
    UnsupportedMedia(String),
    /// An audio section without Opus.
    UnsupportedCodec,
}

impl OfferError {
    pub fn code(&self) -> &'static str {
        match self {
            OfferError::TooLarge => "sdp_too_large",
            OfferError::Invalid(_) => "invalid_sdp",
            OfferError::UnsupportedMedia(_) => "unsupported_media",
            OfferError::UnsupportedCodec => "unsupported_codec",
        }
    }

    pub fn message(&self) -> String {
        match self {
            OfferError::TooLarge => format!("the offer is larger than {MAX_SDP_BYTES} bytes"),
            OfferError::Invalid(why) => format!("the offer is not valid SDP: {why}"),
            OfferError::UnsupportedMedia(why) => why.clone(),
            OfferError::UnsupportedCodec => {
                "every audio section must offer Opus (opus/48000/2)".to_owned()
            }
        }
    }
}

/// Parses and checks an offer for a connection that receives `slots` audio streams.
pub fn check_offer(sdp: String, slots: usize) -> Result<RTCSessionDescription, OfferError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(OfferError::TooLarge);
    }
    let offer = RTCSessionDescription::offer(sdp).map_err(|e| {
        let mut why = e.to_string();
        why.truncate(200);
        OfferError::Invalid(why)
    })?;
    let parsed = offer
        .unmarshal()
        .map_err(|e| OfferError::Invalid(e.to_string()))?;
    let mut audio = 0;
    for media in &parsed.media_descriptions {
        let kind = media.media_name.media.as_str();
        if kind != "audio" {
            let shown: String = kind.chars().take(20).collect();
            return Err(OfferError::UnsupportedMedia(format!(
                "only audio is carried; the offer has a {shown:?} section"
            )));
        }
        let opus = media.attributes.iter().any(|a| {
            a.key == "rtpmap"
                && a.value.as_deref().is_some_and(|v| {
                    v.split_once(' ').is_some_and(|(_, codec)| {
                        codec.to_ascii_lowercase().starts_with("opus/48000")
                    })
                })
        });
        if !opus {
            return Err(OfferError::UnsupportedCodec);
        }
        audio += 1;
    }
    if audio != slots {
        return Err(OfferError::UnsupportedMedia(format!(
            "offer exactly {slots} audio sections (one per slot; the first may send), not {audio}"
        )));
    }
    Ok(offer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(kind: &str, codec: &str, mid: usize) -> String {
        format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
             a=rtpmap:111 {codec}\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=recvonly\r\n"
        )
    }

    fn offer(sections: &[String]) -> String {
        let mut s = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                     a=fingerprint:sha-256 AA:BB\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
            .to_owned();
        for section in sections {
            s.push_str(section);
        }
        s
    }

    #[test]
    fn accepts_n_opus_sections() {
        let sections: Vec<String> = (0..3)
            .map(|i| section("audio", "opus/48000/2", i))
            .collect();
        assert!(check_offer(offer(&sections), 3).is_ok());
    }

    #[test]
    fn refusals() {
        let code = |sdp: String, slots| check_offer(sdp, slots).unwrap_err().code();
        let audio = |i| section("audio", "opus/48000/2", i);
        assert_eq!(code("x".repeat(MAX_SDP_BYTES + 1), 3), "sdp_too_large");
        assert_eq!(code("hello".into(), 3), "invalid_sdp");
        assert_eq!(code(String::new(), 3), "invalid_sdp");
        assert_eq!(code(offer(&[audio(0), audio(1)]), 3), "unsupported_media");
        assert_eq!(
            code(offer(&[audio(0), audio(1), audio(2), audio(3)]), 3),
            "unsupported_media"
        );
        assert_eq!(
            code(
                offer(&[audio(0), section("video", "VP8/90000", 1), audio(2)]),
                3
            ),
            "unsupported_media"
        );
        assert_eq!(
            code(
                offer(&[audio(0), section("audio", "PCMU/8000", 1), audio(2)]),
                3
            ),
            "unsupported_codec"
        );
    }
}
