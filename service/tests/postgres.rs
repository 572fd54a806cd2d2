//! usersvc on a real PostgreSQL cluster: same code path as SQLite, several instances consistent.

use serde_json::{Value, json};
use std::time::Duration;
use testbed::{Postgres, Usersvc};

fn on(pg: &Postgres) -> Usersvc {
    Usersvc::start_on(env!("CARGO_BIN_EXE_usersvc").as_ref(), Some(&pg.url()), &[])
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    testbed::eventually(what, Duration::from_secs(10), f);
}

#[test]
fn same_api_on_postgres() {
    let pg = Postgres::start();
    let mut s = on(&pg);
    assert_eq!(
        s.result("put_user", json!({"user": {"id": "a", "n": 1}})),
        json!({"id": "a", "rev": 1})
    );
    assert_eq!(
        s.result("put_user", json!({"user": {"id": "a", "n": 2}, "rev": 1}))["rev"],
        2
    );
    assert_eq!(
        s.call("put_user", json!({"user": {"id": "a"}, "rev": 1}))["error"]["code"],
        -32002
    );
    s.result("put_users", json!([{"id": "b"}, {"id": "c"}]));
    s.result("delete_user", json!(["c"]));
    s.restart();
    let all = s.result("get_users", Value::Null);
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    assert_eq!(all[0]["n"], 2);
    assert_eq!(pg.psql("SELECT count(*) FROM users"), "2");
}

#[test]
fn instances_on_one_cluster_see_each_others_writes() {
    let pg = Postgres::start();
    let one = on(&pg);
    let two = on(&pg);
    one.result("put_user", json!({"user": {"id": "x", "by": "one"}}));
    eventually("two sees one's insert", || {
        two.call("get_user", json!(["x"]))["result"]["by"] == "one"
    });
    two.result(
        "put_user",
        json!({"user": {"id": "x", "by": "two"}, "rev": 1}),
    );
    eventually("one sees two's update", || {
        one.call("get_user", json!(["x"]))["result"]["rev"] == 2
    });
    one.result(
        "put_users",
        json!(
            (0..300)
                .map(|i| json!({"id": format!("bulk{i:03}")}))
                .collect::<Vec<_>>()
        ),
    );
    eventually("two sees one's bulk write", || {
        two.result("get_users", Value::Null)
            .as_array()
            .map(Vec::len)
            == Some(301)
    });
    two.result("delete_user", json!(["x"]));
    eventually("one sees two's delete", || {
        one.call("get_user", json!(["x"]))["error"]["code"] == -32001
    });
    // A write made behind the services' backs (another tool, a migration) reaches them too once
    // announced on the channel.
    pg.psql("INSERT INTO users (id, rev, doc, updated_at) VALUES ('sql', 1, '{\"id\":\"sql\"}', 'now'); SELECT pg_notify('usersvc_users', 'sql')");
    eventually("one sees a write made in SQL", || {
        one.call("get_user", json!(["sql"])).get("result").is_some()
    });
}
