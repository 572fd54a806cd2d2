//! The state the committer (`commit.rs`), the supervisor (`supervise.rs`) and the follower
//! (`follow.rs`) share. The words they answer in are `answer.rs`'s.

use super::answer::{UserError, Written};
use super::breaker::{Breaker, BreakerState};
use super::snapshot::Snapshot;
use crate::doc::{Record, WriteDoc};
use crate::store::Op;
use crate::store::{Change, Writer};
use crate::store::{Expect, Store, StoreError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use toolkit_core::lock;

/// Counters for health and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicU64,
    pub replayed: AtomicU64,
    pub replay_conflicts: AtomicU64,
    /// Journal records moved to the quarantine file (by this run and earlier ones).
    pub quarantined: AtomicU64,
    /// The committer's batches: how many writes each took at once.
    pub write_batches: BatchSizes,
}

/// Most writes committed in one transaction (and replayed per transaction).
pub(crate) const MAX_BATCH: usize = 256;

/// Upper bounds of the write-batch size buckets (the committer takes at most `MAX_BATCH`).
pub const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, MAX_BATCH as u64];

/// A histogram of batch sizes, kept as plain atomics so the write path knows nothing of the
/// exposition format (`prometheus.rs` reads it at scrape time).
#[derive(Debug, Default)]
pub struct BatchSizes {
    /// Per bucket of [`BATCH_BOUNDS`], then one for larger; not cumulative.
    counts: [AtomicU64; BATCH_BOUNDS.len() + 1],
    writes: AtomicU64,
}

impl BatchSizes {
    pub fn record(&self, size: usize) {
        let size = size as u64;
        let bucket = BATCH_BOUNDS.partition_point(|&b| b < size);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(size, Ordering::Relaxed);
    }

    /// (writes in all, batches per bucket, not cumulative).
    pub fn read(&self) -> (u64, [u64; BATCH_BOUNDS.len() + 1]) {
        (
            self.writes.load(Ordering::Relaxed),
            std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
        )
    }
}

/// The store's health as seen by the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Degradation {
    pub breaker: BreakerState,
    pub journal_depth: usize,
    /// Serving the local copy of a cold start: the store has not answered since.
    pub from_copy: bool,
    /// An upgrade's new server waiting for the old one to release the journal; writes wait.
    pub handover: bool,
}

impl Degradation {
    /// Reads may be stale and writes are being queued.
    pub fn degraded(&self) -> bool {
        self.breaker != BreakerState::Closed || self.journal_depth > 0 || self.from_copy
    }
}

/// Whether this process owns the journal (`journal::Owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// An upgrade's new server, until the old one has released it.
    Awaiting,
    Owned,
    /// Closed before it was released: writes taken meanwhile are refused, never committed.
    GaveUp,
}

pub(crate) struct Shared {
    pub store: Store,
    pub snapshot: Snapshot,
    /// The write connection. Its lock serializes writes, replay and reloads, so the snapshot
    /// applies changes in commit order and queued writes keep their order.
    pub writer: tokio::sync::Mutex<Writer>,
    pub breaker: std::sync::Mutex<Breaker>,
    /// `None` until this process owns it (`ownership`).
    pub journal: std::sync::Mutex<Option<crate::store::Journal>>,
    pub journal_path: PathBuf,
    pub ownership: tokio::sync::watch::Sender<Ownership>,
    /// What the queued writes will leave: conditional writes are checked against it.
    pub queued: std::sync::Mutex<super::queued::Queued>,
    pub copy: PathBuf,
    /// The snapshot generation the copy holds (`u64::MAX`: none written by this process).
    pub copied: AtomicU64,
    /// The copy on disk as this process last wrote it (`None`: no base written yet). Held for
    /// a whole save: the supervisor's and the shutdown's saves must not interleave.
    pub copy_state: tokio::sync::Mutex<Option<crate::store::CopyState>>,
    /// Set by a cold start; cleared once the store answered and the snapshot came from it.
    pub from_copy: AtomicBool,
    /// Set by `Users::close`: the supervisor and the follower stop.
    pub closing: AtomicBool,
    /// Shutdown (or the hand-over to a new server) has begun: not ready for new work.
    pub stopping: AtomicBool,
    pub stats: Stats,
}

fn expect_of(expect: Option<i64>) -> Expect {
    match expect {
        None => Expect::Any,
        Some(0) => Expect::Absent,
        Some(n) => Expect::Rev(n),
    }
}

/// A client's write as the store applies it, stamped `updated_at`.
pub(crate) fn change_of(op: &Op, updated_at: &str) -> Change {
    match op {
        Op::Put { id, doc, expect } => Change::Put {
            doc: WriteDoc::new(id, doc, updated_at),
            expect: expect_of(*expect),
        },
        Op::PutMany { users } => Change::PutMany(
            users
                .iter()
                .map(|(id, doc)| WriteDoc::from_text(id, doc.as_str(), updated_at))
                .collect(),
        ),
        Op::Delete { id, expect } => Change::Delete {
            id: id.clone(),
            expect: expect.map_or(Expect::Any, Expect::Rev),
        },
    }
}

/// The ids a write touches.
pub(crate) fn ids_of(op: &Op) -> Vec<String> {
    match op {
        Op::Put { id, .. } | Op::Delete { id, .. } => vec![id.clone()],
        Op::PutMany { users } => users.iter().map(|(id, _)| id.clone()).collect(),
    }
}

/// How long the store has to answer a probe (`SELECT 1`, on a pool connection: not the writer's).
pub(crate) const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Shared {
    /// Whether the store answers a probe within [`PROBE_TIMEOUT`]: what tells a slow batch from a
    /// dead store before the breaker opens on a timeout.
    pub async fn store_answers(&self) -> bool {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Entries waiting in the journal (0 while this process does not own it).
    pub fn journal_depth(&self) -> usize {
        lock(&self.journal).as_ref().map_or(0, |j| j.depth())
    }

    pub fn owns_journal(&self) -> bool {
        *self.ownership.borrow() == Ownership::Owned
    }

    /// Replaces the snapshot with the database's content. Not while writes are queued: the
    /// checks of conditional writes (`queued.rs`) stand on the snapshot they were made against,
    /// and the replay reloads it anyway.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _serial = self.writer.lock().await;
        if self.journal_depth() > 0 {
            return Ok(());
        }
        self.snapshot
            .replace_entries(self.store.load_entries().await?);
        Ok(())
    }

    /// Re-reads one user (a write elsewhere announced it); not while writes are queued (`reload`).
    pub async fn refresh(&self, id: &str) -> Result<(), StoreError> {
        let _serial = self.writer.lock().await;
        if self.journal_depth() > 0 {
            return Ok(());
        }
        // Always apply: a user deleted and created again elsewhere can be back at the same rev.
        match self.store.get(id).await? {
            Some(rec) => self.snapshot.upsert(&rec),
            None => self.snapshot.remove(id),
        }
        Ok(())
    }

    pub fn degradation(&self) -> Degradation {
        use std::sync::atomic::Ordering;
        Degradation {
            breaker: lock(&self.breaker).state(),
            journal_depth: self.journal_depth(),
            from_copy: self.from_copy.load(Ordering::Relaxed),
            handover: *self.ownership.borrow() == Ownership::Awaiting,
        }
    }

    /// What a write the store applied means for the client, and for the snapshot (updated here,
    /// in commit order: callers hold the writer lock). `AlreadyApplied` is the caller's to handle.
    pub fn settle(
        &self,
        op: &Op,
        updated_at: &str,
        applied: crate::store::Applied,
    ) -> Result<Written, UserError> {
        use crate::store::Applied;
        let record = |id: &String, doc: &serde_json::Map<_, _>, rev| Record {
            id: id.clone(),
            rev,
            updated_at: updated_at.to_owned(),
            doc: doc.clone(),
        };
        match (op, applied) {
            (Op::Put { id, doc, .. }, Applied::Put(Some(rev))) => {
                self.snapshot.upsert(&record(id, doc, rev));
                Ok(Written::Put {
                    id: id.clone(),
                    rev,
                })
            }
            (Op::Put { id, expect, .. }, _) => Err(UserError::Conflict {
                current: self.snapshot.rev(id),
                id: id.clone(),
                expected: expect.unwrap_or_default(),
            }),
            (Op::PutMany { users }, Applied::PutMany(revs)) => {
                let mut out = Vec::with_capacity(users.len());
                for ((id, doc), rev) in users.iter().zip(revs) {
                    self.snapshot.upsert(&record(id, &doc.to_map(), rev));
                    out.push((id.clone(), rev));
                }
                Ok(Written::Many(out))
            }
            (Op::Delete { id, .. }, Applied::Deleted(true)) => {
                self.snapshot.remove(id);
                Ok(Written::Deleted { id: id.clone() })
            }
            (Op::Delete { id, expect }, _) => match (expect, self.snapshot.rev(id)) {
                (Some(expected), Some(current)) => Err(UserError::Conflict {
                    id: id.clone(),
                    expected: *expected,
                    current: Some(current),
                }),
                _ => Err(UserError::NotFound(id.clone())),
            },
            // `Writer` answers a PutMany with PutMany (or AlreadyApplied, which callers take
            // first): nothing else reaches here.
            (Op::PutMany { .. }, _) => Ok(Written::Many(Vec::new())),
        }
    }
}
