//! The folders are the layers, and this test keeps them so: it reads every `crate::` and
//! `super::` path in `src/` and fails on one a layer may not take, naming the file and line.
//!
//! - `sansio` (protocols, session, workloads, stats, units) imports only itself, and no
//!   syscall crate;
//! - `os` imports itself and `sansio`; the transports (`shm`, `queue`) those and each other
//!   (the queue API runs over shared memory);
//! - `engine` imports `sansio`, `os` and `shm`, and an engine's file never another engine's
//!   (only the shared plumbing: `mod.rs`, `conns`, `nonblocking`, `blocking`);
//! - `loadgen` imports `sansio`, `os` and the transports, never `engine`: it measures engines;
//! - `lab::report` imports only `lab::results` and `sansio::stats` (it reads files, never
//!   runs anything); the rest of `lab` anything but the command line;
//! - only the command line (`cli/`, run by `main.rs`) knows everything.

use std::path::{Path, PathBuf};

/// The layer a source file belongs to, by its folder.
fn layer_of(path: &Path) -> &'static str {
    let rel = path
        .strip_prefix(src())
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/");
    match rel.split('/').collect::<Vec<_>>().as_slice() {
        ["lab", "report", ..] => "lab::report",
        [dir, _, ..] => match *dir {
            "sansio" => "sansio",
            "os" => "os",
            "engine" => "engine",
            "shm" => "shm",
            "queue" => "queue",
            "loadgen" => "loadgen",
            "lab" => "lab",
            "cli" => "cli",
            other => panic!("src/{other}/ is not a layer this test knows: add it and its rule"),
        },
        ["main.rs"] => "cli",
        ["lib.rs"] | ["test_alloc.rs"] => "root",
        _ => panic!("src/{rel} sits outside every layer: put it in one"),
    }
}

/// What a layer may name after `crate::`: first path segments, or `segment::module` pairs.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "sansio" => &["sansio"],
        "os" => &["os", "sansio", "uring_op", "syscall"],
        "shm" => &["shm", "os", "sansio", "syscall"],
        "queue" => &["queue", "shm", "os", "sansio", "test_alloc"],
        "engine" => &[
            "engine",
            "sansio",
            "os",
            "shm",
            "uring_op",
            "syscall",
            "test_alloc",
        ],
        "loadgen" => &[
            "loadgen",
            "sansio",
            "os",
            "shm",
            "queue",
            "uring_op",
            "test_alloc",
        ],
        "lab::report" => &["lab::results", "lab::report", "sansio::stats"],
        "lab" => &["lab", "loadgen", "engine", "os", "sansio", "shm", "queue"],
        "root" | "cli" => &[],
        _ => unreachable!(),
    }
}

/// Engine files every engine may use: the shared plumbing, not another I/O model.
const ENGINE_PLUMBING: [&str; 4] = ["conns", "nonblocking", "blocking", "run_loops"];

/// Syscall crates the sans-IO core must not name.
const SYSCALL_CRATES: [&str; 6] = [
    "libc::",
    "rustix::",
    "socket2::",
    "io_uring::",
    "smoltcp::",
    "nix::",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` in a line of code (comments are left out), as `a` and `a::b`.
fn crate_paths(code: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` and `iolab_crate::` are other names.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let ident = |s: &str| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        };
        let first = ident(rest);
        let second = rest[first.len()..]
            .strip_prefix("::")
            .map(ident)
            .unwrap_or_default();
        found.push((first.clone(), format!("{first}::{second}")));
    }
    found
}

/// The rule broken by `code` in a file of `layer` named `file`, if any.
fn violations(layer: &str, file: &str, code: &str) -> Vec<String> {
    let mut bad = Vec::new();
    if layer != "root" && layer != "cli" {
        let allow = allowed(layer);
        for (first, pair) in crate_paths(code) {
            if !allow.iter().any(|a| *a == first || *a == pair) {
                bad.push(format!(
                    "{layer} may not import crate::{pair} (it may: {})",
                    allow.join(", ")
                ));
            }
        }
    }
    if layer == "sansio" {
        for c in SYSCALL_CRATES {
            // A path that starts with the crate's name (`unix::` is not `nix::`).
            let named = code
                .match_indices(c)
                .any(|(at, _)| !code[..at].ends_with(|ch: char| ch.is_alphanumeric() || ch == '_'));
            if named {
                bad.push(format!("sansio names the syscall crate {c} (it does no I/O)"));
            }
        }
    }
    if layer == "engine" && file != "mod.rs" {
        for part in code.split("super::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let is_engine_file = src().join("engine").join(format!("{name}.rs")).is_file();
            if is_engine_file && !ENGINE_PLUMBING.contains(&name.as_str()) {
                bad.push(format!("an engine uses another engine's file super::{name}"));
            }
        }
    }
    bad
}

#[test]
fn every_layer_imports_only_what_its_rule_allows() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    files.sort();
    assert!(
        files.len() > 40,
        "read {} files: the source tree was not found",
        files.len()
    );
    let mut broken = Vec::new();
    for path in &files {
        let layer = layer_of(path);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for why in violations(layer, &name, code) {
                broken.push(format!(
                    "{}:{}: {why}\n    {}",
                    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} broken layer rule(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// The checker itself: each rule catches a line that breaks it, and passes one that keeps it.
#[test]
fn the_checker_catches_each_kind_of_broken_import() {
    let caught = |layer, file, code| !violations(layer, file, code).is_empty();
    assert!(caught("loadgen", "mod.rs", "use crate::engine::EngineKind;"));
    assert!(!caught(
        "loadgen",
        "mod.rs",
        "use crate::os::cpu::pin_current_thread;"
    ));
    assert!(caught("sansio", "frame.rs", "use crate::os::sys;"));
    assert!(caught("sansio", "frame.rs", "let fd = libc::socket(0, 0, 0);"));
    assert!(caught("lab::report", "mod.rs", "use crate::lab::sweep::run;"));
    assert!(!caught(
        "lab::report",
        "mod.rs",
        "use crate::lab::results::knees;"
    ));
    assert!(caught("engine", "epoll.rs", "use super::uring::UringLoop;"));
    assert!(!caught("engine", "epoll.rs", "use super::nonblocking::LoopCore;"));
    assert!(caught("os", "sys.rs", "crate::loadgen::run(cfg)"));
    assert!(!caught("os", "sys.rs", "$crate::os::sys::check"));
    assert!(!caught(
        "sansio",
        "static_files.rs",
        "std::os::unix::fs::symlink(a, b)"
    ));
}
