//! Bad input gets a precise error, and the server keeps serving afterwards.

use super::svc;
use serde_json::{Value, json};
use testbed::Usersvc;

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error: {v}"))
}

fn still_serving(s: &Usersvc) {
    assert_eq!(
        s.result("ping", Value::Null),
        "pong",
        "server stopped serving:\n{}",
        s.log()
    );
}

#[test]
fn http_transport_errors() {
    let s = svc(&["--body-limit", "65536"]);
    // 405 for other methods on /
    for method in ["GET", "PUT", "DELETE"] {
        let agent = testbed::http::agent();
        let r = match method {
            "GET" => agent.get(s.url()).call(),
            "PUT" => agent.put(s.url()).send("{}"),
            _ => agent.delete(s.url()).call(),
        }
        .expect("HTTP exchange");
        assert_eq!(r.status().as_u16(), 405, "{method}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("POST")
        );
        let said = r.into_body().read_to_string().expect("body");
        assert!(
            said.contains("JSON-RPC 2.0 requests sent by POST") && said.contains("rpc.discover"),
            "{method}: {said}"
        );
    }
    // 415 for a non-JSON or missing content type
    for headers in [&[("content-type", "text/plain")][..], &[][..]] {
        let r = s.post_with(headers, br#"{"jsonrpc":"2.0","method":"ping","id":1}"#);
        assert_eq!(r.status, 415, "{headers:?}");
    }
    // charset parameter is fine
    let r = s.post_with(
        &[("content-type", "application/json; charset=utf-8")],
        br#"{"jsonrpc":"2.0","method":"ping","id":1}"#,
    );
    assert_eq!(r.status, 200);
    // 413 over the limit
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"ping","id":1,"pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    assert_eq!(s.post(big.as_bytes()).status, 413);
    // /health and /version are plain GETs
    let h = s.get("/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(s.get("/version").json()["name"], "usersvc");
    assert_eq!(s.get("/nope").status, 404);
    still_serving(&s);
}

#[test]
fn a_body_limit_over_two_mib_holds_on_both_sides() {
    // axum's own 2 MiB body limit once refused what --body-limit allowed past it.
    let limit = 4 << 20;
    let s = svc(&["--body-limit", &limit.to_string()]);
    let call = br#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let padded = |len: usize| {
        let mut body = call.to_vec();
        body.resize(len, b' ');
        body
    };
    let at = s.post(&padded(limit));
    assert_eq!(at.status, 200);
    assert_eq!(at.json()["result"], "pong");
    // One byte over: refused on the declared length before any of the body is read (a client
    // still sending 4 MiB would see the connection close under it, so only the head is sent).
    let mut conn = std::net::TcpStream::connect(s.addr()).expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        limit + 1
    );
    std::io::Write::write_all(&mut conn, head.as_bytes()).expect("send");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    still_serving(&s);
}

#[test]
fn malformed_bodies() {
    let s = svc(&[]);
    let parse_error = |body: &[u8]| {
        let r = s.post(body);
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(code(&v), -32700, "{}", String::from_utf8_lossy(body));
        assert_eq!(v["id"], Value::Null);
    };
    parse_error(b"");
    parse_error(b"{");
    parse_error(b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1");
    parse_error(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\xfe\",\"id\":1}");
    parse_error(b"\xef\xbb\xbf\xc3\x28");
    parse_error(b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1} {}");
    still_serving(&s);

    // 100 000 levels of nesting: an error, not a stack overflow
    let depth = 100_000;
    let deep_array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let v = s.post(deep_array.as_bytes()).json();
    assert_eq!(code(&v[0]), -32600);
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    assert_eq!(code(&s.post(deep_obj.as_bytes()).json()), -32600);
    let deep_params = format!(
        r#"{{"jsonrpc":"2.0","method":"put_user","params":[{{"id":"d","x":{}{}}}],"id":1}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(code(&s.post(deep_params.as_bytes()).json()), -32602);
    still_serving(&s);
}

#[test]
fn wrong_params_get_invalid_params_with_a_reason() {
    let s = svc(&[]);
    let cases = [
        ("get_user", json!([])),
        ("get_user", json!([5])),
        ("get_user", json!({"id": {"x": 1}})),
        ("get_users", json!({"limit": -1})),
        ("get_users", json!({"limit": "ten"})),
        ("get_users", json!({"after": 3})),
        ("put_user", json!([])),
        ("put_user", json!(["not an object"])),
        ("put_user", json!({"user": {"id": 42}})),
        ("put_user", json!({"user": {"id": ""}})),
        ("put_user", json!({"user": {"id": "a"}, "rev": "1"})),
        ("put_users", json!({"users": "nope"})),
        ("put_users", json!([{"id": "a"}, {"id": "a"}])),
        ("put_users", json!([{"id": "ok"}, 7])),
        ("delete_user", json!({})),
    ];
    for (method, params) in cases {
        let v = s.call(method, params.clone());
        assert_eq!(code(&v), -32602, "{method} {params}: {v}");
        assert!(
            v["error"]["data"].as_str().is_some_and(|d| !d.is_empty()),
            "the error must say what is wrong: {v}"
        );
    }
    // Nothing of the rejected bulk write was stored.
    assert_eq!(s.result("get_users", Value::Null), json!([]));
    let v = s.call("get_user", json!(["ghost"]));
    assert_eq!(code(&v), -32001);
    assert_eq!(v["error"]["data"]["id"], "ghost");
    assert_eq!(code(&s.call("delete_user", json!(["ghost"]))), -32001);
    still_serving(&s);
}

#[test]
fn bearer_auth_guards_post_only() {
    let s = svc(&["--auth-token", "s3cret"]);
    let ping = br#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let r = s.post(ping);
    assert_eq!(r.status, 401);
    let r = s.post_with(
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer wrong"),
        ],
        ping,
    );
    assert_eq!(r.status, 401);
    let r = s.post_with(
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ],
        ping,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], "pong");
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn discover_describes_every_method() {
    let s = svc(&[]);
    let doc = s.result("rpc.discover", Value::Null);
    assert!(doc["openrpc"].as_str().is_some_and(|v| v.starts_with("1.")));
    assert_eq!(
        doc["info"]["version"],
        s.result("version", Value::Null)["version"]
    );
    let names: Vec<&str> = doc["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for m in [
        "get_users",
        "get_user",
        "put_user",
        "put_users",
        "delete_user",
        "ping",
        "version",
    ] {
        assert!(names.contains(&m), "{m} missing from rpc.discover");
    }
    let codes: Vec<i64> = doc["components"]["errors"]
        .as_object()
        .expect("errors")
        .values()
        .filter_map(|e| e["code"].as_i64())
        .collect();
    assert!(
        codes.iter().all(|c| (-32099..=-32000).contains(c)),
        "{codes:?}"
    );
}

/// Failures print as a CLI should: one `usersvc: …` line, no "Caused by:" chain, and no
/// backtrace even with RUST_BACKTRACE set (DESIGN.md, "Errors, as a CLI prints them").
#[test]
fn failures_print_one_line() {
    let s = svc(&[]);
    let dir = s.dir().to_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"))
            .args(["--log", "off"])
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .current_dir(&dir)
            .output()
            .expect("run usersvc");
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let addr = s.addr().to_string();
    let taken = run(&[
        "--listen",
        &addr,
        "--database-url",
        "sqlite://taken.db",
        "--journal",
        "taken.journal",
    ]);
    assert_eq!(taken.lines().count(), 1, "{taken}");
    assert!(
        taken.starts_with(&format!("usersvc: cannot listen on {addr}: ")),
        "{taken}"
    );
    let missing = run(&["import", "missing.json"]);
    assert_eq!(missing.lines().count(), 1, "{missing}");
    assert!(
        missing.starts_with("usersvc: nothing was imported from missing.json: cannot read"),
        "{missing}"
    );
    let bad_config = run(&["--config", "nope.toml"]);
    assert_eq!(bad_config.lines().count(), 1, "{bad_config}");
    assert!(
        bad_config.starts_with("usersvc: cannot read config file nope.toml"),
        "{bad_config}"
    );
    still_serving(&s);
}
