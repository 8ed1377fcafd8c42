//! A bot that waits in the audience with its hand raised; when a moderator invites it on
//! stage, it accepts, plays a WAV file once, steps down and raises its hand again.
//!
//! ```text
//! cargo run --release -p stoa-client --example stage_player -- http://127.0.0.1:8080/i/<code> jingle.wav
//! ```
//!
//! The WAV must be 16-bit PCM, mono, 48 kHz. Ctrl-C leaves the room.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stoa_client::audio::{AudioSource, SAMPLE_RATE, read_wav};
use stoa_client::{Error, Event, InviteLink, JoinOptions, Room};

/// How long the server wants between two raises of one hand.
const HAND_COOLDOWN: Duration = Duration::from_secs(2);

/// Plays `wav` every time the room invites the bot on stage, until `stop` completes; then
/// leaves the room.
pub async fn run(
    link: &InviteLink,
    name: &str,
    wav: Vec<i16>,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    let wav: Arc<[i16]> = wav.into();
    let mut room = Room::join(link, JoinOptions::new(name)).await?;
    tokio::pin!(stop);
    // A speaker's link puts the bot on stage at once.
    if room.view().me().on_stage {
        play(&room, &wav, &mut stop).await?;
    }
    raise_hand(&room).await?;
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = room.next_event() => match event {
                Some(Event::InvitedToStage { participant, .. }) if &participant == room.me() => {
                    room.accept_invitation().await?;
                    play(&room, &wav, &mut stop).await?;
                    raise_hand(&room).await?;
                }
                Some(Event::Closed { code, reason }) => return Err(Error::Closed { code, reason }),
                None => return Ok(()),
                Some(_) => {}
            },
        }
    }
    room.leave().await
}

/// Raises the hand; the server refuses a raise within 2 s of the previous one (`too_soon`),
/// so after a short song the bot waits that long and tries again.
async fn raise_hand(room: &Room) -> Result<(), Error> {
    match room.raise_hand().await {
        Err(Error::Rejected { code, .. }) if code == "too_soon" => {
            tokio::time::sleep(HAND_COOLDOWN).await;
            room.raise_hand().await
        }
        other => other,
    }
}

/// Plays the file once (in real time), then steps down, unless a moderator moved the bot off
/// the stage first (which stops the microphone by itself).
async fn play(
    room: &Room,
    wav: &Arc<[i16]>,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), Error> {
    room.speak(AudioSource::Once(wav.clone())).await?;
    let length = Duration::from_secs_f64(wav.len() as f64 / f64::from(SAMPLE_RATE));
    tokio::select! {
        () = tokio::time::sleep(length) => {}
        () = stop => {}
    }
    if room.view().me().on_stage {
        room.leave_stage().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(link), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: stage_player <invite link> <file.wav> [name]");
        std::process::exit(2);
    };
    let name = args.next().unwrap_or_else(|| "Jukebox".to_owned());
    let wav = read_wav(&path)?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(&InviteLink::parse(&link)?, &name, wav, stop).await?;
    Ok(())
}
