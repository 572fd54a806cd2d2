//! The JSON-RPC 2.0 spec's section 7 examples and go-ethereum's invalid-request cases, adapted to
//! usersvc's methods, sent over real HTTP to the real binary.

use super::svc;
use serde_json::{Value, json};
use testbed::Usersvc;

/// Drops `error.data` (our detail) so replies compare with the spec's texts.
fn without_data(mut v: Value) -> Value {
    fn strip(o: &mut Value) {
        if let Some(e) = o.get_mut("error").and_then(Value::as_object_mut) {
            e.remove("data");
        }
    }
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(strip),
        other => strip(other),
    }
    v
}

fn exchange(s: &Usersvc, body: &str) -> Option<Value> {
    let r = s.post(body.as_bytes());
    if r.status == 204 {
        assert!(r.body.is_empty(), "204 must have no body");
        return None;
    }
    assert_eq!(r.status, 200, "{body} -> {}", r.text());
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    Some(without_data(r.json()))
}

fn invalid(id: Value) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": id})
}

#[test]
fn section_7_examples() {
    let s = svc(&[]);
    s.result("put_user", json!({"user": {"id": "u1", "name": "Ann"}}));

    // by position and by name
    let by_pos = exchange(
        &s,
        r#"{"jsonrpc": "2.0", "method": "get_user", "params": ["u1"], "id": 1}"#,
    )
    .expect("reply");
    assert_eq!(by_pos["result"]["name"], "Ann");
    assert_eq!(by_pos["id"], 1);
    let by_name = exchange(
        &s,
        r#"{"jsonrpc": "2.0", "method": "get_user", "params": {"id": "u1"}, "id": 3}"#,
    )
    .expect("reply");
    assert_eq!(by_name["result"], by_pos["result"]);
    assert_eq!(by_name["id"], 3);

    // a notification is executed and not answered
    assert_eq!(
        exchange(
            &s,
            r#"{"jsonrpc": "2.0", "method": "put_user", "params": [{"id": "n1", "name": "Note"}]}"#
        ),
        None
    );
    assert_eq!(
        exchange(&s, r#"{"jsonrpc": "2.0", "method": "foobar"}"#),
        None
    );
    assert_eq!(s.result("get_user", json!(["n1"]))["name"], "Note");

    // non-existent method
    assert_eq!(
        exchange(&s, r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#),
        Some(
            json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"})
        )
    );
    // invalid JSON
    assert_eq!(
        exchange(
            &s,
            r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#
        ),
        Some(
            json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
        )
    );
    // invalid Request object
    assert_eq!(
        exchange(&s, r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#),
        Some(invalid(Value::Null))
    );
    // batch, invalid JSON
    assert_eq!(
        exchange(
            &s,
            "[\n  {\"jsonrpc\": \"2.0\", \"method\": \"ping\", \"id\": \"1\"},\n  {\"jsonrpc\": \"2.0\", \"method\"\n]"
        ),
        Some(
            json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
        )
    );
    // empty array, invalid non-empty batches
    assert_eq!(exchange(&s, "[]"), Some(invalid(Value::Null)));
    assert_eq!(exchange(&s, "[1]"), Some(json!([invalid(Value::Null)])));
    assert_eq!(
        exchange(&s, "[1,2,3]"),
        Some(json!([
            invalid(Value::Null),
            invalid(Value::Null),
            invalid(Value::Null)
        ]))
    );

    // mixed batch: results in order, notification skipped
    let batch = exchange(
        &s,
        r#"[
        {"jsonrpc": "2.0", "method": "ping", "id": "1"},
        {"jsonrpc": "2.0", "method": "put_user", "params": [{"id": "n2"}]},
        {"jsonrpc": "2.0", "method": "get_user", "params": ["u1"], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "version", "id": "9"}
        ]"#,
    )
    .expect("reply");
    let items = batch.as_array().expect("a batch answer is an array");
    assert_eq!(items.len(), 5);
    assert_eq!(
        items[0],
        json!({"jsonrpc": "2.0", "result": "pong", "id": "1"})
    );
    assert_eq!(items[1]["result"]["name"], "Ann");
    assert_eq!(items[1]["id"], "2");
    assert_eq!(items[2], invalid(Value::Null));
    assert_eq!(
        items[3],
        json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"})
    );
    assert_eq!(items[4]["result"]["name"], "usersvc");
    assert_eq!(items[4]["id"], "9");
    assert_eq!(s.result("get_user", json!(["n2"]))["id"], "n2");

    // all notifications: 204, nothing returned
    assert_eq!(
        exchange(
            &s,
            r#"[{"jsonrpc": "2.0", "method": "ping", "params": []},
                {"jsonrpc": "2.0", "method": "ping", "params": {}}]"#
        ),
        None
    );
}

#[test]
fn go_ethereum_invalid_cases() {
    let s = svc(&[]);
    let cases: &[(&str, Value)] = &[
        // invalid-badid
        (r#"{"id":[],"method":"ping"}"#, invalid(Value::Null)),
        (r#"{"id":{},"method":"ping"}"#, invalid(Value::Null)),
        (
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            invalid(Value::Null),
        ),
        // invalid-idonly
        (r#"{"id":1}"#, invalid(json!(1))),
        (r#"{"jsonrpc":"2.0","id":1}"#, invalid(json!(1))),
        // invalid-badversion
        (
            r#"{"jsonrpc":"2.1","id":1,"method":"ping"}"#,
            invalid(json!(1)),
        ),
        (
            r#"{"jsonrpc":"go-ethereum","id":1,"method":"ping"}"#,
            invalid(json!(1)),
        ),
        (r#"{"jsonrpc":1,"id":1,"method":"ping"}"#, invalid(json!(1))),
        (
            r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
            invalid(json!(1)),
        ),
        (r#"{"id":1,"method":"ping"}"#, invalid(json!(1))),
        // invalid-nonobj
        ("1", invalid(Value::Null)),
        ("null", invalid(Value::Null)),
        ("\"ping\"", invalid(Value::Null)),
        // invalid-batch
        ("[null]", json!([invalid(Value::Null)])),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},55,{"jsonrpc":"2.0","id":2,"method":"unknown_method"},{"foo":"bar"}]"#,
            json!([
                {"jsonrpc": "2.0", "result": "pong", "id": 1},
                invalid(Value::Null),
                {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 2},
                invalid(Value::Null)
            ]),
        ),
        // non-object members
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            invalid(json!(1)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":7}"#,
            invalid(json!(1)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":["ping"]}"#,
            invalid(json!(1)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            invalid(json!(1)),
        ),
    ];
    for (req, want) in cases {
        assert_eq!(exchange(&s, req).as_ref(), Some(want), "request: {req}");
    }
    // "id": null is a request (answered), not a notification.
    assert_eq!(
        exchange(&s, r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#),
        Some(json!({"jsonrpc": "2.0", "result": "pong", "id": null}))
    );
    // Ids come back byte for byte, whatever their size (JSON puts no range on numbers).
    for id in [
        "123456789012345678901234567890123456789012345678901234567890",
        "-0.5e-400",
        "1e400",
        "\"x\"",
    ] {
        let r = s.post(format!(r#"{{"jsonrpc":"2.0","method":"ping","id":{id}}}"#).as_bytes());
        assert_eq!(
            r.text(),
            format!(r#"{{"jsonrpc":"2.0","result":"pong","id":{id}}}"#)
        );
    }
    let long_id = format!("\"{}\"", "i".repeat(100_000));
    let r = s.post(format!(r#"{{"jsonrpc":"2.0","method":"ping","id":{long_id}}}"#).as_bytes());
    assert!(r.text().ends_with(&format!(r#""id":{long_id}}}"#)));
}
