//! The architecture's import rules (ARCHITECTURE.md), checked on the source: privacy alone cannot
//! say "the store never imports the write path". Test code is exempt: a test may build any
//! peer it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parts of the crate, bottom up, and what each may import (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("doc", &[]),
    ("atomic_file", &[]),
    ("redact", &[]),
    ("release", &[]),
    ("tasks", &[]),
    ("store", &["doc", "atomic_file"]),
    ("users", &["store", "doc", "atomic_file", "tasks"]),
    ("pull", &["users", "doc", "redact"]),
    ("metrics", &["users", "release"]),
    (
        "api",
        &[
            "users", "store", "pull", "metrics", "doc", "redact", "release",
        ],
    ),
];

/// The write path's three jobs share only the state (`users/state.rs`), never one another.
const JOBS: &[&str] = &["commit", "supervise", "follow"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The part a source file belongs to: its folder, or its own name at the top.
fn part_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel.components().next().map_or_else(String::new, |c| {
        c.as_os_str().to_string_lossy().into_owned()
    });
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without its test module (by convention last, after `#[cfg(test)]`).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The top-level parts a piece of code names through `crate::`, including `use crate::{a, b}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(list) => list
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|n| n.trim().split("::").next().unwrap_or(""))
                .collect(),
            None => vec![
                rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or(""),
            ],
        };
        out.extend(
            names
                .into_iter()
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    out
}

#[test]
fn each_part_imports_only_the_parts_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rules: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut broken = Vec::new();
    for file in &files {
        let part = part_of(&src, file);
        let Some(allowed) = rules.get(part.as_str()) else {
            continue; // the top: lib, main, config, import, lifecycle may use anything
        };
        for name in imports(&code(file)) {
            if name != part && !allowed.contains(&name.as_str()) {
                broken.push(format!(
                    "{} imports crate::{name}",
                    file.strip_prefix(&src).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(files.len() > 20, "found only {} sources", files.len());
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_write_path_jobs_never_import_one_another() {
    let users = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/users");
    for job in JOBS {
        let code = code(&users.join(format!("{job}.rs")));
        for other in JOBS.iter().filter(|o| *o != job) {
            for path in [format!("super::{other}"), format!("users::{other}")] {
                assert!(!code.contains(&path), "users/{job}.rs imports {path}");
            }
        }
    }
}

#[test]
fn the_checker_reads_braced_and_plain_imports() {
    let code = "use crate::{doc::Entry, store};\nfn f() { crate::users::validate::x(); }";
    let found: Vec<String> = imports(code).into_iter().collect();
    assert_eq!(found, ["doc", "store", "users"]);
}
