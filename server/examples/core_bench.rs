//! The media worker's core alone, per packet × listener (issue #20): one speaker and N
//! listeners connected in memory to the real `Core` (`media::worker::pair::Pair`, the harness of
//! the worker's tests and fuzz targets), then the speaker's sealed packets replayed into it with
//! no sockets, no wakeups and no shell. Set against a bare SRTP seal of the same packet, timed in
//! the same run: what the core adds to the one thing it cannot avoid.
//!
//! `cargo run --release -p stoa --features fuzzing --example core_bench [--rtc] [N...]`
//! (default 10 100 1000; lean connections, the default transport, unless `--rtc`). Per N it
//! prints:
//! - forward: ns per packet × listener inside `Core::handle_datagram` (decrypt once, rights,
//!   selection, per listener the slot rewrite, the payload and the seal into the send batch);
//! - seal: ns per `encrypt_rtp_with_header` of the same packet, one context per listener;
//! - timers: the core's `handle_timeout` every 20 ms while the speaker talks (selection, the
//!   connections' `rtc` timers, sender reports), as ms of CPU per second per 1,000 listeners;
//! - lost: copies that did not reach the send batch.
//!
//! Times are the thread's CPU time, so other work on the machine does not count. The clients
//! stop reading once connected, so no receiver reports come in during the window.

use std::time::Duration;

use stoa::clock::thread_cpu;
use stoa::media::testkit::mic_packet;
use stoa::media::worker::pair::Pair;

const FRAME: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rtc = args.iter().any(|a| a == "--rtc");
    let counts: Vec<usize> = args
        .iter()
        .filter(|a| *a != "--rtc")
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() {
        vec![10, 100, 1000]
    } else {
        counts
    };
    println!(
        "one reading of the thread's CPU clock: {:?}",
        clock_reading()
    );
    println!("transport: {}", if rtc { "rtc" } else { "lean" });
    println!("listeners | forward ns/pkt×l | seal ns | forward/seal | timers ms/s per 1k | lost");
    for listeners in counts {
        let core = forward(listeners, rtc)?;
        let seal = seal(listeners)?;
        println!(
            "{listeners:>9} | {:>16.0} | {seal:>7.0} | {:>12.2} | {:>18.1} | {}",
            core.forward_ns,
            core.forward_ns / seal,
            core.timers_ms_per_s_per_1k,
            core.lost
        );
    }
    Ok(())
}

struct Measured {
    forward_ns: f64,
    timers_ms_per_s_per_1k: f64,
    lost: u64,
}

fn forward(listeners: usize, rtc: bool) -> anyhow::Result<Measured> {
    // Long ICE timeouts: the clients go quiet during the window.
    let quiet = Duration::from_secs(3600);
    let mut pair = match rtc {
        true => Pair::new(quiet, quiet),
        false => Pair::lean(quiet, quiet),
    };
    let speaker = pair.join(true, true);
    for _ in 0..listeners {
        pair.join(false, false);
    }
    pair.connect_all();
    // Speech until the selection gives the speaker a slot and every listener's keys are proven
    // (the lean SRTP path).
    let mut seq = 1u16;
    for _ in 0..100 {
        pair.speak(speaker);
        pair.advance(FRAME);
        seq += 1;
    }
    let packets = (400_000 / listeners).clamp(200, 4_000);
    let sealed: Vec<Vec<u8>> = (0..packets)
        .flat_map(|i| pair.sealed_by(speaker, mic_packet(seq.wrapping_add(i as u16))))
        .collect();
    anyhow::ensure!(sealed.len() == packets, "the speaker sent {}", sealed.len());
    pair.clients_alive = false;
    pair.core.egress_mut().discard = true;
    let from = pair.clients[speaker].addr;
    let before = pair.core.egress().discarded;
    let (mut forwarding, mut timers) = (Duration::ZERO, Duration::ZERO);
    for datagram in &sealed {
        let start = thread_cpu();
        pair.datagram(from, datagram);
        forwarding += thread_cpu() - start;
        pair.now = pair.now.after(FRAME);
        let start = thread_cpu();
        pair.core.handle_timeout(pair.now);
        timers += thread_cpu() - start;
    }
    // Each interval also holds one reading of the clock; take it out.
    let readings = clock_reading() * packets as u32;
    let (forwarding, timers) = (
        forwarding.saturating_sub(readings),
        timers.saturating_sub(readings),
    );
    let expected = (packets * listeners) as u64;
    let delivered = pair.core.egress().discarded - before;
    let window = FRAME * packets as u32;
    Ok(Measured {
        forward_ns: forwarding.as_secs_f64() * 1e9 / expected as f64,
        timers_ms_per_s_per_1k: timers.as_secs_f64() * 1e3 / window.as_secs_f64() * 1000.0
            / listeners as f64,
        // Timers add sender reports to what is sent; only a shortfall is a loss.
        lost: expected.saturating_sub(delivered),
    })
}

/// What one reading of the thread's CPU clock costs (a system call, ~0.2-0.5 µs).
fn clock_reading() -> Duration {
    const READINGS: u32 = 100_000;
    let start = thread_cpu();
    for _ in 0..READINGS {
        std::hint::black_box(thread_cpu());
    }
    (thread_cpu() - start) / READINGS
}

/// ns per seal of the forwarded packet, one AES-128-GCM context per listener visited in turn.
fn seal(listeners: usize) -> anyhow::Result<f64> {
    let provider = rtc::crypto::default_provider()
        .map_err(|e| anyhow::anyhow!("no crypto provider: {e:?}"))?;
    let mut contexts = (0..listeners)
        .map(|i| {
            let key = [i as u8; 16];
            let salt = [(i >> 8) as u8; 12];
            rtc::srtp::context::Context::new(
                &key,
                &salt,
                rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
                None,
                None,
                provider.crypto(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut header = mic_packet(1).header;
    let mut plain = rtc::shared::marshal::Marshal::marshal(&mic_packet(1))?.to_vec();
    let rounds = (1_000_000 / listeners).max(10);
    let mut run = |rounds: usize| -> anyhow::Result<Duration> {
        let start = thread_cpu();
        for _ in 0..rounds {
            header.sequence_number = header.sequence_number.wrapping_add(1);
            plain[2..4].copy_from_slice(&header.sequence_number.to_be_bytes());
            for context in &mut contexts {
                std::hint::black_box(context.encrypt_rtp_with_header(&plain, &header)?);
            }
        }
        Ok(thread_cpu() - start)
    };
    run(rounds / 10 + 1)?;
    Ok(run(rounds)?.as_secs_f64() * 1e9 / (rounds * listeners) as f64)
}
