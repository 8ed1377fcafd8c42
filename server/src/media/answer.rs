//! Decides what each section of an answer does (RFC 3264 §6.1) and finishes the answer's text:
//! which sections carry slots, which one receives the client's microphone, which are rejected,
//! and the lines `rtc` leaves out (candidates in every bundled section, end-of-candidates,
//! Opus `fmtp`, port 0 for rejected sections). Pure: no connection state, no I/O.
//!
//! The rule a client can rely on (docs/protocol.md, "Writing your own client"):
//! - every usable audio section that **receives** (`sendrecv` or `recvonly`) gets a slot, in
//!   offer order, up to the server's slot count: one section hears the loudest speaker;
//! - the first usable section that **sends** (`sendrecv` or `sendonly`) is the microphone: it
//!   is received while its owner is on stage, and answered without a receiving side otherwise;
//! - every other section (more than the slots, a second sending one, no Opus, video, stopped by
//!   the offerer) is rejected with port 0, and the rest of the offer is still answered.

use std::fmt::Write as _;

use super::offer::{Direction, Offer, OfferedSection};

/// What the server does with one offered section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionPlan {
    pub mid: Option<String>,
    /// The slot this section carries to the client.
    pub slot: Option<usize>,
    /// The client's microphone section.
    pub mic: bool,
    /// The server receives here now (the microphone of someone on stage).
    pub receives: bool,
    /// Our side's direction; `None`: rejected (port 0).
    pub answer: Option<Direction>,
}

/// The answer to one offer, section by section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub sections: Vec<SectionPlan>,
}

impl Plan {
    /// `slots`: the most slots a connection gets; `on_stage`: whether the microphone is heard.
    pub fn new(offered: &[OfferedSection], slots: usize, on_stage: bool) -> Self {
        let mic = offered
            .iter()
            .position(|s| s.usable() && s.direction.sends());
        let mut next_slot = 0;
        let sections = offered
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let slot = (s.usable() && s.direction.receives() && next_slot < slots).then(|| {
                    next_slot += 1;
                    next_slot - 1
                });
                let is_mic = mic == Some(index);
                let receives = is_mic && on_stage;
                let answer = if slot.is_some() || is_mic {
                    Some(Direction::from_flags(slot.is_some(), receives))
                } else {
                    None
                };
                SectionPlan {
                    mid: s.mid.clone(),
                    slot,
                    mic: is_mic,
                    receives,
                    answer,
                }
            })
            .collect();
        Plan { sections }
    }

    pub fn slot_count(&self) -> usize {
        self.sections.iter().filter(|s| s.slot.is_some()).count()
    }

    pub fn mic(&self) -> Option<&SectionPlan> {
        self.sections.iter().find(|s| s.mic)
    }

    pub fn receives(&self) -> bool {
        self.sections.iter().any(|s| s.receives)
    }

    /// The mids of the accepted sections: the answer's BUNDLE group.
    pub fn bundled_mids(&self) -> Vec<&str> {
        self.sections
            .iter()
            .filter(|s| s.answer.is_some())
            .filter_map(|s| s.mid.as_deref())
            .collect()
    }

    pub fn by_mid(&self, mid: &str) -> Option<&SectionPlan> {
        self.sections.iter().find(|s| s.mid.as_deref() == Some(mid))
    }
}

/// The `fmtp` the server answers for Opus when the offer's section has none: 10 ms frames
/// allowed, in-band FEC wanted.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

/// Finishes `rtc`'s answer so it says what `plan` decided, for every client:
/// - each section's direction is the plan's (our side's);
/// - a rejected section is `m=<kind> 0 …` with only its `c=` and `a=mid` (RFC 3264 §6,
///   RFC 8843 §7.3.3) and leaves the BUNDLE group;
/// - every other section carries our candidates and `a=end-of-candidates` (ICE-lite: all of
///   them are known at once; some clients read candidates only from their own section);
/// - Opus has an `fmtp` line; a section we do not send on carries no `msid`/`ssrc` lines.
pub fn finish(sdp: &str, offer: &Offer, plan: &Plan) -> anyhow::Result<String> {
    let (session, sections) = split_sections(sdp);
    anyhow::ensure!(
        sections.len() == plan.sections.len() && sections.len() == offer.sections.len(),
        "the answer has {} sections for an offer of {}",
        sections.len(),
        offer.sections.len()
    );
    let candidates: Vec<&str> = sections
        .iter()
        .flat_map(|s| s.iter())
        .copied()
        .filter(|l| l.starts_with("a=candidate:"))
        .fold(Vec::new(), |mut all, line| {
            if !all.contains(&line) {
                all.push(line);
            }
            all
        });
    let bundled = plan.bundled_mids();

    let mut out = String::with_capacity(sdp.len() + 256);
    for line in session {
        if line.starts_with("a=group:BUNDLE") {
            if !bundled.is_empty() {
                let _ = write!(out, "a=group:BUNDLE {}\r\n", bundled.join(" "));
            }
        } else {
            let _ = write!(out, "{line}\r\n");
        }
    }
    for ((lines, planned), offered) in sections.iter().zip(&plan.sections).zip(&offer.sections) {
        let Some(direction) = planned.answer else {
            write_rejected(&mut out, lines, offered);
            continue;
        };
        // Where the Opus fmtp line goes when `rtc` wrote none: right after Opus's rtpmap.
        let fmtp_after = offered.opus_pt.and_then(|pt| {
            let fmtp = format!("a=fmtp:{pt} ");
            (!lines.iter().any(|l| l.starts_with(&fmtp)))
                .then(|| (format!("a=rtpmap:{pt} "), format!("{fmtp}{OPUS_FMTP}")))
        });
        for line in lines {
            if line.starts_with("m=") {
                write_m_line(&mut out, line, offered.red_pt);
                continue;
            }
            let attribute = line.strip_prefix("a=").unwrap_or("");
            let key = attribute.split(':').next().unwrap_or("");
            if Direction::from_attribute(attribute).is_some()
                || line.starts_with("a=candidate:")
                || *line == "a=end-of-candidates"
                || (!direction.sends() && matches!(key, "msid" | "ssrc" | "ssrc-group"))
            {
                continue;
            }
            let _ = write!(out, "{line}\r\n");
            if let Some((rtpmap, fmtp)) = &fmtp_after
                && line.starts_with(rtpmap.as_str())
            {
                let _ = write!(out, "{fmtp}\r\n");
            }
        }
        let _ = write!(out, "a={}\r\n", direction.attribute());
        for candidate in &candidates {
            let _ = write!(out, "{candidate}\r\n");
        }
        out.push_str("a=end-of-candidates\r\n");
    }
    Ok(out)
}

/// An accepted section's `m=` line, with RED (when answered) moved before the other formats:
/// a browser sends RED only when the answer prefers it to Opus (Chromium picks RED when it
/// precedes the codec it carries).
fn write_m_line(out: &mut String, line: &str, red_pt: Option<u8>) {
    let red = red_pt.map(|pt| pt.to_string());
    let mut words = line.split(' ');
    let head: Vec<&str> = words.by_ref().take(3).collect();
    let formats: Vec<&str> = words.collect();
    let Some(red) = red.filter(|red| formats.contains(&red.as_str())) else {
        let _ = write!(out, "{line}\r\n");
        return;
    };
    let _ = write!(out, "{} {red}", head.join(" "));
    for format in formats.iter().filter(|f| **f != red) {
        let _ = write!(out, " {format}");
    }
    out.push_str("\r\n");
}

pub(super) fn write_rejected(out: &mut String, lines: &[&str], offered: &OfferedSection) {
    // `m=<kind> <port> <proto> <fmt> …`: keep kind and proto, port 0, one format.
    let mut words = lines
        .first()
        .and_then(|m| m.strip_prefix("m="))
        .unwrap_or("")
        .split(' ');
    let kind = words
        .next()
        .filter(|k| !k.is_empty())
        .unwrap_or(&offered.kind);
    let proto = words.nth(1).unwrap_or("UDP/TLS/RTP/SAVPF");
    let format = words.next().unwrap_or("0");
    let _ = write!(out, "m={kind} 0 {proto} {format}\r\nc=IN IP4 0.0.0.0\r\n");
    if let Some(mid) = &offered.mid {
        let _ = write!(out, "a=mid:{mid}\r\n");
    }
}

/// Whether the section of `sdp` with this `mid` lists payload type `pt` in its `m=` line.
pub fn answers_format(sdp: &str, mid: Option<&str>, pt: u8) -> bool {
    let (_, sections) = split_sections(sdp);
    let pt = pt.to_string();
    sections.iter().any(|lines| {
        mid.is_some_and(|mid| lines.iter().any(|l| l.strip_prefix("a=mid:") == Some(mid)))
            && lines[0].split(' ').skip(3).any(|f| f == pt)
    })
}

/// The session part's lines and each media section's lines (starting with its `m=`).
pub(super) fn split_sections(sdp: &str) -> (Vec<&str>, Vec<Vec<&str>>) {
    let mut session = Vec::new();
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(section) = sections.last_mut() {
            section.push(line);
        } else {
            session.push(line);
        }
    }
    (session, sections)
}

/// Everything wrong with `answer` as an answer to `offer`, by RFC 3264 §6 and §6.1 and by what
/// Stoa promises clients (candidates everywhere, Opus at the offered payload type with `fmtp`).
/// Empty when the answer is right. Used by the table tests and the interop tests.
pub fn answer_problems(offer: &str, answer: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (_, offered) = split_sections(offer);
    let (session, answered) = split_sections(answer);
    if offered.len() != answered.len() {
        problems.push(format!(
            "{} sections answered for {} offered",
            answered.len(),
            offered.len()
        ));
        return problems;
    }
    let attr = |lines: &[&str], key: &str| -> Option<String> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("a={key}:")).map(str::to_owned))
    };
    let direction = |lines: &[&str]| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("a=").and_then(Direction::from_attribute))
            .unwrap_or(Direction::SendRecv)
    };
    let m_words = |lines: &[&str]| -> Vec<String> {
        lines[0]
            .trim_start_matches("m=")
            .split(' ')
            .map(str::to_owned)
            .collect()
    };
    let bundle: Vec<String> = session
        .iter()
        .find_map(|l| l.strip_prefix("a=group:BUNDLE"))
        .map(|g| g.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    for (index, (o, a)) in offered.iter().zip(&answered).enumerate() {
        let (om, am) = (m_words(o), m_words(a));
        let at = format!("section {index}");
        if om.first() != am.first() {
            problems.push(format!("{at}: media {:?} answered as {:?}", om[0], am[0]));
        }
        if attr(o, "mid") != attr(a, "mid") {
            problems.push(format!("{at}: mid differs"));
        }
        let mid = attr(a, "mid").unwrap_or_default();
        if am.get(1).map(String::as_str) == Some("0") {
            if bundle.contains(&mid) {
                problems.push(format!("{at}: rejected but still in the BUNDLE group"));
            }
            continue;
        }
        if om.get(1).map(String::as_str) == Some("0") {
            problems.push(format!("{at}: stopped by the offerer but not rejected"));
        }
        let (od, ad) = (direction(o), direction(a));
        let allowed = match od {
            Direction::SendRecv => true,
            Direction::SendOnly => matches!(ad, Direction::RecvOnly | Direction::Inactive),
            Direction::RecvOnly => matches!(ad, Direction::SendOnly | Direction::Inactive),
            Direction::Inactive => ad == Direction::Inactive,
        };
        if !allowed {
            problems.push(format!(
                "{at}: offered {} answered {} (RFC 3264 §6.1)",
                od.attribute(),
                ad.attribute()
            ));
        }
        for pt in am.iter().skip(3) {
            if !om.iter().skip(3).any(|p| p == pt) {
                problems.push(format!("{at}: payload type {pt} was not offered"));
            }
        }
        let opus = |lines: &[&str]| {
            lines.iter().find_map(|l| {
                let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
                codec
                    .to_ascii_lowercase()
                    .starts_with("opus/48000")
                    .then(|| pt.to_owned())
            })
        };
        match (opus(o), opus(a)) {
            (Some(op), Some(ap)) if op != ap => {
                problems.push(format!("{at}: Opus offered as {op}, answered as {ap}"))
            }
            (_, Some(ap)) if !a.iter().any(|l| l.starts_with(&format!("a=fmtp:{ap} "))) => {
                problems.push(format!("{at}: no fmtp for Opus"))
            }
            (_, None) => problems.push(format!("{at}: no Opus in an accepted section")),
            _ => {}
        }
        let red = |lines: &[&str]| {
            lines.iter().find_map(|l| {
                let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
                codec
                    .eq_ignore_ascii_case("red/48000/2")
                    .then(|| pt.to_owned())
            })
        };
        match (red(o), red(a), opus(a)) {
            (Some(op), Some(ap), _) if op != ap => {
                problems.push(format!("{at}: RED offered as {op}, answered as {ap}"))
            }
            (_, Some(ap), Some(opus)) => {
                if am.get(3) != Some(&ap) {
                    problems.push(format!("{at}: RED answered but not preferred (first)"));
                }
                let fmtp = format!("a=fmtp:{ap} ");
                let carries_opus = a.iter().any(|l| {
                    l.strip_prefix(&fmtp)
                        .is_some_and(|blocks| blocks.split('/').all(|b| b == opus))
                });
                if !carries_opus {
                    problems.push(format!("{at}: RED's fmtp does not name Opus ({opus})"));
                }
            }
            _ => {}
        }
        if !a.iter().any(|l| l.starts_with("a=candidate:")) {
            problems.push(format!("{at}: no candidate"));
        }
        if !a.contains(&"a=end-of-candidates") {
            problems.push(format!("{at}: no end-of-candidates"));
        }
        if !bundle.is_empty() && !bundle.contains(&mid) {
            problems.push(format!("{at}: accepted but not in the BUNDLE group"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::offer::check_offer;
    use crate::media::offer::tests::{Shape, offer_sdp};
    use Direction::*;

    fn plan(directions: &[Direction], slots: usize, on_stage: bool) -> Vec<Option<Direction>> {
        let shapes: Vec<Shape<'_>> = directions
            .iter()
            .map(|&d| Shape {
                direction: Some(d),
                ..Shape::default()
            })
            .collect();
        let offer = check_offer(offer_sdp(&shapes)).unwrap();
        Plan::new(&offer.sections, slots, on_stage)
            .sections
            .into_iter()
            .map(|s| s.answer)
            .collect()
    }

    #[test]
    fn sections_are_answered_by_what_they_offer() {
        // (offered, slots, on stage) → our side of each section; None is rejected.
        type Row = (
            &'static [Direction],
            usize,
            bool,
            &'static [Option<Direction>],
        );
        let table: &[Row] = &[
            // Browsers as Stoa's client offers: a listener, a speaker.
            (&[RecvOnly; 3], 3, false, &[Some(SendOnly); 3]),
            (
                &[SendRecv, RecvOnly, RecvOnly],
                3,
                true,
                &[Some(SendRecv), Some(SendOnly), Some(SendOnly)],
            ),
            // A speaker not (yet) on stage is not received.
            (
                &[SendRecv, RecvOnly, RecvOnly],
                3,
                false,
                &[Some(SendOnly); 3],
            ),
            // A speaker whose microphone failed.
            (
                &[RecvOnly, RecvOnly, RecvOnly],
                3,
                true,
                &[Some(SendOnly); 3],
            ),
            // A sendonly microphone section plus receiving ones.
            (
                &[SendOnly, RecvOnly, RecvOnly, RecvOnly],
                3,
                true,
                &[
                    Some(RecvOnly),
                    Some(SendOnly),
                    Some(SendOnly),
                    Some(SendOnly),
                ],
            ),
            (
                &[SendOnly, RecvOnly],
                3,
                false,
                &[Some(Inactive), Some(SendOnly)],
            ),
            // A speaker bot: one sendonly section.
            (&[SendOnly], 3, true, &[Some(RecvOnly)]),
            (&[SendOnly], 3, false, &[Some(Inactive)]),
            // One receiving section hears the loudest speaker.
            (&[RecvOnly], 3, false, &[Some(SendOnly)]),
            // More than the slots: the extra ones are rejected.
            (
                &[RecvOnly; 5],
                3,
                false,
                &[Some(SendOnly), Some(SendOnly), Some(SendOnly), None, None],
            ),
            // A second sending section is not used; an inactive one is rejected.
            (
                &[SendOnly, SendOnly, RecvOnly],
                3,
                true,
                &[Some(RecvOnly), None, Some(SendOnly)],
            ),
            (&[Inactive, RecvOnly], 3, true, &[None, Some(SendOnly)]),
            // One slot configured.
            (&[SendRecv, RecvOnly], 1, true, &[Some(SendRecv), None]),
        ];
        for (offered, slots, on_stage, expected) in table {
            assert_eq!(
                &plan(offered, *slots, *on_stage),
                expected,
                "{offered:?} with {slots} slots, on stage {on_stage}"
            );
        }
    }

    #[test]
    fn the_problems_checker_catches_what_it_must() {
        let offer = offer_sdp(&[Shape {
            direction: Some(SendOnly),
            ..Shape::default()
        }]);
        let good = offer.replace("a=sendonly", "a=recvonly").replace(
            "a=rtcp-mux",
            "a=rtcp-mux\r\na=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=end-of-candidates",
        );
        assert_eq!(answer_problems(&offer, &good), Vec::<String>::new());
        let wrong_direction = good.replace("a=recvonly", "a=sendonly");
        assert_eq!(answer_problems(&offer, &wrong_direction).len(), 1);
        let no_candidates = good.replace("a=end-of-candidates\r\n", "");
        assert_eq!(answer_problems(&offer, &no_candidates).len(), 1);
        let other_pt = good.replace("111", "96");
        assert!(!answer_problems(&offer, &other_pt).is_empty());

        let offer = offer_sdp(&[Shape {
            direction: Some(SendOnly),
            red: Some(63),
            ..Shape::default()
        }]);
        let good = offer
            .replace("a=sendonly", "a=recvonly")
            .replace("SAVPF 111 63", "SAVPF 63 111")
            .replace(
                "a=rtcp-mux",
                "a=rtcp-mux\r\na=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=end-of-candidates",
            );
        assert_eq!(answer_problems(&offer, &good), Vec::<String>::new());
        let opus_first = good.replace("SAVPF 63 111", "SAVPF 111 63");
        assert_eq!(answer_problems(&offer, &opus_first).len(), 1);
        let wrong_fmtp = good.replace("a=fmtp:63 111/111", "a=fmtp:63 111/0");
        assert_eq!(answer_problems(&offer, &wrong_fmtp).len(), 1);
        let renumbered = good
            .replace("SAVPF 63 111", "SAVPF 64 111")
            .replace(":63 ", ":64 ");
        assert!(!answer_problems(&offer, &renumbered).is_empty());
        // RED answered where it was not offered.
        let plain = offer_sdp(&[Shape {
            direction: Some(SendOnly),
            ..Shape::default()
        }]);
        assert!(!answer_problems(&plain, &good).is_empty());
    }
}
