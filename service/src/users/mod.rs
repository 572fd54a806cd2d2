//! Users, the service's one resource: reads from the snapshot, writes through the committer
//! (`commit.rs`), survival of store outages (`supervise.rs`, the journal, the local copy), and
//! other instances' writes (`follow.rs`). Transport-free: `api/methods.rs` maps JSON-RPC onto it.

mod answer;
mod breaker;
mod commit;
mod follow;
mod queued;
mod snapshot;
mod state;
mod supervise;
pub mod validate;

use self::breaker::Breaker;
use self::commit::Pending;
use self::queued::Queued;
use self::state::{Ownership, Shared};
use self::validate::NewUser;
use crate::doc::DocText;
use crate::store::Writer;
use crate::store::{CopyError, copy_log_path, copy_path_for, read_copy};
use crate::store::{Journal, JournalEntry, JournalError, Op, Owner};
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use toolkit_core::lock;

pub use self::answer::{UserError, Written};
pub use self::breaker::BreakerState;
pub(crate) use self::snapshot::Snapshot;
pub use self::state::{BATCH_BOUNDS, Degradation, Stats};

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

    /// Longest wait for the database (a connection, a batch of writes) before it counts as unreachable and writes are queued
    #[arg(long, env = "USERSVC_STORE_TIMEOUT", value_name = "DURATION", default_value = "2s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub store_timeout: Duration,

    /// Where writes are queued (fsync'd) while the store is unreachable; the snapshot copy a cold start serves sits beside it (.snapshot)
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
        let path = resilience.journal.clone();
        // First: a second server on the same journal is refused before it touches anything.
        let owner = claim_journal(&path, resilience.handover)?;
        let copy = copy_path_for(&path);
        let quarantine = crate::store::quarantine_path(&path);
        for file in [&path, &copy, &copy_log_path(&copy), &quarantine] {
            crate::atomic_file::make_private(file);
        }
        let (store, from_copy) = open_store(url, timeout, &copy).await?;
        let cold = from_copy.is_some();
        let snapshot = Snapshot::default();
        let early = match from_copy {
            Some(users) => {
                snapshot.replace_map(users);
                None
            }
            None => load(&store, &snapshot, timeout).await?,
        };
        let owned = owner.is_some();
        let (journal, entries) = match owner {
            Some(owner) => {
                let (journal, entries) = Journal::open(&path, owner)?;
                (Some(journal), entries)
            }
            None => (None, Vec::new()),
        };
        let (breaker, queued, stats) =
            starting_state(resilience, cold, !entries.is_empty(), journal.as_ref());
        let ownership = if owned {
            Ownership::Owned
        } else {
            Ownership::Awaiting
        };
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Writer::new(&store)),
            store,
            snapshot,
            breaker: std::sync::Mutex::new(breaker),
            journal: std::sync::Mutex::new(journal),
            journal_path: path,
            ownership: tokio::sync::watch::channel(ownership).0,
            queued: std::sync::Mutex::new(queued),
            copy,
            copied: std::sync::atomic::AtomicU64::new(u64::MAX),
            copy_state: tokio::sync::Mutex::new(None),
            from_copy: AtomicBool::new(cold),
            closing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stats,
        });
        if !entries.is_empty() && !cold {
            replay_earlier(&shared, entries.len()).await;
        }
        Ok(Self::start(shared, early, owned))
    }

    /// Starts the committer, the supervisor, the follower (on PostgreSQL) and, while another
    /// server still owns the journal, the wait to take it over.
    fn start(shared: Arc<Shared>, early: Option<sqlx::postgres::PgListener>, owned: bool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let tasks = Tasks::default();
        let committer = tasks.spawn("committer", commit::run(shared.clone(), rx));
        tasks.spawn("supervisor", supervise::supervise(Arc::downgrade(&shared)));
        if shared.store.is_shared() {
            tasks.spawn(
                "follower",
                self::follow::follow_changes(Arc::downgrade(&shared), early),
            );
        }
        if !owned {
            // Ends once it owns the journal: not a task that must run for good.
            tokio::spawn(take_over(shared.clone()));
        }
        Self {
            shared,
            lane: Arc::new(Lane {
                queue: std::sync::Mutex::new(Some(tx)),
                committer: std::sync::Mutex::new(Some(committer)),
            }),
            tasks,
        }
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
            op,
        };
        queue
            .send(Pending { entry, reply })
            .await
            .map_err(|_| UserError::ShuttingDown)?;
        answer.await.map_err(|_| UserError::ShuttingDown)?
    }
}

/// The breaker (open on a cold start: the store did not answer), what is known of queued writes
/// (nothing exact when an earlier run queued them or the snapshot is a copy's) and the counters.
fn starting_state(
    resilience: &Resilience,
    cold: bool,
    earlier_writes: bool,
    journal: Option<&Journal>,
) -> (Breaker, Queued, Stats) {
    let mut breaker = Breaker::new(resilience.failures, resilience.backoff);
    if cold {
        breaker.trip(Instant::now());
    }
    let mut queued = Queued::new(!cold);
    if earlier_writes {
        // Queued by an earlier run: their checks were not made against this snapshot.
        queued.unknown();
    }
    let stats = Stats::default();
    if let Some(j) = journal {
        stats.quarantined.store(j.quarantined(), Ordering::Relaxed);
    }
    (breaker, queued, stats)
}

/// The journal's lock; `None` when an upgrade's previous server still holds it (`handover`).
fn claim_journal(path: &std::path::Path, handover: bool) -> Result<Option<Owner>, OpenError> {
    match Owner::acquire(path) {
        Ok(owner) => Ok(Some(owner)),
        Err(JournalError::Held { pid, .. }) if handover => {
            tracing::info!(journal = %path.display(), holder = pid,
                "the previous server still owns the journal: writes wait until it releases it");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The store, or, when it is unreachable, a lazy one and the users of the local copy.
async fn open_store(
    url: &str,
    timeout: Duration,
    copy: &std::path::Path,
) -> Result<
    (
        Store,
        Option<std::collections::BTreeMap<String, crate::doc::Entry>>,
    ),
    OpenError,
> {
    match Store::open(url, timeout).await {
        Ok(store) => Ok((store, None)),
        Err(e) if e.is_unreachable() => match read_copy(copy) {
            Ok(entries) => {
                tracing::warn!(error = %e, copy = %copy.display(), users = entries.len(),
                    "store unreachable: serving the local snapshot copy (stale) and queueing writes");
                Ok((Store::lazy(url, timeout)?, Some(entries)))
            }
            Err(c) => Err(OpenError::NoCopy { store: e, copy: c }),
        },
        Err(e) => Err(e.into()),
    }
}

/// Every user from the store into the snapshot. On PostgreSQL it listens first: another
/// instance's write during the load is announced to the follower, which then needs no second
/// full load.
async fn load(
    store: &Store,
    snapshot: &Snapshot,
    timeout: Duration,
) -> Result<Option<sqlx::postgres::PgListener>, OpenError> {
    let early = if store.is_shared() {
        follow::listen(store.url(), timeout).await
    } else {
        None
    };
    snapshot.replace_entries(store.load_entries().await?);
    Ok(early)
}

/// Writes an earlier run left in the journal go to the reachable store before any new one.
async fn replay_earlier(shared: &Arc<Shared>, queued: usize) {
    tracing::warn!(queued, "replaying writes queued by an earlier run");
    let mut writer = shared.writer.lock().await;
    if let Err(e) = supervise::recover(shared, &mut writer).await {
        tracing::error!(error = %e, "replay failed; writes stay queued until the store is back");
        lock(&shared.breaker).trip(Instant::now());
    }
}

/// An upgrade's new server: waits until the old one releases the journal, then owns it. The old
/// one's last writes are then final (committed, or in the journal): the snapshot is reloaded, or
/// the journal replayed first, before any write of this server is committed or queued.
async fn take_over(shared: Arc<Shared>) {
    while let Some(owner) = released(&shared).await {
        let writer = shared.writer.lock().await;
        let (journal, entries) = match Journal::open(&shared.journal_path, owner) {
            Ok(opened) => opened,
            Err(e) => {
                drop(writer);
                tracing::error!(error = %e, "cannot open the journal; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        shared
            .stats
            .quarantined
            .store(journal.quarantined(), Ordering::Relaxed);
        *lock(&shared.journal) = Some(journal);
        catch_up(&shared, entries.is_empty()).await;
        let won = shared.ownership.send_if_modified(|o| {
            let waiting = *o == Ownership::Awaiting;
            if waiting {
                *o = Ownership::Owned;
            }
            waiting
        });
        if won {
            tracing::info!(
                queued = entries.len(),
                "took the journal over from the previous server"
            );
        } else {
            drop(lock(&shared.journal).take());
        }
        drop(writer);
        return;
    }
}

/// The journal's lock once the previous server released it; `None` when nothing waits for it
/// any more (the wait was called off, or this server is stopping).
async fn released(shared: &Shared) -> Option<Owner> {
    const POLL: Duration = Duration::from_millis(20);
    let mut warned = Instant::now();
    loop {
        if *shared.ownership.borrow() != Ownership::Awaiting {
            return None;
        }
        match Owner::acquire(&shared.journal_path) {
            Ok(owner) => return Some(owner),
            Err(JournalError::Held { pid, .. }) => {
                if warned.elapsed() >= Duration::from_secs(10) {
                    warned = Instant::now();
                    tracing::warn!(holder = pid, journal = %shared.journal_path.display(),
                        "still waiting for the previous server to release the journal; writes wait");
                }
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot take the journal over; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What the previous server wrote: reloaded now when it left nothing queued; else the
/// supervisor replays its queued writes (and reloads) before any new write goes ahead.
async fn catch_up(shared: &Shared, nothing_queued: bool) {
    if !nothing_queued {
        lock(&shared.queued).unknown();
        return;
    }
    match shared.store.load_entries().await {
        Ok(entries) => {
            shared.snapshot.replace_entries(entries);
            lock(&shared.queued).clear();
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot reload what the previous server wrote; reloading once the store answers");
            lock(&shared.queued).unknown();
            lock(&shared.breaker).trip(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests;
