//! `stoa-client`: joins a room from an invite link with the test client's real WebRTC and
//! Opus, listens (printing what each slot carries once a second) and, when asked to, speaks a
//! tone or a WAV file — raising a hand and waiting to be invited if it came in as a listener.
//!
//! ```text
//! stoa-client http://127.0.0.1:8080/i/<code> --name Ada --tone 440
//! stoa-client http://127.0.0.1:8080/i/<code> --name Lee
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stoa_tests::media::{AudioSource, MediaConfig, MediaPeer, dbov, goertzel_power, media_slots};
use stoa_tests::signal::SignalClient;

const USAGE: &str = "usage: stoa-client <invite link> [--name NAME] [--tone HZ | --wav FILE] [--seconds N] [--trace]

Joins the room the link is for. Without --tone/--wav it listens and prints, once a second, what
each audio slot carries (level and strongest frequency) and who is speaking. With --tone or
--wav it speaks: at once if the link puts it on stage, otherwise after raising a hand and being
invited by a moderator. The WAV must be 16-bit PCM, mono, 48 kHz. Stops after --seconds
(default: until Ctrl-C) and leaves the room. --trace prints every signaling message received.";

struct Args {
    link: String,
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
            other if link.is_none() && !other.starts_with('-') => link = Some(other.to_owned()),
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

/// `http://host:port/i/<code>` → (`http://host:port`, `<code>`).
fn split_link(link: &str) -> Result<(String, String), String> {
    let (base, code) = link
        .rsplit_once("/i/")
        .ok_or_else(|| format!("{link:?} is not an invite link (…/i/<code>)"))?;
    Ok((base.to_owned(), code.trim_end_matches('/').to_owned()))
}

async fn redeem(base: &str, code: &str, name: &str) -> Result<Value, String> {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/join"))
        .json(&json!({ "invite": code, "display_name": name }))
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "the server refused the invite ({status}): {}",
            body["detail"].as_str().unwrap_or("")
        ));
    }
    Ok(body)
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

async fn run(args: Args) -> Result<(), String> {
    let (base, code) = split_link(&args.link)?;
    let joined = redeem(&base, &code, &args.name).await?;
    let mut signal = SignalClient::join(&joined).await;
    let me = signal.participant_id();
    let slots = media_slots(&signal.welcome);
    let on_stage = signal.welcome["snapshot"]["you"]["on_stage"] == true;
    let mut names: HashMap<String, String> = HashMap::new();
    for p in signal.welcome["snapshot"]["stage"]
        .as_array()
        .into_iter()
        .flatten()
    {
        names.insert(
            p["id"].as_str().unwrap_or("").to_owned(),
            p["display_name"].as_str().unwrap_or("").to_owned(),
        );
    }
    println!(
        "joined {:?} as {} ({}), {slots} audio slots",
        signal.welcome["room_title"].as_str().unwrap_or(""),
        args.name,
        joined["role"].as_str().unwrap_or("?"),
    );

    let config = match (&args.source, on_stage) {
        (Some(source), true) => MediaConfig::speaker(&args.name, slots, source.clone()),
        _ => MediaConfig::listener(&args.name, slots),
    };
    let peer = MediaPeer::new(config).await.map_err(|e| e.to_string())?;
    peer.negotiate(&mut signal)
        .await
        .map_err(|e| format!("media refused: {e}"))?;
    peer.wait_connected(Duration::from_secs(15)).await;
    println!("media connected");
    if args.source.is_some() && !on_stage {
        signal.ok(json!({ "type": "raise_hand" })).await;
        println!("hand raised; waiting for a moderator to invite me on stage");
    }

    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut last_packets = vec![0u64; slots];
    loop {
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        let message = tokio::select! {
            m = signal.next_within(Duration::from_millis(200)) => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        if let Some(m) = message {
            if let Some(p) = m["participant"].as_object()
                && let (Some(id), Some(name)) = (p["id"].as_str(), p["display_name"].as_str())
            {
                names.insert(id.to_owned(), name.to_owned());
            }
            match m["type"].as_str() {
                Some("invited_to_stage") if m["participant"] == me.as_str() => {
                    signal.ok(json!({ "type": "accept_invitation" })).await;
                }
                Some("joined_stage") if m["participant"]["id"] == me.as_str() => {
                    if let Some(source) = &args.source {
                        peer.start_speaking(&mut signal, source.clone())
                            .await
                            .map_err(|e| format!("could not start speaking: {e}"))?;
                        println!("on stage, speaking");
                    }
                }
                Some("left_stage") if m["participant"]["id"] == me.as_str() => {
                    if peer.speaking() {
                        peer.stop_speaking(&mut signal)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    println!("moved to the audience");
                }
                Some("active_speakers") => {
                    let who: Vec<&str> = m["speakers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|id| id.as_str())
                        .map(|id| names.get(id).map_or(id, String::as_str))
                        .collect();
                    println!("speaking now: {}", who.join(", "));
                }
                Some("muted") if m["participant"]["id"] == me.as_str() => {
                    println!("a moderator muted me");
                }
                _ => {}
            }
        }
        if signal.closed.is_some() {
            return Err(format!("the server closed the socket: {:?}", signal.closed));
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let until = Instant::now();
            let report = peer.report();
            let mut line = format!("{:>5.1}s", started.elapsed().as_secs_f32());
            for (slot, seen) in report.slots.iter().enumerate() {
                let pcm = peer.decoded_audio(slot, last_print, until);
                let new = seen.packets - last_packets[slot];
                last_packets[slot] = seen.packets;
                if new == 0 || pcm.is_empty() {
                    line.push_str(&format!(" | slot {slot}: silent"));
                } else {
                    line.push_str(&format!(
                        " | slot {slot}: {new} pkts {:.0} dBov ~{:.0} Hz",
                        dbov(&pcm),
                        strongest_frequency(&pcm)
                    ));
                }
            }
            if peer.speaking() {
                line.push_str(&format!(" | sent {}", report.send.frames_sent));
            }
            println!("{line}");
            last_print = until;
        }
    }
    let _ = signal.request(json!({ "type": "leave" })).await;
    peer.close().await;
    if args.trace {
        for message in &signal.received {
            println!("← {message}");
        }
    }
    println!("left");
    Ok(())
}
