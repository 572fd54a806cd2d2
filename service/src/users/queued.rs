//! What the queued writes will leave behind. While the journal is not empty, a conditional write
//! (or a delete) is checked against the revisions the writes queued ahead of it will have made,
//! not against the snapshot alone: a write acknowledged as queued is then one that replay will
//! apply, so on one server nothing acknowledged is refused on replay.
//!
//! The check is exact only while every queued write was checked here against a snapshot that
//! none of them is in yet. After a cold start (the snapshot is the local copy, maybe behind) or
//! with writes queued by another process (their effect on the snapshot is unknown), conditional
//! writes and deletes are refused (-32000, nothing changed) until the journal has been replayed
//! and the snapshot reloaded; plain upserts are always queued.

use super::answer::UserError;
use super::snapshot::Snapshot;
use crate::store::Op;
use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct Queued {
    exact: bool,
    /// The revision each id will have once the queued writes are applied (`None`: deleted).
    revs: HashMap<String, Option<i64>>,
}

/// The effects of one batch's writes, checked one after another, kept aside until the batch is
/// in the journal (`Queued::keep`).
#[derive(Debug, Default)]
pub(crate) struct Tentative {
    revs: HashMap<String, Option<i64>>,
    inexact: bool,
}

impl Queued {
    /// `exact`: the snapshot is the store's (not a cold start's copy).
    pub fn new(exact: bool) -> Self {
        Self {
            exact,
            revs: HashMap::new(),
        }
    }

    /// The journal was replayed and the snapshot reloaded from the store: nothing is queued.
    pub fn clear(&mut self) {
        self.exact = true;
        self.revs.clear();
    }

    /// Writes this process did not check are queued (or the snapshot may be behind): refuse
    /// what cannot be checked until the next `clear`.
    pub fn unknown(&mut self) {
        self.exact = false;
    }

    pub fn is_exact(&self) -> bool {
        self.exact
    }

    fn rev(&self, t: &Tentative, id: &str, snapshot: &Snapshot) -> Option<i64> {
        t.revs
            .get(id)
            .or_else(|| self.revs.get(id))
            .copied()
            .unwrap_or_else(|| snapshot.rev(id))
    }

    /// Checks `op` against what the writes ahead of it leave, and notes its own effect in `t`.
    pub fn check(&self, t: &mut Tentative, op: &Op, snapshot: &Snapshot) -> Result<(), UserError> {
        let conditional = matches!(
            op,
            Op::Put {
                expect: Some(_),
                ..
            } | Op::Delete { .. }
        );
        if conditional && !self.exact {
            return Err(UserError::Unverifiable);
        }
        let conflict = |id: &str, expected: i64, current: Option<i64>| UserError::Conflict {
            id: id.to_owned(),
            expected,
            current,
        };
        match op {
            Op::Put { id, expect, .. } => {
                let current = self.rev(t, id, snapshot);
                match (*expect, current) {
                    (Some(0), Some(_)) => return Err(conflict(id, 0, current)),
                    (Some(n), _) if n > 0 && current != Some(n) => {
                        return Err(conflict(id, n, current));
                    }
                    _ => {}
                }
                t.revs
                    .insert(id.clone(), Some(current.map_or(1, |r| r + 1)));
            }
            Op::PutMany { users } => {
                for (id, _) in users {
                    let next = self.rev(t, id, snapshot).map_or(1, |r| r + 1);
                    t.revs.insert(id.clone(), Some(next));
                }
            }
            Op::Delete { id, expect } => match (self.rev(t, id, snapshot), expect) {
                (None, _) => return Err(UserError::NotFound(id.clone())),
                (Some(cur), Some(n)) if cur != *n => return Err(conflict(id, *n, Some(cur))),
                _ => {
                    t.revs.insert(id.clone(), None);
                }
            },
        }
        Ok(())
    }

    /// Notes a write queued without a check (it was tried against the store, its outcome is
    /// unknown, and this view cannot check it): later checks cannot be exact.
    pub fn force(&self, t: &mut Tentative) {
        t.inexact = true;
    }

    /// The batch is in the journal: its effects now count for the writes after it.
    pub fn keep(&mut self, t: Tentative) {
        self.revs.extend(t.revs);
        if t.inexact {
            self.exact = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::Record;
    use serde_json::Map;

    fn put(id: &str, expect: Option<i64>) -> Op {
        Op::Put {
            id: id.into(),
            doc: Map::new(),
            expect,
        }
    }

    fn snapshot_with(id: &str, rev: i64) -> Snapshot {
        let s = Snapshot::default();
        s.replace_all(&[Record {
            id: id.into(),
            rev,
            updated_at: "t".into(),
            doc: Map::new(),
        }]);
        s
    }

    #[test]
    fn conditional_writes_see_the_writes_queued_ahead_of_them() {
        let snap = snapshot_with("x", 1);
        let mut q = Queued::new(true);
        let mut t = Tentative::default();
        q.check(&mut t, &put("x", Some(1)), &snap)
            .expect("at rev 1");
        // In the same batch, the second conditional write on rev 1 cannot win: refused now.
        assert!(matches!(
            q.check(&mut t, &put("x", Some(1)), &snap),
            Err(UserError::Conflict {
                current: Some(2),
                ..
            })
        ));
        q.keep(t);
        let mut t = Tentative::default();
        q.check(&mut t, &put("x", Some(2)), &snap)
            .expect("after it");
        q.check(&mut t, &put("y", Some(0)), &snap).expect("create");
        assert!(q.check(&mut t, &put("y", Some(0)), &snap).is_err());
        let del = Op::Delete {
            id: "x".into(),
            expect: None,
        };
        q.check(&mut t, &del, &snap).expect("delete");
        assert!(matches!(
            q.check(&mut t, &del, &snap),
            Err(UserError::NotFound(_))
        ));
        q.check(&mut t, &put("x", None), &snap).expect("upsert");
        q.keep(t);
        assert_eq!(q.revs["x"], Some(1), "recreated after the delete");
    }

    #[test]
    fn without_an_exact_view_only_plain_upserts_are_queued() {
        let snap = snapshot_with("x", 1);
        let mut q = Queued::new(false);
        let mut t = Tentative::default();
        assert!(matches!(
            q.check(&mut t, &put("x", Some(1)), &snap),
            Err(UserError::Unverifiable)
        ));
        q.check(&mut t, &put("x", None), &snap).expect("upsert");
        q.clear();
        assert!(q.is_exact());
        // A write queued unchecked makes later checks inexact.
        let mut t = Tentative::default();
        q.force(&mut t);
        q.keep(t);
        assert!(!q.is_exact());
    }
}
