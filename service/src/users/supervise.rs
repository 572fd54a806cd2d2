//! The supervisor: while the store is unreachable or writes are queued, probe it after each
//! backoff; when it answers, replay the journal in order (a transaction per batch) and close the
//! breaker. It also keeps the snapshot's local copy (`store/local_copy.rs`) up to date. It does
//! nothing before this process owns the journal: the copy and the replay are the owner's.

use super::answer::UserError;
use super::snapshot::Unsaved;
use super::state::{MAX_BATCH, PROBE_TIMEOUT, Shared, change_of};
use crate::doc::now;
use crate::store::StoreError;
use crate::store::{Applied, Change, Writer};
use crate::store::{CopyError, CopyState, append_copy_log, write_copy_base};
use crate::store::{JournalEntry, JournalError};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use toolkit_core::lock;

/// The local copy is rewritten at most this often (and at shutdown) while writes change it.
const COPY_EVERY: Duration = Duration::from_secs(5);
/// Users read from the snapshot at a time while a base is written.
const COPY_CHUNK: usize = 10_000;
/// A replay batch holds at most this many bytes of JSON (and `MAX_BATCH` writes): a burst of
/// 1 MiB documents replays a few at a time, each batch within its budget.
const REPLAY_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

pub(crate) async fn supervise(shared: Weak<Shared>) {
    let mut saved_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        if !shared.owns_journal() {
            continue;
        }
        if saved_at.is_none_or(|at| at.elapsed() >= COPY_EVERY) {
            if let Err(e) = save_copy(&shared).await {
                tracing::warn!(error = %e, "cannot keep the local snapshot copy");
            }
            saved_at = Some(Instant::now());
        }
        if !shared.degradation().degraded() || !lock(&shared.breaker).try_probe(Instant::now()) {
            continue;
        }
        // Probe without the writer lock: queued writes must not wait on a dead store's timeouts.
        let ping = || async {
            tokio::time::timeout(PROBE_TIMEOUT, shared.store.ping())
                .await
                .unwrap_or(Err(StoreError::TimedOut(PROBE_TIMEOUT)))
        };
        let mut probe = ping().await;
        // The host in use does not answer: with several, another may have taken over (a
        // standby promoted). Looked for outside the probe's time, each host within its own.
        if probe.is_err() && shared.store.find_host().await {
            probe = ping().await;
        }
        let outcome = match probe {
            Ok(()) => {
                let mut writer = shared.writer.lock().await;
                if shared.closing.load(Ordering::Acquire) {
                    return;
                }
                recover(&shared, &mut writer).await
            }
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(n) => {
                lock(&shared.breaker).success();
                tracing::info!(replayed = n, "store is back: breaker closed");
            }
            Err(e) => {
                lock(&shared.breaker).trip(Instant::now());
                tracing::warn!(error = %e, "store still unavailable: breaker stays open");
            }
        }
    }
}

/// The store answers again: migrate (a cold start could not), replay, and take the snapshot from
/// the store when the journal, a cold start or a handover may have left it behind.
pub(crate) async fn recover(
    shared: &Arc<Shared>,
    writer: &mut Writer,
) -> Result<usize, ReplayError> {
    shared.store.migrate().await?;
    let depth = shared.journal_depth();
    let n = replay(shared, writer).await?;
    let behind = !lock(&shared.queued).is_exact() || shared.from_copy.load(Ordering::Acquire);
    if depth > 0 || behind {
        shared
            .snapshot
            .replace_entries(shared.store.load_entries().await?);
        shared.from_copy.store(false, Ordering::Release);
    }
    // Nothing queued, the snapshot is the store's: conditional writes are checked exactly again.
    lock(&shared.queued).clear();
    Ok(n)
}

/// Replays the journal in order, a transaction per batch (caller holds the writer lock). Each
/// entry is applied once: its write id is recorded in the same transaction, and one an earlier
/// attempt committed is skipped. A conflict is reported and counted, not dropped silently. On a
/// store failure the unreplayed rest stays queued.
pub(crate) async fn replay(shared: &Shared, writer: &mut Writer) -> Result<usize, ReplayError> {
    let entries = with_journal(shared, |j| j.pending())?;
    // An operator's requeue asks for these to be judged again (see `store::Writer::unmark`).
    let requeued: Vec<&str> = entries
        .iter()
        .filter(|e| e.requeued)
        .map(|e| e.write_id.as_str())
        .collect();
    if !requeued.is_empty() {
        writer.unmark(&requeued).await?;
    }
    let mut replayed = 0;
    let mut at = 0;
    // How many writes a batch may hold: shrinks when one times out on a store that answers.
    let mut most = MAX_BATCH;
    while at < entries.len() {
        let updated_at = now();
        let changes = batch_at(&entries[at..], most, &updated_at);
        let chunk = &entries[at..at + changes.len()];
        let outcomes = match writer.commit(&changes).await {
            Ok(outcomes) => outcomes,
            Err(StoreError::TimedOut(_)) if changes.len() > 1 && shared.store_answers().await => {
                most = changes.len() / 2;
                tracing::warn!(
                    writes = changes.len(),
                    "a replay batch timed out on a store that answers: replaying in smaller batches"
                );
                continue;
            }
            Err(e) => {
                with_journal(shared, |j| j.rewrite(&entries[at..]))?;
                return Err(e.into());
            }
        };
        let mut unapplied = Vec::new();
        for (entry, outcome) in chunk.iter().zip(outcomes) {
            match settle_replayed(shared, entry, &updated_at, outcome) {
                Ok(applied) => replayed += usize::from(applied),
                Err(why) => unapplied.push((entry.clone(), why)),
            }
        }
        // Into quarantine before the journal forgets them: a record is always in one of the two
        // (a crash in between quarantines it twice, never not at all).
        if !unapplied.is_empty() {
            with_journal(shared, |j| j.quarantine_unapplied(&unapplied))?;
        }
        at += chunk.len();
    }
    with_journal(shared, |j| j.rewrite(&[]))?;
    // Nothing can replay them again: their records go with the next batch.
    writer.forget_later(entries.into_iter().map(|e| e.write_id));
    Ok(replayed)
}

/// `f` on the journal this process owns, then its quarantine count into the stats.
fn with_journal<T>(
    shared: &Shared,
    f: impl FnOnce(&mut crate::store::Journal) -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    let mut journal = lock(&shared.journal);
    let journal = journal
        .as_mut()
        .ok_or_else(|| JournalError::NotOwned(shared.journal_path.clone()))?;
    let done = f(journal);
    shared
        .stats
        .quarantined
        .store(journal.quarantined(), Ordering::Relaxed);
    done
}

/// The next replay batch from the front of `rest`: at most `most` writes and [`REPLAY_BYTES`] of
/// JSON, and always one.
fn batch_at(rest: &[JournalEntry], most: usize, updated_at: &str) -> Vec<(String, Change)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in rest.iter().take(most.max(1)) {
        let change = change_of(&e.op, updated_at);
        bytes += change.bytes();
        if !out.is_empty() && bytes > REPLAY_BYTES {
            break;
        }
        out.push((e.write_id.clone(), change));
    }
    out
}

/// One replayed write's outcome into the snapshot and the counters: whether it was applied now,
/// or why it cannot be (the caller quarantines it). Only the write id and the error are logged,
/// never the document.
fn settle_replayed(
    shared: &Shared,
    entry: &JournalEntry,
    updated_at: &str,
    outcome: Result<Applied, crate::store::StoreError>,
) -> Result<bool, String> {
    let settled = match outcome {
        // An earlier attempt committed it (its answer was lost): the caller reloads.
        Ok(Applied::AlreadyApplied) => return Ok(false),
        Ok(applied) => shared.settle(&entry.op, updated_at, applied),
        Err(e) => Err(UserError::from(e)),
    };
    match settled {
        Ok(_) => {
            shared.stats.replayed.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
        Err(e) => {
            // What the queued writes were checked against did not hold (another instance
            // wrote): later checks cannot be exact until the next reload.
            lock(&shared.queued).unknown();
            shared
                .stats
                .replay_conflicts
                .fetch_add(1, Ordering::Relaxed);
            let why = format!("replay could not apply it: {e}");
            tracing::error!(
                write_id = %entry.write_id, error = %e,
                "queued write could not be applied on replay: moved to quarantine"
            );
            Err(why)
        }
    }
}

/// Brings the snapshot's local copy up to date (off the async workers: it fsyncs), unless it
/// holds this snapshot already, the snapshot came from the copy or may be behind the store, or
/// another process owns the journal (and with it the copy beside it). The users changed since the
/// last save are appended
/// to the copy's log; the whole base is written only at first, after a reload, and when the log
/// has outgrown half of it (`store/local_copy.rs`).
pub(crate) async fn save_copy(shared: &Arc<Shared>) -> Result<(), CopyError> {
    let mut saving = shared.copy_state.lock().await;
    let generation = shared.snapshot.generation();
    // Not while the snapshot may be behind the store (a handover whose reload failed, writes
    // an earlier process queued): the copy on disk may hold more, and must not go back.
    let behind = !lock(&shared.queued).is_exact();
    if !shared.owns_journal()
        || shared.from_copy.load(Ordering::Acquire)
        || behind
        || shared.copied.load(Ordering::Acquire) == generation
    {
        return Ok(());
    }
    let unsaved = shared.snapshot.take_unsaved();
    let state = *saving;
    let task = shared.clone();
    let path = shared.copy.clone();
    let (saved, back) =
        tokio::task::spawn_blocking(move || save_blocking(&task, &path, unsaved, state))
            .await
            .unwrap_or_else(|e| {
                let err = CopyError::Write {
                    path: shared.copy.clone(),
                    source: std::io::Error::other(e.to_string()),
                };
                (Err(err), Some(Unsaved::All))
            });
    match saved {
        Ok(state) => {
            *saving = Some(state);
            shared.copied.store(generation, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            // What was not saved is saved next time, with what changed meanwhile.
            shared
                .snapshot
                .restore_unsaved(back.unwrap_or(Unsaved::All));
            Err(e)
        }
    }
}

/// The save itself: the log when it can take the changes, else a new base. On failure, gives
/// back what is still unsaved.
fn save_blocking(
    shared: &Shared,
    path: &std::path::Path,
    unsaved: Unsaved,
    state: Option<CopyState>,
) -> (Result<CopyState, CopyError>, Option<Unsaved>) {
    let started = Instant::now();
    match (unsaved, state) {
        // Changes of more than a quarter of the users: a new base costs about as much.
        (Unsaved::Ids(mut ids), Some(mut state))
            if !state.wants_compaction() && ids.len() <= shared.snapshot.len() / 4 + 1024 =>
        {
            ids.sort_unstable();
            ids.dedup();
            let changes = shared.snapshot.lookup(&ids);
            match append_copy_log(path, &mut state, &changes) {
                Ok(()) => {
                    tracing::debug!(users = changes.len(), ms = started.elapsed().as_millis() as u64,
                        copy = %path.display(), "local snapshot copy: changes logged");
                    (Ok(state), None)
                }
                // The log may now end in a torn frame: later appends would not count.
                Err(e) => (Err(e), Some(Unsaved::All)),
            }
        }
        _ => {
            // Read in chunks: no lock is held for long, and a write in between is in the log
            // that follows this base (`take_unsaved` started it afresh).
            // A server stopping writes at full speed: its successor waits for the journal.
            let gentle = !shared.stopping.load(Ordering::Acquire);
            let chunk = |after: Option<&str>| shared.snapshot.chunk(after, COPY_CHUNK);
            let written = write_copy_base(path, gentle, chunk);
            if let Ok(state) = &written {
                tracing::debug!(users = shared.snapshot.len(), bytes = state.base_bytes,
                    ms = started.elapsed().as_millis() as u64, copy = %path.display(),
                    "local snapshot copy: base written");
            }
            let back = written.is_err().then_some(Unsaved::All);
            (written, back)
        }
    }
}
