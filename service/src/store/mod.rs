//! The durable store: one `users` table on SQLite or PostgreSQL through sqlx's `Any` driver,
//! so both backends run the same SQL (`$n` placeholders, `ON CONFLICT`, `RETURNING` work on
//! both).
//!
//! Documents are stored as JSON text next to their `id`, `rev` and `updated_at`. Concurrency
//! control is optimistic and enforced by the database itself (`WHERE rev = $n`), never by a
//! read-then-write.

mod claims;
mod error;
mod hosts;
mod journal;
mod load;
mod local_copy;
mod quarantine;
mod write_sql;
mod writer;

pub use error::StoreError;
pub use journal::{Entry as JournalEntry, Journal, JournalError, Op, Owner, quarantine_path};
pub use local_copy::{
    CopyError, CopyState, append_log as append_copy_log, log_path as copy_log_path,
    on_disk as copy_on_disk, path_for as copy_path_for, read as read_copy,
    write_base as write_copy_base,
};
pub use quarantine::{
    Listing, Piece, QuarantineError, discard as discard_quarantined, list as list_quarantine,
    requeue as requeue_quarantined,
};
pub(crate) use write_sql::{put_many, put_on};
pub(crate) use writer::budget as write_budget;
pub use writer::{Applied, Change, Outcome, Writer};

use self::error::Said;
use crate::doc::{Entry, Record};
use sqlx::any::install_default_drivers;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Row, SqlSafeStr};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there (plain upsert).
    Any,
    /// The document must not exist yet (`rev: 0`).
    Absent,
    /// The document must be at this revision.
    Rev(i64),
}

/// Schema changes, applied in order at start. Never edit one that has shipped: add another.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "users table",
        "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        rev BIGINT NOT NULL,
        doc TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    ),
    (
        2,
        "ids of replayed journal writes, so a replay cut short applies nothing twice",
        "CREATE TABLE IF NOT EXISTS applied_writes (
        write_id TEXT PRIMARY KEY,
        applied_at TEXT NOT NULL
    )",
    ),
];

/// The PostgreSQL channel on which every write announces the id it changed (`*`: many ids), so
/// other instances sharing the database refresh their snapshots.
pub const CHANGES_CHANNEL: &str = "usersvc_users";
/// Bulk writes larger than this announce `*` (reload) instead of one notification per id.
const NOTIFY_EACH_MAX: usize = 100;

/// What a write of these ids announces on [`CHANGES_CHANNEL`]: the bare ids, as every release
/// sends them (a rolling upgrade mixes releases; the follower tells its own by the sending
/// backend's pid), or `*` for a bulk write.
pub(crate) fn announcements<'a>(ids: &[&'a str]) -> Vec<&'a str> {
    if ids.len() > NOTIFY_EACH_MAX {
        vec!["*"]
    } else {
        ids.to_vec()
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    /// The database's host, or hosts (a PostgreSQL primary and its standbys), and their pools.
    hosts: Arc<hosts::Hosts>,
    postgres: bool,
    timeout: Duration,
    /// False after a cold start (`lazy`) until the migrations ran against the reachable store.
    migrated: Arc<AtomicBool>,
    /// PostgreSQL: the backend pid of this process's write connection, the one that announces
    /// changes (0: none yet). Its own announcements are what the follower skips.
    announcer: Arc<std::sync::atomic::AtomicU32>,
}

/// The database file of a `sqlite:` URL (none for `:memory:` or PostgreSQL).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && !path.contains(":memory:")).then_some(path)
}

/// A `sqlite:` URL without `mode` gets `mode=rwc`: the default store is created on first run.
fn normalize_url(url: &str) -> Result<String, StoreError> {
    if url.starts_with("sqlite:") {
        if url.contains("mode=") || url.contains(":memory:") {
            Ok(url.to_owned())
        } else if url.contains('?') {
            Ok(format!("{url}&mode=rwc"))
        } else {
            Ok(format!("{url}?mode=rwc"))
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_owned())
    } else {
        Err(StoreError::BadUrl(url.to_owned()))
    }
}

impl Store {
    /// Connects and runs the migrations. `timeout` bounds each wait for a connection.
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let store = Self::lazy(url, timeout)?;
        if store.hosts.several() && !store.hosts.find(timeout).await {
            return Err(StoreError::NoHost(toolkit_core::redact::url(url)));
        }
        // One plain connection first: the pool retries a refused one until `timeout` and then
        // reports only that it timed out; this says why, at once.
        match tokio::time::timeout(timeout, AnyConnection::connect(store.url())).await {
            Ok(Ok(mut conn)) => {
                if let Some(path) = sqlite_path(store.url()) {
                    for suffix in ["", "-wal", "-shm"] {
                        crate::atomic_file::make_private(std::path::Path::new(&format!(
                            "{path}{suffix}"
                        )));
                    }
                }
                if !store.postgres && !store.url().contains(":memory:") {
                    // Write-ahead log: a commit is one append and one fsync, and readers (a
                    // reload, the server an upgrade overlaps with) never block the writer.
                    // Persistent in the file.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .fetch_optional(&mut conn)
                        .await?;
                }
                let _ = conn.close().await;
            }
            Ok(Err(e)) => return Err(StoreError::Connect(e)),
            Err(_) => return Err(StoreError::TimedOut(timeout)),
        }
        store.migrate().await?;
        Ok(store)
    }

    /// A store not connected yet, for a cold start while the database is unreachable: nothing is
    /// tried until a query needs it; `migrate` must run once it answers.
    pub fn lazy(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = normalize_url(url)?;
        let postgres = !url.starts_with("sqlite:");
        // Reads and probes only (writes have their own connection, `writer.rs`): a few suffice.
        let max = if postgres { 4 } else { 1 };
        Ok(Self {
            hosts: Arc::new(hosts::Hosts::new(&url, max, timeout)?),
            postgres,
            timeout,
            migrated: Arc::new(AtomicBool::new(false)),
            announcer: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        })
    }

    /// Where the write connection records its PostgreSQL backend pid.
    pub(crate) fn announcer(&self) -> Arc<std::sync::atomic::AtomicU32> {
        self.announcer.clone()
    }

    /// Whether a change notification came from this process's own write connection.
    pub(crate) fn announced_by_me(&self, backend_pid: u32) -> bool {
        backend_pid != 0 && self.announcer.load(Ordering::Acquire) == backend_pid
    }

    /// Runs the migrations not applied yet (once per process).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut run = Migrator::with_migrations(migrations);
        // A database a later release migrated further must not stop this one: a rollback to
        // it, or a rolling upgrade's older instances, must still start. (Releases add tables
        // and columns older ones do not read; none removes one.)
        run.set_ignore_missing(true);
        match tokio::time::timeout(self.timeout * LOAD_TIMEOUTS, run.run(self.pool())).await {
            Ok(done) => done?,
            Err(_) => return Err(StoreError::TimedOut(self.timeout * LOAD_TIMEOUTS)),
        }
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// The longest wait for the database, per connection or per write batch.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether other instances may share this database (and writes are announced).
    pub fn is_shared(&self) -> bool {
        self.postgres
    }

    /// The URL of the host in use (of several, the one that takes writes).
    pub fn url(&self) -> &str {
        self.hosts.url()
    }

    fn pool(&self) -> &AnyPool {
        self.hosts.pool()
    }

    /// Whether the URL names several hosts (a primary and its standbys).
    pub(crate) fn has_several_hosts(&self) -> bool {
        self.hosts.several()
    }

    /// With several hosts: finds the one to use again (a standby promoted, the primary gone).
    /// False when none answers and suits, or there is only one.
    pub async fn find_host(&self) -> bool {
        self.hosts.several() && self.hosts.find(self.timeout).await
    }

    /// Whether a connection just made is to a host usersvc may use (with several hosts and
    /// `target_session_attrs=read-write`: one that takes writes).
    pub(crate) async fn suits(&self, conn: &mut AnyConnection) -> Result<bool, StoreError> {
        if !self.hosts.several() {
            return Ok(true);
        }
        self.hosts.suits(conn).await
    }

    /// One document, straight from the database.
    /// Within `timeout`: callers hold the writer lock, and a stalled database must not hold
    /// every write behind them.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let query = sqlx::query("SELECT id, rev, doc, updated_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool());
        let row = bounded(self.timeout, query).await?;
        row.as_ref().map(decode).transpose()
    }

    /// Every user as the snapshot keeps it, in no order (`load.rs`).
    pub async fn load_entries(&self) -> Result<Vec<(String, Entry)>, StoreError> {
        load::entries(self).await
    }

    /// `SELECT 1`. When the pool gives up connecting ("pool timed out"), the error says why
    /// the database cannot be reached, from a connection of its own.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match sqlx::query("SELECT 1").execute(self.pool()).await {
            Ok(_) => Ok(()),
            Err(sqlx::Error::PoolTimedOut) => {
                match self.why_unreachable(Duration::from_secs(1)).await {
                    Some(why) => Err(StoreError::Unreachable(why)),
                    None => Err(StoreError::Query(sqlx::Error::PoolTimedOut)),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Why the store cannot be reached, asked of a connection of its own within `within`: the
    /// pool only says it timed out when every connect failed, and an operator needs the cause
    /// ("Connection refused", a password refused, a host that does not resolve). `None` when a
    /// connection opens (the pool's trouble was elsewhere).
    pub async fn why_unreachable(&self, within: Duration) -> Option<String> {
        use sqlx::Connection;
        let url = self.url();
        match tokio::time::timeout(within, sqlx::AnyConnection::connect(url)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                None
            }
            Ok(Err(e)) => Some(toolkit_core::redact::text(&Said(&e).to_string())),
            Err(_) => Some(format!(
                "no answer from {} within {}",
                toolkit_core::redact::url(url),
                humantime::format_duration(within)
            )),
        }
    }

    pub async fn close(&self) {
        self.hosts.close().await;
    }
}

/// A full read gets this many store timeouts (30 s by default): it grows with the data.
const LOAD_TIMEOUTS: u32 = 15;

/// A query that has not answered within `budget` counts as the store unreachable.
pub(crate) async fn bounded<T, E>(
    budget: Duration,
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError>
where
    StoreError: From<E>,
{
    match tokio::time::timeout(budget, query).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(StoreError::TimedOut(budget)),
    }
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Record, StoreError> {
    let id: String = row.try_get("id")?;
    let doc: String = row.try_get("doc")?;
    let doc = serde_json::from_str(&doc).map_err(|source| StoreError::Corrupt {
        id: id.clone(),
        source,
    })?;
    Ok(Record {
        rev: row.try_get("rev")?,
        updated_at: row.try_get("updated_at")?,
        id,
        doc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file() {
        assert_eq!(
            normalize_url("sqlite://a.db").ok().as_deref(),
            Some("sqlite://a.db?mode=rwc")
        );
        assert_eq!(
            normalize_url("sqlite://a.db?cache=shared").ok().as_deref(),
            Some("sqlite://a.db?cache=shared&mode=rwc")
        );
        assert_eq!(
            normalize_url("sqlite://a.db?mode=ro").ok().as_deref(),
            Some("sqlite://a.db?mode=ro")
        );
        assert!(matches!(
            normalize_url("mysql://x"),
            Err(StoreError::BadUrl(_))
        ));
    }
}
