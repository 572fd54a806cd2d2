//! usersvc on a real PostgreSQL cluster: same code path as SQLite, several instances consistent.

use super::on;
use serde_json::{Value, json};
use std::time::Duration;
use testbed::{Postgres, Usersvc};

fn eventually(what: &str, f: impl Fn() -> bool) {
    testbed::eventually(what, Duration::from_secs(10), f);
}

#[test]
fn same_api_on_postgres() {
    let pg = Postgres::start();
    let mut s = on(&pg, &[]);
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
    let one = on(&pg, &[]);
    let two = on(&pg, &[]);
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

/// One writer's win: it moved `id` from `expected` to `rev` with `doc`.
struct Win {
    id: String,
    expected: i64,
    rev: i64,
    doc: Value,
}

#[test]
fn sixty_four_writers_with_conflicts_equal_a_serial_run_of_the_winners() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pg = Postgres::start();
    let s = std::sync::Arc::new(on(&pg, &[]));
    let ids: Vec<String> = (0..8).map(|k| format!("k{k}")).collect();
    for id in &ids {
        s.result("put_user", json!({"user": {"id": id, "by": "setup"}}));
    }
    let conflicts = std::sync::Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..64)
        .map(|t| {
            let (s, ids, conflicts) = (s.clone(), ids.clone(), conflicts.clone());
            std::thread::spawn(move || {
                let mut wins = Vec::new();
                for round in 0..8 {
                    // Eight writers per id per round, each read-then-write at the rev it saw.
                    let id = &ids[(t + round) % ids.len()];
                    let expected = s.result("get_user", json!([id]))["rev"]
                        .as_i64()
                        .expect("rev");
                    let doc = json!({"id": id, "by": t, "round": round});
                    let r = s.call("put_user", json!({"user": doc, "rev": expected}));
                    match (&r["result"]["rev"], &r["error"]["code"]) {
                        (Value::Number(rev), _) => wins.push(Win {
                            id: id.clone(),
                            expected,
                            rev: rev.as_i64().expect("rev"),
                            doc,
                        }),
                        (_, code) if code == -32002 => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => panic!("neither a win nor a conflict: {r}"),
                    }
                }
                wins
            })
        })
        .collect();
    let mut wins: Vec<Win> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    assert!(
        conflicts.load(Ordering::Relaxed) > 0,
        "the writers never collided: the test proves nothing"
    );
    wins.sort_by(|a, b| (&a.id, a.expected).cmp(&(&b.id, b.expected)));
    for id in &ids {
        let chain: Vec<&Win> = wins.iter().filter(|w| &w.id == id).collect();
        // Exactly one winner per (id, rev), no gaps: a serial history 1 → 2 → … → n + 1.
        for (i, w) in chain.iter().enumerate() {
            assert_eq!((w.expected, w.rev), (i as i64 + 1, i as i64 + 2), "{id}");
        }
        let last = chain
            .last()
            .map_or(json!({"id": id, "by": "setup"}), |w| w.doc.clone());
        let row = pg.psql(&format!(
            "SELECT rev || ' ' || doc FROM users WHERE id = '{id}'"
        ));
        let (rev, doc) = row.split_once(' ').expect("row");
        assert_eq!(rev.parse::<usize>().expect("rev"), chain.len() + 1, "{id}");
        assert_eq!(
            serde_json::from_str::<Value>(doc).expect("doc"),
            last,
            "{id}"
        );
        let served = s.result("get_user", json!([id]));
        assert_eq!(served["rev"], chain.len() + 1, "{id}");
    }
}

#[test]
fn a_write_the_database_refuses_fails_alone_in_its_batch() {
    use service::doc::WriteDoc;
    use service::store::{Applied, Change, Writer};
    use service::store::{Expect, Store, StoreError};
    let pg = Postgres::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes = runtime.block_on(async {
        let store = Store::open(&pg.url(), Duration::from_secs(5))
            .await
            .expect("open");
        let put = |id: &str| Change::Put {
            doc: WriteDoc::new(id, &serde_json::Map::new(), "2026-11-23T00:00:00.000Z"),
            expect: Expect::Any,
        };
        // PostgreSQL text refuses NUL (validation keeps clients from sending one).
        let batch = vec![
            ("w1".to_owned(), put("a")),
            ("w2".to_owned(), put("bad\0id")),
            ("w3".to_owned(), put("b")),
        ];
        let mut writer = Writer::new(&store);
        let outcomes = writer.commit(&batch).await.expect("the batch commits");
        // The same ids again (a batch split after its commit timed out, or the journal
        // replaying it): the writes that were applied are recorded, so applied once; the one
        // the database refused is refused again, never "already applied" (which would be
        // answered as committed).
        let again = writer.commit(&batch).await.expect("again");
        assert!(
            matches!(
                again[..],
                [
                    Ok(Applied::AlreadyApplied),
                    Err(StoreError::RefusedEarlier),
                    Ok(Applied::AlreadyApplied)
                ]
            ),
            "{again:?}"
        );
        writer.close().await;
        store.close().await;
        outcomes
    });
    assert!(
        matches!(outcomes[0], Ok(Applied::Put(Some(1)))),
        "{outcomes:?}"
    );
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], Ok(Applied::Put(Some(1)))),
        "{outcomes:?}"
    );
    assert_eq!(
        pg.psql("SELECT string_agg(id, ',' ORDER BY id) FROM users"),
        "a,b"
    );
}

/// A write sent again (its first commit's answer lost to a timeout, a split batch or the
/// journal's replay) answers what its first attempt did, and is never judged again: a write
/// whose condition did not hold stays a conflict (the service once answered it "committed" at
/// the user's current revision: the seeded fault schedule's lost write), and a delete of an
/// absent user does not, sent again after a later write of its batch created the user, delete
/// that user. An id twice in one batch is one write.
#[test]
fn a_write_sent_again_answers_what_its_first_attempt_did() {
    use service::doc::WriteDoc;
    use service::store::{Applied, Change, Expect, Store, Writer};
    let pg = Postgres::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Store::open(&pg.url(), Duration::from_secs(5))
            .await
            .expect("open");
        let put = |id: &str, expect| Change::Put {
            doc: WriteDoc::new(id, &serde_json::Map::new(), "2026-12-07T00:00:00.000Z"),
            expect,
        };
        let delete = |id: &str| Change::Delete {
            id: id.to_owned(),
            expect: Expect::Any,
        };
        let mut writer = Writer::new(&store);
        let first = writer
            .commit(&[("w1".to_owned(), put("a", Expect::Any))])
            .await;
        assert!(
            matches!(first.as_deref(), Ok([Ok(Applied::Put(Some(1)))])),
            "{first:?}"
        );
        let batch = vec![
            ("w2".to_owned(), put("a", Expect::Rev(7))),
            ("w3".to_owned(), put("a", Expect::Absent)),
            ("w4".to_owned(), delete("b")),
            ("w5".to_owned(), put("b", Expect::Any)),
            ("w6".to_owned(), put("c", Expect::Any)),
            ("w6".to_owned(), put("c", Expect::Any)),
        ];
        let outcomes = writer.commit(&batch).await.expect("the batch commits");
        assert!(
            matches!(
                outcomes[..],
                [
                    Ok(Applied::Put(None)),
                    Ok(Applied::Put(None)),
                    Ok(Applied::Deleted(false)),
                    Ok(Applied::Put(Some(1))),
                    Ok(Applied::Put(Some(1))),
                    Ok(Applied::AlreadyApplied)
                ]
            ),
            "{outcomes:?}"
        );
        // The first half again, as a split batch sends it: each as its first attempt did.
        let again = writer.commit(&batch[..3]).await.expect("again");
        assert!(
            matches!(
                again[..],
                [
                    Ok(Applied::Put(None)),
                    Ok(Applied::Put(None)),
                    Ok(Applied::Deleted(false))
                ]
            ),
            "{again:?}"
        );
        // An operator's requeue lets a write that changed nothing be judged again; a write that
        // changed something stays applied once.
        let w7 = vec![("w7".to_owned(), put("c", Expect::Rev(2)))];
        let later = [("w8".to_owned(), put("c", Expect::Any))];
        let first = writer.commit(&w7).await;
        assert!(
            matches!(first.as_deref(), Ok([Ok(Applied::Put(None))])),
            "{first:?}"
        );
        let c2 = writer.commit(&later).await;
        assert!(
            matches!(c2.as_deref(), Ok([Ok(Applied::Put(Some(2)))])),
            "{c2:?}"
        );
        writer.unmark(&["w7", "w1"]).await.expect("unmark");
        let judged = writer.commit(&w7).await;
        assert!(
            matches!(judged.as_deref(), Ok([Ok(Applied::Put(Some(3)))])),
            "{judged:?}"
        );
        let w1 = writer
            .commit(&[("w1".to_owned(), put("a", Expect::Any))])
            .await;
        assert!(
            matches!(w1.as_deref(), Ok([Ok(Applied::AlreadyApplied)])),
            "{w1:?}"
        );
        writer.close().await;
        store.close().await;
    });
    assert_eq!(
        pg.psql("SELECT string_agg(id || '@' || rev, ',' ORDER BY id) FROM users"),
        "a@1,b@1,c@3",
        "b, created after its delete, is still there"
    );
}

/// Runs `usersvc import` of `users` against `url`; its output.
fn import(url: &str, dir: &std::path::Path, users: &Value) -> std::process::Output {
    let path = dir.join("users.json");
    std::fs::write(&path, users.to_string()).expect("write the import file");
    std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"))
        .current_dir(dir)
        .args(["--database-url", url, "import"])
        .arg(&path)
        .output()
        .expect("run usersvc import")
}

#[test]
fn import_copies_a_first_load_upserts_over_stored_users_and_ends_as_on_sqlite() {
    let pg = Postgres::start();
    let running = on(&pg, &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("same.db").display());
    // Ids a COPY row could be cut or ended by, if a value were pasted in unescaped.
    let odd = [
        "tab\there",
        "line\nbreak",
        "back\\slash\\.",
        "cr\rx",
        "\\.",
        "quote\"'ü",
    ];
    let mut first: Vec<Value> = odd.iter().map(|id| json!({"id": id, "v": 1})).collect();
    first.extend((0..200).map(|i| json!({"id": format!("bulk{i:03}"), "v": 1})));
    // Over stored ids, twice: the first time its first user is new, so PostgreSQL tries the
    // plain COPY, which fails on a stored id and is taken back for the upsert; the second time
    // its first user is stored and it goes straight to the upsert.
    let second =
        json!([{"id": "fresh", "v": 3}, {"id": "bulk000", "v": 2}, {"id": "tab\there", "v": 2}]);
    for url in [pg.url(), sqlite.clone()] {
        for (users, count) in [
            (json!(first), 206),
            (second.clone(), 3),
            (second.clone(), 3),
        ] {
            let out = import(&url, dir.path(), &users);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&format!("imported {count} users")),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert_eq!(pg.psql("SELECT count(*) FROM users"), "207");
    assert_eq!(pg.psql("SELECT rev FROM users WHERE id = 'fresh'"), "2");
    assert_eq!(pg.psql("SELECT rev FROM users WHERE id = 'bulk000'"), "3");
    assert_eq!(pg.psql("SELECT rev FROM users WHERE id = 'bulk001'"), "1");
    // The running instance heard both: the bulk load as a reload, the small one id by id.
    eventually("the running instance sees both imports", || {
        running.call("get_user", json!(["fresh"]))["result"]["v"] == 3
            && running.call("get_user", json!(["line\nbreak"]))["result"]["v"] == 1
    });
    // All but the time of writing, which differs by run.
    let written = |users: Value| -> Vec<(Value, Value, Value)> {
        let users = users.as_array().cloned().unwrap_or_default();
        users
            .into_iter()
            .map(|u| (u["id"].clone(), u["rev"].clone(), u["v"].clone()))
            .collect()
    };
    let on_pg = written(running.result("get_users", Value::Null));
    let on_sqlite = written(
        Usersvc::start_on(env!("CARGO_BIN_EXE_usersvc").as_ref(), Some(&sqlite), &[])
            .result("get_users", Value::Null),
    );
    assert_eq!(on_pg.len(), 207);
    assert!(
        on_pg == on_sqlite,
        "the same imports end differently on the two stores"
    );
    assert_eq!(running.result("get_user", json!(["tab\there"]))["rev"], 3);

    // All or nothing, on every path: a row the database refuses after others were sent (the
    // plain COPY; the COPY taken back for the upsert; the upsert straight away) leaves nothing
    // of the file.
    pg.psql("ALTER TABLE users ADD CONSTRAINT no_refused CHECK (id <> 'refused')");
    for users in [
        json!([{"id": "not-kept"}, {"id": "refused"}]),
        json!([{"id": "not-kept"}, {"id": "fresh", "v": 4}, {"id": "refused"}]),
        json!([{"id": "fresh", "v": 4}, {"id": "not-kept"}, {"id": "refused"}]),
    ] {
        let bad = import(&pg.url(), dir.path(), &users);
        assert!(!bad.status.success());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(
            err.contains("nothing was imported") && err.contains("no_refused"),
            "{err}"
        );
    }
    assert_eq!(pg.psql("SELECT count(*) FROM users"), "207");
    assert_eq!(pg.psql("SELECT rev FROM users WHERE id = 'fresh'"), "2");
}

/// README's set-up, as `createuser` and `createdb --owner` do it: a role that is no superuser
/// and owns its database is all usersvc needs; it makes its own tables there.
#[test]
fn a_role_that_owns_its_database_is_enough() {
    let pg = Postgres::start();
    pg.psql("CREATE ROLE usersvc LOGIN PASSWORD 'secret' NOSUPERUSER NOCREATEDB NOCREATEROLE");
    pg.psql("CREATE DATABASE usersvc OWNER usersvc");
    let url = format!("postgres://usersvc:secret@127.0.0.1:{}/usersvc", pg.port());
    let s = Usersvc::start_on(env!("CARGO_BIN_EXE_usersvc").as_ref(), Some(&url), &[]);
    assert_eq!(
        s.result("put_user", json!({"user": {"id": "ann"}})),
        json!({"id": "ann", "rev": 1})
    );
    assert_eq!(s.result("get_user", json!(["ann"]))["id"], "ann");
    assert_eq!(
        pg.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'usersvc'"),
        "f",
        "no superuser made those tables"
    );
    // Its password never reaches the log.
    assert!(!s.log().contains("secret"), "{}", s.log());
}
