//! A restart while the database is down: usersvc starts from the local copy of its last snapshot
//! (beside the journal), serves reads marked stale, queues writes, and replays them when the
//! database is back. Without a usable copy it refuses to start, naming the copy and why.

use super::on;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use testbed::{Postgres, Usersvc};

fn copy_of(s: &Usersvc) -> PathBuf {
    s.dir().join("usersvc.snapshot")
}

/// Waits until the local copy holds `n` users (it is rewritten a few seconds after writes).
fn copy_holds(s: &Usersvc, n: usize) {
    testbed::eventually(
        "the local copy is up to date",
        Duration::from_secs(20),
        || service::store::read_copy(&copy_of(s)).is_ok_and(|users| users.len() == n),
    );
}

#[test]
fn a_cold_start_serves_the_local_copy_queues_writes_and_replays_them() {
    let mut pg = Postgres::start();
    let mut s = on(&pg, &[]);
    s.result("put_user", json!({"user": {"id": "a", "name": "Ada"}}));
    s.result("put_user", json!({"user": {"id": "a", "name": "Ada L."}}));
    s.result("put_user", json!({"user": {"id": "b", "name": "Bob"}}));
    copy_holds(&s, 2);
    s.kill();
    pg.crash();

    s.start_again_with_health(503);
    let health = s.get("/health").json();
    assert_eq!(
        (health["store"].clone(), health["snapshot"].clone()),
        (json!("degraded"), json!("local copy")),
        "{health}"
    );
    let r = s.post(br#"{"jsonrpc":"2.0","method":"get_user","params":["a"],"id":1}"#);
    let a = &r.json()["result"];
    assert_eq!(
        (a["name"].clone(), a["rev"].clone()),
        (json!("Ada L."), json!(2))
    );
    assert_eq!(
        r.header("warning"),
        Some("110 usersvc \"Response is Stale\"")
    );
    assert_eq!(
        s.result("get_users", Value::Null).as_array().map(Vec::len),
        Some(2)
    );
    let queued = s.call("put_user", json!({"user": {"id": "c", "name": "Cy"}}));
    assert_eq!(queued["result"]["queued"], true, "{queued}");
    // The copy may be behind the store: a conditional write cannot be checked against it, so
    // it is refused (nothing changed, retry later) rather than acknowledged and lost on replay.
    for rev in [1, 2] {
        let r = s.call("put_user", json!({"user": {"id": "a"}, "rev": rev}));
        assert_eq!(r["error"]["code"], -32000, "{r}");
        assert!(
            r["error"]["data"]
                .as_str()
                .is_some_and(|d| d.contains("cannot be checked")),
            "{r}"
        );
    }

    pg.restart();
    testbed::eventually(
        "the queued write is replayed",
        Duration::from_secs(30),
        || {
            let h = s.get("/health");
            h.status == 200 && h.json()["journal_depth"] == 0
        },
    );
    assert_eq!(
        pg.psql("SELECT doc FROM users WHERE id = 'c'"),
        r#"{"id":"c","name":"Cy"}"#
    );
    assert_eq!(s.result("get_user", json!(["c"]))["rev"], 1);
    assert_eq!(s.get("/health").json()["snapshot"], "store");
    assert_eq!(
        s.result(
            "put_user",
            json!({"user": {"id": "a", "name": "Ada"}, "rev": 2})
        )["rev"],
        3
    );
}

#[test]
fn without_a_usable_copy_it_refuses_to_start_and_names_the_copy() {
    let mut pg = Postgres::start();
    let mut s = on(&pg, &[]);
    s.result("put_user", json!({"user": {"id": "a"}}));
    copy_holds(&s, 1);
    s.kill();
    pg.crash();

    let copy = copy_of(&s);
    let mut bytes = std::fs::read(&copy).expect("copy");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    std::fs::write(&copy, &bytes).expect("damage");
    let (status, stderr) = s.run_to_failure();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.starts_with("usersvc: cannot open the database: "),
        "{stderr}"
    );
    assert!(
        // Named in full: the default journal (and its copy) is the working directory's.
        last_line.ends_with(&format!(
            "no local copy to start from: the snapshot copy {} is damaged: checksum mismatch",
            copy.display()
        )),
        "{stderr}"
    );

    std::fs::remove_file(&copy).expect("remove");
    let (status, stderr) = s.run_to_failure();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no snapshot copy at {}", copy.display())),
        "{stderr}"
    );
}

/// A user `id` nested exactly `levels` deep (the user object is level 1).
fn nested(id: &str, levels: usize) -> Value {
    let mut v = json!("leaf");
    for n in 1..levels {
        v = if n % 2 == 0 {
            json!([v])
        } else {
            json!({"d": v})
        };
    }
    json!({"id": id, "d": v})
}

#[test]
fn a_document_at_the_depth_limit_reads_back_through_the_journal_the_copy_and_the_store() {
    let limit = service::MAX_DEPTH;
    let mut pg = Postgres::start();
    let mut s = on(&pg, &[]);
    let same = |got: &Value, want: &Value| {
        assert_eq!(got["d"], want["d"], "document changed on its way back");
    };
    // The store.
    s.result("put_user", json!({"user": nested("stored", limit)}));
    same(
        &s.result("get_user", json!(["stored"])),
        &nested("stored", limit),
    );
    // One level more is refused, and the answer names the limit.
    let r = s.call("put_user", json!({"user": nested("deeper", limit + 1)}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let data = r["error"]["data"].as_str().unwrap_or_default();
    assert!(data.contains(&format!("at most {limit} levels")), "{r}");
    // The local copy.
    copy_holds(&s, 1);
    // The journal: three such writes queued during an outage, then a restart during it.
    pg.crash();
    for n in 0..3 {
        let r = s.call("put_user", json!({"user": nested(&format!("q{n}"), limit)}));
        assert_eq!(r["result"]["queued"], true, "{r}");
    }
    s.kill();
    s.start_again_with_health(503);
    same(
        &s.result("get_user", json!(["stored"])),
        &nested("stored", limit),
    );
    pg.restart();
    testbed::eventually("the journal is replayed", Duration::from_secs(30), || {
        let h = s.get("/health");
        h.status == 200 && h.json()["journal_depth"] == 0
    });
    for n in 0..3 {
        let id = format!("q{n}");
        let stored: Value =
            serde_json::from_str(&pg.psql(&format!("SELECT doc FROM users WHERE id = '{id}'")))
                .expect("stored as JSON");
        same(&stored, &nested(&id, limit));
        same(&s.result("get_user", json!([id])), &nested(&id, limit));
    }
    let h = s.get("/health").json();
    assert_eq!(
        (h["replay_conflicts"].clone(), h["quarantined"].clone()),
        (json!(0), json!(0)),
        "{h}"
    );
}
