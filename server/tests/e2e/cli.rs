//! The `stoa` binary as a user runs it: `stoa serve` prints the URL, the key location and a
//! demo link; the admin commands talk to it; SIGTERM stops it cleanly.

use crate::common;

use std::path::Path;
use std::process::{Child, Command};

use crate::common::{BIN, Served};

/// Starts `stoa serve` with its demo room: the child, the base URL and the printed link.
fn serve(data: &Path) -> (Child, String, String) {
    let Served { child, url, link } = common::serve(data, true, "warn");
    (child, url, link.expect("a demo link"))
}

fn admin(data: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--server", server, "--data-dir"])
        .arg(data)
        .env_remove("STOA_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stoa {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "stoa exited with {exit}");
}

#[tokio::test]
async fn serve_prints_a_working_link_and_admin_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, url, link) = serve(&data);
    assert!(link.starts_with(&format!("{url}/i/")), "{link}");

    // The printed link is redeemable as a moderator of the demo room.
    let http = reqwest::Client::new();
    let joined: serde_json::Value = http
        .post(format!("{url}/api/v1/join"))
        .json(&serde_json::json!({ "invite": link, "display_name": "Me" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(joined["role"], "moderator", "{joined}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("operator.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key file is readable by others");
    }

    let created = admin(&data, &url, &["room", "create", "--title", "From the CLI"]);
    let room = created.split('\t').next().unwrap().to_owned();
    assert!(room.starts_with("rm_"), "{created}");
    let listed = admin(&data, &url, &["room", "list"]);
    assert!(
        listed.contains("Demo room") && listed.contains("From the CLI"),
        "{listed}"
    );
    let invite = admin(
        &data,
        &url,
        &[
            "invite",
            "create",
            "--room",
            &room,
            "--role",
            "speaker",
            "--max-uses",
            "3",
        ],
    );
    assert!(invite.trim().starts_with(&format!("{url}/i/")), "{invite}");
    terminate(child);

    // A second start on the same folder keeps the key, replaces the startup link.
    let (child, url2, link2) = serve(&data);
    assert_ne!(link, link2);
    let old = http
        .post(format!("{url2}/api/v1/join"))
        .json(&serde_json::json!({ "invite": link, "display_name": "Me" }))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404, "the previous startup link is revoked");
    let listed = admin(&data, &url2, &["room", "list"]);
    assert!(listed.contains("From the CLI"));
    terminate(child);
}

#[test]
fn bad_configuration_is_reported() {
    let out = Command::new(BIN)
        .args(["serve", "--public-url", "ftp://nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("public_url"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stoa.toml");
    std::fs::write(&file, "bind = \"127.0.0.1:1\"\nunknown_key = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_key"));
}
