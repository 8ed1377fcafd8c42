//! The answer Stoa writes itself for a lean connection (RFC 3264 §6.1, RFC 8839, RFC 8842,
//! RFC 8843), from the same [`Plan`] that decides `rtc`'s answers: ICE-lite with the
//! connection's credentials, the process's certificate fingerprint, `setup:passive`, the
//! worker's host candidate in every accepted section, `rtcp-mux`, and each slot's SSRC and the
//! payload types the client offered. Pure text; no connection state.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::super::answer::{OPUS_FMTP, Plan, split_sections, write_rejected};
use super::super::engine::AUDIO_LEVEL_URI;
use super::super::offer::Offer;

/// What our side puts in the answer.
pub struct Local<'a> {
    pub ufrag: &'a str,
    pub password: &'a str,
    /// `sha-256 AB:CD:…` (`Shared::fingerprint`).
    pub fingerprint: &'a str,
    /// The worker's advertised UDP address: the host candidate.
    pub candidate: SocketAddr,
    /// The worker's ICE-TCP listener, when it has one: a passive TCP host candidate
    /// (RFC 6544), ranked below the UDP one so that UDP wins wherever it gets through.
    pub tcp_candidate: Option<SocketAddr>,
    /// Each slot's SSRC, in slot order.
    pub slot_ssrcs: &'a [u32],
    /// RED is answered where the client offers it over its Opus (`[media] red` > 0).
    pub red: bool,
    /// `o=` session id.
    pub session_id: u64,
}

/// RFC 8445 §5.1.2.1 with type preference 126 (host), local preference 65535, component 1.
const HOST_PRIORITY: u32 = (126 << 24) | (65_535 << 8) | 255;
/// RFC 6544 §4.2 for a passive TCP host candidate: local preference 2^13 × 4 (passive's
/// direction preference for a host) + 8191, so below every UDP host candidate.
const TCP_PASSIVE_PRIORITY: u32 = (126 << 24) | (((4 << 13) + 8191) << 8) | 255;

/// The answer to `offer` as `plan` decided it.
pub fn answer(offer: &Offer, plan: &Plan, local: &Local<'_>) -> String {
    let (_, offered_lines) = split_sections(&offer.description.sdp);
    let ip = local.candidate.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let port = local.candidate.port();
    let mut out = String::with_capacity(600 + 700 * plan.sections.len());
    let _ = write!(
        out,
        "v=0\r\no=- {} 2 IN {family} {ip}\r\ns=-\r\nt=0 0\r\n",
        local.session_id
    );
    let bundled = plan.bundled_mids();
    if !bundled.is_empty() {
        let _ = write!(out, "a=group:BUNDLE {}\r\n", bundled.join(" "));
    }
    out.push_str("a=ice-lite\r\na=msid-semantic: WMS stoa\r\n");
    for ((planned, offered), lines) in plan
        .sections
        .iter()
        .zip(&offer.sections)
        .zip(&offered_lines)
    {
        let (Some(direction), Some(opus)) = (planned.answer, offered.opus_pt) else {
            write_rejected(&mut out, lines, offered);
            continue;
        };
        let proto = lines
            .first()
            .and_then(|m| m.split(' ').nth(2))
            .unwrap_or("UDP/TLS/RTP/SAVPF");
        let red = offered.red_pt.filter(|_| local.red);
        match red {
            Some(red) => {
                let _ = write!(out, "m=audio {port} {proto} {red} {opus}\r\n");
            }
            None => {
                let _ = write!(out, "m=audio {port} {proto} {opus}\r\n");
            }
        }
        let _ = write!(out, "c=IN {family} {ip}\r\n");
        if let Some(mid) = &planned.mid {
            let _ = write!(out, "a=mid:{mid}\r\n");
        }
        let _ = write!(
            out,
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:{}\r\na=setup:passive\r\n",
            local.ufrag, local.password, local.fingerprint
        );
        // Echoed wherever it is offered, as `rtc`'s answers do: the level is read only from
        // the microphone, but a client (the `webrtc` crate) offers an extension again only
        // where the last answer took it, and a listener's section may become its microphone.
        if let Some(id) = offered.level_id {
            let _ = write!(out, "a=extmap:{id} {AUDIO_LEVEL_URI}\r\n");
        }
        let _ = write!(out, "a={}\r\na=rtcp-mux\r\n", direction.attribute());
        if let Some(red) = red {
            let _ = write!(
                out,
                "a=rtpmap:{red} red/48000/2\r\na=fmtp:{red} {opus}/{opus}\r\n"
            );
        }
        let _ = write!(
            out,
            "a=rtpmap:{opus} opus/48000/2\r\na=fmtp:{opus} {OPUS_FMTP}\r\n"
        );
        if let Some(ssrc) = planned.slot.and_then(|k| local.slot_ssrcs.get(k)) {
            let slot = planned.slot.unwrap_or_default();
            let _ = write!(
                out,
                "a=msid:stoa slot{slot}\r\na=ssrc:{ssrc} cname:stoa\r\na=ssrc:{ssrc} msid:stoa slot{slot}\r\n"
            );
        }
        let _ = write!(
            out,
            "a=candidate:1 1 udp {HOST_PRIORITY} {ip} {port} typ host\r\n"
        );
        if let Some(tcp) = local.tcp_candidate {
            let _ = write!(
                out,
                "a=candidate:2 1 tcp {TCP_PASSIVE_PRIORITY} {} {} typ host tcptype passive\r\n",
                tcp.ip(),
                tcp.port()
            );
        }
        out.push_str("a=end-of-candidates\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::answer::answer_problems;
    use crate::media::offer::tests::{Shape, offer_sdp};
    use crate::media::offer::{Direction, check_offer};

    #[test]
    fn answers_every_offer_shape_as_rfc_3264_says() {
        use Direction::*;
        let directions = [SendRecv, SendOnly, RecvOnly, Inactive];
        let mut answered = 0;
        for first in directions {
            for red in [None, Some(63)] {
                for on_stage in [false, true] {
                    for (pt, fmtp) in [(111, true), (109, false), (96, true)] {
                        let shapes = [
                            Shape {
                                direction: Some(first),
                                red,
                                pt,
                                fmtp,
                                ..Shape::default()
                            },
                            Shape {
                                direction: Some(RecvOnly),
                                red,
                                pt,
                                fmtp,
                                ..Shape::default()
                            },
                        ];
                        let sdp = offer_sdp(&shapes);
                        let offer = check_offer(sdp.clone()).unwrap();
                        let plan = Plan::new(&offer.sections, 3, on_stage);
                        let text = answer(
                            &offer,
                            &plan,
                            &Local {
                                ufrag: "leanUfrag0123456",
                                password: "leanPassword0123456789abcdefghij",
                                fingerprint: "sha-256 AB:CD",
                                candidate: "10.0.0.1:40000".parse().unwrap(),
                                tcp_candidate: on_stage.then(|| "10.0.0.1:40001".parse().unwrap()),
                                slot_ssrcs: &[11, 12, 13],
                                red: true,
                                session_id: 7,
                            },
                        );
                        let problems = answer_problems(&sdp, &text);
                        assert!(problems.is_empty(), "{problems:?}\n{sdp}\n{text}");
                        assert!(text.contains("a=ice-lite") && text.contains("a=setup:passive"));
                        assert_eq!(
                            text.contains("tcp 2124414975 10.0.0.1 40001 typ host tcptype passive"),
                            on_stage,
                            "{text}"
                        );
                        answered += 1;
                    }
                }
            }
        }
        assert_eq!(answered, 48);
    }
}
