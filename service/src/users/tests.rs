//! The write path in-process, on a temporary SQLite file: a conditional write checked before it
//! is committed, writes queued in the journal while the store is unreachable, and the replay of
//! a journal an earlier run left (once each: an already-applied write is skipped, a conflict is
//! counted and not applied). The scenario tests under `tests/` reach the same code through a
//! real server; these name each rule and fail next to it.

use super::validate::validate;
use super::{Resilience, UserError, Users, Written};
use crate::doc::WriteDoc;
use crate::store::{Change, Writer};
use crate::store::{Expect, Store};
use crate::store::{Journal, JournalEntry, Op, Owner};
use serde_json::{Value, json};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
/// A PostgreSQL nobody listens on: a store that is down.
const DOWN: &str = "postgres://nobody@127.0.0.1:1/none";

struct Site {
    _dir: tempfile::TempDir,
    url: String,
    resilience: Resilience,
}

fn site() -> Site {
    let dir = tempfile::tempdir().expect("temp dir");
    Site {
        url: format!("sqlite://{}", dir.path().join("users.db").display()),
        resilience: Resilience {
            journal: dir.path().join("usersvc.journal"),
            failures: 3,
            backoff: Duration::from_secs(60),
            handover: false,
        },
        _dir: dir,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn user(doc: Value) -> super::NewUser {
    validate(doc).expect("a valid user")
}

fn stored(users: &Users, id: &str) -> Value {
    let bytes = users.get(id).expect("the user is there");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// What a run that died with writes queued leaves behind.
fn leave_in_journal(site: &Site, entries: &[JournalEntry]) {
    let owner = Owner::acquire(&site.resilience.journal).expect("the journal's lock");
    let (mut journal, _) = Journal::open(&site.resilience.journal, owner).expect("journal");
    journal.append_all(entries).expect("append");
}

fn put(write_id: &str, doc: Value, expect: Option<i64>) -> JournalEntry {
    let user = user(doc);
    JournalEntry {
        write_id: write_id.to_owned(),
        requeued: false,
        op: Op::Put {
            id: user.id,
            doc: user.doc,
            expect,
        },
    }
}

#[test]
fn a_conditional_write_on_a_stale_revision_is_refused_and_changes_nothing() {
    let site = site();
    block_on(async {
        let users = Users::open(&site.url, TIMEOUT, &site.resilience)
            .await
            .expect("open");
        let first = users.put(user(json!({"id": "a", "v": 1})), None).await;
        assert_eq!(
            first.expect("put"),
            Written::Put {
                id: "a".into(),
                rev: 1
            }
        );
        let stale = users.put(user(json!({"id": "a", "v": 2})), Some(2)).await;
        assert!(
            matches!(
                &stale,
                Err(UserError::Conflict {
                    expected: 2,
                    current: Some(1),
                    ..
                })
            ),
            "{stale:?}"
        );
        assert_eq!(stored(&users, "a")["v"], 1);
        users.close().await;
    });
}

#[test]
fn a_journal_left_by_an_earlier_run_is_replayed_once_at_open() {
    let site = site();
    block_on(async {
        // "w-done" was committed (its id recorded with it) but the run died before it could
        // take it out of the journal.
        let store = Store::open(&site.url, TIMEOUT).await.expect("store");
        let mut writer = Writer::new(&store);
        let doc = WriteDoc::from_text("a", r#"{"id":"a","v":1}"#, "2026-12-01T00:00:00.000Z");
        let change = Change::Put {
            doc,
            expect: Expect::Any,
        };
        writer
            .commit(&[("w-done".to_owned(), change)])
            .await
            .expect("commit");
        writer.close().await;
        store.close().await;
    });
    leave_in_journal(
        &site,
        &[
            put("w-done", json!({"id": "a", "v": 1}), None),
            put("w-new", json!({"id": "b", "v": 1}), None),
            // Expects revision 5 of "a", which is at 1: a conflict, reported and not applied.
            put("w-stale", json!({"id": "a", "v": 9}), Some(5)),
        ],
    );
    block_on(async {
        let users = Users::open(&site.url, TIMEOUT, &site.resilience)
            .await
            .expect("open");
        let a = stored(&users, "a");
        assert_eq!(
            (a["rev"].clone(), a["v"].clone()),
            (json!(1), json!(1)),
            "{a}"
        );
        assert_eq!(stored(&users, "b")["rev"], 1);
        assert_eq!(
            users.degradation().journal_depth,
            0,
            "the journal is drained"
        );
        let stats = users.stats();
        assert_eq!(
            stats
                .replay_conflicts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        users.close().await;
    });
}

#[test]
fn writes_queue_in_the_journal_while_the_store_is_down_and_replay_when_it_is_back() {
    let site = site();
    block_on(async {
        // A copy to start from while the store is down.
        let users = Users::open(&site.url, TIMEOUT, &site.resilience)
            .await
            .expect("open");
        users
            .put(user(json!({"id": "a", "v": 1})), None)
            .await
            .expect("put");
        users.close().await;
    });
    block_on(async {
        let users = Users::open(DOWN, TIMEOUT, &site.resilience)
            .await
            .expect("a cold start from the local copy");
        assert_eq!(stored(&users, "a")["v"], 1, "served from the copy");
        let queued = users.put(user(json!({"id": "c", "v": 1})), None).await;
        assert!(matches!(queued, Ok(Written::Queued { .. })), "{queued:?}");
        // What the copy's revisions are worth against the store is not known: a conditional
        // write cannot be checked, and is refused rather than queued on a guess.
        let conditional = users.put(user(json!({"id": "a", "v": 2})), Some(1)).await;
        assert!(
            matches!(conditional, Err(UserError::Unverifiable)),
            "{conditional:?}"
        );
        assert_eq!(users.degradation().journal_depth, 1);
        users.close().await;
    });
    block_on(async {
        let users = Users::open(&site.url, TIMEOUT, &site.resilience)
            .await
            .expect("open with the store back");
        assert_eq!(
            stored(&users, "c")["rev"],
            1,
            "the queued write was replayed"
        );
        assert_eq!(
            stored(&users, "a")["v"],
            1,
            "the refused write changed nothing"
        );
        assert_eq!(users.degradation().journal_depth, 0);
        users.close().await;
    });
}
