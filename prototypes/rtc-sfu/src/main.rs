//! Prototype of Stoa's media core on `rtc` 0.21 with a `webrtc` 0.21 test client.
//! `rtc-proto e2e` runs the loopback scenario; `rtc-proto bench` times the forward path in memory.

mod bench;
mod client;
mod rtcp_tap;
mod stun_route;
mod worker;

use client::TestClient;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use worker::{Command, Report, Role, Worker};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    match std::env::args().nth(1).as_deref() {
        Some("bench") => bench::run(),
        Some("rogue") => bench::rogue(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(e2e()),
    }
}

async fn stats(handle: &worker::WorkerHandle) -> worker::WorkerStats {
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle.send(Command::Stats { reply: tx });
    rx.await.unwrap()
}

fn print_client(c: &TestClient) {
    let s = &c.stats;
    println!(
        "  {:<9} conn={} sent={} rtp_recv={} decoded={} tone_frames={} decode_err={} SR_recv={} tracks={} ssrcs={:?}",
        c.name,
        c.conn,
        s.sent.load(Ordering::Relaxed),
        s.rtp_received.load(Ordering::Relaxed),
        s.frames_decoded.load(Ordering::Relaxed),
        s.nonzero_frames.load(Ordering::Relaxed),
        s.decode_errors.load(Ordering::Relaxed),
        s.sender_reports.load(Ordering::Relaxed),
        s.tracks.load(Ordering::Relaxed),
        s.ssrcs.lock().unwrap(),
    );
}

async fn e2e() -> anyhow::Result<()> {
    let (report_tx, mut report_rx) = tokio::sync::mpsc::unbounded_channel();
    // Short ICE timeouts so the dead-peer check finishes quickly: disconnected after 3 s
    // without inbound STUN, failed 4 s after that.
    let (handle, join) = Worker::spawn((Duration::from_secs(3), Duration::from_secs(4)), report_tx)?;
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Report>::new()));
    {
        let reports = reports.clone();
        tokio::spawn(async move {
            while let Some(r) = report_rx.recv().await {
                println!("[worker-event] {r:?}");
                reports.lock().unwrap().push(r);
            }
        });
    }
    println!("worker on {}", handle.addr);

    let t0 = Instant::now();
    let speaker = TestClient::join("speaker", Role::Speaker, handle.clone(), 440.0).await?;
    let listener1 = TestClient::join("listener1", Role::Listener, handle.clone(), 0.0).await?;
    let listener2 = TestClient::join("listener2", Role::Listener, handle.clone(), 0.0).await?;
    // Joins as a listener but offers a microphone (sendrecv) and sends a tone anyway.
    let rogue = TestClient::join_with("rogue", Role::Listener, true, handle.clone(), 880.0).await?;
    println!("four joins signalled in {:?}", t0.elapsed());
    let answer = rogue.pc.remote_description().await.map(|d| d.sdp).unwrap_or_default();
    let mut fingerprints = Vec::new();
    for c in [&speaker, &listener1, &listener2, &rogue] {
        let sdp = c.pc.remote_description().await.map(|d| d.sdp).unwrap_or_default();
        fingerprints.extend(sdp.lines().filter(|l| l.starts_with("a=fingerprint")).map(str::to_owned));
    }
    fingerprints.sort();
    fingerprints.dedup();
    println!("distinct DTLS fingerprints across the 4 answers: {fingerprints:?}");
    println!(
        "rogue listener's answer directions: {:?}",
        answer.lines().filter(|l| matches!(*l, "a=sendonly" | "a=recvonly" | "a=sendrecv" | "a=inactive")).collect::<Vec<_>>()
    );

    for c in [&speaker, &listener1, &listener2, &rogue] {
        let start = Instant::now();
        while !c.stats.connected.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at = c.stats.connected_at.lock().unwrap().map(|a| a.duration_since(t0));
        println!("{} connected: {:?} (since first join)", c.name, at);
    }

    println!("\n== phase 1: one speaker (440 Hz), two listeners, 6 s ==");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = stats(&handle).await;
    println!("worker: {s:#?}");
    for c in [&speaker, &listener1, &listener2, &rogue] {
        print_client(c);
    }

    println!("\n== phase 2: listener1 promoted to speaker (renegotiation on the same connection) ==");
    let mut listener1 = listener1;
    let took = listener1.promote(660.0).await?;
    println!("promotion offer/answer round trip took {took:?}");
    let before_l2 = listener2.stats.rtp_received.load(Ordering::Relaxed);
    let before_sp = speaker.stats.rtp_received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = stats(&handle).await;
    println!("worker per_conn: {:?}", s.per_conn);
    println!(
        "after promotion: listener2 got {} more packets (2 slots => ~400 expected), speaker got {} (from listener1 on slot 1 => ~200)",
        listener2.stats.rtp_received.load(Ordering::Relaxed) - before_l2,
        speaker.stats.rtp_received.load(Ordering::Relaxed) - before_sp
    );
    for c in [&speaker, &listener1, &listener2] {
        print_client(c);
    }

    println!("\n== phase 3: dead peer (listener2's packets blackholed at the server) ==");
    let dead_at = Instant::now();
    handle.send(Command::Blackhole { conn: listener2.conn });
    tokio::time::sleep(Duration::from_secs(9)).await;
    for r in reports.lock().unwrap().iter() {
        match r {
            Report::Ice { conn, at, .. } | Report::Peer { conn, at, .. } if *conn == listener2.conn && *at > dead_at => {
                println!("  conn {} event {:?} at +{:?}", conn, r, at.duration_since(dead_at));
            }
            _ => {}
        }
    }

    println!("\n== phase 4: clean close of listener1 ==");
    let closed_at = Instant::now();
    listener1.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in reports.lock().unwrap().iter() {
        let (Report::Ice { conn, at, .. } | Report::Peer { conn, at, .. }) = r;
        {
            if *conn == listener1.conn && *at > closed_at {
                println!("  conn {} {:?} at +{:?}", conn, r, at.duration_since(closed_at));
            }
        }
    }
    handle.send(Command::Close { conn: listener1.conn });
    handle.send(Command::Close { conn: listener2.conn });
    let s = stats(&handle).await;
    println!("final worker stats: {s:#?}");
    for c in [&speaker, &listener1, &listener2] {
        print_client(c);
    }
    print_client(&rogue);
    speaker.close().await;
    listener2.close().await;
    rogue.close().await;
    handle.send(Command::Stop);
    let _ = join.join();
    Ok(())
}
