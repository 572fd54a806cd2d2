//! The write connection: group commit. A batch of writes is one transaction and one fsync; each
//! write keeps its own outcome (a savepoint each, so one failing write fails alone) and its write
//! id is recorded in the same transaction, so a write whose commit outcome is unknown (the
//! connection died during COMMIT) is applied exactly once when the journal replays it.
//!
//! The connection is our own, not the pool's: sqlx's pool retries a refused connection until its
//! acquire timeout, and a write must learn at once that the database is down.

use super::claims::{self, Claims};
use super::{CHANGES_CHANNEL, Expect, Store, StoreError, put_many, put_on};
use crate::doc::WriteDoc;
use sqlx::{AnyConnection, Connection, Row};
use std::collections::HashMap;
use std::time::Duration;

/// One write, as the store applies it.
#[derive(Debug, Clone)]
pub enum Change {
    Put {
        doc: WriteDoc,
        expect: Expect,
    },
    /// All or none.
    PutMany(Vec<WriteDoc>),
    /// As `PutMany`, without reading the new revisions back (`usersvc import` answers a
    /// count): at a million users, reading them back was a tenth of the import.
    Import(Vec<WriteDoc>),
    Delete {
        id: String,
        expect: Expect,
    },
}

impl Change {
    fn docs(&self) -> usize {
        match self {
            Change::PutMany(docs) | Change::Import(docs) => docs.len(),
            _ => 1,
        }
    }

    /// The bytes of JSON it writes: what its time budget grows with, beside its count.
    pub fn bytes(&self) -> usize {
        match self {
            Change::Put { doc, .. } => doc.json.len(),
            Change::PutMany(docs) | Change::Import(docs) => docs.iter().map(|d| d.json.len()).sum(),
            Change::Delete { id, .. } => id.len(),
        }
    }
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The new revision, or `None`: `expect` did not hold.
    Put(Option<i64>),
    PutMany(Vec<i64>),
    /// How many documents an `Import` wrote.
    Imported(usize),
    /// Whether a row was deleted (`false`: absent, or not at `expect`'s revision).
    Deleted(bool),
    /// Its write id was recorded before: an earlier attempt committed it.
    AlreadyApplied,
}

/// Per write: its outcome, or the database's refusal of that write alone.
pub type Outcome = Result<Applied, StoreError>;

pub struct Writer {
    /// Where to connect: the store's host in use, looked for again when it fails.
    store: Store,
    postgres: bool,
    timeout: Duration,
    conn: Option<AnyConnection>,
    /// This connection's backend pid, for the follower (`Store::announced_by_me`).
    announcer: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Write ids of acknowledged writes: nothing will replay them, so the next batch drops their
    /// records.
    forget: Vec<String>,
}

/// A batch this large (in documents) gets more time than `timeout`, which is sized for a few.
const DOCS_PER_TIMEOUT: usize = 1000;
/// And so does one this large in bytes: a batch of a few 1 MiB documents is not a few small ones.
const BYTES_PER_TIMEOUT: usize = 1 << 20;
/// Acknowledged write ids are pruned once this many have gathered.
const FORGET_EVERY: usize = 256;

/// The time a write of `docs` documents and `bytes` of JSON gets: `timeout`, and `timeout` again
/// per thousand documents and per MiB.
pub(crate) fn budget(timeout: Duration, docs: usize, bytes: usize) -> Duration {
    let extra = docs / DOCS_PER_TIMEOUT + bytes / BYTES_PER_TIMEOUT;
    timeout.saturating_mul(u32::try_from(1 + extra).unwrap_or(u32::MAX))
}

impl Writer {
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
            announcer: store.announcer(),
            postgres: store.is_shared(),
            timeout: store.timeout(),
            conn: None,
            forget: Vec::new(),
        }
    }

    /// Commits `batch` in order in one transaction. `Err`: nothing is known to be committed
    /// (`is_unreachable`: maybe it was; the caller journals the batch under the same write ids).
    pub async fn commit(&mut self, batch: &[(String, Change)]) -> Result<Vec<Outcome>, StoreError> {
        let docs: usize = batch.iter().map(|(_, c)| c.docs()).sum();
        let bytes: usize = batch.iter().map(|(_, c)| c.bytes()).sum();
        let budget = budget(self.timeout, docs, bytes);
        // Optimistic: no savepoints (two more round trips per write). A write that fails on its
        // own aborts the transaction; the batch is then run again with a savepoint per write.
        let mut done = self.commit_timed(batch, false, budget).await;
        if batch.len() > 1 && done.as_ref().is_err_and(|e| !e.is_unreachable()) {
            done = self.commit_timed(batch, true, budget).await;
        }
        done
    }

    async fn commit_timed(
        &mut self,
        batch: &[(String, Change)],
        savepoints: bool,
        budget: Duration,
    ) -> Result<Vec<Outcome>, StoreError> {
        let done = match tokio::time::timeout(budget, self.commit_within(batch, savepoints)).await {
            Ok(done) => done,
            Err(_) => Err(StoreError::TimedOut(budget)),
        };
        if done.as_ref().is_err_and(StoreError::is_unreachable) {
            // Broken or mid-statement: never reuse it.
            self.conn = None;
        }
        done
    }

    /// Lets these write ids, requeued by an operator, be judged again: a claim that says its
    /// write changed nothing goes; one of a write that changed something stays.
    pub async fn unmark(&mut self, write_ids: &[&str]) -> Result<(), StoreError> {
        let timeout = self.timeout;
        let done = async {
            let conn = self.connection().await?;
            claims::unmark(conn, write_ids).await
        };
        match tokio::time::timeout(timeout, done).await {
            Ok(done) => done,
            Err(_) => {
                self.conn = None;
                Err(StoreError::TimedOut(timeout))
            }
        }
    }

    /// Records of these acknowledged write ids go with the next committed batch.
    pub fn forget_later(&mut self, write_ids: impl IntoIterator<Item = String>) {
        self.forget.extend(write_ids);
    }

    pub async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    async fn connection(&mut self) -> Result<&mut AnyConnection, StoreError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let mut conn = connect(&self.store).await?;
                if self.postgres {
                    let row = sqlx::query("SELECT pg_backend_pid()")
                        .fetch_one(&mut conn)
                        .await?;
                    let pid: i32 = row.try_get(0)?;
                    self.announcer
                        .store(pid as u32, std::sync::atomic::Ordering::Release);
                } else {
                    // SQLite checkpoints in the committing connection, after the commit that
                    // crosses this many pages of log: the write that pays for it waits. With a
                    // large table each write dirties pages of its own, so 1000 pages made one
                    // write in a few hundred wait tens of milliseconds; a tenth of that spreads
                    // the same work into waits a tenth as long.
                    sqlx::query("PRAGMA wal_autocheckpoint = 100")
                        .fetch_optional(&mut conn)
                        .await?;
                }
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    async fn commit_within(
        &mut self,
        batch: &[(String, Change)],
        savepoints: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let postgres = self.postgres;
        // Pruned in bulk: one statement per FORGET_EVERY writes, not one per batch.
        let forget = if self.forget.len() >= FORGET_EVERY {
            std::mem::take(&mut self.forget)
        } else {
            Vec::new()
        };
        let result = async {
            let conn = self.connection().await?;
            let mut tx = conn.begin().await?;
            claims::forget(&mut tx, &forget).await?;
            let claims = Claims::take(&mut tx, batch).await?;
            if postgres {
                claims.wait_for_earlier_commits(&mut tx).await?;
            }
            let (out, changed) =
                apply_claimed(&mut tx, batch, &claims, savepoints, postgres).await?;
            claims.mark_unchanged(&mut tx, batch, &out).await?;
            if postgres {
                announce(&mut tx, &changed).await?;
            }
            tx.commit().await?;
            Ok(out)
        }
        .await;
        if result.is_err() {
            // Not committed (or not known to be): those records may still exist; try again later.
            self.forget.extend(forget);
        }
        result
    }
}

/// Applies each write of `batch` this transaction claimed, once (an id twice in a batch is one
/// write), with a savepoint around each when `savepoints`, so one write's own failure costs
/// only itself; a write claimed before answers what its first attempt did. Each write's outcome,
/// and the ids to announce (PostgreSQL only: other instances listen).
async fn apply_claimed<'b>(
    conn: &mut AnyConnection,
    batch: &'b [(String, Change)],
    claims: &Claims,
    savepoints: bool,
    postgres: bool,
) -> Result<(Vec<Outcome>, Vec<&'b str>), StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut changed: Vec<&str> = Vec::new();
    // The outcome of each id's first copy in this batch: a second copy answers the same.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (write_id, change) in batch {
        if !claims.is_new(write_id) {
            out.push(claims.earlier_outcome(write_id, change));
            continue;
        }
        if let Some(&at) = first.get(write_id.as_str()) {
            let again = claims::repeated_outcome(&out[at], change);
            out.push(again);
            continue;
        }
        first.insert(write_id, out.len());
        if savepoints {
            sqlx::query("SAVEPOINT w").execute(&mut *conn).await?;
        }
        match apply(conn, change, postgres).await {
            Ok(applied) => {
                if savepoints {
                    sqlx::query("RELEASE SAVEPOINT w")
                        .execute(&mut *conn)
                        .await?;
                }
                if postgres {
                    changed.extend(changed_ids(change, &applied));
                }
                out.push(Ok(applied));
            }
            Err(e) if savepoints && !e.is_unreachable() => {
                sqlx::query("ROLLBACK TO SAVEPOINT w")
                    .execute(&mut *conn)
                    .await?;
                out.push(Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((out, changed))
}

/// A connection to the store's host in use, or, when that fails or it no longer takes writes
/// (with several hosts), to the one found now.
async fn connect(store: &Store) -> Result<AnyConnection, StoreError> {
    let url = store.url().to_owned();
    match AnyConnection::connect(&url).await {
        Ok(mut conn) => {
            if store.suits(&mut conn).await? {
                return Ok(conn);
            }
        }
        Err(e) if !store.has_several_hosts() => return Err(e.into()),
        Err(_) => {}
    }
    store.find_host().await;
    let mut conn = AnyConnection::connect(store.url()).await?;
    if !store.suits(&mut conn).await? {
        return Err(StoreError::NoHost(toolkit_core::redact::url(store.url())));
    }
    Ok(conn)
}

async fn apply(conn: &mut AnyConnection, change: &Change, postgres: bool) -> Outcome {
    Ok(match change {
        Change::Put { doc, expect } => Applied::Put(put_on(conn, doc, *expect).await?),
        Change::PutMany(docs) => Applied::PutMany(put_many(conn, docs, postgres, true).await?),
        Change::Import(docs) => {
            put_many(conn, docs, postgres, false).await?;
            Applied::Imported(docs.len())
        }
        Change::Delete { id, expect } => {
            let done = match expect {
                Expect::Rev(rev) => {
                    sqlx::query("DELETE FROM users WHERE id = $1 AND rev = $2")
                        .bind(id)
                        .bind(*rev)
                        .execute(&mut *conn)
                        .await?
                }
                Expect::Any | Expect::Absent => {
                    sqlx::query("DELETE FROM users WHERE id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await?
                }
            };
            Applied::Deleted(done.rows_affected() > 0)
        }
    })
}

fn changed_ids<'a>(change: &'a Change, applied: &Applied) -> Vec<&'a str> {
    match (change, applied) {
        (Change::Put { doc, .. }, Applied::Put(Some(_))) => vec![doc.id.as_str()],
        (Change::PutMany(docs), Applied::PutMany(_))
        | (Change::Import(docs), Applied::Imported(_)) => {
            docs.iter().map(|d| d.id.as_str()).collect()
        }
        (Change::Delete { id, .. }, Applied::Deleted(true)) => vec![id.as_str()],
        _ => Vec::new(),
    }
}

/// Announces changed ids inside the writing transaction (delivered on commit). PostgreSQL only.
async fn announce(conn: &mut AnyConnection, ids: &[&str]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let payloads = super::announcements(ids);
    // One statement for all of them: a round trip per id would cost more than the writes.
    let calls: Vec<String> = (0..payloads.len())
        .map(|i| format!("pg_notify($1, ${})", i + 2))
        .collect();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", calls.join(", "))))
        .bind(CHANGES_CHANNEL);
    for p in payloads {
        q = q.bind(p);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::budget;
    use std::time::Duration;

    #[test]
    fn a_batch_gets_more_time_at_each_thousand_documents_and_each_mib() {
        let t = Duration::from_millis(300);
        assert_eq!(budget(t, 999, (1 << 20) - 1), t);
        assert_eq!(budget(t, 1000, 0), t * 2);
        assert_eq!(budget(t, 1, 1 << 20), t * 2);
        // 64 documents of ~990 KB: a burst at the document limit.
        assert_eq!(budget(t, 64, 64 * 990_000), t * 61);
        assert_eq!(budget(Duration::MAX, 5000, 0), Duration::MAX, "saturates");
    }
}
