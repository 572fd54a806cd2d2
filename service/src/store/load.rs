//! Loading every user at start, the one read that grows with the data: row by row over the
//! database's own driver (no row set, no parsed document held whole), and on SQLite in framed
//! chunks that SQLite itself encodes, split on other cores. Bounded by `LOAD_TIMEOUTS` store
//! timeouts.

use super::{LOAD_TIMEOUTS, Store, StoreError, bounded};
use crate::doc::Entry;
use sqlx::{Connection, Row};

/// Every user as the snapshot keeps it, in no order; within `LOAD_TIMEOUTS` × `timeout`.
/// Read row by row into entries over a connection of the database's own driver (text
/// borrowed from each row, not converted through `Any`): no row set, and no parsed
/// document, is ever held whole. At a million users those were most of the memory and of
/// the start.
pub(super) async fn entries(store: &Store) -> Result<Vec<(String, Entry)>, StoreError> {
    use futures_util::TryStreamExt;
    // In table order, sorted in memory (`Snapshot::replace_entries`): SQLite reads its
    // table sequentially instead of through the id index, a lookup per row.
    const SQL: &str = "SELECT id, rev, doc, updated_at FROM users";
    let budget = store.timeout * LOAD_TIMEOUTS;
    let load = async {
        let mut out = Vec::new();
        // Connecting gets the usual `timeout`, as the pool's connections do. The same loop
        // over either driver's connection and rows.
        macro_rules! read_all {
            ($conn:ty) => {{
                let mut conn = bounded(store.timeout, <$conn>::connect(store.url())).await?;
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
        if store.postgres {
            read_all!(sqlx::PgConnection);
        } else {
            let mut conn =
                bounded(store.timeout, sqlx::SqliteConnection::connect(store.url())).await?;
            read_sqlite_framed(&mut conn, &mut out).await?;
            let _ = conn.close().await;
        }
        Ok::<_, StoreError>(out)
    };
    tokio::time::timeout(budget, load)
        .await
        .unwrap_or(Err(StoreError::TimedOut(budget)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
