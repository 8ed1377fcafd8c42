//! Clips cut from a room's mix: the last seconds a live mix kept ([`crate::broadcast::ring`])
//! or a range of a recording's file, written as their own Ogg Opus file with the same writer
//! as recordings ([`super::ogg`]). Pure planning and writing; files are the caller's.
//!
//! A clip that does not start at its stream's start begins a few frames early: the decoder
//! needs them to settle (RFC 7845, section 4.6, asks for at least 80 ms), and the pre-skip
//! drops them, and the part of the first frame before the clip's start, exactly.

use std::ops::Range;

use super::ogg::{self, OggOpusWriter, PacketReader, StreamInfo};
use crate::broadcast::mix::FRAME;
pub use crate::broadcast::mix::PREROLL_FRAMES;
use crate::broadcast::ring::Window;
const FRAME_SAMPLES: u64 = FRAME as u64;
const SAMPLES_PER_MS: u64 = ogg::GRANULE_RATE / 1000;

/// Which frames of a stream make a clip, and how much of them a player drops first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Stream indices of the frames written.
    pub frames: Range<u64>,
    pub pre_skip: u16,
}

/// The frames of a stream (whose own pre-skip is `stream_pre_skip`) holding its audio from
/// `start_ms` to `end_ms`, given only the frames `available`; `None` if they do not hold it.
pub fn plan(
    stream_pre_skip: u16,
    start_ms: u64,
    end_ms: u64,
    available: Range<u64>,
) -> Option<Plan> {
    if end_ms <= start_ms {
        return None;
    }
    let from = u64::from(stream_pre_skip) + start_ms * SAMPLES_PER_MS;
    let to = u64::from(stream_pre_skip) + end_ms * SAMPLES_PER_MS;
    let first_needed = from / FRAME_SAMPLES;
    let first = first_needed
        .saturating_sub(PREROLL_FRAMES)
        .max(available.start);
    let end = to.div_ceil(FRAME_SAMPLES).min(available.end);
    if first > first_needed || end <= first_needed {
        return None;
    }
    let pre_skip = u16::try_from(from - first * FRAME_SAMPLES).ok()?;
    Some(Plan {
        frames: first..end,
        pre_skip,
    })
}

/// A clip's file, made in memory (a clip is short: two minutes are about half a megabyte).
pub struct ClipAudio {
    pub bytes: Vec<u8>,
    pub duration_ms: u64,
}

/// Writes `frames` (20 ms each) as an Ogg Opus file whose player drops `pre_skip` samples.
pub fn write<B: AsRef<[u8]>>(frames: impl IntoIterator<Item = B>, pre_skip: u16) -> ClipAudio {
    let (mut writer, mut bytes) = OggOpusWriter::new(
        StreamInfo {
            serial: super::rand_serial(),
            channels: 1,
            pre_skip,
            frame_samples: FRAME as u32,
            flush_frames: 50,
        },
        super::VENDOR,
    );
    for frame in frames {
        if let Some(page) = writer.push(frame.as_ref()) {
            bytes.extend_from_slice(page);
        }
    }
    let tail = ogg::Tail {
        valid_len: 0,
        granule: writer.granule(),
        pre_skip,
    };
    bytes.extend_from_slice(&writer.finish());
    ClipAudio {
        bytes,
        duration_ms: tail.duration_ms(),
    }
}

/// The last `secs` seconds of a live mix, from what its ring holds (less if the mix started
/// later). `None` if it holds no audio yet.
pub fn cut_live(window: &Window, stream_pre_skip: u16, secs: u32) -> Option<ClipAudio> {
    let end_index = window.first_index + window.frames.len() as u64;
    let made = (end_index * FRAME_SAMPLES).saturating_sub(u64::from(stream_pre_skip));
    let end_ms = made / SAMPLES_PER_MS;
    let oldest_ms = if window.first_index == 0 {
        0
    } else {
        // The oldest frames kept are the decoder's run-up.
        ((window.first_index + PREROLL_FRAMES) * FRAME_SAMPLES)
            .saturating_sub(u64::from(stream_pre_skip))
            .div_ceil(SAMPLES_PER_MS)
    };
    let start_ms = end_ms.saturating_sub(u64::from(secs) * 1000).max(oldest_ms);
    let plan = plan(
        stream_pre_skip,
        start_ms,
        end_ms,
        window.first_index..end_index,
    )?;
    let skip = (plan.frames.start - window.first_index) as usize;
    let take = (plan.frames.end - plan.frames.start) as usize;
    Some(write(
        window.frames.iter().skip(skip).take(take),
        plan.pre_skip,
    ))
}

/// Why a recording's range could not be cut.
#[derive(Debug, PartialEq, Eq)]
pub enum CutError {
    /// The file is not (or no longer) a readable Ogg Opus stream.
    Unreadable,
    /// The file does not hold that range.
    OutOfRange,
}

/// `start_ms..end_ms` of the recording in `source`, read page by page up to the range's end.
pub fn cut_recording(
    source: impl std::io::Read,
    start_ms: u64,
    end_ms: u64,
) -> Result<ClipAudio, CutError> {
    let mut reader = PacketReader::new(source).ok_or(CutError::Unreadable)?;
    let plan = plan(reader.pre_skip, start_ms, end_ms, 0..u64::MAX).ok_or(CutError::OutOfRange)?;
    let mut frames = Vec::with_capacity((plan.frames.end - plan.frames.start) as usize);
    let mut index = 0u64;
    while index < plan.frames.end {
        let Some(packet) = reader.next_packet() else {
            break;
        };
        if index >= plan.frames.start {
            frames.push(packet);
        }
        index += 1;
    }
    if index < plan.frames.end {
        return Err(CutError::OutOfRange);
    }
    Ok(write(frames, plan.pre_skip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_start_early_enough_and_drop_exactly_the_run_up() {
        // From the stream's start: the stream's own pre-skip, nothing before it.
        assert_eq!(
            plan(312, 0, 1000, 0..1000),
            Some(Plan {
                frames: 0..51,
                pre_skip: 312
            })
        );
        // Mid-stream: four frames early, the rest of the first frame dropped too.
        let p = plan(312, 10_000, 12_000, 0..u64::MAX).unwrap();
        let from = 312 + 10_000 * 48;
        assert_eq!(p.frames.start, from / 960 - 4);
        assert_eq!(u64::from(p.pre_skip), from - p.frames.start * 960, "{p:?}");
        assert_eq!(p.frames.end, (312 + 12_000 * 48u64).div_ceil(960));
        // Frames that are not there: refused.
        assert_eq!(plan(312, 10_000, 12_000, 600..1000), None);
        assert_eq!(plan(312, 10_000, 12_000, 0..400), None);
        assert_eq!(plan(312, 1000, 1000, 0..1000), None);
    }

    #[test]
    fn a_live_window_gives_its_last_seconds() {
        let frame = bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]);
        // 40 s of mix, 30 s (and the run-up) kept.
        let window = Window {
            frames: vec![frame.clone(); 1504],
            first_index: 2000 - 1504,
        };
        let clip = cut_live(&window, 312, 30).unwrap();
        assert!(
            (29_990..=30_000).contains(&clip.duration_ms),
            "{}",
            clip.duration_ms
        );
        // A mix that started 3 s ago: all of it.
        let young = Window {
            frames: vec![frame; 150],
            first_index: 0,
        };
        let clip = cut_live(&young, 312, 30).unwrap();
        assert_eq!(clip.duration_ms, (150 * 960 - 312) / 48);
        let empty = Window {
            frames: Vec::new(),
            first_index: 0,
        };
        assert!(cut_live(&empty, 312, 30).is_none());
    }
}
