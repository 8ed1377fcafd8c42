//! RFC 2198 redundant audio ("RED") for Opus: reads a speaker's RED payload into its primary
//! frame and the earlier frames it repeats, keeps a speaker's last frames, and writes the RED
//! payload a listener receives. Pure: slices and values in, nothing allocated, no I/O.
//!
//! A RED payload is a header per block (4 bytes for each earlier frame: F bit, payload type,
//! 14-bit timestamp offset behind the primary, 10-bit length; 1 byte for the primary: F clear
//! and its payload type), then the blocks' bytes in the same order, the primary last.

use std::ops::Range;

use bytes::Bytes;

/// Earlier frames a listener's packet may repeat; also how many a speaker's history keeps.
pub const MAX_REDUNDANCY: usize = crate::config::MAX_RED;
/// The largest timestamp offset a block header can say (14 bits): 341 ms at 48 kHz.
pub const MAX_OFFSET: u32 = (1 << 14) - 1;
/// The largest block a header can describe (10 bits).
pub const MAX_BLOCK_LEN: usize = (1 << 10) - 1;
/// Blocks read from one speaker packet at most. Encoders send one or two earlier frames; RFC
/// 2198 sets no bound, so a packet claiming more is refused rather than walked.
const MAX_BLOCKS: usize = 8;

/// One Opus frame of a speaker's stream, at its RTP timestamp (the speaker's numbering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub timestamp: u32,
    pub payload: Bytes,
}

/// A speaker's RED payload, read: where its primary frame is, and the earlier Opus frames it
/// repeats (timestamp offset behind the primary, where), newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub primary: Range<usize>,
    pub earlier: [Option<(u32, Range<usize>)>; MAX_REDUNDANCY],
}

/// Why a RED payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedError {
    /// The headers or the blocks they announce run past the end.
    Truncated,
    /// More than [`MAX_BLOCKS`] headers.
    TooManyBlocks,
    /// The primary block is not Opus: nothing to forward.
    PrimaryNotOpus,
}

/// `a` comes before `b` in RTP timestamp order (RFC 1982 serial arithmetic).
pub fn before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

/// Reads a RED payload whose blocks should be Opus at `opus_pt`. Earlier blocks of another
/// payload type, empty ones, or ones at offset 0 are skipped; of the rest the newest
/// [`MAX_REDUNDANCY`] are kept.
pub fn parse(payload: &[u8], opus_pt: u8) -> Result<Parsed, RedError> {
    // (payload type, offset, length) of each earlier block, in header order.
    let mut headers = [(0u8, 0u32, 0usize); MAX_BLOCKS];
    let mut count = 0;
    let mut at = 0;
    let primary_pt = loop {
        let first = *payload.get(at).ok_or(RedError::Truncated)?;
        if first & 0x80 == 0 {
            at += 1;
            break first & 0x7f;
        }
        if count == MAX_BLOCKS {
            return Err(RedError::TooManyBlocks);
        }
        let header = payload.get(at..at + 4).ok_or(RedError::Truncated)?;
        let offset = (u32::from(header[1]) << 6) | u32::from(header[2] >> 2);
        let len = (usize::from(header[2] & 0x03) << 8) | usize::from(header[3]);
        headers[count] = (first & 0x7f, offset, len);
        count += 1;
        at += 4;
    };
    let mut earlier: [Option<(u32, Range<usize>)>; MAX_REDUNDANCY] = Default::default();
    for &(pt, offset, len) in &headers[..count] {
        let block = at..at + len;
        if block.end > payload.len() {
            return Err(RedError::Truncated);
        }
        at = block.end;
        if pt != opus_pt || len == 0 || offset == 0 {
            continue;
        }
        // Keep the newest (smallest offsets), newest first.
        let mut candidate = Some((offset, block));
        for kept in earlier.iter_mut() {
            match kept {
                None => {
                    *kept = candidate.take();
                    break;
                }
                Some((kept_offset, _)) if offset < *kept_offset => {
                    candidate = std::mem::replace(kept, candidate);
                }
                Some(_) => {}
            }
            if candidate.is_none() {
                break;
            }
        }
    }
    if primary_pt != opus_pt {
        return Err(RedError::PrimaryNotOpus);
    }
    Ok(Parsed {
        primary: at..payload.len(),
        earlier,
    })
}

/// The last frames heard from one speaker, newest first: what a listener's redundancy is built
/// from. Holding a frame costs a reference to its packet's bytes, not a copy.
#[derive(Clone, Debug, Default)]
pub struct History {
    frames: [Option<Frame>; MAX_REDUNDANCY],
}

impl History {
    /// Keeps `frame` if it is among the newest [`MAX_REDUNDANCY`] seen and not already kept.
    pub fn remember(&mut self, frame: Frame) {
        let mut candidate = Some(frame);
        for kept in self.frames.iter_mut() {
            let Some(new) = candidate.as_ref() else {
                return;
            };
            match kept {
                None => {
                    *kept = candidate.take();
                    return;
                }
                Some(old) if old.timestamp == new.timestamp => return,
                Some(old) if before(old.timestamp, new.timestamp) => {
                    candidate = std::mem::replace(kept, candidate);
                }
                Some(_) => {}
            }
        }
    }

    /// Up to `count` kept frames from before `timestamp`, newest first, each close enough
    /// behind it for a block header's offset.
    pub fn before(&self, timestamp: u32, count: usize) -> [Option<Frame>; MAX_REDUNDANCY] {
        let mut out: [Option<Frame>; MAX_REDUNDANCY] = Default::default();
        let mut slots = out.iter_mut().take(count);
        for frame in self.frames.iter().flatten() {
            if !before(frame.timestamp, timestamp)
                || timestamp.wrapping_sub(frame.timestamp) > MAX_OFFSET
            {
                continue;
            }
            match slots.next() {
                Some(slot) => *slot = Some(frame.clone()),
                None => break,
            }
        }
        out
    }

    pub fn clear(&mut self) {
        self.frames = Default::default();
    }
}

/// Writes the RED payload of one listener's packet into `out`: the earlier frames that `keep`
/// accepts (by their timestamp, e.g. only those of the slot's current speaker turn), oldest
/// first, then `primary`. Block headers carry `opus_pt`, Opus as this listener numbers it.
/// When everything does not fit, the oldest earlier frames are left out. Returns the length;
/// `None` if not even the primary fits.
pub fn write(
    out: &mut [u8],
    opus_pt: u8,
    primary: &[u8],
    primary_timestamp: u32,
    earlier: &[Option<Frame>; MAX_REDUNDANCY],
    keep: impl Fn(u32) -> bool,
) -> Option<usize> {
    let usable = |frame: &&Frame| {
        let offset = primary_timestamp.wrapping_sub(frame.timestamp);
        before(frame.timestamp, primary_timestamp)
            && offset <= MAX_OFFSET
            && !frame.payload.is_empty()
            && frame.payload.len() <= MAX_BLOCK_LEN
            && keep(frame.timestamp)
    };
    // Newest first; take as many as fit, then write them oldest first.
    let mut chosen: [Option<&Frame>; MAX_REDUNDANCY] = [None; MAX_REDUNDANCY];
    let mut len = 1 + primary.len();
    let mut count = 0;
    for frame in earlier.iter().flatten().filter(usable) {
        if len + 4 + frame.payload.len() > out.len() {
            break;
        }
        len += 4 + frame.payload.len();
        chosen[count] = Some(frame);
        count += 1;
    }
    if len > out.len() {
        return None;
    }
    let mut header = 0;
    let mut body = 4 * count + 1;
    for frame in chosen[..count].iter().rev().flatten() {
        let offset = primary_timestamp.wrapping_sub(frame.timestamp);
        let block = frame.payload.len();
        out[header] = 0x80 | (opus_pt & 0x7f);
        out[header + 1] = (offset >> 6) as u8;
        out[header + 2] = (((offset & 0x3f) << 2) as u8) | ((block >> 8) as u8 & 0x03);
        out[header + 3] = block as u8;
        header += 4;
        out[body..body + block].copy_from_slice(&frame.payload);
        body += block;
    }
    out[header] = opus_pt & 0x7f;
    out[body..body + primary.len()].copy_from_slice(primary);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS: u8 = 111;

    fn frame(timestamp: u32, fill: u8, len: usize) -> Frame {
        Frame {
            timestamp,
            payload: Bytes::from(vec![fill; len]),
        }
    }

    /// A RED payload as an encoder makes it: `blocks` as (payload type, offset, bytes), oldest
    /// first, then the primary.
    fn red(blocks: &[(u8, u32, &[u8])], primary_pt: u8, primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(pt, offset, data) in blocks {
            out.push(0x80 | pt);
            out.push((offset >> 6) as u8);
            out.push((((offset & 0x3f) << 2) as u8) | (data.len() >> 8) as u8);
            out.push(data.len() as u8);
        }
        out.push(primary_pt);
        for &(_, _, data) in blocks {
            out.extend_from_slice(data);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn reads_what_an_encoder_writes() {
        // Chromium's shape: one earlier frame 20 ms back.
        let payload = red(&[(OPUS, 960, &[1; 70])], OPUS, &[2; 80]);
        let parsed = parse(&payload, OPUS).unwrap();
        assert_eq!(&payload[parsed.primary.clone()], &[2; 80]);
        let (offset, range) = parsed.earlier[0].clone().unwrap();
        assert_eq!((offset, &payload[range]), (960, &[1u8; 70][..]));
        assert_eq!(parsed.earlier[1], None);

        // Only a primary.
        let payload = red(&[], OPUS, &[3; 10]);
        let parsed = parse(&payload, OPUS).unwrap();
        assert_eq!(parsed.primary, 1..11);
        assert_eq!(parsed.earlier, [None, None]);

        // Three earlier frames, the two newest kept, newest first; a 10-bit length and a
        // 14-bit offset at their largest.
        let big = vec![9u8; MAX_BLOCK_LEN];
        let payload = red(
            &[
                (OPUS, MAX_OFFSET, &big),
                (OPUS, 1920, &[5; 3]),
                (OPUS, 960, &[6; 4]),
            ],
            OPUS,
            &[7; 2],
        );
        let parsed = parse(&payload, OPUS).unwrap();
        let offsets: Vec<u32> = parsed.earlier.iter().flatten().map(|e| e.0).collect();
        assert_eq!(offsets, [960, 1920]);
        assert_eq!(&payload[parsed.primary], &[7; 2]);
    }

    #[test]
    fn skips_blocks_it_cannot_use() {
        let payload = red(
            &[(13, 960, &[1; 5]), (OPUS, 0, &[2; 5]), (OPUS, 1920, &[])],
            OPUS,
            &[3; 5],
        );
        let parsed = parse(&payload, OPUS).unwrap();
        assert_eq!(parsed.earlier, [None, None]);
        assert_eq!(&payload[parsed.primary], &[3; 5]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse(&[], OPUS), Err(RedError::Truncated));
        assert_eq!(parse(&[0x80 | OPUS, 0, 0], OPUS), Err(RedError::Truncated));
        let mut long = red(&[(OPUS, 960, &[1; 50])], OPUS, &[2; 5]);
        long.truncate(30);
        assert_eq!(parse(&long, OPUS), Err(RedError::Truncated));
        assert_eq!(
            parse(&red(&[], 0, &[1; 5]), OPUS),
            Err(RedError::PrimaryNotOpus)
        );
        let many: Vec<(u8, u32, &[u8])> =
            (0..9).map(|i| (OPUS, 960 * (i + 1), &[1u8][..])).collect();
        assert_eq!(
            parse(&red(&many, OPUS, &[2]), OPUS),
            Err(RedError::TooManyBlocks)
        );
        // Eight is fine.
        assert!(parse(&red(&many[..8], OPUS, &[2]), OPUS).is_ok());
    }

    #[test]
    fn parsing_never_panics_on_junk() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut buf = [0u8; 64];
        for _ in 0..50_000 {
            let len = (next() % 64) as usize;
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            if let Ok(parsed) = parse(&buf[..len], OPUS) {
                assert!(parsed.primary.end == len && parsed.primary.start <= len);
            }
        }
    }

    #[test]
    fn history_keeps_the_newest_frames_in_order() {
        let mut history = History::default();
        assert_eq!(history.before(1000, 2), [None, None]);
        history.remember(frame(1000, 1, 3));
        history.remember(frame(1960, 2, 3));
        history.remember(frame(1960, 9, 3)); // the same frame again (a repeat): kept once
        history.remember(frame(2920, 3, 3));
        let got = history.before(3880, 2);
        assert_eq!(got, [Some(frame(2920, 3, 3)), Some(frame(1960, 2, 3))]);
        assert_eq!(history.before(3880, 1), [Some(frame(2920, 3, 3)), None]);
        assert_eq!(history.before(3880, 0), [None, None]);
        // A late frame older than both kept is not kept; one in between is.
        history.remember(frame(1000, 1, 3));
        assert_eq!(history.before(3880, 2)[1], Some(frame(1960, 2, 3)));
        history.remember(frame(2440, 4, 3));
        assert_eq!(
            history.before(3880, 2),
            [Some(frame(2920, 3, 3)), Some(frame(2440, 4, 3))]
        );
        // Only frames before the primary, and close enough behind it.
        assert_eq!(history.before(2920, 2), [Some(frame(2440, 4, 3)), None]);
        assert_eq!(history.before(2920 + MAX_OFFSET + 1, 2)[0], None);
        history.clear();
        assert_eq!(history.before(3880, 2), [None, None]);
    }

    #[test]
    fn history_across_the_timestamp_wrap() {
        let mut history = History::default();
        history.remember(frame(u32::MAX - 959, 1, 2));
        history.remember(frame(0, 2, 2));
        assert_eq!(
            history.before(960, 2),
            [Some(frame(0, 2, 2)), Some(frame(u32::MAX - 959, 1, 2))]
        );
    }

    #[test]
    fn writes_what_parse_reads_back() {
        let earlier = [Some(frame(2000, 1, 40)), Some(frame(1040, 2, 30))];
        let mut out = [0u8; 200];
        let len = write(&mut out, 96, &[7; 50], 2960, &earlier, |_| true).unwrap();
        assert_eq!(len, 4 + 4 + 1 + 40 + 30 + 50);
        let parsed = parse(&out[..len], 96).unwrap();
        assert_eq!(&out[parsed.primary], &[7; 50]);
        let blocks: Vec<(u32, Vec<u8>)> = parsed
            .earlier
            .iter()
            .flatten()
            .map(|(offset, range)| (*offset, out[range.clone()].to_vec()))
            .collect();
        assert_eq!(blocks, [(960, vec![1; 40]), (1920, vec![2; 30])]);
        // Oldest first on the wire.
        assert_eq!(
            &out[..4],
            &[
                0x80 | 96,
                (1920u32 >> 6) as u8,
                ((1920 & 0x3f) << 2) as u8,
                30
            ]
        );
    }

    #[test]
    fn writes_only_the_frames_kept_and_those_that_fit() {
        let earlier = [Some(frame(2000, 1, 40)), Some(frame(1040, 2, 30))];
        let mut out = [0u8; 200];
        // The slot's turn began at 2000: the older frame belongs to someone else's turn.
        let len = write(&mut out, OPUS, &[7; 50], 2960, &earlier, |ts| ts >= 2000).unwrap();
        assert_eq!(len, 4 + 1 + 40 + 50);
        // Nothing kept: a primary-only RED payload.
        let len = write(&mut out, OPUS, &[7; 50], 2960, &earlier, |_| false).unwrap();
        assert_eq!((len, out[0]), (51, OPUS));
        // Room for the primary and the newest earlier frame only.
        let len = write(&mut out[..100], OPUS, &[7; 50], 2960, &earlier, |_| true).unwrap();
        assert_eq!(len, 4 + 1 + 40 + 50);
        // Not even the primary.
        assert_eq!(
            write(&mut out[..50], OPUS, &[7; 50], 2960, &earlier, |_| true),
            None
        );
        // Frames too far behind, not behind at all, or too long for a header are left out.
        let odd = [
            Some(frame(2960u32.wrapping_sub(MAX_OFFSET + 1), 1, 4)),
            Some(frame(2960, 2, 4)),
        ];
        assert_eq!(
            write(&mut out, OPUS, &[7; 5], 2960, &odd, |_| true),
            Some(6)
        );
        let long = [Some(frame(2000, 1, MAX_BLOCK_LEN + 1)), None];
        let mut wide = [0u8; 1500];
        assert_eq!(
            write(&mut wide, OPUS, &[7; 5], 2960, &long, |_| true),
            Some(6)
        );
    }
}
