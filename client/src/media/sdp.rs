//! What the client checks in SDP: the m-sections of an offer or answer, their directions, and
//! whether an offer has exactly the shape Stoa expects. Text in, facts out.

use super::{AUDIO_LEVEL_URI, OPUS_FMTP};

/// The m-sections of an SDP, each as its lines (the `m=` line first).
pub(crate) fn media_sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(section) = sections.last_mut() {
            section.push(line);
        }
    }
    sections
}

/// The direction attribute of an m-section (sendrecv when absent).
fn section_direction<'a>(section: &[&'a str]) -> &'a str {
    section
        .iter()
        .find_map(|line| {
            ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| line.strip_prefix("a=") == Some(*d))
        })
        .unwrap_or("sendrecv")
}

/// Whether an answer accepts the offerer's audio on the first m-line (the microphone's): the
/// answerer's direction there is `recvonly` or `sendrecv`.
pub fn answer_accepts_audio(answer_sdp: &str) -> bool {
    media_sections(answer_sdp)
        .first()
        .is_some_and(|section| matches!(section_direction(section), "recvonly" | "sendrecv"))
}

/// Checks an offer against what Stoa expects: exactly `slots` audio m-lines and nothing else,
/// Opus PT 111 with our fmtp and the audio-level extension on each, the first `sendrecv` when
/// the microphone is attached, all others `recvonly`.
pub(crate) fn check_offer(sdp: &str, slots: usize, with_microphone: bool) -> Result<(), String> {
    let sections = media_sections(sdp);
    if sections.len() != slots {
        return Err(format!("{} m-lines, expected {slots}", sections.len()));
    }
    for (index, section) in sections.iter().enumerate() {
        let has = |prefix: &str, needle: &str| {
            section
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle))
        };
        if !section[0].starts_with("m=audio ") {
            return Err(format!("m-line {index} is not audio: {}", section[0]));
        }
        if !has("a=rtpmap:111 ", "opus/48000/2") {
            return Err(format!("m-line {index} lacks opus/48000/2 at PT 111"));
        }
        if !(has("a=fmtp:111 ", "minptime=10") && has("a=fmtp:111 ", "useinbandfec=1")) {
            return Err(format!("m-line {index} lacks the Opus fmtp {OPUS_FMTP}"));
        }
        if !has("a=extmap:", AUDIO_LEVEL_URI) {
            return Err(format!("m-line {index} lacks the audio-level extension"));
        }
        let expected = if index == 0 && with_microphone {
            "sendrecv"
        } else {
            "recvonly"
        };
        let direction = section_direction(section);
        if direction != expected {
            return Err(format!(
                "m-line {index} is {direction}, expected {expected}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_directions() {
        let answer = |first: &str| {
            format!(
                "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na={first}\r\n\
                 m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\n"
            )
        };
        assert!(answer_accepts_audio(&answer("recvonly")));
        assert!(answer_accepts_audio(&answer("sendrecv")));
        assert!(!answer_accepts_audio(&answer("sendonly")));
        assert!(!answer_accepts_audio(&answer("inactive")));
        assert!(!answer_accepts_audio("v=0\r\n"));
    }
}
