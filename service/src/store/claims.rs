//! The write ids' claims (`applied_writes`): what makes a write apply once however often it is
//! sent. A batch claims every write's id in its own transaction before applying it; an id
//! claimed before is a write an earlier attempt committed (its answer lost to a timeout, a
//! crash or a split batch). A write that changed nothing keeps its claim too, marked with why
//! in its `applied_at` (`unchanged:1`, its condition did not hold; `unchanged:2`, the database
//! refused it: no column of its own, so that older releases still start on this table), and a
//! second attempt answers what the first did. It is never judged again: by then later writes
//! of the first attempt's batch may have committed, and judging it against their state would
//! apply it out of order (a delete of a user a later put created). Only an operator's requeue
//! of a quarantined write ([`unmark`]) lets it be judged again.

use super::StoreError;
use super::writer::{Applied, Change, Outcome};
use sqlx::{AnyConnection, Row};
use std::collections::{HashMap, HashSet};

/// The mark of a write whose condition did not hold.
const CONDITION_FAILED: &str = "unchanged:1";
/// The mark of a write the database refused.
const REFUSED: &str = "unchanged:2";

/// What a batch's claim found.
pub(super) struct Claims {
    /// The ids this transaction claimed.
    new: HashSet<String>,
    /// Of the ids claimed before, those whose first attempt changed nothing, and its mark.
    unchanged: HashMap<String, String>,
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
        match self.unchanged.get(write_id) {
            None => Ok(Applied::AlreadyApplied),
            Some(mark) => unchanged_outcome(mark, change),
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

    /// Marks each write this transaction claimed that changed nothing, with why: one
    /// statement per reason (and per 500 ids), however many there are.
    pub(super) async fn mark_unchanged(
        &self,
        conn: &mut AnyConnection,
        batch: &[(String, Change)],
        outcomes: &[Outcome],
    ) -> Result<(), StoreError> {
        for mark in [CONDITION_FAILED, REFUSED] {
            let ids: Vec<&str> = batch
                .iter()
                .zip(outcomes)
                .filter(|((id, _), outcome)| self.is_new(id) && mark_of(outcome) == Some(mark))
                .map(|((id, _), _)| id.as_str())
                .collect();
            for chunk in ids.chunks(CHUNK) {
                let sql = "UPDATE applied_writes SET applied_at = $1 WHERE write_id IN ({ids})";
                with_ids(sql, Some(mark), chunk).execute(&mut *conn).await?;
            }
        }
        Ok(())
    }
}

/// The mark of a write that changed nothing; `None` for one that changed something.
fn mark_of(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Err(_) => Some(REFUSED),
        Ok(Applied::Put(None) | Applied::Deleted(false)) => Some(CONDITION_FAILED),
        Ok(_) => None,
    }
}

/// What a write marked `mark` answers when it comes again.
fn unchanged_outcome(mark: &str, change: &Change) -> Outcome {
    match (mark, change) {
        (CONDITION_FAILED, Change::Put { .. }) => Ok(Applied::Put(None)),
        (CONDITION_FAILED, Change::Delete { .. }) => Ok(Applied::Deleted(false)),
        _ => Err(StoreError::RefusedEarlier),
    }
}

/// What the second copy of a write id in one batch answers: what the first copy did.
pub(super) fn repeated_outcome(first: &Outcome, change: &Change) -> Outcome {
    match mark_of(first) {
        Some(mark) => unchanged_outcome(mark, change),
        None => Ok(Applied::AlreadyApplied),
    }
}

/// Lets requeued writes be judged again: an operator's `usersvc journal requeue` of a
/// quarantined write (refused, or its condition failed) asks exactly that. Only marked claims
/// go: a write that changed something stays applied once.
pub(crate) async fn unmark(conn: &mut AnyConnection, ids: &[&str]) -> Result<(), StoreError> {
    for chunk in ids.chunks(CHUNK) {
        let sql = "DELETE FROM applied_writes WHERE applied_at LIKE 'unchanged:%' AND write_id IN ({ids})";
        with_ids(sql, None, chunk).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Of `ids` (claimed before), those whose first attempt changed nothing, and why.
async fn read_unchanged(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashMap<String, String>, StoreError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = "SELECT write_id, applied_at FROM applied_writes
             WHERE applied_at LIKE 'unchanged:%' AND write_id IN ({ids})";
        for row in with_ids(sql, None, chunk).fetch_all(&mut *conn).await? {
            out.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
        }
    }
    Ok(out)
}

/// Drops the claims of `ids`: acknowledged writes nothing will send again.
pub(super) async fn forget(conn: &mut AnyConnection, ids: &[String]) -> Result<(), StoreError> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for chunk in ids.chunks(CHUNK) {
        let sql = "DELETE FROM applied_writes WHERE write_id IN ({ids})";
        with_ids(sql, None, chunk).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Ids per statement: SQLite allows 32766 parameters, PostgreSQL 65535.
const CHUNK: usize = 500;

/// `sql` with `{ids}` made one placeholder per id of `ids`, bound after `lead` (then `$1`).
fn with_ids<'q>(
    sql: &str,
    lead: Option<&'q str>,
    ids: &[&'q str],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let first = 1 + usize::from(lead.is_some());
    let marks: Vec<String> = (first..first + ids.len())
        .map(|i| format!("${i}"))
        .collect();
    let sql = sql.replace("{ids}", &marks.join(", "));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(lead) = lead {
        q = q.bind(lead);
    }
    for id in ids {
        q = q.bind(*id);
    }
    q
}
