//! The write path: one committer task takes every write waiting when it comes round and commits
//! them as one batch (group commit: one transaction, one fsync). When the store is unreachable,
//! or writes are already queued, the batch goes to the journal instead (one append, one fsync),
//! under the write ids it was tried with. Each write keeps its own answer.
//!
//! A client that goes away never cancels a write: the committer owns it until it is answered.
//! Nothing is committed or queued before this process owns the journal (an upgrade's new server
//! waits for the old one to release it): a write must never overtake one queued before it.

use super::answer::{UserError, Written};
use super::queued::Tentative;
use super::state::{MAX_BATCH, Ownership, Shared, change_of, ids_of};
use crate::doc::now;
use crate::store::StoreError;
use crate::store::{Applied, Change, Outcome, Writer};
use crate::store::{JournalEntry, JournalError, Op};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use toolkit_core::lock;

/// A write waiting for the committer, and where its answer goes.
pub(crate) struct Pending {
    pub entry: JournalEntry,
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

/// Commits the batch and answers it; gives back what must be queued instead.
async fn direct(
    shared: &Shared,
    writer: &mut Writer,
    mut batch: Vec<Pending>,
) -> Option<Vec<Pending>> {
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
    let (outcomes, stopped) = in_pieces(shared, writer, &changes).await;
    let rest = batch.split_off(outcomes.len());
    if !outcomes.is_empty() {
        lock(&shared.breaker).success();
        writer.forget_later(changes.into_iter().take(outcomes.len()).map(|(id, _)| id));
    }
    for (p, outcome) in batch.into_iter().zip(outcomes) {
        let answer = match outcome {
            Ok(Applied::AlreadyApplied) => committed_earlier(shared, &p.entry.op).await,
            outcome => outcome
                .map_err(UserError::from)
                .and_then(|applied| shared.settle(&p.entry.op, &updated_at, applied)),
        };
        let _ = p.reply.send(answer);
    }
    let e = stopped?;
    match e {
        Slow::Down(e) if e.is_unreachable() => {
            lock(&shared.breaker).trip(Instant::now());
            tracing::error!(error = %e, writes = rest.len(), "store unreachable: breaker open, queueing writes in the journal");
            Some(rest)
        }
        Slow::Slow(e) => {
            // One write past its budget on a store that answers: its outcome is unknown, so it
            // is queued (replayed once, by its write id), the breaker left closed.
            tracing::warn!(error = %e, writes = rest.len(), "a write timed out on a store that answers: queued for replay, breaker stays closed");
            Some(rest)
        }
        Slow::Down(e) => {
            let open = lock(&shared.breaker).failure(Instant::now());
            tracing::warn!(error = %e, breaker_open = open, "store write failed");
            if open {
                tracing::error!("breaker open: queueing writes in the journal");
                return Some(rest);
            }
            let e = Arc::new(e);
            for p in rest {
                let _ = p.reply.send(Err(UserError::Store(e.clone())));
            }
            None
        }
    }
}

/// A write an earlier, timed-out piece committed (its answer was lost): what the store holds now
/// goes to the snapshot and the answer. A later write of the same batch to the same user may
/// already be in it: the answer then names that revision, the snapshot is right either way.
async fn committed_earlier(shared: &Shared, op: &Op) -> Result<Written, UserError> {
    let mut revs = Vec::new();
    for id in ids_of(op) {
        match shared
            .store
            .get(&id)
            .await
            .map_err(|e| UserError::Store(Arc::new(e)))?
        {
            Some(rec) => {
                shared.snapshot.upsert(&rec);
                revs.push((id, rec.rev));
            }
            None => shared.snapshot.remove(&id),
        }
    }
    Ok(match op {
        Op::Put { id, .. } => Written::Put {
            id: id.clone(),
            rev: revs.first().map_or(0, |(_, r)| *r),
        },
        Op::PutMany { .. } => Written::Many(revs),
        Op::Delete { id, .. } => Written::Deleted { id: id.clone() },
    })
}

/// Why [`in_pieces`] stopped: a store that failed (or did not answer a probe either), or one
/// write that timed out alone on a store that answers.
enum Slow {
    Down(StoreError),
    Slow(StoreError),
}

/// Commits `changes` in order: the whole batch in one transaction, or, when it times out while
/// the store still answers a probe on another connection (slow, not down), in halves, down to
/// one write a transaction. The outcomes of the writes it got through, and why it stopped
/// before the rest. Splitting keeps each write's own answer and the order; each piece claims
/// its writes' ids, so a piece cut off by the timeout is never applied twice.
async fn in_pieces(
    shared: &Shared,
    writer: &mut Writer,
    changes: &[(String, Change)],
) -> (Vec<Outcome>, Option<Slow>) {
    let mut out = Vec::with_capacity(changes.len());
    let mut size = changes.len();
    while out.len() < changes.len() {
        let piece = &changes[out.len()..(out.len() + size).min(changes.len())];
        match writer.commit(piece).await {
            Ok(outcomes) => out.extend(outcomes),
            Err(e @ StoreError::TimedOut(_)) if shared.store_answers().await => {
                if piece.len() == 1 {
                    return (out, Some(Slow::Slow(e)));
                }
                size = piece.len() / 2;
                tracing::warn!(
                    writes = piece.len(),
                    "a batch timed out on a store that answers: trying it in halves"
                );
            }
            Err(e) => return (out, Some(Slow::Down(e))),
        }
    }
    (out, None)
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
    let entries: Vec<JournalEntry> = waiting.iter().map(|p| p.entry.clone()).collect();
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
