//! Embeds the browser client (`client-web/`) in the binary: generates a table of its files,
//! each included with `include_bytes!`, so one binary serves everything.

use std::fmt::Write as _;
use std::path::Path;

/// What may be served; anything else in the folder (notes, editor files) is left out.
const SERVED: &[&str] = &[
    "html",
    "js",
    "json",
    "css",
    "svg",
    "png",
    "ico",
    "webmanifest",
    "wav",
];

fn main() {
    // Read when the script runs, not when it was compiled: cargo reuses a compiled build script
    // across checkouts of the same workspace (their paths hash alike), and a path baked in by
    // `env!` would then name another checkout's folder.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../client-web");
    println!("cargo:rerun-if-changed={}", dir.display());
    if !dir.is_dir() {
        println!(
            "cargo:warning=no browser client at {}: this build serves its pages as 503 client_missing",
            dir.display()
        );
    }
    let mut files: Vec<(String, String)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let served = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| SERVED.contains(&e));
            if path.is_file() && served && !name.starts_with('.') {
                println!("cargo:rerun-if-changed={}", path.display());
                let absolute = path.canonicalize().expect("client-web file path");
                files.push((name.to_owned(), absolute.display().to_string()));
            }
        }
    }
    files.sort();
    let mut out = String::from("/// The browser client's files: (name, content).\n");
    out.push_str("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (name, path) in &files {
        writeln!(out, "    ({name:?}, include_bytes!({path:?})),").unwrap();
    }
    out.push_str("];\n");
    let target = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("client_assets.rs");
    std::fs::write(target, out).expect("write client_assets.rs");
}
