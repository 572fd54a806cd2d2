//! The write-ahead journal used while the store is unreachable: an append-only file of framed
//! records, each fsync'd before the client is told its write is queued.
//!
//! Frame: `len: u32 BE | crc32(payload): u32 BE | payload (len bytes, JSON)`. A crash mid-append
//! leaves a short or mismatching last frame: reading stops there, reports it, and keeps the
//! intact prefix.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest accepted frame: anything bigger is corruption, not a write.
const MAX_FRAME: u32 = 64 * 1024 * 1024;

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
        users: Vec<(String, Map<String, Value>)>,
    },
    Delete {
        id: String,
        expect: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique per write (UUIDv7): replay records it with the write, so it is applied once.
    pub write_id: String,
    pub op: Op,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where reading stopped early, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub reason: String,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    depth: usize,
}

fn frame(entry: &Entry) -> Vec<u8> {
    let payload = serde_json::to_vec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads every intact entry; `Damage` says where and why reading stopped early.
pub fn read(path: &Path) -> Result<(Vec<Entry>, Option<Damage>), JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(io(e)),
    };
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let damage = |reason: String| Damage {
            offset: at as u64,
            reason,
        };
        let Some(head) = bytes.get(at..at + 8) else {
            return Ok((
                entries,
                Some(damage(format!(
                    "{} stray bytes (an append cut short)",
                    bytes.len() - at
                ))),
            ));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME {
            return Ok((
                entries,
                Some(damage(format!("frame length {len} is implausible"))),
            ));
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else {
            return Ok((
                entries,
                Some(damage("last record is cut short (crash mid-append)".into())),
            ));
        };
        if crc32fast::hash(payload) != crc {
            return Ok((entries, Some(damage("checksum mismatch".into()))));
        }
        match serde_json::from_slice(payload) {
            Ok(e) => entries.push(e),
            Err(e) => {
                return Ok((
                    entries,
                    Some(damage(format!("record is not a journal entry: {e}"))),
                ));
            }
        }
        at += 8 + len as usize;
    }
    Ok((entries, None))
}

impl Journal {
    /// Opens (creating) the journal. Damaged tails must have been dealt with by the caller
    /// (`read`, then `rewrite` with the intact entries) before appending.
    pub fn open(path: &Path, depth: usize) -> Result<Self, JournalError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| JournalError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            depth,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries waiting to be replayed.
    pub fn depth(&self) -> usize {
        self.depth
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends and fsyncs: when this returns Ok, the write survives a crash.
    pub fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends every entry, in order, with one write and one fsync (group commit).
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        let bytes: Vec<u8> = entries.iter().flat_map(frame).collect();
        self.file.write_all(&bytes).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.depth += entries.len();
        Ok(())
    }

    /// Replaces the content with `entries` atomically (temp file, fsync, rename, fsync the dir).
    pub fn rewrite(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("rewrite");
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        for e in entries {
            f.write_all(&frame(e)).map_err(|e| self.io(e))?;
        }
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
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
            op: Op::Put {
                id: format!("u{n}"),
                doc,
                expect: None,
            },
        }
    }

    #[test]
    fn round_trip_and_damaged_tails() {
        let dir = tempfile_dir();
        let path = dir.join("j");
        let mut j = Journal::open(&path, 0).expect("open");
        for n in 0..3 {
            j.append(&put(n)).expect("append");
        }
        assert_eq!(j.depth(), 3);
        let (entries, damage) = read(&path).expect("read");
        assert_eq!(entries, vec![put(0), put(1), put(2)]);
        assert_eq!(damage, None);

        // Cut the last record short, as a crash mid-append would.
        let full = std::fs::read(&path).expect("bytes");
        std::fs::write(&path, &full[..full.len() - 5]).expect("truncate");
        let (entries, damage) = read(&path).expect("read");
        assert_eq!(entries, vec![put(0), put(1)]);
        assert!(
            damage
                .expect("damage reported")
                .reason
                .contains("cut short")
        );

        // Flip a byte inside the second record's payload.
        let mut bad = full.clone();
        let second = 8 + frame(&put(0)).len() - 8 + 8 + 3;
        bad[second] ^= 0xff;
        std::fs::write(&path, &bad).expect("write");
        let (entries, damage) = read(&path).expect("read");
        assert_eq!(entries, vec![put(0)]);
        assert!(damage.expect("damage").reason.contains("checksum"));

        // Rewrite keeps the intact prefix and appends continue after it.
        j.rewrite(&entries).expect("rewrite");
        j.append(&put(9)).expect("append");
        assert_eq!(read(&path).expect("read").0, vec![put(0), put(9)]);
        j.rewrite(&[]).expect("empty");
        assert_eq!(read(&path).expect("read"), (vec![], None));
        let _ = std::fs::remove_dir_all(dir);
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
            bytes.extend(frame(e));
            ends.push(bytes.len());
        }
        (entries, bytes, ends)
    }

    /// How many whole frames lie before `offset`: the prefix that damage there must leave.
    fn intact_before(ends: &[usize], offset: usize) -> usize {
        ends.iter().take_while(|&&end| end <= offset).count()
    }

    #[test]
    fn damage_at_any_offset_keeps_exactly_the_intact_prefix() {
        let dir = tempfile_dir();
        let path = dir.join("prop");
        let (entries, bytes, ends) = sample();
        // Every truncation point: a cut on a frame boundary is a shorter, undamaged journal.
        for cut in 0..=bytes.len() {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            let (got, damage) = read(&path).expect("read");
            let keep = intact_before(&ends, cut);
            assert_eq!(got, entries[..keep], "cut at {cut}");
            assert_eq!(
                damage.is_none(),
                cut == 0 || ends.contains(&cut),
                "cut at {cut}"
            );
        }
        // Every byte flipped, with three masks: nothing from the damaged frame on is trusted.
        for at in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                std::fs::write(&path, &bad).expect("write");
                let (got, damage) = read(&path).expect("read");
                assert_eq!(
                    got,
                    entries[..intact_before(&ends, at)],
                    "flip {mask:#x} at {at}"
                );
                assert!(damage.is_some(), "flip {mask:#x} at {at} not reported");
            }
        }
        // Random damage (several flips, then maybe a cut), from a fixed seed: the first damaged
        // offset decides the prefix; the repaired journal takes appends again.
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
            // Two flips of one byte can cancel out: compare rather than remember.
            let first = (0..bad.len())
                .find(|&i| bad[i] != bytes[i])
                .unwrap_or(bad.len());
            std::fs::write(&path, &bad).expect("write");
            let (got, _) = read(&path).expect("read");
            let keep = intact_before(&ends, first);
            assert_eq!(got, entries[..keep], "round {round}");
            let mut j = Journal::open(&path, got.len()).expect("open");
            j.rewrite(&got).expect("rewrite");
            j.append(&put(99)).expect("append");
            let (after, damage) = read(&path).expect("read");
            assert_eq!((after.len(), damage), (keep + 1, None), "round {round}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        // Per test: tests run in parallel threads of one process.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("usersvc-journal-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }
}
