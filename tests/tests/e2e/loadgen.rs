//! A short run of the load generator's core against an in-process server: audio must flow to
//! every listener, counted both ways the lean listener counts (decrypted by `rtc`, and from the
//! RTP header alone), with the header mapping confirmed by every decrypted sample.

use std::time::Duration;

use stoa_tests::TestServer;
use stoa_tests::loadgen::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loadgen_smoke_one_speaker_five_listeners() {
    let t = TestServer::start().await;
    let report = run(Options {
        url: t.url(""),
        api_key: t.api_key.clone(),
        speakers: 1,
        listeners: 5,
        seconds: 3.0,
        settle: Duration::from_millis(500),
        join_timeout: Duration::from_secs(30),
        // Decrypt often enough that the check runs many times in a short window.
        check_every: 5,
        progress: false,
        ..Options::default()
    })
    .await
    .expect("the load run completes");
    println!("{}", report.text());
    println!("{}", report.to_json());

    assert_eq!((report.joins_ok, report.joins_failed), (6, 0), "{report:?}");
    assert_eq!(report.join_ms.count, 5, "every listener's media connected");
    assert_eq!(report.first_audio_ms.count, 5, "every listener heard audio");
    assert!(report.all_hearing_s > 0.0);
    assert!(
        report.window_sent >= 100,
        "the speaker sent {} packets in a 3 s window",
        report.window_sent
    );
    assert_eq!(report.per_listener.len(), 5);
    for (i, listener) in report.per_listener.iter().enumerate() {
        assert!(
            listener.received as f64 >= 0.9 * report.window_sent as f64,
            "listener {i} received {} of {} packets",
            listener.received,
            report.window_sent
        );
        assert_eq!(
            listener.unmatched, 0,
            "listener {i}: payloads the speaker never sent"
        );
    }
    let checks = report.checks;
    assert!(checks.header_only > 0, "the lean path counted: {checks:?}");
    assert!(
        checks.confirmed >= 5 * 10,
        "decrypted samples confirmed the header mapping: {checks:?}"
    );
    assert_eq!(checks.remapped, 0, "{checks:?}");
    assert!(report.datagram_bytes > 12.0 + 16.0);
    assert!(report.audio_ok(), "{}", report.text());
    let delay = report.delay_us;
    assert!(
        delay.count as u64 >= report.received() * 9 / 10,
        "{delay:?}"
    );
    assert!(
        delay.p99 > 0.0 && delay.p99 < 1e6,
        "delay p99 {} µs",
        delay.p99
    );
    assert!(delay.max < 1e6, "delay max {} µs", delay.max);
    t.stop().await;
}
