//! The durable store: one `users` table on SQLite or PostgreSQL through sqlx's `Any` driver, so both
//! backends run the same SQL (`$n` placeholders, `ON CONFLICT`, `RETURNING` work on both).
//!
//! Documents are stored as JSON text next to their `id`, `rev` and `updated_at`. Concurrency control
//! is optimistic and enforced by the database itself (`WHERE rev = $n`), never by a read-then-write.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};
use std::borrow::Cow;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the store did not answer the probe")]
    Unreachable,
    #[error("journal: {0}")]
    Journal(String),
    /// A replayed journal entry whose write id the store already recorded: skip it.
    #[error("write {0} was already applied")]
    AlreadyApplied(String),
    #[error("stored document {id:?} is not valid JSON: {source}")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One stored user document.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub rev: i64,
    pub updated_at: String,
    /// The user object as the client sent it (without `rev`/`updated_at`, which are ours).
    pub doc: serde_json::Map<String, serde_json::Value>,
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

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    url: String,
    postgres: bool,
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
    /// Connects and runs the migrations.
    pub async fn open(url: &str, acquire_timeout: Duration) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = normalize_url(url)?;
        // SQLite has one writer anyway; one connection avoids SQLITE_BUSY under concurrent writes.
        let max = if url.starts_with("sqlite:") { 1 } else { 10 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .connect(&url)
            .await
            .map_err(StoreError::Connect)?;
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
        Migrator::with_migrations(migrations).run(&pool).await?;
        let postgres = !url.starts_with("sqlite:");
        Ok(Self {
            pool,
            url,
            postgres,
        })
    }

    /// Whether other instances may share this database (and writes are announced).
    pub fn is_shared(&self) -> bool {
        self.postgres
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One document, straight from the database.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query("SELECT id, rev, doc, updated_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Every document, ordered by id.
    pub async fn load_all(&self) -> Result<Vec<Record>, StoreError> {
        let rows = sqlx::query("SELECT id, rev, doc, updated_at FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Announces changed ids inside the writing transaction (delivered on commit). PostgreSQL only.
    async fn announce(
        &self,
        conn: &mut sqlx::AnyConnection,
        ids: &[&str],
    ) -> Result<(), StoreError> {
        if !self.postgres {
            return Ok(());
        }
        let payloads: Vec<&str> = if ids.len() > NOTIFY_EACH_MAX {
            vec!["*"]
        } else {
            ids.to_vec()
        };
        for p in payloads {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(p)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Records `write_id` in the write's transaction; `AlreadyApplied` when it was recorded before.
    async fn claim(
        &self,
        conn: &mut sqlx::AnyConnection,
        write_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(write_id) = write_id else {
            return Ok(());
        };
        let row = sqlx::query(
            "INSERT INTO applied_writes (write_id, applied_at) VALUES ($1, $2)
             ON CONFLICT (write_id) DO NOTHING RETURNING write_id",
        )
        .bind(write_id)
        .bind(chrono::Utc::now().to_rfc3339())
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::AlreadyApplied(write_id.to_owned())),
        }
    }

    /// Drops recorded write ids once their journal is gone (nothing can replay them again).
    pub async fn forget_applied(&self, write_ids: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for id in write_ids {
            sqlx::query("DELETE FROM applied_writes WHERE write_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes one document if `expect` holds; returns the new revision, or `None` on a conflict.
    /// With a `write_id` (journal replay), the write is applied at most once.
    pub async fn put(
        &self,
        rec: &WriteDoc,
        expect: Expect,
        write_id: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        if !self.postgres && write_id.is_none() {
            let mut conn = self.pool.acquire().await?;
            return put_on(&mut conn, rec, expect).await;
        }
        let mut tx = self.pool.begin().await?;
        self.claim(&mut tx, write_id).await?;
        let rev = put_on(&mut tx, rec, expect).await?;
        if rev.is_some() {
            self.announce(&mut tx, &[&rec.id]).await?;
        }
        tx.commit().await?;
        Ok(rev)
    }

    /// Writes all documents in one transaction (all or none); returns their new revisions.
    pub async fn put_many(
        &self,
        recs: &[WriteDoc],
        write_id: Option<&str>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        self.claim(&mut tx, write_id).await?;
        let mut revs = Vec::with_capacity(recs.len());
        for rec in recs {
            // Expect::Any never conflicts, so every write yields a revision.
            let rev = put_on(&mut tx, rec, Expect::Any).await?.unwrap_or_default();
            revs.push(rev);
        }
        let ids: Vec<&str> = recs.iter().map(|r| r.id.as_str()).collect();
        self.announce(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(revs)
    }

    /// Deletes a document; `Ok(false)` when it was not there (or not at `expect`'s revision).
    pub async fn delete(
        &self,
        id: &str,
        expect: Expect,
        write_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        self.claim(&mut tx, write_id).await?;
        let done = match expect {
            Expect::Rev(rev) => {
                sqlx::query("DELETE FROM users WHERE id = $1 AND rev = $2")
                    .bind(id)
                    .bind(rev)
                    .execute(&mut *tx)
                    .await?
            }
            Expect::Any | Expect::Absent => {
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
            }
        };
        let deleted = done.rows_affected() > 0;
        if deleted {
            self.announce(&mut tx, &[id]).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A document about to be written: its id, its JSON text and the time stamp to record.
#[derive(Debug, Clone)]
pub struct WriteDoc {
    pub id: String,
    pub json: String,
    pub updated_at: String,
}

async fn put_on(
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
