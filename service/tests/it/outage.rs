//! The store goes away under a running service: reads keep answering from the snapshot, writes
//! are queued in the fsync'd journal, and nothing is lost or applied twice when it comes back,
//! even across a kill -9 or a journal whose last record was cut short.

use serde_json::{Value, json};
use std::time::Duration;
use testbed::{Postgres, Usersvc};

fn on(pg: &Postgres) -> Usersvc {
    Usersvc::start_on(
        env!("CARGO_BIN_EXE_usersvc").as_ref(),
        Some(&pg.url()),
        &[
            "--breaker-failures",
            "1",
            "--breaker-backoff",
            "100ms",
            "--store-timeout",
            "300ms",
        ],
    )
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    testbed::eventually(what, Duration::from_secs(20), f);
}

/// Writes `n = from..to` to user "seq"; each answer must say it was queued.
fn queue_writes(s: &Usersvc, from: u32, to: u32) {
    for n in from..to {
        let r = s.call("put_user", json!({"user": {"id": "seq", "n": n}}));
        assert_eq!(
            r["result"]["queued"], true,
            "write {n} while the store is down: {r}"
        );
        assert_eq!(r["result"]["id"], "seq");
    }
}

/// Waits until the journal is replayed and the service is healthy again.
fn replayed(s: &Usersvc) {
    eventually("the journal is replayed", || {
        let h = s.get("/health");
        h.status == 200 && h.json()["journal_depth"] == 0
    });
}

fn stored(pg: &Postgres, id: &str) -> (i64, Value) {
    let row = pg.psql(&format!(
        "SELECT rev || ' ' || doc FROM users WHERE id = '{id}'"
    ));
    let (rev, doc) = row
        .split_once(' ')
        .unwrap_or_else(|| panic!("no row for {id}: {row:?}"));
    (
        rev.parse().expect("rev"),
        serde_json::from_str(doc).expect("doc"),
    )
}

#[test]
fn store_outage_under_traffic_loses_no_write() {
    let mut pg = Postgres::start();
    let s = on(&pg);
    s.result("put_user", json!({"user": {"id": "seq", "n": 0}}));
    s.result("put_user", json!({"user": {"id": "other", "v": "kept"}}));

    pg.stop();
    queue_writes(&s, 1, 21);
    // Reads still answer, from the snapshot, marked stale.
    let r = s.post(br#"{"jsonrpc":"2.0","method":"get_user","params":["other"],"id":1}"#);
    assert_eq!(r.json()["result"]["v"], "kept");
    assert_eq!(
        r.header("warning"),
        Some("110 usersvc \"Response is Stale\"")
    );
    s.expect_log("breaker open");
    let all = s.result("get_users", Value::Null);
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    let health = s.get("/health");
    assert_eq!(health.status, 503);
    let h = health.json();
    assert_eq!(
        (h["store"].clone(), h["journal_depth"].clone()),
        (json!("degraded"), json!(20)),
        "{h}"
    );
    // The supervisor's probes say why the store is away, in the operator's words; sqlx's own
    // lines and PostgreSQL's source line numbers stay out of the log.
    testbed::eventually("a probe failed", Duration::from_secs(20), || {
        s.log().contains("store still unavailable")
    });
    let log = s.log();
    assert!(log.contains("Connection refused"), "{log}");
    for noise in ["sqlx", "at line", "pool timed out"] {
        assert!(!log.contains(noise), "{noise}:\n{log}");
    }
    // What an operator needs to read: why it is unreachable, not that a pool timed out.
    assert!(
        h["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "{h}"
    );
    // A load balancer keeps sending it work: reads are answered and writes queued.
    let ready = s.get("/health/ready");
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, json!("ready"))
    );
    assert_eq!(s.get("/health/live").status, 200);
    // A conditional write that cannot succeed is refused now, not queued to fail later.
    assert_eq!(
        s.call("put_user", json!({"user": {"id": "other"}, "rev": 9}))["error"]["code"],
        -32002
    );
    assert_eq!(
        s.call("delete_user", json!(["ghost"]))["error"]["code"],
        -32001
    );

    pg.restart();
    replayed(&s);
    // 20 queued writes applied once each, in order: rev 1 + 20, last value wins.
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!((rev, doc["n"].clone()), (21, json!(20)));
    let served = s.result("get_user", json!(["seq"]));
    assert_eq!(
        (served["rev"].clone(), served["n"].clone()),
        (json!(21), json!(20))
    );
    assert_eq!(s.get("/health").json()["replayed_total"], 20);
    let fresh = s.post(br#"{"jsonrpc":"2.0","method":"ping","id":1}"#);
    assert_eq!(
        fresh.header("warning"),
        None,
        "not stale once the store is back"
    );
    // Writes go straight to the store again.
    assert_eq!(
        s.result("put_user", json!({"user": {"id": "seq", "n": 21}}))["rev"],
        22
    );
}

#[test]
fn queued_writes_survive_kill_9() {
    let mut pg = Postgres::start();
    let mut s = on(&pg);
    s.result("put_user", json!({"user": {"id": "seq", "n": 0}}));
    pg.stop();
    queue_writes(&s, 1, 6);
    s.result("put_users", json!([{"id": "bulk1"}, {"id": "bulk2"}]));
    s.kill();
    pg.restart();
    s.start_again();
    // Replay happens before the service serves writes.
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!((rev, doc["n"].clone()), (6, json!(5)));
    assert_eq!(
        pg.psql("SELECT count(*) FROM users WHERE id LIKE 'bulk%'"),
        "2"
    );
    assert_eq!(s.get("/health").json()["journal_depth"], 0);
    assert_eq!(s.result("get_user", json!(["bulk2"]))["id"], "bulk2");
}

/// "seq" written at n = 0, then `n = 1..to` queued with the store stopped, then kill -9: the
/// service (to start again) and its journal.
fn killed_with_queued_writes(pg: &mut Postgres, to: u32) -> (Usersvc, std::path::PathBuf) {
    let mut s = on(pg);
    s.result("put_user", json!({"user": {"id": "seq", "n": 0}}));
    pg.stop();
    queue_writes(&s, 1, to);
    s.kill();
    let journal = s.dir().join("usersvc.journal");
    (s, journal)
}

/// Bytes taken by the first two records of a journal.
fn intact_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    for _ in 0..2 {
        at += 8 + u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
            as usize;
    }
    at
}

#[test]
fn a_journal_cut_short_replays_its_intact_prefix() {
    let mut pg = Postgres::start();
    let (mut s, journal) = killed_with_queued_writes(&mut pg, 4);
    // A crash in the middle of the last append: its record is cut short.
    let bytes = std::fs::read(&journal).expect("journal exists");
    std::fs::write(&journal, &bytes[..bytes.len() - 7]).expect("truncate");
    pg.restart();
    // Serving, and telling Nagios that a queued write is in quarantine.
    s.start_again_with_health(503);
    s.expect_log("record is cut short");
    // Moved aside, bytes intact, not dropped.
    let quarantined =
        std::fs::read(s.dir().join("usersvc.journal.quarantine")).expect("quarantine");
    assert_eq!(
        quarantined.len(),
        8 + (bytes.len() - 7) - intact_len(&bytes)
    );
    assert_eq!(s.get("/health").json()["quarantined"], 1);
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!(
        (rev, doc["n"].clone()),
        (3, json!(2)),
        "the two intact writes, not the cut one"
    );
    assert_eq!(
        s.result("put_user", json!({"user": {"id": "seq", "n": 9}}))["rev"],
        4
    );
}

#[test]
fn a_conditional_write_is_checked_against_the_writes_queued_ahead_of_it() {
    let mut pg = Postgres::start();
    let s = on(&pg);
    s.result("put_user", json!({"user": {"id": "x", "v": 0}}));
    pg.stop();
    let first = s.call("put_user", json!({"user": {"id": "x", "v": 1}, "rev": 1}));
    assert_eq!(first["result"]["queued"], true, "{first}");
    // The queued write will leave rev 2: a second write on rev 1 cannot win, so it is refused
    // now rather than acknowledged and then lost on replay.
    let second = s.call("put_user", json!({"user": {"id": "x", "v": 2}, "rev": 1}));
    assert_eq!(second["error"]["code"], -32002, "{second}");
    assert_eq!(second["error"]["data"]["current"], 2, "{second}");
    let third = s.call("put_user", json!({"user": {"id": "x", "v": 3}, "rev": 2}));
    assert_eq!(third["result"]["queued"], true, "{third}");
    pg.restart();
    replayed(&s);
    let (rev, doc) = stored(&pg, "x");
    assert_eq!((rev, doc["v"].clone()), (3, json!(3)));
    assert_eq!(s.get("/health").json()["replay_conflicts"], 0);
}

#[test]
fn a_conflict_found_on_replay_is_reported_not_dropped_silently() {
    let mut pg = Postgres::start();
    let s = on(&pg);
    s.result("put_user", json!({"user": {"id": "x", "v": 0}}));
    pg.stop();
    let r = s.call("put_user", json!({"user": {"id": "x", "v": 1}, "rev": 1}));
    assert_eq!(r["result"]["queued"], true, "{r}");
    // Another instance writes "x" before this one replays (usersvc is frozen meanwhile, so
    // the order is certain): the queued write's condition no longer holds.
    s.signal(libc::SIGSTOP);
    pg.restart();
    pg.psql("UPDATE users SET rev = 2 WHERE id = 'x'");
    s.signal(libc::SIGCONT);
    eventually("the journal is replayed", || {
        s.get("/health").json()["journal_depth"] == 0
    });
    let h = s.get("/health").json();
    assert_eq!(
        (h["replayed_total"].clone(), h["replay_conflicts"].clone()),
        (json!(0), json!(1)),
        "{h}"
    );
    // Quarantined, never dropped: logged by its write id, its document kept out of the log.
    assert_eq!(h["quarantined"], 1, "{h}");
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("queued write could not be applied on replay: moved to quarantine"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("write_id") && !line.contains("doc"), "{line}");
    let (rev, doc) = stored(&pg, "x");
    assert_eq!((rev, doc["v"].clone()), (2, json!(0)));
}

fn with_defaults(pg: &Postgres, extra: &[&str]) -> Usersvc {
    Usersvc::start_on(
        env!("CARGO_BIN_EXE_usersvc").as_ref(),
        Some(&pg.url()),
        extra,
    )
}

/// What a write answered: committed (`rev`) or queued; anything else fails the test.
fn acknowledged(r: &Value) -> &'static str {
    match (&r["result"]["rev"], &r["result"]["queued"]) {
        (Value::Number(_), _) => "committed",
        (_, Value::Bool(true)) => "queued",
        _ => panic!("a write during the outage was not acknowledged: {r}"),
    }
}

#[test]
fn a_crashed_store_queues_every_write_at_once_with_the_default_flags() {
    let mut pg = Postgres::start();
    let s = with_defaults(&pg, &[]);
    s.result("put_user", json!({"user": {"id": "seq", "n": 0}}));
    pg.crash();
    // The first write meets the dead connection: queued, not refused after --breaker-failures.
    let first = s.call("put_user", json!({"user": {"id": "seq", "n": 1}}));
    assert_eq!(acknowledged(&first), "queued", "{first}");
    for n in 2..=20 {
        let r = s.call("put_user", json!({"user": {"id": "seq", "n": n}}));
        acknowledged(&r);
        let other = s.call("put_user", json!({"user": {"id": format!("u{n}")}}));
        acknowledged(&other);
    }
    assert!(!s.log().contains("pool timed out"), "{}", s.log());
    pg.restart();
    replayed(&s);
    // 20 writes to "seq", each applied once and in order: rev 1 + 20, the last value wins.
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!((rev, doc["n"].clone()), (21, json!(20)));
    assert_eq!(
        pg.psql("SELECT count(*) FROM users WHERE id LIKE 'u%'"),
        "19"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM users WHERE id LIKE 'u%' AND rev = 1"),
        "19",
        "none applied twice"
    );
    assert_eq!(s.result("get_user", json!(["seq"]))["rev"], 21);
}

#[test]
fn a_stalled_store_times_the_request_out_and_loses_no_write() {
    let mut pg = Postgres::start();
    let s = with_defaults(&pg, &["--request-timeout", "500ms"]);
    s.result("put_user", json!({"user": {"id": "seq", "n": 0}}));
    pg.pause();
    let r = s.call("put_user", json!({"user": {"id": "stalled", "v": 1}}));
    assert_eq!(r["error"]["code"], -32003, "{r}");
    assert_eq!(r["error"]["data"], "no answer within 500ms", "{r}");
    // Reads never wait on the store.
    assert_eq!(s.result("get_user", json!(["seq"]))["n"], 0);
    eventually("the stalled write is queued", || {
        s.get("/health").json()["journal_depth"] == 1
    });
    pg.resume();
    replayed(&s);
    let (rev, doc) = stored(&pg, "stalled");
    assert_eq!(
        (rev, doc["v"].clone()),
        (1, json!(1)),
        "applied exactly once"
    );
    assert_eq!(s.result("get_user", json!(["stalled"]))["v"], 1);
}

#[test]
fn shutdown_finishes_the_writes_it_took_without_opening_the_breaker() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pg = Postgres::start();
    let mut s = with_defaults(&pg, &[]);
    let url = s.url();
    let answered = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let (url, answered) = (url.clone(), answered.clone());
            std::thread::spawn(move || {
                let agent = testbed::http::agent();
                let mut committed = Vec::new();
                for n in 0..50 {
                    let id = format!("w{t}-{n}");
                    let body = json!({"jsonrpc": "2.0", "method": "put_user",
                        "params": {"user": {"id": id}}, "id": 1});
                    // After SIGTERM the port closes: a refused connection ends this writer.
                    let Ok(mut resp) = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body.to_string())
                    else {
                        break;
                    };
                    let Ok(v) = resp.body_mut().read_json::<Value>() else {
                        break;
                    };
                    assert_eq!(v["result"]["rev"], 1, "a write taken before shutdown: {v}");
                    committed.push(id);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                committed
            })
        })
        .collect();
    eventually("writes are flowing", || {
        answered.load(Ordering::Relaxed) >= 100
    });
    assert!(s.terminate().success(), "{}", s.log());
    let committed: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    let log = s.log();
    for sign in [
        "breaker open",
        "closed pool",
        "queueing",
        "store write failed",
    ] {
        assert!(
            !log.contains(sign),
            "shutdown looked like an outage ({sign}):\n{log}"
        );
    }
    assert_eq!(
        std::fs::read(s.dir().join("usersvc.journal"))
            .map(|b| b.len())
            .unwrap_or(0),
        0,
        "nothing queued"
    );
    let count: usize = pg
        .psql("SELECT count(*) FROM users WHERE id LIKE 'w%'")
        .parse()
        .expect("count");
    assert!(
        count >= committed.len(),
        "{count} stored < {} answered",
        committed.len()
    );
    for id in committed.iter().step_by(37) {
        assert_eq!(stored(&pg, id).0, 1, "{id}");
    }
}

#[test]
fn a_flipped_byte_costs_only_the_record_it_is_in() {
    let mut pg = Postgres::start();
    let (mut s, journal) = killed_with_queued_writes(&mut pg, 6);
    // Damage inside the third record's payload: records 1 and 2 are intact, 3..5 are not trusted.
    let mut bytes = std::fs::read(&journal).expect("journal exists");
    let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize + 8;
    let second_len = u32::from_be_bytes([
        bytes[first],
        bytes[first + 1],
        bytes[first + 2],
        bytes[first + 3],
    ]) as usize;
    bytes[first + second_len + 8 + 8 + 10] ^= 0x01;
    std::fs::write(&journal, &bytes).expect("damage");
    pg.restart();
    s.start_again_with_health(503);
    s.expect_log("checksum mismatch");
    // n = 1, 2, 4 and 5 applied: the reading resynchronised after the damaged third record.
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!((rev, doc["n"].clone()), (5, json!(5)));
    assert_eq!(s.get("/health").json()["quarantined"], 1);
}

#[test]
fn ten_queued_writes_with_one_bit_flipped_in_the_first() {
    let mut pg = Postgres::start();
    let (mut s, journal) = killed_with_queued_writes(&mut pg, 11);
    let mut bytes = std::fs::read(&journal).expect("journal exists");
    bytes[78] ^= 0x10;
    std::fs::write(&journal, &bytes).expect("damage");
    pg.restart();
    s.start_again_with_health(503);
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!((rev, doc["n"].clone()), (10, json!(10)), "9 of 10 replayed");
    let health = s.get("/health");
    assert_eq!(health.status, 503, "{}", health.text());
    let h = health.json();
    assert_eq!(
        (
            h["status"].clone(),
            h["store"].clone(),
            h["quarantine"]["records"].clone()
        ),
        (json!("degraded"), json!("ok"), json!(1)),
        "{h}"
    );
    // The write id of the damaged record is logged, and `usersvc journal` shows the piece.
    let usersvc = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"))
            .args(["--journal", journal.to_str().expect("utf-8")])
            .args(args)
            .output()
            .expect("usersvc journal");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, listed) = usersvc(&["journal"]);
    assert_eq!(code, Some(0), "{listed}");
    assert!(
        listed.contains("0 write(s) queued")
            && listed.contains("1 piece(s)")
            && listed.contains("#1"),
        "{listed}"
    );
    let ids = listed
        .lines()
        .find(|l| l.contains("#1"))
        .expect("piece line")
        .to_owned();
    let id = ids.rsplit(' ').next().expect("a write id").to_owned();
    s.expect_log(&id);
    // Changing the quarantine needs the journal: refused while the server runs, naming it.
    let (code, said) = usersvc(&["journal", "discard", "1"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("in use by another usersvc"), "{said}");
    s.terminate();
    let (code, said) = usersvc(&["journal", "requeue", "1"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("only discarded"),
        "damaged bytes cannot be replayed: {said}"
    );
    let (code, said) = usersvc(&["journal", "discard", "1"]);
    assert_eq!(code, Some(0), "{said}");
    s.start_again();
    assert_eq!(s.get("/health").json()["status"], "ok");
}

#[test]
fn a_journal_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Usersvc::start();
    let open = s.dir().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"))
        .args(["--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("sqlite://{}/other.db", s.dir().display()))
        .arg("--journal")
        .arg(open.join("usersvc.journal"))
        .output()
        .expect("usersvc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writable by other users")
            && err.contains("another user could take the journal"),
        "{err}"
    );

    // The attack itself: the running server's directory made writable by others, its lock file
    // moved aside, a second server started on the same journal: refused.
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let lock = s.dir().join("usersvc.journal.lock");
    std::fs::rename(&lock, s.dir().join("moved-aside")).expect("move the lock aside");
    let (status, stderr) = s.run_to_failure();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writable by other users"), "{stderr}");
    assert_eq!(
        s.result("ping", Value::Null),
        "pong",
        "the first one serves on"
    );
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

#[test]
fn an_undecodable_record_is_quarantined_and_the_records_around_it_replayed() {
    let mut pg = Postgres::start();
    let (mut s, journal) = killed_with_queued_writes(&mut pg, 4);
    // Replace the second of the three records with a well-framed one that is not a write.
    let bytes = std::fs::read(&journal).expect("journal exists");
    let one = 8 + u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let two = intact_len(&bytes);
    let odd = br#"{"write_id":"w-odd","op":{"op":"teleport"}}"#;
    let mut frame = (odd.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(odd).to_be_bytes());
    frame.extend_from_slice(odd);
    let damaged = [&bytes[..one], &frame[..], &bytes[two..]].concat();
    std::fs::write(&journal, &damaged).expect("damage");
    pg.restart();
    s.start_again_with_health(503);
    // n = 1 and n = 3 applied, in order: rev 1 (n = 0) + 2.
    let (rev, doc) = stored(&pg, "seq");
    assert_eq!((rev, doc["n"].clone()), (3, json!(3)));
    let quarantined =
        std::fs::read(s.dir().join("usersvc.journal.quarantine")).expect("quarantine");
    assert_eq!(quarantined, frame, "moved bytes intact");
    let h = s.get("/health").json();
    assert_eq!(
        (h["quarantined"].clone(), h["journal_depth"].clone()),
        (json!(1), json!(0)),
        "{h}"
    );
    // Logged with its write id.
    s.expect_log("w-odd");
}

#[test]
fn a_second_server_on_the_same_journal_is_refused_naming_the_holder() {
    let s = Usersvc::start();
    let (status, stderr) = s.run_to_failure();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(&format!(
            "usersvc: the journal {} is in use by another usersvc",
            s.dir().join("usersvc.journal").display()
        )) && stderr.contains(&format!("(pid {})", s.pid())),
        "{stderr}"
    );
    // The first one was not disturbed.
    assert_eq!(s.result("ping", Value::Null), "pong");
}

/// 64 writes of ~990 KB at once (under the 1 MiB document limit), with a store timeout sized for
/// small writes: the store is slow for them, not down. They used to open the breaker against a
/// healthy PostgreSQL for good (1 committed, 63 queued, /health 503 and every replay timing out
/// again): now a batch's budget grows with its bytes, a batch that times out on a store that
/// answers a probe is committed in smaller pieces, and what is queued is replayed in batches
/// bounded by bytes. 50ms: the test's PostgreSQL runs without fsync, so a timeout must be this
/// tight for the burst to be slow here (the previous code then stayed open past 30 s every time).
#[test]
fn a_burst_of_maximum_size_writes_against_a_healthy_store_is_committed() {
    let pg = Postgres::start();
    let s = with_defaults(&pg, &["--store-timeout", "50ms"]);
    let pad = "x".repeat(990_000);
    let began = std::time::Instant::now();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let (s, pad) = (&s, &pad);
                scope.spawn(move || {
                    s.call(
                        "put_user",
                        json!({"user": {"id": format!("big{i:02}"), "pad": pad}}),
                    )
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect()
    });
    let mut acked = Vec::new();
    for (i, r) in answers.iter().enumerate() {
        match r.get("error") {
            // Refused, retryable: nothing was changed.
            Some(e) => assert_eq!(e["code"], -32000, "{i}: {e}"),
            None => {
                acknowledged(r);
                acked.push(format!("big{i:02}"));
            }
        }
    }
    testbed::eventually(
        "the breaker closed and the journal replayed",
        Duration::from_secs(30),
        || {
            let h = s.get("/health");
            h.status == 200 && h.json()["journal_depth"] == 0 && h.json()["breaker"] == "closed"
        },
    );
    eprintln!(
        "burst: {} of 64 acknowledged ({} queued), drained and healthy {:?} after it began",
        acked.len(),
        answers
            .iter()
            .filter(|r| r["result"]["queued"] == true)
            .count(),
        began.elapsed()
    );
    let stored: Vec<String> = pg
        .psql("SELECT id FROM users WHERE id LIKE 'big%' ORDER BY id")
        .lines()
        .map(str::to_owned)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} is not in the table");
    }
    // And the service takes small writes at once again.
    assert_eq!(
        s.result("put_user", json!({"user": {"id": "after"}}))["rev"],
        1
    );
}

/// The JSON-RPC `health` method says what `GET /health` says: degraded while the store is away
/// and writes are queued, ok once they are replayed.
#[test]
fn the_health_method_answers_what_get_health_does() {
    let mut pg = Postgres::start();
    let s = on(&pg);
    assert_eq!(s.result("health", Value::Null)["status"], "ok");
    pg.stop();
    queue_writes(&s, 1, 3);
    let h = s.result("health", Value::Null);
    assert_eq!(
        (
            h["status"].clone(),
            h["store"].clone(),
            h["journal_depth"].clone()
        ),
        (json!("degraded"), json!("degraded"), json!(2)),
        "{h}"
    );
    assert_eq!(s.get("/health").json()["status"], "degraded");
    pg.restart();
    replayed(&s);
    assert_eq!(s.result("health", Value::Null)["status"], "ok");
}

/// Under synchronous replication a commit counts once the standby has it, and PostgreSQL hides
/// it until then, except after a crash: recovery shows every commit on its disk, whether or not a
/// standby has it. A queued write found "already applied" there must stay queued until the
/// standby confirms (a failover would lose it): replay's own commit waits for the standby first.
/// The standby named here never comes; once the primary stops waiting, the write is replayed.
#[test]
fn a_write_a_crash_shows_before_the_standby_has_it_stays_queued() {
    let mut pg = Postgres::start();
    let s = with_defaults(&pg, &["--store-timeout", "300ms"]);
    s.result("put_user", json!({"user": {"id": "seed"}}));
    pg.set_and_reload("synchronous_standby_names", Some("nobody"));
    let a = s.call("put_user", json!({"user": {"id": "w"}}));
    assert_eq!(a["result"]["queued"], true, "{a}");
    pg.crash();
    pg.restart();
    assert_eq!(
        stored(&pg, "w").0,
        1,
        "recovery shows the unconfirmed commit"
    );
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let depth = &s.get("/health").json()["journal_depth"];
        assert_ne!(depth, 0, "taken as applied while no standby has it");
    }
    pg.set_and_reload("synchronous_standby_names", None);
    replayed(&s);
    assert_eq!(stored(&pg, "w").0, 1);
    assert_eq!(s.result("get_user", json!(["w"]))["id"], "w");
}
