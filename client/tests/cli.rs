//! The `stoa-client` command line: what it says when it cannot start. (Its joining, speaking
//! and listening are the library's, tested against a real server in `tests/tests/e2e/client.rs`
//! and by the browser tests, which run this binary as a speaker: this test also makes
//! `cargo test --workspace` build it for them.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stoa-client");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("stoa-client runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_link_it_prints_its_usage_and_exits_2() {
    let (code, err) = run(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("usage: stoa-client <invite link>"), "{err}");
    let (code, err) = run(&["--help"]);
    assert_eq!(code, 2);
    assert!(err.contains("--tone HZ"), "{err}");
}

#[test]
fn bad_arguments_are_named() {
    let (code, err) = run(&["ftp://example.org/i/abc"]);
    assert_eq!(code, 2);
    assert!(err.contains("ftp://example.org"), "{err}");
    let (code, err) = run(&["http://127.0.0.1:9/i/abc", "--tone", "loud"]);
    assert_eq!(code, 2);
    assert!(err.contains("--tone takes Hz"), "{err}");
    let (code, err) = run(&["http://127.0.0.1:9/i/abc", "--volume", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("unexpected argument \"--volume\""), "{err}");
}

#[test]
fn a_server_that_is_not_there_is_an_error_not_a_hang() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let (code, err) = run(&[
        "http://127.0.0.1:9/i/abcdefghijklmnopqrstuv",
        "--name",
        "Lee",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("stoa-client: "), "{err}");
}
