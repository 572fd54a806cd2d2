//! Failures print as a CLI should: `riemann-probe: what failed` and at most one line saying what
//! to do; no "Caused by:" chain, no backtrace even with RUST_BACKTRACE set.

use std::process::Command;

#[test]
fn refused_connection_is_one_message_and_a_hint() {
    let out = Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args(["--server", "127.0.0.1:1", "send", "--service", "x"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run riemann-probe");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("riemann-probe: cannot connect to 127.0.0.1:1: ")
            && lines[0].contains("refused"),
        "{err}"
    );
    assert_eq!(lines[1], "is Riemann listening on 127.0.0.1:1?");
}

#[test]
fn a_bad_flag_is_reported_as_such_even_with_riemann_down() {
    let out = Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args([
            "--server",
            "127.0.0.1:1",
            "send",
            "--service",
            "x",
            "--metric",
            "abc",
        ])
        .output()
        .expect("run riemann-probe");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metric \"abc\" is not a number") && !err.contains("listening"),
        "{err}"
    );
}
