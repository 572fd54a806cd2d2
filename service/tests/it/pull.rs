//! Pulling users from an upstream served by the test over real HTTP: a good payload is stored
//! (and pulling it again changes nothing); every kind of bad payload changes nothing.

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testbed::Usersvc;
use testbed::canned::{Canned, Reply, Seen};

#[derive(Clone)]
enum Upstream {
    Json(String),
    Status(&'static str),
    Huge,
    Stall,
}

fn upstream(state: Arc<Mutex<Upstream>>) -> Canned {
    Canned::start(move |_: &Seen| {
        match state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(Upstream::Status("500 Oops"))
        {
            Upstream::Json(body) => Reply::json(body),
            Upstream::Status(status) => Reply::Http {
                status,
                content_type: "text/html",
                body: b"<h1>upstream broken</h1>".to_vec(),
            },
            Upstream::Huge => Reply::Huge {
                size: 2 * 1024 * 1024,
            },
            Upstream::Stall => Reply::After(Duration::from_secs(5), Box::new(Reply::json("[]"))),
        }
    })
}

fn health(s: &Usersvc) -> Value {
    s.get("/health").json()
}

/// Waits until the service has made `n` more pull attempts (ok or failed) than `since`.
fn wait_pulls(s: &Usersvc, since: &Value, n: u64) -> Value {
    let total = |h: &Value| {
        h["pull"]["ok"].as_u64().unwrap_or(0) + h["pull"]["failed"].as_u64().unwrap_or(0)
    };
    let start = total(since);
    let seen = Mutex::new(Value::Null);
    testbed::eventually("the next pulls happen", Duration::from_secs(20), || {
        let h = health(s);
        let done = total(&h) >= start + n;
        *toolkit_core::lock(&seen) = h;
        done
    });
    seen.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn pulls_good_payloads_and_refuses_bad_ones_whole() {
    let state = Arc::new(Mutex::new(Upstream::Json(
        json!([{"id": "a", "name": "Ann"}, {"id": "b", "name": "Bob"}]).to_string(),
    )));
    let up = upstream(state.clone());
    let s = Usersvc::start_with(
        env!("CARGO_BIN_EXE_usersvc").as_ref(),
        &[
            "--pull-url",
            &format!("http://{}/users.json", up.addr()),
            "--pull-interval",
            "50ms",
            "--pull-timeout",
            "500ms",
            "--pull-max-size",
            "1048576",
        ],
    );
    let h = wait_pulls(&s, &json!({}), 2);
    let users = s.result("get_users", Value::Null);
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
    assert_eq!(users[0]["name"], "Ann");
    // Pulled again and again: same content, same revisions (idempotent).
    let h = wait_pulls(&s, &h, 3);
    assert_eq!(s.result("get_user", json!(["a"]))["rev"], 1);
    assert_eq!(h["pull"]["changed"], 2, "{h}");

    let before = s.result("get_users", Value::Null);
    let bad = [
        (
            Upstream::Json(json!({"users": []}).to_string()),
            "not a JSON array",
        ),
        (
            Upstream::Json(json!([{"id": "a", "name": "CHANGED"}, 7]).to_string()),
            "user #1",
        ),
        (
            Upstream::Json(json!([{"id": "a", "name": "CHANGED"}, {"name": "no id"}]).to_string()),
            "has no \"id\"",
        ),
        (
            Upstream::Json(json!([{"id": "a", "name": "CHANGED"}, {"id": 5}]).to_string()),
            "user #1",
        ),
        (
            Upstream::Json(json!([{"id": "c"}, {"id": "c"}]).to_string()),
            "appears twice",
        ),
        (
            Upstream::Json("[{\"id\": \"a\", \"name\": ".into()),
            "not a JSON array",
        ),
        (Upstream::Status("500 Internal Server Error"), "HTTP 500"),
        (Upstream::Huge, "fetching"),
        (Upstream::Stall, "fetching"),
    ];
    for (payload, why) in bad {
        *state.lock().expect("state") = payload;
        let since = health(&s);
        // Two attempts: the first may have started before the payload changed.
        let h = wait_pulls(&s, &since, 2);
        let last = h["pull"]["last_error"].as_str().unwrap_or("").to_owned();
        assert!(last.contains(why), "wanted {why:?} in {last:?}");
        assert_eq!(
            s.result("get_users", Value::Null),
            before,
            "a bad payload changed data ({why})"
        );
    }
    // Back to a good payload with one change: only that user gets a new revision.
    *state.lock().expect("state") = Upstream::Json(
        json!([{"id": "a", "name": "Ann"}, {"id": "b", "name": "Bobby"}]).to_string(),
    );
    let since = health(&s);
    wait_pulls(&s, &since, 2);
    assert_eq!(s.result("get_user", json!(["a"]))["rev"], 1);
    let b = s.result("get_user", json!(["b"]));
    assert_eq!(
        (b["rev"].clone(), b["name"].clone()),
        (json!(2), json!("Bobby"))
    );
}
