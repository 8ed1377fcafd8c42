//! A moderation bot: joins with a moderator's link, listens, and mutes anyone whose voice
//! stays louder than a threshold for a moment (they may unmute themselves, and be muted again).
//!
//! ```text
//! cargo run --release -p stoa-client --example loudness_moderator -- http://127.0.0.1:8080/i/<moderator code> -20
//! ```
//!
//! The threshold is in dBov (0 is full scale; speech is usually between -40 and -15).

use std::collections::HashMap;
use std::future::Future;

use stoa_client::audio::dbov;
use stoa_client::{Error, InviteLink, JoinOptions, ParticipantId, Room};

/// Frames in a row (20 ms each) above the threshold before the bot acts: a cough is not a
/// shout.
const LOUD_FRAMES: u32 = 10;

/// Mutes the loud until `stop` completes, then leaves; returns whom it muted, in order.
pub async fn run(
    link: &InviteLink,
    name: &str,
    threshold_dbov: f64,
    stop: impl Future<Output = ()>,
) -> Result<Vec<ParticipantId>, Error> {
    let mut room = Room::join(link, JoinOptions::new(name)).await?;
    let mut listener = room.listen()?;
    let mut loud_frames: HashMap<ParticipantId, u32> = HashMap::new();
    let mut muted = Vec::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            // The view is kept current from the events; reading them keeps their queue short.
            event = room.next_event() => if event.is_none() { break },
            frame = listener.next() => {
                let Some(frame) = frame else { break };
                // Audio nobody can be named for yet is left alone.
                let Some(speaker) = frame.speaker else { continue };
                let level = dbov(&frame.pcm);
                let count = loud_frames.entry(speaker.clone()).or_default();
                *count = if level > threshold_dbov { *count + 1 } else { 0 };
                let already = room.view().participant(&speaker).is_none_or(|p| p.muted);
                if *count >= LOUD_FRAMES && !already {
                    *count = 0;
                    match room.mute(&speaker).await {
                        Ok(()) => {
                            println!("muted {speaker} at {level:.0} dBov");
                            muted.push(speaker);
                        }
                        // They left the stage or the room meanwhile.
                        Err(Error::Rejected { code, .. }) => {
                            println!("could not mute {speaker}: {code}");
                        }
                        Err(other) => return Err(other),
                    }
                }
            }
        }
    }
    room.leave().await?;
    Ok(muted)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(link) = args.next() else {
        eprintln!(
            "usage: loudness_moderator <moderator invite link> [threshold dBov, default -20]"
        );
        std::process::exit(2);
    };
    let threshold: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(-20.0);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(&InviteLink::parse(&link)?, "Volume police", threshold, stop).await?;
    Ok(())
}
