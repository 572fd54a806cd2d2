//! The write ids' claims (`applied_writes`): what makes a write apply once however often it is
//! sent. A batch claims every write's id in its own transaction before applying it; an id
//! claimed before is a write an earlier attempt committed (its answer lost to a timeout, a
//! crash or a split batch). A write that changed nothing keeps its claim too, marked with why
//! (`unchanged`: 1, its condition did not hold; 2, the database refused it), so that a second
//! attempt answers what the first did. It is never judged again: by then later writes of the
//! first attempt's batch may have committed, and judging it against their state would apply it
//! out of order (a delete of a user a later put created).

use super::StoreError;
use super::writer::{Applied, Change, Outcome};
use sqlx::{AnyConnection, Row};
use std::collections::{HashMap, HashSet};

/// `unchanged` of a write whose condition did not hold.
const CONDITION_FAILED: i64 = 1;
/// `unchanged` of a write the database refused.
const REFUSED: i64 = 2;

/// What a batch's claim found.
pub(super) struct Claims {
    /// The ids this transaction claimed.
    new: HashSet<String>,
    /// Of the ids claimed before, those whose first attempt changed nothing, and why.
    unchanged: HashMap<String, i64>,
    /// An id claimed before, if any (for [`Claims::wait_for_earlier_commits`]).
    earlier: Option<String>,
}

impl Claims {
    /// Records the batch's write ids in its transaction (one statement; one more, only when
    /// some were claimed before, to read what their first attempts did).
    pub(super) async fn take(
        conn: &mut AnyConnection,
        batch: &[(String, Change)],
    ) -> Result<Self, StoreError> {
        let marks: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!(
            "INSERT INTO applied_writes (write_id, applied_at) VALUES {}
             ON CONFLICT (write_id) DO NOTHING RETURNING write_id",
            marks.join(", ")
        );
        let at = chrono::Utc::now().to_rfc3339();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (write_id, _) in batch {
            q = q.bind(write_id).bind(&at);
        }
        let rows = q.fetch_all(&mut *conn).await?;
        let new: HashSet<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let earlier: Vec<&str> = batch
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !new.contains(*id))
            .collect();
        let unchanged = match earlier.is_empty() {
            true => HashMap::new(),
            false => read_unchanged(conn, &earlier).await?,
        };
        Ok(Claims {
            new,
            unchanged,
            earlier: earlier.first().map(|id| (*id).to_owned()),
        })
    }

    pub(super) fn is_new(&self, write_id: &str) -> bool {
        self.new.contains(write_id)
    }

    /// What a write claimed before answers: what its first attempt did.
    pub(super) fn earlier_outcome(&self, write_id: &str, change: &Change) -> Outcome {
        match (self.unchanged.get(write_id), change) {
            (None, _) => Ok(Applied::AlreadyApplied),
            (Some(&CONDITION_FAILED), Change::Put { .. }) => Ok(Applied::Put(None)),
            (Some(&CONDITION_FAILED), Change::Delete { .. }) => Ok(Applied::Deleted(false)),
            (Some(_), _) => Err(StoreError::RefusedEarlier),
        }
    }

    /// When a write id of the batch was claimed before, that may be an earlier attempt's commit
    /// that a crash's recovery shows before any synchronous standby has it: not yet durable
    /// across a failover. Writing WAL of its own (a row updated to itself) makes this commit wait
    /// for the standby, and WAL is in order: once it returns, the earlier commit is on the
    /// standby too, so "already applied" holds. (An xid alone is not enough: PostgreSQL waits
    /// only for a transaction that wrote WAL.)
    pub(super) async fn wait_for_earlier_commits(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<(), StoreError> {
        if let Some(earlier) = &self.earlier {
            sqlx::query("UPDATE applied_writes SET applied_at = applied_at WHERE write_id = $1")
                .bind(earlier)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Marks each write this transaction claimed that changed nothing, with why.
    pub(super) async fn mark_unchanged(
        &self,
        conn: &mut AnyConnection,
        batch: &[(String, Change)],
        outcomes: &[Outcome],
    ) -> Result<(), StoreError> {
        for ((write_id, _), outcome) in batch.iter().zip(outcomes) {
            let why = match outcome {
                Err(_) => REFUSED,
                Ok(Applied::Put(None) | Applied::Deleted(false)) => CONDITION_FAILED,
                Ok(_) => continue,
            };
            if self.is_new(write_id) {
                sqlx::query("UPDATE applied_writes SET unchanged = $1 WHERE write_id = $2")
                    .bind(why)
                    .bind(write_id)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Of `ids` (claimed before), those whose first attempt changed nothing, and why.
async fn read_unchanged(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut out = HashMap::new();
    // Bounded statements: SQLite allows 32766 parameters, PostgreSQL 65535.
    for chunk in ids.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT write_id, unchanged FROM applied_writes
             WHERE unchanged IS NOT NULL AND write_id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
        }
    }
    Ok(out)
}

/// Drops the claims of `ids`: acknowledged writes nothing will send again.
pub(super) async fn forget(conn: &mut AnyConnection, ids: &[String]) -> Result<(), StoreError> {
    // Bounded statements: SQLite allows 32766 parameters, PostgreSQL 65535.
    for chunk in ids.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "DELETE FROM applied_writes WHERE write_id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
