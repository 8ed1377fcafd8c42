//! `stoa-client`: joins a room from an invite link, listens (printing what each slot carries
//! once a second, and who is speaking) and, when asked to, speaks a tone or a WAV file —
//! raising a hand and waiting to be invited if it came in as a listener.
//!
//! ```text
//! stoa-client http://127.0.0.1:8080/i/<code> --name Ada --tone 440
//! stoa-client http://127.0.0.1:8080/i/<code> --name Lee
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stoa_client::audio::{AudioSource, dbov, goertzel_power};
use stoa_client::{Event, InviteLink, JoinOptions, ParticipantId, Room};

const USAGE: &str = "usage: stoa-client <invite link> [--name NAME] [--tone HZ | --wav FILE] [--seconds N] [--trace]

Joins the room the link is for. Without --tone/--wav it listens and prints, once a second, what
each audio slot carries (level and strongest frequency, and who, when the client can tell) and
who is speaking. With --tone or --wav it speaks: at once if the link puts it on stage,
otherwise after raising a hand and being invited by a moderator. The WAV must be 16-bit PCM,
mono, 48 kHz. Stops after --seconds (default: until Ctrl-C) and leaves the room. --trace prints
every event received.";

struct Args {
    link: InviteLink,
    name: String,
    source: Option<AudioSource>,
    seconds: Option<u64>,
    trace: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut link = None;
    let mut name = "stoa-client".to_owned();
    let mut source = None;
    let mut seconds = None;
    let mut trace = false;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--name" => name = value("--name")?,
            "--tone" => {
                let hz: f32 = value("--tone")?.parse().map_err(|_| "--tone takes Hz")?;
                source = Some(AudioSource::tone(hz, -12.0));
            }
            "--wav" => {
                let path = value("--wav")?;
                source = Some(
                    AudioSource::wav_file(&path).map_err(|e| format!("cannot read {path}: {e}"))?,
                );
            }
            "--seconds" => {
                seconds = Some(
                    value("--seconds")?
                        .parse()
                        .map_err(|_| "--seconds takes a number")?,
                )
            }
            "--trace" => trace = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other if link.is_none() && !other.starts_with('-') => {
                link = Some(InviteLink::parse(other).map_err(|e| e.to_string())?)
            }
            other => return Err(format!("unexpected argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(Args {
        link: link.ok_or(USAGE)?,
        name,
        source,
        seconds,
        trace,
    })
}

/// The strongest of a grid of frequencies (10 Hz steps) in `pcm`, for telling tones apart.
fn strongest_frequency(pcm: &[i16]) -> f32 {
    (10..=300)
        .map(|i| i as f32 * 10.0)
        .max_by(|a, b| goertzel_power(pcm, *a).total_cmp(&goertzel_power(pcm, *b)))
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("stoa-client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What one slot carried over the last second.
#[derive(Default)]
struct Heard {
    pcm: Vec<i16>,
    speaker: Option<ParticipantId>,
}

async fn run(args: Args) -> Result<(), stoa_client::Error> {
    let mut room = Room::join(&args.link, JoinOptions::new(&args.name)).await?;
    let view = room.view();
    let mut names: HashMap<ParticipantId, String> = view
        .snapshot
        .stage
        .iter()
        .map(|p| (p.id.clone(), p.display_name.clone()))
        .collect();
    let slots = room.media().map_or(0, |m| m.slots());
    println!(
        "joined {:?} as {} ({}), {slots} audio slots; media connected",
        view.title,
        args.name,
        view.me().role,
    );
    if let Some(source) = &args.source {
        if view.me().on_stage {
            room.speak(source.clone()).await?;
            println!("on stage, speaking");
        } else {
            room.raise_hand().await?;
            println!("hand raised; waiting for a moderator to invite me on stage");
        }
    }
    let mut listener = room.listen()?;
    let mut heard: Vec<Heard> = (0..slots).map(|_| Heard::default()).collect();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let me = room.me().clone();
    loop {
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            frame = listener.next() => {
                let Some(frame) = frame else { break };
                if let Some(slot) = heard.get_mut(frame.slot) {
                    slot.pcm.extend_from_slice(&frame.pcm);
                    slot.speaker = frame.speaker.or(slot.speaker.take());
                }
            }
            event = room.next_event() => {
                let Some(event) = event else { break };
                if args.trace {
                    println!("← {event:?}");
                }
                match event {
                    Event::JoinedStage(p) | Event::ParticipantJoined(p) | Event::HandRaised(p) => {
                        names.insert(p.id.clone(), p.display_name.clone());
                        if p.id == me && let Some(source) = &args.source && p.on_stage {
                            room.speak(source.clone()).await?;
                            println!("on stage, speaking");
                        }
                    }
                    Event::InvitedToStage { participant, .. } if participant == me => {
                        room.accept_invitation().await?;
                    }
                    Event::LeftStage { participant, .. } if participant.id == me => {
                        println!("moved to the audience");
                    }
                    Event::Muted { participant, .. } if participant.id == me => {
                        println!("a moderator muted me");
                    }
                    Event::ActiveSpeakers(speakers) => {
                        let who: Vec<&str> = speakers
                            .iter()
                            .map(|id| names.get(id).map_or(id.as_str(), String::as_str))
                            .collect();
                        println!("speaking now: {}", who.join(", "));
                    }
                    Event::Reconnecting => println!("connection lost; resuming"),
                    Event::Resumed(_) => println!("resumed"),
                    Event::MediaReconnected => println!("media connected again"),
                    Event::MediaLost(why) => println!("media lost: {why}"),
                    Event::Closed { code, reason } => {
                        return Err(stoa_client::Error::Closed { code, reason });
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let mut line = format!("{:>5.1}s", started.elapsed().as_secs_f32());
                for (slot, h) in heard.iter_mut().enumerate() {
                    if h.pcm.is_empty() {
                        line.push_str(&format!(" | slot {slot}: silent"));
                    } else {
                        let who = h
                            .speaker
                            .as_ref()
                            .map_or("?", |id| names.get(id).map_or(id.as_str(), String::as_str));
                        line.push_str(&format!(
                            " | slot {slot}: {who} {:.0} dBov ~{:.0} Hz",
                            dbov(&h.pcm),
                            strongest_frequency(&h.pcm)
                        ));
                    }
                    h.pcm.clear();
                }
                if let Some(media) = room.media().filter(|m| m.speaking()) {
                    line.push_str(&format!(" | sent {}", media.report().send.frames_sent));
                }
                println!("{line}");
            }
        }
    }
    room.leave().await?;
    println!("left");
    Ok(())
}
