//! The supervisor: while the store is unreachable or writes are queued, probe it after each
//! backoff; when it answers, replay the journal in order (a transaction per batch) and close the
//! breaker. It also keeps the snapshot's local copy (`snapshot_file.rs`) up to date.

use crate::commit::MAX_BATCH;
use crate::journal::{self, JournalError};
use crate::shared::{Shared, UserError, change_of, lock, now};
use crate::snapshot_file::{self, CopyError};
use crate::store::StoreError;
use crate::writer::{Applied, Change, Writer};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The local copy is rewritten at most this often (and at shutdown) while writes change it.
const COPY_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
        let probe = tokio::time::timeout(PROBE_TIMEOUT, shared.store.ping())
            .await
            .unwrap_or(Err(StoreError::TimedOut(PROBE_TIMEOUT)));
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
/// the store when the journal or a cold start may have left it behind.
async fn recover(shared: &Arc<Shared>, writer: &mut Writer) -> Result<usize, ReplayError> {
    shared.store.migrate().await?;
    let depth = lock(&shared.journal).depth();
    let n = replay(shared, writer).await?;
    if depth > 0 || shared.from_copy.load(Ordering::Acquire) {
        shared.snapshot.replace_all(&shared.store.load_all().await?);
        shared.from_copy.store(false, Ordering::Release);
    }
    Ok(n)
}

/// Replays the journal in order, a transaction per batch (caller holds the writer lock). Each
/// entry is applied once: its write id is recorded in the same transaction, and one an earlier
/// attempt committed is skipped. A conflict is reported and counted, not dropped silently. On a
/// store failure the unreplayed rest stays queued.
pub(crate) async fn replay(shared: &Shared, writer: &mut Writer) -> Result<usize, ReplayError> {
    let path = lock(&shared.journal).path().to_owned();
    let (entries, _) = journal::read(&path)?;
    let mut replayed = 0;
    for (n, chunk) in entries.chunks(MAX_BATCH).enumerate() {
        let updated_at = now();
        let changes: Vec<(String, Change)> = chunk
            .iter()
            .map(|e| (e.write_id.clone(), change_of(&e.op, &updated_at)))
            .collect();
        let outcomes = match writer.commit(&changes).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                lock(&shared.journal).rewrite(&entries[n * MAX_BATCH..])?;
                return Err(e.into());
            }
        };
        for (entry, outcome) in chunk.iter().zip(outcomes) {
            let settled = match outcome {
                // An earlier attempt committed it (its answer was lost): the caller reloads.
                Ok(Applied::AlreadyApplied) => continue,
                Ok(applied) => shared.settle(&entry.op, &updated_at, applied),
                Err(e) => Err(UserError::from(e)),
            };
            match settled {
                Ok(_) => {
                    replayed += 1;
                    shared.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    shared
                        .stats
                        .replay_conflicts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        write_id = %entry.write_id, op = ?entry.op, error = %e,
                        "queued write could not be applied on replay"
                    );
                }
            }
        }
    }
    lock(&shared.journal).rewrite(&[])?;
    // Nothing can replay them again: their records go with the next batch.
    writer.forget_later(entries.into_iter().map(|e| e.write_id));
    Ok(replayed)
}

/// Writes the snapshot's local copy (off the async workers: it fsyncs), unless it holds this
/// snapshot already or the snapshot came from the copy.
pub(crate) async fn save_copy(shared: &Arc<Shared>) -> Result<(), CopyError> {
    let generation = shared.snapshot.generation();
    if shared.from_copy.load(Ordering::Acquire)
        || shared.copied.load(Ordering::Acquire) == generation
    {
        return Ok(());
    }
    let array = shared.snapshot.all();
    let path = shared.copy.clone();
    let users = shared.snapshot.len();
    let saved = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        snapshot_file::write(&path, &array)?;
        tracing::debug!(users, bytes = array.len(), ms = started.elapsed().as_millis() as u64,
            copy = %path.display(), "local snapshot copy saved");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| {
        Err(CopyError::Write {
            path: shared.copy.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    });
    if saved.is_ok() {
        shared.copied.store(generation, Ordering::Release);
    }
    saved
}
