//! The user API's logic: validation, optimistic concurrency, and keeping the snapshot in step with
//! the store. Transport-free: `methods.rs` maps JSON-RPC calls onto it.

use crate::snapshot::Snapshot;
use crate::store::{Expect, Record, Store, StoreError, WriteDoc};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::Arc;

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

/// Users, backed by the store, read from the snapshot. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Users {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    snapshot: Snapshot,
    /// Serializes writes so the snapshot applies them in the order the store committed them.
    write: tokio::sync::Mutex<()>,
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

impl Users {
    /// Loads every user into the snapshot; on a shared (PostgreSQL) store, also follows the
    /// other instances' writes.
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let snapshot = Snapshot::default();
        snapshot.replace_all(&store.load_all().await?);
        let inner = Arc::new(Inner {
            store,
            snapshot,
            write: tokio::sync::Mutex::new(()),
        });
        if inner.store.is_shared() {
            tokio::spawn(follow_changes(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
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

    pub async fn put(
        &self,
        user: NewUser,
        expect: Option<i64>,
    ) -> Result<(String, i64), UserError> {
        let inner = self.inner.clone();
        detached(async move { inner.put(user, expect).await }).await
    }

    pub async fn put_many(&self, users: Vec<NewUser>) -> Result<Vec<(String, i64)>, UserError> {
        let inner = self.inner.clone();
        detached(async move { inner.put_many(users).await }).await
    }

    pub async fn delete(&self, id: &str, expect: Option<i64>) -> Result<(), UserError> {
        let inner = self.inner.clone();
        let id = id.to_owned();
        detached(async move { inner.delete(&id, expect).await }).await
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
    let retry = std::time::Duration::from_millis(500);
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other instances' writes; retrying");
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

    /// Upserts one user. `expect` is `Some(0)` for create-only, `Some(n)` for "only if at rev n".
    pub async fn put(
        &self,
        user: NewUser,
        expect: Option<i64>,
    ) -> Result<(String, i64), UserError> {
        let expect = match expect {
            None => Expect::Any,
            Some(0) => Expect::Absent,
            Some(n) => Expect::Rev(n),
        };
        let write = WriteDoc {
            id: user.id.clone(),
            json: Value::Object(user.doc.clone()).to_string(),
            updated_at: now(),
        };
        let _serial = self.write.lock().await;
        match self.store.put(&write, expect).await? {
            Some(rev) => {
                self.snapshot.upsert(&Record {
                    id: write.id.clone(),
                    rev,
                    updated_at: write.updated_at,
                    doc: user.doc,
                });
                Ok((write.id, rev))
            }
            None => Err(UserError::Conflict {
                current: self.snapshot.rev(&write.id),
                id: write.id,
                expected: match expect {
                    Expect::Rev(n) => n,
                    _ => 0,
                },
            }),
        }
    }

    /// Upserts many users in one transaction: all are stored or none.
    async fn put_many(&self, users: Vec<NewUser>) -> Result<Vec<(String, i64)>, UserError> {
        let updated_at = now();
        let writes: Vec<WriteDoc> = users
            .iter()
            .map(|u| WriteDoc {
                id: u.id.clone(),
                json: Value::Object(u.doc.clone()).to_string(),
                updated_at: updated_at.clone(),
            })
            .collect();
        let _serial = self.write.lock().await;
        let revs = self.store.put_many(&writes).await?;
        let mut out = Vec::with_capacity(users.len());
        for (user, rev) in users.into_iter().zip(revs) {
            self.snapshot.upsert(&Record {
                id: user.id.clone(),
                rev,
                updated_at: updated_at.clone(),
                doc: user.doc,
            });
            out.push((user.id, rev));
        }
        Ok(out)
    }

    async fn delete(&self, id: &str, expect: Option<i64>) -> Result<(), UserError> {
        let _serial = self.write.lock().await;
        let expect_store = expect.map_or(Expect::Any, Expect::Rev);
        if self.store.delete(id, expect_store).await? {
            self.snapshot.remove(id);
            return Ok(());
        }
        match (expect, self.snapshot.rev(id)) {
            (Some(expected), Some(current)) => Err(UserError::Conflict {
                id: id.to_owned(),
                expected,
                current: Some(current),
            }),
            _ => Err(UserError::NotFound(id.to_owned())),
        }
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
