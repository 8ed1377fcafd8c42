//! Runs the browser tests (`tests/browser/`: Playwright driving Debian's Chromium, puppeteer
//! driving Firefox ESR over WebDriver BiDi inside a private network namespace) against this
//! build's `stoa` binary, so the README's test command covers the web client too. Needs
//! Node.js, npm, /usr/bin/chromium, /usr/bin/firefox-esr, `ip` and root for the namespace
//! (`.ci/run` installs them).

use std::path::Path;
use std::process::Command;

#[test]
fn the_web_client_works_in_chromium_and_firefox() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    for (tool, hint) in [
        ("node", "install Node.js (apt-get install nodejs npm)"),
        ("npm", "install npm (apt-get install npm)"),
    ] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(found, "the browser tests need `{tool}`: {hint}");
    }
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the browser tests need Debian's Chromium: apt-get install chromium"
    );
    assert!(
        Path::new("/usr/bin/firefox-esr").exists(),
        "the browser tests need Debian's Firefox ESR: apt-get install firefox-esr"
    );
    let installed = ["playwright-core", "puppeteer-core", "typescript"]
        .iter()
        .all(|m| dir.join("node_modules").join(m).exists());
    if !installed {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/browser failed");
    }
    // The broadcast tests' speaker is the `stoa-client` binary of the client library, built
    // beside this binary by `cargo test --workspace` (or `cargo build --release -p stoa-client`).
    let client = Path::new(env!("CARGO_BIN_EXE_stoa")).with_file_name("stoa-client");
    let status = Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("STOA_BIN", env!("CARGO_BIN_EXE_stoa"))
        .env("STOA_CLIENT_BIN", &client)
        .status()
        .expect("npm runs");
    assert!(
        status.success(),
        "the browser tests failed (see their output above)"
    );
}
