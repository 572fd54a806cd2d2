//! The SQL a write runs: one conditional upsert (`put_on`, what `Expect` asks), and multi-row
//! upserts of many documents (`put_many`), one SQL text for SQLite and PostgreSQL.

use super::{Expect, StoreError};
use crate::doc::WriteDoc;
use sqlx::Row;

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
