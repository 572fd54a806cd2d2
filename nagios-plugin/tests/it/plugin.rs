//! check_jsonrpc as a process, against the real usersvc and against misbehaving servers:
//! exact state (exit code) and a first line that names the fault.

use super::{Run, check_jsonrpc};
use serde_json::{Value, json};
use std::time::Duration;
use testbed::Usersvc;
use testbed::canned::{Canned, Reply, Seen};

fn plugin(args: &[&str]) -> Run {
    let run = check_jsonrpc(args, &[]);
    // Guidelines: everything on stdout; the first line starts with the service and state.
    assert!(
        run.first_line().starts_with("JSONRPC "),
        "{args:?}: first line {:?}, stderr {:?}",
        run.first_line(),
        run.stderr
    );
    run
}

fn expect(args: &[&str], code: i32, state: &str, needle: &str) -> Run {
    let r = plugin(args);
    assert_eq!(r.code, code, "{args:?}: {}", r.stdout);
    assert!(
        r.first_line().starts_with(&format!("JSONRPC {state} - ")),
        "{args:?}: {}",
        r.stdout
    );
    assert!(
        r.first_line().contains(needle),
        "{args:?}: wanted {needle:?} in {}",
        r.stdout
    );
    r
}

/// Builds a response body from the request's id.
type Answer = dyn Fn(&Value) -> String + Send + Sync;

/// Answers every request with `make(id)` as a JSON body, echoing the request's id.
fn answering(make: impl Fn(&Value) -> String + Send + Sync + 'static) -> Canned {
    Canned::start(move |seen: &Seen| Reply::json(make(&seen.json()["id"])))
}

#[test]
fn against_the_real_usersvc() {
    let svc = Usersvc::start();
    let port = svc.addr().port().to_string();
    let p = port.as_str();
    let r = expect(
        &["-H", "127.0.0.1", "-p", p],
        0,
        "OK",
        "ping returned \"pong\"",
    );
    let perf = r
        .first_line()
        .split(" | ")
        .nth(1)
        .expect("perfdata on the first line");
    assert!(
        perf.starts_with("time=") && perf.contains(" size="),
        "{perf}"
    );

    svc.result(
        "put_users",
        json!([{"id": "a", "age": 41}, {"id": "b", "age": 7}, {"id": "c"}]),
    );
    let r = expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            p,
            "-m",
            "get_users",
            "--count",
            "",
            "--value-warning",
            "5",
            "--value-critical",
            "10",
        ],
        0,
        "OK",
        "count(result) = 3",
    );
    assert!(r.first_line().ends_with(" count=3;5;10"), "{}", r.stdout);
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            p,
            "-m",
            "get_users",
            "--count",
            "",
            "--value-warning",
            "@3:4",
        ],
        1,
        "WARNING",
        "count(result) = 3 (outside warning range @3:4)",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            p,
            "-m",
            "get_user",
            "--params",
            r#"{"id":"a"}"#,
            "--value",
            "/age",
            "--value-critical",
            "~:40",
        ],
        2,
        "CRITICAL",
        "/age = 41",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            p,
            "-m",
            "get_user",
            "--params",
            r#"["a"]"#,
            "--expect",
            "/id=\"a\"",
            "--expect-type",
            "/age=integer",
            "--expect-type",
            "=object",
        ],
        0,
        "OK",
        "3 expectations met",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            p,
            "-m",
            "get_user",
            "--params",
            r#"["a"]"#,
            "--expect",
            "/age=40",
        ],
        2,
        "CRITICAL",
        "/age is 41, expected 40",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            p,
            "-m",
            "get_user",
            "--params",
            r#"["zz"]"#,
        ],
        2,
        "CRITICAL",
        "JSON-RPC error -32001: User not found",
    );
    expect(
        &["-H", "127.0.0.1", "-p", p, "-m", "no_such"],
        2,
        "CRITICAL",
        "-32601",
    );
    // -I connects to the address while -H names the host
    expect(
        &["-H", "usersvc.example", "-I", "127.0.0.1", "-p", p],
        0,
        "OK",
        "pong",
    );
    expect(&["-I", "127.0.0.1", "-p", p, "-4"], 0, "OK", "pong");
    // verbose detail goes on later lines, perfdata stays on the first
    let r = expect(&["-H", "127.0.0.1", "-p", p, "-vv"], 0, "OK", "pong");
    assert!(r.stdout.lines().count() >= 3, "{}", r.stdout);
    assert!(
        r.stdout.lines().skip(1).all(|l| !l.contains(" | ")),
        "{}",
        r.stdout
    );
}

#[test]
fn auth_headers_reach_the_server() {
    let svc = Usersvc::start_with(&testbed::usersvc::binary(), &["--auth-token", "t0k"]);
    let port = svc.addr().port().to_string();
    expect(
        &["-H", "127.0.0.1", "-p", &port],
        2,
        "CRITICAL",
        "HTTP 401 Unauthorized: the server wants credentials (--bearer-file FILE",
    );
    expect(
        &["-H", "127.0.0.1", "-p", &port, "--bearer", "wrong"],
        2,
        "CRITICAL",
        "HTTP 401 Unauthorized: the server refused the credentials sent (check the token)",
    );
    expect(
        &["-H", "127.0.0.1", "-p", &port, "--bearer", "t0k"],
        0,
        "OK",
        "pong",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "-k",
            "Authorization: Bearer t0k",
        ],
        0,
        "OK",
        "pong",
    );
    // Secrets kept off the command line: a file (its newline dropped), or the environment.
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0k\n").expect("token");
    let file = token.to_str().expect("utf-8");
    expect(
        &["-H", "127.0.0.1", "-p", &port, "--bearer-file", file],
        0,
        "OK",
        "pong",
    );
    let from_env = check_jsonrpc(
        &["-H", "127.0.0.1", "-p", &port],
        &[("CHECK_JSONRPC_BEARER", "t0k")],
    );
    assert_eq!(from_env.code, 0);
    let missing = expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "--bearer-file",
            "/nonexistent/token",
        ],
        3,
        "UNKNOWN",
        "--bearer-file /nonexistent/token",
    );
    assert!(!missing.stdout.contains("t0k"));

    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let keep = seen.clone();
    let s = Canned::start(move |r: &Seen| {
        if let Ok(mut k) = keep.lock() {
            *k = r.head.clone();
        }
        Reply::json(json!({"jsonrpc": "2.0", "result": "pong", "id": r.json()["id"]}).to_string())
    });
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &s.port().to_string(),
            "-a",
            "user:pass",
        ],
        0,
        "OK",
        "pong",
    );
    let head = seen
        .lock()
        .map(|h| h.to_ascii_lowercase())
        .unwrap_or_default();
    assert!(head.contains("authorization: basic dxnlcjpwyxnz"), "{head}");
}

#[test]
fn envelope_violations_are_critical_and_named() {
    let cases: Vec<(Box<Answer>, &str)> = vec![
        (
            Box::new(|_| r#"{"jsonrpc":"2.0","result":"pong","id":"someone else"}"#.into()),
            "does not match the request id",
        ),
        (
            Box::new(|id| format!(r#"{{"result":"pong","id":{id}}}"#)),
            "no \"jsonrpc\":\"2.0\"",
        ),
        (
            Box::new(|id| format!(r#"{{"jsonrpc":"1.0","result":"pong","id":{id}}}"#)),
            "\"jsonrpc\":\"1.0\"",
        ),
        (
            Box::new(|id| {
                format!(
                    r#"{{"jsonrpc":"2.0","result":1,"error":{{"code":1,"message":"x"}},"id":{id}}}"#
                )
            }),
            "both \"result\" and \"error\"",
        ),
        (
            Box::new(|id| format!(r#"{{"jsonrpc":"2.0","id":{id}}}"#)),
            "neither \"result\" nor \"error\"",
        ),
        (
            Box::new(|id| format!(r#"{{"jsonrpc":"2.0","error":"boom","id":{id}}}"#)),
            "malformed error object",
        ),
        (
            Box::new(|id| {
                format!(r#"{{"jsonrpc":"2.0","error":{{"code":"x","message":"m"}},"id":{id}}}"#)
            }),
            "\"code\" is not an integer",
        ),
        (
            Box::new(|_| r#"[{"jsonrpc":"2.0","result":1,"id":1}]"#.into()),
            "JSON array, not a response object",
        ),
        (
            Box::new(|_| "{\"jsonrpc\":\"2.0\",\"result\":".into()),
            "not valid JSON",
        ),
    ];
    for (make, needle) in cases {
        let s = answering(make);
        expect(
            &["-H", "127.0.0.1", "-p", &s.port().to_string()],
            2,
            "CRITICAL",
            needle,
        );
    }
}

#[test]
fn http_failures() {
    let html = Canned::start(|_: &Seen| Reply::Http {
        status: "502 Bad Gateway",
        content_type: "text/html",
        body: b"<html><body>nginx: bad gateway | upstream</body></html>".to_vec(),
    });
    expect(
        &["-H", "127.0.0.1", "-p", &html.port().to_string()],
        2,
        "CRITICAL",
        "HTTP 502 Bad Gateway (text/html body",
    );
    // A JSON-RPC error sent with HTTP 500 (legacy bitcoind does): its code and message are shown.
    let legacy = Canned::start(|s: &Seen| {
        Reply::Http {
        status: "500 Internal Server Error",
        content_type: "application/json",
        body: json!({"jsonrpc": "2.0", "error": {"code": -28, "message": "Loading block index..."}, "id": s.json()["id"]})
            .to_string()
            .into_bytes(),
    }
    });
    expect(
        &["-H", "127.0.0.1", "-p", &legacy.port().to_string()],
        2,
        "CRITICAL",
        "JSON-RPC error -28: Loading block index... (HTTP 500 Internal Server Error)",
    );
    let wrong_type = Canned::start(|s: &Seen| Reply::Http {
        status: "200 OK",
        content_type: "text/plain",
        body: json!({"jsonrpc": "2.0", "result": 1, "id": s.json()["id"]})
            .to_string()
            .into_bytes(),
    });
    expect(
        &["-H", "127.0.0.1", "-p", &wrong_type.port().to_string()],
        2,
        "CRITICAL",
        "Content-Type is text/plain",
    );
    let bad_utf8 = Canned::start(|_: &Seen| {
        Reply::json(b"{\"jsonrpc\":\"2.0\",\"result\":\"\xff\xfe\",\"id\":1}".to_vec())
    });
    expect(
        &["-H", "127.0.0.1", "-p", &bad_utf8.port().to_string()],
        2,
        "CRITICAL",
        "invalid UTF-8",
    );
    let cut = Canned::start(|_: &Seen| Reply::Truncated {
        length: 1000,
        body: br#"{"jsonrpc":"2.0","res"#.to_vec(),
    });
    expect(
        &["-H", "127.0.0.1", "-p", &cut.port().to_string()],
        2,
        "CRITICAL",
        "connection closed before the response was complete",
    );
    let huge = Canned::start(|_: &Seen| Reply::Huge {
        size: 50 * 1024 * 1024,
    });
    expect(
        &["-H", "127.0.0.1", "-p", &huge.port().to_string()],
        2,
        "CRITICAL",
        "larger than 8388608 bytes (--max-size)",
    );
    let garbage = Canned::start(|_: &Seen| Reply::Raw(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()));
    expect(
        &["-H", "127.0.0.1", "-p", &garbage.port().to_string()],
        2,
        "CRITICAL",
        "HTTP protocol error",
    );

    // nothing listens on a port we just closed
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    expect(
        &["-H", "127.0.0.1", "-p", &port.to_string()],
        2,
        "CRITICAL",
        "connection refused",
    );
    expect(
        &["-H", "no-such-host.invalid"],
        2,
        "CRITICAL",
        "host not found (DNS)",
    );
    // TLS to a plain-HTTP server
    let plain = answering(|id| json!({"jsonrpc": "2.0", "result": 1, "id": id}).to_string());
    expect(
        &["-H", "127.0.0.1", "-p", &plain.port().to_string(), "-S"],
        2,
        "CRITICAL",
        "TLS failure",
    );
}

/// A response whose head (status line and headers) is `size` bytes long, with a JSON-RPC body.
fn head_of(size: usize, id: &Value) -> Reply {
    let body = json!({"jsonrpc": "2.0", "result": "pong", "id": id}).to_string();
    let fixed = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Pad: \r\n\r\n",
        body.len()
    );
    let pad = "p".repeat(size - fixed.len());
    Reply::Raw(
        fixed
            .replace("X-Pad: ", &format!("X-Pad: {pad}"))
            .into_bytes()
            .into_iter()
            .chain(body.bytes())
            .collect(),
    )
}

#[test]
fn heads_on_each_side_of_the_limit() {
    let limit = nagios_plugin::HEAD_LIMIT;
    let under = Canned::start(move |s: &Seen| head_of(limit - 1, &s.json()["id"]));
    expect(
        &["-H", "127.0.0.1", "-p", &under.port().to_string()],
        0,
        "OK",
        "pong",
    );
    let over = Canned::start(move |s: &Seen| head_of(limit + 1, &s.json()["id"]));
    expect(
        &["-H", "127.0.0.1", "-p", &over.port().to_string()],
        2,
        "CRITICAL",
        &format!("response head larger than {limit} bytes"),
    );
    // Our own request's head: a header the operator gave that is too long is theirs to fix.
    // The limit is a line's: two long headers make a head over it, and go.
    let echo = answering(|id| json!({"jsonrpc": "2.0", "result": "pong", "id": id}).to_string());
    let port = echo.port().to_string();
    let long = format!("X-Long: {}", "v".repeat(limit - 1024));
    let other = format!("X-Other: {}", "v".repeat(limit - 1024));
    expect(
        &["-H", "127.0.0.1", "-p", &port, "-k", &long, "-k", &other],
        0,
        "OK",
        "pong",
    );
    let too_long = format!("X-Long: {}", "v".repeat(limit));
    expect(
        &["-H", "127.0.0.1", "-p", &port, "-k", &too_long],
        3,
        "UNKNOWN",
        &format!("a request header or the request line is longer than {limit} bytes"),
    );
}

#[test]
fn slow_answers_and_timeouts() {
    let slow = Canned::start(|s: &Seen| {
        Reply::After(
            Duration::from_millis(400),
            Box::new(Reply::json(
                json!({"jsonrpc": "2.0", "result": "pong", "id": s.json()["id"]}).to_string(),
            )),
        )
    });
    let p = slow.port().to_string();
    expect(
        &["-H", "127.0.0.1", "-p", &p, "-w", "0.1", "-c", "5"],
        1,
        "WARNING",
        "response time",
    );
    expect(
        &["-H", "127.0.0.1", "-p", &p, "-w", "0.05", "-c", "0.1"],
        2,
        "CRITICAL",
        "outside -c range",
    );
    let stall = Canned::start(|_: &Seen| {
        Reply::After(Duration::from_secs(30), Box::new(Reply::Raw(Vec::new())))
    });
    let p = stall.port().to_string();
    expect(
        &["-H", "127.0.0.1", "-p", &p, "-t", "1"],
        2,
        "CRITICAL",
        "no complete answer within 1 s",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "1",
            "--timeout-state",
            "unknown",
        ],
        3,
        "UNKNOWN",
        "within 1 s",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "0.5",
            "--timeout-state",
            "warning",
        ],
        1,
        "WARNING",
        "within 0.5 s",
    );
}

#[test]
fn arguments_help_and_version_are_unknown() {
    expect(
        &["-H", "127.0.0.1", "-w", "abc"],
        3,
        "UNKNOWN",
        "invalid range \"abc\"",
    );
    expect(
        &[
            "-H",
            "127.0.0.1",
            "--value",
            "/x",
            "--value-critical",
            "5:1",
        ],
        3,
        "UNKNOWN",
        "start is greater than its end",
    );
    expect(&[], 3, "UNKNOWN", "--hostname");
    expect(&["-H", "x", "--nope"], 3, "UNKNOWN", "--nope");
    for flag in ["-h", "--help", "-V", "--version"] {
        let out = check_jsonrpc(&[flag], &[]);
        assert_eq!(out.code, 3, "{flag}");
        assert!(!out.stdout.is_empty(), "{flag} prints to stdout");
    }
}

#[test]
fn https_with_verification_a_private_ca_and_insecure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [ca, cert, key, _, _] = testbed::riemann::make_certs(dir.path());
    let s = Canned::start_tls(&cert, &key, |seen: &Seen| {
        Reply::json(
            json!({"jsonrpc": "2.0", "result": "pong", "id": seen.json()["id"]}).to_string(),
        )
    });
    let p = s.port().to_string();
    let ca = ca.display().to_string();
    // The certificate is for 127.0.0.1 and localhost, signed by our CA.
    expect(
        &["-H", "localhost", "-p", &p, "-S", "--ca-file", &ca],
        0,
        "OK",
        "pong",
    );
    expect(
        &["-H", "127.0.0.1", "-p", &p, "-S", "--ca-file", &ca],
        0,
        "OK",
        "pong",
    );
    // -I connects to the address while SNI and verification use -H.
    expect(
        &[
            "-H",
            "localhost",
            "-I",
            "127.0.0.1",
            "-p",
            &p,
            "-S",
            "--ca-file",
            &ca,
        ],
        0,
        "OK",
        "pong",
    );
    // Not trusted by the built-in roots: a TLS failure, unless verification is turned off.
    expect(
        &["-H", "localhost", "-p", &p, "-S"],
        2,
        "CRITICAL",
        "TLS failure",
    );
    expect(
        &["-H", "localhost", "-p", &p, "-S", "--insecure"],
        0,
        "OK",
        "pong",
    );
    expect(
        &[
            "-H",
            "localhost",
            "-p",
            &p,
            "-S",
            "--ca-file",
            "/nonexistent.pem",
        ],
        3,
        "UNKNOWN",
        "--ca-file",
    );
}

/// A password or a query value in a full URL given to -u is never printed, on a failure or
/// with -v.
#[test]
fn credentials_in_the_url_stay_secret() {
    let url = "http://user:pw-9c1e@127.0.0.1:1/?token=QSECRET";
    let r = check_jsonrpc(&["-u", url, "-v"], &[]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    for secret in ["pw-9c1e", "QSECRET"] {
        assert!(!r.stdout.contains(secret), "{}", r.stdout);
    }
    assert!(
        r.stdout.contains("http://user:***@127.0.0.1:1/?token=***"),
        "{}",
        r.stdout
    );
}

#[test]
fn what_a_server_says_is_escaped_and_clipped() {
    // An error message that would retitle and clear the operator's terminal, and reorder it.
    let s = answering(|id| {
        json!({"jsonrpc": "2.0", "error": {"code": -32000,
            "message": "\u{1b}]0;pwned\u{7}\u{1b}[2J down \u{202e}txt.exe"}, "id": id})
        .to_string()
    });
    let p = s.port().to_string();
    let r = expect(
        &["-H", "127.0.0.1", "-p", &p],
        2,
        "CRITICAL",
        "JSON-RPC error -32000",
    );
    for c in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(
            !r.stdout.contains(c),
            "{c:?} reached the terminal: {:?}",
            r.stdout
        );
    }
    assert!(
        r.first_line()
            .contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2J down \\u{202e}txt.exe"),
        "{}",
        r.first_line()
    );

    // An answer whose id is 5 MB long: the first line stays a line.
    let s = answering(|_| {
        json!({"jsonrpc": "2.0", "result": "pong", "id": "7".repeat(5_000_000)}).to_string()
    });
    let p = s.port().to_string();
    let r = plugin(&["-H", "127.0.0.1", "-p", &p, "-v"]);
    assert_eq!(r.code, 2, "{}", r.first_line());
    assert!(
        r.first_line().contains("does not match"),
        "{}",
        r.first_line()
    );
    assert!(
        r.stdout.lines().all(|l| l.chars().count() <= 2100),
        "a line of {} characters",
        r.stdout
            .lines()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0)
    );
}
