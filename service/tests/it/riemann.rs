//! usersvc reporting to Riemann (the testbed's protocol sink): heartbeat with a TTL and metrics;
//! its heartbeat expires when the service dies; a Riemann outage does not affect requests.

use serde_json::{Value, json};
use std::time::Duration;
use testbed::Usersvc;
use testbed::riemann::{Fault, Sink};

fn reporting(sink: &Sink) -> Usersvc {
    Usersvc::start_with(
        env!("CARGO_BIN_EXE_usersvc").as_ref(),
        &[
            "--riemann",
            &sink.tcp_addr().to_string(),
            "--riemann-interval",
            "200ms",
        ],
    )
}

fn named<'a>(name: &'a str) -> impl Fn(&riemann_probe::Event) -> bool + 'a {
    move |e| e.service.as_deref() == Some(name)
}

#[test]
fn heartbeat_and_metrics_then_expiry_when_killed() {
    let sink = Sink::start();
    let mut s = reporting(&sink);
    let hb = sink.wait_for(Duration::from_secs(10), named("usersvc heartbeat"));
    assert_eq!(hb.state.as_deref(), Some("ok"));
    assert!(
        (hb.ttl.unwrap_or(0.0) - 0.6).abs() < 1e-6,
        "ttl = 3 x interval: {hb:?}"
    );
    for name in [
        "usersvc latency p50",
        "usersvc latency p95",
        "usersvc latency p99",
        "usersvc journal depth",
    ] {
        sink.wait_for(Duration::from_secs(10), named(name));
    }
    let breaker = sink.wait_for(Duration::from_secs(10), named("usersvc breaker"));
    assert_eq!(
        (breaker.state.as_deref(), breaker.description.as_deref()),
        (Some("ok"), Some("closed"))
    );

    for _ in 0..20 {
        s.result("ping", Value::Null);
    }
    s.call("no_such_method", Value::Null);
    sink.wait_for(Duration::from_secs(10), |e| {
        e.service.as_deref() == Some("usersvc requests rate") && e.metric().unwrap_or(0.0) > 0.0
    });
    sink.wait_for(Duration::from_secs(10), |e| {
        e.service.as_deref() == Some("usersvc errors rate") && e.metric().unwrap_or(0.0) > 0.0
    });
    assert!(
        sink.expired()
            .iter()
            .all(|e| e.service.as_deref() != Some("usersvc heartbeat")),
        "alive: no expiry"
    );

    s.kill();
    testbed::eventually("the heartbeat expires", Duration::from_secs(10), || {
        sink.expired()
            .iter()
            .any(|e| e.service.as_deref() == Some("usersvc heartbeat"))
    });
}

#[test]
fn riemann_outage_does_not_touch_requests() {
    let sink = Sink::start();
    let mut s = reporting(&sink);
    sink.wait_for(Duration::from_secs(10), named("usersvc heartbeat"));
    for fault in [Fault::Stall, Fault::NotOk("overloaded".into())] {
        sink.set_fault(fault);
        for i in 0..200 {
            s.result("put_user", json!({"user": {"id": format!("u{i}")}}));
        }
        assert_eq!(
            s.result("get_users", Value::Null).as_array().map(Vec::len),
            Some(200)
        );
    }
    sink.set_fault(Fault::None);
    sink.down();
    for _ in 0..200 {
        s.result("ping", Value::Null);
    }
    assert_eq!(s.get("/health").status, 200);
    sink.up();
    let n = sink.received().len();
    sink.wait_for(Duration::from_secs(15), |_| sink.received().len() > n + 5);
    // SIGTERM flushes the probe and still exits 0.
    assert_eq!(s.terminate().code(), Some(0), "{}", s.log());
    s.expect_log("Riemann probe flushed");
}

/// The heartbeat says which release and revision sent it (the release directory the binary runs
/// from, and its REVISION file), so a dashboard can compare revisions.
#[test]
fn events_carry_the_release_and_revision_that_sent_them() {
    let sink = Sink::start();
    let site = tempfile::tempdir().expect("temp dir");
    let release = site.path().join("releases/20261201100000");
    std::fs::create_dir_all(release.join("bin")).expect("mkdir");
    // A copy, not a link: the release is read from the running executable's resolved path.
    std::fs::copy(env!("CARGO_BIN_EXE_usersvc"), release.join("bin/usersvc")).expect("copy");
    std::fs::write(release.join("REVISION"), "abc123\n").expect("revision");
    let _s = Usersvc::start_with(
        &release.join("bin/usersvc"),
        &[
            "--riemann",
            &sink.tcp_addr().to_string(),
            "--riemann-interval",
            "200ms",
        ],
    );
    let hb = sink.wait_for(Duration::from_secs(10), named("usersvc heartbeat"));
    let attr = |k: &str| {
        hb.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
    };
    assert_eq!(attr("revision").as_deref(), Some("abc123"), "{hb:?}");
    assert_eq!(attr("release").as_deref(), Some("20261201100000"), "{hb:?}");
    // And `--version` says the same as the events and `/version`.
    let out = std::process::Command::new(release.join("bin/usersvc"))
        .arg("--version")
        .output()
        .expect("usersvc --version");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "usersvc 0.1.0 (revision abc123, release 20261201100000)\n"
    );
}
