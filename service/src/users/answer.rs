//! The words the write path answers in: what a write did (`Written`) and why it did not
//! (`UserError`). A leaf of `users/`: the state, the queued-revision check and the jobs all
//! speak it, and it imports none of them.

use super::validate::Invalid;
use crate::store::JournalError;
use crate::store::StoreError;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user: {0}")]
    Invalid(#[from] Invalid),
    #[error("no user with id {0:?}")]
    NotFound(String),
    #[error("revision conflict on {id:?}: expected {expected}, stored {current:?}")]
    Conflict {
        id: String,
        expected: i64,
        current: Option<i64>,
    },
    /// Shared: one failed batch answers each of its writes with the same cause.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the store is unreachable and the write could not be queued: {0}")]
    Journal(Arc<JournalError>),
    #[error("the server is shutting down; retry on the new one")]
    ShuttingDown,
    /// A conditional write or delete while queued writes this server did not check wait to be
    /// replayed (`queued.rs`): refused, nothing changed.
    #[error(
        "the store is unreachable and writes queued earlier wait to be replayed: a conditional write or delete cannot be checked now; nothing changed, retry later"
    )]
    Unverifiable,
}

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        UserError::Store(Arc::new(e))
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Put {
        id: String,
        rev: i64,
    },
    Many(Vec<(String, i64)>),
    Deleted {
        id: String,
    },
    /// The store is unreachable: the write is in the journal (fsync'd) and will be replayed.
    Queued {
        write_id: String,
        ids: Vec<String>,
    },
}
