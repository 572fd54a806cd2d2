//! `riemann-probe nagios -- PLUGIN …` forwards a plugin's state, first line and perfdata.

use std::process::Command;
use std::time::Duration;
use testbed::Usersvc;
use testbed::riemann::Sink;

fn wrap(sink: &Sink, service: &str, plugin: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args([
            "--server",
            &sink.tcp_addr().to_string(),
            "nagios",
            "--service",
            service,
            "--ttl",
            "60",
            "--",
        ])
        .args(plugin)
        .output()
        .expect("run riemann-probe")
}

#[test]
fn forwards_check_jsonrpc_against_usersvc() {
    let svc = Usersvc::start();
    let sink = Sink::start();
    let plugin = testbed::process::workspace_bin("nagios-plugin", "check_jsonrpc");
    let port = svc.addr().port().to_string();
    let out = wrap(
        &sink,
        "usersvc rpc",
        &[
            &plugin.display().to_string(),
            "-H",
            "127.0.0.1",
            "-p",
            &port,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("JSONRPC OK"));
    let main = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("usersvc rpc")
    });
    assert_eq!(main.state.as_deref(), Some("ok"));
    assert!(
        main.description
            .as_deref()
            .is_some_and(|d| d.starts_with("JSONRPC OK - ping returned") && !d.contains('|'))
    );
    assert_eq!(main.ttl, Some(60.0));
    let time = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("usersvc rpc time")
    });
    assert!(time.metric().is_some_and(|m| m >= 0.0));
    assert_eq!(time.attribute("uom"), Some("s"));
    let size = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("usersvc rpc size")
    });
    assert!(size.metric().is_some_and(|m| m > 0.0));
}

#[test]
fn maps_every_exit_code() {
    let sink = Sink::start();
    let dummy = "/usr/lib/nagios/plugins/check_dummy";
    assert!(
        std::path::Path::new(dummy).exists(),
        "check_dummy is missing: apt-get install monitoring-plugins-basic"
    );
    for (code, state) in [
        ("0", "ok"),
        ("1", "warning"),
        ("2", "critical"),
        ("3", "unknown"),
    ] {
        let name = format!("dummy {code}");
        let out = wrap(&sink, &name, &[dummy, code, "text here"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e = sink.wait_for(Duration::from_secs(5), |e| {
            e.service.as_deref() == Some(name.as_str())
        });
        assert_eq!(e.state.as_deref(), Some(state), "exit {code}");
        assert!(
            e.description
                .as_deref()
                .is_some_and(|d| d.contains("text here")),
            "{e:?}"
        );
    }
    // A plugin that crashes with exit 5 (Icinga reads it as UNKNOWN, so do we).
    let out = wrap(
        &sink,
        "exit five",
        &["sh", "-c", "echo 'BROKEN - oops | x=1;;;;'; exit 5"],
    );
    assert!(out.status.success());
    let e = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("exit five")
    });
    assert_eq!(e.state.as_deref(), Some("unknown"));
    assert_eq!(e.description.as_deref(), Some("BROKEN - oops"));
    let x = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("exit five x")
    });
    assert_eq!(x.metric(), Some(1.0));
    // A plugin that cannot be run is an error of ours.
    let out = wrap(&sink, "missing", &["/nonexistent/plugin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/plugin"));
}

/// A plugin that hangs is killed at --plugin-timeout and reported critical, as Nagios does.
#[test]
fn a_hung_plugin_is_killed_and_reported_critical() {
    let sink = Sink::start();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args(["--server", &sink.tcp_addr().to_string(), "nagios"])
        .args(["--service", "hung", "--plugin-timeout", "1s", "--"])
        .args(["sleep", "30"])
        .output()
        .expect("run riemann-probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it did not wait for the plugin"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "plugin timed out after 1s"
    );
    let e = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("hung")
    });
    assert_eq!(e.state.as_deref(), Some("critical"));
    assert_eq!(e.description.as_deref(), Some("plugin timed out after 1s"));
}

#[test]
fn over_udp_one_huge_perfdata_value_does_not_stop_the_others() {
    let sink = Sink::start();
    let big = "x".repeat(20_000);
    let script = format!("echo 'OK - fine | small=1 {big}=2 last=3'");
    let out = Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args([
            "--server",
            &sink.udp_addr().to_string(),
            "--udp",
            "nagios",
            "--service",
            "u",
            "--",
        ])
        .args(["sh", "-c", &script])
        .output()
        .expect("run riemann-probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("over UDP's 16 KiB limit"));
    for service in ["u small", "u last"] {
        sink.wait_for(Duration::from_secs(5), |e| {
            e.service.as_deref() == Some(service)
        });
    }
}
