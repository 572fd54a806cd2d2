//! packaging/riemann/riemann.config cannot run here (no Riemann server), so its syntax is proven
//! with the real Clojure reader. (service/tests/riemann.rs checks that it documents every event
//! usersvc really sends.)

use std::path::PathBuf;
use std::process::Command;

fn packaging(file: &str) -> PathBuf {
    testbed::workspace_root()
        .join("packaging/riemann")
        .join(file)
}

fn read_forms(config: &std::path::Path) -> std::process::Output {
    Command::new("clojure")
        .arg(packaging("check_config.clj"))
        .arg(config)
        .output()
        .unwrap_or_else(|e| {
            panic!("clojure is missing ({e}): apt-get install clojure (make test does)")
        })
}

#[test]
fn shipped_config_reads_as_clojure() {
    let out = read_forms(&packaging("riemann.config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forms: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("forms: ")
        .and_then(|n| n.parse().ok())
        .expect("a form count");
    assert!(forms >= 5, "{forms} forms");

    // The checker does catch broken syntax.
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.config");
    let text = std::fs::read_to_string(packaging("riemann.config")).expect("config");
    std::fs::write(&broken, text.trim_end().trim_end_matches(')')).expect("write");
    assert!(
        !read_forms(&broken).status.success(),
        "unbalanced parens must fail"
    );
}
