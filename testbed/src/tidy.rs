//! Import rules checked on a crate's source (ARCHITECTURE.md's "Architecture Invariant" lines):
//! privacy alone cannot say "the store never imports the write path" or "commands never import
//! one another". A crate's `#[cfg(test)] mod tidy` lists its rules and uses these readers.
//! Test code is exempt: a test may build any peer it needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
pub fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The part a source file belongs to (its folder, or its own name at the top), and how deep
/// its module is (1: `crate::x`, whose `super` is the crate root).
pub fn place(src: &Path, file: &Path) -> (String, usize) {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let names: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let part = names.first().map_or("", |n| n.trim_end_matches(".rs"));
    let depth = names.len() - usize::from(names.last().is_some_and(|n| n == "mod.rs"));
    (part.to_owned(), depth.max(1))
}

/// The code of a file without its inline test module (`#[cfg(test)] mod tests { … }`, by
/// convention last). A test module declared in a file of its own (`mod tidy;`) stays: what
/// follows it is code.
pub fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let inline = text.match_indices("#[cfg(test)]\nmod ").find(|(at, _)| {
        let line = text[*at..].lines().nth(1).unwrap_or_default();
        line.trim_end().ends_with('{')
    });
    match inline {
        Some((at, _)) => text[..at].to_owned(),
        None => text,
    }
}

/// The items of a braced list, split at its top-level commas (`a, b::{c, d}` → `a`, `b::{c, d}`).
fn items(list: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim());
    out
}

/// The names that follow `prefix` in `code`: `prefix x`, and each item of `prefix {x, y::z}`
/// (nested braces too).
pub fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| {
        s.split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        match rest.strip_prefix('{') {
            Some(list) => {
                let mut depth = 1;
                let end = list
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(list.len(), |(i, _)| i);
                out.extend(items(&list[..end]).into_iter().map(ident));
            }
            None => {
                out.insert(ident(rest));
            }
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

/// The top-level parts a module `depth` deep names: through `crate::`, and through the chain
/// of `super::` that reaches the crate root from it.
pub fn imports(code: &str, depth: usize) -> BTreeSet<String> {
    let code = code.replace(&"super::".repeat(depth), "crate::");
    names_after(&code, "crate::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_reads_every_way_of_naming_a_part() {
        let code =
            "use crate::{doc::{Entry, Record}, store};\nfn f() { crate::users::validate::x(); }";
        let found: Vec<String> = imports(code, 1).into_iter().collect();
        assert_eq!(found, ["doc", "store", "users"]);
        // From a top-level file `super` is the crate root; from a folder's child, `super::super`.
        assert_eq!(imports("use super::api::methods::Api;", 1).len(), 1);
        let child = "use super::state::Shared;\nuse super::super::api::rpc;";
        assert_eq!(imports(child, 2).into_iter().collect::<Vec<_>>(), ["api"]);
        // A sibling named in a braced list.
        let job = "use super::{state::Shared, commit::Pending};";
        // A test module in a file of its own does not end the code; an inline one does.
        let dir = tempfile::tempdir().expect("temp dir");
        let lib = dir.path().join("lib.rs");
        let text = "mod a;\n#[cfg(test)]\nmod tidy;\npub use a::X;\n#[cfg(test)]\nmod tests {\n}\n";
        std::fs::write(&lib, text).expect("write");
        assert_eq!(
            super::code(&lib),
            "mod a;\n#[cfg(test)]\nmod tidy;\npub use a::X;\n"
        );
        assert!(names_after(job, "super::").contains("commit"));
    }
}
