//! What can go wrong with the store, and which of it means "unreachable": a write that failed so
//! is queued, never refused. A database's own errors are shown as their message and SQLSTATE.

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
    /// A write sent again whose first attempt the database refused (that answer was lost).
    #[error("the database refused this write when it was first tried; nothing was changed")]
    RefusedEarlier,
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
pub(super) struct Said<'a>(pub(super) &'a sqlx::Error);

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
