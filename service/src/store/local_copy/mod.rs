//! The snapshot's local copy, beside the journal: what a cold start serves when the database is
//! unreachable. Kept by the journal's owner only, as a base and a log of changes, so that the
//! disk work of keeping it current is proportional to what changed, not to every user:
//!
//! - `usersvc.snapshot`, the base, written whole (atomically, `atomic_file`) at start and when the
//!   log has grown past half the base: `USVCSNAP` | version 2: u32 | base id: u64 | users: u64 |
//!   body length: u64 | crc32(body): u32 | body: one user record after another.
//! - `usersvc.snapshot.log`, appended (and fsync'd) every few seconds with the users changed
//!   since: `USVCSLOG` | version: u32 | base id: u64, then frames `length: u32 | crc32: u32 |
//!   record`. It counts only with the base whose id it carries: a log left beside a newer base is
//!   ignored (that base holds all it said).
//!
//! A user record is `kind: u8` (1 a user, 2 a deletion) | id length: u32 | id, then for a user
//! `rev: i64 | doc hash: u64 | JSON length: u32 | JSON` (the object reads answer); integers big
//! endian. Loading is a copy of bytes per user, no JSON parsing beyond a check of each JSON.
//!
//! Damage is reported by name: a base that is short, has the wrong magic, an unknown version, a
//! bad checksum or a record that does not decode is never served. A log frame cut short or
//! failing its checksum ends the log there: it is the last append, torn by a crash, and the
//! changes it held (a few seconds of writes) are in the database. Version 1 copies (a JSON
//! array, from earlier releases) are still read.

mod decode;

use self::decode::{decode, decode_v1, replay_log};
use crate::doc::Entry;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"USVCSNAP";
const LOG_MAGIC: &[u8; 8] = b"USVCSLOG";
const VERSION: u32 = 2;
const V1_HEADER: usize = 8 + 4 + 8 + 4;
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 4;
const LOG_HEADER: usize = 8 + 4 + 8;
const USER: u8 = 1;
const DELETED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("no snapshot copy at {0} (a server that never reached its database keeps none)")]
    Missing(PathBuf),
    #[error("cannot read the snapshot copy {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the snapshot copy {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the snapshot copy {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// Where the copy for this journal lives: `usersvc.journal` → `usersvc.snapshot`.
pub fn path_for(journal: &Path) -> PathBuf {
    journal.with_extension("snapshot")
}

/// The log of changes beside the base: `usersvc.snapshot` → `usersvc.snapshot.log`.
pub fn log_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// What the writer knows of the copy on disk, between saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyState {
    pub base_id: u64,
    pub base_bytes: u64,
    pub log_bytes: u64,
}

impl CopyState {
    /// The log has grown past half the base (or 1 MiB for a small one): time to write a base.
    pub fn wants_compaction(&self) -> bool {
        self.log_bytes > (self.base_bytes / 2).max(1 << 20)
    }
}

fn put_record(out: &mut Vec<u8>, id: &str, entry: Option<&Entry>) {
    out.push(if entry.is_some() { USER } else { DELETED });
    out.extend_from_slice(&(id.len() as u32).to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    if let Some(e) = entry {
        out.extend_from_slice(&e.rev.to_be_bytes());
        out.extend_from_slice(&e.doc_hash.to_be_bytes());
        out.extend_from_slice(&(e.json.len() as u32).to_be_bytes());
        out.extend_from_slice(&e.json);
    }
}

/// Writes a new base from `chunks` (each a run of users in id order; an empty one ends it) and
/// an empty log for it, `gentle` to the write path (`atomic_file::write_large`) unless the
/// server is stopping. Returns what was written.
pub fn write_base(
    path: &Path,
    gentle: bool,
    mut chunks: impl FnMut(Option<&str>) -> Vec<(String, Entry)>,
) -> Result<CopyState, CopyError> {
    let base_id = rand_id();
    let werr = |source| CopyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut state = CopyState {
        base_id,
        base_bytes: 0,
        log_bytes: LOG_HEADER as u64,
    };
    crate::atomic_file::write_large(path, gentle, |f| {
        f.write_all(&[0u8; HEADER])?;
        let (users, body, crc) = write_records(&mut *f, gentle, &mut chunks)?;
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_be_bytes());
        head.extend_from_slice(&base_id.to_be_bytes());
        head.extend_from_slice(&users.to_be_bytes());
        head.extend_from_slice(&body.to_be_bytes());
        head.extend_from_slice(&crc.to_be_bytes());
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&head)?;
        state.base_bytes = HEADER as u64 + body;
        Ok(())
    })
    .map_err(werr)?;
    // Then the log for it. A crash before this leaves the old log, which names the old base
    // and is ignored.
    let mut head = Vec::with_capacity(LOG_HEADER);
    head.extend_from_slice(LOG_MAGIC);
    head.extend_from_slice(&VERSION.to_be_bytes());
    head.extend_from_slice(&base_id.to_be_bytes());
    let log = log_path(path);
    crate::atomic_file::write(&log, |f| f.write_all(&head)).map_err(|source| CopyError::Write {
        path: log.clone(),
        source,
    })?;
    Ok(state)
}

/// Every user `chunks` hands out (by pages, each after the last id of the one before), as
/// records; how many, their bytes and their CRC-32 (for the header).
fn write_records(
    f: &mut std::fs::File,
    gentle: bool,
    chunks: &mut impl FnMut(Option<&str>) -> Vec<(String, Entry)>,
) -> std::io::Result<(u64, u64, u32)> {
    let mut crc = crc32fast::Hasher::new();
    let (mut users, mut body) = (0u64, 0u64);
    // A quarter of the pacing chunk: each flush comes within 256 KiB of its chunk's edge.
    let paced = crate::atomic_file::Paced::new(f, gentle);
    let mut out = std::io::BufWriter::with_capacity(256 << 10, paced);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut after: Option<String> = None;
    loop {
        let chunk = chunks(after.as_deref());
        let Some((last, _)) = chunk.last() else {
            break;
        };
        let last = last.clone();
        for (id, e) in &chunk {
            buf.clear();
            put_record(&mut buf, id, Some(e));
            crc.update(&buf);
            out.write_all(&buf)?;
            users += 1;
            body += buf.len() as u64;
        }
        after = Some(last);
    }
    out.flush()?;
    Ok((users, body, crc.finalize()))
}

/// Most bytes of users in one log frame: a frame's length is a u32, and one is built in memory.
const MAX_FRAME: usize = 4 << 20;

/// Appends these users as they are now (`None`: deleted) to the log, in frames of at most
/// `MAX_FRAME`, then fsyncs it. An error leaves the log with a torn tail, after which nothing
/// appended would count: the caller must write a new base next (`Unsaved::All`).
pub fn append_log(
    base: &Path,
    state: &mut CopyState,
    changes: &[(String, Option<Entry>)],
) -> Result<(), CopyError> {
    if changes.is_empty() {
        return Ok(());
    }
    let log = log_path(base);
    let werr = |source| CopyError::Write {
        path: log.clone(),
        source,
    };
    let mut f = crate::atomic_file::open_append(&log).map_err(werr)?;
    let mut record = Vec::new();
    let mut appended = 0u64;
    for (i, (id, e)) in changes.iter().enumerate() {
        put_record(&mut record, id, e.as_ref());
        if record.len() < MAX_FRAME && i + 1 < changes.len() {
            continue;
        }
        // One user is at most a few MiB (validation's limits): the frame fits a u32.
        let len = u32::try_from(record.len())
            .map_err(|_| werr(std::io::Error::other("a log frame over 4 GiB")))?;
        let mut frame = Vec::with_capacity(record.len() + 8);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&crc32fast::hash(&record).to_be_bytes());
        frame.extend_from_slice(&record);
        f.write_all(&frame).map_err(werr)?;
        appended += frame.len() as u64;
        record.clear();
    }
    f.sync_data().map_err(werr)?;
    state.log_bytes += appended;
    Ok(())
}

/// The copy's size on disk (base and log) and when it was last written, for `/metrics`.
pub fn on_disk(base: &Path) -> Option<(u64, std::time::SystemTime)> {
    let b = std::fs::metadata(base).ok()?;
    let mut size = b.len();
    let mut written = b.modified().ok()?;
    if let Ok(l) = std::fs::metadata(log_path(base)) {
        size += l.len();
        if let Ok(t) = l.modified() {
            written = written.max(t);
        }
    }
    Some((size, written))
}

fn rand_id() -> u64 {
    let u = uuid::Uuid::now_v7().as_u128();
    (u as u64) ^ ((u >> 64) as u64)
}

/// Reads the copy at `path` (its base, then its log) back into the users it holds.
///
/// The users' documents are slices of the file's one buffer, not a copy each: a cold start at a
/// million users makes one allocation instead of a million. The buffer is freed once the last of
/// them is replaced (a reload from the store replaces them all).
///
/// A copy replaced while it was read reads short (the replaced file is shrunk before it goes,
/// `atomic_file::write_large`): when what was read does not decode and the path now names
/// another file, the new one is read, a few times at most.
pub fn read(path: &Path) -> Result<BTreeMap<String, Entry>, CopyError> {
    let mut tries = 0;
    loop {
        let (read, file) = read_once(path);
        match read {
            Err(CopyError::Damaged { .. }) if tries < 3 && replaced(path, file) => tries += 1,
            read => return read,
        }
    }
}

/// A file as its device and inode.
type FileId = (u64, u64);
/// The users a copy holds.
type Users = BTreeMap<String, Entry>;

/// Whether `path` no longer names the file `read` was.
fn replaced(path: &Path, read: Option<FileId>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    read.is_some() && now != read
}

/// One read of the copy, and the file read.
fn read_once(path: &Path) -> (Result<Users, CopyError>, Option<FileId>) {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file_id = None;
    let read = std::fs::File::open(path).and_then(|mut f| {
        let meta = f.metadata()?;
        file_id = Some((meta.dev(), meta.ino()));
        let mut b = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        f.read_to_end(&mut b).map(|_| b)
    });
    (decode_read(path, read), file_id)
}

/// The users of a copy read as `read`.
fn decode_read(path: &Path, read: std::io::Result<Vec<u8>>) -> Result<Users, CopyError> {
    let bytes = match read {
        Ok(b) => Bytes::from(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CopyError::Missing(path.to_owned()));
        }
        Err(source) => {
            return Err(CopyError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let damaged = |reason| CopyError::Damaged {
        path: path.to_owned(),
        reason,
    };
    if bytes.get(8..12) == Some(&1u32.to_be_bytes()[..]) {
        return decode_v1(&bytes).map(BTreeMap::from_iter).map_err(damaged);
    }
    let (base_id, users) = decode(&bytes).map_err(damaged)?;
    let mut users: BTreeMap<String, Entry> = users.into_iter().collect();
    let log = log_path(path);
    match std::fs::read(&log) {
        Ok(log_bytes) => {
            if let Some(ended) = replay_log(Bytes::from(log_bytes), base_id, &mut users) {
                tracing::warn!(log = %log.display(), reason = %ended,
                    "the snapshot copy's log ends early; the changes after it are in the database");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CopyError::Read { path: log, source }),
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::Record;
    use crate::users::Snapshot;
    use serde_json::Value;
    use serde_json::json;

    fn rec(id: &str, rev: i64) -> Record {
        let Value::Object(doc) = json!({"id": id, "name": format!("user {id}"), "tags": [1, 2]})
        else {
            unreachable!("literal is an object")
        };
        Record {
            id: id.into(),
            rev,
            updated_at: "2026-11-23T10:00:00.000Z".into(),
            doc,
        }
    }

    fn entries(records: &[Record]) -> BTreeMap<String, Entry> {
        records
            .iter()
            .map(|r| (r.id.clone(), Entry::from_record(r)))
            .collect()
    }

    fn write_all(path: &Path, s: &Snapshot) -> CopyState {
        write_base(path, true, |after| s.chunk(after, 1)).expect("write")
    }

    #[test]
    fn base_and_log_round_trip_and_every_kind_of_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path_for(&dir.path().join("usersvc.journal"));
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("usersvc.snapshot")
        );
        assert!(matches!(read(&path), Err(CopyError::Missing(_))));

        let s = Snapshot::default();
        let records = vec![rec("a", 3), rec("b", 1)];
        s.replace_all(&records);
        let mut state = write_all(&path, &s);
        assert_eq!(read(&path).expect("read"), entries(&records));

        // Changes go to the log: b rewritten, a deleted, c added.
        let b2 = rec("b", 2);
        let c = rec("c", 1);
        append_log(
            &path,
            &mut state,
            &[
                ("b".into(), Some(Entry::from_record(&b2))),
                ("a".into(), None),
            ],
        )
        .expect("append");
        append_log(
            &path,
            &mut state,
            &[("c".into(), Some(Entry::from_record(&c)))],
        )
        .expect("append");
        let after = entries(&[b2.clone(), c.clone()]);
        assert_eq!(read(&path).expect("read"), after);
        // A torn last append: the frames before it still count.
        let log = log_path(&path);
        let full = std::fs::read(&log).expect("log");
        std::fs::write(&log, &full[..full.len() - 3]).expect("tear");
        assert_eq!(
            read(&path).expect("read"),
            entries(std::slice::from_ref(&b2))
        );
        // A log of another base is ignored: a new base holds everything.
        std::fs::write(&log, &full).expect("log back");
        let old_log = full.clone();
        s.replace_all(&[b2.clone(), c.clone()]);
        write_all(&path, &s);
        std::fs::write(&log, &old_log).expect("old log beside the new base");
        assert_eq!(read(&path).expect("read"), after);

        let good = std::fs::read(&path).expect("bytes");
        let damaged = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("write");
            match read(&path) {
                Err(CopyError::Damaged { reason, .. }) => reason,
                other => panic!("damage not reported: {other:?}"),
            }
        };
        assert!(damaged(&good[..good.len() - 1]).contains("cut short"));
        assert!(damaged(&good[..10]).contains("header"));
        let mut flipped = good.clone();
        flipped[HEADER + 5] ^= 0x20;
        assert!(damaged(&flipped).contains("checksum"));
        let mut future = good.clone();
        future[11] = 9;
        assert!(damaged(&future).contains("version 9"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(damaged(&magic).contains("magic"));
        // The message names the file.
        std::fs::write(&path, &good[..3]).expect("write");
        let shown = read(&path).expect_err("damaged").to_string();
        assert!(shown.contains("usersvc.snapshot"), "{shown}");
    }

    /// A copy replaced again and again (each old file shrunk before it goes) while another
    /// thread reads it: every read is whole, the old copy or the new.
    #[test]
    fn a_copy_replaced_while_it_is_read_is_read_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("usersvc.snapshot");
        let s = std::sync::Arc::new(Snapshot::default());
        let records: Vec<Record> = (0..40_000)
            .map(|i| rec(&format!("user-{i:06}"), 1))
            .collect();
        s.replace_all(&records);
        write_all(&path, &s);
        let want = entries(&records);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop, s) = (path.clone(), stop.clone(), s.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    write_all(&path, &s);
                    n += 1;
                }
                n
            })
        };
        for _ in 0..30 {
            assert_eq!(read(&path).expect("a whole copy"), want);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            writer.join().expect("writer") > 1,
            "the copy was replaced while read"
        );
    }

    #[test]
    fn changes_past_a_frame_go_in_several_frames() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usersvc.snapshot");
        let s = Snapshot::default();
        s.replace_all(&[rec("a", 1)]);
        let mut state = write_all(&path, &s);
        let big = |i: usize| {
            let Value::Object(doc) = json!({"id": format!("u{i}"), "pad": "x".repeat(16 << 10)})
            else {
                unreachable!("literal is an object")
            };
            Record {
                id: format!("u{i}"),
                rev: 1,
                updated_at: "t".into(),
                doc,
            }
        };
        let users: Vec<Record> = (0..400).map(big).collect();
        let changes: Vec<(String, Option<Entry>)> = users
            .iter()
            .map(|r| (r.id.clone(), Some(Entry::from_record(r))))
            .collect();
        append_log(&path, &mut state, &changes).expect("append");
        let log = std::fs::read(log_path(&path)).expect("log");
        assert_eq!(state.log_bytes, log.len() as u64);
        let got = read(&path).expect("read");
        assert_eq!(got.len(), 401);
        assert_eq!(got.get("u399"), Some(&Entry::from_record(&users[399])));
    }

    #[test]
    fn a_version_1_copy_from_an_earlier_release_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usersvc.snapshot");
        let records = vec![rec("a", 3), rec("b", 1)];
        let s = Snapshot::default();
        s.replace_all(&records);
        let array = s.all();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&(array.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&array).to_be_bytes());
        bytes.extend_from_slice(&array);
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(read(&path).expect("read"), entries(&records));
    }

    #[test]
    fn compaction_when_the_log_outgrows_half_the_base() {
        let small = CopyState {
            base_id: 1,
            base_bytes: 10 << 20,
            log_bytes: 4 << 20,
        };
        assert!(!small.wants_compaction());
        assert!(
            CopyState {
                log_bytes: 6 << 20,
                ..small
            }
            .wants_compaction()
        );
    }
}
