//! The quarantine file as an operator works with it (`usersvc journal`): its pieces listed, and
//! chosen ones put back into the journal (to be replayed as they were written) or discarded.
//! Changes only while no server runs on the journal: they take the journal's lock, so a running
//! server is named rather than raced.

use super::journal::{self, Entry, Journal, JournalError, Owner, quarantine_path};
use crate::atomic_file;
use std::path::Path;

/// One piece of the quarantine: what it is, never the document it may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Its number, from 1, in file order.
    pub number: usize,
    pub bytes: usize,
    /// The write ids it names.
    pub write_ids: Vec<String>,
    /// The write, when the piece still decodes as one.
    pub entry: Option<Entry>,
}

/// What `usersvc journal` shows: the writes queued, and the quarantine's pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub queued: usize,
    pub pieces: Vec<Piece>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("there is no piece {0} in the quarantine (usersvc journal lists them)")]
    NoSuchPiece(usize),
    #[error(
        "piece {0} does not decode as a write (damaged bytes): it cannot be replayed, only discarded"
    )]
    NotAWrite(usize),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_pieces(journal: &Path) -> Result<Vec<Piece>, JournalError> {
    let path = quarantine_path(journal);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&path)(e)),
    };
    Ok(journal::payloads(&bytes)
        .into_iter()
        .enumerate()
        .map(|(i, p)| Piece {
            number: i + 1,
            bytes: p.len(),
            write_ids: journal::write_ids_in(p),
            entry: serde_json::from_slice(p).ok(),
        })
        .collect())
}

/// The journal's queued writes and its quarantine, read without its lock (a running server's
/// too).
pub fn list(journal: &Path) -> Result<Listing, JournalError> {
    Ok(Listing {
        queued: journal::read(journal)?.entries.len(),
        pieces: read_pieces(journal)?,
    })
}

/// Appends the chosen pieces' writes to the journal (replayed at the next start, each once: by
/// its write id) and removes them from the quarantine. The journal first: a crash between the
/// two leaves a piece in both, never in neither.
pub fn requeue(journal: &Path, chosen: &[usize]) -> Result<Vec<Piece>, QuarantineError> {
    let owner = Owner::acquire(journal)?;
    let (pieces, picked) = pick(journal, chosen)?;
    let entries = picked
        .iter()
        .map(|p| {
            let entry = p
                .entry
                .clone()
                .ok_or(QuarantineError::NotAWrite(p.number))?;
            Ok(Entry {
                requeued: true,
                ..entry
            })
        })
        .collect::<Result<Vec<_>, QuarantineError>>()?;
    let (mut j, _) = Journal::open(journal, owner)?;
    j.append_all(&entries)?;
    keep_only(journal, &pieces, chosen)?;
    Ok(picked)
}

/// Removes the chosen pieces from the quarantine for good.
pub fn discard(journal: &Path, chosen: &[usize]) -> Result<Vec<Piece>, QuarantineError> {
    let _owner = Owner::acquire(journal)?;
    let (pieces, picked) = pick(journal, chosen)?;
    keep_only(journal, &pieces, chosen)?;
    Ok(picked)
}

fn pick(journal: &Path, chosen: &[usize]) -> Result<(Vec<Piece>, Vec<Piece>), QuarantineError> {
    let pieces = read_pieces(journal)?;
    let picked = chosen
        .iter()
        .map(|&n| {
            pieces
                .get(n.wrapping_sub(1))
                .cloned()
                .ok_or(QuarantineError::NoSuchPiece(n))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((pieces, picked))
}

/// Rewrites the quarantine without the `chosen` pieces, their bytes as they were.
fn keep_only(journal: &Path, pieces: &[Piece], chosen: &[usize]) -> Result<(), JournalError> {
    let path = quarantine_path(journal);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let payloads = journal::payloads(&bytes);
    debug_assert_eq!(payloads.len(), pieces.len());
    atomic_file::write(&path, |f| {
        use std::io::Write;
        for (i, p) in payloads.iter().enumerate() {
            if !chosen.contains(&(i + 1)) {
                f.write_all(&journal::frame(p))?;
            }
        }
        Ok(())
    })
    .map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::Op;

    fn put(n: usize) -> Entry {
        let serde_json::Value::Object(doc) = serde_json::json!({"id": format!("u{n}")}) else {
            unreachable!("object")
        };
        Entry {
            write_id: format!("w{n}"),
            requeued: false,
            op: Op::Put {
                id: format!("u{n}"),
                doc,
                expect: None,
            },
        }
    }

    #[test]
    fn pieces_are_listed_requeued_and_discarded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j");
        // A journal holding w1, a damaged piece, then w2 and an undecodable w-odd.
        let good = |e: &Entry| journal::frame(&serde_json::to_vec(e).expect("json"));
        let odd = journal::frame(br#"{"write_id":"w-odd","op":{"op":"teleport"}}"#);
        let mut damaged = good(&put(9));
        damaged[28] ^= 0x01;
        let bytes = [good(&put(1)), damaged, good(&put(2)), odd].concat();
        std::fs::write(&path, bytes).expect("write");
        let (j, pending) =
            Journal::open(&path, Owner::acquire(&path).expect("lock")).expect("open");
        assert_eq!(pending, vec![put(1), put(2)]);
        drop(j);

        let listed = list(&path).expect("list");
        assert_eq!(listed.queued, 2);
        let summary: Vec<(usize, Vec<String>, bool)> = listed
            .pieces
            .iter()
            .map(|p| (p.number, p.write_ids.clone(), p.entry.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, vec!["w9".to_owned()], false),
                (2, vec!["w-odd".to_owned()], false)
            ]
        );
        // Damaged bytes cannot be replayed; a missing number is named.
        assert!(matches!(
            requeue(&path, &[1]),
            Err(QuarantineError::NotAWrite(1))
        ));
        assert!(matches!(
            discard(&path, &[7]),
            Err(QuarantineError::NoSuchPiece(7))
        ));

        // A write that replay could not apply, quarantined whole: it can go back.
        let (mut j, _) = Journal::open(&path, Owner::acquire(&path).expect("lock")).expect("open");
        j.quarantine_unapplied(&[(put(3), "conflict".into())])
            .expect("quarantine");
        drop(j);
        assert_eq!(list(&path).expect("list").pieces.len(), 3);
        let back = requeue(&path, &[3]).expect("requeue");
        assert_eq!(back[0].write_ids, ["w3"]);
        // Requeued: replay judges it again, whatever its first attempt's claim says.
        let requeued = Entry {
            requeued: true,
            ..put(3)
        };
        assert_eq!(
            journal::read(&path).expect("read").entries,
            vec![put(1), put(2), requeued]
        );
        let gone = discard(&path, &[1, 2]).expect("discard");
        assert_eq!(gone.len(), 2);
        assert!(list(&path).expect("list").pieces.is_empty());

        // A running server holds the lock: changes are refused, naming it.
        let _server = Owner::acquire(&path).expect("lock");
        assert!(matches!(
            discard(&path, &[1]),
            Err(QuarantineError::Journal(JournalError::Held { .. }))
        ));
    }
}
