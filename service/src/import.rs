//! `usersvc import`: a JSON array of users into the store in one transaction, all or nothing,
//! straight to the database (never queued, never through a running server).
//!
//! SQLite takes multi-row upserts through the writer (`Change::Import`). PostgreSQL takes a
//! first load (none of the ids stored yet) by `COPY`, which multi-row upserts could not match;
//! a file over stored ids goes by `INSERT … SELECT FROM unnest(…) ON CONFLICT`, a chunk of rows
//! per statement (no temporary table: the service's role needs no TEMP privilege).
//! Validation refuses an id twice in one file, so each row is one id.

use crate::ServeError;
use crate::doc::WriteDoc;
use crate::store::{self, CHANGES_CHANNEL, Store, StoreError};
use crate::users::validate_text_with;
use sqlx::{Connection, PgConnection};
use std::path::Path;

/// Loads a JSON array of users in one transaction (all or nothing); returns how many.
pub async fn import(settings: &crate::Settings, path: &Path) -> Result<usize, ServeError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| ServeError::ReadImport {
        path: shown.clone(),
        source,
    })?;
    // One user parsed at a time, each kept as the text the store takes: no tree of the whole
    // file, no second encoding.
    let valid = validate_text_with(&text, false).map_err(|e| ServeError::BadImport {
        path: shown.clone(),
        message: e.0,
    })?;
    drop(text);
    let count = valid.len();
    let store = Store::open(&settings.store.database_url, settings.store.store_timeout).await?;
    let now = crate::doc::now();
    let writes: Vec<WriteDoc> = valid
        .into_iter()
        .map(|(id, doc)| WriteDoc::owned(id, doc.into_string(), now.clone()))
        .collect();
    let done = if store.is_shared() {
        let bytes = writes.iter().map(|w| w.json.len()).sum();
        let budget = crate::store::write_budget(store.timeout(), writes.len(), bytes);
        crate::store::bounded(budget, copy_into_postgres(store.url(), &writes)).await
    } else {
        upsert_through_writer(&store, writes).await
    };
    store.close().await;
    done?;
    Ok(count)
}

async fn upsert_through_writer(store: &Store, writes: Vec<WriteDoc>) -> Result<(), StoreError> {
    let mut writer = crate::store::Writer::new(store);
    let write_id = uuid::Uuid::now_v7().to_string();
    let done = writer
        .commit(&[(write_id, crate::store::Change::Import(writes))])
        .await;
    writer.close().await;
    match done?.pop() {
        Some(Err(e)) => Err(e),
        Some(Ok(_)) | None => Ok(()),
    }
}

const STORED: &str = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)";
const COPY_NEW: &str = "COPY users (id, rev, doc, updated_at) FROM STDIN";
const UPSERT: &str = "INSERT INTO users (id, rev, doc, updated_at)
    SELECT id, 1, doc, updated_at FROM unnest($1::text[], $2::text[], $3::text[])
        AS u(id, doc, updated_at)
    ON CONFLICT (id) DO UPDATE SET rev = users.rev + 1, doc = excluded.doc,
    updated_at = excluded.updated_at";
/// Rows per upsert statement: its three arrays stay a few megabytes.
const UPSERT_CHUNK: usize = 10_000;

/// One transaction on a connection of its own (`COPY` is not in sqlx's Any driver).
async fn copy_into_postgres(url: &str, rows: &[WriteDoc]) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(StoreError::Connect)?;
    let mut tx = conn.begin().await?;
    let ids: Vec<&str> = rows.iter().map(|doc| doc.id.as_str()).collect();
    // A plain COPY costs a third of an upsert per row, but fails as a whole on a stored id,
    // and only once every row was sent. A file whose first user is stored (a re-import) goes
    // straight to the upsert; asking for every id costs a fifth of the COPY itself.
    let first_stored: bool = match ids.first() {
        Some(id) => {
            sqlx::query_scalar(STORED)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
        }
        None => false,
    };
    let copied = !first_stored && {
        sqlx::query("SAVEPOINT copy").execute(&mut *tx).await?;
        match copy(&mut tx, rows).await {
            Ok(()) => true,
            // One of them is stored (or another instance stored it meanwhile): the savepoint
            // takes the attempt back, and the rows are upserted below instead.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                sqlx::query("ROLLBACK TO SAVEPOINT copy")
                    .execute(&mut *tx)
                    .await?;
                false
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !copied {
        upsert(&mut tx, rows).await?;
    }
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANGES_CHANNEL)
        .bind(store::announcements(&ids))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(())
}

/// Inserts or updates the rows, a chunk per statement.
async fn upsert(conn: &mut PgConnection, rows: &[WriteDoc]) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let column = |field: fn(&WriteDoc) -> &str| chunk.iter().map(field).collect::<Vec<_>>();
        sqlx::query(UPSERT)
            .bind(column(|d| &d.id))
            .bind(column(|d| &d.json))
            .bind(column(|d| &d.updated_at))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Sends the rows in `COPY`'s text format, a megabyte at a time.
async fn copy(conn: &mut PgConnection, rows: &[WriteDoc]) -> Result<(), sqlx::Error> {
    const CHUNK: usize = 1 << 20;
    let mut copy = conn.copy_in_raw(COPY_NEW).await?;
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    for doc in rows {
        copy_row(&mut buf, doc);
        if buf.len() >= CHUNK {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(CHUNK + 4096);
        }
    }
    if !buf.is_empty() {
        copy.send(buf).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// A new user's row: revision 1 (the upsert raises a stored one's instead).
fn copy_row(buf: &mut Vec<u8>, doc: &WriteDoc) {
    copy_field(buf, &doc.id);
    buf.extend_from_slice(b"\t1\t");
    copy_field(buf, &doc.json);
    buf.push(b'\t');
    copy_field(buf, &doc.updated_at);
    buf.push(b'\n');
}

/// A value in `COPY`'s text format: backslash, tab, newline and carriage return escaped, so no
/// value can end its field or row (or spell the end-of-data marker `\.`).
fn copy_field(buf: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, json: &str) -> WriteDoc {
        WriteDoc::owned(id.into(), json.into(), "t".into())
    }

    #[test]
    fn no_value_can_end_its_field_or_row() {
        let mut buf = Vec::new();
        copy_row(&mut buf, &doc("a\tb\nc\\.\rd", r#"{"x":"\\n"}"#));
        assert_eq!(buf, b"a\\tb\\nc\\\\.\\rd\t1\t{\"x\":\"\\\\\\\\n\"}\tt\n");
    }
}
