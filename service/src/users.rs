//! The user API's logic: validation, optimistic concurrency, and keeping the snapshot in step with
//! the store. Transport-free: `methods.rs` maps JSON-RPC calls onto it.

use crate::breaker::{Breaker, BreakerState};
use crate::journal::{self, Entry, Journal, Op};
use crate::snapshot::Snapshot;
use crate::store::{Expect, Record, Store, StoreError, WriteDoc};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Application error codes (JSON-RPC's server range -32000..-32099). Public contract: documented in
/// the README and in `rpc.discover`; never renumber.
pub mod codes {
    /// The store failed; the request changed nothing.
    pub const STORE_UNAVAILABLE: i64 = -32000;
    /// No user with that id.
    pub const NOT_FOUND: i64 = -32001;
    /// `rev` did not match the stored revision: re-read and retry.
    pub const CONFLICT: i64 = -32002;
    /// The request did not finish within the server's request timeout.
    pub const TIMEOUT: i64 = -32003;
}

pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user: {0}")]
    Invalid(String),
    #[error("no user with id {0:?}")]
    NotFound(String),
    #[error("revision conflict on {id:?}: expected {expected}, stored {current:?}")]
    Conflict {
        id: String,
        expected: i64,
        current: Option<i64>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the write task failed: {0}")]
    Aborted(String),
    #[error("cannot queue the write: {0}")]
    Journal(String),
}

/// A validated user document ready to write.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub doc: Map<String, Value>,
}

/// Checks a client's user object; gives it a UUIDv7 id when it has none. Server-owned fields
/// (`rev`, `updated_at`) are dropped: they are ours to set.
pub fn validate(user: Value) -> Result<NewUser, UserError> {
    let Value::Object(mut doc) = user else {
        return Err(UserError::Invalid(format!(
            "a user must be a JSON object, not {}",
            kind(&user)
        )));
    };
    doc.remove("rev");
    doc.remove("updated_at");
    let id = match doc.get("id") {
        None | Some(Value::Null) => {
            let id = uuid::Uuid::now_v7().to_string();
            doc.insert("id".into(), id.clone().into());
            id
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(UserError::Invalid("\"id\" must not be empty".into()));
        }
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
            return Err(UserError::Invalid(format!(
                "\"id\" is {} bytes long; at most {MAX_ID_LEN}",
                s.len()
            )));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(UserError::Invalid(format!(
                "\"id\" must be a string, not {}",
                kind(other)
            )));
        }
    };
    Ok(NewUser { id, doc })
}

/// Validates a list of users as one unit (bulk write, import, pull): every user valid, no id twice.
/// `require_ids`: refuse users without an id (a source pulled again would mint new ones each time).
/// The error names the user by position: `user #3: …`.
pub fn validate_list(list: Vec<Value>, require_ids: bool) -> Result<Vec<NewUser>, String> {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    list.into_iter()
        .enumerate()
        .map(|(i, u)| {
            if require_ids && u.get("id").is_none_or(Value::is_null) {
                return Err(format!("user #{i} has no \"id\""));
            }
            let user = validate(u).map_err(|e| format!("user #{i}: {e}"))?;
            if !seen.insert(user.id.clone()) {
                return Err(format!("user #{i}: id {:?} appears twice", user.id));
            }
            Ok(user)
        })
        .collect()
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How the service survives a store outage.
#[derive(Debug, Clone)]
pub struct Resilience {
    pub journal: PathBuf,
    /// Consecutive store failures that open the breaker.
    pub failures: u32,
    /// How long the breaker stays open before a probe (doubles per failed probe, capped).
    pub backoff: Duration,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Put {
        id: String,
        rev: i64,
    },
    Many(Vec<(String, i64)>),
    Deleted {
        id: String,
    },
    /// The store is unreachable: the write is in the journal (fsync'd) and will be replayed.
    Queued {
        write_id: String,
        ids: Vec<String>,
    },
}

/// Counters for health and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicU64,
    pub replayed: AtomicU64,
    pub replay_conflicts: AtomicU64,
}

/// The store's health as seen by the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Degradation {
    pub breaker: BreakerState,
    pub journal_depth: usize,
}

impl Degradation {
    /// Reads may be stale and writes are being queued.
    pub fn degraded(&self) -> bool {
        self.breaker != BreakerState::Closed || self.journal_depth > 0
    }
}

/// Users, backed by the store, read from the snapshot. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Users {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    snapshot: Snapshot,
    /// Serializes writes (and replay) so the snapshot applies them in commit order and queued
    /// writes keep their order.
    write: tokio::sync::Mutex<()>,
    breaker: std::sync::Mutex<Breaker>,
    journal: Arc<std::sync::Mutex<Journal>>,
    stats: Stats,
}

/// Runs a write on its own task: if the caller is dropped (client gone, request timed out), the
/// write still completes and the snapshot still learns of it, instead of stopping half way.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, UserError>> + Send + 'static,
) -> Result<T, UserError> {
    tokio::spawn(work)
        .await
        .map_err(|e| UserError::Aborted(e.to_string()))?
}

// Poisoned locks only mean a panic elsewhere; the plain data inside is still consistent.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Users {
    /// Loads every user into the snapshot, replays a journal left by an earlier run (before any
    /// write is served), and starts the breaker's supervisor; on a shared (PostgreSQL) store,
    /// also follows the other instances' writes.
    pub async fn load(store: Store, resilience: &Resilience) -> Result<Self, UserError> {
        let snapshot = Snapshot::default();
        snapshot.replace_all(&store.load_all().await?);
        let path = resilience.journal.clone();
        let (entries, damage) = journal::read(&path).map_err(journal_err)?;
        if let Some(d) = &damage {
            tracing::error!(
                journal = %path.display(), offset = d.offset, reason = %d.reason, kept = entries.len(),
                "journal tail is damaged (a crash mid-append?): replaying the intact prefix"
            );
        }
        let mut journal = Journal::open(&path, entries.len()).map_err(journal_err)?;
        if damage.is_some() {
            journal.rewrite(&entries).map_err(journal_err)?;
        }
        let inner = Arc::new(Inner {
            store,
            snapshot,
            write: tokio::sync::Mutex::new(()),
            breaker: std::sync::Mutex::new(Breaker::new(resilience.failures, resilience.backoff)),
            journal: Arc::new(std::sync::Mutex::new(journal)),
            stats: Stats::default(),
        });
        if !entries.is_empty() {
            tracing::warn!(
                queued = entries.len(),
                "replaying writes queued by an earlier run"
            );
            let _serial = inner.write.lock().await;
            if let Err(e) = inner.replay().await {
                tracing::error!(error = %e, "replay failed; writes stay queued until the store is back");
                lock(&inner.breaker).failure(Instant::now());
            }
        }
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        if inner.store.is_shared() {
            tokio::spawn(follow_changes(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    /// Replaces the snapshot with the store's content (after another process wrote to it).
    pub async fn reload(&self) -> Result<(), UserError> {
        Ok(self.inner.reload().await?)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn degradation(&self) -> Degradation {
        Degradation {
            breaker: lock(&self.inner.breaker).state(),
            journal_depth: lock(&self.inner.journal).depth(),
        }
    }

    pub fn count(&self) -> usize {
        self.inner.snapshot.len()
    }

    pub fn all(&self) -> Bytes {
        self.inner.snapshot.all()
    }

    pub fn page(&self, after: Option<&str>, limit: usize) -> Bytes {
        self.inner.snapshot.page(after, limit)
    }

    pub fn get(&self, id: &str) -> Result<Bytes, UserError> {
        self.inner
            .snapshot
            .get(id)
            .ok_or_else(|| UserError::NotFound(id.to_owned()))
    }

    /// Upserts one user. `expect` is `Some(0)` for create-only, `Some(n)` for "only if at rev n".
    pub async fn put(&self, user: NewUser, expect: Option<i64>) -> Result<Written, UserError> {
        self.submit(Op::Put {
            id: user.id,
            doc: user.doc,
            expect,
        })
        .await
    }

    /// Upserts many users in one transaction: all are stored or none.
    pub async fn put_many(&self, users: Vec<NewUser>) -> Result<Written, UserError> {
        self.submit(Op::PutMany {
            users: users.into_iter().map(|u| (u.id, u.doc)).collect(),
        })
        .await
    }

    /// Leaves out users whose stored document is already exactly this one (idempotent re-uploads).
    pub fn changed(&self, users: Vec<NewUser>) -> Vec<NewUser> {
        users
            .into_iter()
            .filter(|u| !self.inner.snapshot.holds(&u.id, &u.doc))
            .collect()
    }

    pub async fn delete(&self, id: &str, expect: Option<i64>) -> Result<Written, UserError> {
        self.submit(Op::Delete {
            id: id.to_owned(),
            expect,
        })
        .await
    }

    async fn submit(&self, op: Op) -> Result<Written, UserError> {
        let inner = self.inner.clone();
        detached(async move { inner.submit(op).await }).await
    }
}

fn journal_err(e: journal::JournalError) -> UserError {
    UserError::Journal(e.to_string())
}

fn expect_of(expect: Option<i64>) -> Expect {
    match expect {
        None => Expect::Any,
        Some(0) => Expect::Absent,
        Some(n) => Expect::Rev(n),
    }
}

/// While the breaker is not closed or writes are queued: probe the store after each backoff, and
/// when it answers, replay the journal in order and close the breaker.
async fn supervise(users: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(inner) = users.upgrade() else { return };
        let degraded = !lock(&inner.breaker).is_closed() || lock(&inner.journal).depth() > 0;
        if !degraded || !lock(&inner.breaker).try_probe(Instant::now()) {
            continue;
        }
        // Probe without the write lock: queued writes must not wait on a dead store's timeouts.
        let alive = matches!(
            tokio::time::timeout(Duration::from_secs(1), inner.store.ping()).await,
            Ok(Ok(()))
        );
        let outcome = if alive {
            let _serial = inner.write.lock().await;
            inner.replay().await
        } else {
            Err(StoreError::Unreachable)
        };
        match outcome {
            Ok(n) => {
                lock(&inner.breaker).success();
                tracing::info!(replayed = n, "store is back: breaker closed");
            }
            Err(e) => {
                lock(&inner.breaker).failure(Instant::now());
                tracing::warn!(error = %e, "store still unavailable: breaker stays open");
            }
        }
    }
}

/// Keeps the snapshot in step with writes made through other instances: LISTEN on the changes
/// channel, refresh each announced id; after any (re)connect, reload everything, since
/// notifications sent while we were not listening are lost. Ends when the `Users` is dropped.
async fn follow_changes(users: std::sync::Weak<Inner>) {
    use sqlx::postgres::PgListener;
    let Some(url) = users.upgrade().map(|u| u.store.url().to_owned()) else {
        return;
    };
    let retry = Duration::from_millis(500);
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for other instances' writes; retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(crate::store::CHANGES_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(retry).await;
            continue;
        }
        let Some(inner) = users.upgrade() else { return };
        if let Err(e) = inner.reload().await {
            tracing::warn!(error = %e, "reload after (re)connect failed; retrying");
            tokio::time::sleep(retry).await;
            continue;
        }
        drop(inner);
        // `None` or an error: the connection was lost; reconnect and reload what we missed.
        while let Ok(Some(n)) = listener.try_recv().await {
            let Some(inner) = users.upgrade() else { return };
            let done = match n.payload() {
                "*" => inner.reload().await,
                id => inner.refresh(id).await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "refresh after a notification failed");
                break;
            }
        }
        tokio::time::sleep(retry).await;
    }
}

impl Inner {
    /// Replaces the snapshot with the database's content.
    async fn reload(&self) -> Result<(), StoreError> {
        let _serial = self.write.lock().await;
        self.snapshot.replace_all(&self.store.load_all().await?);
        Ok(())
    }

    /// Re-reads one user (a write elsewhere announced it).
    async fn refresh(&self, id: &str) -> Result<(), StoreError> {
        let _serial = self.write.lock().await;
        // Always apply: a user deleted and created again elsewhere can be back at the same rev.
        match self.store.get(id).await? {
            Some(rec) => self.snapshot.upsert(&rec),
            None => self.snapshot.remove(id),
        }
        Ok(())
    }

    async fn submit(&self, op: Op) -> Result<Written, UserError> {
        let _serial = self.write.lock().await;
        let queueing = !lock(&self.breaker).is_closed() || lock(&self.journal).depth() > 0;
        if !queueing {
            match self.apply(&op, None).await {
                Err(UserError::Store(e)) => {
                    let open = lock(&self.breaker).failure(Instant::now());
                    tracing::warn!(error = %e, breaker_open = open, "store write failed");
                    if !open {
                        return Err(UserError::Store(e));
                    }
                    tracing::error!("breaker open: queueing writes in the journal");
                }
                done => {
                    if done.is_ok() {
                        lock(&self.breaker).success();
                    }
                    return done;
                }
            }
        }
        self.precheck(&op)?;
        self.enqueue(op).await
    }

    /// Refuses, against the last known state, a queued write that cannot succeed.
    fn precheck(&self, op: &Op) -> Result<(), UserError> {
        let conflict = |id: &str, expected: i64, current: Option<i64>| UserError::Conflict {
            id: id.to_owned(),
            expected,
            current,
        };
        match op {
            Op::Put {
                id,
                expect: Some(n),
                ..
            } => {
                let current = self.snapshot.rev(id);
                if (*n == 0 && current.is_some()) || (*n > 0 && current != Some(*n)) {
                    return Err(conflict(id, *n, current));
                }
            }
            Op::Delete { id, expect } => match (self.snapshot.rev(id), expect) {
                (None, _) => return Err(UserError::NotFound(id.clone())),
                (Some(cur), Some(n)) if cur != *n => return Err(conflict(id, *n, Some(cur))),
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    async fn enqueue(&self, op: Op) -> Result<Written, UserError> {
        let ids = match &op {
            Op::Put { id, .. } | Op::Delete { id, .. } => vec![id.clone()],
            Op::PutMany { users } => users.iter().map(|(id, _)| id.clone()).collect(),
        };
        let entry = Entry {
            write_id: uuid::Uuid::now_v7().to_string(),
            op,
        };
        let write_id = entry.write_id.clone();
        let journal = self.journal.clone();
        // fsync blocks: keep it off the async workers.
        tokio::task::spawn_blocking(move || lock(&journal).append(&entry))
            .await
            .map_err(|e| UserError::Aborted(e.to_string()))?
            .map_err(journal_err)?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        Ok(Written::Queued { write_id, ids })
    }

    /// Applies one write to the store, then to the snapshot.
    async fn apply(&self, op: &Op, write_id: Option<&str>) -> Result<Written, UserError> {
        let updated_at = now();
        match op {
            Op::Put { id, doc, expect } => {
                let write = WriteDoc {
                    id: id.clone(),
                    json: Value::Object(doc.clone()).to_string(),
                    updated_at: updated_at.clone(),
                };
                let expect = expect_of(*expect);
                match self.store.put(&write, expect, write_id).await? {
                    Some(rev) => {
                        self.snapshot.upsert(&Record {
                            id: id.clone(),
                            rev,
                            updated_at,
                            doc: doc.clone(),
                        });
                        Ok(Written::Put {
                            id: id.clone(),
                            rev,
                        })
                    }
                    None => Err(UserError::Conflict {
                        current: self.snapshot.rev(id),
                        id: id.clone(),
                        expected: match expect {
                            Expect::Rev(n) => n,
                            _ => 0,
                        },
                    }),
                }
            }
            Op::PutMany { users } => {
                let writes: Vec<WriteDoc> = users
                    .iter()
                    .map(|(id, doc)| WriteDoc {
                        id: id.clone(),
                        json: Value::Object(doc.clone()).to_string(),
                        updated_at: updated_at.clone(),
                    })
                    .collect();
                let revs = self.store.put_many(&writes, write_id).await?;
                let mut out = Vec::with_capacity(users.len());
                for ((id, doc), rev) in users.iter().zip(revs) {
                    self.snapshot.upsert(&Record {
                        id: id.clone(),
                        rev,
                        updated_at: updated_at.clone(),
                        doc: doc.clone(),
                    });
                    out.push((id.clone(), rev));
                }
                Ok(Written::Many(out))
            }
            Op::Delete { id, expect } => {
                if self
                    .store
                    .delete(id, expect.map_or(Expect::Any, Expect::Rev), write_id)
                    .await?
                {
                    self.snapshot.remove(id);
                    return Ok(Written::Deleted { id: id.clone() });
                }
                match (expect, self.snapshot.rev(id)) {
                    (Some(expected), Some(current)) => Err(UserError::Conflict {
                        id: id.clone(),
                        expected: *expected,
                        current: Some(current),
                    }),
                    _ => Err(UserError::NotFound(id.clone())),
                }
            }
        }
    }

    /// Replays the journal in order (caller holds the write lock). Each entry is applied once:
    /// its write id is recorded in the same transaction. A conflict is reported and counted, not
    /// dropped silently. On a store failure the unreplayed rest stays queued.
    async fn replay(&self) -> Result<usize, StoreError> {
        let path = lock(&self.journal).path().to_owned();
        let (entries, _) = journal::read(&path).map_err(|e| StoreError::Journal(e.to_string()))?;
        for (i, entry) in entries.iter().enumerate() {
            match self.apply(&entry.op, Some(&entry.write_id)).await {
                Ok(_) => {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                Err(UserError::Store(StoreError::AlreadyApplied(_))) => {}
                Err(UserError::Store(e)) => {
                    lock(&self.journal)
                        .rewrite(&entries[i..])
                        .map_err(|e| StoreError::Journal(e.to_string()))?;
                    return Err(e);
                }
                Err(e) => {
                    self.stats.replay_conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        write_id = %entry.write_id, op = ?entry.op, error = %e,
                        "queued write could not be applied on replay"
                    );
                }
            }
        }
        lock(&self.journal)
            .rewrite(&[])
            .map_err(|e| StoreError::Journal(e.to_string()))?;
        let ids: Vec<String> = entries.into_iter().map(|e| e.write_id).collect();
        if let Err(e) = self.store.forget_applied(&ids).await {
            // Harmless: the ids only guard a journal that no longer exists.
            tracing::warn!(error = %e, "could not prune replayed write ids");
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation() {
        assert!(matches!(validate(json!([1])), Err(UserError::Invalid(_))));
        assert!(matches!(
            validate(json!({"id": 5})),
            Err(UserError::Invalid(_))
        ));
        assert!(matches!(
            validate(json!({"id": ""})),
            Err(UserError::Invalid(_))
        ));
        assert!(matches!(
            validate(json!({"id": "x".repeat(MAX_ID_LEN + 1)})),
            Err(UserError::Invalid(_))
        ));
        let u = validate(json!({"id": "a", "rev": 9, "updated_at": "x", "n": 1})).expect("valid");
        assert_eq!(Value::Object(u.doc), json!({"id": "a", "n": 1}));
        let u = validate(json!({"name": "anon"})).expect("valid");
        let id = uuid::Uuid::parse_str(&u.id).expect("a uuid");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(u.doc["id"], u.id.as_str());
    }
}
