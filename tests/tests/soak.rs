//! The soak's short version, run by CI: 45 s of churn in one room against a real `stoa serve`
//! process, then every count the server reports must come back to its baseline (see
//! `stoa_tests::soak`; `scripts/soak.sh` runs the long version).
//!
//! It starts the real binary rather than an in-process server because descriptors, threads,
//! RSS and tokio's alive tasks are per process: in-process they would mix the server's with
//! the test clients' own. The binary is `target/release/stoa`, which `cargo test --release
//! --workspace` builds for the server's own tests (or set `STOA_BIN`).

use stoa_tests::soak::{Options, find_server_bin, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_come_back_to_the_baseline_after_a_minute_of_churn() {
    let bin = find_server_bin().expect(
        "no target/release/stoa beside the test: run `cargo build --release -p stoa` or set STOA_BIN",
    );
    let seed = std::env::var("STOA_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut options = Options {
        server_bin: Some(bin),
        seed,
        ..Options::short()
    };
    // Only for running the test many times in a row: a shorter churn, the same kinds of it.
    if let Some(secs) = std::env::var("STOA_SOAK_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.churn = std::time::Duration::from_secs(secs);
    }
    let report = run(options).await.expect("the soak runs");
    let text = report.text();
    println!("{text}");
    assert!(report.passed(), "{text}");
    let did = |name: &str| {
        report
            .activity
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    };
    // The churn has to have happened for the comparison to mean anything.
    assert!(did("lives") >= 20, "{text}");
    for kind in [
        "dropped_and_resumed",
        "dropped_never_resumed",
        "hands_raised",
        "stage_invites",
        "speaker_turns",
        "media_vanished",
        "media_closed_with_goodbye",
    ] {
        assert!(did(kind) > 0, "no {kind} in the churn\n{text}");
    }
    assert!(report.media.rtp_received > 1000, "{text}");
}
