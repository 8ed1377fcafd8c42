//! Debian's decoders, which nobody on the team wrote, as judges of the Ogg Opus files the
//! server writes: `ffprobe` for what a file is, `ffmpeg` for what it sounds like.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub fn tool(name: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs (apt-get install ffmpeg): {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What ffprobe says the file's duration is, in seconds.
pub fn ffprobe_duration(path: &Path) -> f64 {
    let out = tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,channels:format=duration",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    let probe: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(probe["streams"][0]["codec_name"], "opus", "{probe}");
    assert_eq!(probe["streams"][0]["channels"], 1, "{probe}");
    probe["format"]["duration"]
        .as_str()
        .expect("a duration")
        .parse()
        .unwrap()
}

/// How long an Ogg Opus file plays, by ffprobe: its duration less the file's pre-skip, as
/// ffprobe reports the last granule position without taking it off (RFC 7845 takes it off).
pub fn ffprobe_playback_secs(path: &Path) -> f64 {
    let file = std::fs::read(path).unwrap();
    ffprobe_duration(path) - f64::from(opus_pre_skip(&file)) / 48_000.0
}

/// The pre-skip in an Ogg Opus file's OpusHead. Its first page holds only OpusHead (a 27-byte
/// header, one lacing value), and the pre-skip is at bytes 10..12 of the packet.
pub fn opus_pre_skip(file: &[u8]) -> u16 {
    assert_eq!(&file[28..36], b"OpusHead", "an Ogg Opus file");
    u16::from_le_bytes([file[38], file[39]])
}

/// The file decoded by ffmpeg: 48 kHz mono PCM.
pub fn ffmpeg_pcm(path: &Path) -> Vec<i16> {
    let raw = tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "48000",
            "-",
        ],
    );
    raw.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}
