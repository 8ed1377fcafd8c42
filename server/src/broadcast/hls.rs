//! One room's broadcast as Low-Latency HLS (RFC 8216 and its second edition's LL-HLS tags):
//! Opus frames in, CMAF parts and segments out, and the media playlist that lists them.
//! Pure: the caller passes the frames and the wall time.
//!
//! Names carry the stream's random id (`{stream}-{msn}.{part}.m4s`), so a URL always means
//! the same bytes, even across restarts of a room's broadcast: every part and segment is
//! immutable and any HTTP cache may keep it.

use std::collections::VecDeque;
use std::fmt::Write;

use bytes::Bytes;

use super::mp4::{self, OpusTrack};

/// Shape of the stream.
#[derive(Clone, Copy, Debug)]
pub struct HlsSettings {
    /// 20 ms frames per part.
    pub part_frames: u32,
    /// Parts per segment.
    pub segment_parts: u32,
    /// Complete segments kept (and listed) behind the live edge.
    pub segments_kept: usize,
}

impl Default for HlsSettings {
    fn default() -> Self {
        // Parts of 200 ms, segments of 1 s, 12 s of history.
        HlsSettings {
            part_frames: 10,
            segment_parts: 5,
            segments_kept: 12,
        }
    }
}

impl HlsSettings {
    fn part_secs(&self) -> f64 {
        f64::from(self.part_frames) * 0.02
    }

    fn segment_secs(&self) -> f64 {
        self.part_secs() * f64::from(self.segment_parts)
    }
}

struct Part {
    data: Bytes,
}

struct Segment {
    msn: u64,
    parts: Vec<Part>,
    /// Wall time of its first sample, Unix milliseconds.
    started_ms: i64,
    /// The whole segment (its parts one after the other), once complete.
    whole: Option<Bytes>,
}

/// A position in the stream: segment `msn`, part `part` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub msn: u64,
    pub part: u32,
}

/// What a request names.
#[derive(Debug, PartialEq, Eq)]
pub enum Resource {
    Init,
    Segment(u64),
    Part(Position),
}

/// Parses a file name under the stream's folder; `None` for anything else.
pub fn parse_name(stream: &str, name: &str) -> Option<Resource> {
    if name == format!("init-{stream}.mp4") {
        return Some(Resource::Init);
    }
    let rest = name.strip_prefix(stream)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(".m4s")?;
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match rest.split_once('.') {
        None => number(rest).map(Resource::Segment),
        Some((msn, part)) => Some(Resource::Part(Position {
            msn: number(msn)?,
            part: u32::try_from(number(part)?).ok()?,
        })),
    }
}

pub struct Stream {
    settings: HlsSettings,
    id: String,
    init: Bytes,
    segments: VecDeque<Segment>,
    /// Frames of the part being filled.
    frames: Vec<Bytes>,
    /// Samples since the stream began, at the start of the part being filled.
    part_start: u64,
    fragments: u32,
}

impl Stream {
    pub fn new(settings: HlsSettings, id: String, track: OpusTrack, now_ms: i64) -> Self {
        let mut segments = VecDeque::with_capacity(settings.segments_kept + 2);
        segments.push_back(Segment {
            msn: 0,
            parts: Vec::new(),
            started_ms: now_ms,
            whole: None,
        });
        Stream {
            settings,
            id,
            init: Bytes::from(mp4::init_segment(track)),
            segments,
            frames: Vec::with_capacity(settings.part_frames as usize),
            part_start: 0,
            fragments: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn settings(&self) -> HlsSettings {
        self.settings
    }

    /// Adds one 20 ms Opus frame; returns the position of the part it completed, if any.
    pub fn push_frame(&mut self, frame: Bytes, now_ms: i64) -> Option<Position> {
        self.frames.push(frame);
        if self.frames.len() < self.settings.part_frames as usize {
            return None;
        }
        let packets: Vec<(&[u8], u32)> = self.frames.iter().map(|f| (&f[..], 960)).collect();
        self.fragments += 1;
        let data = Bytes::from(mp4::fragment(self.fragments, self.part_start, &packets));
        self.part_start += 960 * self.frames.len() as u64;
        self.frames.clear();
        let open = self.segments.back_mut().expect("always an open segment");
        open.parts.push(Part { data });
        let done = Position {
            msn: open.msn,
            part: open.parts.len() as u32 - 1,
        };
        if open.parts.len() as u32 == self.settings.segment_parts {
            let mut whole = Vec::with_capacity(open.parts.iter().map(|p| p.data.len()).sum());
            for part in &open.parts {
                whole.extend_from_slice(&part.data);
            }
            open.whole = Some(Bytes::from(whole));
            let msn = open.msn + 1;
            self.segments.push_back(Segment {
                msn,
                parts: Vec::new(),
                started_ms: now_ms,
                whole: None,
            });
            while self.segments.len() > self.settings.segments_kept + 1 {
                self.segments.pop_front();
            }
        }
        Some(done)
    }

    /// The last part published, if any.
    pub fn last_part(&self) -> Option<Position> {
        self.segments.iter().rev().find_map(|s| {
            (!s.parts.is_empty()).then(|| Position {
                msn: s.msn,
                part: s.parts.len() as u32 - 1,
            })
        })
    }

    /// The next part to be published (the preload hint).
    pub fn next_part(&self) -> Position {
        let open = self.segments.back().expect("always an open segment");
        Position {
            msn: open.msn,
            part: open.parts.len() as u32,
        }
    }

    /// Whether the playlist already lists segment `msn` complete (`part` `None`), or its part.
    pub fn has(&self, msn: u64, part: Option<u32>) -> bool {
        let Some(segment) = self.segments.iter().find(|s| s.msn == msn) else {
            return self.segments.front().is_some_and(|s| msn < s.msn);
        };
        match part {
            None => segment.whole.is_some(),
            Some(p) => segment.whole.is_some() || (p as usize) < segment.parts.len(),
        }
    }

    pub fn get(&self, resource: &Resource) -> Option<Bytes> {
        match resource {
            Resource::Init => Some(self.init.clone()),
            Resource::Segment(msn) => self
                .segments
                .iter()
                .find(|s| s.msn == *msn)
                .and_then(|s| s.whole.clone()),
            Resource::Part(at) => self
                .segments
                .iter()
                .find(|s| s.msn == at.msn)
                .and_then(|s| s.parts.get(at.part as usize))
                .map(|p| p.data.clone()),
        }
    }

    /// The media playlist; `ended`: the broadcast is over (no more parts will come).
    pub fn playlist(&self, ended: bool) -> String {
        let s = &self.settings;
        let part = s.part_secs();
        let mut out = String::with_capacity(2048);
        let first = self.segments.front().map_or(0, |s| s.msn);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{target}\n\
             #EXT-X-PART-INF:PART-TARGET={part:.3}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={hold:.3}\n\
             #EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-MAP:URI=\"init-{id}.mp4\"\n",
            target = s.segment_secs().ceil() as u64,
            hold = 3.0 * part,
            id = self.id,
        );
        // Parts are listed for the last segments only (three target durations, as advised).
        let with_parts = (3.0 * s.segment_secs().ceil() / s.segment_secs()).ceil() as usize;
        let listed_from = self.segments.len().saturating_sub(with_parts + 1);
        for (i, segment) in self.segments.iter().enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "#EXT-X-PROGRAM-DATE-TIME:{}",
                    crate::clock::rfc3339(segment.started_ms)
                );
            }
            if i >= listed_from {
                for (p, _) in segment.parts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "#EXT-X-PART:DURATION={part:.3},URI=\"{}-{}.{p}.m4s\",INDEPENDENT=YES",
                        self.id, segment.msn
                    );
                }
            }
            if segment.whole.is_some() {
                let _ = writeln!(
                    out,
                    "#EXTINF:{:.3},\n{}-{}.m4s",
                    s.segment_secs(),
                    self.id,
                    segment.msn
                );
            }
        }
        if ended {
            out.push_str("#EXT-X-ENDLIST\n");
            return out;
        }
        let next = self.next_part();
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}-{}.{}.m4s\"",
            self.id, next.msn, next.part
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream::new(
            HlsSettings {
                part_frames: 2,
                segment_parts: 3,
                segments_kept: 2,
            },
            "s1".into(),
            OpusTrack {
                channels: 1,
                pre_skip: 312,
            },
            0,
        )
    }

    #[test]
    fn parts_make_segments_and_old_segments_go() {
        let mut s = stream();
        let mut done = Vec::new();
        for i in 0..20 {
            if let Some(p) = s.push_frame(Bytes::from(vec![i as u8; 3]), i * 20) {
                done.push((p.msn, p.part));
            }
        }
        assert_eq!(
            done,
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (1, 0),
                (1, 1),
                (1, 2),
                (2, 0),
                (2, 1),
                (2, 2),
                (3, 0)
            ]
        );
        assert!(s.has(2, None) && s.has(3, Some(0)) && !s.has(3, Some(1)) && !s.has(4, None));
        assert!(s.has(0, None), "gone from the playlist, but long past");
        assert_eq!(
            s.get(&Resource::Segment(0)),
            None,
            "only two segments are kept"
        );
        let whole = s.get(&Resource::Segment(2)).unwrap();
        let parts: Vec<u8> = (0..3)
            .flat_map(|p| {
                s.get(&Resource::Part(Position { msn: 2, part: p }))
                    .unwrap()
            })
            .collect();
        assert_eq!(whole, parts, "a segment is its parts, byte for byte");
        assert_eq!(s.next_part(), Position { msn: 3, part: 1 });
    }

    #[test]
    fn the_playlist_lists_segments_parts_and_the_next_part() {
        let mut s = stream();
        for i in 0..14 {
            s.push_frame(Bytes::from_static(b"x"), i * 20);
        }
        let text = s.playlist(false);
        let expected = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
            #EXT-X-PART-INF:PART-TARGET=0.040\n\
            #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.120\n\
            #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-MAP:URI=\"init-s1.mp4\"\n\
            #EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:00Z\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-0.0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-0.1.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-0.2.m4s\",INDEPENDENT=YES\n\
            #EXTINF:0.120,\ns1-0.m4s\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-1.0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-1.1.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-1.2.m4s\",INDEPENDENT=YES\n\
            #EXTINF:0.120,\ns1-1.m4s\n\
            #EXT-X-PART:DURATION=0.040,URI=\"s1-2.0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s1-2.1.m4s\"\n";
        assert_eq!(text, expected);
        let ended = s.playlist(true);
        assert!(
            ended.ends_with("s1-2.0.m4s\",INDEPENDENT=YES\n#EXT-X-ENDLIST\n"),
            "{ended}"
        );
    }

    #[test]
    fn only_names_of_this_stream_are_understood() {
        assert_eq!(parse_name("s1", "init-s1.mp4"), Some(Resource::Init));
        assert_eq!(parse_name("s1", "s1-12.m4s"), Some(Resource::Segment(12)));
        assert_eq!(
            parse_name("s1", "s1-12.3.m4s"),
            Some(Resource::Part(Position { msn: 12, part: 3 }))
        );
        for bad in [
            "init-s2.mp4",
            "s2-1.m4s",
            "s1-.m4s",
            "s1-1.m4",
            "s1--1.m4s",
            "s1-1.2.3.m4s",
            "s1-99999999999999.m4s",
            "s1-+1.m4s",
            "../s1-1.m4s",
        ] {
            assert_eq!(parse_name("s1", bad), None, "{bad}");
        }
    }
}
