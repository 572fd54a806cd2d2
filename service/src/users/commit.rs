//! The write path: one committer task takes every write waiting when it comes round and commits
//! them as one batch (group commit: one transaction, one fsync). When the store is unreachable,
//! or writes are already queued, the batch goes to the journal instead (one append, one fsync),
//! under the write ids it was tried with. Each write keeps its own answer.
//!
//! A client that goes away never cancels a write: the committer owns it until it is answered.
//! Nothing is committed or queued before this process owns the journal (an upgrade's new server
//! waits for the old one to release it): a write must never overtake one queued before it.

use super::queued::Tentative;
use super::state::{MAX_BATCH, Ownership, Shared, UserError, Written, change_of, ids_of};
use crate::doc::now;
use crate::store::journal::{Entry, JournalError};
use crate::store::writer::{Change, Writer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use toolkit_core::lock;

/// A write waiting for the committer, and where its answer goes.
pub(crate) struct Pending {
    pub entry: Entry,
    pub reply: oneshot::Sender<Result<Written, UserError>>,
}

/// Commits batches until every sender is gone and the queue is empty (shutdown).
pub(crate) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut ownership = shared.ownership.subscribe();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let owned = ownership
            .wait_for(|o| *o != Ownership::Awaiting)
            .await
            .is_ok_and(|o| *o == Ownership::Owned);
        if !owned {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(UserError::ShuttingDown));
            }
            continue;
        }
        let mut writer = shared.writer.lock().await;
        commit(&shared, &mut writer, std::mem::take(&mut batch)).await;
    }
}

async fn commit(shared: &Arc<Shared>, writer: &mut Writer, batch: Vec<Pending>) {
    shared.stats.write_batches.record(batch.len());
    let queueing = !lock(&shared.breaker).is_closed() || shared.journal_depth() > 0;
    if queueing {
        return enqueue(shared, batch, false).await;
    }
    if let Some(unreached) = direct(shared, writer, batch).await {
        // Tried: each may have been committed, so each is queued whatever a check says.
        enqueue(shared, unreached, true).await;
    }
}

/// Commits the batch and answers it; gives it back when it must be queued instead.
async fn direct(shared: &Shared, writer: &mut Writer, batch: Vec<Pending>) -> Option<Vec<Pending>> {
    let updated_at = now();
    let changes: Vec<(String, Change)> = batch
        .iter()
        .map(|p| {
            (
                p.entry.write_id.clone(),
                change_of(&p.entry.op, &updated_at),
            )
        })
        .collect();
    match writer.commit(&changes).await {
        Ok(outcomes) => {
            lock(&shared.breaker).success();
            writer.forget_later(changes.into_iter().map(|(write_id, _)| write_id));
            for (p, outcome) in batch.into_iter().zip(outcomes) {
                let answer = outcome
                    .map_err(UserError::from)
                    .and_then(|applied| shared.settle(&p.entry.op, &updated_at, applied));
                let _ = p.reply.send(answer);
            }
            None
        }
        Err(e) if e.is_unreachable() => {
            lock(&shared.breaker).trip(Instant::now());
            tracing::error!(error = %e, writes = batch.len(), "store unreachable: breaker open, queueing writes in the journal");
            Some(batch)
        }
        Err(e) => {
            let open = lock(&shared.breaker).failure(Instant::now());
            tracing::warn!(error = %e, breaker_open = open, "store write failed");
            if open {
                tracing::error!("breaker open: queueing writes in the journal");
                return Some(batch);
            }
            let e = Arc::new(e);
            for p in batch {
                let _ = p.reply.send(Err(UserError::Store(e.clone())));
            }
            None
        }
    }
}

/// Journals the writes that can still succeed (one append, one fsync) and answers `queued`.
/// `tried`: the store may have committed them already (replay applies each exactly once, by its
/// write id). One whose check fails against an exact view cannot have been applied: it is
/// refused. One that cannot be checked is queued all the same: refusing it could deny a write
/// that was committed.
async fn enqueue(shared: &Arc<Shared>, batch: Vec<Pending>, tried: bool) {
    let mut waiting = Vec::with_capacity(batch.len());
    let mut effects = Tentative::default();
    {
        let queued = lock(&shared.queued);
        for p in batch {
            match queued.check(&mut effects, &p.entry.op, &shared.snapshot) {
                Ok(()) => waiting.push(p),
                Err(UserError::Unverifiable) if tried => {
                    queued.force(&mut effects);
                    waiting.push(p);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
    }
    if waiting.is_empty() {
        return;
    }
    let entries: Vec<Entry> = waiting.iter().map(|p| p.entry.clone()).collect();
    let journal = shared.clone();
    // fsync blocks: keep it off the async workers.
    let appended = tokio::task::spawn_blocking(move || match lock(&journal.journal).as_mut() {
        Some(j) => j.append_all(&entries),
        None => Err(JournalError::NotOwned(journal.journal_path.clone())),
    })
    .await
    .unwrap_or_else(|e| {
        Err(JournalError::Io {
            path: shared.journal_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    });
    match appended {
        Ok(()) => {
            lock(&shared.queued).keep(effects);
            shared
                .stats
                .queued
                .fetch_add(waiting.len() as u64, Ordering::Relaxed);
            for p in waiting {
                let written = Written::Queued {
                    ids: ids_of(&p.entry.op),
                    write_id: p.entry.write_id,
                };
                let _ = p.reply.send(Ok(written));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot queue writes");
            let e = Arc::new(e);
            for p in waiting {
                let _ = p.reply.send(Err(UserError::Journal(e.clone())));
            }
        }
    }
}
