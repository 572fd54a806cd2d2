//! The write-ahead journal used while the store is unreachable: an append-only file of framed
//! records, each fsync'd before the client is told its write is queued.
//!
//! Frame: `len: u32 BE | crc32(payload): u32 BE | payload (len bytes, JSON)`. A crash mid-append
//! leaves a short or mismatching last frame. A damaged frame costs only itself: reading goes on
//! at the next offset where a frame's header and checksum verify and its payload is a record
//! (`{"write_id":"`; a record's JSON holds no NUL, a frame header of any record does, so no false
//! start can hide inside a record), and the damaged bytes in between are one unusable piece.
//!
//! One owner at a time: a process appends to, replays or rewrites a journal only while it holds
//! the exclusive lock on `<journal>.lock` ([`Owner`], which also records its pid for the message
//! a second server gets). The lock is only as good as the directory: one that other users can
//! write (and is not sticky) or that another user owns is refused, since anyone who can rename
//! the lock file aside can take the journal. Nothing read is dropped silently: a piece that
//! cannot be used (damaged bytes, a record that does not decode, one replay could not apply) is
//! moved, bytes intact, into `<journal>.quarantine` (same framing, one frame per piece) before
//! the journal is rewritten without it, and every write id found in it is logged.

mod frames;
mod owner;

use self::frames::{Frames, Piece, encode, frames};
pub(super) use self::frames::{frame, payloads, write_ids_in};
pub use self::owner::{Owner, quarantine_path};
use crate::atomic_file;
use crate::doc::DocText;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One queued write, as the client asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Put {
        id: String,
        doc: Map<String, Value>,
        expect: Option<i64>,
    },
    PutMany {
        users: Vec<(String, DocText)>,
    },
    Delete {
        id: String,
        expect: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique per write (UUIDv7): replay records it with the write, so it is applied once.
    /// First field: a record that no longer decodes is still named by it (`write_ids_in`).
    pub write_id: String,
    pub op: Op,
    /// Put back from the quarantine by an operator (`usersvc journal requeue`): replay judges
    /// it again even if its first attempt left a claim that says it changed nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeued: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the journal {} is in use by another usersvc{}: stop it first, or give this server its own --journal",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("journal {}: this server does not own it (yet)", .0.display())]
    NotOwned(PathBuf),
    #[error(
        "the journal's directory {} is {why}: another user could take the journal (move its lock aside, or replace it); use a directory only this user can write (chmod go-w), such as the service's own under /var/lib",
        dir.display()
    )]
    UnsafeDirectory { dir: PathBuf, why: String },
}

/// A piece of the journal that could not be used, moved to the quarantine file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    /// Where it was in the journal (`None`: a record replay could not apply).
    pub offset: Option<u64>,
    pub reason: String,
    /// Every write id the piece still names.
    pub write_ids: Vec<String>,
    pub bytes: Vec<u8>,
}

/// What reading a journal found.
#[derive(Debug, Default, PartialEq)]
pub struct Contents {
    /// Every record that decodes, in order.
    pub entries: Vec<Entry>,
    /// What could not be used: damaged pieces and records that do not decode, in file order.
    pub bad: Vec<Bad>,
}

/// An owned journal, open for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    depth: usize,
    /// Frames in the quarantine file (this run's and earlier ones').
    quarantined: u64,
    _owner: Owner,
}

/// Reads every record: those that decode, in order, and what could not be used.
pub fn read(path: &Path) -> Result<Contents, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(e) => return Err(io(e)),
    };
    let Frames { records, damage } = frames(&bytes);
    let mut contents = Contents::default();
    // In file order: records and damaged pieces interleave.
    let mut pieces: Vec<(usize, Piece)> = records
        .into_iter()
        .map(|(at, payload)| (at, Piece::Record(payload)))
        .chain(
            damage
                .into_iter()
                .map(|(at, end, why)| (at, Piece::Damaged(end, why))),
        )
        .collect();
    pieces.sort_by_key(|(at, _)| *at);
    for (at, piece) in pieces {
        match piece {
            Piece::Record(payload) => match serde_json::from_slice(payload) {
                Ok(e) => contents.entries.push(e),
                Err(e) => contents.bad.push(Bad {
                    offset: Some(at as u64),
                    reason: format!("record does not decode: {e}"),
                    write_ids: write_ids_in(payload),
                    bytes: payload.to_vec(),
                }),
            },
            Piece::Damaged(end, reason) => contents.bad.push(Bad {
                offset: Some(at as u64),
                reason,
                write_ids: write_ids_in(&bytes[at..end]),
                bytes: bytes[at..end].to_vec(),
            }),
        }
    }
    Ok(contents)
}

impl Journal {
    /// Opens the journal `owner` holds: reads it, moves what cannot be used into quarantine (and
    /// rewrites the journal without it), and returns it with the entries still to replay.
    pub fn open(path: &Path, owner: Owner) -> Result<(Self, Vec<Entry>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let quarantined = match std::fs::read(quarantine_path(path)) {
            Ok(bytes) => frames(&bytes).records.len() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let mut journal = Self {
            path: path.to_owned(),
            file: atomic_file::open_append(path).map_err(io)?,
            depth: 0,
            quarantined,
            _owner: owner,
        };
        let entries = journal.pending()?;
        Ok((journal, entries))
    }

    /// The entries waiting to be replayed, read from the file; anything unusable is quarantined
    /// first (logged with its write id) and the journal rewritten without it.
    pub fn pending(&mut self) -> Result<Vec<Entry>, JournalError> {
        let Contents { entries, bad } = read(&self.path)?;
        if !bad.is_empty() {
            self.quarantine(&bad)?;
            self.rewrite(&entries)?;
        }
        self.depth = entries.len();
        Ok(entries)
    }

    /// Moves records replay could not apply (each with why) into quarantine, bytes as they were
    /// journaled: never dropped. The caller rewrites the journal without them afterwards.
    pub fn quarantine_unapplied(
        &mut self,
        unapplied: &[(Entry, String)],
    ) -> Result<(), JournalError> {
        let bad: Vec<Bad> = unapplied
            .iter()
            .map(|(e, why)| Bad {
                offset: None,
                reason: why.clone(),
                write_ids: vec![e.write_id.clone()],
                bytes: serde_json::to_vec(e).unwrap_or_default(),
            })
            .collect();
        self.quarantine(&bad)
    }

    fn quarantine(&mut self, bad: &[Bad]) -> Result<(), JournalError> {
        let path = quarantine_path(&self.path);
        let bytes: Vec<u8> = bad.iter().flat_map(|b| frame(&b.bytes)).collect();
        atomic_file::open_append(&path)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_data()
            })
            .and_then(|()| atomic_file::sync_dir(&path))
            .map_err(|source| JournalError::Io {
                path: path.clone(),
                source,
            })?;
        for b in bad {
            let ids = if b.write_ids.is_empty() {
                "none found".to_owned()
            } else {
                b.write_ids.join(",")
            };
            tracing::error!(
                journal = %self.path.display(), quarantine = %path.display(),
                offset = b.offset.map_or_else(|| "-".to_owned(), |o| o.to_string()),
                bytes = b.bytes.len(), write_ids = %ids, reason = %b.reason,
                "journal record cannot be replayed: moved to quarantine, bytes intact (usersvc journal lists it)"
            );
        }
        self.quarantined += bad.len() as u64;
        Ok(())
    }

    /// Entries waiting to be replayed.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Pieces moved to the quarantine file, ever (it is kept until an operator removes it).
    pub fn quarantined(&self) -> u64 {
        self.quarantined
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends every entry, in order, with one write and one fsync (group commit): when this
    /// returns Ok, they survive a crash.
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        let bytes: Vec<u8> = entries.iter().flat_map(encode).collect();
        let before = self.file.metadata().map_err(|e| self.io(e))?.len();
        let appended = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = appended {
            // A full disk took part of it: cut the journal back, so these writes (refused, not
            // acknowledged) leave no partial frame for the next reading to quarantine.
            let _ = self.file.set_len(before);
            return Err(self.io(e));
        }
        self.depth += entries.len();
        Ok(())
    }

    /// Replaces the content with `entries` atomically (`atomic_file`).
    pub fn rewrite(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        atomic_file::write(&self.path, |f| {
            for e in entries {
                f.write_all(&encode(e))?;
            }
            Ok(())
        })
        .map_err(|e| self.io(e))?;
        self.file = atomic_file::open_append(&self.path).map_err(|e| self.io(e))?;
        self.depth = entries.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(n: usize) -> Entry {
        let Value::Object(doc) = json!({"id": format!("u{n}"), "n": n}) else {
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

    fn owned(path: &Path) -> Journal {
        let owner = Owner::acquire(path).expect("lock");
        Journal::open(path, owner).expect("open").0
    }

    /// What reading found, as (entries, damage reasons).
    fn read_back(path: &Path) -> (Vec<Entry>, Vec<String>) {
        let c = read(path).expect("read");
        (c.entries, c.bad.into_iter().map(|b| b.reason).collect())
    }

    #[test]
    fn round_trip_and_damaged_tails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j");
        let mut j = owned(&path);
        for n in 0..3 {
            j.append_all(&[put(n)]).expect("append");
        }
        assert_eq!(j.depth(), 3);
        assert_eq!(read_back(&path), (vec![put(0), put(1), put(2)], vec![]));

        // Cut the last record short, as a crash mid-append would.
        let full = std::fs::read(&path).expect("bytes");
        std::fs::write(&path, &full[..full.len() - 5]).expect("truncate");
        let (entries, damage) = read_back(&path);
        assert_eq!(entries, vec![put(0), put(1)]);
        assert!(damage[0].contains("cut short"), "{damage:?}");

        // Flip a byte inside the second record's payload: it alone is lost to the reading.
        let mut bad = full.clone();
        let second = encode(&put(0)).len() + 8 + 3;
        bad[second] ^= 0xff;
        std::fs::write(&path, &bad).expect("write");
        let (entries, damage) = read_back(&path);
        assert_eq!(entries, vec![put(0), put(2)]);
        assert!(damage[0].contains("checksum"), "{damage:?}");

        // Rewrite keeps the intact records and appends continue after them.
        j.rewrite(&entries).expect("rewrite");
        j.append_all(&[put(9)]).expect("append");
        assert_eq!(read_back(&path).0, vec![put(0), put(2), put(9)]);
        j.rewrite(&[]).expect("empty");
        assert_eq!(read_back(&path), (vec![], vec![]));
    }

    #[test]
    fn every_kind_of_write_reads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j");
        let Value::Object(doc) = json!({"id": "b", "tags": [1, {"x": null}]}) else {
            unreachable!("object")
        };
        let entries = vec![
            put(1),
            Entry {
                write_id: "w-many".into(),
                requeued: false,
                op: Op::PutMany {
                    users: vec![("b".into(), DocText::new(&doc))],
                },
            },
            Entry {
                write_id: "w-del".into(),
                requeued: false,
                op: Op::Delete {
                    id: "u1".into(),
                    expect: Some(3),
                },
            },
        ];
        let mut j = owned(&path);
        j.append_all(&entries).expect("append");
        assert_eq!(read_back(&path), (entries, vec![]));
    }

    #[test]
    fn one_owner_at_a_time_named_by_pid() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j");
        let first = Owner::acquire(&path).expect("free");
        match Owner::acquire(&path) {
            Err(JournalError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second owner: {other:?}"),
        }
        drop(first);
        Owner::acquire(&path).expect("free again once released");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        for mode in [0o777, 0o1777, 0o775] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            match Owner::acquire(&shared.join("j")) {
                Err(e @ JournalError::UnsafeDirectory { .. }) => {
                    assert!(e.to_string().contains("writable by other users"), "{e}");
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Owner::acquire(&shared.join("j")).expect("a private directory");
    }

    #[test]
    fn an_undecodable_record_is_quarantined_and_the_others_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j");
        // A well-framed record that is not an entry, between two good ones.
        let odd = br#"{"write_id":"w-odd","op":{"op":"teleport"}}"#;
        let bytes = [encode(&put(1)), frame(odd), encode(&put(2))].concat();
        std::fs::write(&path, &bytes).expect("write");
        let mut j = owned(&path);
        assert_eq!(j.pending().expect("pending"), vec![put(1), put(2)]);
        assert_eq!(j.quarantined(), 1);
        // Moved, bytes intact: the quarantine holds exactly that frame.
        let q = std::fs::read(quarantine_path(&path)).expect("quarantine");
        assert_eq!(q, frame(odd));
        assert_eq!(write_ids_in(odd), ["w-odd"]);
        // The journal no longer holds it; a damaged tail goes to quarantine too.
        let mut again = std::fs::read(&path).expect("journal");
        again.extend_from_slice(b"\x00\x00");
        std::fs::write(&path, &again).expect("write");
        assert_eq!(j.pending().expect("pending"), vec![put(1), put(2)]);
        assert_eq!(j.quarantined(), 2);
        drop(j);
        // A later run counts what earlier ones quarantined.
        assert_eq!(owned(&path).quarantined(), 2);
    }

    /// Entries of varied sizes, their file bytes, and where each frame ends.
    fn sample() -> (Vec<Entry>, Vec<u8>, Vec<usize>) {
        let entries: Vec<Entry> = (0..6)
            .map(|n| {
                let mut e = put(n);
                if let Op::Put { doc, .. } = &mut e.op {
                    doc.insert("pad".into(), "x".repeat(n * 7).into());
                }
                e
            })
            .collect();
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for e in &entries {
            bytes.extend(encode(e));
            ends.push(bytes.len());
        }
        (entries, bytes, ends)
    }

    /// The entries whose frames `bad` holds unchanged, whole and in place: what reading a
    /// damaged copy of `bytes` must give back.
    fn untouched(entries: &[Entry], ends: &[usize], bytes: &[u8], bad: &[u8]) -> Vec<Entry> {
        let mut start = 0;
        let mut out = Vec::new();
        for (e, &end) in entries.iter().zip(ends) {
            if bad.get(start..end) == Some(&bytes[start..end]) {
                out.push(e.clone());
            }
            start = end;
        }
        out
    }

    #[test]
    fn damage_costs_only_the_records_it_touches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("prop");
        let (entries, bytes, ends) = sample();
        // Every truncation point: a cut on a frame boundary is a shorter, undamaged journal.
        for cut in 0..=bytes.len() {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            let (got, damage) = read_back(&path);
            assert_eq!(
                got,
                untouched(&entries, &ends, &bytes, &bytes[..cut]),
                "cut at {cut}"
            );
            assert_eq!(
                damage.is_empty(),
                cut == 0 || ends.contains(&cut),
                "cut at {cut}"
            );
        }
        // Every byte flipped, with three masks: the record holding it is lost to the reading
        // (a flip inside a payload that still decodes is caught by the checksum), every other
        // one is read.
        for at in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                std::fs::write(&path, &bad).expect("write");
                let (got, damage) = read_back(&path);
                let want = untouched(&entries, &ends, &bytes, &bad);
                assert_eq!(want.len(), entries.len() - 1, "flip {mask:#x} at {at}");
                assert_eq!(got, want, "flip {mask:#x} at {at}");
                assert_eq!(damage.len(), 1, "flip {mask:#x} at {at}: {damage:?}");
            }
        }
        // Random damage (several flips, then maybe a cut), from a fixed seed: exactly the
        // untouched records are kept; the repaired journal takes appends again, and every byte
        // not kept is in the quarantine, with each write id it names logged.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..500 {
            let mut bad = bytes.clone();
            for _ in 0..1 + next(4) {
                let at = next(bad.len());
                bad[at] ^= 1 + next(255) as u8;
            }
            if next(2) == 0 {
                bad.truncate(next(bad.len() + 1));
            }
            let _ = std::fs::remove_file(quarantine_path(&path));
            std::fs::write(&path, &bad).expect("write");
            let keep = untouched(&entries, &ends, &bytes, &bad);
            let kept_bytes: usize = keep.iter().map(|e| encode(e).len()).sum();
            let mut j = owned(&path);
            assert_eq!(j.depth(), keep.len(), "round {round}");
            let quarantined = std::fs::read(quarantine_path(&path)).unwrap_or_default();
            let pieces = frames(&quarantined).records;
            assert_eq!(
                pieces.iter().map(|(_, p)| p.len()).sum::<usize>(),
                bad.len() - kept_bytes,
                "round {round}: every byte not kept is quarantined"
            );
            j.append_all(&[put(99)]).expect("append");
            let (after, damage) = read_back(&path);
            assert_eq!(
                (after.len(), damage),
                (keep.len() + 1, vec![]),
                "round {round}"
            );
        }
    }

    #[test]
    fn ten_queued_writes_with_a_bit_flipped_in_the_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j");
        let all: Vec<Entry> = (0..10).map(put).collect();
        let mut bytes: Vec<u8> = all.iter().flat_map(encode).collect();
        bytes[40] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        let mut j = owned(&path);
        assert_eq!(
            j.pending().expect("pending"),
            all[1..].to_vec(),
            "9 replayable"
        );
        assert_eq!(j.quarantined(), 1);
        let q = std::fs::read(quarantine_path(&path)).expect("quarantine");
        let pieces = frames(&q).records;
        assert_eq!(pieces.len(), 1);
        assert_eq!(
            write_ids_in(pieces[0].1),
            ["w0"],
            "the damaged record is named"
        );
    }
}
