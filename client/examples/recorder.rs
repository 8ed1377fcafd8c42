//! A bot that listens to a room and writes what it hears, every slot mixed into one track, to
//! a WAV file (16-bit PCM, mono, 48 kHz) when it stops.
//!
//! ```text
//! cargo run --release -p stoa-client --example recorder -- http://127.0.0.1:8080/i/<code> room.wav 60
//! ```
//!
//! Records for the given number of seconds, or until Ctrl-C.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use stoa_client::audio::{FRAME_DURATION, FRAME_SAMPLES, wav_bytes};
use stoa_client::{Error, InviteLink, JoinOptions, Room};

/// A slot's frame arriving this much later than where the slot's audio would go next starts
/// after a pause (the slot was silent); sooner, it simply continues the slot's audio (its
/// packets came in a burst).
const GAP: Duration = Duration::from_millis(60);

/// Records the room until `stop` completes, writes the mix to `path` and leaves; returns how
/// much audio was written.
pub async fn run(
    link: &InviteLink,
    name: &str,
    path: &Path,
    stop: impl Future<Output = ()>,
) -> Result<Duration, Error> {
    let room = Room::join(link, JoinOptions::new(name)).await?;
    let mut listener = room.listen()?;
    let mut mix = Mix::new(Instant::now());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            frame = listener.next() => match frame {
                Some(frame) => mix.add(frame.slot, frame.at, &frame.pcm),
                None => break,
            },
        }
    }
    std::fs::write(path, wav_bytes(&mix.samples))?;
    room.leave().await?;
    Ok(FRAME_DURATION * (mix.samples.len() / FRAME_SAMPLES) as u32)
}

/// Every slot's frames on one timeline: each slot's audio follows on from its previous frame,
/// or, after a pause, starts where its arrival time puts it; overlapping slots add up.
struct Mix {
    start: Instant,
    samples: Vec<i16>,
    /// Per slot: where its next frame goes.
    cursors: Vec<usize>,
}

impl Mix {
    fn new(start: Instant) -> Self {
        Mix {
            start,
            samples: Vec::new(),
            cursors: Vec::new(),
        }
    }

    fn add(&mut self, slot: usize, at: Instant, pcm: &[i16]) {
        if self.cursors.len() <= slot {
            self.cursors.resize(slot + 1, 0);
        }
        let frames = at.duration_since(self.start).as_micros() / FRAME_DURATION.as_micros();
        let arrival = frames as usize * FRAME_SAMPLES;
        let cursor = &mut self.cursors[slot];
        let gap = (GAP.as_millis() / FRAME_DURATION.as_millis()) as usize * FRAME_SAMPLES;
        if arrival > *cursor + gap {
            *cursor = arrival;
        }
        let end = *cursor + pcm.len();
        if self.samples.len() < end {
            self.samples.resize(end, 0);
        }
        for (out, sample) in self.samples[*cursor..end].iter_mut().zip(pcm) {
            *out = out.saturating_add(*sample);
        }
        *cursor = end;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(link), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: recorder <invite link> <out.wav> [seconds]");
        std::process::exit(2);
    };
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;
    let stop = async move {
        match seconds {
            Some(s) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(s)) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let written = run(
        &InviteLink::parse(&link)?,
        "Recorder",
        Path::new(&path),
        stop,
    )
    .await?;
    println!("wrote {:.1} s to {path}", written.as_secs_f64());
    Ok(())
}
