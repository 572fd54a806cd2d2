//! Size rules, read from the text as rustfmt lays it out (`make test` checks formatting first):
//! no function of a crate's source over [`MAX_FN_LINES`], no file of usersvc or the deployer
//! over [`MAX_FILE_LINES`] before its tests, and no comment line wider than [`MAX_COMMENT`]
//! characters (rustfmt wraps code, not comments). A long function is several steps that deserve
//! names; a long file is several jobs. Test code (from a `#[cfg(test)]` at the start of a line
//! on) is not counted.

use std::path::Path;

/// Lines a function may take, its signature and closing brace included.
pub const MAX_FN_LINES: usize = 60;
/// Lines a file of service or deployer may hold before its tests.
pub const MAX_FILE_LINES: usize = 450;
/// Characters a comment line may take, its indentation included.
pub const MAX_COMMENT: usize = 100;

/// The 1-based numbers of the comment lines of `text` wider than `max` characters.
pub fn wide_comments(text: &str, max: usize) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("//") && l.chars().count() > max)
        .map(|(i, _)| i + 1)
        .collect()
}

/// The lines of `text` before its tests: up to the first `#[cfg(test)]` at the start of a line
/// (an indented one marks a single item, not where the tests begin).
fn before_tests(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .collect()
}

/// Each function of `text` longer than `max` lines: its first line (1-based), length and name.
/// A function is a line `[pub[(…)]] [const] [async] [unsafe] fn name` whose body ends at the
/// first later line that is its indentation and `}`; a declaration without a body (a trait's,
/// ending in `;` before any `{`) is skipped.
pub fn long_functions(text: &str, max: usize) -> Vec<(usize, usize, String)> {
    let lines = before_tests(text);
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((indent, name)) = fn_start(line) else {
            continue;
        };
        if line.trim_end().ends_with('}') {
            continue; // `fn f() {}`: one line
        }
        let signature_end = lines[i..]
            .iter()
            .position(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'));
        if signature_end.is_none_or(|at| lines[i + at].trim_end().ends_with(';')) {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + 1..].iter().position(|l| *l == close) {
            let len = end + 2;
            if len > max {
                out.push((i + 1, len, name));
            }
        }
    }
    out
}

/// The indentation and name of a line that starts a function.
fn fn_start(line: &str) -> Option<(&str, String)> {
    let indent = &line[..line.len() - line.trim_start().len()];
    let mut rest = line.trim_start();
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(r) => r.split_once(") ")?.1,
            None => r.strip_prefix(' ')?,
        };
    }
    for word in ["const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    let name: String = rest
        .strip_prefix("fn ")?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some((indent, name))
}

/// The lines of `text` before its tests, when over `max`.
pub fn long_file(text: &str, max: usize) -> Option<usize> {
    let n = before_tests(text).len();
    (n > max).then_some(n)
}

/// Every rule broken under the workspace at `root`, one line each.
pub fn broken(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let crates = std::fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    for dir in crates.flatten().map(|e| e.path()) {
        let src = dir.join("src");
        if !dir.join("Cargo.toml").is_file() || !src.is_dir() {
            continue;
        }
        let checks_files = dir.ends_with("service") || dir.ends_with("deployer");
        for file in crate::tidy::sources(&src) {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let shown = file.strip_prefix(root).unwrap_or(&file).display();
            for (line, len, name) in long_functions(&text, MAX_FN_LINES) {
                out.push(format!(
                    "{shown}:{line}: fn {name} is {len} lines (at most {MAX_FN_LINES})"
                ));
            }
            for line in wide_comments(&text, MAX_COMMENT) {
                out.push(format!(
                    "{shown}:{line}: a comment wider than {MAX_COMMENT} characters"
                ));
            }
            if let Some(n) = long_file(&text, MAX_FILE_LINES).filter(|_| checks_files) {
                out.push(format!(
                    "{shown}: {n} lines before its tests (at most {MAX_FILE_LINES})"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, lines: usize, indent: &str) -> String {
        let mut s = format!("{indent}pub(crate) async fn {name}() {{\n");
        for _ in 0..lines - 2 {
            s.push_str(&format!("{indent}    step();\n"));
        }
        s.push_str(&format!("{indent}}}\n"));
        s
    }

    #[test]
    fn a_function_is_measured_from_its_signature_to_its_closing_brace() {
        let text = [
            body("at_the_limit", 60, ""),
            body("over_it", 61, "    "),
            "    fn declared(&self) -> u8;\n".to_owned(),
            "    fn empty() {}\n".to_owned(),
            "#[cfg(test)]\n".to_owned(),
            body("a_test", 100, "    "),
        ]
        .concat();
        assert_eq!(
            long_functions(&text, MAX_FN_LINES),
            vec![(61, 61, "over_it".to_owned())]
        );
    }

    #[test]
    fn a_file_is_measured_before_its_tests() {
        let at = "x\n".repeat(450);
        assert_eq!(long_file(&at, MAX_FILE_LINES), None);
        assert_eq!(long_file(&format!("{at}x\n"), MAX_FILE_LINES), Some(451));
        assert_eq!(
            long_file(&format!("{at}#[cfg(test)]\nx\n"), MAX_FILE_LINES),
            None
        );
        let item = format!("x\n    #[cfg(test)]\n{at}");
        assert_eq!(
            long_file(&item, MAX_FILE_LINES),
            Some(452),
            "one item's attribute"
        );
    }

    #[test]
    fn a_comment_is_measured_in_characters() {
        let at = format!("    // {}", "é".repeat(93));
        let text = format!("{at}\n{at}é\nlet s = \"{}\";\n", "x".repeat(120));
        assert_eq!(wide_comments(&text, MAX_COMMENT), vec![2]);
    }

    #[test]
    fn the_workspace_keeps_its_functions_and_files_short() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let broken = broken(&root);
        assert!(broken.is_empty(), "{}", broken.join("\n"));
    }
}
