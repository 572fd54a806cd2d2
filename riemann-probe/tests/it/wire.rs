//! The wire format, checked both ways against an independent client (riemann-c-client): what it
//! encodes our sink and client decode, and what we encode it decodes. TCP, UDP and TLS.

use riemann_probe::{Client, ClientConfig, TlsFiles, Transport, event};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use testbed::riemann::{Fault, Sink, SinkOptions, TlsServerFiles, make_certs};

fn c_client(args: &[&str]) -> std::process::Output {
    Command::new("riemann-client")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "riemann-client is missing ({e}): apt-get install riemann-c-client (make test does)"
            )
        })
}

fn probe_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_riemann-probe"))
        .args(args)
        .output()
        .expect("run riemann-probe")
}

#[test]
fn riemann_c_client_events_decode_field_by_field() {
    let sink = Sink::start();
    let port = sink.tcp_addr().port().to_string();
    let out = c_client(&[
        "send",
        "-s",
        "warning",
        "-S",
        "c svc",
        "-h",
        "c-host",
        "-D",
        "from C",
        "-a",
        "team=ops",
        "-t",
        "t1",
        "-t",
        "t2",
        "-i",
        "-42",
        "-L",
        "30",
        "127.0.0.1",
        &port,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client =
        Client::connect(&ClientConfig::tcp(sink.tcp_addr().to_string())).expect("connect");
    let got = client.query("service = \"c svc\"").expect("query");
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(
        (
            e.host.as_deref(),
            e.state.as_deref(),
            e.description.as_deref()
        ),
        (Some("c-host"), Some("warning"), Some("from C"))
    );
    assert_eq!(e.metric_sint64, Some(-42));
    assert_eq!(e.ttl, Some(30.0));
    assert_eq!(e.tags, ["t1", "t2"]);
    assert_eq!(e.attribute("team"), Some("ops"));
    assert_eq!(e.attribute("x-client"), Some("riemann-c-client"));

    // metric_d and metric_f too
    for (flag, value) in [("-d", "2.5"), ("-f", "0.25")] {
        let svc = format!("metric {flag}");
        assert!(
            c_client(&["send", "-S", &svc, flag, value, "127.0.0.1", &port])
                .status
                .success()
        );
        let e = client
            .query(&format!("service = \"{svc}\""))
            .expect("query")
            .pop()
            .expect("one event");
        assert_eq!(e.metric(), Some(value.parse().expect("number")));
    }
}

#[test]
fn our_events_decode_in_riemann_c_client() {
    let sink = Sink::start();
    let port = sink.tcp_addr().port().to_string();
    let addr = sink.tcp_addr().to_string();
    let out = probe_cli(&[
        "--server",
        &addr,
        "send",
        "--service",
        "our svc",
        "--host",
        "h1",
        "--state",
        "critical",
        "--metric",
        "3.5",
        "--ttl",
        "12",
        "--tag",
        "a",
        "--attribute",
        "env=prod",
        "--description",
        "from Rust",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = c_client(&["query", "-j", "service = \"our svc\"", "127.0.0.1", &port]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let v: Value = serde_json::from_slice(&q.stdout).expect("riemann-client -j prints JSON");
    let e = &v[0];
    assert_eq!(e["host"], "h1");
    assert_eq!(e["service"], "our svc");
    assert_eq!(e["state"], "critical");
    assert_eq!(e["description"], "from Rust");
    assert_eq!(e["metric_d"], 3.5, "{e}");
    assert_eq!(e["ttl"], 12.0);
    assert_eq!(e["tags"][0], "a");
    assert_eq!(e["attributes"]["env"], "prod", "{e}");
    // An integer metric travels as metric_sint64.
    let out = probe_cli(&[
        "--server",
        &addr,
        "send",
        "--service",
        "int",
        "--metric",
        "-7",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = c_client(&["query", "-j", "service = \"int\"", "127.0.0.1", &port]);
    let v: Value = serde_json::from_slice(&q.stdout).expect("JSON");
    assert_eq!(v[0]["metric_sint64"], -7, "{v}");

    // And our own query prints JSON lines.
    let ours = probe_cli(&["--server", &addr, "query", "host = \"h1\""]);
    let line: Value = serde_json::from_slice(&ours.stdout).expect("JSON line");
    assert_eq!(line["attributes"]["env"], "prod");
    assert_eq!(line["metric"], 3.5);
}

#[test]
fn udp_and_its_size_limit() {
    let sink = Sink::start();
    let cfg = ClientConfig {
        addr: sink.udp_addr().to_string(),
        transport: Transport::Udp,
        timeout: Duration::from_secs(2),
    };
    let mut c = Client::connect(&cfg).expect("udp socket");
    c.send(&[event("over udp").metric(1i64).build()])
        .expect("send");
    sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("over udp")
    });
    // A batch over one datagram is split; an event that alone is over it is dropped and
    // counted, and the events around it arrive.
    let big = event("big").description("x".repeat(20_000)).build();
    let mut batch: Vec<_> = (0..300)
        .map(|i| {
            event(format!("split {i}"))
                .description("y".repeat(100))
                .build()
        })
        .collect();
    batch.insert(150, big);
    assert_eq!(c.send(&batch).expect("sent"), 1, "the big one is dropped");
    for i in [0, 149, 299] {
        sink.wait_for(Duration::from_secs(5), |e| {
            e.service.as_deref() == Some(&format!("split {i}"))
        });
    }
    assert!(c.query("true").is_err(), "no queries over UDP");
    // riemann-c-client over UDP lands too
    let out = c_client(&[
        "send",
        "-U",
        "-S",
        "c over udp",
        "127.0.0.1",
        &sink.udp_addr().port().to_string(),
    ]);
    assert!(out.status.success());
    sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("c over udp")
    });
    // the CLI too
    let out = probe_cli(&[
        "--server",
        &sink.udp_addr().to_string(),
        "--udp",
        "send",
        "--service",
        "cli udp",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("cli udp")
    });
}

#[test]
fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [ca, server_cert, server_key, client_cert, client_key] = make_certs(dir.path());
    let sink = Sink::start_with(SinkOptions {
        tls: Some(TlsServerFiles {
            cert: server_cert,
            key: server_key,
            client_ca: ca.clone(),
        }),
        ..SinkOptions::default()
    });
    let addr = sink.tls_addr().expect("tls listener").to_string();
    let files = TlsFiles {
        ca: ca.clone(),
        cert: client_cert.clone(),
        key: client_key.clone(),
        server_name: None,
    };
    let cfg = ClientConfig {
        addr: addr.clone(),
        transport: Transport::Tls(files),
        timeout: Duration::from_secs(5),
    };
    let mut c = Client::connect(&cfg).expect("connect");
    c.send(&[event("over tls").state("ok").build()])
        .expect("acknowledged over TLS");
    assert_eq!(c.query("service = \"over tls\"").expect("query").len(), 1);
    let (ca, cert, key) = (
        ca.display().to_string(),
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    let out = probe_cli(&[
        "--server",
        &addr,
        "--tls",
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "send",
        "--service",
        "cli tls",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a client certificate the server refuses the handshake.
    let out = probe_cli(&[
        "--server",
        &addr,
        "send",
        "--service",
        "plain to tls",
        "--timeout",
        "2s",
    ]);
    assert!(!out.status.success());
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let sink = Sink::start();
    let addr = sink.tcp_addr().to_string();
    sink.set_fault(Fault::NotOk("no thanks".into()));
    let out = probe_cli(&["--server", &addr, "send", "--service", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server error: no thanks"), "{err}");
    // The C client agrees on what ok=false means.
    let c = c_client(&[
        "send",
        "-S",
        "x",
        "127.0.0.1",
        &sink.tcp_addr().port().to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&c.stderr).contains("no thanks"),
        "{c:?}"
    );

    sink.set_fault(Fault::Stall);
    let out = probe_cli(&[
        "--server",
        &addr,
        "--timeout",
        "300ms",
        "send",
        "--service",
        "x",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );
    sink.set_fault(Fault::CloseMidFrame);
    let out = probe_cli(&["--server", &addr, "send", "--service", "x"]);
    assert!(!out.status.success());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = probe_cli(&[
        "--server",
        &format!("127.0.0.1:{port}"),
        "send",
        "--service",
        "x",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(1));
}

/// A server that answers one byte at a time: `--timeout` is the whole command's, not each read's.
#[test]
fn a_dripping_server_cannot_hold_a_command_past_its_timeout() {
    let sink = Sink::start();
    sink.set_fault(testbed::riemann::Fault::Drip);
    let started = std::time::Instant::now();
    let out = probe_cli(&[
        "--server",
        &sink.tcp_addr().to_string(),
        "--timeout",
        "2s",
        "send",
        "--service",
        "x",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out"), "{err}");
}
