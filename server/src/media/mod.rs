//! The media path: RTP parsing and the RFC 6464 audio level, loudest-speaker selection, and
//! the per-slot rewriting that turns changing speakers into one continuous stream. No I/O yet.

pub mod audio_level;
pub mod selector;
pub mod slot;
