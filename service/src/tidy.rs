//! usersvc's import rules (ARCHITECTURE.md), checked on the parsed source with `testbed::tidy`:
//! privacy alone cannot say "the store never imports the write path".

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use testbed::tidy::{Source, place, sources};

/// The parts of the crate, bottom up, and what each may import (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("doc", &[]),
    ("atomic_file", &[]),
    ("release", &[]),
    ("tasks", &[]),
    ("setting_paths", &[]),
    // Process lifecycle (serving, handing over, upgrading): below the config it is set by.
    ("lifecycle", &["atomic_file", "setting_paths"]),
    ("store", &["doc", "atomic_file"]),
    ("users", &["store", "doc", "atomic_file", "tasks"]),
    ("pull", &["users", "doc"]),
    ("metrics", &["users", "release"]),
    (
        "api",
        &["users", "store", "pull", "metrics", "doc", "release"],
    ),
];

/// The top, which may import anything: it wires the parts together. A part in neither list
/// fails the check, so a new folder cannot go unchecked.
const TOP: &[&str] = &["lib", "main", "config", "import", "journal_command", "tidy"];

/// The write path's three jobs share only the state (`users/state.rs`), never one another.
const JOBS: &[&str] = &["commit", "supervise", "follow"];

#[test]
fn each_part_imports_only_the_parts_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let rules: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut broken = Vec::new();
    for file in &files {
        let (part, module) = place(&src, file);
        let shown = file.strip_prefix(&src).unwrap_or(file).display();
        let Some(allowed) = rules.get(part.as_str()) else {
            if !TOP.contains(&part.as_str()) {
                broken.push(format!(
                    "{shown}: part {part:?} is in neither LAYERS nor TOP"
                ));
            }
            continue;
        };
        for name in Source::read(file, &module).imports() {
            if name != part && !allowed.contains(&name.as_str()) {
                broken.push(format!("{shown} imports crate::{name}"));
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
        let module = ["users".to_owned(), (*job).to_owned()];
        let named: BTreeSet<String> =
            Source::read(&users.join(format!("{job}.rs")), &module).names_after(&["users"]);
        for other in JOBS.iter().filter(|o| *o != job) {
            assert!(!named.contains(*other), "users/{job}.rs imports {other}");
        }
    }
}
