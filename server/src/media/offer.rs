//! Reads a client's SDP offer before any connection state is touched: bounded, parseable, and
//! described section by section (direction, Opus payload type, audio-level extension) so the
//! answer can be planned per section. Refuses only what no answer could serve.

use rtc::peer_connection::sdp::RTCSessionDescription;

use super::engine::AUDIO_LEVEL_URI;

/// Browsers' audio-only offers are 2–5 KiB; anything near this bound is not one of them.
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Media sections an offer may have. A client needs one per slot plus perhaps a sending one;
/// more only costs us transceivers.
pub const MAX_SECTIONS: usize = 16;

/// Why an offer is refused; `code()` is what the client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfferError {
    TooLarge,
    Invalid(String),
    /// Data channels, too many sections, or no audio section at all.
    UnsupportedMedia(String),
    /// Audio sections, none of them with Opus.
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
                "no audio section offers Opus (opus/48000/2), the only codec carried".to_owned()
            }
        }
    }
}

/// A media section's direction as the offerer (the client) states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn from_flags(send: bool, recv: bool) -> Self {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    pub fn from_attribute(key: &str) -> Option<Self> {
        match key {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// One `m=` section of an offer, as far as the answer depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedSection {
    pub mid: Option<String>,
    /// `audio`, `video`, `application`, ...
    pub kind: String,
    /// Port 0: the offerer itself has rejected (stopped) this section.
    pub stopped: bool,
    /// RFC 3264: no direction attribute means `sendrecv`.
    pub direction: Direction,
    /// The payload type the offer gives Opus in this section, if any.
    pub opus_pt: Option<u8>,
    /// The payload type of `red/48000/2` (RFC 2198) carrying that Opus (`a=fmtp:<red>
    /// <opus>/<opus>`), if offered: Chromium offers it, Firefox does not.
    pub red_pt: Option<u8>,
    /// The RFC 6464 audio-level extension's id, if offered.
    pub level_id: Option<u8>,
    /// `vad=off` on that extension: the V bit is not in use (RFC 6464 §4).
    pub vad_off: bool,
}

impl OfferedSection {
    /// An audio section with Opus that the offerer has not stopped: one we can use.
    pub fn usable(&self) -> bool {
        self.kind == "audio" && !self.stopped && self.opus_pt.is_some()
    }
}

/// A checked offer: the description `rtc` applies, and what each section asks for.
#[derive(Clone, Debug)]
pub struct Offer {
    pub description: RTCSessionDescription,
    pub sections: Vec<OfferedSection>,
}

/// Parses and checks an offer. A client may offer any number of audio sections up to
/// [`MAX_SECTIONS`]; which of them are used is the answer's decision (`answer::Plan`).
pub fn check_offer(sdp: String) -> Result<Offer, OfferError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(OfferError::TooLarge);
    }
    let description = RTCSessionDescription::offer(sdp).map_err(|e| {
        let mut why = e.to_string();
        why.truncate(200);
        OfferError::Invalid(why)
    })?;
    let parsed = description.unmarshal().map_err(|e| {
        let mut why = e.to_string();
        why.truncate(200);
        OfferError::Invalid(why)
    })?;
    if parsed.media_descriptions.len() > MAX_SECTIONS {
        return Err(OfferError::UnsupportedMedia(format!(
            "at most {MAX_SECTIONS} media sections, not {}",
            parsed.media_descriptions.len()
        )));
    }
    let mut sections = Vec::with_capacity(parsed.media_descriptions.len());
    for media in &parsed.media_descriptions {
        let kind: String = media.media_name.media.chars().take(20).collect();
        if kind == "application" {
            return Err(OfferError::UnsupportedMedia(
                "only audio is carried; remove the data channel".to_owned(),
            ));
        }
        let mut section = OfferedSection {
            mid: None,
            kind,
            stopped: media.media_name.port.value == 0,
            direction: Direction::SendRecv,
            opus_pt: None,
            red_pt: None,
            level_id: None,
            vad_off: false,
        };
        let in_m_line = |pt: u8| {
            media
                .media_name
                .formats
                .iter()
                .any(|f| f == pt.to_string().as_str())
        };
        // RED's payload type and its fmtp, matched with Opus once the section is read.
        let mut red: Option<u8> = None;
        let mut red_fmtp: Vec<(u8, &str)> = Vec::new();
        for attribute in &media.attributes {
            let value = attribute.value.as_deref().unwrap_or("");
            match attribute.key.as_str() {
                "mid" => section.mid = Some(value.to_owned()),
                "rtpmap" => {
                    if let Some((pt, codec)) = value.split_once(' ')
                        && let Ok(pt) = pt.trim().parse::<u8>()
                        && pt < 128
                        && in_m_line(pt)
                    {
                        let codec = codec.to_ascii_lowercase();
                        if section.opus_pt.is_none() && codec.starts_with("opus/48000") {
                            section.opus_pt = Some(pt);
                        } else if red.is_none() && codec == "red/48000/2" {
                            red = Some(pt);
                        }
                    }
                }
                "fmtp" => {
                    if red_fmtp.len() < 16
                        && let Some((pt, parameters)) = value.split_once(' ')
                        && let Ok(pt) = pt.trim().parse::<u8>()
                    {
                        red_fmtp.push((pt, parameters.trim()));
                    }
                }
                "extmap" => {
                    // `<id>[/<direction>] <uri> [<attributes>]`
                    let mut words = value.split_ascii_whitespace();
                    let id = words.next().and_then(|w| w.split('/').next());
                    if words.next() == Some(AUDIO_LEVEL_URI)
                        && let Some(Ok(id)) = id.map(str::parse::<u8>)
                    {
                        section.level_id = Some(id);
                        section.vad_off = words.any(|w| w.eq_ignore_ascii_case("vad=off"));
                    }
                }
                key => {
                    if let Some(direction) = Direction::from_attribute(key) {
                        section.direction = direction;
                    }
                }
            }
        }
        section.red_pt = red.filter(|&red| {
            section.opus_pt.is_some_and(|opus| {
                red_fmtp
                    .iter()
                    .any(|&(pt, parameters)| pt == red && red_carries_only(parameters, opus))
            })
        });
        sections.push(section);
    }
    if !sections.iter().any(OfferedSection::usable) {
        return Err(
            if sections.iter().any(|s| s.kind == "audio" && !s.stopped) {
                OfferError::UnsupportedCodec
            } else {
                OfferError::UnsupportedMedia(
                    "the offer has no audio section; Stoa carries audio only".to_owned(),
                )
            },
        );
    }
    Ok(Offer {
        description,
        sections,
    })
}

/// Whether a RED `fmtp` (`111/111`: the payload type of each block, RFC 2198 §5) names only
/// `opus`, the one codec Stoa carries inside RED, and at most a few blocks.
fn red_carries_only(parameters: &str, opus: u8) -> bool {
    let blocks = parameters.split('/');
    let count = blocks.clone().count();
    (2..=8).contains(&count)
        && blocks
            .into_iter()
            .all(|b| b.trim().parse::<u8>() == Ok(opus))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One offered section: `pt` for Opus, `fmtp` and `ext` optional, `msid` when it sends,
    /// `red` the payload type of RED over that Opus (listed after it, as Chromium does).
    pub(crate) struct Shape<'a> {
        pub kind: &'a str,
        pub codec: &'a str,
        pub pt: u8,
        pub red: Option<u8>,
        pub direction: Option<Direction>,
        pub fmtp: bool,
        pub ext: Option<&'a str>,
    }

    impl Default for Shape<'_> {
        fn default() -> Self {
            Self {
                kind: "audio",
                codec: "opus/48000/2",
                pt: 111,
                red: None,
                direction: Some(Direction::RecvOnly),
                fmtp: true,
                ext: Some("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
            }
        }
    }

    /// A browser-like offer: BUNDLE over every section, one ICE ufrag, a send track where the
    /// direction sends.
    pub(crate) fn offer_sdp(shapes: &[Shape<'_>]) -> String {
        let mids: Vec<String> = (0..shapes.len()).map(|i| i.to_string()).collect();
        let mut s = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n\
             a=msid-semantic: WMS s\r\n",
            mids.join(" ")
        );
        for (i, shape) in shapes.iter().enumerate() {
            let formats = match shape.red {
                Some(red) => format!("{} {red}", shape.pt),
                None => shape.pt.to_string(),
            };
            s.push_str(&format!(
                "m={} 9 UDP/TLS/RTP/SAVPF {formats}\r\nc=IN IP4 0.0.0.0\r\n\
                 a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
                 a=fingerprint:sha-256 5C:1F:8E:0B:6A:3D:92:E4:11:7C:A8:4F:D2:39:66:0E:B1:C5:28:FA:43:9D:7E:10:A6:2B:E8:55:C3:07:9F:D4\r\n\
                 a=setup:actpass\r\na=mid:{i}\r\n",
                shape.kind,
            ));
            if let Some(ext) = shape.ext {
                s.push_str(ext);
                s.push_str("\r\n");
            }
            if let Some(direction) = shape.direction {
                s.push_str(&format!("a={}\r\n", direction.attribute()));
            }
            s.push_str("a=rtcp-mux\r\n");
            s.push_str(&format!("a=rtpmap:{} {}\r\n", shape.pt, shape.codec));
            if shape.fmtp {
                s.push_str(&format!(
                    "a=fmtp:{} minptime=10;useinbandfec=1\r\n",
                    shape.pt
                ));
            }
            if let Some(red) = shape.red {
                s.push_str(&format!(
                    "a=rtpmap:{red} red/48000/2\r\na=fmtp:{red} {pt}/{pt}\r\n",
                    pt = shape.pt
                ));
            }
            if shape.direction.is_none_or(Direction::sends) {
                let ssrc = 1000 + i;
                s.push_str(&format!(
                    "a=msid:s t{i}\r\na=ssrc:{ssrc} cname:c\r\na=ssrc:{ssrc} msid:s t{i}\r\n"
                ));
            }
        }
        s
    }

    fn recvonly(n: usize) -> Vec<Shape<'static>> {
        (0..n).map(|_| Shape::default()).collect()
    }

    #[test]
    fn reads_each_section() {
        let offer = check_offer(offer_sdp(&[
            Shape {
                pt: 109,
                direction: Some(Direction::SendOnly),
                ext: Some(
                    "a=extmap:3/sendrecv urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=off",
                ),
                ..Shape::default()
            },
            Shape {
                pt: 96,
                direction: None,
                fmtp: false,
                ext: None,
                ..Shape::default()
            },
            Shape::default(),
        ]))
        .unwrap();
        let s = &offer.sections;
        assert_eq!(s.len(), 3);
        assert_eq!(
            (
                s[0].mid.as_deref(),
                s[0].direction,
                s[0].opus_pt,
                s[0].level_id,
                s[0].vad_off
            ),
            (Some("0"), Direction::SendOnly, Some(109), Some(3), true)
        );
        assert_eq!(
            (s[1].direction, s[1].opus_pt, s[1].level_id, s[1].vad_off),
            (Direction::SendRecv, Some(96), None, false)
        );
        assert_eq!(
            (s[2].direction, s[2].level_id),
            (Direction::RecvOnly, Some(1))
        );
        assert!(s.iter().all(OfferedSection::usable));
    }

    #[test]
    fn reads_red_over_opus() {
        let red = |pt: u8, red: Option<u8>| Shape {
            pt,
            red,
            ..Shape::default()
        };
        let offer = check_offer(offer_sdp(&[
            red(111, Some(63)),
            red(96, Some(97)),
            red(109, None),
        ]))
        .unwrap();
        let pts: Vec<_> = offer
            .sections
            .iter()
            .map(|s| (s.opus_pt, s.red_pt))
            .collect();
        assert_eq!(
            pts,
            [
                (Some(111), Some(63)),
                (Some(96), Some(97)),
                (Some(109), None)
            ]
        );
        // Chromium's own offer.
        let chromium = check_offer(crate::fuzzing::BROWSER_OFFER.to_owned()).unwrap();
        assert!(chromium.sections.iter().all(|s| s.red_pt == Some(63)));

        // RED that carries something else, or is not in the m-line, or has no fmtp, is not used.
        let base = offer_sdp(&[red(111, Some(63))]);
        for (from, to) in [
            ("a=fmtp:63 111/111", "a=fmtp:63 0/0"),
            ("a=fmtp:63 111/111", "a=fmtp:63 111/0"),
            ("a=fmtp:63 111/111", "a=fmtp:63 111"),
            ("a=fmtp:63 111/111\r\n", ""),
            ("SAVPF 111 63", "SAVPF 111"),
            ("red/48000/2", "red/8000/1"),
        ] {
            let sdp = base.replace(from, to);
            let offer = check_offer(sdp.clone()).unwrap();
            assert_eq!(offer.sections[0].red_pt, None, "{to:?}\n{sdp}");
        }
        // Three blocks (two earlier frames) are fine too.
        let offer = check_offer(base.replace("111/111", "111/111/111")).unwrap();
        assert_eq!(offer.sections[0].red_pt, Some(63));
    }

    #[test]
    fn any_number_of_audio_sections_up_to_the_bound() {
        for n in 1..=MAX_SECTIONS {
            assert!(check_offer(offer_sdp(&recvonly(n))).is_ok(), "{n} sections");
        }
        assert_eq!(
            check_offer(offer_sdp(&recvonly(MAX_SECTIONS + 1)))
                .unwrap_err()
                .code(),
            "unsupported_media"
        );
    }

    #[test]
    fn refusals() {
        let code = |sdp: String| check_offer(sdp).unwrap_err().code();
        assert_eq!(code("x".repeat(MAX_SDP_BYTES + 1)), "sdp_too_large");
        assert_eq!(code("hello".into()), "invalid_sdp");
        assert_eq!(code(String::new()), "invalid_sdp");
        let video = Shape {
            kind: "video",
            codec: "VP8/90000",
            pt: 96,
            ..Shape::default()
        };
        assert_eq!(code(offer_sdp(&[video])), "unsupported_media");
        let pcmu = Shape {
            codec: "PCMU/8000",
            pt: 0,
            ..Shape::default()
        };
        assert_eq!(code(offer_sdp(&[pcmu])), "unsupported_codec");
        let data = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                    m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n";
        assert_eq!(code(data.to_owned()), "unsupported_media");
    }

    #[test]
    fn a_video_section_beside_audio_is_not_a_refusal() {
        let offer = check_offer(offer_sdp(&[
            Shape::default(),
            Shape {
                kind: "video",
                codec: "VP8/90000",
                pt: 96,
                ..Shape::default()
            },
        ]))
        .unwrap();
        assert!(offer.sections[0].usable());
        assert!(!offer.sections[1].usable());
    }
}
