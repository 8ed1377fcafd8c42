//! A short run of the load generator's core against an in-process server: audio must flow to
//! every listener. The same check `.ci/run` can make with the `stoa-loadgen` binary.

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
        seconds: 4.0,
        join_timeout: Duration::from_secs(30),
        progress: false,
        ..Options::default()
    })
    .await
    .expect("the load run completes");
    println!("{}", report.text());
    println!("{}", report.to_json());

    assert_eq!((report.joins_ok, report.joins_failed), (6, 0), "{report:?}");
    assert_eq!(report.join_ms.count, 6, "every client's media connected");
    assert!(
        report.sent >= 150,
        "the speaker sent {} packets in 4 s",
        report.sent
    );
    assert_eq!(report.per_listener.len(), 5);
    for (i, listener) in report.per_listener.iter().enumerate() {
        assert!(
            listener.received as f64 >= 0.9 * report.sent as f64,
            "listener {i} received {} of {} packets",
            listener.received,
            report.sent
        );
        assert_eq!(
            listener.unmatched, 0,
            "listener {i}: payloads the speaker never sent"
        );
    }
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
