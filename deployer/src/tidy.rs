//! The deployer's import rules (ARCHITECTURE.md), checked on the parsed source with
//! `testbed::tidy`: privacy alone cannot say "a command never imports another".

use std::path::Path;
use testbed::tidy::{Source, names_after, place, sources};

#[test]
fn commands_never_import_one_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let commands = src.join("commands");
    let files = sources(&commands);
    let names: Vec<String> = files
        .iter()
        .map(|f| place(&commands, f).0)
        .filter(|n| n != "mod")
        .collect();
    assert!(names.len() >= 7, "found only {names:?}");
    let mut broken = Vec::new();
    for file in &files {
        let command = place(&commands, file).0;
        if command == "mod" {
            continue;
        }
        let (_, module) = place(&src, file);
        for other in Source::read(file, &module).names_after(&["commands"]) {
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
    let lib = Source::read(&src.join("lib.rs"), &[]);
    let exported = names_after(&lib.exported, &["commands"]);
    assert!(exported.contains("rollback"), "{exported:?}");
    let mut broken = Vec::new();
    for file in sources(&src) {
        let (part, module) = place(&src, &file);
        if ["lib", "main", "tidy"].contains(&part.as_str()) {
            continue;
        }
        let shown = file.strip_prefix(&src).unwrap_or(&file).display();
        let source = Source::read(&file, &module);
        if source.globs(&[]) || source.globs(&["commands"]) {
            broken.push(format!("{shown} imports by a glob"));
        }
        let from_root = source.imports();
        let named: Vec<_> = from_root.intersection(&exported).collect();
        if !named.is_empty() || (part != "commands" && from_root.contains("commands")) {
            broken.push(format!("{shown} names a command from the root: {named:?}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
