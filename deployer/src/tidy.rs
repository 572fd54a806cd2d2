//! The deployer's import rules (ARCHITECTURE.md), checked on the source with `testbed::tidy`'s
//! readers: privacy alone cannot say "a command never imports another".

use std::path::Path;
use testbed::tidy::{code, names_after, place, sources};

#[test]
fn commands_never_import_one_another() {
    let commands = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
    let files = sources(&commands);
    let names: Vec<String> = files
        .iter()
        .map(|f| place(&commands, f).0)
        .filter(|n| n != "mod")
        .collect();
    assert!(names.len() >= 7, "found only {names:?}");
    let mut broken = Vec::new();
    for file in &files {
        let (command, depth) = place(&commands, file);
        if command == "mod" {
            continue;
        }
        // `super` chains: the one of `depth + 1` reaches the crate root, the one of `depth` the
        // commands' folder (a command file's `super`, a deploy/ child's `super::super`).
        let code = code(file)
            .replace(&"super::".repeat(depth + 1), "crate::")
            .replace(&"super::".repeat(depth), "crate::commands::");
        for other in names_after(&code, "commands::") {
            if other != command && names.contains(&other) {
                let shown = file.strip_prefix(&commands).unwrap_or(file).display();
                broken.push(format!("commands/{shown} imports the {other} command"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Nothing but `lib.rs` names a command, neither through `commands::` nor through the crate
/// root's re-exports (`crate::rollback`), nor by a glob that would bring them in.
#[test]
fn what_commands_share_never_imports_a_command() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = code(&src.join("lib.rs"));
    let exported = names_after(&lib, "pub use commands::");
    assert!(exported.contains("rollback"), "{exported:?}");
    let mut broken = Vec::new();
    for file in sources(&src) {
        let (part, depth) = place(&src, &file);
        if ["lib", "main", "tidy"].contains(&part.as_str()) {
            continue;
        }
        let shown = file
            .strip_prefix(&src)
            .unwrap_or(&file)
            .display()
            .to_string();
        let mut code = code(&file).replace(&"super::".repeat(depth), "crate::");
        if part == "commands" && depth > 1 {
            // A command's chain to the commands' folder (`use super::*` in `rollback.rs`).
            code = code.replace(&"super::".repeat(depth - 1), "crate::commands::");
        }
        if code.contains("crate::*") || code.contains("commands::*") {
            broken.push(format!("{shown} imports by a glob"));
        }
        let from_root = names_after(&code, "crate::");
        let named: Vec<_> = from_root.intersection(&exported).collect();
        if !named.is_empty() || (part != "commands" && from_root.contains("commands")) {
            broken.push(format!("{shown} names a command from the root: {named:?}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
