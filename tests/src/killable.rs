//! A `stoa serve` process of a test's own, so it can be killed with SIGKILL mid-recording, and
//! a look at how far an Ogg file written so far goes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Process {
    pub child: Child,
    pub url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// SIGKILL: no chance to close anything.
    pub fn kill_9(&self) {
        let pid = self.child.id() as i32;
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }
}

/// `stoa serve` on an ephemeral port with `data` as its folder and `key` as the operator key,
/// once it says it is running.
pub fn serve(data: &Path, key: &str) -> Process {
    let bin = crate::soak::find_server_bin().expect("the stoa binary (cargo build --release)");
    let mut child = Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--no-demo", "--data-dir"])
        .arg(data)
        .env("STOA_API_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("stoa starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server's banner")
            .expect("readable output");
        if let Some(rest) = line.trim().strip_prefix("Stoa is running at ") {
            break rest.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Process { child, url }
}

/// A fresh operator key.
pub fn operator_key() -> String {
    format!(
        "stoa_sk_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The granule position of the last complete Ogg page in `bytes` (samples at 48 kHz).
pub fn last_granule(bytes: &[u8]) -> Option<u64> {
    let mut at = 0;
    let mut granule = None;
    while bytes.len() >= at + 27 && &bytes[at..at + 4] == b"OggS" {
        let segments = bytes[at + 26] as usize;
        let table = bytes.get(at + 27..at + 27 + segments)?;
        let len = 27 + segments + table.iter().map(|&l| l as usize).sum::<usize>();
        if bytes.len() < at + len {
            break;
        }
        granule = Some(u64::from_le_bytes(
            bytes[at + 6..at + 14].try_into().unwrap(),
        ));
        at += len;
    }
    granule
}
