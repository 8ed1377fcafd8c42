//! The crate's layering, as a table, and a test that reads every source file and fails on a
//! module that uses one of its own layer or above. Test-only; it changes nothing at run time.
//!
//! A module may use modules of lower layers only. The edges sit on the domain, the domain on
//! the wire format and media, everything on the foundations. Test modules (`#[cfg(test)] mod
//! … { … }`) are not checked: a test may reach for a fixture anywhere.

use std::path::{Path, PathBuf};

/// Every top-level module of `server/src`, lowest layer first. `main.rs` and `lib.rs` are the
/// crate's roots and may use anything (so may this test).
pub(crate) const LAYERS: &[(&str, u8, &str)] = &[
    ("clock", 0, "time as a value"),
    ("config", 0, "settings"),
    ("connection", 0, "bounds on accepted TCP connections"),
    (
        "http_client",
        0,
        "outgoing HTTP clients, on rustls with ring",
    ),
    ("metrics", 1, "counters and gauges"),
    (
        "control",
        1,
        "durable facts: rooms, invites, bans, audit (the store)",
    ),
    ("session", 2, "operator key, session and resume tokens"),
    ("cluster", 2, "nodes and where each live room lives (Redis)"),
    ("wire", 2, "the signaling wire format and close codes"),
    ("media", 2, "WebRTC workers, slots, forwarding"),
    (
        "webhooks",
        2,
        "Standard Webhooks: event bodies, signatures, the outbox's sender",
    ),
    (
        "broadcast",
        3,
        "the stage mixed once per room, LL-HLS (fed by media's tap)",
    ),
    ("room", 3, "live rooms: the state machine and its task"),
    ("signal", 4, "one session per signaling socket"),
    (
        "recording",
        4,
        "a room's mix written as Ogg Opus, and the recordings on disk",
    ),
    (
        "api",
        5,
        "HTTP: REST, the socket upgrade, OpenAPI, web assets",
    ),
    ("server", 6, "starting and stopping a whole server"),
    // Fuzz entry points drive every layer; nothing but tests may use them.
    ("fuzzing", 7, "fuzz harnesses"),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _, _)| *name == module)
        .map(|(_, layer, _)| *layer)
}

/// A use of `used` (a top-level module) by the file at `file`, line `line`.
#[derive(Debug, PartialEq, Eq)]
struct Use {
    file: PathBuf,
    line: usize,
    used: String,
}

/// Every top-level module a file's code (not its comments, not its test modules) refers to,
/// through `crate::…` paths (grouped ones included) or `super::` chains that climb out of the
/// file's own top-level module.
fn uses_in(file: &Path, module_path: &[String], text: &str) -> Vec<Use> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = code_of(lines[i]);
        // `#[cfg(test)]` followed by an inline module: skip to its closing brace.
        if line.trim() == "#[cfg(test)]"
            && let Some(next) = lines.get(i + 1)
            && is_inline_module(next)
        {
            i = skip_block(&lines, i + 1);
            continue;
        }
        let mut push = |used: &str| {
            // An empty name is this file's own text about paths (`"crate::"`), not a path.
            if used.is_empty() {
                return;
            }
            found.push(Use {
                file: file.to_owned(),
                line: i + 1,
                used: used.to_owned(),
            })
        };
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if after.starts_with('{') {
                for item in group_heads(after, &lines[i + 1..]) {
                    push(&item);
                }
            } else {
                push(ident(after));
            }
            rest = after;
        }
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            let mut depth = 0;
            let mut after = &rest[at..];
            while let Some(more) = after.strip_prefix("super::") {
                depth += 1;
                after = more;
            }
            // `module_path` names the file's module; each `super` goes one up from it.
            if depth >= module_path.len() {
                push(ident(after));
            }
            rest = after;
        }
        i += 1;
    }
    found
}

fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

fn is_inline_module(line: &str) -> bool {
    let t = code_of(line).trim();
    let t = ["pub ", "pub(crate) ", "pub(super) "]
        .iter()
        .find_map(|v| t.strip_prefix(v))
        .unwrap_or(t);
    t.starts_with("mod ") && t.ends_with('{')
}

/// The index of the line after the block that opens on line `start`.
fn skip_block(lines: &[&str], start: usize) -> usize {
    let mut depth = 0i32;
    for (i, line) in lines.iter().enumerate().skip(start) {
        for c in code_of(line).chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        if depth <= 0 {
            return i + 1;
        }
    }
    lines.len()
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first segment of each path in `{a::b, c, d::{e, f}}`, which may run over lines.
fn group_heads(first: &str, more: &[&str]) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = false;
    let text = std::iter::once(first)
        .chain(more.iter().copied().map(code_of))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_head = true,
            c if expect_head && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident(&text[at..]).to_owned());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("the source folder reads")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// `room/state/membership.rs` → `[room, state, membership]`; `room/mod.rs` → `[room]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.strip_suffix(".rs").unwrap_or(&last).to_owned();
    if stem != "mod" {
        parts.push(stem);
    }
    parts
}

/// Every use in the crate that goes sideways or up the table; also modules missing from it.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let path = module_path(relative);
        let own = path[0].as_str();
        if own == "lib" || own == "main" || own == "layering" {
            continue;
        }
        let Some(layer) = layer_of(own) else {
            problems.push(format!(
                "{}: module `{own}` is not in layering::LAYERS",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("a source file reads");
        for u in uses_in(relative, &path, &text) {
            if u.used == own {
                continue;
            }
            match layer_of(&u.used) {
                Some(used) if used < layer => {}
                Some(used) => problems.push(format!(
                    "{}:{}: `{own}` (layer {layer}) uses `{}` (layer {used})",
                    u.file.display(),
                    u.line,
                    u.used
                )),
                // `crate::Config` and the like: re-exports at the root, resolved elsewhere.
                None if u.used.starts_with(|c: char| c.is_ascii_uppercase()) => {}
                None => problems.push(format!(
                    "{}:{}: `{own}` uses `{}`, which is not in layering::LAYERS",
                    u.file.display(),
                    u.line,
                    u.used
                )),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_uses_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let problems = violations(&src);
        assert!(
            problems.is_empty(),
            "imports against the layering (see server/src/layering.rs and \
             docs/architecture.md):\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_scanner_sees_every_kind_of_path() {
        let file = Path::new("room/actor/task.rs");
        let path = module_path(file);
        assert_eq!(path, ["room", "actor", "task"]);
        let text = "\
//! Mentions crate::api in a comment, which is fine.
use crate::control::Store;
use crate::{api::AppState,
    signal::{self, run}};
use super::super::Thing;
use super::super::super::wire::Text;
fn f() { crate::media::close(); } // and crate::server here is a comment
#[cfg(test)]
mod tests {
    use crate::server;
}
fn g() { crate::clock::now(); }
";
        let used: Vec<(usize, String)> = uses_in(file, &path, text)
            .into_iter()
            .map(|u| (u.line, u.used))
            .collect();
        let expected = [
            (2, "control"),
            (3, "api"),
            (3, "signal"),
            (6, "wire"),
            (7, "media"),
            (12, "clock"),
        ];
        let expected: Vec<(usize, String)> =
            expected.iter().map(|(l, m)| (*l, m.to_string())).collect();
        assert_eq!(used, expected);
    }

    #[test]
    fn an_upward_use_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        std::fs::create_dir_all(src.join("room")).unwrap();
        std::fs::write(src.join("room/mod.rs"), "use crate::signal::run;\n").unwrap();
        std::fs::write(src.join("wire.rs"), "use crate::control::Role;\n").unwrap();
        std::fs::write(src.join("stray.rs"), "\n").unwrap();
        let problems = violations(src);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`room` (layer 3) uses `signal` (layer 4)"));
        assert!(problems[1].contains("`stray` is not in layering::LAYERS"));
    }
}
