//! Writes are durable and concurrent writers are handled: restart, many writers, one winner per
//! revision, and SIGTERM that lets in-flight requests finish.

use super::svc;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use testbed::Usersvc;

#[test]
fn data_survives_a_restart() {
    let mut s = svc(&[]);
    let w = s.result(
        "put_user",
        json!({"user": {"id": "keep", "tags": ["a", {"b": null}], "n": 1.5}}),
    );
    assert_eq!(w, json!({"id": "keep", "rev": 1}));
    let created = s.result("put_user", json!({"user": {"name": "no id given"}}));
    let new_id = created["id"].as_str().expect("generated id").to_owned();
    s.result(
        "put_user",
        json!({"user": {"id": "keep", "tags": [], "n": 2}, "rev": 1}),
    );
    s.result("put_users", json!([{"id": "b1"}, {"id": "b2"}]));
    s.result("delete_user", json!(["b1"]));
    let before = s.result("get_users", Value::Null);

    s.restart();
    assert_eq!(s.result("get_users", Value::Null), before);
    let keep = s.result("get_user", json!({"id": "keep"}));
    assert_eq!(
        (keep["rev"].clone(), keep["n"].clone(), keep["tags"].clone()),
        (json!(2), json!(2), json!([]))
    );
    assert_eq!(s.result("get_user", json!([new_id]))["name"], "no id given");
    assert_eq!(s.call("get_user", json!(["b1"]))["error"]["code"], -32001);
}

#[test]
fn concurrent_writers_on_distinct_ids_are_all_stored() {
    let s = svc(&[]);
    std::thread::scope(|scope| {
        for t in 0..200 {
            let s = &s;
            scope.spawn(move || {
                let w = s.result(
                    "put_user",
                    json!({"user": {"id": format!("u{t:03}"), "t": t}}),
                );
                assert_eq!(w["rev"], 1);
            });
        }
    });
    let all = s.result("get_users", Value::Null);
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 200);
    for (i, u) in all.iter().enumerate() {
        assert_eq!(u["id"], format!("u{i:03}"));
        assert_eq!(u["t"], i);
    }
    // paging walks the same set in order
    let mut after: Option<String> = None;
    let mut seen = 0;
    loop {
        let page = s.result("get_users", json!({"limit": 64, "after": after}));
        let page = page.as_array().expect("array");
        if page.is_empty() {
            break;
        }
        seen += page.len();
        after = page
            .last()
            .and_then(|u| u["id"].as_str())
            .map(str::to_owned);
    }
    assert_eq!(seen, 200);
}

#[test]
fn same_revision_writers_exactly_one_wins() {
    let s = svc(&[]);
    s.result("put_user", json!({"user": {"id": "hot", "v": 0}}));
    let outcomes: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    s.call("put_user", json!({"user": {"id": "hot", "v": t}, "rev": 1}))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    });
    let winners: Vec<&Value> = outcomes
        .iter()
        .filter(|o| o.get("result").is_some())
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert_eq!(winners[0]["result"]["rev"], 2);
    for o in outcomes.iter().filter(|o| o.get("error").is_some()) {
        assert_eq!(o["error"]["code"], -32002, "{o}");
        assert_eq!(o["error"]["data"]["current"], 2);
    }
    let stored = s.result("get_user", json!(["hot"]));
    assert_eq!(stored["rev"], 2);
    // create-only (rev 0) conflicts with an existing id
    assert_eq!(
        s.call("put_user", json!({"user": {"id": "hot"}, "rev": 0}))["error"]["code"],
        -32002
    );
}

/// Sends a request's headers and half its body, so it is in flight until we send the rest.
fn half_sent(s: &Usersvc, body: &str) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(s.addr()).expect("connect");
    let (head, tail) = body.split_at(body.len() / 2);
    write!(
        conn,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        body.len()
    )
    .expect("send first half");
    conn.flush().expect("flush");
    (conn, tail.to_owned())
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mut s = svc(&[]);
    let bodies: Vec<String> = (0..8)
        .map(|i| {
            json!({"jsonrpc": "2.0", "method": "put_user", "params": {"user": {"id": format!("inflight{i}")}}, "id": i})
                .to_string()
        })
        .collect();
    let mut pending: Vec<(TcpStream, String)> = bodies.iter().map(|b| half_sent(&s, b)).collect();
    // The server accepts in order from one backlog: once a later connection is answered, every
    // half-sent one is accepted, hence in flight, before the signal.
    s.result("ping", Value::Null);
    s.signal(libc::SIGTERM);
    testbed::eventually(
        "shutdown begins: new connections are refused",
        Duration::from_secs(10),
        || TcpStream::connect(s.addr()).is_err(),
    );
    for (i, (conn, tail)) in pending.iter_mut().enumerate() {
        conn.write_all(tail.as_bytes()).expect("send the rest");
        let mut resp = String::new();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The server closes the connection after answering (it is shutting down).
        let _ = conn.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "request {i} got: {resp:?}"
        );
        assert!(
            resp.contains(&format!("\"id\":\"inflight{i}\"")),
            "request {i} got: {resp:?}"
        );
    }
    let status = s
        .wait_exit(Duration::from_secs(30))
        .expect("usersvc must exit after draining");
    assert_eq!(status.code(), Some(0), "{}", s.log());

    // Every acknowledged write is in the database.
    let again = Usersvc::start_on(
        env!("CARGO_BIN_EXE_usersvc").as_ref(),
        Some(s.database_url()),
        &[],
    );
    assert_eq!(
        again
            .result("get_users", Value::Null)
            .as_array()
            .map(Vec::len),
        Some(8)
    );
}

#[test]
fn import_loads_all_or_nothing() {
    let s = svc(&[]);
    let dir = s.dir().to_owned();
    let db = format!("sqlite://{}", dir.join("import.db").display());
    let run = |file: &str, content: &str| {
        let path = dir.join(file);
        std::fs::write(&path, content).expect("write import file");
        std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"))
            .args(["--database-url", &db, "import"])
            .arg(&path)
            .output()
            .expect("run usersvc import")
    };
    let bad = run("bad.json", r#"[{"id": "x"}, {"id": 3}]"#);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("user #1") && err.contains("nothing was imported"),
        "{err}"
    );
    let ok = run("good.json", r#"[{"id": "x", "n": 1}, {"id": "y"}]"#);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("imported 2 users"));
    let served = Usersvc::start_on(env!("CARGO_BIN_EXE_usersvc").as_ref(), Some(&db), &[]);
    let all = served.result("get_users", Value::Null);
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    assert_eq!(all[0]["n"], 1);
}

/// SQLite's write-ahead log is checkpointed as writes go on: under a steady stream of commits
/// it stays bounded instead of growing with every write.
#[test]
fn the_sqlite_log_is_checkpointed_while_writes_go_on() {
    let s = svc(&[]);
    let wal = s.dir().join("users.db-wal");
    // One-by-one commits, each a few pages of log, until unchecked they would be four times
    // SQLite's checkpoint threshold (1000 pages): a count, not a time, so a slow machine does
    // not make the bound below meaningless.
    let mut n: u64 = 0;
    while n * 8 * 1024 < 16 << 20 {
        s.result(
            "put_user",
            json!({"user": {"id": format!("u{}", n % 500), "n": n}}),
        );
        n += 1;
    }
    std::thread::sleep(Duration::from_millis(1500));
    s.result("put_user", json!({"user": {"id": "last"}}));
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    // Without checkpoints the log holds every commit since the start (about 8 KiB each).
    let unchecked = n * 8 * 1024;
    assert!(
        size < unchecked / 2,
        "{size} bytes of log after {n} commits (unchecked: ~{unchecked})"
    );
}
