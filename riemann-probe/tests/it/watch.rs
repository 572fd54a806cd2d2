//! `riemann-probe watch` as a process against the Riemann sink: host health, a plugin and a
//! command every interval, ttl'd events that expire once the watcher is killed, and a clean
//! exit on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testbed::riemann::Sink;

fn watcher(sink: &Sink, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args(["--server", &sink.tcp_addr().to_string(), "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start riemann-probe watch")
}

fn named(name: &'static str) -> impl Fn(&riemann_probe::Event) -> bool {
    move |e| e.service.as_deref() == Some(name)
}

#[test]
fn health_events_arrive_every_interval_and_expire_when_the_watcher_dies() {
    let sink = Sink::start();
    let mut w = watcher(
        &sink,
        &["--interval", "200ms", "--health", "--host", "app1"],
    );
    for name in ["cpu", "memory", "load", "disk /"] {
        let e = sink.wait_for(Duration::from_secs(10), named(name));
        assert_eq!(e.host.as_deref(), Some("app1"), "{e:?}");
        assert!(
            (e.ttl.unwrap_or(0.0) - 0.6).abs() < 1e-6,
            "ttl = 3 intervals: {e:?}"
        );
        let m = e.metric().expect("a metric");
        assert!(m.is_finite() && m >= 0.0, "{e:?}");
        assert!(
            matches!(e.state.as_deref(), Some("ok" | "warning" | "critical")),
            "{e:?}"
        );
        if name != "load" {
            assert!(m <= 1.0, "a fraction: {e:?}");
        }
    }
    // Every interval, not once.
    let first = sink
        .received()
        .iter()
        .filter(|e| named("memory")(e))
        .count();
    testbed::eventually("more memory events", Duration::from_secs(10), || {
        sink.received()
            .iter()
            .filter(|e| named("memory")(e))
            .count()
            >= first + 3
    });
    assert!(
        !sink.expired().iter().any(|e| named("memory")(e)),
        "alive: nothing expires"
    );

    w.kill().expect("kill -9");
    w.wait().expect("reap the killed probe");
    testbed::eventually("its events expire", Duration::from_secs(10), || {
        let expired = sink.expired();
        ["memory", "disk /"]
            .iter()
            .all(|n| expired.iter().any(|e| e.service.as_deref() == Some(n)))
    });
}

#[test]
fn a_plugin_and_a_command_on_an_interval_then_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = dir.path().join("check_thing");
    std::fs::write(
        &plugin,
        "#!/bin/sh\necho 'THING WARNING - 91% used | used=91%;90;95 free=9'\nexit 1\n",
    )
    .expect("write plugin");
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sink = Sink::start();
    let plugin = plugin.display().to_string();
    let mut nagios = watcher(&sink, &["--interval", "200ms", "--nagios", "--", &plugin]);
    let check = sink.wait_for(Duration::from_secs(10), named("check_thing"));
    assert_eq!(check.state.as_deref(), Some("warning"));
    assert_eq!(
        check.description.as_deref(),
        Some("THING WARNING - 91% used")
    );
    let used = sink.wait_for(Duration::from_secs(10), named("check_thing used"));
    assert_eq!(used.metric(), Some(91.0));

    let mut failing = watcher(
        &sink,
        &[
            "--interval",
            "200ms",
            "--command",
            "--service",
            "backup",
            "--",
            "sh",
            "-c",
            "echo no backup today; exit 3",
        ],
    );
    let backup = sink.wait_for(Duration::from_secs(10), named("backup"));
    assert_eq!(
        (
            backup.state.as_deref(),
            backup.metric(),
            backup.description.as_deref()
        ),
        (Some("critical"), Some(3.0), Some("no backup today"))
    );
    let mut passing = watcher(&sink, &["--interval", "200ms", "--command", "--", "true"]);
    let ok = sink.wait_for(Duration::from_secs(10), named("true"));
    assert_eq!((ok.state.as_deref(), ok.metric()), (Some("ok"), Some(0.0)));

    for w in [&mut nagios, &mut failing, &mut passing] {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(w.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let started = Instant::now();
        let status = loop {
            if let Some(s) = w.try_wait().expect("wait") {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "SIGTERM is a clean stop: {status}");
    }
}

#[test]
fn nothing_to_watch_or_a_program_without_its_kind_is_refused() {
    let sink = Sink::start();
    for (args, needle) in [
        (&["--interval", "1s"][..], "nothing to watch"),
        (&["--nagios"][..], "need the program after --"),
        (&["--", "true"][..], "needs --nagios or --command"),
        (&["--health", "--interval", "1ms"][..], "too short"),
        (
            &["--health", "--cpu-warning", "0.99", "--cpu-critical", "0.5"][..],
            "--cpu-warning",
        ),
    ] {
        let out = watcher(&sink, args).wait_with_output().expect("ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// What goes wrong locally is said on stderr, once when it starts and once when it ends: the
/// start, Riemann out of reach and back, a plugin that cannot run. `watch --nagios --
/// check_nothere` ran forever sending critical events and wrote nothing.
#[test]
fn the_watcher_says_what_goes_wrong_on_stderr_once() {
    let sink = Sink::start();
    sink.down();
    let w = watcher(
        &sink,
        &[
            "--interval",
            "200ms",
            "--nagios",
            "--",
            "/nonexistent/check_nothere",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    sink.up();
    sink.wait_for(Duration::from_secs(10), named("check_nothere"));
    std::thread::sleep(Duration::from_millis(600));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(w.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let out = w.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    let addr = sink.tcp_addr().to_string();
    let count = |needle: &str| err.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count(&format!(
            "watching /nonexistent/check_nothere every 200ms, sending to Riemann at {addr}"
        )),
        1,
        "{err}"
    );
    assert_eq!(
        count("cannot run /nonexistent/check_nothere"),
        1,
        "once, not every interval: {err}"
    );
    assert_eq!(
        count(&format!("cannot reach Riemann at {addr}")),
        1,
        "{err}"
    );
    assert_eq!(
        count(&format!("Riemann at {addr} answers again")),
        1,
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with("riemann-probe: ")),
        "{err}"
    );
}
