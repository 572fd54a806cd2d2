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

/// `riemann-probe query true` against a sink in `fault`: exit code, stderr, peak RSS (KiB).
fn query_against(fault: testbed::riemann::Fault) -> (Option<i32>, String, u64) {
    let sink = testbed::riemann::Sink::start();
    sink.set_fault(fault);
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_riemann-probe"))
        .args(["--server", &sink.tcp_addr().to_string(), "query", "true"])
        .output()
        .expect("/usr/bin/time (apt-get install time; make test does)");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time: {err}"));
    (out.status.code(), err, rss)
}

#[test]
fn a_flood_of_empty_events_is_refused_in_bounded_memory() {
    // 8 MiB of empty events (4 million) decoded whole took 929 MB; at the 16 MiB byte cap, twice.
    for bytes in [8 << 20, 64 << 20] {
        let (code, err, rss_kib) = query_against(testbed::riemann::Fault::Flood(bytes));
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("over the limit of") && (err.contains("events") || err.contains("bytes")),
            "names the cap: {err}"
        );
        assert!(
            rss_kib < 100 * 1024,
            "peak RSS {rss_kib} KiB for a {bytes}-byte flood"
        );
    }
}

#[test]
fn a_server_s_error_is_shown_escaped() {
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J".to_owned() + &"x".repeat(10_000);
    let (code, err, _) = query_against(testbed::riemann::Fault::NotOk(hostile));
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    assert!(err.contains("\\u{1b}]0;pwned\\u{7}"), "{err}");
    assert!(
        err.lines().all(|l| l.chars().count() < 400),
        "clipped: {err}"
    );
}

/// `--ttl` takes a duration as every duration flag of the toolkit does (`90s`, `1m 30s`, or a
/// bare number of seconds): `--ttl 90s` was "invalid float literal".
#[test]
fn ttl_takes_a_duration() {
    let run = |ttl: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
            .args([
                "--server",
                "127.0.0.1:1",
                "send",
                "--service",
                "x",
                "--ttl",
                ttl,
            ])
            .output()
            .expect("run riemann-probe");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for ok in ["90s", "1m 30s", "90"] {
        let (code, err) = run(ok);
        // Parsed: the failure is the refused connection, not the flag.
        assert_eq!(code, Some(1), "{ok}: {err}");
        assert!(err.contains("cannot connect"), "{ok}: {err}");
    }
    let (code, err) = run("soon");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("write it like 500ms, 30s, 1m"), "{err}");
}
