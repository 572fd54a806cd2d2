//! How `Users` starts: the journal claimed before anything else (one server per journal), the
//! store opened or, when it is unreachable, the local copy served instead (a cold start), every
//! user loaded, a journal left by an earlier run replayed before any write is served, and the
//! jobs started (committer, supervisor, follower); during an upgrade, the wait for the old
//! server to release the journal and the catch-up after it.

use super::breaker::Breaker;
use super::queued::Queued;
use super::snapshot::Snapshot;
use super::state::{Ownership, Shared, Stats};
use super::{Lane, OpenError, QUEUE, Resilience, Users, commit, follow, supervise};
use crate::store::{
    Journal, JournalError, Owner, Store, Writer, copy_log_path, copy_path_for, read_copy,
};
use crate::tasks::Tasks;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use toolkit_core::lock;

/// Opens the store and loads every user into the snapshot, replays a journal left by an
/// earlier run (before any write is served), and starts the committer and the supervisor; on a
/// shared (PostgreSQL) store, also follows the other instances' writes.
///
/// Cold start: when the store is unreachable, serves the local copy of the last snapshot
/// (degraded, writes queued) until it answers; without a usable copy, fails naming both.
pub(super) async fn open(
    url: &str,
    timeout: Duration,
    resilience: &Resilience,
) -> Result<Users, OpenError> {
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
    Ok(start(shared, early, owned))
}

/// Starts the committer, the supervisor, the follower (on PostgreSQL) and, while another
/// server still owns the journal, the wait to take it over.
fn start(shared: Arc<Shared>, early: Option<sqlx::postgres::PgListener>, owned: bool) -> Users {
    let (tx, rx) = mpsc::channel(QUEUE);
    let tasks = Tasks::default();
    let committer = tasks.spawn("committer", commit::run(shared.clone(), rx));
    tasks.spawn("supervisor", supervise::supervise(Arc::downgrade(&shared)));
    if shared.store.is_shared() {
        tasks.spawn(
            "follower",
            follow::follow_changes(Arc::downgrade(&shared), early),
        );
    }
    if !owned {
        // Ends once it owns the journal: not a task that must run for good.
        tokio::spawn(take_over(shared.clone()));
    }
    Users {
        shared,
        lane: Arc::new(Lane {
            queue: std::sync::Mutex::new(Some(tx)),
            committer: std::sync::Mutex::new(Some(committer)),
        }),
        tasks,
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
