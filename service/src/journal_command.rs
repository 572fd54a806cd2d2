//! `usersvc journal`: the writes queued in the journal and the pieces in its quarantine, as an
//! operator sees them, and chosen pieces put back into the journal or discarded
//! (`store::quarantine`). What a piece holds is named (its write ids, the users it writes),
//! never printed: documents stay in the files.

use crate::store::Op;
use crate::store::quarantine_path;
use crate::store::{
    Piece, QuarantineError, discard_quarantined, list_quarantine, requeue_quarantined,
};
use std::path::Path;
use toolkit_core::terminal::value;

/// What `usersvc journal` is asked to do.
#[derive(clap::Subcommand, Debug, Clone, PartialEq)]
pub enum JournalAction {
    /// The queued writes and every quarantined piece (the default)
    List,
    /// Put pieces back into the journal, to be replayed at the next start as they were written
    /// (the server stopped: it owns the journal while it runs)
    Requeue {
        /// Piece numbers, as `usersvc journal list` shows them
        #[arg(required = true, value_name = "N")]
        pieces: Vec<usize>,
    },
    /// Remove pieces from the quarantine for good (the server stopped)
    Discard {
        /// Piece numbers, as `usersvc journal list` shows them
        #[arg(required = true, value_name = "N")]
        pieces: Vec<usize>,
    },
}

/// Runs `action` on the journal at `journal`; what to print.
pub fn run(journal: &Path, action: &JournalAction) -> Result<String, QuarantineError> {
    match action {
        JournalAction::List => listing(journal),
        JournalAction::Requeue { pieces } => {
            let done = requeue_quarantined(journal, pieces)?;
            Ok(format!(
                "put back into {}: {}\nthey are replayed when usersvc starts (each once, by its write id)",
                journal.display(),
                described(&done)
            ))
        }
        JournalAction::Discard { pieces } => {
            let done = discard_quarantined(journal, pieces)?;
            Ok(format!("discarded: {}", described(&done)))
        }
    }
}

fn listing(journal: &Path) -> Result<String, QuarantineError> {
    let l = list_quarantine(journal)?;
    let mut out = format!(
        "journal {}: {} write(s) queued, replayed when the store answers\n",
        journal.display(),
        l.queued
    );
    out.push_str(&format!(
        "quarantine {}: {} piece(s)\n",
        quarantine_path(journal).display(),
        l.pieces.len()
    ));
    for p in &l.pieces {
        out.push_str(&format!(
            "  #{:<4} {:>8} bytes  {}\n",
            p.number,
            p.bytes,
            what(p)
        ));
    }
    if !l.pieces.is_empty() {
        out.push_str(
            "with the server stopped: `usersvc journal requeue N…` replays a write again, `usersvc journal discard N…` drops a piece\n",
        );
    }
    Ok(out.trim_end().to_owned())
}

fn described(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| format!("#{} ({})", p.number, what(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A piece in a few words: the write it is, or the write ids damaged bytes still name.
fn what(p: &Piece) -> String {
    match &p.entry {
        Some(e) => format!("write {}: {}", value(&e.write_id), op(&e.op)),
        None if p.write_ids.is_empty() => "damaged bytes, no write id left in them".into(),
        None => format!(
            "damaged bytes naming write(s) {}",
            value(&p.write_ids.join(", "))
        ),
    }
}

fn op(op: &Op) -> String {
    match op {
        Op::Put { id, .. } => format!("put_user {}", value(id)),
        Op::PutMany { users } => format!(
            "put_users of {} ({}…)",
            users.len(),
            value(
                &users
                    .iter()
                    .take(3)
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        ),
        Op::Delete { id, .. } => format!("delete_user {}", value(id)),
    }
}
