//! The durable store: one `users` table on SQLite or PostgreSQL through sqlx's `Any` driver, so both
//! backends run the same SQL (`$n` placeholders, `ON CONFLICT`, `RETURNING` work on both).
//!
//! Documents are stored as JSON text next to their `id`, `rev` and `updated_at`. Concurrency control
//! is optimistic and enforced by the database itself (`WHERE rev = $n`), never by a read-then-write.

mod hosts;
mod journal;
mod local_copy;
mod quarantine;
mod writer;

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
pub(crate) use writer::budget as write_budget;
pub use writer::{Applied, Change, Outcome, Writer};

use crate::doc::{Entry, Record, WriteDoc};
use sqlx::any::install_default_drivers;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Row, SqlSafeStr};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB (several hosts: postgres://USER@H1:5432,H2:5432/DB?target_session_attrs=read-write)"
    )]
    BadUrl(String),
    #[error("no host of {0} answers and takes writes")]
    NoHost(String),
    #[error("cannot open the database: {}", Said(.0))]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {}", Said(.0))]
    Query(#[from] sqlx::Error),
    /// The pool gave up connecting; why, as a connection of its own was told.
    #[error("the database cannot be reached: {0}")]
    Unreachable(String),
    #[error("the database did not answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("stored document {id:?} is not valid JSON: {source}")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The database could not be reached: refused, reset, shut down or silent. A write that
    /// failed so either never started or has an unknown outcome; it is queued, never refused.
    /// Anything else (a constraint, bad data, a bad URL) is the write's own fault.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Connect(e) | StoreError::Query(e) => unreachable(e),
            StoreError::TimedOut(_) | StoreError::NoHost(_) | StoreError::Unreachable(_) => true,
            _ => false,
        }
    }
}

/// A sqlx error as an operator reads it: a database's error is its message and SQLSTATE
/// (sqlx's own text ends in the line of PostgreSQL's C source that raised it: "terminating
/// connection due to administrator command at line 3211").
struct Said<'a>(&'a sqlx::Error);

impl std::fmt::Display for Said<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            sqlx::Error::Database(d) => match d.code() {
                Some(code) => write!(f, "{} (SQLSTATE {code})", d.message()),
                None => f.write_str(d.message()),
            },
            e => write!(f, "{e}"),
        }
    }
}

fn unreachable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception) and 57P (the server is shutting down).
        E::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

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
        let run = Migrator::with_migrations(migrations);
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

    /// Every user as the snapshot keeps it, in no order; within `LOAD_TIMEOUTS` × `timeout`.
    /// Read row by row into entries over a connection of the database's own driver (text
    /// borrowed from each row, not converted through `Any`): no row set, and no parsed
    /// document, is ever held whole. At a million users those were most of the memory and of
    /// the start.
    pub async fn load_entries(&self) -> Result<Vec<(String, Entry)>, StoreError> {
        use futures_util::TryStreamExt;
        // In table order, sorted in memory (`Snapshot::replace_entries`): SQLite reads its
        // table sequentially instead of through the id index, a lookup per row.
        const SQL: &str = "SELECT id, rev, doc, updated_at FROM users";
        let budget = self.timeout * LOAD_TIMEOUTS;
        let load = async {
            let mut out = Vec::new();
            // Connecting gets the usual `timeout`, as the pool's connections do. The same loop
            // over either driver's connection and rows.
            macro_rules! read_all {
                ($conn:ty) => {{
                    let mut conn = bounded(self.timeout, <$conn>::connect(self.url())).await?;
                    {
                        let mut rows = sqlx::query(SQL).fetch(&mut conn);
                        while let Some(row) = rows.try_next().await? {
                            let (id, rev, doc, at) = (
                                row.try_get(0)?,
                                row.try_get(1)?,
                                row.try_get(2)?,
                                row.try_get(3)?,
                            );
                            out.push(entry_of(id, rev, doc, at)?);
                        }
                    }
                    let _ = conn.close().await;
                }};
            }
            if self.postgres {
                read_all!(sqlx::PgConnection);
            } else {
                let mut conn =
                    bounded(self.timeout, sqlx::SqliteConnection::connect(self.url())).await?;
                read_sqlite_framed(&mut conn, &mut out).await?;
                let _ = conn.close().await;
            }
            Ok::<_, StoreError>(out)
        };
        tokio::time::timeout(budget, load)
            .await
            .unwrap_or(Err(StoreError::TimedOut(budget)))
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

/// Documents per statement of [`put_many`]: 3 parameters each, well under SQLite's 32766.
const PUT_MANY_CHUNK: usize = 500;

/// Upserts `docs` (no condition) with multi-row statements, in order, returning each one's new
/// revision. A statement cannot update one row twice, so an id seen again starts the next one.
/// One statement per 500 documents instead of one per document: an import of a million users
/// is bound by the store, not by round trips.
pub(crate) async fn put_many(
    conn: &mut sqlx::AnyConnection,
    docs: &[WriteDoc],
    postgres: bool,
    read_revs: bool,
) -> Result<Vec<i64>, StoreError> {
    use std::fmt::Write;
    let mut revs = Vec::with_capacity(docs.len());
    let mut start = 0;
    while start < docs.len() {
        let mut seen = std::collections::HashSet::new();
        let mut end = start;
        while end < docs.len() && end - start < PUT_MANY_CHUNK && seen.insert(&docs[end].id) {
            end += 1;
        }
        let chunk = &docs[start..end];
        let mut sql = String::from("INSERT INTO users (id, rev, doc, updated_at) VALUES ");
        for i in 0..chunk.len() {
            let sep = if i == 0 { "" } else { "," };
            if postgres {
                let (a, b, c) = (3 * i + 1, 3 * i + 2, 3 * i + 3);
                let _ = write!(sql, "{sep}(${a}, 1, ${b}, ${c})");
            } else {
                // SQLite looks a numbered parameter's name up in a list, for each one: with
                // 1500 of them that was a third of an import. Anonymous ones bind in order.
                let _ = write!(sql, "{sep}(?, 1, ?, ?)");
            }
        }
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET rev = users.rev + 1, doc = excluded.doc,
             updated_at = excluded.updated_at",
        );
        if read_revs {
            sql.push_str(" RETURNING id, rev");
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            q = q.bind(&d.id).bind(&d.json).bind(&d.updated_at);
        }
        if !read_revs {
            q.execute(&mut *conn).await?;
            start = end;
            continue;
        }
        let rows = q.fetch_all(&mut *conn).await?;
        // RETURNING's order is not promised: match by id.
        let mut by_id = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            by_id.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
        }
        for d in chunk {
            revs.push(by_id.get(&d.id).copied().unwrap_or_default());
        }
        start = end;
    }
    Ok(revs)
}

pub(crate) async fn put_on(
    conn: &mut sqlx::AnyConnection,
    rec: &WriteDoc,
    expect: Expect,
) -> Result<Option<i64>, StoreError> {
    let row = match expect {
        Expect::Any => {
            sqlx::query(
                "INSERT INTO users (id, rev, doc, updated_at) VALUES ($1, 1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET rev = users.rev + 1, doc = excluded.doc,
                 updated_at = excluded.updated_at RETURNING rev",
            )
            .bind(&rec.id)
            .bind(&rec.json)
            .bind(&rec.updated_at)
            .fetch_optional(&mut *conn)
            .await?
        }
        Expect::Absent => {
            sqlx::query(
                "INSERT INTO users (id, rev, doc, updated_at) VALUES ($1, 1, $2, $3)
                 ON CONFLICT (id) DO NOTHING RETURNING rev",
            )
            .bind(&rec.id)
            .bind(&rec.json)
            .bind(&rec.updated_at)
            .fetch_optional(&mut *conn)
            .await?
        }
        Expect::Rev(rev) => {
            sqlx::query(
                "UPDATE users SET rev = rev + 1, doc = $1, updated_at = $2
                 WHERE id = $3 AND rev = $4 RETURNING rev",
            )
            .bind(&rec.json)
            .bind(&rec.updated_at)
            .bind(&rec.id)
            .bind(rev)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    Ok(match row {
        Some(row) => Some(row.try_get::<i64, _>(0)?),
        None => None,
    })
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

/// Rows per framed chunk: a few MiB of text.
const FRAMED_ROWS: i64 = 20_000;

/// sqlx's SQLite driver hands over rows one at a time through its worker thread, a few
/// microseconds each: seconds at a million users. Here SQLite itself frames a chunk of rows
/// into one text (`<len>:<id><len>:<doc><rev>:<len>:<updated_at>`, byte lengths; one printf,
/// not a chain of `||` copies), in rowid order so each chunk starts where the last ended, and
/// the text is split here. A value holding a NUL byte is cut there by printf, so its length no
/// longer matches and the load fails rather than reading it wrong.
const FRAMED: &str = "SELECT max(r), group_concat(rec, ''), count(*), count(rec) FROM (\
     SELECT rowid AS r, CASE WHEN id IS NULL OR doc IS NULL OR rev IS NULL \
     OR updated_at IS NULL THEN NULL ELSE printf('%d:%s%d:%s%d:%d:%s', \
     length(CAST(id AS BLOB)), id, length(CAST(doc AS BLOB)), doc, rev, \
     length(CAST(updated_at AS BLOB)), updated_at) END AS rec \
     FROM users WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)";

async fn read_sqlite_framed(
    conn: &mut sqlx::SqliteConnection,
    out: &mut Vec<(String, Entry)>,
) -> Result<(), StoreError> {
    type Split = tokio::task::JoinHandle<Result<Vec<(String, Entry)>, StoreError>>;
    // A chunk is split on a blocking thread while SQLite frames the next one: two cores.
    let mut splitting: Option<Split> = None;
    let mut after = i64::MIN;
    loop {
        let row = sqlx::query(FRAMED)
            .bind(after)
            .bind(FRAMED_ROWS)
            .fetch_one(&mut *conn)
            .await?;
        let (last, text, rows, framed): (Option<i64>, Option<String>, i64, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        if let Some(done) = splitting.take() {
            out.extend(joined(done).await?);
        }
        let Some(last) = last else {
            return Ok(());
        };
        // A NULL field (the table allows none, but the file is input) makes its record NULL,
        // which group_concat would skip: refused, not dropped.
        let text = text.unwrap_or_default();
        splitting = Some(tokio::task::spawn_blocking(move || {
            let mut part = Vec::with_capacity(usize::try_from(rows).unwrap_or(0));
            split_framed(&text, &mut part)?;
            let got = i64::try_from(part.len()).unwrap_or(i64::MAX);
            if framed != rows || got != rows {
                let at = format!("(a row after rowid {after})");
                return Err(corrupt(&at, "a row with a NULL or unreadable field"));
            }
            Ok(part)
        }));
        after = last;
    }
}

/// A split chunk's entries; a split that panicked is reported, not propagated.
async fn joined(
    split: tokio::task::JoinHandle<Result<Vec<(String, Entry)>, StoreError>>,
) -> Result<Vec<(String, Entry)>, StoreError> {
    split
        .await
        .unwrap_or_else(|e| Err(corrupt("(a chunk)", &format!("splitting failed: {e}"))))
}

/// Splits [`FRAMED`]'s text into entries.
fn split_framed(text: &str, out: &mut Vec<(String, Entry)>) -> Result<(), StoreError> {
    let mut rest = text;
    let bad = |rest: &str| {
        let at: String = rest.chars().take(40).collect();
        corrupt(&at, "the database returned a record that does not parse")
    };
    // `<digits>:` then that many bytes; or, for `rev`, `<digits>:` alone.
    fn number(rest: &mut &str) -> Option<i64> {
        let colon = rest.bytes().position(|b| b == b':')?;
        let n = rest[..colon].parse().ok();
        *rest = &rest[colon + 1..];
        n
    }
    fn field<'a>(rest: &mut &'a str) -> Option<&'a str> {
        let n = usize::try_from(number(rest)?).ok()?;
        let value = rest.get(..n)?;
        *rest = &rest[n..];
        Some(value)
    }
    while !rest.is_empty() {
        let mut r = rest;
        let (Some(id), Some(doc), Some(rev), Some(at)) =
            (field(&mut r), field(&mut r), number(&mut r), field(&mut r))
        else {
            return Err(bad(rest));
        };
        out.push(entry_of(id, rev, doc, at)?);
        rest = r;
    }
    Ok(())
}

fn corrupt(id: &str, why: &str) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        source: serde::de::Error::custom(why),
    }
}

fn entry_of(
    id: &str,
    rev: i64,
    doc: &str,
    updated_at: &str,
) -> Result<(String, Entry), StoreError> {
    match Entry::from_doc_text(doc, rev, updated_at) {
        Some(e) => Ok((id.to_owned(), e)),
        // Not an object's text: say why as the parser does.
        None => Err(StoreError::Corrupt {
            source: serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(doc)
                .err()
                .unwrap_or_else(|| serde::de::Error::custom("not a JSON object")),
            id: id.to_owned(),
        }),
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

    #[test]
    fn sqlite_loads_framed_chunks_whatever_the_ids_hold() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("u.db").display());
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let store = Store::open(&url, Duration::from_secs(5))
                .await
                .expect("open");
            store.migrate().await.expect("migrate");
            // More rows than a chunk holds, twice over, and ids that look like the framing.
            sqlx::query(
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 45000) \
                 INSERT INTO users (id, rev, doc, updated_at) \
                 SELECT 'u' || n, n, '{\"n\":' || n || '}', '2026-12-01T00:00:00Z' FROM c",
            )
            .execute(store.pool())
            .await
            .expect("rows");
            for id in ["12:3", "a:b\nc", "ünï:", ""] {
                sqlx::query("INSERT INTO users (id, rev, doc, updated_at) VALUES (?, 7, ?, 't:1')")
                    .bind(id)
                    .bind(r#"{"x":"1:2"}"#)
                    .execute(store.pool())
                    .await
                    .expect("row");
            }
            let entries = store.load_entries().await.expect("load");
            assert_eq!(entries.len(), 45_004);
            let find = |id: &str| {
                entries
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, e)| e.clone())
            };
            assert_eq!(find("u44999").expect("u44999").rev, 44_999);
            for id in ["12:3", "a:b\nc", "ünï:", ""] {
                let e = find(id).unwrap_or_else(|| panic!("{id:?} loaded"));
                assert_eq!(e.rev, 7);
                let doc: serde_json::Value = serde_json::from_slice(&e.json).expect("json");
                assert_eq!(
                    (doc["x"].as_str(), doc["updated_at"].as_str()),
                    (Some("1:2"), Some("t:1"))
                );
            }
            // A NULL field is refused, not skipped.
            sqlx::query("INSERT INTO users (id, rev, doc, updated_at) VALUES (NULL, 1, '{}', 't')")
                .execute(store.pool())
                .await
                .expect("a NULL id (SQLite allows it in a TEXT primary key)");
            let e = store.load_entries().await.expect_err("refused");
            assert!(e.to_string().contains("NULL"), "{e}");
            store.close().await;
        });
    }
}
