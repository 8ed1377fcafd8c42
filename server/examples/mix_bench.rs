//! What mixing a room for the broadcast tier costs: CPU time of the whole per-room pipeline
//! (jitter buffers, Opus decode per speaker, mix, one Opus encode, CMAF packaging and the
//! playlist) per second of audio, as a share of one core, with 0 to 5 speakers talking at
//! once. Baseline, measured in the same run: one bare Opus encode per 20 ms (the least any
//! mix must do).
//!
//! `cargo run --release -p stoa --example mix_bench [seconds of audio, default 120]`

use std::time::Duration;

use bytes::Bytes;
use opus::{Application, Channels, Encoder};
use stoa::broadcast::hls::{HlsSettings, Stream};
use stoa::broadcast::mix::{FRAME, MixSettings, Mixer};
use stoa::broadcast::mp4::OpusTrack;
use stoa::clock::thread_cpu;

/// 20 ms Opus packets of speech-like audio: a tone whose loudness moves like syllables.
fn speaker(hz: f64, frames: usize) -> Vec<Bytes> {
    let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
    (0..frames)
        .map(|f| {
            let pcm: Vec<i16> = (0..FRAME)
                .map(|i| {
                    let t = (f * FRAME + i) as f64 / 48_000.0;
                    let envelope = 0.5 + 0.5 * (t * 4.0 * std::f64::consts::TAU).sin();
                    ((t * hz * std::f64::consts::TAU).sin() * 9000.0 * envelope) as i16
                })
                .collect();
            Bytes::from(enc.encode_vec(&pcm, 4000).unwrap())
        })
        .collect()
}

fn main() {
    let seconds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let ticks = seconds * 50;
    let audio = Duration::from_secs(seconds as u64);
    let voices: Vec<Vec<Bytes>> = [220.0, 330.0, 440.0, 550.0, 660.0]
        .iter()
        .map(|hz| speaker(*hz, ticks))
        .collect();

    // Baseline: encode 20 ms of silence-free audio once per tick.
    let mut enc = Encoder::new(48_000, Channels::Mono, Application::Audio).unwrap();
    let frame: Vec<i16> = (0..FRAME).map(|i| ((i * 37) % 2000) as i16).collect();
    let mut out = [0u8; 4000];
    let start = thread_cpu();
    for _ in 0..ticks {
        std::hint::black_box(enc.encode(&frame, &mut out).unwrap());
    }
    let baseline = thread_cpu() - start;
    let share = |cpu: Duration| 100.0 * cpu.as_secs_f64() / audio.as_secs_f64();
    println!("{seconds} s of audio per case; share of one core (CPU time / audio time)");
    println!(
        "baseline, one Opus encode per 20 ms: {:.2} %",
        share(baseline)
    );
    println!("| speakers talking | share of a core | × baseline | µs per 20 ms |");
    println!("|---:|---:|---:|---:|");
    for talking in [0usize, 1, 3, 5] {
        let mut mixer = Mixer::new(MixSettings::default()).unwrap();
        let mut stream = Stream::new(
            HlsSettings::default(),
            "bench".into(),
            OpusTrack {
                channels: 1,
                pre_skip: mixer.pre_skip(),
            },
            0,
        );
        let start = thread_cpu();
        for tick in 0..ticks {
            for (source, voice) in voices.iter().take(talking).enumerate() {
                mixer
                    .push(source as u32, tick as u16, voice[tick].clone(), Some(20))
                    .unwrap();
            }
            let packet = Bytes::copy_from_slice(mixer.tick().unwrap());
            if stream.push_frame(packet, tick as i64 * 20).is_some() {
                // A playlist per part, as a blocking request would render it.
                std::hint::black_box(stream.playlist(false));
            }
        }
        let cpu = thread_cpu() - start;
        println!(
            "| {talking} | {:.2} % | {:.1} | {:.0} |",
            share(cpu),
            cpu.as_secs_f64() / baseline.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / ticks as f64
        );
    }
}
