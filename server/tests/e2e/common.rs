//! Shared by the tests that run the real `stoa` binary: starting `stoa serve` as a child
//! process on an ephemeral port and reading what its banner says.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_stoa");

pub struct Served {
    pub child: Child,
    /// The base URL the banner printed.
    pub url: String,
    /// The demo room's moderator link, when the demo room is on.
    pub link: Option<String>,
}

/// Starts `stoa serve` with `data` as its folder and reads the banner (up to the demo link
/// when `demo` is set). Logs go to the test's stderr only at `log_level`.
pub fn serve(data: &Path, demo: bool, log_level: &str) -> Served {
    serve_with_args(data, demo, log_level, &[])
}

/// Like [`serve`], with more arguments for `stoa serve` (e.g. `--config`).
pub fn serve_with_args(
    data: &Path,
    demo: bool,
    log_level: &str,
    extra: &[&std::ffi::OsStr],
) -> Served {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra);
    if !demo {
        command.arg("--no-demo");
    }
    let mut child = command
        .env_remove("STOA_API_KEY")
        .env("RUST_LOG", log_level)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("stoa starts");
    let (url, link) = read_banner(&mut child, demo);
    Served { child, url, link }
}

/// Reads a starting `stoa serve`'s banner from its piped standard output: the base URL, and
/// the demo room's link when `demo` is set. Standard output is drained afterwards, so the
/// server never writes into a closed pipe.
pub fn read_banner(child: &mut Child, demo: bool) -> (String, Option<String>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut link = None;
    while url.is_none() || (demo && link.is_none()) {
        let line = lines.next().expect("banner line").unwrap();
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Stoa is running at ") {
            url = Some(rest.to_owned());
        }
        if line.contains("/i/") {
            link = Some(line.to_owned());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (url.unwrap(), link)
}
