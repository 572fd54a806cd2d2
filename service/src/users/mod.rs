//! Users, the service's one resource: reads from the snapshot, writes through the committer
//! (`commit.rs`), survival of store outages (`supervise.rs`, the journal, the local copy), and
//! other instances' writes (`follow.rs`). Transport-free: `api/methods.rs` maps JSON-RPC onto it.

mod answer;
mod breaker;
mod commit;
mod follow;
mod queued;
mod snapshot;
mod start;
mod state;
mod supervise;
mod validate;

use self::commit::Pending;
use self::state::{Ownership, Shared};
use crate::doc::DocText;
use crate::store::CopyError;
use crate::store::{JournalEntry, JournalError, Op};
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use toolkit_core::lock;

pub use self::answer::{UserError, Written};
pub use self::breaker::BreakerState;
#[cfg(test)]
pub(crate) use self::snapshot::Snapshot;
pub use self::state::{BATCH_BOUNDS, Degradation, Stats};
pub use self::validate::{
    MAX_DEPTH, NewUser, kind, validate, validate_list, validate_text, validate_text_with,
};

/// Where users are stored and how an outage of the store is survived (keys of the config file as
/// the flags, with underscores).
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone)]
#[command(next_help_heading = "Store")]
pub struct StoreSettings {
    /// sqlite://PATH (created on first run) or postgres://USER@HOST:PORT/DB
    #[arg(
        long,
        env = "USERSVC_DATABASE_URL",
        value_name = "URL",
        default_value = "sqlite://usersvc.db",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Longest wait for the database (a connection, a batch of writes) before it counts as
    /// unreachable and writes are queued
    #[arg(long, env = "USERSVC_STORE_TIMEOUT", value_name = "DURATION", default_value = "2s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub store_timeout: Duration,

    /// Where writes are queued (fsync'd) while the store is unreachable; the snapshot copy a cold
    /// start serves sits beside it (.snapshot)
    #[arg(
        long,
        env = "USERSVC_JOURNAL",
        value_name = "PATH",
        default_value = "usersvc.journal",
        global = true
    )]
    pub journal: PathBuf,

    /// Consecutive store failures that open the circuit breaker
    #[arg(long, env = "USERSVC_BREAKER_FAILURES", value_name = "N", default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub breaker_failures: u32,

    /// Wait before probing an unreachable store (doubles per failed probe)
    #[arg(long, env = "USERSVC_BREAKER_BACKOFF", value_name = "DURATION", default_value = "1s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub breaker_backoff: Duration,
}

impl StoreSettings {
    /// How to survive an outage; `handover`: this server replaces another (an upgrade).
    pub fn resilience(&self, handover: bool) -> Resilience {
        Resilience {
            journal: self.journal.clone(),
            failures: self.breaker_failures,
            backoff: self.breaker_backoff,
            handover,
        }
    }
}

/// How the service survives a store outage.
#[derive(Debug, Clone)]
pub struct Resilience {
    /// The journal of queued writes; the snapshot's local copy sits beside it (`.snapshot`).
    pub journal: PathBuf,
    /// Consecutive store failures (other than unreachable, which opens it at once) that open the
    /// breaker.
    pub failures: u32,
    /// How long the breaker stays open before a probe (doubles per failed probe, capped).
    pub backoff: Duration,
    /// This server replaces another (an upgrade): when the journal is still held, wait for the
    /// old server to release it (writes wait meanwhile) instead of refusing to start.
    pub handover: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{store}; and no local copy to start from: {copy}")]
    NoCopy { store: StoreError, copy: CopyError },
}

/// Writes waiting for the committer; more wait in `send` (backpressure).
const QUEUE: usize = 4 * state::MAX_BATCH;

/// Users, backed by the store, read from the snapshot. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Users {
    shared: Arc<Shared>,
    lane: Arc<Lane>,
    tasks: Tasks,
}

/// The way to the committer; emptied by `close`.
struct Lane {
    queue: std::sync::Mutex<Option<mpsc::Sender<Pending>>>,
    committer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Users {
    /// Opens the store and loads every user into the snapshot, replays a journal left by an
    /// earlier run (before any write is served), and starts the committer and the supervisor;
    /// on a shared (PostgreSQL) store, also follows the other instances' writes.
    ///
    /// Cold start: when the store is unreachable, serves the local copy of the last snapshot
    /// (degraded, writes queued) until it answers; without a usable copy, fails naming both.
    pub async fn open(
        url: &str,
        timeout: Duration,
        resilience: &Resilience,
    ) -> Result<Self, OpenError> {
        start::open(url, timeout, resilience).await
    }

    /// Stops taking writes, waits until every write already taken is answered (committed or
    /// queued), saves the local copy, releases the journal (a new server waiting for it takes
    /// over at once) and closes the store. The breaker is not touched: a clean shutdown is not
    /// an outage.
    pub async fn close(&self) {
        self.tasks.stopping();
        self.stop_waiting_for_journal();
        drop(lock(&self.lane.queue).take());
        let committer = lock(&self.lane.committer).take();
        if let Some(committer) = committer
            && let Err(e) = committer.await
        {
            tracing::error!(error = %e, "the committer failed");
        }
        self.shared.closing.store(true, Ordering::Release);
        // Waits for a replay or reload in progress.
        let mut writer = self.shared.writer.lock().await;
        if let Err(e) = supervise::save_copy(&self.shared).await {
            tracing::warn!(error = %e, "cannot save the local snapshot copy");
        }
        self.shared.ownership.send_replace(Ownership::GaveUp);
        drop(lock(&self.shared.journal).take());
        writer.close().await;
        self.shared.store.close().await;
    }

    /// This server stops before it ever owned the journal (it is being replaced or shut down
    /// during a handover): writes waiting for the journal are refused now (-32000, nothing
    /// changed, retry on the new server) instead of holding up the drain. Nothing otherwise.
    pub fn stop_waiting_for_journal(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.ownership.send_if_modified(|o| {
            let waiting = *o == Ownership::Awaiting;
            if waiting {
                *o = Ownership::GaveUp;
            }
            waiting
        });
    }

    /// Replaces the snapshot with the store's content (after another process wrote to it).
    pub async fn reload(&self) -> Result<(), UserError> {
        Ok(self.shared.reload().await?)
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Saves the local copy now if the snapshot changed since it was last saved (shutdown does
    /// this first, before anything that may stall).
    pub async fn save_copy(&self) {
        if let Err(e) = supervise::save_copy(&self.shared).await {
            tracing::warn!(error = %e, "cannot save the local snapshot copy");
        }
    }

    /// Whether this server can take new work: it is not stopping (shutdown, or replaced by a
    /// new server) and no background task has died. Reads are served from memory and writes
    /// committed or queued, so a store outage does not make it unready.
    pub fn ready(&self) -> bool {
        !self.is_stopping() && self.tasks.failed().is_empty()
    }

    /// Shutdown or a hand-over has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// The background tasks of this server; others (pull, reporting) join them.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The journal's path (its lock, quarantine and local copy sit beside it).
    pub fn journal_path(&self) -> &std::path::Path {
        &self.shared.journal_path
    }

    /// The snapshot's local copy (what a cold start serves).
    pub fn copy_path(&self) -> &std::path::Path {
        &self.shared.copy
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn degradation(&self) -> Degradation {
        self.shared.degradation()
    }

    pub fn count(&self) -> usize {
        self.shared.snapshot.len()
    }

    /// Every user, as one JSON array; `Err` with its size when that passes `budget` bytes (it is
    /// then not built).
    pub fn all(&self, budget: usize) -> Result<Bytes, usize> {
        match self.shared.snapshot.encoded_len() {
            size if size > budget => Err(size),
            _ => Ok(self.shared.snapshot.all()),
        }
    }

    /// A page of users after `after` (keyset paging); `Err` when it would pass `budget` bytes.
    pub fn page(&self, after: Option<&str>, limit: usize, budget: usize) -> Result<Bytes, usize> {
        self.shared.snapshot.page(after, limit, budget)
    }

    pub fn get(&self, id: &str) -> Result<Bytes, UserError> {
        self.shared
            .snapshot
            .get(id)
            .ok_or_else(|| UserError::NotFound(id.to_owned()))
    }

    /// Upserts one user. `expect` is `Some(0)` for create-only, `Some(n)` for "only if at rev n".
    pub async fn put(&self, user: NewUser, expect: Option<i64>) -> Result<Written, UserError> {
        self.submit(Op::Put {
            id: user.id,
            doc: user.doc,
            expect,
        })
        .await
    }

    /// Upserts many users in one transaction: all are stored or none.
    pub async fn put_many(&self, users: Vec<NewUser>) -> Result<Written, UserError> {
        self.put_texts(users.into_iter().map(NewUser::into_text).collect())
            .await
    }

    /// As [`Users::put_many`], with each document already as text (`validate::validate_text`).
    pub async fn put_texts(&self, users: Vec<(String, DocText)>) -> Result<Written, UserError> {
        self.submit(Op::PutMany { users }).await
    }

    /// Leaves out users whose stored document is already exactly this one (idempotent re-uploads).
    pub fn changed(&self, users: Vec<(String, DocText)>) -> Vec<(String, DocText)> {
        users
            .into_iter()
            .filter(|(id, doc)| !self.shared.snapshot.holds_text(id, doc.as_str()))
            .collect()
    }

    pub async fn delete(&self, id: &str, expect: Option<i64>) -> Result<Written, UserError> {
        self.submit(Op::Delete {
            id: id.to_owned(),
            expect,
        })
        .await
    }

    /// Hands the write to the committer under a fresh write id, which it keeps from the first
    /// attempt to its last replay.
    async fn submit(&self, op: Op) -> Result<Written, UserError> {
        let queue = lock(&self.lane.queue)
            .clone()
            .ok_or(UserError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        let entry = JournalEntry {
            write_id: uuid::Uuid::now_v7().to_string(),
            requeued: false,
            op,
        };
        queue
            .send(Pending { entry, reply })
            .await
            .map_err(|_| UserError::ShuttingDown)?;
        answer.await.map_err(|_| UserError::ShuttingDown)?
    }
}

#[cfg(test)]
mod tests;
